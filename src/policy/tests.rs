use super::*;
use crate::model::CredentialKind;

const SCHEMA: &str = include_str!("../../policies/schema.cedarschema");

fn sources(policies: &[(&str, &str)]) -> PolicySources {
    PolicySources {
        schema: SourceFile { name: "schema.cedarschema".into(), text: SCHEMA.into() },
        policies: policies
            .iter()
            .map(|(name, text)| SourceFile { name: (*name).into(), text: (*text).into() })
            .collect(),
    }
}

fn user(roles: &[&str], scopes: &[&str]) -> Arc<AuthInfo> {
    let mut auth = AuthInfo::new(CredentialKind::Static, "u1", roles.iter().map(|r| r.to_string()).collect());
    auth.scopes = scopes.iter().map(|s| s.to_string()).collect();
    Arc::new(auth)
}

fn route<'a>(method: &'a str, path: &'a str) -> Resource<'a> {
    Resource::Route { method, path, template: path, params: &[] }
}

fn ask(engine: &PolicyEngine, auth: Option<&Arc<AuthInfo>>, resource: Resource<'_>) -> Verdict {
    engine.evaluate(&Query { auth, resource, facts: &Extra::new(), now: 0 })
}

fn invalid(result: Result<PolicyEngine, PolicyError>) -> Vec<String> {
    match result {
        Err(PolicyError::Invalid { diagnostics }) => diagnostics,
        other => panic!("expected invalid policies, got {other:?}"),
    }
}

#[test]
fn demo_policies_decide_the_seed_table() {
    let engine = PolicyEngine::new(&PolicySources::embedded_demo()).unwrap();
    let user = user(&["user"], &[]);
    let admin = self::user(&["admin"], &[]);
    let service = self::user(&["service"], &[]);
    // (who, method, path, allowed, deciding policy, reason)
    type Row<'a> = (Option<&'a Arc<AuthInfo>>, &'a str, &'a str, bool, &'a str, &'a str);
    let table: [Row<'_>; 12] = [
        (Some(&user), "GET", "/user/profile", true, "user-routes", "Users may use the user endpoints"),
        (Some(&user), "GET", "/user/data", true, "user-routes", "Users may use the user endpoints"),
        (Some(&user), "GET", "/admin/users", false, "admin-routes-require-admin", "Requires admin role"),
        (
            Some(&user),
            "GET",
            "/service/metrics",
            false,
            "service-routes-require-service",
            "Requires service role",
        ),
        (Some(&admin), "GET", "/admin/users", true, "admin-full-access", "Admins may do everything"),
        (Some(&admin), "DELETE", "/service/metrics", true, "admin-full-access", "Admins may do everything"),
        (
            Some(&service),
            "GET",
            "/service/metrics",
            true,
            "service-routes",
            "Services may use the service endpoints",
        ),
        (Some(&service), "GET", "/user/profile", false, "user-routes-require-user", "Requires user role"),
        (None, "GET", "/public/info", true, "public-routes", "Public endpoints need no credential"),
        (None, "GET", "/user/profile", false, "user-routes-require-user", "Requires user role"),
        (None, "POST", "/public/info", false, "", "no policy permits this request"),
        (Some(&user), "GET", "/elsewhere", false, "", "no policy permits this request"),
    ];
    for (who, method, path, allowed, policy, reason) in table {
        let verdict = ask(&engine, who, route(method, path));
        assert_eq!(verdict.allowed, allowed, "{method} {path} {who:?}");
        let expected_ids: Vec<String> = if policy.is_empty() { vec![] } else { vec![policy.into()] };
        assert_eq!(verdict.policy_ids, expected_ids, "{method} {path}");
        assert_eq!(verdict.reason, reason, "{method} {path}");
        assert!(verdict.errors.is_empty());
    }
}

#[test]
fn a_syntax_error_names_file_line_and_column() {
    let diagnostics = invalid(PolicyEngine::new(&sources(&[(
        "bad.cedar",
        "permit (principal, action, resource);\n\npermit (principal, action resource);\n",
    )])));
    assert!(diagnostics.iter().any(|d| d.starts_with("bad.cedar:3:")), "{diagnostics:?}");
}

