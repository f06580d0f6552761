//! Conversions between protobuf `Struct`/`Value` and JSON, and the one JSON shape of a
//! decision: the protobuf JSON mapping of `CheckResponse`, in full for the CLI and in part for
//! the bodies of gateway denials (`gateway::denial_json`); the policy status in the same
//! mapping (`GET /policies/status`).

use std::sync::OnceLock;

use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions,
};
use prost_types::value::Kind;
use serde_json::{Number, Value};

use super::grpc::{decision_to_proto, policy_status_to_proto};
use super::proto;
use crate::model::{AuthInfo, CredentialKind, Decision, Extra};
use crate::policy::PolicyStatus;
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

/// A decision as JSON: the protobuf JSON mapping of its `CheckResponse` (lowerCamelCase
/// names, enum names such as `OUTCOME_FORBIDDEN`, 64-bit integers as strings), with every
/// field present, so the shape never depends on the outcome. It is what `grpcurl
/// -emit-defaults` prints for `Authorizer/Check`, serialized from the very descriptors the
/// reflection service serves.
pub fn decision_json(decision: Decision) -> Result<Value, DecisionJsonError> {
    message_json(&decision_to_proto(decision), CHECK_RESPONSE).map_err(DecisionJsonError)
}

/// The policy status as JSON (`GET /policies/status`): the protobuf JSON mapping of
/// `Admin/PolicyStatus`'s answer, every field present (`lastError` only when there is one),
/// times in RFC 3339.
pub fn policy_status_json(status: &PolicyStatus) -> Result<Value, DecisionJsonError> {
    message_json(&policy_status_to_proto(status), POLICY_STATUS_RESPONSE).map_err(DecisionJsonError)
}

/// `message` (the generated type of `name`) in the protobuf JSON mapping, with defaults.
fn message_json(message: &impl prost::Message, name: &str) -> Result<Value, String> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    let pool = POOL
        .get_or_init(|| DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET).map_err(|error| error.to_string()))
        .as_ref()
        .map_err(Clone::clone)?;
    let descriptor: MessageDescriptor =
        pool.get_message_by_name(name).ok_or_else(|| format!("{name} is not described"))?;
    let encoded = message.encode_to_vec();
    let message =
        DynamicMessage::decode(descriptor, encoded.as_slice()).map_err(|error| error.to_string())?;
    let options = SerializeOptions::new().skip_default_fields(false);
    message.serialize_with_options(serde_json::value::Serializer, &options).map_err(|error| error.to_string())
}

const CHECK_RESPONSE: &str = "cedargate.v1.CheckResponse";
const POLICY_STATUS_RESPONSE: &str = "cedargate.v1.PolicyStatusResponse";
const AUTH_INFO: &str = "cedargate.v1.AuthInfo";

fn message_descriptor(
    cell: &'static OnceLock<Result<MessageDescriptor, String>>,
    name: &str,
) -> Result<MessageDescriptor, String> {
    cell.get_or_init(|| {
        let pool = DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET).map_err(|error| error.to_string())?;
        pool.get_message_by_name(name).ok_or_else(|| format!("{name} is not described"))
    })
    .clone()
}

/// An identity as JSON in the shape a decision shows it (the protobuf JSON mapping of
/// `AuthInfo`): what [`auth_info_from_record`] reads back.
///
/// Fails only if the embedded descriptors do not describe `AuthInfo`.
pub fn auth_info_json(auth: &crate::model::AuthInfo) -> Result<String, String> {
    message_json(&super::grpc::auth_info_to_proto(auth), AUTH_INFO).map(|json| json.to_string())
}

/// An identity from JSON in the shape a decision shows it (`authInfo` of `cedargate check`:
/// the protobuf JSON mapping of `AuthInfo`, lowerCamelCase or proto field names), for
/// `cedargate policy explain --auth-info`.
///
/// Fails, naming the field, on an unknown field, a value of the wrong type or an unknown
/// `credentialKind`; an empty `subject` is refused too.
pub fn auth_info_from_json(text: &str) -> Result<AuthInfo, String> {
    auth_info_from_json_with(text, true)
}

/// An identity from a decision record's `authInfo` (`docs/decision-log.md`): the same shape as
/// [`auth_info_from_json`] reads, but a field this version does not know is ignored, so a
/// record written by a newer cedargate still reads.
///
/// Fails, naming the field, on a value of the wrong type, an unknown `credentialKind` or an
/// empty `subject`.
pub fn auth_info_from_record(text: &str) -> Result<AuthInfo, String> {
    auth_info_from_json_with(text, false)
}

