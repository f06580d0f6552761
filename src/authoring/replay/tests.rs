use std::path::Path;

use serde_json::{json, Value};

use super::*;
use crate::model::{CredentialKind, McpRequest, Outcome, RouteRequest};

/// A valid version 1 record (demo-user allowed `GET /user/profile`), with `changes` applied
/// at the top level (`null` removes a field).
fn record(changes: &Value) -> String {
    let mut record = json!({
        "event": "cedargate.decision",
        "version": 1,
        "time": "2026-12-01T14:54:05.123Z",
        "decisionId": "0193a1b2-0000-7000-8000-000000000001",
        "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
        "spanId": "00f067aa0ba902b7",
        "wire": "grpc",
        "outcome": "OUTCOME_ALLOWED",
        "httpStatus": 200,
        "target": {"kind": "route", "method": "GET", "path": "/user/profile"},
        "credential": {"state": "resolved", "fingerprint": "420d40c543017845"},
        "authInfo": {"subject": "demo-user", "roles": ["user"], "credentialKind": "static", "extra": {}},
        "facts": {},
        "policyIds": ["user-routes"],
        "policyRevision": "3f9a0c1e2b4d",
        "reason": "Users may use the user endpoints",
        "errors": [],
        "evaluatedAt": 1_764_600_845,
        "durationSeconds": 0.000_123
    });
    for (key, value) in changes.as_object().unwrap() {
        if value.is_null() {
            record.as_object_mut().unwrap().remove(key);
        } else {
            record[key] = value.clone();
        }
    }
    record.to_string()
}

fn read(log: &str) -> Result<Vec<LogLine>, AuthoringError> {
    RecordReader::new(log.as_bytes(), "log.jsonl").collect()
}

fn only_record(log: &str) -> DecisionRecord {
    let lines = read(log).unwrap();
    let records: Vec<DecisionRecord> = lines
        .into_iter()
        .filter_map(|line| match line {
            LogLine::Record(record) => Some(*record),
            LogLine::Other => None,
        })
        .collect();
    assert_eq!(records.len(), 1, "{log}");
    records.into_iter().next().unwrap()
}

/// The error reading `log` gives, as displayed.
fn error(log: &str) -> String {
    read(log).expect_err(log).to_string()
}

