//! `cedargate-load`: drives `cedargate.v1.Authorizer/Check` over gRPC, or any HTTP endpoint
//! (`--http-url`, e.g. a proxy in front of cedargate), and reports throughput and latency
//! percentiles from an HDR histogram.
//!
//! Closed loop (default): `--concurrency` requests always in flight for `--duration`.
//! Open loop (`--rate`): requests start on a fixed schedule whatever the answers do, so a slow
//! answer cannot delay the next request and hide a stall (no coordinated omission). Latency is
//! measured from each request's actual start; how late starts were against the schedule (the
//! timer has millisecond resolution) is reported separately as the schedule lag.
//!
//! gRPC mode counts `allowed` answers as allowed and the rest as denied; HTTP mode counts a 2xx
//! as allowed and any other status as denied. Transport failures are errors in both.
//!
//! Credentials (gRPC mode): each `--authorization` value is one source, and the ES256 JWTs of
//! `--jwt-subjects` distinct subjects (minted before the run) are one more; requests take the
//! sources in turn, and the JWT source hands out its tokens round-robin, so the first pass over
//! them is that many first sights of a token (token cache misses) at the server.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cedargate::api::proto::authorizer_client::AuthorizerClient;
use cedargate::api::proto::{self, target::Kind};
use clap::Parser;
use hdrhistogram::Histogram;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

/// Load generator for cedargate's gRPC Check, or for an HTTP endpoint.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Server address (gRPC mode); `unix:/path` for a Unix domain socket (`listen.grpc_unix`).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// HTTP mode: send `--method` requests to this URL instead of gRPC Checks, over HTTP/1.1
    /// keep-alive connections (as many as requests in flight).
    #[arg(long, conflicts_with_all = ["tool", "route", "authorization", "connections", "jwt_key"])]
    http_url: Option<String>,
    /// HTTP mode: the request method.
    #[arg(long, default_value = "GET", requires = "http_url")]
    method: String,
    /// HTTP mode: a request header, `name: value`; repeatable.
    #[arg(long = "header", value_name = "NAME: VALUE", requires = "http_url")]
    headers: Vec<String>,
    /// HTTP mode: the request body (for example a JSON-RPC `tools/list`), sent with each request.
    #[arg(long, requires = "http_url")]
    body: Option<String>,
    /// Requests in flight (closed loop).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Fixed request rate per second (open loop); overrides --concurrency.
    #[arg(long)]
    rate: Option<u64>,
    /// How long to measure, e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Measure exactly this many requests instead of a `--duration`.
    #[arg(long, conflicts_with = "duration")]
    requests: Option<u64>,
    /// Unmeasured warm-up before, e.g. `2s`.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// HTTP/2 connections to spread requests over (gRPC mode).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// `Authorization` value (gRPC mode); repeatable, for a mixed load: requests take the values
    /// (and the JWTs, as one more source) in turn. Default `Bearer user-token-123` when neither
    /// this nor `--jwt-key` is given.
    #[arg(long, value_name = "VALUE")]
    authorization: Vec<String>,
    /// Also send ES256 JWTs signed with this private key (PKCS#8 PEM), one per subject of
    /// `--jwt-subjects`, minted before the run (gRPC mode). Needs `--jwt-issuer` and
    /// `--jwt-audience`.
    #[arg(long, value_name = "PEM_FILE")]
    jwt_key: Option<PathBuf>,
    /// The JWTs' `iss`.
    #[arg(long, value_name = "ISSUER", requires = "jwt_key")]
    jwt_issuer: Option<String>,
    /// The JWTs' `aud`.
    #[arg(long, value_name = "AUDIENCE", requires = "jwt_key")]
    jwt_audience: Option<String>,
    /// How many distinct subjects (`sub` = `load-user-<n>`), one token each, sent round-robin.
    #[arg(long, default_value_t = 1, requires = "jwt_key")]
    jwt_subjects: usize,
    /// The JWTs' `kid` header.
    #[arg(long, default_value = "k1", requires = "jwt_key")]
    jwt_kid: String,
    /// The JWTs' lifetime from minting (`exp`), e.g. `1h`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration, requires = "jwt_key")]
    jwt_ttl: Duration,
    /// The JWTs' `roles` claim; repeatable. Default `user`.
    #[arg(long, value_name = "ROLE", requires = "jwt_key")]
    jwt_role: Vec<String>,
    /// Print the JWKS of `--jwt-key` (its public key, with `--jwt-kid`) for a server's inline
    /// `jwks`, and exit.
    #[arg(long, requires = "jwt_key")]
    jwt_print_jwks: bool,
    /// Route target, `METHOD /path` (gRPC mode).
    #[arg(long, default_value = "GET /user/profile", conflicts_with = "tool")]
    route: String,
    /// Tool target instead of a route (gRPC mode).
    #[arg(long)]
    tool: Option<String>,
}

