//! Fault injection against an in-process fake introspection endpoint: slow, down, 500,
//! garbage, and answers without `active`. The real authorization server is in `tests/`.

use super::*;
use crate::model::Scheme;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Form, Router};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Default)]
struct Fake {
    calls: AtomicUsize,
}

/// Answers by the token: the token names the behaviour.
async fn introspect(
    State(fake): State<Arc<Fake>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> axum::response::Response {
    fake.calls.fetch_add(1, Ordering::SeqCst);
    let basic = headers.get("authorization").and_then(|value| value.to_str().ok()).unwrap_or_default();
    let by_post = form.get("client_id").map(String::as_str) == Some("rs")
        && form.get("client_secret").map(String::as_str) == Some("s3cret:+");
    // "rs" / "s3cret:+", form-encoded then base64: cnM6czNjcmV0JTNBJTJC
    if basic != "Basic cnM6czNjcmV0JTNBJTJC" && !by_post {
        return (StatusCode::UNAUTHORIZED, "bad client").into_response();
    }
    if form.get("token_type_hint").map(String::as_str) != Some("access_token") {
        return (StatusCode::BAD_REQUEST, "no hint").into_response();
    }
    match form.get("token").map(String::as_str).unwrap_or_default() {
        "good" => axum::Json(json!({
            "active": true, "sub": "dave", "client_id": "app", "scope": "a b", "aud": "https://api.test",
            "exp": unix_now() + 600, "iss": "https://as.test", "username": "dave@example", "token_type": "Bearer"
        }))
        .into_response(),
        "other-audience" => axum::Json(json!({"active": true, "sub": "x", "aud": "https://else.test"})).into_response(),
        "inactive" => axum::Json(json!({"active": false})).into_response(),
        "no-active" => axum::Json(json!({"sub": "dave"})).into_response(),
        "active-string" => axum::Json(json!({"active": "true", "sub": "dave"})).into_response(),
        "garbage" => (StatusCode::OK, "<html>oops").into_response(),
        "refused-token" => (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "invalid_token"}))).into_response(),
        "refused-type" => {
            (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "unsupported_token_type"}))).into_response()
        }
        "refused-request" => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_request", "error_description": "token <b>bad</b>"})),
        )
            .into_response(),
        "refused-client" => (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "invalid_client"}))).into_response(),
        "refused-garbage" => (StatusCode::BAD_REQUEST, "invalid_token").into_response(),
        "forbidden" => (StatusCode::FORBIDDEN, axum::Json(json!({"error": "invalid_token"}))).into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            axum::Json(json!({"active": true, "sub": "late"})).into_response()
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
    }
}

