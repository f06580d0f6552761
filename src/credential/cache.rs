//! A caching wrapper for expensive backends (JWT verification, token introspection):
//! results keyed by the token's SHA-256, bounded in time and size, and single-flight, so N
//! concurrent first sights of a token make exactly one upstream call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;

use crate::telemetry::metrics::metrics;
use crate::telemetry::trace;
use tokio::sync::OnceCell;

use super::{CredentialError, CredentialResolver, Resolution};
use crate::model::{unix_now, AuthInfo, Credential, SecretDigest};

/// Cache bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// Longest a valid result is reused, whatever the token's own expiry: a revoked token
    /// stops working within this bound.
    pub max_ttl: Duration,
    /// How long an invalid token's refusal is reused.
    pub negative_ttl: Duration,
    /// Most entries; beyond it expired entries are dropped, then the oldest.
    pub max_entries: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            max_ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(10),
            max_entries: 100_000,
        }
    }
}

type Answer = Result<Resolution, CredentialError>;

#[derive(Debug, Clone)]
struct Entry {
    answer: Answer,
    until: Instant,
}

/// `inner`, with its answers cached.
#[derive(Debug)]
pub struct CachedResolver {
    inner: Arc<dyn CredentialResolver>,
    settings: CacheSettings,
    entries: DashMap<SecretDigest, Entry>,
    /// First sights in progress; every caller for the same token awaits the same cell.
    inflight: DashMap<SecretDigest, Arc<OnceCell<Answer>>>,
}

impl CachedResolver {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn CredentialResolver>, settings: CacheSettings) -> Self {
        Self { inner, settings, entries: DashMap::new(), inflight: DashMap::new() }
    }

    /// Forgets the cached answer for a token digest; true if there was one.
    pub fn evict(&self, digest: &SecretDigest) -> bool {
        let evicted = self.entries.remove(digest).is_some();
        if evicted {
            metrics().cache_entries(-1, Some("evicted"));
        }
        evicted
    }

    /// Forgets every cached answer.
    pub fn clear(&self) {
        let mut evicted = 0;
        self.entries.retain(|_, _| {
            evicted += 1;
            false
        });
        if evicted > 0 {
            metrics().cache_entries(-count(evicted), Some("evicted"));
        }
    }

    /// Forgets every cached answer whose digest has this fingerprint; how many.
    pub fn evict_fingerprint(&self, fingerprint: &str) -> usize {
        // Counted as removed, not as the change in size: a concurrent store or eviction
        // changes the size too, and the gauge would drift.
        let mut evicted = 0;
        self.entries.retain(|digest, _| {
            let keep = digest.fingerprint() != fingerprint;
            evicted += usize::from(!keep);
            keep
        });
        if evicted > 0 {
            metrics().cache_entries(-count(evicted), Some("evicted"));
        }
        evicted
    }

    /// Number of cached answers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How long `answer` may be reused, or `None` when it must not be cached.
    fn lifetime(&self, answer: &Answer) -> Option<Duration> {
        match answer {
            Ok(Resolution::Resolved(auth)) => Some(self.positive_lifetime(auth)),
            // Refusals of the token itself are stable; an unavailable backend is not an answer,
            // and an unknown key may be one the issuer has just published.
            Err(CredentialError::Invalid(_) | CredentialError::Expired) => Some(self.settings.negative_ttl),
            Ok(Resolution::NotMine) | Err(_) => None,
        }
    }

    fn positive_lifetime(&self, auth: &AuthInfo) -> Duration {
        // Until the identity stops being accepted (its issuer's leeway included), the same
        // bound the chain checks, so an answer accepted within the leeway is cached too.
        let until_expiry = auth
            .valid_until()
            .map(|until| Duration::from_secs(u64::try_from(until.saturating_sub(unix_now())).unwrap_or(0)));
        until_expiry.map_or(self.settings.max_ttl, |left| left.min(self.settings.max_ttl))
    }

    fn store(&self, digest: SecretDigest, answer: &Answer) {
        let Some(lifetime) = self.lifetime(answer).filter(|lifetime| !lifetime.is_zero()) else {
            return;
        };
        if self.entries.len() >= self.settings.max_entries {
            let now = Instant::now();
            let mut expired = 0;
            self.entries.retain(|_, entry| {
                let keep = entry.until > now;
                expired += usize::from(!keep);
                keep
            });
            metrics().cache_entries(-count(expired), Some("expired"));
            if self.entries.len() >= self.settings.max_entries {
                // Still full of live entries: drop the ones closest to expiry.
                let mut untils: Vec<(SecretDigest, Instant)> =
                    self.entries.iter().map(|entry| (*entry.key(), entry.until)).collect();
                untils.sort_unstable_by_key(|(_, until)| *until);
                for (digest, _) in untils.iter().take(self.settings.max_entries / 10 + 1) {
                    if self.entries.remove(digest).is_some() {
                        metrics().cache_entries(-1, Some("capacity"));
                    }
                }
            }
        }
        let entry = Entry { answer: answer.clone(), until: Instant::now() + lifetime };
        if self.entries.insert(digest, entry).is_none() {
            metrics().cache_entries(1, None);
        }
    }
}

