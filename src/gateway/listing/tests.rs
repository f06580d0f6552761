use serde_json::json;

use super::*;

/// Allows the entries whose name starts with `ok`.
fn by_prefix(targets: &[Target]) -> Vec<bool> {
    targets
        .iter()
        .map(|target| match target {
            Target::Tool(call) | Target::Mcp(_, call) => call.name.starts_with("ok"),
            Target::Route(_) => false,
        })
        .collect()
}

fn answer(kind: ListKind, content_type: &str) -> Answer<'_> {
    Answer { kind, server: "files", content_type, success: true, max_bytes: 1 << 20 }
}

fn json_trim(kind: ListKind, body: &Value) -> Result<(Trimmed, Counts), Unreadable> {
    trim(answer(kind, "application/json"), &serde_json::to_vec(body).unwrap(), &mut by_prefix)
}

fn replaced(trimmed: Trimmed) -> Value {
    match trimmed {
        Trimmed::Replaced(body) => serde_json::from_slice(&body).unwrap(),
        Trimmed::Unchanged => panic!("expected a trimmed body"),
    }
}

#[test]
fn a_json_list_keeps_only_allowed_entries_and_everything_else() {
    let body = json!({
        "jsonrpc": "2.0", "id": 7,
        "result": {
            "tools": [
                { "name": "ok_a", "description": "A", "inputSchema": { "type": "object" } },
                { "name": "secret", "description": "must not leak" },
                { "name": "ok_b" },
            ],
            "nextCursor": "page-2",
            "_meta": { "k": 1 },
        },
    });
    let (trimmed, counts) = json_trim(ListKind::Tools, &body).unwrap();
    assert_eq!(counts, Counts { kept: 2, removed: 1 });
    let expected = json!({
        "jsonrpc": "2.0", "id": 7,
        "result": {
            "tools": [
                { "name": "ok_a", "description": "A", "inputSchema": { "type": "object" } },
                { "name": "ok_b" },
            ],
            "nextCursor": "page-2",
            "_meta": { "k": 1 },
        },
    });
    assert_eq!(replaced(trimmed), expected);
}

#[test]
fn each_kind_is_named_and_decided_by_its_own_field_and_call() {
    let mut seen = Vec::new();
    let mut record = |targets: &[Target]| {
        seen.extend(targets.iter().cloned());
        vec![true; targets.len()]
    };
    for (kind, field, key) in [
        (ListKind::Tools, "tools", "name"),
        (ListKind::Prompts, "prompts", "name"),
        (ListKind::Resources, "resources", "uri"),
        (ListKind::ResourceTemplates, "resourceTemplates", "uriTemplate"),
    ] {
        let body = json!({ "jsonrpc": "2.0", "id": 1, "result": { field: [{ key: "x" }] } });
        let (trimmed, _) =
            trim(answer(kind, "application/json"), body.to_string().as_bytes(), &mut record).unwrap();
        assert_eq!(trimmed, Trimmed::Unchanged);
    }
    let call = |name: &str| ToolCall { name: name.into(), server: "files".into(), arguments: Extra::new() };
    assert_eq!(
        seen,
        [
            Target::Tool(call("x")),
            Target::Mcp(Kind::Prompt, call("x")),
            Target::Mcp(Kind::Resource, call("x")),
            Target::Mcp(Kind::Resource, call("x")),
        ]
    );
}

#[test]
fn nameless_and_repeated_entries_never_pass() {
    let body = json!({ "jsonrpc": "2.0", "id": 1, "result": { "tools": [
        { "name": "ok_a", "description": "first" },
        { "description": "no name" },
        { "name": "" },
        { "name": 5 },
        "ok_string",
        { "name": "ok_a", "description": "second, unreachable by name" },
        { "name": "ok_c" },
    ] } });
    let (trimmed, counts) = json_trim(ListKind::Tools, &body).unwrap();
    assert_eq!(counts, Counts { kept: 2, removed: 5 });
    let tools = replaced(trimmed)["result"]["tools"].clone();
    assert_eq!(tools, json!([{ "name": "ok_a", "description": "first" }, { "name": "ok_c" }]));
}

