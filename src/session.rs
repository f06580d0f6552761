//! Login sessions: password check (argon2id), opaque 256-bit session tokens, single-use
//! refresh tokens with reuse detection, logout, and brute-force limits.

mod rate_limit;
mod sealed;
mod store;

use crate::model::{ClientAddress, Refusal};
use crate::telemetry::metrics::metrics;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use async_trait::async_trait;
use base64::Engine as _;
use rand::RngCore;
use tokio::sync::Semaphore;

use crate::credential::{CredentialError, CredentialResolver, Resolution};
use crate::model::{unix_now, AuthInfo, Credential, CredentialKind, Secret};

pub use rate_limit::{
    Attempt, LimitRule, LoginKey, LoginRateLimiter, MemoryRateLimiter, Refused, IN_FLIGHT_BOUND,
};
pub use store::{
    FamilyId, MemorySessionStore, NextTokens, RefreshOutcome, SessionRecord, SessionStore, StoreError,
    REVOKED_FALLBACK_SECONDS,
};

/// Prefix of access tokens, so they are recognisable (and routable) at a glance.
pub const ACCESS_PREFIX: &str = "session-";
/// Prefix of refresh tokens.
pub const REFRESH_PREFIX: &str = "refresh-";
/// Longest username accepted.
pub const MAX_USERNAME_BYTES: usize = 256;
/// Longest password accepted: argon2 cost grows with input, so this bounds the work a request
/// can cause.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Why a session operation failed. Messages never contain a password or token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Wrong username or password (deliberately not saying which).
    #[error("invalid username or password")]
    InvalidLogin,
    /// Too many failures for this username or address.
    #[error("too many failed logins; retry in {} s", whole_seconds(*.retry_after))]
    RateLimited {
        /// When to try again.
        retry_after: Duration,
    },
    /// The login has rotated `sessions.max_rotations` times within a refresh lifetime.
    #[error("the session has been refreshed too often; retry in {} s", whole_seconds(*.retry_after))]
    TooManyRotations {
        /// When the oldest rotation remembered expires.
        retry_after: Duration,
    },
    /// A field is empty or too long.
    #[error("`{field}` must be 1 to {max} bytes")]
    BadField {
        /// Field name.
        field: &'static str,
        /// The cap.
        max: usize,
    },
    /// Unknown, expired or already used refresh token.
    #[error("refresh token is unknown, expired or already used")]
    InvalidRefresh,
    /// The shared session or rate-limit store did not answer: nothing was decided.
    #[error("{0}")]
    Unavailable(String),
    /// The store or the hasher failed.
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for SessionError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) | StoreError::Full(_) => SessionError::Unavailable(error.to_string()),
            StoreError::Corrupt(_) | StoreError::Revoked => SessionError::Internal(error.to_string()),
        }
    }
}

/// Freshly issued tokens; handed to their owner once and then only kept as digests.
#[derive(Debug, Clone)]
pub struct SessionTokens {
    /// Use as `Authorization: Bearer <access_token>`.
    pub access_token: Secret,
    /// Single-use; exchange for new tokens.
    pub refresh_token: Secret,
    /// Unix seconds.
    pub expires_at: i64,
    /// Unix seconds.
    pub refresh_expires_at: i64,
}

/// A user who may log in.
#[derive(Debug, Clone)]
pub struct Account {
    /// argon2id PHC string.
    pub password_hash: String,
    /// The identity a session of this user gets (its `expires_at` is set per session).
    pub identity: AuthInfo,
}

/// Token lifetimes.
#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    /// Access token lifetime.
    pub access_ttl: Duration,
    /// Refresh token lifetime.
    pub refresh_ttl: Duration,
    /// How long after its rotation a refresh token presented again is merely refused rather
    /// than taken for theft (which revokes the session).
    pub refresh_reuse_grace: Duration,
    /// Most live sessions of one user; a login beyond it ends the user's oldest.
    pub max_per_user: usize,
    /// Most rotations of one login remembered at once; a refresh beyond is refused.
    pub max_rotations: usize,
}

