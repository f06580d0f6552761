//! Criterion micro-benchmarks of the in-process decision path on the embedded demo: what one
//! `Check` costs without the network, per credential kind.

// A benchmark harness, not service code: a broken set-up should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::hint::black_box;

use cedargate::config::Config;
use cedargate::model::{Extra, RouteRequest, Secret, Target, ToolCall, Wire};
use cedargate::policy::{Query, Resource};
use cedargate::App;
use criterion::{criterion_group, criterion_main, Criterion};

/// The service's allocator (`src/main.rs`), so the path is measured as the service runs it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn decision_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let app = App::build(Config::demo().unwrap()).unwrap();
    let session = runtime
        .block_on(app.sessions().login("alice", &Secret::new("password123"), None))
        .unwrap()
        .access_token;
    let session_header = format!("Bearer {}", session.expose());
    let profile =
        Target::Route(RouteRequest { method: "GET".into(), path: "/user/profile".into(), template: None });
    let admin =
        Target::Route(RouteRequest { method: "GET".into(), path: "/admin/users".into(), template: None });
    let tool = Target::Tool(ToolCall { name: "GET_/user/profile".into(), ..Default::default() });
    let facts = Extra::new();
    let engine = app.engine();

    let mut group = c.benchmark_group("check");
    let cases: [(&str, &str, &Target); 7] = [
        ("static_token_allow", "Bearer user-token-123", &profile),
        ("static_token_forbid", "Bearer user-token-123", &admin),
        (
            "api_key_allow",
            "ApiKey api-key-789",
            &Target::Route(RouteRequest {
                method: "GET".into(),
                path: "/service/metrics".into(),
                template: None,
            }),
        ),
        ("session_allow", &session_header, &profile),
        ("anonymous_401", "", &profile),
        ("invalid_token_401", "Bearer invalid-token", &profile),
        ("route_tool_allow", "Bearer user-token-123", &tool),
    ];
    for (name, authorization, target) in cases {
        group.bench_function(name, |b| {
            b.iter(|| {
                runtime
                    .block_on(engine.check(Wire::Grpc, black_box(authorization), black_box(target), &facts))
                    .unwrap()
            })
        });
    }
    group.finish();

    // The Cedar part alone: request building plus evaluation of the seven demo policies.
    let user = runtime.block_on(engine.authenticate("Bearer user-token-123"));
    let cedargate::engine::Authentication::Authenticated { auth, .. } = user.clone() else {
        panic!("demo token")
    };
    let resource =
        Resource::Route { method: "GET", path: "/user/profile", template: "/user/profile", params: &[] };
    c.bench_function("policy/evaluate_user_profile", |b| {
        b.iter(|| {
            engine.policies().evaluate(black_box(&Query {
                auth: Some(&auth),
                resource,
                facts: &facts,
                now: 0,
            }))
        })
    });

    // The same without the per-identity cache: a fresh identity every time, as a backend
    // that rebuilt its AuthInfo per request would cause.
    c.bench_function("policy/evaluate_user_profile_uncached", |b| {
        b.iter(|| {
            let fresh = std::sync::Arc::new((*auth).clone());
            engine.policies().evaluate(black_box(&Query {
                auth: Some(&fresh),
                resource,
                facts: &facts,
                now: 0,
            }))
        })
    });

    // An MCP list of 500 tools for one caller: decided in one pass, as ext_proc and
    // FilterTools decide it, against the same 500 as `Check` calls (each authenticating the
    // token) and as separate decisions (BatchCheck's way: one authentication, a full decision
    // with its record per tool). Half are the user's to call.
    let tools: Vec<Target> = (0..500)
        .map(|n| {
            let name = if n % 2 == 0 { "echo".to_owned() } else { format!("bulk_{n}") };
            Target::Tool(ToolCall { name, server: "files".into(), ..Default::default() })
        })
        .collect();
    let mut group = c.benchmark_group("mcp_list_500");
    group.bench_function("one_pass", |b| {
        b.iter(|| engine.could_use(black_box(&user), black_box(&tools), &facts))
    });
    group.bench_function("as_check_calls", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let mut allowed = Vec::with_capacity(tools.len());
                for tool in black_box(&tools) {
                    let answer = engine.check(Wire::Grpc, "Bearer user-token-123", tool, &facts).await;
                    allowed.push(answer.unwrap().allowed());
                }
                allowed
            })
        })
    });
    group.bench_function("as_checks", |b| {
        b.iter(|| {
            let call = cedargate::engine::Call::now(Wire::Grpc);
            black_box(&tools)
                .iter()
                .map(|tool| engine.check_authenticated(call, &user, tool, &facts).unwrap().allowed())
                .collect::<Vec<_>>()
        })
    });
    group.finish();

    c.bench_function("authenticate/static_token", |b| {
        b.iter(|| runtime.block_on(engine.authenticate(black_box("Bearer user-token-123"))))
    });
}

criterion_group!(benches, decision_path);
criterion_main!(benches);
