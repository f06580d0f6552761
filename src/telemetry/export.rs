//! OTLP exporters wrapped so a failed export is counted: an unreachable collector costs the
//! data (bounded queues drop it) and shows in `cedargate_telemetry_export_failures_total`,
//! never a slower or failed check.

use std::sync::Arc;

use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::logs::{LogBatch, LogExporter};
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;

use super::metrics::metrics;

/// Spans. The SDK's batch processor calls it from a thread of its own; the export itself
/// (tonic, hyper) runs on the service's tokio runtime.
#[derive(Debug)]
pub struct CountedSpans {
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    runtime: tokio::runtime::Handle,
}

impl CountedSpans {
    /// Wraps `inner`, to run on the current runtime (call it inside the runtime).
    pub fn new(inner: opentelemetry_otlp::SpanExporter) -> Result<Self, String> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|error| error.to_string())?;
        Ok(Self { inner: Arc::new(inner), runtime })
    }
}

impl SpanExporter for CountedSpans {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let inner = Arc::clone(&self.inner);
        let result = match self.runtime.spawn(async move { inner.export(batch).await }).await {
            Ok(result) => result,
            Err(error) => Err(OTelSdkError::InternalFailure(format!("the export task failed: {error}"))),
        };
        if result.is_err() {
            metrics().export_failure("traces");
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

/// Metrics.
#[derive(Debug)]
pub struct CountedMetrics(pub opentelemetry_otlp::MetricExporter);

impl PushMetricExporter for CountedMetrics {
    async fn export(&self, metrics_data: &ResourceMetrics) -> OTelSdkResult {
        let result = self.0.export(metrics_data).await;
        if result.is_err() {
            metrics().export_failure("metrics");
        }
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.0.temporality()
    }
}

/// Logs (decision records).
#[derive(Debug)]
pub struct CountedLogs(pub opentelemetry_otlp::LogExporter);

impl LogExporter for CountedLogs {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        let result = self.0.export(batch).await;
        if result.is_err() {
            metrics().export_failure("logs");
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}
