//! Attacks on the request a proxy forwards, through the real proxies running the shipped
//! example configs (`examples/nginx/cedargate.conf` with `examples/nginx/cedargate.yaml`, and
//! `examples/envoy/envoy.yaml` with `examples/envoy/cedargate.yaml`), in front of recording
//! upstreams that report exactly what reached them. Each test is one class of door: cedargate
//! deciding one request while the upstream gets another.

// Test code: a failed set-up step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use cedargate::config::Config;
use common::envoy::{Auth, Envoy, EnvoyConfig};
use common::nginx::Nginx;
use common::upstream::{Recorded, Upstream};
use common::TestServer;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const USER: (&str, &str) = ("authorization", "Bearer user-token-123");
const API_KEY: &str = "api-key-789";

fn example_config(path: &str, edit: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap();
    edit(&mut config);
    config
}

/// cedargate with `examples/nginx/cedargate.yaml` (edited), behind the shipped nginx snippet.
struct NginxStack {
    _server: TestServer,
    upstream: Upstream,
    nginx: Nginx,
}

async fn nginx_stack(edit: impl FnOnce(&mut Config)) -> NginxStack {
    let server = TestServer::start(example_config("examples/nginx/cedargate.yaml", edit)).await;
    let upstream = Upstream::start().await;
    let nginx = Nginx::start_example(server.http, upstream.addr).await;
    NginxStack { _server: server, upstream, nginx }
}

/// cedargate with `examples/envoy/cedargate.yaml` (edited), behind the shipped Envoy config,
/// with recording upstreams as its API (`app`) and its MCP server (`mcp`).
struct EnvoyStack {
    _server: TestServer,
    app: Upstream,
    mcp: Upstream,
    envoy: Envoy,
}

impl EnvoyStack {
    fn reached(&self) -> usize {
        self.app.count() + self.mcp.count()
    }
}

async fn envoy_stack(edit: impl FnOnce(&mut Config)) -> EnvoyStack {
    let server = TestServer::start(example_config("examples/envoy/cedargate.yaml", edit)).await;
    let (app, mcp) = (Upstream::start().await, Upstream::start().await);
    let envoy = Envoy::start_example(server.grpc, server.http, app.addr, mcp.addr).await;
    EnvoyStack { _server: server, app, mcp, envoy }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A client whose connections come from `local` (another loopback address), as another
/// machine's would.
fn client_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder().no_proxy().local_address(local.parse::<IpAddr>().unwrap()).build().unwrap()
}

async fn send(
    url: String,
    method: reqwest::Method,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> reqwest::Response {
    let mut request = client().request(method, url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.header("content-type", "application/json").body(body);
    }
    request.send().await.unwrap()
}

async fn get(url: String, headers: &[(&str, &str)]) -> u16 {
    send(url, reqwest::Method::GET, headers, None).await.status().as_u16()
}

/// Sends `METHOD target` with the request target exactly as written: HTTP clients (reqwest's
/// URL parser among them) resolve `..`, `%2e` and the like before sending. Returns the status.
async fn raw(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> u16 {
    let mut request = format!("{method} {target} HTTP/1.1\r\nhost: api.example\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("content-length: 0\r\n\r\n");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("the proxy answered within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    text.split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("no status: {text}"))
}

fn rpc(method: &str, params: Value) -> String {
    json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params }).to_string()
}

/// Panics when `secret` appears anywhere in what the upstream received.
fn assert_never_received(seen: &Recorded, secret: &str) {
    assert!(!seen.path.contains(secret), "the credential reached the upstream in the path: {}", seen.path);
    for (name, value) in &seen.headers {
        assert!(!value.contains(secret), "the credential reached the upstream in `{name}: {value}`");
    }
    assert!(
        !String::from_utf8_lossy(&seen.body).contains(secret),
        "the credential reached the upstream's body"
    );
}

#[tokio::test]
async fn forward_auth_behind_nginx_cannot_be_pointed_at_another_path() {
    let stack = nginx_stack(|_| {}).await;
    for spoof in [
        [("x-forwarded-uri", "/public/info"), ("x-forwarded-method", "GET")],
        [("x-original-uri", "/public/info"), ("x-original-method", "GET")],
    ] {
        let status = get(stack.nginx.url("/admin/users"), &spoof).await;
        assert_eq!(status, 401, "{spoof:?}: {}", stack.nginx.error_log());
    }
    assert_eq!(stack.upstream.count(), 0, "an anonymous caller reached /admin/users");
}

