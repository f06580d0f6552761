//! Local JWT validation (RFC 7519, RFC 8725, RFC 9068): a token goes to the issuer named in
//! its `iss` (a JWT of any other issuer is refused, unless passed on to introspection), is verified with that issuer's keys (JWKS inline or by URL), and its claims become
//! an AuthInfo. A token never chooses its own key: `jku`, `x5u`, `x5c` and embedded `jwk`
//! headers are ignored, only asymmetric algorithms the issuer allows are accepted, and a
//! header with `crit` is refused.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde_json::{Map, Value};

use super::{ClaimMapping, CredentialError, CredentialResolver, Resolution};
use crate::model::quote;
use crate::model::{Credential, CredentialKind};

/// The algorithms an issuer may use when its config names none.
pub const DEFAULT_ALGORITHMS: [Algorithm; 5] =
    [Algorithm::RS256, Algorithm::PS256, Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA];

/// Where an issuer's keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A JWKS given in the config.
    Inline(JwkSet),
    /// A JWKS fetched over HTTP(S), refreshed in the background and on an unknown `kid`.
    Url(String),
    /// The `jwks_uri` of the issuer's metadata (RFC 8414 / OpenID Connect Discovery), then as
    /// `Url`.
    Discovery,
}

/// One trusted issuer.
#[derive(Debug, Clone)]
pub struct IssuerSettings {
    /// The exact `iss`.
    pub issuer: String,
    /// Accepted audiences (RFC 8707 resource identifiers); at least one must be in `aud`.
    pub audiences: Vec<String>,
    /// Accepted algorithms; never `none` or HMAC.
    pub algorithms: Vec<Algorithm>,
    /// Clock skew allowed on `exp` and `nbf`, here and (through `AuthInfo::leeway`) wherever
    /// else the token's expiry is checked.
    pub leeway: Duration,
    /// RFC 9068: require `typ: at+jwt` and the claims `sub`, `iat`, `jti`, `client_id`.
    pub strict_rfc9068: bool,
    /// Claim mapping.
    pub claims: ClaimMapping,
    /// Keys.
    pub keys: KeySource,
    /// Least time from the start of one fetch (of any kind) to a fetch caused by an unknown
    /// `kid`: the most unknown `kid`s can cost the issuer, and how long after its publication
    /// a new key may still be refused.
    pub refetch_interval: Duration,
}

/// A verification key and what it may verify.
#[derive(Clone)]
struct VerifyingKey {
    kid: Option<String>,
    algorithm: Option<Algorithm>,
    family: Family,
    key: DecodingKey,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey").field("kid", &self.kid).field("family", &self.family).finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
    Okp,
}

fn family_of(algorithm: Algorithm) -> Option<Family> {
    match algorithm {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Some(Family::Rsa),
        Algorithm::ES256 | Algorithm::ES384 => Some(Family::Ec),
        Algorithm::EdDSA => Some(Family::Okp),
        // HMAC, and whatever a future version adds, is never accepted.
        _ => None,
    }
}

/// Parses a configured algorithm name, refusing `none` and HMAC.
///
/// Fails on unknown, symmetric or `none` algorithms.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    let algorithm: Algorithm = name.parse().map_err(|_| format!("`{name}` is not a JWS algorithm"))?;
    family_of(algorithm)
        .map(|_| algorithm)
        .ok_or_else(|| format!("`{name}` is symmetric; only asymmetric algorithms are accepted"))
}

/// Keys by `kid`, plus all of them for tokens without one.
#[derive(Debug, Default)]
struct KeySet {
    keys: Vec<VerifyingKey>,
}

impl KeySet {
    /// The usable signature keys of a JWKS: symmetric (`oct`) keys, encryption keys and keys
    /// that do not parse are left out.
    fn from_jwks(jwks: &JwkSet) -> Self {
        let keys = jwks
            .keys
            .iter()
            .filter(|jwk| !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)))
            .filter_map(|jwk| {
                let family = match &jwk.algorithm {
                    AlgorithmParameters::RSA(_) => Family::Rsa,
                    AlgorithmParameters::EllipticCurve(_) => Family::Ec,
                    AlgorithmParameters::OctetKeyPair(_) => Family::Okp,
                    // Symmetric (`oct`) and unknown key types are never used.
                    _ => return None,
                };
                let algorithm = jwk.common.key_algorithm.and_then(|algorithm| match algorithm {
                    KeyAlgorithm::RS256 => Some(Algorithm::RS256),
                    KeyAlgorithm::RS384 => Some(Algorithm::RS384),
                    KeyAlgorithm::RS512 => Some(Algorithm::RS512),
                    KeyAlgorithm::PS256 => Some(Algorithm::PS256),
                    KeyAlgorithm::PS384 => Some(Algorithm::PS384),
                    KeyAlgorithm::PS512 => Some(Algorithm::PS512),
                    KeyAlgorithm::ES256 => Some(Algorithm::ES256),
                    KeyAlgorithm::ES384 => Some(Algorithm::ES384),
                    KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
                    _ => None,
                });
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some(VerifyingKey { kid: jwk.common.key_id.clone(), algorithm, family, key })
            })
            .collect();
        Self { keys }
    }

    fn find(&self, kid: Option<&str>) -> Option<&VerifyingKey> {
        match kid {
            Some(kid) => self.keys.iter().find(|key| key.kid.as_deref() == Some(kid)),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
    }
}

