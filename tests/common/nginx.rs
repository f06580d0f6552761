//! A real nginx (`.tools/bin/nginx`, bookworm's package unpacked by
//! `scripts/install-test-deps.sh`) running a snippet of `location` blocks — the shipped
//! `examples/nginx/cedargate.conf` or a modified copy — inside a minimal generated `nginx.conf`.
//!
//! Everything lives in a temporary directory: the config, the pid file, the error log and the
//! temp paths, so nginx never touches `/etc/nginx`, `/var/log/nginx` or `/var/lib/nginx`.
//!
//! nginx refuses `listen 127.0.0.1:0` ("invalid port"), so the port is picked by binding
//! `127.0.0.1:0`, reading the port and closing the socket; nginx then binds it. nginx is only
//! taken as up once its master process itself holds a listening socket on that port (read from
//! `/proc`), so a port another process grabbed in between is never mistaken for nginx; such a
//! start is retried on a fresh port.

use std::collections::HashSet;
use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The example snippet, relative to the crate root.
pub const EXAMPLE: &str = "examples/nginx/cedargate.conf";
/// Where the example expects cedargate's HTTP port (`/auth/verify`).
pub const EXAMPLE_CEDARGATE: &str = "127.0.0.1:8080";
/// Where the example expects the API it protects.
pub const EXAMPLE_UPSTREAM: &str = "127.0.0.1:3000";

const STARTUP: Duration = Duration::from_secs(20);
const SHUTDOWN: Duration = Duration::from_secs(5);
/// Starts that lost their port to another process before nginx is given up on.
const ATTEMPTS: usize = 5;

/// A running nginx (master and one worker); stopped with SIGTERM and reaped when dropped.
pub struct Nginx {
    /// The `server`'s listener.
    pub addr: SocketAddr,
    child: Child,
    dir: TempDir,
}

/// How one start went.
enum Started {
    Up,
    /// nginx exited because the port was taken: try another.
    PortTaken,
}

impl Nginx {
    /// Runs the shipped example in front of `upstream`, asking cedargate at `cedargate_http`.
    pub async fn start_example(cedargate_http: SocketAddr, upstream: SocketAddr) -> Self {
        Self::start(&Self::example_snippet(cedargate_http, upstream)).await
    }

