//! Typed, strict configuration: one YAML file, `${ENV_VAR}` substitution in secret fields,
//! unknown fields rejected, every error naming file, line and field. With no file, the
//! embedded demo (the auth-token-passthrough example) is served.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use crate::model::SecretDigest;

/// The configuration the binary serves when given no file.
pub const DEMO_YAML: &str = include_str!("../config/demo.yaml");
/// The name the demo config has in diagnostics.
pub const DEMO_NAME: &str = "<embedded>/config/demo.yaml";

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML did not fit the schema; serde_yaml names the field path, line and column.
    #[error("{file}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, with the field path.
        message: String,
    },
    /// Settings that parse but do not make sense together; one line per problem.
    #[error("{}", .problems.join("\n"))]
    Invalid {
        /// `file:line: field: problem` lines.
        problems: Vec<String>,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listen addresses and connection limits.
    #[serde(default)]
    pub listen: ListenConfig,
    /// `realm` of every `WWW-Authenticate` challenge.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Request size limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Where the Cedar schema and policies are.
    #[serde(default)]
    pub policies: PoliciesConfig,
    /// Route templates such as `/users/{id}`; a path matching one is the resource
    /// `Route::"<template>"`, with the parameters as tags.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Which unusual path forms are accepted (each refused by default).
    #[serde(default)]
    pub paths: PathsConfig,
    /// Credentials known in advance.
    #[serde(default)]
    pub credentials: CredentialsConfig,
    /// Login sessions.
    #[serde(default)]
    pub sessions: SessionsConfig,
    /// The operator API (`cedargate.v1.Admin`).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Gateway integration: Envoy ext_authz (gRPC and HTTP), nginx `auth_request` and
    /// Traefik `forwardAuth`.
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// The OAuth protected resource cedargate guards (RFC 9728): served as metadata on the
    /// HTTP port and named in every bearer challenge.
    pub protected_resource: Option<ProtectedResourceConfig>,
    /// The file this came from (set by the loader), to resolve relative paths and for errors.
    #[serde(skip)]
    pub source: String,
}

