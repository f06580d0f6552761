//! The policy author's commands, run as the real binary: `cedargate policy validate`, `fmt`
//! and `explain`, their output (the stable parts) and exit codes, and `entities.json`.

// Test code: a failed set-up step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const SCHEMA: &str = include_str!("../policies/schema.cedarschema");

fn cedargate(args: &[&str], cwd: Option<&Path>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cedargate"));
    command.args(args).env_remove("CEDARGATE_CONFIG").env("NO_COLOR", "1");
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    command.output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

/// A policy directory with the shipped schema and `files`.
fn policy_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("schema.cedarschema"), SCHEMA).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn shipped() -> tempfile::TempDir {
    policy_dir(&[
        ("routes.cedar", include_str!("../policies/routes.cedar")),
        ("mcp.cedar", include_str!("../policies/mcp.cedar")),
    ])
}

fn path(dir: &tempfile::TempDir) -> &str {
    dir.path().to_str().unwrap()
}

#[test]
fn validate_passes_the_shipped_policies() {
    let dir = shipped();
    let output = cedargate(&["policy", "validate", path(&dir), "--deny-warnings"], None);
    assert_eq!(output.status.code(), Some(0), "{}{}", stdout(&output), stderr(&output));
    assert_eq!(stdout(&output), format!("{}: valid: 12 policies, 0 errors, 0 warnings\n", path(&dir)));
}

#[test]
fn validate_shows_every_error_with_file_line_column_snippet_and_help() {
    let dir = policy_dir(&[
        ("a.cedar", "@id(\"ok\")\npermit (principal, action, resource);\n"),
        ("typo.cedar", "// GETT is no method\n@id(\"typo\")\npermit (principal, action == Action::\"GETT\", resource);\n"),
        ("syntax.cedar", "@id(\"broken\")\npermit (principal, action resource);\n"),
    ]);
    let output = cedargate(&["policy", "validate", path(&dir)], None);
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    let typo = format!("{}/typo.cedar:3:30]", path(&dir));
    let syntax = format!("{}/syntax.cedar:2:", path(&dir));
    for expected in [
        typo.as_str(),
        "unrecognized action `Action::\"GETT\"`",
        "3 │ permit (principal, action == Action::\"GETT\", resource);",
        "help: did you mean `Action::\"GET\"`?",
        syntax.as_str(),
        "2 │ permit (principal, action resource);",
        ": invalid: 0 policies, 2 errors, 0 warnings",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // The snippet of each error is from its own file.
    let typo_report = text.split("syntax.cedar").next().unwrap();
    assert!(!typo_report.contains("action resource"), "{text}");
}

#[test]
fn warnings_pass_unless_denied() {
    let dir = policy_dir(&[(
        "p.cedar",
        "@id(\"never\")\npermit (principal, action, resource) when { 1 == 2 };\n\
         @id(\"routes-as-tools\")\npermit (principal, action == Action::\"call\", resource is Route);\n\
         permit (principal, action, resource);\n",
    )]);
    let output = cedargate(&["policy", "validate", path(&dir)], None);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let text = stdout(&output);
    for expected in [
        "policy is impossible",
        "unable to find an applicable action",
        "policy without `@id`: it is known as `p#2`",
        ": valid: 3 policies, 0 errors, 4 warnings",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(text.contains('⚠'), "{text}");

    let denied = cedargate(&["policy", "validate", path(&dir), "--deny-warnings"], None);
    assert_eq!(denied.status.code(), Some(1));
    assert!(stdout(&denied).ends_with("4 warnings (--deny-warnings)\n"), "{}", stdout(&denied));
}

#[test]
fn validate_finds_its_directory_from_the_config_or_the_working_directory() {
    let project = tempfile::tempdir().unwrap();
    let rules = project.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(rules.join("schema.cedarschema"), SCHEMA).unwrap();
    std::fs::write(
        rules.join("p.cedar"),
        "@id(\"x\")\npermit (principal, action, resource) when { 1 == 2 };\n",
    )
    .unwrap();
    let config = project.path().join("cedargate.yaml");
    std::fs::write(&config, "policies:\n  dir: rules\n").unwrap();
    let from_config = cedargate(&["--config", config.to_str().unwrap(), "policy", "validate"], None);
    assert!(
        stdout(&from_config).contains("rules: valid: 1 policies, 0 errors, 1 warnings"),
        "{}",
        stdout(&from_config)
    );

    std::fs::rename(&rules, project.path().join("policies")).unwrap();
    let from_cwd = cedargate(&["policy", "validate"], Some(project.path()));
    assert!(
        stdout(&from_cwd).ends_with("\npolicies: valid: 1 policies, 0 errors, 1 warnings\n"),
        "{}",
        stdout(&from_cwd)
    );
    assert!(stdout(&from_cwd).contains("[policies/p.cedar:1:1]"), "{}", stdout(&from_cwd));

    let empty = tempfile::tempdir().unwrap();
    let missing = cedargate(&["policy", "validate"], Some(empty.path()));
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("policies/schema.cedarschema"), "{}", stderr(&missing));
}

#[test]
fn validate_checks_entities_json_against_the_schema() {
    let dir = policy_dir(&[
        ("p.cedar", "@id(\"x\")\npermit (principal in Role::\"user\", action, resource);\n"),
        (
            "entities.json",
            r#"[{"uid": {"type": "Role", "id": "admin"}, "attrs": {"level": 3}, "parents": []}]"#,
        ),
    ]);
    let output = cedargate(&["policy", "validate", path(&dir)], None);
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    assert!(text.contains("entities.json"), "{text}");
    assert!(text.contains("level"), "{text}");
}

const MESSY: &str = "// Who may read.\n@id(\"readers\") @reason(\"Readers read\")\npermit(principal in Role::\"reader\",action in Action::\"read\",resource is Route)   // inline\n  when {resource.path like \"/docs/*\"};\n";

#[test]
fn fmt_check_lists_what_would_change_and_fmt_rewrites_it() {
    let dir =
        policy_dir(&[("a.cedar", MESSY), ("b.cedar", "@id(\"b\")\npermit (principal, action, resource);\n")]);
    let file = dir.path().join("a.cedar");

    let check = cedargate(&["policy", "fmt", "--check", path(&dir)], None);
    assert_eq!(check.status.code(), Some(1));
    assert_eq!(stdout(&check), format!("would reformat {}\n", file.display()));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), MESSY, "--check changes nothing");

    let fmt = cedargate(&["policy", "fmt", path(&dir)], None);
    assert_eq!(fmt.status.code(), Some(0), "{}", stderr(&fmt));
    assert_eq!(stdout(&fmt), format!("reformatted {}\n", file.display()));
    let formatted = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        formatted,
        "// Who may read.\n@id(\"readers\")\n@reason(\"Readers read\")\npermit (\n  principal in Role::\"reader\",\n  \
         action in Action::\"read\",\n  resource is Route\n) // inline\nwhen { resource.path like \"/docs/*\" };\n"
    );

    let again = cedargate(&["policy", "fmt", "--check", path(&dir)], None);
    assert_eq!(again.status.code(), Some(0), "formatting is idempotent: {}", stdout(&again));
    assert_eq!(stdout(&again), "");
    let validate = cedargate(&["policy", "validate", path(&dir)], None);
    assert_eq!(validate.status.code(), Some(0), "{}", stdout(&validate));
}

