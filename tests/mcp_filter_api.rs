//! cedargate's list filtering API (`Authorizer/FilterTools`, `FilterPrompts`,
//! `FilterResources`) as an MCP server that filters in process uses it: the real MCP SDK server
//! of `examples/mcp/filtered_server.mjs`, which asks cedargate over gRPC what each caller may see
//! and call, listed and called by the real MCP SDK client of `tests/mcp/lister.mjs`; and the
//! gRPC API itself, from a tonic client.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use cedargate::api::proto;
use cedargate::config::Config;
use common::upstream::McpServer;
use common::TestServer;
use prost_types::value::Kind;
use serde_json::{json, Value};

const USER: &str = "Bearer user-token-123";
const ADMIN: &str = "Bearer admin-token-456";
const SERVICE: &str = "ApiKey api-key-789";
const INVALID: &str = "Bearer nope";

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
const PUBLIC_TOOLS: [&str; 1] = ["GET_/public/info"];

/// A call of each of the server's tools, with arguments a call of it may be allowed with.
fn every_call() -> Value {
    let tool = |name: &str, arguments: Value| json!({ "kind": "tool", "name": name, "arguments": arguments });
    Value::Array(
        ALL_TOOLS
            .iter()
            .map(|name| match *name {
                "echo" => tool(name, json!({ "text": "x" })),
                "read_file" | "delete_file" => tool(name, json!({ "path": "/docs/a" })),
                _ => tool(name, json!({})),
            })
            .collect(),
    )
}

/// What the real MCP client saw with `authorization` (none when `None`).
async fn lister(url: &str, authorization: Option<&str>, calls: &Value) -> Value {
    let header = authorization.map(|authorization| format!("Authorization: {authorization}"));
    common::upstream::lister(
        url,
        header.as_slice().iter().map(String::as_str).collect::<Vec<_>>().as_slice(),
        calls,
    )
    .await
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|item| (*item).to_owned()).collect()
}

fn listed(seen: &Value) -> BTreeSet<String> {
    let tools = seen["tools"].as_array().unwrap_or_else(|| panic!("no tools in {seen}"));
    tools.iter().map(|name| name.as_str().unwrap().to_owned()).collect()
}

/// Each call's result by tool name.
fn results(seen: &Value) -> BTreeMap<String, String> {
    let calls = seen["calls"].as_array().unwrap_or_else(|| panic!("no calls in {seen}"));
    calls
        .iter()
        .map(|call| (call["name"].as_str().unwrap().to_owned(), call["result"].as_str().unwrap().to_owned()))
        .collect()
}

/// Asserts that `who` lists exactly `tools`, that each of them can be called and that each other
/// tool's call is refused with an error result.
fn assert_sees(seen: &Value, who: &str, tools: &[&str]) {
    // The server offers tools only: lister.mjs's prompts and resources lists fail, its tools list must not.
    assert!(seen["listErrors"].get("tools").is_none(), "{who}: {seen}");
    assert_eq!(listed(seen), set(tools), "{who}: {seen}");
    let results = results(seen);
    assert_eq!(results.keys().cloned().collect::<BTreeSet<_>>(), set(&ALL_TOOLS), "{who}: {seen}");
    for (name, result) in &results {
        if tools.contains(&name.as_str()) {
            assert_eq!(result, "ok", "{who} may call {name}: {seen}");
        } else {
            assert!(result.starts_with("error:refused by cedargate"), "{who} may not call {name}: {seen}");
        }
    }
}

