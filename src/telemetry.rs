//! Telemetry: logs, traces, metrics and the decision log, the way OpenTelemetry and
//! Prometheus users expect them.
//!
//! - Logs: `tracing` events to stderr through a non-blocking writer (a slow terminal or pipe
//!   never stalls a decision), text or one JSON object per line; panics and library messages
//!   (`log` crate, OpenTelemetry's own) included.
//! - Traces: cedargate's spans ([`trace::Span`], made with the OpenTelemetry SDK directly)
//!   exported over OTLP when an endpoint is configured, joined to the caller's W3C trace.
//! - Metrics: [`metrics::metrics`], read by `GET /metrics` and pushed over OTLP when configured.
//! - Decision log: [`decision_log::DecisionLog`].
//!
//! The standard `OTEL_*` environment variables override the config file.

mod batch;
pub mod decision_log;
mod export;
pub mod metrics;
pub mod trace;

use std::io::IsTerminal;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
pub enum Protocol {
    /// OTLP over gRPC (port 4317 by convention).
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318), the OpenTelemetry default.
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// What to export where; every field can be overridden by its `OTEL_*` variable.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    /// `service.name` (`OTEL_SERVICE_NAME`).
    pub service_name: String,
    /// The collector's base URL (`OTEL_EXPORTER_OTLP_ENDPOINT`); none: no export.
    pub endpoint: Option<String>,
    /// Transport (`OTEL_EXPORTER_OTLP_PROTOCOL`).
    pub protocol: Protocol,
    /// Per-export timeout (`OTEL_EXPORTER_OTLP_TIMEOUT`).
    pub timeout: Duration,
    /// Metric push interval (`OTEL_METRIC_EXPORT_INTERVAL`).
    pub metrics_interval: Duration,
    /// Export spans (`OTEL_TRACES_EXPORTER=none` turns it off).
    pub traces: bool,
    /// Export metrics (`OTEL_METRICS_EXPORTER=none` turns it off).
    pub metrics: bool,
    /// Export decision records as OTLP logs (`decision_log.to: otlp`).
    pub logs: bool,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            service_name: "cedargate".to_owned(),
            endpoint: None,
            protocol: Protocol::default(),
            timeout: Duration::from_secs(10),
            metrics_interval: Duration::from_secs(60),
            traces: true,
            metrics: true,
            logs: false,
        }
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
#[error("telemetry: {0}")]
pub struct TelemetryError(String);

/// Keeps telemetry running; dropping it flushes the log writer and the exporters.
#[must_use = "dropping it stops the log writer and the exporters"]
pub struct Telemetry {
    _log: WorkerGuard,
    tracer: Option<SdkTracerProvider>,
    logger: bool,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(tracer) = self.tracer.take() {
            let _ = tracer.shutdown_with_timeout(Duration::from_secs(2));
        }
        metrics::shutdown();
        if self.logger {
            if let Some(logger) = decision_log::LOGGER.get() {
                let _ = logger.shutdown_with_timeout(Duration::from_secs(2));
            }
        }
    }
}

/// Installs logging only: for commands that export nothing.
pub fn init(format: LogFormat) -> Telemetry {
    let guard = install_subscriber(format);
    Telemetry { _log: guard, tracer: None, logger: false }
}

