//! The `cedargate` binary: the policy author's `check`, the hashing helpers, config errors,
//! and a real `serve` process driven by signals.

// Test code: a failed set-up step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use cedargate::api::proto::authorizer_client::AuthorizerClient;
use cedargate::api::proto::Outcome;
use cedargate::model::SecretDigest;
use common::served::Served;
use common::{check, route};
use serde_json::Value;

fn cedargate(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cedargate"))
        .args(args)
        .env_remove("CEDARGATE_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

#[test]
fn check_prints_the_decision_and_exits_by_outcome() {
    let table: [(&[&str], i32, &str, &str); 6] = [
        (
            &["--authorization", "Bearer user-token-123", "--route", "GET /user/profile"],
            0,
            "OUTCOME_ALLOWED",
            "user-routes",
        ),
        (
            &["--authorization", "Bearer user-token-123", "--route", "GET /admin/users"],
            1,
            "OUTCOME_FORBIDDEN",
            "admin-routes-require-admin",
        ),
        (&["--route", "GET /user/profile"], 1, "OUTCOME_UNAUTHENTICATED", "user-routes-require-user"),
        (&["--route", "GET /public/info"], 0, "OUTCOME_ALLOWED", "public-routes"),
        (
            &["--authorization", "ApiKey api-key-789", "--tool", "GET_/service/metrics"],
            0,
            "OUTCOME_ALLOWED",
            "service-routes",
        ),
        (
            &["--authorization", "Bearer admin-token-456", "--tool", "search", "--arguments", "{\"q\": 1}"],
            0,
            "OUTCOME_ALLOWED",
            "admin-full-access",
        ),
    ];
    for (args, code, outcome, policy) in table {
        let output = cedargate(&[&["check"], args].concat(), None);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        let decision: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(decision["outcome"], outcome, "{args:?}");
        assert_eq!(decision["policyIds"][0], policy, "{args:?}");
    }
}

#[test]
fn check_refuses_bad_input_with_exit_code_2() {
    let table: [&[&str]; 3] = [
        &["check", "--route", "GET"],
        &["check", "--tool", "x", "--arguments", "not json"],
        &["check", "--route", "GET no-slash"],
    ];
    for args in table {
        let output = cedargate(args, None);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(!output.stderr.is_empty());
    }
}

#[test]
fn hash_key_prints_the_sha256_the_config_expects() {
    let from_stdin = cedargate(&["hash-key"], Some("api-key-789\n"));
    let expected = SecretDigest::of(b"api-key-789").to_hex();
    assert_eq!(String::from_utf8_lossy(&from_stdin.stdout).trim(), expected);
    let from_argument = cedargate(&["hash-key", "api-key-789"], None);
    assert_eq!(String::from_utf8_lossy(&from_argument.stdout).trim(), expected);
    assert_eq!(cedargate(&["hash-key"], Some("")).status.code(), Some(2));
}

#[test]
fn hash_password_prints_a_verifiable_argon2id_hash() {
    use argon2::{Argon2, PasswordHash, PasswordVerifier};
    let output = cedargate(&["hash-password"], Some("correct horse\n"));
    assert!(output.status.success());
    let hash = String::from_utf8(output.stdout).unwrap();
    let parsed = PasswordHash::new(hash.trim()).unwrap();
    assert_eq!(parsed.algorithm.as_str(), "argon2id");
    assert!(Argon2::default().verify_password(b"correct horse", &parsed).is_ok());
    assert!(Argon2::default().verify_password(b"wrong", &parsed).is_err());
}

#[test]
fn a_bad_config_fails_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "listen:\n  grpc: 127.0.0.1:0\nsessions:\n  acess_ttl: 1h\n").unwrap();
    let output = cedargate(&["--config", path.to_str().unwrap(), "serve"], None);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("{}:4:", path.display())), "{stderr}");
    assert!(stderr.contains("acess_ttl"), "{stderr}");
}