/// Listen addresses, and the limits on the connections they accept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// gRPC (Authorizer, Sessions, health, reflection). Default `127.0.0.1:50051`.
    #[serde(default = "default_grpc")]
    pub grpc: SocketAddr,
    /// HTTP (login, `/healthz`, `/readyz`). Default `127.0.0.1:8080`.
    #[serde(default = "default_http")]
    pub http: SocketAddr,
    /// How long shutdown waits for in-flight requests and idle connections before closing
    /// them. Default 10s.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: HumanDuration,
    /// How long a new connection may take to send a whole request head (HTTP) or the HTTP/2
    /// preface (gRPC), and a kept-alive HTTP connection to finish a head once its first byte
    /// arrived; then the connection is closed. Default 10s.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: HumanDuration,
    /// How long a kept-alive HTTP connection may wait for its next request before it is
    /// closed. Keep a proxy's upstream idle timeout below it. Default 120s.
    #[serde(default = "default_http_idle_timeout")]
    pub http_idle_timeout: HumanDuration,
    /// Longest time from a request's head to its answer, body upload included: an HTTP
    /// request then gets a 503, a gRPC call `CANCELLED` (a shorter `grpc-timeout` from the
    /// client wins). Default 15s.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: HumanDuration,
    /// Most HTTP connections open at once; further ones wait in the listen backlog until one
    /// closes. Default 512.
    #[serde(default = "default_http_max_connections")]
    pub http_max_connections: usize,
    /// Most gRPC connections open at once; further ones wait in the listen backlog until one
    /// closes. Default 256.
    #[serde(default = "default_grpc_max_connections")]
    pub grpc_max_connections: usize,
    /// Most concurrent streams (calls) on one gRPC connection, announced to the client in
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`; a client over it has to wait or open another
    /// connection. Default 200.
    #[serde(default = "default_grpc_max_concurrent_streams")]
    pub grpc_max_concurrent_streams: u32,
    /// How long a gRPC connection may be silent before cedargate sends an HTTP/2 PING.
    /// Default 30s.
    #[serde(default = "default_grpc_keepalive_interval")]
    pub grpc_keepalive_interval: HumanDuration,
    /// How long cedargate waits for the answer to that PING before it closes the connection
    /// as dead. Default 10s.
    #[serde(default = "default_grpc_keepalive_timeout")]
    pub grpc_keepalive_timeout: HumanDuration,
}

/// Request size limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Longest `Authorization` value, in bytes. Default 8192.
    #[serde(default = "default_max_authorization")]
    pub max_authorization_bytes: usize,
    /// Most targets in one `BatchCheck`. Default 1000.
    #[serde(default = "default_max_batch")]
    pub max_batch_targets: usize,
}

/// Where policies are.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoliciesConfig {
    /// Directory with `schema.cedarschema` and `*.cedar`, relative to the config file.
    /// Absent: the embedded demo policies.
    pub dir: Option<PathBuf>,
}

/// Credentials known in advance.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsConfig {
    /// `Authorization: Bearer <token>` tokens.
    #[serde(default)]
    pub static_tokens: Vec<KnownCredential>,
    /// `Authorization: ApiKey <key>` keys; only digests (`sha256`) are accepted.
    #[serde(default)]
    pub api_keys: Vec<KnownCredential>,
    /// Issuers whose JWT access tokens are verified locally.
    #[serde(default)]
    pub jwt: Vec<JwtIssuerConfig>,
    /// Introspection endpoints (RFC 7662) for opaque tokens, asked after the JWT issuers.
    #[serde(default)]
    pub introspection: Vec<IntrospectionConfig>,
    /// Bounds of the cache of verified (and refused) tokens.
    #[serde(default)]
    pub token_cache: TokenCacheConfig,
}

/// How cedargate authenticates to an introspection endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    /// HTTP Basic (the default).
    #[default]
    ClientSecretBasic,
    /// Secret in the form body.
    ClientSecretPost,
    /// A JWT assertion signed with `private_key_pem`.
    PrivateKeyJwt,
}

/// One introspection endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// The introspection endpoint URL.
    pub endpoint: Option<String>,
    /// Or: the issuer whose metadata (RFC 8414 / OpenID Connect Discovery) names the endpoint.
    pub issuer: Option<String>,
    /// cedargate's client id at the authorization server.
    pub client_id: String,
    /// Its secret (`client_secret_basic`, `client_secret_post`), usually `${ENV_VAR}`.
    pub client_secret: Option<EnvString>,
    /// Default `client_secret_basic`.
    #[serde(default)]
    pub auth_method: ClientAuthMethod,
    /// PEM private key for `private_key_jwt`, usually `${ENV_VAR}`.
    pub private_key_pem: Option<EnvString>,
    /// Its algorithm for `private_key_jwt` (default ES256).
    pub key_algorithm: Option<String>,
    /// Its `kid`, if the server needs one.
    pub key_id: Option<String>,
    /// Default `access_token`.
    #[serde(default = "default_token_type_hint")]
    pub token_type_hint: String,
    /// Only tokens with one of these prefixes are sent; default: all.
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// When set, an active token's `aud` must name one of these.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Default 2s.
    #[serde(default = "default_introspection_timeout")]
    pub timeout: HumanDuration,
    /// Claim names.
    #[serde(default)]
    pub claims: ClaimsConfig,
    /// Also send JWTs (three base64url segments with a JSON header) whose `iss` no
    /// `credentials.jwt` entry trusts, for a provider whose JWT access tokens are introspected.
    /// Default false: such a JWT is refused (401) and never sent to an introspection endpoint.
    #[serde(default)]
    pub accept_jwts: bool,
}

/// One trusted JWT issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuerConfig {
    /// The exact `iss` value.
    pub issuer: String,
    /// Accepted audiences: the resource identifiers (RFC 8707) of what cedargate protects.
    pub audiences: Vec<String>,
    /// Accepted algorithms. Default: RS256, PS256, ES256, ES384, EdDSA. HMAC and `none` are
    /// refused.
    pub algorithms: Option<Vec<String>>,
    /// Where the issuer's keys are published.
    pub jwks_url: Option<String>,
    /// Find `jwks_uri` in the issuer's metadata (RFC 8414 / OpenID Connect Discovery).
    #[serde(default)]
    pub discovery: bool,
    /// The issuer's keys, inline (a JWKS document).
    pub jwks: Option<serde_json::Value>,
    /// Clock skew allowed on `exp`/`nbf`, wherever the token's expiry is checked (verification,
    /// the credential chain, the token cache). Default 30s.
    #[serde(default = "default_leeway")]
    pub leeway: HumanDuration,
    /// Require RFC 9068 access tokens (`typ: at+jwt`, `sub`, `client_id`, `iat`, `jti`).
    #[serde(default)]
    pub strict_rfc9068: bool,
    /// Which claims carry the subject, client, roles and tenant.
    #[serde(default)]
    pub claims: ClaimsConfig,
    /// Least time from the start of the last JWKS fetch (of any kind) to one caused by an
    /// unknown `kid`: unknown `kid`s cost the issuer at most one fetch per interval, and a
    /// token signed with a newly published key is accepted from this long after publication
    /// on. Default 1s; at least 100ms.
    #[serde(default = "default_refetch_interval")]
    pub refetch_interval: HumanDuration,
    /// How often the JWKS is refreshed in the background. Default 5m.
    #[serde(default = "default_jwks_refresh")]
    pub refresh_interval: HumanDuration,
}

/// Claim names (dotted paths for nested claims).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimsConfig {
    /// Default `sub`.
    #[serde(default = "default_subject_claim")]
    pub subject: String,
    /// Default `client_id` (then `azp`).
    #[serde(default = "default_client_id_claim")]
    pub client_id: String,
    /// Default `roles`, e.g. `realm_access.roles`.
    #[serde(default = "default_roles_claim")]
    pub roles: String,
    /// None by default.
    pub tenant: Option<String>,
}

/// Bounds of the token cache.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCacheConfig {
    /// Longest a valid answer is reused (a revoked token stops working within it). Default 5m.
    #[serde(default = "default_cache_max_ttl")]
    pub max_ttl: HumanDuration,
    /// How long a refusal is reused. Default 10s.
    #[serde(default = "default_cache_negative_ttl")]
    pub negative_ttl: HumanDuration,
    /// Most cached tokens. Default 100000.
    #[serde(default = "default_cache_max_entries")]
    pub max_entries: usize,
}

/// One credential known in advance and the identity it stands for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnownCredential {
    /// SHA-256 of the credential, hex (`cedargate hash-key`).
    pub sha256: Option<Digest>,
    /// The credential itself, usually `${ENV_VAR}`; only for static tokens. Held in memory
    /// only as its digest.
    pub value: Option<EnvString>,
    /// Subject.
    pub subject: String,
    /// Roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Tenant.
    #[serde(default)]
    pub tenant: String,
    /// OAuth client id, if any.
    #[serde(default)]
    pub client_id: String,
    /// Expiry, RFC 3339 (`2027-01-01T00:00:00Z`).
    pub expires_at: Option<Timestamp>,
}

/// The operator API.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// SHA-256 of the bearer token Admin calls must carry (`cedargate hash-key`). Absent: the
    /// Admin service refuses every call.
    pub token_sha256: Option<Digest>,
}

/// How gateway requests are read and answered.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Where an API key may come from besides `Authorization: ApiKey <key>`.
    #[serde(default)]
    pub api_key: ApiKeySourcesConfig,
    /// Headers carrying the identity upstream on an allow; client-sent copies are always
    /// removed.
    #[serde(default)]
    pub identity_headers: IdentityHeadersConfig,
    /// Remove `Authorization` (and the API key header or query parameter) before the request
    /// goes upstream, so a token never reaches a service it was not issued for. Default false.
    #[serde(default)]
    pub strip_authorization: bool,
    /// The MCP endpoints: a POST to one of these paths is authorized by its body. Default:
    /// `/mcp` (JSON-RPC) and `/mcp/invoke` (`{"toolName", "args"}`).
    #[serde(default = "default_mcp_endpoints")]
    pub mcp: Vec<McpEndpointConfig>,
    /// Largest request body parsed, in bytes. Default 1 MiB.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// How `/auth/verify` learns the original request.
    #[serde(default)]
    pub forward_auth: ForwardAuthConfig,
    /// Proxies (CIDRs) whose `X-Forwarded-For` is believed: only when the TCP peer is in one
    /// of these does `X-Forwarded-For` set `source_ip` and the login rate-limit address.
    /// Default none.
    #[serde(default)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// What to do with a request that carries a method or URL override
    /// (`X-HTTP-Method-Override`, `X-Original-URL`, `?_method=`, …), which upstreams may
    /// honour as a different request than the one decided. Default `refuse`.
    #[serde(default)]
    pub override_headers: OverrideHeaders,
    /// Decide an MCP request on its `Mcp-Method`/`Mcp-Name` headers alone when the proxy does
    /// not forward the body (nginx). Safe only when the MCP server rejects headers that
    /// disagree with the body (MCP 2026-07-28 requires it). Default false: such requests are
    /// refused.
    #[serde(default)]
    pub mcp_trust_headers: bool,
}

/// How the forward-auth endpoint reads the original request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardAuthConfig {
    /// Which proxy convention `/auth/verify` serves. Default `original` (nginx).
    #[serde(default)]
    pub convention: ForwardAuthConvention,
}

/// The headers a proxy describes the original request with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardAuthConvention {
    /// `X-Original-Method`, `X-Original-URI`, `X-Original-Host` (nginx `auth_request`).
    #[default]
    Original,
    /// `X-Forwarded-Method`, `X-Forwarded-Uri`, `X-Forwarded-Host` (Traefik `forwardAuth`,
    /// Caddy `forward_auth`).
    Forwarded,
}

/// Method and URL override headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverrideHeaders {
    /// Answer 400: the upstream might act on the override.
    #[default]
    Refuse,
    /// Let them through (the upstream is known to ignore them).
    Allow,
}

/// Path forms refused by default, each because some upstream reads it as another path than
/// cedargate would decide. `//`, dot segments, encoded slashes and percent-encoded unreserved
/// characters are always refused.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathsConfig {
    /// Accept `;` (and `%3B`) in a segment. Tomcat and Spring drop `;parameters`, so
    /// `/user/..;/admin` reaches `/admin` there. Default false.
    #[serde(default)]
    pub allow_semicolons: bool,
    /// Accept `%25` (an encoded `%`), which an upstream that decodes twice reads as another
    /// escape. Default false.
    #[serde(default)]
    pub allow_encoded_percent: bool,
    /// Accept percent-encoded bytes outside ASCII (`%C3%A9`); overlong UTF-8 (`%C0%AE`) and
    /// full-width forms (`%EF%BC%8E`) are dots to some decoders. Default false.
    #[serde(default)]
    pub allow_non_ascii: bool,
    /// Accept a trailing `/` and decide the path with it (`Route::"/users/"`), as the
    /// upstream gets it. Default false: refused.
    #[serde(default)]
    pub allow_trailing_slash: bool,
}

