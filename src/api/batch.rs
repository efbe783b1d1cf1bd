//! `POST /v1/publish`: many events in one request (native items, or a CloudEvents batch),
//! all checked before any is published; a single CloudEvent is published as one event.

use std::{borrow::Cow, collections::HashSet};

use axum::{
    Json,
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json, value::RawValue};
use tokio::time::Instant;
use tracing::Instrument;

use super::{
    ApiState,
    body::{read_body, require_json},
    problem::Problem,
    publish::{
        PUBLISH_BATCH, answered, outcome_of, problem_for, publish_one, request_of, server_span,
        trace_context,
    },
};
use crate::{
    cloudevents::{
        Refused,
        http::{Mode, batch_items, from_item, mode_of},
    },
    envelope::{SchemaVersion, is_printable_within, is_valid_event_type},
    publish::{Accepted, PublishRequest},
    schema::Invalid,
};

/// Most events in one batch.
const MAX_ITEMS: usize = 1000;

/// One event of a batch, as the app sends it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Item {
    event_type: String,
    payload: Box<RawValue>,
    #[serde(default)]
    schema_version: Option<String>,
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(default)]
    causation_id: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// What is wrong with one field of an item (or its payload, by `instance_path`).
#[derive(Debug, Serialize)]
struct ItemError {
    /// The item's field, or the CloudEvent's attribute.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<Cow<'static, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance_path: Option<String>,
    message: String,
    /// The payload is outside the payload grammar: the batch is malformed (400), not only
    /// unacceptable (422).
    #[serde(skip)]
    malformed: bool,
}

impl ItemError {
    fn field(field: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        ItemError {
            field: Some(field.into()),
            instance_path: None,
            message: message.into(),
            malformed: false,
        }
    }

    /// Each thing wrong with an item's payload.
    fn payload(invalid: &Invalid) -> Vec<Self> {
        let malformed = matches!(invalid, Invalid::Malformed(_));
        invalid
            .violations()
            .into_iter()
            .map(|v| ItemError {
                field: Some("payload".into()),
                instance_path: Some(v.instance_path),
                message: v.message,
                malformed,
            })
            .collect()
    }
}

/// Publishes every event, in order, or none when any is invalid: 200 when all were
/// confirmed, 207 when the broker failed some (each result says which), 422 when any is
/// invalid, 400 when any payload is outside the payload grammar (each result says what is
/// wrong; nothing was published). A single CloudEvent (binary or structured mode) is
/// published as `POST /v1/publish/{event_type}` would, with its `type` as the event type.
pub(super) async fn publish_batch(State(state): State<ApiState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let mode = mode_of(&headers);
    if matches!(mode, Ok(Mode::Binary | Mode::Structured)) {
        return Box::pin(publish_one(&state, PUBLISH_BATCH, Ok(None), headers, body)).await;
    }
    let started = Instant::now();
    let span = server_span(PUBLISH_BATCH, &headers);
    let answer = handle(&state, &headers, body, mode)
        .instrument(span.clone())
        .await;
    let (status, problem) = match &answer {
        Ok((status, _)) => (*status, None),
        Err(problem) => (problem.status, Some(problem)),
    };
    answered(&span, status, problem);
    match answer {
        Ok((status, results)) => {
            for result in &results {
                let outcome = match result {
                    Ok(_) => "accepted",
                    Err(problem) => outcome_of(problem.status),
                };
                let event_type = result.as_ref().map_or("batch", |a| a.event_type.as_str());
                state
                    .metrics
                    .publish(event_type, outcome, started.elapsed());
            }
            let results: Vec<Value> = results.into_iter().enumerate().map(result_json).collect();
            (status, Json(json!({ "results": results }))).into_response()
        }
        Err(problem) => {
            state
                .metrics
                .publish("batch", outcome_of(problem.status), started.elapsed());
            problem.into_response()
        }
    }
}

type Results = Vec<Result<Accepted, Problem>>;