#[async_trait]
impl CredentialResolver for CachedResolver {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn resolve(&self, credential: &Credential) -> Result<Resolution, CredentialError> {
        let digest = credential.digest;
        if let Some(entry) = self.entries.get(&digest) {
            if entry.until > Instant::now() {
                metrics().cache_lookup(true);
                trace::record("cedargate.credential.cache", "hit");
                return entry.answer.clone();
            }
        }
        metrics().cache_lookup(false);
        trace::record("cedargate.credential.cache", "miss");
        let cell = Arc::clone(self.inflight.entry(digest).or_default().value());
        let answer = cell.get_or_init(|| async { self.inner.resolve(credential).await }).await.clone();
        // Store before retiring the cell, so a caller arriving in between finds one or the
        // other and never starts a second flight. Every caller of the flight stores the same
        // answer; that is idempotent.
        self.store(digest, &answer);
        self.inflight.remove_if(&digest, |_, current| Arc::ptr_eq(current, &cell));
        answer
    }
}

fn count(entries: usize) -> i64 {
    i64::try_from(entries).unwrap_or(i64::MAX)
}

/// Every token cache of the service, for eviction.
#[derive(Debug, Clone, Default)]
pub struct TokenCaches(Vec<Arc<CachedResolver>>);

impl TokenCaches {
    /// Adds a cache.
    pub fn push(&mut self, cache: Arc<CachedResolver>) {
        self.0.push(cache);
    }

    /// Forgets the cached answers for a raw token in every cache; how many went.
    pub fn evict_token(&self, token: &str) -> usize {
        self.evict_digest(&SecretDigest::of(token.as_bytes()))
    }

    /// Forgets every cached answer of every cache (evictions may have been missed).
    pub fn clear(&self) {
        for cache in &self.0 {
            cache.clear();
        }
    }

    /// Forgets the cached answers for a token's digest in every cache; how many went.
    pub fn evict_digest(&self, digest: &SecretDigest) -> usize {
        self.0.iter().filter(|cache| cache.evict(digest)).count()
    }