impl SessionError {
    /// The refusal this error is on every wire.
    pub fn refusal(&self) -> Refusal {
        match self {
            SessionError::InvalidLogin | SessionError::InvalidRefresh => Refusal::Unauthenticated,
            SessionError::RateLimited { .. } | SessionError::TooManyRotations { .. } => Refusal::RateLimited,
            SessionError::BadField { .. } => Refusal::InvalidRequest,
            SessionError::Unavailable(_) => Refusal::Unavailable,
            SessionError::Internal(_) => Refusal::Internal,
        }
    }

    /// The error code of an HTTP answer (RFC 6749 §5.2 where one applies).
    pub fn code(&self) -> &'static str {
        match self {
            SessionError::InvalidLogin => "invalid_credentials",
            SessionError::InvalidRefresh => "invalid_grant",
            SessionError::RateLimited { .. } | SessionError::TooManyRotations { .. } => "rate_limited",
            SessionError::BadField { .. } => "invalid_request",
            SessionError::Unavailable(_) => "temporarily_unavailable",
            SessionError::Internal(_) => "server_error",
        }
    }

    /// The message a client may see: the error itself, except for an internal failure,
    /// whose details stay in the log.
    pub fn public_message(&self) -> String {
        match self {
            SessionError::Unavailable(_) => "session store unavailable; retry later".to_owned(),
            SessionError::Internal(_) => "session service failed".to_owned(),
            _ => self.to_string(),
        }
    }

    /// When a rate-limited client may try again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SessionError::RateLimited { retry_after } | SessionError::TooManyRotations { retry_after } => {
                Some(*retry_after)
            }
            _ => None,
        }
    }

    /// [`SessionError::retry_after`] in whole seconds, rounded up (`Retry-After`): a client that
    /// waits what it is told is never refused again for being early.
    pub fn retry_after_seconds(&self) -> Option<u64> {
        self.retry_after().map(whole_seconds)
    }
}

/// Logs users in and out, rotates sessions, and resolves session tokens.
#[derive(Debug)]
pub struct SessionManager {
    accounts: HashMap<String, Account>,
    store: Arc<dyn SessionStore>,
    limiter: Arc<dyn LoginRateLimiter>,
    settings: SessionSettings,
    /// A hash to verify against for unknown usernames, so the answer takes as long as for a
    /// known one and does not reveal which usernames exist.
    decoy_hash: String,
    /// Bounds concurrent argon2 verifications (each takes ~19 MiB and tens of ms of CPU).
    hashing: Semaphore,
}

impl SessionManager {
    /// Builds a manager.
    ///
    /// Fails when an account's password hash is not an argon2id PHC string.
    pub fn new(
        accounts: HashMap<String, Account>,
        store: Arc<dyn SessionStore>,
        limiter: Arc<dyn LoginRateLimiter>,
        settings: SessionSettings,
    ) -> Result<Self, SessionError> {
        for (username, account) in &accounts {
            check_password_hash(&account.password_hash)
                .map_err(|error| SessionError::Internal(format!("user `{username}`: {error}")))?;
        }
        let decoy_hash = hash_password("decoy password for unknown users").map_err(SessionError::Internal)?;
        Ok(Self { accounts, store, limiter, settings, decoy_hash, hashing: Semaphore::new(4) })
    }

