//! Issue 4: what cedargate's ext_authz costs at the proxy. Through the same Envoy build, the same
//! upstream and the same JWT, `cedargate-load` in HTTP mode drives:
//!
//! - (a) Envoy alone, proxying;
//! - (b) Envoy's own `jwt_authn` + `rbac` enforcing "`/user/` needs role `user`";
//! - (c) Envoy + cedargate (the release binary, its own process) over gRPC ext_authz enforcing
//!   the same rule with the embedded demo policies;
//! - (n) for reference, Envoy + gRPC ext_authz to a no-op server in this process that allows
//!   everything: the floor of any ext_authz service here.
//!
//! Each proxy is its own Envoy with one worker thread. Before measuring, every configuration is
//! shown to answer as it should (200 for role `user`; 403 for role `other` and 401 without a
//! token where the rule is enforced). Every measured request must be allowed.
//!
//! Ignored, so the normal suite never runs it; it prints a markdown table and asserts nothing
//! about time. Run it with
//!
//! ```sh
//! cargo test --release --test envoy_bench -- --ignored --nocapture
//! ```
//!
//! The configurations are interleaved (a b c n a b c n ...) and the table shows the median of
//! the rounds, so other work on the machine touches all of them alike. CPU per request comes from
//! `/proc/<pid>/stat` and Envoy's request counter. Overrides: `CEDARGATE_BENCH_ROUNDS` (5),
//! `CEDARGATE_BENCH_DURATION` (10s), `CEDARGATE_BENCH_WARMUP` (2s),
//! `CEDARGATE_BENCH_CONCURRENCY` (8, closed loop), `CEDARGATE_BENCH_RATE` (open loop at that
//! many requests per second instead), `CEDARGATE_BENCH_SERVER_WORKERS` (cedargate's tokio worker
//! threads; default one per core). cedargate inherits `RUST_LOG`.

// Test code: a failed set-up step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::envoy::{Auth, Envoy, EnvoyConfig};
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::rpc;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "https://api.test";
const KEY_ID: &str = "es";
const PATH: &str = "/user/profile";

/// How long and how hard to measure; see the module docs for the environment variables.
#[derive(Debug)]
struct Settings {
    rounds: usize,
    duration: Duration,
    warmup: Duration,
    concurrency: usize,
    rate: Option<u64>,
    /// cedargate's tokio worker threads; `None` is tokio's default (one per core).
    server_workers: Option<usize>,
}

impl Settings {
    fn from_env() -> Self {
        fn var<T>(name: &str, default: T, parse: impl Fn(&str) -> Option<T>) -> T {
            match std::env::var(name) {
                Ok(text) => parse(&text).unwrap_or_else(|| panic!("{name}={text} does not parse")),
                Err(_) => default,
            }
        }
        let duration = |text: &str| humantime::parse_duration(text).ok();
        Self {
            rounds: var("CEDARGATE_BENCH_ROUNDS", 5, |text| text.parse().ok()),
            duration: var("CEDARGATE_BENCH_DURATION", Duration::from_secs(10), duration),
            warmup: var("CEDARGATE_BENCH_WARMUP", Duration::from_secs(2), duration),
            concurrency: var("CEDARGATE_BENCH_CONCURRENCY", 8, |text| text.parse().ok()),
            rate: var("CEDARGATE_BENCH_RATE", None, |text| text.parse().ok().map(Some)),
            server_workers: var("CEDARGATE_BENCH_SERVER_WORKERS", None, |text| text.parse().ok().map(Some)),
        }
    }

    fn load(&self) -> String {
        match self.rate {
            Some(rate) => format!("open loop at {rate}/s"),
            None => format!("closed loop, {} in flight", self.concurrency),
        }
    }
}

fn signing_key() -> EncodingKey {
    EncodingKey::from_ec_pem(include_bytes!("fixtures/keys/ec256.pem")).unwrap()
}

/// An ES256 access token for `carol` with `roles`, valid for a day.
fn token(roles: &[&str]) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(KEY_ID.into());
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims =
        json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": "carol", "roles": roles, "exp": now + 86_400 });
    encode(&header, &claims, &signing_key()).unwrap()
}

