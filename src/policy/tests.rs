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
        entities: None,
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

fn with_entities(policies: &[(&str, &str)], entities: &str) -> PolicySources {
    let mut sources = sources(policies);
    sources.entities = Some(SourceFile { name: "entities.json".into(), text: entities.into() });
    sources
}

const ADMIN_IS_A_USER: &str =
    r#"[{"uid": {"type": "Role", "id": "admin"}, "attrs": {}, "parents": [{"type": "Role", "id": "user"}]}]"#;

#[test]
fn a_role_hierarchy_from_entities_json_reaches_principals() {
    let policies = [("p.cedar", "@id(\"users\") permit (principal in Role::\"user\", action, resource);")];
    let engine = PolicyEngine::new(&with_entities(&policies, ADMIN_IS_A_USER)).unwrap();
    let admin = user(&["admin"], &[]);
    let other = user(&["guest"], &[]);
    assert!(ask(&engine, Some(&admin), route("GET", "/x")).allowed, "an admin is in Role::\"user\"");
    assert!(!ask(&engine, Some(&other), route("GET", "/x")).allowed);

    // Without the hierarchy the same admin is not a user; the entities are part of the revision.
    let plain = PolicyEngine::new(&sources(&policies)).unwrap();
    assert!(!ask(&plain, Some(&admin), route("GET", "/x")).allowed);
    assert_ne!(plain.snapshot().revision(), engine.snapshot().revision());

    // A reload without the file takes the hierarchy away, also from a cached principal.
    engine.reload(&sources(&policies)).unwrap();
    assert!(!ask(&engine, Some(&admin), route("GET", "/x")).allowed);
}

#[test]
fn entities_json_is_checked_against_the_schema_and_names_its_file() {
    let policies = [("p.cedar", "@id(\"all\") permit (principal, action, resource);")];
    for (entities, expected) in [
        ("[{", "entities.json: "),
        (r#"[{"uid": {"type": "Nope", "id": "x"}, "attrs": {}, "parents": []}]"#, "Nope"),
        (r#"[{"uid": {"type": "Role", "id": "x"}, "attrs": {"level": 1}, "parents": []}]"#, "level"),
        (
            r#"[{"uid": {"type": "User", "id": "alice"}, "attrs": {}, "parents": []}]"#,
            "built from each request",
        ),
    ] {
        let diagnostics = invalid(PolicyEngine::new(&with_entities(&policies, entities)));
        assert!(
            diagnostics.iter().any(|d| d.starts_with("entities.json") && d.contains(expected)),
            "{entities}: {diagnostics:?}"
        );
    }
}

#[test]
fn every_policy_has_its_file_and_line() {
    let text = "// header\n\n@id(\"first\")\npermit (principal, action, resource);\n\n  forbid (principal, action, resource);\n@id(\"third\") permit (principal, action, resource);\n";
    let engine = PolicyEngine::new(&sources(&[("dir/rules.cedar", text)])).unwrap();
    let snapshot = engine.snapshot();
    let at = |id: &str| snapshot.policy_location(id).map(ToString::to_string);
    assert_eq!(at("first").as_deref(), Some("dir/rules.cedar:3:1"));
    assert_eq!(at("rules#1").as_deref(), Some("dir/rules.cedar:6:3"));
    assert_eq!(at("third").as_deref(), Some("dir/rules.cedar:7:1"));
    assert_eq!(at("nope"), None);
    assert_eq!(snapshot.policy_ids(), ["first", "rules#1", "third"]);
}

fn findings(sources: &PolicySources) -> Vec<(Severity, String)> {
    validate(sources, ReportStyle::OneLine)
        .findings
        .into_iter()
        .map(|finding| (finding.severity, finding.to_string()))
        .collect()
}

#[test]
fn validate_reports_policies_that_can_never_apply_as_warnings() {
    let report = findings(&sources(&[(
        "p.cedar",
        "@id(\"ok\") permit (principal, action, resource);\n\
         @id(\"never\") permit (principal, action, resource) when { 1 == 2 };\n\
         @id(\"no-action\") permit (principal, action == Action::\"call\", resource is Route);\n\
         permit (principal, action, resource);\n",
    )]));
    let warnings: Vec<&String> =
        report.iter().filter(|(severity, _)| *severity == Severity::Warning).map(|(_, text)| text).collect();
    assert!(report.iter().all(|(severity, _)| *severity == Severity::Warning), "{report:?}");
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("p.cedar:2:") && w.contains("`never`") && w.contains("impossible")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|w| w.starts_with("p.cedar:3:")
            && w.contains("`no-action`")
            && w.contains("applicable action")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("p.cedar:4:1:") && w.contains("without `@id`") && w.contains("p#3")),
        "{warnings:?}"
    );
    assert!(!warnings.iter().any(|w| w.contains("`ok`")), "{warnings:?}");
}

#[test]
fn validate_reports_an_action_the_schema_lacks_as_an_error_with_cedars_help() {
    let validation = validate(
        &sources(&[(
            "p.cedar",
            "@id(\"typo\")\npermit (principal, action == Action::\"GETT\", resource);\n",
        )]),
        ReportStyle::Plain,
    );
    assert_eq!(validation.count(Severity::Error), 1, "{:?}", validation.findings);
    assert_eq!(validation.policy_count, 0);
    let finding = &validation.findings[0];
    assert!(finding.to_string().starts_with("p.cedar:2:30:"), "{finding}");
    assert!(finding.help.as_deref().is_some_and(|help| help.contains("Action::\"GET\"")), "{finding:?}");
    assert!(finding.rendered.contains("[p.cedar:2:30]"), "{}", finding.rendered);
    assert!(
        finding.rendered.contains("permit (principal, action == Action::\"GETT\", resource);"),
        "{}",
        finding.rendered
    );
}

#[test]
fn the_demo_policies_validate_without_findings() {
    let validation = validate(&PolicySources::embedded_demo(), ReportStyle::OneLine);
    assert!(validation.findings.is_empty(), "{:?}", validation.findings);
    assert_eq!(validation.policy_count, 12);
}

fn explain(engine: &PolicyEngine, auth: Option<&Arc<AuthInfo>>, resource: Resource<'_>) -> Explanation {
    engine.explain(&Query { auth, resource, facts: &Extra::new(), now: 0 })
}

#[test]
fn explain_names_the_permits_whose_scope_matched_and_the_condition_that_was_false() {
    let engine = PolicyEngine::new(&PolicySources::embedded_demo()).unwrap();
    let user = user(&["user"], &[]);
    let no_arguments = Extra::new();
    let secret = Extra::from([("path".to_owned(), serde_json::json!("/etc/passwd"))]);
    let read = |arguments| Resource::Mcp { kind: McpKind::Tool, name: "read_file", server: "", arguments };

    let explanation = explain(&engine, Some(&user), read(&secret));
    assert!(!explanation.allowed);
    assert!(explanation.determining.is_empty());
    let ids: Vec<&str> = explanation.permits.iter().map(|permit| permit.policy.id.as_str()).collect();
    assert_eq!(
        ids,
        ["user-tools", "user-reads-docs"],
        "in file order; admin-full-access's scope does not match"
    );
    let tools = &explanation.permits[0];
    assert_eq!(tools.policy.location.as_ref().unwrap().line, 13);
    assert_eq!(tools.conditions.len(), 1);
    assert_eq!(tools.conditions[0].result, ConditionResult::False);
    assert!(
        tools.conditions[0].expression.contains("[\"echo\", \"whoami\"].contains(resource.name)"),
        "{:?}",
        tools.conditions
    );
    let docs = &explanation.permits[1];
    let part = docs.conditions[0].deciding_part.as_ref().unwrap();
    assert_eq!((part.position, part.of), (3, 7), "{part:?}");
    assert_eq!(part.expression, "resource.getTag(\"path\") like \"/docs/*\"");
    assert!(!docs.held);

    // Without the tag, `getTag` is never reached: `hasTag` is the part that is false.
    let explanation = explain(&engine, Some(&user), read(&no_arguments));
    let part = explanation.permits[1].conditions[0].deciding_part.as_ref().unwrap();
    assert_eq!(part.position, 2);
    assert_eq!(part.result, ConditionResult::False);
    assert!(explanation.text().contains("part 2 of 7"), "{}", explanation.text());
}

