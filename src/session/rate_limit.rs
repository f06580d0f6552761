//! Login brute-force protection: failed attempts counted per username and per client
//! address in fixed windows. Behind a trait so a shared store can count across replicas.

use std::fmt::Debug;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;

use crate::model::ClientAddress;

/// What failures are counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LoginKey {
    /// The username tried.
    Username(String),
    /// The client address.
    Address(IpAddr),
    /// A client behind a proxy that is not trusted: counted per (proxy, claimed client), so
    /// one client cannot lock out every other user of the proxy. A client that forges the
    /// claim escapes only this limit, never the per-username one.
    Forwarded {
        /// The TCP peer.
        peer: IpAddr,
        /// The client it claims to forward for.
        claimed: IpAddr,
    },
}

impl From<ClientAddress> for LoginKey {
    fn from(client: ClientAddress) -> Self {
        match client {
            ClientAddress::Known(address) => LoginKey::Address(address),
            ClientAddress::Untrusted { peer, claimed } => LoginKey::Forwarded { peer, claimed },
        }
    }
}

/// At most `max_failures` failed logins per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitRule {
    /// Failures allowed in a window; the next attempt is refused until the window ends.
    pub max_failures: u32,
    /// Window length.
    pub window: Duration,
}

/// Counts failed logins.
#[async_trait]
pub trait LoginRateLimiter: Debug + Send + Sync {
    /// `Err(retry_after)` when `key` is locked out.
    async fn check(&self, key: &LoginKey) -> Result<(), Duration>;
    /// Counts one failed attempt against `key`.
    async fn record_failure(&self, key: &LoginKey);
    /// Forgets `key`'s failures (after a successful login).
    async fn clear(&self, key: &LoginKey);
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

/// Counters in this process's memory, bounded in size.
#[derive(Debug)]
pub struct MemoryRateLimiter {
    per_username: LimitRule,
    per_address: LimitRule,
    windows: DashMap<LoginKey, Window>,
    /// Above this many keys, expired windows are dropped before a new one is added, so random
    /// usernames cannot grow the map without bound.
    max_keys: usize,
}

impl MemoryRateLimiter {
    /// A limiter with one rule per kind of key.
    pub fn new(per_username: LimitRule, per_address: LimitRule) -> Self {
        Self { per_username, per_address, windows: DashMap::new(), max_keys: 100_000 }
    }

    fn rule(&self, key: &LoginKey) -> LimitRule {
        match key {
            LoginKey::Username(_) => self.per_username,
            LoginKey::Address(_) | LoginKey::Forwarded { .. } => self.per_address,
        }
    }

    /// Drops windows that have ended.
    pub fn purge_expired(&self) {
        self.windows.retain(|key, window| window.started.elapsed() < self.rule(key).window);
    }
}

#[async_trait]
impl LoginRateLimiter for MemoryRateLimiter {
    async fn check(&self, key: &LoginKey) -> Result<(), Duration> {
        let rule = self.rule(key);
        let Some(window) = self.windows.get(key).map(|window| *window) else {
            return Ok(());
        };
        let elapsed = window.started.elapsed();
        if elapsed < rule.window && window.failures >= rule.max_failures {
            return Err(rule.window.saturating_sub(elapsed).max(Duration::from_secs(1)));
        }
        Ok(())
    }

    async fn record_failure(&self, key: &LoginKey) {
        let rule = self.rule(key);
        if self.windows.len() >= self.max_keys && !self.windows.contains_key(key) {
            self.purge_expired();
        }
        let now = Instant::now();
        self.windows
            .entry(key.clone())
            .and_modify(|window| {
                if window.started.elapsed() >= rule.window {
                    *window = Window { started: now, failures: 0 };
                }
                window.failures = window.failures.saturating_add(1);
            })
            .or_insert(Window { started: now, failures: 1 });
    }

    async fn clear(&self, key: &LoginKey) {
        self.windows.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(window: Duration) -> MemoryRateLimiter {
        MemoryRateLimiter::new(LimitRule { max_failures: 2, window }, LimitRule { max_failures: 3, window })
    }

    #[tokio::test]
    async fn locks_a_username_after_its_failures_and_not_others() {
        let limiter = limiter(Duration::from_secs(60));
        let alice = LoginKey::Username("alice".into());
        let bob = LoginKey::Username("bob".into());
        limiter.record_failure(&alice).await;
        assert!(limiter.check(&alice).await.is_ok());
        limiter.record_failure(&alice).await;
        let retry = limiter.check(&alice).await.unwrap_err();
        assert!(retry <= Duration::from_secs(60) && retry >= Duration::from_secs(1));
        assert!(limiter.check(&bob).await.is_ok());
    }

    #[tokio::test]
    async fn addresses_have_their_own_rule() {
        let limiter = limiter(Duration::from_secs(60));
        let address = LoginKey::Address("127.0.0.1".parse().unwrap());
        for _ in 0..2 {
            limiter.record_failure(&address).await;
        }
        assert!(limiter.check(&address).await.is_ok(), "address rule allows 3");
        limiter.record_failure(&address).await;
        assert!(limiter.check(&address).await.is_err());
    }

    #[tokio::test]
    async fn a_window_ends_and_clear_forgets() {
        let limiter = limiter(Duration::from_millis(30));
        let alice = LoginKey::Username("alice".into());
        limiter.record_failure(&alice).await;
        limiter.record_failure(&alice).await;
        assert!(limiter.check(&alice).await.is_err());
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(limiter.check(&alice).await.is_ok());
        limiter.purge_expired();
        assert_eq!(limiter.windows.len(), 0);

        limiter.record_failure(&alice).await;
        limiter.record_failure(&alice).await;
        limiter.clear(&alice).await;
        assert!(limiter.check(&alice).await.is_ok());
    }
}
