//! Login brute-force protection: failed attempts counted per username and per client
//! address in fixed windows. Behind a trait so a shared store can count across replicas.

use std::fmt::Debug;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use tokio::sync::Notify;

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

impl LoginKey {
    /// Which of the two rules counts this key.
    pub fn rule(&self, per_username: LimitRule, per_address: LimitRule) -> LimitRule {
        match self {
            LoginKey::Username(_) => per_username,
            LoginKey::Address(_) | LoginKey::Forwarded { .. } => per_address,
        }
    }
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
///
/// An attempt takes a slot from its key's budget *before* the password is checked
/// ([`reserve`]) and gives it back as a failure or not when the check is done ([`finish`]), so
/// a burst of concurrent attempts gets at most the budget of checks, never one per request.
///
/// [`reserve`]: LoginRateLimiter::reserve
/// [`finish`]: LoginRateLimiter::finish
#[async_trait]
pub trait LoginRateLimiter: Debug + Send + Sync {
    /// Takes one attempt from `key`'s budget, waiting while attempts in flight could use up
    /// the rest. `Limited(retry_after)` when the failures have used it up (or, failing closed,
    /// when nothing more can be tracked, or the wait is too long); `Unavailable` when a shared
    /// limiter cannot be reached, so nothing can be counted.
    async fn reserve(&self, key: &LoginKey) -> Result<(), Refused>;
    /// Ends an attempt reserved for `key`: a failure counts against the window, anything else
    /// gives the attempt back.
    async fn finish(&self, key: &LoginKey, failed: bool);
    /// Forgets `key`'s failures (after a successful login).
    async fn clear(&self, key: &LoginKey);
}

/// Why an attempt was not given a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The budget is used up; try again after this long.
    Limited(Duration),
    /// The limiter's store could not be reached: the attempt cannot be counted, so it is not
    /// made (503).
    Unavailable(String),
}

/// Longest an attempt waits for the ones in flight before it is refused.
const MAX_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct Window {
    started: Instant,
    failures: u32,
    /// Attempts reserved and not yet finished.
    in_flight: u32,
    /// Wakes attempts waiting for one in flight to finish.
    finished: Arc<Notify>,
}

impl Window {
    fn new(started: Instant) -> Self {
        Self { started, failures: 0, in_flight: 0, finished: Arc::new(Notify::new()) }
    }
}

/// Counters in this process's memory, bounded in size.
#[derive(Debug)]
pub struct MemoryRateLimiter {
    per_username: LimitRule,
    per_address: LimitRule,
    windows: DashMap<LoginKey, Window>,
    /// At most this many keys (about): ended windows, then the oldest idle one, make room.
    max_keys: usize,
}

impl MemoryRateLimiter {
    /// A limiter with one rule per kind of key.
    pub fn new(per_username: LimitRule, per_address: LimitRule) -> Self {
        Self { per_username, per_address, windows: DashMap::new(), max_keys: 100_000 }
    }

    fn rule(&self, key: &LoginKey) -> LimitRule {
        key.rule(self.per_username, self.per_address)
    }

    /// A window with no failure and nothing in flight says nothing: it goes, so refused or
    /// successful attempts never fill the table.
    fn forget_if_empty(&self, key: &LoginKey) {
        self.windows.remove_if(key, |_, window| window.failures == 0 && window.in_flight == 0);
    }

    /// Room for one more key in a full table: windows that have ended go first, then, if the
    /// table is still full, the oldest window with nothing in flight. Refusing new keys instead
    /// would let anyone who fills the table lock every other user out.
    fn make_room(&self) {
        self.purge_expired();
        if self.windows.len() < self.max_keys {
            return;
        }
        let oldest = self
            .windows
            .iter()
            .filter(|entry| entry.in_flight == 0)
            .min_by_key(|entry| entry.started)
            .map(|entry| entry.key().clone());
        if let Some(oldest) = oldest {
            self.windows.remove_if(&oldest, |_, window| window.in_flight == 0);
        }
    }

    /// Drops windows that have ended and have nothing in flight.
    pub fn purge_expired(&self) {
        self.windows
            .retain(|key, window| window.in_flight > 0 || window.started.elapsed() < self.rule(key).window);
    }
}

#[async_trait]
impl LoginRateLimiter for MemoryRateLimiter {
    async fn reserve(&self, key: &LoginKey) -> Result<(), Refused> {
        let rule = self.rule(key);
        let deadline = Instant::now() + MAX_WAIT;
        loop {
            if self.windows.len() >= self.max_keys && !self.windows.contains_key(key) {
                self.make_room();
            }
            let finished = {
                // The entry holds its shard's lock: check and count are one step.
                let mut window =
                    self.windows.entry(key.clone()).or_insert_with(|| Window::new(Instant::now()));
                let elapsed = window.started.elapsed();
                if elapsed >= rule.window {
                    window.started = Instant::now();
                    window.failures = 0;
                } else if window.failures >= rule.max_failures {
                    return Err(Refused::Limited(
                        rule.window.saturating_sub(elapsed).max(Duration::from_secs(1)),
                    ));
                }
                if window.failures.saturating_add(window.in_flight) < rule.max_failures {
                    window.in_flight += 1;
                    return Ok(());
                }
                Arc::clone(&window.finished)
            };
            // Every slot left is held by an attempt in flight: wait for one to finish, then
            // look again (it may have failed and used up the budget).
            let notified = finished.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let still_full = self
                .windows
                .get(key)
                .is_some_and(|window| window.failures.saturating_add(window.in_flight) >= rule.max_failures);
            if still_full && tokio::time::timeout_at(deadline.into(), notified).await.is_err() {
                return Err(Refused::Limited(Duration::from_secs(1)));
            }
        }
    }

