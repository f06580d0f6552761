//! Login sessions in Redis. Each token is a hash under its SHA-256 (`access:<hex>`,
//! `refresh:<hex>`), each login one more (`family:<hex>`) naming its current tokens, and each
//! token rotated out a marker naming its login (`spent:<hex>` for a refresh token, with the
//! sealed tokens its rotation issued; `retired:<hex>` for an access token; `replay:<hex>` holds the sealed tokens for the grace
//! only, and `history:<family>` bounds how many rotations are remembered at once), and each user a sorted set
//! of their logins (`user:<sha256 of the username>`), which caps them; every key expires with
//! what it holds (Redis TTLs do the purge). Creating, rotating and revoking are
//! Lua scripts, so each is one atomic step across replicas: of concurrent rotations of one
//! refresh token exactly one wins, and a replica that dies mid-rotation leaves the old session
//! or the new one, never neither. A revocation publishes the access token's digest on the
//! events channel, so every replica drops its copy at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use redis::Script;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Redis;
use crate::model::{AuthInfo, CredentialKind, Extra, SecretDigest};
use crate::session::{
    FamilyId, NextTokens, RefreshOutcome, SessionRecord, SessionStore, StoreError, REVOKED_FALLBACK_SECONDS,
};

/// The first line of a script that adds to what Redis holds (Redis 7): a Redis at maxmemory
/// refuses it before its first command, so it never half-runs. Without it Redis refuses only a
/// first write that needs memory, and lets everything after a `DEL` through.
const GROWS: &str = "#!lua\n";

/// The first line of a script that ends something (a logout, a revocation): it runs at
/// maxmemory too, for it mostly deletes, so a full Redis never keeps a session alive.
const ENDS: &str = "#!lua flags=allow-oom\n";

/// What every script shares: writing a session's three hashes, revoking a family (with the
/// event that makes replicas forget it), and Redis's clock in milliseconds.
const PRELUDE: &str = r"
local p = ARGV[1]
-- Sets `key`'s expiry to `at` unless it already expires later.
local function extend(key, at)
  redis.call('EXPIREAT', key, at, 'NX')
  redis.call('EXPIREAT', key, at, 'GT')
end
local function put(key, expires, ...)
  redis.call('HSET', key, ...)
  redis.call('EXPIREAT', key, expires)
end
local function store(family, access, refresh, username, identity, expires, refresh_expires)
  -- Kept as long as the refresh token: a logout with an expired access token still finds
  -- the session (the chain refuses the expired token by its `expires`).
  put(p .. 'access:' .. access, refresh_expires,
      'family', family, 'identity', identity, 'username', username, 'expires', expires)
  put(p .. 'refresh:' .. refresh, refresh_expires,
      'family', family, 'identity', identity, 'username', username, 'expires', refresh_expires,
      'access', access)
  put(p .. 'family:' .. family, refresh_expires, 'access', access, 'refresh', refresh)
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function forget(access)
  redis.call('PUBLISH', p .. 'events', 'revoked ' .. access)
  redis.call('DEL', p .. 'access:' .. access)
end
local function revoke(family, until_)
  local now = math.floor(now_ms() / 1000)
  local tokens = redis.call('HMGET', p .. 'family:' .. family, 'access', 'refresh', 'user')
  -- Publish first: an ACL user without channel rights fails here, before any change.
  if tokens[1] then forget(tokens[1]) end
  if tokens[2] then redis.call('DEL', p .. 'refresh:' .. tokens[2]) end
  if tokens[3] then redis.call('ZREM', p .. 'user:' .. tokens[3], family) end
  redis.call('DEL', p .. 'family:' .. family)
  redis.call('SET', p .. 'revoked:' .. family, '1', 'EXAT', math.max(tonumber(until_) or 0, now + 1))
  return tokens[1]
end
";