#[test]
fn explain_shows_a_permit_that_held_and_the_forbid_that_won() {
    let engine = PolicyEngine::new(&PolicySources::embedded_demo()).unwrap();
    let service = user(&["service"], &[]);
    let explanation = explain(&engine, Some(&service), route("GET", "/user/profile"));
    assert!(!explanation.allowed);
    assert_eq!(explanation.determining.len(), 1);
    let forbid = &explanation.determining[0];
    assert_eq!((forbid.id.as_str(), forbid.effect), ("user-routes-require-user", "forbid"));
    assert_eq!(forbid.location.as_ref().unwrap().to_string(), "<embedded>/policies/routes.cedar:48:1");
    assert_eq!(forbid.reason.as_deref(), Some("Requires user role"));
    // `public-routes` and `service-routes` have a matching scope and a false `when`;
    // `user-routes` and `admin-full-access` do not match the principal.
    let ids: Vec<&str> = explanation.permits.iter().map(|permit| permit.policy.id.as_str()).collect();
    assert_eq!(ids, ["public-routes", "service-routes"]);
    let public = &explanation.permits[0].conditions[0];
    assert_eq!((public.kind, public.expression.as_str()), ("when", "resource.path like \"/public/*\""));
    assert_eq!(public.result, ConditionResult::False);

    let allowed = explain(&engine, Some(&service), route("GET", "/service/metrics"));
    assert!(allowed.allowed);
    assert_eq!(allowed.determining[0].id, "service-routes");
    assert!(allowed.permits.is_empty(), "an allow needs no post-mortem");
    let text = allowed.text();
    assert!(text.contains("permit service-routes (<embedded>/policies/routes.cedar:"), "{text}");
}

#[test]
fn explain_reports_a_forbid_overridden_permit_as_held_and_evaluation_errors() {
    let engine = PolicyEngine::new(&sources(&[(
        "p.cedar",
        "@id(\"all\") permit (principal, action, resource) when { context.now > 0 } unless { context.now > 100 };\n\
         @id(\"overflows\") forbid (principal, action, resource) when { context.now * 9223372036854775807 > 0 };",
    )]))
    .unwrap();
    let explanation =
        engine.explain(&Query { auth: None, resource: route("GET", "/x"), facts: &Extra::new(), now: 5 });
    assert!(!explanation.allowed);
    assert_eq!(explanation.determining[0].id, "overflows");
    assert_eq!(explanation.errors.len(), 1);
    let permit = &explanation.permits[0];
    assert!(permit.held);
    assert_eq!(permit.conditions.len(), 2);
    assert_eq!(permit.conditions[1].kind, "unless");
    assert_eq!(permit.conditions[1].result, ConditionResult::False);

    // Past 100 the `unless` stops it.
    let later =
        engine.explain(&Query { auth: None, resource: route("GET", "/x"), facts: &Extra::new(), now: 500 });
    let permit = &later.permits[0];
    assert!(!permit.held);
    assert_eq!(permit.conditions[1].result, ConditionResult::True);
    assert!(later.text().contains("unless { context.now > 100 } is true: stopped it"), "{}", later.text());
}

/// Reads `dir` on another thread; `None` when it has not answered in a minute (a hang).
fn from_dir_or_hang(dir: &std::path::Path) -> Option<Result<PolicySources, PolicyError>> {
    let (sender, receiver) = std::sync::mpsc::channel();
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let _ = sender.send(PolicySources::from_dir(&dir));
    });
    receiver.recv_timeout(std::time::Duration::from_secs(60)).ok()
}

#[test]
fn a_fifo_or_a_device_named_like_a_policy_is_refused_not_read_forever() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(load::SCHEMA_FILE), SCHEMA).unwrap();
    let fifo = dir.path().join("blocked.cedar");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let answer = from_dir_or_hang(dir.path());
    if answer.is_none() {
        // Unblock the reader so the test process can end.
        let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
    }
    match answer {
        Some(Err(PolicyError::Read { path, source })) => {
            assert_eq!(path, fifo);
            assert!(source.to_string().contains("not a regular file"), "{source}");
        }
        other => panic!("a FIFO must be refused at once, got {other:?}"),
    }
    std::fs::remove_file(&fifo).unwrap();

    // A symlink is followed (ConfigMap volumes are made of them), but only to a regular file.
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.cedar")).unwrap();
    match from_dir_or_hang(dir.path()) {
        Some(Err(PolicyError::Read { source, .. })) => {
            assert!(source.to_string().contains("not a regular file"), "{source}")
        }
        other => panic!("a device must be refused, got {other:?}"),
    }
}

#[test]
fn a_policy_file_above_the_size_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(load::SCHEMA_FILE), SCHEMA).unwrap();
    let huge = dir.path().join("huge.cedar");
    let file = std::fs::File::create(&huge).unwrap();
    // Sparse: no disk is used.
    file.set_len(load::MAX_SOURCE_BYTES + 1).unwrap();
    match PolicySources::from_dir(dir.path()) {
        Err(PolicyError::Read { path, source }) => {
            assert_eq!(path, huge);
            assert!(source.to_string().contains("larger than"), "{source}");
        }
        other => panic!("a huge file must be refused, got {other:?}"),
    }
}

#[test]
fn a_dangling_entities_symlink_is_an_error_not_an_absent_file() {
    // Dropping the role hierarchy silently could lift a `forbid ... when { principal in
    // Role::"contractor" }` from the roles declared under it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(load::SCHEMA_FILE), SCHEMA).unwrap();
    let entities = dir.path().join(load::ENTITIES_FILE);
    std::os::unix::fs::symlink(dir.path().join("..data/entities.json"), &entities).unwrap();
    match PolicySources::from_dir(dir.path()) {
        Err(PolicyError::Read { path, .. }) => assert_eq!(path, entities),
        other => panic!("a dangling entities.json must be refused, got {other:?}"),
    }
}

#[test]
fn deeply_nested_policy_text_is_refused_before_cedar_recurses_into_it() {
    // Cedar's parser recurses once per level and aborts the process on a stack overflow
    // (a few hundred parentheses in a debug build); the reloader parses on a 2 MiB thread.
    let nested = |depth: usize| {
        format!(
            "@id(\"deep\") permit (principal, action, resource) when {{ {}true{} }};",
            "(".repeat(depth),
            ")".repeat(depth)
        )
    };
    let deep = nested(5000);
    let answer = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || invalid(PolicyEngine::new(&sources(&[("p.cedar", &deep)]))))
        .unwrap()
        .join()
        .unwrap();
    assert!(
        answer.iter().any(|line| line.starts_with("p.cedar:1:") && line.contains("nested")),
        "{answer:?}"
    );
    // Comments and strings do not count, and ordinary nesting loads, on the same small stack.
    let ordinary = format!("// (((((((((\n{}\n@id(\"s\") permit (principal, action, resource) when {{ context.subject == \"(((((((((((((((((((((((((((((((((\" }};", nested(load::MAX_NESTING - 2));
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || PolicyEngine::new(&sources(&[("p.cedar", &ordinary)])).unwrap())
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn nesting_counts_ifs_and_skips_strings_and_comments() {
    let ifs = format!(
        "permit (principal, action, resource) when {{ {} true {} }};",
        "if true then ".repeat(40),
        "else false ".repeat(40)
    );
    assert!(load::too_deep(&ifs).is_some(), "nested ifs need no brackets");
    let quoted = format!(
        "permit (principal, action, resource) when {{ \"{}\\\"{}\" == \"\" }}; // {}",
        "(".repeat(99),
        "[".repeat(99),
        "{".repeat(99)
    );
    assert_eq!(load::too_deep(&quoted), None);
    assert_eq!(
        load::too_deep("permit (principal, action, resource) when { context.verified };"),
        None,
        "`if` inside a word"
    );
}

#[test]
fn a_deeply_nested_schema_is_refused_before_cedar_recurses_into_it() {
    let deep = format!("{SCHEMA}\nentity Deep = {{ a: {}String{} }};", "Set<".repeat(3000), ">".repeat(3000));
    let mut sources = sources(&[("p.cedar", "@id(\"a\") permit (principal, action, resource);")]);
    sources.schema.text = deep;
    let answer = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || invalid(PolicyEngine::new(&sources)))
        .unwrap()
        .join()
        .unwrap();
    assert!(
        answer.iter().any(|line| line.starts_with("schema.cedarschema:") && line.contains("nested")),
        "{answer:?}"
    );
}

#[test]
fn the_revision_is_of_the_contents_not_of_where_the_directory_is() {
    let here = sources(&[("/srv/a/policies/p.cedar", "@id(\"all\") permit (principal, action, resource);")]);
    let there = sources(&[(
        "/home/b/checkout/policies/p.cedar",
        "@id(\"all\") permit (principal, action, resource);",
    )]);
    let renamed =
        sources(&[("/srv/a/policies/q.cedar", "@id(\"all\") permit (principal, action, resource);")]);
    let revision =
        |sources: &PolicySources| PolicyEngine::new(sources).unwrap().snapshot().revision().to_owned();
    assert_eq!(revision(&here), revision(&there));
    assert_ne!(revision(&here), revision(&renamed), "a file's name within the directory counts");
}

/// Slicing changes nothing: random policy sets (permits and forbids, every scope form,
/// conditions that error, shadow policies) decide random requests the same with slicing
/// (and with a slice cache too small to hold them) as with the whole set.
mod slicing {
    use proptest::prelude::*;

    use super::*;

