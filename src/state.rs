//! State several replicas share, in Redis: login sessions ([`RedisSessionStore`]), failed-login
//! counters ([`RedisRateLimiter`]), MCP session bindings ([`RedisMcpSessions`]), and the events every replica must hear at once (a revoked
//! session, an evicted token: [`Events`]). Only this module knows the `redis` crate.
//!
//! Every command is bounded by `timeouts.command`: a Redis that is down, slow or restarting is
//! an outage ([`StoreError::Unavailable`], a 503) within that bound, never a wait and never an
//! allow. The connection manager reconnects by itself when its connection closes or is
//! refused, so the service recovers without a restart when Redis is back. A connection that
//! goes silent instead (a Redis pod gone behind the same Service IP, a half-open TCP
//! connection, a firewall dropping packets without a reset) never closes by itself, and the
//! manager only retries on it (a response timeout is not a reason to reconnect for the `redis`
//! crate): so after `UNANSWERED_BEFORE_REPLACING` commands in a row that it left unanswered,
//! the manager is dropped and a fresh one made, and TCP keepalive and `TCP_USER_TIMEOUT` have
//! the kernel close such a connection too (see `tcp_settings`).

mod events;
mod limits;
mod mcp;
mod sessions;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::{socket2::TcpKeepalive, TcpSettings};
use redis::{FromRedisValue, IntoConnectionInfo, RedisError, RedisResult};

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

/// How many commands in a row a connection may leave unanswered within `timeouts.command`
/// before it is given up and replaced.
///
/// Two, not one: a single timeout is as often a slow Redis (a long script, an fsync or fork
/// stall) as a dead connection, and replacing a live connection then only adds a reconnection
/// to a Redis already behind. Two in a row, each already a full `timeouts.command` of waiting,
/// is rare on a live connection and costs a dead one only about two command timeouts of 503s.
/// Many commands in flight on one multiplexed connection time out together, so the streak
/// fills at once under load; that is why a generation is replaced once only, and never before
/// it had `timeouts.connect` to connect and `timeouts.command` to answer.
const UNANSWERED_BEFORE_REPLACING: u32 = 2;

/// Idle time before the kernel probes a quiet connection, the pause between probes, and how
/// many unanswered probes close it: a silent idle connection is closed within about 25 s,
/// before a request finds it dead.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 3;
/// Longest the kernel keeps data it sent unacknowledged before it closes the connection
/// (`TCP_USER_TIMEOUT`, Linux only); without it a black-holed connection retransmits for about
/// 15 minutes. It matches the keepalive bound, as the kernel also uses it for the probes.
#[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
const USER_TIMEOUT: Duration = Duration::from_secs(25);

/// The TCP options of every Redis connection (commands and events): `base` (what the URL gave)
/// with keepalive and `TCP_USER_TIMEOUT`, so a connection whose peer vanished without a reset
/// is closed by the kernel and the connection manager makes a new one. The command path does
/// not rely on it (its bound is [`UNANSWERED_BEFORE_REPLACING`] commands, far sooner); it
/// covers idle connections, the events connection between its pings and the sockets of
/// replaced connections, which would otherwise linger.
fn tcp_settings(base: TcpSettings) -> TcpSettings {
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    let settings = base.set_keepalive(keepalive);
    #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
    let settings = settings.set_user_timeout(USER_TIMEOUT);
    settings
}

/// The Redis of this replica's stores: one client, one multiplexed connection that
/// reconnects (and is replaced when it goes silent), every command bounded in time.
#[derive(Clone)]
pub struct Redis {
    client: redis::Client,
    /// The connection manager in use: `None` until the first command (making one needs the
    /// runtime), then swapped for a fresh one when it goes silent. An `ArcSwapOption` so the
    /// request path takes no lock.
    connection: Arc<ArcSwapOption<Generation>>,
    settings: Arc<RedisSettings>,
}

