use super::*;
use crate::config::Config;
use crate::model::{McpRequest, RouteRequest, ToolCall};
use crate::App;

fn demo() -> App {
    App::build(Config::demo().unwrap()).unwrap()
}

fn route(method: &str, path: &str) -> Target {
    Target::Route(RouteRequest { method: method.into(), path: path.into(), template: None })
}

fn tool(name: &str) -> Target {
    Target::Tool(ToolCall { name: name.into(), ..Default::default() })
}

#[tokio::test]
async fn a_route_generated_tool_gets_exactly_its_routes_decision() {
    let app = demo();
    let engine = app.engine();
    let session = app
        .sessions()
        .login("alice", &crate::model::Secret::new("password123"), None)
        .await
        .unwrap()
        .access_token;
    let session_header = format!("Bearer {}", session.expose());
    let credentials = [
        "",
        "Bearer user-token-123",
        "Bearer admin-token-456",
        "ApiKey api-key-789",
        "Bearer invalid-token",
        "Basic abc",
        session_header.as_str(),
    ];
    let routes =
        ["/user/profile", "/user/data", "/admin/users", "/service/metrics", "/public/info", "/unknown"];
    for authorization in credentials {
        for path in routes {
            for method in ["GET", "POST", "DELETE"] {
                let by_route = engine
                    .check(Wire::Grpc, authorization, &route(method, path), &Extra::new())
                    .await
                    .unwrap();
                let by_tool = engine
                    .check(Wire::Grpc, authorization, &tool(&format!("{method}_{path}")), &Extra::new())
                    .await
                    .unwrap();
                let shape = |d: &Decision| {
                    (d.outcome, d.policy_ids.clone(), d.reason.clone(), d.www_authenticate.clone())
                };
                assert_eq!(shape(&by_route), shape(&by_tool), "{authorization:?} {method} {path}");
            }
        }
    }
}

#[tokio::test]
async fn challenges_follow_rfc_6750() {
    let app = demo();
    let engine = app.engine();
    let check = |authorization: &'static str, path: &'static str| async move {
        engine.check(Wire::Grpc, authorization, &route("GET", path), &Extra::new()).await.unwrap()
    };
    let anonymous = check("", "/user/profile").await;
    assert_eq!(anonymous.outcome, Outcome::Unauthenticated);
    assert_eq!(anonymous.www_authenticate.as_deref(), Some("Bearer realm=\"cedargate\""));

    let invalid = check("Bearer invalid-token", "/public/info").await;
    assert_eq!(
        invalid.outcome,
        Outcome::Unauthenticated,
        "an invalid token is refused even on a public route"
    );
    assert_eq!(
        invalid.www_authenticate.as_deref(),
        Some("Bearer realm=\"cedargate\", error=\"invalid_token\", error_description=\"unknown Bearer credential\"")
    );

    let bad_key = check("ApiKey nope", "/service/metrics").await;
    assert!(bad_key
        .www_authenticate
        .unwrap()
        .starts_with("ApiKey realm=\"cedargate\", error=\"invalid_token\""));

    let forbidden = check("Bearer user-token-123", "/admin/users").await;
    assert_eq!((forbidden.outcome, forbidden.reason.as_str()), (Outcome::Forbidden, "Requires admin role"));
    assert_eq!(forbidden.www_authenticate, None, "a role denial has no challenge that would help");

    let allowed = check("Bearer admin-token-456", "/admin/users").await;
    assert!(allowed.allowed() && allowed.www_authenticate.is_none());
}

#[tokio::test]
async fn malformed_credentials_are_unauthenticated_with_a_precise_reason() {
    let app = demo();
    let oversized = format!("Bearer {}", "a".repeat(9000));
    let table = [
        ("Basic dXNlcjpwYXNz", "unsupported authorization scheme: send `Bearer <token>` or `ApiKey <key>`"),
        ("Bearer", "empty credential after `Bearer`"),
        ("Bearer a\u{7}b", "authorization value contains a control or non-ASCII character"),
        (oversized.as_str(), "authorization value exceeds 8192 bytes"),
        ("Bearer session-notreal", "session is unknown, expired or revoked"),
    ];
    for (authorization, reason) in table {
        let decision = app
            .engine()
            .check(Wire::Grpc, authorization, &route("GET", "/public/info"), &Extra::new())
            .await
            .unwrap();
        assert_eq!(decision.outcome, Outcome::Unauthenticated, "{reason}");
        assert_eq!(decision.reason, reason);
        assert!(decision.credential_fingerprint.is_some());
        assert!(!decision.www_authenticate.unwrap().contains("session-notreal"));
    }
}

