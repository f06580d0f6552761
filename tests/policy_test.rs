//! `cedargate policy test`, the binary: the shipped suites, failing and malformed suites, the
//! three report formats, `--filter`, coverage, mutants, and every kind of principal.

// Test code: a failed set-up step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

use cedargate::model::SecretDigest;
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn cedargate(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cedargate"))
        .args(args)
        .current_dir(cwd)
        .env_remove("CEDARGATE_CONFIG")
        .output()
        .unwrap()
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

/// A policy directory with the shipped schema, `policies` as `policies.cedar` (or the demo's
/// files when `None`) and each suite as `tests/<name>.yaml`.
fn policy_dir(policies: Option<&str>, suites: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(ROOT).join("policies");
    std::fs::copy(root.join("schema.cedarschema"), dir.path().join("schema.cedarschema")).unwrap();
    match policies {
        Some(text) => std::fs::write(dir.path().join("policies.cedar"), text).unwrap(),
        None => {
            for file in ["routes.cedar", "mcp.cedar"] {
                std::fs::copy(root.join(file), dir.path().join(file)).unwrap();
            }
        }
    }
    std::fs::create_dir(dir.path().join("tests")).unwrap();
    for (name, text) in suites {
        std::fs::write(dir.path().join("tests").join(format!("{name}.yaml")), text).unwrap();
    }
    dir
}

fn tests_of(report: &Value) -> Vec<(String, Value)> {
    report["suites"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|suite| {
            let name = suite["name"].as_str().unwrap().to_owned();
            suite["tests"].as_array().unwrap().iter().map(move |test| (name.clone(), test.clone()))
        })
        .collect()
}

#[test]
fn the_shipped_suites_pass_cover_every_policy_and_kill_every_mutant() {
    let output = cedargate(
        &["policy", "test", "--format", "json", "--coverage-threshold", "100", "--mutate"],
        Path::new(ROOT),
    );
    assert_eq!(output.status.code(), Some(0), "{}{}", stdout(&output), stderr(&output));
    let report = json(&output);
    assert_eq!(report["failed"], 0);
    assert!(report["passed"].as_u64().unwrap() >= 24, "{}", report["passed"]);
    assert_eq!(report["policies"]["dir"], "policies", "the default directory");
    let coverage = &report["coverage"];
    assert_eq!((coverage["percent"].as_f64(), &coverage["met"]), (Some(100.0), &Value::Bool(true)));
    assert_eq!(coverage["unexercised"], serde_json::json!([]));
    assert_eq!(coverage["total"], report["policies"]["count"]);
    let mutation = &report["mutation"];
    assert_eq!(mutation["survived"], 0, "{mutation:#}");
    assert!(mutation["killed"].as_u64().unwrap() > 20);
    let total = mutation["total"].as_u64().unwrap();
    assert_eq!(mutation["killed"].as_u64().unwrap() + mutation["refused"].as_u64().unwrap(), total);
    // Every policy was deleted and flipped at least.
    assert!(total >= 2 * coverage["total"].as_u64().unwrap());
}

/// Each row of the README's demo table is a passing test of the shipped `demo` suite, with
/// the credential the row names and the status it shows.
#[test]
fn the_shipped_demo_suite_holds_every_row_of_the_readme_table() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let table: Vec<&str> = readme
        .split("## The demo")
        .nth(1)
        .unwrap()
        .lines()
        .skip_while(|line| !line.starts_with("| credential"))
        .take_while(|line| line.starts_with('|'))
        .collect();
    let cells = |line: &str| -> Vec<String> {
        line.trim_matches('|').split(" | ").map(|cell| cell.trim().trim_matches('`').to_owned()).collect()
    };
    let routes: Vec<String> = cells(table[0]).into_iter().skip(1).collect();
    assert_eq!(routes.len(), 4, "{routes:?}");

    let suite: Value = serde_yaml::from_str(
        &std::fs::read_to_string(Path::new(ROOT).join("policies/tests/demo.yaml")).unwrap(),
    )
    .unwrap();
    let principal_for = |credential: &str| -> Option<String> {
        if credential == "none" {
            return None;
        }
        let principals = suite["principals"].as_object().unwrap();
        let found = principals.iter().find(|(_, spec)| match credential {
            "Bearer <alice's session>" => spec["login"]["username"] == "alice",
            value => spec["authorization"] == value,
        });
        Some(found.unwrap_or_else(|| panic!("no principal for `{credential}`")).0.clone())
    };

    let output = cedargate(&["policy", "test", "policies", "--format", "json"], Path::new(ROOT));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let tests = tests_of(&json(&output));
    let mut rows = 0;
    for line in &table[2..] {
        let row = cells(line);
        let principal = principal_for(&row[0]);
        for (route, cell) in routes.iter().zip(&row[1..]) {
            let outcome = match cell.get(..3) {
                Some("200") => "allowed",
                Some("401") => "unauthenticated",
                Some("403") => "forbidden",
                other => panic!("README cell {other:?}"),
            };
            let found = tests.iter().any(|(suite, test)| {
                suite == "demo"
                    && test["principal"].as_str().map(str::to_owned) == principal
                    && test["target"] == route.as_str()
                    && test["passed"] == true
                    && test["expected"]["outcome"] == outcome
            });
            assert!(found, "no passing demo test for {principal:?} {route} → {outcome}");
            rows += 1;
        }
    }
    assert_eq!(rows, 24);
}

