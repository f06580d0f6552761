//! The Envoy walkthrough of the README, end to end: `scripts/envoy-demo.sh` brings up cedargate,
//! Envoy, the sample API and the MCP server on free ports; every command it prints is run exactly
//! as printed and must give the result its comment states; then a SIGINT, as Ctrl-C sends, must
//! stop everything, free every port and remove the script's directory.
//!
//! The comment after each command (`command  # expected`) is read as:
//! - `<status>`, `<status> <Header>: <value>` or `<status> {json}`: a `curl -si` answer with that
//!   HTTP status and that header value, or a JSON body with those top-level fields and values;
//! - `exit <code>`, `exit <code> {json}` or `exit <code> <text>`: that exit status, with stdout
//!   a JSON object with those top-level fields, or `<text>` in its output.
//!
//! Any other comment fails the test, and so does a set of commands that leaves out one of the
//! walkthrough's steps.

// Test code: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// The line the script prints once everything is up.
const READY: &str = "Ready. Ctrl-C stops everything.";
/// The line before the commands to try.
const TRY: &str = "Try these";
/// The script's port settings, in the order [`free_ports`] hands them out.
const PORT_VARS: [&str; 6] =
    ["ENVOY_PORT", "ENVOY_ADMIN_PORT", "CEDARGATE_GRPC_PORT", "CEDARGATE_HTTP_PORT", "API_PORT", "MCP_PORT"];
/// Installing nothing (the suite runner did) and starting four servers; generous for a loaded
/// machine.
const STARTUP: Duration = Duration::from_secs(90);
const COMMAND: Duration = Duration::from_secs(30);
const SHUTDOWN: Duration = Duration::from_secs(15);
/// Starts that lost a port to another test before the demo could bind it.
const ATTEMPTS: usize = 3;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Six distinct free ports: all bound on `127.0.0.1:0` at once, then closed.
fn free_ports() -> Vec<u16> {
    let listeners: Vec<TcpListener> =
        (0..PORT_VARS.len()).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|listener| listener.local_addr().unwrap().port()).collect()
}

/// The running script, in a process group of its own. When dropped, the script gets SIGTERM (so
/// it removes its directory) and then the whole group SIGKILL, so a failed test leaves no server
/// behind.
struct Demo {
    child: Child,
    ports: Vec<u16>,
    /// Everything the script wrote so far, stderr lines marked `stderr| `.
    transcript: Arc<Mutex<String>>,
    lines: mpsc::Receiver<String>,
}

impl Demo {
    fn start(ports: Vec<u16>) -> Self {
        let mut command = Command::new("env");
        // Ctrl-C in a terminal reaches a script whose SIGINT is not ignored; a test run from a
        // background job inherits an ignored SIGINT, which bash would not let the script trap.
        command.args(["--default-signal=INT", "bash", "scripts/envoy-demo.sh"]);
        command
            .current_dir(root())
            .env("CEDARGATE_BIN", env!("CARGO_BIN_EXE_cedargate"))
            .envs(PORT_VARS.iter().zip(&ports).map(|(name, port)| (*name, port.to_string())))
            // Every command goes to loopback; a proxy from the environment would answer instead.
            .env_remove("CEDARGATE_CONFIG")
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("all_proxy")
            .env_remove("ALL_PROXY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = command.spawn().expect("bash runs scripts/envoy-demo.sh");
        let transcript = Arc::new(Mutex::new(String::new()));
        let (line_tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stdout_transcript = Arc::clone(&transcript);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                stdout_transcript.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = line_tx.send(line);
            }
        });
        let stderr = child.stderr.take().unwrap();
        let stderr_transcript = Arc::clone(&transcript);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                stderr_transcript.lock().unwrap().push_str(&format!("stderr| {line}\n"));
            }
        });
        Self { child, ports, transcript, lines }
    }

    fn transcript(&self) -> String {
        self.transcript.lock().unwrap().clone()
    }

    /// The stdout lines up to the ready marker, or `Err` with how the script ended without it.
    fn wait_until_ready(&mut self) -> Result<Vec<String>, String> {
        let deadline = Instant::now() + STARTUP;
        let mut printed = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == READY => return Ok(printed),
                Ok(line) => printed.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!("no `{READY}` within {}s", STARTUP.as_secs()))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.wait_for_exit(Duration::from_secs(5));
                    return Err(format!("the script ended before `{READY}`: {status:?}"));
                }
            }
        }
    }

    fn wait_for_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().ok().flatten() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether any process of the script's group is still there.
    fn group_alive(&self) -> bool {
        let group = format!("-{}", self.child.id());
        Command::new("kill").args(["-0", "--", &group]).stderr(Stdio::null()).status().unwrap().success()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // A failed test first lets the script clean up (its temporary directory too), then kills
        // whatever of the group is left.
        if self.child.try_wait().ok().flatten().is_none() {
            let pid = self.child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).stderr(Stdio::null()).status();
            let _ = self.wait_for_exit(SHUTDOWN);
        }
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.child.wait();
    }
}

