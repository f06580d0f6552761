use serde_json::json;

use super::*;
use crate::app::App;
use crate::config::Config;

fn gateway(extra_yaml: &str) -> Arc<Gateway> {
    let text = format!("{}\n{extra_yaml}", crate::config::DEMO_YAML);
    let config = Config::parse("gateway.yaml", &text).unwrap();
    let app = App::build(config.clone()).unwrap();
    Arc::new(Gateway::new(Arc::clone(app.engine()), &config.gateway))
}

fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> GatewayRequest {
    GatewayRequest {
        method: method.into(),
        path: path.into(),
        host: "api.example".into(),
        headers: headers.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect(),
        ..Default::default()
    }
}

const USER: (&str, &str) = ("authorization", "Bearer user-token-123");
const ADMIN: (&str, &str) = ("authorization", "Bearer admin-token-456");

fn tools_answer() -> Vec<u8> {
    let names = [
        "echo",
        "whoami",
        "read_file",
        "delete_file",
        "GET_/user/profile",
        "GET_/admin/users",
        "GET_/public/info",
    ];
    let tools: Vec<Value> =
        names.iter().map(|name| json!({ "name": name, "inputSchema": { "type": "object" } })).collect();
    json!({ "jsonrpc": "2.0", "id": 4, "result": { "tools": tools, "nextCursor": "2" } })
        .to_string()
        .into_bytes()
}