    /// The shipped example with cedargate's HTTP address ([`EXAMPLE_CEDARGATE`]) and the
    /// upstream's ([`EXAMPLE_UPSTREAM`]) replaced, for a test that runs a modified copy with
    /// [`Nginx::start`]. Panics when the example no longer names either address, so a test
    /// cannot silently run something else.
    pub fn example_snippet(cedargate_http: SocketAddr, upstream: SocketAddr) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(EXAMPLE);
        let example =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        replace_addrs(
            &example,
            &[(EXAMPLE_CEDARGATE, cedargate_http.to_string()), (EXAMPLE_UPSTREAM, upstream.to_string())],
        )
    }

    /// Starts nginx with `snippet` (already pointing at the test's servers) inside
    /// `server { listen 127.0.0.1:<port>; ... }` and waits until it accepts connections.
    /// Panics with the error log when it does not come up within 20 s.
    pub async fn start(snippet: &str) -> Self {
        let binary = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/nginx");
        assert!(binary.exists(), "{} is missing: run scripts/install-test-deps.sh", binary.display());
        for attempt in 1..=ATTEMPTS {
            let mut nginx = Self::spawn(&binary, snippet, free_port());
            match nginx.wait_until_up(attempt == ATTEMPTS).await {
                Started::Up => return nginx,
                // Dropping it reaps the exited process and removes its directory.
                Started::PortTaken => drop(nginx),
            }
        }
        unreachable!("the last attempt panics instead of asking for another")
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// What nginx wrote to its error log (level `warn` and up) so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// The generated `nginx.conf` nginx runs on.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("nginx.conf")
    }

    /// Writes the config for `port` into a fresh directory and starts nginx on it.
    fn spawn(binary: &Path, snippet: &str, port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Run as root, nginx's worker drops to `nobody` and must still reach the temp paths.
        set_mode(dir.path(), 0o755);
        let config = dir.path().join("nginx.conf");
        std::fs::write(&config, render(dir.path(), port, snippet)).unwrap();
        let error_log = dir.path().join("error.log");
        let stderr = File::create(dir.path().join("nginx.stderr")).unwrap();
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&config)
            // Start-up errors go here too, instead of the built-in /var/log/nginx path.
            .arg("-e")
            .arg(&error_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("nginx starts");
        Self { addr: SocketAddr::from(([127, 0, 0, 1], port)), child, dir }
    }

    /// Polls until the master listens on `addr` and a connection succeeds. Panics, keeping the
    /// directory, when nginx exits or the deadline passes; a lost port is a panic only on the
    /// `last` attempt.
    async fn wait_until_up(&mut self, last: bool) -> Started {
        let deadline = Instant::now() + STARTUP;
        loop {
            if listens(self.child.id(), self.addr.port()) && TcpStream::connect(self.addr).is_ok() {
                return Started::Up;
            }
            let exited = self.child.try_wait().ok().flatten();
            if exited.is_some() && !last && self.error_log().contains("Address already in use") {
                return Started::PortTaken;
            }
            if exited.is_some() || Instant::now() > deadline {
                // Keep the config and the logs for a post-mortem.
                self.dir.disable_cleanup(true);
                let why =
                    exited.map_or_else(|| "timed out".to_owned(), |status| format!("exited with {status}"));
                let stderr =
                    std::fs::read_to_string(self.dir.path().join("nginx.stderr")).unwrap_or_default();
                panic!(
                    "nginx did not come up on {} ({why}); kept {}\n--- error.log tail ---\n{}\n\
                     --- stderr tail ---\n{}",
                    self.addr,
                    self.dir.path().display(),
                    tail(&self.error_log(), 40),
                    tail(&stderr, 20),
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SIGTERM: the master stops its workers and exits after them. A SIGKILL would leave the
        // workers running with the listening socket, so it is only the fallback, for them too.
        let pid = self.child.id();
        let workers = children(pid);
        let _ = signal("-TERM", pid);
        let deadline = Instant::now() + SHUTDOWN;
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                for worker in workers {
                    let _ = signal("-KILL", worker);
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.wait();
    }
}

/// The whole `nginx.conf`: one worker, everything under `dir`, `snippet` inside the one server.
fn render(dir: &Path, port: u16, snippet: &str) -> String {
    let at = |name: &str| format!("\"{}\"", dir.join(name).display());
    format!(
        "daemon off;\n\
         master_process on;\n\
         worker_processes 1;\n\
         pid {pid};\n\
         error_log {log} warn;\n\
         events {{}}\n\
         http {{\n\
         access_log off;\n\
         client_body_temp_path {body};\n\
         proxy_temp_path {proxy};\n\
         fastcgi_temp_path {fastcgi};\n\
         uwsgi_temp_path {uwsgi};\n\
         scgi_temp_path {scgi};\n\
         server {{\n\
         listen 127.0.0.1:{port};\n\
         {snippet}\n\
         }}\n\
         }}\n",
        pid = at("nginx.pid"),
        log = at("error.log"),
        body = at("client_body_temp"),
        proxy = at("proxy_temp"),
        fastcgi = at("fastcgi_temp"),
        uwsgi = at("uwsgi_temp"),
        scgi = at("scgi_temp"),
    )
}

/// Replaces, in one pass, every address `from` (not where more digits follow it) with its `to`;
/// panics when `text` lacks one of them.
fn replace_addrs(text: &str, pairs: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut found = vec![0_usize; pairs.len()];
    let mut rest = text;
    'scan: while !rest.is_empty() {
        for (i, (from, to)) in pairs.iter().enumerate() {
            if let Some(after) = rest.strip_prefix(from) {
                if !after.starts_with(|c: char| c.is_ascii_digit()) {
                    out.push_str(to);
                    found[i] += 1;
                    rest = after;
                    continue 'scan;
                }
            }
        }
        let next = rest.chars().next().map_or(1, char::len_utf8);
        out.push_str(&rest[..next]);
        rest = &rest[next..];
    }
    for ((from, _), found) in pairs.iter().zip(found) {
        assert!(found > 0, "{EXAMPLE} no longer mentions {from}: update tests/common/nginx.rs");
    }
    out
}

/// A port the kernel just handed out on 127.0.0.1, closed again for nginx to bind.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether process `pid` holds a socket listening on 127.0.0.1:`port`: its socket inodes
/// (`/proc/<pid>/fd`) against the LISTEN entries (state `0A`) of `/proc/net/tcp`.
pub fn listens(pid: u32, port: u16) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    let inodes: HashSet<String> = fds
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?;
            Some(target.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else { return false };
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 9 && fields[1] == local && fields[3] == "0A" && inodes.contains(fields[9])
    })
}

/// The direct children of `pid` (nginx's workers), when the kernel lists them.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|child| child.parse().ok())
        .collect()
}

fn signal(signal: &str, pid: u32) -> std::io::Result<std::process::ExitStatus> {
    Command::new("kill").arg(signal).arg(pid.to_string()).stderr(Stdio::null()).status()
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
