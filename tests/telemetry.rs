//! Telemetry of the real binary, against real peers: an OTLP receiver built from the
//! OpenTelemetry protobuf definitions (`common::otlp`, gRPC and HTTP/protobuf), a real
//! Prometheus scraping `/metrics` and `promtool` linting it (`common::prometheus`).
//!
//! - traces over OTLP/gRPC (configured by environment variables alone) and OTLP/HTTP (by the
//!   config file): on each wire (cedargate's gRPC `Check`, Envoy's ext_authz `Check` over gRPC
//!   and HTTP, `/auth/verify`) the server span joins the caller's `traceparent`, with its
//!   children, the semantic-convention attributes and the resource; a malformed `traceparent`
//!   starts a new trace; the decision record names the server span (on stderr, and as an OTLP
//!   log record); metrics arrive over OTLP too;
//! - Prometheus's own count of `cedargate_decisions_total` after known checks, and no
//!   `promtool check metrics` finding;
//! - credentials of every kind over every wire, with everything exporting and the decision log
//!   on: no log line, metric, span or decision record holds any 8-character piece of them;
//!   every metric the Grafana dashboard uses exists;
//! - unreachable OTLP endpoints (a black hole, a closed port) never fail a check, and the
//!   failed exports are counted; with `--log-format json` every line on stderr is JSON;
//! - the Grafana dashboard's PromQL is valid (`promtool check rules`).

// Test code: a failed set-up step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use cedargate::api::proto::{self, Outcome};
use common::otlp::{
    BlackHole, FlatSpan, Receiver, Transport, SPAN_KIND_CLIENT, SPAN_KIND_INTERNAL, SPAN_KIND_SERVER,
};
use common::prometheus::{promtool_check_expressions, promtool_check_metrics, Prometheus};
use common::served::Served;
use common::{check_request, route};
use envoy_types::ext_authz::v3::pb::{
    CheckRequest as EnvoyCheckRequest, CheckResponse as EnvoyCheckResponse,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse as EnvoyHttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{attribute_context, AttributeContext};
use rand::distr::{Alphanumeric, SampleString};
use serde_json::{json, Value};
use tempfile::TempDir;
use tonic::transport::Channel;

const DEMO_LISTEN: &str = "listen:\n  grpc: 127.0.0.1:50051\n  http: 127.0.0.1:8080\n";
const DASHBOARD: &str = "examples/grafana/cedargate.json";
const SERVICE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The embedded demo on port 0, with `extra` top-level YAML appended.
fn demo_yaml(extra: &str) -> String {
    let demo = cedargate::config::DEMO_YAML;
    assert!(demo.contains(DEMO_LISTEN), "the demo config no longer listens where this test expects");
    format!(
        "{}\n{extra}",
        demo.replacen(DEMO_LISTEN, "listen:\n  grpc: 127.0.0.1:0\n  http: 127.0.0.1:0\n", 1)
    )
}

fn random(length: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rng(), length)
}

fn random_hex(bytes: usize) -> String {
    hex::encode((0..bytes).map(|_| rand::random::<u8>()).collect::<Vec<u8>>())
}

/// A caller's span: what its `traceparent` names.
#[derive(Debug, Clone)]
struct Caller {
    trace_id: String,
    span_id: String,
}

impl Caller {
    fn new() -> Self {
        Self { trace_id: random_hex(16), span_id: random_hex(8) }
    }

    /// W3C Trace Context, version 00, sampled.
    fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }
}

/// The real binary with a config file in a temporary directory, its JSON log collected.
struct Gate {
    served: Served,
    grpc: SocketAddr,
    http: SocketAddr,
    /// Every stderr line read so far.
    log: Vec<String>,
    dir: TempDir,
    http_client: reqwest::Client,
}

impl Gate {
    fn start(yaml: &str, env: &[(&str, String)]) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), yaml, env)
    }

    /// Serves `yaml` written as `dir/cedargate.yaml` (relative paths in it are from `dir`).
    fn start_in(dir: TempDir, yaml: &str, env: &[(&str, String)]) -> Self {
        let config = dir.path().join("cedargate.yaml");
        std::fs::write(&config, yaml).unwrap();
        let served = Served::start_with_env(&config, env);
        let mut log = Vec::new();
        let serving = served.wait_for(|event| event["message"] == "cedargate serving", &mut log);
        let address = |name: &str| serving[name].as_str().unwrap().parse::<SocketAddr>().unwrap();
        let (grpc, http) = (address("grpc"), address("http"));
        let http_client = reqwest::Client::builder().no_proxy().build().unwrap();
        Self { served, grpc, http, log, dir, http_client }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc)).unwrap().connect().await.unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// The first log event `wanted` picks, among the lines read so far or the next ones.
    fn wait_log(&mut self, wanted: impl Fn(&Value) -> bool) -> Value {
        let seen = self
            .log
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|event| wanted(event));
        if let Some(event) = seen {
            return event;
        }
        let (served, log) = (&self.served, &mut self.log);
        tokio::task::block_in_place(|| served.wait_for(wanted, log))
    }

    /// The decision record `wanted` picks, waiting for it.
    fn wait_decision(&mut self, wanted: impl Fn(&Value) -> bool) -> Value {
        self.wait_log(|event| event["event"] == "cedargate.decision" && wanted(event))
    }

    /// Every decision record read so far.
    fn decisions(&self) -> Vec<Value> {
        self.log
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|event| event["event"] == "cedargate.decision")
            .collect()
    }

    async fn metrics_text(&self) -> String {
        let response = self.http_client.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with("text/plain"), "/metrics content-type {content_type}");
        response.text().await.unwrap()
    }

    /// SIGTERM, then every line it wrote; asserts the process exited cleanly and that every
    /// line is one JSON object (`--log-format json`).
    fn stop(&mut self) -> Vec<String> {
        let (served, log) = (&mut self.served, &mut self.log);
        let status = tokio::task::block_in_place(|| served.stop(log));
        assert!(status.success(), "cedargate exited with {status}; log:\n{}", self.log.join("\n"));
        for line in &self.log {
            let parsed: Result<serde_json::Map<String, Value>, _> = serde_json::from_str(line);
            assert!(parsed.is_ok(), "a stderr line that is not a JSON object: {line:?}");
        }
        self.log.clone()
    }
}

