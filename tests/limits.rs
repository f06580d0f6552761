//! Connection limits (`listen.*`): header, idle and request timeouts, per-listener connection
//! caps, HTTP/2 streams per connection, and both ports answering through a slowloris flood
//! when file descriptors are scarce.
//!
//! Nothing here asserts that something happened quickly. A limit is shown by something being
//! closed or answered within a generous deadline, or by something *not* happening within a
//! short wait while the limit that forbids it lasts a minute.

// Test code: a failed set-up step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use cedargate::api::proto::{self, authorizer_client::AuthorizerClient, Outcome};
use cedargate::config::{Config, HumanDuration, ListenConfig};
use common::served::Served;
use common::{check, route, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_stream::StreamExt;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Deadline for something that must happen.
const GENEROUS: Duration = Duration::from_secs(10);
/// A limit that must not cut in during a test.
const LONG: Duration = Duration::from_secs(60);
/// How long a test watches for something a limit forbids.
const WATCH: Duration = Duration::from_secs(1);
const SHORT: Duration = Duration::from_millis(300);

fn demo_with(edit: impl FnOnce(&mut ListenConfig)) -> Config {
    let mut config = Config::demo().unwrap();
    edit(&mut config.listen);
    config
}

/// Reads until the server closes the connection (a reset counts) and returns what came.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return received,
            Ok(read) => received.extend_from_slice(&buffer[..read]),
        }
    }
}

/// Reads one HTTP/1.1 response with a `content-length` and returns it as text.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(str::to_owned))
                .map_or(0, |value| value.trim().parse::<usize>().unwrap());
            if body.len() >= length {
                return text;
            }
        }
        let read = stream.read(&mut buffer).await.unwrap();
        assert!(read > 0, "closed before a whole response: {text:?}");
        received.extend_from_slice(&buffer[..read]);
    }
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: cedargate\r\n\r\n";

#[tokio::test]
async fn a_request_head_that_never_ends_is_closed_after_the_header_timeout() {
    let server =
        TestServer::start(demo_with(|listen| listen.header_read_timeout = HumanDuration(SHORT))).await;
    let mut slow = TcpStream::connect(server.http).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: cedargate\r\nx-slow: 1").await.unwrap();
    let answer = timeout(GENEROUS, read_until_closed(&mut slow)).await.expect("closed by the server");
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
}

#[tokio::test]
async fn a_grpc_connection_that_never_sends_the_http2_preface_is_closed_after_the_header_timeout() {
    let server =
        TestServer::start(demo_with(|listen| listen.header_read_timeout = HumanDuration(SHORT))).await;
    let mut silent = TcpStream::connect(server.grpc).await.unwrap();
    silent.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    timeout(GENEROUS, read_until_closed(&mut silent)).await.expect("closed by the server");
}

