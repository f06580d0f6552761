//! Against a real OAuth 2.0 server (oidc-provider, installed by scripts/install-test-deps.sh):
//! JWT access tokens verified by their JWKS, opaque tokens by introspection, revocation within
//! the cache bound and at once after eviction, and signing-key rotation.

// Test code: a failed set-up step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cedargate::api::proto::admin_client::AdminClient;
use cedargate::api::proto::{self, Outcome};
use cedargate::config::Config;
use cedargate::model::SecretDigest;
use common::{check, route, TestServer};
use serde_json::Value;

const API: &str = "https://api.test";
const OPAQUE: &str = "https://opaque.test";
const SHORT: &str = "https://short.test";

/// The oidc-provider process; killed when dropped.
struct AuthorizationServer {
    child: Child,
    port: u16,
}

impl Drop for AuthorizationServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn key(name: &str) -> String {
    format!("{}/tests/fixtures/keys/{name}.pem", env!("CARGO_MANIFEST_DIR"))
}

impl AuthorizationServer {
    /// Starts the provider on `port` (0: a free one) signing with `keys` (`kid=pem` pairs).
    fn start(port: u16, keys: &[(&str, &str)]) -> Self {
        let port = if port == 0 {
            std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
        } else {
            port
        };
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/oauth/provider.mjs");
        assert!(script.exists(), "run ./scripts/install-test-deps.sh first: {} is missing", script.display());
        let signing: Vec<String> = keys.iter().map(|(kid, name)| format!("{kid}={}", key(name))).collect();
        let mut child = Command::new("node")
            .arg(script)
            .env("PORT", port.to_string())
            .env("SIGNING_KEYS", signing.join(","))
            .env("CLIENT_KEY", key("ec256-b"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut ready).unwrap();
        assert!(ready.starts_with("ready "), "provider did not start: {ready:?}");
        // Keep draining: node dies of EPIPE if its stdout is closed under it.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        Self { child, port }
    }

    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A client-credentials access token for `resource`.
    async fn token(&self, resource: &str) -> String {
        let answer: Value = reqwest::Client::new()
            .post(format!("{}/token", self.issuer()))
            .basic_auth("app", Some("app-secret"))
            .form(&[("grant_type", "client_credentials"), ("resource", resource), ("scope", "profile:read")])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["access_token"].as_str().unwrap_or_else(|| panic!("no token: {answer}")).to_owned()
    }

    async fn revoke(&self, token: &str) {
        let status = reqwest::Client::new()
            .post(format!("{}/token/revocation", self.issuer()))
            .basic_auth("app", Some("app-secret"))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_success(), "{status}");
    }
}

