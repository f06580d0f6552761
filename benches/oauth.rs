//! Criterion benchmarks of the OAuth backends: a repeated JWT or introspected token against a
//! static token through the whole `Check`, and a JWT's first sight against bare ES256
//! verification.

// A benchmark harness, not service code: a broken set-up should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::hint::black_box;

use cedargate::config::Config;
use cedargate::credential::{ClaimMapping, CredentialResolver, IssuerSettings, JwtResolver, KeySource};
use cedargate::model::{unix_now, Credential, Extra, RouteRequest, Scheme, SecretDigest, Target, Wire};
use cedargate::App;
use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Map, Value};

const ISSUER: &str = "https://issuer.bench";
const AUDIENCE: &str = "https://api.bench";

fn key() -> EncodingKey {
    EncodingKey::from_ec_pem(include_bytes!("../tests/fixtures/keys/ec256.pem")).unwrap()
}

fn jwk() -> Jwk {
    let mut jwk = Jwk::from_encoding_key(&key(), Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("k1".into());
    jwk
}

fn jwt(subject: &str) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    let claims =
        json!({"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "roles": ["user"], "exp": unix_now() + 3600});
    jsonwebtoken::encode(&header, &claims, &key()).unwrap()
}

/// An introspection endpoint on 127.0.0.1:0 that says every token is alice's.
async fn introspection_server() -> String {
    let answer = json!({"active": true, "sub": "alice", "roles": ["user"], "exp": unix_now() + 3600});
    let app = axum::Router::new()
        .route("/introspect", axum::routing::post(move || async move { axum::Json(answer) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/introspect", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn oauth(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let endpoint = runtime.block_on(introspection_server());
    let jwks = serde_json::to_string(&JwkSet { keys: vec![jwk()] }).unwrap();
    let text = format!(
        "credentials:
  static_tokens:
    - sha256: {}
      subject: alice
      roles: [user]
  jwt:
    - issuer: {ISSUER}
      audiences: [{AUDIENCE}]
      jwks: {jwks}
  introspection:
    - endpoint: {endpoint}
      client_id: bench
      client_secret: bench
",
        SecretDigest::of(b"static-token").to_hex()
    );
    let app = App::build(Config::parse("bench.yaml", &text).unwrap()).unwrap();
    let engine = app.engine();
    let profile =
        Target::Route(RouteRequest { method: "GET".into(), path: "/user/profile".into(), template: None });
    let facts = Extra::new();
    let jwt_header = format!("Bearer {}", jwt("alice"));

    let mut group = c.benchmark_group("oauth_check");
    for (name, authorization) in [
        ("static_token", "Bearer static-token"),
        ("jwt_cached", jwt_header.as_str()),
        ("introspected_cached", "Bearer opaque-token"),
    ] {
        let first = runtime.block_on(engine.check(Wire::Grpc, authorization, &profile, &facts)).unwrap();
        assert!(first.allowed(), "{name}: {}", first.reason);
        group.bench_function(name, |b| {
            b.iter(|| {
                runtime
                    .block_on(engine.check(Wire::Grpc, black_box(authorization), &profile, &facts))
                    .unwrap()
            })
        });
    }
    group.finish();
    let mut group = c.benchmark_group("oauth_authenticate");
    for (name, authorization) in [
        ("static_token", "Bearer static-token"),
        ("jwt_cached", jwt_header.as_str()),
        ("introspected_cached", "Bearer opaque-token"),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| runtime.block_on(engine.authenticate(black_box(authorization))))
        });
    }
    group.finish();

    // First sight: the JWT backend alone (no cache) against bare ES256 verification with the
    // same key and checks.
    let resolver = JwtResolver::new(
        vec![IssuerSettings {
            issuer: ISSUER.into(),
            audiences: vec![AUDIENCE.into()],
            algorithms: vec![Algorithm::ES256],
            leeway: std::time::Duration::from_secs(30),
            strict_rfc9068: false,
            claims: ClaimMapping::default(),
            keys: KeySource::Inline(JwkSet { keys: vec![jwk()] }),
            refetch_interval: std::time::Duration::from_secs(30),
        }],
        reqwest::Client::new(),
    );
    let token = jwt("alice");
    let credential = Credential::new(Scheme::Bearer, token.clone());
    let decoding = DecodingKey::from_jwk(&jwk()).unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    let mut group = c.benchmark_group("jwt_first_sight");
    group.bench_function("bare_es256_verify", |b| {
        b.iter(|| {
            jsonwebtoken::decode::<Map<String, Value>>(black_box(&token), &decoding, &validation).unwrap()
        })
    });
    group.bench_function("jwt_backend_resolve", |b| {
        b.iter(|| runtime.block_on(resolver.resolve(black_box(&credential))).unwrap())
    });
    group.finish();
}

criterion_group!(benches, oauth);
criterion_main!(benches);
