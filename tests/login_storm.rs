//! A storm of concurrent logins against the real binary: memory stays bounded while it lasts
//! and goes back down after. Password hashing takes 19 MiB per check (argon2id, m=19456), so
//! this is where an unbounded server would grow.

// Test code: a failed set-up step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::served::Served;
use serde_json::json;

const MIB: u64 = 1024 * 1024;
const STORM: usize = 200;

/// RSS sampled every 10 ms until `done` finishes; the highest seen.
async fn peak_while<T>(served: &Served, done: impl std::future::Future<Output = T>) -> (T, u64) {
    tokio::pin!(done);
    let mut peak = served.rss_bytes();
    loop {
        tokio::select! {
            output = &mut done => return (output, peak.max(served.rss_bytes())),
            () = tokio::time::sleep(Duration::from_millis(10)) => peak = peak.max(served.rss_bytes()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_storm_keeps_memory_bounded_and_gives_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cedargate.yaml");
    // The demo's user, with limits high enough that every attempt is a real password check.
    let demo = cedargate::config::DEMO_YAML;
    let hash = demo.lines().find_map(|line| line.trim().strip_prefix("password_hash: ")).unwrap();
    std::fs::write(
        &config,
        format!(
            "listen:\n  grpc: 127.0.0.1:0\n  http: 127.0.0.1:0\nsessions:\n  users:\n    - username: alice\n      \
             password_hash: {hash}\n      roles: [user]\n  login_rate_limit:\n    per_username: {{ max_failures: 100000, window: 1m }}\n    \
             per_address: {{ max_failures: 100000, window: 1m }}\n"
        ),
    )
    .unwrap();
    let served = Served::start(&config);
    let mut log = Vec::new();
    let serving = served.wait_for(|event| event["message"] == "cedargate serving", &mut log);
    let url = format!("http://{}/auth/login", serving["http"].as_str().unwrap());
    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(0).build().unwrap();
    let login = |password: &'static str| {
        let request = client.post(&url).json(&json!({ "username": "alice", "password": password }));
        async move { request.send().await.map(|response| response.status().as_u16()) }
    };
    assert_eq!(login("password123").await.unwrap(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = served.rss_bytes();

    let storm =
        (0..STORM).map(|attempt| tokio::spawn(login(if attempt % 2 == 0 { "password123" } else { "wrong" })));
    let (statuses, peak) = peak_while(&served, futures_join(storm.collect())).await;
    let ok = statuses.iter().filter(|status| **status == 200).count();
    let refused = statuses.iter().filter(|status| **status == 401).count();
    assert_eq!((ok, refused), (STORM / 2, STORM / 2), "every attempt was checked: {statuses:?}");

    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = served.rss_bytes();
    println!(
        "login storm of {STORM}: idle {} MiB, peak {} MiB (+{}), 2 s after {} MiB (+{})",
        idle / MIB,
        peak / MIB,
        peak.saturating_sub(idle) / MIB,
        after / MIB,
        after.saturating_sub(idle) / MIB
    );
    assert!(peak.saturating_sub(idle) < 150 * MIB, "peak {} MiB above idle", peak.saturating_sub(idle) / MIB);
    assert!(
        after.saturating_sub(idle) < 40 * MIB,
        "{} MiB still held after",
        after.saturating_sub(idle) / MIB
    );
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<reqwest::Result<u16>>>) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(tasks.len());
    for task in tasks {
        statuses.push(task.await.unwrap().unwrap());
    }
    statuses
}
