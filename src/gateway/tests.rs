use serde_json::{json, Value};

use super::*;
use crate::app::App;
use crate::config::Config;

fn gateway_with(extra_yaml: &str) -> Gateway {
    gateway_from(&format!("{}\n{extra_yaml}", crate::config::DEMO_YAML))
}

fn gateway_from(text: &str) -> Gateway {
    let config = Config::parse("gateway.yaml", text).unwrap();
    let app = App::build(config.clone()).unwrap();
    Gateway::new(Arc::clone(app.engine()), &config.gateway)
}

fn demo() -> Gateway {
    gateway_with("")
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> GatewayRequest {
    GatewayRequest {
        method: method.into(),
        path: path.into(),
        host: "api.example".into(),
        headers: headers.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect(),
        body: body.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn body_of(answer: &GatewayAnswer) -> Value {
    match answer {
        GatewayAnswer::Deny { body, .. } => serde_json::from_str(body).unwrap(),
        GatewayAnswer::Allow { .. } => panic!("expected a denial, got {answer:?}"),
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
}

type Headers<'a> = &'a [(&'a str, &'a str)];

const USER: (&str, &str) = ("authorization", "Bearer user-token-123");
const ADMIN: (&str, &str) = ("authorization", "Bearer admin-token-456");

#[tokio::test]
async fn an_allow_sets_identity_headers_and_removes_the_ones_it_does_not_set() {
    let answer =
        demo().check(&request("GET", "/user/profile?x=1", &[USER, ("x-auth-tenant", "spoofed")], "")).await;
    let GatewayAnswer::Allow { set_headers, remove_headers, remove_query, .. } = answer else {
        panic!("expected allow, got {answer:?}");
    };
    assert_eq!(header(&set_headers, "x-auth-subject"), Some("demo-user"));
    assert_eq!(header(&set_headers, "x-auth-roles"), Some("user"));
    // The static token has no client id, scopes or tenant: client copies must go.
    for name in ["x-auth-client-id", "x-auth-scopes", "x-auth-tenant"] {
        assert!(remove_headers.iter().any(|removed| removed == name), "{name} in {remove_headers:?}");
    }
    assert!(!remove_headers.iter().any(|removed| removed == "authorization"));
    assert!(remove_query.is_empty());
}

#[tokio::test]
async fn an_anonymous_allow_removes_every_identity_header() {
    let answer = demo().check(&request("GET", "/public/info", &[("x-auth-subject", "admin")], "")).await;
    let GatewayAnswer::Allow { set_headers, remove_headers, .. } = answer else {
        panic!("expected allow, got {answer:?}");
    };
    assert!(set_headers.is_empty());
    // Every spelling an upstream could read as an identity header: `-` and `_` are one to
    // WSGI, CGI and many frameworks.
    for name in ["x-auth-subject", "x_auth_subject", "x-auth_subject", "x_auth-client_id", "x_auth_roles"] {
        assert!(remove_headers.iter().any(|removed| removed == name), "{name} in {remove_headers:?}");
    }
    let identity = remove_headers.iter().filter(|name| name.replace('_', "-").starts_with("x-auth-"));
    assert_eq!(identity.count(), 4 + 8 + 4 + 4 + 4, "{remove_headers:?}");
    // Override headers go too, in case the proxy did not show them to cedargate.
    for name in ["x-http-method-override", "x_http_method_override", "x-original-url", "x-rewrite-url"] {
        assert!(remove_headers.iter().any(|removed| removed == name), "{name} in {remove_headers:?}");
    }
}

#[tokio::test]
async fn identity_headers_set_are_never_also_removed() {
    let answer =
        demo().check(&request("GET", "/user/profile", &[USER, ("x_auth_subject", "root")], "")).await;
    let GatewayAnswer::Allow { set_headers, remove_headers, .. } = answer else { panic!("{answer:?}") };
    assert!(remove_headers.iter().any(|removed| removed == "x_auth_subject"));
    for (name, _) in &set_headers {
        assert!(!remove_headers.contains(name), "{name} is both set and removed");
    }
}

#[tokio::test]
async fn denials_carry_status_challenge_and_a_json_body() {
    let gateway = demo();
    let cases: [(Headers<'_>, &str, u16, Option<&str>, &str); 4] = [
        (&[], "/user/profile", 401, Some("Bearer realm=\"cedargate\""), "unauthorized"),
        (
            &[("authorization", "Bearer nope")],
            "/user/profile",
            401,
            Some("Bearer realm=\"cedargate\", error=\"invalid_token\", error_description=\"unknown Bearer credential\""),
            "invalid_token",
        ),
        (&[USER], "/admin/users", 403, None, "forbidden"),
        (&[("authorization", "Bearer a b c")], "/user/profile", 401, None, "invalid_token"),
    ];
    for (headers, path, status, challenge, code) in cases {
        let answer = gateway.check(&request("GET", path, headers, "")).await;
        assert_eq!(answer.status(), status, "{path} {headers:?}");
        let GatewayAnswer::Deny { headers: response_headers, .. } = &answer else { unreachable!() };
        if let Some(challenge) = challenge {
            assert_eq!(header(response_headers, "www-authenticate"), Some(challenge));
        }
        assert_eq!(header(response_headers, "content-type"), Some("application/json"));
        let body = body_of(&answer);
        assert_eq!(body["error"], code, "{path} {headers:?}");
        assert_eq!(body["decisionId"], answer.decision().unwrap().decision_id.as_str());
    }
}

#[tokio::test]
async fn the_seed_invoke_body_is_decided_as_the_tool_route() {
    let gateway = demo();
    let invoke = |tool: &str| json!({ "toolName": tool, "args": {} }).to_string();
    let cases = [
        (vec![USER], "GET_/user/profile", 200),
        (vec![ADMIN], "GET_/admin/users", 200),
        (vec![USER], "GET_/admin/users", 403),
        (vec![], "GET_/public/info", 200),
        (vec![], "GET_/user/profile", 401),
        (vec![("authorization", "Bearer invalid-token")], "GET_/user/data", 401),
    ];
    for (headers, tool, status) in cases {
        let answer = gateway.check(&request("POST", "/mcp/invoke", &headers, &invoke(tool))).await;
        assert_eq!(answer.status(), status, "{tool} {headers:?}");
    }
    let denied = gateway.check(&request("POST", "/mcp/invoke", &[USER], &invoke("GET_/admin/users"))).await;
    assert_eq!(body_of(&denied)["reason"], "Requires admin role");
    let garbage = gateway.check(&request("POST", "/mcp/invoke", &[USER], "{\"args\": {}}")).await;
    assert_eq!(garbage.status(), 400);
}

fn rpc(id: u64, method: &str, params: &Value) -> String {
    json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }).to_string()
}

#[tokio::test]
async fn json_rpc_requests_are_decided_per_tool_argument_prompt_and_method() {
    let gateway = demo();
    let call =
        |name: &str, arguments: Value| rpc(7, "tools/call", &json!({ "name": name, "arguments": arguments }));
    let cases = [
        (vec![USER], call("echo", json!({ "text": "hi" })), 200),
        (vec![USER], call("read_file", json!({ "path": "/docs/a" })), 200),
        (vec![USER], call("read_file", json!({ "path": "/secret/key" })), 403),
        (vec![USER], call("read_file", json!({ "path": "/docs/../secret/key" })), 403),
        // The rule is an allow-list: what slipped past the old deny-list matches no permit.
        (vec![USER], call("read_file", json!({ "path": "/SECRET/a" })), 403),
        (vec![USER], call("read_file", json!({ "path": "//secret/a" })), 403),
        (vec![USER], call("read_file", json!({ "path": "/docs//../secret/a" })), 403),
        (vec![USER], call("read_file", json!({ "path": "/docs/%2e%2e/secret/a" })), 403),
        (vec![USER], call("read_file", json!({ "path": "/docs/..\\secret" })), 403),
        (vec![USER], call("read_file", json!({ "path": 7 })), 403),
        (vec![USER], call("read_file", json!({})), 403),
        (vec![ADMIN], call("read_file", json!({ "path": "/secret/key" })), 200),
        (vec![USER], call("delete_file", json!({ "path": "/docs/a" })), 403),
        (vec![USER], call("GET_/admin/users", json!({})), 403),
        (vec![USER], call("GET_/user/profile", json!({})), 200),
        (vec![], call("echo", json!({})), 401),
        (vec![USER], rpc(1, "tools/list", &json!({})), 200),
        (vec![USER], rpc(1, "initialize", &json!({ "protocolVersion": "2025-06-18" })), 200),
        (vec![], rpc(1, "initialize", &json!({})), 401),
        (vec![USER], rpc(2, "prompts/get", &json!({ "name": "greeting" })), 200),
        (vec![USER], rpc(3, "resources/read", &json!({ "uri": "file:///readme" })), 403),
    ];
    for (headers, body, status) in cases {
        let answer = gateway.check(&request("POST", "/mcp", &headers, &body)).await;
        assert_eq!(answer.status(), status, "{body} {headers:?}");
        if status != 200 {
            let error = body_of(&answer);
            assert_eq!(error["jsonrpc"], "2.0");
            assert_eq!(error["error"]["code"], mcp::code::UNAUTHORIZED);
            assert_eq!(error["error"]["data"]["httpStatus"], status);
            assert!(error["id"].is_number(), "{error}");
        }
    }
    // GET (event stream) and DELETE (end of session) are decided as the endpoint's route.
    assert!(gateway.check(&request("GET", "/mcp", &[USER], "")).await.allowed());
    assert_eq!(gateway.check(&request("DELETE", "/mcp", &[], "")).await.status(), 401);
    let notification = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }).to_string();
    assert!(gateway.check(&request("POST", "/mcp", &[USER], &notification)).await.allowed());
}

#[tokio::test]
async fn malformed_mcp_bodies_and_disagreeing_headers_are_a_json_rpc_400() {
    let gateway = demo();
    let echo = rpc(9, "tools/call", &json!({ "name": "echo", "arguments": {} }));
    let truncated = &echo[..echo.len() / 2];
    let cases: [(&str, Headers<'_>, i64, &str); 14] = [
        (truncated, &[], mcp::code::PARSE_ERROR, "Parse error"),
        ("", &[], mcp::code::INVALID_REQUEST, "no body"),
        ("[]", &[], mcp::code::INVALID_REQUEST, "batches"),
        ("{\"jsonrpc\":\"1.0\",\"id\":1,\"method\":\"ping\"}", &[], mcp::code::INVALID_REQUEST, "jsonrpc"),
        ("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\"}", &[], mcp::code::INVALID_PARAMS, "params.name"),
        (
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":[]}}",
            &[],
            mcp::code::INVALID_PARAMS,
            "arguments",
        ),
        (&echo, &[("mcp-method", "tools/list")], mcp::code::INVALID_REQUEST, "Mcp-Method"),
        (&echo, &[("mcp-name", "delete_file")], mcp::code::INVALID_REQUEST, "Mcp-Name"),
        ("{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":\"ping\"}", &[], mcp::code::INVALID_REQUEST, "`id`"),
        // Protocol methods match exactly; a near miss is refused, not decided as another method.
        (&rpc(9, "Tools/Call", &json!({ "name": "echo" })), &[], mcp::code::INVALID_REQUEST, "match exactly"),
        (&rpc(9, "tools/call ", &json!({ "name": "echo" })), &[], mcp::code::INVALID_REQUEST, "not a method name"),
        (&rpc(9, "TOOLS/LIST", &json!({})), &[], mcp::code::INVALID_REQUEST, "`tools/list`"),
        // Headers alone are not trusted by default: the body could call another tool.
        ("", &[("mcp-method", "tools/call"), ("mcp-name", "echo")], mcp::code::INVALID_REQUEST, "without its body"),
        ("", &[("mcp-method", "ping")], mcp::code::INVALID_REQUEST, "mcp_trust_headers"),
    ];
    for (body, headers, code, needle) in cases {
        let headers = [headers, &[USER]].concat();
        let answer = gateway.check(&request("POST", "/mcp", &headers, body)).await;
        assert_eq!(answer.status(), 400, "{body}");
        let error = body_of(&answer);
        assert_eq!(error["error"]["code"], code, "{body}: {error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{message} should name {needle}");
    }
    // Matching headers are fine.
    let headers = [USER, ("mcp-method", "tools/call"), ("mcp-name", "echo")];
    assert!(gateway.check(&request("POST", "/mcp", &headers, &echo)).await.allowed());
}

#[tokio::test]
async fn trusted_mcp_headers_decide_alone_when_no_body_is_forwarded() {
    let gateway = gateway_with("gateway:\n  mcp_trust_headers: true\n");
    let headers = [USER, ("mcp-method", "tools/call"), ("mcp-name", "echo")];
    assert!(gateway.check(&request("POST", "/mcp", &headers, "")).await.allowed());
    let headers = [USER, ("mcp-method", "tools/call"), ("mcp-name", "delete_file")];
    assert_eq!(gateway.check(&request("POST", "/mcp", &headers, "")).await.status(), 403);
    let headers = [USER, ("mcp-method", "Tools/Call"), ("mcp-name", "echo")];
    assert_eq!(gateway.check(&request("POST", "/mcp", &headers, "")).await.status(), 400);
}

#[tokio::test]
async fn mcp_endpoints_match_exactly_as_the_proxy_routes_them() {
    let gateway = demo();
    let call = rpc(1, "tools/call", &json!({ "name": "GET_/public/info", "arguments": {} }));
    // `/mcp/` is not the MCP endpoint; a proxy routes it elsewhere, so it is refused as a path
    // cedargate would otherwise have to rewrite.
    for path in ["/mcp/", "//mcp", "/%6Dcp"] {
        let answer = gateway.check(&request("POST", path, &[], &call)).await;
        assert_eq!(answer.status(), 400, "{path}: {answer:?}");
    }
    // `/MCP`, `/Mcp`: another path to the proxy, but servers that route without case would run
    // it as MCP; refused rather than decided as a route.
    for path in ["/MCP", "/Mcp?x=1", "/mcp#x"] {
        let answer = gateway.check(&request("POST", path, &[], &call)).await;
        assert_eq!(answer.status(), 400, "{path}: {answer:?}");
    }
    assert!(gateway.check(&request("POST", "/mcp?session=1", &[], &call)).await.allowed());
}

#[tokio::test]
async fn method_and_url_overrides_are_refused_unless_allowed() {
    let gateway = demo();
    let overrides: [(&str, Headers<'_>); 8] = [
        ("/public/info", &[("x-http-method-override", "DELETE")]),
        ("/public/info", &[("x_http_method_override", "DELETE")]),
        ("/public/info", &[("x-http-method", "DELETE")]),
        ("/public/info", &[("x-method-override", "DELETE")]),
        ("/public/info", &[("x-original-url", "/admin/users")]),
        ("/public/info", &[("x-rewrite-url", "/admin/users")]),
        ("/public/info?_method=DELETE", &[]),
        ("/public/info?%5Fmethod=DELETE", &[]),
    ];
    for (path, headers) in overrides {
        let answer = gateway.check(&request("GET", path, headers, "")).await;
        assert_eq!(answer.status(), 400, "{path} {headers:?}");
        assert!(body_of(&answer)["reason"].as_str().unwrap().contains("gateway.override_headers"));
    }
    // In a form body too, when the proxy forwards it.
    let form = request(
        "POST",
        "/user/profile",
        &[USER, ("content-type", "application/x-www-form-urlencoded")],
        "name=a&_method=DELETE",
    );
    assert_eq!(gateway.check(&form).await.status(), 400);
    let json_body =
        request("POST", "/user/profile", &[USER, ("content-type", "application/json")], "_method=DELETE");
    assert!(gateway.check(&json_body).await.allowed(), "only a form body is read as a form");
    let allowing = gateway_with("gateway:\n  override_headers: allow\n");
    for (path, headers) in overrides {
        assert!(allowing.check(&request("GET", path, headers, "")).await.allowed(), "{path} {headers:?}");
    }
}

#[tokio::test]
async fn api_keys_come_from_the_configured_header_cookie_or_query_and_only_one_credential_counts() {
    let gateway = gateway_with(
        "gateway:\n  api_key: { header: X-API-Key, cookie: api_key, query: api_key }\n  strip_authorization: true\n",
    );
    let from = |headers: &[(&str, &str)], path: &str| request("GET", path, headers, "");
    let by_header = gateway.check(&from(&[("x-api-key", "api-key-789")], "/service/metrics")).await;
    assert!(by_header.allowed(), "{by_header:?}");
    let GatewayAnswer::Allow { remove_headers, remove_query, .. } = by_header else { unreachable!() };
    for name in ["authorization", "x-api-key", "x_api_key", "cookie"] {
        assert!(remove_headers.contains(&name.to_owned()), "{name} in {remove_headers:?}");
    }
    assert!(remove_query.is_empty());
    // The upstream gets every cookie but the key, each as sent, however the client split them.
    let odd = gateway
        .check(&from(&[("cookie", "prefs=en,fr; flag; api_key=api-key-789; b=\"q\"")], "/service/metrics"))
        .await;
    let GatewayAnswer::Allow { set_headers, .. } = &odd else { panic!("{odd:?}") };
    assert_eq!(header(set_headers, "cookie"), Some("prefs=en,fr; flag; b=\"q\""));
    let joined = gateway.check(&from(&[("cookie", "a=b,api_key=api-key-789")], "/service/metrics")).await;
    let GatewayAnswer::Allow { set_headers, .. } = &joined else { panic!("{joined:?}") };
    assert_eq!(header(set_headers, "cookie"), Some("a=b"));
    for cookie in [
        &[("cookie", "a=b; api_key=api-key-789")][..],
        &[("cookie", "a=b"), ("cookie", "api_key=api-key-789")],
    ] {
        let by_cookie = gateway.check(&from(cookie, "/service/metrics")).await;
        let GatewayAnswer::Allow { set_headers, remove_headers, .. } = &by_cookie else {
            panic!("{by_cookie:?}")
        };
        assert_eq!(header(set_headers, "cookie"), Some("a=b"));
        assert!(!remove_headers.contains(&"cookie".to_owned()));
    }
    let by_query = gateway.check(&from(&[], "/service/metrics?x=1&api_key=api-key-789")).await;
    let GatewayAnswer::Allow { remove_query, .. } = &by_query else { panic!("{by_query:?}") };
    assert_eq!(remove_query, &["api_key"]);
    // Envoy removes parameters by their literal name: an encoded one would stay.
    let encoded = gateway.check(&from(&[], "/service/metrics?api%5Fkey=api-key-789")).await;
    assert_eq!(encoded.status(), 400);
    assert!(body_of(&encoded)["reason"].as_str().unwrap().contains("percent-encoded"));
    // Over HTTP the proxy cannot remove a query parameter at all.
    for wire in [Wire::EnvoyHttp, Wire::ForwardAuth] {
        let over_http = GatewayRequest { wire, ..from(&[], "/service/metrics?api_key=api-key-789") };
        assert_eq!(gateway.check(&over_http).await.status(), 400, "{wire:?}");
        let by_header = GatewayRequest { wire, ..from(&[("x-api-key", "api-key-789")], "/service/metrics") };
        assert!(gateway.check(&by_header).await.allowed(), "{wire:?}");
    }
    let wrong = gateway.check(&from(&[("x-api-key", "nope")], "/service/metrics")).await;
    assert_eq!(wrong.status(), 401);
    let two = gateway.check(&from(&[USER, ("x-api-key", "api-key-789")], "/service/metrics")).await;
    assert_eq!(two.status(), 400);
    assert!(body_of(&two)["reason"].as_str().unwrap().contains("one credential"));
}

#[tokio::test]
async fn bearer_challenges_name_the_protected_resource_metadata() {
    let gateway = gateway_with(
        "protected_resource:\n  resource: https://mcp.example.com/mcp\n  authorization_servers: [https://auth.example.com]\n",
    );
    let anonymous = gateway.check(&request("GET", "/user/profile", &[], "")).await;
    let GatewayAnswer::Deny { headers, .. } = &anonymous else { panic!("{anonymous:?}") };
    assert_eq!(
        header(headers, "www-authenticate"),
        Some(
            "Bearer realm=\"cedargate\", \
             resource_metadata=\"https://mcp.example.com/.well-known/oauth-protected-resource/mcp\""
        )
    );
    // An API key challenge has no OAuth metadata to point to.
    let key = gateway.check(&request("GET", "/user/profile", &[("authorization", "ApiKey nope")], "")).await;
    let GatewayAnswer::Deny { headers, .. } = &key else { panic!("{key:?}") };
    assert!(!header(headers, "www-authenticate").unwrap().contains("resource_metadata"));
}

#[tokio::test]
async fn context_extensions_name_the_tool_the_template_and_become_facts() {
    let gateway = gateway_with("");
    let mut by_tool = request("POST", "/anything", &[USER], "");
    by_tool.extensions = vec![("tool".into(), "echo".into())];
    assert!(gateway.check(&by_tool).await.allowed());
    by_tool.extensions = vec![("tool".into(), "delete_file".into())];
    assert_eq!(gateway.check(&by_tool).await.status(), 403);
    let mut templated = request("GET", "/user/42", &[USER], "");
    templated.extensions = vec![("route".into(), "/user/{id}".into()), ("team".into(), "blue".into())];
    templated.source_ip = "10.0.0.7".into();
    let facts = facts(&templated, None);
    assert_eq!(facts["team"], "blue");
    assert_eq!(facts["source_ip"], "10.0.0.7");
    assert_eq!(facts["host"], "api.example");
    assert!(gateway.check(&templated).await.allowed());
    // An extension cannot stand in for a fact cedargate owns, even one it has no value for.
    let mut spoofing = request("GET", "/user/42", &[USER], "");
    spoofing.host = String::new();
    spoofing.extensions = ["source_ip", "host", "source_principal", "mcp_method"]
        .iter()
        .map(|key| ((*key).to_owned(), "spoofed".to_owned()))
        .collect();
    let spoofed = super::facts(&spoofing, None);
    assert!(spoofed.values().all(|value| value != "spoofed"), "{spoofed:?}");
}

#[test]
fn identity_header_values_cannot_break_a_header() {
    assert_eq!(header_value("alice"), "alice");
    assert_eq!(header_value("a\r\nx-evil: 1"), "a%0D%0Ax-evil: 1");
    assert_eq!(header_value("zoë%"), "zo%C3%AB%25");
}

#[tokio::test]
async fn an_unreachable_credential_backend_is_a_503_without_a_token_challenge() {
    // Nothing listens on port 9 of the loopback: the introspection call is refused.
    let introspection =
        "credentials:\n  introspection:\n    - endpoint: http://127.0.0.1:9/introspect\n      \
                         client_id: cedargate\n      client_secret: secret\n      timeout: 1s\n";
    let gateway = gateway_from(&crate::config::DEMO_YAML.replacen("credentials:\n", introspection, 1));
    let answer =
        gateway.check(&request("GET", "/user/profile", &[("authorization", "Bearer opaque-1")], "")).await;
    assert_eq!(answer.status(), 503, "{answer:?}");
    let GatewayAnswer::Deny { headers, .. } = &answer else { unreachable!() };
    assert_eq!(header(headers, "www-authenticate"), None, "a good token must not be called invalid");
    let body = body_of(&answer);
    assert_eq!(body["error"], "temporarily_unavailable");
    // The outage's detail (the endpoint, the transport error) is the operator's, not the client's.
    assert_eq!(body["reason"], UNAVAILABLE_REASON, "{body}");
    assert!(answer.decision().unwrap().reason.contains("introspection"), "the decision keeps the detail");
}

#[tokio::test]
async fn repeated_credentials_are_refused_however_the_proxy_passes_them() {
    let gateway = gateway_with("gateway:\n  api_key: { header: x-api-key }\n");
    let cases: [Headers<'_>; 4] = [
        // Envoy's `header_map` (and HTTP) keep repeated headers apart...
        &[USER, ("authorization", "Bearer admin-token-456")],
        &[("x-api-key", "api-key-789"), ("x-api-key", "other")],
        // ...its `headers` map joins them with a comma, which no token68 credential holds.
        &[("authorization", "Bearer user-token-123,Bearer admin-token-456")],
        &[("authorization", "Bearer user-token-123, ApiKey api-key-789")],
    ];
    for headers in cases {
        let answer = gateway.check(&request("GET", "/public/info", headers, "")).await;
        assert_eq!(answer.status(), 400, "{headers:?}");
        assert!(body_of(&answer)["reason"].as_str().unwrap().contains("one credential"));
    }
    assert!(gateway.check(&request("GET", "/public/info", &[USER], "")).await.allowed());
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// JSON-RPC-shaped messages with every field sometimes missing, mistyped or odd.
    fn message() -> impl Strategy<Value = Value> {
        let scalar = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|number| json!(number)),
            ".{0,12}".prop_map(Value::String),
            Just(json!("tools/call")),
            Just(json!("Tools/Call")),
            Just(json!("resources/read")),
            Just(json!("2.0")),
        ];
        let value = scalar.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("name|uri|arguments|path|[a-z]{1,3}", inner, 0..4)
                    .prop_map(|fields| Value::Object(fields.into_iter().collect())),
            ]
        });
        prop::collection::btree_map("jsonrpc|id|method|params|result|error|toolName|args", value, 0..6)
            .prop_map(|fields| Value::Object(fields.into_iter().collect()))
    }

    proptest! {
        /// Any bytes: a target or a JSON-RPC error code, never a panic.
        #[test]
        fn any_body_is_decided_or_refused(body in prop::collection::vec(any::<u8>(), 0..64), trusted in any::<bool>()) {
            let headers = mcp::McpHeaders { method: Some("tools/call"), name: Some("echo"), trusted };
            if let Err(error) = mcp::parse_jsonrpc(&body, "files", headers) {
                prop_assert!([mcp::code::PARSE_ERROR, mcp::code::INVALID_REQUEST, mcp::code::INVALID_PARAMS].contains(&error.code));
            }
            let _ = mcp::parse_invoke(&body, "files");
        }

        /// Any JSON-RPC-shaped message: never a panic, and a `tools/call` is only ever the
        /// tool its body names.
        #[test]
        fn any_message_is_decided_as_itself_or_refused(message in message()) {
            let body = message.to_string();
            let headers = mcp::McpHeaders::default();
            if let Ok(parsed) = mcp::parse_jsonrpc(body.as_bytes(), "files", headers) {
                if let Target::Tool(call) = &parsed.target {
                    prop_assert_eq!(message["method"].as_str(), Some("tools/call"));
                    prop_assert_eq!(message["params"]["name"].as_str(), Some(call.name.as_str()));
                }
            }
            let _ = mcp::parse_invoke(body.as_bytes(), "files");
        }
    }
}