#[tokio::test]
async fn behind_envoy_the_mcp_endpoint_is_decided_only_where_envoy_routes_it() {
    let stack = envoy_stack(|_| {}).await;
    let public_tool = rpc("tools/call", json!({ "name": "GET_/public/info", "arguments": {} }));
    // `/mcp/` goes to the API upstream, so it may not be decided as the MCP endpoint.
    let slash = send(stack.envoy.url("/mcp/"), reqwest::Method::POST, &[], Some(public_tool.clone())).await;
    assert_eq!(slash.status(), 400);
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let status = send(stack.envoy.url("/mcp/"), method.clone(), &[("x-api-key", API_KEY)], None).await;
        assert_eq!(status.status(), 400, "{method}");
    }
    assert_eq!(stack.reached(), 0, "a request reached an upstream it was not decided for");
    // The exact path is the MCP endpoint, decided by its body.
    let exact = send(stack.envoy.url("/mcp"), reqwest::Method::POST, &[], Some(public_tool)).await;
    assert_eq!(exact.status(), 200);
    assert_eq!((stack.mcp.count(), stack.app.count()), (1, 0));
    assert_eq!(stack.mcp.last().path, "/mcp");
}

#[tokio::test]
async fn paths_an_upstream_reads_differently_are_refused_before_it() {
    let targets = [
        "/user/..;/admin/users",
        "/user/x;jsessionid=1",
        "/user/x%3Bjsessionid=1",
        "/user/%252e%252e/admin/users",
        "/user/%C0%AE%C0%AE/admin/users",
        "/user/%EF%BC%8E%EF%BC%8E/admin/users",
        "/user/profile/",
        "/user//profile",
        "/user/%70rofile",
        // nginx forwards the target byte for byte: what follows `#` must not go undecided.
        "/public/x#/../../admin/users",
    ];
    let nginx = nginx_stack(|_| {}).await;
    let envoy = envoy_stack(|_| {}).await;
    for target in targets {
        let status = raw(nginx.nginx.addr, "GET", target, &[USER]).await;
        assert_ne!(status, 200, "nginx {target}");
        raw(envoy.envoy.addr, "GET", target, &[USER]).await;
    }
    // nginx forwards the path as sent, so cedargate refuses every one of them.
    assert_eq!(nginx.upstream.count(), 0, "{:?}", nginx.upstream.requests());
    // Envoy normalizes some itself (`//`, `%70`) before ext_authz and routing: those are
    // decided and forwarded as the same canonical path. Nothing else gets through.
    let strict = cedargate::route::PathRules::default();
    for seen in envoy.app.requests() {
        assert_eq!(seen.path, "/user/profile", "{seen:?}");
        assert_eq!(cedargate::route::normalize_path(&seen.path, strict).as_deref(), Ok(seen.path.as_str()));
    }
    // The plain path still works through both.
    assert_eq!(raw(nginx.nginx.addr, "GET", "/user/profile", &[USER]).await, 200);
    assert_eq!(raw(envoy.envoy.addr, "GET", "/user/profile", &[USER]).await, 200);
}

#[tokio::test]
async fn identity_headers_in_another_spelling_never_reach_the_upstream() {
    let spoofs = [("x_auth_subject", "demo-admin"), ("x_auth_roles", "admin"), ("x-auth_roles", "admin")];
    let is_identity = |name: &str| name.replace('_', "-").starts_with("x-auth-");
    // The only identity headers upstream are the ones cedargate set for `demo-user`.
    let only_cedargates = |seen: &Recorded| {
        for (name, value) in seen.headers.iter().filter(|(name, _)| is_identity(name)) {
            let set = matches!(
                (name.as_str(), value.as_str()),
                ("x-auth-subject", "demo-user") | ("x-auth-roles", "user")
            );
            assert!(set, "{name}: {value} reached the upstream");
        }
    };

    // The shipped Envoy config refuses such headers outright.
    let envoy = envoy_stack(|_| {}).await;
    assert_eq!(get(envoy.envoy.url("/public/info"), &spoofs).await, 400);
    assert_eq!(envoy.reached(), 0);

    // nginx drops them (underscores_in_headers off).
    let nginx = nginx_stack(|_| {}).await;
    assert_eq!(get(nginx.nginx.url("/user/profile"), &[&spoofs[..], &[USER]].concat()).await, 200);
    only_cedargates(&nginx.upstream.last());

    // An Envoy that lets them through still gets them removed by cedargate, on both wires.
    let server = TestServer::demo().await;
    let upstream = Upstream::start().await;
    for auth in [
        Auth::ExtAuthzGrpc { addr: server.grpc, with_body: false },
        Auth::ExtAuthzHttp { addr: server.http, path_prefix: "/ext_authz".into(), with_body: false },
    ] {
        let envoy = Envoy::start(&EnvoyConfig::new(upstream.addr).with_auth(auth.clone())).await;
        assert_eq!(get(envoy.url("/user/profile"), &[&spoofs[..], &[USER]].concat()).await, 200, "{auth:?}");
        only_cedargates(&upstream.last());
        assert_eq!(get(envoy.url("/public/info"), &spoofs).await, 200, "{auth:?}");
        let seen = upstream.last();
        assert!(!seen.headers.keys().any(|name| is_identity(name)), "{auth:?}: {:?}", seen.headers);
    }
}

