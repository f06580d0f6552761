//! Tenants through the real server: three tenants, each with its own issuer (local keys,
//! inline JWKS) and policy directory under one base set, checked as a matrix of tenants ×
//! issuers × paths over gRPC `Check` (the `tenant` field), Envoy's ext_authz (context
//! extensions), `/auth/verify` (the tenant header from a trusted proxy) and a real Envoy with
//! per-route `context_extensions`; reloads that break and fix one tenant; unsafe names.

// Test code: a failed set-up step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cedargate::api::proto::admin_client::AdminClient;
use cedargate::api::proto::authorizer_client::AuthorizerClient;
use cedargate::api::proto::{self, Outcome, PolicyStatusRequest, ReloadPoliciesRequest};
use cedargate::config::Config;
use cedargate::model::{unix_now, SecretDigest};
use common::envoy::{Auth, Envoy, EnvoyConfig};
use common::upstream::Upstream;
use common::{route, TestServer};
use envoy_types::ext_authz::v3::pb::{CheckRequest as EnvoyCheckRequest, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{attribute_context, AttributeContext};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use tonic::transport::Channel;
use tonic::Request;

const SCHEMA: &str = include_str!("../policies/schema.cedarschema");
const ADMIN_TOKEN: &str = "admin-secret";
const AUDIENCE: &str = "https://api.test";
const TENANTS: [&str; 3] = ["acme", "globex", "initech"];
/// Generous: no test waits this long unless something is broken.
const DEADLINE: Duration = Duration::from_secs(15);

/// The base set: `/base` for any user; `/t/acme/secret` closed for everyone, whatever a
/// tenant permits.
const BASE: &str = r#"
@id("base-open") permit (principal is User, action == Action::"GET", resource == Route::"/base");
@id("base-no-secret") @reason("secrets are closed for everyone")
forbid (principal, action, resource == Route::"/t/acme/secret");
"#;

/// Tenant `name`'s own set: its own data, and for acme the secret the base forbids.
fn tenant_policy(name: &str) -> String {
    let mut text = format!(
        "@id(\"{name}-data\") @reason(\"{name} data\")\n\
         permit (principal is User, action == Action::\"GET\", resource == Route::\"/t/{name}/data\");\n"
    );
    if name == "acme" {
        text.push_str(
            "@id(\"acme-secret\") permit (principal is User, action == Action::\"GET\", resource == Route::\"/t/acme/secret\");\n",
        );
    }
    text
}

/// Each tenant's signing key and algorithm: three different keys, so no issuer can verify
/// another's tokens.
fn key_of(tenant: &str) -> (EncodingKey, Algorithm) {
    match tenant {
        "acme" => {
            (EncodingKey::from_ec_pem(include_bytes!("fixtures/keys/ec256.pem")).unwrap(), Algorithm::ES256)
        }
        "globex" => {
            (EncodingKey::from_ec_pem(include_bytes!("fixtures/keys/ec256-b.pem")).unwrap(), Algorithm::ES256)
        }
        _ => (EncodingKey::from_ec_pem(include_bytes!("fixtures/keys/ec384.pem")).unwrap(), Algorithm::ES384),
    }
}

fn issuer_of(tenant: &str) -> String {
    format!("https://{tenant}.test")
}

fn jwks_of(tenant: &str) -> String {
    let (key, algorithm) = key_of(tenant);
    let mut jwk = Jwk::from_encoding_key(&key, algorithm).unwrap();
    jwk.common.key_id = Some(format!("{tenant}-1"));
    serde_json::to_string(&JwkSet { keys: vec![jwk] }).unwrap()
}

/// A token of `tenant`'s issuer, with extra claims.
fn token_with(tenant: &str, extra: serde_json::Value) -> String {
    let (key, algorithm) = key_of(tenant);
    let mut header = Header::new(algorithm);
    header.kid = Some(format!("{tenant}-1"));
    let mut claims = json!({
        "iss": issuer_of(tenant), "aud": AUDIENCE, "sub": format!("user-of-{tenant}"), "exp": unix_now() + 600
    });
    claims.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    format!("Bearer {}", encode(&header, &claims, &key).unwrap())
}

fn token(tenant: &str) -> String {
    token_with(tenant, json!({}))
}

/// `root/policies` with the base set and each tenant's directory.
fn policy_dir(root: &Path) -> PathBuf {
    let dir = root.join("policies");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("schema.cedarschema"), SCHEMA).unwrap();
    std::fs::write(dir.join("base.cedar"), BASE).unwrap();
    for tenant in TENANTS {
        write_tenant(&dir, tenant, &tenant_policy(tenant));
    }
    dir
}

