//! Deciding a request a gateway forwards (Envoy ext_authz, nginx `auth_request`, Traefik
//! `forwardAuth`): find the credential, read an MCP body, gather request facts, decide, and
//! say what the gateway must do: which identity headers to set upstream and which request
//! headers to remove, or which status, challenge and body to answer the client with.
//!
//! Wire-neutral: `api::ext_authz` and `api::http` translate to and from these types.

pub mod exchange;
pub mod forwarded;
pub mod listing;
pub mod mcp;
pub mod mcp_sessions;

use std::sync::Arc;

use serde_json::{json, Value};

use crate::config::{GatewayConfig, McpShape, OverrideHeaders, TenantsConfig};
use crate::engine::{Engine, RequestTenant};
use crate::model::{AuthInfo, Decision, Extra, Refusal, RouteRequest, Target, ToolCall};
use crate::telemetry::metrics::metrics;
pub use forwarded::TrustedProxies;
use mcp::{McpError, McpHeaders, McpRequest};

/// Request headers (with `_` read as `-`) and the query parameter by which upstreams let a
/// client replace the method or the URL after the decision.
const OVERRIDE_HEADERS: [&str; 5] =
    ["x-http-method-override", "x-http-method", "x-method-override", "x-original-url", "x-rewrite-url"];
const OVERRIDE_QUERY: &str = "_method";

pub use crate::model::Wire;

/// What the proxy of a wire can be asked to change differs: only Envoy's gRPC ext_authz
/// removes query parameters.
fn removes_query_parameters(wire: Wire) -> bool {
    wire == Wire::EnvoyGrpc
}

/// A request as the gateway saw it.
#[derive(Debug, Clone, Default)]
pub struct GatewayRequest {
    /// HTTP method.
    pub method: String,
    /// Path with its query string, as received.
    pub path: String,
    /// `Host` / `:authority`.
    pub host: String,
    /// Request headers; names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body, when the gateway forwards it.
    pub body: Vec<u8>,
    /// The client's address, "" if unknown.
    pub source_ip: String,
    /// The client's mTLS principal (URI SAN or subject), "" if none.
    pub source_principal: String,
    /// Per-route settings from the gateway (Envoy's `context_extensions`): `tool`, `server`,
    /// `route` (a template) have a meaning here; all of them become request facts.
    pub extensions: Vec<(String, String)>,
    /// The wire it came over.
    pub wire: Wire,
    /// Whether the TCP peer of an HTTP wire is in `gateway.trusted_proxies`: only then is the
    /// tenant header believed there.
    pub from_trusted_proxy: bool,
}

impl GatewayRequest {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// Every value of the header named `name` (lower case), in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers.iter().filter(move |(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    fn extension(&self, name: &str) -> Option<&str> {
        self.extensions.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// The path without its query string.
    fn path_only(&self) -> &str {
        self.path.split_once('?').map_or(self.path.as_str(), |(path, _)| path)
    }

    fn query(&self) -> &str {
        self.path.split_once('?').map_or("", |(_, query)| query)
    }
}

/// What the gateway must do.
#[derive(Debug, Clone)]
pub enum GatewayAnswer {
    /// Forward the request upstream, changed as said.
    Allow {
        /// Identity headers to set (overwriting any client-sent value).
        set_headers: Vec<(String, String)>,
        /// Request headers to remove: identity headers this answer does not set, so a client
        /// cannot smuggle them in, and, if configured, the credential.
        remove_headers: Vec<String>,
        /// Query parameters to remove (an API key sent in the query, if configured).
        remove_query: Vec<String>,
        /// The decision.
        decision: Box<Decision>,
        /// For an MCP request, the facts and the server it was decided with: a list entry
        /// of the same exchange is decided with them too (`exchange`).
        mcp: Option<Box<(Extra, String)>>,
    },
    /// Answer the client directly.
    Deny {
        /// Why: 400, 401, 403 or 503.
        refusal: Refusal,
        /// Response headers (`www-authenticate`, `content-type`).
        headers: Vec<(String, String)>,
        /// JSON body: `{error, reason, decision_id}`, or a JSON-RPC error for MCP requests.
        body: String,
        /// The decision, when it got that far (not for a malformed request).
        decision: Option<Box<Decision>>,
    },
}

