//! Login sessions over real HTTP and gRPC: the seed's login flow, rotation, logout, limits.

// Test code: a failed set-up step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cedargate::api::proto::{self, Outcome};
use cedargate::config::Config;
use common::{check, http_login, route, TestServer};
use serde_json::Value;

async fn login_json(server: &TestServer) -> Value {
    let response = http_login(server, "alice", "password123").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    response.json().await.unwrap()
}

#[tokio::test]
async fn an_http_login_token_behaves_as_alice() {
    let server = TestServer::demo().await;
    let tokens = login_json(&server).await;
    let token = tokens["token"].as_str().unwrap();
    assert!(token.starts_with("session-"));
    assert_eq!(tokens["access_token"], tokens["token"]);
    assert_eq!(tokens["token_type"], "Bearer");
    assert!(tokens["expires_in"].as_i64().unwrap() > 3500);

    let mut client = server.authorizer().await;
    let bearer = format!("Bearer {token}");
    let profile = check(&mut client, &bearer, route("GET", "/user/profile")).await;
    assert_eq!(profile.outcome(), Outcome::Allowed);
    let auth = profile.auth_info.unwrap();
    assert_eq!((auth.subject.as_str(), auth.credential_kind.as_str()), ("alice", "session"));
    assert_eq!(auth.roles, ["user"]);
    assert_eq!(auth.expires_at, tokens["expires_at"].as_i64().unwrap());
    let admin = check(&mut client, &bearer, route("GET", "/admin/users")).await;
    assert_eq!((admin.outcome(), admin.reason.as_str()), (Outcome::Forbidden, "Requires admin role"));
}

