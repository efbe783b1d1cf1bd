//! `POST /v1/publish/{event_type}`: checks the request, then hands it to the publish path.

use axum::{
    Json,
    body::Body,
    extract::{Path, State, rejection::PathRejection},
    http::{HeaderMap, StatusCode},
};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::time::Instant;
use tracing::{Instrument, Span, debug, error, field::Empty, info_span};

use super::{
    ApiState,
    body::{read_body, require_json},
    problem::Problem,
};
use crate::{
    broker::PublishError,
    envelope::{SchemaVersion, TraceContext, is_valid_event_type},
    payload::Malformed,
    publish::{Accepted, PublishRequest, Rejected},
    schema::Invalid,
    telemetry::{TraceExt, current_trace_id},
};

/// Publishes one event in a SERVER span that continues the caller's trace; answers 202
/// once the broker confirmed it.
pub(super) async fn publish(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Accepted>), Problem> {
    let started = Instant::now();
    let event_type = match &path {
        Ok(Path(event_type)) if is_valid_event_type(event_type) => event_type.clone(),
        _ => "invalid".to_owned(),
    };
    let span = server_span("/v1/publish/{event_type}", &headers);
    span.record("causeway.event_type", event_type.as_str());
    let answer = handle(&state, path, headers, body)
        .instrument(span.clone())
        .await;
    let status = match &answer {
        Ok(_) => StatusCode::ACCEPTED,
        Err(problem) => problem.status,
    };
    answered(&span, status, answer.as_ref().err());
    state
        .metrics
        .publish(&event_type, outcome_of(status), started.elapsed());
    answer
}

/// The SERVER span of a publish request, continuing the caller's trace.
pub(super) fn server_span(route: &'static str, headers: &HeaderMap) -> Span {
    let span = info_span!(
        "publish",
        otel.name = %format!("POST {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        otel.status_description = Empty,
        http.request.method = "POST",
        http.route = route,
        http.response.status_code = Empty,
        causeway.event_type = Empty,
    );
    span.continue_trace(&trace_context(headers));
    span
}

/// Records the answer's status on the server span; a 5xx marks it failed.
pub(super) fn answered(span: &Span, status: StatusCode, problem: Option<&Problem>) {
    span.record("http.response.status_code", status.as_u16());
    if let Some(problem) = problem.filter(|p| p.status.is_server_error()) {
        span.fail(&problem.detail);
    }
}

/// The `outcome` label of a publish that ended in `status`.
pub(super) fn outcome_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "accepted",
        503 => "unavailable",
        504 => "timeout",
        400..=499 => "rejected",
        _ => "error",
    }
}

async fn handle(
    state: &ApiState,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Accepted>), Problem> {
    if state.health.is_draining() {
        return Err(Problem::unavailable(
            "the sidecar is shutting down; nothing was published",
            1,
        ));
    }
    let Path(event_type) = path.map_err(|e| Problem::bad_request(e.body_text()))?;
    if !is_valid_event_type(&event_type) {
        return Err(Problem::bad_request(format!(
            "event type {event_type:?} must match ^[A-Za-z][A-Za-z0-9_.-]{{0,127}}$"
        )));
    }
    require_json(&headers)?;
    let fields = HeaderFields::parse(&headers)?;
    let bytes = read_body(body, &headers, state.max_body).await?;
    let payload: Box<RawValue> = serde_json::from_slice(&bytes)
        .map_err(|e| Problem::bad_request(format!("the body is not valid JSON: {e}")))?;

    let request = PublishRequest {
        event_type,
        payload,
        schema_version: fields.schema_version,
        correlation_id: fields.correlation_id,
        causation_id: fields.causation_id,
        idempotency_key: fields.idempotency_key,
        trace: fields.trace,
    };
    match state.publish.publish(request).await {
        Ok(accepted) => {
            debug!(
                event_id = %accepted.event_id,
                event_type = %accepted.event_type,
                correlation_id = %accepted.correlation_id,
                causation_id = accepted.causation_id.as_deref(),
                trace_id = %current_trace_id(),
                "event published"
            );
            Ok((StatusCode::ACCEPTED, Json(accepted)))
        }
        Err(rejected) => Err(problem_for(rejected)),
    }
}

/// The optional headers of a publish, checked.
struct HeaderFields {
    correlation_id: Option<String>,
    causation_id: Option<String>,
    schema_version: Option<SchemaVersion>,
    idempotency_key: Option<String>,
    trace: TraceContext,
}

impl HeaderFields {
    fn parse(headers: &HeaderMap) -> Result<Self, Problem> {
        let schema_version = match header_text(headers, "x-schema-version", 32)? {
            Some(text) => Some(text.parse().map_err(|e| {
                Problem::bad_request(format!("header X-Schema-Version {text:?}: {e}"))
            })?),
            None => None,
        };
        Ok(HeaderFields {
            correlation_id: header_text(headers, "x-correlation-id", 128)?,
            causation_id: header_text(headers, "x-causation-id", 128)?,
            schema_version,
            idempotency_key: header_text(headers, "idempotency-key", 255)?,
            trace: trace_context(headers),
        })
    }
}

