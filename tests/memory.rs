//! The token cache's bound through the real binary: waves of JWTs of distinct subjects, ten
//! times `token_cache.max_entries` of them in all, leave at most that many entries cached
//! (`cedargate_token_cache_entries`, read between waves), and the process's memory after the
//! later waves stays within a slack of where the first full wave left it.
//! `scripts/bench-memory.sh` measures the same at scale (docs/benchmarks.md).
//!
//! The tokens carry a large unmapped claim, so a cached identity costs tens of KiB and a cache
//! that kept what it should evict would show in RSS far above the allocator's noise. That
//! matters because every first sight of a token also leaves a prepared Cedar principal in the
//! policy module's per-identity cache, which is bounded by its own 65,536 entries, not by the
//! token cache: a few KiB per miss that this test must allow for.

// Test code: a failed set-up step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cedargate::api::proto::authorizer_client::AuthorizerClient;
use cedargate::api::proto::Outcome;
use cedargate::model::unix_now;
use common::served::Served;
use common::{check_request, route};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use tonic::transport::Channel;

const MAX_ENTRIES: usize = 100;
/// Distinct tokens per wave: twice the bound, so every wave overflows the cache.
const WAVE: usize = 2 * MAX_ENTRIES;
const WAVES: usize = 5;
/// Groups per token (an unmapped claim, so it stays in the cached identity's `extra`).
const GROUPS: usize = 400;
/// Checks in flight while a wave is sent.
const CONCURRENCY: usize = 4;
/// How far RSS after a later wave may be above RSS after the first. Measured (debug build,
/// 2 CPUs, mimalloc, one sitting): with eviction working, +5.5 MiB after the last wave, about
/// 6.5 KiB for each of the 800 later misses; with the principal cache cut to 50 entries it
/// was flat (+0.6 MiB), so that is the prepared principals (see above). RSS also fell 5 MiB
/// from start-up to the first wave (the allocator giving pages back). With eviction
/// disabled: +8.7 MiB after the second wave, +37.8 MiB after the last (about 47 KiB per
/// cached identity). So 16 MiB is about three times what a working cache grows by and well
/// under half of what a cache that keeps everything grows by.
const RSS_SLACK: u64 = 16 * MIB;
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "https://api.test";
const MIB: u64 = 1024 * 1024;

fn signing_key() -> EncodingKey {
    EncodingKey::from_ec_pem(include_bytes!("fixtures/keys/ec256.pem")).unwrap()
}

/// JWTs of the subjects `first..first + count`, minted on every core.
fn tokens(first: usize, count: usize) -> Vec<String> {
    let key = signing_key();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    let expires_at = unix_now() + 3600;
    let mint = |subject: usize| {
        let claims = json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": format!("user-{subject}"), "client_id": "cli",
            "scope": "profile:read", "roles": ["user"], "exp": expires_at, "jti": format!("jti-{subject}"),
            "groups": (0..GROUPS).map(|group| format!("group-{subject}-{group:03}")).collect::<Vec<_>>(),
        });
        format!("Bearer {}", encode(&header, &claims, &key).unwrap())
    };
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let chunk = count.div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (first..first + count)
            .step_by(chunk)
            .map(|start| {
                let end = (start + chunk).min(first + count);
                scope.spawn(move || (start..end).map(mint).collect::<Vec<_>>())
            })
            .collect();
        workers.into_iter().flat_map(|worker| worker.join().unwrap()).collect()
    })
}

