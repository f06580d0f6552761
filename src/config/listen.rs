//! `listen:` and `limits:`: where cedargate listens, and the limits that keep each listener
//! and request bounded.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Listen addresses, and the limits on the connections they accept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// gRPC (Authorizer, Sessions, health, reflection). Default `127.0.0.1:50051`.
    #[serde(default = "default_grpc")]
    pub grpc: SocketAddr,
    /// Also serve the gRPC services on this Unix domain socket (Envoy's `pipe` address),
    /// relative to the config file. Created at start (a stale socket left by a previous run is
    /// replaced; any other file there is an error), readable and writable by its owner and
    /// group only, and removed at shutdown. Absent: TCP only.
    #[serde(default)]
    pub grpc_unix: Option<PathBuf>,
    /// HTTP (login, `/healthz`, `/readyz`). Default `127.0.0.1:8080`.
    #[serde(default = "default_http")]
    pub http: SocketAddr,
    /// How long shutdown waits for in-flight requests and idle connections before closing
    /// them. Default 10s.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: HumanDuration,
    /// How long a new connection may take to send a whole request head (HTTP) or the HTTP/2
    /// preface (gRPC), and a kept-alive HTTP connection to finish a head once its first byte
    /// arrived; then the connection is closed. Default 10s.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: HumanDuration,
    /// How long a kept-alive HTTP connection may wait for its next request before it is
    /// closed. Keep a proxy's upstream idle timeout below it. Default 120s.
    #[serde(default = "default_http_idle_timeout")]
    pub http_idle_timeout: HumanDuration,
    /// Longest time from a request's head to its answer, body upload included: an HTTP
    /// request then gets a 503, a gRPC call `CANCELLED` (a shorter `grpc-timeout` from the
    /// client wins). Default 15s.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: HumanDuration,
    /// Most HTTP connections open at once; further ones wait in the listen backlog until one
    /// closes. Default 512.
    #[serde(default = "default_http_max_connections")]
    pub http_max_connections: usize,
    /// Most gRPC connections open at once; further ones wait in the listen backlog until one
    /// closes. Default 256.
    #[serde(default = "default_grpc_max_connections")]
    pub grpc_max_connections: usize,
    /// Most concurrent streams (calls) on one gRPC connection, announced to the client in
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`; a client over it has to wait or open another
    /// connection. Default 200.
    #[serde(default = "default_grpc_max_concurrent_streams")]
    pub grpc_max_concurrent_streams: u32,
    /// How long a gRPC connection may be silent before cedargate sends an HTTP/2 PING.
    /// Default 30s.
    #[serde(default = "default_grpc_keepalive_interval")]
    pub grpc_keepalive_interval: HumanDuration,
    /// How long cedargate waits for the answer to that PING before it closes the connection
    /// as dead. Default 10s.
    #[serde(default = "default_grpc_keepalive_timeout")]
    pub grpc_keepalive_timeout: HumanDuration,
}

/// Request size limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Longest `Authorization` value, in bytes. Default 8192.
    #[serde(default = "default_max_authorization")]
    pub max_authorization_bytes: usize,
    /// Most targets in one `BatchCheck`. Default 1000.
    #[serde(default = "default_max_batch")]
    pub max_batch_targets: usize,
}

fn default_grpc() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50051))
}
fn default_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_shutdown_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
// A proxy sends a request head in one write and a client's fits in a few packets; 10 s is
// ample for either and bounds how long a silent or trickling connection holds a slot.
fn default_header_read_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
// Above the upstream keep-alive of nginx (60 s) and of Go clients such as Traefik (90 s), so
// the proxy, not cedargate, closes an idle pooled connection and never races a new request.
fn default_http_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(120))
}
// Decisions take milliseconds and a remote credential backend is cut off at 5 s; a request
// still unanswered after 15 s is stuck (or its body is trickling in) and only holds resources.
fn default_request_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(15))
}
// Both caps together stay well below the 1024 open files a process gets by default (systemd's
// and most shells' soft `ulimit -n`), leaving room for outbound connections and the runtime.
// HTTP/1 needs a connection per concurrent request; gRPC multiplexes calls on each one.
fn default_http_max_connections() -> usize {
    512
}
fn default_grpc_max_connections() -> usize {
    256
}
// hyper's own default, which tonic replaces with "unlimited" unless told otherwise.
fn default_grpc_max_concurrent_streams() -> u32 {
    200
}
// Finds a peer that vanished without a FIN within 40 s and keeps NAT and load-balancer idle
// timers from dropping a quiet connection.
fn default_grpc_keepalive_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_grpc_keepalive_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_max_authorization() -> usize {
    crate::engine::EngineSettings::default().max_authorization_bytes
}
fn default_max_batch() -> usize {
    crate::engine::EngineSettings::default().max_batch_targets
}
impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            grpc: default_grpc(),
            grpc_unix: None,
            http: default_http(),
            shutdown_grace: default_shutdown_grace(),
            header_read_timeout: default_header_read_timeout(),
            http_idle_timeout: default_http_idle_timeout(),
            request_timeout: default_request_timeout(),
            http_max_connections: default_http_max_connections(),
            grpc_max_connections: default_grpc_max_connections(),
            grpc_max_concurrent_streams: default_grpc_max_concurrent_streams(),
            grpc_keepalive_interval: default_grpc_keepalive_interval(),
            grpc_keepalive_timeout: default_grpc_keepalive_timeout(),
        }
    }
}
impl Default for LimitsConfig {
    fn default() -> Self {
        Self { max_authorization_bytes: default_max_authorization(), max_batch_targets: default_max_batch() }
    }
}
