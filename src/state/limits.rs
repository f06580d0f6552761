//! Login attempt counters in Redis, so a brute-forcer spread across replicas gets one budget,
//! not one per replica. Per key (a username, an address: by SHA-256, so no caller text is a
//! key name) two sorted sets scored by when each attempt began, on Redis's clock: the attempts
//! of the window (each counted as a failure from its start, removed when it ends well) and
//! those still in flight. An attempt whose replica died mid-check, or whose ending was lost, so
//! stays counted for its window and no longer: nothing else ever holds a slot.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use sha2::{Digest, Sha256};

use super::Redis;
use crate::session::{Attempt, LimitRule, LoginKey, LoginRateLimiter, Refused, StoreError, IN_FLIGHT_BOUND};

/// ARGV: prefix, key, max failures, window (ms), in-flight bound (ms), attempt id. `{0}`
/// reserved, `{1, ms}` used up (retry after ms), `{2}` used up, partly by attempts in flight
/// that may still give theirs back. Judged by Redis's clock, which every replica shares. The
/// `#!lua` line: a Redis at maxmemory refuses the script whole (without it, the `ZREMRANGEBYSCORE`
/// first would let every later write through).
static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"#!lua
local counted = ARGV[1] .. 'login:' .. ARGV[2] .. ':attempts'
local flying = ARGV[1] .. 'login:' .. ARGV[2] .. ':pending'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', counted, '-inf', now - window)
-- An attempt in flight longer than the bound never finished (its replica died, its request was
-- cancelled): it stays counted as a failure, but no longer as one that may come back.
redis.call('ZREMRANGEBYSCORE', flying, '-inf', now - math.min(window, tonumber(ARGV[5])))
if redis.call('ZCARD', counted) >= tonumber(ARGV[3]) then
  if redis.call('ZCARD', flying) > 0 then return {2} end
  local oldest = redis.call('ZRANGE', counted, 0, 0, 'WITHSCORES')
  return {1, oldest[2] and (tonumber(oldest[2]) + window - now) or window}
end
redis.call('ZADD', counted, now, ARGV[6])
redis.call('ZADD', flying, now, ARGV[6])
redis.call('PEXPIRE', counted, window)
redis.call('PEXPIRE', flying, window)
return {0}",
    )
});

/// ARGV: prefix, key, attempt id, failed (0 or 1), window (ms). A failure that is no longer
/// counted (a success cleared it once it had been in flight past the bound) is counted again.
/// It runs at maxmemory too (`allow-oom`): ending an attempt must not fail with Redis full.
static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"#!lua flags=allow-oom
local counted = ARGV[1] .. 'login:' .. ARGV[2] .. ':attempts'
redis.call('ZREM', ARGV[1] .. 'login:' .. ARGV[2] .. ':pending', ARGV[3])
if ARGV[4] == '0' then
  redis.call('ZREM', counted, ARGV[3])
elseif not redis.call('ZSCORE', counted, ARGV[3]) then
  local t = redis.call('TIME')
  redis.call('ZADD', counted, tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), ARGV[3])
  redis.call('PEXPIRE', counted, ARGV[5])
end
return 1",
    )
});

/// ARGV: prefix, key. Forgets the failures of a key, but not the attempts still in flight:
/// guesses racing the right password stay counted.
static CLEAR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"#!lua flags=allow-oom
local counted = ARGV[1] .. 'login:' .. ARGV[2] .. ':attempts'
local flying = ARGV[1] .. 'login:' .. ARGV[2] .. ':pending'
for _, attempt in ipairs(redis.call('ZRANGE', counted, 0, -1)) do
  if not redis.call('ZSCORE', flying, attempt) then redis.call('ZREM', counted, attempt) end
end
return 1",
    )
});

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
}

#[async_trait]
impl LoginRateLimiter for RedisRateLimiter {
    async fn reserve(&self, key: &LoginKey) -> Result<Attempt, Refused> {
        let rule = self.rule(key);
        let attempt = Attempt::random();
        let answer: Result<Vec<i64>, StoreError> = self
            .redis
            .invoke(
                "reserve a login attempt",
                RESERVE
                    .arg(&self.redis.settings().key_prefix)
                    .arg(key_name(key))
                    .arg(rule.max_failures)
                    .arg(millis(rule.window))
                    .arg(millis(IN_FLIGHT_BOUND))
                    .arg(attempt.id()),
            )
            .await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(error) => {
                // The script may have run and its answer been lost: the attempt, never told to
                // anyone, is given back rather than counted as a failure for the window.
                self.finish(key, attempt, false).await;
                return Err(unavailable(error));
            }
        };
        match answer.as_slice() {
            [0] => Ok(attempt),
            [1, retry] => {
                let retry = u64::try_from(*retry).map_or(rule.window, Duration::from_millis);
                Err(Refused::Limited(retry.max(Duration::from_secs(1))))
            }
            // Attempts in flight (on any replica) hold the rest: refused at once, to be tried
            // again soon, rather than waiting for them. Waiting would mean asking Redis again
            // and again for every waiter: a burst of guesses would slow Redis for every session.
            [2] => Err(Refused::Limited(Duration::from_secs(1))),
            _ => Err(unavailable(StoreError::Corrupt("unexpected answer to a login reservation".to_owned()))),
        }
    }

    async fn finish(&self, key: &LoginKey, attempt: Attempt, failed: bool) {
        let finished: Result<i64, StoreError> = self
            .redis
            .invoke(
                "finish a login attempt",
                FINISH
                    .arg(&self.redis.settings().key_prefix)
                    .arg(key_name(key))
                    .arg(attempt.id())
                    .arg(u8::from(failed))
                    .arg(millis(self.rule(key).window)),
            )
            .await;
        if let Err(error) = finished {
            // Failing closed: the attempt stays counted as a failure until its window passes.
            tracing::warn!("login attempt not finished: {error}");
        }
    }

    async fn clear(&self, key: &LoginKey) {
        let cleared: Result<i64, StoreError> = self
            .redis
            .invoke("clear login failures", CLEAR.arg(&self.redis.settings().key_prefix).arg(key_name(key)))
            .await;
        if let Err(error) = cleared {
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
