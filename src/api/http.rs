//! The HTTP listener: login, refresh and logout as in the seed example, `/healthz` and
//! `/readyz`, `/policies/status` (behind the admin token), the gateway decision endpoints
//! (Envoy's HTTP ext_authz mode under `/ext_authz`, nginx `auth_request` and Traefik
//! `forwardAuth` at `/auth/verify`), RFC 9728 protected resource metadata, and the one mapping
//! of session errors and gateway answers onto HTTP.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use super::admin::{check_admin, AdminRefusal};
use super::json::policy_status_json;
use crate::config::{ForwardAuthConvention, ProtectedResourceConfig, WELL_KNOWN_RESOURCE};
use crate::gateway::{Gateway, GatewayAnswer, GatewayRequest, TrustedProxies, Wire};
use crate::model::ClientAddress;
use crate::model::{Secret, SecretDigest};
use crate::policy::PolicyReloader;
use crate::session::{SessionError, SessionManager, SessionTokens};
use crate::telemetry::trace;

/// Largest request body accepted, in bytes.
const MAX_BODY_BYTES: usize = 16 * 1024;

/// What the HTTP handlers share.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// Sessions.
    pub sessions: Arc<SessionManager>,
    /// False until serving and again once shutdown starts.
    pub ready: Arc<AtomicBool>,
    /// Gateway decisions.
    pub gateway: Arc<Gateway>,
    /// RFC 9728 metadata, if a protected resource is configured.
    pub protected_resource: Option<Arc<ProtectedResource>>,
    /// The tenants' own protected resources, each served only at its path-suffixed URL.
    pub tenant_resources: Vec<Arc<ProtectedResource>>,
    /// Largest gateway body accepted.
    pub max_gateway_body_bytes: usize,
    /// Whose `X-Forwarded-For` names the client.
    pub trusted_proxies: TrustedProxies,
    /// The headers `/auth/verify` reads the original request from.
    pub forward_auth: ForwardAuthConvention,
    /// The policies, for `/policies/status`.
    pub policies: Arc<PolicyReloader>,
    /// Digest of the admin token `/policies/status` needs (`None`: the admin API is off).
    pub admin_token: Option<SecretDigest>,
}

/// The RFC 9728 document and the path it is served at besides the root form.
#[derive(Debug)]
pub struct ProtectedResource {
    /// The resource's path (`/mcp`), "" for a resource at its origin's root.
    path: String,
    /// The metadata document.
    document: serde_json::Value,
}

impl ProtectedResource {
    /// The document for `config` (RFC 9728 §2).
    pub fn new(config: &ProtectedResourceConfig) -> Self {
        let mut document = json!({
            "resource": config.resource,
            "bearer_methods_supported": config.bearer_methods_supported,
        });
        if let serde_json::Value::Object(fields) = &mut document {
            if !config.authorization_servers.is_empty() {
                fields.insert("authorization_servers".to_owned(), json!(config.authorization_servers));
            }
            if !config.scopes_supported.is_empty() {
                fields.insert("scopes_supported".to_owned(), json!(config.scopes_supported));
            }
            if let Some(name) = &config.resource_name {
                fields.insert("resource_name".to_owned(), json!(name));
            }
        }
        Self { path: config.resource_path(), document }
    }
}

/// The server span of one request (OpenTelemetry HTTP conventions: `{method} {route}`), a
/// child of the caller's trace when it sends a W3C `traceparent`. Health checks and scrapes
/// are routed outside it.
async fn traced(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if !trace::enabled() {
        return next.run(request).await;
    }
    let route = request.extensions().get::<axum::extract::MatchedPath>().map_or("", |path| path.as_str());
    let method = request.method().as_str().to_owned();
    let span = trace::Span::server(
        format!("{method} {route}"),
        || {
            vec![
                trace::attribute("http.request.method", method.clone()),
                trace::attribute("http.route", route.to_owned()),
            ]
        },
        |name| request.headers().get(name).and_then(|value| value.to_str().ok()),
    );
    let response = span.run(next.run(request)).await;
    span.set("http.response.status_code", i64::from(response.status().as_u16()));
    response
}

/// Every metric in the Prometheus text format.
async fn prometheus_metrics() -> Response {
    let text =
        tokio::task::spawn_blocking(crate::telemetry::metrics::prometheus_text).await.unwrap_or_default();
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"))], text)
        .into_response()
}

