use super::*;
use serde_json::json;

const STRICT: PathRules =
    PathRules { semicolons: false, encoded_percent: false, non_ascii: false, trailing_slash: false };

#[test]
fn paths_in_their_one_form_are_decided_as_sent() {
    let table = [
        ("/user/profile", "/user/profile"),
        ("/user/profile?x=1#frag", "/user/profile"),
        ("/user/profile?next=/a#b", "/user/profile"),
        ("/files/a%20b", "/files/a%20b"),
        ("/files/a%2a", "/files/a%2A"),
        ("/", "/"),
        ("/?q", "/"),
        ("/a.b/c..d", "/a.b/c..d"),
        ("/a/%3A%40", "/a/%3A%40"),
    ];
    for (input, expected) in table {
        assert_eq!(normalize_path(input, STRICT).as_deref(), Ok(expected), "{input}");
    }
}

#[test]
fn paths_the_upstream_could_read_differently_are_refused() {
    let table = [
        ("user/profile", "must start with `/`"),
        ("/public/x#/../../admin/users", "`#` is not allowed in a request path"),
        ("/mcp#x", "`#` is not allowed in a request path"),
        ("", "must start with `/`"),
        ("//admin/users", "empty segments (`//`) are not allowed"),
        ("/admin//users", "empty segments (`//`) are not allowed"),
        ("/admin/users/", "a trailing `/` is not allowed (paths.allow_trailing_slash)"),
        ("/mcp/", "a trailing `/` is not allowed (paths.allow_trailing_slash)"),
        ("/%61dmin/users", "percent-encoded unreserved character: send it unencoded"),
        ("/public/%2e%2e/admin", "percent-encoded unreserved character: send it unencoded"),
        ("/public/../admin/users", "dot segments are not allowed"),
        ("/./admin", "dot segments are not allowed"),
        ("/admin%2Fusers", "encoded slash or backslash"),
        ("/admin%5cusers", "encoded slash or backslash"),
        ("/a%00", "encoded control character"),
        ("/a\\b", "control, non-ASCII or backslash character"),
        ("/a\tb", "control, non-ASCII or backslash character"),
        ("/ä", "control, non-ASCII or backslash character"),
        ("/a%zz", "bad percent escape"),
        ("/a%4", "bad percent escape"),
        ("/a%+1", "bad percent escape"),
        ("/user/..;/admin/users", "dot segments are not allowed"),
        ("/user/x;jsessionid=1", "`;` is not allowed (paths.allow_semicolons)"),
        ("/user/a%3Bb", "`%3B` is not allowed (paths.allow_semicolons)"),
        ("/user/%252e%252e/admin/users", "`%25` is not allowed (paths.allow_encoded_percent)"),
        ("/user/%C0%AE%C0%AE/admin", "percent-encoded non-ASCII byte (paths.allow_non_ascii)"),
        ("/user/%EF%BC%8E%EF%BC%8E/admin", "percent-encoded non-ASCII byte (paths.allow_non_ascii)"),
    ];
    for (input, reason) in table {
        assert_eq!(normalize_path(input, STRICT), Err(TargetError::Path(reason)), "{input:?}");
    }
    assert!(normalize_path(&format!("/{}", "a".repeat(MAX_PATH_BYTES)), STRICT).is_err());
}

#[test]
fn each_refused_form_has_a_setting_that_allows_it_as_sent() {
    let table = [
        (PathRules { semicolons: true, ..STRICT }, "/user/a;b/c%3Bd", "/user/a;b/c%3Bd"),
        (PathRules { encoded_percent: true, ..STRICT }, "/files/100%25", "/files/100%25"),
        (PathRules { non_ascii: true, ..STRICT }, "/caf%c3%a9", "/caf%C3%A9"),
        (PathRules { trailing_slash: true, ..STRICT }, "/users/", "/users/"),
    ];
    for (rules, input, expected) in table {
        assert_eq!(normalize_path(input, rules).as_deref(), Ok(expected), "{input}");
    }
    // Allowing one form never lets a `..` hidden in it through.
    let all = PathRules { semicolons: true, encoded_percent: true, non_ascii: true, trailing_slash: true };
    for input in ["/a/..;/b", "/a/../", "/a//", "//", "/a/..%3B/b"] {
        let decided = normalize_path(input, all);
        assert!(
            decided.as_deref().map_or(true, |path| !path.split(['/', ';']).any(|segment| segment == "..")
                && !path.contains("//")),
            "{input:?} → {decided:?}"
        );
    }
    assert_eq!(normalize_path("/a/..;x/b", all), Err(TargetError::Path("dot segments are not allowed")));
    assert_eq!(normalize_path("/a/.%3bx/b", all), Err(TargetError::Path("dot segments are not allowed")));
}

#[test]
fn methods_are_upper_cased_tokens() {
    assert_eq!(normalize_method("get").as_deref(), Ok("GET"));
    assert_eq!(normalize_method("PATCH").as_deref(), Ok("PATCH"));
    for bad in ["", "GE T", "G3T", "GET\n", &"A".repeat(17)] {
        assert!(matches!(normalize_method(bad), Err(TargetError::Method(_))), "{bad:?}");
    }
}

#[test]
fn templates_match_and_yield_parameters() {
    let table =
        RouteTable::new(["/users/{id}", "/users/{id}/posts/{post}", "/files/{*rest}"], STRICT).unwrap();
    let resolved = table.resolve("get", "/users/42/posts/7?x").unwrap();
    assert_eq!(resolved.method, "GET");
    assert_eq!(resolved.template, "/users/{id}/posts/{post}");
    assert_eq!(resolved.params, [("id".into(), "42".into()), ("post".into(), "7".into())]);

    let rest = table.resolve("GET", "/files/a/b").unwrap();
    assert_eq!((rest.template.as_str(), rest.params[0].1.as_str()), ("/files/{*rest}", "a/b"));

    let literal = table.resolve("GET", "/other").unwrap();
    assert_eq!((literal.template.as_str(), literal.params.len()), ("/other", 0));
}