impl PathsConfig {
    /// As the route module's rules.
    pub fn rules(&self) -> crate::route::PathRules {
        crate::route::PathRules {
            semicolons: self.allow_semicolons,
            encoded_percent: self.allow_encoded_percent,
            non_ascii: self.allow_non_ascii,
            trailing_slash: self.allow_trailing_slash,
        }
    }
}

/// Alternative places for an API key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySourcesConfig {
    /// A request header holding the bare key, such as `x-api-key`.
    pub header: Option<String>,
    /// A cookie holding the bare key.
    pub cookie: Option<String>,
    /// A query parameter holding the bare key.
    pub query: Option<String>,
}

/// Upstream identity header names; set one to `""` to leave it out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityHeadersConfig {
    /// Default `x-auth-subject`.
    #[serde(default = "default_subject_header")]
    pub subject: String,
    /// Default `x-auth-client-id`.
    #[serde(default = "default_client_id_header")]
    pub client_id: String,
    /// Space-separated scopes. Default `x-auth-scopes`.
    #[serde(default = "default_scopes_header")]
    pub scopes: String,
    /// Comma-separated roles. Default `x-auth-roles`.
    #[serde(default = "default_roles_header")]
    pub roles: String,
    /// Default `x-auth-tenant`.
    #[serde(default = "default_tenant_header")]
    pub tenant: String,
}

/// One MCP endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpEndpointConfig {
    /// The exact request path, such as `/mcp`.
    pub path: String,
    /// The body's shape. Default `jsonrpc`.
    #[serde(default)]
    pub shape: McpShape,
    /// The MCP server's name in policies (`Server::"<name>"`); "" if it is the only one.
    #[serde(default)]
    pub server: String,
}