async fn cedargate(issuer: &str, max_ttl: &str) -> TestServer {
    let text = format!(
        "credentials:
  jwt:
    - issuer: {issuer}
      audiences: [{API}, {SHORT}]
      algorithms: [ES256]
      leeway: 1s
      discovery: true
      strict_rfc9068: true
      refetch_interval: 100ms
  introspection:
    - issuer: {issuer}
      client_id: cedargate
      client_secret: cedargate-secret
      audiences: [{OPAQUE}]
  token_cache:
    max_ttl: {max_ttl}
admin:
  token_sha256: {}
",
        SecretDigest::of(b"admin-secret").to_hex()
    );
    TestServer::start(Config::parse("oauth.yaml", &text).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_access_tokens_from_the_server_are_verified_locally() {
    let server = AuthorizationServer::start(0, &[("k1", "ec256")]);
    let gate = cedargate(&server.issuer(), "5m").await;
    let mut client = gate.authorizer().await;

    let token = server.token(API).await;
    let answer = check(&mut client, &format!("Bearer {token}"), route("GET", "/user/profile")).await;
    assert_eq!(answer.outcome(), Outcome::Allowed, "{answer:?}");
    let auth = answer.auth_info.unwrap();
    assert_eq!((auth.subject.as_str(), auth.client_id.as_str()), ("app", "app"));
    assert_eq!((auth.credential_kind.as_str(), auth.issuer.as_str()), ("jwt", server.issuer().as_str()));
    assert_eq!(auth.scopes, ["profile:read"]);
    assert_eq!(auth.roles, ["user"]);

    // An opaque token (for https://opaque.test) is not a JWT: the JWT backend passes it on and
    // introspection resolves it, so the same policies apply (a `user` on an admin route: 403).
    let opaque_elsewhere = server.token(OPAQUE).await;
    assert_eq!(
        check(&mut client, &format!("Bearer {opaque_elsewhere}"), route("GET", "/admin/users"))
            .await
            .outcome(),
        Outcome::Forbidden
    );

    // A JWT from the same server for a resource cedargate does not serve.
    let foreign = server.token("https://other.test").await;
    let refused = check(&mut client, &format!("Bearer {foreign}"), route("GET", "/user/profile")).await;
    assert_eq!(
        (refused.outcome(), refused.reason.as_str()),
        (Outcome::Unauthenticated, "JWT audience is not this resource")
    );

    // A token that lives one second, checked after it and the 1s leeway passed.
    let short = server.token(SHORT).await;
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let expired = check(&mut client, &format!("Bearer {short}"), route("GET", "/user/profile")).await;
    assert_eq!(
        (expired.outcome(), expired.reason.as_str()),
        (Outcome::Unauthenticated, "credential expired")
    );

    let mut tampered = token.clone();
    let flip = tampered.len() - 5;
    tampered.replace_range(flip..flip + 1, if &token[flip..flip + 1] == "A" { "B" } else { "A" });
    let refused = check(&mut client, &format!("Bearer {tampered}"), route("GET", "/user/profile")).await;
    assert_eq!(refused.outcome(), Outcome::Unauthenticated);
    assert_eq!(refused.reason, "JWT signature does not verify");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tokens_resolve_by_introspection_and_revocation_takes_effect() {
    let server = AuthorizationServer::start(0, &[("k1", "ec256")]);
    let gate = cedargate(&server.issuer(), "1s").await;
    let mut client = gate.authorizer().await;

    let token = server.token(OPAQUE).await;
    let bearer = format!("Bearer {token}");
    let answer = check(&mut client, &bearer, route("GET", "/user/profile")).await;
    assert_eq!(answer.outcome(), Outcome::Allowed, "{answer:?}");
    let auth = answer.auth_info.unwrap();
    assert_eq!((auth.subject.as_str(), auth.credential_kind.as_str()), ("app", "introspection"));
    assert_eq!(auth.resource, OPAQUE);

    // Revoked at the server: still cached until the bound (1s) passes, refused after it.
    server.revoke(&token).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = check(&mut client, &bearer, route("GET", "/user/profile")).await;
    assert_eq!((after.outcome(), after.reason.as_str()), (Outcome::Unauthenticated, "token is not active"));

    // With eviction, a revocation takes effect at once.
    let second = server.token(OPAQUE).await;
    let bearer = format!("Bearer {second}");
    assert_eq!(check(&mut client, &bearer, route("GET", "/user/profile")).await.outcome(), Outcome::Allowed);
    server.revoke(&second).await;
    let mut admin = AdminClient::new(gate.channel().await);
    let mut evict = tonic::Request::new(proto::EvictTokenRequest {
        selector: Some(proto::evict_token_request::Selector::Token(second.clone())),
    });
    evict.metadata_mut().insert("authorization", "Bearer admin-secret".parse().unwrap());
    assert_eq!(admin.evict_token(evict).await.unwrap().into_inner().evicted, 1);
    assert_eq!(
        check(&mut client, &bearer, route("GET", "/user/profile")).await.outcome(),
        Outcome::Unauthenticated
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_signing_key_does_not_break_new_tokens() {
    let first = AuthorizationServer::start(0, &[("k1", "ec256")]);
    let port = first.port;
    let gate = cedargate(&first.issuer(), "5m").await;
    let mut client = gate.authorizer().await;
    let old = first.token(API).await;
    assert_eq!(
        check(&mut client, &format!("Bearer {old}"), route("GET", "/user/profile")).await.outcome(),
        Outcome::Allowed
    );
    drop(first);

    // Same issuer, new signing key first; the old key is still published. Restarting takes
    // longer than the refetch interval (100ms), so the new kid may trigger a refetch even if
    // the first check above had to fetch the keys itself.
    let rotated = AuthorizationServer::start(port, &[("k2", "ec256-b"), ("k1", "ec256")]);
    let new = rotated.token(API).await;
    let answer = check(&mut client, &format!("Bearer {new}"), route("GET", "/user/profile")).await;
    assert_eq!(answer.outcome(), Outcome::Allowed, "{answer:?}");
    assert_eq!(
        check(&mut client, &format!("Bearer {old}"), route("GET", "/user/profile")).await.outcome(),
        Outcome::Allowed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_can_authenticate_with_private_key_jwt() {
    let server = AuthorizationServer::start(0, &[("k1", "ec256")]);
    let pem = std::fs::read_to_string(key("ec256-b")).unwrap();
    let indented: String = pem.lines().map(|line| format!("        {line}\n")).collect();
    let text = format!(
        "credentials:
  introspection:
    - issuer: {}
      client_id: cedargate-pkjwt
      auth_method: private_key_jwt
      key_algorithm: ES256
      private_key_pem: |
{indented}",
        server.issuer()
    );
    let gate = TestServer::start(Config::parse("pkjwt.yaml", &text).unwrap()).await;
    let mut client = gate.authorizer().await;
    let token = server.token(OPAQUE).await;
    let answer = check(&mut client, &format!("Bearer {token}"), route("GET", "/user/profile")).await;
    assert_eq!(answer.outcome(), Outcome::Allowed, "{answer:?}");
    assert_eq!(answer.auth_info.unwrap().credential_kind, "introspection");
}
