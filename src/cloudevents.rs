//! CloudEvents 1.0 and the causeway envelope: the one place where attributes map both ways
//! (docs/cloudevents.md has the tables).
//!
//! - In: a CloudEvent from the publish API (HTTP binary or structured mode, or a batch) or
//!   from the broker (AMQP binary or structured mode, published by someone else) is read into
//!   attributes, checked here one by one ([`CloudEvent::check`]) and becomes an envelope.
//! - Out: an envelope's attributes ([`attributes_of`]) become `cloudEvents_*` AMQP
//!   properties on publish ([`amqp`]), and `ce-*` headers or an `application/cloudevents+json`
//!   body on delivery ([`http`]).

pub mod amqp;
pub mod http;

use std::collections::{BTreeMap, btree_map::Entry};
use std::{
    borrow::Cow,
    time::{Duration, SystemTime},
};

use serde::Serialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::envelope::{
    CloudEventAttributes, Envelope, ExtensionValue, SchemaVersion, TraceContext,
    is_valid_event_type,
};

/// The only `specversion` taken and given.
pub const SPEC_VERSION: &str = "1.0";
/// Most extension attributes one event may carry (besides the ones the envelope maps).
pub const MAX_EXTENSIONS: usize = 32;
/// Most bytes of extension names and values together: they become HTTP headers on delivery.
pub const MAX_EXTENSION_BYTES: usize = 4096;
/// Longest `id`, in characters.
pub const MAX_ID: usize = 256;
/// Longest `source`, `subject`, `dataschema` and extension value, in characters (`source`
/// and `dataschema` are ASCII).
pub const MAX_TEXT: usize = 1024;
/// Longest attribute name (the spec asks for 20 at most, and lets longer ones through).
pub const MAX_NAME: usize = 64;
/// Longest correlation and causation id, as for native publishes.
const MAX_ID_HEADER: usize = 128;

/// The namespace of event ids derived from a CloudEvent's `source` and `id`.
const NAMESPACE: Uuid = Uuid::from_u128(0x5c0f_2a1e_8e4b_4d61_9a39_63a8_0c7e_11d4);

/// The core attributes and the ones causeway maps to envelope fields: never extensions.
const MAPPED: [&str; 13] = [
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "subject",
    "dataschema",
    "datacontenttype",
    "correlationid",
    "causationid",
    "schemaversion",
    "data",
    "data_base64",
];

/// An attribute value as a binding carried it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A string, or any type in its canonical string form.
    Text(String),
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
}

/// One thing wrong with a CloudEvent, by the attribute's name as it was sent (`ce-id`,
/// `cloudEvents_id`, `id`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AttributeError {
    /// The attribute (or header, or member) as it was sent.
    pub attribute: String,
    /// What is wrong with it.
    pub message: String,
}

/// Why a CloudEvent is not taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Attributes are missing or invalid; each is named.
    #[error("{}", summary(.0))]
    Invalid(Vec<AttributeError>),
    /// The data is not JSON (another content type, or `data_base64`).
    #[error("{0}")]
    Unsupported(String),
}

impl Refused {
    fn invalid(attribute: impl Into<String>, message: impl Into<String>) -> Self {
        Refused::Invalid(vec![AttributeError {
            attribute: attribute.into(),
            message: message.into(),
        }])
    }
}

fn summary(errors: &[AttributeError]) -> String {
    let parts: Vec<String> = errors
        .iter()
        .map(|e| format!("{} {}", e.attribute, e.message))
        .collect();
    format!("invalid CloudEvent: {}", parts.join("; "))
}

/// A checked CloudEvent: what the envelope is built from.
#[derive(Clone, Debug)]
pub struct CloudEvent {
    /// The event id: `id` when it is a UUID, else derived from `source` and `id`.
    pub event_id: Uuid,
    /// `type`.
    pub event_type: String,
    /// `time`, as RFC 3339 UTC with microseconds.
    pub occurred_at: Option<String>,
    /// `schemaversion`, else the version at the end of `dataschema`.
    pub schema_version: Option<SchemaVersion>,
    /// `correlationid`.
    pub correlation_id: Option<String>,
    /// `causationid`.
    pub causation_id: Option<String>,
    /// `traceparent` and `tracestate` (the Distributed Tracing extension), when valid.
    pub trace: TraceContext,
    /// `source`.
    pub source: String,
    /// What the envelope keeps of the rest.
    pub attributes: CloudEventAttributes,
    /// `data`.
    pub data: Box<RawValue>,
}

