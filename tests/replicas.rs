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

/// Timeouts generous enough for a loaded 2-core machine (a replica's first command connects,
/// finds its script unknown and loads it); the tests that measure a timeout set their own.
const TIMEOUTS: &str = "{ command: 1s, connect: 1s }";

fn config_of(base: &str, redis: &RedisServer, extra: &str) -> Config {
    config_with(base, redis, TIMEOUTS, extra)
}

fn config_with(base: &str, redis: &RedisServer, timeouts: &str, extra: &str) -> Config {
    let text = format!(
        "{base}\nstate:\n  redis:\n    url: {url}\n    key_prefix: \"{PREFIX}\"\n    timeouts: {timeouts}\n{extra}",
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

/// Polls `server` until `token` is refused as unknown, for at most a second from `since`: the
/// bound the issue promises for a revocation to reach every replica.
async fn refused_within_a_second(server: &TestServer, token: &str, since: Instant) {
    refused_by(server, token, since, Duration::from_secs(1)).await;
}

/// Polls `server` until `token` is refused as unknown; still allowed `bound` after `since`, it
/// fails. Anything but an allow or that refusal fails at once.
async fn refused_by(server: &TestServer, token: &str, since: Instant, bound: Duration) {
    loop {
        let answer = profile(server, token).await;
        if answer.outcome() == Outcome::Unauthenticated {
            assert_eq!(answer.reason, "session is unknown, expired or revoked");
            return;
        }
        assert_eq!(answer.outcome(), Outcome::Allowed, "{answer:?}");
        assert!(since.elapsed() < bound, "{} still allows a revoked session after {bound:?}", server.grpc);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Rotates `refresh_token` on `server`, which must succeed: the new tokens.
async fn rotated(server: &TestServer, refresh_token: &str) -> Value {
    let response = refresh(server, refresh_token).await;
    assert_eq!(response.status(), 200, "a refresh on {}", server.http);
    response.json().await.unwrap()
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
            // Only if a racer came before the winner's rotation was stored (never here: every
            // one sees the rotation or its spent token) or after the grace.
            401 => assert_eq!(body["error"], "invalid_grant"),
            other => panic!("a racing refresh answered {other}: {body}"),
        }
    }
    // Exactly one rotation wins; the racers within the reuse grace got the winner's tokens again.
    let winner = &winners[0];
    for other in &winners {
        assert_eq!((&other["token"], &other["refresh_token"]), (&winner["token"], &winner["refresh_token"]));
    }
    // The winner's session lives on, everywhere.
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
    let second = rotated(&servers[0], &token(&first, "refresh_token")).await;
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
async fn a_logout_with_a_rotated_out_token_ends_the_thiefs_session_on_every_replica() {
    let redis = RedisServer::start().await;
    let servers = replicas(&redis, 3, "").await;
    for held in ["token", "refresh_token"] {
        // A thief with the stolen refresh token rotates first, twice, on another replica; the
        // victim logs out on a third with the token they still hold.
        let victim = login(&servers[0]).await;
        let thief = rotated(&servers[1], &token(&victim, "refresh_token")).await;
        let thief = rotated(&servers[1], &token(&thief, "refresh_token")).await;
        assert_eq!(profile(&servers[0], &token(&thief, "token")).await.outcome(), Outcome::Allowed);
        let since = Instant::now();
        assert_eq!(
            logout(&servers[2], &token(&victim, held)).await["revoked"],
            true,
            "logout with the {held}"
        );
        for server in &servers {
            refused_within_a_second(server, &token(&thief, "token"), since).await;
        }
        assert_eq!(refresh(&servers[0], &token(&thief, "refresh_token")).await.status(), 401);
        assert_eq!(logout(&servers[0], &token(&victim, held)).await["revoked"], false, "nothing left to end");
    }
}

#[tokio::test]
async fn a_refresh_retried_on_another_replica_within_the_grace_gets_the_same_tokens() {
    let redis = RedisServer::start().await;
    let servers = replicas(&redis, 3, "").await;
    let first = login(&servers[0]).await;
    // The reply to this refresh is lost on its way to the client...
    let lost = refresh(&servers[0], &token(&first, "refresh_token")).await;
    assert_eq!(lost.status(), 200);
    let lost: Value = lost.json().await.unwrap();
    // ...which retries, on whichever replica the balancer picks: it gets what it lost.
    for server in &servers[1..] {
        let retried = refresh(server, &token(&first, "refresh_token")).await;
        assert_eq!(retried.status(), 200);
        let retried: Value = retried.json().await.unwrap();
        assert_eq!((&retried["token"], &retried["refresh_token"]), (&lost["token"], &lost["refresh_token"]));
        assert_eq!(retried["expires_at"], lost["expires_at"]);
    }
    for server in &servers {
        assert_eq!(profile(server, &token(&lost, "token")).await.outcome(), Outcome::Allowed);
    }
    // Redis holds the replay sealed: no token in it.
    let mut raw = redis.client().await;
    let replay =
        format!("{PREFIX}replay:{}", SecretDigest::of(token(&first, "refresh_token").as_bytes()).to_hex());
    let sealed: String = raw.get(&replay).await.unwrap();
    let lives: i64 = raw.pttl(&replay).await.unwrap();
    assert!(lives > 0 && lives <= 2000, "the box lives for the grace only: {lives} ms");
    assert!(!sealed.contains(&token(&lost, "token")) && !sealed.contains("refresh-") && !sealed.is_empty());
    // Once the session has moved on, the old token is only refused; the newest tokens live.
    let newest = rotated(&servers[2], &token(&lost, "refresh_token")).await;
    let stale = refresh(&servers[0], &token(&first, "refresh_token")).await;
    assert_eq!(stale.status(), 401);
    assert_eq!(profile(&servers[1], &token(&newest, "token")).await.outcome(), Outcome::Allowed);
}

#[tokio::test]
async fn logins_beyond_the_users_limit_end_the_oldest_on_every_replica() {
    let redis = RedisServer::start().await;
    let mut servers = Vec::new();
    for _ in 0..2 {
        let mut config = config(&redis, "");
        config.sessions.max_per_user = 2;
        servers.push(TestServer::start(config).await);
    }
    let mut sessions = Vec::new();
    for index in 0..4 {
        sessions.push(token(&login(&servers[index % 2]).await, "token"));
    }
    let since = Instant::now();
    for server in &servers {
        refused_within_a_second(server, &sessions[0], since).await;
        refused_within_a_second(server, &sessions[1], since).await;
        for live in &sessions[2..] {
            assert_eq!(profile(server, live).await.outcome(), Outcome::Allowed);
        }
    }
    let mut raw = redis.client().await;
    let user = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"alice"));
    let logins: i64 = raw.zcard(format!("{PREFIX}user:{user}")).await.unwrap();
    assert_eq!(logins, 2, "the user's set holds only the live logins");
}

#[tokio::test]
async fn a_login_attempt_that_never_finishes_stays_counted_for_its_window_only() {
    use cedargate::session::{LimitRule, LoginKey, LoginRateLimiter, Refused};
    use cedargate::state::{Redis, RedisRateLimiter, RedisSettings};
    let redis = RedisServer::start().await;
    let limiter = |window: Duration| {
        let settings = RedisSettings {
            url: cedargate::model::Secret::new(redis.url()),
            key_prefix: PREFIX.to_owned(),
            ..RedisSettings::default()
        };
        let rule = LimitRule { max_failures: 2, window };
        RedisRateLimiter::new(Redis::new(settings).unwrap(), rule, rule)
    };
    let long = limiter(Duration::from_secs(60));
    let alice = LoginKey::Username("alice".into());
    let first = long.reserve(&alice).await.unwrap();
    let second = long.reserve(&alice).await.unwrap();
    // Both in flight: the next attempt is refused, to come back soon.
    assert_eq!(long.reserve(&alice).await.unwrap_err(), Refused::Limited(Duration::from_secs(1)));
    // One ends well and gives its slot back; the rest fail: then the retry is the window's.
    long.finish(&alice, first, false).await;
    let third = long.reserve(&alice).await.unwrap();
    long.finish(&alice, second, true).await;
    long.finish(&alice, third, true).await;
    let Err(Refused::Limited(retry)) = long.reserve(&alice).await else { panic!("not limited") };
    assert!(retry > Duration::from_secs(50), "{retry:?}");

    // Attempts whose logins were cancelled mid-check (nothing will ever finish them) hold their
    // slots for their window, and no longer.
    let short = limiter(Duration::from_millis(500));
    let bob = LoginKey::Username("bob".into());
    short.reserve(&bob).await.unwrap();
    short.reserve(&bob).await.unwrap();
    assert!(short.reserve(&bob).await.is_err());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(short.reserve(&bob).await.is_ok(), "the window passed them");
}

#[tokio::test]
async fn a_full_redis_refuses_every_write_whole_and_keeps_serving_sessions() {
    let redis = RedisServer::start().await;
    let servers = replicas(&redis, 1, "    local_cache: { ttl: 0s }\n").await;
    let server = &servers[0];
    let (tokens, other, stolen) = (login(server).await, login(server).await, login(server).await);
    // A thief rotated a stolen refresh token before Redis filled up.
    let thiefs = rotated(server, &token(&stolen, "refresh_token")).await;
    let mut raw = redis.client().await;
    let _: () =
        redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("1").query_async(&mut raw).await.unwrap();
    let before: i64 = redis::cmd("DBSIZE").query_async(&mut raw).await.unwrap();
    // Logins (with their attempt counters) and refreshes are each refused before their first
    // command: 503, and not one key more or less.
    for attempt in 0..10 {
        let password = if attempt % 2 == 0 { "password123" } else { "wrong" };
        assert_eq!(http_login(server, "alice", password).await.status(), 503);
    }
    assert_eq!(refresh(server, &token(&tokens, "refresh_token")).await.status(), 503);
    let after: i64 = redis::cmd("DBSIZE").query_async(&mut raw).await.unwrap();
    assert_eq!(after, before, "nothing was written");
    // Reading needs no memory: sessions go on working. And a full Redis never keeps one alive:
    // a logout still ends it (it mostly deletes).
    assert_eq!(profile(server, &token(&tokens, "token")).await.outcome(), Outcome::Allowed);
    assert_eq!(logout(server, &token(&tokens, "token")).await["revoked"], true);
    assert_eq!(profile(server, &token(&tokens, "token")).await.outcome(), Outcome::Unauthenticated);
    // Nor does it let a reused refresh token pass unnoticed: past the grace, its owner's replay
    // still revokes the thief's session.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(refresh(server, &token(&stolen, "refresh_token")).await.status(), 401);
    assert_eq!(profile(server, &token(&thiefs, "token")).await.outcome(), Outcome::Unauthenticated);
    let _: () =
        redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("0").query_async(&mut raw).await.unwrap();
    assert_eq!(refresh(server, &token(&other, "refresh_token")).await.status(), 200);
}

#[tokio::test]
async fn a_login_refreshed_in_a_loop_is_stopped_before_it_forgets_a_rotation() {
    let redis = RedisServer::start().await;
    let mut servers = Vec::new();
    for _ in 0..2 {
        let mut config = config(&redis, "");
        config.sessions.max_rotations = 20;
        servers.push(TestServer::start(config).await);
    }
    let first = login(&servers[0]).await;
    let mut tokens = first.clone();
    let mut rotations = 0;
    let refused = loop {
        let rotated = refresh(&servers[rotations % 2], &token(&tokens, "refresh_token")).await;
        if rotated.status() != 200 {
            break rotated;
        }
        tokens = rotated.json().await.unwrap();
        rotations += 1;
        assert!(rotations <= 20, "a loop of refreshes was never stopped");
    };
    assert_eq!((rotations, refused.status().as_u16()), (20, 429));
    let retry: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 23 * 3600, "until the oldest rotation expires: {retry} s");
    let mut raw = redis.client().await;
    for (kind, count) in [("spent", 20), ("retired", 20), ("history", 1)] {
        let keys: Vec<String> = raw.keys(format!("{PREFIX}{kind}:*")).await.unwrap();
        assert_eq!(keys.len(), count, "{kind} keys after the loop");
    }
    assert_eq!(profile(&servers[1], &token(&tokens, "token")).await.outcome(), Outcome::Allowed);
    // The first refresh token is still known: its reuse, past the grace, ends the loop's session.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(refresh(&servers[1], &token(&first, "refresh_token")).await.status(), 401);
    let since = Instant::now();
    refused_within_a_second(&servers[0], &token(&tokens, "token"), since).await;
}

