//! The seed scenarios over real gRPC against the embedded demo.

// Test code: a failed set-up step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cedargate::api::proto::{self, Outcome};
use common::{check, route, tool, TestServer};

/// What a scenario expects.
struct Expect {
    outcome: Outcome,
    status: u32,
    subject: &'static str,
    reason: &'static str,
    challenge: &'static str,
}

fn expect(
    outcome: Outcome,
    status: u32,
    subject: &'static str,
    reason: &'static str,
    challenge: &'static str,
) -> Expect {
    Expect { outcome, status, subject, reason, challenge }
}

fn assert_answer(answer: &proto::CheckResponse, expected: &Expect, label: &str) {
    assert_eq!(answer.outcome(), expected.outcome, "{label}: {answer:?}");
    assert_eq!(answer.allowed, expected.outcome == Outcome::Allowed, "{label}");
    assert_eq!(answer.http_status, expected.status, "{label}");
    assert_eq!(
        answer.auth_info.as_ref().map_or("", |auth| auth.subject.as_str()),
        expected.subject,
        "{label}"
    );
    assert_eq!(answer.reason, expected.reason, "{label}");
    assert_eq!(answer.www_authenticate, expected.challenge, "{label}");
    assert!(!answer.decision_id.is_empty(), "{label}");
}

const NO_ERROR_CHALLENGE: &str = "Bearer realm=\"cedargate\"";
const INVALID_TOKEN: &str =
    "Bearer realm=\"cedargate\", error=\"invalid_token\", error_description=\"unknown Bearer credential\"";

#[tokio::test]
async fn the_seed_scenarios_decide_as_the_example_does() {
    use Outcome::{Allowed, Forbidden, Unauthenticated};
    let server = TestServer::demo().await;
    let mut client = server.authorizer().await;
    #[rustfmt::skip]
    let table = [
        ("Bearer user-token-123", "GET", "/user/profile", expect(Allowed, 200, "demo-user", "Users may use the user endpoints", "")),
        ("Bearer user-token-123", "GET", "/user/data", expect(Allowed, 200, "demo-user", "Users may use the user endpoints", "")),
        ("Bearer user-token-123", "GET", "/admin/users", expect(Forbidden, 403, "demo-user", "Requires admin role", "")),
        ("Bearer user-token-123", "GET", "/service/metrics", expect(Forbidden, 403, "demo-user", "Requires service role", "")),
        ("Bearer invalid-token", "GET", "/user/profile", expect(Unauthenticated, 401, "", "unknown Bearer credential", INVALID_TOKEN)),
        ("Bearer invalid-token", "GET", "/public/info", expect(Unauthenticated, 401, "", "unknown Bearer credential", INVALID_TOKEN)),
        ("", "GET", "/public/info", expect(Allowed, 200, "", "Public endpoints need no credential", "")),
        ("", "GET", "/user/profile", expect(Unauthenticated, 401, "", "Requires user role", NO_ERROR_CHALLENGE)),
        ("", "GET", "/admin/users", expect(Unauthenticated, 401, "", "Requires admin role", NO_ERROR_CHALLENGE)),
        ("ApiKey api-key-789", "GET", "/service/metrics", expect(Allowed, 200, "metrics-service", "Services may use the service endpoints", "")),
        ("ApiKey api-key-789", "GET", "/user/profile", expect(Forbidden, 403, "metrics-service", "Requires user role", "")),
        ("ApiKey api-key-789", "GET", "/admin/users", expect(Forbidden, 403, "metrics-service", "Requires admin role", "")),
        ("Bearer api-key-789", "GET", "/service/metrics", expect(Unauthenticated, 401, "", "unknown Bearer credential", INVALID_TOKEN)),
        ("Bearer admin-token-456", "GET", "/user/profile", expect(Allowed, 200, "demo-admin", "Admins may do everything", "")),
        ("Bearer admin-token-456", "GET", "/admin/users", expect(Allowed, 200, "demo-admin", "Admins may do everything", "")),
        ("Bearer admin-token-456", "GET", "/service/metrics", expect(Allowed, 200, "demo-admin", "Admins may do everything", "")),
        ("Bearer admin-token-456", "DELETE", "/admin/users", expect(Allowed, 200, "demo-admin", "Admins may do everything", "")),
        ("Bearer admin-token-456", "GET", "/public/info", expect(Allowed, 200, "demo-admin", "Admins may do everything", "")),
    ];
    for (authorization, method, path, expected) in &table {
        let label = format!("{authorization:?} {method} {path}");
        let by_route = check(&mut client, authorization, route(method, path)).await;
        assert_answer(&by_route, expected, &label);
        // Seed 003 "No Auth Bypass": the route's MCP tool gets the very same decision.
        let by_tool = check(&mut client, authorization, tool(&format!("{method}_{path}"))).await;
        assert_answer(&by_tool, expected, &format!("tool {label}"));
        assert_eq!(by_route.policy_ids, by_tool.policy_ids, "{label}");
    }
}

#[tokio::test]
async fn allowed_answers_carry_the_auth_info_and_deciding_policy() {
    let server = TestServer::demo().await;
    let mut client = server.authorizer().await;
    let answer = check(&mut client, "Bearer user-token-123", route("GET", "/user/profile")).await;
    let auth = answer.auth_info.unwrap();
    assert_eq!(auth.subject, "demo-user");
    assert_eq!(auth.roles, ["user"]);
    assert_eq!(auth.credential_kind, "static");
    assert_eq!(auth.expires_at, 0);
    assert_eq!(answer.policy_ids, ["user-routes"]);
    assert_eq!(answer.credential_fingerprint.len(), 16);

    let denied = check(&mut client, "Bearer user-token-123", route("GET", "/admin/users")).await;
    assert_eq!(denied.policy_ids, ["admin-routes-require-admin"]);
    assert_ne!(denied.decision_id, answer.decision_id);

    let key = check(&mut client, "ApiKey api-key-789", route("GET", "/service/metrics")).await;
    assert_eq!(key.auth_info.unwrap().credential_kind, "api_key");
}

