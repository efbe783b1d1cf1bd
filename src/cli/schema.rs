//! `causeway schema check|consumers`: is a schema change safe, and who consumes which major.

use std::{collections::BTreeMap, error::Error as _, fmt::Write as _, path::Path, time::Duration};

use reqwest::Url;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::schema::compat::{self, Breaking};

/// What `schema check` found.
#[derive(Debug)]
pub struct CheckReport {
    /// The breaking differences; none means safe.
    pub breaking: Vec<Breaking>,
    /// The report, in words or as JSON.
    pub output: String,
}

/// Why a schema command failed.
#[derive(Debug, thiserror::Error)]
pub enum SchemaCliError {
    /// A schema file could not be read or parsed.
    #[error("{path}: {problem}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// An address of the management URL list is not a usable URL.
    #[error("management URL: {0}")]
    Address(String),
    /// No address of the management API gave an answer that could be used.
    #[error(
        "RabbitMQ management API: {} (enable it with: rabbitmq-plugins enable rabbitmq_management)",
        .tried.join("; ")
    )]
    Management {
        /// Each address tried, without credentials, with what went wrong there.
        tried: Vec<String>,
    },
}

/// Compares two schema files: is `new` safe for the consumers of `old`?
pub fn check(old: &Path, new: &Path, as_json: bool) -> Result<CheckReport, SchemaCliError> {
    let breaking = compat::check(&read_schema(old)?, &read_schema(new)?);
    let output = if as_json {
        let report = json!({ "compatible": breaking.is_empty(), "breaking": breaking });
        format!("{report}\n")
    } else if breaking.is_empty() {
        format!(
            "{} is compatible with {}: no breaking change\n",
            new.display(),
            old.display()
        )
    } else {
        let mut out = format!(
            "{} breaks consumers of {} ({} breaking change(s)):\n",
            new.display(),
            old.display(),
            breaking.len()
        );
        for change in &breaking {
            let _ = writeln!(
                out,
                "  {}: {} [{}]",
                change.path, change.message, change.kind
            );
        }
        out
    };
    Ok(CheckReport { breaking, output })
}