/// ARGV: prefix, family, access, refresh, username, identity, expires, refresh_expires, user
/// (the username's SHA-256), most sessions per user. 1, or 0 when the family was revoked
/// meanwhile. The user's logins are a sorted set by when they began (`user:<hex>`); those
/// over the limit, oldest first, are revoked.
static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{GROWS}{PRELUDE}
if redis.call('EXISTS', p .. 'revoked:' .. ARGV[2]) == 1 then return 0 end
local user = p .. 'user:' .. ARGV[9]
for _, login in ipairs(redis.call('ZRANGE', user, 0, -1)) do
  if redis.call('EXISTS', p .. 'family:' .. login) == 0 then redis.call('ZREM', user, login) end
end
local over = redis.call('ZCARD', user) + 1 - math.max(tonumber(ARGV[10]), 1)
if over > 0 then
  for _, login in ipairs(redis.call('ZRANGE', user, 0, over - 1)) do revoke(login, ARGV[8]) end
end
store(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])
redis.call('HSET', p .. 'family:' .. ARGV[2], 'user', ARGV[9])
redis.call('ZADD', user, now_ms(), ARGV[2])
extend(user, ARGV[8])
return 1"
    ))
});

/// ARGV: prefix, refresh, reuse grace (ms), next access, next refresh, next expires, next
/// refresh_expires, next sealed under the refresh token, most rotations remembered.
/// `{rotated, family, identity, username, old access}`, `{replayed, sealed}`, `{just}`,
/// `{reused}`, `{invalid}`, `{full, seconds}` (as many rotations remembered as allowed: the
/// oldest expires in so many seconds), or `{corrupt}` for a record without its fields. Expiry
/// and grace are judged by Redis's clock, which every replica shares.
static ROTATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{GROWS}{PRELUDE}
local old = p .. 'refresh:' .. ARGV[2]
local live = redis.call('HMGET', old, 'family', 'identity', 'username', 'expires', 'access')
if live[1] then
  local family, expires = live[1], tonumber(live[4])
  local now = math.floor(now_ms() / 1000)
  -- Each rotation remembered (its spent refresh and retired access token), scored by when it
  -- expires; with as many as allowed still live, nothing changes.
  local history = p .. 'history:' .. family
  if expires and expires > now then
    redis.call('ZREMRANGEBYSCORE', history, '-inf', now)
    if redis.call('ZCARD', history) >= 2 * math.max(tonumber(ARGV[9]), 1) then
      local oldest = redis.call('ZRANGE', history, 0, 0, 'WITHSCORES')
      return {{'full', tostring(math.max((tonumber(oldest[2]) or now) - now, 1))}}
    end
  end
  if live[5] then forget(live[5]) end
  redis.call('DEL', old)
  if not (expires and live[2] and live[3] and live[5]) then
    redis.call('DEL', p .. 'family:' .. family)
    return {{'corrupt'}}
  end
  if expires <= now then
    redis.call('DEL', p .. 'family:' .. family)
    return {{'invalid'}}
  end
  local spent = p .. 'spent:' .. ARGV[2]
  redis.call('HSET', spent, 'family', family, 'at', now_ms(), 'expires', expires, 'next', ARGV[5])
  redis.call('EXPIREAT', spent, expires)
  -- The box of the next tokens lives only for the grace: no copy of Redis (a backup, its
  -- append-only file) holds a chain of them.
  redis.call('SET', p .. 'replay:' .. ARGV[2], ARGV[8], 'PX', math.max(tonumber(ARGV[3]), 1))
  -- The rotated-out access token still names its login, so a logout with it ends the session.
  redis.call('SET', p .. 'retired:' .. live[5], family, 'EXAT', expires)
  redis.call('ZADD', history, expires, 's' .. ARGV[2], expires, 'r' .. live[5])
  extend(history, expires)
  store(family, ARGV[4], ARGV[5], live[3], live[2], ARGV[6], ARGV[7])
  local user = redis.call('HGET', p .. 'family:' .. family, 'user')
  if user then extend(p .. 'user:' .. user, ARGV[7]) end
  return {{'rotated', family, live[2], live[3], live[5]}}
