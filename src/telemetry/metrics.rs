//! The service's metrics: OpenTelemetry instruments, recorded once, read by the Prometheus
//! exporter behind `GET /metrics` and, when configured, pushed over OTLP.
//!
//! Label values are fixed vocabularies (outcomes, wires, credential kinds, configured issuers):
//! never a credential, subject, path or other caller-chosen text.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, MeterProvider as _, UpDownCounter};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;

use crate::model::{Outcome, Wire};

/// Bucket bounds (seconds) of every latency histogram: 50 µs to 10 s. The OpenTelemetry default
/// is for milliseconds and would put every check in the first bucket.
const SECONDS_BUCKETS: [f64; 17] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
];

/// Every instrument of the service.
#[derive(Debug)]
pub struct Metrics {
    decisions: Counter<u64>,
    invalid_requests: Counter<u64>,
    check_duration: Histogram<f64>,
    stage_duration: Histogram<f64>,
    cache_lookups: Counter<u64>,
    cache_evictions: Counter<u64>,
    cache_entries: UpDownCounter<i64>,
    backend_requests: Counter<u64>,
    backend_duration: Histogram<f64>,
    policy_reloads: Counter<u64>,
    policy_last_reload: Gauge<f64>,
    policies: Gauge<u64>,
    shadow_disagreements: Counter<u64>,
    slice_cache_resets: Counter<u64>,
    logins: Counter<u64>,
    export_failures: Counter<u64>,
    slow_decision_log: Counter<u64>,
    mcp_list_entries: Counter<u64>,
    mcp_lists_withheld: Counter<u64>,
    mcp_sessions_refused: Counter<u64>,
}

/// The revision of the policy set in force, read by the `cedargate.policy.info` callback so
/// only the current revision is ever reported.
static REVISION: Mutex<String> = Mutex::new(String::new());

/// Every wire (each at its [`wire_index`]); a wire missing here is never reported.
const WIRES: [Wire; 5] = [Wire::Grpc, Wire::EnvoyGrpc, Wire::EnvoyHttp, Wire::ForwardAuth, Wire::Cli];

/// Checks in flight by wire, read by the `cedargate.checks.in_flight` callback: two atomic
/// adds per check instead of two attribute lookups in the SDK's aggregation.
static IN_FLIGHT: [AtomicI64; WIRES.len()] = [const { AtomicI64::new(0) }; WIRES.len()];

/// Whether a wire has had a check: only those are reported, as before the first one a wire
/// has no series.
static WIRE_SEEN: [AtomicBool; WIRES.len()] = [const { AtomicBool::new(false) }; WIRES.len()];

fn wire_index(wire: Wire) -> usize {
    match wire {
        Wire::Grpc => 0,
        Wire::EnvoyGrpc => 1,
        Wire::EnvoyHttp => 2,
        Wire::ForwardAuth => 3,
        Wire::Cli => 4,
    }
}

