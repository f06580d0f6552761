//! Which caller each MCP session belongs to. The MCP specification asks servers to bind
//! `Mcp-Session-Id` to the user it was issued to; cedargate does it for them, from the
//! `initialize` answer that issued the id, and refuses the id to anyone else.
//!
//! Bounded and expiring: a binding lives `ttl` after its last use, a caller holds at most
//! `per_owner` (its oldest goes first), and at `max` bindings the expired, then the least
//! recently used, are dropped. So one caller opening sessions by the thousand pushes out only
//! its own. A session id cedargate does not know
//! (dropped, expired, issued before a restart, or never seen) is refused as the specification
//! has servers refuse an unknown session: 404, and the client starts a new session. So no
//! binding can be pushed out to let another caller in.
//!
//! Session ids and callers are held as SHA-256 digests. The bindings live in this process
//! ([`SessionOwners`]) or, for several replicas, in a store they share ([`Bindings`]).

use std::collections::VecDeque;
use std::fmt::Debug;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;

use crate::model::{AuthInfo, SecretDigest};

/// A caller, as a session is bound to it: the subject within its tenant and issuer, or no
/// one (a caller without a credential).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner(SecretDigest);

impl Owner {
    /// The owner `auth` is; `None` is a caller without a credential.
    pub fn of(auth: Option<&AuthInfo>) -> Self {
        let key = match auth {
            // Lengths first, so no subject can pose as another tenant's or issuer's.
            Some(auth) => format!(
                "{}:{}:{}:{}{}{}",
                auth.tenant.len(),
                auth.issuer.len(),
                auth.subject.len(),
                auth.tenant,
                auth.issuer,
                auth.subject
            ),
            None => "anonymous".to_owned(),
        };
        Self(SecretDigest::of(key.as_bytes()))
    }

    /// The digest the owner is held as.
    pub fn digest(&self) -> &SecretDigest {
        &self.0
    }

    /// No caller at all: a session id an MCP server issued twice, to two callers, is bound to
    /// it, so it answers neither (no key hashes to all zeros).
    pub fn nobody() -> Self {
        Self(SecretDigest::NONE)
    }
}

/// Where session bindings are kept. Errors are an outage of a shared store (its reason, never
/// a session id): the exchange then fails closed.
#[async_trait]
pub trait Bindings: Debug + Send + Sync {
    /// Binds the session whose id has digest `session` to `owner`; false when it is bound to
    /// another owner still (an MCP server handed one caller's session id to another): then it is
    /// bound to [`Owner::nobody`], so neither caller can use it.
    async fn bind(&self, session: &SecretDigest, owner: &Owner) -> Result<bool, String>;
    /// How `session` stands with `owner`; its own session's binding is renewed.
    async fn standing(&self, session: &SecretDigest, owner: &Owner) -> Result<Standing, String>;
    /// Forgets `session` (its session was ended).
    async fn end(&self, session: &SecretDigest) -> Result<(), String>;
}

/// The digest a session id is held as.
pub fn session_key(session_id: &str) -> SecretDigest {
    digest(session_id)
}

/// How a session id stands with a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// The caller's own session.
    Owned,
    /// Another caller's session.
    Foreign,
    /// No binding (never issued through cedargate, expired or dropped).
    Unknown,
}

#[derive(Debug)]
struct Binding {
    owner: Owner,
    last_used: Instant,
}

/// The session bindings of this process.
#[derive(Debug)]
pub struct SessionOwners {
    bindings: DashMap<SecretDigest, Binding>,
    /// Each owner's sessions, oldest first; an id no longer bound to that owner is skipped
    /// and dropped when met.
    owned: DashMap<SecretDigest, VecDeque<SecretDigest>>,
    ttl: Duration,
    max: usize,
    per_owner: usize,
}

impl SessionOwners {
    /// At most `max` bindings and `per_owner` of one owner (each at least one), each living
    /// `ttl` after its last use.
    pub fn new(ttl: Duration, max: usize, per_owner: usize) -> Self {
        Self {
            bindings: DashMap::new(),
            owned: DashMap::new(),
            ttl,
            max: max.max(1),
            per_owner: per_owner.max(1),
        }
    }

    /// Binds `session_id` to `owner`; false when another owner's binding of it is live.
    pub fn bind(&self, session_id: &str, owner: Owner) -> bool {
        self.bind_at(session_id, owner, Instant::now())
    }

    fn bind_at(&self, session_id: &str, owner: Owner, now: Instant) -> bool {
        self.bind_key(digest(session_id), owner, now)
    }

