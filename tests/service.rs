//! The service around the decisions: health, reflection, readiness, policy reload, start-up
//! failures and graceful shutdown.

// Test code: a failed set-up step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use cedargate::api::proto::Outcome;
use cedargate::config::Config;
use cedargate::{App, AppError};
use common::{check, http_login, route, TestServer};
use tokio_stream::StreamExt;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

#[tokio::test]
async fn health_and_readiness_report_serving() {
    let server = TestServer::demo().await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "cedargate.v1.Authorizer", "cedargate.v1.Sessions"] {
        let answer = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(answer.status, 1, "{service:?} is SERVING");
    }
    let http = reqwest::Client::new();
    assert_eq!(http.get(server.http_url("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(http.get(server.http_url("/readyz")).send().await.unwrap().status(), 200);
    assert_eq!(http.get(server.http_url("/nope")).send().await.unwrap().status(), 404);
}

#[tokio::test]
async fn reflection_lists_the_services_for_generic_clients() {
    let server = TestServer::demo().await;
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream =
        reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        stream.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|service| service.name).collect();
    for expected in ["cedargate.v1.Authorizer", "cedargate.v1.Sessions", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|name| name == expected), "{expected} missing from {names:?}");
    }
}

fn write_policies(dir: &Path, policy: &str) {
    std::fs::write(dir.join("schema.cedarschema"), include_str!("../policies/schema.cedarschema")).unwrap();
    std::fs::write(dir.join("rules.cedar"), policy).unwrap();
}

/// Reloads only when asked (the watcher has its own tests in `reload.rs`).
fn config_for(dir: &Path) -> Config {
    let text = format!("policies:\n  dir: {}\n  watch: false\n", dir.display());
    std::fs::write(dir.join("cedargate.yaml"), text).unwrap();
    Config::load(&dir.join("cedargate.yaml")).unwrap()
}

#[tokio::test]
async fn a_bad_reload_keeps_the_last_good_policies() {
    let dir = tempfile::tempdir().unwrap();
    write_policies(dir.path(), "@id(\"open\") permit (principal, action, resource);");
    let server = TestServer::start(config_for(dir.path())).await;
    let mut client = server.authorizer().await;
    assert_eq!(check(&mut client, "", route("GET", "/x")).await.outcome(), Outcome::Allowed);

    std::fs::write(dir.path().join("rules.cedar"), "permit (principal, action resource);").unwrap();
    let error = server.app.reload_policies().await.unwrap_err().to_string();
    assert!(error.contains("rules.cedar:1:"), "{error}");
    assert_eq!(check(&mut client, "", route("GET", "/x")).await.outcome(), Outcome::Allowed);

    std::fs::write(
        dir.path().join("rules.cedar"),
        "@id(\"closed\") @reason(\"closed for now\") forbid (principal, action, resource);",
    )
    .unwrap();
    server.app.reload_policies().await.unwrap();
    let answer = check(&mut client, "", route("GET", "/x")).await;
    assert_eq!((answer.outcome(), answer.reason.as_str()), (Outcome::Unauthenticated, "closed for now"));
}

#[tokio::test]
async fn an_invalid_policy_stops_start_up_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    write_policies(dir.path(), "permit (principal, action, resource);\nforbid (principal, action, resource) when { resource.nope };\n");
    let error = App::build(config_for(dir.path())).unwrap_err();
    assert!(matches!(error, AppError::Policy(_)));
    let text = error.to_string();
    assert!(text.contains("rules.cedar:2:"), "{text}");
    assert!(text.contains("nope"), "{text}");
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests() {
    let server = TestServer::demo().await;
    // Password checks take tens of milliseconds and at most four run at once, so once the
    // first answer is back the others are inside the server.
    let logins: Vec<_> = (0..12)
        .map(|_| {
            let url = server.http_url("/auth/login");
            tokio::spawn(async move {
                reqwest::Client::new()
                    .post(url)
                    .json(&serde_json::json!({ "username": "alice", "password": "password123" }))
                    .send()
                    .await
                    .map(|response| response.status().as_u16())
            })
        })
        .collect();
    let first = http_login(&server, "alice", "password123").await;
    assert_eq!(first.status(), 200);
    let http_address = server.http;
    server.stop().await.unwrap();
    for login in logins {
        assert_eq!(login.await.unwrap().unwrap(), 200, "an in-flight login was cut off");
    }
    assert!(tokio::net::TcpStream::connect(http_address).await.is_err(), "the listener is closed");
}

#[tokio::test]
async fn shutdown_closes_connections_still_open_after_the_grace_period() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = Config::demo().unwrap();
    config.listen.shutdown_grace = cedargate::config::HumanDuration(std::time::Duration::from_millis(200));
    let server = TestServer::start(config).await;
    // A request whose body never completes keeps its connection busy forever.
    let mut stuck = tokio::net::TcpStream::connect(server.http).await.unwrap();
    stuck.write_all(b"POST /auth/login HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{").await.unwrap();
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(30), server.stop()).await;
    assert!(matches!(stopped, Ok(Ok(()))), "shutdown did not end: {stopped:?}");
    // Closed, not merely abandoned by a server that stopped looking at it.
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), stuck.read(&mut [0u8; 256])).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "the connection is still open: {read:?}");
}

#[tokio::test]
async fn shutdown_reports_every_service_not_serving() {
    use tokio_stream::StreamExt;
    let mut config = Config::demo().unwrap();
    config.listen.shutdown_grace = cedargate::config::HumanDuration(std::time::Duration::from_secs(2));
    let server = TestServer::start(config).await;
    let mut health = HealthClient::new(server.channel().await);
    let services =
        ["", "cedargate.v1.Authorizer", "cedargate.v1.Sessions", "envoy.service.auth.v3.Authorization"];
    let mut watches = Vec::new();
    for service in services {
        let mut watch =
            health.watch(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(watch.next().await.unwrap().unwrap().status, 1, "{service:?} starts SERVING");
        watches.push((service, watch));
    }
    let stopping = tokio::spawn(server.stop());
    for (service, mut watch) in watches {
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), watch.next()).await;
        let status = next.expect("an update within 5 s").expect("the watch is open").unwrap().status;
        assert_eq!(status, 2, "{service:?} is NOT_SERVING during shutdown");
    }
    stopping.await.unwrap().unwrap();
}