#[test]
fn bad_templates_are_refused() {
    assert!(RouteTable::new(["users/{id}"], STRICT).is_err());
    assert!(RouteTable::new(["/users/{id}", "/users/{name}"], STRICT).is_err());
}

#[test]
fn route_generated_tools_map_onto_their_routes() {
    let none = Extra::new();
    assert_eq!(route_of_tool("GET_/user/profile", &none), Ok(Some(("GET".into(), "/user/profile".into()))));
    assert_eq!(
        route_of_tool("DELETE_/admin/users", &none),
        Ok(Some(("DELETE".into(), "/admin/users".into())))
    );
    for plain in ["search", "get_/user", "GET_user", "FETCH_/x", "GET-/x"] {
        assert_eq!(route_of_tool(plain, &none), Ok(None), "{plain}");
    }
    let arguments = Extra::from([("id".into(), json!(7)), ("name".into(), json!("bob"))]);
    assert_eq!(
        route_of_tool("GET_/users/{id}/names/{name}", &arguments),
        Ok(Some(("GET".into(), "/users/7/names/bob".into())))
    );
}

#[test]
fn route_tool_arguments_cannot_escape_their_segment() {
    let missing = route_of_tool("GET_/users/{id}", &Extra::new());
    assert!(matches!(missing, Err(TargetError::MissingArgument { .. })));
    for bad in [json!("../admin"), json!("a/b"), json!(""), json!({"x": 1}), json!("a?b")] {
        let arguments = Extra::from([("id".into(), bad.clone())]);
        let result = route_of_tool("GET_/users/{id}", &arguments);
        assert!(matches!(result, Err(TargetError::BadArgument { .. })), "{bad}");
    }
    // `..` alone stays one segment; the path normalizer then refuses it.
    let dots = Extra::from([("id".into(), json!(".."))]);
    let (_, path) = route_of_tool("GET_/users/{id}", &dots).unwrap().unwrap();
    assert!(normalize_path(&path, STRICT).is_err());
}

#[test]
fn quote_shortens_and_escapes() {
    assert_eq!(quote("a\"b\n"), "a\\\"b\\n");
    assert_eq!(quote(&"x".repeat(100)).chars().count(), 65);
}

#[test]
fn templates_with_too_many_parameters_are_refused_not_a_panic() {
    // matchit panics from 26 parameters on; cedargate never lets it see such a template.
    let template: String = (0..30).map(|index| format!("/{{p{index}}}")).collect();
    let path: String = (0..30).map(|index| format!("/v{index}")).collect();
    let table = RouteTable::new([], STRICT).unwrap();
    assert_eq!(table.resolve_as("GET", &path, &template), Err(TargetError::Template(quote(&template))));
    assert!(RouteTable::new([template.as_str()], STRICT).unwrap_err().contains("more than 16 parameters"));
    let most: String = (0..MAX_TEMPLATE_PARAMS).map(|index| format!("/{{p{index}}}")).collect();
    let path: String = (0..MAX_TEMPLATE_PARAMS).map(|index| format!("/v{index}")).collect();
    assert_eq!(table.resolve_as("GET", &path, &most).unwrap().params.len(), MAX_TEMPLATE_PARAMS);
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Paths built from the pieces attackers use.
    fn path() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/".to_owned()),
            Just("//".to_owned()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just(";".to_owned()),
            "%[0-9A-Fa-f]{2}",
            "%[0-9A-Za-z]{0,2}",
            "[a-z0-9_~-]{1,4}",
            Just("?q=1".to_owned()),
            Just("#f".to_owned()),
            Just("#/../a".to_owned()),
            any::<char>().prop_map(String::from),
        ];
        prop::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        /// Never a panic; what is accepted is its own canonical form, with no empty or dot
        /// segment, and deciding it again changes nothing.
        #[test]
        fn normalize_path_accepts_only_fixed_points(path in path(), trailing in any::<bool>()) {
            let rules = PathRules { trailing_slash: trailing, ..STRICT };
            if let Ok(normalized) = normalize_path(&path, rules) {
                let again = normalize_path(&normalized, rules);
                prop_assert_eq!(again.as_ref(), Ok(&normalized));
                prop_assert!(normalized.starts_with('/'));
                prop_assert!(!normalized.contains("//"), "{normalized}");
                let segments: Vec<&str> = normalized.split('/').collect();
                prop_assert!(!segments.contains(&"..") && !segments.contains(&"."), "{normalized}");
                prop_assert!(!normalized.contains(['?', '#', ';', '\\']), "{normalized}");
                prop_assert_eq!(normalized.to_ascii_lowercase(), path.split('?').next().unwrap_or_default().to_ascii_lowercase());
            }
        }

        /// Any template and path: an answer or an error, never a panic.
        #[test]
        fn templates_never_panic(template in "(/|\\{|\\}|\\*|[a-z]{1,3}|:){0,80}", path in path()) {
            let _ = RouteTable::new([template.as_str()], STRICT);
            let table = RouteTable::new([], STRICT).unwrap();
            let _ = table.resolve_as("GET", &path, &template);
        }

        /// Route tools fill their template or refuse; never a panic.
        #[test]
        fn route_tools_never_panic(name in "(GET_)?(/|\\{|\\}|\\*|[a-z]{1,3}){0,40}", value in ".{0,8}") {
            let arguments = Extra::from([("id".to_owned(), serde_json::Value::String(value))]);
            let _ = route_of_tool(&name, &arguments);
        }
    }
}