impl Metrics {
    fn new(meter: &Meter) -> Self {
        meter
            .u64_observable_gauge("cedargate.policy.info")
            .with_description("1, labelled with the revision of the policy set in force")
            .with_callback(|observer| {
                let revision = REVISION.lock().map(|revision| revision.clone()).unwrap_or_default();
                if !revision.is_empty() {
                    observer.observe(1, &[KeyValue::new("revision", revision)]);
                }
            })
            .build();
        meter
            .i64_observable_up_down_counter("cedargate.checks.in_flight")
            .with_description("Checks being decided now")
            .with_callback(|observer| {
                for wire in WIRES {
                    let index = wire_index(wire);
                    if let (Some(seen), Some(count)) = (WIRE_SEEN.get(index), IN_FLIGHT.get(index)) {
                        if seen.load(Ordering::Relaxed) {
                            observer.observe(
                                count.load(Ordering::Relaxed),
                                &[KeyValue::new("wire", wire.as_str())],
                            );
                        }
                    }
                }
            })
            .build();
        Self {
            decisions: meter
                .u64_counter("cedargate.decisions")
                .with_description("Decisions, by outcome, wire and credential kind")
                .build(),
            invalid_requests: meter
                .u64_counter("cedargate.invalid_requests")
                .with_description("Gateway requests refused before any decision (HTTP 400), by wire")
                .build(),
            check_duration: seconds(
                meter,
                "cedargate.check.duration",
                "Time to decide one check, end to end",
            ),
            stage_duration: seconds(
                meter,
                "cedargate.check.stage.duration",
                "Time spent in one stage of a check: credential resolution or policy evaluation",
            ),
            cache_lookups: meter
                .u64_counter("cedargate.token_cache.lookups")
                .with_description("Token cache lookups, by result (hit, miss)")
                .build(),
            cache_evictions: meter
                .u64_counter("cedargate.token_cache.evictions")
                .with_description("Token cache entries removed, by reason")
                .build(),
            cache_entries: meter
                .i64_up_down_counter("cedargate.token_cache.entries")
                .with_description("Token cache entries held")
                .build(),
            backend_requests: meter
                .u64_counter("cedargate.backend.requests")
                .with_description(
                    "Requests to authorization servers (introspection, JWKS), by issuer and result",
                )
                .build(),
            backend_duration: seconds(
                meter,
                "cedargate.backend.request.duration",
                "Time of one request to an authorization server",
            ),
            policy_reloads: meter
                .u64_counter("cedargate.policy.reloads")
                .with_description("Policy reloads, by result (success, failure)")
                .build(),
            policy_last_reload: meter
                .f64_gauge("cedargate.policy.last_reload.timestamp")
                .with_unit("s")
                .with_description("Unix time of the last successful policy load or reload")
                .build(),
            policies: meter.u64_gauge("cedargate.policies").with_description("Policies in force").build(),
            shadow_disagreements: meter
                .u64_counter("cedargate.shadow.disagreements")
                .with_description("Decisions the @shadow policies would have made differently")
                .build(),
            slice_cache_resets: meter
                .u64_counter("cedargate.policy.slice_cache.resets")
                .with_description(
                    "Times a policy slice did not fit in the slice cache: the cache started over, or \
                     the slice alone is larger than policies.slice_cache_max_policies",
                )
                .build(),
            mcp_list_entries: meter
                .u64_counter("cedargate.mcp.list.entries")
                .with_description(
                    "Entries of MCP list answers (tools/list, ...) seen through ext_proc, by method and \
                     result (kept, removed)",
                )
                .build(),
            mcp_lists_withheld: meter
                .u64_counter("cedargate.mcp.list.withheld")
                .with_description("MCP list answers withheld whole because they could not be read, by method")
                .build(),
            mcp_sessions_refused: meter
                .u64_counter("cedargate.mcp.sessions.refused")
                .with_description(
                    "Requests refused for their Mcp-Session-Id, by reason (foreign: another caller's; \
                     unknown: not bound)",
                )
                .build(),
            logins: meter
                .u64_counter("cedargate.logins")
                .with_description("Login attempts, by result (success, failure, rate_limited)")
                .build(),
            export_failures: meter
                .u64_counter("cedargate.telemetry.export.failures")
                .with_description("OTLP exports that failed (their data is dropped), by signal")
                .build(),
            slow_decision_log: meter
                .u64_counter("cedargate.decision_log.dropped")
                .with_description("Decision records dropped because the log writer was full")
                .build(),
        }
    }

    /// One decision.
    pub fn decision(&self, wire: Wire, outcome: Outcome, credential_kind: &'static str, elapsed: Duration) {
        let outcome = KeyValue::new("outcome", outcome.as_str());
        let wire = KeyValue::new("wire", wire.as_str());
        self.check_duration.record(elapsed.as_secs_f64(), &[wire.clone(), outcome.clone()]);
        self.decisions.add(1, &[outcome, wire, KeyValue::new("credential_kind", credential_kind)]);
    }

    /// A gateway request that could not be decided on (a 400).
    pub fn invalid_request(&self, wire: Wire) {
        self.invalid_requests.add(1, &[KeyValue::new("wire", wire.as_str())]);
    }

    /// Time spent in a stage (`credential`, `policy`).
    pub fn stage(&self, stage: &'static str, elapsed: Duration) {
        self.stage_duration.record(elapsed.as_secs_f64(), &[KeyValue::new("stage", stage)]);
    }