#[test]
fn fmt_leaves_a_file_that_does_not_parse_and_says_where() {
    let dir = policy_dir(&[("bad.cedar", "@id(\"b\")\npermit (principal,\n  action resource);\n")]);
    let output = cedargate(&["policy", "fmt", path(&dir)], None);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains(&format!("{}/bad.cedar:3:", path(&dir))), "{}", stderr(&output));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("bad.cedar")).unwrap(),
        "@id(\"b\")\npermit (principal,\n  action resource);\n"
    );
}

#[test]
fn explain_a_forbidden_route_names_the_forbid_and_the_permits_that_did_not_apply() {
    let output = cedargate(
        &["policy", "explain", "--authorization", "Bearer user-token-123", "--route", "GET /admin/users"],
        None,
    );
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    for expected in [
        "decision: forbidden (HTTP 403)\n",
        "request: route GET /admin/users\n",
        "identity: static `demo-user`, roles [user], scopes []\n",
        "reason: Requires admin role\n",
        "determining policies:\n  forbid admin-routes-require-admin (<embedded>/policies/routes.cedar:38:1): Requires admin role\n",
        "  permit user-routes (<embedded>/policies/routes.cedar:20:1): Users may use the user endpoints\n    \
         when { resource.path like \"/user/*\" } is false: stopped it\n",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains("admin-full-access"), "its scope does not match a user:\n{text}");
    assert!(!text.contains("user-token-123"), "no credential in the output");
}

#[test]
fn explain_pinpoints_the_part_of_a_condition_that_was_false() {
    let output = cedargate(
        &[
            "policy",
            "explain",
            "--auth-info",
            r#"{"subject": "alice", "roles": ["user"]}"#,
            "--tool",
            "read_file",
            "--arguments",
            r#"{"path": "/etc/passwd"}"#,
            "--format",
            "json",
        ],
        None,
    );
    assert_eq!(output.status.code(), Some(1));
    let json: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["outcome"], "OUTCOME_FORBIDDEN");
    assert_eq!(json["authInfo"]["subject"], "alice");
    assert_eq!(json["policies"]["reason"], "no policy permits this request");
    let permits = json["policies"]["permits"].as_array().unwrap();
    let docs = permits.iter().find(|permit| permit["policy"]["id"] == "user-reads-docs").unwrap();
    assert_eq!(docs["policy"]["location"]["line"], 34);
    assert_eq!(
        docs["conditions"][0]["decidingPart"],
        serde_json::json!({"position": 3, "of": 7, "expression": "resource.getTag(\"path\") like \"/docs/*\"", "result": "false"})
    );
}