#[tokio::test]
async fn http_refresh_rotates_and_logout_revokes_at_once() {
    let server = TestServer::demo().await;
    let http = reqwest::Client::new();
    let mut client = server.authorizer().await;
    let first = login_json(&server).await;

    let refreshed = http
        .post(server.http_url("/auth/refresh"))
        .json(&serde_json::json!({ "refresh_token": first["refresh_token"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), 200);
    let second: Value = refreshed.json().await.unwrap();
    assert_ne!(second["token"], first["token"]);

    let old = check(
        &mut client,
        &format!("Bearer {}", first["token"].as_str().unwrap()),
        route("GET", "/user/profile"),
    )
    .await;
    assert_eq!(old.outcome(), Outcome::Unauthenticated, "the rotated-out token stops working");
    let new_bearer = format!("Bearer {}", second["token"].as_str().unwrap());
    assert_eq!(
        check(&mut client, &new_bearer, route("GET", "/user/profile")).await.outcome(),
        Outcome::Allowed
    );

    let logout =
        http.post(server.http_url("/auth/logout")).header("authorization", &new_bearer).send().await.unwrap();
    assert_eq!(logout.status(), 200);
    assert_eq!(logout.json::<Value>().await.unwrap()["revoked"], true);
    let after = check(&mut client, &new_bearer, route("GET", "/user/profile")).await;
    assert_eq!(
        (after.outcome(), after.reason.as_str()),
        (Outcome::Unauthenticated, "session is unknown, expired or revoked")
    );
    assert!(after.www_authenticate.contains("invalid_token"));

    let reused = http
        .post(server.http_url("/auth/refresh"))
        .json(&serde_json::json!({ "refresh_token": first["refresh_token"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(reused.status(), 401);
}

#[tokio::test]
async fn grpc_sessions_login_refresh_and_logout() {
    // No grace: a reuse right after the rotation is taken for theft (the grace has its own test).
    let mut config = Config::demo().unwrap();
    config.sessions.refresh_reuse_grace = cedargate::config::HumanDuration(std::time::Duration::ZERO);
    let server = TestServer::start(config).await;
    let mut sessions = server.sessions().await;
    let mut client = server.authorizer().await;
    let tokens = sessions
        .login(proto::LoginRequest { username: "alice".into(), password: "password123".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tokens.token_type, "Bearer");
    let rotated = sessions
        .refresh(proto::RefreshRequest { refresh_token: tokens.refresh_token.clone() })
        .await
        .unwrap()
        .into_inner();
    let reuse =
        sessions.refresh(proto::RefreshRequest { refresh_token: tokens.refresh_token }).await.unwrap_err();
    assert_eq!(reuse.code(), tonic::Code::Unauthenticated);
    // Reuse of a spent refresh token revokes the whole session, rotated tokens included.
    let bearer = format!("Bearer {}", rotated.access_token);
    assert_eq!(
        check(&mut client, &bearer, route("GET", "/user/profile")).await.outcome(),
        Outcome::Unauthenticated
    );

    let again = sessions
        .login(proto::LoginRequest { username: "alice".into(), password: "password123".into() })
        .await
        .unwrap()
        .into_inner();
    let revoked = sessions
        .logout(proto::LogoutRequest { token: again.access_token.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoked);
    let bearer = format!("Bearer {}", again.access_token);
    assert_eq!(
        check(&mut client, &bearer, route("GET", "/user/profile")).await.outcome(),
        Outcome::Unauthenticated
    );

    let wrong = sessions
        .login(proto::LoginRequest { username: "alice".into(), password: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    assert!(!wrong.message().contains("nope"));
}

#[tokio::test]
async fn repeated_failed_logins_are_rate_limited_over_both_wires() {
    let server = TestServer::demo().await;
    for _ in 0..5 {
        assert_eq!(http_login(&server, "alice", "wrong").await.status(), 401);
    }
    let limited = http_login(&server, "alice", "password123").await;
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=900).contains(&retry_after), "{retry_after}");
    assert_eq!(limited.json::<Value>().await.unwrap()["error"], "rate_limited");

    let mut sessions = server.sessions().await;
    let status = sessions
        .login(proto::LoginRequest { username: "alice".into(), password: "password123".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(status.metadata().get("retry-after").is_some());
}

#[tokio::test]
async fn the_address_budget_stops_password_spraying_across_usernames() {
    let mut config = Config::demo().unwrap();
    config.sessions.login_rate_limit.per_address.max_failures = 3;
    let server = TestServer::start(config).await;
    for username in ["a", "b", "c"] {
        assert_eq!(http_login(&server, username, "guess").await.status(), 401);
    }
    assert_eq!(http_login(&server, "d", "guess").await.status(), 429);
}

#[tokio::test]
async fn broken_login_bodies_get_a_400_naming_the_problem() {
    let server = TestServer::demo().await;
    let http = reqwest::Client::new();
    let table = [
        ("{\"username\": \"alice\"", "ends early"),
        ("{\"username\": \"alice\"}", "missing field `password`"),
        ("{\"username\": \"alice\", \"password\": \"x\", \"admin\": true}", "unknown field `admin`"),
        ("[1, 2]", "wrong type"),
        // A mistyped password is never quoted back (serde's own text would).
        ("{\"username\": \"alice\", \"password\": 31415926535}", "wrong type"),
        ("{\"username\": \"\", \"password\": \"x\"}", "`username` must be 1 to 256 bytes"),
    ];
    for (body, reason) in table {
        let response = http
            .post(server.http_url("/auth/login"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let json: Value = response.json().await.unwrap();
        assert_eq!(json["error"], "invalid_request");
        assert!(json["reason"].as_str().unwrap().contains(reason), "{body}: {json}");
        assert!(!json.to_string().contains("1415926"), "{json}");
    }
    let huge = http.post(server.http_url("/auth/login")).body(vec![b'a'; 64 * 1024]).send().await.unwrap();
    assert_eq!(huge.status(), 413);
}

#[tokio::test]
async fn fifty_concurrent_refreshes_with_one_token_leave_the_winner_signed_in() {
    let server = TestServer::demo().await;
    let tokens = http_login(&server, "alice", "password123").await.json::<Value>().await.unwrap();
    let refresh_token = tokens["refresh_token"].as_str().unwrap().to_owned();
    let refreshes: Vec<_> = (0..50)
        .map(|_| {
            let url = server.http_url("/auth/refresh");
            let body = serde_json::json!({ "refresh_token": refresh_token });
            tokio::spawn(async move {
                let response = reqwest::Client::new().post(url).json(&body).send().await.unwrap();
                (response.status().as_u16(), response.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut winners = Vec::new();
    for refresh in refreshes {
        let (status, body) = refresh.await.unwrap();
        match status {
            200 => winners.push(body),
            401 => assert_eq!(body["error"], "invalid_grant"),
            other => panic!("{other}: {body}"),
        }
    }
    // Exactly one rotation: the refreshes within the reuse grace got its tokens again.
    let winner = &winners[0];
    assert!(winners.iter().all(|other| other["token"] == winner["token"]), "more than one rotation");
    let bearer = format!("Bearer {}", winner["token"].as_str().unwrap());
    let mut client = server.authorizer().await;
    assert_eq!(check(&mut client, &bearer, route("GET", "/user/profile")).await.outcome(), Outcome::Allowed);
}