/// The one-key JWKS both Envoy and cedargate verify against.
fn jwks() -> Value {
    let mut key = Jwk::from_encoding_key(&signing_key(), Algorithm::ES256).unwrap();
    key.common.key_id = Some(KEY_ID.into());
    serde_json::to_value(JwkSet { keys: vec![key] }).unwrap()
}

/// An upstream that does as little as possible: 200 `ok` for everything, nothing recorded
/// (`common::upstream::Upstream` records every request under a lock).
async fn fast_upstream() -> (SocketAddr, JoinHandle<()>) {
    let app = axum::Router::new().fallback(|| async { "ok" });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, task)
}

/// An ext_authz server that allows everything without looking: the floor of any ext_authz
/// service on this machine (Envoy's gRPC client, the extra hop, tonic), for reference.
#[derive(Debug, Clone, Copy)]
struct NoopAuthorization;

#[tonic::async_trait]
impl Authorization for NoopAuthorization {
    async fn check(
        &self,
        _: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(CheckResponse {
            status: Some(rpc::Status { code: tonic::Code::Ok as i32, ..Default::default() }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
            dynamic_metadata: None,
        }))
    }
}

/// Serves [`NoopAuthorization`] on `127.0.0.1:0` with `TCP_NODELAY`, as cedargate does.
async fn noop_ext_authz() -> (SocketAddr, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = Server::builder().add_service(AuthorizationServer::new(NoopAuthorization));
    let task = tokio::spawn(async move {
        let _ = server.serve_with_incoming(incoming).await;
    });
    (addr, task)
}

/// The release `cedargate` binary as its own process, as deployed: the embedded demo policies
/// and one JWT issuer. Killed and reaped when dropped.
struct Cedargate {
    grpc: SocketAddr,
    child: Child,
    dir: TempDir,
}

impl Cedargate {
    /// Starts the binary; `workers` sets its tokio worker threads (`TOKIO_WORKER_THREADS`), else
    /// tokio's default, one per core.
    fn start(jwks: &Value, workers: Option<usize>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("cedargate.yaml");
        let yaml = serde_yaml::to_string(&json!({
            "listen": { "grpc": "127.0.0.1:0", "http": "127.0.0.1:0" },
            "credentials": { "jwt": [{
                "issuer": ISSUER,
                "audiences": [AUDIENCE],
                "algorithms": ["ES256"],
                "jwks": jwks,
            }]},
        }))
        .unwrap();
        std::fs::write(&config, yaml).unwrap();
        // Every decision is logged (the default, `info`) to a file, as in docs/benchmarks.md.
        let log = File::create(dir.path().join("cedargate.log")).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_cedargate"));
        command
            .args(["--config", config.to_str().unwrap(), "--log-format", "json"])
            .env_remove("CEDARGATE_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(workers) = workers {
            command.env("TOKIO_WORKER_THREADS", workers.to_string());
        }
        let child = command.spawn().unwrap();
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut cedargate = Self { grpc: unbound, child, dir };
        cedargate.grpc = cedargate.wait_for_serving();
        cedargate
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("cedargate.log")
    }

    /// The gRPC address from the `cedargate serving` log event, waiting at most 30 s.
    fn wait_for_serving(&mut self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            let serving = log
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .find(|event| event["message"] == "cedargate serving");
            if let Some(event) = serving {
                return event["grpc"].as_str().unwrap().parse().unwrap();
            }
            let exited = self.child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "cedargate did not start ({exited:?}):\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Cedargate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One configuration under test.
struct Proxy {
    name: &'static str,
    /// Whether it enforces the role rule (else it lets every request through).
    enforces: bool,
    envoy: Envoy,
    /// Envoy's process, for its CPU time.
    pid: u32,
}

/// The process whose command line names `envoy`'s bootstrap (the harness keeps the child private).
fn envoy_pid(envoy: &Envoy) -> u32 {
    let bootstrap = envoy.bootstrap_path().to_string_lossy().into_owned();
    let pids = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok());
    let mut found = pids.filter(|pid: &u32| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        String::from_utf8_lossy(&cmdline).contains(&bootstrap)
    });
    found.next().unwrap_or_else(|| panic!("no process runs {bootstrap}"))
}

