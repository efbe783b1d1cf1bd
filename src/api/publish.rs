//! `POST /v1/publish/{event_type}`: checks the request, then hands it to the publish path.

use axum::{
    body::Body,
    extract::{Path, Request, State, rejection::PathRejection},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
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
    cloudevents::{
        AttributeError, CloudEvent, Refused,
        http::{Mode, decode_header, from_binary, from_structured, mode_of},
    },
    envelope::{SchemaVersion, TraceContext, is_printable_within, is_valid_event_type},
    payload::Malformed,
    publish::{Accepted, Given, PublishRequest, Rejected},
    schema::Invalid,
    telemetry::{TraceExt, current_trace_id},
};

/// Publishes one event in a SERVER span that continues the caller's trace; answers 202
/// once the broker confirmed it. The event is native (the body is the payload) or a
/// CloudEvent in binary or structured mode, whose `type` must be the path's.
pub(super) async fn publish(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    let path = path.map(|Path(event_type)| Some(event_type));
    let (parts, body) = request.into_parts();
    // On the heap: the whole publish is a large future, which would otherwise be copied
    // each time the layers above wrap it.
    Box::pin(publish_one(&state, PUBLISH_ONE, path, parts.headers, body)).await
}

/// A publish route: its path template, and the name of its SERVER span.
#[derive(Clone, Copy, Debug)]
pub(super) struct Route {
    path: &'static str,
    span_name: &'static str,
}

/// `POST /v1/publish/{event_type}`.
const PUBLISH_ONE: Route = Route {
    path: "/v1/publish/{event_type}",
    span_name: "POST /v1/publish/{event_type}",
};

/// `POST /v1/publish`.
pub(super) const PUBLISH_BATCH: Route = Route {
    path: "/v1/publish",
    span_name: "POST /v1/publish",
};

/// One event, from `route`; `path` is the event type the path names, if it names one.
pub(super) async fn publish_one(
    state: &ApiState,
    route: Route,
    path: Result<Option<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let path_label = match &path {
        Ok(Some(event_type)) if is_valid_event_type(event_type) => Some(event_type.clone()),
        _ => None,
    };
    let mode = mode_of(&headers);
    // A structured CloudEvent may carry its trace context in its body (the Distributed
    // Tracing extension): it is read before the span starts, so that the span continues it
    // when the request has no traceparent of its own.
    let incoming = match mode {
        Ok(Mode::Structured) => Incoming::Structured(
            read_body(body, &headers, state.max_body)
                .await
                .and_then(|bytes| from_structured(&bytes).map_err(cloudevent_problem))
                .map(Box::new),
        ),
        _ => Incoming::Body(body),
    };
    let trace = match &incoming {
        Incoming::Structured(Ok(event)) if !headers.contains_key(&TRACEPARENT) => {
            event.trace.clone()
        }
        _ => trace_context(&headers),
    };
    let span = server_span_for(route, &trace, path_label.as_deref());
    let answer = handle(state, path, headers, incoming, mode, trace)
        .instrument(span.clone())
        .await;
    let status = match &answer {
        Ok(_) => StatusCode::ACCEPTED,
        Err(problem) => problem.status,
    };
    answered(&span, status, answer.as_ref().err());
    let label = match &answer {
        Ok(accepted) => accepted.event_type.as_str(),
        Err(_) => path_label.as_deref().unwrap_or("invalid"),
    };
    state
        .metrics
        .publish(label, outcome_of(status), started.elapsed());
    match answer {
        Ok(accepted) => accepted_response(&accepted),
        Err(problem) => problem.into_response(),
    }
}

/// `202 Accepted` with the event's identity as JSON.
fn accepted_response(accepted: &Accepted) -> Response {
    (
        StatusCode::ACCEPTED,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        accepted.to_json(),
    )
        .into_response()
}

/// A request body: still to read, or a structured CloudEvent read already.
enum Incoming {
    Body(Body),
    Structured(Result<Box<CloudEvent>, Problem>),
}

/// The SERVER span of a publish request, continuing the caller's trace.
pub(super) fn server_span(route: Route, headers: &HeaderMap) -> Span {
    server_span_for(route, &trace_context(headers), None)
}

