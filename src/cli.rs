//! Command-line tools: `causeway dlq list|replay|purge` and `causeway flow` (clients of a
//! running sidecar's API), `causeway schema check|consumers`, and `causeway check`.

pub mod check;
pub mod flow;
pub mod inject;
pub mod schema;

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::config::without_credentials;

/// Where the sidecar's API is and how to authenticate.
#[derive(Clone, Debug, clap::Args)]
pub struct ApiTarget {
    /// The sidecar's API.
    #[arg(
        id = "api",
        long = "api",
        value_name = "API",
        global = true,
        env = "CAUSEWAY_API_URL",
        default_value = "http://127.0.0.1:7070",
        hide_env_values = true
    )]
    pub url: String,
    /// The API's bearer token, when it requires one.
    #[arg(
        long,
        global = true,
        env = "CAUSEWAY_API_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
}

/// How a command prints what it found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned text, for people.
    #[default]
    Text,
    /// JSON, for scripts.
    Json,
}

/// A dead-letter command.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// List the oldest dead letters, with why each one failed.
    List {
        /// The subscription's name.
        subscription: String,
        /// How many to show (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// `text`: a table; `json`: the API's answer as is (pretty-printed).
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Send dead letters back for delivery, with attempts reset: all, the given ids, or
    /// those of one flow.
    Replay {
        /// The subscription's name.
        subscription: String,
        /// Event ids to replay; all when none are given.
        event_ids: Vec<String>,
        /// Only the dead letters of this flow.
        #[arg(long, value_name = "ID", conflicts_with = "event_ids")]
        correlation_id: Option<String>,
    },
    /// Delete every dead letter of a subscription, for good.
    Purge {
        /// The subscription's name.
        subscription: String,
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
    },
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The API could not be reached.
    #[error("cannot reach the causeway API at {url}: {}", crate::errors::chain(.source))]
    Unreachable {
        /// The URL tried.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// A purge without `--yes`.
    #[error("purge deletes every dead letter of {0} for good; add --yes to do it")]
    Unconfirmed(String),
    /// The API answered with an error.
    #[error("{status}: {detail}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The problem's detail.
        detail: String,
    },
}

/// Runs a dead-letter command and returns what to print.
pub async fn dlq(target: &ApiTarget, command: DlqCommand) -> Result<String, CliError> {
    match command {
        DlqCommand::List {
            subscription,
            limit,
            output,
        } => {
            let path = format!("/v1/subscriptions/{subscription}/dead-letters?limit={limit}");
            let listed = call(target, reqwest::Method::GET, &path, None).await?;
            Ok(match output {
                Output::Text => table(&listed),
                Output::Json => serde_json::to_string_pretty(&listed).unwrap_or_default() + "\n",
            })
        }
        DlqCommand::Replay {
            subscription,
            event_ids,
            correlation_id,
        } => {
            let path = format!("/v1/subscriptions/{subscription}/dead-letters/replay");
            let body = match correlation_id {
                Some(id) => Some(json!({ "correlation_id": id })),
                None => (!event_ids.is_empty()).then(|| json!({ "event_ids": event_ids })),
            };
            let replayed = call(target, reqwest::Method::POST, &path, body).await?;
            let mut out = format!("replayed {}\n", replayed["replayed"]);
            if let Some(missing) = replayed["not_found"].as_array().filter(|m| !m.is_empty()) {
                let ids: Vec<&str> = missing.iter().filter_map(Value::as_str).collect();
                let _ = writeln!(out, "not found: {}", ids.join(", "));
            }
            Ok(out)
        }
        DlqCommand::Purge { subscription, yes } => {
            if !yes {
                return Err(CliError::Unconfirmed(subscription));
            }
            let path = format!("/v1/subscriptions/{subscription}/dead-letters");
            let purged = call(target, reqwest::Method::DELETE, &path, None).await?;
            Ok(format!("purged {}\n", purged["purged"]))
        }
    }
}

async fn call(
    target: &ApiTarget,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, CliError> {
    let url = format!("{}{path}", target.url.trim_end_matches('/'));
    // What is shown of the URL and of the client's errors, without any credentials in it.
    let unreachable = |source: reqwest::Error| CliError::Unreachable {
        url: without_credentials(&url),
        source: source.without_url(),
    };
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(unreachable)?;
    let mut request = client.request(method, &url);
    if let Some(token) = &target.token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.map_err(unreachable)?;
    let status = response.status().as_u16();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        Ok(answer)
    } else {
        let detail = answer["detail"]
            .as_str()
            .unwrap_or("the API refused the request")
            .to_owned();
        Err(CliError::Refused { status, detail })
    }
}

/// The listing as a table a person can read.
fn table(listed: &Value) -> String {
    let letters = listed["dead_letters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let text = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut rows = vec![[
        "EVENT ID".to_owned(),
        "TYPE".to_owned(),
        "REASON".to_owned(),
        "STATUS".to_owned(),
        "ATTEMPTS".to_owned(),
        "DEAD-LETTERED AT".to_owned(),
        "LAST ERROR".to_owned(),
    ]];
    for letter in &letters {
        let mut error = text(&letter["last_error"]);
        if error.chars().count() > 60 {
            error = error.chars().take(57).collect::<String>() + "...";
        }
        rows.push([
            text(&letter["event_id"]),
            text(&letter["event_type"]),
            text(&letter["reason"]),
            text(&letter["last_status"]),
            text(&letter["attempts"]),
            text(&letter["dead_lettered_at"]),
            error,
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    let _ = writeln!(
        out,
        "\n{} of {} dead letters in {}",
        letters.len(),
        text(&listed["total"]),
        text(&listed["queue"])
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_columns_and_counts() {
        let listed = json!({
            "queue": "orders.ship.dlq",
            "total": 3,
            "dead_letters": [
                {"event_id": "e-1", "event_type": "OrderPlaced", "reason": "rejected",
                 "last_status": 422, "attempts": 1, "dead_lettered_at": "2026-11-27T12:00:00Z",
                 "last_error": "the app answered 422"},
                {"event_id": null, "reason": "undecodable", "last_error": "x".repeat(80)}
            ]
        });
        let out = table(&listed);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("EVENT ID  TYPE"), "{out}");
        assert!(lines[1].contains("OrderPlaced  rejected"), "{out}");
        assert!(lines[2].starts_with("-"), "{out}");
        assert!(lines[2].ends_with("..."), "{out}");
        assert_eq!(lines[4], "2 of 3 dead letters in orders.ship.dlq");
    }
}