/// What one run counted.
#[derive(Debug, Default)]
struct Counters {
    allowed: AtomicU64,
    denied: AtomicU64,
    errors: AtomicU64,
    /// Open loop: the latest a request started after its scheduled time.
    lag_micros_max: AtomicU64,
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Allowed,
    Denied,
    Error,
}

/// The request under test and the connection(s) it goes over; cheap to clone (clones share the
/// connections).
#[derive(Debug, Clone)]
enum Probe {
    /// One gRPC client per HTTP/2 connection; every client takes its credentials from the same
    /// rotation.
    Grpc { client: AuthorizerClient<Channel>, request: proto::CheckRequest, credentials: Arc<Credentials> },
    /// One client whose pool holds the keep-alive connections.
    Http {
        client: reqwest::Client,
        method: reqwest::Method,
        url: String,
        headers: HeaderMap,
        body: Option<String>,
    },
}

/// What came back for one request.
#[derive(Debug)]
enum Answer {
    Grpc { allowed: bool, http_status: u32, reason: String },
    Http { status: reqwest::StatusCode, body_bytes: usize },
}

impl Answer {
    fn outcome(&self) -> Outcome {
        let allowed = match self {
            Self::Grpc { allowed, .. } => *allowed,
            Self::Http { status, .. } => status.is_success(),
        };
        if allowed {
            Outcome::Allowed
        } else {
            Outcome::Denied
        }
    }

    /// One line, for the sanity request.
    fn summary(&self) -> String {
        match self {
            Self::Grpc { allowed, http_status, reason } => {
                format!("allowed={allowed} status={http_status} reason={reason:?}")
            }
            Self::Http { status, body_bytes } => {
                format!("status={} body_bytes={body_bytes}", status.as_u16())
            }
        }
    }
}

/// The `Authorization` values requests take in turn.
#[derive(Debug)]
struct Credentials {
    /// One source each.
    fixed: Vec<String>,
    /// One more source, itself round-robin (`Bearer <jwt>` values).
    jwts: Vec<String>,
    /// Requests so far, for the turn of the sources.
    turn: AtomicUsize,
    /// JWTs handed out so far.
    next_jwt: AtomicUsize,
}

impl Credentials {
    /// The value for the next request.
    fn next(&self) -> &str {
        let sources = self.fixed.len() + usize::from(!self.jwts.is_empty());
        let turn = self.turn.fetch_add(1, Ordering::Relaxed) % sources.max(1);
        if let Some(value) = self.fixed.get(turn) {
            return value;
        }
        let jwt = self.next_jwt.fetch_add(1, Ordering::Relaxed) % self.jwts.len().max(1);
        self.jwts.get(jwt).map_or("", String::as_str)
    }

    /// How many distinct values there are.
    fn len(&self) -> usize {
        self.fixed.len() + self.jwts.len()
    }
}

