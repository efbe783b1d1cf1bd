//! W3C trace context across HTTP and AMQP, and the trace id for log lines.

use lapin::BasicProperties;
use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{TraceContextExt, TraceId},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{amqp::bytes_header, envelope::TraceContext};

/// The OpenTelemetry context a `traceparent`/`tracestate` pair describes.
pub fn context_of(trace: &TraceContext) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&Carrier(trace))
}

/// The `traceparent`/`tracestate` naming `span`, or `None` when it has no valid context
/// (tracing is not installed).
pub fn trace_of(span: &tracing::Span) -> Option<TraceContext> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut trace = TraceContext::default();
    TraceContextPropagator::new().inject_context(&context, &mut trace);
    Some(trace)
}

/// A trace context read by the propagator as it is, with no map of headers in between.
struct Carrier<'a>(&'a TraceContext);

impl Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.0.traceparent.as_deref(),
            "tracestate" => self.0.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        let mut keys = Vec::with_capacity(2);
        if self.0.traceparent.is_some() {
            keys.push("traceparent");
        }
        if self.0.tracestate.is_some() {
            keys.push("tracestate");
        }
        keys
    }
}

/// The propagator writes straight into a trace context; an empty `tracestate` is none.
impl Injector for TraceContext {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.traceparent = Some(value),
            "tracestate" => self.tracestate = Some(value).filter(|s| !s.is_empty()),
            _ => {}
        }
    }
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
