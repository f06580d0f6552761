//! Issue 14: what trimming a `tools/list` answer costs at the proxy. The real MCP SDK server
//! (`tests/mcp/list_server.mjs --bulk`) lists 10, 100 and 1,000 tools behind two Envoys that
//! both ask the same cedargate (the release binary, its own process) over ext_authz:
//!
//! - (u) unfiltered: ext_authz alone, every tool reaches the caller;
//! - (f) filtered: ext_proc too, as `examples/envoy/envoy.yaml` has it; the demo user keeps 5.
//!
//! `cedargate-load` in HTTP mode POSTs the JSON-RPC `tools/list` as the demo user, one request
//! in flight by default (latency is the point). Before measuring, each proxy is shown to answer
//! as it should (5 tools through (f), all of them through (u)). The configurations alternate
//! (u f u f ...) and the table shows the median of the rounds.
//!
//! Ignored, so the normal suite never runs it; it prints a markdown table and asserts nothing
//! about time:
//!
//! ```sh
//! cargo test --release --test mcp_list_bench -- --ignored --nocapture
//! ```
//!
//! Overrides: `CEDARGATE_BENCH_ROUNDS` (3), `CEDARGATE_BENCH_DURATION` (5s),
//! `CEDARGATE_BENCH_CONCURRENCY` (1).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::envoy::{Auth, Envoy, EnvoyConfig};
use common::served::Served;
use common::upstream::McpServer;
use serde_json::Value;

const LIST: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
/// The list server's own tools besides the bulk ones.
const FIXED_TOOLS: usize = 7;

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

#[derive(Debug, Clone, Copy, Default)]
struct Measured {
    throughput: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn load(url: &str, duration: Duration, concurrency: usize) -> Measured {
    let output = Command::new(env!("CARGO_BIN_EXE_cedargate-load"))
        .args(["--http-url", url, "--method", "POST", "--body", LIST])
        .args(["--header", "authorization: Bearer user-token-123"])
        .args(["--header", "content-type: application/json"])
        .args(["--header", "accept: application/json, text/event-stream"])
        .args(["--duration", &humantime::format_duration(duration).to_string()])
        .args(["--warmup", "1s", "--concurrency", &concurrency.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "cedargate-load failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = |prefix: &str| -> &str {
        stdout
            .lines()
            .find_map(|line| line.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` in:\n{stdout}"))
    };
    assert!(line("requests: ").contains("denied 0, errors 0"), "not every request was answered: {stdout}");
    let latency: Vec<&str> = line("latency ms: ").split_whitespace().collect();
    let quantile = |name: &str| -> f64 {
        latency[latency.iter().position(|word| *word == name).unwrap() + 1].parse().unwrap()
    };
    Measured {
        throughput: line("throughput: ").split_whitespace().next().unwrap().parse().unwrap(),
        p50_ms: quantile("p50"),
        p99_ms: quantile("p99"),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn tools_seen(envoy: &Envoy) -> usize {
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(envoy.url("/mcp"))
        .header("authorization", "Bearer user-token-123")
        .header("accept", "application/json, text/event-stream")
        .json(&serde_json::from_str::<Value>(LIST).unwrap())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let answer: Value =
        serde_json::from_str(&text).unwrap_or_else(|error| panic!("{status} {error}: {text:.300}"));
    answer["result"]["tools"].as_array().unwrap_or_else(|| panic!("no tools: {answer}")).len()
}

#[tokio::test]
#[ignore = "a benchmark: run it by name with --ignored, in release mode"]
async fn filtered_tools_list_latency() {
    let rounds: usize = setting("CEDARGATE_BENCH_ROUNDS", 3);
    let duration = Duration::from_secs(setting("CEDARGATE_BENCH_DURATION", 5));
    let concurrency: usize = setting("CEDARGATE_BENCH_CONCURRENCY", 1);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cedargate.yaml");
    // The demo on free ports, the credential stripped on its way upstream.
    let text = cedargate::config::DEMO_YAML.replace(
        "  grpc: 127.0.0.1:50051\n  http: 127.0.0.1:8080",
        "  grpc: 127.0.0.1:0\n  http: 127.0.0.1:0",
    );
    assert!(text.contains("grpc: 127.0.0.1:0"), "the demo's listen block moved");
    std::fs::write(&config, format!("{text}\ngateway:\n  strip_authorization: true\n")).unwrap();
    let served = Served::start(&config);
    let mut seen = Vec::new();
    let (grpc, _) = served.addresses(&mut seen);

    println!("\n| tools listed | kept for the user | (u) p50 ms | (u) p99 ms | (f) p50 ms | (f) p99 ms | added p50 ms | (u) req/s | (f) req/s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for total in [10usize, 100, 1000] {
        let bulk = (total - FIXED_TOOLS).to_string();
        let mcp = McpServer::start_lists(&["--bulk", &bulk]);
        let auth = Auth::ExtAuthzGrpc { addr: grpc, with_body: true };
        let unfiltered =
            Envoy::start(&EnvoyConfig::new(mcp.addr).with_auth(auth.clone()).with_mcp(mcp.addr)).await;
        let filtered =
            Envoy::start(&EnvoyConfig::new(mcp.addr).with_auth(auth).with_mcp(mcp.addr).with_ext_proc(grpc))
                .await;
        assert_eq!(tools_seen(&unfiltered).await, total);
        let kept = tools_seen(&filtered).await;
        assert_eq!(kept, 5);
        let (mut u, mut f) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            for (envoy, into) in [(&unfiltered, &mut u), (&filtered, &mut f)] {
                let url = envoy.url("/mcp");
                into.push(
                    tokio::task::spawn_blocking(move || load(&url, duration, concurrency)).await.unwrap(),
                );
            }
        }
        let m = |runs: &[Measured], pick: fn(&Measured) -> f64| median(runs.iter().map(pick).collect());
        let (u50, f50) = (m(&u, |r| r.p50_ms), m(&f, |r| r.p50_ms));
        println!(
            "| {total} | {kept} | {u50:.3} | {:.3} | {f50:.3} | {:.3} | {:.3} | {:.0} | {:.0} |",
            m(&u, |r| r.p99_ms),
            m(&f, |r| r.p99_ms),
            f50 - u50,
            m(&u, |r| r.throughput),
            m(&f, |r| r.throughput),
        );
        drop((unfiltered, filtered, mcp));
    }
}