#[tokio::test]
async fn replicas_share_sessions_over_tls_and_refuse_a_redis_they_cannot_verify() {
    let redis = RedisServer::start_tls().await;
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    let over_tls = |ca: &str| {
        let text = format!(
            "{DEMO_YAML}\nstate:\n  redis:\n    url: {}\n    key_prefix: \"{PREFIX}\"\n    timeouts: {{ command: 1s, connect: 1s }}\n    tls: {{ ca_file: {} }}\n",
            redis.tls_url(),
            fixtures.join(ca).display()
        );
        Config::parse("replicas.yaml", &text).unwrap()
    };
    let servers = [TestServer::start(over_tls("ca.pem")).await, TestServer::start(over_tls("ca.pem")).await];
    let tokens = login(&servers[0]).await;
    assert_eq!(profile(&servers[1], &token(&tokens, "token")).await.outcome(), Outcome::Allowed);
    let since = Instant::now();
    assert_eq!(logout(&servers[1], &token(&tokens, "token")).await["revoked"], true);
    refused_within_a_second(&servers[0], &token(&tokens, "token"), since).await;
    // Every connection the replicas made is on the TLS port.
    let mut raw = redis.client().await;
    let clients: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut raw).await.unwrap();
    let tls_port = format!(":{}", redis.tls_port.unwrap());
    let laddrs: Vec<&str> = clients
        .lines()
        .filter_map(|line| line.split(' ').find(|field| field.starts_with("laddr=")))
        .collect();
    let over_tls_count = laddrs.iter().filter(|laddr| laddr.ends_with(&tls_port)).count();
    assert!(over_tls_count >= 4, "two replicas, each a command and an events connection: {clients}");
    assert_eq!(laddrs.len(), over_tls_count + 1, "only this test's own client is plain: {clients}");
    // A replica that trusts another CA cannot verify this Redis: its sessions are an outage,
    // never an allow, and its static tokens keep working.
    let doubting = TestServer::start(over_tls("other-ca.pem")).await;
    assert_eq!(http_login(&doubting, "alice", "password123").await.status(), 503);
    let live = token(&login(&servers[0]).await, "token");
    assert_eq!(profile(&doubting, &live).await.outcome(), Outcome::Unavailable);
    let mut client = doubting.authorizer().await;
    assert_eq!(check(&mut client, USER, route("GET", "/user/profile")).await.outcome(), Outcome::Allowed);
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
    let config = config_with(
        DEMO_YAML,
        &redis,
        "{ command: 300ms, connect: 300ms }",
        "    local_cache: { ttl: 0s }\n",
    );
    let servers = [TestServer::start(config).await];
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
    let _: () = raw.set(format!("{PREFIX}login:{username_key}:attempts"), "many").await.unwrap();
    assert_eq!(http_login(server, "alice", "password123").await.status(), 503);
    let _: () = raw.del(format!("{PREFIX}login:{username_key}:attempts")).await.unwrap();
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