#[tokio::test]
async fn an_mcp_server_lists_and_calls_exactly_what_cedargate_allows() {
    let server = TestServer::start(Config::demo().unwrap()).await;
    let mcp = McpServer::start_filtered(server.grpc);
    let url = mcp.url();
    let calls = every_call();

    let user = lister(&url, Some(USER), &calls).await;
    assert_sees(&user, "user", &USER_TOOLS);
    // The call is decided with its arguments: read_file is listed, but only /docs is the user's.
    let outside = json!([{ "kind": "tool", "name": "read_file", "arguments": { "path": "/etc/passwd" } }]);
    let user_outside = lister(&url, Some(USER), &outside).await;
    let result = user_outside["calls"][0]["result"].as_str().unwrap();
    assert!(result.starts_with("error:refused by cedargate"), "{user_outside}");

    let admin = lister(&url, Some(ADMIN), &calls).await;
    assert_sees(&admin, "admin", &ALL_TOOLS);

    // The service has no tool rule: only the public route is its to call.
    let service = lister(&url, Some(SERVICE), &calls).await;
    assert_sees(&service, "service", &PUBLIC_TOOLS);
    let anonymous = lister(&url, None, &calls).await;
    assert_sees(&anonymous, "anonymous", &PUBLIC_TOOLS);

    // A credential cedargate rejects gets an error, never the list; and no call goes through.
    let invalid = lister(&url, Some(INVALID), &calls).await;
    let error = invalid["listErrors"]["tools"].as_str().unwrap_or_else(|| panic!("tools listed: {invalid}"));
    assert!(error.contains("cedargate"), "{invalid}");
    assert_eq!(listed(&invalid), set(&[]), "{invalid}");
    for (name, result) in results(&invalid) {
        assert!(result.starts_with("error:refused by cedargate"), "{name}: {invalid}");
    }
}

#[tokio::test]
async fn without_cedargate_the_list_is_an_error() {
    // cedargate's address with nobody listening: every list and call fails, nothing is shown.
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mcp = McpServer::start_filtered(nobody);
    let calls = json!([{ "kind": "tool", "name": "echo", "arguments": { "text": "x" } }]);
    let admin = lister(&mcp.url(), Some(ADMIN), &calls).await;
    let error = admin["listErrors"]["tools"].as_str().unwrap_or_else(|| panic!("tools listed: {admin}"));
    assert!(error.contains("cedargate: authorization unavailable"), "{admin}");
    assert_eq!(listed(&admin), set(&[]), "{admin}");
    let result = admin["calls"][0]["result"].as_str().unwrap();
    assert!(result.ends_with("cedargate: authorization unavailable"), "{admin}");
}

// --- The gRPC API itself ------------------------------------------------------------------------

/// `value` (a JSON object) as a `google.protobuf.Struct`.
fn to_struct(value: &Value) -> prost_types::Struct {
    let Value::Object(object) = value else { panic!("not an object: {value}") };
    prost_types::Struct { fields: object.iter().map(|(key, value)| (key.clone(), to_value(value))).collect() }
}

fn to_value(value: &Value) -> prost_types::Value {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(value) => Kind::BoolValue(*value),
        Value::Number(value) => Kind::NumberValue(value.as_f64().unwrap()),
        Value::String(value) => Kind::StringValue(value.clone()),
        Value::Array(values) => {
            Kind::ListValue(prost_types::ListValue { values: values.iter().map(to_value).collect() })
        }
        Value::Object(_) => Kind::StructValue(to_struct(value)),
    };
    prost_types::Value { kind: Some(kind) }
}

fn filter_request(authorization: &str, entries: &[Value]) -> proto::FilterRequest {
    proto::FilterRequest {
        authorization: authorization.into(),
        entries: entries.iter().map(to_struct).collect(),
        ..Default::default()
    }
}

/// A tool as an MCP server lists it, with fields of every kind that must come back unchanged.
fn tool_entry(name: &str) -> Value {
    json!({
        "name": name,
        "description": format!("The {name} tool"),
        "inputSchema": {
            "type": "object",
            "properties": { "path": { "type": "string" } },
            "required": ["path"],
            "additionalProperties": false,
        },
        "annotations": { "readOnlyHint": true, "title": null },
        "_meta": { "weight": 2.5 },
    })
}