/// A header that must be printable ASCII of at most `max` characters, when present.
fn header_text(headers: &HeaderMap, name: &str, max: usize) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    if !is_printable_within(value.as_bytes(), max) {
        return Err(Problem::bad_request(format!(
            "header {name} must be 1 to {max} printable ASCII characters"
        )));
    }
    // Printable ASCII is valid UTF-8.
    Ok(Some(String::from_utf8_lossy(value.as_bytes()).into_owned()))
}

/// Whether `bytes` are 1 to `max` printable ASCII characters, as ids and keys must be.
pub(super) fn is_printable_within(bytes: &[u8], max: usize) -> bool {
    !bytes.is_empty() && bytes.len() <= max && bytes.iter().all(|b| (0x20..0x7f).contains(b))
}

/// The W3C trace context to continue. An invalid `traceparent` is ignored, as the W3C
/// recommendation asks: the event then starts a new trace instead of failing.
pub(super) fn trace_context(headers: &HeaderMap) -> TraceContext {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(traceparent) = text("traceparent").filter(|t| is_valid_traceparent(t)) else {
        return TraceContext::default();
    };
    TraceContext {
        traceparent: Some(traceparent.to_owned()),
        tracestate: text("tracestate")
            .filter(|t| !t.is_empty() && t.len() <= 512)
            .map(str::to_owned),
    }
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, ids not all zero.
fn is_valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    matches!(parts.as_slice(), [version, trace, parent, flags]
        if hex(version, 2) && *version != "ff"
            && hex(trace, 32) && trace.bytes().any(|b| b != b'0')
            && hex(parent, 16) && parent.bytes().any(|b| b != b'0')
            && hex(flags, 2))
}

/// 422 naming every failure; 400 for a payload outside the payload grammar.
pub(super) fn schema_problem(invalid: &Invalid) -> Problem {
    if let Invalid::Malformed(malformed) = invalid {
        return malformed_problem(malformed);
    }
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "schema-validation-failed",
        "Schema validation failed",
        invalid.to_string(),
    )
    .with_errors(invalid.violations())
}

/// 400 naming where the payload breaks the grammar.
fn malformed_problem(malformed: &Malformed) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "malformed-payload",
        "Malformed payload",
        malformed.to_string(),
    )
    .with_errors([PayloadError::of(malformed)])
}

/// One thing wrong with a payload, as a problem's `errors` lists it.
#[derive(Debug, Serialize)]
pub(super) struct PayloadError {
    /// Where, as a JSON Pointer into the payload.
    pub(super) instance_path: String,
    /// What is wrong there.
    pub(super) message: String,
}

impl PayloadError {
    pub(super) fn of(malformed: &Malformed) -> Self {
        PayloadError {
            instance_path: malformed.pointer.clone(),
            message: malformed.breach.to_string(),
        }
    }
}

/// The answer for a publish that did not go through.
pub(super) fn problem_for(rejected: Rejected) -> Problem {
    match rejected {
        Rejected::Broker(error) if error.outcome_unknown() => Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            "confirm-timeout",
            "Broker did not confirm",
            "the broker did not confirm the event in time; it may or may not be published: \
                 retry with the same Idempotency-Key",
        ),
        Rejected::Broker(error) => {
            let retry_after = match error {
                PublishError::Disconnected => 5,
                _ => 1,
            };
            Problem::unavailable(
                format!("the broker is unavailable ({error}); nothing was published"),
                retry_after,
            )
        }
        Rejected::KeyBusy => Problem::new(
            StatusCode::CONFLICT,
            "idempotency-key-in-progress",
            "Idempotency-Key in progress",
            "another request with this Idempotency-Key is still in progress; retry it later",
        )
        .retry_after(1),
        Rejected::KeyReused { first } => Problem::new(
            StatusCode::CONFLICT,
            "idempotency-key-reused",
            "Idempotency-Key reused",
            format!(
                "this Idempotency-Key was first used for event type {first}; use a new key \
                 for a different event"
            ),
        ),
        Rejected::Schema(invalid) => schema_problem(&invalid),
        // Logged once by the store's health, not per request.
        Rejected::Store(error) if error.is_unavailable() => {
            debug!(%error, "idempotency store unavailable");
            Problem::unavailable(
                "the idempotency store is unavailable; nothing was published, retry later",
                1,
            )
        }
        Rejected::Store(error) => {
            error!(%error, "idempotency store failed");
            Problem::internal()
        }
        Rejected::Envelope(error) => {
            error!(%error, "envelope could not be built");
            Problem::internal()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_must_follow_the_w3c_format() {
        assert!(is_valid_traceparent(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        ));
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        ] {
            assert!(!is_valid_traceparent(bad), "{bad}");
        }
    }
}