// =============================================================================================
// What carries a revocation to another replica, each shown alone: the event (copies that would
// outlive the test, so nothing else can end them), the copies' TTL (a replica deaf to the
// events channel), a rejoin of the channel (which forgets every copy); and replicas that reach
// Redis as ACL users, with and without the events channel.
// =============================================================================================

/// The ACL user of the tests below, and its (test) password.
const ACL_USER: &str = "cedargate";
const ACL_PASSWORD: &str = "acl-test-password";

/// Every command a replica sends, and no other: the scripts (by digest, loaded when Redis does
/// not know them), the session read, the clear of a username's failures, the events channel
/// and its keep-alive; then every command the scripts call, which Redis checks against the
/// caller's ACL too.
const REPLICA_COMMANDS: [&str; 23] = [
    "-@all",
    "+evalsha",
    "+script|load",
    "+hmget",
    "+del",
    "+publish",
    "+subscribe",
    "+ping",
    "+hset",
    "+hget",
    "+expireat",
    "+time",
    "+set",
    "+exists",
    "+get",
    "+pexpire",
    "+zadd",
    "+zrem",
    "+zrange",
    "+zcard",
    "+zremrangebyscore",
    "+zscore",
    "+zpopmin",
];

/// (Re)makes the ACL user: its password, the keys under the prefix, `channels`, and
/// [`REPLICA_COMMANDS`].
async fn acl_user(redis: &RedisServer, channels: &[&str]) {
    let (password, keys) = (format!(">{ACL_PASSWORD}"), format!("~{PREFIX}*"));
    let mut rules = vec!["reset", "on", password.as_str(), keys.as_str()];
    rules.extend(channels);
    rules.extend(REPLICA_COMMANDS);
    redis.acl_setuser(ACL_USER, &rules).await;
}

