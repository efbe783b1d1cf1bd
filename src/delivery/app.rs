//! The HTTP client that POSTs events to the local app.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};

use tracing::{Instrument, field::Empty, info_span};

use super::outcome::AppAnswer;
use crate::{
    envelope::{Envelope, TraceContext},
    telemetry::{TraceExt, trace_of},
};

/// A pooled keep-alive client for the app at one base URL.
#[derive(Clone, Debug)]
pub struct AppClient {
    http: reqwest::Client,
    base: String,
}

impl AppClient {
    /// A client for the app at `base` (such as `http://127.0.0.1:8080`).
    pub fn new(base: &str) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            // Deliveries go to the app in the same pod: never through an HTTP proxy.
            .no_proxy()
            // A redirect is an answer like any other non-2xx: a 301/302 would otherwise
            // turn the POST into a GET somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()?;
        Ok(AppClient {
            http,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    /// POSTs the envelope `body` to `route` in a CLIENT span, whose context the app gets in
    /// `traceparent`, and reports how the app answered.
    pub async fn deliver(
        &self,
        route: &str,
        body: Bytes,
        envelope: &Envelope,
        attempt: u32,
        trace: &TraceContext,
        timeout: Duration,
    ) -> AppAnswer {
        let url = format!("{}{route}", self.base);
        let span = info_span!(
            "POST",
            otel.kind = "client",
            otel.status_code = Empty,
            otel.status_description = Empty,
            http.request.method = "POST",
            url.full = %url,
            http.response.status_code = Empty,
        );
        // Without tracing installed, the publisher's context passes through unchanged.
        let trace = trace_of(&span).unwrap_or_else(|| trace.clone());
        let request = self
            .http
            .post(url)
            .headers(headers(envelope, attempt, &trace))
            .timeout(timeout)
            .body(body);
        let answer = Self::answer(request).instrument(span.clone()).await;
        match &answer {
            AppAnswer::Status { code, .. } => {
                span.record("http.response.status_code", code);
                if *code >= 400 {
                    span.fail(&answer.describe());
                }
            }
            other => span.fail(&other.describe()),
        }
        answer
    }

    async fn answer(request: reqwest::RequestBuilder) -> AppAnswer {
        match request.send().await {
            Ok(response) => {
                let retry_after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                AppAnswer::Status {
                    code: response.status().as_u16(),
                    retry_after,
                }
            }
            Err(error) if error.is_timeout() => AppAnswer::Timeout,
            Err(error) if error.is_connect() => AppAnswer::NotListening(error_chain(&error)),
            Err(error) => AppAnswer::Unreachable(error_chain(&error)),
        }
    }
}

/// The delivery headers: the envelope's ids, the attempt, and the trace context.
fn headers(envelope: &Envelope, attempt: u32, trace: &TraceContext) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(9);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let mut set = |name: &'static str, value: &str| {
        // Values came through the publish checks (printable ASCII); a message written by
        // another producer may hold anything, and a header that cannot be sent is left out.
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    set("x-event-id", &envelope.event_id.to_string());
    set("x-event-type", &envelope.event_type);
    set("x-schema-version", &envelope.schema_version.to_string());
    set("x-correlation-id", &envelope.correlation_id);
    if let Some(causation_id) = &envelope.causation_id {
        set("x-causation-id", causation_id);
    }
    set("x-delivery-attempt", &attempt.to_string());
    if let Some(traceparent) = &trace.traceparent {
        set("traceparent", traceparent);
    }
    if let Some(tracestate) = &trace.tracestate {
        set("tracestate", tracestate);
    }
    headers
}

/// The error and its causes on one line ("error sending request: connection refused").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
