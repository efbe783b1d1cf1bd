//! W3C trace context across HTTP and AMQP, and the trace id for log lines.

use std::collections::HashMap;

use lapin::BasicProperties;
use opentelemetry::{
    propagation::TextMapPropagator,
    trace::{TraceContextExt, TraceId},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{amqp::bytes_header, envelope::TraceContext};

/// The OpenTelemetry context a `traceparent`/`tracestate` pair describes.
pub fn context_of(trace: &TraceContext) -> opentelemetry::Context {
    let mut carrier = HashMap::new();
    if let Some(traceparent) = &trace.traceparent {
        carrier.insert("traceparent".to_owned(), traceparent.clone());
    }
    if let Some(tracestate) = &trace.tracestate {
        carrier.insert("tracestate".to_owned(), tracestate.clone());
    }
    TraceContextPropagator::new().extract(&carrier)
}

/// The `traceparent`/`tracestate` naming `span`, or `None` when it has no valid context
/// (tracing is not installed).
pub fn trace_of(span: &tracing::Span) -> Option<TraceContext> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    Some(TraceContext {
        traceparent: carrier.remove("traceparent"),
        tracestate: carrier.remove("tracestate").filter(|s| !s.is_empty()),
    })
}

/// The trace context a publisher put in a message's headers, by the same rules as the
/// publish API's: any producer may have written them.
pub fn field_table_trace(properties: &BasicProperties) -> TraceContext {
    TraceContext::from_untrusted(
        bytes_header(properties, "traceparent"),
        bytes_header(properties, "tracestate"),
    )
}

/// The trace id of the current span, as log lines carry it; empty when there is none.
pub fn current_trace_id() -> String {
    let id = tracing::Span::current()
        .context()
        .span()
        .span_context()
        .trace_id();
    if id == TraceId::INVALID {
        String::new()
    } else {
        id.to_string()
    }
}

/// Small helpers on spans made with `otel.*` fields.
pub trait TraceExt {
    /// Continues the trace `trace` names, when it names one.
    fn continue_trace(&self, trace: &TraceContext);
    /// Marks the span failed, with a description.
    fn fail(&self, description: &str);
}

impl TraceExt for tracing::Span {
    fn continue_trace(&self, trace: &TraceContext) {
        if trace.traceparent.is_some() {
            // Fails only when the span is already started elsewhere, which ours never are.
            let _ = self.set_parent(context_of(trace));
        }
    }

    fn fail(&self, description: &str) {
        self.record("otel.status_code", "error");
        self.record("otel.status_description", description);
    }
}
