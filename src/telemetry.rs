//! Logging set-up: `tracing` to stdout, human-readable or JSON lines.

use tracing_subscriber::EnvFilter;

use crate::configuration::LogFormat;

/// Installs the global subscriber; a second call (tests start many apps in
/// one process) leaves the first in place.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