impl CloudEvent {
    /// Checks every attribute; `sent_as` gives the name an attribute was sent under, for
    /// the errors. Every problem is reported, not only the first.
    pub fn check(
        attributes: Vec<(String, Value)>,
        data: Box<RawValue>,
        sent_as: &dyn Fn(&str) -> String,
    ) -> Result<CloudEvent, Refused> {
        let mut checker = Checker {
            sent_as,
            errors: Vec::new(),
        };
        let mut fields = BTreeMap::new();
        for (name, value) in attributes {
            match fields.entry(name) {
                Entry::Vacant(slot) => {
                    slot.insert(value);
                }
                Entry::Occupied(slot) => checker.fail(slot.key(), "appears more than once"),
            }
        }
        let mut take = |name: &str| fields.remove(name);
        let specversion = take("specversion");
        let id = take("id");
        let source = take("source");
        let event_type = take("type");
        let time = take("time");
        let subject = take("subject");
        let dataschema = take("dataschema");
        let datacontenttype = take("datacontenttype");
        let correlationid = take("correlationid");
        let causationid = take("causationid");
        let schemaversion = take("schemaversion");

        match checker.required("specversion", specversion) {
            Some(version) if version == SPEC_VERSION => {}
            Some(version) => checker.fail(
                "specversion",
                format!("must be 1.0 (CloudEvents 1.0); got {:?}", clip(&version)),
            ),
            None => {}
        }
        let id = checker
            .required("id", id)
            .filter(|id| checker.string("id", id, MAX_ID));
        let source = checker.required("source", source).filter(|source| {
            checker.check(
                is_uri_reference(source),
                "source",
                format!("must be a URI reference of 1 to {MAX_TEXT} characters"),
            )
        });
        let event_type = checker.required("type", event_type).filter(|t| {
            checker.check(
                is_valid_event_type(t),
                "type",
                "must match ^[A-Za-z][A-Za-z0-9_.-]{0,127}$ (causeway's event types)",
            )
        });
        let occurred_at = checker.optional("time", time).and_then(|time| {
            let normalized = normalize_time(&time);
            checker.check(
                normalized.is_some(),
                "time",
                "must be an RFC 3339 timestamp, such as 2026-11-27T12:00:00Z",
            );
            normalized
        });
        let subject = checker
            .optional("subject", subject)
            .filter(|s| checker.string("subject", s, MAX_TEXT));
        let dataschema = checker.optional("dataschema", dataschema).filter(|uri| {
            checker.check(
                is_absolute_uri(uri),
                "dataschema",
                format!("must be an absolute URI of 1 to {MAX_TEXT} characters"),
            )
        });
        let datacontenttype = checker.optional("datacontenttype", datacontenttype);
        if let Some(content_type) = &datacontenttype {
            if !is_json_media_type(content_type) {
                return Err(Refused::Unsupported(format!(
                    "datacontenttype {:?} is not JSON: causeway carries JSON data only \
                     (application/json or a */*+json type)",
                    clip(content_type)
                )));
            }
        }
        let correlation_id = checker
            .optional("correlationid", correlationid)
            .filter(|v| checker.printable("correlationid", v));
        let causation_id = checker
            .optional("causationid", causationid)
            .filter(|v| checker.printable("causationid", v));
        let mut schema_version =
            checker
                .optional("schemaversion", schemaversion)
                .and_then(|text| {
                    let parsed = text.parse::<SchemaVersion>().ok();
                    checker.check(
                        parsed.is_some(),
                        "schemaversion",
                        "must be MAJOR.MINOR, such as 2.0",
                    );
                    parsed
                });
        if schema_version.is_none() {
            schema_version = dataschema.as_deref().and_then(version_in_uri);
        }
        let extensions = checker.extensions(fields);
        if !checker.errors.is_empty() {
            return Err(Refused::Invalid(checker.errors));
        }
        // Each is Some when no error was recorded: required ones fail when absent.
        let (Some(id), Some(source), Some(event_type)) = (id, source, event_type) else {
            return Err(Refused::invalid("id", "is required"));
        };
        let text = |name: &str| match extensions.get(name) {
            Some(ExtensionValue::Text(value)) => Some(value.as_bytes()),
            _ => None,
        };
        let trace = TraceContext::from_untrusted(text("traceparent"), text("tracestate"));
        let event_id = event_id(&source, &id);
        let attributes = CloudEventAttributes {
            id: (id != event_id.hyphenated().to_string()).then_some(id),
            source: Some(source.clone()),
            subject,
            dataschema,
            datacontenttype: datacontenttype
                .filter(|t| !t.trim().eq_ignore_ascii_case("application/json")),
            extensions,
        };
        Ok(CloudEvent {
            event_id,
            event_type,
            occurred_at,
            schema_version,
            correlation_id,
            causation_id,
            trace,
            source,
            attributes,
            data,
        })
    }

