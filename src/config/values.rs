//! The parsers of single setting values: each takes the trimmed text and returns the value
//! or a problem that never repeats a secret.

use std::{net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use lapin::uri::{AMQPScheme, AMQPUri};

use super::LogFormat;

/// The settings whose values may hold a secret: never shown, not even in part.
pub(super) const SECRET_KEYS: &[&str] = &["amqp_url", "dedup_url", "api_token"];

/// The problem, with the value that caused it unless the value may hold a secret (URLs
/// with credentials, the API token). A URL is shown without what precedes its last `@`.
pub(super) fn with_value(key: &str, problem: &str, value: &str) -> String {
    if SECRET_KEYS.contains(&key) {
        format!("{problem} (value not shown: it may hold a secret)")
    } else {
        format!("{problem} (got {:?})", without_credentials(value))
    }
}

/// `value` with anything that could be a URL's user and password replaced by `***`:
/// everything between the scheme and the last `@` (a password may itself hold `@`, `/` or
/// `?` when the writer did not percent-encode it, so nothing before the last `@` is kept).
pub fn without_credentials(value: &str) -> String {
    let Some(at) = value.rfind('@') else {
        return value.to_owned();
    };
    let start = value[..at].find("://").map_or(0, |i| i + 3);
    format!("{}***{}", &value[..start], &value[at..])
}

/// A name usable in AMQP exchange and queue names: the service, the exchange.
pub(super) fn parse_name(value: &str, max: usize) -> Result<String, String> {
    let valid = !value.is_empty()
        && value.len() <= max
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if valid {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "expected 1-{max} characters of letters, digits, '-', '_', '.', ':', starting with a letter or digit"
        ))
    }
}

/// The broker reserves names that start with `amq.` for its own exchanges and queues, and
/// refuses to declare them (403 ACCESS_REFUSED).
pub(super) fn parse_broker_name(value: &str) -> Result<String, String> {
    let name = parse_name(value, 200)?;
    if name.starts_with("amq.") {
        return Err("names starting with \"amq.\" are reserved by the broker".into());
    }
    Ok(name)
}

pub(super) fn parse_addr(value: &str) -> Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|_| "expected an IP address and port such as 127.0.0.1:7070".into())
}

/// Most broker addresses in `CAUSEWAY_AMQP_URL`.
const MAX_BROKER_URLS: usize = 16;

/// A comma-separated list of AMQP URIs, like the address lists of RabbitMQ's own clients:
/// the nodes of one cluster, each with its own credentials and vhost or the same.
pub(super) fn parse_amqp_urls(value: &str) -> Result<Vec<String>, String> {
    let mut urls = Vec::new();
    for (index, part) in value.split(',').enumerate() {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!("address {} of the list is empty", index + 1));
        }
        let url = parse_amqp_url(part).map_err(|problem| {
            if value.contains(',') {
                format!("address {} of the list: {problem}", index + 1)
            } else {
                problem
            }
        })?;
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    if urls.len() > MAX_BROKER_URLS {
        return Err(format!("expected at most {MAX_BROKER_URLS} addresses"));
    }
    Ok(urls)
}

/// Parses the AMQP URI and fills in two defaults the user did not set:
/// - `heartbeat=10`, so that a dead peer is noticed in seconds, not the broker's minute;
/// - `frame_max=16384`: the client keeps two buffers of 32 frames per connection, which
///   at the broker's 128 KiB frames is 8 MiB of memory per connection. Events are small;
///   a larger body is simply sent in more frames.
pub(super) fn parse_amqp_url(value: &str) -> Result<String, String> {
    let uri = AMQPUri::from_str(value).map_err(|error| amqp_problem(&error))?;
    if !matches!(uri.scheme, AMQPScheme::AMQP | AMQPScheme::AMQPS) {
        return Err("expected an amqp:// or amqps:// URI".into());
    }
    let mut url = value.to_owned();
    for (missing, default) in [
        (uri.query.heartbeat.is_none(), "heartbeat=10"),
        (uri.query.frame_max.is_none(), "frame_max=16384"),
    ] {
        if missing {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(default);
        }
    }
    Ok(url)
}

/// The AMQP URI parser's complaint, without the parts of it that repeat the URI: three of
/// its messages quote what they read, the others (from the URL parser, the number and
/// percent-decoding parsers) are fixed texts.
fn amqp_problem(error: &str) -> String {
    let problem = if error.starts_with("Invalid URL") {
        "not an absolute URI such as amqp://user:password@host:5672/vhost"
    } else if error.starts_with("Invalid AMQP scheme") {
        "expected an amqp:// or amqps:// URI"
    } else if error.starts_with("Invalid SASL mechanism") {
        "unknown auth_mechanism"
    } else {
        error
    };
    format!("not an AMQP URI: {problem}")
}

/// A `redis://` URL, checked by the Redis client itself (no connection is made).
pub(super) fn parse_redis_url(value: &str) -> Result<String, String> {
    if !value.starts_with("redis://") {
        return Err("expected a redis:// URL (TLS to Redis is not supported)".into());
    }
    redis::Client::open(value).map_err(|error| {
        format!(
            "not a Redis URL the client can use: {}",
            redis_problem(&error)
        )
    })?;
    Ok(value.to_owned())
}

/// The client's description of a URL it cannot use: a fixed text ("Missing hostname",
/// "Invalid database number"), without the detail that some of them add, which quotes a
/// part of the URL, and without the error kind.
fn redis_problem(error: &redis::RedisError) -> String {
    let text = error.to_string();
    text.split(" - ").next().unwrap_or_default().to_owned()
}

pub(super) fn parse_path(value: &str) -> Result<PathBuf, String> {
    if value.is_empty() {
        return Err("expected a path".into());
    }
    Ok(PathBuf::from(value))
}

pub(super) fn parse_token(value: &str) -> Result<String, String> {
    if value.len() < 16 || !value.chars().all(|c| c.is_ascii_graphic()) {
        return Err("expected at least 16 printable ASCII characters without spaces".into());
    }
    Ok(value.to_owned())
}

/// A byte size: `1048576`, `512KiB`, `1MiB`, `1mb`.
pub(super) fn parse_size(value: &str) -> Result<usize, String> {
    let problem = || String::from("expected a size such as 1048576, 512KiB or 1MiB");
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (digits, unit) = value.split_at(split);
    let number: usize = digits.parse().map_err(|_| problem())?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        _ => return Err(problem()),
    };
    let size = number.checked_mul(factor).ok_or_else(problem)?;
    if size == 0 || size > 64 * 1024 * 1024 {
        return Err("expected a size between 1 byte and 64MiB".into());
    }
    Ok(size)
}

/// A duration: `250ms`, `5s`, `7d`, `1h 30m`.
pub(super) fn parse_duration(value: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(value)
        .map_err(|_| String::from("expected a duration such as 500ms, 5s, 10m or 7d"))?;
    if duration.is_zero() {
        return Err("expected a duration above zero".into());
    }
    Ok(duration)
}

pub(super) fn parse_count(value: &str, max: usize) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number from 1 to {max}")),
    }
}

pub(super) fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

pub(super) fn parse_log_format(value: &str) -> Result<LogFormat, String> {
    match value {
        "json" => Ok(LogFormat::Json),
        "text" => Ok(LogFormat::Text),
        _ => Err("expected json or text".into()),
    }
}