#[tokio::test]
async fn malformed_targets_are_errors_not_decisions() {
    let app = demo();
    let engine = app.engine();
    let table = [
        route("G ET", "/user/profile"),
        route("GET", "user/profile"),
        route("GET", "/public/../admin/users"),
        tool(""),
        tool("GET_/users/{id}"),
    ];
    for target in table {
        assert!(
            engine.check(Wire::Grpc, "Bearer admin-token-456", &target, &Extra::new()).await.is_err(),
            "{target:?}"
        );
    }
    assert!(engine.check_batch_size(1000).is_ok());
    assert_eq!(engine.check_batch_size(1001), Err(TargetError::TooMany { count: 1001, max: 1000 }));
}

#[tokio::test]
async fn one_authentication_serves_a_batch() {
    let app = demo();
    let engine = app.engine();
    let authentication = engine.authenticate("Bearer user-token-123").await;
    let answers: Vec<bool> = ["GET_/user/profile", "GET_/admin/users", "GET_/public/info", "search"]
        .iter()
        .map(|name| {
            engine
                .check_authenticated(Call::now(Wire::Grpc), &authentication, &tool(name), &Extra::new())
                .unwrap()
                .allowed()
        })
        .collect();
    assert_eq!(answers, [true, false, true, false]);
}

#[test]
fn quoted_strings_escape_quotes_and_drop_controls() {
    assert_eq!(quoted_string("a\"b\\c\nd"), "a\\\"b\\\\cd");
}

#[tokio::test]
async fn a_scope_denial_carries_an_insufficient_scope_challenge() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("schema.cedarschema"), include_str!("../../policies/schema.cedarschema"))
        .unwrap();
    std::fs::write(
        dir.path().join("tools.cedar"),
        r#"@id("tools") permit (principal is User, action == Action::"call", resource is Tool);
           @id("reports-need-scope") @reason("Requires the reports:read scope") @scopes("reports:read")
           forbid (principal, action == Action::"call", resource == Tool::"generate_report")
           unless { context.scopes.contains("reports:read") };"#,
    )
    .unwrap();
    let token = |value: &str, scopes: &str| {
        format!("    - value: {value}\n      subject: {value}\n      scopes: [{scopes}]\n")
    };
    let text = format!(
        "policies:\n  dir: {}\ncredentials:\n  static_tokens:\n{}{}",
        dir.path().display(),
        token("reader", "reports:read"),
        token("plain", "")
    );
    let app = App::build(Config::parse("scopes.yaml", &text).unwrap()).unwrap();
    let report = tool("generate_report");
    let allowed = app.engine().check(Wire::Grpc, "Bearer reader", &report, &Extra::new()).await.unwrap();
    assert!(allowed.allowed());
    let denied = app.engine().check(Wire::Grpc, "Bearer plain", &report, &Extra::new()).await.unwrap();
    assert_eq!(denied.outcome, Outcome::Forbidden);
    assert_eq!(
        denied.www_authenticate.as_deref(),
        Some(
            "Bearer realm=\"cedargate\", error=\"insufficient_scope\", \
             error_description=\"Requires the reports:read scope\", scope=\"reports:read\""
        )
    );
    assert_eq!(
        (denied.error_code(), denied.required_scopes.as_slice()),
        ("insufficient_scope", &["reports:read".to_owned()][..])
    );
    assert_eq!(denied.refusal(), Some(crate::model::Refusal::Forbidden));
    assert!(allowed.required_scopes.is_empty() && allowed.refusal().is_none());
}