    fn bind_key(&self, key: SecretDigest, owner: Owner, now: Instant) -> bool {
        {
            // Checked and poisoned under the entry's lock: two answers issuing one id at once
            // cannot both bind it.
            if let dashmap::Entry::Occupied(mut bound) = self.bindings.entry(key) {
                let live = now.saturating_duration_since(bound.get().last_used) < self.ttl;
                if live && bound.get().owner != owner {
                    bound.insert(Binding { owner: Owner::nobody(), last_used: now });
                    return false;
                }
            }
        }
        {
            let mut sessions = self.owned.entry(owner.0).or_default();
            // Ids that were ended, expired or pushed out, or are another's now.
            sessions.retain(|id| {
                self.bindings.get(id).is_some_and(|binding| binding.owner == owner) && *id != key
            });
            while sessions.len() >= self.per_owner {
                if let Some(oldest) = sessions.pop_front() {
                    self.bindings.remove(&oldest);
                }
            }
            sessions.push_back(key);
        }
        if self.bindings.len() >= self.max && !self.bindings.contains_key(&key) {
            self.make_room(now);
        }
        self.bindings.insert(key, Binding { owner, last_used: now });
        if self.owned.len() > self.max {
            // Owners whose sessions all ended: forgotten, so the table of owners stays bounded.
            self.owned.retain(|_, sessions| {
                sessions.retain(|id| self.bindings.contains_key(id));
                !sessions.is_empty()
            });
        }
        true
    }

    /// How `session_id` stands with `owner`; its own session's binding is renewed.
    pub fn standing(&self, session_id: &str, owner: &Owner) -> Standing {
        self.standing_at(session_id, owner, Instant::now())
    }

    fn standing_at(&self, session_id: &str, owner: &Owner, now: Instant) -> Standing {
        self.standing_key(digest(session_id), owner, now)
    }

    fn standing_key(&self, key: SecretDigest, owner: &Owner, now: Instant) -> Standing {
        let Some(mut binding) = self.bindings.get_mut(&key) else {
            return Standing::Unknown;
        };
        if now.saturating_duration_since(binding.last_used) >= self.ttl {
            drop(binding);
            self.bindings
                .remove_if(&key, |_, binding| now.saturating_duration_since(binding.last_used) >= self.ttl);
            return Standing::Unknown;
        }
        if !binding.owner.0.ct_eq(&owner.0) {
            return Standing::Foreign;
        }
        binding.last_used = now;
        Standing::Owned
    }

    /// Forgets `session_id` (its session was ended).
    pub fn end(&self, session_id: &str) {
        self.bindings.remove(&digest(session_id));
    }

    /// How many bindings are held.
    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }

    /// Drops the expired bindings, then, if still full, the least recently used tenth.
    fn make_room(&self, now: Instant) {
        self.bindings.retain(|_, binding| now.saturating_duration_since(binding.last_used) < self.ttl);
        if self.bindings.len() < self.max {
            return;
        }
        let mut ages: Vec<Instant> = self.bindings.iter().map(|entry| entry.last_used).collect();
        let drop = (self.max / 10).max(1).min(ages.len());
        ages.select_nth_unstable(drop - 1);
        let cutoff = ages[drop - 1];
        let mut dropped = 0;
        self.bindings.retain(|_, binding| {
            if dropped < drop && binding.last_used <= cutoff {
                dropped += 1;
                return false;
            }
            true
        });
    }
}

#[async_trait]
impl Bindings for SessionOwners {
    async fn bind(&self, session: &SecretDigest, owner: &Owner) -> Result<bool, String> {
        Ok(self.bind_key(*session, owner.clone(), Instant::now()))
    }

    async fn standing(&self, session: &SecretDigest, owner: &Owner) -> Result<Standing, String> {
        Ok(self.standing_key(*session, owner, Instant::now()))
    }

    async fn end(&self, session: &SecretDigest) -> Result<(), String> {
        self.bindings.remove(session);
        Ok(())
    }
}