/// User plus system CPU time of `pid` so far, in clock ticks (`/proc/<pid>/stat`; USER_HZ is 100
/// on Linux, so a tick is 10 ms: fine over runs of seconds).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After `(comm)`, which may hold spaces, field 3 (state) comes first: utime is field 14 and
    // stime field 15.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

const MICROS_PER_TICK: f64 = 10_000.0;

/// CPU time per request, in µs, of each process on the request path.
#[derive(Debug, Clone, Copy, Default)]
struct CpuPerRequest {
    envoy: f64,
    cedargate: f64,
    /// This test process: the upstream and the no-op ext_authz server (and an idle wait for
    /// `cedargate-load`).
    upstream: f64,
}

/// The machine's CPU time so far, in ticks: (all of it, the part stolen by the hypervisor).
/// Steal is time this VM wanted to run but its host ran something else: work outside the machine
/// that slows every process alike.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    // `cpu  user nice system idle iowait irq softirq steal guest guest_nice`; guest time is
    // already inside user and nice.
    let fields: Vec<u64> =
        stat.lines().next().unwrap().split_whitespace().skip(1).map(|field| field.parse().unwrap()).collect();
    (fields[..8].iter().sum(), fields[7])
}

/// CPU counters and Envoy's request count, read before and after a run.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    envoy: u64,
    cedargate: u64,
    upstream: u64,
    requests: u64,
    /// [`machine_ticks`].
    machine: (u64, u64),
}

impl Snapshot {
    async fn take(proxy: &Proxy, cedargate_pid: u32) -> Self {
        let requests = proxy.envoy.stat("http.ingress.downstream_rq_total").await.unwrap_or(0);
        Self {
            envoy: cpu_ticks(proxy.pid),
            cedargate: cpu_ticks(cedargate_pid),
            upstream: cpu_ticks(std::process::id()),
            requests,
            machine: machine_ticks(),
        }
    }

    /// How much of the machine's CPU time the hypervisor took between `self` and `later`, in %.
    fn steal_percent(&self, later: &Self) -> f64 {
        let total = later.machine.0.saturating_sub(self.machine.0).max(1) as f64;
        later.machine.1.saturating_sub(self.machine.1) as f64 * 100.0 / total
    }

    /// Per request between `self` and `later`, warm-up included on both sides of the division.
    fn per_request(&self, later: &Self) -> CpuPerRequest {
        let requests = later.requests.saturating_sub(self.requests).max(1) as f64;
        let micros =
            |before: u64, after: u64| after.saturating_sub(before) as f64 * MICROS_PER_TICK / requests;
        CpuPerRequest {
            envoy: micros(self.envoy, later.envoy),
            cedargate: micros(self.cedargate, later.cedargate),
            upstream: micros(self.upstream, later.upstream),
        }
    }
}

/// Status of `GET PATH` through `envoy` with `token` as the bearer, if any.
async fn status(envoy: &Envoy, token: Option<&str>) -> u16 {
    let mut request = reqwest::Client::builder().no_proxy().build().unwrap().get(envoy.url(PATH));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().status().as_u16()
}

/// Proves each configuration does what it claims before anything is measured: (b) and (c)
/// enforce the role rule, the others let everything through.
async fn check_enforcement(proxies: &[Proxy], user: &str, other: &str) {
    for proxy in proxies {
        let expected = if proxy.enforces { [200, 403, 401] } else { [200, 200, 200] };
        let seen = [
            status(&proxy.envoy, Some(user)).await,
            status(&proxy.envoy, Some(other)).await,
            status(&proxy.envoy, None).await,
        ];
        assert_eq!(seen, expected, "{}: roles [user], roles [other], no token", proxy.name);
    }
}

/// What one `cedargate-load` run reported, and what it cost each process.
#[derive(Debug, Clone, Copy, Default)]
struct Measured {
    throughput: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu: CpuPerRequest,
    /// The machine's CPU time stolen by the hypervisor during the run, in %.
    steal_percent: f64,
}