    /// The store, for the background purge.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// Checks the password and opens a session.
    ///
    /// Fails on a wrong username or password, when the username or `client` address is rate
    /// limited, or on an empty or oversized field.
    pub async fn login(
        &self,
        username: &str,
        password: &Secret,
        client: Option<ClientAddress>,
    ) -> Result<SessionTokens, SessionError> {
        if username.is_empty() || username.len() > MAX_USERNAME_BYTES {
            return Err(SessionError::BadField { field: "username", max: MAX_USERNAME_BYTES });
        }
        if password.expose().is_empty() || password.expose().len() > MAX_PASSWORD_BYTES {
            return Err(SessionError::BadField { field: "password", max: MAX_PASSWORD_BYTES });
        }
        // The address first: a blocked address is refused before the username is touched.
        let keys: Vec<LoginKey> = client
            .map(LoginKey::from)
            .into_iter()
            .chain(std::iter::once(LoginKey::Username(username.to_owned())))
            .collect();
        // Each attempt is counted as a failure before the password is checked, and given back
        // only once it is known right: a burst of concurrent guesses gets no more checks than
        // the budget, and a login cancelled mid-check (or whose ending is lost) stays counted.
        let mut attempts = Vec::with_capacity(keys.len());
        for key in &keys {
            match self.limiter.reserve(key).await {
                Ok(attempt) => attempts.push((key, attempt)),
                Err(refused) => {
                    self.finish(&attempts, false).await;
                    return Err(match refused {
                        Refused::Limited(retry_after) => {
                            metrics().login("rate_limited");
                            SessionError::RateLimited { retry_after }
                        }
                        Refused::Unavailable(reason) => {
                            metrics().login("unavailable");
                            SessionError::Unavailable(reason)
                        }
                    });
                }
            }
        }

        let account = self.accounts.get(username);
        let hash = account.map_or_else(|| self.decoy_hash.clone(), |account| account.password_hash.clone());
        let verified = match self.verify(hash, password.clone()).await {
            Ok(verified) => verified && account.is_some(),
            Err(error) => {
                self.finish(&attempts, false).await;
                return Err(error);
            }
        };
        self.finish(&attempts, !verified).await;
        let Some(account) = account.filter(|_| verified) else {
            tracing::info!(username = %crate::model::quote(username), "login failed");
            metrics().login("failure");
            return Err(SessionError::InvalidLogin);
        };
        // A success forgets the username's failures (not the address's).
        for key in keys.iter().filter(|key| matches!(key, LoginKey::Username(_))) {
            self.limiter.clear(key).await;
        }
        metrics().login("success");
        let (tokens, next) = self.issue();
        let mut auth = account.identity.clone();
        auth.kind = CredentialKind::Session;
        auth.expires_at = Some(next.expires_at);
        let family: FamilyId = rand::random();
        auth.extra.insert("session_id".to_owned(), format!("{family:032x}").get(..16).unwrap_or("").into());
        self.store
            .create(
                SessionRecord {
                    family,
                    username: username.to_owned(),
                    auth: Arc::new(auth),
                    access: next.access,
                    refresh: next.refresh,
                    refresh_expires_at: next.refresh_expires_at,
                },
                self.settings.max_per_user,
            )
            .await?;
        Ok(tokens)
    }

    /// Exchanges a refresh token for new tokens; the old access and refresh tokens stop working.
    /// A refresh token presented again within `refresh_reuse_grace` of its rotation gets the
    /// same new tokens again (a client retrying a refresh whose reply it lost, or refreshing
    /// twice at once), as long as the session still holds them; later, it revokes the whole
    /// session.
    ///
    /// Fails on an unknown, expired or reused refresh token.
    pub async fn refresh(&self, refresh_token: &Secret) -> Result<SessionTokens, SessionError> {
        let grace = self.settings.refresh_reuse_grace;
        let (tokens, mut next) = self.issue();
        next.replay = sealed::seal(refresh_token, &tokens).map_err(SessionError::Internal)?;
        match self.store.rotate(&refresh_token.digest(), &next, unix_now(), grace).await? {
            RefreshOutcome::Rotated(_) => Ok(tokens),
            RefreshOutcome::Replayed(sealed) => {
                // Whoever presents the token within the grace gets the live tokens: said, so a
                // theft in that window shows.
                tracing::info!(
                    fingerprint = %refresh_token.digest().fingerprint(),
                    "refresh token presented again within the grace: its rotation's tokens answered again"
                );
                sealed::open(refresh_token, &sealed).map_err(|error| {
                    tracing::error!(fingerprint = %refresh_token.digest().fingerprint(), "{error}");
                    SessionError::InvalidRefresh
                })
            }
            RefreshOutcome::Reused => {
                tracing::warn!(
                    fingerprint = %refresh_token.digest().fingerprint(),
                    "refresh token reused: session revoked"
                );
                Err(SessionError::InvalidRefresh)
            }
            RefreshOutcome::TooMany(retry_after) => {
                tracing::warn!(
                    fingerprint = %refresh_token.digest().fingerprint(),
                    "refresh refused: the login has rotated as often as it may remember"
                );
                Err(SessionError::TooManyRotations { retry_after })
            }
            // The session has rotated again since: the newer tokens stay good.
            RefreshOutcome::JustRotated | RefreshOutcome::Invalid => Err(SessionError::InvalidRefresh),
        }
    }