async fn grpc_check(
    gate: &Gate,
    authorization: &str,
    target: proto::Target,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> proto::CheckResponse {
    let mut client = proto::authorizer_client::AuthorizerClient::new(gate.channel().await);
    let mut request = tonic::Request::new(check_request(authorization, target));
    if let Some(value) = traceparent {
        request.metadata_mut().insert("traceparent", value.parse().unwrap());
    }
    if let Some(value) = tracestate {
        request.metadata_mut().insert("tracestate", value.parse().unwrap());
    }
    client.check(request).await.expect("Check answers").into_inner()
}

/// Envoy's ext_authz `Check` for `GET path` with these request headers.
async fn envoy_check(gate: &Gate, path: &str, headers: &[(&str, &str)]) -> EnvoyCheckResponse {
    let mut client = AuthorizationClient::new(gate.channel().await);
    let http = attribute_context::HttpRequest {
        method: "GET".into(),
        path: path.into(),
        host: "api.test".into(),
        headers: headers.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect(),
        ..Default::default()
    };
    let request = EnvoyCheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request { http: Some(http), ..Default::default() }),
            ..Default::default()
        }),
    };
    client.check(request).await.expect("ext_authz answers").into_inner()
}

/// The HTTP status an ext_authz answer tells Envoy to use, and the denial's body.
fn envoy_status(answer: &EnvoyCheckResponse) -> (u16, String) {
    match &answer.http_response {
        Some(EnvoyHttpResponse::OkResponse(_)) => (200, String::new()),
        Some(EnvoyHttpResponse::DeniedResponse(denied)) => {
            (denied.status.as_ref().map_or(0, |status| status.code as u16), denied.body.clone())
        }
        other => panic!("no HTTP response in the ext_authz answer: {other:?}"),
    }
}

/// `/auth/verify` (nginx's `auth_request`) for `GET uri` with these extra headers.
async fn verify(gate: &Gate, uri: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = gate
        .http_client
        .get(gate.url("/auth/verify"))
        .header("x-original-method", "GET")
        .header("x-original-uri", uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

fn decision_id_of(body: &str) -> String {
    let body: Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("a denial body that is not JSON: {body}"));
    body["decisionId"].as_str().unwrap().to_owned()
}

/// Whether `span` is `ancestor` or below it in `trace`.
fn descends_from(span: &FlatSpan, ancestor: &FlatSpan, trace: &[FlatSpan]) -> bool {
    let mut current = span.clone();
    for _ in 0..trace.len() + 1 {
        if current.span_id == ancestor.span_id {
            return true;
        }
        match trace.iter().find(|parent| parent.span_id == current.parent_span_id) {
            Some(parent) => current = parent.clone(),
            None => return false,
        }
    }
    false
}

fn named<'a>(trace: &'a [FlatSpan], name: &str) -> &'a FlatSpan {
    trace.iter().find(|span| span.name == name).unwrap_or_else(|| panic!("no span `{name}` in {trace:#?}"))
}

/// A trace with a server span of this name and both check stages.
fn complete(server: &'static str) -> impl Fn(&[FlatSpan]) -> bool {
    move |spans: &[FlatSpan]| {
        [server, "cedargate.credential.resolve", "cedargate.policy.evaluate"]
            .iter()
            .all(|name| spans.iter().any(|span| span.name == *name))
    }
}

/// A trace with a server span of this name and policy evaluation: a request without a
/// credential has nothing to resolve.
fn complete_anonymous(server: &'static str) -> impl Fn(&[FlatSpan]) -> bool {
    move |spans: &[FlatSpan]| {
        [server, "cedargate.policy.evaluate"].iter().all(|name| spans.iter().any(|span| span.name == *name))
    }
}

/// What a run's spans must say about the process, and where its decision records go.
struct Expected<'a> {
    transport: Transport,
    service_name: &'a str,
    resource: &'a [(&'a str, &'a str)],
    records: Records,
}

/// Where a run's decision records go (`decision_log.to`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Records {
    /// `log`: lines of stderr.
    Stderr,
    /// `otlp`: OTLP log records whose body is the record.
    Otlp,
}

impl Records {
    /// The first decision record `wanted` picks, waiting for it. An OTLP record must be the
    /// event `cedargate.decision` at INFO, with the check's trace context.
    async fn wait(self, gate: &mut Gate, receiver: &Receiver, wanted: impl Fn(&Value) -> bool) -> Value {
        match self {
            Records::Stderr => gate.wait_decision(wanted),
            Records::Otlp => {
                let log = receiver
                    .wait_for("a decision record over OTLP logs", |receiver| {
                        receiver.logs().into_iter().find(|log| wanted(&log.body))
                    })
                    .await;
                assert_eq!(
                    (log.event_name.as_str(), log.severity_text.as_str()),
                    ("cedargate.decision", "INFO"),
                    "{log:#?}"
                );
                assert_eq!(Some(log.trace_id.as_str()), log.body["traceId"].as_str(), "{log:#?}");
                assert_eq!(Some(log.span_id.as_str()), log.body["spanId"].as_str(), "{log:#?}");
                log.body
            }
        }
    }
}

impl Expected<'_> {
    fn check_resource(&self, span: &FlatSpan) {
        assert_eq!(span.transport, self.transport, "{span:#?}");
        assert_eq!(span.resource.get("service.name"), Some(&json!(self.service_name)), "{span:#?}");
        assert_eq!(span.resource.get("service.version"), Some(&json!(SERVICE_VERSION)), "{span:#?}");
        for (key, value) in self.resource {
            assert_eq!(span.resource.get(*key), Some(&json!(value)), "resource {key}: {span:#?}");
        }
    }
}

/// The server span of `caller`'s trace (named `server`) with its children: the caller's
/// trace id and parent, kind SERVER, both stages beneath it.
async fn joined_trace(
    receiver: &Receiver,
    caller: &Caller,
    server: &'static str,
    expected: &Expected<'_>,
) -> (FlatSpan, Vec<FlatSpan>) {
    let trace = receiver.wait_for_trace(&caller.trace_id, complete(server)).await;
    let server_span = named(&trace, server).clone();
    assert_eq!(server_span.kind, SPAN_KIND_SERVER, "{server_span:#?}");
    assert_eq!(
        server_span.parent_span_id, caller.span_id,
        "{server}: not the caller's child: {server_span:#?}"
    );
    for span in &trace {
        expected.check_resource(span);
    }
    for stage in ["cedargate.credential.resolve", "cedargate.policy.evaluate"] {
        let child = named(&trace, stage);
        assert_eq!(child.kind, SPAN_KIND_INTERNAL, "{child:#?}");
        assert!(descends_from(child, &server_span, &trace), "{stage} is not under {server}: {trace:#?}");
    }
    let resolve = named(&trace, "cedargate.credential.resolve");
    let cache = resolve.attr("cedargate.credential.cache");
    assert!(["hit", "miss", "none"].contains(&cache.as_str().unwrap_or("")), "{resolve:#?}");
    let evaluate = named(&trace, "cedargate.policy.evaluate");
    let revision = evaluate.attr("cedargate.policy.revision");
    assert!(revision.as_str().is_some_and(|revision| !revision.is_empty()), "{evaluate:#?}");
    (server_span, trace)
}

