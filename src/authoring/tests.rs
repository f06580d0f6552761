use std::collections::HashSet;

use super::suite::{self, Known, PrincipalSpec};
use crate::model::{McpRequest, Target};

fn known_ids() -> HashSet<String> {
    ["public-routes", "user-routes"].map(str::to_owned).into_iter().collect()
}

fn parse(text: &str) -> Result<suite::Suite, Vec<String>> {
    let ids = known_ids();
    let issuers = ["https://idp.test".to_owned()];
    suite::parse("s.yaml", text, &Known { policy_ids: &ids, issuers: &issuers })
}

/// The one problem `text` has, which must start with `prefix` (`file:line:column: path`).
fn problem(text: &str) -> String {
    let problems = parse(text).expect_err(text);
    assert_eq!(problems.len(), 1, "{problems:?}");
    problems.into_iter().next().unwrap()
}

#[test]
fn a_suite_reads_every_kind_of_principal_target_and_expectation() {
    let suite = parse(
        "name: all
now: 2026-01-01T00:00:00Z
principals:
  token: { authorization: Bearer x }
  login: { login: { username: alice, password: pw } }
  inline: { auth_info: { subject: bob, roles: [user], credential_kind: api_key, expires_at: 1700000000 } }
  claims: { jwt: { claims: { sub: carol, roles: [user] } } }
tests:
  - { name: a, principal: token, route: GET /x, expect: allowed }
  - { name: b, tool: echo, server: s, arguments: { text: hi }, now: 5, expect: { outcome: forbidden, policies: [user-routes], reason: r, error: forbidden } }
  - { name: c, prompt: p, expect: unauthenticated }
  - { name: d, resource: 'file:///x', expect: unavailable }
  - { name: e, method: tools/list, context: { host: h }, expect: allowed }
  - { name: f, route: GET /users/7, template: '/users/{id}', expect: allowed }
",
    )
    .unwrap();
    assert_eq!(suite.name, "all");
    let kinds: Vec<_> = suite
        .principals
        .values()
        .map(|(spec, _)| match spec {
            PrincipalSpec::Authorization(_) => "authorization",
            PrincipalSpec::Login { .. } => "login",
            PrincipalSpec::AuthInfo(_) => "auth_info",
            PrincipalSpec::Jwt(_) => "jwt",
        })
        .collect();
    assert_eq!(kinds, ["jwt", "auth_info", "login", "authorization"]);
    let tests = &suite.tests;
    assert_eq!(tests[0].now, Some(1_767_225_600), "the suite's clock");
    assert_eq!(tests[1].now, Some(5), "the test's own clock");
    assert_eq!(tests[0].location, "s.yaml:9:5");
    assert_eq!(tests[1].target_text, "tool echo on s");
    assert!(matches!(&tests[2].target, Target::Mcp(McpRequest::Prompt, call) if call.name == "p"));
    assert!(matches!(&tests[3].target, Target::Mcp(McpRequest::Resource, _)));
    assert!(matches!(&tests[4].target, Target::Mcp(McpRequest::Method, _)));
    assert!(
        matches!(&tests[5].target, Target::Route(route) if route.template.as_deref() == Some("/users/{id}"))
    );
    assert_eq!(tests[1].expect.policies.as_deref(), Some(&["user-routes".to_owned()][..]));
    assert_eq!(tests[5].full_name, "all::f");
}