fn read_schema(path: &Path) -> Result<Value, SchemaCliError> {
    let error = |problem: String| SchemaCliError::File {
        path: path.display().to_string(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    let schema: Value =
        serde_json::from_str(&text).map_err(|e| error(format!("not valid JSON: {e}")))?;
    jsonschema::validator_for(&schema)
        .map_err(|e| error(format!("not a valid JSON Schema: {e}")))?;
    Ok(schema)
}

/// Where the management API is.
#[derive(Clone, Debug)]
pub struct Management {
    /// Base URLs, such as `http://127.0.0.1:15672`: one, or one per node of a cluster.
    pub urls: Vec<Url>,
    /// User name, for the addresses that carry none.
    pub user: String,
    /// Password, for the addresses that carry no user.
    pub password: String,
    /// The virtual host.
    pub vhost: String,
    /// The events exchange.
    pub exchange: String,
}

#[derive(Debug, Deserialize)]
struct Binding {
    destination: String,
    destination_type: String,
    routing_key: String,
}

/// How long one address of the management API may take to accept a connection, and to
/// answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// Parses a management URL list: base URLs separated by commas, such as the management
/// listeners of a cluster's nodes. An address may carry its own `user:password@`.
pub fn management_urls(value: &str) -> Result<Vec<Url>, SchemaCliError> {
    let mut urls: Vec<Url> = Vec::new();
    for (index, part) in value.split(',').enumerate() {
        let problem = |problem: &str| {
            SchemaCliError::Address(format!("address {} of the list {problem}", index + 1))
        };
        let part = part.trim();
        if part.is_empty() {
            return Err(problem("is empty"));
        }
        // The parse error never holds the value, which may hold a password.
        let url = Url::parse(part).map_err(|error| problem(&format!("is not a URL: {error}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(problem("is not an http:// or https:// URL with a host"));
        }
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    Ok(urls)
}

/// An address as logs and errors show it: without credentials.
fn shown(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.as_str().trim_end_matches('/').to_owned()
}

/// Which queues receive `event_type`, and which major versions of it, read from the
/// bindings of the events exchange. The addresses are tried in order: a refused connection,
/// a timeout or a server error moves on to the next.
pub async fn consumers(
    management: &Management,
    event_type: &str,
    as_json: bool,
) -> Result<String, SchemaCliError> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(ANSWER_TIMEOUT)
        .build()
        .map_err(|e| SchemaCliError::Management {
            tried: vec![format!("cannot set up an HTTP client: {}", describe(e))],
        })?;
    let mut tried = Vec::new();
    let mut bindings = None;
    for url in &management.urls {
        match bindings_at(&client, management, url).await {
            Ok(found) => {
                bindings = Some(found);
                break;
            }
            Err((problem, next)) => {
                tried.push(format!("{}: {problem}", shown(url)));
                if !next {
                    break;
                }
            }
        }
    }
    let Some(bindings) = bindings else {
        return Err(SchemaCliError::Management { tried });
    };
    let mut queues: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for binding in bindings.iter().filter(|b| b.destination_type == "queue") {
        if let Some(majors) = majors_bound(event_type, &binding.routing_key) {
            queues
                .entry(binding.destination.clone())
                .or_default()
                .push(majors);
        }
    }
    if as_json {
        return Ok(format!(
            "{}\n",
            json!({ "event_type": event_type, "exchange": management.exchange, "consumers": queues })
        ));
    }
    if queues.is_empty() {
        return Ok(format!(
            "no queue on {} receives {event_type}\n",
            management.exchange
        ));
    }
    let width = queues.keys().map(String::len).max().unwrap_or(5).max(5);
    let mut out = format!("{:<width$}  MAJORS\n", "QUEUE");
    for (queue, majors) in &queues {
        let _ = writeln!(out, "{queue:<width$}  {}", majors.join(", "));
    }
    Ok(out)
}

/// The bindings of the events exchange, read at `base`; on failure, what went wrong and
/// whether another address may do better.
async fn bindings_at(
    client: &reqwest::Client,
    management: &Management,
    base: &Url,
) -> Result<Vec<Binding>, (String, bool)> {
    let url = format!(
        "{}/api/exchanges/{}/{}/bindings/source",
        base.as_str().trim_end_matches('/'),
        encode(&management.vhost),
        encode(&management.exchange)
    );
    let mut request = client.get(url);
    // An address with its own user is sent with it (the client takes it from the URL).
    if base.username().is_empty() {
        request = request.basic_auth(&management.user, Some(&management.password));
    }
    let response = request.send().await.map_err(|e| (describe(e), true))?;
    let status = response.status();
    if !status.is_success() {
        return Err((format!("answered {status}"), status.is_server_error()));
    }
    response.json().await.map_err(|e| (describe(e), true))
}

/// A client error with its causes, without the URL (which the caller names).
fn describe(error: reqwest::Error) -> String {
    if error.is_timeout() {
        return "no answer in time".into();
    }
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

/// Which majors of `event_type` a binding key lets through: `2` for `OrderPlaced.v2`,
/// `all` for `OrderPlaced.*` or a catch-all pattern; `None` when none.
fn majors_bound(event_type: &str, key: &str) -> Option<String> {
    if let Some(major) = key
        .strip_prefix(event_type)
        .and_then(|rest| rest.strip_prefix(".v"))
    {
        return major
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| major.to_owned());
    }
    let all = key == "#" || key == format!("{event_type}.*") || key == format!("{event_type}.#");
    all.then(|| "all".to_owned())
}

/// Percent-encodes a path segment (vhost `/` is `%2F`).
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_keys_name_their_majors() {
        assert_eq!(
            majors_bound("OrderPlaced", "OrderPlaced.v2").as_deref(),
            Some("2")
        );
        assert_eq!(
            majors_bound("OrderPlaced", "OrderPlaced.*").as_deref(),
            Some("all")
        );
        assert_eq!(majors_bound("OrderPlaced", "#").as_deref(), Some("all"));
        assert_eq!(majors_bound("OrderPlaced", "OrderPlacedX.v2"), None);
        assert_eq!(majors_bound("OrderPlaced", "OrderPlaced.vx"), None);
        assert_eq!(majors_bound("Order", "OrderPlaced.v1"), None);
    }

    #[test]
    fn a_management_url_list_keeps_its_order_and_hides_credentials() {
        let urls = management_urls(
            " http://u:secret@rabbit-0:15672 ,https://rabbit-1/,http://rabbit-0:15672",
        )
        .unwrap();
        let shown: Vec<String> = urls.iter().map(shown).collect();
        assert_eq!(
            shown,
            [
                "http://rabbit-0:15672",
                "https://rabbit-1",
                "http://rabbit-0:15672"
            ]
        );
        assert_eq!(urls[0].username(), "u");
        for bad in [
            "http://a:15672,,http://b:15672",
            "amqp://u:secret@a:5672",
            "secret",
        ] {
            let error = management_urls(bad).unwrap_err().to_string();
            assert!(error.contains("address "), "{error}");
            assert!(!error.contains("secret"), "{error}");
        }
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode("/"), "%2F");
        assert_eq!(encode("causeway.events"), "causeway.events");
    }
}