fn write_tenant(dir: &Path, tenant: &str, text: &str) {
    let dir = dir.join("tenants").join(tenant);
    std::fs::create_dir_all(&dir).unwrap();
    // Written elsewhere and renamed in, as a deploy does: a watcher never reads half a file.
    let temporary = dir.join("rules.cedar.tmp");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, dir.join("rules.cedar")).unwrap();
}

/// The config: every tenant with its issuer, acme with its own protected resource, a global
/// static token and one of acme's; `trusted` puts 127.0.0.1 in `gateway.trusted_proxies`.
fn config(root: &Path, watch: bool, trusted: bool) -> Config {
    let digest = SecretDigest::of(ADMIN_TOKEN.as_bytes()).to_hex();
    let mut text = format!(
        "policies:\n  dir: policies\n  watch: {watch}\nadmin:\n  token_sha256: {digest}\n\
         protected_resource:\n  resource: {AUDIENCE}/\n\
         credentials:\n  static_tokens:\n    - value: global-token\n      subject: ops\n\
         \x20   - value: acme-robot-token\n      subject: robot\n      tenant: acme\n\
         tenants:\n  header: x-tenant\n"
    );
    if trusted {
        text.push_str("gateway:\n  trusted_proxies: [127.0.0.1/32]\n");
    }
    let tenants_at = text.find("tenants:\n").unwrap() + "tenants:\n  header: x-tenant\n".len();
    let mut tenants = String::new();
    for tenant in TENANTS {
        let (_, algorithm) = key_of(tenant);
        tenants.push_str(&format!(
            "  {tenant}:\n    jwt:\n      - issuer: {}\n        audiences: [{AUDIENCE}]\n        algorithms: [{algorithm:?}]\n        jwks: {}\n",
            issuer_of(tenant),
            jwks_of(tenant)
        ));
        if tenant == "acme" {
            tenants.push_str(&format!("    protected_resource:\n      resource: {AUDIENCE}/t/acme\n"));
        }
    }
    text.insert_str(tenants_at, &tenants);
    std::fs::write(root.join("cedargate.yaml"), &text).unwrap();
    Config::load(&root.join("cedargate.yaml")).unwrap_or_else(|error| panic!("{error}\n{text}"))
}

async fn serve(watch: bool, trusted: bool) -> (tempfile::TempDir, PathBuf, TestServer) {
    let root = tempfile::tempdir().unwrap();
    let dir = policy_dir(root.path());
    let server = TestServer::start(config(root.path(), watch, trusted)).await;
    (root, dir, server)
}

/// gRPC `Check` naming `tenant` ("" for none).
async fn check_in(
    client: &mut AuthorizerClient<Channel>,
    tenant: &str,
    authorization: &str,
    path: &str,
) -> proto::CheckResponse {
    client
        .check(proto::CheckRequest {
            authorization: authorization.into(),
            target: Some(route("GET", path)),
            tenant: tenant.into(),
            ..Default::default()
        })
        .await
        .expect("Check answers")
        .into_inner()
}

