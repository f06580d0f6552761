//! What every replica must hear at once, on one Redis pub/sub channel (`<prefix>events`): a
//! session revoked (the scripts publish it with the change itself), a token evicted from the
//! token caches (`Admin/EvictToken` on any replica). A message names digests and
//! fingerprints, never a token.
//!
//! Pub/sub delivers only to those listening: a replica whose connection was down missed what
//! was said meanwhile, so on every (re)connection it hears [`Event::Resync`] and forgets all it
//! holds that an event could have changed. Its session copies live at most
//! `local_cache_ttl` anyway.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::Redis;
use crate::model::SecretDigest;
use crate::session::StoreError;

/// One thing a replica must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A session's access token stopped working (logout, rotation, reuse).
    Revoked(SecretDigest),
    /// A token's cached answers must go.
    Evict(SecretDigest),
    /// The cached answers of every token with this fingerprint must go.
    EvictFingerprint(String),
    /// The channel was (re)joined: what was said while away is unknown.
    Resync,
}

impl Event {
    fn encode(&self) -> Option<String> {
        match self {
            Event::Revoked(digest) => Some(format!("revoked {}", digest.to_hex())),
            Event::Evict(digest) => Some(format!("evict {}", digest.to_hex())),
            Event::EvictFingerprint(fingerprint) => Some(format!("evict-fingerprint {fingerprint}")),
            Event::Resync => None,
        }
    }

    /// Reads a message; anything else (another version's message, garbage) is `None`.
    fn decode(message: &str) -> Option<Event> {
        let (kind, value) = message.split_once(' ')?;
        match kind {
            "revoked" => SecretDigest::from_hex(value).ok().map(Event::Revoked),
            "evict" => SecretDigest::from_hex(value).ok().map(Event::Evict),
            "evict-fingerprint"
                if value.len() == 16 && value.bytes().all(|byte| byte.is_ascii_hexdigit()) =>
            {
                Some(Event::EvictFingerprint(value.to_ascii_lowercase()))
            }
            _ => None,
        }
    }
}

/// What a replica does on an event.
pub type Handler = Arc<dyn Fn(&Event) + Send + Sync>;

/// The events channel of one Redis.
#[derive(Debug, Clone)]
pub struct Events {
    redis: Redis,
}

/// How often a quiet events connection is checked, and how long it may take to answer.
const PING_EVERY: Duration = Duration::from_secs(5);
/// First pause before reconnecting.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl Events {
    /// The channel of `redis`.
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    fn channel(&self) -> String {
        self.redis.key("events")
    }

    /// Tells every replica (this one included, through its listener).
    ///
    /// Fails when Redis cannot be reached in time.
    pub async fn publish(&self, event: &Event) -> Result<(), StoreError> {
        let Some(message) = event.encode() else { return Ok(()) };
        self.redis
            .query::<i64>("publish an event", redis::cmd("PUBLISH").arg(self.channel()).arg(message))
            .await
            .map(|_| ())
    }

    /// Listens until `stop`, handing each event to `handler`; reconnects after any failure,
    /// with `Resync` on each (re)connection.
    pub async fn listen(self, handler: Handler, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut backoff = MIN_BACKOFF;
        loop {
            let mut subscribed = false;
            tokio::select! {
                () = &mut stop => return,
                error = self.listen_once(&handler, &mut subscribed) => {
                    // Gone from the channel: what this replica holds may be revoked unheard.
                    handler(&Event::Resync);
                    tracing::warn!("state events: {error}; reconnecting");
                }
            }
            if subscribed {
                backoff = MIN_BACKOFF;
            }
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(backoff) => backoff = (backoff * 2).min(MAX_BACKOFF),
            }
        }
    }

    /// One connection's life: subscribe, resync, hand on messages until it fails, and why.
    async fn listen_once(&self, handler: &Handler, subscribed: &mut bool) -> String {
        match self.subscribed(handler, subscribed).await {
            Ok(never) => match never {},
            Err(error) => error,
        }
    }

    async fn subscribed(
        &self,
        handler: &Handler,
        subscribed: &mut bool,
    ) -> Result<std::convert::Infallible, String> {
        let settings = self.redis.settings();
        let connect = async {
            let mut pubsub = self.redis.client.get_async_pubsub().await?;
            pubsub.subscribe(self.channel()).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::time::timeout(settings.connect_timeout, connect)
            .await
            .map_err(|_| "no connection within the connect timeout".to_owned())?
            .map_err(|error| super::unavailable(&error).to_string())?;
        tracing::info!("state events: listening");
        // Subscribed: from here nothing is missed, and what came before is forgotten.
        *subscribed = true;
        handler(&Event::Resync);
        let (mut sink, mut messages) = pubsub.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.reset();
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { return Err("connection closed".to_owned()) };
                    let text = String::from_utf8_lossy(message.get_payload_bytes());
                    match Event::decode(&text) {
                        Some(event) => handler(&event),
                        None => tracing::warn!("state events: a message cedargate does not know was ignored"),
                    }
                }
                _ = ping.tick() => {
                    // Subscribed, Redis answers `["pong", ""]`, not `PONG`: any answer shows
                    // the connection lives.
                    let answered = tokio::time::timeout(settings.command_timeout.max(Duration::from_secs(1)), sink.ping::<redis::Value>()).await;
                    if !matches!(answered, Ok(Ok(_))) {
                        return Err("no answer to a ping".to_owned());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_back_as_written_and_nothing_else_reads() {
        let digest = SecretDigest::of(b"token");
        for event in
            [Event::Revoked(digest), Event::Evict(digest), Event::EvictFingerprint(digest.fingerprint())]
        {
            let message = event.encode().unwrap();
            assert!(!message.contains("token"));
            assert_eq!(Event::decode(&message), Some(event));
        }
        for garbage in [
            "",
            "revoked",
            "revoked xyz",
            "evict 00",
            "evict-fingerprint 0123",
            "evict-fingerprint 0123456789abcdeg",
            "resync x",
            "drop everything",
        ] {
            assert_eq!(Event::decode(garbage), None, "{garbage:?}");
        }
    }
}
