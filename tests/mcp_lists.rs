//! MCP list filtering and session binding through a real Envoy (ext_authz + ext_proc, both
//! cedargate) in front of the real MCP SDK server of `tests/mcp/list_server.mjs`, listed and
//! called by the real MCP SDK client of `tests/mcp/lister.mjs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use cedargate::config::Config;
use common::envoy::{Auth, Envoy, EnvoyConfig};
use common::upstream::{lister, McpServer};
use common::TestServer;
use serde_json::{json, Value};

const USER: &str = "Authorization: Bearer user-token-123";
const ADMIN: &str = "Authorization: Bearer admin-token-456";
const SERVICE: &str = "x-api-key: api-key-789";

const CONFIG: &str = "
gateway:
  strip_authorization: true
  api_key: { header: x-api-key }
";

/// cedargate (the demo with `CONFIG`) and an Envoy with cedargate's ext_authz and ext_proc in
/// front of `mcp`; `ext_proc` overrides where Envoy finds the ext_proc server.
async fn stack(mcp: &McpServer, ext_proc: Option<SocketAddr>) -> (TestServer, Envoy) {
    let text = format!("{}\n{CONFIG}", cedargate::config::DEMO_YAML);
    let server = TestServer::start(Config::parse("mcp-lists.yaml", &text).unwrap()).await;
    let config = EnvoyConfig::new(mcp.addr)
        .with_auth(Auth::ExtAuthzGrpc { addr: server.grpc, with_body: true })
        .with_mcp(mcp.addr)
        .with_ext_proc(ext_proc.unwrap_or(server.grpc));
    let envoy = Envoy::start(&config).await;
    (server, envoy)
}

/// Every fixed entry of the list server, with arguments a call of it may be allowed with.
fn every_call() -> Value {
    let tool = |name: &str, arguments: Value| json!({ "kind": "tool", "name": name, "arguments": arguments });
    json!([
        tool("echo", json!({ "text": "hi" })),
        tool("whoami", json!({})),
        tool("read_file", json!({ "path": "/docs/a" })),
        tool("delete_file", json!({ "path": "/docs/a" })),
        tool("GET_/user/profile", json!({})),
        tool("GET_/admin/users", json!({})),
        tool("GET_/public/info", json!({})),
        { "kind": "prompt", "name": "greeting", "arguments": { "name": "Ada" } },
        { "kind": "prompt", "name": "admin_report", "arguments": {} },
        { "kind": "resource", "name": "file:///readme" },
        { "kind": "resource", "name": "file:///secrets" },
    ])
}

fn names(seen: &Value, list: &str) -> BTreeSet<String> {
    seen[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} in {seen}"))
        .iter()
        .map(|name| name.as_str().unwrap().to_owned())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|item| (*item).to_owned()).collect()
}