/// What tenant `decider`'s set says about `path` for one of its users: its own data, the
/// base's `/base`, never the secret (the base forbid wins), nothing of another tenant.
fn allowed_by(decider: Option<&str>, path: &str) -> bool {
    match decider {
        Some(tenant) => path == "/base" || path == format!("/t/{tenant}/data"),
        None => path == "/base",
    }
}

fn paths() -> Vec<String> {
    let mut paths: Vec<String> = TENANTS.iter().map(|tenant| format!("/t/{tenant}/data")).collect();
    paths.extend(["/base".to_owned(), "/t/acme/secret".to_owned()]);
    paths
}

#[tokio::test]
async fn each_tenant_is_decided_by_its_own_set_and_refuses_other_tenants_tokens() {
    let (_root, _dir, server) = serve(false, false).await;
    let mut client = server.authorizer().await;
    for issuer in TENANTS {
        let authorization = token(issuer);
        for requested in ["", "acme", "globex", "initech"] {
            for path in paths() {
                let answer = check_in(&mut client, requested, &authorization, &path).await;
                let case = format!("token of {issuer}, request tenant `{requested}`, {path}: {answer:?}");
                if !requested.is_empty() && requested != issuer {
                    // A token from another tenant's issuer: not a token for this resource.
                    assert_eq!(
                        (answer.outcome(), answer.http_status),
                        (Outcome::Unauthenticated, 401),
                        "{case}"
                    );
                    assert_eq!(
                        answer.reason,
                        format!("credential of tenant `{issuer}` used for tenant `{requested}`"),
                        "{case}"
                    );
                    assert!(answer.www_authenticate.contains("error=\"invalid_token\""), "{case}");
                    assert!(answer.policy_ids.is_empty(), "no policy was asked: {case}");
                    continue;
                }
                // The issuer's tenant decides, with or without the request naming it.
                let expected = allowed_by(Some(issuer), &path);
                assert_eq!(answer.allowed, expected, "{case}");
                assert_eq!(answer.auth_info.as_ref().unwrap().tenant, issuer, "{case}");
                if path == "/t/acme/secret" && issuer == "acme" {
                    assert_eq!(answer.policy_ids, ["base-no-secret"], "the base forbid wins: {case}");
                }
                if expected && path != "/base" {
                    assert_eq!(answer.policy_ids, [format!("{issuer}-data")], "{case}");
                }
            }
        }
    }
}

#[tokio::test]
async fn keys_and_static_tokens_follow_their_tenant_and_global_ones_the_request() {
    let (_root, _dir, server) = serve(false, false).await;
    let mut client = server.authorizer().await;
    for path in paths() {
        // A global credential: the base set alone without a tenant, the tenant's set with one.
        let answer = check_in(&mut client, "", "Bearer global-token", &path).await;
        assert_eq!(answer.allowed, allowed_by(None, &path), "global, no tenant, {path}");
        for tenant in TENANTS {
            let answer = check_in(&mut client, tenant, "Bearer global-token", &path).await;
            assert_eq!(answer.allowed, allowed_by(Some(tenant), &path), "global under {tenant}, {path}");
        }
        // acme's static token: acme's set, and refused (403) for another tenant.
        let answer = check_in(&mut client, "", "Bearer acme-robot-token", &path).await;
        assert_eq!(answer.allowed, allowed_by(Some("acme"), &path), "acme's token, {path}");
        let answer = check_in(&mut client, "globex", "Bearer acme-robot-token", &path).await;
        assert_eq!((answer.outcome(), answer.http_status), (Outcome::Forbidden, 403), "{path}");
        assert_eq!(answer.reason, "credential of tenant `acme` used for tenant `globex`");
    }
}