/// The ES256 JWTs of `args`, minted on every core; none without `--jwt-key`.
fn mint_jwts(args: &Args) -> anyhow::Result<Vec<String>> {
    let Some(path) = &args.jwt_key else {
        return Ok(Vec::new());
    };
    let key = signing_key(path)?;
    let (Some(issuer), Some(audience)) = (&args.jwt_issuer, &args.jwt_audience) else {
        bail!("--jwt-key needs --jwt-issuer and --jwt-audience");
    };
    if args.jwt_subjects == 0 {
        bail!("--jwt-subjects must be at least 1");
    }
    let roles = if args.jwt_role.is_empty() { vec!["user".to_owned()] } else { args.jwt_role.clone() };
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(args.jwt_kid.clone());
    let issued_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let expires_at = issued_at + args.jwt_ttl.as_secs();
    let mint = |subject: usize| -> anyhow::Result<String> {
        let claims = serde_json::json!({
            "iss": issuer, "aud": audience, "sub": format!("load-user-{subject}"),
            "client_id": "cedargate-load", "scope": "profile:read", "roles": roles,
            "iat": issued_at, "exp": expires_at, "jti": format!("load-{issued_at}-{subject}"),
        });
        let token = jsonwebtoken::encode(&header, &claims, &key).context("cannot sign a JWT")?;
        Ok(format!("Bearer {token}"))
    };
    let started = Instant::now();
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let chunk = args.jwt_subjects.div_ceil(threads);
    let jwts = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..args.jwt_subjects)
            .step_by(chunk)
            .map(|first| {
                let last = (first + chunk).min(args.jwt_subjects);
                scope.spawn(move || (first..last).map(mint).collect::<anyhow::Result<Vec<_>>>())
            })
            .collect();
        let mut jwts = Vec::with_capacity(args.jwt_subjects);
        for worker in workers {
            match worker.join() {
                Ok(minted) => jwts.extend(minted?),
                Err(_) => bail!("a minting thread panicked"),
            }
        }
        Ok(jwts)
    })?;
    println!(
        "minted {} ES256 JWTs of distinct subjects in {:.1}s",
        jwts.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(jwts)
}

fn signing_key(path: &std::path::Path) -> anyhow::Result<EncodingKey> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    EncodingKey::from_ec_pem(&pem)
        .with_context(|| format!("{} is not an EC private key (PEM)", path.display()))
}

/// `{"keys":[...]}` with the public key of `--jwt-key`.
fn jwks(args: &Args) -> anyhow::Result<String> {
    let path = args.jwt_key.as_ref().context("--jwt-print-jwks needs --jwt-key")?;
    let mut jwk = Jwk::from_encoding_key(&signing_key(path)?, Algorithm::ES256)?;
    jwk.common.key_id = Some(args.jwt_kid.clone());
    Ok(serde_json::to_string(&JwkSet { keys: vec![jwk] })?)
}

impl Probe {
    /// Sends the request once. Fails on a transport error or a gRPC status.
    async fn send(&mut self) -> anyhow::Result<Answer> {
        match self {
            Self::Grpc { client, request, credentials } => {
                let mut request = request.clone();
                credentials.next().clone_into(&mut request.authorization);
                let response = client.check(request).await?.into_inner();
                let proto::CheckResponse { allowed, http_status, reason, .. } = response;
                Ok(Answer::Grpc { allowed, http_status, reason })
            }
            Self::Http { client, method, url, headers, body } => {
                let mut request = client.request(method.clone(), url.as_str()).headers(headers.clone());
                if let Some(body) = body {
                    request = request.body(body.clone());
                }
                let response = request.send().await?;
                let status = response.status();
                // Read the whole body, so the connection goes back to the pool for the next request.
                let body_bytes = response.bytes().await?.len();
                Ok(Answer::Http { status, body_bytes })
            }
        }
    }