#[test]
fn a_record_reads_with_every_field_and_fields_it_does_not_know() {
    let record = only_record(&record(&json!({
        "region": "eu-west-1",
        "shadow": {"outcome": "OUTCOME_FORBIDDEN", "policyIds": ["p"], "reason": "r", "later": 1},
        "authInfo": {"subject": "demo-user", "roles": ["user"], "credentialKind": "static",
                     "expiresAt": "1767225600", "clientId": "c", "futureField": true},
        "facts": {"client_ip": "10.0.0.1"},
        "masked": ["credential.fingerprint"]
    })));
    assert_eq!(record.line, 1);
    assert_eq!(record.decision_id, "0193a1b2-0000-7000-8000-000000000001");
    assert_eq!(record.trace_id.as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    assert_eq!(record.outcome, Outcome::Allowed);
    assert_eq!(record.http_status, Some(200));
    assert_eq!(record.credential_state, Some(CredentialState::Resolved));
    assert_eq!(record.evaluated_at, Some(1_764_600_845));
    assert_eq!(record.shadow.as_ref().map(|shadow| shadow.outcome), Some(Outcome::Forbidden));
    let RecordedInput::Request { target, auth_info, facts, evaluated_at } = &record.input else {
        panic!("replayable: {:?}", record.input)
    };
    assert_eq!(
        target,
        &Target::Route(RouteRequest { method: "GET".into(), path: "/user/profile".into(), template: None })
    );
    let auth = auth_info.as_ref().unwrap();
    assert_eq!(
        (auth.subject.as_str(), auth.kind, auth.expires_at),
        ("demo-user", CredentialKind::Static, Some(1_767_225_600))
    );
    assert_eq!(auth.client_id, "c");
    assert_eq!(facts.get("client_ip"), Some(&json!("10.0.0.1")));
    assert_eq!(*evaluated_at, 1_764_600_845);
}

#[test]
fn every_target_kind_reads() {
    for (target, expected) in [
        (
            json!({"kind": "tool", "name": "read_file", "server": "files", "arguments": {"path": "/docs/a", "n": 7}}),
            Target::Tool(ToolCall {
                name: "read_file".into(),
                server: "files".into(),
                arguments: Extra::from([("path".to_owned(), json!("/docs/a")), ("n".to_owned(), json!(7))]),
            }),
        ),
        (
            json!({"kind": "tool", "name": "GET_/user/profile"}),
            Target::Tool(ToolCall { name: "GET_/user/profile".into(), ..ToolCall::default() }),
        ),
        (
            json!({"kind": "prompt", "name": "p"}),
            Target::Mcp(McpRequest::Prompt, ToolCall { name: "p".into(), ..ToolCall::default() }),
        ),
        (
            json!({"kind": "resource", "name": "file:///x", "server": "s"}),
            Target::Mcp(
                McpRequest::Resource,
                ToolCall { name: "file:///x".into(), server: "s".into(), ..ToolCall::default() },
            ),
        ),
        (
            json!({"kind": "method", "name": "tools/list"}),
            Target::Mcp(McpRequest::Method, ToolCall { name: "tools/list".into(), ..ToolCall::default() }),
        ),
        (
            json!({"kind": "route", "method": "GET", "path": "/users/7", "template": "/users/{id}"}),
            Target::Route(RouteRequest {
                method: "GET".into(),
                path: "/users/7".into(),
                template: Some("/users/{id}".into()),
            }),
        ),
    ] {
        let record = only_record(&record(&json!({ "target": target })));
        let RecordedInput::Request { target: read, .. } = record.input else { panic!("{target}") };
        assert_eq!(read, expected, "{target}");
    }
}

#[test]
fn lines_that_are_not_decision_records_are_skipped() {
    let log = [
        r#"{"timestamp":"2026-12-01T14:54:05Z","level":"INFO","fields":{"message":"cedargate serving"},"target":"cedargate::app"}"#,
        "",
        "2026-12-01T14:54:05Z  INFO cedargate: plain text, not JSON",
        r#"{"event":"cedargate.login","version":1}"#,
        "[1, 2]",
        &record(&json!({})),
        "   ",
    ]
    .join("\n");
    let lines = read(&log).unwrap();
    assert_eq!(lines.len(), 7);
    let records: Vec<usize> = lines
        .iter()
        .filter_map(|line| match line {
            LogLine::Record(record) => Some(record.line),
            LogLine::Other => None,
        })
        .collect();
    assert_eq!(records, [6], "only the decision record, on its own line number");
    // Windows line endings too.
    assert_eq!(only_record(&format!("{}\r\n", record(&json!({})))).line, 1);
}

#[test]
fn a_record_of_another_version_is_an_error_naming_the_line() {
    let other = r#"{"level":"INFO"}"#;
    for (version, expected) in [
        (
            json!(2),
            "log.jsonl:2: `version`: format version 2 is not supported (this cedargate reads version 1)",
        ),
        (json!("1"), "log.jsonl:2: `version`: format version \"1\" is not supported"),
        (Value::Null, "log.jsonl:2: `version`: missing"),
    ] {
        let log = format!("{other}\n{}\n", record(&json!({ "version": version })));
        let error = error(&log);
        assert!(error.starts_with(expected), "{error}");
    }
}

#[test]
fn a_bad_field_is_an_error_naming_the_line_and_the_field() {
    for (changes, expected) in [
        (
            json!({"credential": {"state": "maybe"}}),
            "log.jsonl:1: `credential.state`: unknown variant `maybe`",
        ),
        (json!({"outcome": "OUTCOME_MAYBE"}), "log.jsonl:1: `outcome`: unknown variant `OUTCOME_MAYBE`"),
        (json!({"policyIds": "user-routes"}), "log.jsonl:1: `policyIds`: invalid type"),
        (json!({"evaluatedAt": "soon"}), "log.jsonl:1: `evaluatedAt`: invalid type"),
        (json!({"decisionId": null}), "log.jsonl:1: missing field `decisionId`"),
        (
            json!({"target": {"kind": "file", "name": "x"}}),
            "log.jsonl:1: `target.kind`: unknown variant `file`",
        ),
        (
            json!({"target": {"kind": "route", "method": "GET"}}),
            "log.jsonl:1: `target`: missing field `path`",
        ),
        (
            json!({"target": {"kind": "tool", "name": "t", "arguments": []}}),
            "log.jsonl:1: `target`: invalid type",
        ),
        (json!({"target": null}), "log.jsonl:1: `target`: missing"),
        (json!({"facts": null}), "log.jsonl:1: `facts`: missing"),
        (json!({"facts": ["a"]}), "log.jsonl:1: `facts`: invalid type"),
        (json!({"evaluatedAt": null}), "log.jsonl:1: `evaluatedAt`: missing"),
        (json!({"credential": {"fingerprint": "ab"}}), "log.jsonl:1: `credential.state`: missing"),
        (json!({"authInfo": {"subject": "demo-user", "roles": "user"}}), "log.jsonl:1: `authInfo`: `roles`:"),
        (json!({"authInfo": null}), "log.jsonl:1: `authInfo`: missing, and `credential.state` is `resolved`"),
        (
            json!({"credential": {"state": "none"}}),
            "log.jsonl:1: `authInfo`: present, but `credential.state` is `none`",
        ),
    ] {
        let error = error(&record(&changes));
        assert!(error.starts_with(expected), "{changes}: {error}");
    }
}

#[test]
fn a_torn_record_is_an_error_not_another_line() {
    let torn = &record(&json!({}))[..80];
    assert!(torn.contains(r#""event":"cedargate.decision""#));
    let message = error(&format!("{{\"level\":\"INFO\"}}\n{torn}\n"));
    assert!(message.starts_with("log.jsonl:2: a decision record that is not valid JSON: "), "{message}");
    // Spaced the way another serializer might.
    let message = error(&format!("{}\n", r#"{ "event" : "cedargate.decision", "version": 1, "#));
    assert!(message.starts_with("log.jsonl:1: a decision record that is not valid JSON"), "{message}");
}

#[test]
fn the_first_error_ends_the_reading() {
    let log = format!("{}\n{}\n{}\n", record(&json!({})), record(&json!({"version": 9})), record(&json!({})));
    let lines: Vec<_> = RecordReader::new(log.as_bytes(), "log").collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].is_ok());
    assert!(lines[1].is_err());
}

#[test]
fn a_masked_decision_input_makes_the_record_unreplayable_and_says_which() {
    for (changes, expected) in [
        (
            json!({"masked": ["authInfo.subject", "credential.fingerprint"], "authInfo": {"roles": ["user"]}}),
            vec!["authInfo.subject"],
        ),
        (
            json!({"masked": ["target.arguments"], "target": {"kind": "tool", "name": "read_file"}}),
            vec!["target.arguments"],
        ),
        (json!({"masked": ["target"], "target": null}), vec!["target"]),
        (json!({"masked": ["facts.client_ip", "reason"]}), vec!["facts.client_ip"]),
        (json!({"masked": ["credential"], "credential": null}), vec!["credential"]),
    ] {
        let record = only_record(&record(&changes));
        assert_eq!(
            record.input,
            RecordedInput::Masked(expected.iter().map(|path| (*path).to_owned()).collect()),
            "{changes}"
        );
    }
    // Neither the fingerprint nor the reason is a decision input.
    let record =
        only_record(&record(&json!({"masked": ["credential.fingerprint", "reason"], "reason": null})));
    assert!(matches!(record.input, RecordedInput::Request { .. }), "{:?}", record.input);
    assert!(!is_decision_input("targets") && is_decision_input("target.arguments.path"));
}

#[test]
fn a_refused_or_unavailable_credential_is_not_replayed() {
    for state in [CredentialState::Refused, CredentialState::Unavailable] {
        let record = only_record(&record(&json!({
            "credential": {"state": state.as_str(), "fingerprint": "ab12cd34ef56ab12"},
            "authInfo": null,
            "policyIds": [],
            "policyRevision": "",
            "outcome": "OUTCOME_UNAUTHENTICATED",
            "masked": ["authInfo.subject"],
        })));
        assert_eq!(record.input, RecordedInput::NotConsulted(state));
    }
}

#[test]
fn a_line_longer_than_the_bound_is_an_error_naming_it() {
    let mut log = String::from("{}\n");
    log.push_str(&"x".repeat(MAX_LINE_BYTES));
    log.push('\n');
    assert_eq!(read(&log).unwrap().len(), 2, "a line of exactly the bound is read");
    log.push_str(&"y".repeat(MAX_LINE_BYTES + 1));
    log.push_str("\n{}\n");
    assert_eq!(error(&log), format!("log.jsonl:3: the line is longer than {MAX_LINE_BYTES} bytes"));
    // Also without a line ending.
    let message = error(&"z".repeat(MAX_LINE_BYTES + 1));
    assert!(message.starts_with("log.jsonl:1: the line is longer"), "{message}");
}

fn options(dir: &Path) -> ReplayOptions {
    ReplayOptions { dir: dir.to_owned(), config: Config::demo().unwrap(), style: ReportStyle::OneLine }
}

fn shipped() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

#[test]
fn a_target_that_no_longer_normalizes_is_a_change_to_malformed() {
    let log = [
        record(&json!({})),
        record(&json!({"target": {"kind": "route", "method": "GET", "path": "/user//profile"}, "decisionId": "d-2"})),
    ]
    .join("\n");
    let report = replay(options(&shipped()), log.as_bytes(), "log").unwrap();
    assert_eq!((report.records, report.redecided, report.changed), (2, 2, 1));
    let change = &report.changes[0];
    assert_eq!((change.line, change.decision_id.as_str()), (2, "d-2"));
    assert_eq!(change.from.outcome, "OUTCOME_ALLOWED");
    assert_eq!(change.to.outcome, "OUTCOME_INVALID_REQUEST");
    assert!(change.to.reason.starts_with("now refused as malformed: "), "{}", change.to.reason);
    assert_eq!(change.policies_removed, ["user-routes"]);
    assert_eq!(report.exit_code(), 1);
    let text = report.render(ReplayFormat::Text).unwrap();
    assert!(
        text.contains("allowed [user-routes] -> refused as malformed []: now refused as malformed"),
        "{text}"
    );
}

#[test]
fn a_decision_is_made_for_the_recorded_identity() {
    // An identity no config knows (the credential is never resolved again), anonymous callers,
    // and a decision whose recorded policies were other ones than the candidate's.
    let log = [
        record(&json!({"authInfo": {"subject": "someone-else", "roles": ["admin"], "credentialKind": "jwt"},
                       "target": {"kind": "route", "method": "GET", "path": "/admin/users"},
                       "policyIds": ["admin-full-access"]})),
        record(&json!({"credential": {"state": "none"}, "authInfo": null,
                       "target": {"kind": "route", "method": "GET", "path": "/user/profile"},
                       "outcome": "OUTCOME_UNAUTHENTICATED", "policyIds": ["user-routes-require-user"]})),
        record(&json!({"credential": {"state": "none"}, "authInfo": null,
                       "target": {"kind": "route", "method": "GET", "path": "/public/info"},
                       "policyIds": ["public-routes", "an-old-policy"]})),
    ]
    .join("\n");
    let report = replay(options(&shipped()), log.as_bytes(), "log").unwrap();
    assert_eq!((report.redecided, report.changed, report.policies_differ), (3, 0, 1), "{report:?}");
    let differ = &report.policy_changes[0];
    assert_eq!(differ.line, 3);
    assert_eq!(differ.subject, None);
    assert_eq!(differ.policies_removed, ["an-old-policy"]);
    assert_eq!(report.exit_code(), 0);
}

#[test]
fn the_policies_see_the_recorded_clock() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(shipped().join("schema.cedarschema"), dir.path().join("schema.cedarschema")).unwrap();
    std::fs::write(
        dir.path().join("policies.cedar"),
        "@id(\"until-2027\")\npermit (principal, action, resource) when { context.now < 1798761600 };\n",
    )
    .unwrap();
    let allowed = |at: i64| record(&json!({"evaluatedAt": at, "policyIds": ["until-2027"]}));
    let log = [allowed(1_798_761_599), allowed(1_798_761_600)].join("\n");
    let report = replay(options(dir.path()), log.as_bytes(), "log").unwrap();
    assert_eq!(report.redecided, 2);
    let lines: Vec<(usize, &str)> =
        report.changes.iter().map(|change| (change.line, change.to.outcome)).collect();
    assert_eq!(lines, [(2, "OUTCOME_FORBIDDEN")], "only the record made at 2027");
}

#[test]
fn a_log_without_records_or_with_invalid_policies_is_an_error() {
    let error = replay(options(&shipped()), "{\"level\":\"INFO\"}\nhello\n".as_bytes(), "log").unwrap_err();
    assert!(matches!(error, AuthoringError::NoRecords { lines: 2, .. }), "{error}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(shipped().join("schema.cedarschema"), dir.path().join("schema.cedarschema")).unwrap();
    std::fs::write(
        dir.path().join("bad.cedar"),
        "@id(\"x\")\npermit (principal, action, resource) when { nope };\n",
    )
    .unwrap();
    let error = replay(options(dir.path()), record(&json!({})).as_bytes(), "log").unwrap_err();
    let AuthoringError::InvalidPolicies { errors, findings, .. } = &error else { panic!("{error}") };
    assert!(*errors >= 1);
    assert!(findings.iter().any(|finding| finding.contains("bad.cedar:2")), "{findings:?}");
}

#[test]
fn the_report_is_lower_camel_case_json_and_caps_the_text_listing() {
    let line = record(&json!({"outcome": "OUTCOME_FORBIDDEN", "policyIds": []}));
    let log = vec![line; TEXT_LISTING_CAP + 3].join("\n");
    let report = replay(options(&shipped()), log.as_bytes(), "log").unwrap();
    assert_eq!(report.changed, TEXT_LISTING_CAP + 3);
    let json: Value = serde_json::from_str(&report.render(ReplayFormat::Json).unwrap()).unwrap();
    assert_eq!(json["changes"].as_array().unwrap().len(), TEXT_LISTING_CAP + 3, "JSON has all");
    assert_eq!(json["policiesDiffer"], 0);
    assert_eq!(json["recordedRevisions"]["3f9a0c1e2b4d"], TEXT_LISTING_CAP + 3);
    let change = &json["changes"][0];
    assert_eq!(change["decisionId"], "0193a1b2-0000-7000-8000-000000000001");
    assert_eq!(change["from"]["outcome"], "OUTCOME_FORBIDDEN");
    assert_eq!(change["to"]["policyIds"], json!(["user-routes"]));
    assert_eq!(change["policiesAdded"], json!(["user-routes"]));
    assert_eq!(change["target"]["path"], "/user/profile");
    let text = report.render(ReplayFormat::Text).unwrap();
    assert_eq!(text.matches("  line ").count(), TEXT_LISTING_CAP);
    assert!(text.contains("  and 3 more (--format json lists all)"), "{text}");
}
