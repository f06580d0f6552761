//! An OTLP receiver for the telemetry tests, built from the OpenTelemetry protobuf definitions
//! (the `opentelemetry-proto` crate's tonic services and messages): gRPC (`TraceService`,
//! `MetricsService`, `LogsService`) and HTTP/protobuf (`POST /v1/traces`, `/v1/metrics`,
//! `/v1/logs`) on `127.0.0.1:0`, each storing every export request it decoded with the
//! transport it came over. Helpers flatten what arrived (spans with their resource, metric
//! data points, log records) into plain values with attributes as JSON, and wait, with a
//! deadline, until a predicate holds. Also a black hole (a port that accepts TCP and never
//! answers) and a closed port, for fault tests.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde_json::Value;
use tokio::task::JoinHandle;

/// How long the `wait_*` helpers wait before they fail the test.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Which of the receiver's two ports an export came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    HttpProtobuf,
}

/// Everything the receiver decoded, in arrival order.
#[derive(Debug, Default)]
struct Store {
    traces: Vec<(Transport, ExportTraceServiceRequest)>,
    metrics: Vec<(Transport, ExportMetricsServiceRequest)>,
    logs: Vec<(Transport, ExportLogsServiceRequest)>,
    /// HTTP bodies that were not the protobuf message their path names.
    undecodable: Vec<String>,
}

type Shared = Arc<Mutex<Store>>;

/// One span as it arrived, with its resource's attributes.
#[derive(Debug, Clone)]
pub struct FlatSpan {
    pub transport: Transport,
    /// Hex, 32 characters.
    pub trace_id: String,
    /// Hex, 16 characters.
    pub span_id: String,
    /// Hex; empty for a root span.
    pub parent_span_id: String,
    /// The W3C `tracestate` the span carries.
    pub trace_state: String,
    pub name: String,
    /// `opentelemetry.proto.trace.v1.Span.SpanKind`: 1 internal, 2 server, 3 client.
    pub kind: i32,
    pub attributes: BTreeMap<String, Value>,
    /// The events' names with their attributes.
    pub events: Vec<(String, BTreeMap<String, Value>)>,
    pub resource: BTreeMap<String, Value>,
    pub scope: String,
}

/// `AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA`.
const DELTA: i32 = 1;

/// `Span.SpanKind` values.
pub const SPAN_KIND_INTERNAL: i32 = 1;
pub const SPAN_KIND_SERVER: i32 = 2;
pub const SPAN_KIND_CLIENT: i32 = 3;

impl FlatSpan {
    /// The attribute's value; `Value::Null` when absent.
    pub fn attr(&self, key: &str) -> Value {
        self.attributes.get(key).cloned().unwrap_or(Value::Null)
    }
}

/// One data point of one metric: a sum's or gauge's value, a histogram's count and sum.
#[derive(Debug, Clone)]
pub struct MetricPoint {
    pub transport: Transport,
    pub name: String,
    pub unit: String,
    /// `gauge`, `sum`, `histogram`, `exponential_histogram` or `summary`.
    pub kind: &'static str,
    pub attributes: BTreeMap<String, Value>,
    /// A sum's or gauge's value; a histogram's count.
    pub value: f64,
    /// A histogram's sum.
    pub sum: Option<f64>,
    /// Whether a sum or histogram point is cumulative (else a delta; gauges are cumulative).
    pub cumulative: bool,
    pub resource: BTreeMap<String, Value>,
}

/// One log record as it arrived.
#[derive(Debug, Clone)]
pub struct FlatLog {
    pub transport: Transport,
    pub body: Value,
    pub attributes: BTreeMap<String, Value>,
    pub event_name: String,
    pub severity_text: String,
    /// Hex; empty when the record carries no trace context.
    pub trace_id: String,
    pub span_id: String,
    pub resource: BTreeMap<String, Value>,
}

/// The receiver; both servers stop when it is dropped.
pub struct Receiver {
    /// OTLP/gRPC: `http://{grpc}`.
    pub grpc: SocketAddr,
    /// OTLP/HTTP: `http://{http}` (the exporter appends `/v1/traces` and the rest).
    pub http: SocketAddr,
    store: Shared,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[derive(Clone)]
struct Grpc(Shared);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().traces.push((Transport::Grpc, request.into_inner()));
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().metrics.push((Transport::Grpc, request.into_inner()));
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().logs.push((Transport::Grpc, request.into_inner()));
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

/// The OTLP/HTTP answer: the protobuf response message (OTLP spec, "OTLP/HTTP Response").
fn protobuf(message: &impl Message) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/x-protobuf")], message.encode_to_vec())
        .into_response()
}