fn auth_info_from_json_with(text: &str, deny_unknown_fields: bool) -> Result<AuthInfo, String> {
    static DESCRIPTOR: OnceLock<Result<MessageDescriptor, String>> = OnceLock::new();
    let descriptor = message_descriptor(&DESCRIPTOR, AUTH_INFO)?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let mut track = serde_path_to_error::Track::new();
    let message = DynamicMessage::deserialize_with_options(
        descriptor,
        serde_path_to_error::Deserializer::new(&mut deserializer, &mut track),
        &DeserializeOptions::new().deny_unknown_fields(deny_unknown_fields),
    )
    .map_err(|error| match track.path().to_string() {
        path if path == "." => error.to_string(),
        path => format!("`{path}`: {error}"),
    })?;
    deserializer.end().map_err(|error| error.to_string())?;
    let wire: proto::AuthInfo = message.transcode_to().map_err(|error| error.to_string())?;
    if wire.subject.is_empty() {
        return Err("`subject` is required".to_owned());
    }
    let kind = match wire.credential_kind.as_str() {
        "" | "static" => CredentialKind::Static,
        "api_key" => CredentialKind::ApiKey,
        "session" => CredentialKind::Session,
        "jwt" => CredentialKind::Jwt,
        "introspection" => CredentialKind::Introspection,
        other => {
            return Err(format!(
                "`credentialKind` `{other}` is not one of static, api_key, session, jwt, introspection \
                 (a caller without a credential is no --auth-info at all)"
            ))
        }
    };
    let mut auth = AuthInfo::new(kind, wire.subject, wire.roles);
    auth.client_id = wire.client_id;
    auth.scopes = wire.scopes;
    auth.expires_at = (wire.expires_at != 0).then_some(wire.expires_at);
    auth.resource = wire.resource;
    auth.tenant = wire.tenant;
    auth.issuer = wire.issuer;
    auth.extra = struct_to_extra(wire.extra.as_ref()).map_err(|error| format!("`extra`: {error}"))?;
    Ok(auth)
}

