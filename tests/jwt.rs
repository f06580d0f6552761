//! JWT access tokens through the real server: a JWKS served over HTTP, decisions over gRPC,
//! and the Admin eviction RPC.

// Test code: a failed set-up step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cedargate::api::proto::admin_client::AdminClient;
use cedargate::api::proto::{self, Outcome};
use cedargate::config::Config;
use cedargate::model::{unix_now, SecretDigest};
use common::{check, route, TestServer};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "https://api.test";

fn signing_key() -> EncodingKey {
    EncodingKey::from_ec_pem(include_bytes!("fixtures/keys/ec256.pem")).unwrap()
}

fn token(audience: &str, roles: &[&str]) -> String {
    token_of(ISSUER, audience, roles)
}

fn token_of(issuer: &str, audience: &str, roles: &[&str]) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    let claims = json!({
        "iss": issuer, "aud": audience, "sub": "carol", "client_id": "cli",
        "scope": "profile:read", "roles": roles, "exp": unix_now() + 600
    });
    encode(&header, &claims, &signing_key()).unwrap()
}

/// A token for the trusted issuer and audience, with this `kid` and key.
fn signed(kid: &str, key: &EncodingKey) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.into());
    let claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "carol", "roles": ["user"], "exp": unix_now() + 600
    });
    encode(&header, &claims, key).unwrap()
}

fn jwk(kid: &str, key: &EncodingKey) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(key, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.into());
    jwk
}

