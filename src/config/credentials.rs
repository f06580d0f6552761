//! `credentials:`: static tokens and API keys, JWT issuers, introspection endpoints, the claim
//! mapping and the token cache.

#[allow(clippy::wildcard_imports)]
use super::*;

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
            issuer_tenant: None,
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

/// The shortest `credentials.jwt[].refetch_interval`: below it, a stream of unknown `kid`s
/// could make cedargate fetch an issuer's keys many times a second.
pub const MIN_REFETCH_INTERVAL: Duration = Duration::from_millis(100);
