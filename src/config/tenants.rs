//! `tenants:`: the declared tenants, each with its own JWT issuers, introspection endpoints and
//! protected resource, and where a request names its tenant (a header from a trusted proxy, an
//! Envoy context extension).
//!
//! The mapping holds two settings and then one entry per tenant:
//!
//! ```yaml
//! tenants:
//!   header: x-tenant            # optional
//!   context_extension: tenant   # the default
//!   acme:
//!     jwt: [...]
//!     introspection: [...]
//!     protected_resource: {...}
//!   globex: {}
//! ```
//!
//! so `header` and `context_extension` cannot be tenant names.

use std::collections::BTreeMap;

use serde::de::{MapAccess, Visitor};

#[allow(clippy::wildcard_imports)]
use super::*;

/// Every tenant and the request settings that name one. With no tenant declared, tenancy is
/// off: a credential's `tenant` is only an attribute for policies, as before.
#[derive(Debug, Clone)]
pub struct TenantsConfig {
    /// A request header naming the request's tenant, honoured only from a gateway: on the
    /// Envoy gRPC wire, and on the HTTP wires only when the TCP peer is in
    /// `gateway.trusted_proxies`. The proxy must overwrite it (docs/security.md). Default: none.
    pub header: Option<String>,
    /// The Envoy ext_authz `context_extensions` key naming the request's tenant. Default
    /// `tenant`.
    pub context_extension: String,
    /// The tenants by name (`^[a-z0-9][a-z0-9_-]{0,62}$`), in name order.
    pub tenants: BTreeMap<String, TenantConfig>,
}

/// One tenant's own settings; its policies are `<policies.dir>/tenants/<name>/*.cedar`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Issuers trusted for this tenant only: their tokens are of this tenant (a `tenant` claim
    /// naming another is refused), and refused for a request naming another tenant.
    #[serde(default)]
    pub jwt: Vec<JwtIssuerConfig>,
    /// Introspection endpoints of this tenant only; asked for a request naming the tenant, and
    /// otherwise only for tokens with one of their `prefixes`.
    #[serde(default)]
    pub introspection: Vec<IntrospectionConfig>,
    /// The tenant's protected resource (RFC 9728), named in the challenges of its requests.
    pub protected_resource: Option<ProtectedResourceConfig>,
}

/// The keys of `tenants:` that are settings, not tenants.
pub const RESERVED_TENANT_KEYS: [&str; 2] = ["header", "context_extension"];

fn default_context_extension() -> String {
    "tenant".to_owned()
}

impl Default for TenantsConfig {
    fn default() -> Self {
        Self { header: None, context_extension: default_context_extension(), tenants: BTreeMap::new() }
    }
}

impl TenantsConfig {
    /// Whether any tenant is declared (tenancy is on).
    pub fn enabled(&self) -> bool {
        !self.tenants.is_empty()
    }
}

impl<'de> Deserialize<'de> for TenantsConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TenantsVisitor;
        impl<'de> Visitor<'de> for TenantsVisitor {
            type Value = TenantsConfig;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a mapping of `header`, `context_extension` and tenant names")
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(TenantsConfig::default())
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut config = TenantsConfig::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "header" => config.header = Some(map.next_value()?),
                        "context_extension" => config.context_extension = map.next_value()?,
                        _ => {
                            // `acme:` with nothing under it is a tenant with no settings.
                            let settings: Option<TenantConfig> = map.next_value()?;
                            if config.tenants.insert(key.clone(), settings.unwrap_or_default()).is_some() {
                                return Err(A::Error::custom(format!("tenant `{key}` is declared twice")));
                            }
                        }
                    }
                }
                Ok(config)
            }
        }
        deserializer.deserialize_any(TenantsVisitor)
    }
}

impl Config {
    /// Cross-field checks of `tenants:` and of the tenants credentials name.
    pub(super) fn tenant_problems(&self, report: &mut impl FnMut(&str, String, String)) {
        let tenants = &self.tenants;
        for name in tenants.tenants.keys() {
            if !crate::model::is_tenant_name(name) {
                report(
                    &format!("{name}:"),
                    format!("tenants.{name}"),
                    "a tenant name must match ^[a-z0-9][a-z0-9_-]{0,62}$".into(),
                );
            }
        }
        if let Some(header) = &tenants.header {
            if !is_header_name(header) {
                report("header:", "tenants.header".into(), format!("`{header}` is not an HTTP header name"));
            }
            if !tenants.enabled() {
                report("header:", "tenants.header".into(), "declare at least one tenant".into());
            }
        }
        if tenants.context_extension.is_empty() {
            report("context_extension:", "tenants.context_extension".into(), "must not be empty".into());
        }
        if !tenants.enabled() {
            return;
        }
        // A credential's tenant decides which policies apply: it must be a declared one.
        let mut check = |tenant: &str, needle: &str, field: String| {
            if !tenant.is_empty() && !tenants.tenants.contains_key(tenant) {
                report(needle, field, format!("`{}` is not a declared tenant", crate::model::quote(tenant)));
            }
        };
        for (list, entries) in
            [("static_tokens", &self.credentials.static_tokens), ("api_keys", &self.credentials.api_keys)]
        {
            for (index, entry) in entries.iter().enumerate() {
                check(
                    &entry.tenant,
                    &format!("subject: {}", entry.subject),
                    format!("credentials.{list}[{index}].tenant"),
                );
            }
        }
        for (index, user) in self.sessions.users.iter().enumerate() {
            check(
                &user.tenant,
                &format!("username: {}", user.username),
                format!("sessions.users[{index}].tenant"),
            );
        }
        // Each resource is served at its own path-suffixed well-known URL.
        let mut resource_paths = std::collections::HashMap::new();
        if let Some(resource) = &self.protected_resource {
            resource_paths.insert(resource.resource_path(), "protected_resource".to_owned());
        }
        for (name, tenant) in &tenants.tenants {
            if let Some(resource) = &tenant.protected_resource {
                let field = format!("tenants.{name}.protected_resource.resource");
                if resource.resource_path().is_empty() {
                    report(
                        &resource.resource,
                        field.clone(),
                        "a tenant's resource needs a path: its metadata is served at \
                         /.well-known/oauth-protected-resource/<path>"
                            .into(),
                    );
                }
                if let Some(other) = resource_paths.insert(resource.resource_path(), field.clone()) {
                    report(
                        &resource.resource,
                        field,
                        format!("has the same path as {other}: each resource's metadata needs its own path"),
                    );
                }
            }
        }
    }
}