/// How an MCP endpoint's body is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum McpShape {
    /// MCP Streamable HTTP: a JSON-RPC 2.0 message.
    #[default]
    Jsonrpc,
    /// The auth-token-passthrough example's `{"toolName": "...", "args": {...}}`.
    Invoke,
}

/// RFC 9728 protected resource metadata.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtectedResourceConfig {
    /// The resource identifier, an `https` URL (`http` for local tests), such as
    /// `https://mcp.example.com/mcp`.
    pub resource: String,
    /// Issuer URLs of the authorization servers that issue tokens for it, exactly as their
    /// metadata names them.
    #[serde(default)]
    pub authorization_servers: Vec<String>,
    /// Scopes a client may request.
    #[serde(default)]
    pub scopes_supported: Vec<String>,
    /// How the token may be sent. Default `[header]`.
    #[serde(default = "default_bearer_methods")]
    pub bearer_methods_supported: Vec<String>,
    /// A human-readable name.
    pub resource_name: Option<String>,
    /// Where clients fetch the metadata. Default: the resource's origin +
    /// `/.well-known/oauth-protected-resource` + the resource's path (RFC 9728 §3.1).
    pub metadata_url: Option<url::Url>,
}

impl ProtectedResourceConfig {
    /// The metadata URL named in challenges.
    pub fn metadata_url(&self) -> String {
        if let Some(url) = &self.metadata_url {
            return url.to_string();
        }
        let Ok(mut url) = url::Url::parse(&self.resource) else {
            // Unreachable for a validated config.
            return String::new();
        };
        let path = self.resource_path();
        url.set_path(&format!("{WELL_KNOWN_RESOURCE}{path}"));
        url.set_query(None);
        url.set_fragment(None);
        url.to_string()
    }

    /// The resource's path without a trailing `/` ("" for a resource at its origin's root).
    pub fn resource_path(&self) -> String {
        url::Url::parse(&self.resource)
            .map(|url| url.path().trim_end_matches('/').to_owned())
            .unwrap_or_default()
    }
}

/// The RFC 9728 well-known path.
pub const WELL_KNOWN_RESOURCE: &str = "/.well-known/oauth-protected-resource";

/// Login sessions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsConfig {
    /// Access token lifetime, e.g. `1h`. Default 1 hour.
    #[serde(default = "default_access_ttl")]
    pub access_ttl: HumanDuration,
    /// Refresh token lifetime. Default 24 hours.
    #[serde(default = "default_refresh_ttl")]
    pub refresh_ttl: HumanDuration,
    /// A refresh token presented again within this long after its rotation is refused without
    /// revoking the session (a client's concurrent or retried refresh, as Auth0's reuse
    /// interval and Okta's grace period allow); later, reuse revokes it. Default 2s.
    #[serde(default = "default_refresh_reuse_grace")]
    pub refresh_reuse_grace: HumanDuration,
    /// Users who may log in.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// Brute-force limits.
    #[serde(default)]
    pub login_rate_limit: LoginRateLimitConfig,
}

/// A user who may log in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Login name.
    pub username: String,
    /// argon2id PHC string (`cedargate hash-password`), or `${ENV_VAR}`.
    pub password_hash: PasswordHashString,
    /// Subject of the session's identity; default: the username.
    pub subject: Option<String>,
    /// Roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Tenant.
    #[serde(default)]
    pub tenant: String,
}

/// Failed-login limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRateLimitConfig {
    /// Per username. Default 5 failures per 15 minutes.
    #[serde(default = "default_per_username")]
    pub per_username: LimitConfig,
    /// Per client address. Default 20 failures per 15 minutes.
    #[serde(default = "default_per_address")]
    pub per_address: LimitConfig,
}

/// A failure budget.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Failures allowed per window.
    pub max_failures: u32,
    /// Window length, e.g. `15m`.
    pub window: HumanDuration,
}