#[tokio::test]
async fn unsafe_or_undeclared_tenants_are_refused_never_decided_by_the_base() {
    let (_root, _dir, server) = serve(false, true).await;
    let mut client = server.authorizer().await;
    let long = "a".repeat(64);
    for (tenant, reason) in [
        ("hooli", "tenant `hooli` is not declared"),
        ("ACME", "not a safe tenant name"),
        ("../acme", "not a safe tenant name"),
        ("acme ", "not a safe tenant name"),
        ("acme\u{0}", "not a safe tenant name"),
        (long.as_str(), "not a safe tenant name"),
        ("-acme", "not a safe tenant name"),
    ] {
        for authorization in ["", "Bearer global-token", &token("acme")] {
            // `/base` is open to every user of the base set: a refusal is the tenant's.
            let answer = check_in(&mut client, tenant, authorization, "/base").await;
            assert_eq!((answer.outcome(), answer.http_status), (Outcome::Forbidden, 403), "{tenant:?}");
            assert!(answer.reason.contains(reason), "{tenant:?}: {}", answer.reason);
            assert!(!answer.reason.contains(tenant) || tenant == "hooli", "unsafe text is never echoed");
        }
    }
    // Through the gateway: the tenant header of a trusted proxy, and an Envoy context extension.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    for tenant in ["hooli", "ACME", "acme,globex"] {
        let response = http
            .get(server.http_url("/auth/verify"))
            .header("x-original-method", "GET")
            .header("x-original-uri", "/base")
            .header("authorization", "Bearer global-token")
            .header("x-tenant", tenant)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{tenant}");
        let (status, _) =
            ext_authz(&server, &[("tenant", tenant)], &[], "Bearer global-token", "/base").await;
        assert_eq!(status, 403, "{tenant}");
    }
}

/// Envoy's ext_authz `Check` for `GET path` with these context extensions and headers: the
/// status Envoy would answer and the denial body.
async fn ext_authz(
    server: &TestServer,
    extensions: &[(&str, &str)],
    headers: &[(&str, &str)],
    authorization: &str,
    path: &str,
) -> (i32, String) {
    let mut envoy = AuthorizationClient::new(server.channel().await);
    let mut all: std::collections::HashMap<String, String> =
        headers.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect();
    all.insert("authorization".into(), authorization.into());
    let http = attribute_context::HttpRequest {
        method: "GET".into(),
        path: path.into(),
        headers: all,
        ..Default::default()
    };
    let request = EnvoyCheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request { http: Some(http), ..Default::default() }),
            context_extensions: extensions.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            ..Default::default()
        }),
    };
    let answer = envoy.check(request).await.unwrap().into_inner();
    match answer.http_response {
        Some(HttpResponse::OkResponse(_)) => (200, String::new()),
        Some(HttpResponse::DeniedResponse(denied)) => (denied.status.unwrap().code, denied.body),
        other => panic!("no HTTP response: {other:?}"),
    }
}

#[tokio::test]
async fn gateway_wires_name_the_tenant_by_context_extension_and_trusted_header() {
    let (_root, _dir, server) = serve(false, true).await;
    for issuer in TENANTS {
        for requested in TENANTS {
            for path in paths() {
                let expected = if requested == issuer {
                    if allowed_by(Some(issuer), &path) {
                        200
                    } else {
                        403
                    }
                } else {
                    401
                };
                let (status, body) =
                    ext_authz(&server, &[("tenant", requested)], &[], &token(issuer), &path).await;
                assert_eq!(status, expected, "ext_authz: {issuer} under {requested}, {path}: {body}");
                // The header and the extension must agree.
                let (status, _) = ext_authz(
                    &server,
                    &[("tenant", requested)],
                    &[("x-tenant", issuer)],
                    &token(issuer),
                    &path,
                )
                .await;
                assert_eq!(status, if requested == issuer { expected } else { 403 }, "{issuer}/{requested}");
            }
        }
    }
    // The header, from a trusted proxy, over `/auth/verify`.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let verify = |tenant: &str, authorization: &str, path: &str| {
        http.get(server.http_url("/auth/verify"))
            .header("x-original-method", "GET")
            .header("x-original-uri", path.to_owned())
            .header("authorization", authorization.to_owned())
            .header("x-tenant", tenant.to_owned())
            .send()
    };
    assert_eq!(verify("globex", "Bearer global-token", "/t/globex/data").await.unwrap().status(), 200);
    assert_eq!(verify("acme", "Bearer global-token", "/t/globex/data").await.unwrap().status(), 403);
    let refused = verify("globex", &token("acme"), "/t/globex/data").await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.text().await.unwrap().contains("credential of tenant `acme` used for tenant `globex`"));
}

