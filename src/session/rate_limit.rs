//! Login brute-force protection: attempts counted per username and per client address over a
//! sliding window. Behind a trait so a shared store can count across replicas.
//!
//! An attempt is counted as a failure from the moment it starts ([`LoginRateLimiter::reserve`])
//! and given back only when it ends well ([`LoginRateLimiter::finish`]). A burst of concurrent
//! guesses so gets no more password checks than the budget, and an attempt that never ends (its
//! request cancelled, its replica killed, its store gone) stays counted until the window passes
//! it: nothing is held that only a later call would free.

use std::collections::VecDeque;
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
    /// Failures allowed in any window of this length; the next attempt is refused until the
    /// oldest of them is older than the window.
    pub max_failures: u32,
    /// Window length.
    pub window: Duration,
}

/// One attempt that took a slot of its key's budget: a failure unless it ends well.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Attempt(u128);

impl Attempt {
    /// A new attempt, with a random id.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// The attempt's id, as a shared store keeps it.
    pub fn id(&self) -> String {
        format!("{:032x}", self.0)
    }
}

/// Counts failed logins.
///
/// An attempt takes a slot from its key's budget *before* the password is checked
/// ([`reserve`]); the slot counts as a failure unless the attempt ends well ([`finish`]).
///
/// [`reserve`]: LoginRateLimiter::reserve
/// [`finish`]: LoginRateLimiter::finish
#[async_trait]
pub trait LoginRateLimiter: Debug + Send + Sync {
    /// Takes one slot of `key`'s budget, counted as a failure from now on. `Limited(retry_after)`
    /// when the budget is used up (by failures, or by attempts in flight that may still give
    /// theirs back: then the retry is soon); `Unavailable` when a shared limiter cannot be
    /// reached, so nothing can be counted.
    async fn reserve(&self, key: &LoginKey) -> Result<Attempt, Refused>;
    /// Ends an attempt: a failure stays counted for its window, anything else (a right
    /// password, nothing checked) gives the slot back.
    async fn finish(&self, key: &LoginKey, attempt: Attempt, failed: bool);
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

/// How long an attempt counts as in flight (it may still give its slot back) before it is
/// taken for one that never finished (its request cancelled, its replica killed): it stays
/// counted as a failure for its window, but nothing waits for it any more.
pub const IN_FLIGHT_BOUND: Duration = Duration::from_secs(30);

/// One attempt counted in a window.
#[derive(Debug, Clone, Copy)]
struct Counted {
    at: Instant,
    attempt: Attempt,
    /// Ended, as a failure; until then it may still be given back.
    failed: bool,
}

impl Counted {
    /// May still be given back.
    fn in_flight(&self) -> bool {
        !self.failed && self.at.elapsed() < IN_FLIGHT_BOUND
    }
}

/// The attempts of one key still in its window, oldest first.
#[derive(Debug, Default)]
struct Log {
    counted: VecDeque<Counted>,
    /// Wakes attempts waiting for one in flight to end.
    finished: Arc<Notify>,
}

impl Log {
    /// Drops what the window has passed.
    fn prune(&mut self, window: Duration) {
        while self.counted.front().is_some_and(|counted| counted.at.elapsed() >= window) {
            self.counted.pop_front();
        }
    }
}

/// Counters in this process's memory, bounded in size.
#[derive(Debug)]
pub struct MemoryRateLimiter {
    per_username: LimitRule,
    per_address: LimitRule,
    logs: DashMap<LoginKey, Log>,
    /// At most this many keys (about): ended windows, then the one idle longest, make room.
    max_keys: usize,
}

impl MemoryRateLimiter {
    /// A limiter with one rule per kind of key.
    pub fn new(per_username: LimitRule, per_address: LimitRule) -> Self {
        Self { per_username, per_address, logs: DashMap::new(), max_keys: 100_000 }
    }

    fn rule(&self, key: &LoginKey) -> LimitRule {
        key.rule(self.per_username, self.per_address)
    }

    /// A key with nothing counted says nothing: it goes, so given-back attempts never fill the
    /// table.
    fn forget_if_empty(&self, key: &LoginKey) {
        self.logs.remove_if(key, |_, log| log.counted.is_empty());
    }

    /// Room for one more key in a full table: keys whose windows have passed go first, then, if
    /// the table is still full, the one whose last attempt is oldest. Refusing new keys instead
    /// would let anyone who fills the table lock every other user out.
    fn make_room(&self) {
        self.purge_expired();
        if self.logs.len() < self.max_keys {
            return;
        }
        // Keys with attempts in flight last: their waiters would be refused for nothing.
        let idlest = self
            .logs
            .iter()
            .min_by_key(|entry| {
                let busy = entry.counted.iter().any(Counted::in_flight);
                (busy, entry.counted.back().map(|counted| counted.at))
            })
            .map(|entry| entry.key().clone());
        if let Some((_, log)) = idlest.and_then(|idlest| self.logs.remove(&idlest)) {
            log.finished.notify_waiters();
        }
    }

