//! Reading an MCP request body into a [`Target`]: a JSON-RPC 2.0 message (MCP Streamable
//! HTTP), or the auth-token-passthrough example's `{"toolName", "args"}`.
//!
//! Anything that does not parse is refused: a body the gateway cannot read is never let
//! through on the strength of the route alone.

use serde_json::{Map, Value};

use crate::model::{Extra, McpRequest as Kind, Target, ToolCall};

/// JSON-RPC 2.0 error codes.
pub mod code {
    /// Invalid JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Valid JSON that is not a request cedargate accepts.
    pub const INVALID_REQUEST: i64 = -32600;
    /// The method's `params` are not what the method needs.
    pub const INVALID_PARAMS: i64 = -32602;
    /// Refused by authorization (a server-defined code, -32000 to -32099).
    pub const UNAUTHORIZED: i64 = -32001;
}

/// A parsed MCP request.
#[derive(Debug, Clone, PartialEq)]
pub struct McpRequest {
    /// What is asked for.
    pub target: Target,
    /// The JSON-RPC method (`tools/call`), or `invoke` for the example's shape.
    pub method: String,
    /// The JSON-RPC id, echoed in an error answer (`null` for notifications and the
    /// example's shape).
    pub id: Value,
}

/// Why a body was refused; answered with HTTP 400.
#[derive(Debug, Clone, PartialEq)]
pub struct McpError {
    /// JSON-RPC error code.
    pub code: i64,
    /// What is wrong, naming the field.
    pub message: String,
    /// The request's id when it got that far, else `null`.
    pub id: Value,
}

impl McpError {
    fn new(code: i64, message: impl Into<String>, id: &Value) -> Self {
        Self { code, message: message.into(), id: id.clone() }
    }
}

/// Whether `key` would be read as `known` by a decoder that matches object keys loosely while
/// not being it: Go's `encoding/json` matches without ASCII case and reads `ſ` as `s` and `K`
/// (Kelvin) as `k`; some decoders stop a key at a NUL. A body cedargate decides by `name` must
/// not carry a `Name` the server runs instead.
pub fn poses_as(key: &str, known: &str) -> bool {
    key != known && folded(key).eq(folded(known))
}

/// `text` as a loose decoder compares keys: up to a NUL, ASCII case and `ſ`/`K` folded.
fn folded(text: &str) -> impl Iterator<Item = char> + '_ {
    text.chars().take_while(|c| *c != '\0').map(|c| match c {
        '\u{17f}' => 's',
        '\u{212a}' => 'k',
        c => c.to_ascii_lowercase(),
    })
}

/// The first key of `object` that poses as one of `known` ([`poses_as`]).
pub fn impostor<'a>(object: &'a Map<String, Value>, known: &[&str]) -> Option<&'a str> {
    object.keys().map(String::as_str).find(|key| known.iter().any(|known| poses_as(key, known)))
}

/// Fails on a key of `object` that poses as one of `known`.
fn exact_keys(object: &Map<String, Value>, known: &[&str], id: &Value) -> Result<(), McpError> {
    match impostor(object, known) {
        Some(key) => Err(McpError::new(
            code::INVALID_REQUEST,
            format!(
                "`{}` is not a field of an MCP request: fields match exactly (a server may read it as `{}`)",
                crate::model::quote(key),
                known.iter().find(|known| poses_as(key, known)).unwrap_or(&""),
            ),
            id,
        )),
        None => Ok(()),
    }
}

/// The fields of a JSON-RPC message and of the `params` cedargate decides by.
const MESSAGE_FIELDS: [&str; 6] = ["jsonrpc", "id", "method", "params", "result", "error"];
const PARAMS_FIELDS: [&str; 3] = ["name", "arguments", "uri"];

/// The `Mcp-Method` and `Mcp-Name` request headers, when sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct McpHeaders<'a> {
    /// `Mcp-Method`.
    pub method: Option<&'a str>,
    /// `Mcp-Name`: the tool or prompt name, or the resource URI.
    pub name: Option<&'a str>,
    /// Whether a request without a body may be decided on these headers alone
    /// (`gateway.mcp_trust_headers`).
    pub trusted: bool,
}

/// The protocol's methods (MCP 2025-06-18 and later), matched exactly: a near miss such as
/// `Tools/Call` or `tools/call ` is refused rather than decided as an unknown method, since a
/// lenient server might still run it as the real one.
const METHODS: [&str; 25] = [
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "logging/setLevel",
    "completion/complete",
    "roots/list",
    "sampling/createMessage",
    "elicitation/create",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/message",
    "notifications/roots/list_changed",
    "notifications/resources/updated",
    "notifications/resources/list_changed",
    "notifications/tools/list_changed",
    "notifications/prompts/list_changed",
];

