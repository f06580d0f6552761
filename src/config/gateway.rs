//! `gateway:`, `paths:` and `protected_resource:`: how requests a proxy forwards are read and
//! answered.

#[allow(clippy::wildcard_imports)]
use super::*;

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
    /// What cedargate does with an MCP exchange it sees whole, request and response (Envoy's
    /// ext_proc filter): trimming list answers and binding sessions to their callers.
    #[serde(default)]
    pub mcp_exchange: McpExchangeConfig,
}

/// The MCP exchange as Envoy's external processing filter shows it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpExchangeConfig {
    /// The largest list answer (`tools/list`, ...) trimmed, in bytes; a larger one is withheld
    /// (502, a JSON-RPC error). Keep it at most the proxy's buffer limit (Envoy's
    /// `per_connection_buffer_limit_bytes`, 1 MiB by default): an answer Envoy cannot buffer
    /// whole is withheld too. Default 1 MiB.
    #[serde(default = "default_max_list_bytes")]
    pub max_list_bytes: usize,
    /// Bind each `Mcp-Session-Id` to the caller it was issued to, and refuse it to anyone
    /// else. Default true.
    #[serde(default = "default_true")]
    pub bind_sessions: bool,
    /// How long a session binding lives after its last use. Default 24h.
    #[serde(default = "default_session_ttl")]
    pub session_ttl: HumanDuration,
    /// How many session bindings are kept; beyond it the least recently used are dropped (a
    /// dropped session gets 404, and its client starts a new one). Default 100,000.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// How many session bindings one caller holds; beyond it the caller's oldest is dropped.
    /// Default 100.
    #[serde(default = "default_max_sessions_per_caller")]
    pub max_sessions_per_caller: usize,
}

fn default_max_list_bytes() -> usize {
    1024 * 1024
}
fn default_true() -> bool {
    true
}
fn default_session_ttl() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(24 * 3600))
}
fn default_max_sessions() -> usize {
    100_000
}
fn default_max_sessions_per_caller() -> usize {
    100
}

impl Default for McpExchangeConfig {
    fn default() -> Self {
        Self {
            max_list_bytes: default_max_list_bytes(),
            bind_sessions: true,
            session_ttl: default_session_ttl(),
            max_sessions: default_max_sessions(),
            max_sessions_per_caller: default_max_sessions_per_caller(),
        }
    }
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
            mcp_exchange: McpExchangeConfig::default(),
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
/// Most `-` or `_` in an identity header name (its spellings number 2^n).
pub const MAX_HEADER_SEPARATORS: usize = 6;
