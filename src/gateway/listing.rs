//! Trimming an MCP server's list answers (`tools/list`, `prompts/list`, `resources/list`,
//! `resources/templates/list`) to the entries the caller could use, in both shapes of
//! Streamable HTTP: one JSON body, or an event stream whose events carry JSON-RPC messages.
//!
//! INVARIANT: an entry reaches the caller only when it was decided and allowed. An answer
//! that cannot be read as the list it should be is withheld whole (the caller gets a JSON-RPC
//! error), never passed on; an entry without its name is dropped; of entries sharing a name,
//! only the first is kept (a call by that name cannot tell them apart).

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::model::{Extra, McpRequest as Kind, Target, ToolCall};

/// Which list an answer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    /// `tools/list`: entries by `name`, decided as `tools/call`.
    Tools,
    /// `prompts/list`: by `name`, as `prompts/get`.
    Prompts,
    /// `resources/list`: by `uri`, as `resources/read`.
    Resources,
    /// `resources/templates/list`: by `uriTemplate`, as `resources/read` of the template.
    ResourceTemplates,
}

impl ListKind {
    /// The list a JSON-RPC method asks for, if it asks for one.
    pub fn of_method(method: &str) -> Option<Self> {
        match method {
            "tools/list" => Some(Self::Tools),
            "prompts/list" => Some(Self::Prompts),
            "resources/list" => Some(Self::Resources),
            "resources/templates/list" => Some(Self::ResourceTemplates),
            _ => None,
        }
    }

    /// The JSON-RPC method.
    pub fn method(self) -> &'static str {
        match self {
            Self::Tools => "tools/list",
            Self::Prompts => "prompts/list",
            Self::Resources => "resources/list",
            Self::ResourceTemplates => "resources/templates/list",
        }
    }

    /// The method a call of one entry is: the `mcp_method` fact it is decided with.
    pub fn call_method(self) -> &'static str {
        match self {
            Self::Tools => "tools/call",
            Self::Prompts => "prompts/get",
            Self::Resources | Self::ResourceTemplates => "resources/read",
        }
    }

    /// The field of `result` holding the entries.
    fn field(self) -> &'static str {
        match self {
            Self::Tools => "tools",
            Self::Prompts => "prompts",
            Self::Resources => "resources",
            Self::ResourceTemplates => "resourceTemplates",
        }
    }

    /// The field of an entry that names it.
    fn key(self) -> &'static str {
        match self {
            Self::Tools | Self::Prompts => "name",
            Self::Resources => "uri",
            Self::ResourceTemplates => "uriTemplate",
        }
    }

    /// What a call of the entry named `name` on `server` asks for.
    pub fn target(self, name: &str, server: &str) -> Target {
        let call = ToolCall { name: name.to_owned(), server: server.to_owned(), arguments: Extra::new() };
        match self {
            Self::Tools => Target::Tool(call),
            Self::Prompts => Target::Mcp(Kind::Prompt, call),
            Self::Resources | Self::ResourceTemplates => Target::Mcp(Kind::Resource, call),
        }
    }
}

/// What to do with a list answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trimmed {
    /// Every entry may be shown (or the answer is a JSON-RPC error): pass it on as it is.
    Unchanged,
    /// Pass this body on instead.
    Replaced(Vec<u8>),
}

/// How many entries a trim kept and removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Entries passed on.
    pub kept: usize,
    /// Entries the caller may not use, without a name, or repeating a name.
    pub removed: usize,
}

/// Why an answer is withheld.
pub type Unreadable = String;

/// The decision for many entries at once: one boolean per target, in order.
pub type Decide<'d> = dyn FnMut(&[Target]) -> Vec<bool> + 'd;

/// What is known about the answer being trimmed.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    /// Which list was asked for.
    pub kind: ListKind,
    /// The server the entries belong to.
    pub server: &'a str,
    /// The response's `content-type`.
    pub content_type: &'a str,
    /// Whether the HTTP status was 2xx.
    pub success: bool,
    /// The largest body trimmed.
    pub max_bytes: usize,
}

/// Trims `body`, the answer to a list request, to what `decide` allows.
///
/// Fails (the answer must be withheld) when a successful answer is too large, is neither JSON
/// nor an event stream, does not parse, or is not the list asked for. An unsuccessful answer
/// that does not parse is passed on: it is an error page, not a list.
pub fn trim(
    answer: Answer<'_>,
    body: &[u8],
    decide: &mut Decide<'_>,
) -> Result<(Trimmed, Counts), Unreadable> {
    if body.len() > answer.max_bytes {
        return Err(format!(
            "the answer exceeds {} bytes (gateway.mcp_exchange.max_list_bytes)",
            answer.max_bytes
        ));
    }
    let media = answer.content_type.split(';').next().unwrap_or_default().trim();
    let trimmed = if media.eq_ignore_ascii_case("text/event-stream") {
        trim_events(answer, body, decide)
    } else if media.eq_ignore_ascii_case("application/json") {
        trim_message(answer, body, decide)
    } else {
        Err(format!(
            "the answer's content-type `{}` is neither JSON nor an event stream",
            crate::model::quote(media)
        ))
    };
    match trimmed {
        Err(_) if !answer.success => Ok((Trimmed::Unchanged, Counts::default())),
        trimmed => trimmed,
    }
}