// Defaults, in one place.
fn default_mcp_endpoints() -> Vec<McpEndpointConfig> {
    vec![
        McpEndpointConfig { path: "/mcp".into(), shape: McpShape::Jsonrpc, server: String::new() },
        McpEndpointConfig { path: "/mcp/invoke".into(), shape: McpShape::Invoke, server: String::new() },
    ]
}
fn default_max_body() -> usize {
    1024 * 1024
}
fn default_subject_header() -> String {
    "x-auth-subject".into()
}
fn default_client_id_header() -> String {
    "x-auth-client-id".into()
}
fn default_scopes_header() -> String {
    "x-auth-scopes".into()
}
fn default_roles_header() -> String {
    "x-auth-roles".into()
}
fn default_tenant_header() -> String {
    "x-auth-tenant".into()
}
fn default_bearer_methods() -> Vec<String> {
    vec!["header".into()]
}
// Defaults a component owns come from the component's own `Default`, so each lives once.
fn default_realm() -> String {
    crate::engine::EngineSettings::default().realm
}
fn default_grpc() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50051))
}
fn default_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_shutdown_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
// A proxy sends a request head in one write and a client's fits in a few packets; 10 s is
// ample for either and bounds how long a silent or trickling connection holds a slot.
fn default_header_read_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
// Above the upstream keep-alive of nginx (60 s) and of Go clients such as Traefik (90 s), so
// the proxy, not cedargate, closes an idle pooled connection and never races a new request.
fn default_http_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(120))
}
// Decisions take milliseconds and a remote credential backend is cut off at 5 s; a request
// still unanswered after 15 s is stuck (or its body is trickling in) and only holds resources.
fn default_request_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(15))
}
// Both caps together stay well below the 1024 open files a process gets by default (systemd's
// and most shells' soft `ulimit -n`), leaving room for outbound connections and the runtime.
// HTTP/1 needs a connection per concurrent request; gRPC multiplexes calls on each one.
fn default_http_max_connections() -> usize {
    512
}
fn default_grpc_max_connections() -> usize {
    256
}
// hyper's own default, which tonic replaces with "unlimited" unless told otherwise.
fn default_grpc_max_concurrent_streams() -> u32 {
    200
}
// Finds a peer that vanished without a FIN within 40 s and keeps NAT and load-balancer idle
// timers from dropping a quiet connection.
fn default_grpc_keepalive_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_grpc_keepalive_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_token_type_hint() -> String {
    "access_token".to_owned()
}
fn default_introspection_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}
fn default_leeway() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_refetch_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
fn default_jwks_refresh() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}
fn default_subject_claim() -> String {
    crate::credential::ClaimMapping::default().subject
}
fn default_client_id_claim() -> String {
    crate::credential::ClaimMapping::default().client_id
}
fn default_roles_claim() -> String {
    crate::credential::ClaimMapping::default().roles
}
fn default_cache_max_ttl() -> HumanDuration {
    HumanDuration(crate::credential::CacheSettings::default().max_ttl)
}
fn default_cache_negative_ttl() -> HumanDuration {
    HumanDuration(crate::credential::CacheSettings::default().negative_ttl)
}
fn default_cache_max_entries() -> usize {
    crate::credential::CacheSettings::default().max_entries
}
fn default_max_authorization() -> usize {
    crate::engine::EngineSettings::default().max_authorization_bytes
}
fn default_max_batch() -> usize {
    crate::engine::EngineSettings::default().max_batch_targets
}
fn default_access_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(3600))
}
fn default_refresh_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(24 * 3600))
}
fn default_refresh_reuse_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}
fn default_per_username() -> LimitConfig {
    LimitConfig { max_failures: 5, window: HumanDuration(Duration::from_secs(15 * 60)) }
}
fn default_per_address() -> LimitConfig {
    LimitConfig { max_failures: 20, window: HumanDuration(Duration::from_secs(15 * 60)) }
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            grpc: default_grpc(),
            http: default_http(),
            shutdown_grace: default_shutdown_grace(),
            header_read_timeout: default_header_read_timeout(),
            http_idle_timeout: default_http_idle_timeout(),
            request_timeout: default_request_timeout(),
            http_max_connections: default_http_max_connections(),
            grpc_max_connections: default_grpc_max_connections(),
            grpc_max_concurrent_streams: default_grpc_max_concurrent_streams(),
            grpc_keepalive_interval: default_grpc_keepalive_interval(),
            grpc_keepalive_timeout: default_grpc_keepalive_timeout(),
        }
    }
}
impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            api_key: ApiKeySourcesConfig::default(),
            identity_headers: IdentityHeadersConfig::default(),
            strip_authorization: false,
            mcp: default_mcp_endpoints(),
            max_body_bytes: default_max_body(),
            forward_auth: ForwardAuthConfig::default(),
            trusted_proxies: Vec::new(),
            override_headers: OverrideHeaders::default(),
            mcp_trust_headers: false,
        }
    }
}
impl Default for IdentityHeadersConfig {
    fn default() -> Self {
        Self {
            subject: default_subject_header(),
            client_id: default_client_id_header(),
            scopes: default_scopes_header(),
            roles: default_roles_header(),
            tenant: default_tenant_header(),
        }
    }
}
impl Default for LimitsConfig {
    fn default() -> Self {
        Self { max_authorization_bytes: default_max_authorization(), max_batch_targets: default_max_batch() }
    }
}
impl Default for ClaimsConfig {
    fn default() -> Self {
        Self {
            subject: default_subject_claim(),
            client_id: default_client_id_claim(),
            roles: default_roles_claim(),
            tenant: None,
        }
    }
}
impl Default for TokenCacheConfig {
    fn default() -> Self {
        Self {
            max_ttl: default_cache_max_ttl(),
            negative_ttl: default_cache_negative_ttl(),
            max_entries: default_cache_max_entries(),
        }
    }
}
impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            access_ttl: default_access_ttl(),
            refresh_ttl: default_refresh_ttl(),
            refresh_reuse_grace: default_refresh_reuse_grace(),
            users: Vec::new(),
            login_rate_limit: LoginRateLimitConfig::default(),
        }
    }
}
impl Default for LoginRateLimitConfig {
    fn default() -> Self {
        Self { per_username: default_per_username(), per_address: default_per_address() }
    }
}

/// A string in which `${NAME}` is replaced by the environment variable `NAME` (`$${` is a
/// literal `${`). Its `Debug` is redacted, since such fields hold secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct EnvString(pub String);

impl fmt::Debug for EnvString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnvString(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for EnvString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        expand_env(&raw, |name| std::env::var(name).ok()).map(EnvString).map_err(D::Error::custom)
    }
}

/// Expands `${NAME}` with `lookup`.
///
/// Fails on an unset variable or an unterminated `${`.
pub fn expand_env(raw: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(escaped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = escaped;
        } else if let Some(body) = after.strip_prefix("${") {
            let end = body.find('}').ok_or_else(|| "unterminated `${` in value".to_owned())?;
            let name = &body[..end];
            if name.is_empty() || !name.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_') {
                return Err(format!("`${{{name}}}` is not a valid environment variable reference"));
            }
            let value = lookup(name).ok_or_else(|| format!("environment variable `{name}` is not set"))?;
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A SHA-256 digest in hex (env-expanded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest(pub SecretDigest);

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = EnvString::deserialize(deserializer)?;
        SecretDigest::from_hex(&text.0).map(Digest).map_err(D::Error::custom)
    }
}