fn undecodable(store: &Shared, path: &str, error: prost::DecodeError) -> Response {
    store.lock().unwrap().undecodable.push(format!("{path}: {error}"));
    (StatusCode::BAD_REQUEST, format!("{path}: {error}")).into_response()
}

async fn http_traces(store: Shared, body: Bytes) -> Response {
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            store.lock().unwrap().traces.push((Transport::HttpProtobuf, request));
            protobuf(&ExportTraceServiceResponse::default())
        }
        Err(error) => undecodable(&store, "/v1/traces", error),
    }
}

async fn http_metrics(store: Shared, body: Bytes) -> Response {
    match ExportMetricsServiceRequest::decode(body) {
        Ok(request) => {
            store.lock().unwrap().metrics.push((Transport::HttpProtobuf, request));
            protobuf(&ExportMetricsServiceResponse::default())
        }
        Err(error) => undecodable(&store, "/v1/metrics", error),
    }
}

async fn http_logs(store: Shared, body: Bytes) -> Response {
    match ExportLogsServiceRequest::decode(body) {
        Ok(request) => {
            store.lock().unwrap().logs.push((Transport::HttpProtobuf, request));
            protobuf(&ExportLogsServiceResponse::default())
        }
        Err(error) => undecodable(&store, "/v1/logs", error),
    }
}