async fn fake() -> (String, Arc<Fake>) {
    let state = Arc::new(Fake::default());
    let app = Router::new().route("/introspect", post(introspect)).with_state(Arc::clone(&state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/introspect", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, state)
}

fn settings(endpoint: String, auth: ClientAuth) -> IntrospectionSettings {
    IntrospectionSettings {
        endpoint: Endpoint::Url(endpoint),
        auth,
        token_type_hint: Some("access_token".into()),
        prefixes: Vec::new(),
        audiences: vec!["https://api.test".into()],
        claims: ClaimMapping::default(),
        timeout: Duration::from_millis(300),
        accept_jwts: false,
    }
}

fn basic() -> ClientAuth {
    ClientAuth::SecretBasic { client_id: "rs".into(), secret: Secret::new("s3cret:+") }
}

async fn resolve(resolver: &IntrospectionResolver, token: &str) -> Result<Resolution, CredentialError> {
    resolver.resolve(&Credential::new(Scheme::Bearer, token)).await
}

#[tokio::test]
async fn an_active_token_maps_onto_auth_info() {
    let (url, _) = fake().await;
    for auth in [basic(), ClientAuth::SecretPost { client_id: "rs".into(), secret: Secret::new("s3cret:+") }]
    {
        let resolver = IntrospectionResolver::new(settings(url.clone(), auth), reqwest::Client::new());
        let Ok(Resolution::Resolved(info)) = resolve(&resolver, "good").await else { panic!("not resolved") };
        assert_eq!((info.subject.as_str(), info.client_id.as_str()), ("dave", "app"));
        assert_eq!(info.scopes, ["a", "b"]);
        assert_eq!(info.kind, CredentialKind::Introspection);
        assert_eq!(info.issuer, "https://as.test");
        assert_eq!(info.extra.get("username"), Some(&json!("dave@example")));
        assert!(info.expires_at.is_some());
    }
}

#[tokio::test]
async fn every_unclear_answer_is_a_closed_door_with_its_own_reason() {
    let (url, _) = fake().await;
    let resolver = IntrospectionResolver::new(settings(url.clone(), basic()), reqwest::Client::new());
    let outage = |reason: &str| CredentialError::Unavailable {
        backend: "introspection".into(),
        reason: reason.into(),
    };
    let refused =
        |code: &str| CredentialError::Invalid(format!("introspection endpoint refused the token: `{code}`"));
    let table = [
        ("inactive", CredentialError::Invalid("token is not active".into())),
        ("other-audience", CredentialError::Invalid("token audience is not this resource".into())),
        ("no-active", outage("introspection answer has no boolean `active`")),
        ("active-string", outage("introspection answer has no boolean `active`")),
        ("garbage", outage("introspection answer is not a JSON object")),
        ("explode", outage("endpoint answered HTTP 500")),
        // A 400 about the token refuses it; about anything else, it is still an outage.
        ("refused-token", refused("invalid_token")),
        ("refused-type", refused("unsupported_token_type")),
        ("refused-request", refused("invalid_request")),
        ("refused-client", outage("endpoint answered HTTP 400")),
        ("refused-garbage", outage("endpoint answered HTTP 400")),
        ("forbidden", outage("endpoint answered HTTP 403")),
        ("slow", outage("no answer within 300 ms")),
    ];
    for (token, expected) in table {
        assert_eq!(resolve(&resolver, token).await.unwrap_err(), expected, "{token}");
    }

    let wrong_secret = ClientAuth::SecretBasic { client_id: "rs".into(), secret: Secret::new("nope") };
    let refused = IntrospectionResolver::new(settings(url, wrong_secret), reqwest::Client::new());
    assert_eq!(resolve(&refused, "good").await.unwrap_err(), outage("endpoint answered HTTP 401"));

    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down = format!("http://{}/introspect", closed.local_addr().unwrap());
    drop(closed);
    let down = IntrospectionResolver::new(settings(down, basic()), reqwest::Client::new());
    let CredentialError::Unavailable { reason, .. } = resolve(&down, "good").await.unwrap_err() else {
        panic!("a closed port must be an outage")
    };
    assert!(reason.starts_with("endpoint unreachable: ") && reason.contains("refused"), "{reason}");
}

#[tokio::test]
async fn only_tokens_with_a_configured_prefix_are_sent() {
    let (url, fake) = fake().await;
    let mut prefixed = settings(url, basic());
    prefixed.prefixes = vec!["at_".into()];
    let resolver = IntrospectionResolver::new(prefixed, reqwest::Client::new());
    assert!(matches!(resolve(&resolver, "good").await, Ok(Resolution::NotMine)));
    assert_eq!(fake.calls.load(Ordering::SeqCst), 0);
    assert!(resolve(&resolver, "at_unknown").await.is_err());
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn jwts_are_sent_only_to_an_endpoint_that_accepts_them() {
    let (url, fake) = fake().await;
    // Shaped like a JWT: `{"alg":"ES256"}`, `{}`, a signature.
    let jwt = "eyJhbGciOiJFUzI1NiJ9.e30.c2ln";
    let resolver = IntrospectionResolver::new(settings(url.clone(), basic()), reqwest::Client::new());
    assert!(matches!(resolve(&resolver, jwt).await, Ok(Resolution::NotMine)));
    assert_eq!(fake.calls.load(Ordering::SeqCst), 0, "a JWT must not be sent by default");
    // Opaque tokens with dots are still sent.
    assert!(resolve(&resolver, "not.a.jwt").await.is_err());
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);

    let mut accepting = settings(url, basic());
    accepting.accept_jwts = true;
    let resolver = IntrospectionResolver::new(accepting, reqwest::Client::new());
    assert!(resolve(&resolver, jwt).await.is_err(), "the fake knows no such token");
    assert_eq!(fake.calls.load(Ordering::SeqCst), 2, "sent with accept_jwts");
}

#[test]
fn client_auth_debug_hides_secrets() {
    let shown = format!("{:?}", basic());
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("client_secret_basic"));
}
