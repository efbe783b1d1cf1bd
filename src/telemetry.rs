//! Logs: JSON lines (or human text) on stdout, filtered by `RUST_LOG`.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// What is logged when `RUST_LOG` is unset: causeway at info, the AMQP client's chatter only
/// when it is a warning.
const DEFAULT_FILTER: &str = "info,lapin=warn,amq_protocol=warn";

/// Installs the global log subscriber.
pub fn init_logs(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // Only fails when a subscriber is already installed, which then keeps logging.
    drop(result);
}