    /// Counts a check in flight until the guard drops.
    pub fn in_flight(&'static self, wire: Wire) -> InFlight {
        let index = wire_index(wire);
        if let (Some(seen), Some(count)) = (WIRE_SEEN.get(index), IN_FLIGHT.get(index)) {
            if !seen.load(Ordering::Relaxed) {
                seen.store(true, Ordering::Relaxed);
            }
            count.fetch_add(1, Ordering::Relaxed);
        }
        InFlight { index }
    }

    /// A token cache lookup.
    pub fn cache_lookup(&self, hit: bool) {
        self.cache_lookups.add(1, &[KeyValue::new("result", if hit { "hit" } else { "miss" })]);
    }

    /// Entries added to (positive) or removed from (negative) a token cache; a removal names
    /// why (`expired`, `capacity`, `evicted`, `revoked`).
    pub fn cache_entries(&self, change: i64, reason: Option<&'static str>) {
        self.cache_entries.add(change, &[]);
        if let Some(reason) = reason {
            self.cache_evictions.add(change.unsigned_abs(), &[KeyValue::new("reason", reason)]);
        }
    }

    /// One request to an authorization server; `issuer` is configured, so bounded.
    pub fn backend_request(&self, backend: &'static str, issuer: &str, ok: bool, elapsed: Duration) {
        let backend = KeyValue::new("backend", backend);
        let issuer = KeyValue::new("issuer", issuer.to_owned());
        self.backend_duration.record(elapsed.as_secs_f64(), &[backend.clone(), issuer.clone()]);
        self.backend_requests
            .add(1, &[backend, issuer, KeyValue::new("result", if ok { "ok" } else { "error" })]);
    }

    /// A policy set was loaded (at start or by a reload).
    pub fn policies_loaded(&self, revision: &str, count: usize) {
        if let Ok(mut current) = REVISION.lock() {
            revision.clone_into(&mut current);
        }
        self.policies.record(u64::try_from(count).unwrap_or(u64::MAX), &[]);
        self.mark_reload();
    }

    /// A reload finished (`success` also when nothing changed).
    pub fn policy_reload(&self, success: bool) {
        self.policy_reloads.add(1, &[KeyValue::new("result", if success { "success" } else { "failure" })]);
        if success {
            self.mark_reload();
        }
    }

    fn mark_reload(&self) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.policy_last_reload.record(now.as_secs_f64(), &[]);
    }

    /// A decision the shadow policies would have made otherwise.
    pub fn shadow_disagreement(&self) {
        self.shadow_disagreements.add(1, &[]);
    }

    /// A slice did not fit in the policy slice cache (it started over, or the slice is larger
    /// than the bound).
    pub fn slice_cache_reset(&self) {
        self.slice_cache_resets.add(1, &[]);
    }

    /// The entries of one MCP list answer: how many were passed on and how many removed.
    pub fn mcp_list_entries(&self, method: &'static str, kept: usize, removed: usize) {
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        self.mcp_list_entries
            .add(count(kept), &[KeyValue::new("method", method), KeyValue::new("result", "kept")]);
        self.mcp_list_entries
            .add(count(removed), &[KeyValue::new("method", method), KeyValue::new("result", "removed")]);
    }

    /// An MCP list answer withheld whole.
    pub fn mcp_list_withheld(&self, method: &'static str) {
        self.mcp_lists_withheld.add(1, &[KeyValue::new("method", method)]);
    }

    /// A request refused for its session id: `foreign` or `unknown`.
    pub fn mcp_session_refused(&self, reason: &'static str) {
        self.mcp_sessions_refused.add(1, &[KeyValue::new("reason", reason)]);
    }

    /// A login attempt: `success`, `failure`, `rate_limited` or `unavailable` (the shared
    /// limiter could not be reached).
    pub fn login(&self, result: &'static str) {
        self.logins.add(1, &[KeyValue::new("result", result)]);
    }

    /// An OTLP export of `signal` (`traces`, `metrics`, `logs`) failed.
    pub fn export_failure(&self, signal: &'static str) {
        self.export_failures.add(1, &[KeyValue::new("signal", signal)]);
    }

    /// An OTLP exporter of `signal` runs: its failure count exists from now on, at 0, so
    /// `rate()` and alerts have a series before the first failure.
    pub fn exporting(&self, signal: &'static str) {
        self.export_failures.add(0, &[KeyValue::new("signal", signal)]);
    }

    /// A decision record could not be queued.
    pub fn decision_record_dropped(&self) {
        self.slow_decision_log.add(1, &[]);
    }
}