#[test]
fn a_validation_error_names_the_file_and_line_of_the_policy() {
    let diagnostics = invalid(PolicyEngine::new(&sources(&[
        ("good.cedar", "permit (principal, action, resource);\n"),
        (
            "typo.cedar",
            "// a comment\n@id(\"typo\")\npermit (principal, action, resource is Route)\nwhen { resource.pth == \"/x\" };\n",
        ),
    ])));
    assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
    assert!(diagnostics[0].starts_with("typo.cedar:4:"), "{diagnostics:?}");
    assert!(diagnostics[0].contains("pth"), "{diagnostics:?}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let diagnostics = invalid(PolicyEngine::new(&sources(&[
        ("one.cedar", "permit (principal, action, resource) when { resource.nope };\n"),
        ("two.cedar", "permit (principal action, resource);\n"),
    ])));
    assert!(diagnostics.iter().any(|d| d.starts_with("one.cedar:1:")), "{diagnostics:?}");
    assert!(diagnostics.iter().any(|d| d.starts_with("two.cedar:1:")), "{diagnostics:?}");
}

#[test]
fn duplicate_ids_and_templates_are_refused() {
    let policy = "@id(\"same\")\npermit (principal, action, resource);\n";
    let diagnostics = invalid(PolicyEngine::new(&sources(&[("a.cedar", policy), ("b.cedar", policy)])));
    assert!(diagnostics.iter().any(|d| d.contains("`same` is already used in a.cedar")), "{diagnostics:?}");

    let diagnostics = invalid(PolicyEngine::new(&sources(&[(
        "t.cedar",
        "permit (principal == ?principal, action, resource);\n",
    )])));
    assert!(diagnostics.iter().any(|d| d.contains("templates are not supported")), "{diagnostics:?}");
}

#[test]
fn a_schema_that_cannot_take_cedargate_requests_is_refused() {
    let mut broken = sources(&[]);
    broken.schema.text = "entity User; action view appliesTo { principal: [User], resource: [User] };".into();
    let diagnostics = invalid(PolicyEngine::new(&broken));
    assert!(diagnostics.iter().any(|d| d.contains("does not accept")), "{diagnostics:?}");
}

#[test]
fn unnamed_policies_get_file_based_ids() {
    let engine =
        PolicyEngine::new(&sources(&[("rules.cedar", "forbid (principal, action, resource);")])).unwrap();
    let verdict = ask(&engine, None, route("GET", "/"));
    assert_eq!(verdict.policy_ids, vec!["rules#0".to_owned()]);
    assert_eq!(verdict.reason, "forbidden by policy `rules#0`");
}

#[test]
fn an_evaluation_error_is_a_deny_even_when_a_permit_matches() {
    // The forbid overflows at run time, which Cedar alone would skip and then allow.
    let engine = PolicyEngine::new(&sources(&[(
        "p.cedar",
        "@id(\"all\") permit (principal, action, resource);\n\
         @id(\"overflows\") forbid (principal, action, resource) when { context.now * 9223372036854775807 > 0 };",
    )]))
    .unwrap();
    let query = Query { auth: None, resource: route("GET", "/x"), facts: &Extra::new(), now: 5 };
    let verdict = engine.evaluate(&query);
    assert!(!verdict.allowed);
    assert_eq!(verdict.policy_ids, vec!["overflows".to_owned()]);
    assert!(verdict.reason.contains("failed to evaluate"), "{}", verdict.reason);
    assert_eq!(verdict.errors.len(), 1);
}