/// What a printed command's comment says it gives.
#[derive(Debug, Clone, PartialEq)]
enum Expected {
    Http { status: u16, check: Check },
    Exit { code: i32, check: Check },
}

#[derive(Debug, Clone, PartialEq)]
enum Check {
    Nothing,
    /// A response header (name case-insensitive) with exactly this value.
    Header(String, String),
    /// A JSON object holding these top-level fields with exactly these values.
    Json(Map<String, Value>),
    /// Text the command's output contains.
    Text(String),
}

/// Reads a command's comment; `None` when it is not understood.
fn parse_expected(comment: &str) -> Option<Expected> {
    let (head, rest) = comment.split_once(' ').unwrap_or((comment, ""));
    if head == "exit" {
        let (code, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let check = match rest {
            "" => Check::Nothing,
            json if json.starts_with('{') => Check::Json(serde_json::from_str(json).ok()?),
            text => Check::Text(text.to_owned()),
        };
        return Some(Expected::Exit { code: code.parse().ok()?, check });
    }
    let status: u16 = head.parse().ok().filter(|status| (100..600).contains(status))?;
    let check = match rest {
        "" => Check::Nothing,
        json if json.starts_with('{') => Check::Json(serde_json::from_str(json).ok()?),
        header => {
            let (name, value) = header.split_once(": ")?;
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return None;
            }
            Check::Header(name.to_owned(), value.to_owned())
        }
    };
    Some(Expected::Http { status, check })
}

/// One printed command with what its comment says.
#[derive(Debug, Clone)]
struct Step {
    command: String,
    expected: Expected,
}

/// The commands between [`TRY`] and the ready marker: every line but blank ones and `#`
/// comments is `command  # expected`.
fn parse_steps(printed: &[String]) -> Result<Vec<Step>, String> {
    let start = printed
        .iter()
        .position(|line| line.starts_with(TRY))
        .ok_or_else(|| format!("no line starting with `{TRY}`"))?;
    let mut steps = Vec::new();
    for line in &printed[start + 1..] {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (command, comment) =
            line.split_once("  # ").ok_or_else(|| format!("no `  # expected` comment: {line}"))?;
        let expected = parse_expected(comment).ok_or_else(|| format!("comment not understood: {line}"))?;
        steps.push(Step { command: command.to_owned(), expected });
    }
    Ok(steps)
}

/// Runs `command` with `sh -c` from the repository root, as a reader of the README would.
fn run(command: &str) -> Output {
    let child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(root())
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = child.id();
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    match done.recv_timeout(COMMAND) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
            panic!("`{command}` did not finish within {}s", COMMAND.as_secs());
        }
    }
}

/// A `curl -si` answer: the status and headers of the last response head, and the body.
struct HttpAnswer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpAnswer {
    fn parse(output: &str) -> Option<Self> {
        let mut rest = output;
        loop {
            let (head, body) = rest.split_once("\r\n\r\n")?;
            let mut lines = head.split("\r\n");
            let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
            // An interim `100 Continue` is followed by the real response.
            if (100..200).contains(&status) {
                rest = body;
                continue;
            }
            let headers = lines
                .filter_map(|line| line.split_once(':'))
                .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
                .collect();
            return Some(Self { status, headers, body: body.to_owned() });
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, value)| value.as_str())
    }
}

/// Every field of `expected` is in `actual` (a JSON object) with the same value.
fn check_fields(actual: &str, expected: &Map<String, Value>) -> Result<(), String> {
    let actual: Value =
        serde_json::from_str(actual.trim()).map_err(|error| format!("not JSON ({error}): {actual}"))?;
    for (field, value) in expected {
        if actual.get(field) != Some(value) {
            return Err(format!("`{field}` is {:?}, not {value}, in {actual}", actual.get(field)));
        }
    }
    Ok(())
}