#[tokio::test]
async fn a_frozen_clock_decides_expiry_and_context_now() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("schema.cedarschema"), crate::policy::SCHEMA).unwrap();
    std::fs::write(
        dir.path().join("clock.cedar"),
        "permit (principal, action, resource) when { context.now < 2000000000 };",
    )
    .unwrap();
    let text = format!(
        "policies:\n  dir: {}\ncredentials:\n  static_tokens:\n    - value: expiring\n      subject: s\n      \
         expires_at: 2030-01-01T00:00:00Z\n",
        dir.path().display()
    );
    let app = App::build(Config::parse("clock.yaml", &text).unwrap()).unwrap();
    let engine = app.engine();
    let before = 1_700_000_000;
    let expiry = 1_893_456_000; // 2030-01-01T00:00:00Z
    let authenticated = engine.authenticate_at("Bearer expiring", before).await;
    assert!(matches!(authenticated, Authentication::Authenticated { .. }));
    let target = route("GET", "/x");
    let at = |now| engine.check_authenticated_at(&authenticated, &target, &Extra::new(), now).unwrap();
    assert_eq!(at(before).outcome, Outcome::Allowed);
    assert_eq!(at(2_000_000_000).outcome, Outcome::Forbidden, "context.now is the frozen time");
    let expired = engine.authenticate_at("Bearer expiring", expiry).await;
    assert!(
        matches!(expired, Authentication::Failed { error: CredentialError::Expired, .. }),
        "expiry is checked at the frozen time: {expired:?}"
    );
}

/// The decision records an app with `decision_log` writes for `checks`, read back from its file.
async fn records(
    configure: impl FnOnce(&mut crate::config::DecisionLogConfig),
    checks: &[(&str, Target)],
) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let mut config = Config::demo().unwrap();
    config.decision_log.to = crate::telemetry::decision_log::Destination::File;
    config.decision_log.path = Some(path.clone());
    configure(&mut config.decision_log);
    let app = App::build(config).unwrap();
    for (authorization, target) in checks {
        app.engine().check(Wire::EnvoyHttp, authorization, target, &Extra::new()).await.unwrap();
    }
    // Dropping the app drops the log, whose writer flushes before it ends.
    drop(app);
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

#[tokio::test]
async fn every_decision_has_one_record_in_the_documented_shape() {
    let checks = [
        ("Bearer user-token-123", route("GET", "/user/profile")),
        ("Bearer user-token-123", tool("delete_file")),
        ("", route("GET", "/user/profile")),
        ("Bearer not-a-token", route("GET", "/user/profile")),
    ];
    let records = records(|_| {}, &checks).await;
    assert_eq!(records.len(), 4, "{records:#?}");
    let allowed = &records[0];
    assert_eq!(allowed["event"], "cedargate.decision");
    assert_eq!(allowed["version"], 1);
    assert_eq!(allowed["wire"], "envoy_http");
    assert_eq!(allowed["outcome"], "OUTCOME_ALLOWED");
    assert_eq!(allowed["httpStatus"], 200);
    assert_eq!(
        allowed["target"],
        serde_json::json!({"kind": "route", "method": "GET", "path": "/user/profile"})
    );
    assert_eq!(allowed["credential"]["state"], "resolved");
    assert!(!allowed["credential"]["fingerprint"].as_str().unwrap().is_empty());
    assert_eq!(allowed["authInfo"]["subject"], "demo-user");
    assert_eq!(allowed["authInfo"]["credentialKind"], "static");
    assert!(!allowed["policyIds"].as_array().unwrap().is_empty());
    assert_eq!(allowed["policyRevision"].as_str().unwrap().len(), 12);
    assert!(allowed["durationSeconds"].as_f64().unwrap() > 0.0);
    assert!(allowed["evaluatedAt"].as_i64().unwrap() > 1_700_000_000);
    assert!(allowed["time"].as_str().unwrap().ends_with('Z'));
    let forbidden = &records[1];
    assert_eq!(forbidden["outcome"], "OUTCOME_FORBIDDEN");
    assert_eq!(forbidden["target"]["kind"], "tool");
    assert_eq!(forbidden["target"]["name"], "delete_file");
    let anonymous = &records[2];
    assert_eq!(anonymous["credential"], serde_json::json!({"state": "none"}));
    assert!(anonymous.get("authInfo").is_none());
    let refused = &records[3];
    assert_eq!(refused["credential"]["state"], "refused");
    assert_eq!(refused["policyRevision"], "", "policies were not consulted");
    // No trace is being exported here: no ids.
    assert!(allowed.get("traceId").is_none());
    // Never the credential itself.
    let text = serde_json::to_string(&records).unwrap();
    assert!(!text.contains("user-token-123") && !text.contains("not-a-token"), "{text}");
}

