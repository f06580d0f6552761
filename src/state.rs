//! State several replicas share, in Redis: login sessions ([`RedisSessionStore`]), failed-login
//! counters ([`RedisRateLimiter`]), MCP session bindings ([`RedisMcpSessions`]), and the events every replica must hear at once (a revoked
//! session, an evicted token: [`Events`]). Only this module knows the `redis` crate.
//!
//! Every command is bounded by `timeouts.command`: a Redis that is down, slow or restarting is
//! an outage ([`StoreError::Unavailable`], a 503) within that bound, never a wait and never an
//! allow. The connection manager reconnects by itself, so the service recovers without a
//! restart when Redis is back.

mod events;
mod limits;
mod mcp;
mod sessions;

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, RedisError};

use tokio::sync::OnceCell;

use crate::model::Secret;
use crate::session::StoreError;

pub use events::{Event, Events, Handler as EventHandler};
pub use limits::RedisRateLimiter;
pub use mcp::RedisMcpSessions;
pub use sessions::RedisSessionStore;

/// How to reach Redis and how long to wait for it.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://`, `rediss://` (TLS) or `redis+unix://`; may hold a password, so it is a
    /// secret and never logged.
    pub url: Secret,
    /// Put before every key and the events channel, so replicas of several deployments can
    /// share one Redis.
    pub key_prefix: String,
    /// Longest any one command may take, reconnecting included.
    pub command_timeout: Duration,
    /// Longest a connection attempt may take.
    pub connect_timeout: Duration,
    /// PEM root certificates for `rediss://`, instead of the system's.
    pub root_certificates: Option<Vec<u8>>,
    /// How long a replica reuses a session it read; a revocation that a replica missed (its
    /// events connection was down) still reaches it within this bound.
    pub local_cache_ttl: Duration,
    /// Most sessions a replica keeps read; a full cache is emptied.
    pub local_cache_max_entries: usize,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: Secret::new("redis://127.0.0.1:6379"),
            key_prefix: "cedargate:".to_owned(),
            command_timeout: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(1),
            root_certificates: None,
            local_cache_ttl: Duration::from_secs(1),
            local_cache_max_entries: 100_000,
        }
    }
}

/// The Redis of this replica's stores: one client, one multiplexed connection that
/// reconnects, every command bounded in time.
#[derive(Clone)]
pub struct Redis {
    client: redis::Client,
    connection: std::sync::Arc<OnceCell<ConnectionManager>>,
    settings: std::sync::Arc<RedisSettings>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("Redis").field("key_prefix", &self.settings.key_prefix).finish_non_exhaustive()
    }
}

impl Redis {
    /// A client for `settings.url`; nothing connects until the first command.
    ///
    /// Fails when the URL is not a Redis URL or the TLS settings cannot be used; the message
    /// never contains the URL.
    pub fn new(settings: RedisSettings) -> Result<Self, String> {
        let url = settings.url.expose();
        let client = match &settings.root_certificates {
            Some(root) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates { client_tls: None, root_cert: Some(root.clone()) },
            ),
            None => redis::Client::open(url),
        }
        .map_err(|error| format!("state.redis.url: {}", error.kind_text()))?;
        Ok(Self {
            client,
            connection: std::sync::Arc::new(OnceCell::new()),
            settings: std::sync::Arc::new(settings),
        })
    }

    /// The settings it was made with.
    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// `name` under the key prefix.
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.settings.key_prefix)
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let connection = self
            .connection
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.settings.connect_timeout))
                    .set_response_timeout(Some(self.settings.command_timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            })
            .await
            .map_err(|error| unavailable(&error))?;
        Ok(connection.clone())
    }

    /// Runs one command, bounded by `timeouts.command`.
    async fn query<T: FromRedisValue>(
        &self,
        what: &'static str,
        command: &redis::Cmd,
    ) -> Result<T, StoreError> {
        self.bounded(what, async {
            let mut connection = self.connection().await?;
            command.query_async(&mut connection).await.map_err(|error| classify(what, &error))
        })
        .await
    }

    /// Runs one script (by digest, loading it first where Redis does not know it: after a
    /// restart), bounded by `timeouts.command`.
    async fn invoke<T: FromRedisValue>(
        &self,
        what: &'static str,
        script: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.bounded(what, async {
            let mut connection = self.connection().await?;
            script.invoke_async(&mut connection).await.map_err(|error| classify(what, &error))
        })
        .await
    }

    async fn bounded<T>(
        &self,
        what: &'static str,
        answer: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.settings.command_timeout, answer).await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(format!(
                "{what}: no answer within {} ms",
                self.settings.command_timeout.as_millis()
            )))
        })
    }
}

/// An error's kind and server code, without what the client put around them (never a URL).
trait KindText {
    fn kind_text(&self) -> String;
}

impl KindText for RedisError {
    fn kind_text(&self) -> String {
        match self.code() {
            Some(code) => format!("{:?} ({code})", self.kind()),
            None => format!("{:?}", self.kind()),
        }
    }
}

fn unavailable(error: &RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {}", error.kind_text()))
}

/// What a failed command means: a Redis that answered with something of another type than
/// cedargate writes there holds a record it cannot read; anything else is an outage.
fn classify(what: &str, error: &RedisError) -> StoreError {
    // A reply that does not parse is garbage on the wire (an outage), not a record.
    let wrong_type =
        error.kind() == redis::ErrorKind::UnexpectedReturnType || error.code() == Some("WRONGTYPE");
    if wrong_type {
        StoreError::Corrupt(format!("{what}: {}", error.kind_text()))
    } else {
        StoreError::Unavailable(format!("{what}: {}", error.kind_text()))
    }
}
