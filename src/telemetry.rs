//! Logging set-up: `tracing` events to stderr through a non-blocking writer, so a slow
//! terminal or pipe never stalls a decision.

use std::io::IsTerminal;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber; `RUST_LOG` filters (default `info`). Keep the guard alive
/// for the life of the process: dropping it flushes and stops the writer.
pub fn init(format: LogFormat) -> WorkerGuard {
    // The writer thread drains every queued line, then flushes: buffering turns a burst of
    // decisions into one write instead of one system call per line.
    let (writer, guard) = tracing_appender::non_blocking(std::io::BufWriter::new(std::io::stderr()));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // One log line per panic, in the log's own format: the default hook would write raw
    // lines (and a backtrace) past the JSON log. The server layers answer fail-closed.
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|text| (*text).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let location = info.location().map(|at| format!("{}:{}", at.file(), at.line())).unwrap_or_default();
        tracing::error!(target: "cedargate::panic", location, message = %crate::model::quote(&message), "panic");
    }));
    guard
}
