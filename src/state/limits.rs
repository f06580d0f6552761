//! Failed-login counters in Redis, so a brute-forcer spread across replicas gets one budget,
//! not one per replica. Per key (a username, an address: by SHA-256, so no caller text is a
//! key name) two counters: failures, which expire with the window that began at the first
//! failure, and attempts in flight, which expire on their own if a replica dies mid-attempt.
//! Reserving and finishing are Lua scripts, one atomic step each.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use sha2::{Digest, Sha256};

use super::Redis;
use crate::session::{LimitRule, LoginKey, LoginRateLimiter, Refused, StoreError};

/// ARGV: prefix, key, max failures, in-flight expiry (ms). `{0}` reserved, `{1, ms}` used up
/// (retry after ms), `{2}` every slot left is in flight, `{3}` a counter is not a number.
static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local failures_key = ARGV[1] .. 'login:' .. ARGV[2] .. ':failures'
local flight_key = ARGV[1] .. 'login:' .. ARGV[2] .. ':in-flight'
local failures_text = redis.call('GET', failures_key)
local flight_text = redis.call('GET', flight_key)
local failures = tonumber(failures_text or '0')
local flight = tonumber(flight_text or '0')
if not failures or not flight then return {3} end
local max = tonumber(ARGV[3])
if failures >= max then return {1, redis.call('PTTL', failures_key)} end
if failures + flight >= max then return {2} end
redis.call('INCR', flight_key)
redis.call('PEXPIRE', flight_key, ARGV[4])
return {0}",
    )
});

/// ARGV: prefix, key, failed (0 or 1), window (ms).
static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local failures_key = ARGV[1] .. 'login:' .. ARGV[2] .. ':failures'
local flight_key = ARGV[1] .. 'login:' .. ARGV[2] .. ':in-flight'
if tonumber(redis.call('GET', flight_key) or '0') then
  if redis.call('DECR', flight_key) <= 0 then redis.call('DEL', flight_key) end
else
  redis.call('DEL', flight_key)
end
if ARGV[3] == '1' then
  if not tonumber(redis.call('GET', failures_key) or '0') then redis.call('DEL', failures_key) end
  redis.call('INCR', failures_key)
  if redis.call('PTTL', failures_key) < 0 then redis.call('PEXPIRE', failures_key, ARGV[4]) end
end
return 1",
    )
});

/// How long an attempt in flight holds its slot if its replica never finishes it.
const IN_FLIGHT_EXPIRY: Duration = Duration::from_secs(60);

/// Login limits every replica counts against together.
#[derive(Debug)]
pub struct RedisRateLimiter {
    redis: Redis,
    per_username: LimitRule,
    per_address: LimitRule,
}

impl RedisRateLimiter {
    /// A limiter with one rule per kind of key.
    pub fn new(redis: Redis, per_username: LimitRule, per_address: LimitRule) -> Self {
        Self { redis, per_username, per_address }
    }

    fn rule(&self, key: &LoginKey) -> LimitRule {
        key.rule(self.per_username, self.per_address)
    }

    /// `None`: reserved; `Some(retry_after)`: every slot left is in flight.
    async fn reserve_once(&self, key: &str, rule: LimitRule) -> Result<Option<Duration>, Refused> {
        let answer: Vec<i64> = self
            .redis
            .invoke(
                "reserve a login attempt",
                RESERVE
                    .arg(&self.redis.settings().key_prefix)
                    .arg(key)
                    .arg(rule.max_failures)
                    .arg(millis(IN_FLIGHT_EXPIRY)),
            )
            .await
            .map_err(unavailable)?;
        match answer.as_slice() {
            [0] => Ok(None),
            [1, retry] => {
                let retry = u64::try_from(*retry).map_or(rule.window, Duration::from_millis);
                Err(Refused::Limited(retry.max(Duration::from_secs(1))))
            }
            [2] => Ok(Some(Duration::from_secs(1))),
            _ => Err(unavailable(StoreError::Corrupt("a login counter is not a number".to_owned()))),
        }
    }
}

#[async_trait]
impl LoginRateLimiter for RedisRateLimiter {
    async fn reserve(&self, key: &LoginKey) -> Result<(), Refused> {
        match self.reserve_once(&key_name(key), self.rule(key)).await? {
            None => Ok(()),
            // Every slot left is held by an attempt in flight (on any replica). Waiting would
            // mean asking Redis again and again, for every waiter: a burst of guesses would
            // make Redis slow for every session. So the attempt is refused at once, to be
            // tried again when those have finished.
            Some(retry_after) => Err(Refused::Limited(retry_after)),
        }
    }

    async fn finish(&self, key: &LoginKey, failed: bool) {
        let rule = self.rule(key);
        let finished: Result<i64, StoreError> = self
            .redis
            .invoke(
                "finish a login attempt",
                FINISH
                    .arg(&self.redis.settings().key_prefix)
                    .arg(key_name(key))
                    .arg(u8::from(failed))
                    .arg(millis(rule.window)),
            )
            .await;
        if let Err(error) = finished {
            // The slot goes back when its counter expires; a failure not counted is one more
            // guess, which the 503s of the same outage make up for.
            tracing::warn!("login attempt not counted: {error}");
        }
    }

    async fn clear(&self, key: &LoginKey) {
        let failures = self.redis.key(&format!("login:{}:failures", key_name(key)));
        if let Err(error) =
            self.redis.query::<i64>("clear login failures", redis::cmd("DEL").arg(failures)).await
        {
            tracing::warn!("login failures not cleared: {error}");
        }
    }
}

/// The key's counters' name: SHA-256 of what it counts against.
fn key_name(key: &LoginKey) -> String {
    let text = match key {
        LoginKey::Username(username) => format!("username:{username}"),
        LoginKey::Address(address) => format!("address:{address}"),
        LoginKey::Forwarded { peer, claimed } => format!("forwarded:{peer}:{claimed}"),
    };
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn unavailable(error: StoreError) -> Refused {
    Refused::Unavailable(error.to_string())
}
