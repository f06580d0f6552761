//! How both ports take connections: an accept loop that holds a cap on open connections per
//! listener and backs off when the process runs out of file descriptors; HTTP/1.1 connections
//! with a header-read timeout, an idle keep-alive timeout and a request timeout; and the
//! stream of connections tonic serves on the gRPC port, with the same cap and a deadline for
//! the HTTP/2 preface.
//!
//! Beyond its cap a listener stops accepting, so new connections wait in the kernel's listen
//! backlog (first come, first served) and are taken as soon as a slot frees, which the
//! timeouts guarantee for HTTP and for a silent gRPC socket. Accepting only to close would
//! spend a descriptor per attempt, the very thing the cap protects, and would turn a
//! well-behaved client waiting its turn into an error.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::Router;
use futures_util::{Stream, StreamExt as _};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tower_http::add_extension::AddExtension;
use tower_http::timeout::TimeoutLayer;

use crate::config::ListenConfig;

/// How long the accept loop pauses after an error that is not the peer's (out of file
/// descriptors or memory). The pending connection stays in the backlog and the listener stays
/// readable, so retrying at once would spin a core without freeing anything.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The same trouble (cap reached, accept failing) is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Length of the HTTP/2 client connection preface (RFC 9113 §3.4).
const HTTP2_PREFACE_LEN: u64 = 24;

/// Serves `router` over HTTP/1.1 on `listener` with the limits in `listen` until `stop`
/// completes; then stops listening and lets open connections finish their requests. Dropping
/// the future closes every connection at once (shutdown does that after `shutdown_grace`).
pub async fn serve_http(
    listener: TcpListener,
    router: Router,
    listen: &ListenConfig,
    stop: impl Future<Output = ()>,
) {
    // 503, as for an unavailable credential backend: a gateway fails closed without a challenge.
    let router = router
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, listen.request_timeout.0));
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.header_read_timeout(listen.header_read_timeout.0);
    let mut acceptor =
        Acceptor::new(listener, listen.http_max_connections, "HTTP", "listen.http_max_connections");
    let graceful = GracefulShutdown::new();
    // Owns every connection task, so dropping this future closes them all.
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = acceptor.next() => {
                let Some((stream, peer, permit)) = accepted else { break };
                let connection = Connection::new(stream.into(), permit, None, listen.request_timeout.0);
                let timer = HeadTimer {
                    header_read_timeout: listen.header_read_timeout.0,
                    idle_timeout: listen.http_idle_timeout.0,
                    bytes_read: Arc::clone(&connection.bytes_read),
                };
                let service = TowerToHyperService::new(AddExtension::new(router.clone(), ConnectInfo(peer)));
                let mut builder = http1.clone();
                let connection = builder.timer(timer).serve_connection(TokioIo::new(connection), service);
                let served = graceful.watch(connection);
                connections.spawn(async move {
                    if let Err(error) = served.await {
                        tracing::debug!(%peer, "HTTP connection ended: {error}");
                    }
                });
            }
        }
    }
    // Close the listening socket first: a connection queued from now on would only wait.
    drop(acceptor);
    graceful.shutdown().await;
    while connections.join_next().await.is_some() {}
}

/// The connections tonic serves on the gRPC port: at most `listen.grpc_max_connections` open
/// at once, each with `TCP_NODELAY` and `listen.header_read_timeout` to send the HTTP/2
/// preface. The stream never yields an error: tonic retries a failed accept at once, which
/// would spin on `EMFILE`, so errors are handled (and backed off from) here.
///
/// With `unix`, connections on that Unix domain socket (Envoy's `pipe` address) are served
/// too, with a cap of their own of the same size.
pub fn grpc_incoming(
    listener: TcpListener,
    unix: Option<UnixListener>,
    listen: &ListenConfig,
) -> impl Stream<Item = io::Result<Connection>> {
    let tcp = accepted(
        Acceptor::new(listener, listen.grpc_max_connections, "gRPC", "listen.grpc_max_connections"),
        listen,
    );
    let unix = unix.map(|unix| {
        accepted(
            Acceptor::new(
                unix,
                listen.grpc_max_connections,
                "gRPC (Unix socket)",
                "listen.grpc_max_connections",
            ),
            listen,
        )
    });
    futures_util::stream::select(tcp.boxed(), futures_util::stream::iter(unix).flatten().boxed())
}

/// The gRPC connections `acceptor` takes, with their preface and write deadlines.
fn accepted<A>(
    acceptor: Acceptor<A>,
    listen: &ListenConfig,
) -> impl Stream<Item = io::Result<Connection>> + Send
where
    A: Accept + Send + 'static,
    A::Stream: Into<Socket> + Send,
{
    let preface_timeout = listen.header_read_timeout.0;
    let write_timeout = listen.request_timeout.0;
    futures_util::stream::unfold(acceptor, move |mut acceptor| async move {
        let (stream, _peer, permit) = acceptor.next().await?;
        Some((Ok(Connection::new(stream.into(), permit, Some(preface_timeout), write_timeout)), acceptor))
    })
}

