//! Reading a decision log: the record of format version 1 (`docs/decision-log.md`) as its own
//! serde types, line by line, each line bounded.
//!
//! The reader is lenient where the format lets a writer grow and strict where a wrong reading
//! would re-decide the wrong request: fields it does not know are ignored (new fields do not
//! bump the version), lines that are not decision records are skipped, but a line that says it
//! is a record (`"event":"cedargate.decision"`) must be a valid one of version 1, or the whole
//! read fails naming the line and the field.

use std::io::{BufRead, Read};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::super::AuthoringError;
use crate::model::{AuthInfo, Extra, McpRequest, Outcome, RouteRequest, Target, ToolCall};

/// The `event` of a decision record; lines without it are other log lines.
pub const DECISION_EVENT: &str = "cedargate.decision";
/// The record format this reader understands.
pub const FORMAT_VERSION: u64 = 1;
/// The longest line read (1 MiB, line ending excluded): a longer one is an error, and no more
/// than this is ever held in memory for one line.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// One line of a decision log.
#[derive(Debug, Clone)]
pub enum LogLine {
    /// A decision record.
    Record(Box<DecisionRecord>),
    /// Any other line (another log event, text, a blank line): skipped.
    Other,
}

/// What the caller's credential came to, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialState {
    /// No credential was sent.
    None,
    /// The credential resolved to the recorded `authInfo`.
    Resolved,
    /// The credential was refused (401); the policies were not consulted.
    Refused,
    /// A credential backend could not answer (503); the policies were not consulted.
    Unavailable,
}

impl CredentialState {
    /// The name in the record.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialState::None => "none",
            CredentialState::Resolved => "resolved",
            CredentialState::Refused => "refused",
            CredentialState::Unavailable => "unavailable",
        }
    }
}

/// The decision `@shadow` policies would have made, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedShadow {
    /// Its outcome.
    pub outcome: Outcome,
    /// The shadow policies that made the difference.
    pub policy_ids: Vec<String>,
    /// Its reason.
    pub reason: String,
}

/// What the policies were asked, when the record lets it be asked again.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordedInput {
    /// The request as the policies saw it.
    Request {
        /// What was asked for (a route-generated tool as the tool the caller sent).
        target: Target,
        /// The identity; `None` for a caller without a credential. Shared, as the engine
        /// takes it.
        auth_info: Option<Arc<AuthInfo>>,
        /// The request facts.
        facts: Extra,
        /// The unix second the policies saw as `context.now`.
        evaluated_at: i64,
    },
    /// The credential was refused or its backend was unavailable: no policy was consulted,
    /// so no policy set can decide it otherwise.
    NotConsulted(CredentialState),
    /// These masked paths are decision inputs: the request cannot be rebuilt.
    Masked(Vec<String>),
    /// The request was refused for its tenant (`tenantRefused`) before any policy, so no
    /// policy set can decide it otherwise.
    TenantRefused,
}

/// One decision record, read.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionRecord {
    /// The line of the log it was read from (1-based).
    pub line: usize,
    /// When it was decided, RFC 3339, as written.
    pub time: String,
    /// The decision id.
    pub decision_id: String,
    /// The W3C trace id, when the decision was part of a trace.
    pub trace_id: Option<String>,
    /// The span id of the check within that trace.
    pub span_id: Option<String>,
    /// The wire: `grpc`, `envoy_grpc`, `envoy_http`, `forward_auth`, `cli` (kept as written, so
    /// a wire of a newer version still reads).
    pub wire: String,
    /// The outcome the caller got.
    pub outcome: Outcome,
    /// The HTTP status the caller got.
    pub http_status: Option<u16>,
    /// The target as written (absent when masked), for reports.
    pub target: Option<Value>,
    /// What the credential came to (`None` when masked).
    pub credential_state: Option<CredentialState>,
    /// The credential's fingerprint, when one was sent.
    pub fingerprint: Option<String>,
    /// The determining policies.
    pub policy_ids: Vec<String>,
    /// The revision of the policy set that decided ("" when no policy was consulted).
    pub policy_revision: String,
    /// The tenant whose policies decided (`None`: the base set).
    pub tenant: Option<String>,
    /// The reason.
    pub reason: String,
    /// Policy evaluation errors.
    pub errors: Vec<String>,
    /// What the `@shadow` policies would have decided, when they disagreed.
    pub shadow: Option<RecordedShadow>,
    /// The unix second the policies saw as `context.now` (`None` when masked).
    pub evaluated_at: Option<i64>,
    /// How long the check took.
    pub duration_seconds: Option<f64>,
    /// The masked paths (their fields are not in the record).
    pub masked: Vec<String>,
    /// The request, rebuilt for the policies, or why it cannot be.
    pub input: RecordedInput,
}