/// Found by the adversarial review: Go's `encoding/json` reads `Name`, `nam\u{17f}`... as
/// `name`, so a body decided as `echo` would run `delete_file` on a Go server.
#[tokio::test]
async fn keys_a_loose_decoder_reads_as_a_decided_field_are_a_400() {
    let gateway = demo();
    for body in [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","Name":"delete_file"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","NAME":"delete_file"}}"#,
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"\u{212a}ey\":1,\"argument\u{17f}\":{}}}",
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name\u0000":"delete_file"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","Method":"tools/call","params":{"name":"delete_file"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"},"Params":{"name":"delete_file"}}"#,
    ] {
        let answer = gateway.check(&request("POST", "/mcp", &[USER], body)).await;
        assert_eq!(answer.status(), 400, "{body}");
        let message = body_of(&answer)["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains("fields match exactly"), "{body}: {message}");
    }
    let answer = gateway
        .check(&request(
            "POST",
            "/mcp/invoke",
            &[USER],
            r#"{"toolName":"GET_/user/profile","ToolName":"GET_/admin/users"}"#,
        ))
        .await;
    assert_eq!(answer.status(), 400);
    // Other fields are the server's business.
    let fine = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","_meta":{"progressToken":1},"names":[]}}"#;
    assert!(gateway.check(&request("POST", "/mcp", &[USER], fine)).await.allowed());
}