/// The SERVER span of a publish request of `event_type` (when the path names a valid one),
/// continuing `trace`.
fn server_span_for(route: Route, trace: &TraceContext, event_type: Option<&str>) -> Span {
    let span = info_span!(
        "publish",
        otel.name = route.span_name,
        otel.kind = "server",
        otel.status_code = Empty,
        otel.status_description = Empty,
        http.request.method = "POST",
        http.route = route.path,
        http.response.status_code = Empty,
        causeway.event_type = event_type,
    );
    span.continue_trace(trace);
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
    path: Result<Option<String>, PathRejection>,
    headers: HeaderMap,
    incoming: Incoming,
    mode: Result<Mode, Refused>,
    trace: TraceContext,
) -> Result<Accepted, Problem> {
    if state.health.is_draining() {
        return Err(Problem::unavailable(
            "the sidecar is shutting down; nothing was published",
            1,
        ));
    }
    let path = path.map_err(|e| Problem::bad_request(e.body_text()))?;
    if let Some(event_type) = path.as_deref().filter(|t| !is_valid_event_type(t)) {
        return Err(Problem::bad_request(format!(
            "event type {event_type:?} must match ^[A-Za-z][A-Za-z0-9_.-]{{0,127}}$"
        )));
    }
    let mode = mode.map_err(cloudevent_problem)?;
    let fields = HeaderFields::parse(&headers)?;
    let event = match (mode, incoming) {
        (_, Incoming::Structured(event)) => *event?,
        (Mode::Binary, Incoming::Body(body)) => {
            let bytes = read_body(body, &headers, state.max_body).await?;
            from_binary(&headers, &bytes).map_err(cloudevent_problem)?
        }
        (Mode::Batch, _) => {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                "a batch of CloudEvents goes to POST /v1/publish",
            ));
        }
        (_, Incoming::Body(body)) => {
            let Some(event_type) = path else {
                return Err(Problem::bad_request(
                    "POST /v1/publish takes a JSON array of events, or a CloudEvent",
                ));
            };
            require_json(&headers)?;
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
                trace,
                given: None,
            };
            return send(state, request).await;
        }
    };
    if let Some(event_type) = path.filter(|t| *t != event.event_type) {
        let name = if mode == Mode::Binary {
            "ce-type"
        } else {
            "type"
        };
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "event-type-mismatch",
            "Event type mismatch",
            format!(
                "the path names event type {event_type:?} and the CloudEvent's {name} is {:?}: \
                 they must be the same (or publish to POST /v1/publish)",
                event.event_type
            ),
        )
        .with_errors([AttributeError {
            attribute: name.to_owned(),
            message: format!("must be {event_type:?}, as the path says"),
        }]));
    }
    let mut request = request_of(event, trace);
    // The X- headers fill in what the CloudEvent leaves out.
    request.schema_version = request.schema_version.or(fields.schema_version);
    request.correlation_id = request.correlation_id.or(fields.correlation_id);
    request.causation_id = request.causation_id.or(fields.causation_id);
    request.idempotency_key = fields.idempotency_key;
    send(state, request).await
}

/// The publish request of a checked CloudEvent.
pub(super) fn request_of(event: CloudEvent, trace: TraceContext) -> PublishRequest {
    PublishRequest {
        event_type: event.event_type,
        payload: event.data,
        schema_version: event.schema_version,
        correlation_id: event.correlation_id,
        causation_id: event.causation_id,
        idempotency_key: None,
        trace,
        given: Some(Box::new(Given {
            event_id: event.event_id,
            occurred_at: event.occurred_at,
            attributes: event.attributes,
        })),
    }
}

/// 400 naming each bad attribute, or 415 for data that is not JSON.
pub(super) fn cloudevent_problem(refused: Refused) -> Problem {
    match refused {
        Refused::Invalid(errors) => Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-cloudevent",
            "Invalid CloudEvent",
            Refused::Invalid(errors.clone()).to_string(),
        )
        .with_errors(errors),
        Refused::Unsupported(why) => Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            why,
        ),
    }
}

/// Publishes a checked request and logs it.
async fn send(state: &ApiState, request: PublishRequest) -> Result<Accepted, Problem> {
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
            Ok(accepted)
        }
        Err(rejected) => Err(problem_for(rejected)),
    }
}

/// The headers a publish reads, named once: a name given as text is parsed on every lookup.
const X_SCHEMA_VERSION: HeaderName = HeaderName::from_static("x-schema-version");
const X_CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
const X_CAUSATION_ID: HeaderName = HeaderName::from_static("x-causation-id");
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const CE_TRACEPARENT: HeaderName = HeaderName::from_static("ce-traceparent");
const CE_TRACESTATE: HeaderName = HeaderName::from_static("ce-tracestate");

/// The optional headers of a publish, checked.
struct HeaderFields {
    correlation_id: Option<String>,
    causation_id: Option<String>,
    schema_version: Option<SchemaVersion>,
    idempotency_key: Option<String>,
}

impl HeaderFields {
    fn parse(headers: &HeaderMap) -> Result<Self, Problem> {
        let schema_version = match header_text(headers, &X_SCHEMA_VERSION, 32)? {
            Some(text) => Some(text.parse().map_err(|e| {
                Problem::bad_request(format!("header X-Schema-Version {text:?}: {e}"))
            })?),
            None => None,
        };
        Ok(HeaderFields {
            correlation_id: header_text(headers, &X_CORRELATION_ID, 128)?,
            causation_id: header_text(headers, &X_CAUSATION_ID, 128)?,
            schema_version,
            idempotency_key: header_text(headers, &IDEMPOTENCY_KEY, 255)?,
        })
    }
}