/// The trace a decision record names, for a request whose `traceparent` was malformed: a new
/// trace (not one of `sent`), whose server span `server` is a root.
async fn fresh_trace(
    gate: &mut Gate,
    receiver: &Receiver,
    expected: &Expected<'_>,
    decision_id: &str,
    server: &'static str,
    sent: &[&Caller],
) -> String {
    let record = expected.records.wait(gate, receiver, |record| record["decisionId"] == decision_id).await;
    let trace_id = record["traceId"].as_str().unwrap_or_else(|| panic!("no traceId in {record}")).to_owned();
    assert_eq!(trace_id.len(), 32, "{record}");
    assert_ne!(trace_id, "0".repeat(32), "{record}");
    assert!(
        sent.iter().all(|caller| caller.trace_id != trace_id),
        "a malformed traceparent was followed: {record}"
    );
    let trace = receiver.wait_for_trace(&trace_id, complete_anonymous(server)).await;
    let root = named(&trace, server);
    assert_eq!(root.parent_span_id, "", "a malformed traceparent gave the server span a parent: {root:#?}");
    assert_eq!(
        record["spanId"].as_str(),
        Some(root.span_id.as_str()),
        "not the server span: {record} {root:#?}"
    );
    trace_id
}

/// The checks of the trace runs: one per wire with a caller's `traceparent`, one per wire with
/// a malformed one; the decisions they make by (outcome, wire, credential kind).
async fn every_wire_joins_the_callers_trace(
    gate: &mut Gate,
    receiver: &Receiver,
    expected: &Expected<'_>,
) -> BTreeMap<(&'static str, &'static str, &'static str), f64> {
    let (grpc_caller, envoy_caller, http_caller) = (Caller::new(), Caller::new(), Caller::new());
    let envoy_http_caller = Caller::new();

    // cedargate's own API: traceparent and tracestate in the gRPC metadata.
    let allowed = grpc_check(
        gate,
        "Bearer user-token-123",
        route("GET", "/user/profile"),
        Some(&grpc_caller.traceparent()),
        Some("cedargate-test=grpc"),
    )
    .await;
    assert_eq!(allowed.outcome(), Outcome::Allowed, "{allowed:?}");
    // Envoy: traceparent among the original request's headers in the CheckRequest.
    let envoy = envoy_check(
        gate,
        "/admin/users",
        &[("authorization", "Bearer user-token-123"), ("traceparent", &envoy_caller.traceparent())],
    )
    .await;
    assert_eq!(envoy_status(&envoy).0, 403, "{envoy:?}");
    // HTTP: the request's own traceparent header.
    let (status, _) = verify(
        gate,
        "/user/profile",
        &[("authorization", "ApiKey api-key-789"), ("traceparent", &http_caller.traceparent())],
    )
    .await;
    assert_eq!(status, 403);

    let (span, trace) = joined_trace(receiver, &grpc_caller, "cedargate.v1.Authorizer/Check", expected).await;
    let grpc_server = span.clone();
    for (key, value) in [
        ("rpc.system", json!("grpc")),
        ("rpc.service", json!("cedargate.v1.Authorizer")),
        ("rpc.method", json!("Check")),
        ("rpc.grpc.status_code", json!(0)),
        ("cedargate.decision.outcome", json!("allowed")),
        ("cedargate.decision.id", json!(allowed.decision_id)),
    ] {
        assert_eq!(span.attr(key), value, "{key}: {span:#?}");
    }
    assert!(span.trace_state.contains("cedargate-test=grpc"), "the caller's tracestate is lost: {span:#?}");
    assert_eq!(
        named(&trace, "cedargate.credential.resolve").attr("cedargate.credential.kind"),
        json!("static")
    );
    let revision = named(&trace, "cedargate.policy.evaluate").attr("cedargate.policy.revision");

    let (span, trace) =
        joined_trace(receiver, &envoy_caller, "envoy.service.auth.v3.Authorization/Check", expected).await;
    let envoy_server = span.clone();
    for (key, value) in [
        ("rpc.system", json!("grpc")),
        ("rpc.service", json!("envoy.service.auth.v3.Authorization")),
        ("rpc.method", json!("Check")),
        ("rpc.grpc.status_code", json!(0)),
    ] {
        assert_eq!(span.attr(key), value, "{key}: {span:#?}");
    }
    assert_eq!(named(&trace, "cedargate.policy.evaluate").attr("cedargate.policy.revision"), revision);

    let (span, trace) = joined_trace(receiver, &http_caller, "GET /auth/verify", expected).await;
    let http_server = span.clone();
    for (key, value) in [
        ("http.request.method", json!("GET")),
        ("http.route", json!("/auth/verify")),
        ("http.response.status_code", json!(403)),
    ] {
        assert_eq!(span.attr(key), value, "{key}: {span:#?}");
    }
    assert_eq!(
        named(&trace, "cedargate.credential.resolve").attr("cedargate.credential.kind"),
        json!("api_key")
    );

    // Envoy's HTTP mode: the span is named by the axum route template, not the path.
    let ext_authz = gate
        .http_client
        .get(gate.url("/ext_authz/user/profile"))
        .header("authorization", "Bearer admin-token-456")
        .header("traceparent", envoy_http_caller.traceparent())
        .send()
        .await
        .unwrap();
    assert_eq!(ext_authz.status(), 200);
    let (span, _) = joined_trace(receiver, &envoy_http_caller, "GET /ext_authz/{*path}", expected).await;
    let envoy_http_server = span.clone();
    for (key, value) in [
        ("http.request.method", json!("GET")),
        ("http.route", json!("/ext_authz/{*path}")),
        ("http.response.status_code", json!(200)),
    ] {
        assert_eq!(span.attr(key), value, "{key}: {span:#?}");
    }

    // The decision records name the trace and its server span.
    for (caller, server, wire, outcome) in [
        (&grpc_caller, &grpc_server, "grpc", "OUTCOME_ALLOWED"),
        (&envoy_caller, &envoy_server, "envoy_grpc", "OUTCOME_FORBIDDEN"),
        (&http_caller, &http_server, "forward_auth", "OUTCOME_FORBIDDEN"),
        (&envoy_http_caller, &envoy_http_server, "envoy_http", "OUTCOME_ALLOWED"),
    ] {
        let record = expected
            .records
            .wait(gate, receiver, |record| record["traceId"] == caller.trace_id.as_str())
            .await;
        assert_eq!(
            (record["wire"].as_str(), record["outcome"].as_str()),
            (Some(wire), Some(outcome)),
            "{record}"
        );
        assert_eq!(record["spanId"].as_str(), Some(server.span_id.as_str()), "not the server span: {record}");
    }

    // Malformed traceparents (and no credential, so each denial names its decision id).
    let sent = [&grpc_caller, &envoy_caller, &http_caller, &envoy_http_caller];
    let anonymous =
        grpc_check(gate, "", route("GET", "/user/profile"), Some("00-not-a-trace-id-01"), None).await;
    assert_eq!(anonymous.outcome(), Outcome::Unauthenticated);
    let zero_trace = format!("00-{}-{}-01", "0".repeat(32), random_hex(8));
    let envoy = envoy_check(gate, "/user/profile", &[("traceparent", &zero_trace)]).await;
    let (status, envoy_body) = envoy_status(&envoy);
    assert_eq!(status, 401);
    let (status, http_body) = verify(gate, "/user/profile", &[("traceparent", "garbage")]).await;
    assert_eq!(status, 401);
    let fresh = [
        fresh_trace(gate, receiver, expected, &anonymous.decision_id, "cedargate.v1.Authorizer/Check", &sent)
            .await,
        fresh_trace(
            gate,
            receiver,
            expected,
            &decision_id_of(&envoy_body),
            "envoy.service.auth.v3.Authorization/Check",
            &sent,
        )
        .await,
        fresh_trace(gate, receiver, expected, &decision_id_of(&http_body), "GET /auth/verify", &sent).await,
    ];
    assert_eq!(
        fresh.iter().collect::<BTreeSet<_>>().len(),
        3,
        "each malformed traceparent starts its own trace"
    );

    BTreeMap::from([
        (("allowed", "grpc", "static"), 1.0),
        (("forbidden", "envoy_grpc", "static"), 1.0),
        (("forbidden", "forward_auth", "api_key"), 1.0),
        (("unauthenticated", "grpc", "anonymous"), 1.0),
        (("unauthenticated", "envoy_grpc", "anonymous"), 1.0),
        (("unauthenticated", "forward_auth", "anonymous"), 1.0),
        (("allowed", "envoy_http", "static"), 1.0),
    ])
}