/// One issuer's settings and current keys.
#[derive(Debug)]
struct Issuer {
    settings: IssuerSettings,
    keys: ArcSwap<KeySet>,
    /// The JWKS URL, once known (configured, or discovered).
    jwks_url: tokio::sync::OnceCell<String>,
    /// The issuer's fetches. An async lock, held for the whole fetch so that there is one at a
    /// time, and taken on the request path only for an unknown `kid`, so concurrent tokens with
    /// a new `kid` wait for one fetch.
    fetches: tokio::sync::Mutex<FetchState>,
}

/// What cedargate knows about its copy of an issuer's keys.
#[derive(Debug, Default)]
struct FetchState {
    /// When the last fetch (background or for an unknown `kid`) started: it saw every key
    /// published before then.
    started: Option<Instant>,
    /// Why the last fetch failed, if it did: until one succeeds, a `kid` cedargate does not
    /// know may be one the issuer published, so its token is an outage (503), not a refusal.
    failure: Option<String>,
}

/// Verifies JWTs from the configured issuers.
#[derive(Debug)]
pub struct JwtResolver {
    issuers: HashMap<String, Arc<Issuer>>,
    http: reqwest::Client,
    /// Whether a JWT of an issuer not configured here goes on down the chain (to an
    /// introspection endpoint that accepts JWTs) instead of being refused.
    pass_on_untrusted: bool,
}

/// The protected header of a token shaped like a JWS compact serialization (RFC 7515 §7.1):
/// three base64url segments, the first a JSON object. `None` for anything else, such as an
/// opaque token. Nothing in it is trusted; it only says that the token is a JWT.
pub(super) fn jws_header(token: &str) -> Option<Map<String, Value>> {
    use base64::Engine as _;
    let mut segments = token.split('.');
    let (Some(header), Some(_payload), Some(_signature), None) =
        (segments.next(), segments.next(), segments.next(), segments.next())
    else {
        return None;
    };
    if !token.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.')) {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn invalid(reason: impl Into<String>) -> CredentialError {
    CredentialError::Invalid(reason.into())
}

impl JwtResolver {
    /// Builds the resolver; keys behind URLs are fetched by [`JwtResolver::refresh`].
    pub fn new(issuers: Vec<IssuerSettings>, http: reqwest::Client) -> Self {
        let issuers = issuers
            .into_iter()
            .map(|settings| {
                let keys = match &settings.keys {
                    KeySource::Inline(jwks) => KeySet::from_jwks(jwks),
                    KeySource::Url(_) | KeySource::Discovery => KeySet::default(),
                };
                let jwks_url = match &settings.keys {
                    KeySource::Url(url) => tokio::sync::OnceCell::new_with(Some(url.clone())),
                    KeySource::Inline(_) | KeySource::Discovery => tokio::sync::OnceCell::new(),
                };
                let issuer = Issuer {
                    settings,
                    keys: ArcSwap::from_pointee(keys),
                    jwks_url,
                    fetches: tokio::sync::Mutex::new(FetchState::default()),
                };
                (issuer.settings.issuer.clone(), Arc::new(issuer))
            })
            .collect();
        Self { issuers, http, pass_on_untrusted: false }
    }

    /// Passes a JWT whose `iss` no configured issuer matches on to the next backend instead of
    /// refusing it; only for a chain with an introspection endpoint that accepts JWTs.
    #[must_use]
    pub fn pass_on_untrusted(mut self, pass_on: bool) -> Self {
        self.pass_on_untrusted = pass_on;
        self
    }

    /// True once every issuer has signature keys (inline, or fetched at least once): before,
    /// its tokens could only be an outage, so the service is not ready.
    pub fn has_keys(&self) -> bool {
        self.issuers.values().all(|issuer| !issuer.keys.load().keys.is_empty())
    }

