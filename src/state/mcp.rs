//! Which caller each MCP session belongs to, in Redis, so a session opened through one replica
//! is its caller's on every replica. One key per session (`mcp:<sha256 of the id>`, holding
//! the owner's digest, expiring `ttl` after its last use) and one sorted set per owner
//! (`mcp-owner:<digest>`, its sessions by when they were bound) that caps how many one caller
//! holds: binding beyond the cap drops that caller's oldest, never another's.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::Redis;
use crate::model::SecretDigest;
use crate::session::StoreError;

/// ARGV: prefix, session, owner, ttl (ms), most sessions per owner, nobody (the digest no
/// caller is). 1, or 0 when the session is bound to another owner: then it is bound to nobody,
/// so neither caller can use it.
static BIND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"#!lua
local p, session, owner = ARGV[1], ARGV[2], ARGV[3]
local bound = redis.call('GET', p .. 'mcp:' .. session)
if bound and bound ~= owner then
  redis.call('SET', p .. 'mcp:' .. session, ARGV[6], 'PX', ARGV[4])
  return 0
end
local owned = p .. 'mcp-owner:' .. owner
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Ids that were ended, expired or pushed out, or are another's now.
for _, id in ipairs(redis.call('ZRANGE', owned, 0, -1)) do
  if id == session or redis.call('GET', p .. 'mcp:' .. id) ~= owner then
    redis.call('ZREM', owned, id)
  end
end
local over = redis.call('ZCARD', owned) + 1 - math.max(tonumber(ARGV[5]), 1)
if over > 0 then
  for _, id in ipairs(redis.call('ZRANGE', owned, 0, over - 1)) do
    redis.call('DEL', p .. 'mcp:' .. id)
    redis.call('ZREM', owned, id)
  end
end
redis.call('SET', p .. 'mcp:' .. session, owner, 'PX', ARGV[4])
redis.call('ZADD', owned, now, session)
redis.call('PEXPIRE', owned, ARGV[4])
return 1",
    )
});

/// ARGV: prefix, session, owner, ttl (ms). Whom the session is bound to (`false`: no one),
/// renewing the binding (and its owner's set) when it is this owner's: one atomic step, so a
/// binding ended or moved meanwhile is never reported as the owner's.
static STANDING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"#!lua flags=allow-oom
local key = ARGV[1] .. 'mcp:' .. ARGV[2]
local bound = redis.call('GET', key)
if bound == ARGV[3] then
  redis.call('PEXPIRE', key, ARGV[4])
  redis.call('PEXPIRE', ARGV[1] .. 'mcp-owner:' .. ARGV[3], ARGV[4])
end
return bound",
    )
});

/// MCP session bindings every replica shares.
#[derive(Debug)]
pub struct RedisMcpSessions {
    redis: Redis,
    ttl: Duration,
    per_owner: usize,
}

impl RedisMcpSessions {
    /// Bindings over `redis`, each living `ttl` after its last use, at most `per_owner` of one
    /// owner.
    pub fn new(redis: Redis, ttl: Duration, per_owner: usize) -> Self {
        Self { redis, ttl, per_owner }
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX).max(1)
    }

    /// Binds `session` to `owner`; false when another owner holds it (then no one does).
    pub async fn bind(&self, session: &SecretDigest, owner: &SecretDigest) -> Result<bool, StoreError> {
        let bound: i64 = self
            .redis
            .invoke(
                "bind an MCP session",
                BIND.arg(&self.redis.settings().key_prefix)
                    .arg(session.to_hex())
                    .arg(owner.to_hex())
                    .arg(self.ttl_ms())
                    .arg(self.per_owner)
                    .arg(SecretDigest::NONE.to_hex()),
            )
            .await?;
        Ok(bound == 1)
    }

    /// Whom `session` is bound to, if anyone; renewed when it is `owner`'s.
    pub async fn standing(
        &self,
        session: &SecretDigest,
        owner: &SecretDigest,
    ) -> Result<Option<SecretDigest>, StoreError> {
        let bound: Option<String> = self
            .redis
            .invoke(
                "read an MCP session",
                STANDING
                    .arg(&self.redis.settings().key_prefix)
                    .arg(session.to_hex())
                    .arg(owner.to_hex())
                    .arg(self.ttl_ms()),
            )
            .await?;
        bound
            .map(|hex| {
                SecretDigest::from_hex(&hex)
                    .map_err(|_| StoreError::Corrupt("an MCP session's owner is not a digest".to_owned()))
            })
            .transpose()
    }

    /// Forgets `session`.
    pub async fn end(&self, session: &SecretDigest) -> Result<(), StoreError> {
        let key = self.redis.key(&format!("mcp:{}", session.to_hex()));
        self.redis.query::<i64>("end an MCP session", redis::cmd("DEL").arg(key)).await.map(drop)
    }
}
