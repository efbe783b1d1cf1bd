//! The rules attribute values follow: times, URIs, media types, names.

use std::time::{Duration, SystemTime};

use super::{MAPPED, MAX_NAME, MAX_TEXT};
use crate::envelope::SchemaVersion;

/// An RFC 3339 timestamp as `occurred_at` carries it (UTC, microseconds), or `None`.
pub fn normalize_time(text: &str) -> Option<String> {
    if !text.is_ascii() || text.len() < 20 || text.len() > 40 {
        return None;
    }
    let upper = text.to_ascii_uppercase();
    let (base, offset_secs) = match upper.strip_suffix('Z') {
        Some(base) => (base, 0i64),
        None => {
            let (base, offset) = upper.split_at(upper.len() - 6);
            let sign = match offset.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (hours, minutes) = offset[1..].split_once(':')?;
            let two_digits = |s: &str| {
                (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| s.parse::<i64>().ok())
                    .flatten()
            };
            let (hours, minutes) = (two_digits(hours)?, two_digits(minutes)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            (base, sign * (hours * 3600 + minutes * 60))
        }
    };
    let local = humantime::parse_rfc3339(&format!("{base}Z")).ok()?;
    let shift = Duration::from_secs(offset_secs.unsigned_abs());
    // A time ahead of UTC by its offset happened earlier in UTC.
    let utc = if offset_secs >= 0 {
        local.checked_sub(shift)?
    } else {
        local.checked_add(shift)?
    };
    rfc3339(utc, true)
}

/// `at` in RFC 3339 UTC (with microseconds, or whole seconds), when humantime can write
/// it: from 1970 to the end of 9999 (its formatter fails, and `to_string` would panic,
/// outside that range).
pub fn rfc3339(at: SystemTime, micros: bool) -> Option<String> {
    let since = at.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    if since.as_secs() >= LAST_SECOND {
        return None;
    }
    Some(if micros {
        humantime::format_rfc3339_micros(at).to_string()
    } else {
        humantime::format_rfc3339_seconds(at).to_string()
    })
}

/// The first second of the year 10000.
const LAST_SECOND: u64 = 253_402_300_800;

/// The schema version at the end of a `dataschema` URI: its last path segment (or, for a
/// URN, its last colon-separated part), without a `.json` suffix or a `v` prefix, when that
/// is `MAJOR.MINOR`: `https://schemas.example.com/OrderPlaced/2.0.json` is 2.0.
pub fn version_in_uri(uri: &str) -> Option<SchemaVersion> {
    let path = uri.split(['?', '#']).next()?;
    let last = path.rsplit(['/', ':']).next()?;
    let last = last.strip_suffix(".json").unwrap_or(last);
    let last = last
        .strip_prefix('v')
        .or_else(|| last.strip_prefix('V'))
        .unwrap_or(last);
    last.parse().ok()
}

/// A CloudEvents `String` as causeway checks it: no control characters (U+0000-U+001F,
/// U+007F-U+009F). Unicode noncharacters, which the spec also excludes, are let through:
/// they harm nothing here, and a rule a JSON Schema pattern can state is easier to follow.
pub fn is_ce_string(value: &str) -> bool {
    !value.chars().any(char::is_control)
}

/// Whether `value` is an RFC 3986 URI reference of 1 to [`MAX_TEXT`] characters: URI
/// characters and `%XX` escapes only (no spaces, no raw Unicode).
pub fn is_uri_reference(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_TEXT
        && crate::envelope::is_uri_text(value.as_bytes(), b"-._~:/?#[]@!$&'()*+,;=")
}

/// Whether `value` is an absolute URI: a URI reference that starts with a scheme.
pub fn is_absolute_uri(value: &str) -> bool {
    let Some((scheme, _)) = value.split_once(':') else {
        return false;
    };
    is_uri_reference(value)
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b))
}

/// Whether a media type declares JSON (`*/json` or `*/*+json`, parameters aside), as the
/// JSON event format defines it.
pub fn is_json_media_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    let subtype = subtype.to_ascii_lowercase();
    !kind.is_empty() && !subtype.contains('/') && (subtype == "json" || subtype.ends_with("+json"))
}

/// Whether `name` can name an extension attribute: 1 to [`MAX_NAME`] of `[a-z0-9]`, and
/// none of the names the envelope maps.
pub fn is_extension_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && !MAPPED.contains(&name)
}

/// A value to show in an error, cut short.
pub(super) fn clip(value: &str) -> String {
    value.chars().take(40).collect()
}