    const ENTITIES: &str = r#"[
        {"uid": {"type": "Role", "id": "r1"}, "attrs": {}, "parents": [{"type": "Role", "id": "r0"}]},
        {"uid": {"type": "Role", "id": "r2"}, "attrs": {}, "parents": [{"type": "Role", "id": "r1"}]},
        {"uid": {"type": "Server", "id": "s0"}, "attrs": {}, "parents": []}
    ]"#;

    fn principal_scope() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("principal".to_owned()),
            (0..3u8).prop_map(|n| format!("principal == User::\"u{n}\"")),
            (0..4u8).prop_map(|n| format!("principal in Role::\"r{n}\"")),
            Just("principal is User".to_owned()),
            (0..4u8).prop_map(|n| format!("principal is User in Role::\"r{n}\"")),
            Just("principal is Anonymous".to_owned()),
            Just("principal == Anonymous::\"anonymous\"".to_owned()),
        ]
    }

    fn action_scope() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("action".to_owned()),
            Just("action == Action::\"call\"".to_owned()),
            Just("action == Action::\"GET\"".to_owned()),
            Just("action in Action::\"read\"".to_owned()),
            Just("action in [Action::\"write\", Action::\"call\"]".to_owned()),
            Just("action in [Action::\"GET\", Action::\"rpc\"]".to_owned()),
        ]
    }

    fn resource_scope() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("resource".to_owned()),
            (0..4u8).prop_map(|n| format!("resource == Tool::\"t{n}\"")),
            (0..3u8).prop_map(|n| format!("resource in Server::\"s{n}\"")),
            Just("resource is Tool".to_owned()),
            (0..3u8).prop_map(|n| format!("resource is Tool in Server::\"s{n}\"")),
            (0..3u8).prop_map(|n| format!("resource == Route::\"/r{n}\"")),
            Just("resource is Route".to_owned()),
            Just("resource is McpMethod".to_owned()),
        ]
    }

    fn condition() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just(" when { context.authenticated }".to_owned()),
            Just(" when { resource.hasTag(\"a\") && resource.getTag(\"a\") == \"x\" }".to_owned()),
            // Overflows (an evaluation error) when `now` is 2 or more.
            Just(" when { context.now * 4611686018427387904 > 0 }".to_owned()),
            Just(" unless { context.scopes.contains(\"deny\") }".to_owned()),
            Just(" when { context.facts.hasTag(\"f\") }".to_owned()),
            // The placeholders that make room in the static store must never be seen.
            Just(" when { context.facts == Facts::\"room 0\" || Facts::\"room 1\".hasTag(\"f\") }".to_owned()),
            Just(" when { if context.authenticated then context.now * 4611686018427387904 > 0 else true }".to_owned()),
            Just(" when { resource is Tool && resource.server like \"s*\" } unless { context.scopes.isEmpty() }".to_owned()),
            Just(" when { principal in [Role::\"r1\", Role::\"r3\"] && ip(\"10.0.0.1\").isInRange(ip(\"10.0.0.0/8\")) }".to_owned()),
            Just(" when { {a: context.now}.a + 9223372036854775807 > 0 }".to_owned()),
            // Fails without the tag: a list entry must not count on it.
            Just(" when { resource.getTag(\"a\") like \"x*\" }".to_owned()),
            Just(" unless { resource.hasTag(\"b\") || context.now > 2 }".to_owned()),
            Just(" when { {t: resource.hasTag(\"a\")}.t && [resource.hasTag(\"b\")].contains(true) }".to_owned()),
            // Read once per list with the resource open: what stays must be decided per entry.
            Just(" when { resource.name like \"t*\" && context.now > 1 }".to_owned()),
            Just(" when { resource == Tool::\"t1\" || context.now * 4611686018427387904 > 0 }".to_owned()),
            Just(" when { resource is Tool && resource.name == \"t2\" && context.now * 4611686018427387904 > 0 }".to_owned()),
            Just(" when { if resource has server then resource.server == \"s1\" else context.authenticated }".to_owned()),
            Just(" unless { context.now * 4611686018427387904 > 0 || resource in Server::\"s2\" }".to_owned()),
            // The resource's tags read by other paths than `resource.` are arguments too.
            Just(" when { {r: resource}.r.hasTag(\"a\") && {r: resource}.r.getTag(\"a\") == \"x\" }".to_owned()),
            Just(" when { Tool::\"t1\".hasTag(\"a\") }".to_owned()),
            // An entity a literal names may be the entry itself: there for one entry only.
            Just(" when { Tool::\"t1\".name == \"t1\" }".to_owned()),
            Just(" when { Tool::\"t3\" in Server::\"s0\" || Tool::\"t2\" has name }".to_owned()),
            // Residuals that hold extension values, records and sets beside the open resource.
            Just(" when { (if resource in Server::\"s0\" then ip(\"::ffff:102:304\") else ip(\"::1\")).isIpv6() }".to_owned()),
            Just(" when { (if resource in Server::\"s1\" then datetime(\"1970-01-01\").offset(duration(\"-1ms\")) else datetime(\"2024-01-01\")) < datetime(\"2000-01-01\") }".to_owned()),
            Just(" when { resource in [Server::\"s0\", Server::\"s2\"] || context.now * 4611686018427387904 > 0 }".to_owned()),
            Just(" when { {r: resource}.r is Tool && [{r: resource}.r].contains(resource) && resource in Server::\"s1\" }".to_owned()),
            Just(" unless { if resource is Route then context.now * 4611686018427387904 > 0 else resource in Server::\"s0\" }".to_owned()),
        ]
    }

    fn policy() -> impl Strategy<Value = (bool, bool, String, String, String, String)> {
        (
            any::<bool>(),
            prop::bool::weighted(0.2),
            principal_scope(),
            action_scope(),
            resource_scope(),
            condition(),
        )
    }

    fn policy_set() -> impl Strategy<Value = String> {
        prop::collection::vec(policy(), 0..24).prop_map(|policies| {
            policies
                .into_iter()
                .enumerate()
                .map(|(n, (permit, shadow, principal, action, resource, condition))| {
                    let effect = if permit { "permit" } else { "forbid" };
                    let shadow = if shadow { " @shadow" } else { "" };
                    format!(
                        "@id(\"p{n}\"){shadow}\n{effect} ({principal}, {action}, {resource}){condition};\n"
                    )
                })
                .collect()
        })
    }

    #[derive(Debug, Clone)]
    enum Asked {
        Tool { name: u8, server: Option<u8>, tagged: bool },
        Route { method: &'static str, path: u8 },
        Method,
    }

    fn asked() -> impl Strategy<Value = Asked> {
        prop_oneof![
            (0..5u8, prop::option::of(0..3u8), any::<bool>())
                .prop_map(|(name, server, tagged)| Asked::Tool { name, server, tagged }),
            (prop::sample::select(vec!["GET", "POST", "DELETE"]), 0..4u8)
                .prop_map(|(method, path)| Asked::Route { method, path }),
            Just(Asked::Method),
        ]
    }

    pub(super) fn caller() -> impl Strategy<Value = Option<(u8, Vec<u8>, bool)>> {
        prop::option::of((0..4u8, prop::collection::vec(0..4u8, 0..3), any::<bool>()))
    }

    /// The identity a generated caller stands for: subject `u<n>`, roles `r<n>`, and the scope
    /// `deny` when asked.
    pub(super) fn identity(caller: &Option<(u8, Vec<u8>, bool)>) -> Option<Arc<AuthInfo>> {
        caller.as_ref().map(|(subject, roles, deny)| {
            let mut auth = AuthInfo::new(
                CredentialKind::Static,
                format!("u{subject}"),
                roles.iter().map(|role| format!("r{role}")).collect(),
            );
            if *deny {
                auth.scopes = vec!["deny".to_owned()];
            }
            Arc::new(auth)
        })
    }

    fn decide(
        engine: &PolicyEngine,
        caller: &Option<(u8, Vec<u8>, bool)>,
        asked: &Asked,
        facts: bool,
        now: i64,
    ) -> Verdict {
        let auth = identity(caller);
        let tags = Extra::from([("a".to_owned(), serde_json::Value::from("x"))]);
        let none = Extra::new();
        let facts =
            if facts { Extra::from([("f".to_owned(), serde_json::Value::from("1"))]) } else { Extra::new() };
        let (name, server, path);
        let resource = match asked {
            Asked::Tool { name: n, server: s, tagged } => {
                name = format!("t{n}");
                server = s.map(|s| format!("s{s}")).unwrap_or_default();
                Resource::Mcp {
                    kind: McpKind::Tool,
                    name: &name,
                    server: &server,
                    arguments: if *tagged { &tags } else { &none },
                }
            }
            Asked::Route { method, path: p } => {
                path = format!("/r{p}");
                Resource::Route { method, path: &path, template: &path, params: &[] }
            }
            Asked::Method => {
                Resource::Mcp { kind: McpKind::Method, name: "tools/list", server: "s0", arguments: &none }
            }
        };
        engine.evaluate(&Query { auth: auth.as_ref(), resource, facts: &facts, now })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn a_slice_decides_as_cedar_decides_the_whole_set(
            policies in policy_set(),
            requests in prop::collection::vec(
                (caller(), asked(), any::<bool>(), prop_oneof![0..4i64, Just(i64::MAX), Just(i64::MIN)]),
                1..12,
            ),
        ) {
            let sources = with_entities(&[("p.cedar", policies.as_str())], ENTITIES);
            // The oracle: `cedar_policy::Authorizer` over the whole set.
            let cedar = match PolicyEngine::new(&sources) {
                Ok(engine) => engine.with_cedar_authorizer(),
                // A generated set the validator refuses (a scope no action applies to is a
                // warning, not this): nothing to compare.
                Err(error) => return Err(TestCaseError::reject(format!("{error:?}"))),
            };
            let whole = PolicyEngine::new(&sources).unwrap().with_slice_cache(0);
            let sliced = PolicyEngine::new(&sources).unwrap();
            let crowded = PolicyEngine::new(&sources).unwrap().with_slice_cache(2);
            // Twice: the second time from the cache.
            for _ in 0..2 {
                for (caller, asked, facts, now) in &requests {
                    let expected = decide(&cedar, caller, asked, *facts, *now);
                    for engine in [&whole, &sliced, &crowded] {
                        prop_assert_eq!(&decide(engine, caller, asked, *facts, *now), &expected, "{:?} {:?}", caller, asked);
                    }
                }
            }
        }
    }

    /// The arguments a generated tool call may carry: tags `a` and `b`, each absent, `x` or `y`.
    fn argument_sets() -> Vec<Extra> {
        let values = [None, Some("x"), Some("y")];
        let mut sets = Vec::new();
        for a in values {
            for b in values {
                let mut set = Extra::new();
                if let Some(a) = a {
                    set.insert("a".to_owned(), serde_json::Value::from(a));
                }
                if let Some(b) = b {
                    set.insert("b".to_owned(), serde_json::Value::from(b));
                }
                sets.push(set);
            }
        }
        sets
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// A list entry left out is one no call can get through: when `could_allow` says no
        /// for a tool, every call of it is denied, whatever its arguments. And a tool some
        /// call reaches is listed.
        #[test]
        fn an_unlisted_tool_is_denied_for_every_argument(
            policies in policy_set(),
            asked in prop::collection::vec((caller(), 0..5u8, prop::option::of(0..3u8), any::<bool>(), 0..4i64), 1..8),
        ) {
            let sources = with_entities(&[("p.cedar", policies.as_str())], ENTITIES);
            let Ok(engine) = PolicyEngine::new(&sources) else {
                return Err(TestCaseError::reject("refused by the validator"));
            };
            let arguments = argument_sets();
            for (caller, name, server, facts, now) in &asked {
                let auth = identity(caller);
                let name = format!("t{name}");
                let server = server.map(|s| format!("s{s}")).unwrap_or_default();
                let facts = if *facts {
                    Extra::from([("f".to_owned(), serde_json::Value::from("1"))])
                } else {
                    Extra::new()
                };
                let none = Extra::new();
                let tool = |arguments| Resource::Mcp { kind: McpKind::Tool, name: &name, server: &server, arguments };
                let listed = engine.could_allow(&Query { auth: auth.as_ref(), resource: tool(&none), facts: &facts, now: *now });
                let reached: Vec<&Extra> = arguments
                    .iter()
                    .filter(|set| engine.evaluate(&Query { auth: auth.as_ref(), resource: tool(set), facts: &facts, now: *now }).allowed)
                    .collect();
                prop_assert!(listed || reached.is_empty(), "{} unlisted for {:?}, yet {:?} is allowed", name, caller, reached);
                // A list decided in one batch is decided as each entry alone.
                let names: Vec<String> = (0..5).map(|n| format!("t{n}")).collect();
                let mut batch: Vec<Resource<'_>> = names
                    .iter()
                    .map(|name| Resource::Mcp { kind: McpKind::Tool, name, server: &server, arguments: &none })
                    .collect();
                batch.push(Resource::Route { method: "GET", path: "/r0", template: "/r0", params: &[] });
                batch.push(Resource::Route { method: "BREW", path: "/r1", template: "/r1", params: &[] });
                // The same entry again, one of the same name from another server (another
                // entity), and another kind.
                batch.push(batch[0]);
                batch.push(Resource::Mcp { kind: McpKind::Tool, name: "t1", server: "s9", arguments: &none });
                batch.push(Resource::Mcp { kind: McpKind::Prompt, name: "t1", server: &server, arguments: &none });
                // The same tool with arguments (another entity), a route of the same template with
                // another path and with parameters, an MCP resource and a method.
                let tagged = Extra::from([("a".to_owned(), serde_json::Value::from("x"))]);
                let params = [("id".to_owned(), "7".to_owned())];
                batch.push(Resource::Mcp { kind: McpKind::Tool, name: "t2", server: &server, arguments: &tagged });
                batch.push(Resource::Route { method: "GET", path: "/r0/x", template: "/r0", params: &params });
                batch.push(Resource::Route { method: "DELETE", path: "/r2", template: "/r2", params: &params });
                batch.push(Resource::Mcp { kind: McpKind::Resource, name: "file:///r", server: "s0", arguments: &none });
                batch.push(Resource::Mcp { kind: McpKind::Method, name: "tools/list", server: "s0", arguments: &none });
                let alone: Vec<bool> = batch
                    .iter()
                    .map(|&resource| engine.could_allow(&Query { auth: auth.as_ref(), resource, facts: &facts, now: *now }))
                    .collect();
                prop_assert_eq!(engine.could_allow_each(auth.as_ref(), &batch, &facts, *now), alone);
            }
        }
    }

    /// A static entity holding a route or an MCP entity (anywhere in an attribute or a tag)
    /// keeps a list from sharing partial evaluation; other entity values do not.
    #[test]
    fn static_entities_holding_request_resources_are_found() {
        let names = request::Names::new().unwrap();
        let holding = |value: serde_json::Value| {
            let entities = serde_json::json!([
                {"uid": {"type": "Server", "id": "s0"}, "attrs": {"x": value}, "parents": []}
            ]);
            let base = Entities::from_json_value(entities, None).unwrap();
            request::holds_request_resources(&names, &base)
        };
        let entity = |kind: &str| serde_json::json!({"__entity": {"type": kind, "id": "a"}});
        for kind in ["Tool", "Prompt", "Route", "McpResource", "McpMethod"] {
            assert!(holding(entity(kind)), "{kind}");
            assert!(holding(serde_json::json!([1, {"deep": [entity(kind)]}])), "{kind} nested");
        }
        for kind in ["Server", "Role", "User"] {
            assert!(!holding(entity(kind)), "{kind}");
        }
        assert!(!holding(serde_json::json!({"name": "Tool::\"a\"", "n": 1})));
    }

    #[test]
    fn a_request_is_decided_by_the_policies_its_scope_can_match_only() {
        let policies = r#"
            @id("t0-for-r0") permit (principal in Role::"r0", action == Action::"call", resource == Tool::"t0");
            @id("t1-for-r0") permit (principal in Role::"r0", action == Action::"call", resource == Tool::"t1");
            @id("s0-tools") forbid (principal, action, resource in Server::"s0") when { context.now > 5 };
            @id("u0") permit (principal == User::"u0", action, resource);
            @id("anyone") permit (principal, action == Action::"rpc", resource);
            @id("everything") forbid (principal, action, resource) when { context.scopes.contains("deny") };
        "#;
        let engine = PolicyEngine::new(&with_entities(&[("p.cedar", policies)], ENTITIES)).unwrap();
        let snapshot = engine.snapshot();
        let auth = Arc::new(AuthInfo::new(CredentialKind::Static, "u1", vec!["r2".to_owned()]));
        let query = Query {
            auth: Some(&auth),
            resource: Resource::Mcp {
                kind: McpKind::Tool,
                name: "t0",
                server: "s0",
                arguments: &Extra::new(),
            },
            facts: &Extra::new(),
            now: 0,
        };
        let (request, entities) =
            request::build(&engine.names, &snapshot, &engine.principals, &query).unwrap();
        let (slice::Slice::Set(set), slice::Cache::Miss) = snapshot.sliced.slice(&request, &entities, 100)
        else {
            panic!("expected a new slice");
        };
        let mut ids: Vec<String> = set.iter().map(|compiled| compiled.policy.id().to_string()).collect();
        ids.sort_unstable();
        // r2 is in r0 through r1; the tool is in s0; not t1's grant, u0's, or the rpc rule.
        assert_eq!(ids, ["everything", "s0-tools", "t0-for-r0"]);
        assert!(engine.evaluate(&query).allowed);
    }

    #[test]
    fn the_set_with_shadow_policies_shares_the_enforced_policies_compiled_once() {
        let policies = r#"
            @id("grant") permit (principal in Role::"r0", action == Action::"call", resource == Tool::"t0");
            @id("trial") @shadow forbid (principal, action, resource == Tool::"t0");
        "#;
        let engine = PolicyEngine::new(&with_entities(&[("p.cedar", policies)], ENTITIES)).unwrap();
        let snapshot = engine.snapshot();
        let with_shadow = snapshot.sliced_with_shadow.as_ref().expect("a shadow policy");
        let find = |slicer: &slice::Slicer, id: &str| {
            slicer.all().iter().find(|compiled| compiled.policy.id().to_string() == id).cloned()
        };
        let (enforced, shared) =
            (find(&snapshot.sliced, "grant").unwrap(), find(with_shadow, "grant").unwrap());
        assert!(Arc::ptr_eq(&enforced, &shared), "the enforced policy was compiled twice");
        assert!(find(&snapshot.sliced, "trial").is_none());
        assert!(find(with_shadow, "trial").is_some());
    }

    #[test]
    fn slices_asked_first_never_keep_the_others_out_of_the_cache() {
        // One slice per tool; room for two slices of two policies.
        let policies: String = (0..6)
            .map(|n| {
                format!(
                    "@id(\"t{n}\") permit (principal, action == Action::\"call\", resource == Tool::\"t{n}\");\n\
                     @id(\"t{n}-r0\") permit (principal in Role::\"r0\", action, resource == Tool::\"t{n}\");\n"
                )
            })
            .collect();
        let engine = PolicyEngine::new(&with_entities(&[("p.cedar", policies.as_str())], ENTITIES)).unwrap();
        let snapshot = engine.snapshot();
        let member = Arc::new(AuthInfo::new(CredentialKind::Static, "u1", vec!["r0".to_owned()]));
        let slice_of = |auth: Option<&Arc<AuthInfo>>, tool: &str| {
            let query = Query {
                auth,
                resource: Resource::Mcp {
                    kind: McpKind::Tool,
                    name: tool,
                    server: "",
                    arguments: &Extra::new(),
                },
                facts: &Extra::new(),
                now: 0,
            };
            let (request, entities) =
                request::build(&engine.names, &snapshot, &engine.principals, &query).unwrap();
            let (slice, cache) = snapshot.sliced.slice(&request, &entities, 4);
            let slice::Slice::Set(set) = slice else { panic!("sliced") };
            (set.len(), cache)
        };
        // Callers without a credential fill it with slices of their own...
        assert_eq!(slice_of(None, "t0"), (1, slice::Cache::Miss));
        assert_eq!(slice_of(None, "t1"), (1, slice::Cache::Miss));
        assert_eq!(slice_of(None, "t2"), (1, slice::Cache::Miss));
        assert_eq!(slice_of(None, "t3"), (1, slice::Cache::Miss));
        // ...and a member's slice still gets in, then serves from the cache.
        assert_eq!(slice_of(Some(&member), "t0"), (2, slice::Cache::Reset));
        assert_eq!(slice_of(Some(&member), "t0"), (2, slice::Cache::Hit));
        assert_eq!(slice_of(Some(&member), "t1"), (2, slice::Cache::Miss));
        assert_eq!(slice_of(Some(&member), "t0"), (2, slice::Cache::Hit));
        // A slice larger than the whole bound is used, not kept.
        let (request, entities) = request::build(
            &engine.names,
            &snapshot,
            &engine.principals,
            &Query {
                auth: Some(&member),
                resource: Resource::Mcp {
                    kind: McpKind::Tool,
                    name: "t5",
                    server: "",
                    arguments: &Extra::new(),
                },
                facts: &Extra::new(),
                now: 0,
            },
        )
        .unwrap();
        assert!(matches!(
            snapshot.sliced.slice(&request, &entities, 1),
            (slice::Slice::Set(_), slice::Cache::TooLarge)
        ));
        assert!(matches!(
            snapshot.sliced.slice(&request, &entities, 1),
            (slice::Slice::Set(_), slice::Cache::TooLarge)
        ));
    }
}