    /// Fetches every issuer's JWKS from its URL; an issuer whose fetch fails keeps its keys.
    pub async fn refresh(&self) {
        for issuer in self.issuers.values() {
            if matches!(issuer.settings.keys, KeySource::Inline(_)) {
                continue;
            }
            let mut state = issuer.fetches.lock().await;
            if let Err(error) = self.fetch(issuer, &mut state).await {
                tracing::warn!(issuer = %issuer.settings.issuer, "JWKS refresh failed, keeping the current keys: {error}");
            }
        }
    }

    /// Refreshes keys every `interval` until `stop` completes.
    pub async fn refresh_task(
        self: Arc<Self>,
        interval: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        loop {
            self.refresh().await;
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// Fetches the issuer's keys and records how that went; the caller holds `issuer.fetches`.
    async fn fetch(&self, issuer: &Issuer, state: &mut FetchState) -> Result<(), String> {
        state.started = Some(Instant::now());
        let result = self.download(issuer).await;
        state.failure = result.as_ref().err().cloned();
        result
    }

    async fn download(&self, issuer: &Issuer) -> Result<(), String> {
        if matches!(issuer.settings.keys, KeySource::Inline(_)) {
            return Ok(());
        }
        let url = issuer
            .jwks_url
            .get_or_try_init(|| async {
                let metadata = super::discovery::discover(&self.http, &issuer.settings.issuer).await?;
                metadata.jwks_uri.ok_or_else(|| "the issuer's metadata has no `jwks_uri`".to_owned())
            })
            .await?;
        let response = super::http::send("jwks", &issuer.settings.issuer, self.http.get(url))
            .await
            .map_err(|error| format!("GET {url}: {}", super::http::describe(&error)))?
            .error_for_status()
            .map_err(|error| format!("GET {url}: {error}"))?;
        let jwks: JwkSet = response.json().await.map_err(|error| format!("JWKS at {url}: {error}"))?;
        let keys = KeySet::from_jwks(&jwks);
        tracing::info!(issuer = %issuer.settings.issuer, keys = keys.keys.len(), "JWKS loaded");
        issuer.keys.store(Arc::new(keys));
        Ok(())
    }

    /// Lets every issuer fetch again at once, as if `refetch_interval` had passed.
    #[cfg(test)]
    pub(crate) async fn let_refetch_interval_pass(&self) {
        for issuer in self.issuers.values() {
            issuer.fetches.lock().await.started = None;
        }
    }

    /// The key for `header`, fetching the JWKS once more (rate-limited) for an unknown `kid`.
    ///
    /// INVARIANT: at most one fetch per issuer at a time (the lock), and one for unknown `kid`s
    /// only when `refetch_interval` has passed since the last fetch of any kind started. So
    /// unknown `kid`s cost the issuer at most one fetch per interval, and a key published
    /// before the last fetch started is held, or one is due: a token signed with a new key is
    /// accepted from `refetch_interval` after its publication on.
    async fn key_for(&self, issuer: &Issuer, header: &Header) -> Result<VerifyingKey, CredentialError> {
        let kid = header.kid.as_deref();
        if let Some(key) = issuer.keys.load().find(kid) {
            return Ok(key.clone());
        }
        if !matches!(issuer.settings.keys, KeySource::Inline(_))
            && (kid.is_some() || issuer.keys.load().keys.is_empty())
        {
            let mut state = issuer.fetches.lock().await;
            // Another caller may have fetched while this one waited.
            if let Some(key) = issuer.keys.load().find(kid) {
                return Ok(key.clone());
            }
            if state.started.is_none_or(|started| started.elapsed() >= issuer.settings.refetch_interval) {
                if let Err(error) = self.fetch(issuer, &mut state).await {
                    tracing::warn!(issuer = %issuer.settings.issuer, "JWKS fetch for an unknown kid failed: {error}");
                }
                if let Some(key) = issuer.keys.load().find(kid) {
                    return Ok(key.clone());
                }
            }
            // INVARIANT: without a current copy of the keys an unknown `kid` says nothing about
            // the token: an outage (503, never cached), not a refusal.
            if state.failure.is_some() {
                return Err(CredentialError::Unavailable {
                    backend: "jwt".to_owned(),
                    reason: format!("the keys of `{}` could not be fetched", issuer.settings.issuer),
                });
            }
        }
        // A refusal by cedargate's copy of the keys, which the next fetch may change: never
        // cached (CredentialError::UnknownKey).
        Err(CredentialError::UnknownKey(match kid {
            Some(kid) => format!("JWT is signed with an unknown key `{}`", quote(kid)),
            None if issuer.keys.load().keys.is_empty() => "JWT issuer has no usable key".to_owned(),
            None => "JWT has no `kid` and the issuer has several keys".to_owned(),
        }))
    }

    async fn verify(
        &self,
        issuer: &Issuer,
        token: &str,
        header: Header,
    ) -> Result<Resolution, CredentialError> {
        let settings = &issuer.settings;
        if !settings.algorithms.contains(&header.alg) {
            return Err(invalid(format!("JWT algorithm `{:?}` is not allowed for this issuer", header.alg)));
        }
        if settings.strict_rfc9068
            && !header.typ.as_deref().is_some_and(|typ| {
                typ.eq_ignore_ascii_case("at+jwt") || typ.eq_ignore_ascii_case("application/at+jwt")
            })
        {
            return Err(invalid("JWT is not an access token (`typ` must be `at+jwt`)"));
        }
        let key = self.key_for(issuer, &header).await?;
        // INVARIANT: the key decides the algorithm family, not the token: an RSA key never
        // verifies an HMAC or ECDSA signature, and a key pinned to one algorithm verifies only it.
        if family_of(header.alg) != Some(key.family)
            || key.algorithm.is_some_and(|pinned| pinned != header.alg)
        {
            return Err(invalid("JWT algorithm does not match its key"));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&settings.audiences);
        validation.leeway = settings.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation).map_err(|error| {
                match error.kind() {
                    ErrorKind::ExpiredSignature => CredentialError::Expired,
                    ErrorKind::ImmatureSignature => invalid("JWT is not valid yet (`nbf`)"),
                    ErrorKind::InvalidAudience => invalid("JWT audience is not this resource"),
                    ErrorKind::InvalidIssuer => invalid("JWT issuer does not match"),
                    ErrorKind::InvalidSignature => invalid("JWT signature does not verify"),
                    ErrorKind::MissingRequiredClaim(claim) => {
                        invalid(format!("JWT lacks the `{claim}` claim"))
                    }
                    ErrorKind::InvalidAlgorithm => invalid("JWT algorithm does not match its key"),
                    _ => invalid("JWT is malformed"),
                }
            })?;
        if settings.strict_rfc9068 {
            // RFC 9068 §2.2; the library checks only the claims it validates itself.
            if let Some(missing) =
                ["sub", "client_id", "iat", "jti"].into_iter().find(|claim| !data.claims.contains_key(*claim))
            {
                return Err(invalid(format!("JWT lacks the `{missing}` claim")));
            }
        }
        let mut auth = settings.claims.auth_info(CredentialKind::Jwt, &data.claims)?;
        // The chain and the cache check `exp` again; with the same leeway, so a token accepted
        // here is not refused there.
        auth.leeway = settings.leeway;
        Ok(Resolution::Resolved(Arc::new(auth)))
    }
}

#[async_trait]
impl CredentialResolver for JwtResolver {
    fn name(&self) -> &str {
        "jwt"
    }

