//! What sits behind Envoy in the proxy tests: a recording HTTP upstream (`Upstream`) and the real
//! MCP server from `tests/mcp/server.mjs` (`McpServer`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::Request;
use axum::Json;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// The path with its query, as Envoy forwarded it.
    pub path: String,
    /// Lower-case names; repeated headers joined with `, `.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// A real HTTP server on `127.0.0.1:0` that answers every method and path with 200 and a JSON
/// echo (`{"method","path","headers"}`), and records each request. Stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorder = Arc::clone(&requests);
        let app =
            axum::Router::new().fallback(move |request: Request| record(Arc::clone(&recorder), request));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, requests, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// The newest request; panics when there was none.
    pub fn last(&self) -> Recorded {
        self.requests.lock().unwrap().last().cloned().expect("the upstream saw a request")
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        // Closes the listener; connections still open end with the test's runtime.
        self.task.abort();
    }
}

async fn record(requests: Arc<Mutex<Vec<Recorded>>>, request: Request) -> Json<Value> {
    let (parts, body) = request.into_parts();
    let mut headers = BTreeMap::<String, String>::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert(value);
    }
    let path = parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_owned(), |p| p.to_string());
    let body = to_bytes(Body::new(body), 16 << 20).await.unwrap_or_default().to_vec();
    let echo = json!({ "method": parts.method.as_str(), "path": path, "headers": headers });
    requests.lock().unwrap().push(Recorded { method: parts.method.to_string(), path, headers, body });
    Json(echo)
}

/// The real MCP server (`node .tools/mcp/server.mjs 0`, the official SDK over Streamable HTTP,
/// stateless, JSON responses) on an ephemeral port. Killed and reaped when dropped.
pub struct McpServer {
    pub addr: SocketAddr,
    child: Child,
}

impl McpServer {
    /// Starts node and waits (blocking, about half a second) for the port line.
    pub fn start() -> Self {
        Self::start_script("server.mjs", &[])
    }

    /// `tests/mcp/list_server.mjs` with `flags` (`--sse`, `--stateful`, `--page-size N`,
    /// `--bulk N`, `--malformed`): the fixed tools, prompts and resources of every kind.
    pub fn start_lists(flags: &[&str]) -> Self {
        Self::start_script("list_server.mjs", flags)
    }

    /// `examples/mcp/filtered_server.mjs`, asking cedargate's gRPC API at `grpc` what to list
    /// and run (it connects on its first request).
    pub fn start_filtered(grpc: SocketAddr) -> Self {
        let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
        let env = [("CEDARGATE_GRPC", grpc.to_string()), ("CEDARGATE_PROTO", proto.display().to_string())];
        Self::start_node("filtered_server.mjs", &[], &env)
    }

    fn start_script(name: &str, flags: &[&str]) -> Self {
        Self::start_node(name, flags, &[])
    }

    fn start_node(name: &str, flags: &[&str], env: &[(&str, String)]) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/mcp").join(name);
        assert!(script.exists(), "{} is missing: run scripts/install-test-deps.sh", script.display());
        let mut command = Command::new("node");
        command.arg(&script);
        if flags.is_empty() && name == "server.mjs" {
            command.arg("0");
        }
        let mut child = command
            .args(flags)
            .envs(env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node starts (run scripts/install-test-deps.sh)");
        // The one stdout line is read on a thread so a hung server fails the test after a timeout
        // instead of blocking it for ever.
        let stdout = child.stdout.take().unwrap();
        let (line_tx, line_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = line_tx.send(line);
        });
        let line = match line_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the MCP server did not print `listening on <port>` within 20 s");
            }
        };
        let port = match line.trim().strip_prefix("listening on ").map(str::parse::<u16>) {
            Some(Ok(port)) => port,
            _ => {
                let _ = child.kill();
                let status = child.wait();
                panic!("the MCP server did not start: stdout {line:?}, exit {status:?}");
            }
        };
        Self { addr: SocketAddr::from(([127, 0, 0, 1], port)), child }
    }

    /// The MCP endpoint, `http://127.0.0.1:<port>/mcp`.
    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }
}

impl Drop for McpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the real MCP client saw: `node .tools/mcp/lister.mjs` against `url` with `headers`
/// (`Name: value`), making `calls` (see the script). Run off the runtime, which may serve
/// cedargate too.
pub async fn lister(url: &str, headers: &[&str], calls: &Value) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/mcp/lister.mjs");
    assert!(script.exists(), "{} is missing: run scripts/install-test-deps.sh", script.display());
    let mut command = Command::new("node");
    command.arg(&script);
    for header in headers {
        command.args(["-H", header]);
    }
    command.arg(url).arg(calls.to_string());
    let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().expect("node runs");
    assert!(output.status.success(), "lister failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!("lister printed no JSON ({error}): {}", String::from_utf8_lossy(&output.stdout))
    })
}