/// The record as written. Unknown fields are ignored on purpose (no `deny_unknown_fields`):
/// a newer minor version may add some. The decision inputs are kept as JSON until the mask is
/// known, so a masked part does not fail the read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WrittenRecord {
    time: String,
    decision_id: String,
    #[serde(default)]
    trace_id: Option<String>,
    #[serde(default)]
    span_id: Option<String>,
    wire: String,
    outcome: WrittenOutcome,
    #[serde(default)]
    http_status: Option<u16>,
    #[serde(default)]
    target: Option<Value>,
    #[serde(default)]
    credential: Option<WrittenCredential>,
    #[serde(default)]
    auth_info: Option<Value>,
    #[serde(default)]
    facts: Option<Value>,
    policy_ids: Vec<String>,
    #[serde(default)]
    policy_revision: String,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    tenant_refused: bool,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    errors: Vec<String>,
    #[serde(default)]
    shadow: Option<WrittenShadow>,
    #[serde(default)]
    evaluated_at: Option<i64>,
    #[serde(default)]
    duration_seconds: Option<f64>,
    #[serde(default)]
    masked: Vec<String>,
}

#[derive(Deserialize)]
struct WrittenCredential {
    #[serde(default)]
    state: Option<CredentialState>,
    #[serde(default)]
    fingerprint: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WrittenShadow {
    outcome: WrittenOutcome,
    #[serde(default)]
    policy_ids: Vec<String>,
    #[serde(default)]
    reason: String,
}

/// The outcomes a decision can have, by their API names.
#[derive(Clone, Copy, Deserialize)]
enum WrittenOutcome {
    #[serde(rename = "OUTCOME_ALLOWED")]
    Allowed,
    #[serde(rename = "OUTCOME_UNAUTHENTICATED")]
    Unauthenticated,
    #[serde(rename = "OUTCOME_FORBIDDEN")]
    Forbidden,
    #[serde(rename = "OUTCOME_UNAVAILABLE")]
    Unavailable,
}

impl From<WrittenOutcome> for Outcome {
    fn from(outcome: WrittenOutcome) -> Self {
        match outcome {
            WrittenOutcome::Allowed => Outcome::Allowed,
            WrittenOutcome::Unauthenticated => Outcome::Unauthenticated,
            WrittenOutcome::Forbidden => Outcome::Forbidden,
            WrittenOutcome::Unavailable => Outcome::Unavailable,
        }
    }
}

/// A target as written: `kind` names it.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum WrittenTarget {
    Tool(WrittenCall),
    Prompt(WrittenCall),
    Resource(WrittenCall),
    Method(WrittenCall),
    Route(WrittenRoute),
}

#[derive(Deserialize)]
struct WrittenCall {
    name: String,
    #[serde(default)]
    server: String,
    #[serde(default)]
    arguments: Extra,
}

#[derive(Deserialize)]
struct WrittenRoute {
    method: String,
    path: String,
    #[serde(default)]
    template: Option<String>,
}

impl From<WrittenTarget> for Target {
    fn from(target: WrittenTarget) -> Self {
        let call =
            |call: WrittenCall| ToolCall { name: call.name, server: call.server, arguments: call.arguments };
        match target {
            WrittenTarget::Tool(tool) => Target::Tool(call(tool)),
            WrittenTarget::Prompt(prompt) => Target::Mcp(McpRequest::Prompt, call(prompt)),
            WrittenTarget::Resource(resource) => Target::Mcp(McpRequest::Resource, call(resource)),
            WrittenTarget::Method(method) => Target::Mcp(McpRequest::Method, call(method)),
            WrittenTarget::Route(route) => Target::Route(RouteRequest {
                method: route.method,
                path: route.path,
                // As in the API, an empty template is none.
                template: route.template.filter(|template| !template.is_empty()),
            }),
        }
    }
}

