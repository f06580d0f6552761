//! The forward-auth endpoint nginx `auth_request` and Traefik `forwardAuth` call, over real
//! HTTP: the original request described by `X-Forwarded-*` / `X-Original-*` headers.

// Test code: a failed set-up step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::TestServer;
use serde_json::Value;

async fn verify(server: &TestServer, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(server.http_url("/auth/verify"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn traefik_style_headers_describe_the_original_request() {
    let server = TestServer::demo().await;
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
    assert!(removed.contains("x-auth-tenant") && !removed.contains("x-auth-subject"), "{removed}");

    // The method comes from the header, not from the GET nginx or Traefik sends.
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
async fn nginx_style_headers_and_challenges() {
    let server = TestServer::demo().await;
    let anonymous =
        verify(&server, &[("x-original-uri", "/user/profile"), ("x-original-method", "GET")]).await;
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer realm=\"cedargate\"");
    let public = verify(&server, &[("x-original-uri", "/public/info")]).await;
    assert_eq!(public.status(), 200);
    let invoke = reqwest::Client::new()
        .post(server.http_url("/auth/verify"))
        .header("x-original-uri", "/mcp/invoke")
        .header("authorization", "Bearer user-token-123")
        .body(r#"{"toolName": "GET_/admin/users", "args": {}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(invoke.status(), 403, "a body forwarded to the endpoint is read as MCP");
}

#[tokio::test]
async fn a_request_without_its_original_uri_is_refused() {
    let server = TestServer::demo().await;
    let missing = verify(&server, &[("authorization", "Bearer user-token-123")]).await;
    assert_eq!(missing.status(), 400);
    let body: Value = missing.json().await.unwrap();
    assert!(body["reason"].as_str().unwrap().contains("X-Forwarded-Uri"), "{body}");
    let ambiguous = verify(&server, &[("x-forwarded-uri", "/public/../admin/users")]).await;
    assert_eq!(ambiguous.status(), 400, "ambiguous paths are refused, not guessed at");
}