/// Runs one step and checks what its comment says; the HTTP answer when it was one.
fn check_step(step: &Step) -> Result<Option<HttpAnswer>, String> {
    let output = run(&step.command);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let shown = format!("{:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}", output.status);
    match &step.expected {
        Expected::Http { status, check } => {
            let answer = HttpAnswer::parse(&stdout)
                .ok_or_else(|| format!("not an HTTP answer (curl -si): {shown}"))?;
            if answer.status != *status {
                return Err(format!("status {}, not {status}: {shown}", answer.status));
            }
            match check {
                Check::Nothing => {}
                Check::Header(name, value) => {
                    if answer.header(name) != Some(value.as_str()) {
                        return Err(format!("{name} is {:?}, not {value:?}: {shown}", answer.header(name)));
                    }
                }
                Check::Json(fields) => {
                    check_fields(&answer.body, fields).map_err(|e| format!("{e}\n{shown}"))?
                }
                Check::Text(_) => unreachable!("an HTTP expectation has no text check"),
            }
            Ok(Some(answer))
        }
        Expected::Exit { code, check } => {
            if output.status.code() != Some(*code) {
                return Err(format!("exit status is not {code}: {shown}"));
            }
            match check {
                Check::Nothing => {}
                Check::Json(fields) => check_fields(&stdout, fields).map_err(|e| format!("{e}\n{shown}"))?,
                Check::Text(text) => {
                    if !stdout.contains(text.as_str()) && !stderr.contains(text.as_str()) {
                        return Err(format!("no {text:?} in the output: {shown}"));
                    }
                }
                Check::Header(..) => unreachable!("an exit expectation has no header check"),
            }
            Ok(None)
        }
    }
}

/// A printed command is a step of the walkthrough: `envoy` is Envoy's origin.
type Covers = fn(&Step, &str) -> bool;

/// The walkthrough's steps, each of which some printed command must be.
fn coverage() -> Vec<(&'static str, Covers)> {
    fn curl(step: &Step, envoy: &str) -> bool {
        step.command.starts_with("curl ") && step.command.contains(envoy)
    }
    fn client(step: &Step, envoy: &str) -> bool {
        step.command.starts_with("node .tools/mcp/client.mjs ") && step.command.contains(envoy)
    }
    fn as_user(step: &Step) -> bool {
        step.command.contains("Authorization: Bearer user-token-123")
    }
    fn status(step: &Step) -> u16 {
        match step.expected {
            Expected::Http { status, .. } => status,
            Expected::Exit { .. } => 0,
        }
    }
    vec![
        ("a public route without a credential: 200", |s, envoy| {
            curl(s, envoy) && !as_user(s) && status(s) == 200
        }),
        ("a route without a credential: 401 with an RFC 9728 challenge", |s, envoy| {
            curl(s, envoy)
                && !as_user(s)
                && matches!(&s.expected, Expected::Http { status: 401, check: Check::Header(name, value) }
                    if name.eq_ignore_ascii_case("www-authenticate")
                        && value.starts_with("Bearer realm=")
                        && value.contains("resource_metadata=\""))
        }),
        ("the user's identity at the API, without the token: 200", |s, envoy| {
            curl(s, envoy)
                && as_user(s)
                && matches!(&s.expected, Expected::Http { status: 200, check: Check::Json(fields) }
                    if fields.get("authorization_present") == Some(&Value::Bool(false))
                        && fields.get("identity").and_then(|i| i.get("x-auth-subject")).is_some())
        }),
        ("an admin route as the user: 403", |s, envoy| curl(s, envoy) && as_user(s) && status(s) == 403),
        ("a raw JSON-RPC tools/call: 200", |s, envoy| {
            curl(s, envoy)
                && s.command.contains(&format!("{envoy}mcp "))
                && s.command.contains("\"method\":\"tools/call\"")
                && matches!(s.expected, Expected::Http { status: 200, check: Check::Json(_) })
        }),
        ("an allowed tool call with the MCP client: exit 0 and its result", |s, envoy| {
            client(s, envoy)
                && as_user(s)
                && matches!(s.expected, Expected::Exit { code: 0, check: Check::Json(_) })
        }),
        ("a denied tool call with the MCP client: an error naming the 403", |s, envoy| {
            client(s, envoy)
                && as_user(s)
                && matches!(&s.expected, Expected::Exit { code, check: Check::Text(text) }
                    if *code != 0 && text.contains("403"))
        }),
    ]
}

/// The `resource_metadata` URL of a `WWW-Authenticate` value.
fn resource_metadata(challenge: &str) -> Option<&str> {
    let (_, rest) = challenge.split_once("resource_metadata=\"")?;
    rest.split_once('"').map(|(url, _)| url)
}

fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(500)).is_ok()
}

