//! The decision record: one JSON object per decision, format version 1
//! (`docs/decision-log.md`). Names are lowerCamelCase as in a decision's JSON shape; the
//! identity is the protobuf JSON mapping of `cedargate.v1.AuthInfo`, so a reader turns it back
//! into an `AuthInfo` with `api::json::auth_info_from_json`.

use std::time::Duration;

use serde::Serialize;

use super::{Authentication, PreparedTarget};
use crate::credential::CredentialError;
use crate::model::{AuthInfo, Decision, Extra, McpRequest, Target, Wire};

/// The format version; a reader refuses others.
pub const VERSION: u64 = 1;
/// The `event` every record carries, to tell it from other lines of a log.
pub const EVENT: &str = "cedargate.decision";

/// What a record is built from.
pub(super) struct Facts<'a> {
    pub wire: Wire,
    pub authentication: &'a Authentication,
    pub target: &'a Target,
    pub prepared: &'a PreparedTarget<'a>,
    pub facts: &'a Extra,
    pub revision: &'a str,
    /// The tenant whose policies decided; `None` for the base set.
    pub tenant: Option<&'a str>,
    /// The request was refused for its tenant before any policy.
    pub tenant_refused: bool,
    pub evaluated_at: i64,
    pub elapsed: Duration,
}

/// The record of `decision`, serialized straight from the decision (no intermediate tree).
pub(super) fn record<'a>(decision: &'a Decision, of: &Facts<'a>) -> Record<'a> {
    let ids = crate::telemetry::trace::current_ids();
    let state = match of.authentication {
        Authentication::Anonymous => "none",
        Authentication::Authenticated { .. } => "resolved",
        Authentication::Failed { error: CredentialError::Unavailable { .. }, .. } => "unavailable",
        Authentication::Failed { .. } => "refused",
    };
    Record {
        event: EVENT,
        version: VERSION,
        time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        decision_id: &decision.decision_id,
        trace_id: ids.as_ref().map(|(trace_id, _)| trace_id.clone()),
        span_id: ids.map(|(_, span_id)| span_id),
        wire: of.wire.as_str(),
        outcome: decision.outcome.api_name(),
        http_status: decision.outcome.http_status(),
        target: RecordedTarget::of(of.target, of.prepared),
        credential: Credential { state, fingerprint: of.authentication.fingerprint() },
        auth_info: match of.authentication {
            Authentication::Authenticated { auth, .. } => Some(RecordedAuth(auth)),
            _ => None,
        },
        facts: of.facts,
        policy_ids: &decision.policy_ids,
        policy_revision: of.revision,
        tenant: of.tenant,
        tenant_refused: of.tenant_refused,
        reason: &decision.reason,
        errors: &decision.errors,
        shadow: decision.shadow.as_ref().map(|shadow| Shadow {
            outcome: shadow.outcome.api_name(),
            policy_ids: &shadow.policy_ids,
            reason: &shadow.reason,
        }),
        evaluated_at: of.evaluated_at,
        duration_seconds: of.elapsed.as_secs_f64(),
    }
}

/// One decision record, borrowing from the decision.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Record<'a> {
    event: &'static str,
    version: u64,
    time: String,
    decision_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    span_id: Option<String>,
    wire: &'static str,
    outcome: &'static str,
    http_status: u16,
    target: RecordedTarget<'a>,
    credential: Credential<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_info: Option<RecordedAuth<'a>>,
    facts: &'a Extra,
    policy_ids: &'a [String],
    policy_revision: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    tenant_refused: bool,
    reason: &'a str,
    errors: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    shadow: Option<Shadow<'a>>,
    evaluated_at: i64,
    duration_seconds: f64,
}

#[derive(Serialize)]
struct Credential<'a> {
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    fingerprint: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Shadow<'a> {
    outcome: &'static str,
    policy_ids: &'a [String],
    reason: &'a str,
}

/// The target as the caller asked for it, so a replay prepares it again; a route by its
/// normalized path (never its query, which may carry a credential).
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum RecordedTarget<'a> {
    Tool(Call<'a>),
    Prompt(Call<'a>),
    Resource(Call<'a>),
    Method(Call<'a>),
    Route {
        method: &'a str,
        path: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        template: Option<&'a str>,
    },
}

#[derive(Serialize)]
struct Call<'a> {
    name: &'a str,
    server: &'a str,
    arguments: &'a Extra,
}

impl<'a> RecordedTarget<'a> {
    fn of(target: &'a Target, prepared: &'a PreparedTarget<'a>) -> Self {
        let call = |call: &'a crate::model::ToolCall| Call {
            name: &call.name,
            server: &call.server,
            arguments: &call.arguments,
        };
        match (target, prepared) {
            (Target::Tool(tool), _) => RecordedTarget::Tool(call(tool)),
            (Target::Mcp(McpRequest::Prompt, mcp), _) => RecordedTarget::Prompt(call(mcp)),
            (Target::Mcp(McpRequest::Resource, mcp), _) => RecordedTarget::Resource(call(mcp)),
            (Target::Mcp(McpRequest::Method, mcp), _) => RecordedTarget::Method(call(mcp)),
            (Target::Route(request), PreparedTarget::Route(route)) => RecordedTarget::Route {
                method: &route.method,
                path: &route.path,
                template: request.template.as_deref(),
            },
            (Target::Route(request), PreparedTarget::Mcp { .. }) => RecordedTarget::Route {
                method: &request.method,
                path: request.path.split('?').next().unwrap_or(""),
                template: None,
            },
        }
    }
}

/// An identity in the protobuf JSON mapping of `cedargate.v1.AuthInfo` (int64 as a string,
/// zero omitted).
struct RecordedAuth<'a>(&'a AuthInfo);

impl Serialize for RecordedAuth<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let auth = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("subject", &auth.subject)?;
        map.serialize_entry("clientId", &auth.client_id)?;
        map.serialize_entry("scopes", &auth.scopes)?;
        if let Some(expires_at) = auth.expires_at.filter(|at| *at != 0) {
            map.serialize_entry("expiresAt", &expires_at.to_string())?;
        }
        map.serialize_entry("resource", &auth.resource)?;
        map.serialize_entry("roles", &auth.roles)?;
        map.serialize_entry("tenant", &auth.tenant)?;
        map.serialize_entry("issuer", &auth.issuer)?;
        map.serialize_entry("credentialKind", auth.kind.as_str())?;
        map.serialize_entry("extra", &auth.extra)?;
        map.end()
    }
}

/// The protobuf JSON mapping of `cedargate.v1.AuthInfo`, as a record holds it (for the test
/// that holds it to the decision JSON's).
#[cfg(test)]
pub fn auth_info(auth: &AuthInfo) -> serde_json::Value {
    serde_json::to_value(RecordedAuth(auth)).unwrap_or_default()
}