impl GatewayAnswer {
    /// True for [`GatewayAnswer::Allow`].
    pub fn allowed(&self) -> bool {
        matches!(self, GatewayAnswer::Allow { .. })
    }

    /// The HTTP status the client gets from cedargate's side.
    pub fn status(&self) -> u16 {
        match self {
            GatewayAnswer::Allow { .. } => 200,
            GatewayAnswer::Deny { refusal, .. } => refusal.http_status(),
        }
    }

    /// The decision, if one was made.
    pub fn decision(&self) -> Option<&Decision> {
        match self {
            GatewayAnswer::Allow { decision, .. } => Some(decision),
            GatewayAnswer::Deny { decision, .. } => decision.as_deref(),
        }
    }
}

/// The request-path settings, resolved from [`GatewayConfig`] once.
#[derive(Debug, Clone)]
struct Settings {
    api_key_header: Option<String>,
    api_key_cookie: Option<String>,
    api_key_query: Option<String>,
    /// (header name, field) for each identity header in use.
    identity: Vec<(String, IdentityField)>,
    /// Every other `-`/`_` spelling of the identity headers: always removed, because many
    /// upstreams (WSGI, CGI, frameworks) read `x_auth_subject` as `x-auth-subject`.
    identity_spellings: Vec<String>,
    /// The same for the API key header, removed with it when stripping credentials.
    api_key_spellings: Vec<String>,
    strip_authorization: bool,
    mcp: Vec<(String, McpShape, String)>,
    max_body_bytes: usize,
    refuse_overrides: bool,
    /// Every `-`/`_` spelling of the override headers, removed on each allow when refused.
    override_spellings: Vec<String>,
    mcp_trust_headers: bool,
    /// The largest MCP list answer trimmed.
    max_list_bytes: usize,
    /// The header naming a request's tenant (`tenants.header`, lower case), with tenancy on.
    tenant_header: Option<String>,
    /// The context extension naming a request's tenant (`tenants.context_extension`), with
    /// tenancy on.
    tenant_extension: Option<String>,
}

#[derive(Debug, Clone, Copy)]
enum IdentityField {
    Subject,
    ClientId,
    Scopes,
    Roles,
    Tenant,
}

impl IdentityField {
    fn value(self, auth: &AuthInfo) -> String {
        match self {
            IdentityField::Subject => auth.subject.clone(),
            IdentityField::ClientId => auth.client_id.clone(),
            IdentityField::Scopes => auth.scopes.join(" "),
            IdentityField::Roles => auth.roles.join(","),
            IdentityField::Tenant => auth.tenant.clone(),
        }
    }
}

/// Decides gateway requests with an [`Engine`].
#[derive(Debug)]
pub struct Gateway {
    engine: Arc<Engine>,
    settings: Settings,
    /// Who each MCP session belongs to; `None` when sessions are not bound.
    sessions: Option<Arc<dyn mcp_sessions::Bindings>>,
}

/// Where the credential of a request was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Authorization,
    Header,
    Cookie,
    Query,
}

impl Gateway {
    /// A gateway over `engine` configured by `config`.
    pub fn new(engine: Arc<Engine>, config: &GatewayConfig) -> Self {
        let names = &config.identity_headers;
        let identity = [
            (&names.subject, IdentityField::Subject),
            (&names.client_id, IdentityField::ClientId),
            (&names.scopes, IdentityField::Scopes),
            (&names.roles, IdentityField::Roles),
            (&names.tenant, IdentityField::Tenant),
        ]
        .into_iter()
        .filter(|(name, _)| !name.is_empty())
        .map(|(name, field)| (name.to_ascii_lowercase(), field))
        .collect::<Vec<_>>();
        let identity_spellings = identity.iter().flat_map(|(name, _)| other_spellings(name)).collect();
        let api_key_header = config.api_key.header.as_ref().map(|name| name.to_ascii_lowercase());
        let settings = Settings {
            api_key_spellings: api_key_header.iter().flat_map(|name| other_spellings(name)).collect(),
            api_key_header,
            api_key_cookie: config.api_key.cookie.clone(),
            api_key_query: config.api_key.query.clone(),
            identity,
            identity_spellings,
            strip_authorization: config.strip_authorization,
            mcp: config
                .mcp
                .iter()
                .map(|endpoint| (endpoint.path.clone(), endpoint.shape, endpoint.server.clone()))
                .collect(),
            max_body_bytes: config.max_body_bytes,
            refuse_overrides: config.override_headers == OverrideHeaders::Refuse,
            override_spellings: match config.override_headers {
                OverrideHeaders::Refuse => OVERRIDE_HEADERS
                    .iter()
                    .flat_map(|name| std::iter::once((*name).to_owned()).chain(other_spellings(name)))
                    .collect(),
                OverrideHeaders::Allow => Vec::new(),
            },
            mcp_trust_headers: config.mcp_trust_headers,
            max_list_bytes: config.mcp_exchange.max_list_bytes,
            tenant_header: None,
            tenant_extension: None,
        };
        let exchange = &config.mcp_exchange;
        let sessions = exchange.bind_sessions.then(|| {
            Arc::new(mcp_sessions::SessionOwners::new(
                exchange.session_ttl.0,
                exchange.max_sessions,
                exchange.max_sessions_per_caller,
            )) as Arc<dyn mcp_sessions::Bindings>
        });
        Self { engine, settings, sessions }
    }