    /// Revokes the session this access or refresh token belongs to at once, even when the token
    /// was rotated out since (by its owner or by a thief who used a stolen refresh token first);
    /// false when there is no such live session.
    ///
    /// Fails when the store is unavailable.
    pub async fn logout(&self, token: &Secret) -> Result<bool, SessionError> {
        Ok(self.store.revoke(&token.digest()).await?)
    }

    /// Ends the attempts of one login.
    async fn finish(&self, attempts: &[(&LoginKey, Attempt)], failed: bool) {
        for (key, attempt) in attempts {
            self.limiter.finish(key, *attempt, failed).await;
        }
    }

    /// New tokens, and what the store keeps of them.
    fn issue(&self) -> (SessionTokens, NextTokens) {
        let now = unix_now();
        let access_token = random_token(ACCESS_PREFIX);
        let refresh_token = random_token(REFRESH_PREFIX);
        let next = NextTokens {
            access: access_token.digest(),
            refresh: refresh_token.digest(),
            expires_at: now.saturating_add(seconds(self.settings.access_ttl)),
            refresh_expires_at: now.saturating_add(seconds(self.settings.refresh_ttl)),
            replay: String::new(),
            remembered: self.settings.max_rotations.max(1),
        };
        let tokens = SessionTokens {
            access_token,
            refresh_token,
            expires_at: next.expires_at,
            refresh_expires_at: next.refresh_expires_at,
        };
        (tokens, next)
    }

    async fn verify(&self, hash: String, password: Secret) -> Result<bool, SessionError> {
        let _permit =
            self.hashing.acquire().await.map_err(|error| SessionError::Internal(error.to_string()))?;
        tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|parsed| {
                    Argon2::default().verify_password(password.expose().as_bytes(), &parsed).is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .map_err(|error| SessionError::Internal(format!("password check failed: {error}")))
    }
}

#[async_trait]
impl CredentialResolver for SessionManager {
    fn name(&self) -> &str {
        "session"
    }

    async fn resolve(&self, credential: &Credential) -> Result<Resolution, CredentialError> {
        // Every session token has the prefix: other tokens never cost a store lookup, and an
        // unreachable shared store never holds up a JWT.
        if !credential.secret.expose().starts_with(ACCESS_PREFIX) {
            return Ok(Resolution::NotMine);
        }
        match self.store.lookup_access(&credential.digest).await {
            Ok(Some(auth)) => Ok(Resolution::Resolved(auth)),
            Ok(None) => Err(CredentialError::Invalid("session is unknown, expired or revoked".to_owned())),
            Err(StoreError::Unavailable(reason) | StoreError::Full(reason)) => {
                Err(CredentialError::Unavailable { backend: "session".to_owned(), reason })
            }
            Err(error) => {
                tracing::error!(fingerprint = %credential.digest.fingerprint(), "{error}");
                Err(CredentialError::Invalid("session record is unreadable".to_owned()))
            }
        }
    }
}

fn whole_seconds(duration: Duration) -> u64 {
    duration.as_secs().saturating_add(u64::from(duration.subsec_nanos() > 0))
}

fn seconds(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

/// `prefix` + 256 random bits, base64url.
fn random_token(prefix: &str) -> Secret {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    Secret::new(format!("{prefix}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)))
}

/// Hashes a password as an argon2id PHC string with a random salt.
///
/// Fails only if the hasher rejects its parameters.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt_bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut salt_bytes);
    let salt =
        argon2::password_hash::SaltString::encode_b64(&salt_bytes).map_err(|error| error.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| error.to_string())
}

/// Checks that `hash` is an argon2id PHC string.
///
/// Fails on anything else, naming what is wrong.
pub fn check_password_hash(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash).map_err(|error| format!("not a PHC password hash: {error}"))?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(format!("password hash algorithm is `{}`, expected `argon2id`", parsed.algorithm));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