const FAILING: &str = "\
principals:
  user: { authorization: Bearer user-token-123 }
tests:
  - name: user reads public info
    principal: user
    route: GET /public/info
    expect: allowed
  - name: user reads admin users
    principal: user
    route: GET /admin/users
    expect: { outcome: allowed, policies: [admin-full-access], reason: Admins may do everything }
  - name: anonymous reads the profile
    route: GET /user/profile
    expect: { outcome: unauthenticated, error: invalid_token }
";

#[test]
fn a_failing_test_exits_1_and_says_how_the_decision_differs() {
    let dir = policy_dir(None, &[("failing", FAILING)]);
    let output = cedargate(&["policy", "test", "."], dir.path());
    assert_eq!(output.status.code(), Some(1), "{}{}", stdout(&output), stderr(&output));
    let text = stdout(&output);
    for expected in [
        "  ok    user reads public info\n",
        "  FAIL  user reads admin users  (./tests/failing.yaml:8:5)\n",
        "          principal user, GET /admin/users\n",
        "          outcome: expected allowed, got forbidden\n",
        "          policies: expected [admin-full-access], got [admin-routes-require-admin]\n",
        "          reason: expected \"Admins may do everything\", got \"Requires admin role\"\n",
        "          decision: forbidden by [admin-routes-require-admin]: \"Requires admin role\"\n",
        "  FAIL  anonymous reads the profile  (./tests/failing.yaml:12:5)\n",
        "          principal no credential, GET /user/profile\n",
        "          error: expected invalid_token, got unauthorized\n",
        "3 tests: 1 passed, 2 failed\n",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    assert!(!text.contains("outcome: expected unauthenticated"), "the outcome matched:\n{text}");
    assert!(!text.contains("user-token-123"), "no raw credential in a report:\n{text}");
}

#[test]
fn malformed_suites_and_policies_exit_2_with_file_and_line() {
    let table = [
        (
            "tests:\n  - name: a\n    principal: ghost\n    route: GET /x\n    expect: allowed\n",
            "tests/bad.yaml:3:16: tests[0].principal: unknown principal `ghost`",
        ),
        (
            "tests:\n  - name: a\n    route: GET /x\n    expect: { outcome: forbidden, policies: [no-such-id] }\n",
            "tests/bad.yaml:4:46: tests[0].expect.policies[0]: unknown policy id `no-such-id`",
        ),
        (
            "tests:\n  - name: a\n    route: GET /x\n    expected: allowed\n",
            "tests/bad.yaml:4:5: tests[0].expected: unknown field `expected`",
        ),
        ("tests:\n  - name: a\n    route: GET /x\n", "tests/bad.yaml:2:5: tests[0]: test `a` has no expectation"),
        (
            "principals:\n  a: { login: { username: alice, password: wrong } }\ntests: [{ name: a, route: GET /x, expect: allowed }]\n",
            "tests/bad.yaml:2:6: principals.a: login as `alice` failed: invalid username or password",
        ),
        (
            "tests: [{ name: a, route: GET /a/../b, expect: allowed }]\n",
            "tests/bad.yaml:1:27: the engine refuses this target: route.path is invalid",
        ),
    ];
    for (suite, expected) in table {
        let dir = policy_dir(None, &[("bad", suite)]);
        let output = cedargate(&["policy", "test", "."], dir.path());
        assert_eq!(output.status.code(), Some(2), "{suite}\n{}", stderr(&output));
        assert!(stderr(&output).contains(expected), "{suite}\nwant {expected}\n got {}", stderr(&output));
        assert!(!stderr(&output).contains("wrong"), "no password in an error");
    }

    let dir = policy_dir(
        Some("permit (principal, action, resource) when { context.nope == 1 };"),
        &[("ok", FAILING)],
    );
    let output = cedargate(&["policy", "test", "."], dir.path());
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("policies.cedar:1:"), "{}", stderr(&output));

    let empty = tempfile::tempdir().unwrap();
    std::fs::copy(
        Path::new(ROOT).join("policies/schema.cedarschema"),
        empty.path().join("schema.cedarschema"),
    )
    .unwrap();
    std::fs::create_dir(empty.path().join("tests")).unwrap();
    let output = cedargate(&["policy", "test", "."], empty.path());
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("no test suites"), "{}", stderr(&output));
}