mod request_entities {
    use std::collections::{BTreeSet, HashSet};
    use std::str::FromStr;

    use cedar_policy::{Entities, Entity, EntityUid, RestrictedExpression};
    use proptest::prelude::*;

    use super::*;

    fn uid(text: &str) -> EntityUid {
        EntityUid::from_str(text).unwrap()
    }

    /// Every entity of the store and its ancestors, comparable.
    fn closure(entities: &Entities) -> BTreeSet<(String, BTreeSet<String>)> {
        entities
            .iter()
            .map(|entity| {
                let ancestors = entities.ancestors(&entity.uid()).unwrap().map(ToString::to_string).collect();
                (entity.uid().to_string(), ancestors)
            })
            .collect()
    }

    /// The static entities: roles `r0..r2` then servers `s0..s4`, each with parents among
    /// the ones before it (a DAG); sometimes one of them under a request's own entity (the
    /// tool `t0` or the user `u0`) or under the uid of a placeholder the store is given room
    /// with (`Facts::"room 0"`).
    fn base() -> impl Strategy<Value = (Vec<Vec<bool>>, Option<(u8, u8)>)> {
        (
            prop::collection::vec(prop::collection::vec(any::<bool>(), 8), 8),
            prop::option::of((0..8u8, 0..3u8)),
        )
    }

