//! Several cedargate replicas over one real Redis (`state.redis`): a session made on one works
//! on all, a logout or a reused refresh token ends it on all within a second, a refresh race
//! across replicas has one winner, a brute-force burst spread over them gets one budget, an
//! eviction reaches every replica, and a Redis that is killed, slow, restarted or holding
//! garbage is an outage (503) or a refusal for session credentials, never an allow, while
//! static tokens keep working and everything recovers by itself.

// Test code: a failed set-up step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cedargate::api::proto::admin_client::AdminClient;
use cedargate::api::proto::{self, Outcome};
use cedargate::config::{Config, DEMO_YAML};
use cedargate::model::SecretDigest;
use common::redis::RedisServer;
use common::{check, http_login, route, TestServer};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use redis::AsyncCommands;
use serde_json::Value;

const PREFIX: &str = "replicas-test:";
const USER: &str = "Bearer user-token-123";

/// The demo, with its sessions and limits in `redis`, and `extra` YAML appended (to the
/// `state.redis` mapping when indented by four).
fn config(redis: &RedisServer, extra: &str) -> Config {
    config_of(DEMO_YAML, redis, extra)
}

fn config_of(base: &str, redis: &RedisServer, extra: &str) -> Config {
    let text = format!(
        "{base}\nstate:\n  redis:\n    url: {url}\n    key_prefix: \"{PREFIX}\"\n    timeouts: {{ command: 300ms, connect: 300ms }}\n{extra}",
        url = redis.url()
    );
    Config::parse("replicas.yaml", &text).unwrap()
}

async fn replicas(redis: &RedisServer, count: usize, extra: &str) -> Vec<TestServer> {
    let mut servers = Vec::new();
    for _ in 0..count {
        servers.push(TestServer::start(config(redis, extra)).await);
    }
    servers
}

async fn login(server: &TestServer) -> Value {
    let response = http_login(server, "alice", "password123").await;
    assert_eq!(response.status(), 200, "login on {}", server.http);
    response.json().await.unwrap()
}

async fn refresh(server: &TestServer, refresh_token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(server.http_url("/auth/refresh"))
        .json(&serde_json::json!({ "refresh_token": refresh_token }))
        .send()
        .await
        .unwrap()
}