fn seconds(meter: &Meter, name: &'static str, description: &'static str) -> Histogram<f64> {
    meter
        .f64_histogram(name)
        .with_unit("s")
        .with_description(description)
        .with_boundaries(SECONDS_BUCKETS.to_vec())
        .build()
}

/// A check in flight; counted down on drop.
#[derive(Debug)]
pub struct InFlight {
    index: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(count) = IN_FLIGHT.get(self.index) {
            count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A stopwatch for [`Metrics::stage`].
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch(Instant);

impl Stopwatch {
    /// Starts now.
    pub fn start() -> Self {
        Self(Instant::now())
    }

    /// Time since the start.
    pub fn elapsed(self) -> Duration {
        self.0.elapsed()
    }
}

/// The OTLP side: a periodic push from a tokio task.
pub(super) type OtlpReader = opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader<
    super::export::CountedMetrics,
>;

/// The meter provider: the Prometheus reader always, OTLP when `telemetry::init` added it.
static PROVIDER: OnceLock<SdkMeterProvider> = OnceLock::new();
/// The registry `/metrics` encodes: the exporter's metrics and the process collector.
static REGISTRY: OnceLock<prometheus::Registry> = OnceLock::new();
static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The service's instruments. The first call fixes the meter provider: `telemetry::init` must
/// come first for OTLP to get them (a process that never calls it, a test, gets `/metrics`).
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(|| {
        let metrics = Metrics::new(&provider().meter("cedargate"));
        // At 0 from the start, so `rate()` and alerts have a series before the first drop.
        metrics.slow_decision_log.add(0, &[]);
        metrics.slice_cache_resets.add(0, &[]);
        metrics
    })
}

fn provider() -> &'static SdkMeterProvider {
    PROVIDER
        .get_or_init(|| build_provider(None, None).unwrap_or_else(|_| SdkMeterProvider::builder().build()))
}

/// Installs the provider with an OTLP reader; `false` when instruments already exist (then
/// OTLP gets no metrics).
pub(super) fn install(
    resource: opentelemetry_sdk::Resource,
    otlp: Option<OtlpReader>,
) -> Result<bool, String> {
    let provider = build_provider(Some(resource), otlp)?;
    Ok(PROVIDER.set(provider).is_ok())
}

fn build_provider(
    resource: Option<opentelemetry_sdk::Resource>,
    otlp: Option<OtlpReader>,
) -> Result<SdkMeterProvider, String> {
    let registry = REGISTRY.get_or_init(|| {
        let registry = prometheus::Registry::new();
        let _ = registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
        registry
    });
    let exporter = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .scope_info_enabled(false)
        .build()
        .map_err(|error| error.to_string())?;
    let mut builder = SdkMeterProvider::builder().with_reader(exporter);
    if let Some(resource) = resource {
        builder = builder.with_resource(resource);
    }
    if let Some(otlp) = otlp {
        builder = builder.with_reader(otlp);
    }
    Ok(builder.build())
}

/// The Prometheus text exposition of every metric, for `GET /metrics`.
pub fn prometheus_text() -> String {
    let _ = metrics();
    let Some(registry) = REGISTRY.get() else { return String::new() };
    prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap_or_default()
}

/// Flushes and stops the OTLP reader, if any.
pub(super) fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.shutdown_with_timeout(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_wire_counts_its_checks_in_flight_apart() {
        let mut indexes: Vec<usize> = WIRES.iter().map(|wire| wire_index(*wire)).collect();
        indexes.sort_unstable();
        indexes.dedup();
        assert_eq!(indexes, (0..WIRES.len()).collect::<Vec<_>>(), "one slot per wire");

        // Only the command line checks over `Wire::Cli`: no other test moves this count.
        let metrics = metrics();
        let count = || IN_FLIGHT[wire_index(Wire::Cli)].load(Ordering::Relaxed);
        let before = count();
        let first = metrics.in_flight(Wire::Cli);
        let second = metrics.in_flight(Wire::Cli);
        assert_eq!(count(), before + 2);
        assert!(WIRE_SEEN[wire_index(Wire::Cli)].load(Ordering::Relaxed));
        drop(first);
        drop(second);
        assert_eq!(count(), before);
    }
}
