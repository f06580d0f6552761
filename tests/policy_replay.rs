//! `cedargate policy replay`, the binary, on a recorded decision log of the demo
//! (`tests/fixtures/decisions-demo.jsonl`: the demo's identities and tools over every wire,
//! other log lines, a refused and an unavailable credential, a masked record and a field of a
//! newer minor version): the shipped policies change nothing; a copy with one permit removed
//! and one forbid added changes exactly the decisions they decide; errors exit 2 naming the
//! line, the field or the finding.

// Test code: a failed set-up step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn fixture() -> PathBuf {
    Path::new(ROOT).join("tests/fixtures/decisions-demo.jsonl")
}

fn cedargate(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cedargate"));
    command.args(args).current_dir(ROOT).env_remove("CEDARGATE_CONFIG").env("NO_COLOR", "1");
    let Some(input) = stdin else { return command.output().unwrap() };
    let mut child =
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| panic!("{error}: {}", stdout(output)))
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The shipped policies with `public-routes` (a permit) removed and a `no-echo` forbid added.
fn candidate(into: &Path) {
    let shipped = Path::new(ROOT).join("policies");
    std::fs::create_dir_all(into).unwrap();
    for file in ["schema.cedarschema", "mcp.cedar"] {
        std::fs::copy(shipped.join(file), into.join(file)).unwrap();
    }
    let routes = std::fs::read_to_string(shipped.join("routes.cedar")).unwrap();
    let start = routes.find("@id(\"public-routes\")").unwrap();
    let end = routes.find("@id(\"admin-full-access\")").unwrap();
    let changed = format!(
        "{}{}\n@id(\"no-echo\")\n@reason(\"The echo tool is switched off\")\n\
         forbid (principal, action == Action::\"call\", resource is Tool)\nwhen {{ resource.name == \"echo\" }};\n",
        &routes[..start],
        &routes[end..]
    );
    std::fs::write(into.join("routes.cedar"), changed).unwrap();
}

/// Each change as (decision id, from outcome, to outcome, policies added, policies removed).
fn changes(report: &Value, key: &str) -> Vec<(String, String, String, Value, Value)> {
    report[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|change| {
            (
                change["decisionId"].as_str().unwrap().to_owned(),
                change["from"]["outcome"].as_str().unwrap().to_owned(),
                change["to"]["outcome"].as_str().unwrap().to_owned(),
                change["policiesAdded"].clone(),
                change["policiesRemoved"].clone(),
            )
        })
        .collect()
}

fn expected_changes() -> Vec<(String, String, String, Value, Value)> {
    let change = |id: &str, from: &str, to: &str, added: Value, removed: Value| {
        (id.to_owned(), from.to_owned(), to.to_owned(), added, removed)
    };
    vec![
        // Anonymous GET /public/info over forward_auth: no permit left, so a 401.
        change(
            "019add0e-1001-7001-8000-000000000001",
            "OUTCOME_ALLOWED",
            "OUTCOME_UNAUTHENTICATED",
            serde_json::json!([]),
            serde_json::json!(["public-routes"]),
        ),
        // demo-user GET /public/info over gRPC: a 403.
        change(
            "019add0e-1005-7005-8000-000000000005",
            "OUTCOME_ALLOWED",
            "OUTCOME_FORBIDDEN",
            serde_json::json!([]),
            serde_json::json!(["public-routes"]),
        ),
        // alice's echo over Envoy: the new forbid.
        change(
            "019add0e-1009-7009-8000-000000000009",
            "OUTCOME_ALLOWED",
            "OUTCOME_FORBIDDEN",
            serde_json::json!(["no-echo"]),
            serde_json::json!(["user-tools"]),
        ),
    ]
}

#[test]
fn the_shipped_policies_change_no_recorded_decision() {
    let fixture = fixture();
    let output = cedargate(&["policy", "replay", "--log", path(&fixture)], None);
    assert_eq!(output.status.code(), Some(0), "{}{}", stdout(&output), stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("candidate policies: policies (revision "), "the default directory: {text}");
    assert!(
        text.contains(
            "18 records read, 15 re-decided, 3 skipped (1 credential refused; 1 credential backend \
             unavailable; 1 with masked input: authInfo.subject); 2 other lines ignored"
        ),
        "{text}"
    );
    assert!(text.contains("\nno decision would change\n"), "{text}");

    let output =
        cedargate(&["policy", "replay", "--format", "json", "--log", path(&fixture), "policies"], None);
    assert_eq!(output.status.code(), Some(0), "{}{}", stdout(&output), stderr(&output));
    let report = json(&output);
    assert_eq!(report["records"], 18);
    assert_eq!(report["otherLines"], 2);
    assert_eq!(report["redecided"], 15);
    assert_eq!(report["skipped"]["credentialRefused"], 1);
    assert_eq!(report["skipped"]["credentialUnavailable"], 1);
    assert_eq!(report["skipped"]["maskedPaths"]["authInfo.subject"], 1);
    assert_eq!((report["changed"].as_u64(), report["policiesDiffer"].as_u64()), (Some(0), Some(0)));
    // The fixture was recorded under the shipped set.
    let revision = report["policies"]["revision"].as_str().unwrap();
    assert_eq!(report["recordedRevisions"][revision], 16, "{report}");
}