end
local spent = redis.call('HMGET', p .. 'spent:' .. ARGV[2], 'family', 'at', 'expires', 'next')
if spent[1] then
  if now_ms() - (tonumber(spent[2]) or 0) < tonumber(ARGV[3]) then
    local current = redis.call('HGET', p .. 'family:' .. spent[1], 'refresh')
    local sealed = redis.call('GET', p .. 'replay:' .. ARGV[2])
    if spent[4] and sealed and current == spent[4] then return {{'replayed', sealed}} end
    return {{'just'}}
  end
  revoke(spent[1], spent[3])
  return {{'reused'}}
end
return {{'invalid'}}"
    ))
});

/// ARGV: prefix, refresh, reuse grace (ms). Only the reuse detection of ROTATE, for a Redis at
/// maxmemory that refuses ROTATE whole: a spent token presented past the grace still revokes
/// its login (`allow-oom`: it mostly deletes). `reused`, or `full` when there is nothing to
/// revoke.
static REUSED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{ENDS}{PRELUDE}
local spent = redis.call('HMGET', p .. 'spent:' .. ARGV[2], 'family', 'at', 'expires')
if spent[1] and now_ms() - (tonumber(spent[2]) or 0) >= tonumber(ARGV[3]) then
  revoke(spent[1], spent[3])
  return 'reused'
end
return 'full'"
    ))
});

/// ARGV: prefix, a token (access or refresh, current or rotated out). The family's access
/// token (hex), 1 when it had none, or 0 (no such live session).
static REVOKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{ENDS}{PRELUDE}
local t = ARGV[2]
local family = redis.call('HGET', p .. 'access:' .. t, 'family')
  or redis.call('HGET', p .. 'refresh:' .. t, 'family')
  or redis.call('HGET', p .. 'spent:' .. t, 'family')
  or redis.call('GET', p .. 'retired:' .. t)
if not family or redis.call('EXISTS', p .. 'family:' .. family) == 0 then return 0 end
local refresh = redis.call('HGET', p .. 'family:' .. family, 'refresh')
local until_ = refresh and redis.call('HGET', p .. 'refresh:' .. refresh, 'expires')
return revoke(family, until_ or (math.floor(now_ms() / 1000) + {REVOKED_FALLBACK_SECONDS})) or 1"
    ))
});

/// The identity a session hash holds, versioned; the credential kind, leeway and expiry are
/// the session's own.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredIdentity {
    v: u32,
    subject: String,
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    resource: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    issuer: String,
    #[serde(default)]
    extra: Extra,
}

impl StoredIdentity {
    const VERSION: u32 = 1;

    fn encode(auth: &AuthInfo) -> Result<String, StoreError> {
        serde_json::to_string(&StoredIdentity {
            v: Self::VERSION,
            subject: auth.subject.clone(),
            client_id: auth.client_id.clone(),
            scopes: auth.scopes.clone(),
            resource: auth.resource.clone(),
            roles: auth.roles.clone(),
            tenant: auth.tenant.clone(),
            issuer: auth.issuer.clone(),
            extra: auth.extra.clone(),
        })
        .map_err(|error| StoreError::Corrupt(format!("session identity: {error}")))
    }

    fn decode(text: &str, expires_at: i64) -> Result<AuthInfo, StoreError> {
        let stored: StoredIdentity = serde_json::from_str(text)
            .map_err(|error| StoreError::Corrupt(format!("session identity: {error}")))?;
        if stored.v != Self::VERSION {
            return Err(StoreError::Corrupt(format!("session identity: version {} is not 1", stored.v)));
        }
        let mut auth = AuthInfo::new(CredentialKind::Session, stored.subject, stored.roles);
        auth.client_id = stored.client_id;
        auth.scopes = stored.scopes;
        auth.resource = stored.resource;
        auth.tenant = stored.tenant;
        auth.issuer = stored.issuer;
        auth.extra = stored.extra;
        auth.expires_at = Some(expires_at);
        Ok(auth)
    }
}