    /// Keeps MCP session bindings in `bindings` (a store every replica shares) instead of this
    /// process's memory, when sessions are bound at all.
    #[must_use]
    pub fn with_session_bindings(mut self, bindings: Arc<dyn mcp_sessions::Bindings>) -> Self {
        if self.sessions.is_some() {
            self.sessions = Some(bindings);
        }
        self
    }

    /// Reads a request's tenant where `tenants` says, when it declares any tenant.
    #[must_use]
    pub fn with_tenants(mut self, tenants: &TenantsConfig) -> Self {
        if tenants.enabled() {
            self.settings.tenant_header = tenants.header.as_ref().map(|name| name.to_ascii_lowercase());
            self.settings.tenant_extension = Some(tenants.context_extension.clone());
        }
        self
    }

    /// The tenant `request` names: the tenant header (from Envoy's gRPC wire, or from a
    /// trusted proxy on the HTTP wires) and the tenant context extension, which must agree.
    /// A header that cannot be believed is a refusal, never ignored: the request was meant
    /// for some tenant, and must not be decided by the base set instead.
    pub fn request_tenant<'r>(&self, request: &'r GatewayRequest) -> RequestTenant<'r> {
        let mut header = None;
        if let Some(name) = &self.settings.tenant_header {
            let mut values =
                request.headers.iter().filter(|(key, _)| key == name).map(|(_, value)| value.as_str());
            let first = values.next();
            // Sent twice, even once empty: which one a proxy or server takes varies.
            if first.is_some() && values.next().is_some() {
                return RequestTenant::Refused("the tenant header is sent more than once: refused");
            }
            // An empty value names no tenant, as the gRPC field's default does.
            header = first.filter(|value| !value.is_empty());
        }
        if header.is_some() && request.wire != Wire::EnvoyGrpc && !request.from_trusted_proxy {
            return RequestTenant::Refused(
                "the tenant header is believed only from gateway.trusted_proxies: refused",
            );
        }
        let extension = self
            .settings
            .tenant_extension
            .as_deref()
            .and_then(|name| request.extension(name))
            .filter(|value| !value.is_empty());
        match (header, extension) {
            (Some(header), Some(extension)) if header != extension => RequestTenant::Refused(
                "the tenant header and the tenant context extension name different tenants: refused",
            ),
            (Some(tenant), _) | (None, Some(tenant)) => RequestTenant::Named(tenant),
            (None, None) => RequestTenant::Unnamed,
        }
    }

    /// Decides `request`. Never fails: a malformed request is a 400 denial (counted).
    pub async fn check(&self, request: &GatewayRequest) -> GatewayAnswer {
        let answer = self.answer(request).await;
        if let GatewayAnswer::Deny { refusal: Refusal::InvalidRequest, decision: None, .. } = &answer {
            metrics().invalid_request(request.wire);
        }
        answer
    }

    async fn answer(&self, request: &GatewayRequest) -> GatewayAnswer {
        let shape = self.mcp_endpoint(request);
        // Only JSON-RPC endpoints answer in JSON-RPC; the example's invoke shape in plain JSON.
        let speaks_jsonrpc = matches!(shape, Some((McpShape::Jsonrpc, _)));
        let jsonrpc = |id: Value| speaks_jsonrpc.then_some(id);
        if let Some(reason) = self.override_in(request) {
            return invalid(jsonrpc(Value::Null), mcp::code::INVALID_REQUEST, &reason);
        }
        let (authorization, source) = match self.credential(request) {
            Ok(Some((value, source))) => (value, Some(source)),
            Ok(None) => (String::new(), None),
            Err(reason) => return invalid(jsonrpc(Value::Null), mcp::code::INVALID_REQUEST, reason),
        };
        if shape.is_none() && self.near_mcp_endpoint(request) {
            return invalid(
                None,
                mcp::code::INVALID_REQUEST,
                "the path is an MCP endpoint's in another case: send it exactly as configured",
            );
        }
        let (target, mcp_method, id) = match self.target(request, shape) {
            Ok(found) => found,
            Err(error) => return invalid(jsonrpc(error.id), error.code, &error.message),
        };
        let facts = facts(request, mcp_method.as_deref());
        let tenant = self.request_tenant(request);
        match self.engine.check_in(request.wire, tenant, &authorization, &target, &facts).await {
            Ok(decision) if decision.allowed() => {
                let mut answer = self.allow(decision, request, source);
                if let (GatewayAnswer::Allow { mcp, .. }, Target::Tool(call) | Target::Mcp(_, call)) =
                    (&mut answer, &target)
                {
                    *mcp = Some(Box::new((facts, call.server.clone())));
                }
                answer
            }
            Ok(decision) => deny(decision, jsonrpc(id)),
            Err(error) => invalid(jsonrpc(id), mcp::code::INVALID_PARAMS, &error.to_string()),
        }
    }

    /// Whether `request` is to a JSON-RPC MCP endpoint, whatever its method: an exchange
    /// cedargate's ext_proc filter follows ([`exchange`]).
    pub fn is_mcp_exchange(&self, request: &GatewayRequest) -> bool {
        self.jsonrpc_endpoint(request).is_some()
    }

    /// The server of the JSON-RPC MCP endpoint `request` is to, if it is to one.
    fn jsonrpc_endpoint(&self, request: &GatewayRequest) -> Option<&str> {
        let path = request.path_only();
        self.settings
            .mcp
            .iter()
            .find(|(endpoint, shape, _)| endpoint == path && *shape == McpShape::Jsonrpc)
            .map(|(_, _, server)| server.as_str())
    }

    /// Whether `request` is a POST to an MCP endpoint, and of which shape and server. The path
    /// must be the endpoint's exactly, as the proxy routes it: `/mcp/` is not `/mcp`.
    fn mcp_endpoint(&self, request: &GatewayRequest) -> Option<(McpShape, &str)> {
        if !request.method.eq_ignore_ascii_case("POST") {
            return None;
        }
        let path = request.path_only();
        self.settings
            .mcp
            .iter()
            .find(|(endpoint, _, _)| endpoint == path)
            .map(|(_, shape, server)| (*shape, server.as_str()))
    }

    /// Whether `request` is a POST to an MCP endpoint's path in another case (`/MCP`): servers
    /// that route without case would run it as MCP, while it is not decided as MCP here.
    fn near_mcp_endpoint(&self, request: &GatewayRequest) -> bool {
        request.method.eq_ignore_ascii_case("POST")
            && self
                .settings
                .mcp
                .iter()
                .any(|(endpoint, _, _)| endpoint.eq_ignore_ascii_case(request.path_only()))
    }

    /// Why `request` is refused for carrying a method or URL override, if it is.
    fn override_in(&self, request: &GatewayRequest) -> Option<String> {
        if !self.settings.refuse_overrides {
            return None;
        }
        // Compared with `_` read as `-`, without building a new name for every header.
        let same = |name: &str, known: &str| {
            name.len() == known.len()
                && name.bytes().zip(known.bytes()).all(|(a, b)| a == b || (a == b'_' && b == b'-'))
        };
        let header = request.headers.iter().find_map(|(name, _)| {
            OVERRIDE_HEADERS.iter().find(|known| same(name, known)).map(|known| (*known).to_owned())
        });
        let query = || {
            url::form_urlencoded::parse(request.query().as_bytes())
                .any(|(key, _)| key == OVERRIDE_QUERY)
                .then(|| format!("the `{OVERRIDE_QUERY}` query parameter"))
        };
        let form = || {
            let is_form = request
                .header("content-type")
                .is_some_and(|value| value.trim_start().starts_with("application/x-www-form-urlencoded"));
            (is_form && url::form_urlencoded::parse(&request.body).any(|(key, _)| key == OVERRIDE_QUERY))
                .then(|| format!("`{OVERRIDE_QUERY}` in its form body"))
        };
        header.or_else(query).or_else(form).map(|found| {
            format!(
                "the request carries {found}, which an upstream may act on as another method or URL \
                 than the one decided: refused (gateway.override_headers)"
            )
        })
    }

    /// The one credential of `request` as an `Authorization` value, and where it was.
    ///
    /// Fails when there is more than one, when the API key's query parameter name is
    /// percent-encoded (the proxy removes parameters by their literal name), or when it would
    /// have to be removed from the query on a wire whose proxy cannot do that.
    fn credential(&self, request: &GatewayRequest) -> Result<Option<(String, Source)>, &'static str> {
        let mut found = Vec::new();
        // A comma cannot be in a token68 credential: it is Envoy joining repeated headers.
        for value in request.header_values("authorization") {
            let parts = value.split(',').map(str::trim).filter(|part| !part.is_empty()).count();
            found.extend(std::iter::repeat_n((value.to_owned(), Source::Authorization), parts.max(1)));
        }
        let api_key = |key: &str| format!("ApiKey {key}");
        if let Some(name) = self.settings.api_key_header.as_deref() {
            for value in request.header_values(name) {
                found.push((api_key(value), Source::Header));
            }
        }
        if let Some(name) = &self.settings.api_key_cookie {
            for (key, value) in cookies(request) {
                if key == name {
                    found.push((api_key(value.trim_matches('"')), Source::Cookie));
                }
            }
        }
        if let Some(name) = &self.settings.api_key_query {
            for pair in request.query().split('&').filter(|pair| !pair.is_empty()) {
                let raw_key = pair.split_once('=').map_or(pair, |(key, _)| key);
                let Some((key, value)) = url::form_urlencoded::parse(pair.as_bytes()).next() else {
                    continue;
                };
                if key != name.as_str() {
                    continue;
                }
                if raw_key != name {
                    return Err("the API key's query parameter name is percent-encoded: send it as is");
                }
                if self.settings.strip_authorization && !removes_query_parameters(request.wire) {
                    return Err(
                        "an API key in the query cannot be removed before the request goes upstream \
                                on this wire: send it in a header",
                    );
                }
                found.push((api_key(&value), Source::Query));
            }
        }
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.pop()),
            _ => Err("send one credential only: more than one of the Authorization header, the API key \
                      header, cookie and query parameter is set"),
        }
    }

    /// What `request` asks for, the MCP method if any, and the JSON-RPC id.
    fn target(
        &self,
        request: &GatewayRequest,
        shape: Option<(McpShape, &str)>,
    ) -> Result<(Target, Option<String>, Value), McpError> {
        let invalid =
            |message: String| McpError { code: mcp::code::INVALID_REQUEST, message, id: Value::Null };
        let server = request.extension("server").unwrap_or_default();
        if let Some(tool) = request.extension("tool") {
            let call = ToolCall { name: tool.to_owned(), server: server.to_owned(), arguments: Extra::new() };
            return Ok((Target::Tool(call), None, Value::Null));
        }
        if let Some((shape, configured_server)) = shape {
            if request.body.len() > self.settings.max_body_bytes {
                return Err(invalid(format!("the body exceeds {} bytes", self.settings.max_body_bytes)));
            }
            let server = if server.is_empty() { configured_server } else { server };
            let McpRequest { target, method, id } = match shape {
                McpShape::Jsonrpc => {
                    let headers = McpHeaders {
                        method: request.header("mcp-method"),
                        name: request.header("mcp-name"),
                        trusted: self.settings.mcp_trust_headers,
                    };
                    mcp::parse_jsonrpc(&request.body, server, headers)?
                }
                McpShape::Invoke => mcp::parse_invoke(&request.body, server)?,
            };
            return Ok((target, Some(method), id));
        }
        let target = Target::Route(RouteRequest {
            method: request.method.clone(),
            path: request.path.clone(),
            template: request.extension("route").map(str::to_owned),
        });
        Ok((target, None, Value::Null))
    }

    fn allow(&self, decision: Decision, request: &GatewayRequest, source: Option<Source>) -> GatewayAnswer {
        let mut set_headers = Vec::new();
        let mut remove_headers = Vec::new();
        for (name, field) in &self.settings.identity {
            let value = decision.auth_info.as_deref().map(|auth| header_value(&field.value(auth)));
            match value {
                Some(value) if !value.is_empty() => set_headers.push((name.clone(), value)),
                _ => remove_headers.push(name.clone()),
            }
        }
        remove_headers.extend(self.settings.identity_spellings.iter().cloned());
        // Whatever the proxy did not show cedargate (Envoy's HTTP mode sends only its
        // `allowed_headers`) must not reach the upstream either.
        remove_headers.extend(self.settings.override_spellings.iter().cloned());
        let mut remove_query = Vec::new();
        if self.settings.strip_authorization {
            remove_headers.push("authorization".to_owned());
            remove_headers.extend(self.settings.api_key_header.iter().cloned());
            remove_headers.extend(self.settings.api_key_spellings.iter().cloned());
            if source == Some(Source::Query) {
                remove_query.extend(self.settings.api_key_query.iter().cloned());
            }
            // The upstream gets every cookie but the key, each as sent: cedargate says what
            // `Cookie` is.
            if let Some(name) = &self.settings.api_key_cookie {
                match cookies_without(request, name) {
                    Some(rest) => set_headers.push(("cookie".to_owned(), rest)),
                    None => remove_headers.push("cookie".to_owned()),
                }
            }
        }
        GatewayAnswer::Allow {
            set_headers,
            remove_headers,
            remove_query,
            decision: Box::new(decision),
            mcp: None,
        }
    }
}

