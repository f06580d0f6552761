//! N concurrent first checks of one opaque token make exactly one introspection call.

// Test code: a failed set-up step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cedargate::api::proto::Outcome;
use cedargate::config::Config;
use cedargate::model::unix_now;
use common::{check, route, TestServer};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_first_checks_make_one_introspection_call() {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/introspect",
        axum::routing::post({
            let calls = Arc::clone(&calls);
            move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                // Slow enough that every check arrives while the first call is in flight.
                tokio::time::sleep(Duration::from_millis(300)).await;
                axum::Json(json!({"active": true, "sub": "erin", "roles": ["user"], "exp": unix_now() + 600}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/introspect", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let text = format!(
        "credentials:\n  introspection:\n    - endpoint: {endpoint}\n      client_id: c\n      client_secret: s\n"
    );
    let server = TestServer::start(Config::parse("flight.yaml", &text).unwrap()).await;
    let client = server.authorizer().await;
    let checks: Vec<_> = (0..1000)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(
                async move { check(&mut client, "Bearer opaque-1", route("GET", "/user/profile")).await },
            )
        })
        .collect();
    for answer in checks {
        assert_eq!(answer.await.unwrap().outcome(), Outcome::Allowed);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "introspection calls for 1,000 concurrent first checks");
}
