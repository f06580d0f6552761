//! Where sessions live. The [`SessionStore`] trait lets a shared store (Redis, a database)
//! replace the in-memory one so several cedargate replicas see the same sessions.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;

use crate::model::{AuthInfo, SecretDigest};

/// Identifies one login and every token rotated from it.
pub type FamilyId = u128;

/// How long a revocation is remembered when the session's own expiry is unknown: 30 days.
pub const REVOKED_FALLBACK_SECONDS: i64 = 30 * 24 * 3600;

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
#[derive(Debug, Clone)]
pub struct NextTokens {
    /// SHA-256 of the new access token.
    pub access: SecretDigest,
    /// SHA-256 of the new refresh token.
    pub refresh: SecretDigest,
    /// Unix seconds: the new access token's expiry.
    pub expires_at: i64,
    /// Unix seconds: the new refresh token's expiry.
    pub refresh_expires_at: i64,
    /// The new tokens sealed under the refresh token they replace (opaque to the store): what
    /// presenting that token again within the reuse grace answers with.
    pub replay: String,
    /// Most rotations of the login remembered at once (at least one): a rotation beyond them
    /// is refused ([`RefreshOutcome::TooMany`]) until the oldest expires.
    pub remembered: usize,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone)]
pub enum RefreshOutcome {
    /// The token was live; it and its access token are retired, and the session (this
    /// record) now holds the next tokens.
    Rotated(SessionRecord),
    /// The token had already been used: the whole family is now revoked.
    Reused,
    /// The token was rotated moments ago (within the reuse grace) and the session still holds
    /// the tokens that rotation issued: these, sealed ([`NextTokens::replay`]). A client whose
    /// reply was lost, or which refreshed twice at once, gets the winner's tokens again.
    Replayed(String),
    /// The token was rotated moments ago, and the session has moved on since: refused, but the
    /// family lives on.
    JustRotated,
    /// Unknown or expired.
    Invalid,
    /// The login has [`NextTokens::remembered`] rotations still remembered: refused, nothing
    /// changed, until the oldest of them expires (after this long).
    TooMany(Duration),
}

/// Why the store could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store did not answer in time, or at all: an outage (503), never a refusal.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    /// The store is full and refuses what would grow it (Redis at `maxmemory`): an outage
    /// (503) for what writes; what only ends things still runs.
    #[error("session store full: {0}")]
    Full(String),
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
    /// Stores a new session, ending its user's oldest ones so that at most `max_per_user` are
    /// live.
    ///
    /// Fails when the family was revoked meanwhile, or the store is unavailable.
    async fn create(&self, record: SessionRecord, max_per_user: usize) -> Result<(), StoreError>;

    /// The identity behind an access token, expired or not.
    async fn lookup_access(&self, access: &SecretDigest) -> Result<Option<Arc<AuthInfo>>, StoreError>;

    /// Retires a refresh token and its access token and stores `next` in their place, as one
    /// step: of concurrent callers with the same token, at most one gets `Rotated`. A token
    /// presented again within `reuse_grace` of its rotation is `Replayed` (or `JustRotated`
    /// once the session has rotated again); later, `Reused`, which revokes the session.
    async fn rotate(
        &self,
        refresh: &SecretDigest,
        next: &NextTokens,
        now: i64,
        reuse_grace: Duration,
    ) -> Result<RefreshOutcome, StoreError>;

    /// Revokes the session this access or refresh token belongs to, current or rotated out
    /// (whoever rotated it since, a logout with the token its owner holds still ends it); false
    /// if there is no such live session.
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
    /// Refresh tokens already used, kept until they would have expired, to detect reuse.
    spent: DashMap<SecretDigest, Spent>,
    /// Access tokens rotated out, kept as long as their refresh tokens would have lived: the
    /// family, and until when.
    retired: DashMap<SecretDigest, (FamilyId, i64)>,
    /// Families revoked (by logout or reuse), kept until their refresh tokens would expire,
    /// so a rotation racing the revocation cannot resurrect them.
    revoked: DashMap<FamilyId, i64>,
    /// Each user's logins, oldest first (some may have ended since).
    users: DashMap<String, VecDeque<FamilyId>>,
    /// Each login's rotations remembered, oldest first: (spent refresh, retired access, until).
    history: DashMap<FamilyId, VecDeque<(SecretDigest, SecretDigest, i64)>>,
}

/// A refresh token already used.
#[derive(Debug, Clone)]
struct Spent {
    family: FamilyId,
    /// When it would have expired.
    until: i64,
    /// When it was rotated.
    at: Instant,
    /// The refresh token its rotation issued, and those tokens sealed; the box is dropped once
    /// the grace has passed, so none but the newest rotations' boxes are ever kept.
    next: SecretDigest,
    replay: String,
    replay_until: Instant,
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

    /// Remembers one rotation of `record`'s login (`spent` its refresh token), unless `most`
    /// are still remembered: then how long until the oldest expires.
    fn remember_rotation(
        &self,
        record: &SessionRecord,
        spent: SecretDigest,
        most: usize,
        now: i64,
    ) -> Option<i64> {
        let mut rotations = self.history.entry(record.family).or_default();
        while rotations.front().is_some_and(|(_, _, until)| *until <= now) {
            if let Some((spent, retired, _)) = rotations.pop_front() {
                self.spent.remove(&spent);
                self.retired.remove(&retired);
            }
        }
        if rotations.len() >= most.max(1) {
            return Some(rotations.front().map_or(1, |(_, _, until)| until - now));
        }
        rotations.push_back((spent, record.access, record.refresh_expires_at));
        None
    }