/// The entries whose call went through, by kind.
fn called(seen: &Value, kind: &str) -> BTreeSet<String> {
    seen["calls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|call| call["kind"] == kind && call["result"] == "ok")
        .map(|call| call["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Asserts that `who` sees exactly `tools`, `prompts`, `resources` and `templates`, and that
/// exactly the listed tools, prompts and resources can be called.
fn assert_sees(
    seen: &Value,
    who: &str,
    tools: &[&str],
    prompts: &[&str],
    resources: &[&str],
    templates: &[&str],
) {
    assert_eq!(seen["listErrors"], json!({}), "{who}: {seen}");
    assert_eq!(names(seen, "tools"), set(tools), "{who}: {seen}");
    assert_eq!(names(seen, "prompts"), set(prompts), "{who}: {seen}");
    assert_eq!(names(seen, "resources"), set(resources), "{who}: {seen}");
    assert_eq!(names(seen, "templates"), set(templates), "{who}: {seen}");
    // Every listed entry is callable, every unlisted one is refused.
    assert_eq!(called(seen, "tool"), set(tools), "{who}: {seen}");
    assert_eq!(called(seen, "prompt"), set(prompts), "{who}: {seen}");
    assert_eq!(called(seen, "resource"), set(resources), "{who}: {seen}");
    for call in seen["calls"].as_array().unwrap() {
        let result = call["result"].as_str().unwrap();
        assert!(result == "ok" || result == "refused:403", "{who}: {call}");
    }
}

const ALL_TOOLS: [&str; 7] = [
    "echo",
    "whoami",
    "read_file",
    "delete_file",
    "GET_/user/profile",
    "GET_/admin/users",
    "GET_/public/info",
];
const USER_TOOLS: [&str; 5] = ["echo", "whoami", "read_file", "GET_/user/profile", "GET_/public/info"];

async fn assert_each_identity_sees_what_it_may_call(url: &str) {
    let calls = every_call();
    let user = lister(url, &[USER], &calls).await;
    assert_sees(&user, "user", &USER_TOOLS, &["greeting", "admin_report"], &[], &[]);
    let admin = lister(url, &[ADMIN], &calls).await;
    let resources = ["file:///readme", "file:///secrets"];
    assert_sees(
        &admin,
        "admin",
        &ALL_TOOLS,
        &["greeting", "admin_report"],
        &resources,
        &["file:///docs/{name}"],
    );
    // The service speaks MCP but has no tool rule: only the public route is its to call.
    let service = lister(url, &[SERVICE], &calls).await;
    assert_sees(&service, "service", &["GET_/public/info"], &[], &[], &[]);
    let anonymous = lister(url, &[], &calls).await;
    assert!(anonymous["connectError"].as_str().unwrap_or_default().contains("401"), "{anonymous}");
}

#[tokio::test]
async fn each_identity_lists_exactly_what_it_may_call_in_json() {
    let mcp = McpServer::start_lists(&[]);
    let (_server, envoy) = stack(&mcp, None).await;
    assert_each_identity_sees_what_it_may_call(&envoy.url("/mcp")).await;
}

#[tokio::test]
async fn each_identity_lists_exactly_what_it_may_call_in_event_streams_over_pages() {
    let mcp = McpServer::start_lists(&["--sse", "--stateful", "--page-size", "2"]);
    let (_server, envoy) = stack(&mcp, None).await;
    assert_each_identity_sees_what_it_may_call(&envoy.url("/mcp")).await;
}

#[tokio::test]
async fn after_ext_authz_the_identity_comes_from_its_metadata() {
    let mcp = McpServer::start_lists(&["--stateful"]);
    let text = format!("{}\n{CONFIG}", cedargate::config::DEMO_YAML);
    let server = TestServer::start(Config::parse("mcp-lists.yaml", &text).unwrap()).await;
    let config = EnvoyConfig::new(mcp.addr)
        .with_auth(Auth::ExtAuthzGrpc { addr: server.grpc, with_body: true })
        .with_mcp(mcp.addr)
        .with_ext_proc_after_authz(server.grpc);
    let envoy = Envoy::start(&config).await;
    // ext_authz strips the credential on its way upstream (`strip_authorization`), so ext_proc
    // knows the caller only from ext_authz's metadata.
    let calls = every_call();
    let user = lister(&envoy.url("/mcp"), &[USER], &calls).await;
    assert_sees(&user, "user", &USER_TOOLS, &["greeting", "admin_report"], &[], &[]);
    let admin = lister(&envoy.url("/mcp"), &[ADMIN], &calls).await;
    assert_eq!(names(&admin, "tools"), set(&ALL_TOOLS), "{admin}");
    // The session is the user's by that identity too; ext_authz's own refusals pass through.
    let session = user["sessionId"].as_str().unwrap().to_owned();
    let list = || Some(json!({ "jsonrpc": "2.0", "id": 9, "method": "tools/list" }));
    let (status, answer, _) = post(
        &envoy,
        &[("authorization", "Bearer admin-token-456"), ("mcp-session-id", &session)],
        "POST",
        list(),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    let (status, answer, _) = post(&envoy, &[("mcp-session-id", &session)], "POST", list()).await;
    assert_eq!(status, 401, "ext_authz's refusal: {answer}");
}

/// A request to the MCP endpoint through Envoy, with the headers an MCP client sends and
/// `headers`, and `body` as JSON.
fn mcp_request(
    envoy: &Envoy,
    method: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> reqwest::RequestBuilder {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut request = client
        .request(method.parse().unwrap(), envoy.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request
}

/// A JSON-RPC request through Envoy, as an MCP client sends it.
async fn post(
    envoy: &Envoy,
    headers: &[(&str, &str)],
    method: &str,
    body: Option<Value>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let response =
        mcp_request(envoy, method, headers, body).timeout(Duration::from_secs(10)).send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    // An event stream's first data line, or the JSON body.
    let json = text
        .lines()
        .find_map(|line| line.strip_prefix("data: ").filter(|data| !data.trim().is_empty()))
        .map_or_else(
            || serde_json::from_str(&text).unwrap_or(Value::Null),
            |data| serde_json::from_str(data).unwrap(),
        );
    (status, json, headers)
}

#[tokio::test]
async fn a_session_answers_only_the_caller_it_was_issued_to() {
    let mcp = McpServer::start_lists(&["--stateful", "--sse", "--page-size", "2"]);
    let (_server, envoy) = stack(&mcp, None).await;
    let user = lister(&envoy.url("/mcp"), &[USER], &json!([])).await;
    let session = user["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {user}")).to_owned();
    let session = ("mcp-session-id", session.as_str());
    let user = ("authorization", "Bearer user-token-123");
    let admin = ("authorization", "Bearer admin-token-456");
    let list = || Some(json!({ "jsonrpc": "2.0", "id": 9, "method": "tools/list" }));
    // Its owner goes on using it. Each page is trimmed on its own and keeps its cursor.
    let (status, first, _) = post(&envoy, &[user, session], "POST", list()).await;
    assert_eq!(status, 200, "{first}");
    let names = |page: &Value| -> Vec<String> {
        page["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|tool| tool["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&first), ["echo", "whoami"]);
    let cursor = first["result"]["nextCursor"].as_str().unwrap();
    let second =
        json!({ "jsonrpc": "2.0", "id": 10, "method": "tools/list", "params": { "cursor": cursor } });
    let (status, second, _) = post(&envoy, &[user, session], "POST", Some(second)).await;
    assert_eq!(status, 200, "{second}");
    // read_file and delete_file, of which the user may call only the first.
    assert_eq!(names(&second), ["read_file"]);
    assert!(second["result"]["nextCursor"].is_string(), "{second}");
    // Another caller is refused on every method, with a JSON-RPC error.
    for (method, body) in [("POST", list()), ("GET", None), ("DELETE", None)] {
        let (status, answer, _) = post(&envoy, &[admin, session], method, body).await;
        assert_eq!(status, 403, "{method}: {answer}");
        assert_eq!(answer["error"]["code"], -32001, "{method}: {answer}");
        assert_eq!(answer["error"]["message"], "the MCP session belongs to another caller");
    }
    // So is a caller without a credential.
    let (status, answer, _) = post(&envoy, &[session], "POST", list()).await;
    assert_eq!((status, &answer["error"]["code"]), (403, &json!(-32001)), "{answer}");
    // A made-up session id is unknown: the client is told to start over.
    let (status, answer, _) = post(&envoy, &[user, ("mcp-session-id", "made-up")], "POST", list()).await;
    assert_eq!(status, 404, "{answer}");
    // Its owner ends it; then it is gone for everyone.
    let (status, _, _) = post(&envoy, &[user, session], "DELETE", None).await;
    assert_eq!(status, 200);
    let (status, _, _) = post(&envoy, &[user, session], "POST", list()).await;
    assert_eq!(status, 404);
}

/// A credential that fails, sent with a session id, is answered as ext_authz answers it
/// (401, or 503 when its backend is down), never as a session of another caller (403) and
/// never let through.
#[tokio::test]
async fn a_failing_credential_with_a_session_is_refused_as_ext_authz_would() {
    let mcp = McpServer::start_lists(&["--stateful"]);
    let introspection = common::otlp::closed_port();
    let backend = format!(
        "credentials:\n  introspection:\n    - {{ endpoint: \"http://{introspection}/introspect\", \
         client_id: c, client_secret: s }}\n"
    );
    let demo = cedargate::config::DEMO_YAML.replacen("credentials:\n", &backend, 1);
    let text = format!("{demo}\n{CONFIG}");
    let server = TestServer::start(Config::parse("mcp-outage.yaml", &text).unwrap()).await;
    let config = EnvoyConfig::new(mcp.addr)
        .with_auth(Auth::ExtAuthzGrpc { addr: server.grpc, with_body: true })
        .with_mcp(mcp.addr)
        .with_ext_proc(server.grpc);
    let envoy = Envoy::start(&config).await;
    let user = lister(&envoy.url("/mcp"), &[USER], &json!([])).await;
    let session = user["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {user}")).to_owned();
    let session = ("mcp-session-id", session.as_str());
    let list = || Some(json!({ "jsonrpc": "2.0", "id": 9, "method": "tools/list" }));
    // A static token goes on working; an opaque one needs the introspection endpoint, which
    // is down: a 503, with the session id or without.
    let (status, answer, _) =
        post(&envoy, &[("authorization", "Bearer user-token-123"), session], "POST", list()).await;
    assert_eq!(status, 200, "{answer}");
    for headers in
        [&[("authorization", "Bearer opaque-1"), session][..], &[("authorization", "Bearer opaque-1")]]
    {
        let (status, answer, _) = post(&envoy, headers, "POST", list()).await;
        assert_eq!(status, 503, "{headers:?}: {answer}");
    }
    // A credential no backend takes (an API key that is not one) is a 401 with the session id.
    let (status, answer, _) = post(&envoy, &[("x-api-key", "not-a-key"), session], "POST", list()).await;
    assert_eq!(status, 401, "{answer}");
}

#[tokio::test]
async fn a_malformed_list_answer_is_withheld_and_other_lists_still_answer() {
    let mcp = McpServer::start_lists(&["--malformed"]);
    let (_server, envoy) = stack(&mcp, None).await;
    let admin = lister(
        &envoy.url("/mcp"),
        &[ADMIN],
        &json!([{ "kind": "tool", "name": "echo", "arguments": { "text": "x" } }]),
    )
    .await;
    let error = admin["listErrors"]["tools"].as_str().unwrap_or_else(|| panic!("tools listed: {admin}"));
    assert!(error.contains("withheld") || error.contains("502"), "{error}");
    assert_eq!(names(&admin, "tools"), set(&[]), "{admin}");
    assert_eq!(names(&admin, "prompts"), set(&["greeting", "admin_report"]));
    // The call itself was never a list: it passes.
    assert_eq!(admin["calls"][0]["result"], "ok", "{admin}");
}

#[tokio::test]
async fn envoy_fails_closed_without_cedargate() {
    let mcp = McpServer::start_lists(&[]);
    // ext_proc at a port nobody listens on: every MCP exchange fails, nothing is listed.
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (_server, envoy) = stack(&mcp, Some(nobody)).await;
    let list = Some(json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list" }));
    let (status, answer, _) =
        post(&envoy, &[("authorization", "Bearer admin-token-456")], "POST", list.clone()).await;
    assert_eq!(status, 500, "{answer}");
    assert!(answer.get("result").is_none(), "{answer}");
    drop(envoy);

    // cedargate stopped, with both filters on it.
    let (server, envoy) = stack(&mcp, None).await;
    let (status, answer, _) =
        post(&envoy, &[("authorization", "Bearer admin-token-456")], "POST", list.clone()).await;
    assert_eq!((status, answer["result"]["tools"].as_array().map(Vec::len)), (200, Some(ALL_TOOLS.len())));
    server.stop().await.unwrap();
    let (status, answer, _) =
        post(&envoy, &[("authorization", "Bearer admin-token-456")], "POST", list).await;
    assert!(status >= 400, "{status} {answer}");
    assert!(answer.get("result").is_none(), "{answer}");
}

mod protocol {
    //! The ext_proc stream itself, from a gRPC client, as Envoy drives it.

    use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
    use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
    use envoy_types::pb::envoy::service::ext_proc::v3::{
        processing_request, processing_response, HttpBody, HttpHeaders, ProcessingRequest,
    };
    use tokio_stream::StreamExt;

    use super::*;

    fn headers(pairs: &[(&str, &str)], end_of_stream: bool) -> HttpHeaders {
        let headers = pairs
            .iter()
            .map(|(key, value)| HeaderValue {
                key: (*key).into(),
                raw_value: value.as_bytes().to_vec(),
                ..Default::default()
            })
            .collect();
        HttpHeaders { headers: Some(HeaderMap { headers }), end_of_stream, ..Default::default() }
    }

    #[tokio::test]
    async fn each_part_is_answered_in_order_and_a_list_body_is_asked_for() {
        let text = format!("{}\n{CONFIG}", cedargate::config::DEMO_YAML);
        let server = TestServer::start(Config::parse("mcp-lists.yaml", &text).unwrap()).await;
        let mut client = ExternalProcessorClient::new(server.channel().await);
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        let mut answers =
            client.process(tokio_stream::wrappers::ReceiverStream::new(receiver)).await.unwrap().into_inner();
        use processing_request::Request as Part;
        use processing_response::Response as Answer;
        let send = |part| ProcessingRequest { request: Some(part), ..Default::default() };
        sender
            .send(send(Part::RequestHeaders(headers(
                &[
                    (":method", "POST"),
                    (":path", "/mcp"),
                    (":authority", "x"),
                    ("authorization", "Bearer user-token-123"),
                ],
                false,
            ))))
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), answers.next())
            .await
            .expect("an answer")
            .unwrap()
            .unwrap();
        assert!(matches!(answer.response, Some(Answer::RequestHeaders(_))), "{answer:?}");
        // An MCP exchange: the response headers are asked for (SEND), the body stays buffered.
        let mode = answer.mode_override.unwrap();
        assert_eq!((mode.response_header_mode, mode.request_body_mode), (1, 2));
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#.to_vec();
        sender
            .send(send(Part::RequestBody(HttpBody { body, end_of_stream: true, ..Default::default() })))
            .await
            .unwrap();
        let answer = answers.next().await.unwrap().unwrap();
        assert!(matches!(answer.response, Some(Answer::RequestBody(_))), "{answer:?}");
        sender
            .send(send(Part::ResponseHeaders(headers(
                &[(":status", "200"), ("content-type", "application/json"), ("content-length", "90")],
                false,
            ))))
            .await
            .unwrap();
        let answer = answers.next().await.unwrap().unwrap();
        assert!(matches!(answer.response, Some(Answer::ResponseHeaders(_))), "{answer:?}");
        // With its length known, the answer is buffered whole (BUFFERED).
        assert_eq!(answer.mode_override.unwrap().response_body_mode, 2);
        let body = json!({ "jsonrpc": "2.0", "id": 1, "result": { "tools": [{ "name": "echo" }, { "name": "delete_file" }] } });
        sender
            .send(send(Part::ResponseBody(HttpBody {
                body: body.to_string().into_bytes(),
                end_of_stream: true,
                ..Default::default()
            })))
            .await
            .unwrap();
        let answer = answers.next().await.unwrap().unwrap();
        let Some(Answer::ResponseBody(body)) = answer.response else { panic!("{answer:?}") };
        let common = body.response.unwrap();
        let Some(envoy_types::pb::envoy::service::ext_proc::v3::body_mutation::Mutation::Body(trimmed)) =
            common.body_mutation.unwrap().mutation
        else {
            panic!()
        };
        let trimmed: Value = serde_json::from_slice(&trimmed).unwrap();
        assert_eq!(trimmed["result"]["tools"], json!([{ "name": "echo" }]));
        let length = &common.header_mutation.unwrap().set_headers[0];
        let length = length.header.as_ref().unwrap();
        assert_eq!(
            (length.key.as_str(), length.raw_value.clone()),
            ("content-length", trimmed.to_string().len().to_string().into_bytes())
        );
    }
}

mod bad_upstream {
    //! A misbehaving MCP server (an in-process fake: fault injection) behind the real Envoy and
    //! cedargate: whatever it answers a list with, no entry the caller may not use gets out.

    use std::sync::{Arc, Mutex};

    use axum::http::header::CONTENT_TYPE;

    use super::*;

    /// Answers every request with the content type and body set last; an event stream in
    /// chunks, without a length, as the SDK sends one.
    struct Fake {
        addr: SocketAddr,
        answer: Arc<Mutex<(&'static str, Vec<u8>)>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Fake {
        async fn start() -> Self {
            let answer = Arc::new(Mutex::new(("application/json", Vec::new())));
            let served = Arc::clone(&answer);
            let app = axum::Router::new().fallback(move || {
                let (content_type, body) = served.lock().unwrap().clone();
                async move {
                    let body = if content_type == "text/event-stream" {
                        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                            body.chunks(64 * 1024).map(|chunk| Ok(chunk.to_vec())).collect();
                        axum::body::Body::from_stream(futures_util::stream::iter(chunks))
                    } else {
                        axum::body::Body::from(body)
                    };
                    ([(CONTENT_TYPE, content_type)], body)
                }
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let task = tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            Self { addr, answer, task }
        }

        fn answer(&self, content_type: &'static str, body: impl Into<Vec<u8>>) {
            *self.answer.lock().unwrap() = (content_type, body.into());
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn tools(entries: Value) -> String {
        json!({ "jsonrpc": "2.0", "id": 1, "result": { "tools": entries } }).to_string()
    }

    #[tokio::test]
    async fn no_answer_lets_an_entry_out_that_the_caller_may_not_use() {
        let fake = Fake::start().await;
        let text = format!("{}\n{CONFIG}", cedargate::config::DEMO_YAML);
        let server = TestServer::start(Config::parse("mcp-lists.yaml", &text).unwrap()).await;
        let config = EnvoyConfig::new(fake.addr)
            .with_auth(Auth::ExtAuthzGrpc { addr: server.grpc, with_body: true })
            .with_mcp(fake.addr)
            .with_ext_proc(server.grpc);
        let envoy = Envoy::start(&config).await;
        let user = ("authorization", "Bearer user-token-123");
        let list = || Some(json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list" }));
        let raw = |status: u16, answer: &Value| format!("{status} {answer}");

        // Repeated names: the first is kept (a call cannot tell them apart); nameless ones go.
        fake.answer(
            "application/json",
            tools(json!([
                { "name": "echo", "description": "first" },
                { "name": "echo", "description": "secret twin" },
                { "description": "secret without a name" },
                { "name": "" },
                { "name": "delete_file", "description": "secret" },
            ])),
        );
        let (status, answer, headers) = post(&envoy, &[user], "POST", list()).await;
        assert_eq!(
            answer["result"]["tools"],
            json!([{ "name": "echo", "description": "first" }]),
            "{}",
            raw(status, &answer)
        );
        // The length is the trimmed body's.
        let length: usize = headers["content-length"].to_str().unwrap().parse().unwrap();
        assert_eq!(length, answer.to_string().len());

        // Deeply nested JSON: withheld, not parsed to the bottom.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        fake.answer(
            "application/json",
            format!(r#"{{"jsonrpc":"2.0","id":1,"result":{{"tools":[{{"name":"echo","x":{deep}}},{{"name":"delete_file"}}]}}}}"#),
        );
        let (status, answer, _) = post(&envoy, &[user], "POST", list()).await;
        assert_eq!(status, 502, "{}", raw(status, &answer));
        assert_eq!(answer["error"]["code"], -32603, "{answer}");
        assert!(!answer.to_string().contains("delete_file"), "{answer}");

        // The same in an event stream.
        fake.answer("text/event-stream", format!("event: message\ndata: {{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{{\"tools\":[{{\"name\":\"delete_file\",\"x\":{deep}}}]}}}}\n\n"));
        let (status, answer, _) = post(&envoy, &[user], "POST", list()).await;
        assert_eq!(status, 502, "{}", raw(status, &answer));

        // A list answer in some other form: withheld.
        fake.answer("text/plain", tools(json!([{ "name": "delete_file" }])));
        let (status, _, _) = post(&envoy, &[user], "POST", list()).await;
        assert_eq!(status, 502);

        // 50 MB, with its length: withheld at the headers, never buffered.
        let huge: Vec<Value> = (0..400_000)
            .map(|n| json!({ "name": format!("delete_file_{n}"), "description": "x".repeat(100) }))
            .collect();
        let huge = tools(Value::Array(huge));
        assert!(huge.len() > 50_000_000);
        fake.answer("application/json", huge.clone());
        let (status, body) = raw_list(&envoy).await;
        assert_eq!(status, 502, "{body}");
        assert!(body.contains("exceeds 1048576 bytes"), "{body}");
        assert!(!body.contains("delete_file"), "{body}");
        // The same as an event stream of unknown length: Envoy buffers up to its limit, and
        // what came unfinished is withheld.
        fake.answer("text/event-stream", format!("event: message\ndata: {huge}\n\n"));
        let (status, body) = raw_list(&envoy).await;
        assert_eq!(status, 502, "{body}");
        assert!(body.contains("larger than the proxy buffers"), "{body}");
        assert!(!body.contains("delete_file"), "{body}");
        // A small stream is trimmed whole.
        fake.answer(
            "text/event-stream",
            format!(
                "event: message\ndata: {}\n\n",
                tools(json!([{ "name": "delete_file" }, { "name": "echo" }]))
            ),
        );
        let (status, body) = raw_list(&envoy).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("echo") && !body.contains("delete_file"), "{body}");
    }

    /// A user's `tools/list` through Envoy: the status and the body as text.
    async fn raw_list(envoy: &Envoy) -> (u16, String) {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let response = client
            .post(envoy.url("/mcp"))
            .header("authorization", "Bearer user-token-123")
            .header("accept", "application/json, text/event-stream")
            .json(&json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list" }))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap_or_default();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

/// The answer to `method` with `headers` as the user, read for at most `wait` (an event stream
/// may stay open).
async fn streamed(
    envoy: &Envoy,
    method: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
    wait: Duration,
) -> (u16, reqwest::header::HeaderMap, String) {
    let user = mcp_request(envoy, method, headers, body).header("authorization", "Bearer user-token-123");
    let mut response = user.send().await.unwrap();
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, response.chunk()).await {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    (status, headers, text)
}

/// Found by the adversarial review: a server with an event store replays a stream on `GET`
/// with `Last-Event-ID`, list answers included, past the trimming.
#[tokio::test]
async fn a_resumed_stream_never_replays_an_untrimmed_list() {
    let mcp = McpServer::start_lists(&["--stateful", "--resumable", "--sse"]);
    let (_server, envoy) = stack(&mcp, None).await;
    let wait = Duration::from_secs(2);
    let init = json!({ "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": { "name": "t", "version": "1" } } });
    let (status, headers, _) = streamed(&envoy, "POST", &[], Some(init), wait).await;
    assert_eq!(status, 200);
    let session = headers["mcp-session-id"].to_str().unwrap().to_owned();
    let session = ("mcp-session-id", session.as_str());
    let initialized = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
    streamed(&envoy, "POST", &[session], Some(initialized), wait).await;
    let list = json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list" });
    let (status, _, listed) = streamed(&envoy, "POST", &[session], Some(list), wait).await;
    assert_eq!(status, 200);
    assert!(listed.contains("echo") && !listed.contains("delete_file"), "{listed}");
    // The stream's first event id, from which the server would replay the list answer.
    let primed = listed.lines().find_map(|line| line.strip_prefix("id: ")).expect("an event id").to_owned();
    let (_, _, replayed) = streamed(&envoy, "GET", &[session, ("last-event-id", &primed)], None, wait).await;
    assert!(!replayed.contains("delete_file"), "the replayed list leaked: {replayed}");
    assert!(!replayed.contains("\"tools\""), "a list answer was replayed: {replayed}");
}

/// Found by the adversarial review: ext_authz decides a call with the route's context
/// extensions, which ext_proc never sees; a list entry must be decided with them too.
#[tokio::test]
async fn a_list_entry_is_decided_with_the_facts_its_call_gets() {
    let policies = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    for file in ["schema.cedarschema", "mcp.cedar", "routes.cedar"] {
        std::fs::copy(root.join(file), policies.path().join(file)).unwrap();
    }
    std::fs::write(
        policies.path().join("team.cedar"),
        "@id(\"blue-team-no-echo\")\nforbid (principal, action == Action::\"call\", resource is Tool)\n\
         when { context.facts.hasTag(\"team\") && context.facts.getTag(\"team\") == \"blue\" && resource.name == \"echo\" };\n",
    )
    .unwrap();
    let text = format!(
        "{}\n{CONFIG}\npolicies: {{ dir: {}, watch: false }}\n",
        cedargate::config::DEMO_YAML,
        policies.path().display()
    );
    let server = TestServer::start(Config::parse("mcp-lists.yaml", &text).unwrap()).await;
    let mcp = McpServer::start_lists(&[]);
    for after in [false, true] {
        let config = EnvoyConfig::new(mcp.addr)
            .with_auth(Auth::ExtAuthzGrpc { addr: server.grpc, with_body: true })
            .with_mcp(mcp.addr)
            .with_context_extensions("/mcp", &[("team", "blue")]);
        let config = if after {
            config.with_ext_proc_after_authz(server.grpc)
        } else {
            config.with_ext_proc(server.grpc)
        };
        let envoy = Envoy::start(&config).await;
        let user = lister(&envoy.url("/mcp"), &[USER], &every_call()).await;
        let tools: Vec<&str> = USER_TOOLS.iter().copied().filter(|tool| *tool != "echo").collect();
        assert_sees(&user, "user of the blue team", &tools, &["greeting", "admin_report"], &[], &[]);
    }
}

#[tokio::test]
async fn a_session_bound_through_one_replica_is_its_callers_on_every_replica() {
    // Two replicas over one Redis, each behind its own Envoy, in front of one MCP server: a
    // balancer that does not keep a client on one replica.
    let mut redis = common::redis::RedisServer::start().await;
    let mcp = McpServer::start_lists(&["--stateful", "--sse", "--page-size", "2"]);
    let text = format!(
        "{}\n{CONFIG}\nstate:\n  redis:\n    url: {}\n    key_prefix: \"mcp-test:\"\n",
        cedargate::config::DEMO_YAML,
        redis.url()
    );
    let mut stacks = Vec::new();
    for _ in 0..2 {
        let server = TestServer::start(Config::parse("mcp-replicas.yaml", &text).unwrap()).await;
        let config = EnvoyConfig::new(mcp.addr)
            .with_auth(Auth::ExtAuthzGrpc { addr: server.grpc, with_body: true })
            .with_mcp(mcp.addr)
            .with_ext_proc(server.grpc);
        let envoy = Envoy::start(&config).await;
        stacks.push((server, envoy));
    }
    let (a, b) = (&stacks[0].1, &stacks[1].1);
    let opened = lister(&a.url("/mcp"), &[USER], &json!([])).await;
    let session = opened["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {opened}")).to_owned();
    let session = ("mcp-session-id", session.as_str());
    let user = ("authorization", "Bearer user-token-123");
    let admin = ("authorization", "Bearer admin-token-456");
    let list = || Some(json!({ "jsonrpc": "2.0", "id": 9, "method": "tools/list" }));
    // Opened through A, it is the user's through B too, and no one else's.
    let (status, answer, _) = post(b, &[user, session], "POST", list()).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer, _) = post(b, &[admin, session], "POST", list()).await;
    assert_eq!((status, &answer["error"]["code"]), (403, &json!(-32001)), "{answer}");
    let (status, _, _) = post(a, &[session], "POST", list()).await;
    assert_eq!(status, 403);
    // With Redis gone, no replica can tell whose it is: refused (503), never let through.
    redis.kill();
    for envoy in [a, b] {
        let (status, answer, _) = post(envoy, &[user, session], "POST", list()).await;
        assert_eq!(status, 503, "{answer}");
    }
    redis.restart().await;
    // Ended through B, it is gone through A.
    let mut ended = 0;
    for _ in 0..50 {
        // The replicas' connections come back on their own (a retry or two).
        let (status, _, _) = post(b, &[user, session], "DELETE", None).await;
        if status == 200 {
            ended += 1;
            break;
        }
        assert_eq!(status, 503);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ended, 1, "the DELETE went through once Redis was back");
    let (status, answer, _) = post(a, &[user, session], "POST", list()).await;
    assert_eq!(status, 404, "{answer}");
}