/// `config`, reaching Redis as the ACL user.
fn as_acl_user(mut config: Config, redis: &RedisServer) -> Config {
    config.state.redis.as_mut().unwrap().url =
        cedargate::config::EnvString(redis.url_as(ACL_USER, ACL_PASSWORD));
    config
}

/// `config` with local copies that live an hour, where `Config::parse` allows at most a second
/// (the app takes the value as it is): while a test runs, only an event or a rejoin of the
/// events channel can end a copy.
fn with_hour_long_copies(mut config: Config) -> Config {
    config.state.redis.as_mut().unwrap().local_cache.ttl =
        cedargate::config::ZeroOrDuration(Duration::from_secs(3600));
    config
}

/// The connections in pub/sub mode (the replicas' events connections), as (id, ACL user),
/// once there are `count`: the same ids later mean no replica left the channel and rejoined
/// meanwhile (which would have emptied its copies).
async fn subscriptions(redis: &RedisServer, count: usize) -> Vec<(String, String)> {
    let mut raw = redis.client().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list: String =
            redis::cmd("CLIENT").arg("LIST").arg("TYPE").arg("pubsub").query_async(&mut raw).await.unwrap();
        let field = |line: &str, name: &str| {
            line.split(' ').find_map(|pair| pair.strip_prefix(name)).unwrap_or_default().to_owned()
        };
        let mut subscribed: Vec<(String, String)> =
            list.lines().map(|line| (field(line, "id="), field(line, "user="))).collect();
        subscribed.sort();
        if subscribed.len() == count {
            return subscribed;
        }
        assert!(Instant::now() < deadline, "{} of {count} replicas subscribed after 10 s", subscribed.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Deletes a session's access key behind cedargate's back (no script, so no event): a replica
/// that still allows the token answers from its own copy, which nothing has emptied since.
async fn delete_behind_the_back(redis: &RedisServer, access: &str) {
    let key = format!("{PREFIX}access:{}", SecretDigest::of(access.as_bytes()).to_hex());
    let deleted: i64 = redis.client().await.del(key).await.unwrap();
    assert_eq!(deleted, 1);
}

/// Polls `server` until `token` is refused as unknown; still allowed after `bound`, it fails.
async fn refused_within(server: &TestServer, token: &str, bound: Duration) {
    refused_by(server, token, Instant::now(), bound).await;
}

/// Every key under the prefix, with its contents and expiry.
async fn everything_under_the_prefix(redis: &RedisServer) -> std::collections::BTreeMap<String, String> {
    let mut raw = redis.client().await;
    let keys: Vec<String> = raw.keys(format!("{PREFIX}*")).await.unwrap();
    let mut everything = std::collections::BTreeMap::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query_async(&mut raw).await.unwrap();
        let contents = match kind.as_str() {
            "hash" => format!(
                "{:?}",
                raw.hgetall::<_, std::collections::BTreeMap<String, String>>(&key).await.unwrap()
            ),
            "string" => raw.get::<_, String>(&key).await.unwrap(),
            "zset" => {
                format!("{:?}", raw.zrange_withscores::<_, Vec<(String, String)>>(&key, 0, -1).await.unwrap())
            }
            other => format!("a {other}"),
        };
        let expires: i64 = redis::cmd("EXPIRETIME").arg(&key).query_async(&mut raw).await.unwrap();
        everything.insert(key, format!("{contents}, expiring at {expires}"));
    }
    everything
}

#[tokio::test]
async fn a_logout_or_rotation_on_one_replica_ends_another_replicas_hour_long_copy_by_its_event_alone() {
    let redis = RedisServer::start().await;
    let servers = [
        TestServer::start(with_hour_long_copies(config(&redis, ""))).await,
        TestServer::start(with_hour_long_copies(config(&redis, ""))).await,
    ];
    let listening = subscriptions(&redis, 2).await;
    let (logged_out, rotated, control) =
        (login(&servers[0]).await, login(&servers[0]).await, login(&servers[0]).await);
    // The second replica reads all three: it holds a copy of each for the next hour.
    for tokens in [&logged_out, &rotated, &control] {
        assert_eq!(profile(&servers[1], &token(tokens, "token")).await.outcome(), Outcome::Allowed);
    }
    delete_behind_the_back(&redis, &token(&control, "token")).await;

    assert_eq!(logout(&servers[0], &token(&logged_out, "token")).await["revoked"], true);
    assert_eq!(refresh(&servers[0], &token(&rotated, "refresh_token")).await.status(), 200);
    // Ten seconds is slack for a loaded machine, and still nothing next to the copies' hour.
    for revoked in [&logged_out, &rotated] {
        refused_within(&servers[1], &token(revoked, "token"), Duration::from_secs(10)).await;
    }
    // The control's copy, which alone still answers for it, is there: nothing emptied the
    // copies wholesale (no rejoin either), so each revoked copy went by its own event.
    assert_eq!(profile(&servers[1], &token(&control, "token")).await.outcome(), Outcome::Allowed);
    assert_eq!(subscriptions(&redis, 2).await, listening);
}

#[tokio::test]
async fn a_replica_deaf_to_the_events_channel_serves_a_revoked_sessions_copy_until_its_ttl_ends_it() {
    use cedargate::model::{AuthInfo, CredentialKind, Secret};
    use cedargate::session::{SessionRecord, SessionStore};
    use cedargate::state::{Redis, RedisSessionStore, RedisSettings};
    use futures_util::StreamExt;

    let redis = RedisServer::start().await;
    // Longer than the 1 s the config allows only so that "served from the copy after the
    // revocation" below has room on a loaded machine; what ends the copy is the same.
    let ttl = Duration::from_secs(3);
    let store = || {
        let settings = RedisSettings {
            url: Secret::new(redis.url()),
            key_prefix: PREFIX.to_owned(),
            local_cache_ttl: ttl,
            ..RedisSettings::default()
        };
        RedisSessionStore::new(Redis::new(settings).unwrap())
    };
    // Two replicas' stores; nothing listens on the events channel for `deaf`, as for a replica
    // whose subscription is down, and nothing else ever makes it forget.
    let (revoking, deaf) = (store(), store());
    let mut overheard = redis::Client::open(redis.url()).unwrap().get_async_pubsub().await.unwrap();
    overheard.subscribe(format!("{PREFIX}events")).await.unwrap();
    let now = cedargate::model::unix_now();
    let mut auth = AuthInfo::new(CredentialKind::Session, "alice", vec!["user".to_owned()]);
    auth.expires_at = Some(now + 600);
    let access = SecretDigest::of(b"session-deaf");
    revoking
        .create(
            SessionRecord {
                family: 1,
                username: "alice".to_owned(),
                auth: Arc::new(auth),
                access,
                refresh: SecretDigest::of(b"refresh-deaf"),
                refresh_expires_at: now + 3600,
            },
            10,
        )
        .await
        .unwrap();

    let read_at = Instant::now();
    assert!(deaf.lookup_access(&access).await.unwrap().is_some());
    assert!(revoking.revoke(&access).await.unwrap());
    // The revocation was said on the channel: `deaf` missed it by not listening.
    let said =
        tokio::time::timeout(Duration::from_secs(5), overheard.on_message().next()).await.unwrap().unwrap();
    assert_eq!(said.get_payload::<String>().unwrap(), format!("revoked {}", access.to_hex()));
    // Redis has it no more (the revoking store reads it there), so what `deaf` answers is
    // its copy.
    assert!(revoking.lookup_access(&access).await.unwrap().is_none());
    assert!(deaf.lookup_access(&access).await.unwrap().is_some(), "the copy ended before its TTL");
    loop {
        if deaf.lookup_access(&access).await.unwrap().is_none() {
            break;
        }
        assert!(read_at.elapsed() < ttl + Duration::from_secs(10), "the copy outlived its TTL");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Not before the TTL: the copy was made after `read_at`, so only its age ended it.
    assert!(read_at.elapsed() >= ttl, "the copy ended after {:?}, before its TTL", read_at.elapsed());
}

#[tokio::test]
async fn a_replica_cut_off_the_events_channel_forgets_every_copy_once_it_rejoins() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(with_hour_long_copies(config(&redis, ""))).await;
    let listening = subscriptions(&redis, 1).await;
    let access = token(&login(&server).await, "token");
    assert_eq!(profile(&server, &access).await.outcome(), Outcome::Allowed);
    // Gone from Redis unheard, as a revocation said while the replica is away would be.
    delete_behind_the_back(&redis, &access).await;
    assert_eq!(profile(&server, &access).await.outcome(), Outcome::Allowed, "answered from its copy");

    let mut raw = redis.client().await;
    let killed: i64 =
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query_async(&mut raw).await.unwrap();
    assert_eq!(killed, 1);
    let rejoined = subscriptions(&redis, 1).await;
    assert_ne!(rejoined, listening, "a new subscription");
    // Its copy, an hour long, is gone: missed events may have revoked it.
    refused_within(&server, &access, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_replicas_events_connection_lives_through_its_keep_alive_ping() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(with_hour_long_copies(config(&redis, ""))).await;
    let listening = subscriptions(&redis, 1).await;
    let subscribed_at = Instant::now();
    let access = token(&login(&server).await, "token");
    assert_eq!(profile(&server, &access).await.outcome(), Outcome::Allowed);
    delete_behind_the_back(&redis, &access).await;
    // The first ping goes at 5 s. A connection dropped then would rejoin and empty every
    // copy (and the token caches) each time, however healthy Redis is.
    tokio::time::sleep_until((subscribed_at + Duration::from_millis(6500)).into()).await;
    assert_eq!(subscriptions(&redis, 1).await, listening, "the events connection was dropped");
    assert_eq!(profile(&server, &access).await.outcome(), Outcome::Allowed, "the copy was emptied");
}

#[tokio::test]
async fn replicas_work_end_to_end_as_an_acl_user_allowed_only_their_keys_channel_and_commands() {
    let redis = RedisServer::start().await;
    acl_user(&redis, &[format!("&{PREFIX}events").as_str()]).await;
    let servers = [
        TestServer::start(with_hour_long_copies(as_acl_user(config(&redis, ""), &redis))).await,
        TestServer::start(with_hour_long_copies(as_acl_user(config(&redis, ""), &redis))).await,
    ];
    let listening = subscriptions(&redis, 2).await;
    let subscribed_at = Instant::now();
    assert!(listening.iter().all(|(_, user)| user == ACL_USER), "{listening:?}");
    let (first, control) = (login(&servers[0]).await, login(&servers[0]).await);
    for server in &servers {
        for tokens in [&first, &control] {
            assert_eq!(profile(server, &token(tokens, "token")).await.outcome(), Outcome::Allowed);
        }
    }
    delete_behind_the_back(&redis, &token(&control, "token")).await;

    // A rotation on the second replica; the first hears that the old access token is gone.
    let next = rotated(&servers[1], &token(&first, "refresh_token")).await;
    refused_within(&servers[0], &token(&first, "token"), Duration::from_secs(10)).await;
    for server in &servers {
        assert_eq!(profile(server, &token(&next, "token")).await.outcome(), Outcome::Allowed);
    }
    // A logout on the first; the second hears it.
    assert_eq!(logout(&servers[0], &token(&next, "token")).await["revoked"], true);
    refused_within(&servers[1], &token(&next, "token"), Duration::from_secs(10)).await;
    assert_eq!(refresh(&servers[1], &token(&next, "refresh_token")).await.status(), 401);
    // The limiter's scripts: a failure counted, then cleared by a success.
    assert_eq!(http_login(&servers[1], "alice", "wrong-password").await.status(), 401);
    login(&servers[1]).await;

    // Heard, not emptied: the control's copies still answer on both.
    for server in &servers {
        assert_eq!(profile(server, &token(&control, "token")).await.outcome(), Outcome::Allowed);
    }
    // Past the events connections' first keep-alive ping (at 5 s), none was dropped and
    // rejoined, and Redis refused the user nothing (a refused `finish` or `clear` of the
    // limiter is only logged by cedargate, so the ACL log is where it shows).
    tokio::time::sleep_until((subscribed_at + Duration::from_millis(6500)).into()).await;
    assert_eq!(subscriptions(&redis, 2).await, listening, "an events connection was dropped");
    let refused: Vec<redis::Value> =
        redis::cmd("ACL").arg("LOG").query_async(&mut redis.client().await).await.unwrap();
    assert!(refused.is_empty(), "Redis refused the replicas' user: {refused:?}");
}

#[tokio::test]
async fn without_the_events_channel_in_its_acl_a_replica_fails_logout_and_refresh_closed_changing_nothing() {
    let redis = RedisServer::start().await;
    acl_user(&redis, &[]).await;
    // No local copies: "the token still works" below is read from Redis.
    let server =
        TestServer::start(as_acl_user(config(&redis, "    local_cache: { ttl: 0s }\n"), &redis)).await;

    // A login publishes nothing: it is made whole, and leaves no attempt counted in flight.
    let tokens = login(&server).await;
    let before = everything_under_the_prefix(&redis).await;
    let digest = |name: &str| SecretDigest::of(token(&tokens, name).as_bytes()).to_hex();
    assert!(before.contains_key(&format!("{PREFIX}access:{}", digest("token"))), "{before:?}");
    assert!(before.contains_key(&format!("{PREFIX}refresh:{}", digest("refresh_token"))), "{before:?}");
    assert_eq!(before.keys().filter(|key| key.starts_with(&format!("{PREFIX}family:"))).count(), 1);
    let user = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"alice"));
    assert!(before.contains_key(&format!("{PREFIX}user:{user}")), "the user's logins: {before:?}");
    assert_eq!(before.len(), 4, "nothing but the session and its user's logins: {before:?}");
    assert_eq!(profile(&server, &token(&tokens, "token")).await.outcome(), Outcome::Allowed);

    // A logout and a rotation publish before they change anything, so the refused PUBLISH
    // aborts each script first: an outage, and every key as it was.
    let logged_out = reqwest::Client::new()
        .post(server.http_url("/auth/logout"))
        .header("authorization", format!("Bearer {}", token(&tokens, "token")))
        .send()
        .await
        .unwrap();
    assert_eq!(logged_out.status(), 503);
    assert_eq!(logged_out.json::<Value>().await.unwrap()["error"], "temporarily_unavailable");
    let refreshed = refresh(&server, &token(&tokens, "refresh_token")).await;
    assert_eq!(refreshed.status(), 503);
    assert_eq!(refreshed.json::<Value>().await.unwrap()["error"], "temporarily_unavailable");
    assert_eq!(everything_under_the_prefix(&redis).await, before);
    assert_eq!(profile(&server, &token(&tokens, "token")).await.outcome(), Outcome::Allowed);

    // Granted the channel, the same session logs out: the channel alone was missing.
    acl_user(&redis, &[format!("&{PREFIX}events").as_str()]).await;
    assert_eq!(logout(&server, &token(&tokens, "token")).await["revoked"], true);
    assert_eq!(profile(&server, &token(&tokens, "token")).await.outcome(), Outcome::Unauthenticated);
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