#[tokio::test]
async fn the_tenant_header_is_refused_from_a_peer_that_is_not_a_trusted_proxy() {
    let (_root, _dir, server) = serve(false, false).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let verify = |tenant: Option<&str>| {
        let mut request = http
            .get(server.http_url("/auth/verify"))
            .header("x-original-method", "GET")
            .header("x-original-uri", "/t/globex/data")
            .header("authorization", "Bearer global-token");
        if let Some(tenant) = tenant {
            request = request.header("x-tenant", tenant);
        }
        request.send()
    };
    let refused = verify(Some("globex")).await.unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.unwrap().contains("only from gateway.trusted_proxies"));
    // Without the header the base set decides, which does not open globex's data.
    assert_eq!(verify(None).await.unwrap().status(), 403);
    let envoy_http = http
        .get(server.http_url("/ext_authz/t/globex/data"))
        .header("authorization", "Bearer global-token")
        .header("x-tenant", "globex")
        .send()
        .await
        .unwrap();
    assert_eq!(envoy_http.status(), 403);
}

#[tokio::test]
async fn a_tenants_challenge_names_its_own_resource_metadata_served_at_its_path() {
    let (_root, _dir, server) = serve(false, false).await;
    let mut client = server.authorizer().await;
    let acme = check_in(&mut client, "acme", "", "/t/acme/data").await;
    assert_eq!(acme.outcome(), Outcome::Unauthenticated);
    let acme_metadata =
        format!("resource_metadata=\"{AUDIENCE}/.well-known/oauth-protected-resource/t/acme\"");
    assert!(acme.www_authenticate.contains(&acme_metadata), "{}", acme.www_authenticate);
    // Another tenant's token under acme points to acme's authorization server too.
    let foreign = check_in(&mut client, "acme", &token("globex"), "/t/acme/data").await;
    assert!(foreign.www_authenticate.contains(&acme_metadata), "{}", foreign.www_authenticate);
    // globex has none of its own: the global one.
    let globex = check_in(&mut client, "globex", "", "/t/globex/data").await;
    let global = format!("resource_metadata=\"{AUDIENCE}/.well-known/oauth-protected-resource\"");
    assert!(globex.www_authenticate.contains(&global), "{}", globex.www_authenticate);

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let document = |path: &'static str| {
        let request = http.get(server.http_url(path));
        async move { request.send().await.unwrap().json::<serde_json::Value>().await.unwrap() }
    };
    let tenant = document("/.well-known/oauth-protected-resource/t/acme").await;
    assert_eq!(tenant["resource"], format!("{AUDIENCE}/t/acme"));
    let root = document("/.well-known/oauth-protected-resource").await;
    assert_eq!(root["resource"], format!("{AUDIENCE}/"));
    let missing =
        http.get(server.http_url("/.well-known/oauth-protected-resource/t/globex")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
}

fn admin<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {ADMIN_TOKEN}").parse().unwrap());
    request
}

/// The deciding reason for a user of `tenant` on its own data, by its own token.
async fn own_data(client: &mut AuthorizerClient<Channel>, tenant: &str) -> (bool, String) {
    let answer = check_in(client, tenant, &token(tenant), &format!("/t/{tenant}/data")).await;
    (answer.allowed, answer.reason)
}

