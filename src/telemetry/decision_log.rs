//! Where decision records go: the process log stream, a file, OTLP logs, or nowhere; and
//! which are written (denies always, allows sampled) with which fields masked.
//!
//! The record itself is built by the engine (`engine::record`); its format is
//! `docs/decision-log.md`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry_sdk::logs::SdkLoggerProvider;
use serde_json::Value;
use tracing_appender::non_blocking::NonBlocking;

use super::batch::Batcher;

use super::metrics::metrics;

/// The process log stream's writer (stderr), set by `telemetry::init`.
pub(super) static LOG_WRITER: OnceLock<NonBlocking> = OnceLock::new();
/// The OTLP logger provider, set by `telemetry::init` when OTLP logs are configured.
pub(super) static LOGGER: OnceLock<SdkLoggerProvider> = OnceLock::new();

/// Where records go.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Destination {
    /// The process log stream (stderr): one JSON object per line.
    #[default]
    Log,
    /// A file of its own, appended to.
    File,
    /// OTLP logs, to the configured collector.
    Otlp,
    /// Nowhere.
    Off,
}

/// Settings of the decision log.
#[derive(Debug, Clone)]
pub struct DecisionLogSettings {
    /// Where records go.
    pub to: Destination,
    /// The file, for [`Destination::File`].
    pub path: Option<PathBuf>,
    /// Fraction of allows written (denies always are), 0.0 to 1.0.
    pub allow_sample_rate: f64,
    /// Dotted paths of fields removed from every record (`authInfo.subject`).
    pub mask: Vec<String>,
}

impl Default for DecisionLogSettings {
    fn default() -> Self {
        Self { to: Destination::Log, path: None, allow_sample_rate: 1.0, mask: Vec::new() }
    }
}

/// Bytes reserved for one serialized record: most fit (about 600 to 900).
const RECORD_CAPACITY: usize = 1024;

enum Sink {
    /// Lines batched into a writer: the process log stream's, or a file.
    Lines(Batcher),
    /// No process log stream (a library user, a test): each record is a `tracing` event.
    Events,
    Otlp,
    Off,
}

/// The decision log of one engine.
pub struct DecisionLog {
    sink: Sink,
    allow_sample_rate: f64,
    mask: Vec<(String, Vec<String>)>,
}

impl std::fmt::Debug for DecisionLog {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sink = match self.sink {
            Sink::Lines(_) => "lines",
            Sink::Events => "events",
            Sink::Otlp => "otlp",
            Sink::Off => "off",
        };
        formatter
            .debug_struct("DecisionLog")
            .field("sink", &sink)
            .field("allow_sample_rate", &self.allow_sample_rate)
            .finish_non_exhaustive()
    }
}

/// Records as `tracing` events: what an engine built without a config gets (a library user, a
/// test). Starts no thread: `EngineSettings::default()` is also asked for its plain defaults.
impl Default for DecisionLog {
    fn default() -> Self {
        Self { sink: Sink::Events, allow_sample_rate: 1.0, mask: Vec::new() }
    }
}

/// The process log stream, batched, when `telemetry::init` set one up; else events.
fn log_stream() -> Sink {
    LOG_WRITER
        .get()
        .and_then(|writer| Batcher::new(Box::new(writer.clone())).ok())
        .map_or(Sink::Events, Sink::Lines)
}

impl DecisionLog {
    /// A log that writes nothing (policy tests, replay).
    pub fn off() -> Self {
        Self { sink: Sink::Off, allow_sample_rate: 0.0, mask: Vec::new() }
    }

    /// Opens the destination. A file is created if missing and appended to.
    pub fn open(settings: &DecisionLogSettings) -> Result<Self, String> {
        if !(0.0..=1.0).contains(&settings.allow_sample_rate) {
            return Err(format!("allow_sample_rate {} is not between 0 and 1", settings.allow_sample_rate));
        }
        let sink = match settings.to {
            Destination::Log => log_stream(),
            Destination::Off => Sink::Off,
            Destination::Otlp => Sink::Otlp,
            Destination::File => {
                let path = settings.path.as_deref().ok_or("`path` is required when `to` is file")?;
                let file = open_append(path)?;
                Sink::Lines(
                    Batcher::new(Box::new(file))
                        .map_err(|error| format!("cannot start the decision log writer: {error}"))?,
                )
            }
        };
        let mask = settings
            .mask
            .iter()
            .map(|path| (path.clone(), path.split('.').map(str::to_owned).collect()))
            .collect();
        Ok(Self { sink, allow_sample_rate: settings.allow_sample_rate, mask })
    }

    /// Writes out every queued record now (at shutdown, before the log stream closes).
    pub fn flush(&self) {
        if let Sink::Lines(batcher) = &self.sink {
            batcher.flush();
        }
    }

    /// Whether a record of a decision with this result is to be written: every deny, and
    /// allows at the sample rate.
    pub fn wants(&self, allowed: bool) -> bool {
        match self.sink {
            Sink::Off => false,
            _ if !allowed => true,
            _ if self.allow_sample_rate >= 1.0 => true,
            _ => rand::random::<f64>() < self.allow_sample_rate,
        }
    }