    /// Sends the request once, for the measurement.
    async fn outcome(&mut self) -> Outcome {
        match self.send().await {
            Ok(answer) => answer.outcome(),
            Err(_) => Outcome::Error,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.jwt_print_jwks {
        println!("{}", jwks(&args)?);
        return Ok(());
    }
    if args.connections == 0 || args.concurrency == 0 {
        bail!("--connections and --concurrency must be at least 1");
    }
    let probes = match &args.http_url {
        Some(url) => vec![http_probe(&args, url)?],
        None => grpc_probes(&args).await?,
    };
    // A sanity request, so a wrong target or credential is visible before the run.
    let first = probes[0].clone().send().await.context("first request failed")?;
    println!("first answer: {}", first.summary());

    if !args.warmup.is_zero() {
        run(&args, &probes, Stop::After(args.warmup)).await?;
    }
    let stop = args.requests.map_or(Stop::After(args.duration), Stop::Count);
    let (histogram, counters, elapsed) = run(&args, &probes, stop).await?;
    report(&args, &histogram, &counters, elapsed);
    Ok(())
}

/// One probe per HTTP/2 connection.
async fn grpc_probes(args: &Args) -> anyhow::Result<Vec<Probe>> {
    let target = match &args.tool {
        Some(name) => Kind::Tool(proto::Tool { name: name.clone(), ..Default::default() }),
        None => {
            let (method, path) = args.route.split_once(' ').context("--route must be `METHOD /path`")?;
            Kind::Route(proto::Route {
                method: method.to_owned(),
                path: path.to_owned(),
                ..Default::default()
            })
        }
    };
    let request = proto::CheckRequest {
        authorization: String::new(),
        target: Some(proto::Target { kind: Some(target) }),
        ..Default::default()
    };
    let jwts = mint_jwts(args)?;
    let fixed = if args.authorization.is_empty() && jwts.is_empty() {
        vec!["Bearer user-token-123".to_owned()]
    } else {
        args.authorization.clone()
    };
    let credentials =
        Arc::new(Credentials { fixed, jwts, turn: AtomicUsize::new(0), next_jwt: AtomicUsize::new(0) });
    println!("credentials: {} distinct value(s)", credentials.len());
    let mut probes = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let channel: Channel = match args.addr.strip_prefix("unix:") {
            Some(path) => Endpoint::from_static("http://cedargate")
                .connect_with_connector(UnixConnector(path.into()))
                .await
                .with_context(|| format!("cannot connect to {path}"))?,
            None => Endpoint::from_shared(args.addr.clone())?
                .tcp_nodelay(true)
                .connect()
                .await
                .with_context(|| format!("cannot connect to {}", args.addr))?,
        };
        probes.push(Probe::Grpc {
            client: AuthorizerClient::new(channel),
            request: request.clone(),
            credentials: Arc::clone(&credentials),
        });
    }
    Ok(probes)
}

/// Connects to a Unix domain socket, for tonic.
#[derive(Debug, Clone)]
struct UnixConnector(std::path::PathBuf);

impl tonic::codegen::Service<tonic::codegen::http::Uri> for UnixConnector {
    type Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::codegen::http::Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move { tokio::net::UnixStream::connect(path).await.map(hyper_util::rt::TokioIo::new) })
    }
}

/// One probe whose client keeps a keep-alive connection per request in flight.
fn http_probe(args: &Args, url: &str) -> anyhow::Result<Probe> {
    let method = reqwest::Method::from_bytes(args.method.as_bytes())
        .with_context(|| format!("bad --method `{}`", args.method))?;
    let mut headers = HeaderMap::new();
    for header in &args.headers {
        let (name, value) = parse_header(header)?;
        headers.append(name, value);
    }
    let mut builder = reqwest::Client::builder()
        // Loopback targets: never through a proxy from the environment.
        .no_proxy()
        .http1_only()
        .tcp_nodelay(true);
    if args.rate.is_none() {
        // Closed loop: exactly one connection per worker stays open; open loop keeps them all.
        builder = builder.pool_max_idle_per_host(args.concurrency);
    }
    let client = builder.build().context("cannot build the HTTP client")?;
    let body = args.body.clone();
    Ok(Probe::Http { client, method, url: url.to_owned(), headers, body })
}

/// `name: value`, as curl's `-H`.
fn parse_header(header: &str) -> anyhow::Result<(HeaderName, HeaderValue)> {
    let (name, value) = header.split_once(':').with_context(|| format!("--header `{header}` has no `:`"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .with_context(|| format!("bad header name in `{header}`"))?;
    let value =
        HeaderValue::from_str(value.trim()).with_context(|| format!("bad header value for `{name}`"))?;
    Ok((name, value))
}

/// When a run ends.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// When this long has passed.
    After(Duration),
    /// When this many requests have been sent.
    Count(u64),
}

/// A run's end, shared by its workers.
#[derive(Debug)]
enum Until {
    Deadline(Instant),
    /// Requests still to send.
    Left(AtomicU64),
}

impl Until {
    /// Whether to send another request; counts it.
    fn another(&self) -> bool {
        match self {
            Self::Deadline(deadline) => Instant::now() < *deadline,
            Self::Left(left) => {
                left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1)).is_ok()
            }
        }
    }
}

async fn run(
    args: &Args,
    probes: &[Probe],
    stop: Stop,
) -> anyhow::Result<(Histogram<u64>, Arc<Counters>, Duration)> {
    let counters = Arc::new(Counters::default());
    let (sender, mut receiver) = mpsc::unbounded_channel::<u64>();
    let started = Instant::now();
    let until = Arc::new(match stop {
        Stop::After(duration) => Until::Deadline(started + duration),
        Stop::Count(requests) => Until::Left(AtomicU64::new(requests)),
    });
    match args.rate {
        None => closed_loop(args.concurrency, probes, &until, &counters, &sender),
        Some(rate) => open_loop(rate, probes, &until, &counters, &sender),
    }
    drop(sender);
    // Microseconds, 1 µs to 60 s, 3 significant figures.
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    while let Some(micros) = receiver.recv().await {
        histogram.saturating_record(micros.max(1));
    }
    // Until the last answer arrived: in-flight requests at the deadline count too.
    Ok((histogram, counters, started.elapsed()))
}

