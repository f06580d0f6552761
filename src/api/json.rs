//! Conversions between protobuf `Struct`/`Value` and JSON, and the JSON shape of a decision
//! (used by the HTTP API and the CLI).

use prost_types::value::Kind;
use serde_json::{json, Map, Number, Value};

use crate::model::{AuthInfo, Decision, Extra};

/// A protobuf `Struct` as JSON fields.
pub fn struct_to_extra(fields: Option<&prost_types::Struct>) -> Extra {
    fields
        .map(|fields| fields.fields.iter().map(|(key, value)| (key.clone(), proto_to_json(value))).collect())
        .unwrap_or_default()
}

/// A protobuf `Value` as JSON. Whole numbers become integers, so a tool argument `7` fills a
/// path as `7`, not `7.0`.
pub fn proto_to_json(value: &prost_types::Value) -> Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(flag)) => Value::Bool(*flag),
        Some(Kind::StringValue(text)) => Value::String(text.clone()),
        Some(Kind::NumberValue(number)) => {
            // INVARIANT: the cast is exact: the value is whole and within ±2^53.
            if number.fract() == 0.0 && number.abs() < 9_007_199_254_740_992.0 {
                Value::Number(Number::from(*number as i64))
            } else {
                Number::from_f64(*number).map_or(Value::Null, Value::Number)
            }
        }
        Some(Kind::ListValue(list)) => Value::Array(list.values.iter().map(proto_to_json).collect()),
        Some(Kind::StructValue(fields)) => Value::Object(
            fields.fields.iter().map(|(key, value)| (key.clone(), proto_to_json(value))).collect(),
        ),
    }
}

/// JSON as a protobuf `Value`.
pub fn json_to_proto(value: &Value) -> prost_types::Value {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(flag) => Kind::BoolValue(*flag),
        Value::Number(number) => Kind::NumberValue(number.as_f64().unwrap_or(0.0)),
        Value::String(text) => Kind::StringValue(text.clone()),
        Value::Array(items) => {
            Kind::ListValue(prost_types::ListValue { values: items.iter().map(json_to_proto).collect() })
        }
        Value::Object(fields) => Kind::StructValue(prost_types::Struct {
            fields: fields.iter().map(|(key, value)| (key.clone(), json_to_proto(value))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// JSON fields as a protobuf `Struct`.
pub fn extra_to_struct(extra: &Extra) -> prost_types::Struct {
    prost_types::Struct {
        fields: extra.iter().map(|(key, value)| (key.clone(), json_to_proto(value))).collect(),
    }
}

/// An identity as JSON (the MCP SDK's field names).
pub fn auth_info_json(auth: &AuthInfo) -> Value {
    json!({
        "subject": auth.subject,
        "clientId": auth.client_id,
        "scopes": auth.scopes,
        "expiresAt": auth.expires_at,
        "resource": auth.resource,
        "roles": auth.roles,
        "tenant": auth.tenant,
        "issuer": auth.issuer,
        "credentialKind": auth.kind.as_str(),
        "extra": Value::Object(auth.extra.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Map<_, _>>()),
    })
}

/// A decision as JSON.
pub fn decision_json(decision: &Decision) -> Value {
    json!({
        "allowed": decision.allowed(),
        "outcome": decision.outcome.as_str(),
        "httpStatus": decision.outcome.http_status(),
        "authInfo": decision.auth_info.as_deref().map(auth_info_json),
        "policyIds": decision.policy_ids,
        "reason": decision.reason,
        "wwwAuthenticate": decision.www_authenticate,
        "decisionId": decision.decision_id,
        "errors": decision.errors,
        "credentialFingerprint": decision.credential_fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_become_integers_and_the_rest_survive() {
        let cases = [
            (json!(7), json!(7)),
            (json!(-3), json!(-3)),
            (json!(2.5), json!(2.5)),
            (json!("x"), json!("x")),
            (json!(null), json!(null)),
            (json!({"a": [true, 1, "b"]}), json!({"a": [true, 1, "b"]})),
        ];
        for (input, expected) in cases {
            assert_eq!(proto_to_json(&json_to_proto(&input)), expected, "{input}");
        }
    }

    #[test]
    fn non_finite_numbers_become_null() {
        let value = prost_types::Value { kind: Some(Kind::NumberValue(f64::NAN)) };
        assert_eq!(proto_to_json(&value), Value::Null);
    }
}