    fn node(index: usize) -> EntityUid {
        if index < 3 {
            uid(&format!(r#"Role::"r{index}""#))
        } else {
            uid(&format!(r#"Server::"s{}""#, index - 3))
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// INVARIANT (`request::with_request_entities`): adding a request's entities without
        /// recomputing the closure gives the store Cedar's own closure gives.
        #[test]
        fn request_entities_are_closed_as_cedar_closes_them(
            (edges, under) in base(),
            roles in prop::collection::vec(0..4u8, 0..3),
            server in prop::option::of(0..6u8),
            tool in 0..3u8,
            facts in any::<bool>(),
        ) {
            let names = request::Names::new().unwrap();
            let mut statics = Vec::new();
            for (child, parents) in edges.iter().enumerate() {
                let mut parents: HashSet<EntityUid> = parents[..child]
                    .iter()
                    .enumerate()
                    .filter(|(_, edge)| **edge)
                    .map(|(parent, _)| node(parent))
                    .collect();
                match under {
                    Some((index, 0)) if usize::from(index) == child => parents.insert(uid(r#"Tool::"t0""#)),
                    Some((index, 1)) if usize::from(index) == child => parents.insert(uid(r#"User::"u0""#)),
                    Some((index, _)) if usize::from(index) == child => {
                        parents.insert(uid(r#"Facts::"room 0""#))
                    }
                    _ => false,
                };
                statics.push(Entity::new_no_attrs(node(child), parents));
            }
            let base = Entities::from_entities(statics, None).unwrap();
            let ancestors = request::request_ancestors(&names, &base);
            prop_assert_eq!(ancestors.is_empty(), under.is_none());

            // `r3` is a role and `s5` a server no entity describes.
            let auth = AuthInfo::new(
                CredentialKind::Static,
                "u0",
                roles.iter().map(|role| format!("r{role}")).collect(),
            );
            let principal = Entity::new_no_attrs(
                uid(r#"User::"u0""#),
                roles.iter().map(|role| uid(&format!(r#"Role::"r{role}""#))).collect(),
            );
            let resource = Entity::new_with_tags(
                uid(&format!(r#"Tool::"t{tool}""#)),
                [("name".to_owned(), RestrictedExpression::new_string(format!("t{tool}")))],
                server.map(|server| uid(&format!(r#"Server::"s{server}""#))),
                [("a".to_owned(), RestrictedExpression::new_string("x".to_owned()))],
            )
            .unwrap();
            let mut added = vec![resource];
            if facts {
                added.push(Entity::new_no_attrs(uid(r#"Facts::"request""#), HashSet::new()));
            }
            let cedar = base.clone().add_entities(std::iter::once(principal).chain(added.clone()), None);
            let added = added.iter().map(|entity| entity.as_ref().clone()).collect();
            // As a snapshot holds it: with room made for a request's entities.
            let roomy = request::with_room_for_requests(&names, base.clone());
            let ours = request::Prepared::new(&names, &roomy, 0, Some(&auth)).and_then(|prepared| {
                request::with_request_entities(&roomy, prepared.principal(), added, &ancestors)
            });
            // A server under the tool that is in it, or a role under the user who has it, is a
            // cycle: refused both ways.
            let (ours, cedar) = match (ours, cedar) {
                (Ok(ours), Ok(cedar)) => (ours, cedar),
                (Err(_), Err(_)) => return Ok(()),
                (ours, cedar) => {
                    return Err(TestCaseError::fail(format!("ours {:?}, Cedar's {:?}", ours.err(), cedar.err())))
                }
            };
            prop_assert_eq!(closure(&ours), closure(&cedar));
            prop_assert!(ours.get(&uid(r#"User::"u0""#)).is_some());
            let tagged = uid(&format!(r#"Tool::"t{tool}""#));
            prop_assert_eq!(
                ours.get(&tagged).unwrap().tag("a").map(|tag| tag.unwrap().to_string()),
                cedar.get(&tagged).unwrap().tag("a").map(|tag| tag.unwrap().to_string())
            );
            prop_assert_eq!(
                ours.get(&tagged).unwrap().attr("name").map(|attr| attr.unwrap().to_string()),
                cedar.get(&tagged).unwrap().attr("name").map(|attr| attr.unwrap().to_string())
            );
        }
    }
}

/// Making room in the static store (placeholders added, then removed) must not strip a
/// static entity's parent that has a placeholder's uid, which a schema may allow.
#[test]
fn a_static_entity_under_a_placeholder_uid_keeps_its_parent() {
    let mut set = with_entities(
        &[(
            "p.cedar",
            "@id(\"team\") permit (principal, action, resource) when { Team::\"t\" in Facts::\"room 0\" };",
        )],
        r#"[{"uid": {"type": "Team", "id": "t"}, "attrs": {}, "parents": [{"type": "Facts", "id": "room 0"}]}]"#,
    );
    set.schema.text.push_str("\nentity Team in [Facts];\n");
    let engine = PolicyEngine::new(&set).unwrap();
    let verdict = ask(&engine, None, route("GET", "/x"));
    assert!(verdict.allowed, "{verdict:?}");
    assert_eq!(verdict.policy_ids, ["team"]);
}

/// The per-identity cache stays within its bound by dropping a tenth when full of live
/// identities (not everything, which made memory a sawtooth), and purges dead ones first.
#[test]
fn the_principal_cache_stays_bounded_and_level() {
    let engine = PolicyEngine::new(&PolicySources::embedded_demo()).unwrap();
    let snapshot = engine.snapshot();
    let cache = request::PrincipalCache::with_max(20);
    let live: Vec<Arc<AuthInfo>> = (0..60)
        .map(|n| Arc::new(AuthInfo::new(CredentialKind::Static, format!("u{n}"), vec!["user".to_owned()])))
        .collect();
    for (n, auth) in live.iter().enumerate() {
        cache.get(&engine.names, &snapshot, auth).unwrap();
        assert!(cache.len() <= 20, "after {n}: {} entries", cache.len());
        if n >= 20 {
            assert!(cache.len() >= 18, "after {n}: {} entries, the cache was emptied", cache.len());
        }
    }
    // Filled up exactly, then every identity dropped: the next one finds only dead entries.
    let mut more = Vec::new();
    while cache.len() < 20 {
        let auth = Arc::new(AuthInfo::new(CredentialKind::Static, format!("m{}", more.len()), Vec::new()));
        cache.get(&engine.names, &snapshot, &auth).unwrap();
        more.push(auth);
    }
    drop(live);
    drop(more);
    let fresh = Arc::new(AuthInfo::new(CredentialKind::Static, "fresh", Vec::new()));
    cache.get(&engine.names, &snapshot, &fresh).unwrap();
    // The dead identities went, all of them, and nothing else.
    assert_eq!(cache.len(), 1);
}

/// Concrete probes of `could_allow_each` against per-entry `could_allow` (the Lister's
/// partial evaluation with the resource open, and the batch's shared store).
mod lister_probes {
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;

    use super::slicing::{caller, identity};
    use super::*;

    const ENTITIES: &str = r#"[
        {"uid": {"type": "Role", "id": "r1"}, "attrs": {}, "parents": [{"type": "Role", "id": "r0"}]},
        {"uid": {"type": "Server", "id": "s0"}, "attrs": {}, "parents": []}
    ]"#;

    fn tool<'a>(name: &'a str, server: &'a str, arguments: &'a Extra) -> Resource<'a> {
        Resource::Mcp { kind: McpKind::Tool, name, server, arguments }
    }

    /// `(could_allow_each, each alone)` for `batch` over `policies` and `entities`.
    fn both(
        policies: &str,
        entities: &str,
        auth: Option<&Arc<AuthInfo>>,
        batch: &[Resource<'_>],
        facts: &Extra,
        now: i64,
    ) -> (Vec<bool>, Vec<bool>) {
        let engine = PolicyEngine::new(&with_entities(&[("p.cedar", policies)], entities))
            .unwrap_or_else(|error| panic!("{error:?}"));
        assert!(engine.snapshot().lists_share_store, "the batch path is not taken");
        each_and_alone(&engine, auth, batch, facts, now)
    }

    /// `(could_allow_each, each alone)` for `batch` by `engine`.
    fn each_and_alone(
        engine: &PolicyEngine,
        auth: Option<&Arc<AuthInfo>>,
        batch: &[Resource<'_>],
        facts: &Extra,
        now: i64,
    ) -> (Vec<bool>, Vec<bool>) {
        let each = engine.could_allow_each(auth, batch, facts, now);
        let alone =
            batch.iter().map(|&resource| engine.could_allow(&Query { auth, resource, facts, now })).collect();
        (each, alone)
    }

    /// The engine for a generated set; a set the validator refuses is rejected.
    fn engine_for(policies: &str) -> Result<PolicyEngine, TestCaseError> {
        PolicyEngine::new(&with_entities(&[("p.cedar", policies)], ENTITIES))
            .map_err(|error| TestCaseError::reject(format!("{error:?}")))
    }

    /// A set of generated policies `(permit, action scope, when, unless)`, on any principal
    /// and resource.
    fn conditioned(policies: &[(bool, &str, String, Option<String>)]) -> String {
        policies
            .iter()
            .enumerate()
            .map(|(n, (permit, action, when, unless))| {
                let effect = if *permit { "permit" } else { "forbid" };
                let unless = unless.as_ref().map(|u| format!(" unless {{ {u} }}")).unwrap_or_default();
                format!(
                    "@id(\"p{n}\")\n{effect} (principal, {action}, resource) when {{ {when} }}{unless};\n"
                )
            })
            .collect()
    }

    fn tools_t1_t2(policies: &str) -> (Vec<bool>, Vec<bool>) {
        let none = Extra::new();
        let auth = user(&["r1"], &[]);
        let batch = [tool("t1", "s0", &none), tool("t2", "s0", &none)];
        both(policies, ENTITIES, Some(&auth), &batch, &Extra::new(), 0)
    }

    /// An IPv4-mapped IPv6 address (`::ffff:102:304`) prints as `::ffff:1.2.3.4/128`, which
    /// Cedar's `ip()` refuses: a residual holding the value must not fail when evaluated
    /// again (it keeps the constructor's own argument).
    #[test]
    fn an_ipv4_mapped_address_in_an_if_branch_of_a_residual() {
        let policies = r#"
            @id("mapped") permit (principal, action == Action::"call", resource)
            when { (if resource.name == "t1" then ip("::ffff:102:304") else ip("::1")).isIpv6() };
        "#;
        let (each, alone) = tools_t1_t2(policies);
        assert_eq!(each, alone);
    }

    #[test]
    fn an_ipv4_mapped_address_in_a_record_of_a_residual() {
        let policies = r#"
            @id("all") permit (principal, action, resource);
            @id("mapped") forbid (principal, action == Action::"call", resource)
            when { {n: resource.name, a: ip("::ffff:0:0/96")}.n == "t9" };
        "#;
        let (each, alone) = tools_t1_t2(policies);
        assert_eq!(each, alone);
    }

    #[test]
    fn an_ipv4_mapped_range_beside_the_resource_in_a_set() {
        let policies = r#"
            @id("all") permit (principal, action, resource);
            @id("mapped") forbid (principal, action == Action::"call", resource)
            when { [ip("::ffff:0:0/96")].contains(ip("::1")) && resource.name == "t9"
                   || ([resource.name].contains("t9") && [ip("::ffff:a00:1")].isEmpty()) };
        "#;
        let (each, alone) = tools_t1_t2(policies);
        assert_eq!(each, alone);
    }

    /// Other extension values round-trip: datetimes far from the epoch, negative durations and
    /// decimals.
    #[test]
    fn datetimes_durations_and_decimals_in_residuals_hold() {
        let policies = r#"
            @id("all") permit (principal, action, resource);
            @id("dt") forbid (principal, action == Action::"call", resource)
            when { (if resource.name == "t1" then datetime("1969-12-31T23:59:59.999Z") else datetime("9999-12-31T23:59:59.999Z")) < datetime("1900-01-01") };
            @id("dur") forbid (principal, action == Action::"call", resource)
            when { (if resource.name == "t1" then duration("-1d2h3m4s5ms") else datetime("1970-01-01").durationSince(datetime("0001-01-01"))) > duration("1d") };
            @id("dec") forbid (principal, action == Action::"call", resource)
            when { (if resource.name == "t1" then decimal("-0.0001") else decimal("-922337203685477.5808")).greaterThan(decimal("0.0")) };
        "#;
        let (each, alone) = tools_t1_t2(policies);
        assert_eq!(each, alone);
    }

    const MANY: &str = r#"
        @id("all") permit (principal, action, resource);
        @id("s0") forbid (principal, action, resource in Server::"s0") when { context.now > 5 };
        @id("name") forbid (principal, action == Action::"call", resource) when { resource.name == "t3" };
        @id("srv") forbid (principal, action == Action::"call", resource) when { resource.server == "s1" && context.authenticated };
        @id("r0") forbid (principal in Role::"r0", action, resource == Tool::"t4");
        @id("route") forbid (principal, action == Action::"GET", resource) when { resource.path like "/admin*" };
        @id("rtag") forbid (principal, action == Action::"GET", resource is Route) when { resource.hasTag("id") && resource.getTag("id") == "7" };
        @id("facts") forbid (principal, action, resource) when { context.facts.hasTag("f") && resource is Prompt };
        @id("prompt") forbid (principal, action == Action::"get_prompt", resource) when { resource.name == "p1" && principal is Anonymous };
        @id("ttag") forbid (principal, action == Action::"call", resource) when { (if resource.name == "t5" then {r: resource} else {r: resource}).r.hasTag("a") };
    "#;

    /// Static entities of an entry's uid (the same entity, and a different one), repeated
    /// entries with other arguments, other servers, routes with parameters, prompts,
    /// anonymous callers and facts.
    #[test]
    fn static_twins_repeats_routes_prompts_and_anonymous_callers() {
        let none = Extra::new();
        let args = Extra::from([("a".to_owned(), serde_json::Value::from("x"))]);
        let params = [("id".to_owned(), "7".to_owned())];
        let routes: Vec<Resource<'_>> = vec![
            Resource::Route { method: "GET", path: "/admin/x", template: "/admin/{id}", params: &params },
            Resource::Route { method: "GET", path: "/admin/y", template: "/admin/{id}", params: &[] },
            Resource::Route { method: "GET", path: "/u", template: "/u", params: &params },
            Resource::Route { method: "POST", path: "/u", template: "/u", params: &[] },
            Resource::Route { method: "BREW", path: "/u", template: "/u", params: &[] },
        ];
        let mut batch = vec![
            tool("t1", "s0", &none),
            tool("t1", "s0", &args),
            tool("t1", "s1", &none),
            tool("t2", "s0", &none),
            tool("t3", "", &none),
            tool("t3", "s0", &none),
            tool("t4", "s1", &none),
            tool("t5", "s0", &args),
            tool("t5", "s0", &none),
            tool("t1", "s0", &none),
            Resource::Mcp { kind: McpKind::Prompt, name: "p1", server: "", arguments: &none },
            Resource::Mcp { kind: McpKind::Prompt, name: "p1", server: "s0", arguments: &none },
            Resource::Mcp { kind: McpKind::Resource, name: "file:///a", server: "s0", arguments: &none },
            Resource::Mcp { kind: McpKind::Method, name: "tools/list", server: "s0", arguments: &none },
        ];
        batch.extend(routes);
        let facts = Extra::from([("f".to_owned(), serde_json::Value::from("1"))]);
        let member = user(&["r1"], &[]);
        for entities in [ENTITIES] {
            for auth in [None, Some(&member)] {
                for facts in [&Extra::new(), &facts] {
                    for now in [0, 9, i64::MAX] {
                        let (each, alone) = both(MANY, entities, auth, &batch, facts, now);
                        assert_eq!(each, alone, "{entities} {auth:?} {facts:?} {now}");
                    }
                }
            }
        }
    }

    /// A tag read through anything but `resource` itself (a record, here) is an argument too:
    /// a tool some call of which is allowed is listed.
    #[test]
    fn a_tag_read_through_a_record_lists_a_callable_tool() {
        let policies = r#"
            @id("tagged") permit (principal, action == Action::"call", resource)
            when { {r: resource}.r.hasTag("a") && {r: resource}.r.getTag("a") == "x" };
        "#;
        let engine = PolicyEngine::new(&with_entities(&[("p.cedar", policies)], ENTITIES)).unwrap();
        let none = Extra::new();
        let args = Extra::from([("a".to_owned(), serde_json::Value::from("x"))]);
        let query =
            |arguments| Query { auth: None, resource: tool("t1", "s0", arguments), facts: &none, now: 0 };
        assert!(engine.evaluate(&query(&args)).allowed);
        assert!(engine.could_allow(&query(&none)), "listed, since a call with a = x is allowed");
    }

    /// Conditions on tools only (so every set validates), shaped to leave residuals of every
    /// kind when the resource is open: extension values beside the resource, records and sets
    /// holding it, `if` on it, errors after it, `is`/`==` against other types.
    fn tool_condition() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just(" when { (if resource.name == \"t1\" then ip(\"::ffff:102:304\") else ip(\"::1\")).isIpv6() }".to_owned()),
            Just(" when { {n: resource.name, a: ip(\"::ffff:0:0/96\"), d: decimal(\"-0.5\")}.n like \"t*2\" }".to_owned()),
            Just(" when { (if resource in Server::\"s1\" then datetime(\"1970-01-01\").offset(duration(\"-1ms\")) else datetime(\"2024-01-01\")) < datetime(\"2000-01-01\") }".to_owned()),
            Just(" when { (if resource.server == \"s0\" then datetime(\"2024-01-01\").toDate() else datetime(\"2024-01-01T10:00:00Z\")).toTime() > duration(\"1h\") }".to_owned()),
            Just(" when { resource in [Server::\"s0\", Server::\"s2\"] }".to_owned()),
            Just(" when { {r: resource}.r in Server::\"s1\" || context.now * 4611686018427387904 > 0 }".to_owned()),
            Just(" when { [resource.name].contains(\"t3\") || [context.now * 4611686018427387904].isEmpty() }".to_owned()),
            Just(" when { if resource.name like \"t*\" then context.now * 4611686018427387904 > 0 else false }".to_owned()),
            Just(" when { if resource.name == \"t4\" then false else context.now * 4611686018427387904 > 0 }".to_owned()),
            Just(" when { resource.name == \"t0\" && resource.hasTag(\"a\") && resource.getTag(\"a\") == \"x\" }".to_owned()),
            Just(" when { resource.hasTag(\"a\") || resource.name == \"t2\" && resource.server like \"s*\" }".to_owned()),
            Just(" when { [resource.name, resource.server].containsAny([\"t1\", \"s2\"]) }".to_owned()),
            Just(" when { {a: resource.name}.a == \"t1\" && {b: context.now}.b + 9223372036854775807 > 0 }".to_owned()),
            Just(" when { resource has server && resource.server == \"\" }".to_owned()),
            Just(" when { resource.name like \"*1\" } unless { context.scopes.contains(\"deny\") }".to_owned()),
            Just(" unless { resource.name == \"t2\" || context.now * 4611686018427387904 > 0 }".to_owned()),
            Just(" when { principal in Role::\"r1\" && resource.server == \"s0\" || principal is Anonymous && resource.name == \"t3\" }".to_owned()),
            Just(" when { context.facts.hasTag(\"f\") && resource.name == context.facts.getTag(\"f\") }".to_owned()),
            Just(" when { (if resource.name == \"t1\" then resource else resource).name == \"t1\" }".to_owned()),
            Just(" when { (resource.name == \"t0\" || resource.name == \"t1\") && decimal(\"1.5\").lessThan(if resource.name == \"t1\" then decimal(\"2.0\") else decimal(\"1.0\")) }".to_owned()),
        ]
    }

    fn tool_policy_set() -> impl Strategy<Value = String> {
        let scope = prop_oneof![
            Just("resource".to_owned()),
            (0..5u8).prop_map(|n| format!("resource == Tool::\"t{n}\"")),
            (0..3u8).prop_map(|n| format!("resource in Server::\"s{n}\"")),
            Just("resource is Tool".to_owned()),
            (0..3u8).prop_map(|n| format!("resource is Tool in Server::\"s{n}\"")),
        ];
        let principal = prop_oneof![
            Just("principal".to_owned()),
            (0..3u8).prop_map(|n| format!("principal in Role::\"r{n}\"")),
            Just("principal is Anonymous".to_owned()),
            (0..2u8).prop_map(|n| format!("principal == User::\"u{n}\"")),
        ];
        prop::collection::vec((any::<bool>(), principal, scope, tool_condition()), 0..10).prop_map(|policies| {
            policies
                .into_iter()
                .enumerate()
                .map(|(n, (permit, principal, resource, condition))| {
                    let effect = if permit { "permit" } else { "forbid" };
                    format!("@id(\"p{n}\")\n{effect} ({principal}, action == Action::\"call\", {resource}){condition};\n")
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Lists of tools (repeated, with and without arguments, from several servers) are
        /// decided as each tool alone, over residuals of every shape.
        #[test]
        fn a_tool_list_is_decided_as_each_tool_alone(
            policies in tool_policy_set(),
            entries in prop::collection::vec((0..5u8, prop::option::of(0..3u8), any::<bool>()), 1..10),
            caller in caller(),
            facts in prop::option::of(0..5u8),
            now in prop_oneof![0..3i64, Just(i64::MAX)],
        ) {
            let engine = PolicyEngine::new(&with_entities(&[("p.cedar", policies.as_str())], ENTITIES))
                .unwrap_or_else(|error| panic!("{error:?}\n{policies}"));
            let auth = identity(&caller);
            let facts = facts.map(|n| Extra::from([("f".to_owned(), serde_json::Value::from(format!("t{n}")))])).unwrap_or_default();
            let none = Extra::new();
            let tagged = Extra::from([("a".to_owned(), serde_json::Value::from("x"))]);
            let names: Vec<(String, String, bool)> = entries
                .iter()
                .map(|(name, server, tags)| (format!("t{name}"), server.map(|s| format!("s{s}")).unwrap_or_default(), *tags))
                .collect();
            let batch: Vec<Resource<'_>> = names
                .iter()
                .map(|(name, server, tags)| tool(name, server, if *tags { &tagged } else { &none }))
                .collect();
            let (each, alone) = each_and_alone(&engine, auth.as_ref(), &batch, &facts, now);
            prop_assert_eq!(each, alone, "{}", policies);
        }
    }

    /// Well-typed random conditions over a tool (by construction, so the validator keeps
    /// them): booleans, strings, longs that may overflow, IP addresses and string sets, mixed
    /// through `if`, `&&`, `||`, records and sets.
    fn typed_bool(generic: bool) -> BoxedStrategy<String> {
        let leaf_bool = prop_oneof![
            Just("true".to_owned()),
            Just("false".to_owned()),
            Just("context.authenticated".to_owned()),
            (0..3u8).prop_map(|n| format!("resource in Server::\"s{n}\"")),
            Just("resource in [Server::\"s0\", Server::\"s2\"]".to_owned()),
            Just("resource.hasTag(\"a\")".to_owned()),
            Just("resource has server".to_owned()),
            Just("resource is Tool".to_owned()),
            Just("resource is Route".to_owned()),
            Just("(resource is Prompt || resource is McpMethod)".to_owned()),
            Just("(resource == Route::\"/r0\" || resource == Prompt::\"t1\")".to_owned()),
            (0..3u8).prop_map(|n| format!("principal in Role::\"r{n}\"")),
            Just("principal is Anonymous".to_owned()),
            Just("context.facts.hasTag(\"f\")".to_owned()),
            (0..5u8).prop_map(|n| format!("resource == Tool::\"t{n}\"")),
        ];
        leaf_bool
            .prop_recursive(4, 40, 3, move |inner| {
                let b = inner.clone();
                let s = if generic { generic_string(inner.clone()) } else { typed_string(inner.clone()) };
                let l = typed_long(inner.clone());
                let ip = typed_ip(inner.clone());
                prop_oneof![
                    (b.clone(), b.clone()).prop_map(|(x, y)| format!("({x} && {y})")),
                    (b.clone(), b.clone()).prop_map(|(x, y)| format!("({x} || {y})")),
                    b.clone().prop_map(|x| format!("!({x})")),
                    (b.clone(), b.clone(), b.clone())
                        .prop_map(|(c, x, y)| format!("(if {c} then {x} else {y})")),
                    (s.clone(), s.clone()).prop_map(|(x, y)| format!("({x} == {y})")),
                    s.clone().prop_map(|x| format!("({x} like \"t*\")")),
                    (l.clone(), l.clone()).prop_map(|(x, y)| format!("({x} > {y})")),
                    (s.clone(), s.clone(), s.clone())
                        .prop_map(|(x, y, z)| format!("[{x}, {y}].contains({z})")),
                    (s.clone(), s.clone()).prop_map(|(x, y)| format!("[{x}].containsAny([{y}, \"s2\"])")),
                    (s.clone(), b.clone()).prop_map(|(x, y)| format!("{{s: {x}, b: {y}}}.b")),
                    (b.clone(), ip.clone()).prop_map(|(x, i)| format!("{{b: {x}, i: {i}}}.b")),
                    ip.clone().prop_map(|i| format!("{i}.isIpv6()")),
                    (ip.clone(), ip).prop_map(|(i, j)| format!("{i}.isInRange({j})")),
                    (b.clone(), l).prop_map(|(x, n)| format!("({{b: {x}, n: {n}}} has b)")),
                    s.prop_map(|x| format!("context.scopes.contains({x})")),
                ]
            })
            .boxed()
    }

    fn typed_string(b: BoxedStrategy<String>) -> BoxedStrategy<String> {
        prop_oneof![
            (0..4u8).prop_map(|n| format!("\"t{n}\"")),
            Just("\"s0\"".to_owned()),
            Just("resource.name".to_owned()),
            Just("resource.server".to_owned()),
            Just("(if resource.hasTag(\"a\") then resource.getTag(\"a\") else \"z\")".to_owned()),
            Just("(if context.facts.hasTag(\"f\") then context.facts.getTag(\"f\") else \"\")".to_owned()),
            (b.clone(), b).prop_map(|(c, x)| format!(
                "(if {c} then resource.name else (if {x} then \"t1\" else resource.server))"
            )),
            Just("{s: resource.name}.s".to_owned()),
        ]
        .boxed()
    }

    fn typed_long(b: BoxedStrategy<String>) -> BoxedStrategy<String> {
        prop_oneof![
            Just("0".to_owned()),
            Just("context.now".to_owned()),
            Just("(context.now * 4611686018427387904)".to_owned()),
            Just("(context.now + 9223372036854775807)".to_owned()),
            b.prop_map(|c| format!("(if {c} then context.now * 4611686018427387904 else 1)")),
        ]
        .boxed()
    }

    fn typed_ip(b: BoxedStrategy<String>) -> BoxedStrategy<String> {
        prop_oneof![
            Just("ip(\"::ffff:102:304\")".to_owned()),
            Just("ip(\"::ffff:0:0/96\")".to_owned()),
            Just("ip(\"10.0.0.1\")".to_owned()),
            b.prop_map(|c| format!("(if {c} then ip(\"::ffff:102:304\") else ip(\"::1\"))")),
        ]
        .boxed()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Random well-typed conditions: a list of tools decided at once is decided as each
        /// tool alone.
        #[test]
        fn random_conditions_decide_a_list_as_each_entry_alone(
            policies in prop::collection::vec((any::<bool>(), Just("action == Action::\"call\""), typed_bool(false), prop::option::of(typed_bool(false))), 1..5),
            caller in caller(),
            facts in any::<bool>(),
            now in prop_oneof![0..3i64, Just(i64::MAX)],
        ) {
            let text = conditioned(&policies);
            let engine = engine_for(&text)?;
            let auth = identity(&caller);
            let facts = if facts { Extra::from([("f".to_owned(), serde_json::Value::from("t1"))]) } else { Extra::new() };
            let none = Extra::new();
            let tagged = Extra::from([("a".to_owned(), serde_json::Value::from("t2"))]);
            let batch = [
                tool("t0", "s0", &none),
                tool("t1", "s0", &none),
                tool("t1", "s1", &none),
                tool("t2", "", &none),
                tool("t3", "s2", &tagged),
                tool("t1", "s0", &none),
            ];
            let (each, alone) = each_and_alone(&engine, auth.as_ref(), &batch, &facts, now);
            prop_assert_eq!(each, alone, "{}", text);
        }
    }

    /// Strings any resource has, read through `is`: with the resource open and typed, Cedar
    /// decides `resource is T` once for the list.
    fn generic_string(b: BoxedStrategy<String>) -> BoxedStrategy<String> {
        prop_oneof![
            (0..4u8).prop_map(|n| format!("\"t{n}\"")),
            Just("\"/r0\"".to_owned()),
            Just("(if resource is Route then resource.template else resource.name)".to_owned()),
            Just("(if resource is Route then resource.path else resource.server)".to_owned()),
            Just("(if resource.hasTag(\"id\") then resource.getTag(\"id\") else \"z\")".to_owned()),
            b.prop_map(|c| format!("(if {c} && resource is Tool then resource.name else \"t1\")")),
        ]
        .boxed()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Random well-typed conditions for any action: a mixed list (tools, prompts, MCP
        /// resources, methods, routes of several methods) is decided as each entry alone.
        #[test]
        fn random_conditions_decide_a_mixed_list_as_each_entry_alone(
            policies in prop::collection::vec((
                any::<bool>(),
                prop::sample::select(vec!["action", "action in Action::\"read\"", "action == Action::\"get_prompt\"", "action in [Action::\"call\", Action::\"POST\"]"]),
                typed_bool(true),
                prop::option::of(typed_bool(true)),
            ), 1..5),
            caller in caller(),
            now in prop_oneof![0..3i64, Just(i64::MAX)],
        ) {
            let text = conditioned(&policies);
            let engine = engine_for(&text)?;
            let auth = identity(&caller);
            let facts = Extra::new();
            let none = Extra::new();
            let tagged = Extra::from([("id".to_owned(), serde_json::Value::from("t2"))]);
            let params = [("id".to_owned(), "7".to_owned())];
            let batch = [
                tool("t1", "s0", &none),
                tool("t2", "", &tagged),
                Resource::Mcp { kind: McpKind::Prompt, name: "t1", server: "s0", arguments: &none },
                Resource::Mcp { kind: McpKind::Prompt, name: "t3", server: "s1", arguments: &none },
                Resource::Mcp { kind: McpKind::Resource, name: "t1", server: "s0", arguments: &none },
                Resource::Mcp { kind: McpKind::Method, name: "tools/list", server: "s0", arguments: &none },
                Resource::Route { method: "GET", path: "/r0", template: "/r0", params: &[] },
                Resource::Route { method: "POST", path: "/r0", template: "/r0", params: &[] },
                Resource::Route { method: "GET", path: "/r0/x", template: "/r0", params: &params },
                Resource::Route { method: "HEAD", path: "/t1", template: "/t1", params: &params },
                Resource::Route { method: "BREW", path: "/r0", template: "/r0", params: &[] },
                tool("t1", "s0", &none),
            ];
            let (each, alone) = each_and_alone(&engine, auth.as_ref(), &batch, &facts, now);
            prop_assert_eq!(each, alone, "{}", text);
        }
    }
}