/// The HTTP routes.
pub fn router(state: HttpState) -> Router {
    let gateway_body = DefaultBodyLimit::max(state.max_gateway_body_bytes.saturating_add(1));
    Router::new()
        .route("/auth/login", post(login))
        .route("/auth/refresh", post(refresh))
        .route("/auth/logout", post(logout))
        .route("/policies/status", get(policy_status))
        .route(WELL_KNOWN_RESOURCE, get(resource_metadata))
        .route(&format!("{WELL_KNOWN_RESOURCE}/{{*path}}"), get(resource_metadata_at))
        .route("/ext_authz", any(envoy_check).layer(gateway_body))
        .route("/ext_authz/", any(envoy_check).layer(gateway_body))
        .route("/ext_authz/{*path}", any(envoy_check).layer(gateway_body))
        .route("/auth/verify", any(forward_auth).layer(gateway_body))
        .layer(axum::middleware::from_fn(traced))
        .route("/metrics", get(prometheus_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(super::panic::http_layer())
        .with_state(state)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    username: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    refresh_token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogoutBody {
    token: Option<String>,
}

/// An error answer: `{ "error": code, "reason": text }`.
/// A gateway request refused before any decision: 400 with the body every such refusal has
/// (`gateway::invalid_request_json`).
fn refused_request(reason: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(crate::gateway::invalid_request_json(reason))).into_response()
}

fn error_response(status: StatusCode, code: &str, reason: &str) -> Response {
    (status, Json(json!({ "error": code, "reason": reason }))).into_response()
}

/// Parses a JSON body; on failure, the 400 answer naming the problem and position.
fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|error| {
        Box::new(error_response(StatusCode::BAD_REQUEST, "invalid_request", &body_error(&error)))
    })
}

/// What is wrong with a JSON body, never quoting it: serde's text for a mistyped value
/// holds the value, and a body here holds a password or a token.
fn body_error(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let what = match error.classify() {
        // "missing field `password`", "unknown field `x`, expected one of …": names only.
        serde_json::error::Category::Data
            if text.starts_with("missing field") || text.starts_with("unknown field") =>
        {
            text.split(" at line ").next().unwrap_or_default().to_owned()
        }
        serde_json::error::Category::Data => "a field has the wrong type: strings are expected".to_owned(),
        serde_json::error::Category::Syntax => "not valid JSON".to_owned(),
        serde_json::error::Category::Eof => "the JSON ends early".to_owned(),
        serde_json::error::Category::Io => "cannot be read".to_owned(),
    };
    format!("request body: {what} at line {} column {}", error.line(), error.column())
}