#[tokio::test]
async fn filter_tools_keeps_what_the_caller_could_call_unchanged_and_in_order() {
    let server = TestServer::start(Config::demo().unwrap()).await;
    let mut client = server.authorizer().await;
    let entries = [
        tool_entry("GET_/public/info"),
        tool_entry("delete_file"),
        tool_entry("echo"),
        json!({ "description": "no name" }),
        tool_entry("read_file"),
        tool_entry("GET_/admin/users"),
        // A repeated name is removed, even of a tool the user may call.
        tool_entry("echo"),
        json!({ "name": 7 }),
        tool_entry("GET_/user/profile"),
        tool_entry("whoami"),
    ];
    let kept = |names: &[usize]| names.iter().map(|index| to_struct(&entries[*index])).collect::<Vec<_>>();

    let user = client.filter_tools(filter_request(USER, &entries)).await.unwrap().into_inner();
    assert_eq!(user.entries, kept(&[0, 2, 4, 8, 9]), "{user:?}");
    assert_eq!(user.removed, 5);
    let auth_info = user.auth_info.unwrap();
    assert_eq!(
        (auth_info.subject.as_str(), auth_info.roles.as_slice()),
        ("demo-user", &["user".to_owned()][..])
    );

    let admin = client.filter_tools(filter_request(ADMIN, &entries)).await.unwrap().into_inner();
    assert_eq!(admin.entries, kept(&[0, 1, 2, 4, 5, 8, 9]), "{admin:?}");
    assert_eq!(admin.removed, 3);

    // No credential: only the public route; there is no caller to report.
    let anonymous = client.filter_tools(filter_request("", &entries)).await.unwrap().into_inner();
    assert_eq!(anonymous.entries, kept(&[0]), "{anonymous:?}");
    assert_eq!(anonymous.removed, 9);
    assert!(anonymous.auth_info.is_none(), "{anonymous:?}");

    // A credential that does not resolve fails the call instead of answering a list.
    let status = client.filter_tools(filter_request(INVALID, &entries)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    // Nothing to filter is an empty answer.
    let empty = client.filter_tools(filter_request(USER, &[])).await.unwrap().into_inner();
    assert_eq!((empty.entries.len(), empty.removed), (0, 0));
}

#[tokio::test]
async fn filter_resources_names_entries_by_uri_or_uri_template() {
    let server = TestServer::start(Config::demo().unwrap()).await;
    let mut client = server.authorizer().await;
    let entries = [
        json!({ "uri": "file:///readme", "name": "readme", "mimeType": "text/plain", "size": 19 }),
        json!({ "uriTemplate": "file:///docs/{name}", "name": "docs", "mimeType": "text/plain" }),
        json!({ "name": "no uri" }),
        json!({ "uri": "file:///secrets", "name": "secrets", "annotations": { "audience": ["user"] } }),
        json!({ "uri": "file:///readme", "name": "readme again" }),
    ];
    let admin = client.filter_resources(filter_request(ADMIN, &entries)).await.unwrap().into_inner();
    let kept: Vec<_> = [0, 1, 3].iter().map(|index| to_struct(&entries[*index])).collect();
    assert_eq!(admin.entries, kept, "{admin:?}");
    assert_eq!(admin.removed, 2);
    assert_eq!(admin.auth_info.unwrap().subject, "demo-admin");

    // Users have no resource rule.
    let user = client.filter_resources(filter_request(USER, &entries)).await.unwrap().into_inner();
    assert_eq!((user.entries.len(), user.removed), (0, 5), "{user:?}");

    let status = client.filter_resources(filter_request(INVALID, &entries)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
}

#[tokio::test]
async fn filter_prompts_decides_each_as_prompts_get() {
    let server = TestServer::start(Config::demo().unwrap()).await;
    let mut client = server.authorizer().await;
    let entries = [
        json!({ "name": "greeting", "arguments": [{ "name": "name", "required": true }] }),
        json!({ "name": "admin_report", "arguments": [] }),
    ];
    let user = client.filter_prompts(filter_request(USER, &entries)).await.unwrap().into_inner();
    assert_eq!(user.entries, entries.iter().map(to_struct).collect::<Vec<_>>(), "{user:?}");
    assert_eq!(user.removed, 0);
    // The service has no prompt rule.
    let service = client.filter_prompts(filter_request(SERVICE, &entries)).await.unwrap().into_inner();
    assert_eq!((service.entries.len(), service.removed), (0, 2), "{service:?}");
}
