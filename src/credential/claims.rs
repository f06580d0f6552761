//! Mapping token claims (a verified JWT's, or an introspection answer's) onto one AuthInfo.

use serde_json::{Map, Value};

use super::CredentialError;
use crate::model::{AuthInfo, CredentialKind, Extra};

/// Which claims carry what, per backend. Paths are dotted (`realm_access.roles`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMapping {
    /// The subject. Default `sub`; a token without it falls back to its `client_id` (a
    /// client-credentials token).
    pub subject: String,
    /// The OAuth client. Default `client_id`, falling back to `azp`.
    pub client_id: String,
    /// The roles: an array of strings or a space-separated string. Default `roles`.
    pub roles: String,
    /// The tenant, if any.
    pub tenant: Option<String>,
    /// The tenant the issuer or endpoint is configured under (`tenants.<name>`): every token
    /// it vouches for is of this tenant, and one whose `tenant` claim names another is refused.
    pub issuer_tenant: Option<String>,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        Self {
            subject: "sub".into(),
            client_id: "client_id".into(),
            roles: "roles".into(),
            tenant: None,
            issuer_tenant: None,
        }
    }
}

/// Claims that become AuthInfo fields rather than `extra`.
const MAPPED: [&str; 7] = ["sub", "client_id", "scope", "scp", "exp", "iss", "aud"];

fn path<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let first = claims.get(parts.next()?)?;
    parts.try_fold(first, |value, part| value.get(part))
}

fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(text)) => text.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

fn text(value: Option<&Value>) -> Option<String> {
    value.and_then(Value::as_str).map(str::to_owned)
}

impl ClaimMapping {
    /// Builds the identity for `claims`.
    ///
    /// Fails when the claims name no subject and no client.
    pub fn auth_info(
        &self,
        kind: CredentialKind,
        claims: &Map<String, Value>,
    ) -> Result<AuthInfo, CredentialError> {
        let client_id =
            text(path(claims, &self.client_id)).or_else(|| text(claims.get("azp"))).unwrap_or_default();
        let subject = text(path(claims, &self.subject))
            .or_else(|| (!client_id.is_empty()).then(|| client_id.clone()))
            .ok_or_else(|| CredentialError::Invalid(format!("token has no `{}` claim", self.subject)))?;
        let mut auth = AuthInfo::new(kind, subject, strings(path(claims, &self.roles)));
        auth.client_id = client_id;
        auth.scopes = match claims.get("scope") {
            Some(scope) => strings(Some(scope)),
            None => strings(claims.get("scp")),
        };
        // A NumericDate may have a fraction (RFC 7519 §2), which jsonwebtoken accepts; rounded
        // down, so it never lives longer here than it says.
        auth.expires_at = claims.get("exp").and_then(|exp| {
            exp.as_i64().or_else(|| {
                exp.as_f64().filter(|seconds| seconds.is_finite()).map(|seconds| seconds.floor() as i64)
            })
        });
        auth.resource = match claims.get("aud") {
            Some(Value::Array(audiences)) => {
                audiences.first().and_then(Value::as_str).unwrap_or_default().to_owned()
            }
            other => text(other).unwrap_or_default(),
        };
        auth.issuer = text(claims.get("iss")).unwrap_or_default();
        let claimed =
            self.tenant.as_deref().and_then(|tenant| text(path(claims, tenant))).unwrap_or_default();
        auth.tenant = match &self.issuer_tenant {
            // INVARIANT: a tenant's issuer only vouches for its own tenant.
            Some(owner) if !claimed.is_empty() && claimed != *owner => {
                return Err(CredentialError::Invalid(format!(
                    "token's tenant claim names another tenant than its issuer's (`{owner}`)"
                )));
            }
            Some(owner) => owner.clone(),
            None => claimed,
        };
        auth.extra = claims
            .iter()
            .filter(|(name, _)| !MAPPED.contains(&name.as_str()))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect::<Extra>();
        Ok(auth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn standard_claims_map_onto_auth_info() {
        let mapping = ClaimMapping {
            roles: "realm_access.roles".into(),
            tenant: Some("org.id".into()),
            ..Default::default()
        };
        let auth = mapping
            .auth_info(
                CredentialKind::Jwt,
                &claims(json!({
                    "sub": "alice", "client_id": "app", "scope": "read write", "exp": 2000000000,
                    "iss": "https://issuer", "aud": ["https://api", "other"],
                    "realm_access": {"roles": ["user", "auditor"]}, "org": {"id": "acme"}, "email": "a@x"
                })),
            )
            .unwrap();
        assert_eq!(auth.subject, "alice");
        assert_eq!(auth.client_id, "app");
        assert_eq!(auth.scopes, ["read", "write"]);
        assert_eq!(auth.roles, ["user", "auditor"]);
        assert_eq!(auth.tenant, "acme");
        assert_eq!(auth.expires_at, Some(2000000000));
        assert_eq!(auth.resource, "https://api");
        assert_eq!(auth.issuer, "https://issuer");
        assert_eq!(auth.extra.get("email"), Some(&json!("a@x")));
        assert!(!auth.extra.contains_key("sub"));
    }

    #[test]
    fn scp_and_fallbacks_are_understood() {
        let mapping = ClaimMapping::default();
        let array = mapping
            .auth_info(CredentialKind::Jwt, &claims(json!({"azp": "svc", "scp": ["a", "b"]})))
            .unwrap();
        assert_eq!((array.subject.as_str(), array.client_id.as_str()), ("svc", "svc"));
        assert_eq!(array.scopes, ["a", "b"]);
        let string =
            mapping.auth_info(CredentialKind::Jwt, &claims(json!({"sub": "x", "scp": "c d"}))).unwrap();
        assert_eq!(string.scopes, ["c", "d"]);
        assert!(mapping.auth_info(CredentialKind::Jwt, &claims(json!({"scope": "x"}))).is_err());
    }

    #[test]
    fn a_fractional_exp_still_expires() {
        let mapping = ClaimMapping::default();
        let table = [
            (json!(2000000000), Some(2000000000)),
            (json!(2000000000.75), Some(2000000000)),
            (json!("soon"), None),
        ];
        for (exp, expected) in table {
            let auth =
                mapping.auth_info(CredentialKind::Jwt, &claims(json!({"sub": "x", "exp": exp}))).unwrap();
            assert_eq!(auth.expires_at, expected, "{exp}");
        }
    }

    #[test]
    fn an_issuers_tenant_is_every_tokens_tenant_and_a_claim_cannot_move_it() {
        let mapping = ClaimMapping {
            tenant: Some("org".into()),
            issuer_tenant: Some("acme".into()),
            ..Default::default()
        };
        let table = [
            (json!({"sub": "x"}), Ok("acme")),
            (json!({"sub": "x", "org": "acme"}), Ok("acme")),
            (json!({"sub": "x", "org": "globex"}), Err("another tenant")),
        ];
        for (claims_of, expected) in table {
            let got = mapping.auth_info(CredentialKind::Jwt, &claims(claims_of.clone()));
            match (got, expected) {
                (Ok(auth), Ok(tenant)) => assert_eq!(auth.tenant, tenant, "{claims_of}"),
                (Err(error), Err(text)) => assert!(error.to_string().contains(text), "{error}"),
                (got, expected) => panic!("{claims_of}: got {got:?}, expected {expected:?}"),
            }
        }
    }
}