/// The answer to a decision that is not an allow.
fn deny(decision: Decision, jsonrpc_id: Option<Value>) -> GatewayAnswer {
    let refusal = decision.refusal().unwrap_or(Refusal::Forbidden);
    let mut headers = Vec::new();
    if let Some(challenge) = &decision.www_authenticate {
        headers.push(("www-authenticate".to_owned(), challenge.clone()));
    }
    let denial = denial_json(&decision);
    let body = match jsonrpc_id {
        // MCP endpoints answer in the protocol the client speaks.
        Some(id) => jsonrpc_error(&id, mcp::code::UNAUTHORIZED, client_reason(&decision), Some(denial)),
        None => denial.to_string(),
    };
    headers.push(("content-type".to_owned(), "application/json".to_owned()));
    GatewayAnswer::Deny { refusal, headers, body, decision: Some(Box::new(decision)) }
}

/// The request's cookies as (name, value) pairs, from every `Cookie` header. A comma splits
/// too: a proxy may join repeated headers with one, and no cookie value may hold it (RFC 6265).
fn cookies(request: &GatewayRequest) -> impl Iterator<Item = (&str, &str)> {
    request
        .header_values("cookie")
        .flat_map(|header| header.split([';', ',']))
        .filter_map(|pair| pair.trim().split_once('='))
        .map(|(key, value)| (key.trim(), value.trim()))
}

