//! The decision record: one JSON object per decision, format version 1
//! (`docs/decision-log.md`). Names are lowerCamelCase as in a decision's JSON shape; the
//! identity is the protobuf JSON mapping of `cedargate.v1.AuthInfo`, so a reader turns it back
//! into an `AuthInfo` with `api::json::auth_info_from_json`.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::{Authentication, PreparedTarget};
use crate::credential::CredentialError;
use crate::model::{AuthInfo, Decision, Extra, Target, Wire};

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
    pub evaluated_at: i64,
    pub elapsed: Duration,
}

/// The record of `decision`.
pub(super) fn record(decision: &Decision, of: &Facts<'_>) -> Value {
    let mut record = Map::new();
    record.insert("event".into(), EVENT.into());
    record.insert("version".into(), VERSION.into());
    record.insert(
        "time".into(),
        humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string().into(),
    );
    record.insert("decisionId".into(), decision.decision_id.clone().into());
    if let Some((trace_id, span_id)) = crate::telemetry::trace::current_ids() {
        record.insert("traceId".into(), trace_id.into());
        record.insert("spanId".into(), span_id.into());
    }
    record.insert("wire".into(), of.wire.as_str().into());
    record.insert("outcome".into(), decision.outcome.api_name().into());
    record.insert("httpStatus".into(), decision.outcome.http_status().into());
    record.insert("target".into(), target(of.target, of.prepared));
    let state = match of.authentication {
        Authentication::Anonymous => "none",
        Authentication::Authenticated { .. } => "resolved",
        Authentication::Failed { error: CredentialError::Unavailable { .. }, .. } => "unavailable",
        Authentication::Failed { .. } => "refused",
    };
    let mut credential = Map::new();
    credential.insert("state".into(), state.into());
    if let Some(fingerprint) = of.authentication.fingerprint() {
        credential.insert("fingerprint".into(), fingerprint.into());
    }
    record.insert("credential".into(), credential.into());
    if let Authentication::Authenticated { auth, .. } = of.authentication {
        record.insert("authInfo".into(), auth_info(auth));
    }
    record.insert("facts".into(), Value::Object(of.facts.clone().into_iter().collect()));
    record.insert("policyIds".into(), decision.policy_ids.clone().into());
    record.insert("policyRevision".into(), of.revision.into());
    record.insert("reason".into(), decision.reason.clone().into());
    record.insert("errors".into(), decision.errors.clone().into());
    if let Some(shadow) = &decision.shadow {
        record.insert(
            "shadow".into(),
            json!({"outcome": shadow.outcome.api_name(), "policyIds": shadow.policy_ids, "reason": shadow.reason}),
        );
    }
    record.insert("evaluatedAt".into(), of.evaluated_at.into());
    record.insert("durationSeconds".into(), of.elapsed.as_secs_f64().into());
    Value::Object(record)
}

/// The target as the caller asked for it, so a replay prepares it again; a route by its
/// normalized path (never its query, which may carry a credential).
fn target(target: &Target, prepared: &PreparedTarget<'_>) -> Value {
    let call = |kind: &str, call: &crate::model::ToolCall| json!({"kind": kind, "name": call.name, "server": call.server, "arguments": call.arguments});
    match (target, prepared) {
        (Target::Tool(tool), _) => call("tool", tool),
        (Target::Mcp(kind, mcp), _) => call(crate::model::McpKind::from(*kind).as_str(), mcp),
        (Target::Route(request), PreparedTarget::Route(route)) => {
            let mut fields = json!({"kind": "route", "method": route.method, "path": route.path});
            if let (Some(template), Value::Object(fields)) = (&request.template, &mut fields) {
                fields.insert("template".into(), template.clone().into());
            }
            fields
        }
        (Target::Route(request), PreparedTarget::Mcp { .. }) => {
            json!({"kind": "route", "method": request.method, "path": request.path.split('?').next().unwrap_or("")})
        }
    }
}

/// The protobuf JSON mapping of `cedargate.v1.AuthInfo` (int64 as a string, zero omitted).
pub fn auth_info(auth: &AuthInfo) -> Value {
    let mut fields = Map::new();
    fields.insert("subject".into(), auth.subject.clone().into());
    fields.insert("clientId".into(), auth.client_id.clone().into());
    fields.insert("scopes".into(), auth.scopes.clone().into());
    if let Some(expires_at) = auth.expires_at.filter(|at| *at != 0) {
        fields.insert("expiresAt".into(), expires_at.to_string().into());
    }
    fields.insert("resource".into(), auth.resource.clone().into());
    fields.insert("roles".into(), auth.roles.clone().into());
    fields.insert("tenant".into(), auth.tenant.clone().into());
    fields.insert("issuer".into(), auth.issuer.clone().into());
    fields.insert("credentialKind".into(), auth.kind.as_str().into());
    fields.insert("extra".into(), Value::Object(auth.extra.clone().into_iter().collect()));
    Value::Object(fields)
}
