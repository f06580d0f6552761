//! A real Redis (`.tools/bin/redis-server`, bookworm's package unpacked by
//! `scripts/install-test-deps.sh`) on a free port of 127.0.0.1, with everything in a temporary
//! directory. It keeps an append-only file synced on every write, so a Redis killed and started
//! again holds what it held: a restart, as a production Redis with persistence has it.
//!
//! Redis takes `--port 0` as "no TCP at all", so the port is picked as nginx's is (bind
//! `127.0.0.1:0`, close, let Redis bind it) and Redis is up only once its own process listens
//! there; a start that lost the port is retried on a fresh one.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::nginx::{free_port, listens, tail};

const STARTUP: Duration = Duration::from_secs(20);
const ATTEMPTS: usize = 5;

/// A running redis-server; killed and reaped when dropped.
pub struct RedisServer {
    pub port: u16,
    /// The TLS port, for a Redis started with [`RedisServer::start_tls`].
    pub tls_port: Option<u16>,
    child: Option<Child>,
    dir: TempDir,
}

impl RedisServer {
    /// Starts Redis and waits until it answers `PING`.
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// Starts Redis with a TLS port too (`tests/fixtures/tls`: `redis.pem` for 127.0.0.1,
    /// signed by `ca.pem`; clients need no certificate), beside the plain port the test's own
    /// commands use.
    pub async fn start_tls() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(tls: bool) -> Self {
        let mut dir = tempfile::tempdir().unwrap();
        for attempt in 1..=ATTEMPTS {
            let port = free_port();
            let tls_port = tls.then(free_port);
            let child = Some(spawn(dir.path(), port, tls_port));
            let mut redis = Self { port, tls_port, child, dir };
            if redis.wait_until_up(attempt == ATTEMPTS).await {
                return redis;
            }
            redis.kill();
            dir = redis.into_dir();
        }
        unreachable!("the last attempt panics instead of asking for another")
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// `rediss://127.0.0.1:<tls port>/`, for a Redis started with TLS.
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}/", self.tls_port.expect("started with start_tls"))
    }

    /// `redis://<user>:<password>@127.0.0.1:<port>/`: as an ACL user. It holds a password:
    /// keep it out of assert messages.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("redis://{user}:{password}@127.0.0.1:{}/", self.port)
    }

    /// `ACL SETUSER <user> <rules>...`, run as the default user (who may do anything).
    pub async fn acl_setuser(&self, user: &str, rules: &[&str]) {
        let () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(user)
            .arg(rules)
            .query_async(&mut self.client().await)
            .await
            .unwrap_or_else(|error| panic!("ACL SETUSER {user}: {error}"));
    }

    /// A client connection for the test's own commands.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
    }

    /// SIGKILL, as a crash or an OOM kill would end it; reaped at once.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory (its append-only file reloaded).
    pub async fn restart(&mut self) {
        self.kill();
        self.child = Some(spawn(self.dir.path(), self.port, self.tls_port));
        assert!(self.wait_until_up(true).await, "Redis did not come back on {}", self.port);
    }

    fn into_dir(mut self) -> TempDir {
        self.kill();
        let placeholder = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, placeholder)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Polls until this process listens on the port and answers PING (after loading its
    /// file). False when the port was taken (unless `last`); panics with the log otherwise.
    async fn wait_until_up(&mut self, last: bool) -> bool {
        let deadline = Instant::now() + STARTUP;
        loop {
            let child = self.child.as_mut().unwrap();
            let tls_listens = self.tls_port.is_none_or(|port| listens(child.id(), port));
            if listens(child.id(), self.port) && tls_listens && ping(self.port).await {
                return true;
            }
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() && !last && self.log().contains("Address already in use") {
                return false;
            }
            if exited.is_some() || Instant::now() > deadline {
                self.dir.disable_cleanup(true);
                panic!(
                    "redis-server did not come up on {} ({exited:?}); kept {}\n{}",
                    self.port,
                    self.dir.path().display(),
                    tail(&self.log(), 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(dir: &Path, port: u16, tls_port: Option<u16>) -> Child {
    let binary = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/redis-server");
    assert!(binary.exists(), "{} is missing: run scripts/install-test-deps.sh", binary.display());
    let stderr = File::create(dir.join("redis.stderr")).unwrap();
    let mut command = Command::new(binary);
    if let Some(tls_port) = tls_port {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
        command.args(["--tls-port", &tls_port.to_string(), "--tls-auth-clients", "no"]);
        command.arg("--tls-cert-file").arg(fixtures.join("redis.pem"));
        command.arg("--tls-key-file").arg(fixtures.join("redis-key.pem"));
        command.arg("--tls-ca-cert-file").arg(fixtures.join("ca.pem"));
    }
    command
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .arg("--dir")
        .arg(dir)
        .args(["--logfile", "redis.log", "--daemonize", "no", "--save", ""])
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        // `DEBUG SLEEP`: a Redis that stops answering for a while, on demand.
        .args(["--enable-debug-command", "yes"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("redis-server starts")
}

async fn ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return false };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut answer = [0u8; 7];
    let read = tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut answer)).await;
    matches!(read, Ok(Ok(_))) && &answer == b"+PONG\r\n"
}
