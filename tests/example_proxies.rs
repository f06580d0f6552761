//! The shipped proxy examples through the real proxies: `examples/nginx/cedargate.conf` in a
//! real nginx and `examples/envoy/envoy.yaml` in a real Envoy, each in front of the recording
//! upstream and asking a real cedargate. These prove the harness in `tests/common/nginx.rs` and
//! `Envoy::start_example` on today's examples.

// Test code: a failed set-up step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use cedargate::config::Config;
use common::envoy::Envoy;
use common::nginx::Nginx;
use common::upstream::{McpServer, Upstream};
use common::TestServer;

fn client() -> reqwest::Client {
    // Never through a proxy from the environment: everything is on loopback.
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[tokio::test]
async fn nginx_example_passes_a_public_route_without_identity() {
    let server = TestServer::demo().await;
    let upstream = Upstream::start().await;
    let nginx = Nginx::start_example(server.http, upstream.addr).await;

    // A client-sent identity header never gets through: the example always sets it, empty here.
    let response =
        client().get(nginx.url("/public/info")).header("x-auth-subject", "root").send().await.unwrap();
    assert_eq!(response.status(), 200, "error.log: {}", nginx.error_log());
    assert_eq!(upstream.count(), 1);
    let seen = upstream.last();
    assert_eq!((seen.method.as_str(), seen.path.as_str()), ("GET", "/public/info"));
    assert_eq!(seen.header("x-auth-subject"), None, "{:?}", seen.headers);
    // At `warn` a clean run says nothing: the generated nginx.conf and the example are quiet.
    assert_eq!(nginx.error_log(), "", "nginx warned");
}

#[tokio::test]
async fn nginx_example_challenges_an_anonymous_caller_and_passes_a_signed_in_one() {
    let server = TestServer::demo().await;
    let upstream = Upstream::start().await;
    let nginx = Nginx::start_example(server.http, upstream.addr).await;

    let anonymous = client().get(nginx.url("/user/profile")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401, "error.log: {}", nginx.error_log());
    let challenge = anonymous.headers().get("www-authenticate");
    assert!(challenge.is_some(), "no challenge: {:?}", anonymous.headers());
    assert_eq!(upstream.count(), 0, "a denied request reached the upstream");

    let signed_in = client()
        .get(nginx.url("/user/profile"))
        .header("authorization", "Bearer user-token-123")
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 200, "error.log: {}", nginx.error_log());
    assert_eq!(upstream.count(), 1);
    let seen = upstream.last();
    assert_eq!(seen.path, "/user/profile");
    assert_eq!(seen.header("x-auth-subject"), Some("demo-user"), "{:?}", seen.headers);
    assert_eq!(seen.header("authorization"), None, "the token reached the upstream");
}

#[tokio::test]
async fn envoy_example_passes_a_public_route_and_challenges_an_anonymous_caller() {
    let config_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/envoy/cedargate.yaml");
    let server = TestServer::start(Config::load(&config_path).unwrap()).await;
    let app = Upstream::start().await;
    let mcp = Upstream::start().await;
    let envoy = Envoy::start_example(server.grpc, server.http, app.addr, mcp.addr).await;

    let public = client().get(envoy.url("/public/info")).send().await.unwrap();
    assert_eq!(public.status(), 200, "stderr: {}", envoy.stderr());
    assert_eq!(app.count(), 1);
    assert_eq!(app.last().path, "/public/info");

    let anonymous = client().get(envoy.url("/user/profile")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers().contains_key("www-authenticate"), "{:?}", anonymous.headers());
    assert_eq!((app.count(), mcp.count()), (1, 0), "a denied request reached an upstream");
}

#[tokio::test]
async fn envoy_example_trims_an_mcp_list_to_what_the_caller_may_call() {
    let config_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/envoy/cedargate.yaml");
    let server = TestServer::start(Config::load(&config_path).unwrap()).await;
    let app = Upstream::start().await;
    let mcp = McpServer::start_lists(&[]);
    let envoy = Envoy::start_example(server.grpc, server.http, app.addr, mcp.addr).await;
    let list = |token: &'static str| {
        client()
            .post(envoy.url("/mcp"))
            .header("authorization", token)
            .header("accept", "application/json, text/event-stream")
            .json(&serde_json::json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list" }))
            .send()
    };
    let names = |answer: serde_json::Value| -> Vec<String> {
        let tools =
            answer["result"]["tools"].as_array().unwrap_or_else(|| panic!("no tools: {answer}")).clone();
        tools.iter().map(|tool| tool["name"].as_str().unwrap().to_owned()).collect()
    };
    let user = list("Bearer user-token-123").await.unwrap();
    assert_eq!(user.status(), 200, "stderr: {}", envoy.stderr());
    let user = names(user.json().await.unwrap());
    assert_eq!(user, ["echo", "whoami", "read_file", "GET_/user/profile", "GET_/public/info"]);
    let admin = names(list("Bearer admin-token-456").await.unwrap().json().await.unwrap());
    assert_eq!(admin.len(), 7, "{admin:?}");
}