impl Receiver {
    /// Serves both ports on `127.0.0.1:0` in the current runtime.
    pub async fn start() -> Self {
        let store = Shared::default();

        let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = grpc_listener.local_addr().unwrap();
        let service = Grpc(Arc::clone(&store));
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(service.clone()))
            .add_service(MetricsServiceServer::new(service.clone()))
            .add_service(LogsServiceServer::new(service));
        let grpc_task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc_listener);
            let _ = server.serve_with_incoming(incoming).await;
        });

        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = http_listener.local_addr().unwrap();
        let (traces, metrics, logs) = (Arc::clone(&store), Arc::clone(&store), Arc::clone(&store));
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(move |body: Bytes| http_traces(traces, body)))
            .route("/v1/metrics", axum::routing::post(move |body: Bytes| http_metrics(metrics, body)))
            .route("/v1/logs", axum::routing::post(move |body: Bytes| http_logs(logs, body)));
        let http_task = tokio::spawn(async move {
            let _ = axum::serve(http_listener, app).await;
        });

        Self { grpc, http, store, tasks: vec![grpc_task, http_task] }
    }

    /// The endpoint for `OTEL_EXPORTER_OTLP_ENDPOINT` with this protocol.
    pub fn endpoint(&self, transport: Transport) -> String {
        match transport {
            Transport::Grpc => format!("http://{}", self.grpc),
            Transport::HttpProtobuf => format!("http://{}", self.http),
        }
    }

    /// Every span received so far, flattened.
    pub fn spans(&self) -> Vec<FlatSpan> {
        let store = self.store.lock().unwrap();
        let mut spans = Vec::new();
        for (transport, request) in &store.traces {
            for resource_spans in &request.resource_spans {
                let resource = resource_attributes(resource_spans.resource.as_ref());
                for scope_spans in &resource_spans.scope_spans {
                    let scope =
                        scope_spans.scope.as_ref().map(|scope| scope.name.clone()).unwrap_or_default();
                    for span in &scope_spans.spans {
                        spans.push(FlatSpan {
                            transport: *transport,
                            trace_id: hex::encode(&span.trace_id),
                            span_id: hex::encode(&span.span_id),
                            parent_span_id: hex::encode(&span.parent_span_id),
                            trace_state: span.trace_state.clone(),
                            name: span.name.clone(),
                            kind: span.kind,
                            attributes: attributes(&span.attributes),
                            events: span
                                .events
                                .iter()
                                .map(|event| (event.name.clone(), attributes(&event.attributes)))
                                .collect(),
                            resource: resource.clone(),
                            scope: scope.clone(),
                        });
                    }
                }
            }
        }
        spans
    }

    /// Every metric data point received so far, in arrival order (a cumulative sum's newest
    /// value is its last point).
    pub fn metric_points(&self) -> Vec<MetricPoint> {
        let store = self.store.lock().unwrap();
        let mut points = Vec::new();
        for (transport, request) in &store.metrics {
            for resource_metrics in &request.resource_metrics {
                let resource = resource_attributes(resource_metrics.resource.as_ref());
                for scope_metrics in &resource_metrics.scope_metrics {
                    for metric in &scope_metrics.metrics {
                        let cumulative = match &metric.data {
                            Some(metric::Data::Sum(sum)) => sum.aggregation_temporality != DELTA,
                            Some(metric::Data::Histogram(histogram)) => {
                                histogram.aggregation_temporality != DELTA
                            }
                            Some(metric::Data::ExponentialHistogram(histogram)) => {
                                histogram.aggregation_temporality != DELTA
                            }
                            _ => true,
                        };
                        let point = |kind, attributes: &[KeyValue], value, sum| MetricPoint {
                            transport: *transport,
                            name: metric.name.clone(),
                            unit: metric.unit.clone(),
                            kind,
                            attributes: self::attributes(attributes),
                            value,
                            sum,
                            cumulative,
                            resource: resource.clone(),
                        };
                        match &metric.data {
                            Some(metric::Data::Sum(sum)) => {
                                for data in &sum.data_points {
                                    points.push(point("sum", &data.attributes, number(data.value), None));
                                }
                            }
                            Some(metric::Data::Gauge(gauge)) => {
                                for data in &gauge.data_points {
                                    points.push(point("gauge", &data.attributes, number(data.value), None));
                                }
                            }
                            Some(metric::Data::Histogram(histogram)) => {
                                for data in &histogram.data_points {
                                    points.push(point(
                                        "histogram",
                                        &data.attributes,
                                        data.count as f64,
                                        data.sum,
                                    ));
                                }
                            }
                            Some(metric::Data::ExponentialHistogram(histogram)) => {
                                for data in &histogram.data_points {
                                    points.push(point(
                                        "exponential_histogram",
                                        &data.attributes,
                                        data.count as f64,
                                        data.sum,
                                    ));
                                }
                            }
                            Some(metric::Data::Summary(summary)) => {
                                for data in &summary.data_points {
                                    points.push(point(
                                        "summary",
                                        &data.attributes,
                                        data.count as f64,
                                        Some(data.sum),
                                    ));
                                }
                            }
                            None => {}
                        }
                    }
                }
            }
        }
        points
    }

    /// A sum's or histogram's total so far for each attribute set (as sorted `key=value`
    /// pairs): the newest point of a cumulative series, the sum of a delta one's points.
    pub fn metric_totals(&self, name: &str) -> BTreeMap<Vec<(String, String)>, f64> {
        let mut totals = BTreeMap::new();
        for point in self.metric_points().into_iter().filter(|point| point.name == name) {
            let key: Vec<(String, String)> = point
                .attributes
                .iter()
                .map(|(key, value)| {
                    (key.clone(), value.as_str().map_or_else(|| value.to_string(), str::to_owned))
                })
                .collect();
            let total = totals.entry(key).or_insert(0.0);
            if point.cumulative {
                *total = point.value;
            } else {
                *total += point.value;
            }
        }
        totals
    }

    /// The names of every metric received so far.
    pub fn metric_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.metric_points().into_iter().map(|point| point.name).collect();
        names.sort();
        names.dedup();
        names
    }

    /// Every log record received so far.
    pub fn logs(&self) -> Vec<FlatLog> {
        let store = self.store.lock().unwrap();
        let mut logs = Vec::new();
        for (transport, request) in &store.logs {
            for resource_logs in &request.resource_logs {
                let resource = resource_attributes(resource_logs.resource.as_ref());
                for scope_logs in &resource_logs.scope_logs {
                    for record in &scope_logs.log_records {
                        logs.push(FlatLog {
                            transport: *transport,
                            body: record.body.as_ref().map_or(Value::Null, json),
                            attributes: attributes(&record.attributes),
                            event_name: record.event_name.clone(),
                            severity_text: record.severity_text.clone(),
                            trace_id: hex::encode(&record.trace_id),
                            span_id: hex::encode(&record.span_id),
                            resource: resource.clone(),
                        });
                    }
                }
            }
        }
        logs
    }

    /// Everything received so far as text (every string the exports carried, in the
    /// messages' `Debug` form), for tests that look for what must never be there.
    pub fn everything(&self) -> String {
        let store = self.store.lock().unwrap();
        format!("{:?}\n{:?}\n{:?}", store.traces, store.metrics, store.logs)
    }

    /// HTTP bodies that did not decode as the message their path names (a test expects none).
    pub fn undecodable(&self) -> Vec<String> {
        self.store.lock().unwrap().undecodable.clone()
    }

    /// Polls `found` until it returns `Some`, for at most [`DEADLINE`]; panics with `what`
    /// and what had arrived by then.
    pub async fn wait_for<T>(&self, what: &str, mut found: impl FnMut(&Self) -> Option<T>) -> T {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(value) = found(self) {
                return value;
            }
            if Instant::now() > deadline {
                panic!(
                    "{what}: not received within {DEADLINE:?}\nspans: {:#?}\nmetrics: {:?}\nlogs: {:#?}\nundecodable: {:?}",
                    self.spans(),
                    self.metric_names(),
                    self.logs(),
                    self.undecodable()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The first span `wanted` picks, waiting for it.
    pub async fn wait_for_span(&self, what: &str, wanted: impl Fn(&FlatSpan) -> bool) -> FlatSpan {
        self.wait_for(what, |receiver| receiver.spans().into_iter().find(|span| wanted(span))).await
    }

    /// Every span of `trace_id`, once one of them satisfies `complete` (children are usually
    /// exported before or with their parent, but a batch may split them).
    pub async fn wait_for_trace(
        &self,
        trace_id: &str,
        complete: impl Fn(&[FlatSpan]) -> bool,
    ) -> Vec<FlatSpan> {
        self.wait_for(&format!("trace {trace_id}"), |receiver| {
            let spans: Vec<FlatSpan> =
                receiver.spans().into_iter().filter(|span| span.trace_id == trace_id).collect();
            complete(&spans).then_some(spans)
        })
        .await
    }
}

fn number(value: Option<number_data_point::Value>) -> f64 {
    match value {
        Some(number_data_point::Value::AsDouble(value)) => value,
        Some(number_data_point::Value::AsInt(value)) => value as f64,
        None => f64::NAN,
    }
}

fn resource_attributes(resource: Option<&Resource>) -> BTreeMap<String, Value> {
    resource.map(|resource| attributes(&resource.attributes)).unwrap_or_default()
}

/// Attributes as JSON values: strings, integers, doubles, booleans, arrays, objects (a
/// key-value list), bytes as hex.
pub fn attributes(list: &[KeyValue]) -> BTreeMap<String, Value> {
    list.iter().map(|pair| (pair.key.clone(), pair.value.as_ref().map_or(Value::Null, json))).collect()
}

fn json(value: &AnyValue) -> Value {
    match &value.value {
        Some(any_value::Value::StringValue(text)) => Value::String(text.clone()),
        Some(any_value::Value::BoolValue(flag)) => Value::Bool(*flag),
        Some(any_value::Value::IntValue(number)) => Value::from(*number),
        Some(any_value::Value::DoubleValue(number)) => Value::from(*number),
        Some(any_value::Value::ArrayValue(array)) => Value::Array(array.values.iter().map(json).collect()),
        Some(any_value::Value::KvlistValue(list)) => {
            Value::Object(attributes(&list.values).into_iter().collect())
        }
        Some(any_value::Value::BytesValue(bytes)) => Value::String(hex::encode(bytes)),
        Some(any_value::Value::StringValueStrindex(index)) => Value::from(*index),
        None => Value::Null,
    }
}

/// A port that accepts TCP connections and never reads or answers: an exporter sending to it
/// waits for its own timeout. Holds every connection until dropped.
pub struct BlackHole {
    pub addr: SocketAddr,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<()>,
}

impl BlackHole {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((connection, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(connection);
            }
        });
        Self { addr, accepted, task }
    }

    /// Connections accepted so far: proof that something tried to deliver here.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A local port nothing listens on (bound, read and closed): connecting is refused.
pub fn closed_port() -> SocketAddr {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Panics with `what` when `value` is not `expected`, showing the span.
pub fn assert_attr(span: &FlatSpan, key: &str, expected: impl Into<Value> + Debug) {
    let expected = expected.into();
    assert_eq!(span.attr(key), expected, "{} {key}: {span:#?}", span.name);
}