#[tokio::test]
async fn malformed_credentials_are_refused_with_a_precise_reason() {
    let server = TestServer::demo().await;
    let mut client = server.authorizer().await;
    let oversized = format!("Bearer {}", "x".repeat(8 * 1024));
    let table = [
        ("Basic dXNlcjpwYXNz", "unsupported authorization scheme: send `Bearer <token>` or `ApiKey <key>`"),
        ("Bearer ", "empty credential after `Bearer`"),
        ("Bearer two words", "credential is not valid token68 syntax"),
        ("Bearer tok\u{0}en", "authorization value contains a control or non-ASCII character"),
        (oversized.as_str(), "authorization value exceeds 8192 bytes"),
    ];
    for (authorization, reason) in table {
        let answer = check(&mut client, authorization, route("GET", "/public/info")).await;
        assert_eq!((answer.outcome(), answer.http_status), (Outcome::Unauthenticated, 401), "{reason}");
        assert_eq!(answer.reason, reason);
        assert!(answer.www_authenticate.contains("error=\"invalid_token\""), "{}", answer.www_authenticate);
    }
}

#[tokio::test]
async fn malformed_targets_are_invalid_arguments() {
    let server = TestServer::demo().await;
    let mut client = server.authorizer().await;
    let table = [
        (None, "target is missing"),
        (Some(route("GET", "no-slash")), "must start with `/`"),
        (Some(route("GET", "/public/../admin/users")), "dot segments"),
        (Some(route("", "/x")), "route.method"),
        (Some(tool("")), "tool.name"),
    ];
    for (target, message) in table {
        let request = proto::CheckRequest {
            authorization: "Bearer admin-token-456".into(),
            target,
            ..Default::default()
        };
        let status = client.check(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains(message), "{}", status.message());
    }
}

#[tokio::test]
async fn batch_check_answers_each_target_in_order() {
    let server = TestServer::demo().await;
    let mut client = server.authorizer().await;
    let targets = vec![
        tool("GET_/user/profile"),
        tool("GET_/admin/users"),
        tool("GET_/public/info"),
        route("GET", "bad"),
        tool("GET_/service/metrics"),
    ];
    let answer = client
        .batch_check(proto::BatchCheckRequest {
            authorization: "Bearer user-token-123".into(),
            targets,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let outcomes: Vec<(Outcome, u32)> = answer.results.iter().map(|r| (r.outcome(), r.http_status)).collect();
    assert_eq!(
        outcomes,
        [
            (Outcome::Allowed, 200),
            (Outcome::Forbidden, 403),
            (Outcome::Allowed, 200),
            (Outcome::InvalidRequest, 400),
            (Outcome::Forbidden, 403),
        ]
    );
    assert!(answer.results[3].reason.contains("must start with `/`"));

    let too_many = proto::BatchCheckRequest {
        authorization: String::new(),
        targets: vec![tool("x"); 1001],
        ..Default::default()
    };
    assert_eq!(client.batch_check(too_many).await.unwrap_err().code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn introspect_resolves_auth_info_or_says_why_not() {
    let server = TestServer::demo().await;
    let mut client = server.authorizer().await;
    let introspect = |authorization: &str| {
        let request = proto::IntrospectRequest { authorization: authorization.into() };
        let mut client = client.clone();
        async move { client.introspect(request).await.unwrap().into_inner() }
    };
    let active = introspect("ApiKey api-key-789").await;
    assert!(active.active);
    let auth = active.auth_info.unwrap();
    assert_eq!(
        (auth.subject.as_str(), auth.roles.as_slice()),
        ("metrics-service", &["service".to_owned()][..])
    );

    let invalid = introspect("Bearer invalid-token").await;
    assert!(!invalid.active && invalid.auth_info.is_none());
    assert_eq!(invalid.reason, "unknown Bearer credential");
    assert_eq!(invalid.www_authenticate, INVALID_TOKEN);

    let none = introspect("").await;
    assert!(!none.active);
    assert_eq!(none.www_authenticate, NO_ERROR_CHALLENGE);
    let _ = client.introspect(proto::IntrospectRequest::default()).await.unwrap();
}

#[tokio::test]
async fn hostile_templates_and_structures_are_invalid_arguments_and_the_server_keeps_answering() {
    let server = TestServer::demo().await;
    let mut client = server.authorizer().await;
    // 26 parameters made matchit panic and reset the stream.
    let template: String = (0..26).map(|index| format!("/{{p{index}}}")).collect();
    let path: String = (0..26).map(|index| format!("/v{index}")).collect();
    let target = proto::Target {
        kind: Some(proto::target::Kind::Route(proto::Route { method: "GET".into(), path, template })),
    };
    let error = client.check(common::check_request("", target)).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument, "{error:?}");
    // A context nested past the cap.
    let mut value = prost_types::Value { kind: Some(prost_types::value::Kind::BoolValue(true)) };
    for _ in 0..40 {
        let list = prost_types::ListValue { values: vec![value] };
        value = prost_types::Value { kind: Some(prost_types::value::Kind::ListValue(list)) };
    }
    let mut request = common::check_request("", route("GET", "/public/info"));
    request.context = Some(prost_types::Struct { fields: [("deep".to_owned(), value)].into() });
    let error = client.check(request).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument, "{error:?}");
    assert!(error.message().contains("nest"), "{}", error.message());
    // The same connection still decides.
    assert_eq!(check(&mut client, "", route("GET", "/public/info")).await.outcome(), Outcome::Allowed);
}