#[tokio::test]
async fn a_broken_tenant_reload_keeps_its_last_good_set_and_no_other_changes() {
    let (_root, dir, server) = serve(false, false).await;
    let mut client = server.authorizer().await;
    let mut admin_client = AdminClient::new(server.channel().await);
    let before = admin_client.policy_status(admin(PolicyStatusRequest {})).await.unwrap().into_inner();
    assert_eq!(before.tenants.iter().map(|tenant| tenant.name.as_str()).collect::<Vec<_>>(), TENANTS);

    write_tenant(&dir, "acme", "permit (principal, action resource);");
    let refused = admin_client.reload_policies(admin(ReloadPoliciesRequest {})).await.unwrap_err();
    assert!(refused.message().contains("tenant `acme`: "), "{}", refused.message());
    assert!(refused.message().contains("rules.cedar:1:"), "{}", refused.message());
    for tenant in TENANTS {
        assert_eq!(
            own_data(&mut client, tenant).await,
            (true, format!("{tenant} data")),
            "{tenant} still serves"
        );
    }
    let status = admin_client.policy_status(admin(PolicyStatusRequest {})).await.unwrap().into_inner();
    assert_eq!(status.revision, before.revision, "the base set is unchanged");
    assert!(status.last_error.is_none(), "the base set's reload went through");
    for (now, then) in status.tenants.iter().zip(&before.tenants) {
        assert_eq!(now.revision, then.revision, "{}: its set in force is unchanged", now.name);
        assert_eq!(now.last_error.is_some(), now.name == "acme", "{}", now.name);
    }

    // Fixed: acme's new set serves, and only acme's revision moves.
    write_tenant(&dir, "acme", &tenant_policy("acme").replace("acme data", "acme data, fixed"));
    assert!(
        admin_client.reload_policies(admin(ReloadPoliciesRequest {})).await.unwrap().into_inner().changed
    );
    assert_eq!(own_data(&mut client, "acme").await, (true, "acme data, fixed".to_owned()));
    let fixed = admin_client.policy_status(admin(PolicyStatusRequest {})).await.unwrap().into_inner();
    for (now, then) in fixed.tenants.iter().zip(&before.tenants) {
        assert_eq!(now.revision != then.revision, now.name == "acme", "{}", now.name);
        assert!(now.last_error.is_none());
    }
    // And over HTTP, per tenant.
    let status: serde_json::Value = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(server.http_url("/policies/status"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["tenants"][0]["name"], "acme");
    assert_eq!(status["tenants"][0]["revision"], fixed.tenants[0].revision);
}

#[tokio::test]
async fn the_directory_watch_reloads_one_tenant_alone() {
    let (_root, dir, server) = serve(true, false).await;
    let mut client = server.authorizer().await;
    let mut admin_client = AdminClient::new(server.channel().await);
    let globex_before =
        admin_client.policy_status(admin(PolicyStatusRequest {})).await.unwrap().into_inner().tenants[1]
            .revision
            .clone();
    write_tenant(&dir, "initech", &tenant_policy("initech").replace("initech data", "initech data, v2"));
    let deadline = Instant::now() + DEADLINE;
    while own_data(&mut client, "initech").await.1 != "initech data, v2" {
        assert!(Instant::now() < deadline, "initech's edit never came into force");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A broken edit is seen and refused; initech keeps v2.
    write_tenant(&dir, "initech", "forbid (principal, action resource);");
    loop {
        let status = admin_client.policy_status(admin(PolicyStatusRequest {})).await.unwrap().into_inner();
        if status.tenants[2].last_error.is_some() {
            assert_eq!(status.tenants[1].revision, globex_before, "globex was not rebuilt");
            break;
        }
        assert!(Instant::now() < deadline, "the broken edit was never seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(own_data(&mut client, "initech").await.1, "initech data, v2");
    assert_eq!(own_data(&mut client, "globex").await.1, "globex data");
}

#[tokio::test]
async fn a_real_envoy_names_the_tenant_per_route() {
    let (_root, _dir, server) = serve(false, false).await;
    let upstream = Upstream::start().await;
    let mut config =
        EnvoyConfig::new(upstream.addr).with_auth(Auth::ExtAuthzGrpc { addr: server.grpc, with_body: false });
    for tenant in TENANTS {
        config = config.with_context_extensions(&format!("/t/{tenant}/"), &[("tenant", tenant)]);
    }
    let envoy = Envoy::start(&config).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let get = |path: &str, authorization: String| {
        let request = http.get(envoy.url(path)).header("authorization", authorization);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    for issuer in TENANTS {
        for requested in TENANTS {
            let expected = if issuer == requested { 200 } else { 401 };
            let path = format!("/t/{requested}/data");
            assert_eq!(get(&path, token(issuer)).await, expected, "{issuer} on {path}");
        }
    }
    assert_eq!(get("/t/acme/secret", token("acme")).await, 403, "the base forbid, through Envoy");
    // No context extension on `/base`: the token's own tenant decides.
    assert_eq!(get("/base", token("globex")).await, 200);
    assert_eq!(upstream.count(), 4, "exactly the allowed requests reached the upstream");
}

#[tokio::test]
async fn a_tenant_claim_cannot_move_a_token_of_a_tenants_issuer() {
    let root = tempfile::tempdir().unwrap();
    policy_dir(root.path());
    let mut config = config(root.path(), false, false);
    for tenant in config.tenants.tenants.values_mut() {
        tenant.jwt[0].claims.tenant = Some("org".into());
    }
    let server = TestServer::start(config).await;
    let mut client = server.authorizer().await;
    let answer =
        check_in(&mut client, "", &token_with("acme", json!({"org": "globex"})), "/t/globex/data").await;
    assert_eq!(answer.outcome(), Outcome::Unauthenticated, "{answer:?}");
    assert!(answer.reason.contains("another tenant than its issuer's"), "{}", answer.reason);
    let same = check_in(&mut client, "", &token_with("acme", json!({"org": "acme"})), "/t/acme/data").await;
    assert!(same.allowed, "{same:?}");
}

/// An introspection endpoint on 127.0.0.1:0 saying every token is active for `subject`;
/// returns its URL and how many tokens it was sent.
async fn introspection_server(
    subject: &'static str,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&calls);
    let app = axum::Router::new().route(
        "/introspect",
        axum::routing::post(move || {
            let counted = std::sync::Arc::clone(&counted);
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                axum::Json(json!({"active": true, "sub": subject, "exp": unix_now() + 600}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/introspect", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, calls)
}

#[tokio::test]
async fn a_tenants_introspection_endpoint_sees_only_its_own_requests_and_prefixes() {
    use std::sync::atomic::Ordering;
    let (acme_url, acme_calls) = introspection_server("acme-opaque").await;
    let (globex_url, globex_calls) = introspection_server("globex-opaque").await;
    let root = tempfile::tempdir().unwrap();
    policy_dir(root.path());
    let endpoint = |url: &str, prefixes: &str| {
        format!(
            "    introspection:\n      - endpoint: {url}\n        client_id: cedargate\n        client_secret: s\n        prefixes: [{prefixes}]\n"
        )
    };
    let text = format!(
        "policies:\n  dir: policies\n  watch: false\ntenants:\n  acme:\n{}  globex:\n{}  initech: {{}}\n",
        endpoint(&acme_url, ""),
        endpoint(&globex_url, "globex_"),
    );
    std::fs::write(root.path().join("cedargate.yaml"), text).unwrap();
    let server = TestServer::start(Config::load(&root.path().join("cedargate.yaml")).unwrap()).await;
    let mut client = server.authorizer().await;

    // No tenant named: acme's endpoint (no prefixes) never sees the token; globex's sees only
    // its prefix, and its answer is globex's.
    let unnamed = check_in(&mut client, "", "Bearer opaque-1", "/t/acme/data").await;
    assert_eq!(unnamed.outcome(), Outcome::Unauthenticated, "{unnamed:?}");
    assert_eq!(acme_calls.load(Ordering::SeqCst), 0, "acme's server never sees a token not meant for it");
    let prefixed = check_in(&mut client, "", "Bearer globex_1", "/t/globex/data").await;
    assert!(prefixed.allowed, "{prefixed:?}");
    assert_eq!(prefixed.auth_info.unwrap().tenant, "globex");
    // Named acme: acme's endpoint answers, and its identity is acme's.
    let named = check_in(&mut client, "acme", "Bearer opaque-2", "/t/acme/data").await;
    assert!(named.allowed, "{named:?}");
    let auth = named.auth_info.unwrap();
    assert_eq!((auth.subject.as_str(), auth.tenant.as_str()), ("acme-opaque", "acme"));
    assert_eq!(acme_calls.load(Ordering::SeqCst), 1);
    // Named initech: neither tenant's server is asked.
    let before = (acme_calls.load(Ordering::SeqCst), globex_calls.load(Ordering::SeqCst));
    let other = check_in(&mut client, "initech", "Bearer opaque-3", "/t/initech/data").await;
    assert_eq!(other.outcome(), Outcome::Unauthenticated, "{other:?}");
    assert_eq!((acme_calls.load(Ordering::SeqCst), globex_calls.load(Ordering::SeqCst)), before);
    // A globex-prefixed token under acme: acme's endpoint (no prefixes) takes it, as acme's.
    let under_acme = check_in(&mut client, "acme", "Bearer globex_2", "/t/acme/data").await;
    assert_eq!(under_acme.auth_info.unwrap().tenant, "acme");
}

#[tokio::test]
async fn a_tenants_decision_is_recorded_with_its_tenant_and_replayed_under_it() {
    let root = tempfile::tempdir().unwrap();
    let dir = policy_dir(root.path());
    let log = root.path().join("decisions.jsonl");
    let mut config = config(root.path(), false, false);
    config.decision_log.to = cedargate::telemetry::decision_log::Destination::File;
    config.decision_log.path = Some(log.clone());
    let server = TestServer::start(config.clone()).await;
    let mut client = server.authorizer().await;
    // A global credential under globex: only the record can say which set decided.
    let by_globex = check_in(&mut client, "globex", "Bearer global-token", "/t/globex/data").await;
    let by_base = check_in(&mut client, "", "Bearer global-token", "/base").await;
    assert!(by_globex.allowed && by_base.allowed, "{by_globex:?} {by_base:?}");
    // Refused for its tenant before any policy: no set decides it, then or in a replay.
    let undeclared = check_in(&mut client, "umbrella", "Bearer global-token", "/base").await;
    assert_eq!(undeclared.outcome(), Outcome::Forbidden, "{undeclared:?}");
    server.stop().await.unwrap();

    let records: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(records.len(), 3);
    assert_eq!(records[0]["tenant"], "globex", "the deciding tenant is recorded");
    assert!(records[1].get("tenant").is_none(), "the base set decided: no tenant");
    assert!(records[1].get("tenantRefused").is_none());
    assert_eq!(records[2]["tenantRefused"], true);

    let replay = |candidate: &Path| {
        let options = cedargate::authoring::ReplayOptions {
            dir: candidate.to_owned(),
            config: config.clone(),
            style: Default::default(),
        };
        cedargate::authoring::replay_path(options, &log).unwrap()
    };
    // The same policies change nothing: globex's record is decided by globex's set again, not
    // by the base alone (which would deny it).
    let same = replay(&dir);
    assert_eq!((same.redecided, same.changed, same.policies_differ), (2, 0, 0));
    assert_eq!((same.skipped.total, same.skipped.tenant_refused), (1, 1));
    // Without globex's permit, exactly globex's decision changes.
    write_tenant(&dir, "globex", "");
    let without = replay(&dir);
    assert_eq!(without.changed, 1);
    assert_eq!(without.changes[0].line, 1);
}