/// One connection manager, and how its commands went.
struct Generation {
    /// Counts from 0 per replica, for the log.
    number: u64,
    manager: ConnectionManager,
    /// Commands in a row that got no answer in time; any answer resets it.
    unanswered: AtomicU32,
    /// When it was made: a new one is not replaced before it had `timeouts.connect` and
    /// `timeouts.command`.
    made: Instant,
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
        let client =
            Self::client(&settings).map_err(|error| format!("state.redis.url: {}", error.kind_text()))?;
        Ok(Self { client, connection: Arc::new(ArcSwapOption::empty()), settings: Arc::new(settings) })
    }

    fn client(settings: &RedisSettings) -> RedisResult<redis::Client> {
        let info = settings.url.expose().into_connection_info()?;
        let tcp = tcp_settings(info.tcp_settings().clone());
        let info = info.set_tcp_settings(tcp);
        match &settings.root_certificates {
            Some(root) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates { client_tls: None, root_cert: Some(root.clone()) },
            ),
            None => redis::Client::open(info),
        }
    }

    /// The settings it was made with.
    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// `name` under the key prefix.
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.settings.key_prefix)
    }

    /// A connection manager that connects on its first command. Needs the tokio runtime.
    fn generation_numbered(&self, number: u64) -> Result<Generation, StoreError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.settings.connect_timeout))
            .set_response_timeout(Some(self.settings.command_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(|error| unavailable(&error))?;
        Ok(Generation { number, manager, unanswered: AtomicU32::new(0), made: Instant::now() })
    }

    /// The connection manager in use, made on first use.
    fn generation(&self) -> Result<Arc<Generation>, StoreError> {
        if let Some(current) = self.connection.load_full() {
            return Ok(current);
        }
        let made = Arc::new(self.generation_numbered(0)?);
        let before = self.connection.compare_and_swap(&None::<Arc<Generation>>, Some(Arc::clone(&made)));
        // Another command may have made the first one meanwhile: then that one is used (this
        // one has not connected, so nothing is lost).
        Ok(match &*before {
            Some(winner) => Arc::clone(winner),
            None => made,
        })
    }

    /// `generation` answered: its streak of silence ends.
    fn answered(generation: &Generation) {
        generation.unanswered.store(0, Ordering::Relaxed);
    }

    /// `generation` left a command unanswered in time; on the streak that gives it up, the
    /// first command to notice replaces it (the others, and late failures of a generation
    /// already replaced, find it gone and do nothing).
    fn unanswered(&self, generation: &Arc<Generation>) {
        let streak = generation.unanswered.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        // A fresh connection gets the time to connect and answer once before it is judged:
        // the commands that waited for its first connection on a loaded machine time out
        // together, and replacing it then would only start that connection again.
        let judged_after = self.settings.connect_timeout.saturating_add(self.settings.command_timeout);
        if streak < UNANSWERED_BEFORE_REPLACING || generation.made.elapsed() < judged_after {
            return;
        }
        let still_current =
            self.connection.load().as_ref().is_some_and(|current| Arc::ptr_eq(current, generation));
        if !still_current {
            return;
        }
        let Ok(next) = self.generation_numbered(generation.number.wrapping_add(1)) else { return };
        let before = self.connection.compare_and_swap(generation, Some(Arc::new(next)));
        if before.as_ref().is_some_and(|before| Arc::ptr_eq(before, generation)) {
            // Its in-flight commands still hold it; it closes when the last one ends.
            tracing::warn!(
                connection = generation.number,
                "state: Redis left {streak} commands in a row unanswered within {} ms; replacing the connection",
                self.settings.command_timeout.as_millis()
            );
        }
    }

    /// Runs one command, bounded by `timeouts.command`.
    async fn query<T: FromRedisValue>(
        &self,
        what: &'static str,
        command: &redis::Cmd,
    ) -> Result<T, StoreError> {
        self.sent(what, |mut connection| async move { command.query_async(&mut connection).await }).await
    }

    /// Runs one script (by digest, loading it first where Redis does not know it: after a
    /// restart), bounded by `timeouts.command`.
    async fn invoke<T: FromRedisValue>(
        &self,
        what: &'static str,
        script: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.sent(what, |mut connection| async move { script.invoke_async(&mut connection).await }).await
    }

    /// Sends what `send` sends on the connection in use, bounded by `timeouts.command`, and
    /// keeps the connection's streak of silence: an answer (an error reply too) ends it, no
    /// answer in time extends it, a closed or refused connection (which the manager replaces
    /// by itself) leaves it as it was.
    async fn sent<T, Answer>(
        &self,
        what: &'static str,
        send: impl FnOnce(ConnectionManager) -> Answer,
    ) -> Result<T, StoreError>
    where
        Answer: std::future::Future<Output = RedisResult<T>>,
    {
        let generation = self.generation()?;
        let answer = self.bounded(what, async { Ok(send(generation.manager.clone()).await) }).await;
        match answer {
            Ok(Ok(value)) => {
                Self::answered(&generation);
                Ok(value)
            }
            Ok(Err(error)) => {
                if error.is_timeout() {
                    self.unanswered(&generation);
                } else if !error.is_io_error() {
                    Self::answered(&generation);
                }
                Err(classify(what, &error))
            }
            Err(no_answer) => {
                self.unanswered(&generation);
                Err(no_answer)
            }
        }
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
    } else if error.code() == Some("OOM") {
        StoreError::Full(format!("{what}: {}", error.kind_text()))
    } else {
        StoreError::Unavailable(format!("{what}: {}", error.kind_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Redis that is never reached (every manager is lazy), judged at once.
    fn judged_at_once() -> Redis {
        Redis::new(RedisSettings {
            url: Secret::new("redis://127.0.0.1:1/"),
            command_timeout: Duration::ZERO,
            connect_timeout: Duration::ZERO,
            ..RedisSettings::default()
        })
        .unwrap()
    }

    #[tokio::test]
    async fn a_connection_is_replaced_after_its_streak_of_silence_and_only_once() {
        let redis = judged_at_once();
        let first = redis.generation().unwrap();
        assert!(Arc::ptr_eq(&first, &redis.generation().unwrap()), "made once");
        for _ in 1..UNANSWERED_BEFORE_REPLACING {
            redis.unanswered(&first);
        }
        assert!(Arc::ptr_eq(&first, &redis.generation().unwrap()), "one short of the streak");
        redis.unanswered(&first);
        let second = redis.generation().unwrap();
        assert!(!Arc::ptr_eq(&first, &second), "replaced on the streak");
        assert_eq!(second.number, first.number + 1);
        // Commands of the first still in flight time out after it: the second stays.
        for _ in 0..5 {
            redis.unanswered(&first);
        }
        assert!(Arc::ptr_eq(&second, &redis.generation().unwrap()), "one replacement per generation");
    }

    #[tokio::test]
    async fn an_answer_ends_the_streak() {
        let redis = judged_at_once();
        let first = redis.generation().unwrap();
        for _ in 0..3 {
            for _ in 1..UNANSWERED_BEFORE_REPLACING {
                redis.unanswered(&first);
            }
            Redis::answered(&first);
        }
        assert!(Arc::ptr_eq(&first, &redis.generation().unwrap()), "never that many in a row");
    }

    #[tokio::test]
    async fn a_fresh_connection_is_not_judged_before_it_could_connect_and_answer() {
        let redis = Redis::new(RedisSettings {
            url: Secret::new("redis://127.0.0.1:1/"),
            connect_timeout: Duration::from_secs(60),
            ..RedisSettings::default()
        })
        .unwrap();
        let first = redis.generation().unwrap();
        for _ in 0..UNANSWERED_BEFORE_REPLACING * 4 {
            redis.unanswered(&first);
        }
        assert!(Arc::ptr_eq(&first, &redis.generation().unwrap()));
    }

    #[test]
    fn every_connection_has_keepalive_and_a_user_timeout() {
        for url in ["redis://:password@127.0.0.1:6379/", "rediss://127.0.0.1:6380/"] {
            let redis =
                Redis::new(RedisSettings { url: Secret::new(url), ..RedisSettings::default() }).unwrap();
            let tcp = redis.client.get_connection_info().tcp_settings();
            assert!(tcp.keepalive().is_some(), "{url}");
            #[cfg(target_os = "linux")]
            assert_eq!(tcp.user_timeout(), Some(USER_TIMEOUT), "{url}");
        }
    }

    #[test]
    fn a_bad_url_is_refused_without_echoing_it() {
        let error = Redis::new(RedisSettings {
            url: Secret::new("http://user:hunter2@example.test/"),
            ..RedisSettings::default()
        })
        .unwrap_err();
        assert!(error.starts_with("state.redis.url: "), "{error}");
        assert!(!error.contains("hunter2") && !error.contains("example.test"), "{error}");
    }
}