/// One JSON-RPC message.
fn trim_message(
    answer: Answer<'_>,
    body: &[u8],
    decide: &mut Decide<'_>,
) -> Result<(Trimmed, Counts), Unreadable> {
    let mut message: Value =
        serde_json::from_slice(body).map_err(|error| format!("the answer is not JSON: {error}"))?;
    let counts = trim_value(answer, &mut message, decide)?;
    if counts.removed == 0 {
        return Ok((Trimmed::Unchanged, counts));
    }
    let body = serde_json::to_vec(&message).map_err(|error| format!("the trimmed answer: {error}"))?;
    Ok((Trimmed::Replaced(body), counts))
}

/// Trims the list in the JSON-RPC response `message`, in place.
fn trim_value(
    answer: Answer<'_>,
    message: &mut Value,
    decide: &mut Decide<'_>,
) -> Result<Counts, Unreadable> {
    let Value::Object(message) = message else {
        return Err("the answer is not a JSON-RPC object".to_owned());
    };
    refuse_impostors(message, &["jsonrpc", "id", "result", "error"])?;
    if !message.contains_key("result") {
        // A JSON-RPC error carries no entries.
        return if message.contains_key("error") {
            Ok(Counts::default())
        } else {
            Err("the answer has neither `result` nor `error`".to_owned())
        };
    }
    match message.get_mut("result") {
        Some(Value::Object(result)) => trim_result(answer, result, decide),
        _ => Err("the answer's `result` is not an object".to_owned()),
    }
}

fn trim_result(
    answer: Answer<'_>,
    result: &mut Map<String, Value>,
    decide: &mut Decide<'_>,
) -> Result<Counts, Unreadable> {
    let (field, key) = (answer.kind.field(), answer.kind.key());
    refuse_impostors(result, &[field, "nextCursor"])?;
    let Some(Value::Array(entries)) = result.get_mut(field) else {
        return Err(format!("the {} answer has no `result.{field}` list", answer.kind.method()));
    };
    for entry in entries.iter() {
        if let Value::Object(entry) = entry {
            refuse_impostors(entry, &[key])?;
        }
    }
    let allowed = allowed(
        answer.kind,
        answer.server,
        entries.iter().map(|entry| entry.get(key).and_then(Value::as_str)),
        decide,
    );
    let keep: HashSet<usize> =
        allowed.iter().enumerate().filter(|(_, allowed)| **allowed).map(|(index, _)| index).collect();
    let counts = Counts { kept: keep.len(), removed: entries.len() - keep.len() };
    if counts.removed > 0 {
        let mut index = 0;
        entries.retain(|_| {
            let kept = keep.contains(&index);
            index += 1;
            kept
        });
    }
    Ok(counts)
}

/// Fails on a key of `object` a loose decoder would read as one of `known` (`Tools`,
/// `toolſ`, `Name`): the client might take the list, or an entry's name, from it.
fn refuse_impostors(object: &Map<String, Value>, known: &[&str]) -> Result<(), Unreadable> {
    match super::mcp::impostor(object, known) {
        Some(key) => {
            Err(format!("the answer has a key `{}` a client may read as another", crate::model::quote(key)))
        }
        None => Ok(()),
    }
}

/// Which entries the caller could use, given each entry's name (`None` when it has none): a
/// nameless entry never, a name seen before never, the others as `decide` says, all of them
/// in one call.
pub fn allowed<'n>(
    kind: ListKind,
    server: &str,
    names: impl IntoIterator<Item = Option<&'n str>>,
    decide: &mut Decide<'_>,
) -> Vec<bool> {
    let names: Vec<Option<&str>> = names.into_iter().collect();
    let mut seen = HashSet::with_capacity(names.len());
    let mut targets = Vec::with_capacity(names.len());
    let mut decided = Vec::with_capacity(names.len());
    for (index, name) in names.iter().enumerate() {
        if let Some(name) = name.filter(|name| !name.is_empty() && seen.insert(*name)) {
            targets.push(kind.target(name, server));
            decided.push(index);
        }
    }
    let verdicts = decide(&targets);
    let mut allowed = vec![false; names.len()];
    for (index, verdict) in decided.into_iter().zip(verdicts) {
        allowed[index] = verdict;
    }
    allowed
}

