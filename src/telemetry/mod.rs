//! The tracing subscriber: JSON or text lines on stdout, filtered by `RUST_LOG` or
//! `log.level`.

mod json;

use crate::config::{LogConfig, LogFormat};
pub use json::{JsonLines, JsonSpanFields};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

/// Installs the global subscriber. Safe to call more than once (later calls are no-ops),
/// which tests that start several servers rely on.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(FmtSpan::NONE)
        .with_writer(std::io::stdout);
    let _ = match config.format {
        LogFormat::Json => builder
            .fmt_fields(JsonSpanFields)
            .event_format(JsonLines)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