/// Found by the adversarial review: subscribing to a resource, or completing a prompt's or a
/// resource template's arguments, reached what `resources/read` and `prompts/get` refused.
#[tokio::test]
async fn methods_that_name_a_prompt_or_resource_are_decided_as_using_it() {
    let gateway = demo();
    let admin = ("authorization", "Bearer admin-token-456");
    let cases = [
        (rpc(1, "resources/subscribe", &json!({ "uri": "file:///secrets" })), false),
        (rpc(2, "resources/unsubscribe", &json!({ "uri": "file:///secrets" })), false),
        (
            rpc(
                3,
                "completion/complete",
                &json!({ "ref": { "type": "ref/resource", "uri": "file:///docs/{x}" }, "argument": { "name": "x", "value": "" } }),
            ),
            false,
        ),
        // Users may get prompts, so they may complete their arguments.
        (
            rpc(
                4,
                "completion/complete",
                &json!({ "ref": { "type": "ref/prompt", "name": "greeting" }, "argument": { "name": "name", "value": "A" } }),
            ),
            true,
        ),
    ];
    for (body, user_allowed) in &cases {
        assert_eq!(
            gateway.check(&request("POST", "/mcp", &[USER], body)).await.allowed(),
            *user_allowed,
            "{body}"
        );
        assert!(gateway.check(&request("POST", "/mcp", &[admin], body)).await.allowed(), "{body}");
    }
    for params in [
        json!({}),
        json!({ "ref": { "type": "ref/prompt" } }),
        json!({ "ref": { "type": "ref/other", "name": "x" } }),
    ] {
        let answer =
            gateway.check(&request("POST", "/mcp", &[admin], &rpc(5, "completion/complete", &params))).await;
        assert_eq!(answer.status(), 400, "{params}");
    }
}