/// Installs logging, and OTLP export as `settings` and the environment say. Call it inside the
/// tokio runtime (the exporters run as its tasks) and before anything records a metric.
pub fn init_with_export(
    format: LogFormat,
    settings: &TelemetrySettings,
) -> Result<Telemetry, TelemetryError> {
    let otlp = Otlp::resolve(settings)?;
    let resource = resource(settings);
    let tracer = match &otlp {
        Some(otlp) if otlp.enabled("TRACES") => Some(tracer_provider(otlp, resource.clone())?),
        _ => None,
    };
    let metrics_reader = match &otlp {
        Some(otlp) if otlp.enabled("METRICS") => Some(metric_reader(otlp, settings)?),
        _ => None,
    };
    let exporting_metrics = metrics_reader.is_some();
    let installed = metrics::install(resource.clone(), metrics_reader).map_err(TelemetryError)?;
    let logger = match &otlp {
        Some(otlp) if settings.logs => {
            let _ = decision_log::LOGGER.set(logger_provider(otlp, resource)?);
            true
        }
        _ => false,
    };
    for (signal, exporting) in
        [("traces", tracer.is_some()), ("metrics", exporting_metrics), ("logs", logger)]
    {
        if exporting {
            metrics::metrics().exporting(signal);
        }
    }
    if let Some(provider) = &tracer {
        trace::install(provider.tracer("cedargate"));
    }
    let guard = install_subscriber(format);
    if let Some(otlp) = &otlp {
        tracing::info!(
            // The config's; OTEL_EXPORTER_OTLP_ENDPOINT and the per-signal variables win.
            endpoint = %otlp.endpoint.as_deref().unwrap_or("(none in the config)"),
            endpoint_variables = otlp.from_env,
            protocol = otlp.protocol_name(),
            traces = tracer.is_some(),
            metrics = exporting_metrics,
            logs = logger,
            "exporting telemetry over OTLP"
        );
    }
    if exporting_metrics && !installed {
        tracing::warn!("metrics were recorded before telemetry started: they are not exported over OTLP");
    }
    Ok(Telemetry { _log: guard, tracer, logger })
}

fn install_subscriber(format: LogFormat) -> WorkerGuard {
    // The writer thread drains every queued line, then flushes: buffering turns a burst of
    // decisions into one write instead of one system call per line. Lossy: a full queue drops
    // lines rather than stalling a decision.
    let (writer, guard) = tracing_appender::non_blocking(std::io::BufWriter::new(std::io::stderr()));
    let _ = decision_log::LOG_WRITER.set(writer.clone());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_ansi(std::io::stderr().is_terminal()).with_writer(writer);
    let fmt = match format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).with_filter(filter).boxed(),
    };
    let _ = tracing_subscriber::registry().with(fmt).try_init();
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

/// `service.name` from `OTEL_SERVICE_NAME`, else the config; `OTEL_RESOURCE_ATTRIBUTES` added
/// by the SDK's detectors.
fn resource(settings: &TelemetrySettings) -> Resource {
    let builder = Resource::builder()
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    let from_env = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|name| !name.is_empty());
    if from_env {
        builder.build()
    } else {
        builder.with_service_name(settings.service_name.clone()).build()
    }
}

/// The OTLP side, once the config and the environment are combined.
struct Otlp {
    /// From the config: used for each signal whose endpoint no variable names.
    endpoint: Option<String>,
    /// Whether a variable names an endpoint (the exporter reads those itself).
    from_env: bool,
    protocol: Protocol,
    timeout: Option<Duration>,
    traces: bool,
    metrics: bool,
}

impl Otlp {
    fn resolve(settings: &TelemetrySettings) -> Result<Option<Self>, TelemetryError> {
        let env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let env_endpoint = [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
        ]
        .iter()
        .any(|name| env(name).is_some());
        if !env_endpoint && settings.endpoint.is_none() {
            return Ok(None);
        }
        let protocol = match env("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
            Some("grpc") => Protocol::Grpc,
            Some("http/protobuf") => Protocol::HttpProtobuf,
            Some(other) => {
                return Err(TelemetryError(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL `{}` is not `grpc` or `http/protobuf`",
                    crate::model::quote(other)
                )))
            }
            None => settings.protocol,
        };
        let off = |name: &str| env(name).is_some_and(|value| value == "none");
        Ok(Some(Self {
            endpoint: settings.endpoint.clone(),
            from_env: env_endpoint,
            protocol,
            timeout: env("OTEL_EXPORTER_OTLP_TIMEOUT").is_none().then_some(settings.timeout),
            traces: settings.traces && !off("OTEL_TRACES_EXPORTER"),
            metrics: settings.metrics && !off("OTEL_METRICS_EXPORTER"),
        }))
    }

    fn enabled(&self, signal: &str) -> bool {
        match signal {
            "TRACES" => self.traces,
            _ => self.metrics,
        }
    }

    fn protocol_name(&self) -> &'static str {
        match self.protocol {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }

    /// The config's endpoint for a signal (`TRACES`, `METRICS`, `LOGS`): a gRPC endpoint as is,
    /// an HTTP base with the signal's path. `None` when `OTEL_EXPORTER_OTLP_ENDPOINT` or the
    /// signal's own variable is set: the exporter then reads it, and an endpoint given to its
    /// builder would win over the variable. Decided per signal, so a variable for one signal
    /// leaves the others on the config's endpoint.
    fn endpoint_for(&self, signal: &str, path: &str) -> Option<String> {
        let set = |name: &str| std::env::var(name).is_ok_and(|value| !value.is_empty());
        if set("OTEL_EXPORTER_OTLP_ENDPOINT") || set(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")) {
            return None;
        }
        let base = self.endpoint.as_deref()?;
        Some(match self.protocol {
            Protocol::Grpc => base.to_owned(),
            Protocol::HttpProtobuf => format!("{}/{path}", base.trim_end_matches('/')),
        })
    }
}

