//! Plain data that flows through the decision pipeline: the parsed credential, the normalized
//! identity, what is asked for, and the decision. Nothing here knows tonic, HTTP or Cedar.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The SHA-256 digest of a secret. Secrets are looked up and stored only by digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SecretDigest([u8; 32]);

impl SecretDigest {
    /// Digests `secret` with SHA-256.
    pub fn of(secret: &[u8]) -> Self {
        Self(Sha256::digest(secret).into())
    }

    /// Parses 64 hex characters.
    ///
    /// Fails when the text is not exactly 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes)
            .map_err(|_| "expected 64 hex characters (a SHA-256 digest)".to_owned())?;
        Ok(Self(bytes))
    }

    /// The digest no secret has (all zero bits): stands for "no one" where a digest is
    /// expected.
    pub const NONE: Self = Self([0; 32]);

    /// Compares two digests in constant time.
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// The short fingerprint that logs, metrics and responses carry instead of the secret:
    /// the first 8 bytes of the digest in hex.
    pub fn fingerprint(&self) -> String {
        hex::encode(&self.0[..8])
    }

    /// The whole digest in hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for SecretDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretDigest({})", self.fingerprint())
    }
}

/// A raw secret (token, key, password). Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a raw secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The raw value: only for digesting, verifying or handing back to its owner.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the value.
    pub fn digest(&self) -> SecretDigest {
        SecretDigest::of(self.0.as_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(fp:{})", self.digest().fingerprint())
    }
}

/// The authentication scheme of an `Authorization` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `Bearer` (RFC 6750): static tokens, session tokens, OAuth tokens.
    Bearer,
    /// `ApiKey`: hashed API keys.
    ApiKey,
}

impl Scheme {
    /// The scheme as written in a challenge.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Bearer => "Bearer",
            Scheme::ApiKey => "ApiKey",
        }
    }
}

/// A parsed credential: scheme plus secret, with its digest computed once.
#[derive(Debug, Clone)]
pub struct Credential {
    /// How it was presented.
    pub scheme: Scheme,
    /// The raw token or key.
    pub secret: Secret,
    /// SHA-256 of `secret`, used for lookups, caches and fingerprints.
    pub digest: SecretDigest,
}

impl Credential {
    /// Builds a credential and digests its secret.
    pub fn new(scheme: Scheme, secret: impl Into<String>) -> Self {
        let secret = Secret::new(secret);
        let digest = secret.digest();
        Self { scheme, secret, digest }
    }
}

/// The wire a check came over: a bounded label of metrics and the decision log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Wire {
    /// cedargate's own gRPC `Authorizer` API (`Check`, `BatchCheck`).
    Grpc,
    /// Envoy ext_authz over gRPC: headers and query parameters can be removed.
    #[default]
    EnvoyGrpc,
    /// Envoy ext_authz in HTTP mode (`/ext_authz`): headers only.
    EnvoyHttp,
    /// nginx `auth_request`, Traefik `forwardAuth` (`/auth/verify`): headers only.
    ForwardAuth,
    /// `cedargate check` on the command line.
    Cli,
}

impl Wire {
    /// The label: `grpc`, `envoy_grpc`, `envoy_http`, `forward_auth`, `cli`.
    pub fn as_str(self) -> &'static str {
        match self {
            Wire::Grpc => "grpc",
            Wire::EnvoyGrpc => "envoy_grpc",
            Wire::EnvoyHttp => "envoy_http",
            Wire::ForwardAuth => "forward_auth",
            Wire::Cli => "cli",
        }
    }
}

/// Which kind of backend vouched for an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    /// No credential was presented.
    Anonymous,
    /// A static bearer token from the config.
    Static,
    /// A hashed API key from the config.
    ApiKey,
    /// A login session token.
    Session,
    /// A JWT verified locally against its issuer's keys.
    Jwt,
    /// An opaque token resolved by OAuth token introspection (RFC 7662).
    Introspection,
}

impl CredentialKind {
    /// The name policies see in `context.credential_kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Anonymous => "anonymous",
            CredentialKind::Static => "static",
            CredentialKind::ApiKey => "api_key",
            CredentialKind::Session => "session",
            CredentialKind::Jwt => "jwt",
            CredentialKind::Introspection => "introspection",
        }
    }
}

/// A JSON-like value for `AuthInfo::extra` and request facts; kept free of serde and protobuf
/// types so every layer can share it.
pub type Extra = BTreeMap<String, serde_json::Value>;