/// Whether a masked path removed something the policies saw: the target, the identity, the
/// facts, the credential's state or the clock. (`credential.fingerprint` is not one.)
pub fn is_decision_input(path: &str) -> bool {
    let head = path.split('.').next().unwrap_or(path);
    match head {
        "target" | "authInfo" | "facts" | "evaluatedAt" => true,
        "credential" => path == "credential" || path == "credential.state",
        _ => false,
    }
}

/// Reads a decision log line by line (never the whole log at once, never more than
/// [`MAX_LINE_BYTES`] of one line), yielding each line read as a record or another line. The
/// first error ends the iteration: an unreadable log, a line too long, or a line that claims
/// to be a record and is not a valid one.
#[derive(Debug)]
pub struct RecordReader<R> {
    reader: R,
    /// How the log is named in errors (`decisions.jsonl`, `<stdin>`).
    name: String,
    line: usize,
    buffer: Vec<u8>,
    done: bool,
}

impl<R: BufRead> RecordReader<R> {
    /// A reader of `reader`, named `name` in errors.
    pub fn new(reader: R, name: impl Into<String>) -> Self {
        Self { reader, name: name.into(), line: 0, buffer: Vec::new(), done: false }
    }

    fn error(&self, problem: impl Into<String>) -> AuthoringError {
        AuthoringError::Record { log: self.name.clone(), line: self.line, problem: problem.into() }
    }

    /// Reads the next line into the buffer, without its line ending; `false` at the end.
    fn read_line(&mut self) -> Result<bool, AuthoringError> {
        self.buffer.clear();
        // One byte more than the bound, so a line that is too long is seen as such without
        // reading the rest of it.
        let limit = u64::try_from(MAX_LINE_BYTES).unwrap_or(u64::MAX).saturating_add(1);
        let read = (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut self.buffer)
            .map_err(|error| AuthoringError::Log { log: self.name.clone(), error })?;
        if read == 0 {
            return Ok(false);
        }
        self.line += 1;
        if self.buffer.last() == Some(&b'\n') {
            self.buffer.pop();
            if self.buffer.last() == Some(&b'\r') {
                self.buffer.pop();
            }
        } else if self.buffer.len() > MAX_LINE_BYTES {
            return Err(self.error(format!("the line is longer than {MAX_LINE_BYTES} bytes")));
        }
        Ok(true)
    }

    fn next_line(&mut self) -> Result<Option<LogLine>, AuthoringError> {
        if !self.read_line()? {
            return Ok(None);
        }
        let bytes = self.buffer.as_slice();
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Some(LogLine::Other));
        }
        let value: Value = match serde_json::from_slice(bytes) {
            Ok(value) => value,
            Err(error) if claims_to_be_a_record(bytes) => {
                return Err(self.error(format!("a decision record that is not valid JSON: {error}")));
            }
            Err(_) => return Ok(Some(LogLine::Other)),
        };
        if value.get("event").and_then(Value::as_str) != Some(DECISION_EVENT) {
            return Ok(Some(LogLine::Other));
        }
        match record(value, self.line) {
            Ok(record) => Ok(Some(LogLine::Record(Box::new(record)))),
            Err(problem) => Err(self.error(problem)),
        }
    }
}

impl<R: BufRead> Iterator for RecordReader<R> {
    type Item = Result<LogLine, AuthoringError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = self.next_line().transpose();
        if !matches!(next, Some(Ok(_))) {
            self.done = true;
        }
        next
    }
}