/// Builds an OTLP exporter of one signal over the chosen transport, with the config's
/// endpoint and timeout unless the environment gives them.
macro_rules! exporter {
    ($builder:expr, $otlp:expr, $signal:literal, $path:literal) => {{
        let otlp: &Otlp = $otlp;
        match otlp.protocol {
            Protocol::Grpc => {
                let mut builder = $builder.with_tonic();
                if let Some(endpoint) = otlp.endpoint_for($signal, $path) {
                    builder = builder.with_endpoint(endpoint);
                }
                if let Some(timeout) = otlp.timeout {
                    builder = builder.with_timeout(timeout);
                }
                builder.build()
            }
            Protocol::HttpProtobuf => {
                let mut builder = $builder.with_http();
                if let Some(endpoint) = otlp.endpoint_for($signal, $path) {
                    builder = builder.with_endpoint(endpoint);
                }
                if let Some(timeout) = otlp.timeout {
                    builder = builder.with_timeout(timeout);
                }
                builder.build()
            }
        }
        .map_err(|error| TelemetryError(format!("OTLP exporter: {error}")))
    }};
}

fn tracer_provider(otlp: &Otlp, resource: Resource) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = exporter!(opentelemetry_otlp::SpanExporter::builder(), otlp, "TRACES", "v1/traces")?;
    let exporter = export::CountedSpans::new(exporter).map_err(TelemetryError)?;
    // The SDK's own batch processor: a thread that a check wakes only when a batch is full
    // (the tokio-task variant is woken by every span). Bounded: a collector that does not keep
    // up costs spans (dropped), never memory or a check.
    let batch = opentelemetry_sdk::trace::BatchConfigBuilder::default().with_max_queue_size(8192).build();
    let processor =
        opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter).with_batch_config(batch).build();
    Ok(SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource).build())
}

fn metric_reader(otlp: &Otlp, settings: &TelemetrySettings) -> Result<metrics::OtlpReader, TelemetryError> {
    let exporter = export::CountedMetrics(exporter!(
        opentelemetry_otlp::MetricExporter::builder(),
        otlp,
        "METRICS",
        "v1/metrics"
    )?);
    let interval = std::env::var("OTEL_METRIC_EXPORT_INTERVAL")
        .ok()
        .and_then(|millis| millis.parse::<u64>().ok())
        .map_or(settings.metrics_interval, Duration::from_millis);
    Ok(opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader::builder(
        exporter,
        opentelemetry_sdk::runtime::Tokio,
    )
    .with_interval(interval)
    .build())
}

fn logger_provider(otlp: &Otlp, resource: Resource) -> Result<SdkLoggerProvider, TelemetryError> {
    let exporter =
        export::CountedLogs(exporter!(opentelemetry_otlp::LogExporter::builder(), otlp, "LOGS", "v1/logs")?);
    let processor = opentelemetry_sdk::logs::log_processor_with_async_runtime::BatchLogProcessor::builder(
        exporter,
        opentelemetry_sdk::runtime::Tokio,
    )
    .build();
    Ok(SdkLoggerProvider::builder().with_log_processor(processor).with_resource(resource).build())
}