#[test]
fn a_changed_policy_names_every_decision_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    candidate(dir.path());
    let fixture = fixture();
    let output =
        cedargate(&["policy", "replay", "--format", "json", "--log", path(&fixture), path(dir.path())], None);
    assert_eq!(output.status.code(), Some(1), "{}{}", stdout(&output), stderr(&output));
    let report = json(&output);
    assert_eq!(changes(&report, "changes"), expected_changes());
    assert_eq!(report["changed"], 3);
    let echo = &report["changes"][2];
    assert_eq!(echo["line"], 10);
    assert_eq!(echo["wire"], "envoy_grpc");
    assert_eq!(echo["subject"], "alice");
    assert_eq!(
        echo["target"],
        serde_json::json!({"kind": "tool", "name": "echo", "server": "", "arguments": {"text": "hello"}})
    );
    assert_eq!(echo["to"]["reason"], "The echo tool is switched off");
    assert_eq!(report["changes"][0]["subject"], Value::Null, "anonymous");
    // demo-admin keeps GET /public/info, now by admin-full-access alone.
    assert_eq!(
        changes(&report, "policyChanges"),
        [(
            "019add0e-1006-7006-8000-000000000006".to_owned(),
            "OUTCOME_ALLOWED".to_owned(),
            "OUTCOME_ALLOWED".to_owned(),
            serde_json::json!([]),
            serde_json::json!(["public-routes"]),
        )]
    );

    let output = cedargate(&["policy", "replay", "--log", path(&fixture), path(dir.path())], None);
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    for expected in [
        "3 decisions would change; 1 would keep its outcome, determined by other policies",
        "  line 2  019add0e-1001-7001-8000-000000000001  2026-12-01T14:54:12.101Z  forward_auth  route GET /public/info  anonymous\n    allowed [public-routes] -> unauthenticated []: no policy permits this request\n    by: -public-routes\n",
        "  line 10  019add0e-1009-7009-8000-000000000009  2026-12-01T14:55:08.109Z  envoy_grpc  tool echo  subject `alice`\n    allowed [user-tools] -> forbidden [no-echo]: The echo tool is switched off\n    by: +no-echo, -user-tools\n",
        "same outcome, other determining policies:\n  line 7  019add0e-1006-7006-8000-000000000006",
        "    allowed: [admin-full-access, public-routes] -> [admin-full-access]\n",
    ] {
        assert!(text.contains(expected), "{expected}\nnot in:\n{text}");
    }
}

#[test]
fn the_log_reads_from_standard_input_and_the_config_names_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    candidate(&dir.path().join("candidate"));
    let config = dir.path().join("cedargate.yaml");
    std::fs::write(&config, "policies:\n  dir: candidate\n").unwrap();
    let log = std::fs::read(fixture()).unwrap();
    let output = cedargate(
        &["--config", path(&config), "policy", "replay", "--format", "json", "--log", "-"],
        Some(&log),
    );
    assert_eq!(output.status.code(), Some(1), "{}{}", stdout(&output), stderr(&output));
    let report = json(&output);
    assert_eq!(report["log"], "<stdin>");
    assert!(report["policies"]["dir"].as_str().unwrap().ends_with("candidate"), "{report}");
    assert_eq!(changes(&report, "changes"), expected_changes());
}

#[test]
fn errors_exit_2_naming_the_line_the_field_or_the_finding() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = std::fs::read_to_string(fixture()).unwrap();
    let bad_log = dir.path().join("bad.jsonl");
    let mut lines: Vec<String> = fixture.lines().map(str::to_owned).collect();
    lines[4] = lines[4].replace(r#""state":"resolved""#, r#""state":"maybe""#);
    lines[7] = lines[7].replace(r#""version":1"#, r#""version":2"#);
    std::fs::write(&bad_log, lines.join("\n")).unwrap();
    let output = cedargate(&["policy", "replay", "--log", path(&bad_log)], None);
    assert_eq!(output.status.code(), Some(2));
    assert!(stdout(&output).is_empty(), "no report: {}", stdout(&output));
    assert!(
        stderr(&output)
            .contains(&format!("{}:5: `credential.state`: unknown variant `maybe`", bad_log.display())),
        "{}",
        stderr(&output)
    );

    std::fs::write(&bad_log, lines[7..].join("\n")).unwrap();
    let output = cedargate(&["policy", "replay", "--log", path(&bad_log)], None);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains(":1: `version`: format version 2 is not supported"),
        "{}",
        stderr(&output)
    );

    let policies = dir.path().join("policies");
    candidate(&policies);
    std::fs::write(
        policies.join("broken.cedar"),
        "@id(\"broken\")\npermit (principal, action, resource) when { nope };\n",
    )
    .unwrap();
    let fixture_path = self::fixture();
    let output = cedargate(&["policy", "replay", "--log", path(&fixture_path), path(&policies)], None);
    assert_eq!(output.status.code(), Some(2));
    let error = stderr(&output);
    assert!(error.contains("are invalid: 1 errors, 0 warnings"), "{error}");
    assert!(error.contains("broken.cedar:2:"), "the finding with its place: {error}");
    assert!(error.contains("invalid variable: nope"), "{error}");

    let output = cedargate(&["policy", "replay", "--log", path(&dir.path().join("absent.jsonl"))], None);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("cannot read the decision log"), "{}", stderr(&output));

    let output = cedargate(&["policy", "replay", "--log", "-"], Some(b"{\"level\":\"INFO\"}\n"));
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("<stdin>: no decision record"), "{}", stderr(&output));
}