    /// Drops what every window has passed, and the keys left with nothing.
    pub fn purge_expired(&self) {
        self.logs.retain(|key, log| {
            log.prune(self.rule(key).window);
            let keep = !log.counted.is_empty();
            if !keep {
                log.finished.notify_waiters();
            }
            keep
        });
    }
}

#[async_trait]
impl LoginRateLimiter for MemoryRateLimiter {
    async fn reserve(&self, key: &LoginKey) -> Result<Attempt, Refused> {
        let rule = self.rule(key);
        let budget = usize::try_from(rule.max_failures).unwrap_or(usize::MAX);
        let deadline = Instant::now() + MAX_WAIT;
        let mut waited_enough = false;
        loop {
            if self.logs.len() >= self.max_keys && !self.logs.contains_key(key) {
                self.make_room();
            }
            let finished = {
                // The entry holds its shard's lock: check and count are one step.
                let mut log = self.logs.entry(key.clone()).or_default();
                log.prune(rule.window);
                if log.counted.len() < budget {
                    let attempt = Attempt::random();
                    log.counted.push_back(Counted { at: Instant::now(), attempt, failed: false });
                    return Ok(attempt);
                }
                let in_flight = log.counted.iter().any(Counted::in_flight);
                if waited_enough || !in_flight {
                    let oldest = log.counted.front().map_or(Duration::ZERO, |counted| counted.at.elapsed());
                    // Soon, when an attempt in flight may still give its slot back.
                    let retry = if in_flight { Duration::ZERO } else { rule.window.saturating_sub(oldest) };
                    let retry = retry.max(Duration::from_secs(1));
                    drop(log);
                    self.forget_if_empty(key);
                    return Err(Refused::Limited(retry));
                }
                Arc::clone(&log.finished)
            };
            // Some of the budget is held by attempts in flight, which may give it back: wait
            // for one to end, then look again. The waiting costs nothing shared (a shared
            // limiter refuses at once instead).
            let notified = finished.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let still_full = self.logs.get(key).is_some_and(|log| log.counted.len() >= budget);
            // Past the deadline, one last look decides.
            waited_enough = still_full && tokio::time::timeout_at(deadline.into(), notified).await.is_err();
        }
    }

    async fn finish(&self, key: &LoginKey, attempt: Attempt, failed: bool) {
        if failed {
            let mut log = self.logs.entry(key.clone()).or_default();
            match log.counted.iter_mut().find(|counted| counted.attempt == attempt) {
                Some(counted) => counted.failed = true,
                // Cleared by a success once it had been in flight past the bound: a failure
                // all the same.
                None => log.counted.push_back(Counted { at: Instant::now(), attempt, failed: true }),
            }
            log.finished.notify_waiters();
        } else if let Some(mut log) = self.logs.get_mut(key) {
            log.counted.retain(|counted| counted.attempt != attempt);
            log.finished.notify_waiters();
        }
        self.forget_if_empty(key);
    }