/// Waits until the OTLP totals of `cedargate.decisions` are `expected`.
async fn decisions_over_otlp(receiver: &Receiver, expected: &BTreeMap<(&str, &str, &str), f64>) {
    let expected: BTreeMap<Vec<(String, String)>, f64> = expected
        .iter()
        .map(|((outcome, wire, kind), count)| {
            let mut key = vec![
                ("credential_kind".to_owned(), (*kind).to_owned()),
                ("outcome".to_owned(), (*outcome).to_owned()),
                ("wire".to_owned(), (*wire).to_owned()),
            ];
            key.sort();
            (key, *count)
        })
        .collect();
    receiver
        .wait_for(&format!("cedargate.decisions totals {expected:?}"), |receiver| {
            (receiver.metric_totals("cedargate.decisions") == expected).then_some(())
        })
        .await;
    let duration = receiver
        .wait_for("cedargate.check.duration", |receiver| {
            receiver.metric_points().into_iter().find(|point| point.name == "cedargate.check.duration")
        })
        .await;
    assert_eq!((duration.unit.as_str(), duration.kind), ("s", "histogram"), "{duration:#?}");
    assert!(
        duration.attributes.contains_key("wire") && duration.attributes.contains_key("outcome"),
        "{duration:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_and_metrics_over_otlp_grpc_from_the_environment_alone() {
    let receiver = Receiver::start().await;
    let run = random_hex(4);
    // The demo on port 0 with no telemetry settings: the standard variables alone.
    let mut gate = Gate::start(
        &demo_yaml(""),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint(Transport::Grpc)),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
            ("OTEL_SERVICE_NAME", "gate-from-env".into()),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                format!("deployment.environment.name=telemetry-test,test.run={run}"),
            ),
            ("OTEL_METRIC_EXPORT_INTERVAL", "300".into()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ],
    );
    let expected = Expected {
        transport: Transport::Grpc,
        service_name: "gate-from-env",
        resource: &[("deployment.environment.name", "telemetry-test"), ("test.run", &run)],
        records: Records::Stderr,
    };
    let decisions = every_wire_joins_the_callers_trace(&mut gate, &receiver, &expected).await;
    decisions_over_otlp(&receiver, &decisions).await;
    let point =
        receiver.metric_points().into_iter().find(|point| point.name == "cedargate.decisions").unwrap();
    assert_eq!(point.transport, Transport::Grpc);
    assert_eq!(point.resource.get("service.name"), Some(&json!("gate-from-env")), "{point:#?}");
    gate.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_and_metrics_over_otlp_http_protobuf_from_the_config_file() {
    let receiver = Receiver::start().await;
    let run = random_hex(4);
    let telemetry = format!(
        "telemetry:\n  service_name: gate-from-config\n  otlp:\n    endpoint: {}\n    protocol: http/protobuf\n    \
         metrics_interval: 300ms\ndecision_log:\n  to: otlp\n",
        receiver.endpoint(Transport::HttpProtobuf)
    );
    let mut gate = Gate::start(
        &demo_yaml(&telemetry),
        &[("OTEL_RESOURCE_ATTRIBUTES", format!("test.run={run}")), ("OTEL_BSP_SCHEDULE_DELAY", "100".into())],
    );
    let expected = Expected {
        transport: Transport::HttpProtobuf,
        service_name: "gate-from-config",
        resource: &[("test.run", &run)],
        records: Records::Otlp,
    };
    let decisions = every_wire_joins_the_callers_trace(&mut gate, &receiver, &expected).await;
    decisions_over_otlp(&receiver, &decisions).await;
    assert!(receiver.metric_points().iter().all(|point| point.transport == Transport::HttpProtobuf));
    assert!(receiver.logs().iter().all(|log| log.transport == Transport::HttpProtobuf));
    assert_eq!(receiver.undecodable(), Vec::<String>::new());
    gate.stop();
    assert!(gate.decisions().is_empty(), "decision records on stderr with `to: otlp`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_counts_the_decisions_and_promtool_finds_nothing() {
    let mut gate = Gate::start(&demo_yaml(""), &[]);
    let mut prometheus = Prometheus::scraping(gate.http, "/metrics").await;

    // Known checks: (authorization, path, outcome) over gRPC, and a few over the other wires.
    let table: [(&str, &str, Outcome, usize); 5] = [
        ("Bearer user-token-123", "/user/profile", Outcome::Allowed, 3),
        ("Bearer user-token-123", "/admin/users", Outcome::Forbidden, 2),
        ("", "/user/profile", Outcome::Unauthenticated, 4),
        ("ApiKey api-key-789", "/service/metrics", Outcome::Allowed, 1),
        ("Bearer invalid-token", "/user/profile", Outcome::Unauthenticated, 1),
    ];
    for (authorization, path, outcome, times) in table {
        for _ in 0..times {
            let answer = grpc_check(&gate, authorization, route("GET", path), None, None).await;
            assert_eq!(answer.outcome(), outcome, "{authorization} {path}: {answer:?}");
        }
    }
    for _ in 0..2 {
        assert_eq!(
            verify(&gate, "/admin/users", &[("authorization", "Bearer admin-token-456")]).await.0,
            200
        );
    }
    let envoy = envoy_check(&gate, "/service/metrics", &[("authorization", "Bearer user-token-123")]).await;
    assert_eq!(envoy_status(&envoy).0, 403);
    let checks_done = unix_now();

    prometheus.wait_scrape_after(checks_done).await;
    let counted: BTreeMap<(String, String, String), f64> = prometheus
        .query("sum by (outcome, wire, credential_kind) (cedargate_decisions_total)")
        .await
        .into_iter()
        .map(|(labels, value)| {
            let label = |name: &str| labels.get(name).and_then(Value::as_str).unwrap_or("").to_owned();
            ((label("outcome"), label("wire"), label("credential_kind")), value)
        })
        .collect();
    let expected: BTreeMap<(String, String, String), f64> = [
        ("allowed", "grpc", "static", 3.0),
        ("forbidden", "grpc", "static", 2.0),
        ("unauthenticated", "grpc", "anonymous", 4.0),
        ("allowed", "grpc", "api_key", 1.0),
        ("unauthenticated", "grpc", "unresolved", 1.0),
        ("allowed", "forward_auth", "static", 2.0),
        ("forbidden", "envoy_grpc", "static", 1.0),
    ]
    .into_iter()
    .map(|(outcome, wire, kind, count)| ((outcome.to_owned(), wire.to_owned(), kind.to_owned()), count))
    .collect();
    assert_eq!(counted, expected, "cedargate_decisions_total as Prometheus scraped it");

    let by_outcome: BTreeMap<String, f64> = prometheus
        .query("sum by (outcome) (cedargate_check_duration_seconds_count)")
        .await
        .into_iter()
        .map(|(labels, value)| (labels["outcome"].as_str().unwrap().to_owned(), value))
        .collect();
    assert_eq!(
        by_outcome,
        BTreeMap::from([("allowed".into(), 6.0), ("forbidden".into(), 3.0), ("unauthenticated".into(), 5.0)]),
        "one latency observation per check"
    );
    let in_flight = prometheus.query("sum(cedargate_checks_in_flight)").await;
    assert_eq!(in_flight.iter().map(|(_, value)| *value).sum::<f64>(), 0.0, "{in_flight:?}");
    let info = prometheus.query("cedargate_policy_info").await;
    assert!(
        info.len() == 1 && info[0].1 == 1.0 && info[0].0["revision"].as_str().is_some_and(|r| !r.is_empty()),
        "{info:?}"
    );
    let memory = prometheus.query("process_resident_memory_bytes").await;
    assert!(memory.len() == 1 && memory[0].1 > 0.0, "{memory:?}");

    let text = gate.metrics_text().await;
    promtool_check_metrics(&text).unwrap_or_else(|finding| panic!("{finding}\n/metrics:\n{text}"));
    gate.stop();
}

fn http_status(outcome: Outcome) -> u16 {
    match outcome {
        Outcome::Allowed => 200,
        Outcome::Unauthenticated => 401,
        Outcome::Forbidden => 403,
        other => panic!("no status for {other:?} here"),
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// The demo's policies copied into `dir/policies`, with `extra` files beside them.
fn policy_dir(dir: &Path, extra: &[(&str, &str)]) {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    for name in ["schema.cedarschema", "routes.cedar", "mcp.cedar"] {
        std::fs::copy(shipped.join(name), policies.join(name)).unwrap();
    }
    for (name, text) in extra {
        std::fs::write(policies.join(name), text).unwrap();
    }
}

/// A shadow policy every admin request disagrees with.
const SHADOW: &str = r#"@id("admin-area-needs-mfa")
@shadow
@reason("The admin area will need a second factor")
forbid (principal, action, resource is Route)
when { resource.path like "/admin/*" }
unless { context.facts.hasTag("mfa") && context.facts.getTag("mfa") == "true" };
"#;

const JWT_ISSUER: &str = "https://issuer.test";
const JWT_AUDIENCE: &str = "https://api.test";

fn jwt() -> String {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let key = EncodingKey::from_ec_pem(include_bytes!("fixtures/keys/ec256.pem")).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    let claims = json!({
        "iss": JWT_ISSUER, "aud": JWT_AUDIENCE, "sub": "carol", "roles": ["user"],
        "jti": random(16), "exp": cedargate::model::unix_now() + 600
    });
    encode(&header, &claims, &key).unwrap()
}

/// A JWKS endpoint and an RFC 7662 endpoint that calls every token active, on 127.0.0.1:0.
async fn identity_provider() -> (String, String, tokio::task::JoinHandle<()>) {
    use jsonwebtoken::jwk::{Jwk, JwkSet};
    use jsonwebtoken::{Algorithm, EncodingKey};
    let key = EncodingKey::from_ec_pem(include_bytes!("fixtures/keys/ec256.pem")).unwrap();
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let jwks = serde_json::to_value(JwkSet { keys: vec![jwk] }).unwrap();
    let app = axum::Router::new()
        .route("/jwks", axum::routing::get(move || async move { axum::Json(jwks) }))
        .route(
            "/introspect",
            axum::routing::post(|| async {
                axum::Json(json!({
                    "active": true, "sub": "dan", "roles": ["user"], "exp": cedargate::model::unix_now() + 600
                }))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("{base}/jwks"), format!("{base}/introspect"), task)
}

/// Panics when any 8-character piece of a secret is in `haystack`.
fn assert_no_piece(what: &str, haystack: &str, secrets: &[String]) {
    for secret in secrets {
        assert!(!haystack.contains(secret.as_str()), "{what} holds a whole credential `{secret}`");
        let chars: Vec<char> = secret.chars().collect();
        for piece in chars.windows(8) {
            let piece: String = piece.iter().collect();
            if let Some(at) = haystack.find(&piece) {
                let start =
                    (0..=at.saturating_sub(200)).rev().find(|i| haystack.is_char_boundary(*i)).unwrap_or(0);
                let end = ((at + 200).min(haystack.len())..=haystack.len())
                    .find(|i| haystack.is_char_boundary(*i))
                    .unwrap_or(haystack.len());
                let context = &haystack[start..end];
                panic!("{what} holds `{piece}` of the credential `{secret}`: …{context}…");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_of_any_kind_reaches_a_log_metric_span_or_decision_record() {
    let receiver = Receiver::start().await;
    let (jwks_url, introspection_url, _provider) = identity_provider().await;
    let dir = tempfile::tempdir().unwrap();
    policy_dir(dir.path(), &[("shadow.cedar", SHADOW)]);

    let admin_token = format!("admin-{}", random(24));
    let client_secret = random(24);
    let credentials = format!(
        "credentials:\n  jwt:\n    - issuer: {JWT_ISSUER}\n      audiences: [{JWT_AUDIENCE}]\n      algorithms: [ES256]\n      \
         jwks_url: {jwks_url}\n  introspection:\n    - endpoint: {introspection_url}\n      client_id: cedargate\n      \
         client_secret: {client_secret}\n      prefixes: [opaque-]\n  token_cache: {{ max_entries: 2 }}\n"
    );
    let extra = format!(
        "policies:\n  dir: ./policies\n  watch: false\n\
         admin:\n  token_sha256: {}\n\
         gateway:\n  api_key: {{ header: x-api-key }}\n\
         telemetry:\n  otlp:\n    endpoint: {}\n    protocol: grpc\n    metrics_interval: 300ms\n\
         decision_log:\n  to: log\n  allow_sample_rate: 1.0\n",
        cedargate::model::SecretDigest::of(admin_token.as_bytes()).to_hex(),
        receiver.endpoint(Transport::Grpc)
    );
    let yaml = demo_yaml(&extra).replacen("credentials:\n", &credentials, 1);
    let mut gate = Gate::start_in(
        dir,
        &yaml,
        &[("OTEL_TRACES_SAMPLER", "always_on".into()), ("OTEL_BSP_SCHEDULE_DELAY", "100".into())],
    );
    let mut prometheus = Prometheus::scraping(gate.http, "/metrics").await;
    let http = gate.http_client.clone();

    // A session: login (and a failed one), refresh, so there are two refresh tokens.
    let wrong_password = format!("wrong-{}", random(16));
    let failed = http
        .post(gate.url("/auth/login"))
        .json(&json!({ "username": "alice", "password": wrong_password }))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 401);
    let login: Value = http
        .post(gate.url("/auth/login"))
        .json(&json!({ "username": "alice", "password": "password123" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let first_refresh = login["refresh_token"].as_str().unwrap().to_owned();
    let refreshed: Value = http
        .post(gate.url("/auth/refresh"))
        .json(&json!({ "refresh_token": first_refresh }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = refreshed["access_token"].as_str().unwrap_or_else(|| panic!("{refreshed}")).to_owned();
    let second_refresh = refreshed["refresh_token"].as_str().unwrap().to_owned();
    let first_session = login["access_token"].as_str().unwrap().to_owned();

    let jwt = jwt();
    let opaque = [
        format!("opaque-{}", random(24)),
        format!("opaque-{}", random(24)),
        format!("opaque-{}", random(24)),
    ];
    let unknown = random(32);
    // (Authorization value, credential kind, allowed on GET /user/profile)
    let mut presented: Vec<(String, &str, bool)> = vec![
        ("Bearer user-token-123".into(), "static", true),
        ("Bearer admin-token-456".into(), "static", true),
        ("ApiKey api-key-789".into(), "api_key", false),
        (format!("Bearer {session}"), "session", true),
        (format!("Bearer {jwt}"), "jwt", true),
        (format!("Bearer {unknown}"), "unresolved", false),
    ];
    for token in &opaque {
        // Twice each: a cache miss, then a hit; three tokens in a cache of two evict one.
        presented.push((format!("Bearer {token}"), "introspection", true));
        presented.push((format!("Bearer {token}"), "introspection", true));
    }

    let mut decisions = 0;
    for (authorization, kind, allowed) in &presented {
        let expected = if *allowed {
            Outcome::Allowed
        } else if *kind == "unresolved" {
            Outcome::Unauthenticated
        } else {
            Outcome::Forbidden
        };
        let answer = grpc_check(
            &gate,
            authorization,
            route("GET", "/user/profile"),
            Some(&Caller::new().traceparent()),
            None,
        )
        .await;
        assert_eq!(answer.outcome(), expected, "{kind}: {answer:?}");
        // The admin area: the shadow policy disagrees with every allow there.
        grpc_check(&gate, authorization, route("GET", "/admin/users"), None, None).await;
        let mut client = proto::authorizer_client::AuthorizerClient::new(gate.channel().await);
        let batch = client
            .batch_check(proto::BatchCheckRequest {
                authorization: authorization.clone(),
                targets: vec![route("GET", "/user/data"), route("GET", "/public/info")],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(batch.results.len(), 2);
        client.introspect(proto::IntrospectRequest { authorization: authorization.clone() }).await.unwrap();
        let envoy = envoy_check(
            &gate,
            "/user/profile",
            &[("authorization", authorization), ("traceparent", &Caller::new().traceparent())],
        )
        .await;
        assert_eq!(envoy_status(&envoy).0, http_status(expected), "{kind}");
        let (status, _) = verify(&gate, "/user/profile", &[("authorization", authorization)]).await;
        assert_eq!(status, envoy_status(&envoy).0, "{kind}");
        let ext_authz = http
            .get(gate.url("/ext_authz/user/profile"))
            .header("authorization", authorization.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(ext_authz.status().as_u16(), status, "{kind}");
        // BatchCheck's two targets may be logged as one decision or two; Introspect decides nothing.
        decisions += 6;
    }
    // The API key from its configured header, on every gateway wire.
    envoy_check(&gate, "/service/metrics", &[("x-api-key", "api-key-789")]).await;
    assert_eq!(verify(&gate, "/service/metrics", &[("x-api-key", "api-key-789")]).await.0, 200);
    http.get(gate.url("/ext_authz/service/metrics")).header("x-api-key", "api-key-789").send().await.unwrap();
    decisions += 3;
    // A request refused before any decision (an empty path segment), carrying a credential.
    let invalid = http.get(gate.url("/ext_authz/user//profile")).bearer_auth(&session).send().await.unwrap();
    assert_eq!(invalid.status(), 400);
    // The admin token: policy status, and an eviction.
    let status = http.get(gate.url("/policies/status")).bearer_auth(&admin_token).send().await.unwrap();
    assert_eq!(status.status(), 200);
    let mut admin = proto::admin_client::AdminClient::new(gate.channel().await);
    let mut evict = tonic::Request::new(proto::EvictTokenRequest {
        selector: Some(proto::evict_token_request::Selector::Token(opaque[2].clone())),
    });
    evict.metadata_mut().insert("authorization", format!("Bearer {admin_token}").parse().unwrap());
    admin.evict_token(evict).await.unwrap();
    // A reload that succeeds and one that is refused.
    std::fs::write(gate.dir.path().join("policies/extra.cedar"), "@id(\"extra\")\npermit (principal, action == Action::\"GET\", resource is Route) when { resource.path == \"/extra\" };\n").unwrap();
    gate.served.signal("HUP");
    gate.wait_log(|event| event["message"] == "policies reloaded");
    std::fs::write(
        gate.dir.path().join("policies/broken.cedar"),
        "permit (principal, action, resource) when { nonsense };\n",
    )
    .unwrap();
    gate.served.signal("HUP");
    gate.wait_log(|event| {
        event["message"].as_str().is_some_and(|message| message.starts_with("policy reload rejected"))
    });
    // Logout: the session ends.
    let logout = http.post(gate.url("/auth/logout")).bearer_auth(&session).send().await.unwrap();
    assert!(logout.status().is_success());

    // Backend calls are client spans; the introspection cache missed and hit.
    let jwks_port = jwks_url.rsplit(':').next().unwrap().split('/').next().unwrap().parse::<i64>().unwrap();
    for (method, url) in [("GET", &jwks_url), ("POST", &introspection_url)] {
        let client_span = receiver
            .wait_for_span(&format!("{method} {url}"), |span| {
                span.kind == SPAN_KIND_CLIENT && span.attr("url.full") == json!(url)
            })
            .await;
        assert_eq!(client_span.name, method, "{client_span:#?}");
        for (key, value) in [
            ("http.request.method", json!(method)),
            ("server.address", json!("127.0.0.1")),
            ("server.port", json!(jwks_port)),
            ("http.response.status_code", json!(200)),
        ] {
            assert_eq!(client_span.attr(key), value, "{key}: {client_span:#?}");
        }
        // The keys are fetched by a background refresh (a root span); an introspection call
        // is made by the check that needs it.
        if method == "POST" {
            assert!(
                !client_span.parent_span_id.is_empty(),
                "introspection outside its check: {client_span:#?}"
            );
        }
    }
    for cache in ["miss", "hit"] {
        receiver
            .wait_for_span(&format!("an introspection cache {cache}"), |span| {
                span.name == "cedargate.credential.resolve"
                    && span.attr("cedargate.credential.kind") == json!("introspection")
                    && span.attr("cedargate.credential.cache") == json!(cache)
            })
            .await;
    }
    // The last check's trace is in, so the receiver has what the checks exported.
    let last = Caller::new();
    grpc_check(
        &gate,
        &format!("Bearer {jwt}"),
        route("GET", "/user/profile"),
        Some(&last.traceparent()),
        None,
    )
    .await;
    decisions += 1;
    receiver.wait_for_trace(&last.trace_id, complete("cedargate.v1.Authorizer/Check")).await;

    // Every metric the dashboard uses is one the binary serves, as Prometheus scraped it.
    prometheus.wait_scrape_after(unix_now()).await;
    let served: BTreeSet<String> = prometheus.metric_names().await.into_iter().collect();
    let missing: Vec<String> = dashboard_metric_names()
        .into_iter()
        .filter(|name| {
            let base = ["_bucket", "_sum", "_count"].iter().find_map(|suffix| name.strip_suffix(suffix));
            !served.contains(name) && !base.is_some_and(|base| served.contains(&format!("{base}_bucket")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{DASHBOARD} uses metrics /metrics does not have: {missing:?}\nit has: {served:?}"
    );
    let exposition = gate.metrics_text().await;
    promtool_check_metrics(&exposition)
        .unwrap_or_else(|finding| panic!("{finding}\n/metrics:\n{exposition}"));

    let log = gate.stop().join("\n");
    let records = gate.decisions();
    assert!(records.len() >= decisions, "{} decision records for {decisions} decisions", records.len());
    assert!(records.iter().all(|record| record["version"] == 1), "{records:#?}");
    for kind in ["static", "api_key", "session", "jwt", "introspection"] {
        assert!(
            records.iter().any(|record| record["authInfo"]["credentialKind"] == kind
                && record["credential"]["state"] == "resolved"
                && record["credential"]["fingerprint"].as_str().is_some_and(|print| !print.is_empty())),
            "no resolved {kind} credential with its fingerprint among the decision records"
        );
    }

    assert!(
        records.iter().any(|record| record["credential"]["state"] == "refused"),
        "the unknown token's decision is not recorded as refused"
    );
    // The spans searched below are those of every kind of credential.
    let spans = receiver.spans();
    for kind in ["static", "api_key", "session", "jwt", "introspection"] {
        assert!(
            spans.iter().any(|span| span.name == "cedargate.credential.resolve"
                && span.attr("cedargate.credential.kind") == json!(kind)),
            "no exported span resolved a {kind} credential"
        );
    }

    // The random part of each credential (the prefixes `session-`, `refresh-` and `opaque-`
    // are no secret), and the fixed demo ones whole.
    let mut secrets: Vec<String> =
        ["user-token-123", "admin-token-456", "api-key-789"].map(str::to_owned).to_vec();
    for token in [
        &session,
        &first_session,
        &first_refresh,
        &second_refresh,
        &jwt,
        &unknown,
        &admin_token,
        &client_secret,
        &wrong_password,
    ]
    .into_iter()
    .chain(&opaque)
    {
        let random_part = ["session-", "refresh-", "opaque-", "admin-", "wrong-"]
            .iter()
            .find_map(|prefix| token.strip_prefix(prefix))
            .unwrap_or(token);
        secrets.push(random_part.to_owned());
    }
    assert_no_piece("the log", &log, &secrets);
    assert!(!log.contains("password123"), "the log holds a password");
    assert_no_piece("the decision records", &serde_json::to_string(&records).unwrap(), &secrets);
    assert_no_piece("/metrics", &exposition, &secrets);
    assert_no_piece("the OTLP exports", &receiver.everything(), &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_otlp_endpoints_never_fail_a_check_and_are_counted() {
    // Traces to a port that accepts and never answers (the config's endpoint), metrics to a
    // closed port (the per-signal variable, which overrides the config for metrics only).
    let black_hole = BlackHole::start().await;
    let closed = common::otlp::closed_port();
    let dir = tempfile::tempdir().unwrap();
    policy_dir(dir.path(), &[]);
    let extra = format!(
        "policies:\n  dir: ./policies\n  watch: false\n\
         telemetry:\n  otlp:\n    endpoint: {}\n    protocol: grpc\n    timeout: 500ms\n    metrics_interval: 200ms\n",
        black_hole.endpoint()
    );
    let mut gate = Gate::start_in(
        dir,
        &demo_yaml(&extra),
        &[
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", format!("http://{closed}")),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
            ("OTEL_TRACES_SAMPLER", "always_on".into()),
        ],
    );
    let prometheus = Prometheus::scraping(gate.http, "/metrics").await;

    // Many checks at once, every one answered and decided right while nothing is delivered.
    let table = [
        ("Bearer user-token-123", "/user/profile", Outcome::Allowed),
        ("Bearer user-token-123", "/admin/users", Outcome::Forbidden),
        ("", "/user/profile", Outcome::Unauthenticated),
        ("Bearer admin-token-456", "/admin/users", Outcome::Allowed),
    ];
    let channel = gate.channel().await;
    let mut tasks = Vec::new();
    for round in 0..50 {
        for (authorization, path, outcome) in table {
            let mut client = proto::authorizer_client::AuthorizerClient::new(channel.clone());
            let traceparent = Caller::new().traceparent();
            tasks.push(tokio::spawn(async move {
                let mut request = tonic::Request::new(check_request(authorization, route("GET", path)));
                request.metadata_mut().insert("traceparent", traceparent.parse().unwrap());
                let answer = client.check(request).await.expect("Check answers").into_inner();
                assert_eq!(answer.outcome(), outcome, "round {round}: {authorization} {path}: {answer:?}");
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    // And every other wire still answers.
    assert_eq!(verify(&gate, "/user/profile", &[("authorization", "Bearer user-token-123")]).await.0, 200);
    assert_eq!(envoy_status(&envoy_check(&gate, "/user/profile", &[]).await).0, 401);

    // The exporter did try the black hole, and the failed exports are counted, per signal.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut failures = BTreeMap::new();
    while Instant::now() < deadline {
        failures = prometheus
            .query("sum by (signal) (cedargate_telemetry_export_failures_total)")
            .await
            .into_iter()
            .map(|(labels, value)| (labels["signal"].as_str().unwrap_or("").to_owned(), value))
            .collect::<BTreeMap<String, f64>>();
        if ["traces", "metrics"].iter().all(|signal| failures.get(*signal).is_some_and(|count| *count > 0.0))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        ["traces", "metrics"].iter().all(|signal| failures.get(*signal).is_some_and(|count| *count > 0.0)),
        "export failures not counted per signal: {failures:?}"
    );
    assert!(black_hole.accepted() > 0, "no span export was sent to the configured endpoint");

    // A refused reload logs Cedar's diagnostics: still one JSON object per line.
    std::fs::write(
        gate.dir.path().join("policies/broken.cedar"),
        "permit (principal, action, resource) when {",
    )
    .unwrap();
    gate.served.signal("HUP");
    gate.wait_log(|event| {
        event["message"].as_str().is_some_and(|message| message.starts_with("policy reload rejected"))
    });
    let log = gate.stop();
    // The OpenTelemetry SDK's and exporter's own messages about the failures were among them.
    let library = |line: &String| {
        serde_json::from_str::<Value>(line).is_ok_and(|event| {
            event["target"].as_str().is_some_and(|target| target.starts_with("opentelemetry"))
        })
    };
    assert!(
        log.iter().any(library),
        "no OpenTelemetry message about the failed exports:\n{}",
        log.join("\n")
    );
}

/// Every `expr` of the dashboard's panels, with Grafana's variables replaced by values PromQL
/// accepts (`$__rate_interval` by a duration, a template variable by `.*`).
fn dashboard_expressions() -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(DASHBOARD)).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let variables: Vec<String> = dashboard["templating"]["list"]
        .as_array()
        .map(|list| list.iter().filter_map(|variable| variable["name"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let mut expressions = Vec::new();
    collect_expressions(&dashboard["panels"], &mut expressions);
    assert!(!expressions.is_empty(), "{DASHBOARD} has no PromQL");
    expressions
        .into_iter()
        .map(|expression| {
            let mut expression = expression
                .replace("$__rate_interval", "1m")
                .replace("${__rate_interval}", "1m")
                .replace("$__interval", "1m")
                .replace("$__range", "1h");
            for name in &variables {
                expression =
                    expression.replace(&format!("${{{name}}}"), ".*").replace(&format!("${name}"), ".*");
            }
            assert!(!expression.contains('$'), "an unknown Grafana variable in {DASHBOARD}: {expression}");
            expression
        })
        .collect()
}

fn collect_expressions(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            for (key, field) in fields {
                match (key.as_str(), field) {
                    ("expr", Value::String(expression)) => found.push(expression.clone()),
                    _ => collect_expressions(field, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_expressions(item, found)),
        _ => {}
    }
}

/// The `cedargate_*` and `process_*` metric names the dashboard's expressions use.
fn dashboard_metric_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for expression in dashboard_expressions() {
        for prefix in ["cedargate_", "process_"] {
            for (at, _) in expression.match_indices(prefix) {
                let starts_a_name = expression[..at]
                    .chars()
                    .next_back()
                    .is_none_or(|before| !(before.is_alphanumeric() || before == '_'));
                if starts_a_name {
                    let name: String = expression[at..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    names.insert(name);
                }
            }
        }
    }
    names
}

#[test]
fn the_grafana_dashboard_is_valid_promql_over_every_instrument() {
    let expressions = dashboard_expressions();
    promtool_check_expressions(&expressions).unwrap_or_else(|error| panic!("{error}\n{expressions:#?}"));
    let names = dashboard_metric_names();
    // The panels the issue asks for, by the metrics they need.
    for wanted in [
        "cedargate_decisions_total",
        "cedargate_check_duration_seconds_bucket",
        "cedargate_check_stage_duration_seconds_bucket",
        "cedargate_checks_in_flight",
        "cedargate_token_cache_lookups_total",
        "cedargate_backend_requests_total",
        "cedargate_backend_request_duration_seconds_bucket",
        "cedargate_policy_info",
        "cedargate_policy_reloads_total",
        "cedargate_shadow_disagreements_total",
        "cedargate_logins_total",
        "cedargate_invalid_requests_total",
        "cedargate_telemetry_export_failures_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(names.contains(wanted), "{DASHBOARD} has no panel on {wanted}: {names:?}");
    }
}