    async fn finish(&self, key: &LoginKey, failed: bool) {
        if let Some(mut window) = self.windows.get_mut(key) {
            window.in_flight = window.in_flight.saturating_sub(1);
            if failed {
                window.failures = window.failures.saturating_add(1);
            }
            window.finished.notify_waiters();
        }
        self.forget_if_empty(key);
    }

    async fn clear(&self, key: &LoginKey) {
        if let Some(mut window) = self.windows.get_mut(key) {
            window.failures = 0;
            window.finished.notify_waiters();
        }
        self.forget_if_empty(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(window: Duration) -> MemoryRateLimiter {
        MemoryRateLimiter::new(LimitRule { max_failures: 2, window }, LimitRule { max_failures: 3, window })
    }

    #[tokio::test]
    async fn locks_a_username_after_its_budget_and_not_others() {
        let limiter = limiter(Duration::from_secs(60));
        let alice = LoginKey::Username("alice".into());
        let bob = LoginKey::Username("bob".into());
        for _ in 0..2 {
            limiter.reserve(&alice).await.unwrap();
            limiter.finish(&alice, true).await;
        }
        let Err(Refused::Limited(retry)) = limiter.reserve(&alice).await else { panic!("not limited") };
        assert!(retry <= Duration::from_secs(60) && retry >= Duration::from_secs(1));
        assert!(limiter.reserve(&bob).await.is_ok());
    }

    #[tokio::test]
    async fn addresses_have_their_own_rule_and_released_attempts_do_not_count() {
        let limiter = limiter(Duration::from_secs(60));
        let address = LoginKey::Address("127.0.0.1".parse().unwrap());
        limiter.reserve(&address).await.unwrap();
        limiter.finish(&address, false).await;
        for _ in 0..3 {
            limiter.reserve(&address).await.unwrap();
            limiter.finish(&address, true).await;
        }
        assert!(limiter.reserve(&address).await.is_err(), "address rule allows 3 failures, not 3 attempts");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_gets_the_budget_of_failures_and_every_success() {
        let limiter = Arc::new(limiter(Duration::from_secs(60)));
        let alice = LoginKey::Username("alice".into());
        // 100 concurrent attempts, the even ones right: each that gets a slot takes a while.
        let attempts = (0..100).map(|attempt| {
            let (limiter, alice) = (Arc::clone(&limiter), alice.clone());
            tokio::spawn(async move {
                limiter.reserve(&alice).await.ok()?;
                tokio::time::sleep(Duration::from_millis(2)).await;
                let failed = attempt % 2 == 1;
                limiter.finish(&alice, failed).await;
                Some(failed)
            })
        });
        let (mut failures, mut successes) = (0, 0);
        for attempt in attempts.collect::<Vec<_>>() {
            match attempt.await.unwrap() {
                Some(true) => failures += 1,
                Some(false) => successes += 1,
                None => {}
            }
        }
        assert_eq!(failures, 2, "no more wrong guesses are checked than the budget");
        assert!(successes >= 1, "right answers get through while the budget lasts");
    }

    #[tokio::test]
    async fn a_window_ends_and_clear_forgets() {
        let limiter = limiter(Duration::from_millis(30));
        let alice = LoginKey::Username("alice".into());
        for _ in 0..2 {
            limiter.reserve(&alice).await.unwrap();
            limiter.finish(&alice, true).await;
        }
        assert!(limiter.reserve(&alice).await.is_err());
        tokio::time::sleep(Duration::from_millis(40)).await;
        limiter.purge_expired();
        assert_eq!(limiter.windows.len(), 0);
        limiter.reserve(&alice).await.unwrap();
        limiter.finish(&alice, true).await;
        limiter.clear(&alice).await;
        limiter.reserve(&alice).await.unwrap();
        limiter.finish(&alice, true).await;
        limiter.reserve(&alice).await.unwrap();
    }

    #[tokio::test]
    async fn a_full_table_makes_room_instead_of_growing_or_locking_everyone_out() {
        let mut limiter = limiter(Duration::from_secs(60));
        limiter.max_keys = 3;
        for name in ["a", "b", "c"] {
            limiter.reserve(&LoginKey::Username(name.into())).await.unwrap();
            limiter.finish(&LoginKey::Username(name.into()), true).await;
        }
        limiter.reserve(&LoginKey::Username("d".into())).await.unwrap();
        assert_eq!(limiter.windows.len(), 3, "the oldest idle window made room");
        assert!(!limiter.windows.contains_key(&LoginKey::Username("a".into())));
    }

    #[tokio::test]
    async fn attempts_that_fail_nothing_leave_nothing_behind() {
        // Refused or successful attempts (a flood of random usernames from a blocked address)
        // must not fill the table.
        let limiter = limiter(Duration::from_secs(60));
        for index in 0..100 {
            let key = LoginKey::Username(format!("user{index}"));
            limiter.reserve(&key).await.unwrap();
            limiter.finish(&key, false).await;
        }
        assert_eq!(limiter.windows.len(), 0);
    }
}
