//! Conversions between protobuf `Struct`/`Value` and JSON, and the JSON shape of a decision
//! (used by the HTTP API and the CLI).

use prost_types::value::Kind;
use serde_json::{json, Map, Number, Value};

use crate::model::{AuthInfo, Decision, Extra};
use crate::route::TargetError;

/// Deepest nesting of lists and structs accepted in arguments and context.
pub const MAX_STRUCT_DEPTH: usize = 32;
/// Most values (at every level together) accepted in one `Struct`.
pub const MAX_STRUCT_VALUES: usize = 10_000;

/// A protobuf `Struct` as JSON fields.
///
/// Fails when it nests deeper than [`MAX_STRUCT_DEPTH`] or holds more than
/// [`MAX_STRUCT_VALUES`] values.
pub fn struct_to_extra(fields: Option<&prost_types::Struct>) -> Result<Extra, TargetError> {
    let Some(fields) = fields else { return Ok(Extra::new()) };
    let mut budget = MAX_STRUCT_VALUES;
    fields
        .fields
        .iter()
        .map(|(key, value)| Ok((key.clone(), proto_to_json(value, 1, &mut budget)?)))
        .collect()
}

/// A protobuf `Value` as JSON, within the depth and the value budget. Whole numbers become
/// integers, so a tool argument `7` fills a path as `7`, not `7.0`.
fn proto_to_json(value: &prost_types::Value, depth: usize, budget: &mut usize) -> Result<Value, TargetError> {
    *budget = budget.checked_sub(1).ok_or(TargetError::Structure)?;
    if depth > MAX_STRUCT_DEPTH {
        return Err(TargetError::Structure);
    }
    Ok(match &value.kind {
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
        Some(Kind::ListValue(list)) => Value::Array(
            list.values
                .iter()
                .map(|item| proto_to_json(item, depth + 1, budget))
                .collect::<Result<_, _>>()?,
        ),
        Some(Kind::StructValue(fields)) => Value::Object(
            fields
                .fields
                .iter()
                .map(|(key, value)| Ok((key.clone(), proto_to_json(value, depth + 1, budget)?)))
                .collect::<Result<_, TargetError>>()?,
        ),
    })
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
    use proptest::prelude::*;

    use super::*;

    fn round_trip(value: &Value) -> Result<Value, TargetError> {
        let extra = Extra::from([("v".to_owned(), value.clone())]);
        struct_to_extra(Some(&extra_to_struct(&extra))).map(|extra| extra["v"].clone())
    }

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
            assert_eq!(round_trip(&input), Ok(expected), "{input}");
        }
    }

    #[test]
    fn non_finite_numbers_become_null() {
        let value = prost_types::Value { kind: Some(Kind::NumberValue(f64::NAN)) };
        let fields = prost_types::Struct { fields: [("v".to_owned(), value)].into() };
        assert_eq!(struct_to_extra(Some(&fields)).unwrap()["v"], Value::Null);
    }

    #[test]
    fn nesting_and_size_are_capped() {
        let mut deep = json!(1);
        for _ in 0..MAX_STRUCT_DEPTH {
            deep = json!([deep]);
        }
        assert_eq!(round_trip(&deep), Err(TargetError::Structure));
        let mut shallow = json!(1);
        for _ in 0..MAX_STRUCT_DEPTH - 1 {
            shallow = json!([shallow]);
        }
        assert!(round_trip(&shallow).is_ok());
        let wide = Value::Array(vec![json!(0); MAX_STRUCT_VALUES]);
        assert_eq!(round_trip(&wide), Err(TargetError::Structure));
    }

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(|number| json!(number)),
            ".{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(40, 400, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".{0,4}", inner, 0..6)
                    .prop_map(|fields| Value::Object(fields.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Any structure converts back to itself or is refused as too deep or too large.
        #[test]
        fn any_structure_round_trips_or_is_refused(value in any_json()) {
            match round_trip(&value) {
                Ok(back) => prop_assert_eq!(back, value),
                Err(error) => prop_assert_eq!(error, TargetError::Structure),
            }
        }
    }
}