/// A message could not be put into JSON (a descriptor that does not match the code).
#[derive(Debug, thiserror::Error)]
#[error("cannot write JSON: {0}")]
pub struct DecisionJsonError(String);

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::model::{AuthInfo, CredentialKind, Outcome};

    fn decision(outcome: Outcome, scopes: &[&str], credential: bool) -> Decision {
        let mut auth = AuthInfo::new(CredentialKind::Static, "alice", vec!["user".into()]);
        auth.expires_at = Some(1_767_225_600);
        Decision {
            outcome,
            auth_info: credential.then(|| Arc::new(auth)),
            policy_ids: vec!["p1".into()],
            reason: "because".into(),
            www_authenticate: (outcome == Outcome::Unauthenticated).then(|| "Bearer realm=\"x\"".into()),
            decision_id: "d-1".into(),
            errors: vec![],
            credential_fingerprint: credential.then(|| "0123456789abcdef".into()),
            required_scopes: scopes.iter().map(|scope| (*scope).to_owned()).collect(),
            shadow: None,
        }
    }

    #[test]
    fn an_auth_info_reads_back_from_the_json_a_decision_shows() {
        let mut auth = AuthInfo::new(CredentialKind::Jwt, "alice", vec!["user".into()]);
        auth.scopes = vec!["files:read".into()];
        auth.expires_at = Some(1_767_225_600);
        auth.tenant = "acme".into();
        auth.extra = Extra::from([("team".to_owned(), json!("blue"))]);
        let mut shown = decision(Outcome::Allowed, &[], true);
        shown.auth_info = Some(Arc::new(auth.clone()));
        let json = decision_json(shown).unwrap();
        let read = auth_info_from_json(&json["authInfo"].to_string()).unwrap();
        assert_eq!(read, auth);

        let short = auth_info_from_json(r#"{"subject": "bob", "roles": ["admin"]}"#).unwrap();
        assert_eq!(
            (short.subject.as_str(), short.kind, short.roles.as_slice()),
            ("bob", CredentialKind::Static, &["admin".to_owned()][..])
        );
        for (bad, expected) in [
            (r#"{"subject": "bob", "role": ["admin"]}"#, "role"),
            (r#"{"roles": ["admin"]}"#, "subject"),
            (r#"{"subject": "bob", "credentialKind": "anonymous"}"#, "anonymous"),
            (r#"{"subject": "bob", "scopes": "a b"}"#, "scopes"),
            (r#"{"subject": "bob"} trailing"#, "trailing"),
        ] {
            let error = auth_info_from_json(bad).unwrap_err();
            assert!(error.contains(expected) || expected == "trailing", "{bad}: {error}");
        }
    }

    #[test]
    fn a_records_identity_is_the_auth_info_of_the_decision_json() {
        let mut auth = AuthInfo::new(CredentialKind::Session, "alice", vec!["user".into()]);
        auth.client_id = "cli".into();
        auth.scopes = vec!["mcp".into()];
        auth.expires_at = Some(1_767_225_600);
        auth.issuer = "https://issuer.example".into();
        auth.extra = Extra::from([("team".to_owned(), json!({"name": "blue", "lead": true}))]);
        let mut shown = decision(Outcome::Allowed, &[], true);
        shown.auth_info = Some(Arc::new(auth.clone()));
        let json = decision_json(shown).unwrap();
        let recorded = crate::engine::record::auth_info(&auth);
        // The same names and values as the decision's JSON, and it reads back the same.
        assert_eq!(recorded, json["authInfo"]);
        assert_eq!(auth_info_from_json(&recorded.to_string()).unwrap(), auth);
        // A number in `extra` is a protobuf double in the decision's JSON (3.0); the record
        // keeps the integer, and both read back as it.
        auth.extra = Extra::from([("size".to_owned(), json!(3))]);
        let recorded = crate::engine::record::auth_info(&auth);
        assert_eq!(recorded["extra"]["size"], json!(3));
        assert_eq!(auth_info_from_json(&recorded.to_string()).unwrap(), auth);
        // Without an expiry the record leaves `expiresAt` out (the mapping's default).
        auth.expires_at = None;
        let recorded = crate::engine::record::auth_info(&auth);
        assert!(recorded.get("expiresAt").is_none());
        assert_eq!(auth_info_from_json(&recorded.to_string()).unwrap(), auth);
    }

    #[test]
    fn a_record_auth_info_ignores_fields_of_newer_versions_but_not_bad_values() {
        let text = r#"{"subject": "bob", "roles": ["admin"], "expiresAt": "1767225600", "audience2": "x"}"#;
        assert!(auth_info_from_json(text).unwrap_err().contains("audience2"), "the CLI stays strict");
        let read = auth_info_from_record(text).unwrap();
        assert_eq!((read.subject.as_str(), read.expires_at), ("bob", Some(1_767_225_600)));
        for (bad, expected) in [
            (r#"{"subject": "bob", "roles": "admin"}"#, "roles"),
            (r#"{"subject": ""}"#, "subject"),
            (r#"{"subject": "bob", "credentialKind": "telepathy"}"#, "telepathy"),
        ] {
            let error = auth_info_from_record(bad).unwrap_err();
            assert!(error.contains(expected), "{bad}: {error}");
        }
    }

    fn every_decision() -> Vec<Decision> {
        vec![
            decision(Outcome::Allowed, &[], true),
            decision(Outcome::Allowed, &[], false),
            decision(Outcome::Unauthenticated, &[], false),
            decision(Outcome::Unauthenticated, &[], true),
            decision(Outcome::Forbidden, &[], true),
            decision(Outcome::Forbidden, &["files:write"], true),
            decision(Outcome::Unavailable, &[], true),
        ]
    }

    #[test]
    fn a_decision_is_its_check_response_in_the_protobuf_json_mapping() {
        let json = decision_json(decision(Outcome::Forbidden, &["files:write"], true)).unwrap();
        assert_eq!(json["outcome"], "OUTCOME_FORBIDDEN");
        assert_eq!(json["httpStatus"], 403);
        assert_eq!(json["allowed"], false, "defaults are written out");
        assert_eq!(json["wwwAuthenticate"], "", "defaults are written out");
        assert_eq!(json["policyIds"], json!(["p1"]));
        assert_eq!(json["decisionId"], "d-1");
        assert_eq!(json["error"], "insufficient_scope");
        assert_eq!(json["authInfo"]["credentialKind"], "static");
        assert_eq!(json["authInfo"]["expiresAt"], "1767225600", "int64 is a string");
        // Every field of CheckResponse, by its JSON name, and nothing else.
        let pool = DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET).unwrap();
        let names: Vec<String> = pool
            .get_message_by_name(CHECK_RESPONSE)
            .unwrap()
            .fields()
            .map(|f| f.json_name().to_owned())
            .collect();
        let keys: Vec<String> = json.as_object().unwrap().keys().cloned().collect();
        let set: Vec<String> = names.into_iter().filter(|name| name != "shadow").collect();
        assert_eq!(keys, set, "every field but the unset shadow message");
        let mut shadowed = decision(Outcome::Allowed, &[], true);
        shadowed.shadow = Some(crate::model::ShadowDecision {
            outcome: Outcome::Forbidden,
            policy_ids: vec!["trial".into()],
            reason: "soon".into(),
        });
        assert_eq!(
            decision_json(shadowed).unwrap()["shadow"],
            json!({ "outcome": "OUTCOME_FORBIDDEN", "policyIds": ["trial"], "reason": "soon" })
        );
        // Unset messages stay absent: an anonymous caller has no authInfo.
        let anonymous = decision_json(decision(Outcome::Allowed, &[], false)).unwrap();
        assert!(anonymous.get("authInfo").is_none(), "{anonymous}");
    }

    #[test]
    fn the_policy_status_is_its_admin_answer_in_the_protobuf_json_mapping() {
        use std::time::{Duration, SystemTime};
        let status = PolicyStatus {
            revision: "abcdef012345".into(),
            loaded_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600),
            source: "/etc/cedargate/policies".into(),
            files: vec!["schema.cedarschema".into(), "rules.cedar".into()],
            policy_count: 3,
            watching: true,
            reloads_succeeded: 2,
            reloads_failed: 1,
            last_error: None,
            shadow_policy_count: 1,
            shadow_disagreements: 7,
            tenants: vec![crate::policy::TenantPolicyStatus {
                name: "acme".into(),
                revision: "0123456789ab".into(),
                loaded: true,
                loaded_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600),
                source: "/etc/cedargate/policies/tenants/acme".into(),
                files: vec!["tenants/acme/rules.cedar".into()],
                policy_count: 4,
                reloads_succeeded: 1,
                reloads_failed: 0,
                last_error: None,
            }],
        };
        let json = policy_status_json(&status).unwrap();
        assert_eq!(
            (json["tenants"][0]["name"].clone(), json["tenants"][0]["policyCount"].clone()),
            (json!("acme"), json!(4)),
            "{json}"
        );
        assert_eq!(json["loadedAt"], "2026-01-01T00:00:00Z", "RFC 3339");
        assert_eq!(json["policyCount"], 3);
        assert_eq!(json["reloadsSucceeded"], 2);
        assert_eq!(
            (json["shadowPolicyCount"].clone(), json["shadowDisagreements"].clone()),
            (json!(1), json!("7"))
        );
        assert_eq!(json["files"], json!(["schema.cedarschema", "rules.cedar"]));
        assert!(json.get("lastError").is_none(), "no error, no lastError: {json}");
        let pool = DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET).unwrap();
        let names: Vec<String> = pool
            .get_message_by_name(POLICY_STATUS_RESPONSE)
            .unwrap()
            .fields()
            .map(|f| f.json_name().to_owned())
            .filter(|name| name != "lastError")
            .collect();
        let keys: Vec<String> = json.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, names);

        let failed = PolicyStatus {
            last_error: Some(crate::policy::ReloadFailure {
                at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_767_225_600_250),
                diagnostics: vec!["rules.cedar:1:20: unexpected token".into()],
            }),
            ..status
        };
        let json = policy_status_json(&failed).unwrap();
        assert_eq!(
            json["lastError"],
            json!({ "at": "2026-01-01T00:00:00.250Z", "diagnostics": ["rules.cedar:1:20: unexpected token"] })
        );
    }

    #[test]
    fn a_denial_body_is_part_of_the_decision_json() {
        for decision in every_decision().into_iter().filter(|decision| !decision.allowed()) {
            let body = crate::gateway::denial_json(&decision);
            let full = decision_json(decision).unwrap();
            for (key, value) in body.as_object().unwrap() {
                if key == "reason" && full["outcome"] == "OUTCOME_UNAVAILABLE" {
                    // An outage's detail is for the operator.
                    assert_eq!(value, crate::gateway::UNAVAILABLE_REASON);
                    continue;
                }
                assert_eq!(Some(value), full.get(key), "{key} in {body} and {full}");
            }
        }
    }

    #[test]
    fn outcome_names_are_the_protos() {
        for decision in every_decision() {
            let json = decision_json(decision.clone()).unwrap();
            assert_eq!(json["outcome"], decision.outcome.api_name());
        }
        assert_eq!(crate::gateway::INVALID_REQUEST_OUTCOME, proto::Outcome::InvalidRequest.as_str_name());
        let invalid = crate::gateway::invalid_request_json("bad");
        assert_eq!(invalid["httpStatus"], 400);
    }

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
