//! Which tenant decides a request: the tenant the request names (a trusted proxy's header, an
//! Envoy context extension, the gRPC `tenant` field) and the tenant of its credential (an
//! issuer's tenant, a token claim, a key's or user's config), checked against each other and
//! against the declared tenants. A request is decided by one tenant's set or by the base set,
//! never by another tenant's, and a tenant that cannot be established is a refusal, never a
//! decision by the base set alone.

use std::collections::HashMap;
use std::sync::Arc;

use crate::credential::CredentialChain;
use crate::model::{is_tenant_name, AuthInfo, CredentialKind, Outcome};
use crate::policy::PolicyEngine;

/// The tenant a request names, as its wire read it; checked by the engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RequestTenant<'a> {
    /// The request names no tenant.
    #[default]
    Unnamed,
    /// The request names this tenant (not yet checked to be a safe, declared name).
    Named(&'a str),
    /// The request names a tenant in a way that cannot be believed (two sources that
    /// disagree, a header from a peer that is not a trusted proxy): refused for this reason.
    Refused(&'static str),
}

/// One declared tenant's part of the pipeline.
#[derive(Debug)]
pub struct Tenant {
    /// Its policies: the base set with its own directory's.
    pub policies: Arc<PolicyEngine>,
    /// The credential backends of a request naming it: the global ones and its own.
    pub credentials: CredentialChain,
    /// Its RFC 9728 metadata URL, for the challenges of its requests (else the global one).
    pub resource_metadata: Option<String>,
}

/// The declared tenants; empty when tenancy is off.
#[derive(Debug, Default)]
pub struct Tenants {
    by_name: HashMap<String, Tenant>,
}

/// What decides a request: a tenant's set, or the base set.
#[derive(Debug, Clone, Copy)]
pub(super) struct Scope<'e> {
    /// The deciding tenant; `None` for the base set.
    pub tenant: Option<&'e str>,
    pub policies: &'e Arc<PolicyEngine>,
    /// The metadata URL of this scope's challenges, when it has its own.
    pub resource_metadata: Option<&'e str>,
}

/// A request refused for its tenant, before any policy.
#[derive(Debug, Clone)]
pub(super) struct TenantRefusal<'e> {
    /// 401 for an OAuth token of another tenant (a token for the wrong resource, as a wrong
    /// audience is), 403 otherwise.
    pub outcome: Outcome,
    pub reason: String,
    /// The metadata URL the challenge of a 401 names: the requested tenant's, when it has one.
    pub resource_metadata: Option<&'e str>,
}

/// The tenant a request named, checked: `Ok(None)` when it named none.
pub(super) type Requested<'e> = Result<Option<(&'e str, &'e Tenant)>, String>;

/// A tenant name fit to show: a declared name is a config identifier; anything else might be
/// a caller's text.
fn shown(name: &str) -> String {
    if is_tenant_name(name) {
        format!("`{name}`")
    } else {
        "(not a safe tenant name)".to_owned()
    }
}

impl Tenants {
    /// `by_name`: every declared tenant.
    pub fn new(by_name: HashMap<String, Tenant>) -> Self {
        Self { by_name }
    }

    /// Whether tenancy is on (some tenant is declared).
    pub fn enabled(&self) -> bool {
        !self.by_name.is_empty()
    }

    /// The tenant `name`, if declared.
    pub fn get(&self, name: &str) -> Option<&Tenant> {
        self.by_name.get(name)
    }