#[test]
fn an_invalid_policy_stops_the_binary_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("schema.cedarschema"), include_str!("../policies/schema.cedarschema"))
        .unwrap();
    std::fs::write(
        dir.path().join("bad.cedar"),
        "permit (principal, action, resource)
when { context.nope };
",
    )
    .unwrap();
    let config = dir.path().join("cedargate.yaml");
    std::fs::write(&config, "listen:\n  grpc: 127.0.0.1:0\n  http: 127.0.0.1:0\npolicies:\n  dir: .\n")
        .unwrap();
    let output = cedargate(&["--config", config.to_str().unwrap()], None);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.cedar:2:"), "{stderr}");
    assert!(stderr.contains("nope"), "{stderr}");
}

// Multi-threaded: the test blocks on log lines while the client's connection task must keep
// running to see the server's GOAWAY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_process_logs_fingerprints_reloads_on_sighup_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("schema.cedarschema"), include_str!("../policies/schema.cedarschema"))
        .unwrap();
    std::fs::write(
        dir.path().join("rules.cedar"),
        "@id(\"users\") permit (principal in Role::\"user\", action, resource);",
    )
    .unwrap();
    let config = dir.path().join("cedargate.yaml");
    let digest = SecretDigest::of(b"tok-alpha").to_hex();
    // Not watched: the reload below must be SIGHUP's.
    std::fs::write(
        &config,
        format!(
            "listen:\n  grpc: 127.0.0.1:0\n  http: 127.0.0.1:0\npolicies:\n  dir: .\n  watch: false\ncredentials:\n  static_tokens:\n    - sha256: {digest}\n      subject: alpha\n      roles: [user]\n"
        ),
    )
    .unwrap();

    let served = Served::start(&config);
    let mut log = Vec::new();
    let serving = served.wait_for(|event| event["message"] == "cedargate serving", &mut log);
    let grpc = serving["grpc"].as_str().unwrap().to_owned();
    let mut client = AuthorizerClient::connect(format!("http://{grpc}")).await.unwrap();

    let allowed = check(&mut client, "Bearer tok-alpha", route("GET", "/anything")).await;
    assert_eq!(allowed.outcome(), Outcome::Allowed);
    let decision = served.wait_for(|event| event["decisionId"] == allowed.decision_id.as_str(), &mut log);
    assert_eq!(decision["event"], "cedargate.decision");
    assert_eq!(decision["credential"]["fingerprint"], allowed.credential_fingerprint.as_str());
    assert_eq!(decision["authInfo"]["subject"], "alpha");

    std::fs::write(
        dir.path().join("rules.cedar"),
        "@id(\"nobody\") @reason(\"maintenance\") forbid (principal, action, resource);",
    )
    .unwrap();
    served.signal("HUP");
    served.wait_for(|event| event["message"] == "policies reloaded", &mut log);
    let denied = check(&mut client, "Bearer tok-alpha", route("GET", "/anything")).await;
    assert_eq!((denied.outcome(), denied.reason.as_str()), (Outcome::Forbidden, "maintenance"));

    served.signal("TERM");
    served.wait_for(|event| event["message"] == "cedargate stopped", &mut log);
    let mut served = served;
    let status = served.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    while let Ok(line) = served.lines.recv_timeout(Duration::from_secs(1)) {
        log.push(line);
    }
    let all = log.join("\n");
    assert!(!all.contains("tok-alpha"), "a raw credential reached the log:\n{all}");
}

/// `cedargate init` writes a config that loads, and every `Try:` command it prints (but the
/// last, which serves on fixed ports) does what its comment says when run as printed.
#[test]
fn init_writes_a_starting_config_whose_printed_commands_work() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("new");
    let output = cedargate(&["init", target.to_str().unwrap()], None);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed = String::from_utf8(output.stdout).unwrap();
    let token = printed.lines().map(str::trim).find(|line| line.starts_with("cgdev_")).expect("a token line");
    let config = std::fs::read_to_string(target.join("cedargate.yaml")).unwrap();
    assert!(!config.contains(token), "the token itself is not stored");

    let tries: Vec<&str> =
        printed.lines().map(str::trim).filter(|line| line.starts_with("cedargate check ")).collect();
    assert_eq!(tries.len(), 3, "{printed}");
    for line in tries {
        let (command, expected) = line.split_once('#').unwrap();
        let output = Command::new("sh")
            .args(["-c", &format!("\"$CEDARGATE\" {}", command.trim().trim_start_matches("cedargate "))])
            .env("CEDARGATE", env!("CARGO_BIN_EXE_cedargate"))
            .output()
            .unwrap();
        let decision: Value =
            serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("{line}: {output:?}"));
        match expected.trim().split([':', ' ']).next().unwrap() {
            "allowed" => {
                assert_eq!(output.status.code(), Some(0), "{line}: {decision}");
                assert_eq!(decision["outcome"], "OUTCOME_ALLOWED", "{line}");
            }
            "401" => {
                assert_eq!(output.status.code(), Some(1), "{line}: {decision}");
                assert_eq!(decision["httpStatus"], 401, "{line}");
            }
            other => panic!("{line}: no expectation `{other}`"),
        }
    }

    let again = cedargate(&["init", target.to_str().unwrap()], None);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(
        std::fs::read_to_string(target.join("cedargate.yaml")).unwrap(),
        config,
        "nothing overwritten"
    );
}