fn digest(session_id: &str) -> SecretDigest {
    SecretDigest::of(session_id.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CredentialKind;

    fn auth(subject: &str, issuer: &str, tenant: &str) -> AuthInfo {
        let mut auth = AuthInfo::new(CredentialKind::Jwt, subject, Vec::new());
        auth.issuer = issuer.to_owned();
        auth.tenant = tenant.to_owned();
        auth
    }

    #[test]
    fn a_session_is_its_owners_only() {
        let owners = SessionOwners::new(Duration::from_secs(60), 10, 10);
        let alice = Owner::of(Some(&auth("alice", "https://a", "")));
        owners.bind("s1", alice.clone());
        assert_eq!(owners.standing("s1", &alice), Standing::Owned);
        // The same subject from another issuer or tenant is someone else, as is no one.
        for other in [
            Owner::of(Some(&auth("alice", "https://b", ""))),
            Owner::of(Some(&auth("alice", "https://a", "t2"))),
            Owner::of(Some(&auth("bob", "https://a", ""))),
            // Lengths keep the parts apart: "https://a" + "" + "alice" is not "https://" + "a" + "alice".
            Owner::of(Some(&auth("aalice", "https://", ""))),
            Owner::of(None),
        ] {
            assert_eq!(owners.standing("s1", &other), Standing::Foreign);
        }
        assert!(owners.bind("s1", alice.clone()), "its owner may bind it again");
        // An MCP server handing alice's id to another caller: the session answers neither.
        assert!(!owners.bind("s1", Owner::of(Some(&auth("bob", "https://a", "")))));
        assert_eq!(owners.standing("s1", &alice), Standing::Foreign);
        assert_eq!(owners.standing("s1", &Owner::of(Some(&auth("bob", "https://a", "")))), Standing::Foreign);
        assert_eq!(owners.standing("s2", &alice), Standing::Unknown);
        owners.end("s1");
        assert_eq!(owners.standing("s1", &alice), Standing::Unknown);
    }

    #[test]
    fn a_binding_expires_after_its_last_use() {
        let owners = SessionOwners::new(Duration::from_secs(60), 10, 10);
        let alice = Owner::of(Some(&auth("alice", "", "")));
        let start = Instant::now();
        owners.bind_at("s1", alice.clone(), start);
        assert_eq!(owners.standing_at("s1", &alice, start + Duration::from_secs(50)), Standing::Owned);
        // Renewed at 50 s, so alive at 100 s; gone 60 s after that.
        assert_eq!(owners.standing_at("s1", &alice, start + Duration::from_secs(100)), Standing::Owned);
        assert_eq!(owners.standing_at("s1", &alice, start + Duration::from_secs(160)), Standing::Unknown);
        assert!(owners.is_empty());
    }

    /// Found by the adversarial review: one caller opening sessions by the thousand pushed
    /// everyone else's out of the table.
    #[test]
    fn a_caller_opening_many_sessions_pushes_out_only_its_own() {
        let owners = SessionOwners::new(Duration::from_secs(3600), 50, 5);
        let (alice, mallory) =
            (Owner::of(Some(&auth("alice", "", ""))), Owner::of(Some(&auth("mallory", "", ""))));
        owners.bind("alice-1", alice.clone());
        for n in 0..60 {
            owners.bind(&format!("mallory-{n}"), mallory.clone());
        }
        assert_eq!(owners.standing("alice-1", &alice), Standing::Owned);
        assert_eq!(owners.len(), 6);
        // Mallory keeps the newest five.
        assert_eq!(owners.standing("mallory-54", &mallory), Standing::Unknown);
        assert_eq!(owners.standing("mallory-55", &mallory), Standing::Owned);
        assert_eq!(owners.standing("mallory-59", &mallory), Standing::Owned);
        // An ended session frees its place.
        owners.end("mallory-59");
        owners.bind("mallory-60", mallory.clone());
        assert_eq!(owners.standing("mallory-55", &mallory), Standing::Owned);
    }

    #[test]
    fn a_full_table_drops_the_least_recently_used() {
        let owners = SessionOwners::new(Duration::from_secs(3600), 20, 100);
        let alice = Owner::of(Some(&auth("alice", "", "")));
        let start = Instant::now();
        for n in 0..20u64 {
            owners.bind_at(&format!("s{n}"), alice.clone(), start + Duration::from_secs(n));
        }
        // s0 is used again, so s1 and s2 are the oldest.
        owners.standing_at("s0", &alice, start + Duration::from_secs(30));
        owners.bind_at("new", alice.clone(), start + Duration::from_secs(31));
        assert!(owners.len() <= 20);
        let at = start + Duration::from_secs(32);
        assert_eq!(owners.standing_at("s0", &alice, at), Standing::Owned);
        assert_eq!(owners.standing_at("s1", &alice, at), Standing::Unknown);
        assert_eq!(owners.standing_at("s2", &alice, at), Standing::Unknown);
        assert_eq!(owners.standing_at("s3", &alice, at), Standing::Owned);
        assert_eq!(owners.standing_at("new", &alice, at), Standing::Owned);
    }
}