    /// Writes one record, masked as configured: straight from the record to bytes unless a
    /// field is to be masked.
    pub fn write(&self, record: &impl serde::Serialize) {
        if matches!(self.sink, Sink::Off) {
            return;
        }
        if self.mask.is_empty() && !matches!(self.sink, Sink::Otlp) {
            // Into a buffer the size of a record, not grown from empty a dozen times.
            let mut line = Vec::with_capacity(RECORD_CAPACITY);
            if serde_json::to_writer(&mut line, record).is_ok() {
                self.write_line(line);
            }
            return;
        }
        let Ok(mut record) = serde_json::to_value(record) else { return };
        let mut masked = Vec::new();
        for (path, segments) in &self.mask {
            if remove(&mut record, segments) {
                masked.push(Value::String(path.clone()));
            }
        }
        if let (false, Value::Object(fields)) = (masked.is_empty(), &mut record) {
            fields.insert("masked".to_owned(), Value::Array(masked));
        }
        match (&self.sink, LOGGER.get()) {
            (Sink::Otlp, Some(provider)) => emit(provider, record),
            _ => self.write_line(serde_json::to_vec(&record).unwrap_or_default()),
        }
    }

    fn write_line(&self, mut line: Vec<u8>) {
        line.push(b'\n');
        match &self.sink {
            Sink::Lines(batcher) => {
                if !batcher.push(&line) {
                    metrics().decision_record_dropped();
                }
            }
            Sink::Otlp => {
                // OTLP was asked for but is not running (no exporter): the log stream has it.
                if let Some(mut writer) = LOG_WRITER.get().cloned() {
                    if writer.write_all(&line).is_err() {
                        metrics().decision_record_dropped();
                    }
                }
            }
            Sink::Events => {
                let text = String::from_utf8_lossy(&line);
                tracing::info!(target: "cedargate::decision", record = %text.trim_end());
            }
            Sink::Off => {}
        }
    }
}

fn open_append(path: &Path) -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|error| format!("{}: {error}", path.display()))
}

/// Removes the field at `segments`; true when it was there.
fn remove(value: &mut Value, segments: &[String]) -> bool {
    match segments {
        [] => false,
        [last] => value.as_object_mut().is_some_and(|fields| fields.remove(last).is_some()),
        [first, rest @ ..] => value.get_mut(first.as_str()).is_some_and(|inner| remove(inner, rest)),
    }
}

fn emit(provider: &SdkLoggerProvider, record: Value) {
    let logger = provider.logger("cedargate");
    let mut log = logger.create_log_record();
    log.set_event_name("cedargate.decision");
    log.set_severity_number(Severity::Info);
    log.set_severity_text("INFO");
    if let Some((trace_id, span_id)) = super::trace::current_context() {
        log.set_trace_context(trace_id, span_id, None);
    }
    log.set_body(any_value(record));
    logger.emit(log);
}

fn any_value(value: Value) -> AnyValue {
    match value {
        Value::Null => AnyValue::String("".into()),
        Value::Bool(flag) => AnyValue::Boolean(flag),
        Value::Number(number) => match number.as_i64() {
            Some(integer) => AnyValue::Int(integer),
            None => AnyValue::Double(number.as_f64().unwrap_or_default()),
        },
        Value::String(text) => AnyValue::String(text.into()),
        Value::Array(items) => AnyValue::ListAny(Box::new(items.into_iter().map(any_value).collect())),
        Value::Object(fields) => AnyValue::Map(Box::new(
            fields.into_iter().map(|(key, value)| (key.into(), any_value(value))).collect(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_removes_the_field_and_names_it() {
        let settings = DecisionLogSettings {
            mask: vec!["authInfo.subject".into(), "facts".into(), "nothing.here".into()],
            ..DecisionLogSettings::default()
        };
        let log = DecisionLog::open(&settings).unwrap();
        let mut record =
            serde_json::json!({"authInfo": {"subject": "alice", "roles": []}, "facts": {"a": 1}});
        let mut masked = Vec::new();
        for (path, segments) in &log.mask {
            if remove(&mut record, segments) {
                masked.push(path.clone());
            }
        }
        assert_eq!(record, serde_json::json!({"authInfo": {"roles": []}}));
        assert_eq!(masked, ["authInfo.subject", "facts"]);
    }

    #[test]
    fn denies_are_always_written_allows_sampled() {
        let never = DecisionLogSettings { allow_sample_rate: 0.0, ..DecisionLogSettings::default() };
        let log = DecisionLog::open(&never).unwrap();
        assert!(log.wants(false));
        assert!((0..100).all(|_| !log.wants(true)));
        assert!(!DecisionLog::off().wants(false));
        let bad = DecisionLogSettings { allow_sample_rate: 1.5, ..DecisionLogSettings::default() };
        assert!(DecisionLog::open(&bad).unwrap_err().contains("allow_sample_rate"));
    }
}