/// An argon2id PHC string (env-expanded), checked when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordHashString(pub String);

impl<'de> Deserialize<'de> for PasswordHashString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = EnvString::deserialize(deserializer)?;
        crate::session::check_password_hash(&text.0).map_err(D::Error::custom)?;
        Ok(Self(text.0))
    }
}

/// A duration written as `90s`, `15m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let duration = humantime::parse_duration(&text)
            .map_err(|error| D::Error::custom(format!("`{text}` is not a duration like `15m`: {error}")))?;
        if duration.is_zero() {
            return Err(D::Error::custom("duration must be greater than zero"));
        }
        Ok(Self(duration))
    }
}

/// An RFC 3339 instant, as unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub i64);

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let instant = humantime::parse_rfc3339_weak(&text)
            .map_err(|error| D::Error::custom(format!("`{text}` is not an RFC 3339 time: {error}")))?;
        let seconds = instant
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| D::Error::custom("time is before 1970"))?
            .as_secs();
        Ok(Self(i64::try_from(seconds).unwrap_or(i64::MAX)))
    }
}

impl Config {
    /// Reads and validates a config file.
    ///
    /// Fails when the file cannot be read, does not parse, or holds invalid settings; every
    /// message names the file, the line and the field.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// The embedded demo.
    ///
    /// Fails only if the embedded file is broken (a test guards it).
    pub fn demo() -> Result<Self, ConfigError> {
        Self::parse(DEMO_NAME, DEMO_YAML)
    }

