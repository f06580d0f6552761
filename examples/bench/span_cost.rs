//! What the OpenTelemetry SDK itself costs for the three spans of one check, outside
//! cedargate: the floor under the "tracing" row of `scripts/bench-telemetry.sh`
//! (docs/benchmarks.md, "What telemetry costs").
//!
//! Makes the spans of one check (server span with its `rpc.*` and decision attributes, the
//! credential span, the policy span) 150 times every 10 ms (15,000 checks/s, about the rate of
//! the load test) and prints the process's CPU per check.
//!
//! Usage: `span_cost made` (spans made and ended, handed to a processor that drops them) or
//! `span_cost otlp http://127.0.0.1:PORT` (the SDK's batch processor and OTLP/gRPC exporter,
//! as cedargate configures them, to `examples/bench/otlp_sink.rs`).

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
};

const CHECKS: u32 = 150_000;

/// Drops every span: what making them costs without exporting them.
#[derive(Debug)]
struct Drop;

impl SpanExporter for Drop {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        std::hint::black_box(batch);
        Ok(())
    }
}

/// The OTLP exporter run on the tokio runtime from the batch processor's thread, as
/// cedargate's `telemetry::export::CountedSpans` runs it.
#[derive(Debug)]
struct OnRuntime(Arc<opentelemetry_otlp::SpanExporter>, tokio::runtime::Handle);

impl SpanExporter for OnRuntime {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let inner = Arc::clone(&self.0);
        match self.1.spawn(async move { inner.export(batch).await }).await {
            Ok(result) => result,
            Err(error) => Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(error.to_string())),
        }
    }
}

fn one_check(tracer: &SdkTracer, n: u32) {
    let server = tracer
        .span_builder("cedargate.v1.Authorizer/Check")
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", "cedargate.v1.Authorizer"),
            KeyValue::new("rpc.method", "Check"),
        ])
        .start_with_context(tracer, &Context::new());
    let check = Context::new().with_span(server);
    let credential = tracer
        .span_builder("cedargate.credential.resolve")
        .with_attributes([KeyValue::new("cedargate.credential.cache", "none")])
        .start_with_context(tracer, &check);
    check.with_span(credential).span().set_attribute(KeyValue::new("cedargate.credential.kind", "static"));
    let policy = tracer.span_builder("cedargate.policy.evaluate").start_with_context(tracer, &check);
    check
        .with_span(policy)
        .span()
        .set_attribute(KeyValue::new("cedargate.policy.revision", "3f6c2a9d41b0".to_owned()));
    let span = check.span();
    span.set_attribute(KeyValue::new("cedargate.decision.outcome", "allow"));
    span.set_attribute(KeyValue::new("cedargate.decision.id", format!("0193a8c2-5d1e-7f00-8000-{n:012}")));
    span.set_attribute(KeyValue::new("rpc.grpc.status_code", 0_i64));
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // utime and stime, after the parenthesised command name.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |t| t.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    ticks / 100.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let _entered = runtime.enter();
    let batch = BatchConfigBuilder::default().with_max_queue_size(8192).build();
    let provider = match args.first().map(String::as_str) {
        Some("made") => SdkTracerProvider::builder().with_simple_exporter(Drop).build(),
        Some("otlp") => {
            let endpoint = args.get(1).ok_or("otlp needs an endpoint")?.clone();
            let exporter = runtime.block_on(async {
                opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint).build()
            })?;
            let exporter = OnRuntime(Arc::new(exporter), runtime.handle().clone());
            SdkTracerProvider::builder()
                .with_span_processor(BatchSpanProcessor::builder(exporter).with_batch_config(batch).build())
                .build()
        }
        _ => return Err("usage: span_cost made | span_cost otlp http://127.0.0.1:PORT".into()),
    };
    let tracer = provider.tracer("cedargate");
    let before = cpu_seconds();
    for n in 0..CHECKS {
        if n % 150 == 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
        one_check(&tracer, n);
    }
    provider.force_flush()?;
    let cpu = cpu_seconds() - before;
    println!("{}: {:.1} µs of CPU per check", args[0], cpu * 1e6 / f64::from(CHECKS));
    provider.shutdown()?;
    Ok(())
}
