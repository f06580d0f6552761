//! `telemetry:` (OTLP export) and `decision_log:`. The `OTEL_*` environment variables
//! override `telemetry:` as the OpenTelemetry specification has them.

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::telemetry::decision_log::{DecisionLogSettings, Destination};
use crate::telemetry::{Protocol, TelemetrySettings};

/// OpenTelemetry export.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `service.name` of every span and metric (`OTEL_SERVICE_NAME`). Default `cedargate`.
    pub service_name: Option<String>,
    /// The OTLP collector; without it (and without `OTEL_EXPORTER_OTLP_ENDPOINT`) nothing is
    /// exported, and `/metrics` still serves every metric.
    pub otlp: Option<OtlpConfig>,
}

/// The OTLP collector.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// Base URL: `http://collector:4317` (gRPC), `http://collector:4318` (HTTP; the signal's
    /// path, `/v1/traces`, is appended).
    pub endpoint: url::Url,
    /// `grpc` or `http/protobuf` (the default).
    #[serde(default)]
    pub protocol: Protocol,
    /// Per-export timeout. Default 10s.
    pub timeout: Option<HumanDuration>,
    /// How often metrics are pushed. Default 60s.
    pub metrics_interval: Option<HumanDuration>,
    /// Export spans. Default true.
    #[serde(default = "yes")]
    pub traces: bool,
    /// Export metrics. Default true.
    #[serde(default = "yes")]
    pub metrics: bool,
}

fn yes() -> bool {
    true
}

/// The decision log (`docs/decision-log.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionLogConfig {
    /// `log` (the process log stream, stderr; the default), `file`, `otlp` or `off`.
    #[serde(default)]
    pub to: Destination,
    /// The file, for `to: file` (relative to the config file).
    pub path: Option<PathBuf>,
    /// Fraction of allows recorded, 0 to 1 (denies always are). Default 1.
    #[serde(default = "one")]
    pub allow_sample_rate: f64,
    /// Fields removed from every record, as dotted paths: `authInfo.subject`, `facts`.
    #[serde(default)]
    pub mask: Vec<String>,
}

fn one() -> f64 {
    1.0
}

impl Default for DecisionLogConfig {
    fn default() -> Self {
        Self { to: Destination::Log, path: None, allow_sample_rate: 1.0, mask: Vec::new() }
    }
}

impl Config {
    /// What telemetry exports, as the config says (the environment is read when it starts).
    pub fn telemetry_settings(&self) -> TelemetrySettings {
        let defaults = TelemetrySettings::default();
        let otlp = self.telemetry.otlp.as_ref();
        TelemetrySettings {
            service_name: self.telemetry.service_name.clone().unwrap_or(defaults.service_name),
            endpoint: otlp.map(|otlp| otlp.endpoint.as_str().trim_end_matches('/').to_owned()),
            protocol: otlp.map_or(defaults.protocol, |otlp| otlp.protocol),
            timeout: otlp.and_then(|otlp| otlp.timeout).map_or(defaults.timeout, |timeout| timeout.0),
            metrics_interval: otlp
                .and_then(|otlp| otlp.metrics_interval)
                .map_or(defaults.metrics_interval, |interval| interval.0),
            traces: otlp.is_none_or(|otlp| otlp.traces),
            metrics: otlp.is_none_or(|otlp| otlp.metrics),
            logs: self.decision_log.to == Destination::Otlp,
        }
    }

    /// The decision log's settings, its file resolved against the config's directory.
    pub fn decision_log_settings(&self) -> DecisionLogSettings {
        DecisionLogSettings {
            to: self.decision_log.to.clone(),
            path: self.decision_log.path.as_ref().map(|path| self.resolve(path)),
            allow_sample_rate: self.decision_log.allow_sample_rate,
            mask: self.decision_log.mask.clone(),
        }
    }
}
