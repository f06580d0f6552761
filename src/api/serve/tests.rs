use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize};

use hyper::rt::Timer;

use super::*;

/// `EMFILE` on Linux: the process has no file descriptor left for the accepted socket.
const EMFILE: i32 = 24;
/// Far longer than any test waits, so a negative check cannot be outrun by a slow machine.
const LONG: Duration = Duration::from_secs(60);
/// Deadline for something that must happen.
const GENEROUS: Duration = Duration::from_secs(10);

/// A listener-like source: the scripted errors first, then `EMFILE` for as long as `exhausted`
/// is set, then connections (`()`).
#[derive(Default)]
struct Script {
    calls: Arc<AtomicUsize>,
    errors: VecDeque<io::Error>,
    exhausted: Arc<AtomicBool>,
}

impl Accept for Script {
    type Stream = ();
    type Peer = SocketAddr;

    fn accept(&mut self) -> impl Future<Output = io::Result<((), SocketAddr)>> + Send {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let result = match self.errors.pop_front() {
            Some(error) => Err(error),
            None if self.exhausted.load(Ordering::SeqCst) => Err(io::Error::from_raw_os_error(EMFILE)),
            None => Ok(((), SocketAddr::from(([127, 0, 0, 1], 4000)))),
        };
        std::future::ready(result)
    }
}

fn acceptor(script: Script, max_connections: usize) -> Acceptor<Script> {
    Acceptor::new(script, max_connections, "test", "listen.test_max_connections")
}

#[tokio::test]
async fn accept_waits_after_emfile_instead_of_spinning_and_resumes_when_descriptors_free_up() {
    let script = Script::default();
    let (calls, exhausted) = (Arc::clone(&script.calls), Arc::clone(&script.exhausted));
    exhausted.store(true, Ordering::SeqCst);
    let mut acceptor = acceptor(script, 10);
    let accepting = tokio::spawn(async move { acceptor.next().await.map(|(_, peer, _)| peer) });

    tokio::time::sleep(Duration::from_secs(1)).await;
    let tried = calls.load(Ordering::SeqCst);
    // A spinning loop would have tried millions of times; one that pauses 100 ms about ten.
    assert!((1..=12).contains(&tried), "accept was tried {tried} times in one second");
    assert!(!accepting.is_finished());

    exhausted.store(false, Ordering::SeqCst);
    let accepted = tokio::time::timeout(GENEROUS, accepting).await.expect("accepts again").unwrap();
    assert_eq!(accepted, Some(SocketAddr::from(([127, 0, 0, 1], 4000))));
}

#[tokio::test]
async fn each_error_that_is_not_the_peers_costs_a_pause() {
    let mut script = Script::default();
    script.errors.extend((0..3).map(|_| io::Error::from_raw_os_error(EMFILE)));
    let calls = Arc::clone(&script.calls);
    let mut acceptor = acceptor(script, 10);
    let started = Instant::now();
    assert!(acceptor.next().await.is_some());
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    // Timers never fire early, so this holds however slow the machine is.
    assert!(started.elapsed() >= 3 * ACCEPT_BACKOFF, "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_connection_the_peer_aborted_is_skipped() {
    let mut script = Script::default();
    script
        .errors
        .extend([io::ErrorKind::ConnectionAborted, io::ErrorKind::ConnectionReset].map(io::Error::from));
    let calls = Arc::clone(&script.calls);
    let mut acceptor = acceptor(script, 10);
    assert!(acceptor.next().await.is_some());
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert!(!acceptor.failing, "a peer's error is no accept failure");
}

#[tokio::test]
async fn at_the_cap_nothing_is_accepted_until_a_connection_closes() {
    let script = Script::default();
    let calls = Arc::clone(&script.calls);
    let mut acceptor = acceptor(script, 1);
    let (_, _, first) = acceptor.next().await.unwrap();

    let waiting = tokio::time::timeout(Duration::from_millis(300), acceptor.next()).await;
    assert!(waiting.is_err(), "a second connection was taken past the cap of one");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the source was not even asked: the peer waits in the backlog"
    );

    drop(first);
    let second = tokio::time::timeout(GENEROUS, acceptor.next()).await.expect("a slot freed up");
    assert!(second.is_some());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn a_repeated_log_line_is_let_through_once_per_interval_with_the_count_held_back() {
    let mut throttle = LogThrottle::default();
    assert_eq!(throttle.ready(), Some(0));
    assert_eq!(throttle.ready(), None);
    assert_eq!(throttle.ready(), None);
    throttle.last = Instant::now().checked_sub(LOG_EVERY);
    assert_eq!(throttle.ready(), Some(2));
}

fn head_timer(header_read_timeout: Duration, idle_timeout: Duration, bytes_read: u64) -> HeadTimer {
    HeadTimer { header_read_timeout, idle_timeout, bytes_read: Arc::new(AtomicU64::new(bytes_read)) }
}

#[tokio::test]
async fn the_first_head_has_the_header_timeout_from_the_accept() {
    let timer = head_timer(Duration::from_millis(200), LONG, 0);
    let sleep = timer.sleep_until(timer.now() + timer.header_read_timeout);
    assert!(tokio::time::timeout(GENEROUS, sleep).await.is_ok());
}

#[tokio::test]
async fn an_idle_connection_waits_for_the_idle_timeout_not_the_header_timeout() {
    let timer = head_timer(Duration::from_millis(200), LONG, 100);
    let mut sleep = timer.sleep_until(timer.now() + timer.header_read_timeout);
    assert!(tokio::time::timeout(Duration::from_secs(1), &mut sleep).await.is_err(), "closed while idle");

    let timer = head_timer(LONG, Duration::from_millis(200), 100);
    let sleep = timer.sleep_until(timer.now() + timer.header_read_timeout);
    assert!(tokio::time::timeout(GENEROUS, sleep).await.is_ok(), "the idle timeout ends the wait");
}

#[tokio::test]
async fn once_the_next_request_begins_its_head_has_the_header_timeout() {
    let timer = head_timer(Duration::from_millis(200), LONG, 100);
    let mut sleep = timer.sleep_until(timer.now() + timer.header_read_timeout);
    assert!(tokio::time::timeout(Duration::from_millis(500), &mut sleep).await.is_err());
    timer.bytes_read.fetch_add(5, Ordering::Relaxed);
    assert!(tokio::time::timeout(GENEROUS, sleep).await.is_ok(), "a trickling head is cut off");
}

#[tokio::test]
async fn a_peer_that_stops_reading_loses_its_connection_after_the_write_timeout() {
    use tokio::io::AsyncWriteExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    // The client connects and never reads a byte.
    let _client = TcpStream::connect(address).await.unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    let slot = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
    let mut connection = Connection::new(stream.into(), slot, None, Duration::from_millis(200));
    // Far more than the socket buffers hold: the write stalls, then fails.
    let written = tokio::time::timeout(GENEROUS, connection.write_all(&vec![b'x'; 64 << 20])).await;
    let error = written.expect("the stalled write ends within the deadline").unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::TimedOut);
}