#[tokio::test]
async fn a_stripped_credential_never_reaches_the_upstream_in_any_place_it_was_read() {
    let every_source = |config: &mut Config| {
        config.gateway.api_key.cookie = Some("api_key".into());
        config.gateway.api_key.query = Some("api_key".into());
    };
    let cookie = format!("theme=dark; api_key={API_KEY}");
    let header_key = [("x-api-key", API_KEY)];
    let cookie_key = [("cookie", cookie.as_str())];
    let authorization = format!("ApiKey {API_KEY}");
    let authorization_key = [("authorization", authorization.as_str())];

    // Envoy over gRPC removes headers and query parameters.
    let envoy = envoy_stack(every_source).await;
    for headers in [&header_key[..], &cookie_key, &authorization_key] {
        assert_eq!(get(envoy.envoy.url("/service/metrics"), headers).await, 200, "{headers:?}");
        let seen = envoy.app.last();
        assert_never_received(&seen, API_KEY);
        if headers == cookie_key {
            assert_eq!(seen.header("cookie"), Some("theme=dark"), "the other cookies stay");
        }
    }
    assert_eq!(get(envoy.envoy.url(&format!("/service/metrics?x=1&api_key={API_KEY}")), &[]).await, 200);
    assert_never_received(&envoy.app.last(), API_KEY);
    assert_eq!(envoy.app.last().path, "/service/metrics?x=1");
    // A parameter name Envoy would not recognise to remove is refused.
    let before = envoy.app.count();
    assert_eq!(get(envoy.envoy.url(&format!("/service/metrics?api%5Fkey={API_KEY}")), &[]).await, 400);
    assert_eq!(envoy.app.count(), before);

    // Over HTTP (Envoy's HTTP mode, nginx) headers can be changed, the query cannot.
    let server = TestServer::start(example_config("examples/envoy/cedargate.yaml", every_source)).await;
    let upstream = Upstream::start().await;
    let auth = Auth::ExtAuthzHttp { addr: server.http, path_prefix: "/ext_authz".into(), with_body: false };
    let http_envoy = Envoy::start(&EnvoyConfig::new(upstream.addr).with_auth(auth)).await;
    let nginx = nginx_stack(every_source).await;
    for (label, url, recorder) in [
        ("envoy http", http_envoy.url("/service/metrics"), &upstream),
        ("nginx", nginx.nginx.url("/service/metrics"), &nginx.upstream),
    ] {
        for headers in [&header_key[..], &cookie_key, &authorization_key] {
            assert_eq!(get(url.clone(), headers).await, 200, "{label} {headers:?}");
            let seen = recorder.last();
            assert_never_received(&seen, API_KEY);
            if headers == cookie_key {
                assert_eq!(seen.header("cookie"), Some("theme=dark"), "{label}: the other cookies stay");
            }
        }
        let before = recorder.count();
        let status = get(format!("{url}?api_key={API_KEY}"), &[]).await;
        assert!(status == 400 || status == 500, "{label}: {status}");
        assert_eq!(recorder.count(), before, "{label}: a key in the query went upstream");
    }
}