/// The normalized identity behind a credential, whatever resolved it. Shaped after the MCP
/// SDK's `AuthInfo` plus what policies need. Never holds the raw credential.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthInfo {
    /// Who: user id, service name, or OAuth `sub`.
    pub subject: String,
    /// The OAuth client holding the credential ("" if none).
    pub client_id: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Unix seconds; `None` when the credential does not expire.
    pub expires_at: Option<i64>,
    /// Clock skew accepted past `expires_at`: the JWT issuer's `leeway`, zero for every other
    /// backend. Every expiry check goes through [`AuthInfo::valid_until`], so a token the
    /// issuer's leeway accepts is not refused later in the chain or dropped by a cache.
    pub leeway: Duration,
    /// Audience / resource indicator ("" if none).
    pub resource: String,
    /// Roles; each becomes a parent `Role` entity of the principal.
    pub roles: Vec<String>,
    /// Tenant ("" if none).
    pub tenant: String,
    /// Issuer ("" if none).
    pub issuer: String,
    /// Which backend resolved the credential.
    pub kind: CredentialKind,
    /// Everything else the backend knows.
    pub extra: Extra,
}

impl AuthInfo {
    /// An identity of `kind` for `subject` with the given roles and nothing else set.
    pub fn new(kind: CredentialKind, subject: impl Into<String>, roles: Vec<String>) -> Self {
        Self {
            subject: subject.into(),
            client_id: String::new(),
            scopes: Vec::new(),
            expires_at: None,
            leeway: Duration::ZERO,
            resource: String::new(),
            roles,
            tenant: String::new(),
            issuer: String::new(),
            kind,
            extra: Extra::new(),
        }
    }

    /// The first unix second at which the identity is no longer accepted: `expires_at` plus
    /// the leeway; `None` when it does not expire.
    pub fn valid_until(&self) -> Option<i64> {
        let leeway = i64::try_from(self.leeway.as_secs()).unwrap_or(i64::MAX);
        self.expires_at.map(|expires_at| expires_at.saturating_add(leeway))
    }

    /// Whether the identity has expired at `now` (unix seconds), leeway included.
    pub fn is_expired(&self, now: i64) -> bool {
        self.valid_until().is_some_and(|until| until <= now)
    }
}

/// What is being asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// An MCP tool call.
    Tool(ToolCall),
    /// An HTTP request.
    Route(RouteRequest),
    /// Any other MCP request: a prompt, a resource, or a method such as `tools/list`. A tool
    /// call is never one of these: [`McpRequest`] has no tool kind, so a route-generated tool
    /// cannot be built past its route mapping (only [`Target::Tool`] reaches it).
    Mcp(McpRequest, ToolCall),
}

/// The MCP requests besides tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McpRequest {
    /// `prompts/get`.
    Prompt,
    /// `resources/read`.
    Resource,
    /// Any other method (`initialize`, `tools/list`, notifications).
    Method,
}

impl From<McpRequest> for McpKind {
    fn from(request: McpRequest) -> Self {
        match request {
            McpRequest::Prompt => McpKind::Prompt,
            McpRequest::Resource => McpKind::Resource,
            McpRequest::Method => McpKind::Method,
        }
    }
}

/// What an MCP request is about, as the policies see it; each kind is its own Cedar action
/// and entity type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McpKind {
    /// `tools/call`: `Action::"call"` on `Tool::"<name>"`.
    Tool,
    /// `prompts/get`: `Action::"get_prompt"` on `Prompt::"<name>"`.
    Prompt,
    /// `resources/read`: `Action::"read_resource"` on `McpResource::"<uri>"`.
    Resource,
    /// Any other method (`initialize`, `tools/list`, notifications):
    /// `Action::"rpc"` on `McpMethod::"<method>"`.
    Method,
}

impl McpKind {
    /// Lowercase name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            McpKind::Tool => "tool",
            McpKind::Prompt => "prompt",
            McpKind::Resource => "resource",
            McpKind::Method => "method",
        }
    }
}

/// An MCP tool call (or, under [`Target::Mcp`], a prompt, resource or method by name).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ToolCall {
    /// The tool name; `METHOD_/path` names a route-generated tool. For a resource, its URI;
    /// for a method, the JSON-RPC method.
    pub name: String,
    /// The MCP server offering the tool ("" if one).
    pub server: String,
    /// The call's arguments.
    pub arguments: Extra,
}