/// A header that must be printable ASCII of at most `max` characters, when present.
fn header_text(
    headers: &HeaderMap,
    name: &HeaderName,
    max: usize,
) -> Result<Option<String>, Problem> {
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

/// The W3C trace context to continue (see [`TraceContext::from_untrusted`]): a bad
/// `traceparent` or `tracestate` is ignored, never an error. Without a `traceparent`, a
/// CloudEvent in binary mode may name its trace in `ce-traceparent` (the Distributed
/// Tracing extension).
pub(super) fn trace_context(headers: &HeaderMap) -> TraceContext {
    let bytes = |name: &HeaderName| headers.get(name).map(|v| v.as_bytes());
    let trace = TraceContext::from_untrusted(bytes(&TRACEPARENT), bytes(&TRACESTATE));
    if trace.traceparent.is_some() || !headers.contains_key(&CE_TRACEPARENT) {
        return trace;
    }
    let decoded = |name: &HeaderName| headers.get(name).and_then(|v| decode_header(v.as_bytes()));
    let (traceparent, tracestate) = (decoded(&CE_TRACEPARENT), decoded(&CE_TRACESTATE));
    TraceContext::from_untrusted(
        traceparent.as_deref().map(str::as_bytes),
        tracestate.as_deref().map(str::as_bytes),
    )
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
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    use super::*;

    /// Bytes a header value can hold on the wire (hyper refuses the other control
    /// characters before a handler runs): tab, printable ASCII, and obs-text.
    fn value_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::string::string_regex(&format!("[ -~]{{1,{max}}}"))
                .unwrap()
                .prop_map(String::into_bytes),
            prop::collection::vec(
                prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff],
                0..max + 10
            ),
        ]
    }

    fn version_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            "[0-9]{1,10}\\.[0-9]{1,10}".prop_map(String::into_bytes),
            value_bytes(40),
        ]
    }

    const IDS: [(&str, usize); 3] = [
        ("x-correlation-id", 128),
        ("x-causation-id", 128),
        ("idempotency-key", 255),
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Each publish header is taken exactly as sent when it is valid, and a 400 names
        /// it otherwise; nothing panics.
        #[test]
        fn publish_headers_are_taken_as_sent_or_refused(
            ids in [
                proptest::option::of(value_bytes(140)),
                proptest::option::of(value_bytes(140)),
                proptest::option::of(value_bytes(270)),
            ],
            version in proptest::option::of(version_bytes()),
        ) {
            let mut headers = HeaderMap::new();
            for ((name, _), value) in IDS.iter().zip(&ids) {
                if let Some(value) = value {
                    // Leading and trailing whitespace never reaches a handler: hyper trims it.
                    let value = HeaderValue::from_bytes(value.trim_ascii());
                    if let Ok(value) = value {
                        headers.insert(*name, value);
                    }
                }
            }
            if let Some(version) = &version {
                if let Ok(value) = HeaderValue::from_bytes(version.trim_ascii()) {
                    headers.insert("x-schema-version", value);
                }
            }
            let sent = |name: &str| headers.get(name).map(|v| v.as_bytes().to_vec());
            let ids_ok = IDS.iter().all(|(name, max)| {
                sent(name).is_none_or(|v| is_printable_within(&v, *max))
            });
            let version_sent = sent("x-schema-version");
            let version_ok = version_sent.as_deref().is_none_or(|v| {
                let text = String::from_utf8_lossy(v);
                text.split_once('.').is_some_and(|(major, minor)| {
                    [major, minor].iter().all(|part| {
                        (1..=9).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit())
                    })
                })
            });
            match HeaderFields::parse(&headers) {
                Ok(fields) => {
                    prop_assert!(ids_ok && version_ok);
                    let taken = [&fields.correlation_id, &fields.causation_id, &fields.idempotency_key];
                    for ((name, _), value) in IDS.iter().zip(taken) {
                        prop_assert_eq!(value.as_ref().map(|v| v.as_bytes().to_vec()), sent(name));
                    }
                    prop_assert_eq!(
                        fields.schema_version.map(|v| v.to_string().into_bytes()).is_some(),
                        version_sent.is_some()
                    );
                }
                Err(problem) => {
                    prop_assert!(!(ids_ok && version_ok));
                    prop_assert_eq!(problem.status, StatusCode::BAD_REQUEST);
                    prop_assert!(problem.detail.contains("header"), "{}", problem.detail);
                }
            }
        }

        /// Event types from a path: valid ones are taken, anything else is refused without a
        /// panic, and a valid one always makes a routing key AMQP can carry.
        #[test]
        fn event_types_are_valid_or_refused(event_type in prop_oneof![
            "[A-Za-z][A-Za-z0-9_.-]{0,130}",
            "[ -~]{0,140}",
            any::<String>(),
        ]) {
            let valid = is_valid_event_type(&event_type);
            let model = event_type.len() <= 128
                && event_type.starts_with(|c: char| c.is_ascii_alphabetic())
                && event_type.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            prop_assert_eq!(valid, model);
            if valid {
                let key = crate::envelope::routing_key(&event_type, u32::MAX);
                prop_assert!(key.len() <= 255);
                prop_assert!(!key.contains(['*', '#']));
            }
        }
    }
}