    /// The envelope of an event published by someone else straight onto the exchange: its
    /// `source` is the envelope's source, and without `correlationid` the event starts a
    /// flow of its own, named after its id (the same on every redelivery).
    pub fn into_envelope(self, fallback_version: SchemaVersion) -> Envelope {
        let CloudEvent {
            event_id,
            event_type,
            occurred_at,
            schema_version,
            correlation_id,
            causation_id,
            source,
            mut attributes,
            data,
            ..
        } = self;
        attributes.source = None;
        Envelope {
            event_id,
            event_type,
            schema_version: schema_version.unwrap_or(fallback_version),
            correlation_id: correlation_id.unwrap_or_else(|| event_id.to_string()),
            causation_id,
            occurred_at: occurred_at.unwrap_or_else(crate::envelope::now_rfc3339),
            source,
            payload: data,
            cloudevents: (!attributes.is_empty()).then(|| Box::new(attributes)),
        }
    }
}

/// Collects what is wrong while the attributes are read.
struct Checker<'a> {
    sent_as: &'a dyn Fn(&str) -> String,
    errors: Vec<AttributeError>,
}

impl Checker<'_> {
    fn fail(&mut self, name: &str, message: impl Into<String>) {
        self.errors.push(AttributeError {
            attribute: (self.sent_as)(name),
            message: message.into(),
        });
    }

    /// Records the failure unless `ok`; returns `ok`.
    fn check(&mut self, ok: bool, name: &str, message: impl Into<String>) -> bool {
        if !ok {
            self.fail(name, message);
        }
        ok
    }

    fn required(&mut self, name: &str, value: Option<Value>) -> Option<String> {
        if value.is_none() {
            self.fail(name, "is required");
        }
        self.optional(name, value)
    }

    /// A string attribute's text; other types are refused.
    fn optional(&mut self, name: &str, value: Option<Value>) -> Option<String> {
        match value? {
            Value::Text(text) => Some(text),
            _ => {
                self.fail(name, "must be a string");
                None
            }
        }
    }

    /// A CloudEvents `String` of 1 to `max` characters.
    fn string(&mut self, name: &str, value: &str, max: usize) -> bool {
        self.check(
            !value.is_empty() && value.chars().count() <= max && is_ce_string(value),
            name,
            format!("must be 1 to {max} characters without control characters"),
        )
    }

    /// An id that AMQP properties and HTTP headers carry as is, as for native publishes.
    fn printable(&mut self, name: &str, value: &str) -> bool {
        let ok = !value.is_empty()
            && value.len() <= MAX_ID_HEADER
            && value.bytes().all(|b| (0x20..0x7f).contains(&b));
        self.check(
            ok,
            name,
            format!("must be 1 to {MAX_ID_HEADER} printable ASCII characters"),
        )
    }

    /// The remaining attributes: extensions, checked and bounded.
    fn extensions(&mut self, fields: BTreeMap<String, Value>) -> BTreeMap<String, ExtensionValue> {
        let mut extensions = BTreeMap::new();
        let mut bytes = 0;
        for (name, value) in fields {
            if !is_extension_name(&name) {
                self.fail(
                    &name,
                    format!(
                        "is not a valid attribute name (1 to {MAX_NAME} lower-case letters \
                         and digits, not data)"
                    ),
                );
                continue;
            }
            let value = match value {
                // Unlike `id` or `subject`, an extension may be empty (Dapr sends an empty
                // `tracestate`).
                Value::Text(text) if text.is_empty() => ExtensionValue::Text(text),
                Value::Text(text) => {
                    if !self.string(&name, &text, MAX_TEXT) {
                        continue;
                    }
                    ExtensionValue::Text(text)
                }
                Value::Bool(value) => ExtensionValue::Bool(value),
                Value::Int(value) if i32::try_from(value).is_ok() => ExtensionValue::Int(value),
                Value::Int(_) => {
                    self.fail(&name, "is an integer outside the 32-bit range");
                    continue;
                }
            };
            bytes += name.len() + value.to_string().len();
            if extensions.len() == MAX_EXTENSIONS {
                self.fail(
                    &name,
                    format!("is one extension too many: at most {MAX_EXTENSIONS}"),
                );
                break;
            }
            if bytes > MAX_EXTENSION_BYTES {
                self.fail(
                    &name,
                    format!(
                        "takes the extensions over {MAX_EXTENSION_BYTES} bytes (names and values)"
                    ),
                );
                break;
            }
            extensions.insert(name, value);
        }
        extensions
    }
}