/// A connection's socket: TCP, or a Unix domain socket on the gRPC port.
#[derive(Debug)]
pub enum Socket {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix domain socket connection.
    Unix(UnixStream),
}

impl From<TcpStream> for Socket {
    fn from(stream: TcpStream) -> Self {
        Self::Tcp(stream)
    }
}

impl From<UnixStream> for Socket {
    fn from(stream: UnixStream) -> Self {
        Self::Unix(stream)
    }
}

/// Forwards an I/O call to the socket of either kind.
macro_rules! either {
    ($stream:expr, $inner:ident => $call:expr) => {
        match $stream {
            Socket::Tcp($inner) => $call,
            Socket::Unix($inner) => $call,
        }
    };
}

/// An accepted connection; it holds its slot in the listener's cap until dropped.
#[derive(Debug)]
pub struct Connection {
    stream: Socket,
    _slot: OwnedSemaphorePermit,
    /// Every byte read so far: the HTTP head timer tells an idle keep-alive connection from
    /// one whose next request has begun by it.
    bytes_read: Arc<AtomicU64>,
    /// gRPC, until the HTTP/2 preface is in: when it must be. hyper's HTTP/2 server waits for
    /// the preface without a limit, so a silent socket would otherwise keep its slot forever.
    preface_deadline: Option<Pin<Box<Sleep>>>,
    /// How long a write may make no progress: a client that never reads (its window full)
    /// would otherwise hold its slot past every other timeout.
    write_timeout: Duration,
    /// Since when the current write has been stalled.
    write_stall: Option<Pin<Box<Sleep>>>,
}

impl Connection {
    fn new(
        stream: Socket,
        slot: OwnedSemaphorePermit,
        preface_timeout: Option<Duration>,
        write_timeout: Duration,
    ) -> Self {
        // Decisions are small messages on long-lived connections: never let Nagle's algorithm
        // hold one back waiting for a delayed ACK.
        if let Socket::Tcp(tcp) = &stream {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!("cannot set TCP_NODELAY: {error}");
            }
        }
        Self {
            stream,
            _slot: slot,
            bytes_read: Arc::new(AtomicU64::new(0)),
            preface_deadline: preface_timeout.map(|timeout| Box::pin(tokio::time::sleep(timeout))),
            write_timeout,
            write_stall: None,
        }
    }

    /// Turns a write that has been pending for `write_timeout` into an error, and forgets the
    /// stall once a write makes progress.
    fn watch_write<T>(&mut self, cx: &mut Context<'_>, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if result.is_ready() {
            self.write_stall = None;
            return result;
        }
        let timeout = self.write_timeout;
        let stall = self.write_stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if stall.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the peer stopped reading")));
        }
        Poll::Pending
    }
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = either!(&mut this.stream, stream => Pin::new(stream).poll_read(cx, buf));
        match &result {
            Poll::Ready(Ok(())) => {
                let read = (buf.filled().len() - before) as u64;
                let total = this.bytes_read.fetch_add(read, Ordering::Relaxed) + read;
                if total >= HTTP2_PREFACE_LEN {
                    this.preface_deadline = None;
                }
            }
            Poll::Pending => {
                if let Some(deadline) = &mut this.preface_deadline {
                    if deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no HTTP/2 preface within listen.header_read_timeout",
                        )));
                    }
                }
            }
            Poll::Ready(Err(_)) => {}
        }
        result
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = either!(&mut this.stream, stream => Pin::new(stream).poll_write(cx, buf));
        this.watch_write(cx, result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = either!(&mut this.stream, stream => Pin::new(stream).poll_write_vectored(cx, bufs));
        this.watch_write(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        either!(&self.stream, stream => stream.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = either!(&mut this.stream, stream => Pin::new(stream).poll_flush(cx));
        this.watch_write(cx, result)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either!(&mut self.get_mut().stream, stream => Pin::new(stream).poll_shutdown(cx))
    }
}

/// The peer address, so gRPC handlers see `remote_addr()` as they do on a plain `TcpStream`;
/// none on a Unix socket (a local proxy: there is no client address to see).
impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match &self.stream {
            Socket::Tcp(tcp) => tcp.connect_info(),
            Socket::Unix(_) => TcpConnectInfo { local_addr: None, remote_addr: None },
        }
    }
}

/// Where connections come from: a `TcpListener`, a `UnixListener`, or a scripted source in
/// tests.
trait Accept {
    /// What an accepted connection is.
    type Stream;
    /// Who is at the other end.
    type Peer: Send;

    /// The next connection and its peer.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, Self::Peer)>> + Send;
}

impl Accept for TcpListener {
    type Stream = TcpStream;
    type Peer = SocketAddr;

    fn accept(&mut self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send {
        TcpListener::accept(self)
    }
}

impl Accept for UnixListener {
    type Stream = UnixStream;
    type Peer = ();

