//! Telemetry: logs (JSON lines or text on stdout, filtered by `RUST_LOG`), OpenTelemetry
//! traces (exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set), and the
//! Prometheus metrics of `/metrics`.
//!
//! Spans are always made, exporter or not, so that trace context flows from the app through
//! the broker to the next app and every log line about an event can name its trace.

pub mod metrics;
mod propagation;

use std::{ffi::OsStr, io::IsTerminal, time::Duration};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, Layer, filter::Targets, layer::SubscriberExt};

use crate::config::{LogFormat, without_credentials};
pub use propagation::{TraceExt, context_of, current_trace_id, field_table_trace, trace_of};

/// What is logged when `RUST_LOG` is unset: causeway at info.
const DEFAULT_FILTER: &str = "info";
/// The AMQP client's own lines are off unless `RUST_LOG` names it: causeway watches every
/// connection and channel itself and logs each failure once, with what it does about it,
/// while the client logs the same failure as ERROR lines of its own, many times over, also
/// for a recovery that succeeds.
const AMQP_CLIENT_OFF: [&str; 2] = ["lapin=off", "amq_protocol=off"];

/// The installed telemetry; flush it on the way out.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    exporting: bool,
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built from the `OTEL_*` settings.
    #[error("OpenTelemetry exporter: {0}")]
    Exporter(String),
}

/// The log filter: `RUST_LOG` (or the default), with the AMQP client's lines off unless
/// `RUST_LOG` names it.
/// Also the problem with `RUST_LOG`, when it could not be used (it is then ignored for the
/// default, and the problem is logged once logging is up).
fn log_filter(rust_log: Option<&str>) -> (EnvFilter, Option<String>) {
    let wanted = rust_log
        .filter(|v| !v.trim().is_empty())
        .unwrap_or(DEFAULT_FILTER);
    let (mut filter, problem) = match EnvFilter::try_new(wanted) {
        Ok(filter) => (filter, None),
        Err(error) => (EnvFilter::new(DEFAULT_FILTER), Some(error.to_string())),
    };
    if !wanted.contains("lapin") && !wanted.contains("amq_protocol") {
        for directive in AMQP_CLIENT_OFF {
            if let Ok(directive) = directive.parse() {
                filter = filter.add_directive(directive);
            }
        }
    }
    (filter, problem)
}

/// Installs logging and tracing for the whole process. Call it inside the tokio runtime:
/// the gRPC exporter needs one.
pub fn init(format: LogFormat, service: &str) -> Result<Telemetry, TelemetryError> {
    // OTEL_SERVICE_NAME wins when set; otherwise the service is CAUSEWAY_SERVICE.
    // OTEL_RESOURCE_ATTRIBUTES is read by the builder's own detectors.
    let service_name = var("OTEL_SERVICE_NAME")
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| service.to_owned());
    let resource = Resource::builder().with_service_name(service_name).build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    let exporting = exporter_wanted();
    if exporting {
        builder = builder.with_batch_exporter(exporter()?);
    }
    let provider = builder.build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    // With every span dropped by configuration, spans are not built at all: the trace
    // context an app sends still passes through to the broker and the next app unchanged.
    let otel = spans_wanted().then(|| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("causeway"))
            // Attributes about causeway's code and threads (file, line, module, thread, busy
            // and idle time) say nothing about the event and cost every span: each poll of
            // a publish would read the clock twice. causeway reads its trace context from
            // the span, never from OpenTelemetry's current context, so entering a span need
            // not make it current there.
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_filter(Targets::new().with_target("causeway", tracing::Level::INFO))
            .boxed()
    });

    let (filter, filter_problem) = log_filter(var("RUST_LOG").as_deref());
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(colours_wanted(
                std::io::stdout().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .with_filter(filter)
            .boxed(),
    };
    // A list, not an `Option` layer: an absent `Option` layer enables every span, and the
    // registry would then build spans nobody records.
    let layers: Vec<_> = std::iter::once(logs).chain(otel).collect();
    let subscriber = tracing_subscriber::registry().with(layers);
    // Only fails when a subscriber is already installed, which then keeps working.
    let _ = tracing::subscriber::set_global_default(subscriber);
    if let Some(problem) = filter_problem {
        tracing::warn!(%problem, default = DEFAULT_FILTER, "RUST_LOG cannot be used; logging with the default filter");
    }
    Ok(Telemetry {
        provider,
        exporting,
    })
}

impl Telemetry {
    /// Whether spans leave the process.
    pub fn exporting(&self) -> bool {
        self.exporting
    }

    /// Exports the spans still buffered, waiting at most `within`.
    pub async fn shutdown(self, within: Duration) {
        // The SDK's shutdown blocks; on a runtime with one worker it must not run there.
        let provider = self.provider;
        let flush = tokio::task::spawn_blocking(move || provider.shutdown());
        match tokio::time::timeout(within, flush).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "flushing spans failed"),
            Ok(Err(_)) | Err(_) => tracing::warn!("flushing spans did not finish in time"),
        }
    }
}

/// A variable's value; `None` when unset or not UTF-8 (the configuration has refused to
/// start with a telemetry variable that is not UTF-8, naming it).
fn var(name: &str) -> Option<String> {
    std::env::var_os(name).and_then(|value| value.into_string().ok())
}

/// Text logs are coloured only for a person at a terminal: files, pipes and log collectors
/// get plain text, and `NO_COLOR` (set and not empty, see no-color.org) turns colours off.
fn colours_wanted(terminal: bool, no_color: Option<&OsStr>) -> bool {
    terminal && no_color.is_none_or(OsStr::is_empty)
}

/// Spans are made unless the SDK is disabled or the sampler drops every one of them.
fn spans_wanted() -> bool {
    let is =
        |name: &str, value: &str| var(name).is_some_and(|v| v.trim().eq_ignore_ascii_case(value));
    !is("OTEL_SDK_DISABLED", "true") && !is("OTEL_TRACES_SAMPLER", "always_off")
}

/// Spans are exported when an OTLP endpoint is configured and the SDK is not disabled.
fn exporter_wanted() -> bool {
    let set = |name: &str| var(name).is_some_and(|v| !v.trim().is_empty());
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// The OTLP exporter for `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`: `http/protobuf` (the
/// default) or `grpc`. Endpoint, headers and timeout come from the standard variables.
fn exporter() -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    let protocol = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "http/protobuf".into());
    let built = match protocol.trim() {
        "grpc" => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build(),
        "http/protobuf" => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build(),
        other => {
            return Err(TelemetryError::Exporter(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL {other:?} is not supported; use http/protobuf or grpc"
            )));
        }
    };
    // The builder's error may quote the endpoint, which may hold credentials.
    built.map_err(|e| TelemetryError::Exporter(without_credentials(&e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unusable_rust_log_is_reported_and_the_default_used() {
        let (_, problem) = log_filter(Some("causeway=loud"));
        assert!(problem.is_some());
        let (filter, problem) = log_filter(Some("info,causeway=debug"));
        assert!(problem.is_none());
        // The AMQP client's own lines stay off unless RUST_LOG names it.
        assert!(filter.to_string().contains("lapin=off"), "{filter}");
        let (filter, _) = log_filter(Some("info,lapin=warn"));
        assert!(!filter.to_string().contains("lapin=off"), "{filter}");
    }

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colours_wanted(true, None));
        assert!(colours_wanted(true, Some(OsStr::new(""))));
        assert!(!colours_wanted(true, Some(OsStr::new("1"))));
        assert!(!colours_wanted(false, None));
    }
}