#[test]
fn an_answer_that_is_not_the_list_is_withheld() {
    let cases = [
        (br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"ok""#.to_vec(), "not JSON"),
        (br#"[{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}]"#.to_vec(), "not a JSON-RPC object"),
        (br#"{"jsonrpc":"2.0","id":1,"result":{"prompts":[]}}"#.to_vec(), "no `result.tools` list"),
        (br#"{"jsonrpc":"2.0","id":1,"result":{"tools":{"name":"x"}}}"#.to_vec(), "no `result.tools` list"),
        (br#"{"jsonrpc":"2.0","id":1,"result":[]}"#.to_vec(), "`result` is not an object"),
        (br#"{"jsonrpc":"2.0","id":1}"#.to_vec(), "neither `result` nor `error`"),
        (format!("{}1{}", "[".repeat(200), "]".repeat(200)).into_bytes(), "not JSON"),
    ];
    for (body, why) in cases {
        let error = trim(answer(ListKind::Tools, "application/json"), &body, &mut by_prefix).unwrap_err();
        assert!(error.contains(why), "{error}");
    }
    let error = trim(answer(ListKind::Tools, "text/html"), b"<html>", &mut by_prefix).unwrap_err();
    assert!(error.contains("neither JSON nor an event stream"), "{error}");
    let mut small = answer(ListKind::Tools, "application/json");
    small.max_bytes = 10;
    let error =
        trim(small, br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}"#, &mut by_prefix).unwrap_err();
    assert!(error.contains("exceeds 10 bytes"), "{error}");
}

#[test]
fn a_deeply_nested_entry_is_withheld_not_parsed_forever() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let body = format!(r#"{{"jsonrpc":"2.0","id":1,"result":{{"tools":[{{"name":"ok","x":{deep}}}]}}}}"#);
    let error =
        trim(answer(ListKind::Tools, "application/json"), body.as_bytes(), &mut by_prefix).unwrap_err();
    assert!(error.contains("recursion limit"), "{error}");
}

#[test]
fn an_error_answer_or_a_failed_one_passes_as_it_is() {
    let error = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"no"}}"#;
    let (trimmed, _) = trim(answer(ListKind::Tools, "application/json"), error, &mut by_prefix).unwrap();
    assert_eq!(trimmed, Trimmed::Unchanged);
    let mut failed = answer(ListKind::Tools, "text/html");
    failed.success = false;
    assert_eq!(trim(failed, b"<h1>502</h1>", &mut by_prefix).unwrap().0, Trimmed::Unchanged);
    // A failed answer that is a list is still trimmed.
    failed.content_type = "application/json";
    let body = json!({ "jsonrpc": "2.0", "id": 1, "result": { "tools": [{ "name": "secret" }] } });
    let (trimmed, _) = trim(failed, body.to_string().as_bytes(), &mut by_prefix).unwrap();
    assert_eq!(replaced(trimmed)["result"]["tools"], json!([]));
}

#[test]
fn an_event_stream_has_its_response_trimmed_and_other_events_untouched() {
    let response = json!({ "jsonrpc": "2.0", "id": 3, "result": { "tools": [{ "name": "ok_a" }, { "name": "secret" }], "nextCursor": "c" } });
    let notification = r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"data":"secret"}}"#;
    let stream = format!(
        ": a comment\r\n\r\nid: 1\r\ndata:\r\n\r\nevent: message\ndata: {notification}\n\nevent: message\nid: 2\ndata: {response}\n\n"
    );
    let (trimmed, counts) =
        trim(answer(ListKind::Tools, "text/event-stream"), stream.as_bytes(), &mut by_prefix).unwrap();
    assert_eq!(counts, Counts { kept: 1, removed: 1 });
    let Trimmed::Replaced(body) = trimmed else { panic!("expected a trimmed stream") };
    let body = String::from_utf8(body).unwrap();
    let expected_response =
        json!({ "jsonrpc": "2.0", "id": 3, "result": { "tools": [{ "name": "ok_a" }], "nextCursor": "c" } });
    let expected = format!(
        ": a comment\r\n\r\nid: 1\r\ndata:\r\n\r\nevent: message\ndata: {notification}\n\nevent: message\nid: 2\ndata: {}\n\n",
        serde_json::to_string(&expected_response).unwrap()
    );
    assert_eq!(body, expected);
}

#[test]
fn an_event_split_over_data_lines_is_read_as_one_message() {
    let stream =
        "data: {\"jsonrpc\":\"2.0\",\"id\":1,\ndata: \"result\":{\"tools\":[{\"name\":\"secret\"}]}}\n\n";
    let (trimmed, counts) =
        trim(answer(ListKind::Tools, "text/event-stream"), stream.as_bytes(), &mut by_prefix).unwrap();
    assert_eq!(counts, Counts { kept: 0, removed: 1 });
    let Trimmed::Replaced(body) = trimmed else { panic!("expected a trimmed stream") };
    assert_eq!(
        String::from_utf8(body).unwrap(),
        "data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[]}}\n\n"
    );
}

#[test]
fn an_event_stream_without_a_readable_response_is_withheld() {
    for (stream, why) in [
        ("data: {\"jsonrpc\":\"2.0\",\"method\":\"ping\"}\n\n", "carries no JSON-RPC response"),
        ("data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[{\"name\":\n\n", "not JSON"),
        ("data: not json\n\n", "not JSON"),
        ("", "carries no JSON-RPC response"),
        // Unterminated at the end of the stream, still read.
        ("data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}", "no `result.tools` list"),
    ] {
        let error = trim(answer(ListKind::Tools, "text/event-stream"), stream.as_bytes(), &mut by_prefix)
            .unwrap_err();
        assert!(error.contains(why), "{stream:?}: {error}");
    }
}

#[test]
fn every_response_in_a_stream_is_trimmed() {
    let one = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"secret1"}]}}"#;
    let two = r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"secret2"},{"name":"ok"}]}}"#;
    let stream = format!("data: {one}\n\ndata: {two}\n\n");
    let (trimmed, counts) =
        trim(answer(ListKind::Tools, "text/event-stream"), stream.as_bytes(), &mut by_prefix).unwrap();
    assert_eq!(counts, Counts { kept: 1, removed: 2 });
    let Trimmed::Replaced(body) = trimmed else { panic!() };
    let body = String::from_utf8(body).unwrap();
    assert!(!body.contains("secret"), "{body}");
}