/// The request's `Cookie` headers as one value without the cookie `name`, every other piece
/// byte for byte as sent (`prefs=en,fr`, a bare `flag`); `None` when nothing is left. A
/// comma-joined piece (a proxy joining repeated headers) loses only its `name=` parts.
fn cookies_without(request: &GatewayRequest, name: &str) -> Option<String> {
    let is_key = |part: &str| part.split_once('=').is_some_and(|(key, _)| key.trim() == name);
    let mut kept = Vec::new();
    for piece in request.header_values("cookie").flat_map(|header| header.split(';')) {
        let piece = piece.trim();
        if piece.is_empty() {
            continue;
        }
        if piece.split(',').any(is_key) {
            let rest: Vec<&str> = piece.split(',').filter(|part| !is_key(part)).collect();
            if !rest.is_empty() {
                kept.push(rest.join(","));
            }
        } else {
            kept.push(piece.to_owned());
        }
    }
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// Every spelling of `name` with each `-` or `_` as either, except `name` itself.
fn other_spellings(name: &str) -> Vec<String> {
    let separators: Vec<usize> = name
        .bytes()
        .enumerate()
        .filter(|(_, byte)| matches!(byte, b'-' | b'_'))
        .map(|(index, _)| index)
        .collect();
    // Config validation caps the separators; the cap here only bounds the work.
    let count = separators.len().min(crate::config::MAX_HEADER_SEPARATORS);
    (0..1u32 << count)
        .map(|mask| {
            let mut spelling = name.as_bytes().to_vec();
            for (bit, &index) in separators.iter().take(count).enumerate() {
                spelling[index] = if mask & (1 << bit) == 0 { b'-' } else { b'_' };
            }
            String::from_utf8_lossy(&spelling).into_owned()
        })
        .filter(|spelling| spelling != name)
        .collect()
}

/// A 400 for a request that cannot be decided on; `jsonrpc_id` is set for JSON-RPC endpoints,
/// whose clients get a JSON-RPC error with `code`.
fn invalid(jsonrpc_id: Option<Value>, code: i64, reason: &str) -> GatewayAnswer {
    tracing::info!(target: "cedargate::decision", outcome = "invalid_request", reason, "gateway request refused");
    let body = match jsonrpc_id {
        Some(id) => jsonrpc_error(&id, code, reason, Some(invalid_request_json(reason))),
        None => invalid_request_json(reason).to_string(),
    };
    GatewayAnswer::Deny {
        refusal: Refusal::InvalidRequest,
        headers: vec![("content-type".to_owned(), "application/json".to_owned())],
        body,
        decision: None,
    }
}

/// The part of a decision a denied client is told, with the names and values of the API's
/// JSON mapping (`api::json::decision_json`): the body of a gateway denial, and the `data` of
/// a JSON-RPC one. It leaves out what only the operator should see (identity, policy ids,
/// evaluation errors).
pub fn denial_json(decision: &Decision) -> Value {
    json!({
        "error": decision.error_code(),
        "outcome": decision.outcome.api_name(),
        "httpStatus": decision.outcome.http_status(),
        "reason": client_reason(decision),
        "decisionId": decision.decision_id,
    })
}

/// What a denied client is told why. An outage's reason names the backend and its error
/// (hosts, a transport's cause chain): that stays in the decision log and the API, and the
/// client gets a fixed text with the decision id to quote.
pub fn client_reason(decision: &Decision) -> &str {
    match decision.outcome {
        crate::model::Outcome::Unavailable => UNAVAILABLE_REASON,
        _ => &decision.reason,
    }
}

/// The reason a client is given for an outage of a credential backend.
pub const UNAVAILABLE_REASON: &str = "a credential backend is temporarily unavailable; retry later";

/// `Outcome.OUTCOME_INVALID_REQUEST` of the API.
pub const INVALID_REQUEST_OUTCOME: &str = "OUTCOME_INVALID_REQUEST";

/// The body of a request refused before any decision (a malformed path or body): the fields
/// of [`denial_json`] that exist without a decision.
pub fn invalid_request_json(reason: &str) -> Value {
    json!({
        "error": "invalid_request",
        "outcome": INVALID_REQUEST_OUTCOME,
        "httpStatus": Refusal::InvalidRequest.http_status(),
        "reason": reason,
    })
}

/// A JSON-RPC 2.0 error response.
pub fn jsonrpc_error(id: &Value, code: i64, message: &str, data: Option<Value>) -> String {
    let mut error = json!({ "code": code, "message": message });
    if let (Some(data), Value::Object(error)) = (data, &mut error) {
        error.insert("data".to_owned(), data);
    }
    json!({ "jsonrpc": "2.0", "id": id, "error": error }).to_string()
}

/// The facts cedargate itself knows about a request; no extension may set them, not even
/// when cedargate has no value for one.
const OWN_FACTS: [&str; 4] = ["host", "source_ip", "source_principal", "mcp_method"];

/// Request facts for policies: the context extensions, then `host`, `source_ip`,
/// `source_principal` and `mcp_method` (which extensions cannot set).
fn facts(request: &GatewayRequest, mcp_method: Option<&str>) -> Extra {
    let mut facts: Extra = request
        .extensions
        .iter()
        .filter(|(key, _)| !OWN_FACTS.contains(&key.as_str()))
        .map(|(key, value)| (key.clone(), Value::from(value.as_str())))
        .collect();
    let mut put = |key: &str, value: &str| {
        if !value.is_empty() {
            facts.insert(key.to_owned(), Value::from(value));
        }
    };
    put("host", &request.host);
    put("source_ip", &request.source_ip);
    put("source_principal", &request.source_principal);
    put("mcp_method", mcp_method.unwrap_or_default());
    facts
}

/// A header value: visible ASCII kept, anything else percent-encoded, so a subject can never
/// break a header or smuggle a second one.
fn header_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
