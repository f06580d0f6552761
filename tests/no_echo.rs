//! No wire ever echoes a credential: random credentials in every shape (no scheme, an unknown
//! scheme, extra words, control characters, oversized, plausible but unknown) go to every
//! wire that takes one (gRPC `Check`, `Introspect`, `Sessions`; Envoy ext_authz over gRPC;
//! `/ext_authz`, `/auth/verify`, login, refresh, logout over HTTP), and no response field,
//! header or log line may hold the credential or any 8-character piece of it.

// Test code: a failed set-up step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use cedargate::api::proto;
use common::TestServer;
use envoy_types::ext_authz::v3::pb::CheckRequest as EnvoyCheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{attribute_context, AttributeContext};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::json;

/// Every log line the service writes, JSON, at the most verbose level cedargate logs.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn take(&self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut *self.0.lock().unwrap())).into_owned()
    }
}

/// A value for `Authorization` and the secrets in it that must never come back.
#[derive(Debug, Clone)]
struct Shape {
    value: String,
    secrets: Vec<String>,
}

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._~+/-]{12,40}"
}

fn shapes() -> impl Strategy<Value = Shape> {
    prop_oneof![
        // A token sent without its scheme: the whole value is the secret.
        token().prop_map(|token| Shape { value: token.clone(), secrets: vec![token] }),
        // An unknown scheme, and a first word that looks like a scheme but is a token.
        ("[A-Za-z]{3,10}", token()).prop_filter_map("a known scheme", |(scheme, token)| {
            let known = ["bearer", "apikey"].contains(&scheme.to_ascii_lowercase().as_str());
            (!known).then(|| Shape { value: format!("{scheme} {token}"), secrets: vec![token] })
        }),
        (token(), token()).prop_map(|(first, second)| Shape {
            value: format!("{first} {second}"),
            secrets: vec![first, second],
        }),
        // Extra words after a real scheme.
        (token(), token()).prop_map(|(first, second)| Shape {
            value: format!("Bearer {first} {second}"),
            secrets: vec![first, second],
        }),
        // Control characters inside the token (a tab survives HTTP, the rest only gRPC).
        (token(), prop_oneof![Just('\t'), Just('\u{1}'), Just('\n'), Just('\u{7f}')], token()).prop_map(
            |(first, control, second)| Shape {
                value: format!("Bearer {first}{control}{second}"),
                secrets: vec![first, second],
            }
        ),
        // Well-formed but known to no backend.
        (prop_oneof![Just("Bearer"), Just("ApiKey"), Just("bearer")], token()).prop_map(|(scheme, token)| {
            Shape { value: format!("{scheme} {token}"), secrets: vec![token] }
        }),
        // Oversized.
        token()
            .prop_map(|token| Shape { value: format!("Bearer {}", token.repeat(400)), secrets: vec![token] }),
    ]
}

/// Panics when any 8-character piece of a secret is in `haystack`.
fn assert_no_piece(wire: &str, haystack: &str, secrets: &[String]) {
    for secret in secrets {
        let chars: Vec<char> = secret.chars().collect();
        for piece in chars.windows(8) {
            let piece: String = piece.iter().collect();
            assert!(!haystack.contains(&piece), "{wire} echoed `{piece}` of the credential: {haystack}");
        }
    }
}

fn http_safe(value: &str) -> bool {
    value.bytes().all(|byte| byte == b'\t' || (0x20..0x7f).contains(&byte))
}

/// Sends `shape` over every wire and checks every answer and the log; returns the log.
async fn every_wire(server: &TestServer, shape: &Shape, logs: &Captured) -> String {
    let value = shape.value.as_str();
    let secrets = &shape.secrets;

    let mut authorizer = server.authorizer().await;
    let check = authorizer.check(common::check_request(value, common::route("GET", "/user/profile"))).await;
    assert_no_piece("Check", &format!("{check:?}"), secrets);
    let introspect =
        authorizer.introspect(proto::IntrospectRequest { authorization: value.to_owned() }).await;
    assert_no_piece("Introspect", &format!("{introspect:?}"), secrets);

    let mut envoy = AuthorizationClient::new(server.channel().await);
    let http = attribute_context::HttpRequest {
        method: "GET".into(),
        path: "/user/profile".into(),
        headers: [("authorization".to_owned(), value.to_owned())].into(),
        ..Default::default()
    };
    let request = EnvoyCheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request { http: Some(http), ..Default::default() }),
            ..Default::default()
        }),
    };
    let answer = envoy.check(request).await;
    assert_no_piece("ext_authz", &format!("{answer:?}"), secrets);

    let mut sessions = server.sessions().await;
    let login =
        sessions.login(proto::LoginRequest { username: "alice".into(), password: value.to_owned() }).await;
    assert_no_piece("Sessions/Login", &format!("{login:?}"), secrets);
    let refresh = sessions.refresh(proto::RefreshRequest { refresh_token: value.to_owned() }).await;
    assert_no_piece("Sessions/Refresh", &format!("{refresh:?}"), secrets);
    let logout = sessions.logout(proto::LogoutRequest { token: value.to_owned() }).await;
    assert_no_piece("Sessions/Logout", &format!("{logout:?}"), secrets);

    if http_safe(value) {
        let client = reqwest::Client::new();
        let requests = [
            (
                "/ext_authz",
                client.get(server.http_url("/ext_authz/user/profile")).header("authorization", value),
            ),
            (
                "/auth/verify",
                client
                    .get(server.http_url("/auth/verify"))
                    .header("x-original-method", "GET")
                    .header("x-original-uri", "/user/profile")
                    .header("authorization", value),
            ),
            (
                "/auth/login",
                client
                    .post(server.http_url("/auth/login"))
                    .json(&json!({ "username": "alice", "password": value })),
            ),
            (
                "/auth/refresh",
                client.post(server.http_url("/auth/refresh")).json(&json!({ "refresh_token": value })),
            ),
            ("/auth/logout", client.post(server.http_url("/auth/logout")).header("authorization", value)),
        ];
        for (wire, request) in requests {
            let response = request.send().await.unwrap();
            let headers = format!("{:?}", response.headers());
            let body = response.text().await.unwrap();
            assert_no_piece(wire, &format!("{headers} {body}"), secrets);
        }
    }
    // The decision log and every other line written meanwhile.
    let log = logs.take();
    assert_no_piece("the log", &log, secrets);
    log
}

#[test]
fn no_wire_echoes_a_credential_in_any_shape() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter("cedargate=trace,info")
        .with_writer(move || writer.clone())
        .init();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(TestServer::demo());
    let config = ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = TestRunner::new(config);
    runner
        .run(&shapes(), |shape| {
            runtime.block_on(every_wire(&server, &shape, &logs));
            Ok(())
        })
        .unwrap();
    // The capture sees what the service logs: a decision line with the credential's
    // fingerprint (and only that) for every credential sent.
    let shape = Shape { value: "NoScheme-abcdefgh".into(), secrets: vec!["NoScheme-abcdefgh".into()] };
    let log = runtime.block_on(every_wire(&server, &shape, &logs));
    assert!(log.contains("cedargate::decision") && log.contains("fingerprint"), "nothing captured: {log}");
}