/// Refuses a method name with whitespace or control characters, or one that is a protocol
/// method in another case or spelling.
fn check_method(method: &str, id: &Value) -> Result<(), McpError> {
    if method.is_empty() || method.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(McpError::new(
            code::INVALID_REQUEST,
            format!("`method` `{}` is not a method name", crate::model::quote(method)),
            id,
        ));
    }
    if let Some(meant) = METHODS.iter().find(|known| known.eq_ignore_ascii_case(method) && **known != method)
    {
        return Err(McpError::new(
            code::INVALID_REQUEST,
            format!(
                "`method` `{}` is not an MCP method; methods match exactly (`{meant}`)",
                crate::model::quote(method)
            ),
            id,
        ));
    }
    Ok(())
}

/// Reads a JSON-RPC message for the MCP server `server`.
///
/// With no body, the request is decided by the `Mcp-Method`/`Mcp-Name` headers alone, if
/// they are trusted; with a body, those headers must agree with it.
///
/// Fails on a body that is not one JSON-RPC 2.0 request, notification or response, on a
/// method name that is not one, on `params` a method needs that are missing or mistyped, on
/// headers that disagree, and on a missing body when the headers are not trusted.
pub fn parse_jsonrpc(body: &[u8], server: &str, headers: McpHeaders<'_>) -> Result<McpRequest, McpError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        let Some(method) = headers.method else {
            return Err(McpError::new(code::INVALID_REQUEST, "the MCP request has no body", &Value::Null));
        };
        // INVARIANT: without the body, the headers are all there is to decide on, and nothing
        // here can check them against what the MCP server will run.
        if !headers.trusted {
            return Err(McpError::new(
                code::INVALID_REQUEST,
                "the MCP request reached cedargate without its body: forward the body, or set \
                 gateway.mcp_trust_headers if the MCP server rejects Mcp-Method/Mcp-Name headers \
                 that disagree with the body",
                &Value::Null,
            ));
        }
        check_method(method, &Value::Null)?;
        let name = headers.name.unwrap_or_default();
        let params = match method {
            "resources/read" => json_object([("uri", name)]),
            _ if headers.name.is_some() => json_object([("name", name)]),
            _ => Map::new(),
        };
        let (target, _) = target_of(method, &params, server, &Value::Null)?;
        return Ok(McpRequest { target, method: method.to_owned(), id: Value::Null });
    }
    let message: Value = serde_json::from_slice(body)
        .map_err(|error| McpError::new(code::PARSE_ERROR, format!("Parse error: {error}"), &Value::Null))?;
    let Value::Object(message) = message else {
        let reason = if message.is_array() {
            "JSON-RPC batches are not accepted (MCP 2025-06-18 removed them)"
        } else {
            "the body must be a JSON-RPC object"
        };
        return Err(McpError::new(code::INVALID_REQUEST, reason, &Value::Null));
    };
    let id = message.get("id").cloned().unwrap_or(Value::Null);
    exact_keys(&message, &MESSAGE_FIELDS, &Value::Null)?;
    if !matches!(id, Value::Null | Value::String(_) | Value::Number(_)) {
        return Err(McpError::new(code::INVALID_REQUEST, "`id` must be a string or a number", &Value::Null));
    }
    if message.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(McpError::new(code::INVALID_REQUEST, "`jsonrpc` must be \"2.0\"", &id));
    }
    let method = match message.get("method") {
        Some(Value::String(method)) => method.as_str(),
        Some(_) => return Err(McpError::new(code::INVALID_REQUEST, "`method` must be a string", &id)),
        // A client's answer to a server request (sampling, elicitation).
        None if message.contains_key("result") || message.contains_key("error") => "response",
        None => return Err(McpError::new(code::INVALID_REQUEST, "`method` is missing", &id)),
    };
    check_method(method, &id)?;
    let empty = Map::new();
    let params = match message.get("params") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(params)) => params,
        Some(_) => return Err(McpError::new(code::INVALID_PARAMS, "`params` must be an object", &id)),
    };
    exact_keys(params, &PARAMS_FIELDS, &id)?;
    let (target, name) = target_of(method, params, server, &id)?;
    if let Some(expected) = headers.method.filter(|expected| *expected != method) {
        return Err(McpError::new(
            code::INVALID_REQUEST,
            format!(
                "the Mcp-Method header `{}` does not match the body's method `{}`",
                crate::model::quote(expected),
                crate::model::quote(method)
            ),
            &id,
        ));
    }
    if let Some(expected) = headers.name.filter(|expected| Some(*expected) != name) {
        return Err(McpError::new(
            code::INVALID_REQUEST,
            format!(
                "the Mcp-Name header `{}` does not match the body's `{}`",
                crate::model::quote(expected),
                crate::model::quote(name.unwrap_or_default())
            ),
            &id,
        ));
    }
    Ok(McpRequest { target, method: method.to_owned(), id })
}

