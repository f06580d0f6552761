//! The proxy harness on its own, without cedargate: a real Envoy in front of the recording
//! upstream and the real MCP server, as a plain proxy, with Envoy's own jwt_authn + rbac, and with
//! ext_authz (HTTP mode against a stand-in check server, gRPC mode against nothing).

// Test code: a failed set-up step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode};
use common::envoy::{Auth, Envoy, EnvoyConfig, METADATA_PREFIX};
use common::upstream::{McpServer, Upstream};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

async fn start(config: &EnvoyConfig) -> Envoy {
    let started = Instant::now();
    let envoy = Envoy::start(config).await;
    eprintln!("envoy ready in {:?}", started.elapsed());
    // At `-l warn` a clean start says nothing: no deprecated fields, no missing limits.
    assert_eq!(envoy.stderr(), "", "envoy warned at start-up");
    envoy
}

#[tokio::test]
async fn plain_proxy_forwards_path_query_and_headers() {
    let upstream = Upstream::start().await;
    let envoy = start(&EnvoyConfig::new(upstream.addr)).await;

    let response = reqwest::Client::new()
        .get(envoy.url("/user/profile?x=1"))
        .header("x-test", "hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo: Value = response.json().await.unwrap();
    assert_eq!((echo["method"].as_str(), echo["path"].as_str()), (Some("GET"), Some("/user/profile?x=1")));

    assert_eq!(upstream.count(), 1);
    let seen = upstream.last();
    assert_eq!((seen.method.as_str(), seen.path.as_str()), ("GET", "/user/profile?x=1"));
    assert_eq!(seen.header("x-test"), Some("hello"));
    // An edge proxy appends the peer to x-forwarded-for; for a loopback peer Envoy appends the
    // host's own address instead, so only its presence is portable.
    assert!(seen.header("x-forwarded-for").is_some_and(|xff| !xff.is_empty()), "{:?}", seen.headers);
    assert!(seen.header("x-request-id").is_some(), "Envoy stamps a request id: {:?}", seen.headers);
}

/// A JSON-RPC request over Streamable HTTP as an MCP client sends it; the JSON answer.
async fn mcp_call(client: &reqwest::Client, url: &str, id: u64, method: &str, params: Value) -> Value {
    let response = client
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2025-06-18")
        .header("authorization", "Bearer opaque-test-token")
        .json(&json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    response.json().await.unwrap()
}

#[tokio::test]
async fn mcp_server_answers_through_envoy_and_only_exact_mcp_goes_there() {
    let upstream = Upstream::start().await;
    let mcp = McpServer::start();
    let envoy = start(&EnvoyConfig::new(upstream.addr).with_mcp(mcp.addr)).await;
    let client = reqwest::Client::new();
    let url = envoy.url("/mcp");

    let init = mcp_call(
        &client,
        &url,
        1,
        "initialize",
        json!({
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": { "name": "smoke", "version": "1" },
        }),
    )
    .await;
    assert_eq!(init["result"]["serverInfo"]["name"], "cedargate-test-mcp", "{init}");

    let echo = mcp_call(
        &client,
        &url,
        2,
        "tools/call",
        json!({ "name": "echo", "arguments": { "text": "hi there" } }),
    )
    .await;
    assert_eq!(echo["result"]["content"][0]["text"], "hi there", "{echo}");

    let whoami = mcp_call(&client, &url, 3, "tools/call", json!({ "name": "whoami", "arguments": {} })).await;
    let seen: Value = serde_json::from_str(whoami["result"]["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(seen, json!({ "headers": {}, "authorization_present": true }));

    let readme = mcp_call(&client, &url, 4, "resources/read", json!({ "uri": "file:///readme" })).await;
    assert_eq!(readme["result"]["contents"][0]["uri"], "file:///readme", "{readme}");
    assert_eq!(upstream.count(), 0, "every /mcp call went to the MCP server");

    // The seed's invoke endpoint lives on the plain upstream.
    let invoke = client.post(envoy.url("/mcp/invoke")).json(&json!({})).send().await.unwrap();
    assert_eq!(invoke.status(), 200);
    assert_eq!(upstream.last().path, "/mcp/invoke");
}

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "https://api.test";

fn ec_key(pem: &[u8]) -> EncodingKey {
    EncodingKey::from_ec_pem(pem).unwrap()
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(include_bytes!("fixtures/keys/rsa.pem")).unwrap()
}

fn token(key: &EncodingKey, algorithm: Algorithm, kid: &str, roles: &[&str]) -> String {
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.into());
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims = json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": "carol", "roles": roles, "exp": now + 600 });
    encode(&header, &claims, key).unwrap()
}

/// The inline JWKS: the fixture EC key as `es`, the fixture RSA key as `rs`.
fn jwks() -> String {
    let mut es =
        Jwk::from_encoding_key(&ec_key(include_bytes!("fixtures/keys/ec256.pem")), Algorithm::ES256).unwrap();
    es.common.key_id = Some("es".into());
    let mut rs = Jwk::from_encoding_key(&rsa_key(), Algorithm::RS256).unwrap();
    rs.common.key_id = Some("rs".into());
    serde_json::to_string(&JwkSet { keys: vec![es, rs] }).unwrap()
}

async fn get(url: &str, bearer: Option<&str>) -> (StatusCode, HeaderMap) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    (response.status(), response.headers().clone())
}

#[tokio::test]
async fn jwt_authn_and_rbac_enforce_the_role_rule() {
    let upstream = Upstream::start().await;
    let config = EnvoyConfig::new(upstream.addr).with_auth(Auth::JwtRbac {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks: jwks(),
        role: "user".into(),
        path_prefix: "/user/".into(),
    });
    let envoy = start(&config).await;
    let url = envoy.url("/user/profile");
    let es = ec_key(include_bytes!("fixtures/keys/ec256.pem"));

    let (status, headers) = get(&url, None).await;
    assert_eq!(status, 401);
    assert!(headers.contains_key("www-authenticate"), "{headers:?}");

    let user = token(&es, Algorithm::ES256, "es", &["user"]);
    assert_eq!(get(&url, Some(&user)).await.0, 200);
    assert_eq!(
        upstream.last().header("authorization"),
        Some(format!("Bearer {user}").as_str()),
        "forward: true"
    );
    let rsa_user = token(&rsa_key(), Algorithm::RS256, "rs", &["user"]);
    assert_eq!(get(&url, Some(&rsa_user)).await.0, 200);

    let other = token(&es, Algorithm::ES256, "es", &["other"]);
    assert_eq!(get(&url, Some(&other)).await.0, 403);
    assert_eq!(
        get(&envoy.url("/public/page"), Some(&other)).await.0,
        200,
        "the role rule covers /user/ only"
    );

    let forged =
        token(&ec_key(include_bytes!("fixtures/keys/ec256-b.pem")), Algorithm::ES256, "es", &["user"]);
    assert_eq!(get(&url, Some(&forged)).await.0, 401);
    assert_eq!(upstream.count(), 3);
}

#[tokio::test]
async fn grpc_ext_authz_fails_closed_but_metadata_stays_public() {
    let upstream = Upstream::start().await;
    let metadata = Upstream::start().await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let config = EnvoyConfig::new(upstream.addr)
        .with_auth(Auth::ExtAuthzGrpc { addr: closed, with_body: true })
        .with_metadata(metadata.addr)
        .with_context_extensions("/admin/", &[("resource", "admin")]);
    let envoy = start(&config).await;

    for path in ["/user/profile", "/admin/users"] {
        let (status, _) = get(&envoy.url(path), Some("t")).await;
        assert!(status == 403 || status.is_server_error(), "{path}: {status}");
    }
    assert_eq!(upstream.count(), 0);
    assert_eq!(envoy.stat("http.ingress.ext_authz.error").await, Some(2));

    let (status, _) = get(&envoy.url(&format!("{METADATA_PREFIX}/mcp")), None).await;
    assert_eq!(status, 200);
    assert_eq!(metadata.last().path, format!("{METADATA_PREFIX}/mcp"));
}

/// A stand-in HTTP check service: `Bearer good` passes with `x-auth-subject: carol` and asks Envoy
/// to drop `authorization`; anything else gets 401 with a challenge. Records what it was sent.
async fn http_check_server() -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<(String, HeaderMap)>>>) {
    use axum::extract::Request;
    use axum::response::IntoResponse;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = std::sync::Arc::clone(&seen);
    let app = axum::Router::new().fallback(move |request: Request| {
        let record = std::sync::Arc::clone(&record);
        async move {
            let headers = request.headers().clone();
            record.lock().unwrap().push((request.uri().to_string(), headers.clone()));
            if headers.get("authorization").is_some_and(|v| v == "Bearer good") {
                (
                    StatusCode::OK,
                    [
                        ("x-auth-subject", "carol"),
                        ("x-envoy-auth-headers-to-remove", "authorization"),
                        ("x-not-allowed", "dropped"),
                    ],
                )
                    .into_response()
            } else {
                (StatusCode::UNAUTHORIZED, [("www-authenticate", "Bearer realm=\"test\"")], "no")
                    .into_response()
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

#[tokio::test]
async fn http_ext_authz_forwards_allowed_headers_and_applies_the_answer() {
    let upstream = Upstream::start().await;
    let (check, seen) = http_check_server().await;
    let config = EnvoyConfig::new(upstream.addr).with_auth(Auth::ExtAuthzHttp {
        addr: check,
        path_prefix: "/check".into(),
        with_body: false,
    });
    let envoy = start(&config).await;
    let client = reqwest::Client::new();

    let denied = client
        .get(envoy.url("/user/profile?q=1"))
        .header("authorization", "Bearer bad")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
    assert_eq!(denied.headers()["www-authenticate"], "Bearer realm=\"test\"");
    assert_eq!(upstream.count(), 0);

    let allowed = client
        .get(envoy.url("/user/profile"))
        .header("authorization", "Bearer good")
        .header("x-api-key", "k")
        .header("x-auth-subject", "spoofed")
        .header("x-other", "not sent to the check")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    let forwarded = upstream.last();
    assert_eq!(
        forwarded.header("x-auth-subject"),
        Some("carol"),
        "the check's answer wins: {:?}",
        forwarded.headers
    );
    assert_eq!(forwarded.header("authorization"), None, "x-envoy-auth-headers-to-remove is honoured");
    assert_eq!(forwarded.header("x-not-allowed"), None);
    assert_eq!(forwarded.header("x-other"), Some("not sent to the check"));

    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].0, "/check/user/profile?q=1");
    let (_, sent) = &seen[1];
    assert_eq!(sent["x-api-key"], "k");
    assert!(sent.get("x-other").is_none(), "only allowed headers go to the check: {sent:?}");
}

#[tokio::test]
async fn envoy_stops_with_its_handle() {
    let upstream = Upstream::start().await;
    let envoy = start(&EnvoyConfig::new(upstream.addr).with_concurrency(2)).await;
    let admin = envoy.admin;
    drop(envoy);
    let refused = reqwest::Client::new()
        .get(format!("http://{admin}/ready"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(refused.is_err(), "the admin port is closed after drop");
}
