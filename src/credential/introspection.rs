//! OAuth 2.0 Token Introspection (RFC 7662): ask the authorization server whether an opaque
//! token is active and whose it is. Every failure to get a clear answer is a closed door with
//! its own reason, and is never mistaken for (or cached as) a valid answer; only an answer about
//! the token (`active: false`, a 400 `invalid_token`) refuses it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Map, Value};

use super::{ClaimMapping, CredentialError, CredentialResolver, Resolution};
use crate::model::{unix_now, Credential, CredentialKind, Secret};

/// How cedargate authenticates itself to the introspection endpoint (RFC 6749 §2.3, RFC 7523).
#[derive(Clone)]
pub enum ClientAuth {
    /// HTTP Basic with the form-encoded id and secret.
    SecretBasic {
        /// Client id.
        client_id: String,
        /// Client secret.
        secret: Secret,
    },
    /// `client_id` and `client_secret` in the form body.
    SecretPost {
        /// Client id.
        client_id: String,
        /// Client secret.
        secret: Secret,
    },
    /// A signed JWT assertion (`private_key_jwt`).
    PrivateKeyJwt {
        /// Client id.
        client_id: String,
        /// Signing key.
        key: EncodingKey,
        /// Its algorithm.
        algorithm: Algorithm,
        /// Its `kid`, if the server needs one.
        kid: Option<String>,
    },
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (method, client_id) = match self {
            ClientAuth::SecretBasic { client_id, .. } => ("client_secret_basic", client_id),
            ClientAuth::SecretPost { client_id, .. } => ("client_secret_post", client_id),
            ClientAuth::PrivateKeyJwt { client_id, .. } => ("private_key_jwt", client_id),
        };
        write!(f, "ClientAuth({method}, {client_id})")
    }
}

/// Where the introspection endpoint is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// This URL.
    Url(String),
    /// The `introspection_endpoint` of this issuer's metadata, fetched on first use.
    Discover(String),
}

/// One introspection endpoint.
#[derive(Debug, Clone)]
pub struct IntrospectionSettings {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Client authentication.
    pub auth: ClientAuth,
    /// Sent as `token_type_hint` (`access_token` by default; `None` sends none).
    pub token_type_hint: Option<String>,
    /// Only tokens starting with one of these are sent (empty: every bearer token that reaches
    /// this backend).
    pub prefixes: Vec<String>,
    /// When set, an active token must name one of these in `aud`.
    pub audiences: Vec<String>,
    /// Claim mapping.
    pub claims: ClaimMapping,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Whether JWTs are sent too. By default a token shaped like a JWT is not this backend's:
    /// the JWT issuers decide those, and one no issuer trusts is refused without asking.
    pub accept_jwts: bool,
}

/// Resolves tokens by introspection.
#[derive(Debug)]
pub struct IntrospectionResolver {
    settings: IntrospectionSettings,
    http: reqwest::Client,
    /// The endpoint URL, once known.
    url: tokio::sync::OnceCell<String>,
}

fn unavailable(reason: impl Into<String>) -> CredentialError {
    CredentialError::Unavailable { backend: "introspection".to_owned(), reason: reason.into() }
}

fn form_encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The OAuth error (RFC 6749 §5.2) of a 400 answer when it is about the token, as a fixed
/// text: the endpoint's own words are never repeated. Errors about cedargate's request or
/// client (`invalid_client`, `unauthorized_client`, anything else) are not, and stay outages.
fn token_error(body: &[u8]) -> Option<&'static str> {
    let answer: Map<String, Value> = serde_json::from_slice(body).ok()?;
    match answer.get("error")?.as_str()? {
        "invalid_token" => Some("invalid_token"),
        "unsupported_token_type" => Some("unsupported_token_type"),
        "invalid_request" => Some("invalid_request"),
        _ => None,
    }
}

impl IntrospectionResolver {
    /// Builds the resolver.
    pub fn new(settings: IntrospectionSettings, http: reqwest::Client) -> Self {
        let url = match &settings.endpoint {
            Endpoint::Url(url) => tokio::sync::OnceCell::new_with(Some(url.clone())),
            Endpoint::Discover(_) => tokio::sync::OnceCell::new(),
        };
        Self { settings, http, url }
    }

    /// The metrics' `issuer` of this endpoint: the configured issuer, or the endpoint's URL.
    fn issuer_label<'a>(&'a self, url: &'a str) -> &'a str {
        match &self.settings.endpoint {
            Endpoint::Discover(issuer) => issuer.as_str(),
            Endpoint::Url(_) => url,
        }
    }