/// An event stream: each event whose data is a JSON-RPC response is trimmed; requests,
/// notifications and events without data pass byte for byte.
fn trim_events(
    answer: Answer<'_>,
    body: &[u8],
    decide: &mut Decide<'_>,
) -> Result<(Trimmed, Counts), Unreadable> {
    let text = std::str::from_utf8(body).map_err(|_| "the event stream is not UTF-8".to_owned())?;
    let mut out = String::with_capacity(text.len());
    let mut counts = Counts::default();
    let mut responses = 0;
    for event in events(text) {
        let data = event.data();
        if data.trim().is_empty() {
            out.push_str(event.raw);
            continue;
        }
        let mut message: Value =
            serde_json::from_str(&data).map_err(|error| format!("an event's data is not JSON: {error}"))?;
        // A request or a notification (a string method, no result or error) passes; a message
        // that is both, or whose method is not a string, is not one a client would read as
        // either for sure, and is withheld.
        let is_response = message.get("result").is_some() || message.get("error").is_some();
        match message.get("method") {
            Some(Value::String(_)) if !is_response => {
                out.push_str(event.raw);
                continue;
            }
            Some(_) => return Err("an event's message has a `method` and is not a request".to_owned()),
            None => {}
        }
        responses += 1;
        let trimmed = trim_value(answer, &mut message, decide)?;
        counts.kept += trimmed.kept;
        counts.removed += trimmed.removed;
        if trimmed.removed == 0 {
            out.push_str(event.raw);
            continue;
        }
        for line in event.lines().filter(|line| field_name(line) != "data") {
            out.push_str(line);
            out.push('\n');
        }
        out.push_str("data: ");
        out.push_str(
            &serde_json::to_string(&message).map_err(|error| format!("the trimmed answer: {error}"))?,
        );
        out.push_str("\n\n");
    }
    if responses == 0 {
        return Err("the event stream carries no JSON-RPC response".to_owned());
    }
    if counts.removed == 0 {
        return Ok((Trimmed::Unchanged, counts));
    }
    Ok((Trimmed::Replaced(out.into_bytes()), counts))
}

/// One event of a stream: its text as sent, blank line included.
#[derive(Debug)]
struct Event<'a> {
    raw: &'a str,
}

impl<'a> Event<'a> {
    /// Its lines, without their ends and without the blank line that ends the event.
    fn lines(&self) -> impl Iterator<Item = &'a str> {
        self.raw
            .split_inclusive(['\n', '\r'])
            .scan(false, |after_cr, piece| {
                // `\r\n` is one line end: the `\n` after a `\r` is no empty line.
                let skip = *after_cr && piece == "\n";
                *after_cr = piece.ends_with('\r');
                Some((skip, piece))
            })
            .filter(|(skip, _)| !skip)
            .map(|(_, piece)| piece.trim_end_matches(['\n', '\r']))
            .filter(|line| !line.is_empty())
    }

    /// Its data, as the event stream format joins it: the `data` fields' values with `\n`.
    fn data(&self) -> String {
        let mut data = Vec::new();
        for line in self.lines() {
            if field_name(line) == "data" {
                let value = line.split_once(':').map_or("", |(_, value)| value);
                data.push(value.strip_prefix(' ').unwrap_or(value));
            }
        }
        data.join("\n")
    }
}

/// The field a line of an event sets (`data`, `event`, `id`, `retry`; "" for a comment).
fn field_name(line: &str) -> &str {
    if line.starts_with(':') {
        return "";
    }
    line.split_once(':').map_or(line, |(name, _)| name)
}

/// The events of `text`, each ending at a blank line (`\n`, `\r\n` or `\r` line ends), the
/// last at the end of the stream.
fn events(text: &str) -> Vec<Event<'_>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let bytes = text.as_bytes();
    let mut events = Vec::new();
    let (mut start, mut index, mut line_empty) = (0, 0, true);
    while index < bytes.len() {
        let end = match bytes[index] {
            b'\r' if bytes.get(index + 1) == Some(&b'\n') => Some(index + 2),
            b'\r' | b'\n' => Some(index + 1),
            _ => None,
        };
        match end {
            Some(end) => {
                if line_empty {
                    events.push(Event { raw: &text[start..end] });
                    start = end;
                }
                line_empty = true;
                index = end;
            }
            None => {
                line_empty = false;
                index += 1;
            }
        }
    }
    if start < bytes.len() {
        events.push(Event { raw: &text[start..] });
    }
    events
}

#[cfg(test)]
mod tests;