    /// Forgets the cached answers for a fingerprint in every cache; how many went.
    pub fn evict_fingerprint(&self, fingerprint: &str) -> usize {
        self.0.iter().map(|cache| cache.evict_fingerprint(fingerprint)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CredentialKind, Scheme};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts calls and answers what it is told, after a pause so concurrent callers overlap.
    #[derive(Debug)]
    struct Counting {
        calls: AtomicUsize,
        answer: Answer,
    }

    #[async_trait]
    impl CredentialResolver for Counting {
        fn name(&self) -> &str {
            "counting"
        }
        async fn resolve(&self, _credential: &Credential) -> Answer {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.answer.clone()
        }
    }

    fn resolved(expires_at: Option<i64>) -> Answer {
        let mut auth = AuthInfo::new(CredentialKind::Static, "s", vec![]);
        auth.expires_at = expires_at;
        Ok(Resolution::Resolved(Arc::new(auth)))
    }

    fn cached(answer: Answer, settings: CacheSettings) -> (Arc<Counting>, CachedResolver) {
        let inner = Arc::new(Counting { calls: AtomicUsize::new(0), answer });
        (Arc::clone(&inner), CachedResolver::new(inner, settings))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_first_sights_make_one_upstream_call() {
        let (inner, cache) = cached(resolved(None), CacheSettings::default());
        let cache = Arc::new(cache);
        let credential = Credential::new(Scheme::Bearer, "opaque");
        let callers: Vec<_> = (0..200)
            .map(|_| {
                let (cache, credential) = (Arc::clone(&cache), credential.clone());
                tokio::spawn(async move { cache.resolve(&credential).await })
            })
            .collect();
        for caller in callers {
            assert!(matches!(caller.await.unwrap(), Ok(Resolution::Resolved(_))));
        }
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
        assert!(cache.resolve(&credential).await.is_ok());
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1, "served from the cache");
    }

    #[tokio::test]
    async fn valid_answers_live_no_longer_than_the_token_or_the_bound() {
        let settings = CacheSettings { max_ttl: Duration::from_secs(300), ..Default::default() };
        let (_, cache) = cached(resolved(None), settings);
        let Ok(ref long) = resolved(Some(unix_now() + 10_000)) else { unreachable!() };
        let Ok(ref short) = resolved(Some(unix_now() + 5)) else { unreachable!() };
        let Ok(ref dead) = resolved(Some(unix_now() - 1)) else { unreachable!() };
        let mut lenient = AuthInfo::new(CredentialKind::Jwt, "s", vec![]);
        lenient.expires_at = Some(unix_now() - 10);
        lenient.leeway = Duration::from_secs(30);
        let lenient = Resolution::Resolved(Arc::new(lenient));
        let lifetime = |resolution: &Resolution| cache.lifetime(&Ok(resolution.clone()));
        assert_eq!(lifetime(long), Some(Duration::from_secs(300)));
        assert!(lifetime(short).unwrap() <= Duration::from_secs(5));
        assert_eq!(lifetime(dead), Some(Duration::ZERO));
        let within_leeway = lifetime(&lenient).unwrap();
        assert!(!within_leeway.is_zero() && within_leeway <= Duration::from_secs(20), "{within_leeway:?}");
    }

    #[tokio::test]
    async fn refusals_are_cached_briefly_and_outages_never() {
        let credential = Credential::new(Scheme::Bearer, "t");
        let (inner, cache) =
            cached(Err(CredentialError::Invalid("not active".into())), CacheSettings::default());
        cache.resolve(&credential).await.unwrap_err();
        cache.resolve(&credential).await.unwrap_err();
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1);

        let down = Err(CredentialError::Unavailable { backend: "x".into(), reason: "timeout".into() });
        let unknown_key = Err(CredentialError::UnknownKey("JWT is signed with an unknown key `k`".into()));
        for (label, answer) in [("outage", down), ("unknown key", unknown_key)] {
            let (inner, cache) = cached(answer, CacheSettings::default());
            cache.resolve(&credential).await.unwrap_err();
            cache.resolve(&credential).await.unwrap_err();
            assert_eq!(inner.calls.load(Ordering::SeqCst), 2, "{label}");
            assert!(cache.is_empty(), "{label}");
        }
    }

    #[tokio::test]
    async fn eviction_by_token_or_fingerprint_forces_a_new_call() {
        let (inner, cache) = cached(resolved(None), CacheSettings::default());
        let one = Credential::new(Scheme::Bearer, "one");
        let two = Credential::new(Scheme::Bearer, "two");
        cache.resolve(&one).await.unwrap();
        cache.resolve(&two).await.unwrap();
        assert!(cache.evict(&one.digest));
        assert!(!cache.evict(&one.digest));
        assert_eq!(cache.evict_fingerprint(&two.digest.fingerprint()), 1);
        cache.resolve(&one).await.unwrap();
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn the_cache_stays_within_its_bound() {
        let settings = CacheSettings { max_entries: 10, ..Default::default() };
        let (_, cache) = cached(resolved(None), settings);
        for index in 0..50 {
            cache.resolve(&Credential::new(Scheme::Bearer, format!("t{index}"))).await.unwrap();
        }
        assert!(cache.len() <= 10, "{}", cache.len());
    }
}