#[test]
fn bad_suites_are_refused_at_the_offending_line() {
    let table = [
        ("tests:\n  - { name: a, route: GET /x, expect: allowed, extra: 1 }\n", "s.yaml:2:48: tests[0].extra: unknown field `extra`"),
        ("tests:\n  - name: a\n    principal: ghost\n    route: GET /x\n    expect: allowed\n", "s.yaml:3:16: tests[0].principal: unknown principal `ghost`"),
        ("tests:\n  - name: a\n    route: GET /x\n", "s.yaml:2:5: tests[0]: test `a` has no expectation"),
        (
            "tests:\n  - name: a\n    route: GET /x\n    expect:\n      outcome: allowed\n      policies: [user-routes, nope]\n",
            "s.yaml:6:31: tests[0].expect.policies[1]: unknown policy id `nope`",
        ),
        ("tests:\n  - { name: a, expect: allowed }\n", "s.yaml:2:5: tests[0]: test `a` needs exactly one target"),
        ("tests:\n  - { name: a, route: /x, expect: allowed }\n", "s.yaml:2:23: tests[0].route: `/x` is not `METHOD /path`"),
        ("tests:\n  - { name: a, route: GET /x, server: s, expect: allowed }\n", "s.yaml:2:39: tests[0].server: applies to"),
        ("tests:\n  - { name: a, tool: t, template: x, expect: allowed }\n", "s.yaml:2:35: tests[0].template: applies to `route` only"),
        (
            "tests:\n  - { name: a, route: GET /x, expect: allowed }\n  - { name: a, route: GET /y, expect: allowed }\n",
            "s.yaml:3:13: tests[1].name: `a` is the name of an earlier test",
        ),
        ("tests: []\n", "s.yaml:1:8: tests: a suite needs at least one test"),
        ("now: soon\ntests: []\n", "s.yaml:1:6: now: `soon` is not an RFC 3339 time"),
        ("tests:\n  - { name: a, route: GET /x, expect: allowd }\n", "s.yaml:2:39: tests[0].expect: unknown variant `allowd`"),
        (
            "tests:\n  - { name: a, route: GET /x, expect: { outcome: allowed, error: nope } }\n",
            "s.yaml:2:66: tests[0].expect.error: unknown variant `nope`",
        ),
        (
            "principals:\n  p: { authorization: a, jwt: { claims: {} } }\ntests: [{ name: a, route: GET /x, expect: allowed }]\n",
            "s.yaml:2:3: principals.p: a principal has exactly one of",
        ),
        (
            "principals:\n  p: { jwt: { issuer: https://other.test, claims: {} } }\ntests: [{ name: a, route: GET /x, expect: allowed }]\n",
            "s.yaml:2:23: principals.p.jwt.issuer: `https://other.test` is not a configured JWT issuer (configured: `https://idp.test`)",
        ),
        (
            "principals:\n  p: { auth_info: { subject: '' } }\ntests: [{ name: a, route: GET /x, expect: allowed }]\n",
            "s.yaml:2:30: principals.p.auth_info.subject: must not be empty",
        ),
        ("tests: {}\n", "s.yaml:1:8: tests: invalid type: map, expected a sequence"),
    ];
    let mut wrong = Vec::new();
    for (text, expected) in table {
        let problem = problem(text);
        if !problem.starts_with(expected) {
            wrong.push(format!("{text}\n got: {problem}\nwant: {expected}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

#[test]
fn every_problem_of_a_suite_is_reported_at_once() {
    let problems = parse(
        "tests:\n  - { name: a, principal: x, route: GET /x, expect: allowed }\n  - { name: b, route: GET /x }\n",
    )
    .unwrap_err();
    assert_eq!(problems.len(), 2, "{problems:?}");
}

#[test]
fn the_documented_example_is_a_valid_suite() {
    let doc = include_str!("../../docs/policy-tests.md");
    let example = doc.split("```yaml\n").nth(1).unwrap().split("```").next().unwrap();
    // `${ENV}` is expanded when read; the variable is not set here.
    let example = example.replace("${METRICS_KEY}", "metrics-key");
    let ids: HashSet<String> = ["admin-routes-require-admin".to_owned()].into_iter().collect();
    let issuers = ["https://idp.example.com/".to_owned()];
    let suite = suite::parse("admin.yaml", &example, &Known { policy_ids: &ids, issuers: &issuers })
        .unwrap_or_else(|problems| panic!("{}", problems.join("\n")));
    assert_eq!((suite.name.as_str(), suite.principals.len(), suite.tests.len()), ("admin", 5, 8));
}