    /// Parses and validates YAML text; `file` names it in errors.
    ///
    /// Fails as [`Config::load`] does.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        let deserializer = serde_yaml::Deserializer::from_str(text);
        let mut config: Config = serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let path = error.path().to_string();
            let inner = error.into_inner();
            let (line, column) =
                inner.location().map_or((1, 1), |location| (location.line(), location.column()));
            // serde_yaml's message repeats a shorter path and the position; keep the reason.
            let message = inner.to_string();
            let message = message.rsplit_once(" at line ").map_or(message.as_str(), |(message, _)| message);
            let reason = match message.split_once(": ") {
                Some((prefix, rest)) if path.starts_with(prefix) => rest,
                _ => message,
            };
            // A value rejected by its own type is reported at the start of its mapping; point
            // at the key itself.
            let key = path.rsplit('.').next().unwrap_or_default();
            let (line, column) = key_position(text, line, key).unwrap_or((line, column));
            ConfigError::Parse { file: file.to_owned(), line, column, message: format!("{path}: {reason}") }
        })?;
        config.source = file.to_owned();
        let problems = config.problems(text);
        if !problems.is_empty() {
            return Err(ConfigError::Invalid { problems });
        }
        Ok(config)
    }

    /// The policy directory, resolved against the config file's directory.
    pub fn policy_dir(&self) -> Option<PathBuf> {
        let dir = self.policies.dir.as_ref()?;
        if dir.is_absolute() || self.source.starts_with('<') {
            return Some(dir.clone());
        }
        let base = Path::new(&self.source).parent().unwrap_or_else(|| Path::new("."));
        Some(base.join(dir))
    }

    /// Cross-field checks; each problem is `file:line: field: what`.
    fn problems(&self, text: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let mut report = |needle: &str, field: String, problem: String| {
            let line = line_of(text, needle);
            problems.push(format!("{}:{line}: {field}: {problem}", self.source));
        };
        for (field, value) in [
            ("http_max_connections", self.listen.http_max_connections),
            ("grpc_max_connections", self.listen.grpc_max_connections),
            ("grpc_max_concurrent_streams", self.listen.grpc_max_concurrent_streams as usize),
        ] {
            if value == 0 {
                report(field, format!("listen.{field}"), "must be at least 1".into());
            }
        }
        if self.limits.max_authorization_bytes < 16 {
            report(
                "max_authorization_bytes",
                "limits.max_authorization_bytes".into(),
                "must be at least 16".into(),
            );
        }
        if self.limits.max_batch_targets == 0 {
            report("max_batch_targets", "limits.max_batch_targets".into(), "must be at least 1".into());
        }
        if let Err(error) =
            crate::route::RouteTable::new(self.routes.iter().map(String::as_str), self.paths.rules())
        {
            report("routes", "routes".into(), error);
        }
        let mut seen = std::collections::HashSet::new();
        for (list, entries) in
            [("static_tokens", &self.credentials.static_tokens), ("api_keys", &self.credentials.api_keys)]
        {
            for (index, entry) in entries.iter().enumerate() {
                let field = format!("credentials.{list}[{index}]");
                let needle = format!("subject: {}", entry.subject);
                match (&entry.sha256, &entry.value) {
                    (Some(_), Some(_)) => report(&needle, field.clone(), "set `sha256` or `value`, not both".into()),
                    (None, None) => report(&needle, field.clone(), "`sha256` is required".into()),
                    (None, Some(_)) if list == "api_keys" => report(
                        &needle,
                        format!("{field}.value"),
                        "API keys are stored only as SHA-256 digests: use `sha256` (see `cedargate hash-key`)"
                            .into(),
                    ),
                    _ => {}
                }
                if let Some(digest) = entry.digest() {
                    if !seen.insert(digest) {
                        report(&needle, field.clone(), "the same credential is configured twice".into());
                    }
                }
                if entry.subject.trim().is_empty() {
                    report(&needle, format!("{field}.subject"), "must not be empty".into());
                }
                check_names(&entry.roles, &format!("{field}.roles"), &needle, &mut report);
            }
        }
        let mut issuers = std::collections::HashSet::new();
        for (index, issuer) in self.credentials.jwt.iter().enumerate() {
            let field = format!("credentials.jwt[{index}]");
            let needle = format!("issuer: {}", issuer.issuer);
            if !issuers.insert(issuer.issuer.as_str()) {
                report(&needle, format!("{field}.issuer"), "the same issuer is configured twice".into());
            }
            if issuer.audiences.is_empty() {
                report(&needle, format!("{field}.audiences"), "name at least one audience".into());
            }
            let sources = usize::from(issuer.jwks_url.is_some())
                + usize::from(issuer.jwks.is_some())
                + usize::from(issuer.discovery);
            if sources != 1 {
                report(
                    &needle,
                    field.clone(),
                    "set exactly one of `jwks_url`, `jwks` and `discovery: true`".into(),
                );
            }
            if let Err(error) = issuer.key_source() {
                report(&needle, format!("{field}.jwks"), error);
            }
            if let Err(error) = issuer.algorithm_list() {
                report(&needle, format!("{field}.algorithms"), error);
            }
            if issuer.refetch_interval.0 < MIN_REFETCH_INTERVAL {
                report(
                    &needle,
                    format!("{field}.refetch_interval"),
                    "must be at least 100ms: each unknown `kid` would fetch the issuer's keys".into(),
                );
            }
        }
        for (index, endpoint) in self.credentials.introspection.iter().enumerate() {
            let field = format!("credentials.introspection[{index}]");
            let needle = format!("client_id: {}", endpoint.client_id);
            if let Err(error) = endpoint.client_auth() {
                report(&needle, field.clone(), error);
            }
            if endpoint.endpoint.is_some() == endpoint.issuer.is_some() {
                report(&needle, field, "set exactly one of `endpoint` and `issuer`".into());
            }
        }
        let mut usernames = std::collections::HashSet::new();
        for (index, user) in self.sessions.users.iter().enumerate() {
            let needle = format!("username: {}", user.username);
            let field = format!("sessions.users[{index}]");
            if user.username.is_empty() || user.username.len() > crate::session::MAX_USERNAME_BYTES {
                report(&needle, format!("{field}.username"), "must be 1 to 256 bytes".into());
            }
            if !usernames.insert(user.username.as_str()) {
                report(
                    &needle,
                    format!("{field}.username"),
                    format!("`{}` is configured twice", user.username),
                );
            }
            check_names(&user.roles, &format!("{field}.roles"), &needle, &mut report);
        }
        let identity = &self.gateway.identity_headers;
        for (name, value) in [
            ("subject", &identity.subject),
            ("client_id", &identity.client_id),
            ("scopes", &identity.scopes),
            ("roles", &identity.roles),
            ("tenant", &identity.tenant),
        ] {
            if !value.is_empty() && !is_header_name(value) {
                report(
                    &format!("{name}:"),
                    format!("gateway.identity_headers.{name}"),
                    format!("`{value}` is not an HTTP header name"),
                );
            }
            // Every `-`/`_` spelling of the name is removed from requests; keep that list short.
            if value.bytes().filter(|byte| matches!(byte, b'-' | b'_')).count() > MAX_HEADER_SEPARATORS {
                report(
                    &format!("{name}:"),
                    format!("gateway.identity_headers.{name}"),
                    format!("`{value}` has more than {MAX_HEADER_SEPARATORS} `-` or `_`"),
                );
            }
        }
        for (name, value) in
            [("header", &self.gateway.api_key.header), ("cookie", &self.gateway.api_key.cookie)]
        {
            if let Some(value) = value.as_deref().filter(|value| !is_header_name(value)) {
                report(
                    &format!("{name}:"),
                    format!("gateway.api_key.{name}"),
                    format!("`{value}` is not a valid name"),
                );
            }
        }
        for (index, endpoint) in self.gateway.mcp.iter().enumerate() {
            let canonical = crate::route::normalize_path(&endpoint.path, crate::route::PathRules::default());
            if canonical.ok().as_deref() != Some(endpoint.path.as_str()) {
                report(
                    &format!("path: {}", endpoint.path),
                    format!("gateway.mcp[{index}].path"),
                    "must be a normalized path such as `/mcp`, without a query".into(),
                );
            }
        }
        if let Some(resource) = &self.protected_resource {
            let parsed = url::Url::parse(&resource.resource);
            if !parsed.is_ok_and(|url| matches!(url.scheme(), "https" | "http") && url.fragment().is_none()) {
                report(
                    "resource:",
                    "protected_resource.resource".into(),
                    "must be an https URL without a fragment (RFC 9728 §1.2)".into(),
                );
            }
            for (index, server) in resource.authorization_servers.iter().enumerate() {
                if url::Url::parse(server).is_err() {
                    report(
                        server,
                        format!("protected_resource.authorization_servers[{index}]"),
                        "must be an issuer URL".into(),
                    );
                }
            }
        }
        if self.sessions.refresh_ttl.0 < self.sessions.access_ttl.0 {
            report(
                "refresh_ttl",
                "sessions.refresh_ttl".into(),
                "must not be shorter than access_ttl".into(),
            );
        }
        problems
    }
}