#[tokio::test]
async fn method_and_url_overrides_are_refused_before_the_upstream() {
    let overrides: [(&str, &[(&str, &str)]); 5] = [
        ("/public/info", &[("x-http-method-override", "DELETE")]),
        ("/public/info", &[("x-method-override", "DELETE")]),
        ("/public/info", &[("x-original-url", "/admin/users")]),
        ("/public/info", &[("x-rewrite-url", "/admin/users")]),
        ("/public/info?_method=DELETE", &[]),
    ];
    let nginx = nginx_stack(|_| {}).await;
    let envoy = envoy_stack(|_| {}).await;
    for (path, headers) in overrides {
        assert_eq!(get(nginx.nginx.url(path), headers).await, 500, "nginx {path} {headers:?}");
        assert_eq!(get(envoy.envoy.url(path), headers).await, 400, "envoy {path} {headers:?}");
    }
    assert_eq!(nginx.upstream.count() + envoy.reached(), 0);
    assert_eq!(get(envoy.envoy.url("/public/info"), &[]).await, 200);

    // Envoy's HTTP mode shows cedargate only its `allowed_headers`: the overrides it does not
    // see are removed on the allow all the same.
    let server = TestServer::demo().await;
    let upstream = Upstream::start().await;
    let auth = Auth::ExtAuthzHttp { addr: server.http, path_prefix: "/ext_authz".into(), with_body: false };
    let http_envoy = Envoy::start(&EnvoyConfig::new(upstream.addr).with_auth(auth)).await;
    for (_, headers) in &overrides[..4] {
        assert_eq!(get(http_envoy.url("/public/info"), headers).await, 200, "{headers:?}");
        let seen = upstream.last();
        for (name, _) in headers.iter() {
            assert_eq!(seen.header(name), None, "{name} reached the upstream");
        }
    }
}

#[tokio::test]
async fn one_client_behind_nginx_cannot_lock_out_the_others() {
    let stack = nginx_stack(|_| {}).await;
    let login = |client: reqwest::Client, username: String, password: &'static str| {
        let url = stack.nginx.url("/auth/login");
        async move {
            let body = json!({ "username": username, "password": password });
            client.post(url).json(&body).send().await.unwrap().status().as_u16()
        }
    };
    // 20 failures per address per 15 minutes (examples/nginx/cedargate.yaml), each for another
    // username so that only the address limit can trip.
    let attacker = client_from("127.0.0.2");
    for attempt in 0..20 {
        assert_eq!(login(attacker.clone(), format!("guess{attempt}"), "wrong").await, 401, "{attempt}");
    }
    assert_eq!(
        login(attacker.clone(), "alice".into(), "password123").await,
        429,
        "the attacker is locked out"
    );
    assert_eq!(login(client_from("127.0.0.3"), "alice".into(), "password123").await, 200, "nobody else is");
}

#[tokio::test]
async fn mcp_requests_are_decided_on_their_body_never_on_headers_alone() {
    // nginx forwards no body to auth_request: the headers would decide alone, and the body
    // could call another tool.
    let nginx = nginx_stack(|_| {}).await;
    let delete = rpc("tools/call", json!({ "name": "delete_file", "arguments": { "path": "/docs/a" } }));
    let headers = [USER, ("mcp-method", "tools/call"), ("mcp-name", "echo")];
    let answer = send(nginx.nginx.url("/mcp"), reqwest::Method::POST, &headers, Some(delete)).await;
    assert_eq!(answer.status(), 500);
    assert_eq!(nginx.upstream.count(), 0);

    // Method names are exact, and argument rules are allow-lists.
    let envoy = envoy_stack(|_| {}).await;
    let near_miss = rpc("Tools/Call", json!({ "name": "delete_file", "arguments": {} }));
    let answer = send(envoy.envoy.url("/mcp"), reqwest::Method::POST, &[USER], Some(near_miss)).await;
    assert_eq!(answer.status(), 400);
    for path in ["/SECRET/a", "//secret/a", "/docs/../secret/a"] {
        let read = rpc("tools/call", json!({ "name": "read_file", "arguments": { "path": path } }));
        let answer = send(envoy.envoy.url("/mcp"), reqwest::Method::POST, &[USER], Some(read)).await;
        assert_eq!(answer.status(), 403, "{path}");
    }
    assert_eq!(envoy.reached(), 0);
    let read = rpc("tools/call", json!({ "name": "read_file", "arguments": { "path": "/docs/a" } }));
    let answer = send(envoy.envoy.url("/mcp"), reqwest::Method::POST, &[USER], Some(read)).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(envoy.mcp.count(), 1);
}

#[tokio::test]
async fn envoy_http_mode_decides_the_root_path() {
    let server = TestServer::demo().await;
    let upstream = Upstream::start().await;
    let auth = Auth::ExtAuthzHttp { addr: server.http, path_prefix: "/ext_authz".into(), with_body: false };
    let envoy = Envoy::start(&EnvoyConfig::new(upstream.addr).with_auth(auth)).await;
    let root = send(envoy.url("/"), reqwest::Method::GET, &[], None).await;
    // Decided (no rule permits `/`): a challenge, not the 404 of an endpoint that is missing.
    assert_eq!(root.status(), 401);
    assert_eq!(root.headers()["www-authenticate"], "Bearer realm=\"cedargate\"");
    assert_eq!(upstream.count(), 0);
}