    /// Checks the tenant a request names.
    ///
    /// Fails (a 403's reason) for a name that is not a safe identifier or not declared, and
    /// for a tenant its wire refused.
    pub(super) fn requested<'e>(&'e self, tenant: RequestTenant<'_>) -> Requested<'e> {
        match tenant {
            RequestTenant::Unnamed => Ok(None),
            RequestTenant::Refused(reason) => Err(reason.to_owned()),
            RequestTenant::Named(name) if !is_tenant_name(name) => {
                Err("the request's tenant is not a safe tenant name (^[a-z0-9][a-z0-9_-]{0,62}$): refused"
                    .to_owned())
            }
            RequestTenant::Named(name) => match self.by_name.get_key_value(name) {
                Some((name, tenant)) => Ok(Some((name.as_str(), tenant))),
                None => Err(format!("tenant `{name}` is not declared: refused")),
            },
        }
    }

    /// What decides a request that named `requested` and whose credential resolved to `auth`
    /// (`None`: anonymous or failed): the requested tenant, else the credential's, else the
    /// base set (`base`).
    ///
    /// Fails when the request's tenant was refused, when the credential's tenant is not
    /// declared, or when the two are different tenants.
    pub(super) fn scope<'e>(
        &'e self,
        requested: &Requested<'e>,
        auth: Option<&AuthInfo>,
        base: Scope<'e>,
    ) -> Result<Scope<'e>, TenantRefusal<'e>> {
        let requested = match requested {
            Ok(requested) => *requested,
            Err(reason) => {
                return Err(TenantRefusal {
                    outcome: Outcome::Forbidden,
                    reason: reason.clone(),
                    resource_metadata: base.resource_metadata,
                })
            }
        };
        let metadata_of = |tenant: &'e Tenant| tenant.resource_metadata.as_deref().or(base.resource_metadata);
        let scope_of = |name: &'e str, tenant: &'e Tenant| Scope {
            tenant: Some(name),
            policies: &tenant.policies,
            resource_metadata: metadata_of(tenant),
        };
        // With tenancy off a credential's tenant is only an attribute for policies.
        let credential_tenant = auth.filter(|auth| self.enabled() && !auth.tenant.is_empty());
        if let Some(auth) = credential_tenant {
            let Some((name, tenant)) = self.by_name.get_key_value(auth.tenant.as_str()) else {
                return Err(TenantRefusal {
                    outcome: Outcome::Forbidden,
                    reason: format!(
                        "the credential's tenant {} is not declared: refused",
                        shown(&auth.tenant)
                    ),
                    resource_metadata: requested
                        .map_or(base.resource_metadata, |(_, tenant)| metadata_of(tenant)),
                });
            };
            if let Some((requested_name, requested_tenant)) = requested {
                // INVARIANT: a request is never decided by another tenant's set than its
                // credential's.
                if requested_name != name.as_str() {
                    let outcome = match auth.kind {
                        CredentialKind::Jwt | CredentialKind::Introspection => Outcome::Unauthenticated,
                        _ => Outcome::Forbidden,
                    };
                    return Err(TenantRefusal {
                        outcome,
                        reason: format!("credential of tenant `{name}` used for tenant `{requested_name}`"),
                        resource_metadata: metadata_of(requested_tenant),
                    });
                }
            }
            return Ok(scope_of(name, tenant));
        }
        Ok(match requested {
            Some((name, tenant)) => scope_of(name, tenant),
            None => base,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicySources;

    fn tenant(metadata: Option<&str>) -> Tenant {
        Tenant {
            policies: Arc::new(PolicyEngine::new(&PolicySources::embedded_demo()).unwrap()),
            credentials: CredentialChain::default(),
            resource_metadata: metadata.map(str::to_owned),
        }
    }

    fn auth(kind: CredentialKind, tenant: &str) -> AuthInfo {
        let mut auth = AuthInfo::new(kind, "s", Vec::<String>::new());
        auth.tenant = tenant.to_owned();
        auth
    }

    /// (request's tenant, credential) → the deciding tenant, or the refusal's status and reason.
    #[test]
    fn the_request_and_the_credential_agree_on_one_declared_tenant_or_it_is_refused() {
        let tenants = Tenants::new(HashMap::from([
            ("acme".to_owned(), tenant(Some("https://acme/meta"))),
            ("globex".to_owned(), tenant(None)),
        ]));
        let base_policies = Arc::new(PolicyEngine::new(&PolicySources::embedded_demo()).unwrap());
        let base =
            Scope { tenant: None, policies: &base_policies, resource_metadata: Some("https://base/meta") };
        let jwt_of = |name| Some(auth(CredentialKind::Jwt, name));
        let key_of = |name| Some(auth(CredentialKind::ApiKey, name));
        type Expected = Result<(Option<&'static str>, Option<&'static str>), (u16, &'static str)>;
        let table: Vec<(RequestTenant<'_>, Option<AuthInfo>, Expected)> = vec![
            (RequestTenant::Unnamed, None, Ok((None, Some("https://base/meta")))),
            (RequestTenant::Unnamed, key_of(""), Ok((None, Some("https://base/meta")))),
            (RequestTenant::Unnamed, jwt_of("acme"), Ok((Some("acme"), Some("https://acme/meta")))),
            (RequestTenant::Named("acme"), None, Ok((Some("acme"), Some("https://acme/meta")))),
            (RequestTenant::Named("acme"), key_of(""), Ok((Some("acme"), Some("https://acme/meta")))),
            (RequestTenant::Named("acme"), key_of("acme"), Ok((Some("acme"), Some("https://acme/meta")))),
            (RequestTenant::Named("globex"), None, Ok((Some("globex"), Some("https://base/meta")))),
            (
                RequestTenant::Named("globex"),
                key_of("acme"),
                Err((403, "credential of tenant `acme` used for tenant `globex`")),
            ),
            (
                RequestTenant::Named("acme"),
                jwt_of("globex"),
                Err((401, "credential of tenant `globex` used for tenant `acme`")),
            ),
            (RequestTenant::Named("initech"), None, Err((403, "tenant `initech` is not declared"))),
            (RequestTenant::Named("../acme"), None, Err((403, "not a safe tenant name"))),
            (RequestTenant::Named("ACME"), key_of("acme"), Err((403, "not a safe tenant name"))),
            (RequestTenant::Refused("two tenants"), None, Err((403, "two tenants"))),
            (RequestTenant::Unnamed, jwt_of("initech"), Err((403, "tenant `initech` is not declared"))),
            (
                RequestTenant::Unnamed,
                jwt_of("Evil Corp"),
                Err((403, "(not a safe tenant name) is not declared")),
            ),
        ];
        for (requested, auth, expected) in table {
            let checked = tenants.requested(requested);
            let got = tenants
                .scope(&checked, auth.as_ref(), base)
                .map(|scope| (scope.tenant, scope.resource_metadata))
                .map_err(|refusal| (refusal.outcome.http_status(), refusal.reason));
            match (&got, &expected) {
                (Ok(got), Ok(expected)) => assert_eq!(got, expected, "{requested:?} {auth:?}"),
                (Err((status, reason)), Err((expected_status, text))) => {
                    assert_eq!(status, expected_status, "{requested:?} {auth:?}: {reason}");
                    assert!(reason.contains(text), "{requested:?}: {reason}");
                }
                _ => panic!("{requested:?} {auth:?}: got {got:?}, expected {expected:?}"),
            }
            // The deciding set is the deciding tenant's.
            if let (Ok(scope), Ok((Some(name), _))) = (tenants.scope(&checked, auth.as_ref(), base), expected)
            {
                assert!(Arc::ptr_eq(scope.policies, &tenants.get(name).unwrap().policies));
            }
        }
        // With tenancy off a credential's tenant is only an attribute.
        let off = Tenants::default();
        let scope = off.scope(&Ok(None), key_of("anything").as_ref(), base).unwrap();
        assert!(scope.tenant.is_none() && Arc::ptr_eq(scope.policies, &base_policies));
        assert!(off.scope(&off.requested(RequestTenant::Named("acme")), None, base).is_err());
    }
}
