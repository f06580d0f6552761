//! `state:`: where what the replicas of one deployment share lives (sessions, login limits,
//! revocations). Absent: this process's memory, as for a single replica.

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::state::RedisSettings;

/// Shared state.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Keep sessions, login limits and revocations in Redis, shared by every replica.
    pub redis: Option<RedisConfig>,
}

/// A Redis every replica reaches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port[/db]`, `rediss://` for TLS, or `redis+unix:///path`;
    /// `${ENV}` is expanded, so the password need not be in the file.
    pub url: EnvString,
    /// Put before every key and the events channel (default `cedargate:`), so several
    /// deployments can share one Redis; letters, digits and `:_-.` only.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// How long Redis may take.
    #[serde(default)]
    pub timeouts: RedisTimeouts,
    /// TLS for `rediss://`.
    #[serde(default)]
    pub tls: Option<RedisTls>,
    /// Each replica's short copy of the sessions it read.
    #[serde(default)]
    pub local_cache: LocalCacheConfig,
}

/// Redis time bounds.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisTimeouts {
    /// Longest one command may take, reconnecting included; past it the request that needed
    /// it is a 503 (default `250ms`).
    #[serde(default = "default_command_timeout")]
    pub command: HumanDuration,
    /// Longest a connection attempt may take (default `1s`).
    #[serde(default = "default_connect_timeout")]
    pub connect: HumanDuration,
}

/// TLS to Redis.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisTls {
    /// PEM root certificates to trust instead of the system's, relative to the config file.
    pub ca_file: PathBuf,
}

/// The sessions a replica keeps after reading them.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalCacheConfig {
    /// How long a session read is reused, at most `1s` (default `1s`; `0s` reads Redis for
    /// every request). Revocations reach every replica at once by pub/sub; this bounds how long
    /// one that a replica missed (its events connection was down) can go unheard.
    #[serde(default = "default_local_cache_ttl")]
    pub ttl: ZeroOrDuration,
    /// Most sessions kept (default 100000); a full cache is emptied.
    #[serde(default = "default_local_cache_max_entries")]
    pub max_entries: usize,
}

/// Longest `local_cache.ttl`: the promise that a revoked session stops working everywhere
/// within a second.
pub const MAX_LOCAL_CACHE_TTL: Duration = Duration::from_secs(1);

impl Default for RedisTimeouts {
    fn default() -> Self {
        Self { command: default_command_timeout(), connect: default_connect_timeout() }
    }
}

impl Default for LocalCacheConfig {
    fn default() -> Self {
        Self { ttl: default_local_cache_ttl(), max_entries: default_local_cache_max_entries() }
    }
}

fn default_key_prefix() -> String {
    RedisSettings::default().key_prefix
}
fn default_command_timeout() -> HumanDuration {
    HumanDuration(RedisSettings::default().command_timeout)
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration(RedisSettings::default().connect_timeout)
}
fn default_local_cache_ttl() -> ZeroOrDuration {
    ZeroOrDuration(RedisSettings::default().local_cache_ttl)
}
fn default_local_cache_max_entries() -> usize {
    RedisSettings::default().local_cache_max_entries
}

impl RedisConfig {
    /// What is wrong with these settings: (field under `state.redis`, problem).
    pub(super) fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        let url = self.url.0.as_str();
        let scheme = url.split_once("://").map(|(scheme, _)| scheme);
        match scheme {
            Some("redis" | "redis+unix" | "unix") if self.tls.is_some() => {
                problems.push(("tls", "needs a `rediss://` url".to_owned()));
            }
            Some("redis" | "rediss" | "redis+unix" | "unix") => {}
            // Never echo the URL: it may hold a password.
            _ => problems.push(("url", "must start with redis://, rediss:// or redis+unix://".to_owned())),
        }
        let prefix_ok = !self.key_prefix.is_empty()
            && self.key_prefix.len() <= 64
            && self.key_prefix.bytes().all(|byte| byte.is_ascii_alphanumeric() || b":_-.".contains(&byte));
        if !prefix_ok {
            problems.push(("key_prefix", "must be 1 to 64 letters, digits or `:_-.`".to_owned()));
        }
        if self.timeouts.command.0.is_zero() || self.timeouts.connect.0.is_zero() {
            problems.push(("timeouts", "must be more than 0".to_owned()));
        }
        if self.local_cache.max_entries == 0 {
            problems.push((
                "local_cache.max_entries",
                "must be at least 1 (`ttl: 0s` turns the copies off)".to_owned(),
            ));
        }
        if self.local_cache.ttl.0 > MAX_LOCAL_CACHE_TTL {
            problems.push(("local_cache.ttl", "must be at most 1s".to_owned()));
        }
        problems
    }

    /// The settings of `crate::state::Redis`; `ca_file` resolved by `resolve` and read.
    ///
    /// Fails when the CA file cannot be read.
    pub fn settings(&self, resolve: impl Fn(&Path) -> PathBuf) -> Result<RedisSettings, String> {
        let root_certificates = match &self.tls {
            Some(tls) => {
                let path = resolve(&tls.ca_file);
                Some(
                    std::fs::read(&path)
                        .map_err(|error| format!("state.redis.tls.ca_file `{}`: {error}", path.display()))?,
                )
            }
            None => None,
        };
        Ok(RedisSettings {
            url: crate::model::Secret::new(self.url.0.clone()),
            key_prefix: self.key_prefix.clone(),
            command_timeout: self.timeouts.command.0,
            connect_timeout: self.timeouts.connect.0,
            root_certificates,
            local_cache_ttl: self.local_cache.ttl.0,
            local_cache_max_entries: self.local_cache.max_entries,
        })
    }
}