    /// The endpoint URL, discovering it on first use; a failed discovery is retried next time.
    async fn url(&self) -> Result<&str, CredentialError> {
        let url = self
            .url
            .get_or_try_init(|| async {
                let Endpoint::Discover(issuer) = &self.settings.endpoint else {
                    return Err("no endpoint".to_owned());
                };
                let metadata = super::discovery::discover(&self.http, issuer).await?;
                metadata
                    .introspection_endpoint
                    .ok_or_else(|| "the issuer's metadata has no `introspection_endpoint`".to_owned())
            })
            .await
            .map_err(|error| unavailable(format!("discovery failed: {error}")))?;
        Ok(url)
    }

    fn request(&self, url: &str, token: &str) -> Result<reqwest::RequestBuilder, CredentialError> {
        let mut form: Vec<(&str, String)> = vec![("token", token.to_owned())];
        if let Some(hint) = &self.settings.token_type_hint {
            form.push(("token_type_hint", hint.clone()));
        }
        let mut request = self.http.post(url).timeout(self.settings.timeout);
        match &self.settings.auth {
            ClientAuth::SecretBasic { client_id, secret } => {
                request = request.basic_auth(form_encode(client_id), Some(form_encode(secret.expose())));
            }
            ClientAuth::SecretPost { client_id, secret } => {
                form.push(("client_id", client_id.clone()));
                form.push(("client_secret", secret.expose().to_owned()));
            }
            ClientAuth::PrivateKeyJwt { client_id, key, algorithm, kid } => {
                let mut header = Header::new(*algorithm);
                header.kid = kid.clone();
                let now = unix_now();
                let claims = json!({
                    "iss": client_id, "sub": client_id, "aud": url,
                    "iat": now, "exp": now + 60, "jti": uuid::Uuid::now_v7().to_string(),
                });
                let assertion = jsonwebtoken::encode(&header, &claims, key)
                    .map_err(|error| unavailable(format!("cannot sign the client assertion: {error}")))?;
                form.push(("client_id", client_id.clone()));
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ));
                form.push(("client_assertion", assertion));
            }
        }
        Ok(request.header("accept", "application/json").form(&form))
    }

    /// Maps an introspection answer.
    fn answer(&self, body: &[u8]) -> Result<Resolution, CredentialError> {
        let claims: Map<String, Value> = serde_json::from_slice(body)
            .map_err(|_| unavailable("introspection answer is not a JSON object"))?;
        match claims.get("active") {
            Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => {
                return Err(CredentialError::Invalid("token is not active".to_owned()))
            }
            _ => return Err(unavailable("introspection answer has no boolean `active`")),
        }
        if !self.settings.audiences.is_empty() {
            let audiences: Vec<&str> = match claims.get("aud") {
                Some(Value::String(audience)) => vec![audience.as_str()],
                Some(Value::Array(audiences)) => audiences.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            if !audiences.iter().any(|audience| self.settings.audiences.iter().any(|ours| ours == audience)) {
                return Err(CredentialError::Invalid("token audience is not this resource".to_owned()));
            }
        }
        let auth = self.settings.claims.auth_info(CredentialKind::Introspection, &claims)?;
        Ok(Resolution::Resolved(Arc::new(auth)))
    }
}

#[async_trait]
impl CredentialResolver for IntrospectionResolver {
    fn name(&self) -> &str {
        "introspection"
    }

    async fn resolve(&self, credential: &Credential) -> Result<Resolution, CredentialError> {
        let token = credential.secret.expose();
        if !self.settings.prefixes.is_empty()
            && !self.settings.prefixes.iter().any(|prefix| token.starts_with(prefix))
        {
            return Ok(Resolution::NotMine);
        }
        if !self.settings.accept_jwts && super::jwt::jws_header(token).is_some() {
            return Ok(Resolution::NotMine);
        }
        // INVARIANT: errors are described without the request (reqwest's errors may carry the
        // URL and, for a form body, nothing else; the token is never formatted).
        let url = self.url().await?;
        let response = super::http::send("introspection", self.issuer_label(url), self.request(url, token)?)
            .await
            .map_err(|error| {
                if error.is_timeout() {
                    unavailable(format!("no answer within {} ms", self.settings.timeout.as_millis()))
                } else {
                    unavailable(format!("endpoint unreachable: {}", super::http::describe(&error)))
                }
            })?;
        let status = response.status();
        if !status.is_success() {
            if status == reqwest::StatusCode::BAD_REQUEST {
                let body = response.bytes().await.unwrap_or_default();
                if let Some(code) = token_error(&body) {
                    return Err(CredentialError::Invalid(format!(
                        "introspection endpoint refused the token: `{code}`"
                    )));
                }
            }
            return Err(unavailable(format!("endpoint answered HTTP {}", status.as_u16())));
        }
        let body = response.bytes().await.map_err(|_| unavailable("answer was cut off"))?;
        let resolution = self.answer(&body);
        if let Err(error @ CredentialError::Unavailable { .. }) = &resolution {
            tracing::warn!(fingerprint = %credential.digest.fingerprint(), "{error}");
        }
        resolution
    }
}

#[cfg(test)]
mod tests;