#[test]
fn a_message_that_is_both_request_and_response_is_withheld() {
    let response = r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"ok"}]}}"#;
    for odd in [
        r#"{"jsonrpc":"2.0","id":1,"method":null,"result":{"tools":[{"name":"secret"}]}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x","result":{"tools":[{"name":"secret"}]}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":7}"#,
    ] {
        let stream = format!("data: {response}\n\ndata: {odd}\n\n");
        let error = trim(answer(ListKind::Tools, "text/event-stream"), stream.as_bytes(), &mut by_prefix)
            .unwrap_err();
        assert!(error.contains("not a request"), "{odd}: {error}");
    }
}

#[test]
fn keys_a_loose_decoder_reads_as_the_list_or_a_name_are_withheld() {
    for body in [
        r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"ok"}],"Tools":[{"name":"secret"}]}}"#,
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[{\"name\":\"ok\"}],\"tool\u{17f}\":[{\"name\":\"secret\"}]}}",
        r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"ok","Name":"secret"}]}}"#,
        r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"ok","name\u0000":"secret"}]}}"#,
        r#"{"jsonrpc":"2.0","id":1,"Result":{"tools":[{"name":"secret"}]},"result":{"tools":[]}}"#,
    ] {
        let error = trim(answer(ListKind::Tools, "application/json"), body.as_bytes(), &mut by_prefix).unwrap_err();
        assert!(error.contains("a client may read as another"), "{body}: {error}");
    }
    // Other keys are no one's business here.
    let fine =
        r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"ok","title":"T","names":["x"]}],"_meta":{}}}"#;
    assert!(trim(answer(ListKind::Tools, "application/json"), fine.as_bytes(), &mut by_prefix).is_ok());
}