#[test]
fn a_request_names_its_tenant_by_a_believed_header_or_the_context_extension() {
    let config = Config::parse("t.yaml", "tenants:\n  header: x-tenant\n  acme: {}\n").unwrap();
    let app = crate::app::App::build(config.clone()).unwrap();
    let gateway = Gateway::new(Arc::clone(app.engine()), &config.gateway).with_tenants(&config.tenants);
    let with =
        |wire: Wire, trusted: bool, headers: &[(&str, &str)], extension: Option<&str>| GatewayRequest {
            wire,
            from_trusted_proxy: trusted,
            extensions: extension
                .map(|tenant| ("tenant".to_owned(), tenant.to_owned()))
                .into_iter()
                .collect(),
            ..request("GET", "/x", headers, "")
        };
    let named = RequestTenant::Named;
    let table = [
        (with(Wire::EnvoyGrpc, false, &[], None), RequestTenant::Unnamed),
        (with(Wire::EnvoyGrpc, false, &[("x-tenant", "acme")], None), named("acme")),
        (with(Wire::EnvoyGrpc, false, &[], Some("acme")), named("acme")),
        (with(Wire::EnvoyGrpc, false, &[("x-tenant", "acme")], Some("acme")), named("acme")),
        (with(Wire::EnvoyGrpc, false, &[("x-tenant", "")], Some("")), RequestTenant::Unnamed),
        (with(Wire::ForwardAuth, true, &[("x-tenant", "acme")], None), named("acme")),
        (with(Wire::EnvoyHttp, true, &[("x-tenant", "Not Safe")], None), named("Not Safe")),
    ];
    for (request, expected) in &table {
        assert_eq!(gateway.request_tenant(request), *expected, "{request:?}");
    }
    for request in [
        with(Wire::ForwardAuth, false, &[("x-tenant", "acme")], None),
        with(Wire::EnvoyHttp, false, &[("x-tenant", "acme")], None),
        with(Wire::EnvoyGrpc, false, &[("x-tenant", "acme"), ("x-tenant", "acme")], None),
        // Twice, once empty: never taken for "no tenant", nor let past the trusted-proxy check.
        with(Wire::EnvoyGrpc, false, &[("x-tenant", ""), ("x-tenant", "acme")], None),
        with(Wire::ForwardAuth, false, &[("x-tenant", ""), ("x-tenant", "acme")], None),
        with(Wire::EnvoyGrpc, false, &[("x-tenant", "acme")], Some("globex")),
    ] {
        assert!(matches!(gateway.request_tenant(&request), RequestTenant::Refused(_)), "{request:?}");
    }
    // With no tenant declared, the context extension is only a fact.
    let off = gateway_with("");
    assert_eq!(off.request_tenant(&with(Wire::EnvoyGrpc, false, &[], Some("acme"))), RequestTenant::Unnamed);
}
