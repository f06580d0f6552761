//! `cedargate-load`: drives `cedargate.v1.Authorizer/Check` over gRPC and reports throughput
//! and latency percentiles from an HDR histogram.
//!
//! Closed loop (default): `--concurrency` requests always in flight for `--duration`.
//! Open loop (`--rate`): requests start on a fixed schedule whatever the answers do, so a slow
//! answer cannot delay the next request and hide a stall (no coordinated omission). Latency is
//! measured from each request's actual start; how late starts were against the schedule (the
//! timer has millisecond resolution) is reported separately as the schedule lag.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cedargate::api::proto::authorizer_client::AuthorizerClient;
use cedargate::api::proto::{self, target::Kind};
use clap::Parser;
use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

/// Load generator for cedargate's gRPC Check.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Server address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Requests in flight (closed loop).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Fixed request rate per second (open loop); overrides --concurrency.
    #[arg(long)]
    rate: Option<u64>,
    /// How long to measure, e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured warm-up before, e.g. `2s`.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// HTTP/2 connections to spread requests over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// `Authorization` value sent with every request.
    #[arg(long, default_value = "Bearer user-token-123")]
    authorization: String,
    /// Route target, `METHOD /path`.
    #[arg(long, default_value = "GET /user/profile", conflicts_with = "tool")]
    route: String,
    /// Tool target instead of a route.
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.connections == 0 || args.concurrency == 0 {
        bail!("--connections and --concurrency must be at least 1");
    }
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
        authorization: args.authorization.clone(),
        target: Some(proto::Target { kind: Some(target) }),
        context: None,
    };
    let mut clients = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let channel: Channel = Endpoint::from_shared(args.addr.clone())?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("cannot connect to {}", args.addr))?;
        clients.push(AuthorizerClient::new(channel));
    }
    // A sanity request, so a wrong target or credential is visible before the run.
    let first = AuthorizerClient::clone(&clients[0])
        .check(request.clone())
        .await
        .context("first Check failed")?
        .into_inner();
    println!(
        "first answer: allowed={} status={} reason={:?}",
        first.allowed, first.http_status, first.reason
    );

    if !args.warmup.is_zero() {
        run(&args, &clients, &request, args.warmup).await?;
    }
    let (histogram, counters, elapsed) = run(&args, &clients, &request, args.duration).await?;
    report(&args, &histogram, &counters, elapsed);
    Ok(())
}

async fn run(
    args: &Args,
    clients: &[AuthorizerClient<Channel>],
    request: &proto::CheckRequest,
    duration: Duration,
) -> anyhow::Result<(Histogram<u64>, Arc<Counters>, Duration)> {
    let counters = Arc::new(Counters::default());
    let (sender, mut receiver) = mpsc::unbounded_channel::<u64>();
    let started = Instant::now();
    let deadline = started + duration;
    match args.rate {
        None => {
            for worker in 0..args.concurrency {
                let mut client = clients[worker % clients.len()].clone();
                let (request, counters, sender) = (request.clone(), Arc::clone(&counters), sender.clone());
                tokio::spawn(async move {
                    while Instant::now() < deadline {
                        let start = Instant::now();
                        let answer = client.check(request.clone()).await;
                        record(&counters, &sender, start, answer);
                    }
                });
            }
        }
        Some(rate) => {
            let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
            let clients = clients.to_vec();
            let (request, counters, sender) = (request.clone(), Arc::clone(&counters), sender.clone());
            tokio::spawn(async move {
                let mut scheduled = Instant::now();
                let mut index = 0usize;
                while scheduled < deadline {
                    tokio::time::sleep_until(scheduled.into()).await;
                    let mut client = clients[index % clients.len()].clone();
                    let (request, counters, sender) =
                        (request.clone(), Arc::clone(&counters), sender.clone());
                    let lag = u64::try_from(scheduled.elapsed().as_micros()).unwrap_or(u64::MAX);
                    counters.lag_micros_max.fetch_max(lag, Ordering::Relaxed);
                    tokio::spawn(async move {
                        let start = Instant::now();
                        let answer = client.check(request).await;
                        record(&counters, &sender, start, answer);
                    });
                    index += 1;
                    scheduled += interval;
                }
            });
        }
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

fn record(
    counters: &Counters,
    sender: &mpsc::UnboundedSender<u64>,
    start: Instant,
    answer: Result<tonic::Response<proto::CheckResponse>, tonic::Status>,
) {
    let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    match answer {
        Ok(response) if response.get_ref().allowed => counters.allowed.fetch_add(1, Ordering::Relaxed),
        Ok(_) => counters.denied.fetch_add(1, Ordering::Relaxed),
        Err(_) => counters.errors.fetch_add(1, Ordering::Relaxed),
    };
    let _ = sender.send(micros);
}

fn report(args: &Args, histogram: &Histogram<u64>, counters: &Counters, elapsed: Duration) {
    let total = histogram.len();
    let seconds = elapsed.as_secs_f64().max(f64::EPSILON);
    let mode = match args.rate {
        Some(rate) => format!("open loop at {rate}/s"),
        None => format!("closed loop, {} in flight", args.concurrency),
    };
    println!("mode: {mode}, {} connection(s), {:.1}s measured", args.connections, seconds);
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
