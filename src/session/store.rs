//! Where sessions live. The [`SessionStore`] trait lets a shared store (Redis, a database)
//! replace the in-memory one so several cedargate replicas see the same sessions.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;

use crate::model::{AuthInfo, SecretDigest};

/// Identifies one login and every token rotated from it.
pub type FamilyId = u128;

/// One live session: its identity and the digests of its current tokens.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// The login this session descends from.
    pub family: FamilyId,
    /// Who logged in.
    pub username: String,
    /// The identity; `expires_at` is the access token's expiry.
    pub auth: Arc<AuthInfo>,
    /// SHA-256 of the access token.
    pub access: SecretDigest,
    /// SHA-256 of the refresh token.
    pub refresh: SecretDigest,
    /// Unix seconds after which the refresh token is dead.
    pub refresh_expires_at: i64,
}

impl SessionRecord {
    /// This session as it is after a rotation to `next`: the same login and identity, the
    /// new tokens and expiries.
    pub fn rotated(&self, next: &NextTokens) -> SessionRecord {
        let mut auth = (*self.auth).clone();
        auth.expires_at = Some(next.expires_at);
        SessionRecord {
            family: self.family,
            username: self.username.clone(),
            auth: Arc::new(auth),
            access: next.access,
            refresh: next.refresh,
            refresh_expires_at: next.refresh_expires_at,
        }
    }
}

/// The tokens a rotation puts in place of the ones it retires. They are made before the store
/// is asked, so it retires the old tokens and stores these in one step: a replica that dies
/// mid-rotation leaves the old session or the new one in a shared store, never neither.
#[derive(Debug, Clone, Copy)]
pub struct NextTokens {
    /// SHA-256 of the new access token.
    pub access: SecretDigest,
    /// SHA-256 of the new refresh token.
    pub refresh: SecretDigest,
    /// Unix seconds: the new access token's expiry.
    pub expires_at: i64,
    /// Unix seconds: the new refresh token's expiry.
    pub refresh_expires_at: i64,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone)]
pub enum RefreshOutcome {
    /// The token was live; it and its access token are retired, and the session (this
    /// record) now holds the next tokens.
    Rotated(SessionRecord),
    /// The token had already been used: the whole family is now revoked.
    Reused,
    /// The token was rotated moments ago (within the reuse grace): refused, but the family
    /// lives on, so a client's concurrent or retried refresh does not kill the winner's tokens.
    JustRotated,
    /// Unknown or expired.
    Invalid,
}

/// Why the store could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store did not answer in time, or at all: an outage (503), never a refusal.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    /// The store answered with something cedargate did not write there (a value of another
    /// type, a record that does not parse): the token it belongs to is refused.
    #[error("session store holds an unreadable record: {0}")]
    Corrupt(String),
    /// The session was revoked while it was being written.
    #[error("session was revoked")]
    Revoked,
}

/// Session storage. Tokens are only ever stored and looked up by digest.
#[async_trait]
pub trait SessionStore: Debug + Send + Sync {
    /// Stores a new session.
    ///
    /// Fails when the family was revoked meanwhile, or the store is unavailable.
    async fn create(&self, record: SessionRecord) -> Result<(), StoreError>;

    /// The identity behind an access token, expired or not.
    async fn lookup_access(&self, access: &SecretDigest) -> Result<Option<Arc<AuthInfo>>, StoreError>;

    /// Retires a refresh token and its access token and stores `next` in their place, as one
    /// step: of concurrent callers with the same token, at most one gets `Rotated`. A token
    /// presented again within `reuse_grace` of its rotation is `JustRotated`; later, `Reused`,
    /// which revokes the session.
    async fn rotate(
        &self,
        refresh: &SecretDigest,
        next: &NextTokens,
        now: i64,
        reuse_grace: Duration,
    ) -> Result<RefreshOutcome, StoreError>;

    /// Revokes the session holding this access or refresh token; false if there is none.
    async fn revoke(&self, token: &SecretDigest) -> Result<bool, StoreError>;

    /// Drops what has expired by `now`.
    async fn purge_expired(&self, now: i64) -> Result<(), StoreError>;
}

/// Sessions in this process's memory.
#[derive(Debug, Default)]
pub struct MemorySessionStore {
    access: DashMap<SecretDigest, (FamilyId, Arc<AuthInfo>)>,
    refresh: DashMap<SecretDigest, SessionRecord>,
    /// The current tokens of each live family, to revoke a family from either token.
    families: DashMap<FamilyId, (SecretDigest, SecretDigest)>,
    /// Refresh tokens already used, kept until they would have expired, to detect reuse: the
    /// family, when the token would have expired, and when it was rotated.
    spent: DashMap<SecretDigest, (FamilyId, i64, Instant)>,
    /// Families revoked (by logout or reuse), kept until their refresh tokens would expire,
    /// so a rotation racing the revocation cannot resurrect them.
    revoked: DashMap<FamilyId, i64>,
}