/// The event id of a CloudEvent: its `id` when that is a UUID (but not the nil or max one),
/// else a UUIDv8 from the SHA-256 of `source` and `id` (the name-based layout of RFC 9562,
/// appendix B.2), so that the same event sent twice gets the same event id.
pub fn event_id(source: &str, id: &str) -> Uuid {
    if let Ok(uuid) = Uuid::try_parse(id) {
        if !uuid.is_nil() && !uuid.is_max() {
            return uuid;
        }
    }
    let mut hash = Sha256::new();
    hash.update(NAMESPACE.as_bytes());
    hash.update((source.len() as u64).to_be_bytes());
    hash.update(source.as_bytes());
    hash.update(id.as_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

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
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_TEXT {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let escape = bytes.get(i + 1..i + 3);
                if !escape.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=".contains(&b) => i += 1,
            _ => return false,
        }
    }
    true
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
fn clip(value: &str) -> String {
    value.chars().take(40).collect()
}

/// An attribute value on its way out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Out<'a> {
    /// Text.
    Text(Cow<'a, str>),
    /// A boolean extension.
    Bool(bool),
    /// An integer extension.
    Int(i64),
}

impl Out<'_> {
    /// The canonical string form.
    pub fn as_text(&self) -> Cow<'_, str> {
        match self {
            Out::Text(text) => Cow::Borrowed(text.as_ref()),
            Out::Bool(value) => Cow::Owned(value.to_string()),
            Out::Int(value) => Cow::Owned(value.to_string()),
        }
    }
}

/// An envelope's CloudEvents attributes, `datacontenttype` and `data` aside (each binding
/// carries those its own way): the required ones, the optional ones, the Correlation
/// extension, `schemaversion`, then the other extensions. `trace` is the trace to name in
/// `traceparent` and `tracestate` when the event brought none of its own.
pub fn attributes_of<'a>(
    envelope: &'a Envelope,
    trace: &'a TraceContext,
) -> Vec<(&'a str, Out<'a>)> {
    let kept = envelope.cloudevents.as_deref();
    let text = |value: &'a str| Out::Text(Cow::Borrowed(value));
    let id = match kept.and_then(|k| k.id.as_deref()) {
        Some(id) => text(id),
        None => Out::Text(Cow::Owned(envelope.event_id.to_string())),
    };
    let source = kept
        .and_then(|k| k.source.as_deref())
        .unwrap_or(&envelope.source);
    let mut out = Vec::with_capacity(12);
    out.push(("specversion", text(SPEC_VERSION)));
    out.push(("id", id));
    out.push(("source", text(source)));
    out.push(("type", text(&envelope.event_type)));
    out.push(("time", text(&envelope.occurred_at)));
    if let Some(subject) = kept.and_then(|k| k.subject.as_deref()) {
        out.push(("subject", text(subject)));
    }
    if let Some(dataschema) = kept.and_then(|k| k.dataschema.as_deref()) {
        out.push(("dataschema", text(dataschema)));
    }
    out.push(("correlationid", text(&envelope.correlation_id)));
    if let Some(causation_id) = &envelope.causation_id {
        out.push(("causationid", text(causation_id)));
    }
    out.push((
        "schemaversion",
        Out::Text(Cow::Owned(envelope.schema_version.to_string())),
    ));
    let mut traced = false;
    if let Some(kept) = kept {
        // An envelope from the broker may hold anything: only valid names go out.
        let valid = kept
            .extensions
            .iter()
            .filter(|(name, _)| is_extension_name(name))
            .take(MAX_EXTENSIONS);
        for (name, value) in valid {
            traced |= name == "traceparent";
            out.push((
                name.as_str(),
                match value {
                    ExtensionValue::Text(value) => text(value),
                    ExtensionValue::Bool(value) => Out::Bool(*value),
                    ExtensionValue::Int(value) => Out::Int(*value),
                },
            ));
        }
    }
    if !traced {
        if let Some(traceparent) = &trace.traceparent {
            out.push(("traceparent", text(traceparent)));
            if let Some(tracestate) = &trace.tracestate {
                out.push(("tracestate", text(tracestate)));
            }
        }
    }
    out
}

/// The `datacontenttype` of an envelope's payload.
pub fn datacontenttype(envelope: &Envelope) -> &str {
    envelope
        .cloudevents
        .as_deref()
        .and_then(|k| k.datacontenttype.as_deref())
        .unwrap_or("application/json")
}

#[cfg(test)]
mod tests;