/// An HTTP method and path as received (the path may carry a query string).
#[derive(Debug, Clone, PartialEq)]
pub struct RouteRequest {
    /// HTTP method, any case.
    pub method: String,
    /// Request path.
    pub path: String,
    /// A route template to decide the path as, instead of the configured ones.
    pub template: Option<String>,
}

/// Shortens and escapes user input for error messages and log lines: at most 64 characters,
/// control and quote characters escaped. Never for a credential: those are fingerprinted.
pub fn quote(text: &str) -> String {
    let mut shown: String = text.chars().take(64).flat_map(char::escape_debug).collect();
    if text.chars().count() > 64 {
        shown.push('…');
    }
    shown
}

/// Whether `name` is a safe tenant name: `^[a-z0-9][a-z0-9_-]{0,62}$`. Such a name can be a
/// directory (`policies/tenants/<name>/`), a path segment, a header value and a log field
/// without escaping, and never reads as `.`, `..` or a hidden file.
pub fn is_tenant_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || matches!(byte, b'_' | b'-'))
}

/// Where a request came from, as far as cedargate can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientAddress {
    /// The TCP peer, or the client a trusted proxy reported in `X-Forwarded-For`.
    Known(IpAddr),
    /// The TCP peer is not a trusted proxy but says, in `X-Forwarded-For`, that it forwards
    /// for `claimed`. Only `peer` is believed; `claimed` merely keeps clients behind one
    /// proxy apart for the login rate limit.
    Untrusted {
        /// The TCP peer.
        peer: IpAddr,
        /// The last address the peer put into `X-Forwarded-For`.
        claimed: IpAddr,
    },
}

impl ClientAddress {
    /// The address to believe: the known client, or else the peer.
    pub fn ip(&self) -> IpAddr {
        match *self {
            ClientAddress::Known(ip) | ClientAddress::Untrusted { peer: ip, .. } => ip,
        }
    }
}

/// The three answers a caller can get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Let it through.
    Allowed,
    /// No valid credential: HTTP 401.
    Unauthenticated,
    /// Valid credential, not allowed: HTTP 403.
    Forbidden,
    /// A credential backend that had to be asked could not answer: HTTP 503. A closed door
    /// that does not tell the client its token is bad.
    Unavailable,
}

impl Outcome {
    /// The HTTP status a gateway should answer with.
    pub fn http_status(self) -> u16 {
        match self {
            Outcome::Allowed => 200,
            Outcome::Unauthenticated => 401,
            Outcome::Forbidden => 403,
            Outcome::Unavailable => 503,
        }
    }

    /// The name of the outcome in the API (`Outcome` in `authorizer.proto`) and so in every
    /// JSON shape of a decision.
    pub fn api_name(self) -> &'static str {
        match self {
            Outcome::Allowed => "OUTCOME_ALLOWED",
            Outcome::Unauthenticated => "OUTCOME_UNAUTHENTICATED",
            Outcome::Forbidden => "OUTCOME_FORBIDDEN",
            Outcome::Unavailable => "OUTCOME_UNAVAILABLE",
        }
    }

    /// Lowercase name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::Forbidden => "forbidden",
            Outcome::Unavailable => "unavailable",
        }
    }
}

/// Why a request is refused, on any wire. Built once where the refusal is decided; each wire
/// renders it in one place (`api::grpc::code_of`, the HTTP status here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The request cannot be decided on: 400, `INVALID_ARGUMENT`.
    InvalidRequest,
    /// No valid credential: 401, `UNAUTHENTICATED`.
    Unauthenticated,
    /// Valid credential, not allowed: 403, `PERMISSION_DENIED`.
    Forbidden,
    /// Too many attempts: 429, `RESOURCE_EXHAUSTED`.
    RateLimited,
    /// A backend that had to be asked could not answer: 503, `UNAVAILABLE`.
    Unavailable,
    /// cedargate itself failed: 500, `INTERNAL`.
    Internal,
}

impl Refusal {
    /// The HTTP status.
    pub fn http_status(self) -> u16 {
        match self {
            Refusal::InvalidRequest => 400,
            Refusal::Unauthenticated => 401,
            Refusal::Forbidden => 403,
            Refusal::RateLimited => 429,
            Refusal::Unavailable => 503,
            Refusal::Internal => 500,
        }
    }
}