/// Counts of the start tags (`<testcase` …) and the attributes of `<testsuites>`.
fn junit_counts(xml: &str) -> (usize, usize, Vec<(String, String)>) {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let (mut cases, mut failures, mut root) = (0, 0, Vec::new());
    loop {
        match reader.read_event().unwrap() {
            Event::Start(tag) | Event::Empty(tag) => match tag.name().as_ref() {
                b"testcase" => cases += 1,
                b"failure" => failures += 1,
                b"testsuites" => {
                    root = tag
                        .attributes()
                        .map(|attribute| {
                            let attribute = attribute.unwrap();
                            (
                                String::from_utf8(attribute.key.as_ref().to_vec()).unwrap(),
                                attribute
                                    .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                                    .unwrap()
                                    .into_owned(),
                            )
                        })
                        .collect();
                }
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
    }
    (cases, failures, root)
}

#[test]
fn junit_output_is_xml_with_the_right_counts() {
    let dir = policy_dir(None, &[("failing", FAILING)]);
    let output = cedargate(&["policy", "test", ".", "--format", "junit"], dir.path());
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let xml = stdout(&output);
    let (cases, failures, root) = junit_counts(&xml);
    assert_eq!((cases, failures), (3, 2), "{xml}");
    let attribute = |name: &str| root.iter().find(|(key, _)| key == name).map(|(_, value)| value.clone());
    assert_eq!(attribute("tests").as_deref(), Some("3"), "{xml}");
    assert_eq!(attribute("failures").as_deref(), Some("2"), "{xml}");
    assert!(
        xml.contains("policies: expected [admin-full-access], got [admin-routes-require-admin]"),
        "{xml}"
    );

    // The shipped suites, with mutants: one test case per mutant beside the tests.
    let output = cedargate(&["policy", "test", "--format", "junit", "--mutate"], Path::new(ROOT));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report = json(&cedargate(&["policy", "test", "--format", "json", "--mutate"], Path::new(ROOT)));
    let expected = report["passed"].as_u64().unwrap() + report["mutation"]["total"].as_u64().unwrap();
    let (cases, failures, _) = junit_counts(&stdout(&output));
    assert_eq!((cases as u64, failures), (expected, 0));
}

#[test]
fn filter_selects_tests_by_substring_or_glob() {
    let root = Path::new(ROOT);
    let names = |filter: &str| -> Vec<String> {
        let output = cedargate(&["policy", "test", "--format", "json", "--filter", filter], root);
        assert_eq!(output.status.code(), Some(0), "{filter}: {}", stderr(&output));
        tests_of(&json(&output))
            .into_iter()
            .map(|(suite, test)| format!("{suite}::{}", test["name"].as_str().unwrap()))
            .collect()
    };
    assert_eq!(
        names("alice"),
        [
            "demo::alice GET /user/profile",
            "demo::alice GET /admin/users",
            "demo::alice GET /service/metrics",
            "demo::alice GET /public/info"
        ]
    );
    let globbed = names("mcp::user may not *");
    assert!(globbed.len() >= 5, "{globbed:?}");
    assert!(globbed.iter().all(|name| name.starts_with("mcp::user may not ")), "{globbed:?}");
    assert_eq!(names("*GET /public/info").len(), 6, "one per row of the README table");

    // A filter that selects nothing (a typo in CI) is an error, not a pass of no tests.
    let output = cedargate(&["policy", "test", "--filter", "no test is called this"], root);
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    assert!(
        stderr(&output).contains("--filter `no test is called this` matches no test"),
        "{}",
        stderr(&output)
    );

    let output = cedargate(&["policy", "test", "--filter", "[unclosed"], root);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--filter `[unclosed` is not a glob pattern"), "{}", stderr(&output));
}

const ADMIN_AREA: &str = r#"
@id("admins")
permit (principal in Role::"admin", action, resource);

@id("no-admin-area")
@reason("Requires admin role")
forbid (principal, action, resource is Route)
when { resource.path like "/admin/*" }
unless { principal in Role::"admin" };
"#;

const WEAK: &str = "\
principals:
  admin: { auth_info: { subject: root, roles: [admin] } }
  user: { auth_info: { subject: u, roles: [user] } }
tests:
  - { name: admin in the admin area, principal: admin, route: GET /admin/users, expect: allowed }
  - { name: user kept out, principal: user, route: GET /admin/users, expect: forbidden }
";

#[test]
fn surviving_mutants_are_listed_and_fail_the_run() {
    let dir = policy_dir(Some(ADMIN_AREA), &[("weak", WEAK)]);
    let output = cedargate(&["policy", "test", ".", "--mutate"], dir.path());
    assert_eq!(output.status.code(), Some(1), "{}{}", stdout(&output), stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("2 tests: 2 passed, 0 failed"), "{text}");
    assert!(
        text.contains("mutants: 6 made: 4 killed by tests, 0 refused by the validator, 2 survived"),
        "{text}"
    );
    // Without it, the user is still denied: no policy permits them.
    assert!(text.contains("  SURVIVED  ./policies.cedar:7 `no-admin-area`: deleted\n"), "{text}");
    assert!(
        text.contains("  SURVIVED  ./policies.cedar:7 `no-admin-area`: clause 1 (`when`) dropped\n"),
        "{text}"
    );

    let report = json(&cedargate(&["policy", "test", ".", "--mutate", "--format", "json"], dir.path()));
    let killed: Vec<_> = report["mutation"]["mutants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|mutant| mutant["status"] == "killed")
        .map(|mutant| (mutant["mutation"].as_str().unwrap(), mutant["killed_by"].as_str().unwrap()))
        .collect();
    assert!(killed.contains(&("clause 2 (`unless`) dropped", "weak::admin in the admin area")), "{killed:?}");

    // Naming the deciding policy, and a route outside the area, kill both.
    let strong = format!(
        "{}  - {{ name: user outside, principal: user, route: GET /reports, expect: {{ outcome: forbidden, policies: [] }} }}\n",
        WEAK.replace("expect: forbidden", "expect: { outcome: forbidden, policies: [no-admin-area] }")
    );
    std::fs::write(dir.path().join("tests/weak.yaml"), strong).unwrap();
    let output = cedargate(&["policy", "test", ".", "--mutate"], dir.path());
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert!(
        stdout(&output).contains("6 killed by tests, 0 refused by the validator, 0 survived"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn coverage_names_the_policies_no_test_determined() {
    let dir = policy_dir(Some(ADMIN_AREA), &[("weak", WEAK)]);
    let output = cedargate(&["policy", "test", ".", "--coverage", "--filter", "admin in"], dir.path());
    assert_eq!(output.status.code(), Some(0), "no threshold, no failure: {}", stdout(&output));
    let text = stdout(&output);
    assert!(text.contains("coverage: 1 of 2 policies determined a test (50.0%)"), "{text}");
    assert!(text.contains("  ./policies.cedar\n"), "{text}");
    assert!(text.contains("permit  admins         1 test\n"), "{text}");
    assert!(text.contains("forbid  no-admin-area  NOT EXERCISED\n"), "{text}");
    assert!(text.contains("  not exercised: no-admin-area\n"), "{text}");

    let output =
        cedargate(&["policy", "test", ".", "--coverage-threshold", "75", "--filter", "admin in"], dir.path());
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).contains("BELOW the threshold of 75%"), "{}", stdout(&output));
    let output = cedargate(&["policy", "test", ".", "--coverage-threshold", "100"], dir.path());
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
}

const CLOCKED: &str = r#"
@id("editors-of-acme")
permit (principal in Role::"editor", action, resource is Route)
when { context.tenant == "acme" && context.now < 1900000000 };
"#;

#[test]
fn every_kind_of_principal_and_the_frozen_clock_reach_the_policies() {
    let dir = policy_dir(
        Some(CLOCKED),
        &[(
            "kinds",
            "\
now: 2026-01-01T00:00:00Z
principals:
  carol:
    jwt: { claims: { sub: carol, groups: [editor], org: acme, exp: 1893456000 } }
  stranger:
    jwt: { issuer: https://idp.test, claims: { sub: dan, groups: [editor], org: other } }
  key: { authorization: ApiKey editor-key }
  inline: { auth_info: { subject: eve, roles: [editor], tenant: acme, expires_at: 2027-01-01T00:00:00Z } }
  frank: { login: { username: frank, password: pw-frank } }
tests:
  - { name: mapped claims, principal: carol, route: GET /doc, expect: { outcome: allowed, policies: [editors-of-acme] } }
  - { name: another tenant, principal: stranger, route: GET /doc, expect: forbidden }
  - { name: the key, principal: key, route: GET /doc, expect: allowed }
  - { name: the key after it expired, principal: key, route: GET /doc, now: 2029-06-01T00:00:00Z, expect: { outcome: unauthenticated, error: invalid_token, reason: credential expired } }
  - { name: claims after exp, principal: carol, route: GET /doc, now: 1893456100, expect: { outcome: unauthenticated, reason: credential expired } }
  - { name: inline, principal: inline, route: GET /doc, expect: allowed }
  - { name: inline after it expired, principal: inline, route: GET /doc, now: 2027-01-01T00:00:00Z, expect: unauthenticated }
  # A session is opened when the run starts; a frozen clock later than its expiry does not end it.
  - { name: a login, principal: frank, route: GET /doc, now: 2029-12-01T00:00:00Z, expect: { outcome: allowed, policies: [editors-of-acme] } }
",
        )],
    );
    let config = format!(
        "policies:\n  dir: .\ncredentials:\n  api_keys:\n    - sha256: {}\n      subject: ed\n      roles: [editor]\n      \
         tenant: acme\n      expires_at: 2029-01-01T00:00:00Z\n  jwt:\n    - issuer: https://idp.test\n      \
         audiences: [https://api.test]\n      jwks_url: https://idp.test/jwks\n      \
         claims: {{ roles: groups, tenant: org }}\nsessions:\n  users:\n    - username: frank\n      \
         password_hash: \"{}\"\n      roles: [editor]\n      tenant: acme\n",
        SecretDigest::of(b"editor-key").to_hex(),
        cedargate::session::hash_password("pw-frank").unwrap()
    );
    std::fs::write(dir.path().join("cedargate.yaml"), config).unwrap();
    // No DIR: the config's policy directory.
    let output = cedargate(&["--config", "cedargate.yaml", "policy", "test", "--format", "json"], dir.path());
    assert_eq!(output.status.code(), Some(0), "{}{}", stdout(&output), stderr(&output));
    let report = json(&output);
    assert_eq!(report["passed"], 8, "{report:#}");

    // The demo's backends know neither the key nor the issuer.
    let output = cedargate(&["policy", "test", "."], dir.path());
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("principals.carol: name the `issuer`"), "{}", stderr(&output));
}