    async fn clear(&self, key: &LoginKey) {
        // The failures go; attempts still in flight (guesses racing the right password) stay.
        if let Some(mut log) = self.logs.get_mut(key) {
            log.counted.retain(Counted::in_flight);
            log.finished.notify_waiters();
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

    async fn fail(limiter: &MemoryRateLimiter, key: &LoginKey) {
        let attempt = limiter.reserve(key).await.unwrap();
        limiter.finish(key, attempt, true).await;
    }

    #[tokio::test]
    async fn locks_a_username_after_its_budget_and_not_others() {
        let limiter = limiter(Duration::from_secs(60));
        let alice = LoginKey::Username("alice".into());
        let bob = LoginKey::Username("bob".into());
        for _ in 0..2 {
            fail(&limiter, &alice).await;
        }
        let Err(Refused::Limited(retry)) = limiter.reserve(&alice).await else { panic!("not limited") };
        assert!(retry <= Duration::from_secs(60) && retry >= Duration::from_secs(30), "{retry:?}");
        assert!(limiter.reserve(&bob).await.is_ok());
    }

    #[tokio::test]
    async fn addresses_have_their_own_rule_and_attempts_given_back_do_not_count() {
        let limiter = limiter(Duration::from_secs(60));
        let address = LoginKey::Address("127.0.0.1".parse().unwrap());
        let right = limiter.reserve(&address).await.unwrap();
        limiter.finish(&address, right, false).await;
        for _ in 0..3 {
            fail(&limiter, &address).await;
        }
        assert!(limiter.reserve(&address).await.is_err(), "address rule allows 3 failures, not 3 attempts");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_gets_the_budget_of_checks() {
        let limiter = Arc::new(limiter(Duration::from_secs(60)));
        let alice = LoginKey::Username("alice".into());
        // 100 concurrent wrong guesses, each checked for a while once it has its slot.
        let attempts = (0..100).map(|_| {
            let (limiter, alice) = (Arc::clone(&limiter), alice.clone());
            tokio::spawn(async move {
                let attempt = limiter.reserve(&alice).await.ok()?;
                tokio::time::sleep(Duration::from_millis(2)).await;
                limiter.finish(&alice, attempt, true).await;
                Some(())
            })
        });
        let mut checked = 0;
        for attempt in attempts.collect::<Vec<_>>() {
            checked += usize::from(attempt.await.unwrap().is_some());
        }
        assert_eq!(checked, 2, "no more guesses are checked than the budget");
    }

    #[tokio::test]
    async fn an_attempt_never_finished_stays_counted() {
        // Its request was cancelled after the slot was taken: nothing will ever give it back.
        let limiter = limiter(Duration::from_secs(60));
        let alice = LoginKey::Username("alice".into());
        limiter.reserve(&alice).await.unwrap();
        limiter.reserve(&alice).await.unwrap();
        let third = tokio::time::timeout(Duration::from_millis(200), limiter.reserve(&alice)).await;
        assert!(!matches!(third, Ok(Ok(_))), "a third attempt got a slot: {third:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn right_answers_in_a_burst_wait_for_the_ones_in_flight_and_get_through() {
        let limiter = Arc::new(limiter(Duration::from_secs(60)));
        let alice = LoginKey::Username("alice".into());
        let attempts = (0..20).map(|_| {
            let (limiter, alice) = (Arc::clone(&limiter), alice.clone());
            tokio::spawn(async move {
                let attempt = limiter.reserve(&alice).await.ok()?;
                tokio::time::sleep(Duration::from_millis(2)).await;
                limiter.finish(&alice, attempt, false).await;
                Some(())
            })
        });
        for attempt in attempts.collect::<Vec<_>>() {
            assert!(attempt.await.unwrap().is_some(), "a right answer was refused");
        }
        assert!(limiter.logs.is_empty());
    }

    #[tokio::test]
    async fn finishing_ends_only_its_own_attempt() {
        let limiter = limiter(Duration::from_secs(60));
        let alice = LoginKey::Username("alice".into());
        let first = limiter.reserve(&alice).await.unwrap();
        let second = limiter.reserve(&alice).await.unwrap();
        limiter.finish(&alice, second, true).await;
        limiter.finish(&alice, first, false).await;
        // Giving back twice, or an attempt of another key, gives nothing more back.
        limiter.finish(&alice, first, false).await;
        let other = limiter.reserve(&LoginKey::Username("bob".into())).await.unwrap();
        limiter.finish(&alice, other, false).await;
        fail(&limiter, &alice).await;
        assert!(matches!(limiter.reserve(&alice).await, Err(Refused::Limited(_))));
    }

    #[tokio::test]
    async fn a_window_passes_and_clear_forgets() {
        let limiter = limiter(Duration::from_millis(30));
        let alice = LoginKey::Username("alice".into());
        fail(&limiter, &alice).await;
        // Never finished: it too leaves with its window.
        limiter.reserve(&alice).await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        limiter.purge_expired();
        assert_eq!(limiter.logs.len(), 0);
        fail(&limiter, &alice).await;
        limiter.clear(&alice).await;
        fail(&limiter, &alice).await;
        fail(&limiter, &alice).await;
        assert!(limiter.reserve(&alice).await.is_err());
    }

    #[tokio::test]
    async fn a_full_table_makes_room_instead_of_growing_or_locking_everyone_out() {
        let mut limiter = limiter(Duration::from_secs(60));
        limiter.max_keys = 3;
        for name in ["a", "b", "c"] {
            fail(&limiter, &LoginKey::Username(name.into())).await;
        }
        limiter.reserve(&LoginKey::Username("d".into())).await.unwrap();
        assert_eq!(limiter.logs.len(), 3, "the idlest key made room");
        assert!(!limiter.logs.contains_key(&LoginKey::Username("a".into())));
    }

    #[tokio::test]
    async fn attempts_given_back_or_refused_leave_nothing_behind() {
        // Successful attempts (or a flood of random usernames from a blocked address) must not
        // fill the table.
        let limiter = limiter(Duration::from_secs(60));
        for index in 0..100 {
            let key = LoginKey::Username(format!("user{index}"));
            let attempt = limiter.reserve(&key).await.unwrap();
            limiter.finish(&key, attempt, false).await;
        }
        let none = MemoryRateLimiter::new(
            LimitRule { max_failures: 0, window: Duration::from_secs(60) },
            LimitRule { max_failures: 0, window: Duration::from_secs(60) },
        );
        assert!(none.reserve(&LoginKey::Username("x".into())).await.is_err());
        assert_eq!((limiter.logs.len(), none.logs.len()), (0, 0));
    }

    #[tokio::test]
    async fn a_success_forgets_failures_but_not_guesses_still_in_flight() {
        let limiter = limiter(Duration::from_secs(60));
        let alice = LoginKey::Username("alice".into());
        fail(&limiter, &alice).await;
        // A guess racing the right password: still being checked when the success clears.
        let racing = limiter.reserve(&alice).await.unwrap();
        limiter.clear(&alice).await;
        limiter.finish(&alice, racing, true).await;
        fail(&limiter, &alice).await;
        assert!(limiter.reserve(&alice).await.is_err(), "the racing guess still counts");
    }
}