#[test]
fn explain_an_allow_and_the_errors_of_bad_input() {
    let allowed = cedargate(
        &[
            "policy",
            "explain",
            "--auth-info",
            r#"{"subject": "root", "roles": ["admin"]}"#,
            "--route",
            "DELETE /x",
        ],
        None,
    );
    assert_eq!(allowed.status.code(), Some(0));
    let text = stdout(&allowed);
    assert!(text.starts_with("decision: allowed (HTTP 200)\n"), "{text}");
    assert!(text.contains("permit admin-full-access (<embedded>/policies/routes.cedar:12:1)"), "{text}");
    assert!(!text.contains("permits whose scope matched"), "{text}");

    let refused =
        cedargate(&["policy", "explain", "--authorization", "Bearer nope", "--route", "GET /"], None);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stdout(&refused).starts_with("decision: unauthenticated (HTTP 401)\n"), "{}", stdout(&refused));
    assert!(stdout(&refused).contains("credential: refused:"), "{}", stdout(&refused));

    let anonymous = cedargate(&["policy", "explain", "--route", "GET /user/profile"], None);
    assert_eq!(anonymous.status.code(), Some(1));
    assert!(stdout(&anonymous).contains("identity: anonymous (no credential)\n"), "{}", stdout(&anonymous));

    let bad = cedargate(
        &["policy", "explain", "--auth-info", r#"{"subject": "x", "rolez": []}"#, "--route", "GET /"],
        None,
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("--auth-info") && stderr(&bad).contains("rolez"), "{}", stderr(&bad));
}

#[test]
fn a_role_hierarchy_in_entities_json_is_honoured_by_explain() {
    let dir = policy_dir(&[
        (
            "p.cedar",
            "@id(\"users-read\")\npermit (principal in Role::\"user\", action == Action::\"GET\", resource is Route);\n",
        ),
        ("entities.json", r#"[{"uid": {"type": "Role", "id": "admin"}, "attrs": {}, "parents": [{"type": "Role", "id": "user"}]}]"#),
    ]);
    let ask = |roles: &str| {
        cedargate(
            &[
                "policy",
                "explain",
                "--policies",
                path(&dir),
                "--auth-info",
                &format!(r#"{{"subject": "s", "roles": {roles}}}"#),
                "--route",
                "GET /anything",
            ],
            None,
        )
    };
    let admin = ask(r#"["admin"]"#);
    assert_eq!(admin.status.code(), Some(0), "{}", stdout(&admin));
    assert!(stdout(&admin).contains("permit users-read ("), "{}", stdout(&admin));
    assert_eq!(ask(r#"["guest"]"#).status.code(), Some(1));

    std::fs::remove_file(dir.path().join("entities.json")).unwrap();
    assert_eq!(ask(r#"["admin"]"#).status.code(), Some(1), "without the hierarchy an admin is no user");
}

/// Whole outputs against `tests/golden/`: what an author sees, byte for byte, for the shipped
/// demo. `UPDATE_GOLDEN=1 cargo test --test policy_cli golden` rewrites them after an intended
/// change (then read the diff).
#[test]
fn golden_outputs_of_the_author_commands() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cases: [(&str, &[&str], i32); 5] = [
        (
            "explain-forbidden.txt",
            &["policy", "explain", "--authorization", "Bearer user-token-123", "--route", "GET /admin/users"],
            1,
        ),
        (
            "explain-tool-argument.txt",
            &[
                "policy",
                "explain",
                "--authorization",
                "Bearer user-token-123",
                "--tool",
                "read_file",
                "--arguments",
                r#"{"path": "/docs/../etc/passwd"}"#,
            ],
            1,
        ),
        (
            "explain-allowed.json",
            &["policy", "explain", "--route", "GET /public/info", "--format", "json"],
            0,
        ),
        ("validate.txt", &["policy", "validate", "policies"], 0),
        ("test.txt", &["policy", "test", "policies"], 0),
    ];
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    for (file, args, code) in cases {
        let output = cedargate(args, Some(root));
        assert_eq!(output.status.code(), Some(code), "{file}: {}", stderr(&output));
        let mut printed = stdout(&output);
        if file.ends_with(".json") {
            // The decision id is new each time.
            let mut json: Value = serde_json::from_str(&printed).unwrap();
            json["decisionId"] = Value::from("<decision id>");
            printed = serde_json::to_string_pretty(&json).unwrap() + "\n";
        }
        let golden = root.join("tests/golden").join(file);
        if update {
            std::fs::write(&golden, &printed).unwrap();
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_default();
        assert_eq!(printed, expected, "{file} differs (UPDATE_GOLDEN=1 rewrites it)");
    }
}