impl MemorySessionStore {
    fn insert(&self, record: SessionRecord) {
        self.families.insert(record.family, (record.access, record.refresh));
        self.access.insert(record.access, (record.family, Arc::clone(&record.auth)));
        self.refresh.insert(record.refresh, record);
    }

    fn revoke_family(&self, family: FamilyId, until: i64) -> bool {
        self.revoked.insert(family, until);
        match self.families.remove(&family) {
            Some((_, (access, refresh))) => {
                self.access.remove(&access);
                self.refresh.remove(&refresh);
                true
            }
            None => false,
        }
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.families.len()
    }

    /// True when no session is live.
    pub fn is_empty(&self) -> bool {
        self.families.is_empty()
    }
}

#[async_trait]
impl SessionStore for MemorySessionStore {
    async fn create(&self, record: SessionRecord) -> Result<(), StoreError> {
        if self.revoked.contains_key(&record.family) {
            return Err(StoreError::Revoked);
        }
        self.insert(record);
        Ok(())
    }

    async fn lookup_access(&self, access: &SecretDigest) -> Result<Option<Arc<AuthInfo>>, StoreError> {
        Ok(self.access.get(access).map(|entry| Arc::clone(&entry.1)))
    }

    async fn rotate(
        &self,
        refresh: &SecretDigest,
        next: &NextTokens,
        now: i64,
        reuse_grace: Duration,
    ) -> Result<RefreshOutcome, StoreError> {
        // The spent entry is written while the live one is still held, so a concurrent caller
        // finds one or the other, never neither.
        if let dashmap::Entry::Occupied(live) = self.refresh.entry(*refresh) {
            let record = live.get().clone();
            let expired = record.refresh_expires_at <= now;
            if !expired {
                self.spent.insert(*refresh, (record.family, record.refresh_expires_at, Instant::now()));
            }
            live.remove();
            self.access.remove(&record.access);
            self.families.remove(&record.family);
            if expired {
                return Ok(RefreshOutcome::Invalid);
            }
            let rotated = record.rotated(next);
            self.insert(rotated.clone());
            // A logout that found the family while this rotation held its refresh token
            // revoked it: the new tokens go too.
            if self.revoked.contains_key(&rotated.family) {
                self.revoke_family(rotated.family, rotated.refresh_expires_at);
                return Ok(RefreshOutcome::Invalid);
            }
            return Ok(RefreshOutcome::Rotated(rotated));
        }
        let spent = self.spent.get(refresh).map(|entry| *entry.value());
        match spent {
            Some((_, _, rotated)) if rotated.elapsed() < reuse_grace => Ok(RefreshOutcome::JustRotated),
            Some((family, until, _)) => {
                self.revoke_family(family, until);
                Ok(RefreshOutcome::Reused)
            }
            None => Ok(RefreshOutcome::Invalid),
        }
    }

    async fn revoke(&self, token: &SecretDigest) -> Result<bool, StoreError> {
        let by_access = self.access.get(token).map(|entry| entry.0);
        let by_refresh = self.refresh.get(token).map(|entry| (entry.family, entry.refresh_expires_at));
        match (by_access, by_refresh) {
            (Some(family), _) => {
                let until = self
                    .families
                    .get(&family)
                    .and_then(|tokens| self.refresh.get(&tokens.1).map(|record| record.refresh_expires_at))
                    .unwrap_or(i64::MAX);
                Ok(self.revoke_family(family, until))
            }
            (None, Some((family, until))) => Ok(self.revoke_family(family, until)),
            (None, None) => Ok(false),
        }
    }

    async fn purge_expired(&self, now: i64) -> Result<(), StoreError> {
        let dead: Vec<SessionRecord> = self
            .refresh
            .iter()
            .filter(|entry| entry.refresh_expires_at <= now)
            .map(|entry| entry.value().clone())
            .collect();
        for record in dead {
            self.refresh.remove(&record.refresh);
            self.access.remove(&record.access);
            self.families.remove(&record.family);
        }
        self.access.retain(|_, (_, auth)| !auth.is_expired(now));
        self.spent.retain(|_, (_, until, _)| *until > now);
        self.revoked.retain(|_, until| *until > now);
        Ok(())
    }
}