/// Sessions every replica sees, with a short local copy of the ones this replica read.
#[derive(Debug)]
pub struct RedisSessionStore {
    redis: Redis,
    /// Access tokens read lately, and when.
    read: DashMap<SecretDigest, (Arc<AuthInfo>, Instant)>,
    /// Counts forgettings, so a read that raced one does not put back what it forgot.
    forgotten: AtomicU64,
}

impl RedisSessionStore {
    /// A store over `redis`.
    pub fn new(redis: Redis) -> Self {
        Self { redis, read: DashMap::new(), forgotten: AtomicU64::new(0) }
    }

    /// Drops this replica's copy of an access token's session (it was revoked or rotated).
    pub fn forget(&self, access: &SecretDigest) {
        self.forgotten.fetch_add(1, Ordering::SeqCst);
        self.read.remove(access);
    }

    /// Drops every copy: events may have been missed (the events connection was down).
    pub fn forget_all(&self) {
        self.forgotten.fetch_add(1, Ordering::SeqCst);
        self.read.clear();
    }

    fn cached(&self, access: &SecretDigest) -> Option<Arc<AuthInfo>> {
        let ttl = self.redis.settings().local_cache_ttl;
        let entry = self.read.get(access)?;
        (entry.1.elapsed() < ttl).then(|| Arc::clone(&entry.0))
    }

    /// Keeps a copy of what Redis answered to a question sent at `asked`: its age counts from
    /// then, so a copy never outlives the revocation it could have missed by more than the TTL.
    fn remember(&self, access: SecretDigest, auth: &Arc<AuthInfo>, generation: u64, asked: Instant) {
        let settings = self.redis.settings();
        if settings.local_cache_ttl.is_zero() {
            return;
        }
        if self.read.len() >= settings.local_cache_max_entries {
            self.read.clear();
        }
        self.read.insert(access, (Arc::clone(auth), asked));
        // A revocation heard while Redis was answering: what was read may be the revoked one.
        if self.forgotten.load(Ordering::SeqCst) != generation {
            self.read.remove(&access);
        }
    }

    fn forget_hex(&self, hex: &str) {
        if let Ok(digest) = SecretDigest::from_hex(hex) {
            self.forget(&digest);
        }
    }
}

#[async_trait]
impl SessionStore for RedisSessionStore {
    async fn create(&self, record: SessionRecord, max_per_user: usize) -> Result<(), StoreError> {
        let expires = record.auth.expires_at.unwrap_or(record.refresh_expires_at);
        let created: i64 = self
            .redis
            .invoke(
                "create session",
                CREATE
                    .arg(&self.redis.settings().key_prefix)
                    .arg(family_hex(record.family))
                    .arg(record.access.to_hex())
                    .arg(record.refresh.to_hex())
                    .arg(&record.username)
                    .arg(StoredIdentity::encode(&record.auth)?)
                    .arg(expires)
                    .arg(record.refresh_expires_at)
                    .arg(hex::encode(Sha256::digest(record.username.as_bytes())))
                    .arg(max_per_user),
            )
            .await?;
        if created == 1 {
            Ok(())
        } else {
            Err(StoreError::Revoked)
        }
    }

    async fn lookup_access(&self, access: &SecretDigest) -> Result<Option<Arc<AuthInfo>>, StoreError> {
        if let Some(auth) = self.cached(access) {
            return Ok(Some(auth));
        }
        let generation = self.forgotten.load(Ordering::SeqCst);
        let asked = Instant::now();
        let (family, identity, expires): (Option<String>, Option<String>, Option<String>) = self
            .redis
            .query(
                "read session",
                redis::cmd("HMGET")
                    .arg(self.redis.key(&format!("access:{}", access.to_hex())))
                    .arg(&["family", "identity", "expires"]),
            )
            .await?;
        let (Some(_), Some(identity), Some(expires)) = (family, identity, expires) else {
            return Ok(None);
        };
        let expires = expires
            .parse::<i64>()
            .map_err(|_| StoreError::Corrupt("session expiry is not a number".to_owned()))?;
        let auth = Arc::new(StoredIdentity::decode(&identity, expires)?);
        self.remember(*access, &auth, generation, asked);
        Ok(Some(auth))
    }