/// An introspection endpoint on 127.0.0.1:0 that says every token is active; returns its URL
/// and how many tokens it was sent.
async fn introspection_server() -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/introspect",
        axum::routing::post({
            let calls = Arc::clone(&calls);
            move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                axum::Json(json!({"active": true, "sub": "dan", "roles": ["user"], "exp": unix_now() + 600}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/introspect", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, calls)
}

/// Serves the JWKS of the fixture key on 127.0.0.1:0; returns its URL.
async fn jwks_server() -> String {
    let mut jwk = Jwk::from_encoding_key(&signing_key(), Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let body = serde_json::to_value(JwkSet { keys: vec![jwk] }).unwrap();
    let app = axum::Router::new().route("/jwks", axum::routing::get(move || async move { axum::Json(body) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn server(admin: bool) -> TestServer {
    let admin = if admin {
        format!("admin:\n  token_sha256: {}\n", SecretDigest::of(b"admin-secret").to_hex())
    } else {
        String::new()
    };
    let text = format!(
        "credentials:\n  jwt:\n    - issuer: {ISSUER}\n      audiences: [{AUDIENCE}]\n      algorithms: [ES256]\n      jwks_url: {}\n{admin}",
        jwks_server().await
    );
    TestServer::start(Config::parse("jwt.yaml", &text).unwrap()).await
}

#[tokio::test]
async fn jwt_access_tokens_decide_like_any_credential() {
    let server = server(false).await;
    let mut client = server.authorizer().await;
    let user = format!("Bearer {}", token(AUDIENCE, &["user"]));
    let allowed = check(&mut client, &user, route("GET", "/user/profile")).await;
    assert_eq!(allowed.outcome(), Outcome::Allowed, "{allowed:?}");
    let auth = allowed.auth_info.unwrap();
    assert_eq!(
        (auth.subject.as_str(), auth.client_id.as_str(), auth.credential_kind.as_str()),
        ("carol", "cli", "jwt")
    );
    assert_eq!(auth.scopes, ["profile:read"]);
    assert_eq!(auth.resource, AUDIENCE);

    let forbidden = check(&mut client, &user, route("GET", "/admin/users")).await;
    assert_eq!((forbidden.outcome(), forbidden.reason.as_str()), (Outcome::Forbidden, "Requires admin role"));

    let elsewhere = format!("Bearer {}", token("https://other.test", &["admin"]));
    let refused = check(&mut client, &elsewhere, route("GET", "/user/profile")).await;
    assert_eq!(refused.outcome(), Outcome::Unauthenticated);
    assert_eq!(refused.reason, "JWT audience is not this resource");
    assert!(refused.www_authenticate.starts_with("Bearer realm=\"cedargate\", error=\"invalid_token\""));
}

#[tokio::test]
async fn admin_eviction_needs_the_admin_token() {
    let server = server(true).await;
    let mut client = server.authorizer().await;
    let jwt = token(AUDIENCE, &["user"]);
    let answer = check(&mut client, &format!("Bearer {jwt}"), route("GET", "/user/profile")).await;
    assert_eq!(answer.outcome(), Outcome::Allowed);

    let mut admin = AdminClient::new(server.channel().await);
    let by_token = |token: &str| proto::EvictTokenRequest {
        selector: Some(proto::evict_token_request::Selector::Token(token.into())),
    };
    let mut anonymous = tonic::Request::new(by_token(&jwt));
    assert_eq!(admin.evict_token(anonymous).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    anonymous = tonic::Request::new(by_token(&jwt));
    anonymous.metadata_mut().insert("authorization", "Bearer wrong".parse().unwrap());
    assert_eq!(admin.evict_token(anonymous).await.unwrap_err().code(), tonic::Code::Unauthenticated);

    let authorized = |request: proto::EvictTokenRequest| {
        let mut request = tonic::Request::new(request);
        request.metadata_mut().insert("authorization", "Bearer admin-secret".parse().unwrap());
        request
    };
    assert_eq!(admin.evict_token(authorized(by_token(&jwt))).await.unwrap().into_inner().evicted, 1);
    assert_eq!(admin.evict_token(authorized(by_token(&jwt))).await.unwrap().into_inner().evicted, 0);

    check(&mut client, &format!("Bearer {jwt}"), route("GET", "/user/profile")).await;
    let by_fingerprint = proto::EvictTokenRequest {
        selector: Some(proto::evict_token_request::Selector::Fingerprint(
            answer.credential_fingerprint.clone(),
        )),
    };
    assert_eq!(admin.evict_token(authorized(by_fingerprint)).await.unwrap().into_inner().evicted, 1);
}

#[tokio::test]
async fn the_admin_api_is_off_until_configured() {
    let server = server(false).await;
    let mut admin = AdminClient::new(server.channel().await);
    let mut request = tonic::Request::new(proto::EvictTokenRequest {
        selector: Some(proto::evict_token_request::Selector::Fingerprint("00".into())),
    });
    request.metadata_mut().insert("authorization", "Bearer anything".parse().unwrap());
    assert_eq!(admin.evict_token(request).await.unwrap_err().code(), tonic::Code::FailedPrecondition);
}

#[tokio::test]
async fn a_jwt_of_an_untrusted_issuer_reaches_introspection_only_where_accepted() {
    let jwks_url = jwks_server().await;
    let foreign = format!("Bearer {}", token_of("https://elsewhere.test", AUDIENCE, &["user"]));
    // (accept_jwts, what the foreign JWT gets: the reason of a refusal or the subject of an
    // allow, how many tokens introspection was sent)
    let table = [
        (false, (Outcome::Unauthenticated, "JWT issuer is not trusted"), 0),
        (true, (Outcome::Allowed, "dan"), 1),
    ];
    for (accept_jwts, expected, sent) in table {
        let (endpoint, calls) = introspection_server().await;
        let text = format!(
            "credentials:
  jwt:
    - issuer: {ISSUER}
      audiences: [{AUDIENCE}]
      jwks_url: {jwks_url}
  introspection:
    - endpoint: {endpoint}
      client_id: c
      client_secret: s
      accept_jwts: {accept_jwts}
"
        );
        let server = TestServer::start(Config::parse("untrusted.yaml", &text).unwrap()).await;
        let mut client = server.authorizer().await;
        let answer = check(&mut client, &foreign, route("GET", "/user/profile")).await;
        let seen = match &answer.auth_info {
            Some(auth) if answer.outcome() == Outcome::Allowed => auth.subject.clone(),
            _ => answer.reason.clone(),
        };
        assert_eq!((answer.outcome(), seen.as_str()), expected, "accept_jwts: {accept_jwts}");
        assert_eq!(calls.load(Ordering::SeqCst), sent, "accept_jwts: {accept_jwts}");
        // Opaque tokens go to introspection either way; trusted JWTs never do.
        let opaque = check(&mut client, "Bearer opaque-1", route("GET", "/user/profile")).await;
        assert_eq!(opaque.outcome(), Outcome::Allowed, "{opaque:?}");
        let trusted = check(
            &mut client,
            &format!("Bearer {}", token(AUDIENCE, &["user"])),
            route("GET", "/user/profile"),
        )
        .await;
        assert_eq!(trusted.auth_info.unwrap().credential_kind, "jwt");
        assert_eq!(calls.load(Ordering::SeqCst), sent + 1, "accept_jwts: {accept_jwts}");
    }
}

#[tokio::test]
async fn an_issuer_whose_keys_cannot_be_fetched_is_an_outage_without_a_challenge() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down = format!("http://{}/jwks", closed.local_addr().unwrap());
    drop(closed);
    let text = format!(
        "credentials:\n  jwt:\n    - issuer: {ISSUER}\n      audiences: [{AUDIENCE}]\n      jwks_url: {down}\n"
    );
    let server = TestServer::start(Config::parse("down.yaml", &text).unwrap()).await;
    let mut client = server.authorizer().await;
    let bearer = format!("Bearer {}", token(AUDIENCE, &["user"]));
    for round in ["first", "again"] {
        let answer = check(&mut client, &bearer, route("GET", "/user/profile")).await;
        assert_eq!(
            (answer.outcome(), answer.reason.as_str()),
            (
                Outcome::Unavailable,
                "credential backend `jwt` is unavailable: the keys of `https://issuer.test` could not be fetched"
            ),
            "{round}"
        );
        assert_eq!(answer.www_authenticate, "", "{round}: no challenge, the client keeps its token");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_signing_key_is_accepted_within_the_refetch_interval_despite_probes() {
    let published = Arc::new(std::sync::Mutex::new(vec![jwk("k1", &signing_key())]));
    let fetches = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get({
            let (published, fetches) = (Arc::clone(&published), Arc::clone(&fetches));
            move || async move {
                fetches.fetch_add(1, Ordering::SeqCst);
                let keys = published.lock().unwrap().clone();
                axum::Json(serde_json::to_value(JwkSet { keys }).unwrap())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_url = format!("http://{}/jwks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    // The default refetch_interval.
    let text = format!(
        "credentials:\n  jwt:\n    - issuer: {ISSUER}\n      audiences: [{AUDIENCE}]\n      jwks_url: {jwks_url}\n"
    );
    let config = Config::parse("rotation.yaml", &text).unwrap();
    let interval = config.credentials.jwt[0].refetch_interval.0;
    let server = TestServer::start(config).await;
    assert!(interval <= Duration::from_secs(2), "the default must keep the 2 s promise: {interval:?}");
    let mut client = server.authorizer().await;

    // An attacker's tokens with kids the issuer never published: refused, and far fewer
    // fetches than probes (at most one per interval).
    let probes = 20;
    for index in 0..probes {
        let kid = format!("probe-{index}");
        let answer = check(
            &mut client,
            &format!("Bearer {}", signed(&kid, &signing_key())),
            route("GET", "/user/profile"),
        )
        .await;
        assert_eq!(
            (answer.outcome(), answer.reason),
            (Outcome::Unauthenticated, format!("JWT is signed with an unknown key `{kid}`"))
        );
    }
    assert!(fetches.load(Ordering::SeqCst) < probes, "{} fetches", fetches.load(Ordering::SeqCst));

    // The issuer publishes a new key right after the probes. A token signed with it may be
    // refused until a fetch is due; that refusal is not cached, so once the interval has
    // passed the same token is accepted.
    let rotated_key = EncodingKey::from_ec_pem(include_bytes!("fixtures/keys/ec256-b.pem")).unwrap();
    published.lock().unwrap().insert(0, jwk("k2", &rotated_key));
    let rotated = format!("Bearer {}", signed("k2", &rotated_key));
    let _maybe_refused = check(&mut client, &rotated, route("GET", "/user/profile")).await;
    tokio::time::sleep(interval).await;
    let answer = check(&mut client, &rotated, route("GET", "/user/profile")).await;
    assert_eq!(answer.outcome(), Outcome::Allowed, "{answer:?}");
}

/// `/readyz` and gRPC health while an issuer's keys cannot be fetched, and once they can.
async fn readiness(server: &TestServer) -> (u16, i32) {
    let http = reqwest::get(format!("http://{}/readyz", server.http)).await.unwrap().status().as_u16();
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let grpc = health
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner()
        .status;
    (http, grpc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_is_ready_only_once_every_issuers_keys_are_loaded() {
    // A JWKS endpoint that fails until it is switched on.
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let key = serde_json::to_value(JwkSet { keys: vec![jwk("k1", &signing_key())] }).unwrap();
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get({
            let up = Arc::clone(&up);
            move || async move {
                if up.load(Ordering::SeqCst) {
                    Ok(axum::Json(key))
                } else {
                    Err(axum::http::StatusCode::SERVICE_UNAVAILABLE)
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_url = format!("http://{}/jwks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let text = format!(
        "credentials:\n  jwt:\n    - issuer: {ISSUER}\n      audiences: [{AUDIENCE}]\n      jwks_url: {jwks_url}\n      refresh_interval: 1s\n"
    );
    let server = TestServer::start(Config::parse("ready.yaml", &text).unwrap()).await;
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    // Liveness is not readiness.
    let live = reqwest::get(format!("http://{}/healthz", server.http)).await.unwrap().status();
    assert_eq!(live, 200);
    for _ in 0..3 {
        assert_eq!(readiness(&server).await, (503, not_serving));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    up.store(true, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while readiness(&server).await != (200, serving) {
        assert!(std::time::Instant::now() < deadline, "never ready: {:?}", readiness(&server).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut client = server.authorizer().await;
    let answer = check(
        &mut client,
        &format!("Bearer {}", signed("k1", &signing_key())),
        route("GET", "/user/profile"),
    )
    .await;
    assert_eq!(answer.outcome(), Outcome::Allowed, "{}", answer.reason);
}
