//! The forward-auth endpoint nginx `auth_request` and Traefik `forwardAuth` call, and Envoy's
//! HTTP ext_authz endpoint, over real HTTP: the original request described by the headers of
//! the configured convention, never by a client's headers of the other one.

// Test code: a failed set-up step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cedargate::config::Config;
use common::TestServer;
use serde_json::Value;

async fn verify(server: &TestServer, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(server.http_url("/auth/verify"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

async fn with_gateway(yaml: &str) -> TestServer {
    let text = format!("{}\n{yaml}", cedargate::config::DEMO_YAML);
    TestServer::start(Config::parse("test.yaml", &text).unwrap()).await
}

#[tokio::test]
async fn traefik_style_headers_describe_the_original_request() {
    let server = with_gateway("gateway:\n  forward_auth: { convention: forwarded }\n").await;
    let allowed = verify(
        &server,
        &[
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/user/profile?tab=1"),
            ("x-forwarded-host", "api.example"),
            ("authorization", "Bearer user-token-123"),
            ("x-auth-subject", "root"),
        ],
    )
    .await;
    assert_eq!(allowed.status(), 200);
    let header = |name: &str| allowed.headers().get(name).map(|value| value.to_str().unwrap().to_owned());
    assert_eq!(header("x-auth-subject").as_deref(), Some("demo-user"));
    assert_eq!(header("x-auth-roles").as_deref(), Some("user"));
    let removed = header("x-envoy-auth-headers-to-remove").unwrap();
    assert!(removed.contains("x-auth-tenant") && !removed.contains("x-auth-subject,"), "{removed}");

    // The method comes from the header, not from the GET Traefik sends.
    let denied = verify(
        &server,
        &[
            ("x-forwarded-method", "DELETE"),
            ("x-forwarded-uri", "/admin/users"),
            ("authorization", "Bearer user-token-123"),
        ],
    )
    .await;
    assert_eq!(denied.status(), 403);
    let body: Value = denied.json().await.unwrap();
    assert_eq!(body["reason"], "Requires admin role");
}

#[tokio::test]
async fn nginx_style_headers_are_the_default_and_challenge() {
    let server = TestServer::demo().await;
    let anonymous =
        verify(&server, &[("x-original-uri", "/user/profile"), ("x-original-method", "GET")]).await;
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer realm=\"cedargate\"");
    let public = verify(&server, &[("x-original-uri", "/public/info"), ("x-original-method", "GET")]).await;
    assert_eq!(public.status(), 200);
    let invoke = reqwest::Client::new()
        .post(server.http_url("/auth/verify"))
        .header("x-original-uri", "/mcp/invoke")
        .header("x-original-method", "POST")
        .header("authorization", "Bearer user-token-123")
        .body(r#"{"toolName": "GET_/admin/users", "args": {}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(invoke.status(), 403, "a body forwarded to the endpoint is read as MCP");
}

#[tokio::test]
async fn headers_of_the_other_convention_that_disagree_are_refused() {
    let server = TestServer::demo().await;
    // The spoof nginx's subrequest used to let through: the client's own X-Forwarded-Uri.
    let spoofed = verify(
        &server,
        &[
            ("x-original-method", "GET"),
            ("x-original-uri", "/admin/users"),
            ("x-forwarded-uri", "/public/info"),
        ],
    )
    .await;
    assert_eq!(spoofed.status(), 400);
    let body: Value = spoofed.json().await.unwrap();
    assert!(body["reason"].as_str().unwrap().contains("x-forwarded-uri"), "{body}");
    for (name, value) in [("x-forwarded-method", "DELETE"), ("x-forwarded-host", "evil.example")] {
        let headers = [
            ("x-original-method", "GET"),
            ("x-original-uri", "/public/info"),
            ("x-original-host", "api.example"),
            (name, value),
        ];
        assert_eq!(verify(&server, &headers).await.status(), 400, "{name}");
    }
    // Headers that agree are no conflict.
    let agreeing = verify(
        &server,
        &[
            ("x-original-method", "GET"),
            ("x-original-uri", "/public/info"),
            ("x-forwarded-uri", "/public/info"),
        ],
    )
    .await;
    assert_eq!(agreeing.status(), 200);
    // The convention's own headers once each: a second X-Original-URI is not a choice to make.
    let twice = reqwest::Client::new()
        .get(server.http_url("/auth/verify"))
        .header("x-original-method", "GET")
        .header("x-original-uri", "/public/info")
        .header("x-original-uri", "/admin/users")
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), 400);
    // And the Traefik convention refuses a disagreeing X-Original-URI the same way.
    let traefik = with_gateway("gateway:\n  forward_auth: { convention: forwarded }\n").await;
    let spoofed = verify(
        &traefik,
        &[
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/admin/users"),
            ("x-original-uri", "/public/info"),
        ],
    )
    .await;
    assert_eq!(spoofed.status(), 400);
}

#[tokio::test]
async fn a_request_without_its_original_method_and_uri_is_refused() {
    let server = TestServer::demo().await;
    // The other convention's headers alone do not describe the request.
    let missing =
        verify(&server, &[("x-forwarded-method", "GET"), ("x-forwarded-uri", "/public/info")]).await;
    assert_eq!(missing.status(), 400);
    let body: Value = missing.json().await.unwrap();
    assert!(body["reason"].as_str().unwrap().contains("x-original-uri"), "{body}");
    // The body every refusal before a decision has.
    assert_eq!(
        (&body["error"], &body["outcome"], &body["httpStatus"]),
        (&"invalid_request".into(), &"OUTCOME_INVALID_REQUEST".into(), &400.into())
    );
    let ambiguous =
        verify(&server, &[("x-original-method", "GET"), ("x-original-uri", "/public/../admin/users")]).await;
    assert_eq!(ambiguous.status(), 400, "ambiguous paths are refused, not guessed at");
}

#[tokio::test]
async fn envoy_http_mode_decides_the_root_path_and_refuses_disagreeing_descriptions() {
    let server = TestServer::demo().await;
    let client = reqwest::Client::new();
    // `path_prefix: /ext_authz` + `/` is `/ext_authz/`: decided as `/` (no rule permits it).
    let root = client.get(server.http_url("/ext_authz/")).send().await.unwrap();
    assert_eq!(root.status(), 401);
    assert!(root.headers().contains_key("www-authenticate"));
    let public = client.get(server.http_url("/ext_authz/public/info")).send().await.unwrap();
    assert_eq!(public.status(), 200);
    let spoofed = client
        .get(server.http_url("/ext_authz/admin/users"))
        .header("x-forwarded-uri", "/public/info")
        .send()
        .await
        .unwrap();
    assert_eq!(spoofed.status(), 400);
    let spoofed = client
        .get(server.http_url("/ext_authz/public/info"))
        .header("x-original-method", "DELETE")
        .send()
        .await
        .unwrap();
    assert_eq!(spoofed.status(), 400);
}

#[tokio::test]
async fn x_forwarded_for_sets_source_ip_only_from_a_trusted_proxy() {
    // A policy that lets one client address in: `source_ip` is what it is decided on.
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(root.join("policies/schema.cedarschema"), dir.path().join("schema.cedarschema")).unwrap();
    std::fs::write(
        dir.path().join("office.cedar"),
        "permit (principal, action == Action::\"GET\", resource == Route::\"/office\")\n\
         when { context.facts.hasTag(\"source_ip\") && context.facts.getTag(\"source_ip\") == \"203.0.113.9\" };\n",
    )
    .unwrap();
    let policies = format!("policies:\n  dir: {}\n", dir.path().display());
    let office = |server: &TestServer, forwarded_for: &'static str| {
        let request = reqwest::Client::new()
            .get(server.http_url("/auth/verify"))
            .header("x-original-method", "GET")
            .header("x-original-uri", "/office")
            .header("x-forwarded-for", forwarded_for);
        async move { request.send().await.unwrap().status() }
    };
    let untrusting = with_gateway(&policies).await;
    assert_eq!(office(&untrusting, "203.0.113.9").await, 401, "a client's claim is not believed");
    let trusting = with_gateway(&format!("{policies}gateway:\n  trusted_proxies: [127.0.0.1/32]\n")).await;
    assert_eq!(office(&trusting, "203.0.113.9").await, 200, "the trusted proxy's report is");
    assert_eq!(office(&trusting, "203.0.113.9, 198.51.100.1").await, 401, "only the last hop counts");
}

#[tokio::test]
async fn an_authorization_header_that_is_not_ascii_is_an_invalid_credential_not_none() {
    let server = TestServer::demo().await;
    let client = reqwest::Client::new();
    let value = reqwest::header::HeaderValue::from_bytes(b"Bearer caf\xc3\xa9").unwrap();
    let answer = client
        .get(server.http_url("/ext_authz/public/info"))
        .header("authorization", value.clone())
        .send()
        .await;
    let answer = answer.unwrap();
    assert_eq!(answer.status(), 401, "a public route must not treat it as anonymous");
    assert!(answer.headers()["www-authenticate"].to_str().unwrap().contains("invalid_token"));
    // Two Authorization headers over HTTP are two credentials.
    let twice = client
        .get(server.http_url("/ext_authz/public/info"))
        .header("authorization", "Bearer user-token-123")
        .header("authorization", "Bearer admin-token-456")
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), 400);
}