impl JwtIssuerConfig {
    /// The keys' source.
    ///
    /// Fails when an inline JWKS is not a JWKS document, or neither source is set.
    pub fn key_source(&self) -> Result<crate::credential::KeySource, String> {
        match (&self.jwks_url, &self.jwks) {
            (Some(url), _) => Ok(crate::credential::KeySource::Url(url.clone())),
            (None, Some(jwks)) => serde_json::from_value(jwks.clone())
                .map(crate::credential::KeySource::Inline)
                .map_err(|error| format!("not a JWKS document: {error}")),
            (None, None) if self.discovery => Ok(crate::credential::KeySource::Discovery),
            (None, None) => Err("no keys configured".to_owned()),
        }
    }

    /// The accepted algorithms.
    ///
    /// Fails on an unknown or symmetric algorithm name.
    pub fn algorithm_list(&self) -> Result<Vec<jsonwebtoken::Algorithm>, String> {
        match &self.algorithms {
            None => Ok(crate::credential::DEFAULT_ALGORITHMS.to_vec()),
            Some(names) => names.iter().map(|name| crate::credential::parse_algorithm(name)).collect(),
        }
    }
}

impl ClaimsConfig {
    /// As the credential module's mapping.
    pub fn mapping(&self) -> crate::credential::ClaimMapping {
        crate::credential::ClaimMapping {
            subject: self.subject.clone(),
            client_id: self.client_id.clone(),
            roles: self.roles.clone(),
            tenant: self.tenant.clone(),
        }
    }
}

impl IntrospectionConfig {
    /// Where the endpoint is.
    ///
    /// Fails when neither `endpoint` nor `issuer` is set.
    pub fn location(&self) -> Result<crate::credential::Endpoint, String> {
        match (&self.endpoint, &self.issuer) {
            (Some(url), _) => Ok(crate::credential::Endpoint::Url(url.clone())),
            (None, Some(issuer)) => Ok(crate::credential::Endpoint::Discover(issuer.clone())),
            (None, None) => Err("set `endpoint` or `issuer`".to_owned()),
        }
    }

    /// The client authentication these settings describe.
    ///
    /// Fails when the method's secret or key is missing or unusable.
    pub fn client_auth(&self) -> Result<crate::credential::ClientAuth, String> {
        use crate::credential::ClientAuth;
        let client_id = self.client_id.clone();
        let secret = || {
            self.client_secret
                .as_ref()
                .map(|secret| crate::model::Secret::new(secret.0.clone()))
                .ok_or_else(|| "`client_secret` is required for this auth_method".to_owned())
        };
        match self.auth_method {
            ClientAuthMethod::ClientSecretBasic => {
                Ok(ClientAuth::SecretBasic { client_id, secret: secret()? })
            }
            ClientAuthMethod::ClientSecretPost => Ok(ClientAuth::SecretPost { client_id, secret: secret()? }),
            ClientAuthMethod::PrivateKeyJwt => {
                let pem = self
                    .private_key_pem
                    .as_ref()
                    .ok_or("`private_key_pem` is required for private_key_jwt")?;
                let algorithm =
                    crate::credential::parse_algorithm(self.key_algorithm.as_deref().unwrap_or("ES256"))?;
                let key = match algorithm {
                    jsonwebtoken::Algorithm::ES256 | jsonwebtoken::Algorithm::ES384 => {
                        jsonwebtoken::EncodingKey::from_ec_pem(pem.0.as_bytes())
                    }
                    jsonwebtoken::Algorithm::EdDSA => {
                        jsonwebtoken::EncodingKey::from_ed_pem(pem.0.as_bytes())
                    }
                    _ => jsonwebtoken::EncodingKey::from_rsa_pem(pem.0.as_bytes()),
                }
                .map_err(|error| format!("`private_key_pem` is not a usable key: {error}"))?;
                Ok(ClientAuth::PrivateKeyJwt { client_id, key, algorithm, kid: self.key_id.clone() })
            }
        }
    }
}

impl KnownCredential {
    /// The digest of the credential, from `sha256` or from `value`.
    pub fn digest(&self) -> Option<SecretDigest> {
        self.sha256
            .map(|digest| digest.0)
            .or_else(|| self.value.as_ref().map(|value| SecretDigest::of(value.0.as_bytes())))
    }
}

/// Most `-` or `_` in an identity header name (its spellings number 2^n).
pub const MAX_HEADER_SEPARATORS: usize = 6;

/// The shortest `credentials.jwt[].refetch_interval`: below it, a stream of unknown `kid`s
/// could make cedargate fetch an issuer's keys many times a second.
pub const MIN_REFETCH_INTERVAL: Duration = Duration::from_millis(100);

/// An RFC 9110 token, which header, cookie and query parameter names here must be.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte))
}

fn check_names(names: &[String], field: &str, needle: &str, report: &mut impl FnMut(&str, String, String)) {
    for (index, name) in names.iter().enumerate() {
        if name.trim().is_empty() || name.chars().any(char::is_control) {
            report(needle, format!("{field}[{index}]"), "must be a non-empty name".into());
        }
    }
}

/// The line and column of `key:` at or after 1-based `from_line`, if the key is a plain name.
fn key_position(text: &str, from_line: usize, key: &str) -> Option<(usize, usize)> {
    if key.is_empty() || !key.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_') {
        return None;
    }
    let pattern = format!("{key}:");
    text.lines().enumerate().skip(from_line.saturating_sub(1)).find_map(|(index, line)| {
        let trimmed = line.trim_start().trim_start_matches("- ");
        trimmed.starts_with(&pattern).then(|| (index + 1, line.len() - trimmed.len() + 1))
    })
}

/// The 1-based line of the first occurrence of `needle`, or 1.
fn line_of(text: &str, needle: &str) -> usize {
    text.find(needle).map_or(1, |offset| text[..offset].matches('\n').count() + 1)
}

#[cfg(test)]
mod tests;