/// `concurrency` workers, each sending its next request as soon as the last one answered.
fn closed_loop(
    concurrency: usize,
    probes: &[Probe],
    until: &Arc<Until>,
    counters: &Arc<Counters>,
    sender: &mpsc::UnboundedSender<u64>,
) {
    for worker in 0..concurrency {
        let mut probe = probes[worker % probes.len()].clone();
        let (until, counters, sender) = (Arc::clone(until), Arc::clone(counters), sender.clone());
        tokio::spawn(async move {
            while until.another() {
                let start = Instant::now();
                let outcome = probe.outcome().await;
                record(&counters, &sender, start, outcome);
            }
        });
    }
}

/// A request every `1 / rate` seconds, each on its own task.
fn open_loop(
    rate: u64,
    probes: &[Probe],
    until: &Arc<Until>,
    counters: &Arc<Counters>,
    sender: &mpsc::UnboundedSender<u64>,
) {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let probes = probes.to_vec();
    let (until, counters, sender) = (Arc::clone(until), Arc::clone(counters), sender.clone());
    tokio::spawn(async move {
        let mut scheduled = Instant::now();
        let mut index = 0usize;
        loop {
            // A deadline is against the schedule, not against how late this task woke up.
            let another = match until.as_ref() {
                Until::Deadline(deadline) => scheduled < *deadline,
                Until::Left(_) => until.another(),
            };
            if !another {
                break;
            }
            tokio::time::sleep_until(scheduled.into()).await;
            let mut probe = probes[index % probes.len()].clone();
            let (counters, sender) = (Arc::clone(&counters), sender.clone());
            let lag = u64::try_from(scheduled.elapsed().as_micros()).unwrap_or(u64::MAX);
            counters.lag_micros_max.fetch_max(lag, Ordering::Relaxed);
            tokio::spawn(async move {
                let start = Instant::now();
                let outcome = probe.outcome().await;
                record(&counters, &sender, start, outcome);
            });
            index += 1;
            scheduled += interval;
        }
    });
}

fn record(counters: &Counters, sender: &mpsc::UnboundedSender<u64>, start: Instant, outcome: Outcome) {
    let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    let counter = match outcome {
        Outcome::Allowed => &counters.allowed,
        Outcome::Denied => &counters.denied,
        Outcome::Error => &counters.errors,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let _ = sender.send(micros);
}

fn report(args: &Args, histogram: &Histogram<u64>, counters: &Counters, elapsed: Duration) {
    let total = histogram.len();
    let seconds = elapsed.as_secs_f64().max(f64::EPSILON);
    let mode = match args.rate {
        Some(rate) => format!("open loop at {rate}/s"),
        None => format!("closed loop, {} in flight", args.concurrency),
    };
    let transport = match &args.http_url {
        Some(url) => format!("HTTP/1.1 keep-alive to {url}"),
        None => format!("{} connection(s)", args.connections),
    };
    println!("mode: {mode}, {transport}, {seconds:.1}s measured");
    println!(
        "requests: {total} (allowed {}, denied {}, errors {})",
        counters.allowed.load(Ordering::Relaxed),
        counters.denied.load(Ordering::Relaxed),
        counters.errors.load(Ordering::Relaxed),
    );
    println!("throughput: {:.0} req/s", total as f64 / seconds);
    if args.rate.is_some() {
        let lag = counters.lag_micros_max.load(Ordering::Relaxed);
        println!("schedule lag: max {:.3} ms", lag as f64 / 1000.0);
    }
    let ms = |micros: u64| micros as f64 / 1000.0;
    println!(
        "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        ms(histogram.value_at_quantile(0.50)),
        ms(histogram.value_at_quantile(0.90)),
        ms(histogram.value_at_quantile(0.99)),
        ms(histogram.value_at_quantile(0.999)),
        ms(histogram.max()),
    );
}