#[test]
fn a_missing_config_says_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("conf/cedargate.yaml");
    let output = cedargate(&["--config", missing.to_str().unwrap(), "check", "--route", "GET /"], None);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("cedargate init {}", dir.path().join("conf").display())), "{stderr}");
    assert!(!stderr.contains("os error"), "{stderr}");
}

#[test]
fn policy_schema_prints_a_schema_the_demo_policies_validate_against() {
    let output = cedargate(&["policy", "schema"], None);
    assert!(output.status.success());
    let schema = String::from_utf8(output.stdout).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("schema.cedarschema"), &schema).unwrap();
    for file in ["routes.cedar", "mcp.cedar"] {
        std::fs::copy(format!("policies/{file}"), dir.path().join(file)).unwrap();
    }
    let sources = cedargate::policy::PolicySources::from_dir(dir.path()).unwrap();
    cedargate::policy::PolicyEngine::new(&sources).unwrap();
}

/// A `@shadow` policy never changes a decision; `check` shows what it would have decided.
#[test]
fn check_reports_what_a_shadow_policy_would_change() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("schema.cedarschema"), cedargate::policy::SCHEMA).unwrap();
    std::fs::write(
        dir.path().join("p.cedar"),
        r#"@id("open") permit (principal, action == Action::"GET", resource is Route);
@id("soon-signed-in-only") @shadow @reason("Will need a credential")
forbid (principal is Anonymous, action, resource is Route);
"#,
    )
    .unwrap();
    let config = dir.path().join("cedargate.yaml");
    std::fs::write(
        &config,
        "policies:\n  dir: .\ncredentials:\n  static_tokens:\n    - { value: user-token-123, subject: u }\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();

    let anonymous = cedargate(&["--config", config, "check", "--route", "GET /x"], None);
    assert_eq!(anonymous.status.code(), Some(0), "the shadow forbid is not enforced");
    let decision: Value = serde_json::from_slice(&anonymous.stdout).unwrap();
    assert_eq!(decision["outcome"], "OUTCOME_ALLOWED");
    assert_eq!(decision["policyIds"], serde_json::json!(["open"]));
    assert_eq!(
        decision["shadow"],
        serde_json::json!({
            "outcome": "OUTCOME_UNAUTHENTICATED",
            "policyIds": ["soon-signed-in-only"],
            "reason": "Will need a credential"
        })
    );
    let signed_in = cedargate(
        &["--config", config, "check", "--authorization", "Bearer user-token-123", "--route", "GET /x"],
        None,
    );
    let decision: Value = serde_json::from_slice(&signed_in.stdout).unwrap();
    assert_eq!(decision["outcome"], "OUTCOME_ALLOWED", "{decision}");
    assert!(decision.get("shadow").is_none(), "no difference, no shadow: {decision}");
}

#[test]
fn an_otlp_protocol_it_cannot_speak_stops_the_server_naming_the_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_cedargate"))
        .args(["--log-format", "json"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        .env_remove("CEDARGATE_CONFIG")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line: serde_json::Value = serde_json::from_str(stderr.lines().last().unwrap()).unwrap();
    assert_eq!(line["level"], "ERROR", "{stderr}");
    assert!(
        line["message"].as_str().unwrap().contains("OTEL_EXPORTER_OTLP_PROTOCOL `http/json`"),
        "{stderr}"
    );
}