fn session_error_response(error: &SessionError) -> Response {
    if let SessionError::Internal(_) = error {
        tracing::error!("session operation failed: {error}");
    }
    let status =
        StatusCode::from_u16(error.refusal().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = error_response(status, error.code(), &error.public_message());
    if let Some(value) =
        error.retry_after_seconds().and_then(|after| HeaderValue::from_str(&after.to_string()).ok())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

fn tokens_response(tokens: &SessionTokens) -> Response {
    let expires_in = tokens.expires_at.saturating_sub(crate::model::unix_now()).max(0);
    let mut response = Json(json!({
        "token": tokens.access_token.expose(),
        "access_token": tokens.access_token.expose(),
        "token_type": "Bearer",
        "expires_in": expires_in,
        "expires_at": tokens.expires_at,
        "refresh_token": tokens.refresh_token.expose(),
        "refresh_expires_at": tokens.refresh_expires_at,
    }))
    .into_response();
    // RFC 6749 §5.1: token responses must not be cached.
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn login(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: LoginBody = match parse_body(&body) {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let client = client_address(&state, peer, &headers);
    match state.sessions.login(&body.username, &Secret::new(body.password), Some(client)).await {
        Ok(tokens) => tokens_response(&tokens),
        Err(error) => session_error_response(&error),
    }
}

async fn refresh(State(state): State<HttpState>, body: Bytes) -> Response {
    let body: RefreshBody = match parse_body(&body) {
        Ok(body) => body,
        Err(response) => return *response,
    };
    match state.sessions.refresh(&Secret::new(body.refresh_token)).await {
        Ok(tokens) => tokens_response(&tokens),
        Err(error) => session_error_response(&error),
    }
}

/// Revokes the session of the `token` in the body, or else of the bearer token in
/// `Authorization`.
async fn logout(State(state): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    let from_body = if body.is_empty() {
        None
    } else {
        match parse_body::<LogoutBody>(&body) {
            Ok(body) => body.token,
            Err(response) => return *response,
        }
    };
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| crate::credential::parse_authorization(value, MAX_BODY_BYTES).ok().flatten())
        .map(|credential| credential.secret.expose().to_owned());
    let Some(token) = from_body.or(from_header) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "send `token` in the body or a bearer token",
        );
    };
    match state.sessions.logout(&Secret::new(token)).await {
        Ok(revoked) => Json(json!({ "revoked": revoked })).into_response(),
        Err(error) => session_error_response(&error),
    }
}

async fn readyz(State(state): State<HttpState>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

/// The policy status, for people with curl; the same admin token as `cedargate.v1.Admin`
/// guards it, since the port also faces clients and a refused file's diagnostics quote it.
async fn policy_status(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    let presented = headers.get(header::AUTHORIZATION).and_then(|value| value.to_str().ok());
    if let Err(refusal) = check_admin(state.admin_token, presented) {
        return match refusal {
            AdminRefusal::Off => {
                error_response(StatusCode::FORBIDDEN, "admin_disabled", &refusal.to_string())
            }
            AdminRefusal::Unauthenticated => {
                let mut response =
                    error_response(StatusCode::UNAUTHORIZED, "unauthenticated", &refusal.to_string());
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                response
            }
        };
    }
    match policy_status_json(&state.policies.status()) {
        Ok(status) => {
            let mut response = Json(status).into_response();
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(error) => {
            tracing::error!("{error}");
            error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the status could not be written")
        }
    }
}

async fn resource_metadata(State(state): State<HttpState>) -> Response {
    match &state.protected_resource {
        Some(resource) => metadata_response(resource),
        None => error_response(StatusCode::NOT_FOUND, "not_found", "no protected resource is configured"),
    }
}

/// The path-suffixed form (RFC 9728 §3.1): only for a configured resource's own path, the
/// global one's or a tenant's (config validation keeps them apart).
async fn resource_metadata_at(State(state): State<HttpState>, Path(path): Path<String>) -> Response {
    let path = format!("/{}", path.trim_end_matches('/'));
    match state
        .protected_resource
        .iter()
        .chain(&state.tenant_resources)
        .find(|resource| resource.path == path)
    {
        Some(resource) => metadata_response(resource),
        None => error_response(StatusCode::NOT_FOUND, "not_found", "no protected resource at this path"),
    }
}

fn metadata_response(resource: &ProtectedResource) -> Response {
    let mut response = Json(&resource.document).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    response
}

/// The client behind `peer`, believing `X-Forwarded-For` only from a trusted proxy.
fn client_address(state: &HttpState, peer: SocketAddr, headers: &HeaderMap) -> ClientAddress {
    let forwarded_for = headers.get_all("x-forwarded-for").iter().filter_map(|value| value.to_str().ok());
    state.trusted_proxies.client(peer.ip(), forwarded_for)
}

/// The headers by which each proxy convention describes the original request: method, URI,
/// host.
fn convention_headers(convention: ForwardAuthConvention) -> [&'static str; 3] {
    match convention {
        ForwardAuthConvention::Original => ["x-original-method", "x-original-uri", "x-original-host"],
        ForwardAuthConvention::Forwarded => ["x-forwarded-method", "x-forwarded-uri", "x-forwarded-host"],
    }
}

/// A 400 when a header of a convention this request is not read by names another method, URI
/// or host than the one decided: one of the two is a client's, and the upstream may act on it.
fn disagreement(headers: &HeaderMap, others: [&str; 3], decided: [Option<&str>; 3]) -> Option<Response> {
    others.iter().zip(decided).find_map(|(name, decided)| {
        let values = headers.get_all(*name);
        let disagrees = values.iter().any(|value| {
            let agrees = match (value.to_str(), decided) {
                // Methods compare without case, as routes decide them.
                (Ok(value), Some(decided)) if name.ends_with("method") => value.eq_ignore_ascii_case(decided),
                (Ok(value), Some(decided)) => value == decided,
                _ => false,
            };
            !agrees
        });
        disagrees.then(|| {
            refused_request(&format!("the {name} header disagrees with the request decided: refused"))
        })
    })
}

/// Envoy's HTTP ext_authz mode: Envoy sends the original method, the original path after the
/// configured `path_prefix` (`/ext_authz`), the allowed headers and, if configured, the body.
async fn envoy_check(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = uri.path_and_query().map_or("/", |path| path.as_str());
    let original = target.strip_prefix("/ext_authz").unwrap_or(target);
    let path = if original.starts_with('/') { original.to_owned() } else { format!("/{original}") };
    let host = headers.get(header::HOST).and_then(|value| value.to_str().ok());
    for convention in [ForwardAuthConvention::Original, ForwardAuthConvention::Forwarded] {
        let decided = [Some(method.as_str()), Some(path.as_str()), host];
        if let Some(refused) = disagreement(&headers, convention_headers(convention), decided) {
            return refused;
        }
    }
    let mut request = gateway_request(method.as_str(), &path, &headers, body, Wire::EnvoyHttp);
    request.source_ip = client_address(&state, peer, &headers).ip().to_string();
    request.from_trusted_proxy = state.trusted_proxies.trusts(peer.ip());
    gateway_response(state.gateway.check(&request).await)
}

/// nginx `auth_request`, Traefik `forwardAuth` and Caddy `forward_auth`: the original request
/// is described by the headers of the configured convention (`gateway.forward_auth`), and
/// those of the other convention must agree with it when present.
async fn forward_auth(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let names = convention_headers(state.forward_auth);
    let [method_header, uri_header, host_header] = names;
    // Each description header once: with two, which one the proxy set is unknowable.
    if let Some(repeated) = names.iter().find(|name| headers.get_all(**name).iter().nth(1).is_some()) {
        return refused_request(&format!("the {repeated} header is sent more than once: refused"));
    }
    let read = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let (Some(original_method), Some(original_uri)) = (read(method_header), read(uri_header)) else {
        return refused_request(&format!(
            "/auth/verify reads the original request from the {method_header} and {uri_header} headers \
             (gateway.forward_auth.convention)"
        ));
    };
    let host = read(host_header).or_else(|| headers.get(header::HOST).and_then(|value| value.to_str().ok()));
    let other = match state.forward_auth {
        ForwardAuthConvention::Original => ForwardAuthConvention::Forwarded,
        ForwardAuthConvention::Forwarded => ForwardAuthConvention::Original,
    };
    let decided = [Some(original_method), Some(original_uri), host];
    if let Some(refused) = disagreement(&headers, convention_headers(other), decided) {
        return refused;
    }
    let mut request = gateway_request(original_method, original_uri, &headers, body, Wire::ForwardAuth);
    if let Some(host) = host {
        host.clone_into(&mut request.host);
    }
    request.source_ip = client_address(&state, peer, &headers).ip().to_string();
    request.from_trusted_proxy = state.trusted_proxies.trusts(peer.ip());
    gateway_response(state.gateway.check(&request).await)
}

fn gateway_request(method: &str, path: &str, headers: &HeaderMap, body: Bytes, wire: Wire) -> GatewayRequest {
    // A value that is not visible ASCII is kept (lossily), never dropped: an `Authorization`
    // header cedargate cannot read is an invalid credential, not an absent one.
    let pairs: Vec<(String, String)> = headers
        .iter()
        .map(|(name, value)| {
            (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned())
        })
        .collect();
    let host = headers.get(header::HOST).and_then(|value| value.to_str().ok()).unwrap_or_default();
    GatewayRequest {
        method: method.to_owned(),
        path: path.to_owned(),
        host: host.to_owned(),
        headers: pairs,
        body: body.to_vec(),
        wire,
        ..Default::default()
    }
}

/// Allow: 200 with the identity headers, and the headers Envoy must remove in
/// `x-envoy-auth-headers-to-remove`. Deny: the status, challenge and body.
fn gateway_response(answer: GatewayAnswer) -> Response {
    let (status, headers, body, remove) = match answer {
        GatewayAnswer::Allow { set_headers, remove_headers, .. } => {
            (StatusCode::OK, set_headers, String::new(), remove_headers)
        }
        GatewayAnswer::Deny { refusal, headers, body, .. } => (
            StatusCode::from_u16(refusal.http_status()).unwrap_or(StatusCode::FORBIDDEN),
            headers,
            body,
            Vec::new(),
        ),
    };
    let mut response = (status, body).into_response();
    let map = response.headers_mut();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            map.insert(name, value);
        }
    }
    if !remove.is_empty() {
        if let Ok(value) = HeaderValue::try_from(remove.join(", ")) {
            map.insert(HeaderName::from_static("x-envoy-auth-headers-to-remove"), value);
        }
    }
    response
}