async fn handle(
    state: &ApiState,
    headers: &HeaderMap,
    body: Body,
    mode: Result<Mode, Refused>,
) -> Result<(StatusCode, Results), Problem> {
    if state.health.is_draining() {
        return Err(Problem::unavailable(
            "the sidecar is shutting down; nothing was published",
            1,
        ));
    }
    let cloudevents = mode.map_err(super::publish::cloudevent_problem)? == Mode::Batch;
    require_json(headers)?;
    let bytes = read_body(body, headers, state.max_body).await?;
    // Items borrowed from the body: each payload is copied once, into its request.
    let raw: Vec<&RawValue> = if cloudevents {
        batch_items(&bytes).map_err(super::publish::cloudevent_problem)?
    } else {
        serde_json::from_slice(&bytes).map_err(|error| {
            if error.is_data() {
                Problem::unprocessable("the body must be a JSON array of events")
            } else {
                Problem::bad_request(format!("the body is not valid JSON: {error}"))
            }
        })?
    };
    if raw.is_empty() || raw.len() > MAX_ITEMS {
        return Err(Problem::unprocessable(format!(
            "a batch holds 1 to {MAX_ITEMS} events; this one has {}",
            raw.len()
        )));
    }
    let trace = trace_context(headers);
    let mut keys = HashSet::new();
    let checked: Vec<Result<PublishRequest, Vec<ItemError>>> = raw
        .iter()
        .map(|item| {
            let mut request = if cloudevents {
                cloud_item(item)?
            } else {
                parse(item, &mut keys)?
            };
            request.trace = trace.clone();
            state
                .publish
                .check(&mut request)
                .map_err(|invalid| ItemError::payload(&invalid))?;
            Ok(request)
        })
        .collect();
    if checked.iter().any(Result::is_err) {
        let results: Vec<Value> = checked
            .iter()
            .enumerate()
            .map(|(index, item)| match item {
                Ok(_) => json!({ "index": index, "status": "valid" }),
                Err(errors) => json!({ "index": index, "status": "invalid", "errors": errors }),
            })
            .collect();
        let invalid = results.iter().filter(|r| r["status"] == "invalid").count();
        let malformed = checked
            .iter()
            .filter(|item| item.as_ref().is_err_and(|e| e.iter().any(|e| e.malformed)))
            .count();
        let problem = if malformed > 0 {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "malformed-payload",
                "Malformed payload",
                format!(
                    "{malformed} of {} events have a payload outside the payload grammar; \
                     nothing was published",
                    results.len()
                ),
            )
        } else {
            Problem::unprocessable(format!(
                "{invalid} of {} events are invalid; nothing was published",
                results.len()
            ))
        };
        return Err(problem.with_results(results));
    }
    let requests = checked.into_iter().filter_map(Result::ok).collect();
    let results: Results = state
        .publish
        .publish_all(requests)
        .await
        .into_iter()
        .map(|result| result.map_err(problem_for))
        .collect();
    let status = if results.iter().all(Result::is_ok) {
        StatusCode::OK
    } else {
        StatusCode::MULTI_STATUS
    };
    Ok((status, results))
}

/// One item, checked like the headers of a single publish.
fn parse(raw: &RawValue, keys: &mut HashSet<String>) -> Result<PublishRequest, Vec<ItemError>> {
    let item: Item = serde_json::from_str(raw.get())
        .map_err(|e| vec![ItemError::field("item", e.to_string())])?;
    let mut errors = Vec::new();
    if !is_valid_event_type(&item.event_type) {
        let message = "must match ^[A-Za-z][A-Za-z0-9_.-]{0,127}$";
        errors.push(ItemError::field("event_type", message));
    }
    let schema_version = match item.schema_version.as_deref() {
        None => None,
        Some(text) => match text.parse::<SchemaVersion>() {
            Ok(version) => Some(version),
            Err(error) => {
                errors.push(ItemError::field("schema_version", error.to_string()));
                None
            }
        },
    };
    for (field, value, max) in [
        ("correlation_id", &item.correlation_id, 128),
        ("causation_id", &item.causation_id, 128),
        ("idempotency_key", &item.idempotency_key, 255),
    ] {
        if value
            .as_deref()
            .is_some_and(|v| !is_printable_within(v.as_bytes(), max))
        {
            let message = format!("must be 1 to {max} printable ASCII characters");
            errors.push(ItemError::field(field, message));
        }
    }
    if let Some(key) = &item.idempotency_key {
        if !keys.insert(key.clone()) {
            let message = "used by another event of this batch";
            errors.push(ItemError::field("idempotency_key", message));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(PublishRequest {
        event_type: item.event_type,
        payload: item.payload,
        schema_version,
        correlation_id: item.correlation_id,
        causation_id: item.causation_id,
        idempotency_key: item.idempotency_key,
        trace: Default::default(),
        given: None,
    })
}

/// One CloudEvent of a batch: each bad attribute named in the item's errors.
fn cloud_item(raw: &RawValue) -> Result<PublishRequest, Vec<ItemError>> {
    match from_item(raw) {
        Ok(event) => Ok(request_of(event, Default::default())),
        Err(Refused::Invalid(errors)) => Err(errors
            .into_iter()
            .map(|e| {
                // An item that is not an object at all is named as in a native batch.
                let field = if e.attribute == "(body)" {
                    Cow::Borrowed("item")
                } else {
                    Cow::Owned(e.attribute)
                };
                ItemError::field(field, e.message)
            })
            .collect()),
        Err(Refused::Unsupported(why)) => Err(vec![ItemError::field("data", why)]),
    }
}

fn result_json((index, result): (usize, Result<Accepted, Problem>)) -> Value {
    match result {
        Ok(accepted) => {
            let mut value = json!({ "index": index, "status": "accepted" });
            if let (Value::Object(fields), Ok(Value::Object(event))) =
                (&mut value, serde_json::to_value(accepted))
            {
                fields.extend(event);
            }
            value
        }
        Err(problem) => json!({
            "index": index,
            "status": "failed",
            "error": problem.detail,
            // Worth retrying as is: the broker failed, or the key's first request was still
            // in flight. A key reused for another type fails the same way every time.
            "retryable": problem.status.is_server_error()
                || problem.kind.ends_with(":idempotency-key-in-progress"),
            "outcome_unknown": problem.status == StatusCode::GATEWAY_TIMEOUT,
        }),
    }
}