#[test]
fn scopes_route_params_tool_arguments_and_facts_reach_policies() {
    let engine = PolicyEngine::new(&sources(&[(
        "p.cedar",
        r#"
        @id("own-items") permit (principal, action == Action::"GET", resource == Route::"/items/{id}")
        when { resource.hasTag("id") && resource.getTag("id") == context.subject };

        @id("reports") @reason("Requires the reports:read scope") @scopes("reports:read")
        forbid (principal, action == Action::"call", resource == Tool::"report")
        unless { context.scopes.contains("reports:read") };

        @id("tools") permit (principal is User, action == Action::"call", resource is Tool)
        when { if resource.hasTag("path") then resource.getTag("path") like "/tmp/*" else true };

        @id("from-office") permit (principal, action == Action::"POST", resource is Route)
        when { context.facts.hasTag("network") && context.facts.getTag("network") == "office" };
        "#,
    )]))
    .unwrap();
    let reader = user(&[], &["reports:read"]);
    let nobody = user(&[], &[]);
    let params = [("id".to_owned(), "u1".to_owned())];
    let other = [("id".to_owned(), "u2".to_owned())];
    let item = |params| Resource::Route { method: "GET", path: "/items/x", template: "/items/{id}", params };
    assert!(ask(&engine, Some(&nobody), item(&params)).allowed);
    assert!(!ask(&engine, Some(&nobody), item(&other)).allowed);

    let no_arguments = Extra::new();
    let report = Resource::Mcp { kind: McpKind::Tool, name: "report", server: "", arguments: &no_arguments };
    assert!(ask(&engine, Some(&reader), report).allowed);
    let denied = ask(&engine, Some(&nobody), report);
    assert!(!denied.allowed);
    assert_eq!(denied.required_scopes, vec!["reports:read".to_owned()]);
    assert_eq!(denied.reason, "Requires the reports:read scope");

    let safe = Extra::from([("path".to_owned(), serde_json::json!("/tmp/a"))]);
    let unsafe_path = Extra::from([("path".to_owned(), serde_json::json!("/etc/passwd"))]);
    let read =
        |arguments| Resource::Mcp { kind: McpKind::Tool, name: "read_file", server: "files", arguments };
    assert!(ask(&engine, Some(&nobody), read(&safe)).allowed);
    assert!(!ask(&engine, Some(&nobody), read(&unsafe_path)).allowed);

    let office = Extra::from([("network".to_owned(), serde_json::json!("office"))]);
    let post = route("POST", "/anything");
    assert!(engine.evaluate(&Query { auth: None, resource: post, facts: &office, now: 0 }).allowed);
    // Without facts there is no `Facts` entity: `hasTag` is false, not an error.
    let no_facts = ask(&engine, None, post);
    assert!(!no_facts.allowed);
    assert!(no_facts.errors.is_empty(), "{:?}", no_facts.errors);
}

#[test]
fn a_method_the_schema_does_not_declare_is_a_deny_with_an_error() {
    let engine =
        PolicyEngine::new(&sources(&[("p.cedar", "permit (principal, action, resource);")])).unwrap();
    let verdict = ask(&engine, None, route("TRACE", "/"));
    assert!(!verdict.allowed);
    assert!(verdict.errors[0].contains("TRACE"), "{:?}", verdict.errors);
}

#[test]
fn a_bad_reload_keeps_the_last_good_set() {
    let engine =
        PolicyEngine::new(&sources(&[("p.cedar", "permit (principal, action, resource);")])).unwrap();
    let revision = engine.snapshot().revision().to_owned();
    assert!(engine.reload(&sources(&[("p.cedar", "permit (principal, action")])).is_err());
    assert_eq!(engine.snapshot().revision(), revision);
    assert!(ask(&engine, None, route("GET", "/")).allowed);

    engine.reload(&sources(&[("p.cedar", "forbid (principal, action, resource);")])).unwrap();
    assert_ne!(engine.snapshot().revision(), revision);
    assert!(!ask(&engine, None, route("GET", "/")).allowed);
}

#[test]
fn reads_a_policy_directory_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("schema.cedarschema"), SCHEMA).unwrap();
    std::fs::write(dir.path().join("b.cedar"), "forbid (principal, action, resource);").unwrap();
    std::fs::write(dir.path().join("a.cedar"), "permit (principal, action, resource);").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a policy").unwrap();
    let sources = PolicySources::from_dir(dir.path()).unwrap();
    let names: Vec<_> =
        sources.policies.iter().map(|f| f.name.rsplit('/').next().unwrap().to_owned()).collect();
    assert_eq!(names, ["a.cedar", "b.cedar"]);

    std::fs::remove_file(dir.path().join("schema.cedarschema")).unwrap();
    assert!(matches!(PolicySources::from_dir(dir.path()), Err(PolicyError::Read { .. })));
}

#[test]
fn cached_principals_never_leak_between_identities() {
    let engine = PolicyEngine::new(&PolicySources::embedded_demo()).unwrap();
    // Identities are dropped and recreated, so the allocator may offer freed addresses again;
    // every decision must still follow its own identity's roles.
    for round in 0..200 {
        let role = if round % 2 == 0 { "admin" } else { "user" };
        let identity = user(&[role], &[]);
        let verdict = ask(&engine, Some(&identity), route("GET", "/admin/users"));
        assert_eq!(verdict.allowed, role == "admin", "round {round}");
    }
}