struct Gate {
    served: Served,
    grpc: SocketAddr,
    http: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Gate {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut jwk = Jwk::from_encoding_key(&signing_key(), Algorithm::ES256).unwrap();
        jwk.common.key_id = Some("k1".into());
        let jwks = serde_json::to_string(&JwkSet { keys: vec![jwk] }).unwrap();
        let yaml = format!(
            "listen: {{ grpc: 127.0.0.1:0, http: 127.0.0.1:0 }}\n\
             credentials:\n  jwt:\n    - issuer: {ISSUER}\n      audiences: [{AUDIENCE}]\n      \
             algorithms: [ES256]\n      jwks: {jwks}\n  \
             token_cache: {{ max_ttl: 1h, max_entries: {MAX_ENTRIES} }}\n\
             limits: {{ max_authorization_bytes: 65536 }}\n\
             decision_log: {{ to: off }}\n"
        );
        let config = dir.path().join("cedargate.yaml");
        std::fs::write(&config, yaml).unwrap();
        let served = Served::start(&config);
        let mut log = Vec::new();
        let (grpc, http) = served.addresses(&mut log);
        Self { grpc, http, served, _dir: dir }
    }

    /// Every token checked once, `CONCURRENCY` at a time; each must be allowed.
    async fn send(&self, client: &AuthorizerClient<Channel>, tokens: Vec<String>) {
        let tokens = Arc::new(tokens);
        let next = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..CONCURRENCY)
            .map(|_| {
                let (mut client, tokens, next) = (client.clone(), Arc::clone(&tokens), Arc::clone(&next));
                tokio::spawn(async move {
                    while let Some(token) = tokens.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let answer = client.check(check_request(token, route("GET", "/user/profile"))).await;
                        let answer = answer.unwrap().into_inner();
                        assert_eq!(answer.outcome(), Outcome::Allowed, "{}", answer.reason);
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.unwrap();
        }
    }

    /// `cedargate_token_cache_entries` from `/metrics`.
    async fn entries(&self) -> i64 {
        common::metric_value(self.http, "cedargate_token_cache_entries").await as i64
    }

    /// RSS once the allocator has had a moment to give freed pages back.
    async fn settled_rss(&self) -> u64 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.served.rss_bytes()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_jwts_beyond_the_bound_leave_entries_and_memory_bounded() {
    let gate = Gate::start();
    let channel = Channel::from_shared(format!("http://{}", gate.grpc)).unwrap().connect().await.unwrap();
    let client = AuthorizerClient::new(channel);
    let idle = gate.settled_rss().await;
    let mut rss = Vec::new();
    for wave in 0..WAVES {
        let minted = std::time::Instant::now();
        let tokens = tokens(wave * WAVE, WAVE);
        let mint_time = minted.elapsed();
        let sent = std::time::Instant::now();
        gate.send(&client, tokens).await;
        let entries = gate.entries().await;
        let now = gate.settled_rss().await;
        println!(
            "wave {wave}: {WAVE} tokens minted in {mint_time:.1?}, sent in {:.1?}; entries {entries}, RSS {:.1} MiB (idle {:.1})",
            sent.elapsed(),
            now as f64 / MIB as f64,
            idle as f64 / MIB as f64
        );
        rss.push(now);
        // A full cache evicts before it stores, but concurrent first sights each see room for
        // one more: it can hold one entry per check in flight beyond the bound, until the next
        // store evicts.
        assert!(entries <= (MAX_ENTRIES + CONCURRENCY - 1) as i64, "wave {wave}: {entries} entries");
        // And the gauge is the count: a full cache drops a tenth (plus one) of its entries
        // before it stores, so an overflowed one never holds fewer than this. A gauge that
        // counted evictions as changes in size read far lower under concurrent stores.
        let least = (MAX_ENTRIES - MAX_ENTRIES / 10) as i64;
        assert!(
            entries >= least,
            "wave {wave}: the gauge says {entries} entries, at least {least} are cached"
        );
    }
    let first = rss[0];
    for (wave, after) in rss.iter().enumerate().skip(1) {
        assert!(
            after.saturating_sub(first) <= RSS_SLACK,
            "RSS after wave {wave} is {:.1} MiB above the first wave's ({:.1} MiB): {:?}",
            after.saturating_sub(first) as f64 / MIB as f64,
            first as f64 / MIB as f64,
            rss.iter().map(|rss| rss / MIB).collect::<Vec<_>>()
        );
    }
}