/// Whether a line that is not JSON still says it is a decision record (`"event"`, a colon and
/// `"cedargate.decision"`, with any spaces between): a torn or corrupted record must not pass
/// as another log line.
fn claims_to_be_a_record(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let marker = format!("\"{DECISION_EVENT}\"");
    text.match_indices("\"event\"").any(|(index, key)| {
        let rest = text[index + key.len()..].trim_start();
        rest.strip_prefix(':').is_some_and(|rest| rest.trim_start().starts_with(&marker))
    })
}

/// `value` (an object whose `event` is a decision's) as a record, or what is wrong with it:
/// `` `field.path`: problem ``.
fn record(value: Value, line: usize) -> Result<DecisionRecord, String> {
    match value.get("version") {
        None => return Err(format!("`version`: missing (this cedargate reads version {FORMAT_VERSION})")),
        Some(version) if version.as_u64() == Some(FORMAT_VERSION) => {}
        Some(version) => {
            return Err(format!(
                "`version`: format version {version} is not supported (this cedargate reads version \
                 {FORMAT_VERSION})"
            ))
        }
    }
    let written: WrittenRecord = typed(value, "")?;
    let (credential_state, fingerprint) = match written.credential {
        Some(credential) => (credential.state, credential.fingerprint),
        None => (None, None),
    };
    let masked_inputs: Vec<String> =
        written.masked.iter().filter(|path| is_decision_input(path)).cloned().collect();
    let input = match credential_state {
        _ if written.tenant_refused => RecordedInput::TenantRefused,
        Some(state @ (CredentialState::Refused | CredentialState::Unavailable)) => {
            RecordedInput::NotConsulted(state)
        }
        _ if !masked_inputs.is_empty() => RecordedInput::Masked(masked_inputs),
        None => return Err("`credential.state`: missing".to_owned()),
        Some(state) => {
            let evaluated_at = written.evaluated_at.ok_or("`evaluatedAt`: missing")?;
            let target: WrittenTarget = typed(written.target.clone().ok_or("`target`: missing")?, "target")?;
            let facts: Extra = typed(written.facts.ok_or("`facts`: missing")?, "facts")?;
            let auth_info = match (state, written.auth_info) {
                (CredentialState::Resolved, Some(auth)) => Some(Arc::new(
                    crate::api::json::auth_info_from_record(&auth.to_string())
                        .map_err(|problem| format!("`authInfo`: {problem}"))?,
                )),
                (CredentialState::Resolved, None) => {
                    return Err("`authInfo`: missing, and `credential.state` is `resolved`".to_owned())
                }
                (_, Some(_)) => {
                    return Err(format!(
                        "`authInfo`: present, but `credential.state` is `{}`",
                        state.as_str()
                    ))
                }
                (_, None) => None,
            };
            RecordedInput::Request { target: target.into(), auth_info, facts, evaluated_at }
        }
    };
    Ok(DecisionRecord {
        line,
        time: written.time,
        decision_id: written.decision_id,
        trace_id: written.trace_id,
        span_id: written.span_id,
        wire: written.wire,
        outcome: written.outcome.into(),
        http_status: written.http_status,
        target: written.target,
        credential_state,
        fingerprint,
        policy_ids: written.policy_ids,
        policy_revision: written.policy_revision,
        tenant: written.tenant,
        reason: written.reason,
        errors: written.errors,
        shadow: written.shadow.map(|shadow| RecordedShadow {
            outcome: shadow.outcome.into(),
            policy_ids: shadow.policy_ids,
            reason: shadow.reason,
        }),
        evaluated_at: written.evaluated_at,
        duration_seconds: written.duration_seconds,
        masked: written.masked,
        input,
    })
}

/// `value` as a `T`, or the problem with the path of the field at fault, under `prefix`.
fn typed<T: serde::de::DeserializeOwned>(value: Value, prefix: &str) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let inner = error.path().to_string();
        let path = match (prefix, inner.as_str()) {
            ("", ".") => String::new(),
            ("", inner) => inner.to_owned(),
            (prefix, ".") => prefix.to_owned(),
            (prefix, inner) => format!("{prefix}.{inner}"),
        };
        let problem = error.into_inner();
        if path.is_empty() {
            problem.to_string()
        } else {
            format!("`{path}`: {problem}")
        }
    })
}