    async fn rotate(
        &self,
        refresh: &SecretDigest,
        next: &NextTokens,
        _now: i64,
        reuse_grace: Duration,
    ) -> Result<RefreshOutcome, StoreError> {
        let grace = u64::try_from(reuse_grace.as_millis()).unwrap_or(u64::MAX);
        let answer: Result<Vec<String>, StoreError> = self
            .redis
            .invoke(
                "rotate session",
                ROTATE
                    .arg(&self.redis.settings().key_prefix)
                    .arg(refresh.to_hex())
                    .arg(grace)
                    .arg(next.access.to_hex())
                    .arg(next.refresh.to_hex())
                    .arg(next.expires_at)
                    .arg(next.refresh_expires_at)
                    .arg(&next.replay)
                    .arg(next.remembered),
            )
            .await;
        let answer = match answer {
            Ok(answer) => answer,
            // Full, Redis refuses the rotation whole; a thief's replay must still revoke.
            Err(StoreError::Full(reason)) => {
                let reused: String = self
                    .redis
                    .invoke(
                        "detect a reused refresh token",
                        REUSED.arg(&self.redis.settings().key_prefix).arg(refresh.to_hex()).arg(grace),
                    )
                    .await?;
                return if reused == "reused" {
                    Ok(RefreshOutcome::Reused)
                } else {
                    Err(StoreError::Full(reason))
                };
            }
            Err(error) => return Err(error),
        };
        match answer.as_slice() {
            [outcome, family, identity, username, old_access] if outcome == "rotated" => {
                self.forget_hex(old_access);
                let family = FamilyId::from_str_radix(family, 16)
                    .map_err(|_| StoreError::Corrupt("session family is not hex".to_owned()))?;
                Ok(RefreshOutcome::Rotated(SessionRecord {
                    family,
                    username: username.clone(),
                    auth: Arc::new(StoredIdentity::decode(identity, next.expires_at)?),
                    access: next.access,
                    refresh: next.refresh,
                    refresh_expires_at: next.refresh_expires_at,
                }))
            }
            [outcome, sealed] if outcome == "replayed" => Ok(RefreshOutcome::Replayed(sealed.clone())),
            [outcome, seconds] if outcome == "full" => {
                let seconds = seconds.parse::<u64>().unwrap_or(1).max(1);
                Ok(RefreshOutcome::TooMany(Duration::from_secs(seconds)))
            }
            [outcome] => match outcome.as_str() {
                "just" => Ok(RefreshOutcome::JustRotated),
                "reused" => Ok(RefreshOutcome::Reused),
                "invalid" => Ok(RefreshOutcome::Invalid),
                _ => Err(StoreError::Corrupt("refresh token record lacks its fields".to_owned())),
            },
            _ => Err(StoreError::Corrupt("unexpected answer to a rotation".to_owned())),
        }
    }

    async fn revoke(&self, token: &SecretDigest) -> Result<bool, StoreError> {
        let revoked: redis::Value = self
            .redis
            .invoke("revoke session", REVOKE.arg(&self.redis.settings().key_prefix).arg(token.to_hex()))
            .await?;
        self.forget(token);
        match revoked {
            redis::Value::Int(0) => Ok(false),
            redis::Value::Int(_) => Ok(true),
            redis::Value::BulkString(access) => {
                self.forget_hex(&String::from_utf8_lossy(&access));
                Ok(true)
            }
            _ => Err(StoreError::Corrupt("unexpected answer to a revocation".to_owned())),
        }
    }

    async fn purge_expired(&self, _now: i64) -> Result<(), StoreError> {
        // Redis expires every key with what it holds; only the local copies age here.
        let ttl = self.redis.settings().local_cache_ttl;
        self.read.retain(|_, (_, read)| read.elapsed() < ttl);
        Ok(())
    }
}

fn family_hex(family: FamilyId) -> String {
    format!("{family:032x}")
}