/// A decision with everything a caller needs to answer its client.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Allowed, unauthenticated or forbidden.
    pub outcome: Outcome,
    /// The identity, when the credential resolved (never for anonymous callers).
    pub auth_info: Option<Arc<AuthInfo>>,
    /// Ids of the determining policies.
    pub policy_ids: Vec<String>,
    /// Human-readable reason.
    pub reason: String,
    /// `WWW-Authenticate` value on a deny, `None` on allow.
    pub www_authenticate: Option<String>,
    /// Unique id, also in the decision log.
    pub decision_id: String,
    /// Policy evaluation errors (any makes the decision a deny).
    pub errors: Vec<String>,
    /// Credential fingerprint, `None` when no credential was sent.
    pub credential_fingerprint: Option<String>,
    /// On a 403, the scopes the denying policy names (`@scopes`): the client lacks them.
    pub required_scopes: Vec<String>,
    /// Set only when the `@shadow` policies, enforced, would have decided otherwise.
    pub shadow: Option<ShadowDecision>,
}

/// The decision `@shadow` policies would have produced, reported beside the enforced one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowDecision {
    /// The outcome it would have had.
    pub outcome: Outcome,
    /// The shadow policies that made the difference.
    pub policy_ids: Vec<String>,
    /// The reason it would have given.
    pub reason: String,
}

impl Decision {
    /// True for `Outcome::Allowed`.
    pub fn allowed(&self) -> bool {
        self.outcome == Outcome::Allowed
    }

    /// The refusal, `None` on an allow.
    pub fn refusal(&self) -> Option<Refusal> {
        match self.outcome {
            Outcome::Allowed => None,
            Outcome::Unauthenticated => Some(Refusal::Unauthenticated),
            Outcome::Forbidden => Some(Refusal::Forbidden),
            Outcome::Unavailable => Some(Refusal::Unavailable),
        }
    }

    /// The error code of a denial's body (RFC 6750 §3.1 where one applies), "" on an allow.
    pub fn error_code(&self) -> &'static str {
        match self.outcome {
            Outcome::Allowed => "",
            Outcome::Unauthenticated if self.credential_fingerprint.is_some() => "invalid_token",
            Outcome::Unauthenticated => "unauthorized",
            Outcome::Forbidden if !self.required_scopes.is_empty() => "insufficient_scope",
            Outcome::Forbidden => "forbidden",
            Outcome::Unavailable => "temporarily_unavailable",
        }
    }
}

/// Current unix time in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_are_safe_identifiers() {
        for good in ["acme", "a", "0", "acme-eu_1", &"a".repeat(63)] {
            assert!(is_tenant_name(good), "{good}");
        }
        for bad in [
            "",
            "Acme",
            "-acme",
            "_acme",
            "acme corp",
            "../x",
            ".",
            "..",
            "a/b",
            "acmé",
            "a\n",
            &"a".repeat(64),
        ] {
            assert!(!is_tenant_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn secret_debug_never_shows_the_value() {
        let secret = Secret::new("super-secret-value");
        let shown = format!("{secret:?} {:?}", Credential::new(Scheme::Bearer, "super-secret-value"));
        assert!(!shown.contains("super-secret-value"), "{shown}");
        assert!(shown.contains(&secret.digest().fingerprint()));
    }

    #[test]
    fn digest_hex_round_trips_and_rejects_garbage() {
        let digest = SecretDigest::of(b"api-key-789");
        assert_eq!(SecretDigest::from_hex(&digest.to_hex()).unwrap(), digest);
        assert!(SecretDigest::from_hex("abc").is_err());
        assert!(SecretDigest::from_hex(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn digest_comparison_is_exact() {
        let a = SecretDigest::of(b"a");
        assert!(a.ct_eq(&SecretDigest::of(b"a")));
        assert!(!a.ct_eq(&SecretDigest::of(b"b")));
    }

    #[test]
    fn expiry_is_inclusive_of_the_deadline() {
        let mut info = AuthInfo::new(CredentialKind::Static, "u", vec![]);
        assert!(!info.is_expired(i64::MAX));
        info.expires_at = Some(100);
        assert!(!info.is_expired(99));
        assert!(info.is_expired(100));
        info.leeway = Duration::from_secs(30);
        assert_eq!(info.valid_until(), Some(130));
        assert!(!info.is_expired(129));
        assert!(info.is_expired(130));
    }
}