#[tokio::test]
async fn a_kept_alive_connection_may_idle_past_the_header_timeout() {
    let server = TestServer::start(demo_with(|listen| {
        listen.header_read_timeout = HumanDuration(SHORT);
        listen.http_idle_timeout = HumanDuration(LONG);
    }))
    .await;
    let mut connection = TcpStream::connect(server.http).await.unwrap();
    connection.write_all(HEALTHZ).await.unwrap();
    assert!(read_response(&mut connection).await.starts_with("HTTP/1.1 200"));
    // Well past the header timeout: hyper's single clock alone would have closed it.
    tokio::time::sleep(5 * SHORT).await;
    connection.write_all(HEALTHZ).await.unwrap();
    let second = timeout(GENEROUS, read_response(&mut connection)).await.unwrap();
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_the_idle_timeout() {
    let server = TestServer::start(demo_with(|listen| {
        listen.header_read_timeout = HumanDuration(LONG);
        listen.http_idle_timeout = HumanDuration(SHORT);
    }))
    .await;
    let mut connection = TcpStream::connect(server.http).await.unwrap();
    connection.write_all(HEALTHZ).await.unwrap();
    assert!(read_response(&mut connection).await.starts_with("HTTP/1.1 200"));
    let rest = timeout(GENEROUS, read_until_closed(&mut connection)).await.expect("closed by the server");
    assert!(rest.is_empty());
}

#[tokio::test]
async fn a_request_whose_body_never_arrives_is_answered_503_after_the_request_timeout() {
    let server = TestServer::start(demo_with(|listen| listen.request_timeout = HumanDuration(SHORT))).await;
    let mut connection = TcpStream::connect(server.http).await.unwrap();
    let head = "POST /auth/login HTTP/1.1\r\nhost: cedargate\r\ncontent-type: application/json\r\n";
    connection.write_all(format!("{head}content-length: 100\r\n\r\n{{").as_bytes()).await.unwrap();
    let answer = timeout(GENEROUS, read_response(&mut connection)).await.expect("answered in time");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
}

#[tokio::test]
async fn a_grpc_call_whose_request_never_arrives_is_cancelled_after_the_request_timeout() {
    let server = TestServer::start(demo_with(|listen| listen.request_timeout = HumanDuration(SHORT))).await;
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.unwrap();
    // A unary call whose request message is never sent: the handler waits for it.
    let call = grpc.client_streaming(
        tonic::Request::new(tokio_stream::pending::<proto::CheckRequest>()),
        PathAndQuery::from_static("/cedargate.v1.Authorizer/Check"),
        tonic_prost::ProstCodec::<proto::CheckRequest, proto::CheckResponse>::default(),
    );
    let status = timeout(GENEROUS, call).await.expect("answered in time").unwrap_err();
    assert_eq!(status.code(), tonic::Code::Cancelled, "{status:?}");
}

#[tokio::test]
async fn the_http_port_speaks_only_http1() {
    let server = TestServer::demo().await;
    let mut connection = TcpStream::connect(server.http).await.unwrap();
    // The HTTP/2 preface and an empty SETTINGS frame (prior knowledge, as h2c clients send).
    connection.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.unwrap();
    // An HTTP/2 server answers with its SETTINGS frame (type 4 in byte 3) and keeps the
    // connection; an HTTP/1.1 one sees no request line and closes it.
    let mut frame_head = [0u8; 9];
    let first = timeout(GENEROUS, connection.read(&mut frame_head)).await.expect("an answer or a close");
    assert!(!matches!(first, Ok(9) if frame_head[3] == 4), "answered with an HTTP/2 SETTINGS frame");
    timeout(GENEROUS, read_until_closed(&mut connection)).await.expect("closed by the server");
}

#[tokio::test]
async fn each_listener_has_its_own_cap_and_connections_beyond_it_wait_for_a_free_slot() {
    let server = TestServer::start(demo_with(|listen| {
        listen.http_max_connections = 2;
        listen.grpc_max_connections = 1;
        listen.header_read_timeout = HumanDuration(LONG);
    }))
    .await;
    // Two connections that never send anything fill the HTTP port's cap...
    let first_idle = TcpStream::connect(server.http).await.unwrap();
    let _second_idle = TcpStream::connect(server.http).await.unwrap();
    // ...which leaves the gRPC port alone.
    let mut authorizer = server.authorizer().await;
    let answer = timeout(GENEROUS, check(&mut authorizer, "", route("GET", "/public/info"))).await.unwrap();
    assert_eq!(answer.outcome(), Outcome::Allowed);

    let mut waiting = TcpStream::connect(server.http).await.unwrap();
    waiting.write_all(HEALTHZ).await.unwrap();
    assert!(timeout(WATCH, read_response(&mut waiting)).await.is_err(), "answered beyond the cap");
    drop(first_idle);
    let answer = timeout(GENEROUS, read_response(&mut waiting)).await.expect("answered once a slot freed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // The one gRPC slot is the channel above; a second channel waits until it closes.
    let grpc = server.grpc;
    let mut second = tokio::spawn(async move {
        let channel = Channel::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
        check(&mut AuthorizerClient::new(channel), "", route("GET", "/public/info")).await.outcome()
    });
    assert!(timeout(WATCH, &mut second).await.is_err(), "a second gRPC connection was served beyond the cap");
    drop(authorizer);
    assert_eq!(timeout(GENEROUS, second).await.expect("served once a slot freed").unwrap(), Outcome::Allowed);
}

#[tokio::test]
async fn one_grpc_connection_carries_at_most_max_concurrent_streams() {
    const STREAMS: u32 = 10;
    let server = TestServer::start(demo_with(|listen| listen.grpc_max_concurrent_streams = STREAMS)).await;
    let channel = server.channel().await;
    // One answered call first, so the client has read the server's SETTINGS before it opens more.
    let mut health = HealthClient::new(channel.clone());
    health.check(HealthCheckRequest { service: String::new() }).await.unwrap();

    let (opened, mut open) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..2 * STREAMS {
        let mut health = HealthClient::new(channel.clone());
        let opened = opened.clone();
        tokio::spawn(async move {
            // A stream the server refuses (REFUSED_STREAM) is as good as one the client holds
            // back: either way it is not open; try again until it is.
            loop {
                if let Ok(watch) = health.watch(HealthCheckRequest { service: String::new() }).await {
                    let mut watch = watch.into_inner();
                    if let Some(Ok(_serving)) = watch.next().await {
                        let _ = opened.send(watch);
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        streams.push(timeout(GENEROUS, open.recv()).await.expect("the first ten streams open").unwrap());
    }
    assert!(timeout(WATCH, open.recv()).await.is_err(), "more than {STREAMS} streams open on one connection");
    drop(streams);
    for _ in 0..STREAMS {
        timeout(GENEROUS, open.recv()).await.expect("the others open once those end").unwrap();
    }
}

/// A config file for the real binary, on ports of its choosing.
fn served_config(dir: &std::path::Path, listen: &str) -> std::path::PathBuf {
    let path = dir.join("cedargate.yaml");
    std::fs::write(&path, format!("listen:\n  grpc: 127.0.0.1:0\n  http: 127.0.0.1:0\n{listen}")).unwrap();
    path
}

/// Opens `count` connections to `address`, each sending the start of a request line only.
async fn slowloris(address: &str, count: usize) -> Vec<TcpStream> {
    let mut flood = Vec::new();
    for _ in 0..count {
        let mut connection = TcpStream::connect(address).await.unwrap();
        connection.write_all(b"GET /heal").await.unwrap();
        flood.push(connection);
    }
    flood
}

async fn grpc_check_allowed(address: &str) -> bool {
    let mut client = AuthorizerClient::connect(format!("http://{address}")).await.unwrap();
    check(&mut client, "", route("GET", "/public/info")).await.outcome() == Outcome::Allowed
}

// Multi-threaded: the test blocks on log lines while client tasks keep running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_slowloris_flood_and_few_file_descriptors_both_ports_still_answer() {
    let dir = tempfile::tempdir().unwrap();
    // 128 descriptors: more than both caps and the runtime's own need, far fewer than the flood.
    let config = served_config(
        dir.path(),
        "  http_max_connections: 40\n  grpc_max_connections: 40\n  header_read_timeout: 1s\n",
    );
    let served = Served::start_with_open_files(&config, 128);
    let mut log = Vec::new();
    let serving = served.wait_for(|event| event["message"] == "cedargate serving", &mut log);
    let (grpc, http) =
        (serving["grpc"].as_str().unwrap().to_owned(), serving["http"].as_str().unwrap().to_owned());

    let mut flood = slowloris(&http, 200).await;
    // The HTTP flood takes at most its own cap, so gRPC has descriptors and slots left.
    assert!(timeout(GENEROUS, grpc_check_allowed(&grpc)).await.expect("gRPC answers during the flood"));
    // A normal HTTP request waits in the backlog behind the flood, which the header timeout
    // clears forty connections at a time.
    let healthz = reqwest::Client::new().get(format!("http://{http}/healthz")).send();
    let status =
        timeout(3 * GENEROUS, healthz).await.expect("HTTP answers during the flood").unwrap().status();
    assert_eq!(status, 200);
    // Every flood connection, the queued ones included, was closed by the server.
    let all_closed = async {
        for connection in &mut flood {
            read_until_closed(connection).await;
        }
    };
    timeout(3 * GENEROUS, all_closed).await.expect("the server closed every slow connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_accept_loops_wait_instead_of_spinning_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    // Caps above the descriptor limit, so the flood exhausts the process's descriptors.
    let config = served_config(
        dir.path(),
        "  http_max_connections: 1000\n  grpc_max_connections: 1000\n  header_read_timeout: 60s\n",
    );
    let served = Served::start_with_open_files(&config, 128);
    let mut log = Vec::new();
    let serving = served.wait_for(|event| event["message"] == "cedargate serving", &mut log);
    let (grpc, http) =
        (serving["grpc"].as_str().unwrap().to_owned(), serving["http"].as_str().unwrap().to_owned());

    let flood = slowloris(&http, 200).await;
    served.wait_for(
        |event| {
            event["message"].as_str().is_some_and(|message| message.starts_with("cannot accept connections"))
        },
        &mut log,
    );
    // A gRPC client queues up too, so both accept loops meet EMFILE.
    let grpc_check = tokio::spawn(async move { grpc_check_allowed(&grpc).await });
    tokio::time::sleep(SHORT).await;
    let before = served.cpu_time();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = served.cpu_time() - before;
    // A loop retrying at once burns a whole core; one pausing 100 ms next to nothing.
    assert!(used < Duration::from_millis(500), "{used:?} of CPU in 2 s while out of descriptors");

    drop(flood);
    assert!(timeout(3 * GENEROUS, grpc_check).await.expect("gRPC answers once descriptors free up").unwrap());
    let status = reqwest::get(format!("http://{http}/healthz")).await.unwrap().status();
    assert_eq!(status, 200);
}