async fn logout(server: &TestServer, token: &str) -> Value {
    let response = reqwest::Client::new()
        .post(server.http_url("/auth/logout"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn profile(server: &TestServer, token: &str) -> proto::CheckResponse {
    let mut client = server.authorizer().await;
    check(&mut client, &format!("Bearer {token}"), route("GET", "/user/profile")).await
}

fn token(tokens: &Value, name: &str) -> String {
    tokens[name].as_str().unwrap().to_owned()
}

/// Polls `server` until `token` is refused as unknown, for at most a second from `since`.
async fn refused_within_a_second(server: &TestServer, token: &str, since: Instant) {
    loop {
        let answer = profile(server, token).await;
        if answer.outcome() == Outcome::Unauthenticated {
            assert_eq!(answer.reason, "session is unknown, expired or revoked");
            return;
        }
        assert_eq!(answer.outcome(), Outcome::Allowed, "{answer:?}");
        assert!(
            since.elapsed() < Duration::from_secs(1),
            "{} still allows a revoked session after 1 s",
            server.grpc
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_session_made_on_one_replica_works_on_every_one_and_a_logout_anywhere_ends_it_everywhere() {
    let redis = RedisServer::start().await;
    let servers = replicas(&redis, 3, "").await;
    let tokens = login(&servers[0]).await;
    let access = token(&tokens, "token");
    // Every replica reads it, so each holds its short local copy when the logout comes.
    for server in &servers {
        let answer = profile(server, &access).await;
        assert_eq!(answer.outcome(), Outcome::Allowed, "{answer:?}");
        assert_eq!(answer.auth_info.unwrap().subject, "alice");
    }
    let since = Instant::now();
    assert_eq!(logout(&servers[1], &access).await["revoked"], true);
    for server in [&servers[0], &servers[2], &servers[1]] {
        refused_within_a_second(server, &access, since).await;
    }
    // The refresh token went with it, on every replica.
    assert_eq!(refresh(&servers[2], &token(&tokens, "refresh_token")).await.status(), 401);
}

#[tokio::test]
async fn a_refresh_raced_across_replicas_has_one_winner_whose_tokens_work_everywhere() {
    let redis = RedisServer::start().await;
    let servers = Arc::new(replicas(&redis, 3, "").await);
    let tokens = login(&servers[0]).await;
    let old_refresh = token(&tokens, "refresh_token");
    let mut racers = Vec::new();
    for round in 0..9 {
        let (servers, old_refresh) = (Arc::clone(&servers), old_refresh.clone());
        racers.push(tokio::spawn(async move {
            let response = refresh(&servers[round % 3], &old_refresh).await;
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }));
    }
    let mut winners = Vec::new();
    for racer in racers {
        let (status, body) = racer.await.unwrap();
        match status {
            200 => winners.push(body),
            401 => assert_eq!(body["error"], "invalid_grant"),
            other => panic!("a racing refresh answered {other}: {body}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one rotation wins: {winners:?}");
    let winner = &winners[0];
    // The losers were within the reuse grace: the winner's session lives on, everywhere.
    for server in servers.iter() {
        assert_eq!(profile(server, &token(winner, "token")).await.outcome(), Outcome::Allowed);
        assert_eq!(profile(server, &token(&tokens, "token")).await.outcome(), Outcome::Unauthenticated);
    }
    assert_eq!(refresh(&servers[2], &token(winner, "refresh_token")).await.status(), 200);
}

#[tokio::test]
async fn a_refresh_token_reused_on_another_replica_revokes_the_session_on_every_one() {
    let redis = RedisServer::start().await;
    let servers = replicas(&redis, 3, "").await;
    let first = login(&servers[0]).await;
    let rotated = refresh(&servers[0], &token(&first, "refresh_token")).await;
    assert_eq!(rotated.status(), 200);
    let second: Value = rotated.json().await.unwrap();
    for server in &servers {
        assert_eq!(profile(server, &token(&second, "token")).await.outcome(), Outcome::Allowed);
    }
    // Past the reuse grace (2 s by default), the old refresh token is a thief's.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let since = Instant::now();
    assert_eq!(refresh(&servers[1], &token(&first, "refresh_token")).await.status(), 401);
    for server in &servers {
        refused_within_a_second(server, &token(&second, "token"), since).await;
    }
    assert_eq!(refresh(&servers[2], &token(&second, "refresh_token")).await.status(), 401);
}

#[tokio::test]
async fn a_brute_force_burst_spread_across_replicas_gets_one_budget() {
    let redis = RedisServer::start().await;
    let servers = Arc::new(replicas(&redis, 3, "").await);
    // The demo allows 5 failures per username per 15 minutes.
    let mut guesses = Vec::new();
    for guess in 0..30 {
        let servers = Arc::clone(&servers);
        guesses.push(tokio::spawn(async move {
            let response = http_login(&servers[guess % 3], "alice", &format!("guess-{guess}")).await;
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }));
    }
    let (mut checked, mut limited) = (0, 0);
    for guess in guesses {
        match guess.await.unwrap() {
            (401, body) if body["error"] == "invalid_credentials" => checked += 1,
            (429, body) if body["error"] == "rate_limited" => limited += 1,
            other => panic!("a guess answered {other:?}"),
        }
    }
    assert_eq!((checked, limited), (5, 25), "30 guesses over 3 replicas get 5 password checks in all");
    // The right password is refused too, on a replica that never saw a guess of it.
    let fourth = TestServer::start(config(&redis, "")).await;
    assert_eq!(http_login(&fourth, "alice", "password123").await.status(), 429);
}

#[tokio::test]
async fn an_eviction_on_one_replica_reaches_every_replica() {
    let redis = RedisServer::start().await;
    // A JWT issuer of the fixture key, inline, and the Admin API.
    let key = EncodingKey::from_ec_pem(include_bytes!("fixtures/keys/ec256.pem")).unwrap();
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let jwks = serde_json::to_string(&JwkSet { keys: vec![jwk] }).unwrap();
    let base = format!(
        "admin:\n  token_sha256: {}\ncredentials:\n  jwt:\n    - issuer: https://issuer.test\n      audiences: [https://api.test]\n      algorithms: [ES256]\n      jwks: {jwks}\n",
        SecretDigest::of(b"admin-secret").to_hex()
    );
    let servers = [
        TestServer::start(config_of(&base, &redis, "")).await,
        TestServer::start(config_of(&base, &redis, "")).await,
    ];
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    let claims = serde_json::json!({
        "iss": "https://issuer.test", "aud": "https://api.test", "sub": "carol", "roles": ["user"],
        "exp": cedargate::model::unix_now() + 600
    });
    let jwt = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    // Both listen on the events channel (joining it empties a replica's caches) before the
    // token is cached.
    let mut raw = redis.client().await;
    loop {
        let (_, listeners): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(format!("{PREFIX}events"))
            .query_async(&mut raw)
            .await
            .unwrap();
        if listeners >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for server in &servers {
        let mut client = server.authorizer().await;
        let answer = check(&mut client, &format!("Bearer {jwt}"), route("GET", "/user/profile")).await;
        assert_eq!(answer.outcome(), Outcome::Allowed, "{answer:?}");
    }
    let evict = |token: &str| {
        let mut request = tonic::Request::new(proto::EvictTokenRequest {
            selector: Some(proto::evict_token_request::Selector::Token(token.to_owned())),
        });
        request.metadata_mut().insert("authorization", "Bearer admin-secret".parse().unwrap());
        request
    };
    let mut first = AdminClient::new(servers[0].channel().await);
    assert_eq!(first.evict_token(evict(&jwt)).await.unwrap().into_inner().evicted, 1);
    // The other replica heard it: nothing is left there to evict.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut second = AdminClient::new(servers[1].channel().await);
    assert_eq!(second.evict_token(evict(&jwt)).await.unwrap().into_inner().evicted, 0);
}

#[tokio::test]
async fn a_redis_outage_is_a_503_for_sessions_only_and_passes_without_a_restart() {
    let mut redis = RedisServer::start().await;
    let servers = replicas(&redis, 2, "").await;
    let live = token(&login(&servers[0]).await, "token");
    let revoked = token(&login(&servers[0]).await, "token");
    assert_eq!(logout(&servers[1], &revoked).await["revoked"], true);
    for server in &servers {
        assert_eq!(profile(server, &live).await.outcome(), Outcome::Allowed);
    }
    // A load that runs through the kill and the restart: at no moment is the revoked session
    // allowed, nor the live one refused as if it were bad.
    let servers = Arc::new(servers);
    let loading = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let load = {
        let (servers, loading, live, revoked) =
            (Arc::clone(&servers), Arc::clone(&loading), live.clone(), revoked.clone());
        tokio::spawn(async move {
            let mut seen = std::collections::BTreeMap::<String, usize>::new();
            while loading.load(std::sync::atomic::Ordering::Relaxed) {
                for server in servers.iter() {
                    let (live, revoked) = (profile(server, &live).await, profile(server, &revoked).await);
                    assert!(matches!(live.outcome(), Outcome::Allowed | Outcome::Unavailable), "{live:?}");
                    assert!(
                        matches!(revoked.outcome(), Outcome::Unauthenticated | Outcome::Unavailable),
                        "{revoked:?}"
                    );
                    *seen.entry(format!("{:?}", live.outcome())).or_default() += 1;
                }
            }
            seen
        })
    };

    redis.kill();
    // Past the local copies' second, a session cannot be read: an outage, never a refusal
    // that would make a client throw its token away, and never an allow of the revoked one.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for server in servers.iter() {
        let started = Instant::now();
        let answer = profile(server, &live).await;
        assert_eq!(answer.outcome(), Outcome::Unavailable, "{answer:?}");
        assert!(answer.www_authenticate.is_empty(), "no challenge in an outage");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a request waited {:?} for Redis",
            started.elapsed()
        );
        assert_eq!(profile(server, &revoked).await.outcome(), Outcome::Unavailable);
        let mut client = server.authorizer().await;
        assert_eq!(check(&mut client, USER, route("GET", "/user/profile")).await.outcome(), Outcome::Allowed);
        let login = http_login(server, "alice", "password123").await;
        assert_eq!(login.status(), 503);
        assert_eq!(login.json::<Value>().await.unwrap()["error"], "temporarily_unavailable");
        assert_eq!(refresh(server, "refresh-anything").await.status(), 503);
    }

    redis.restart().await;
    // Back: the same tokens answer as before, on both replicas, without a restart of theirs.
    for server in servers.iter() {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let answer = profile(server, &live).await;
            if answer.outcome() == Outcome::Allowed {
                break;
            }
            assert_eq!(answer.outcome(), Outcome::Unavailable, "{answer:?}");
            assert!(Instant::now() < deadline, "{} did not recover", server.grpc);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(profile(server, &revoked).await.outcome(), Outcome::Unauthenticated);
    }
    login(&servers[1]).await;
    loading.store(false, std::sync::atomic::Ordering::Relaxed);
    let seen = load.await.unwrap();
    assert!(seen.contains_key("Allowed") && seen.contains_key("Unavailable"), "the load saw both: {seen:?}");
}

#[tokio::test]
async fn a_slow_redis_is_an_outage_within_the_command_timeout() {
    let redis = RedisServer::start().await;
    let servers = replicas(&redis, 1, "    local_cache: { ttl: 0s }\n").await;
    let live = token(&login(&servers[0]).await, "token");
    let mut sleeper = redis.client().await;
    let sleeping = tokio::spawn(async move {
        let _: redis::RedisResult<String> =
            redis::cmd("DEBUG").arg("SLEEP").arg(3).query_async(&mut sleeper).await;
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let answer = profile(&servers[0], &live).await;
    assert_eq!(answer.outcome(), Outcome::Unavailable, "{answer:?}");
    // 300 ms of command timeout; the bound is loose only for a loaded machine.
    assert!(started.elapsed() < Duration::from_secs(2), "a request waited {:?}", started.elapsed());
    let mut client = servers[0].authorizer().await;
    assert_eq!(check(&mut client, USER, route("GET", "/user/profile")).await.outcome(), Outcome::Allowed);
    sleeping.await.unwrap();
    // Once it answers again, so do session reads, by themselves.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = profile(&servers[0], &live).await;
        if answer.outcome() == Outcome::Allowed {
            break;
        }
        assert_eq!(answer.outcome(), Outcome::Unavailable, "{answer:?}");
        assert!(Instant::now() < deadline, "no recovery from a slow Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn what_redis_holds_that_cedargate_did_not_write_is_refused_never_allowed() {
    let redis = RedisServer::start().await;
    let servers = replicas(&redis, 1, "    local_cache: { ttl: 0s }\n").await;
    let server = &servers[0];
    let mut raw = redis.client().await;
    let access_key = |token: &str| format!("{PREFIX}access:{}", SecretDigest::of(token.as_bytes()).to_hex());

    // A session hash whose identity does not parse, or is of another version.
    for identity in ["not json", r#"{"v":2,"subject":"alice"}"#, r#"{"v":1,"subject":"alice","admin":true}"#]
    {
        let access = token(&login(server).await, "token");
        let _: () = raw.hset(access_key(&access), "identity", identity).await.unwrap();
        let answer = profile(server, &access).await;
        assert_eq!(
            (answer.outcome(), answer.reason.as_str()),
            (Outcome::Unauthenticated, "session record is unreadable")
        );
    }
    // The key holds another type altogether.
    let access = token(&login(server).await, "token");
    let _: () = raw.del(access_key(&access)).await.unwrap();
    let _: () = raw.set(access_key(&access), "garbage").await.unwrap();
    assert_eq!(profile(server, &access).await.outcome(), Outcome::Unauthenticated);
    // A login counter that is not a number: the attempt cannot be counted, so it is not made.
    let username_key = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"username:alice"));
    let _: () = raw.set(format!("{PREFIX}login:{username_key}:failures"), "many").await.unwrap();
    assert_eq!(http_login(server, "alice", "password123").await.status(), 503);
    let _: () = raw.del(format!("{PREFIX}login:{username_key}:failures")).await.unwrap();
    // Messages on the events channel that cedargate does not know change nothing.
    let live = token(&login(server).await, "token");
    for message in ["revoked nothex", "", "evict-fingerprint zz", "resync"] {
        let _: i64 = raw.publish(format!("{PREFIX}events"), message).await.unwrap();
    }
    assert_eq!(profile(server, &live).await.outcome(), Outcome::Allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_mid_rotation_loses_no_session() {
    let redis = RedisServer::start().await;
    let survivor = TestServer::start(config(&redis, "")).await;
    // The replica to kill is the real binary, killed with SIGKILL while rotations are in flight.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cedargate.yaml");
    let text = format!(
        "{}\nstate:\n  redis:\n    url: {}\n    key_prefix: \"{PREFIX}\"\n",
        DEMO_YAML.replace("127.0.0.1:50051", "127.0.0.1:0").replace("127.0.0.1:8080", "127.0.0.1:0"),
        redis.url()
    );
    std::fs::write(&path, text).unwrap();
    let mut victim = common::served::Served::start(&path);
    let (_, victim_http) = tokio::task::block_in_place(|| victim.addresses(&mut Vec::new()));

    let mut sessions = Vec::new();
    for _ in 0..12 {
        sessions.push(login(&survivor).await);
    }
    // Rotations start a few milliseconds apart; the kill comes once four were answered, so
    // some are done, some in flight and some never sent.
    let client = reqwest::Client::new();
    let answers = Arc::new(tokio::sync::Semaphore::new(0));
    let mut rotations = Vec::new();
    for tokens in &sessions {
        let (client, refresh_token, answered) =
            (client.clone(), token(tokens, "refresh_token"), Arc::clone(&answers));
        rotations.push(tokio::spawn(async move {
            let answer = client
                .post(format!("http://{victim_http}/auth/refresh"))
                .json(&serde_json::json!({ "refresh_token": refresh_token }))
                .send()
                .await
                .ok()?;
            (answer.status() == 200).then_some(())?;
            let rotated = answer.json::<Value>().await.ok();
            answered.add_permits(1);
            rotated
        }));
        tokio::time::sleep(Duration::from_millis(3)).await;
        if answers.available_permits() >= 4 {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), answers.acquire_many(4)).await;
    victim.child.kill().unwrap();
    let _ = victim.child.wait();

    let (mut answered, mut unanswered) = (0, 0);
    let mut rotations = rotations.into_iter();
    for tokens in &sessions {
        let rotated = match rotations.next() {
            Some(rotation) => rotation.await.unwrap(),
            None => None,
        };
        match rotated {
            // Rotated and answered: the new tokens are the session, on the survivor too.
            Some(rotated) => {
                answered += 1;
                assert_eq!(profile(&survivor, &token(&rotated, "token")).await.outcome(), Outcome::Allowed);
                assert_eq!(refresh(&survivor, &token(&rotated, "refresh_token")).await.status(), 200);
            }
            // Cut off: the rotation happened whole (the old refresh token is spent, within
            // its grace) or not at all (it still rotates).
            None => {
                unanswered += 1;
                let status = refresh(&survivor, &token(tokens, "refresh_token")).await.status();
                assert!(status == 200 || status == 401, "{status}");
            }
        }
    }
    eprintln!("{answered} rotations answered, {unanswered} cut off or never sent");
    assert!(answered >= 4, "the kill came after four answers");
    // Whatever the kill cut, every login in Redis names two live tokens: none half-written.
    let mut raw = redis.client().await;
    let families: Vec<String> = raw.keys(format!("{PREFIX}family:*")).await.unwrap();
    assert_eq!(families.len(), sessions.len(), "{families:?}");
    for family in families {
        let (access, refresh): (String, String) = redis::cmd("HMGET")
            .arg(&family)
            .arg("access")
            .arg("refresh")
            .query_async(&mut raw)
            .await
            .unwrap();
        let live: (bool, bool) = redis::pipe()
            .exists(format!("{PREFIX}access:{access}"))
            .exists(format!("{PREFIX}refresh:{refresh}"))
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(live, (true, true), "{family}");
    }
}

/// The demo with its state in the Redis at `url` (a proxy in front of the real one), every
/// session check going to Redis (no local copies).
fn config_through(url: &str) -> Config {
    let text = format!(
        "{DEMO_YAML}\nstate:\n  redis:\n    url: {url}\n    key_prefix: \"{PREFIX}\"\n    timeouts: {{ command: 300ms, connect: 300ms }}\n    local_cache: {{ ttl: 0s }}\n"
    );
    Config::parse("replicas.yaml", &text).unwrap()
}

/// How many listen on the events channel, asked of Redis itself (not through the proxy).
async fn events_listeners(redis: &RedisServer) -> i64 {
    let mut raw = redis.client().await;
    let (_, listeners): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(format!("{PREFIX}events"))
        .query_async(&mut raw)
        .await
        .unwrap();
    listeners
}

#[tokio::test]
async fn a_silently_dead_connection_is_replaced_without_a_restart() {
    let redis = RedisServer::start().await;
    let proxy = common::blackhole::Blackhole::start(redis.port).await;
    let server = TestServer::start(config_through(&proxy.redis_url())).await;
    let live = token(&login(&server).await, "token");
    assert_eq!(profile(&server, &live).await.outcome(), Outcome::Allowed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while events_listeners(&redis).await < 1 {
        assert!(Instant::now() < deadline, "the events listener never subscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Every connection open now goes silent without closing; Redis stays reachable at the
    // same address for new ones, as when a pod behind a Service IP is replaced.
    let accepted_before = proxy.accepted();
    proxy.swallow();
    let answer = profile(&server, &live).await;
    assert_eq!(answer.outcome(), Outcome::Unavailable, "{answer:?}");
    // The replica gives the dead connection up by itself and answers again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = profile(&server, &live).await;
        if answer.outcome() == Outcome::Allowed {
            break;
        }
        assert_eq!(answer.outcome(), Outcome::Unavailable, "{answer:?}");
        assert!(
            Instant::now() < deadline,
            "still unavailable 10 s after its connection went silent ({} connections made since)",
            proxy.accepted() - accepted_before
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(http_login(&server, "alice", "password123").await.status(), 200);
    // The events listener hears a silent connection through its pings and joins again: the
    // dead subscription still counts at Redis (the proxy holds it open), the new one with it.
    let deadline = Instant::now() + Duration::from_secs(15);
    while events_listeners(&redis).await < 2 {
        assert!(Instant::now() < deadline, "the events listener did not join again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