/// Runs `cedargate-load` in HTTP mode against `envoy` (blocking: call from `spawn_blocking`).
fn load(settings: &Settings, envoy_url: &str, token: &str) -> Measured {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cedargate-load"));
    command
        .args(["--http-url", envoy_url])
        .args(["--header", &format!("authorization: Bearer {token}")])
        .args(["--duration", &humantime::format_duration(settings.duration).to_string()])
        .args(["--warmup", &humantime::format_duration(settings.warmup).to_string()])
        .args(["--concurrency", &settings.concurrency.to_string()]);
    if let Some(rate) = settings.rate {
        command.args(["--rate", &rate.to_string()]);
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "cedargate-load failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    parse_report(&stdout)
}

/// Reads the `requests:`, `throughput:` and `latency ms:` lines; every request must have been
/// allowed (a denial or an error would mean the configuration is not the one meant).
fn parse_report(stdout: &str) -> Measured {
    let line = |prefix: &str| -> &str {
        let found = stdout.lines().find_map(|line| line.strip_prefix(prefix));
        found.unwrap_or_else(|| panic!("no `{prefix}` line in:\n{stdout}"))
    };
    let requests = line("requests: ");
    assert!(requests.contains("denied 0, errors 0"), "not every request was allowed: {requests}");
    let throughput = line("throughput: ").split_whitespace().next().unwrap().parse().unwrap();
    let latency: Vec<&str> = line("latency ms: ").split_whitespace().collect();
    let quantile = |name: &str| -> f64 {
        let at = latency.iter().position(|word| *word == name).unwrap();
        latency[at + 1].parse().unwrap()
    };
    Measured { throughput, p50_ms: quantile("p50"), p99_ms: quantile("p99"), ..Measured::default() }
}

/// One `cedargate-load` run against `proxy`, with the CPU each process spent on it.
async fn measure(settings: &Arc<Settings>, proxy: &Proxy, cedargate_pid: u32, token: &str) -> Measured {
    let before = Snapshot::take(proxy, cedargate_pid).await;
    let (settings, url, token) = (Arc::clone(settings), proxy.envoy.url(PATH), token.to_owned());
    let mut measured = tokio::task::spawn_blocking(move || load(&settings, &url, &token)).await.unwrap();
    let after = Snapshot::take(proxy, cedargate_pid).await;
    measured.cpu = before.per_request(&after);
    measured.steal_percent = before.steal_percent(&after);
    measured
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

/// Field by field, the median over the rounds of configuration `config`.
fn medians(rounds: &[Vec<Measured>], config: usize) -> Measured {
    let pick =
        |field: fn(&Measured) -> f64| median(rounds.iter().map(|round| field(&round[config])).collect());
    Measured {
        throughput: pick(|m| m.throughput),
        p50_ms: pick(|m| m.p50_ms),
        p99_ms: pick(|m| m.p99_ms),
        cpu: CpuPerRequest {
            envoy: pick(|m| m.cpu.envoy),
            cedargate: pick(|m| m.cpu.cedargate),
            upstream: pick(|m| m.cpu.upstream),
        },
        steal_percent: pick(|m| m.steal_percent),
    }
}

/// Prints every round, then the medians and the ratios as a markdown table.
fn print_results(names: &[&str], rounds: &[Vec<Measured>], settings: &Settings) {
    println!(
        "\n{}, {} round(s) of {:?} (warm-up {:?}):\n",
        settings.load(),
        rounds.len(),
        settings.duration,
        settings.warmup
    );
    for (index, round) in rounds.iter().enumerate() {
        let cells: Vec<String> = names
            .iter()
            .zip(round)
            .map(|(name, m)| {
                format!(
                    "{name} {:.0}/s p50 {:.3} p99 {:.3} steal {:.0}%",
                    m.throughput, m.p50_ms, m.p99_ms, m.steal_percent
                )
            })
            .collect();
        println!("round {}: {}", index + 1, cells.join(" | "));
    }
    let medians: Vec<Measured> = (0..names.len()).map(|config| medians(rounds, config)).collect();
    println!("\n| config | throughput | p50 | p99 | p50 / (a) | CPU µs per request: Envoy | cedargate | test process | steal |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, m) in names.iter().zip(&medians) {
        println!(
            "| {name} | {:.0} /s | {:.3} ms | {:.3} ms | {:.2} | {:.0} | {:.0} | {:.0} | {:.0}% |",
            m.throughput,
            m.p50_ms,
            m.p99_ms,
            m.p50_ms / medians[0].p50_ms,
            m.cpu.envoy,
            m.cpu.cedargate,
            m.cpu.upstream,
            m.steal_percent,
        );
    }
    let (a, b, c) = (medians[0], medians[1], medians[2]);
    println!(
        "\np50 ratios: (b)/(a) {:.2}, (c)/(a) {:.2}, (c)/(b) {:.2} (bar: (c)/(b) <= 1.5)",
        b.p50_ms / a.p50_ms,
        c.p50_ms / a.p50_ms,
        c.p50_ms / b.p50_ms
    );
    println!(
        "throughput ratios: (b)/(a) {:.2}, (c)/(a) {:.2}, (c)/(b) {:.2}",
        b.throughput / a.throughput,
        c.throughput / a.throughput,
        c.throughput / b.throughput
    );
    // Within a round the configurations run back to back, so a ratio taken per round cancels
    // slower stretches of the machine that a ratio of medians can straddle.
    let per_round = |over: usize, under: usize| {
        median(rounds.iter().map(|round| round[over].p50_ms / round[under].p50_ms).collect())
    };
    println!(
        "p50 ratios, median of per-round ratios: (b)/(a) {:.2}, (c)/(a) {:.2}, (c)/(b) {:.2}",
        per_round(1, 0),
        per_round(2, 0),
        per_round(2, 1)
    );
}

// Two test workers: the upstream answers on them while `cedargate-load` runs on the blocking pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run with --release -- --ignored --nocapture"]
async fn envoy_ext_authz_overhead() {
    let settings = Settings::from_env();
    let started = Instant::now();
    let (user, other) = (token(&["user"]), token(&["other"]));
    let jwks = jwks();
    let (upstream, upstream_task) = fast_upstream().await;
    let cedargate = Cedargate::start(&jwks, settings.server_workers);

    let (noop, noop_task) = noop_ext_authz().await;

    // One Envoy worker each: the proxies are identical but for their filters.
    let base = EnvoyConfig::new(upstream).with_concurrency(1);
    let jwt_rbac = Auth::JwtRbac {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks: jwks.to_string(),
        role: "user".into(),
        path_prefix: "/user/".into(),
    };
    // (a), (b) and (c) first: the ratios and the table are read by position.
    let configs = [
        ("(a)", false, base.clone()),
        ("(b)", true, base.clone().with_auth(jwt_rbac)),
        ("(c)", true, base.clone().with_auth(Auth::ExtAuthzGrpc { addr: cedargate.grpc, with_body: true })),
        ("(n) no-op ext_authz", false, base.with_auth(Auth::ExtAuthzGrpc { addr: noop, with_body: true })),
    ];
    let mut proxies = Vec::new();
    for (name, enforces, config) in configs {
        let envoy = Envoy::start(&config).await;
        let pid = envoy_pid(&envoy);
        proxies.push(Proxy { name, enforces, envoy, pid });
    }
    check_enforcement(&proxies, &user, &other).await;
    println!("set up in {:?}; {settings:?}", started.elapsed());

    let settings = Arc::new(settings);
    let cedargate_pid = cedargate.child.id();
    let mut rounds = Vec::new();
    for _ in 0..settings.rounds {
        let mut round = Vec::new();
        for proxy in &proxies {
            round.push(measure(&settings, proxy, cedargate_pid, &user).await);
        }
        rounds.push(round);
    }
    let names: Vec<&str> = proxies.iter().map(|proxy| proxy.name).collect();
    print_results(&names, &rounds, &settings);
    println!("\ncedargate log: {} bytes; whole run {:?}", log_size(&cedargate.log_path()), started.elapsed());

    drop(proxies);
    drop(cedargate);
    upstream_task.abort();
    noop_task.abort();
}

fn log_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|meta| meta.len()).unwrap_or(0)
}
