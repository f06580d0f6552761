//! cedargate behind a real Envoy: ext_authz over gRPC and over HTTP in front of a recording
//! upstream and a real MCP server (the official SDK). Every seed curl scenario, MCP calls per
//! tool and argument, identity headers and spoofing, credential stripping, RFC 9728 metadata,
//! and failing closed when cedargate is gone.

// Test code: a failed set-up step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cedargate::config::Config;
use common::envoy::{Auth, Envoy, EnvoyConfig};
use common::upstream::{McpServer, Upstream};
use common::TestServer;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Grpc,
    /// gRPC over a Unix domain socket (Envoy's `pipe` address).
    GrpcPipe,
    Http,
}

/// cedargate (the demo plus `extra` config) and an Envoy in `mode` in front of `upstream`.
async fn stack(mode: Mode, extra: &str, upstream: &Upstream, mcp: Option<&McpServer>) -> (TestServer, Envoy) {
    let text = format!("{}\n{extra}", cedargate::config::DEMO_YAML);
    let config = Config::parse("envoy-test.yaml", &text).unwrap();
    let socket = std::env::temp_dir().join(format!(
        "cedargate-envoy-{}-{}.sock",
        std::process::id(),
        upstream.addr.port()
    ));
    let _ = std::fs::remove_file(&socket);
    let server = match mode {
        Mode::GrpcPipe => TestServer::start_with_unix(config, &socket).await,
        Mode::Grpc | Mode::Http => TestServer::start(config).await,
    };
    let auth = match mode {
        Mode::Grpc => Auth::ExtAuthzGrpc { addr: server.grpc, with_body: true },
        Mode::GrpcPipe => Auth::ExtAuthzGrpcPipe { path: socket, with_body: true },
        Mode::Http => {
            Auth::ExtAuthzHttp { addr: server.http, path_prefix: "/ext_authz".into(), with_body: true }
        }
    };
    let mut config = EnvoyConfig::new(upstream.addr).with_auth(auth).with_metadata(server.http);
    if let Some(mcp) = mcp {
        config = config.with_mcp(mcp.addr);
    }
    let envoy = Envoy::start(&config).await;
    (server, envoy)
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|error| panic!("{error}: {}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

async fn send(
    envoy: &Envoy,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Answer {
    let mut request = reqwest::Client::new().request(method.parse().unwrap(), envoy.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.header("content-type", "application/json").body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await.unwrap();
    Answer { status, headers, body }
}

const USER: (&str, &str) = ("authorization", "Bearer user-token-123");
const ADMIN: (&str, &str) = ("authorization", "Bearer admin-token-456");
const SERVICE: (&str, &str) = ("authorization", "ApiKey api-key-789");
const INVALID: (&str, &str) = ("authorization", "Bearer invalid-token");

/// The seed's curl examples, unchanged, through Envoy: (label, method, path, headers, body,
/// status, the upstream's `x-auth-subject` on an allow, the deny reason).
async fn seed_scenarios(mode: Mode) {
    let upstream = Upstream::start().await;
    let (_server, envoy) = stack(mode, "", &upstream, None).await;
    let invoke = |tool: &str| Some(json!({ "toolName": tool, "args": {} }));

    // Login through Envoy (cedargate's own HTTP port, not guarded), as the seed does.
    let login = send(
        &envoy,
        "POST",
        "/auth/login",
        &[],
        Some(&json!({"username": "alice", "password": "password123"})),
    )
    .await;
    assert_eq!(login.status, 200, "{}", login.body);
    let session = format!("Bearer {}", login.json()["token"].as_str().unwrap());
    let session = ("authorization", session.as_str());

    type Scenario<'a> =
        (&'a str, &'a str, &'a str, Vec<(&'a str, &'a str)>, Option<Value>, u16, Option<&'a str>);
    let scenarios: Vec<Scenario<'_>> = vec![
        ("bearer", "GET", "/user/profile", vec![USER], None, 200, Some("demo-user")),
        ("api key", "GET", "/service/metrics", vec![SERVICE], None, 200, Some("metrics-service")),
        ("session", "GET", "/user/profile", vec![session], None, 200, Some("alice")),
        ("no token", "GET", "/user/profile", vec![], None, 401, None),
        ("public", "GET", "/public/info", vec![], None, 200, None),
        ("user on admin", "GET", "/admin/users", vec![USER], None, 403, None),
        ("mcp user", "POST", "/mcp/invoke", vec![USER], invoke("GET_/user/profile"), 200, Some("demo-user")),
        (
            "mcp admin",
            "POST",
            "/mcp/invoke",
            vec![ADMIN],
            invoke("GET_/admin/users"),
            200,
            Some("demo-admin"),
        ),
        ("mcp public", "POST", "/mcp/invoke", vec![], invoke("GET_/public/info"), 200, None),
        ("mcp no token", "POST", "/mcp/invoke", vec![], invoke("GET_/user/profile"), 401, None),
        (
            "mcp user data",
            "POST",
            "/mcp/invoke",
            vec![USER],
            invoke("GET_/user/data"),
            200,
            Some("demo-user"),
        ),
        ("mcp invalid", "POST", "/mcp/invoke", vec![INVALID], invoke("GET_/user/data"), 401, None),
        ("mcp forbidden", "POST", "/mcp/invoke", vec![USER], invoke("GET_/admin/users"), 403, None),
    ];
    for (label, method, path, headers, body, status, subject) in scenarios {
        let before = upstream.count();
        let answer = send(&envoy, method, path, &headers, body.as_ref()).await;
        assert_eq!(answer.status, status, "{mode:?} {label}: {}", answer.body);
        if status == 200 {
            assert_eq!(upstream.count(), before + 1, "{mode:?} {label}");
            let seen = upstream.last();
            assert_eq!(seen.path, path, "{mode:?} {label}");
            assert_eq!(seen.header("x-auth-subject"), subject, "{mode:?} {label}");
            // The seed passes the token through; this config does not strip it.
            assert_eq!(seen.header("authorization"), headers.first().map(|(_, value)| *value), "{label}");
            continue;
        }
        assert_eq!(upstream.count(), before, "{mode:?} {label}: a denial must not reach the upstream");
        let body = answer.json();
        assert!(!body["decisionId"].as_str().unwrap_or_default().is_empty(), "{label}: {body}");
        match status {
            401 => {
                let challenge = answer.header("www-authenticate").unwrap();
                assert!(challenge.starts_with("Bearer realm=\"cedargate\""), "{label}: {challenge}");
                let sent_token = !headers.is_empty();
                assert_eq!(challenge.contains("error=\"invalid_token\""), sent_token, "{label}: {challenge}");
                assert_eq!(body["error"], if sent_token { "invalid_token" } else { "unauthorized" });
            }
            _ => {
                assert_eq!(body["error"], "forbidden", "{label}");
                assert_eq!(body["reason"], "Requires admin role", "{label}");
            }
        }
    }
}

#[tokio::test]
async fn the_seed_scenarios_pass_through_envoy_grpc_ext_authz() {
    seed_scenarios(Mode::Grpc).await;
}

#[tokio::test]
async fn the_seed_scenarios_pass_through_envoy_grpc_ext_authz_over_a_unix_socket() {
    seed_scenarios(Mode::GrpcPipe).await;
}

#[tokio::test]
async fn the_seed_scenarios_pass_through_envoy_http_ext_authz() {
    seed_scenarios(Mode::Http).await;
}

/// Client-sent identity headers never reach the upstream: the ones cedargate sets are
/// overwritten, the rest removed, also for anonymous callers.
async fn spoofed_identity_headers(mode: Mode) {
    let upstream = Upstream::start().await;
    let (_server, envoy) = stack(mode, "", &upstream, None).await;
    let spoofed = [
        ("x-auth-subject", "root"),
        ("x-auth-roles", "admin"),
        ("x-auth-tenant", "other"),
        ("x-auth-scopes", "all"),
    ];

    let answer = send(&envoy, "GET", "/user/profile", &[&spoofed[..], &[USER]].concat(), None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let seen = upstream.last();
    assert_eq!(seen.header("x-auth-subject"), Some("demo-user"));
    assert_eq!(seen.header("x-auth-roles"), Some("user"));
    assert_eq!(seen.header("x-auth-tenant"), None, "{:?}", seen.headers);
    assert_eq!(seen.header("x-auth-scopes"), None, "{:?}", seen.headers);
    if mode == Mode::Grpc {
        // AuthInfo went into the dynamic metadata for Envoy's other filters.
        assert_eq!(answer.header("x-ext-authz-subject"), Some("demo-user"));
    }

    let answer = send(&envoy, "GET", "/public/info", &spoofed, None).await;
    assert_eq!(answer.status, 200);
    let seen = upstream.last();
    for (name, _) in spoofed {
        assert_eq!(seen.header(name), None, "{mode:?}: {name} reached the upstream: {:?}", seen.headers);
    }
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_upstream_grpc() {
    spoofed_identity_headers(Mode::Grpc).await;
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_upstream_http() {
    spoofed_identity_headers(Mode::Http).await;
}

const MCP_CONFIG: &str = "\
gateway:
  strip_authorization: true
  api_key: { header: x-api-key }
protected_resource:
  resource: https://mcp.example.test/mcp
  authorization_servers: [https://auth.example.test]
  scopes_supported: [files:read]
  resource_name: Test MCP server
";

/// A JSON-RPC message over Streamable HTTP, as an MCP client sends it.
async fn mcp(envoy: &Envoy, headers: &[(&str, &str)], id: u64, method: &str, params: Value) -> Answer {
    let body = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
    let headers = [
        headers,
        &[("accept", "application/json, text/event-stream"), ("mcp-protocol-version", "2025-06-18")],
    ]
    .concat();
    send(envoy, "POST", "/mcp", &headers, Some(&body)).await
}

fn tool_text(answer: &Answer) -> String {
    let body = answer.json();
    body["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no tool result: {body}"))
        .to_owned()
}

#[tokio::test]
async fn mcp_tool_calls_are_authorized_per_tool_and_argument_through_envoy() {
    let upstream = Upstream::start().await;
    let server_mcp = McpServer::start();
    let (_server, envoy) = stack(Mode::Grpc, MCP_CONFIG, &upstream, Some(&server_mcp)).await;
    let call = |name: &str, arguments: Value| json!({ "name": name, "arguments": arguments });

    let initialize = json!({
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": { "name": "cedargate-test", "version": "1" },
    });
    let answer = mcp(&envoy, &[USER], 1, "initialize", initialize.clone()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["result"]["serverInfo"]["name"], "cedargate-test-mcp");

    // Allowed calls reach the real MCP server and come back with its result.
    let answer = mcp(&envoy, &[USER], 2, "tools/call", call("echo", json!({ "text": "hello" }))).await;
    assert_eq!((answer.status, tool_text(&answer)), (200, "hello".to_owned()), "{}", answer.body);
    let answer = mcp(&envoy, &[USER], 3, "tools/call", call("read_file", json!({ "path": "/docs/a" }))).await;
    assert_eq!(tool_text(&answer), "read /docs/a");
    let answer =
        mcp(&envoy, &[ADMIN], 4, "tools/call", call("read_file", json!({ "path": "/secret/k" }))).await;
    assert_eq!(tool_text(&answer), "read /secret/k");

    // Denied per tool and per argument, with a JSON-RPC error that keeps the request id.
    for (id, tool, arguments, reason) in [
        // The demo's argument rule is an allow-list: these match no permit.
        (5, "read_file", json!({ "path": "/secret/k" }), "no policy permits this request"),
        (6, "read_file", json!({ "path": "/docs/../secret/k" }), "no policy permits this request"),
        (7, "delete_file", json!({ "path": "/docs/a" }), "no policy permits this request"),
    ] {
        let answer = mcp(&envoy, &[USER], id, "tools/call", call(tool, arguments)).await;
        assert_eq!(answer.status, 403, "{tool}: {}", answer.body);
        let body = answer.json();
        assert_eq!(body["id"], id);
        assert_eq!(body["error"]["code"], -32001);
        assert_eq!(body["error"]["data"]["error"], "forbidden");
        let message = body["error"]["message"].as_str().unwrap();
        assert_eq!(message, reason, "{tool}");
    }

    // No token: 401 with the RFC 9728 metadata URL, which Envoy serves from cedargate.
    let answer = mcp(&envoy, &[], 8, "initialize", initialize).await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert_eq!(
        answer.header("www-authenticate"),
        Some(
            "Bearer realm=\"cedargate\", \
             resource_metadata=\"https://mcp.example.test/.well-known/oauth-protected-resource/mcp\""
        )
    );
    for path in ["/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"] {
        let metadata = send(&envoy, "GET", path, &[], None).await;
        assert_eq!(metadata.status, 200, "{path}: {}", metadata.body);
        let metadata = metadata.json();
        assert_eq!(metadata["resource"], "https://mcp.example.test/mcp");
        assert_eq!(metadata["authorization_servers"], json!(["https://auth.example.test"]));
        assert_eq!(metadata["scopes_supported"], json!(["files:read"]));
        assert_eq!(metadata["bearer_methods_supported"], json!(["header"]));
        assert_eq!(metadata["resource_name"], "Test MCP server");
    }
    assert_eq!(
        send(&envoy, "GET", "/.well-known/oauth-protected-resource/other", &[], None).await.status,
        404
    );

    // Malformed, truncated and disagreeing requests are a JSON-RPC 400, never a pass.
    let truncated = send(&envoy, "POST", "/mcp", &[USER, ("content-type", "application/json")], None).await;
    assert_eq!(truncated.status, 400, "{}", truncated.body);
    let mut request = reqwest::Client::new().post(envoy.url("/mcp")).header(USER.0, USER.1);
    request = request.header("content-type", "application/json").body("{\"jsonrpc\":\"2.0\",\"id\":9,\"meth");
    let answer = request.send().await.unwrap();
    assert_eq!(answer.status(), 400);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["code"], -32700);
    let mismatch =
        mcp(&envoy, &[USER, ("mcp-name", "delete_file")], 10, "tools/call", call("echo", json!({}))).await;
    assert_eq!(mismatch.status, 400, "{}", mismatch.body);
    assert_eq!(mismatch.json()["id"], 10);
}

#[tokio::test]
async fn the_mcp_server_gets_identity_headers_but_never_the_token() {
    let upstream = Upstream::start().await;
    let server_mcp = McpServer::start();
    let (_server, envoy) = stack(Mode::Grpc, MCP_CONFIG, &upstream, Some(&server_mcp)).await;
    let spoofed = [USER, ("x-auth-subject", "root"), ("x-auth-tenant", "other")];
    let answer = mcp(&envoy, &spoofed, 1, "tools/call", json!({ "name": "whoami", "arguments": {} })).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let seen: Value = serde_json::from_str(&tool_text(&answer)).unwrap();
    assert_eq!(seen["headers"]["x-auth-subject"], "demo-user", "{seen}");
    assert_eq!(seen["headers"]["x-auth-roles"], "user", "{seen}");
    assert!(seen["headers"].get("x-auth-tenant").is_none(), "{seen}");
    assert_eq!(seen["authorization_present"], false, "the token was passed through: {seen}");

    // The same for the plain upstream, with the API key from its header.
    let answer = send(&envoy, "GET", "/service/metrics", &[("x-api-key", "api-key-789")], None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let seen = upstream.last();
    assert_eq!(seen.header("x-auth-subject"), Some("metrics-service"));
    assert_eq!(seen.header("x-api-key"), None, "{:?}", seen.headers);
    let answer = send(&envoy, "GET", "/user/profile", &[USER], None).await;
    assert_eq!(answer.status, 200);
    assert_eq!(upstream.last().header("authorization"), None);
    // Two credentials at once are ambiguous: 400.
    let answer = send(&envoy, "GET", "/user/profile", &[USER, ("x-api-key", "api-key-789")], None).await;
    assert_eq!(answer.status, 400, "{}", answer.body);
}

/// With cedargate gone, Envoy answers without the upstream ever seeing the request.
async fn fails_closed(mode: Mode) {
    let upstream = Upstream::start().await;
    let (server, envoy) = stack(mode, "", &upstream, None).await;
    assert_eq!(send(&envoy, "GET", "/user/profile", &[USER], None).await.status, 200);
    let before = upstream.count();
    server.stop().await.unwrap();
    for path in ["/user/profile", "/public/info"] {
        let answer = send(&envoy, "GET", path, &[USER], None).await;
        assert!(answer.status == 403 || answer.status >= 500, "{mode:?} {path}: {}", answer.status);
    }
    assert_eq!(upstream.count(), before, "{mode:?}: a request passed while cedargate was down");
}

#[tokio::test]
async fn envoy_fails_closed_when_cedargate_is_down_grpc() {
    fails_closed(Mode::Grpc).await;
}

#[tokio::test]
async fn envoy_fails_closed_when_cedargate_is_down_http() {
    fails_closed(Mode::Http).await;
}