/// Reads the example's `{"toolName": "GET_/user/profile", "args": {}}`.
///
/// Fails when `toolName` is not a string or `args` not an object.
pub fn parse_invoke(body: &[u8], server: &str) -> Result<McpRequest, McpError> {
    let message: Value = serde_json::from_slice(body)
        .map_err(|error| McpError::new(code::PARSE_ERROR, format!("request body: {error}"), &Value::Null))?;
    if let Value::Object(fields) = &message {
        exact_keys(fields, &["toolName", "args"], &Value::Null)?;
    }
    let Some(name) = message.get("toolName").and_then(Value::as_str) else {
        return Err(McpError::new(code::INVALID_PARAMS, "`toolName` must be a string", &Value::Null));
    };
    let arguments = arguments_of(message.get("args"), "args", &Value::Null)?;
    Ok(McpRequest {
        target: Target::Tool(ToolCall { name: name.to_owned(), server: server.to_owned(), arguments }),
        method: "invoke".to_owned(),
        id: Value::Null,
    })
}

/// The target of `method` and the name the `Mcp-Name` header must match, if the method has one.
fn target_of<'p>(
    method: &str,
    params: &'p Map<String, Value>,
    server: &str,
    id: &Value,
) -> Result<(Target, Option<&'p str>), McpError> {
    let call = |name: &str, arguments: Extra| ToolCall {
        name: name.to_owned(),
        server: server.to_owned(),
        arguments,
    };
    let named = |field: &str| {
        params.get(field).and_then(Value::as_str).filter(|name| !name.is_empty()).ok_or_else(|| {
            McpError::new(code::INVALID_PARAMS, format!("`params.{field}` of {method} must be a string"), id)
        })
    };
    Ok(match method {
        "tools/call" => {
            let name = named("name")?;
            let arguments = arguments_of(params.get("arguments"), "params.arguments", id)?;
            (Target::Tool(call(name, arguments)), Some(name))
        }
        "prompts/get" => {
            let name = named("name")?;
            let arguments = arguments_of(params.get("arguments"), "params.arguments", id)?;
            (Target::Mcp(Kind::Prompt, call(name, arguments)), Some(name))
        }
        // Subscribing to a resource shows its updates: decided as reading it.
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            let uri = named("uri")?;
            (Target::Mcp(Kind::Resource, call(uri, Extra::new())), Some(uri))
        }
        // Completing a prompt's or a resource template's arguments shows what they hold:
        // decided as getting the prompt or reading the resource.
        "completion/complete" => {
            let reference = params.get("ref").and_then(Value::as_object).ok_or_else(|| {
                McpError::new(
                    code::INVALID_PARAMS,
                    "`params.ref` of completion/complete must be an object",
                    id,
                )
            })?;
            exact_keys(reference, &["type", "name", "uri"], id)?;
            let field =
                |field: &str| reference.get(field).and_then(Value::as_str).filter(|text| !text.is_empty());
            match (reference.get("type").and_then(Value::as_str), field("name"), field("uri")) {
                (Some("ref/prompt"), Some(name), _) => {
                    (Target::Mcp(Kind::Prompt, call(name, Extra::new())), Some(name))
                }
                (Some("ref/resource"), _, Some(uri)) => {
                    (Target::Mcp(Kind::Resource, call(uri, Extra::new())), Some(uri))
                }
                _ => {
                    return Err(McpError::new(
                        code::INVALID_PARAMS,
                        "`params.ref` of completion/complete must be a `ref/prompt` with a `name` or a \
                         `ref/resource` with a `uri`",
                        id,
                    ))
                }
            }
        }
        _ => (Target::Mcp(Kind::Method, call(method, Extra::new())), None),
    })
}

fn arguments_of(value: Option<&Value>, field: &str, id: &Value) -> Result<Extra, McpError> {
    match value {
        None | Some(Value::Null) => Ok(Extra::new()),
        Some(Value::Object(arguments)) => {
            Ok(arguments.iter().map(|(key, value)| (key.clone(), value.clone())).collect())
        }
        Some(_) => Err(McpError::new(code::INVALID_PARAMS, format!("`{field}` must be an object"), id)),
    }
}

fn json_object<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Map<String, Value> {
    pairs.into_iter().map(|(key, value)| (key.to_owned(), Value::from(value))).collect()
}