#[tokio::test]
async fn denies_are_always_recorded_allows_sampled_and_masked_fields_removed() {
    let checks = [
        ("Bearer user-token-123", route("GET", "/user/profile")),
        ("Bearer user-token-123", tool("delete_file")),
        ("Bearer user-token-123", route("GET", "/user/profile")),
    ];
    let records = records(
        |log| {
            log.allow_sample_rate = 0.0;
            log.mask = vec!["authInfo.subject".into(), "target.name".into(), "facts".into()];
        },
        &checks,
    )
    .await;
    assert_eq!(records.len(), 1, "only the deny: {records:#?}");
    let denied = &records[0];
    assert_eq!(denied["outcome"], "OUTCOME_FORBIDDEN");
    assert!(denied["authInfo"].get("subject").is_none());
    assert_eq!(denied["authInfo"]["credentialKind"], "static");
    assert!(denied["target"].get("name").is_none());
    assert!(denied.get("facts").is_none());
    assert_eq!(denied["masked"], serde_json::json!(["authInfo.subject", "target.name", "facts"]));
}

fn mcp(kind: McpRequest, name: &str) -> Target {
    Target::Mcp(kind, ToolCall { name: name.into(), server: "files".into(), ..Default::default() })
}

#[tokio::test]
async fn a_list_shows_each_caller_what_some_call_of_it_could_do() {
    let app = demo();
    let engine = app.engine();
    let entries = [
        tool("echo"),
        tool("whoami"),
        tool("read_file"),
        tool("delete_file"),
        tool("GET_/user/profile"),
        tool("GET_/admin/users"),
        tool("GET_/public/info"),
        mcp(McpRequest::Prompt, "greeting"),
        mcp(McpRequest::Resource, "file:///readme"),
        // Malformed: never listed.
        tool(""),
        tool("bell\u{7}"),
    ];
    let entries = &entries;
    let listed = |authorization: &'static str| async move {
        let authentication = engine.authenticate(authorization).await;
        engine.could_use(&authentication, entries, &Extra::new())
    };
    let (t, f) = (true, false);
    // The user reads files under /docs only, but some `read_file` call is theirs to make.
    assert_eq!(listed("Bearer user-token-123").await, [t, t, t, f, t, f, t, t, f, f, f]);
    assert_eq!(listed("Bearer admin-token-456").await, [t, t, t, t, t, t, t, t, t, f, f]);
    assert_eq!(listed("").await, [f, f, f, f, f, f, t, f, f, f, f]);
    assert_eq!(listed("Bearer invalid-token").await, [f; 11]);
    // The same calls, made: each listed entry some call reaches, each unlisted one none.
    let user = engine.authenticate("Bearer user-token-123").await;
    let call = |name: &str, path: &str| {
        let arguments = Extra::from([("path".to_owned(), serde_json::Value::from(path))]);
        Target::Tool(ToolCall { name: name.into(), arguments, ..Default::default() })
    };
    let decide = |target: &Target| {
        engine.check_authenticated_at(&user, target, &Extra::new(), unix_now()).unwrap().allowed()
    };
    assert!(decide(&call("read_file", "/docs/a")));
    assert!(!decide(&call("read_file", "/secret/a")));
    assert!(!decide(&call("delete_file", "/docs/a")));
}

#[tokio::test]
async fn a_route_tool_with_parameters_is_listed_by_its_routes_place() {
    let text = format!(
        "{}\nroutes: [\"/user/{{id}}\", \"/admin/{{id}}\", \"/user/files/{{*rest}}\"]\n",
        crate::config::DEMO_YAML.replace("routes: []", "")
    );
    let app = App::build(Config::parse("routes.yaml", &text).unwrap()).unwrap();
    let engine = app.engine();
    let user = engine.authenticate("Bearer user-token-123").await;
    let entries = [tool("GET_/user/{id}"), tool("GET_/admin/{id}"), tool("DELETE_/user/files/{*rest}")];
    assert_eq!(engine.could_use(&user, &entries, &Extra::new()), [true, false, true]);
}