    async fn accept(&mut self) -> io::Result<(UnixStream, ())> {
        UnixListener::accept(self).await.map(|(stream, _)| (stream, ()))
    }
}

/// Takes connections from a source, at most `max_connections` open at once, and rides out
/// accept errors without spinning.
#[derive(Debug)]
struct Acceptor<A> {
    source: A,
    slots: Arc<Semaphore>,
    max_connections: usize,
    /// `HTTP` or `gRPC`, and the setting that sizes the cap, for the log.
    listener: &'static str,
    setting: &'static str,
    cap_log: LogThrottle,
    error_log: LogThrottle,
    /// Inside a run of failed accepts (logged once, at its start, if the throttle allowed).
    failing: bool,
    failure_logged: bool,
}

impl<A: Accept> Acceptor<A> {
    fn new(source: A, max_connections: usize, listener: &'static str, setting: &'static str) -> Self {
        Self {
            source,
            slots: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            listener,
            setting,
            cap_log: LogThrottle::default(),
            error_log: LogThrottle::default(),
            failing: false,
            failure_logged: false,
        }
    }

    /// The next connection with its slot, once a slot is free. Cancel-safe: a connection is
    /// never taken from the source and then dropped. `None` only if the semaphore is closed,
    /// which nothing does.
    async fn next(&mut self) -> Option<(A::Stream, A::Peer, OwnedSemaphorePermit)> {
        let slot = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(TryAcquireError::Closed) => return None,
            Err(TryAcquireError::NoPermits) => {
                if let Some(held_back) = self.cap_log.ready() {
                    tracing::warn!(
                        listener = self.listener,
                        max_connections = self.max_connections,
                        held_back,
                        "connection cap reached: new connections wait in the listen backlog until one \
                         closes; raise {} if this is normal load",
                        self.setting,
                    );
                }
                Arc::clone(&self.slots).acquire_owned().await.ok()?
            }
        };
        loop {
            match self.source.accept().await {
                Ok((stream, peer)) => {
                    if std::mem::take(&mut self.failing) && self.failure_logged {
                        tracing::info!(listener = self.listener, "accepting connections again");
                    }
                    return Some((stream, peer, slot));
                }
                // The peer gave up before it was accepted; nothing is wrong here.
                Err(error) if is_peer_error(&error) => {}
                Err(error) => {
                    if !self.failing {
                        self.failing = true;
                        let held_back = self.error_log.ready();
                        self.failure_logged = held_back.is_some();
                        if let Some(held_back) = held_back {
                            tracing::error!(
                                listener = self.listener,
                                held_back,
                                "cannot accept connections: {error}; retrying every {} ms",
                                ACCEPT_BACKOFF.as_millis(),
                            );
                        }
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }
}

/// Errors that concern one connection only, after which the next accept can go ahead.
fn is_peer_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
    )
}

/// Lets a repeated log line through at most once per [`LOG_EVERY`], counting the ones held back.
#[derive(Debug, Default)]
struct LogThrottle {
    last: Option<Instant>,
    held_back: u64,
}

impl LogThrottle {
    /// `Some(how many were held back since the last one)` when this one should be logged.
    fn ready(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|last| now.duration_since(last) < LOG_EVERY) {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

/// The timer of one HTTP/1 connection. hyper uses it only to bound the wait for a request
/// head, with one clock started when it begins to wait, so on its own it would also close a
/// kept-alive connection that is merely idle after `header_read_timeout`. This timer gives
/// the first request's head `header_read_timeout` from the accept, as hyper asks, and a later
/// one `idle_timeout` until its first byte arrives and `header_read_timeout` from then on.
#[derive(Debug, Clone)]
struct HeadTimer {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    bytes_read: Arc<AtomicU64>,
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeadSleep::fixed(tokio::time::sleep(duration)))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let bytes_read = self.bytes_read.load(Ordering::Relaxed);
        if bytes_read == 0 {
            return Box::pin(HeadSleep::fixed(tokio::time::sleep_until(deadline.into())));
        }
        Box::pin(HeadSleep {
            sleep: Box::pin(tokio::time::sleep(self.idle_timeout)),
            idle: Some(IdleWait { bytes_read: Arc::clone(&self.bytes_read), at_start: bytes_read }),
            header_read_timeout: self.header_read_timeout,
        })
    }

    // hyper computes deadlines from this; tokio's clock keeps them on the same time base.
    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }
}

/// A wait for a request head: fixed, or idle until the connection reads its next byte.
#[derive(Debug)]
struct HeadSleep {
    sleep: Pin<Box<Sleep>>,
    idle: Option<IdleWait>,
    header_read_timeout: Duration,
}

/// The connection's byte count when an idle wait began.
#[derive(Debug)]
struct IdleWait {
    bytes_read: Arc<AtomicU64>,
    at_start: u64,
}

impl HeadSleep {
    fn fixed(sleep: Sleep) -> Self {
        Self { sleep: Box::pin(sleep), idle: None, header_read_timeout: Duration::ZERO }
    }
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        // hyper polls its head timer right after every read that left the head incomplete,
        // so the first byte of the next request is seen here as soon as it is read.
        if let Some(idle) = &this.idle {
            if idle.bytes_read.load(Ordering::Relaxed) != idle.at_start {
                this.sleep.as_mut().reset(Instant::now() + this.header_read_timeout);
                this.idle = None;
            }
        }
        this.sleep.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for HeadSleep {}

#[cfg(test)]
mod tests;