/// The tool names the caller of `headers` gets from a tools/list exchange.
async fn listed(
    gateway: &Arc<Gateway>,
    headers: &[(&str, &str)],
    identity: Option<Arc<AuthInfo>>,
) -> Vec<String> {
    let mut exchange = gateway.exchange(request("POST", "/mcp", headers));
    let facts = Extra::new();
    exchange.decided(identity.map(|auth| Decided { auth: Some(auth), facts, server: None }));
    assert_eq!(exchange.request_headers().await.unwrap(), Interest::Exchange);
    exchange
        .request_body(br#"{"jsonrpc":"2.0","id":4,"method":"tools/list","params":{"cursor":"1"}}"#)
        .unwrap();
    assert_eq!(
        exchange.response_headers(200, &[("content-type".into(), "application/json".into())]).await,
        Ok(Body::UpTo(1 << 20))
    );
    let body = match exchange.response_body(&tools_answer(), true).unwrap() {
        Trimmed::Replaced(body) => body,
        Trimmed::Unchanged => tools_answer(),
    };
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["result"]["nextCursor"], "2");
    answer["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|tool| tool["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn each_caller_is_listed_the_tools_it_could_call() {
    let gateway = gateway("");
    assert_eq!(
        listed(&gateway, &[USER], None).await,
        ["echo", "whoami", "read_file", "GET_/user/profile", "GET_/public/info"]
    );
    assert_eq!(listed(&gateway, &[ADMIN], None).await.len(), 7);
    assert_eq!(listed(&gateway, &[], None).await, ["GET_/public/info"]);
    // The identity ext_authz passed on is used as it is: no credential needed.
    let admin =
        Arc::new(AuthInfo::new(crate::model::CredentialKind::Static, "demo-admin", vec!["admin".into()]));
    assert_eq!(listed(&gateway, &[], Some(admin)).await.len(), 7);
}

#[tokio::test]
async fn other_paths_and_other_methods_are_not_followed_or_changed() {
    let gateway = gateway("");
    let mut exchange = gateway.exchange(request("GET", "/user/profile", &[USER]));
    assert_eq!(exchange.request_headers().await.unwrap(), Interest::None);
    let mut exchange = gateway.exchange(request("POST", "/mcp/invoke", &[USER]));
    assert_eq!(exchange.request_headers().await.unwrap(), Interest::None);
    let mut exchange = gateway.exchange(request("POST", "/mcp", &[USER]));
    exchange.request_headers().await.unwrap();
    exchange
        .request_body(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#)
        .unwrap();
    assert_eq!(
        exchange.response_headers(200, &[("content-type".into(), "application/json".into())]).await,
        Ok(Body::Unwanted)
    );
}

#[tokio::test]
async fn an_unreadable_list_answer_is_replaced_by_an_error() {
    let gateway = gateway("");
    let mut exchange = gateway.exchange(request("POST", "/mcp", &[USER]));
    exchange.request_headers().await.unwrap();
    exchange.request_body(br#"{"jsonrpc":"2.0","id":"q","method":"prompts/list"}"#).unwrap();
    let json = ("content-type".to_owned(), "application/json".to_owned());
    let length = |length: &str| ("content-length".to_owned(), length.to_owned());
    // A known length small enough is buffered whole; a larger one is withheld at once.
    assert_eq!(exchange.response_headers(200, &[json.clone(), length("1048576")]).await, Ok(Body::Whole));
    let reply = exchange.response_headers(200, &[json.clone(), length("1048577")]).await.unwrap_err();
    assert_eq!(reply.status, 502);
    assert!(reply.body.contains("exceeds 1048576 bytes"), "{}", reply.body);
    assert!(exchange.response_headers(200, &[json.clone(), length("-1")]).await.is_err());
    assert_eq!(exchange.response_headers(200, &[json]).await, Ok(Body::UpTo(1 << 20)));
    // Cut off where the proxy stopped buffering: withheld, even if what came parses.
    let reply =
        exchange.response_body(br#"{"jsonrpc":"2.0","id":"q","result":{"prompts":[]}}"#, false).unwrap_err();
    assert!(reply.body.contains("larger than the proxy buffers"), "{}", reply.body);
    let reply = exchange
        .response_body(br#"{"jsonrpc":"2.0","id":"q","result":{"prompts":[{"name":"#, true)
        .unwrap_err();
    assert_eq!(reply.status, 502);
    let body: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(body["id"], "q");
    assert_eq!(body["error"]["code"], WITHHELD);
    assert!(body["error"]["message"].as_str().unwrap().contains("prompts/list"), "{body}");
}

async fn standing(gateway: &Arc<Gateway>, method: &str, headers: &[(&str, &str)]) -> Result<Interest, Reply> {
    gateway.exchange(request(method, "/mcp", headers)).request_headers().await
}

#[tokio::test]
async fn a_session_is_refused_to_anyone_but_the_caller_it_was_issued_to() {
    let gateway = gateway("");
    let mut exchange = gateway.exchange(request("POST", "/mcp", &[USER]));
    exchange.request_headers().await.unwrap();
    exchange.request_body(br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{}}"#).unwrap();
    exchange.response_headers(200, &[("mcp-session-id".into(), "s-1".into())]).await.unwrap();
    let session = ("mcp-session-id", "s-1");
    for method in ["POST", "GET", "DELETE"] {
        let refused = standing(&gateway, method, &[ADMIN, session]).await.unwrap_err();
        assert_eq!(refused.status, 403, "{method}");
        let body: Value = serde_json::from_str(&refused.body).unwrap();
        assert_eq!(body["error"]["code"], mcp::code::UNAUTHORIZED);
        assert_eq!(standing(&gateway, method, &[session]).await.unwrap_err().status, 403, "{method}");
        assert_eq!(standing(&gateway, method, &[USER, session]).await.unwrap(), Interest::Exchange);
    }
    // An id never issued here is unknown: the client starts over.
    assert_eq!(standing(&gateway, "POST", &[USER, ("mcp-session-id", "s-2")]).await.unwrap_err().status, 404);
    // A failed initialize binds nothing.
    let mut exchange = gateway.exchange(request("POST", "/mcp", &[USER]));
    exchange.request_headers().await.unwrap();
    exchange.request_body(br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{}}"#).unwrap();
    exchange.response_headers(500, &[("mcp-session-id".into(), "s-3".into())]).await.unwrap();
    assert_eq!(standing(&gateway, "POST", &[USER, ("mcp-session-id", "s-3")]).await.unwrap_err().status, 404);
    // An answer that does not carry one clean id is withheld, and binds none of them.
    for issued in [&["s-4", "s-5"][..], &["s-4, s-5"], &[""]] {
        let mut exchange = gateway.exchange(request("POST", "/mcp", &[USER]));
        exchange.request_headers().await.unwrap();
        exchange.request_body(br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{}}"#).unwrap();
        let headers: Vec<(String, String)> =
            issued.iter().map(|id| ("Mcp-Session-Id".to_owned(), (*id).to_owned())).collect();
        assert_eq!(exchange.response_headers(200, &headers).await.unwrap_err().status, 502, "{issued:?}");
        for id in ["s-4", "s-5", ""] {
            assert!(
                standing(&gateway, "POST", &[USER, ("mcp-session-id", id)]).await.is_err(),
                "{id:?} bound"
            );
        }
    }
    // Ended by its owner, the session is gone.
    let mut exchange = gateway.exchange(request("DELETE", "/mcp", &[USER, session]));
    exchange.request_headers().await.unwrap();
    exchange.response_headers(200, &[]).await.unwrap();
    assert_eq!(standing(&gateway, "POST", &[USER, session]).await.unwrap_err().status, 404);
}

#[tokio::test]
async fn unbound_sessions_pass_when_binding_is_off() {
    let gateway = gateway("gateway:\n  mcp_exchange: { bind_sessions: false }\n");
    assert_eq!(
        standing(&gateway, "POST", &[ADMIN, ("mcp-session-id", "s-1")]).await.unwrap(),
        Interest::Exchange
    );
}

#[tokio::test]
async fn a_session_id_is_one_header_with_one_value() {
    let gateway = gateway("");
    let twice =
        standing(&gateway, "POST", &[USER, ("mcp-session-id", "mine"), ("mcp-session-id", "victim")]).await;
    assert_eq!(twice.unwrap_err().status, 400);
    let joined = standing(&gateway, "POST", &[USER, ("mcp-session-id", "mine, victim")]).await;
    assert_eq!(joined.unwrap_err().status, 400);
}

#[tokio::test]
async fn a_stream_is_never_replayed_past_the_trimming() {
    let gateway = gateway("");
    let mut exchange = gateway.exchange(request("GET", "/mcp", &[USER, ("last-event-id", "stream_1")]));
    exchange.request_headers().await.unwrap();
    assert_eq!(exchange.request_headers_to_remove(), ["last-event-id"]);
    let mut exchange = gateway.exchange(request("GET", "/mcp", &[USER]));
    exchange.request_headers().await.unwrap();
    assert!(exchange.request_headers_to_remove().is_empty());
}

#[tokio::test]
async fn a_list_body_without_its_headers_is_withheld() {
    let gateway = gateway("");
    let mut exchange = gateway.exchange(request("POST", "/mcp", &[USER]));
    exchange.request_headers().await.unwrap();
    exchange.request_body(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#).unwrap();
    assert_eq!(exchange.response_body(&tools_answer(), true).unwrap_err().status, 502);
}

#[tokio::test]
async fn a_session_issued_to_no_one_is_bound_to_no_one() {
    let gateway = gateway("");
    let mut exchange = gateway.exchange(request("POST", "/mcp", &[]));
    exchange.request_headers().await.unwrap();
    exchange.request_body(br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{}}"#).unwrap();
    exchange.response_headers(200, &[("mcp-session-id".into(), "s-anonymous".into())]).await.unwrap();
    for headers in [&[][..], &[USER][..]] {
        let headers = [headers, &[("mcp-session-id", "s-anonymous")]].concat();
        assert_eq!(standing(&gateway, "POST", &headers).await.unwrap_err().status, 404);
    }
}

#[tokio::test]
async fn a_request_cedargate_cannot_read_is_refused_not_passed() {
    let gateway = gateway("");
    for body in [
        &b"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}]"[..],
        b"{\"method\":",
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":7}",
    ] {
        let mut exchange = gateway.exchange(request("POST", "/mcp", &[USER]));
        exchange.request_headers().await.unwrap();
        assert_eq!(exchange.request_body(body).unwrap_err().status, 400);
    }
    // A body-less request decided on its Mcp-Method header is a list request by it.
    let mut exchange = gateway.exchange(request("POST", "/mcp", &[USER, ("mcp-method", "tools/list")]));
    exchange.request_headers().await.unwrap();
    let json = ("content-type".to_owned(), "application/json".to_owned());
    assert_eq!(exchange.response_headers(200, &[json]).await, Ok(Body::UpTo(1 << 20)));
}

#[tokio::test]
async fn a_failing_credential_with_a_session_gets_the_credentials_answer() {
    let gateway = gateway("");
    let refused =
        standing(&gateway, "POST", &[("authorization", "Bearer nope"), ("mcp-session-id", "s-1")]).await;
    assert_eq!(refused.unwrap_err().status, 401);
}