    async fn resolve(&self, credential: &Credential) -> Result<Resolution, CredentialError> {
        let token = credential.secret.expose();
        let Some(protected) = jws_header(token) else {
            return Ok(Resolution::NotMine);
        };
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("JWT header is malformed"))?;
        // Only to route the token to its issuer; nothing here is trusted before verification.
        let unverified = jsonwebtoken::dangerous::insecure_decode::<Map<String, Value>>(token)
            .map_err(|_| invalid("JWT payload is malformed"))?;
        let Some(issuer) =
            unverified.claims.get("iss").and_then(Value::as_str).and_then(|iss| self.issuers.get(iss))
        else {
            // Not sent anywhere by default: an introspection endpoint would learn a token meant
            // for someone else, and could not vouch for it anyway.
            if self.pass_on_untrusted {
                return Ok(Resolution::NotMine);
            }
            return Err(invalid("JWT issuer is not trusted"));
        };
        // RFC 7515 §4.1.11: a token naming an extension it must be understood by is refused
        // unless it is understood; cedargate understands none, and an empty `crit` is invalid
        // too. jsonwebtoken parses `crit` but does not enforce it, so the raw header decides.
        if protected.contains_key("crit") {
            return Err(invalid("JWT header has `crit`: cedargate understands no critical extension"));
        }
        self.verify(issuer, token, header).await
    }
}

#[cfg(test)]
mod tests;
