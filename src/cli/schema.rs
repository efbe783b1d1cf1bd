//! `causeway schema check|consumers`: is a schema change safe, and who consumes which major.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use serde::Deserialize;
use serde_json::{Value, json};

use super::chain;
use crate::{
    config::without_credentials,
    schema::compat::{self, Breaking},
};

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
    /// The management API could not be asked.
    #[error(
        "RabbitMQ management API at {url}: {problem} (enable it with: rabbitmq-plugins enable rabbitmq_management)"
    )]
    Management {
        /// The URL tried.
        url: String,
        /// What went wrong.
        problem: String,
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
    /// Base URL, such as `http://127.0.0.1:15672`.
    pub url: String,
    /// User name.
    pub user: String,
    /// Password.
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

/// Which queues receive `event_type`, and which major versions of it, read from the
/// bindings of the events exchange.
pub async fn consumers(
    management: &Management,
    event_type: &str,
    as_json: bool,
) -> Result<String, SchemaCliError> {
    let url = format!(
        "{}/api/exchanges/{}/{}/bindings/source",
        management.url.trim_end_matches('/'),
        encode(&management.vhost),
        encode(&management.exchange)
    );
    // What is shown of the URL and of the client's errors, without any credentials in it.
    let failed = |problem: String| SchemaCliError::Management {
        url: without_credentials(&url),
        problem,
    };
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| failed(chain(&e.without_url())))?;
    let response = client
        .get(&url)
        .basic_auth(&management.user, Some(&management.password))
        .send()
        .await
        .map_err(|e| failed(chain(&e.without_url())))?;
    if !response.status().is_success() {
        return Err(failed(format!("answered {}", response.status())));
    }
    let bindings: Vec<Binding> = response
        .json()
        .await
        .map_err(|e| failed(chain(&e.without_url())))?;
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
    fn path_segments_are_encoded() {
        assert_eq!(encode("/"), "%2F");
        assert_eq!(encode("causeway.events"), "causeway.events");
    }
}