#[test]
fn a_cached_principal_sees_a_new_second_and_a_new_policy_set() {
    let engine = PolicyEngine::new(&sources(&[(
        "p.cedar",
        "permit (principal, action, resource) when { context.now >= 100 };",
    )]))
    .unwrap();
    let identity = user(&["user"], &[]);
    let at = |now| {
        engine.evaluate(&Query {
            auth: Some(&identity),
            resource: route("GET", "/"),
            facts: &Extra::new(),
            now,
        })
    };
    assert!(!at(50).allowed);
    assert!(at(150).allowed, "the context follows the clock");
    assert!(!at(99).allowed);

    engine
        .reload(&sources(&[(
            "p.cedar",
            "permit (principal in Role::\"user\", action in Action::\"write\", resource);",
        )]))
        .unwrap();
    assert!(!at(150).allowed, "GET is not a write");
    let post = engine.evaluate(&Query {
        auth: Some(&identity),
        resource: route("POST", "/"),
        facts: &Extra::new(),
        now: 150,
    });
    assert!(post.allowed, "{post:?}");
}

const SHADOWED: &str = r#"
@id("reads")
permit (principal in Role::"user", action == Action::"GET", resource is Route);

@id("new-admin-rule") @shadow @reason("Admin routes will need admin")
forbid (principal, action, resource is Route)
when { resource.path like "/admin/*" }
unless { principal in Role::"admin" };

@id("new-deletes") @shadow @reason("Users will be able to delete")
permit (principal in Role::"user", action == Action::"DELETE", resource is Route);

@id("agrees") @shadow
permit (principal in Role::"user", action == Action::"GET", resource == Route::"/a");

@id("broken") @shadow
forbid (principal, action == Action::"PUT", resource is Route)
when { (context.now + 2) * 9223372036854775807 > 0 };

@id("puts")
permit (principal in Role::"user", action == Action::"PUT", resource is Route);
"#;

#[test]
fn shadow_policies_report_what_they_would_change_and_never_change_it() {
    let engine = PolicyEngine::new(&sources(&[("p.cedar", SHADOWED)])).unwrap();
    assert_eq!(engine.snapshot().shadow_count(), 4);
    assert_eq!(engine.snapshot().policy_count(), 6);
    let user = user(&["user"], &[]);

    // Allowed now; a shadow forbid would deny it.
    let admin_read = ask(&engine, Some(&user), route("GET", "/admin/x"));
    assert!(admin_read.allowed);
    assert_eq!(admin_read.policy_ids, ["reads"]);
    let shadow = admin_read.shadow.unwrap();
    assert!(!shadow.allowed);
    assert_eq!(shadow.policy_ids, ["new-admin-rule"]);
    assert_eq!(shadow.reason, "Admin routes will need admin");

    // Denied now; a shadow permit would allow it.
    let delete = ask(&engine, Some(&user), route("DELETE", "/x"));
    assert!(!delete.allowed);
    assert_eq!(
        delete.shadow.unwrap(),
        ShadowVerdict {
            allowed: true,
            policy_ids: vec!["new-deletes".into()],
            reason: "Users will be able to delete".into()
        }
    );

    // A shadow policy that agrees, or matches nothing, says nothing.
    assert_eq!(ask(&engine, Some(&user), route("GET", "/a")).shadow, None);
    assert_eq!(ask(&engine, Some(&user), route("GET", "/b")).shadow, None);

    // A shadow policy that fails to evaluate would deny (fail closed), and is named; the
    // enforced decision does not see its error.
    let put = ask(&engine, Some(&user), route("PUT", "/x"));
    assert!(put.allowed && put.errors.is_empty(), "{put:?}");
    assert_eq!(put.shadow.unwrap().policy_ids, ["broken"]);

    assert_eq!(engine.shadow_disagreements(), 3);
}

#[test]
fn shadow_policies_are_validated_like_the_rest() {
    let diagnostics = invalid(PolicyEngine::new(&sources(&[(
        "p.cedar",
        "@shadow\npermit (principal, action, resource) when { context.nope };",
    )])));
    assert!(diagnostics.iter().any(|line| line.starts_with("p.cedar:2:")), "{diagnostics:?}");
}