mod common;

/// A log the real server wrote (not a fixture): every record it writes is one replay reads,
/// and a changed policy set changes exactly the decisions it should.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_the_server_recorded_replays_against_a_changed_set() {
    use cedargate::api::proto::Outcome;
    use common::served::Served;

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.jsonl");
    let demo = std::fs::read_to_string(Path::new(ROOT).join("config/demo.yaml"))
        .unwrap()
        .replace("127.0.0.1:50051", "127.0.0.1:0")
        .replace("127.0.0.1:8080", "127.0.0.1:0");
    let config = dir.path().join("cedargate.yaml");
    std::fs::write(&config, format!("{demo}\ndecision_log:\n  to: file\n  path: decisions.jsonl\n")).unwrap();
    let served = Served::start(&config);
    let mut seen = Vec::new();
    let serving = served.wait_for(|event| event["message"] == "cedargate serving", &mut seen);
    let (grpc, http) = (serving["grpc"].as_str().unwrap(), serving["http"].as_str().unwrap());
    let mut client =
        cedargate::api::proto::authorizer_client::AuthorizerClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
    let echo = common::check(&mut client, "Bearer user-token-123", common::tool("echo")).await;
    let public = common::check(&mut client, "", common::route("GET", "/public/info")).await;
    let profile =
        common::check(&mut client, "Bearer user-token-123", common::route("GET", "/user/profile")).await;
    let denied = common::check(&mut client, "Bearer user-token-123", common::tool("delete_file")).await;
    assert_eq!(
        [echo.outcome(), public.outcome(), profile.outcome(), denied.outcome()],
        [Outcome::Allowed, Outcome::Allowed, Outcome::Allowed, Outcome::Forbidden]
    );
    let verify = reqwest::Client::new()
        .get(format!("http://{http}/auth/verify"))
        .header("x-original-method", "GET")
        .header("x-original-uri", "/public/info")
        .send()
        .await
        .unwrap();
    assert_eq!(verify.status(), 200);
    served.signal("TERM");
    served.wait_for(|event| event["message"] == "cedargate stopped", &mut seen);
    drop(served);

    let unchanged =
        cedargate(&["policy", "replay", "--format", "json", "--log", path(&log), "policies"], None);
    assert_eq!(unchanged.status.code(), Some(0), "{}{}", stdout(&unchanged), stderr(&unchanged));
    let report = json(&unchanged);
    assert_eq!((report["records"].as_u64(), report["redecided"].as_u64()), (Some(5), Some(5)), "{report}");

    let candidate_dir = dir.path().join("candidate");
    candidate(&candidate_dir);
    let changed =
        cedargate(&["policy", "replay", "--format", "json", "--log", path(&log), path(&candidate_dir)], None);
    assert_eq!(changed.status.code(), Some(1), "{}{}", stdout(&changed), stderr(&changed));
    let report = json(&changed);
    let mut found: Vec<(String, String, String)> =
        changes(&report, "changes").into_iter().map(|(id, from, to, _, _)| (id, from, to)).collect();
    found.sort();
    let http_id = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|change| change["wire"] == "forward_auth")
        .map(|change| change["decisionId"].as_str().unwrap().to_owned())
        .expect("the /auth/verify decision changes too");
    let mut expected = vec![
        (echo.decision_id.clone(), "OUTCOME_ALLOWED".to_owned(), "OUTCOME_FORBIDDEN".to_owned()),
        (public.decision_id.clone(), "OUTCOME_ALLOWED".to_owned(), "OUTCOME_UNAUTHENTICATED".to_owned()),
        (http_id, "OUTCOME_ALLOWED".to_owned(), "OUTCOME_UNAUTHENTICATED".to_owned()),
    ];
    expected.sort();
    assert_eq!(found, expected, "{report}");
}