/// Starts the demo on free ports, retrying when another process took one of them first.
fn start_demo() -> (Demo, Vec<String>) {
    for attempt in 1..=ATTEMPTS {
        let mut demo = Demo::start(free_ports());
        match demo.wait_until_ready() {
            Ok(printed) => return (demo, printed),
            Err(why) => {
                let transcript = demo.transcript();
                let lost_port =
                    transcript.contains("is in use") || transcript.contains("ddress already in use");
                if attempt == ATTEMPTS || !lost_port {
                    panic!("scripts/envoy-demo.sh did not come up: {why}\n--- its output ---\n{transcript}");
                }
            }
        }
    }
    unreachable!("the last attempt panics instead of asking for another")
}

#[test]
fn the_envoy_demo_runs_every_printed_command_as_documented_and_stops_on_ctrl_c() {
    for needed in [".tools/bin/envoy", ".tools/mcp/node_modules/@modelcontextprotocol/sdk"] {
        let path: PathBuf = root().join(needed);
        assert!(path.exists(), "{} is missing: run scripts/install-test-deps.sh", path.display());
    }
    let (mut demo, printed) = start_demo();
    let context = |demo: &Demo| format!("--- the script's output ---\n{}", demo.transcript());

    let steps = parse_steps(&printed).unwrap_or_else(|why| panic!("{why}\n{}", context(&demo)));
    assert!(steps.len() >= 8, "{} commands printed, expected at least 8\n{}", steps.len(), context(&demo));
    let envoy_port = demo.ports[0];
    let envoy = format!("http://127.0.0.1:{envoy_port}/");
    for (what, covers) in coverage() {
        assert!(
            steps.iter().any(|step| covers(step, &envoy)),
            "no printed command for {what}\n{}",
            context(&demo)
        );
    }

    let answers: Vec<Option<HttpAnswer>> = steps
        .iter()
        .map(|step| {
            check_step(step).unwrap_or_else(|why| {
                panic!("`{}`  # {:?}\n{why}\n{}", step.command, step.expected, context(&demo))
            })
        })
        .collect();
    // The metadata a 401 points to is fetched by a printed command, and names the MCP endpoint
    // behind Envoy as the resource (RFC 9728: the metadata URL is the resource's origin, the
    // well-known path, then the resource's path).
    let resource = format!("http://localhost:{envoy_port}/mcp");
    let challenged: Vec<&str> = answers
        .iter()
        .flatten()
        .filter(|answer| answer.status == 401)
        .filter_map(|answer| answer.header("www-authenticate").and_then(resource_metadata))
        .collect();
    assert!(!challenged.is_empty(), "no 401 carried resource_metadata\n{}", context(&demo));
    for url in challenged {
        assert_eq!(url, format!("http://localhost:{envoy_port}/.well-known/oauth-protected-resource/mcp"));
        let fetched = steps.iter().zip(&answers).find_map(|(step, answer)| {
            step.command.split_whitespace().any(|word| word == url).then_some(answer.as_ref()?)
        });
        let fetched =
            fetched.unwrap_or_else(|| panic!("no printed command fetches {url}\n{}", context(&demo)));
        assert_eq!(fetched.status, 200, "{}", fetched.body);
        check_fields(
            &fetched.body,
            &Map::from_iter([("resource".to_owned(), Value::String(resource.clone()))]),
        )
        .unwrap_or_else(|why| panic!("the metadata at {url}: {why}"));
    }

    // The directory with the rendered configs and logs, from the banner.
    let logs = printed
        .iter()
        .find_map(|line| line.split_once("(logs in ").and_then(|(_, rest)| rest.split_once(')')))
        .map(|(dir, _)| PathBuf::from(dir))
        .unwrap_or_else(|| panic!("the banner names no log directory\n{}", context(&demo)));
    assert!(logs.join("envoy.yaml").exists(), "{}", logs.display());
    let rendered = std::fs::read_to_string(logs.join("envoy.yaml")).unwrap();
    assert!(rendered.contains(&format!("{{ address: 127.0.0.1, port_value: {envoy_port} }}")), "{rendered}");

    // Ctrl-C: SIGINT to the script alone, as its children ignore it; the script must stop them.
    let pid = demo.child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let status = demo
        .wait_for_exit(SHUTDOWN)
        .unwrap_or_else(|| panic!("still running {}s after SIGINT\n{}", SHUTDOWN.as_secs(), context(&demo)));
    assert!(status.success(), "exit after SIGINT: {status}\n{}", context(&demo));
    let deadline = Instant::now() + Duration::from_secs(2);
    while demo.group_alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!demo.group_alive(), "processes of the demo outlived the script\n{}", context(&demo));
    for (name, port) in PORT_VARS.iter().zip(&demo.ports) {
        assert!(!accepts(*port), "{name} ({port}) still accepts connections\n{}", context(&demo));
    }
    assert!(!logs.exists(), "{} was not removed", logs.display());
}