    /// How many rotations are remembered, for tests.
    #[cfg(test)]
    pub(crate) fn rotations_remembered(&self) -> usize {
        self.spent.len().max(self.retired.len())
    }

    /// The sealed replays of the refresh tokens spent, for tests.
    #[cfg(test)]
    pub(crate) fn spent_replays(&self) -> Vec<String> {
        self.spent.iter().map(|entry| entry.replay.clone()).collect()
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
    async fn create(&self, record: SessionRecord, max_per_user: usize) -> Result<(), StoreError> {
        if self.revoked.contains_key(&record.family) {
            return Err(StoreError::Revoked);
        }
        let (family, until) = (record.family, record.refresh_expires_at);
        let oldest: Vec<FamilyId> = {
            // The user's entry holds its shard's lock: concurrent logins of one user count in turn.
            let mut logins = self.users.entry(record.username.clone()).or_default();
            self.insert(record);
            logins.retain(|login| self.families.contains_key(login));
            let over = (logins.len() + 1).saturating_sub(max_per_user.max(1)).min(logins.len());
            let oldest = logins.drain(..over).collect();
            logins.push_back(family);
            oldest
        };
        // Kept as revoked at least as long as the newest login lives, longer than any older one.
        for login in oldest {
            self.revoke_family(login, until);
        }
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
        // finds one or the other, never neither; the family names its next tokens before the
        // old ones go, so a replay racing the rotation finds them.
        if let dashmap::Entry::Occupied(live) = self.refresh.entry(*refresh) {
            let record = live.get().clone();
            if record.refresh_expires_at <= now {
                live.remove();
                self.access.remove(&record.access);
                self.families.remove(&record.family);
                return Ok(RefreshOutcome::Invalid);
            }
            if let Some(wait) = self.remember_rotation(&record, *refresh, next.remembered, now) {
                let wait = u64::try_from(wait.max(1)).unwrap_or(1);
                return Ok(RefreshOutcome::TooMany(Duration::from_secs(wait)));
            }
            let rotated = record.rotated(next);
            let at = Instant::now();
            let spent = Spent {
                family: record.family,
                until: record.refresh_expires_at,
                at,
                next: next.refresh,
                replay: next.replay.clone(),
                replay_until: at + reuse_grace,
            };
            self.spent.insert(*refresh, spent);
            self.retired.insert(record.access, (record.family, record.refresh_expires_at));
            self.families.insert(record.family, (next.access, next.refresh));
            self.access.insert(next.access, (record.family, Arc::clone(&rotated.auth)));
            self.access.remove(&record.access);
            // Released before the next token goes in: it may hash to the same shard.
            live.remove();
            self.refresh.insert(next.refresh, rotated.clone());
            // A logout that found the family while this rotation held its refresh token
            // revoked it: the new tokens go too.
            if self.revoked.contains_key(&rotated.family) {
                self.revoke_family(rotated.family, rotated.refresh_expires_at);
                return Ok(RefreshOutcome::Invalid);
            }
            return Ok(RefreshOutcome::Rotated(rotated));
        }
        let Some(spent) = self.spent.get(refresh).map(|entry| entry.value().clone()) else {
            return Ok(RefreshOutcome::Invalid);
        };
        if spent.at.elapsed() >= reuse_grace {
            self.revoke_family(spent.family, spent.until);
            return Ok(RefreshOutcome::Reused);
        }
        let current = self.families.get(&spent.family).map(|tokens| tokens.1);
        if current == Some(spent.next) && !spent.replay.is_empty() {
            Ok(RefreshOutcome::Replayed(spent.replay))
        } else {
            Ok(RefreshOutcome::JustRotated)
        }
    }

    async fn revoke(&self, token: &SecretDigest) -> Result<bool, StoreError> {
        let found = self
            .access
            .get(token)
            .map(|entry| (entry.0, None))
            .or_else(|| self.refresh.get(token).map(|entry| (entry.family, Some(entry.refresh_expires_at))))
            .or_else(|| self.spent.get(token).map(|entry| (entry.family, Some(entry.until))))
            .or_else(|| self.retired.get(token).map(|entry| (entry.0, Some(entry.1))));
        let Some((family, found_until)) = found else { return Ok(false) };
        // Remembered as long as the session could have lived, and no longer.
        // Copied out before `refresh` is read: holding a `families` shard while waiting for a
        // `refresh` one would deadlock against a rotation, which holds them the other way.
        let current = self.families.get(&family).map(|tokens| tokens.1);
        let until = current
            .and_then(|refresh| self.refresh.get(&refresh).map(|record| record.refresh_expires_at))
            .or(found_until)
            .unwrap_or_else(|| crate::model::unix_now().saturating_add(REVOKED_FALLBACK_SECONDS));
        Ok(self.revoke_family(family, until))
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
        // An expired access token of a live session stays, so a logout with it still ends the
        // session (the chain refuses it by its expiry).
        self.access.retain(|_, (family, _)| self.families.contains_key(family));
        let instant = Instant::now();
        self.spent.retain(|_, spent| {
            if spent.replay_until <= instant {
                spent.replay = String::new();
            }
            spent.until > now
        });
        self.retired.retain(|_, (_, until)| *until > now);
        self.revoked.retain(|_, until| *until > now);
        self.history.retain(|_, rotations| {
            rotations.retain(|(_, _, until)| *until > now);
            !rotations.is_empty()
        });
        self.users.retain(|_, logins| {
            logins.retain(|family| self.families.contains_key(family));
            !logins.is_empty()
        });
        Ok(())
    }
}
