//! The decision pipeline: `Authorization` value → credential → AuthInfo → policies →
//! [`Decision`], with the challenge a client needs and one structured log event per decision.

pub mod record;
mod tenants;

use std::sync::Arc;
use std::time::Instant;

use crate::credential::{parse_authorization, CredentialChain, CredentialError};
use crate::model::{
    unix_now, AuthInfo, Decision, Extra, McpKind, Outcome, Scheme, SecretDigest, ShadowDecision, Target, Wire,
};
use crate::policy::{Explanation, PolicyEngine, Query, Resource, Verdict};
use crate::route::{self, RouteTable, TargetError};
use crate::telemetry::decision_log::DecisionLog;
use crate::telemetry::metrics::metrics;
use crate::telemetry::trace;

pub use tenants::{RequestTenant, Tenant, Tenants};
use tenants::{Requested, Scope};

/// Knobs of the pipeline.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// `realm` of every challenge.
    pub realm: String,
    /// Longest `Authorization` value accepted.
    pub max_authorization_bytes: usize,
    /// Most targets in one batch.
    pub max_batch_targets: usize,
    /// The RFC 9728 protected resource metadata URL that bearer challenges point clients to.
    pub resource_metadata: Option<String>,
    /// Where decision records go.
    pub decision_log: Arc<DecisionLog>,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            realm: "cedargate".to_owned(),
            max_authorization_bytes: 8 * 1024,
            max_batch_targets: 1000,
            resource_metadata: None,
            decision_log: Arc::new(DecisionLog::default()),
        }
    }
}

/// One check as a wire sees it: where it came from and when it started, for the decision
/// record and the metrics.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    /// The wire.
    pub wire: Wire,
    /// When the wire received it.
    pub started: Instant,
}

impl Call {
    /// A check that starts now.
    pub fn now(wire: Wire) -> Self {
        Self { wire, started: Instant::now() }
    }
}

/// Who the caller is, or why that could not be established.
#[derive(Debug, Clone)]
pub enum Authentication {
    /// No credential was sent.
    Anonymous,
    /// The credential resolved.
    Authenticated {
        /// The identity.
        auth: Arc<AuthInfo>,
        /// How it was presented.
        scheme: Scheme,
        /// Credential fingerprint.
        fingerprint: String,
    },
    /// A credential was sent and is not valid.
    Failed {
        /// The scheme, when the value parsed that far.
        scheme: Option<Scheme>,
        /// Why.
        error: CredentialError,
        /// Fingerprint of the credential (or of the whole value when it did not parse).
        fingerprint: String,
    },
}

impl Authentication {
    /// The fingerprint, if a credential was sent.
    pub fn fingerprint(&self) -> Option<&str> {
        match self {
            Authentication::Anonymous => None,
            Authentication::Authenticated { fingerprint, .. }
            | Authentication::Failed { fingerprint, .. } => Some(fingerprint),
        }
    }
}

/// A target after normalization: what the policies are asked about.
#[derive(Debug, Clone)]
enum PreparedTarget<'a> {
    Route(route::ResolvedRoute),
    Mcp { kind: McpKind, name: &'a str, server: &'a str, arguments: &'a Extra },
}

/// Resolves credentials and decides; shared by every API.
#[derive(Debug)]
pub struct Engine {
    credentials: CredentialChain,
    policies: Arc<PolicyEngine>,
    routes: RouteTable,
    settings: EngineSettings,
    /// The declared tenants, each with its own policies and credential backends.
    tenants: Tenants,
}

impl Engine {
    /// Assembles the pipeline.
    pub fn new(
        credentials: CredentialChain,
        policies: Arc<PolicyEngine>,
        routes: RouteTable,
        settings: EngineSettings,
    ) -> Self {
        Self { credentials, policies, routes, settings, tenants: Tenants::default() }
    }

    /// Decides with `tenants` too: a request naming one, or whose credential is of one, is
    /// decided by that tenant's set.
    #[must_use]
    pub fn with_tenants(mut self, tenants: Tenants) -> Self {
        self.tenants = tenants;
        self
    }

    /// The declared tenants.
    pub fn tenants(&self) -> &Tenants {
        &self.tenants
    }

    /// What decides a request of no tenant: the base set.
    fn base_scope(&self) -> Scope<'_> {
        Scope {
            tenant: None,
            policies: &self.policies,
            resource_metadata: self.settings.resource_metadata.as_deref(),
        }
    }

    /// Where decision records go (flushed at shutdown).
    pub fn decision_log(&self) -> &DecisionLog {
        &self.settings.decision_log
    }

    /// The policies, for reload and status.
    pub fn policies(&self) -> &Arc<PolicyEngine> {
        &self.policies
    }

    /// Resolves an `Authorization` value into an identity (the introspection seed's
    /// `resolveAuthInfo`).
    pub async fn authenticate(&self, authorization: &str) -> Authentication {
        self.authenticate_at(authorization, unix_now()).await
    }

    /// [`Engine::authenticate`] with the identity's expiry checked at `now` (unix seconds)
    /// rather than the clock: policy tests freeze time.
    pub async fn authenticate_at(&self, authorization: &str, now: i64) -> Authentication {
        self.authenticate_with(&self.credentials, authorization, now).await
    }

    /// [`Engine::authenticate`] for a request naming `tenant`: by the global backends and that
    /// tenant's own. A request whose tenant is refused is not authenticated at all (anonymous):
    /// its credential is sent to no backend, and it is refused whatever it is.
    pub async fn authenticate_in(&self, tenant: RequestTenant<'_>, authorization: &str) -> Authentication {
        self.authenticate_requested(&self.tenants.requested(tenant), authorization).await
    }

    async fn authenticate_requested(&self, requested: &Requested<'_>, authorization: &str) -> Authentication {
        match requested {
            Ok(None) => self.authenticate(authorization).await,
            Ok(Some((_, tenant))) => {
                self.authenticate_with(&tenant.credentials, authorization, unix_now()).await
            }
            Err(_) => Authentication::Anonymous,
        }
    }

    async fn authenticate_with(
        &self,
        chain: &CredentialChain,
        authorization: &str,
        now: i64,
    ) -> Authentication {
        let credential = match parse_authorization(authorization, self.settings.max_authorization_bytes) {
            Ok(None) => return Authentication::Anonymous,
            Ok(Some(credential)) => credential,
            Err(error) => {
                // Bounded: an oversized value is fingerprinted by its first bytes only.
                let prefix = authorization.as_bytes();
                let prefix = prefix.get(..self.settings.max_authorization_bytes).unwrap_or(prefix);
                let fingerprint = SecretDigest::of(prefix).fingerprint();
                return Authentication::Failed { scheme: None, error, fingerprint };
            }
        };
        let fingerprint = credential.digest.fingerprint();
        let span = trace::Span::child("cedargate.credential.resolve", trace::Kind::Internal, || {
            vec![trace::attribute("cedargate.credential.cache", "none")]
        });
        let started = Instant::now();
        let resolved = span.run(chain.resolve(&credential, now)).await;
        metrics().stage("credential", started.elapsed());
        match resolved {
            Ok(auth) => {
                span.set("cedargate.credential.kind", auth.kind.as_str());
                Authentication::Authenticated { auth, scheme: credential.scheme, fingerprint }
            }
            Err(error) => Authentication::Failed { scheme: Some(credential.scheme), error, fingerprint },
        }
    }

    /// Decides one target.
    ///
    /// Fails only when the target itself is malformed (no target, bad method or path).
    pub async fn check(
        &self,
        wire: Wire,
        authorization: &str,
        target: &Target,
        facts: &Extra,
    ) -> Result<Decision, TargetError> {
        self.check_in(wire, RequestTenant::Unnamed, authorization, target, facts).await
    }

    /// [`Engine::check`] for a request naming `tenant`.
    ///
    /// Fails only when the target itself is malformed.
    pub async fn check_in(
        &self,
        wire: Wire,
        tenant: RequestTenant<'_>,
        authorization: &str,
        target: &Target,
        facts: &Extra,
    ) -> Result<Decision, TargetError> {
        let call = Call::now(wire);
        let _in_flight = metrics().in_flight(wire);
        let prepared = self.prepare(target)?;
        let requested = self.tenants.requested(tenant);
        let authentication = self.authenticate_requested(&requested, authorization).await;
        Ok(self.decide(&requested, &authentication, target, &prepared, facts, unix_now(), Some(call)))
    }

    /// Decides one target for an identity already established, so a batch resolves its
    /// credential once.
    ///
    /// Fails only when the target is malformed.
    pub fn check_authenticated(
        &self,
        call: Call,
        authentication: &Authentication,
        target: &Target,
        facts: &Extra,
    ) -> Result<Decision, TargetError> {
        self.check_authenticated_in(call, RequestTenant::Unnamed, authentication, target, facts)
    }

    /// [`Engine::check_authenticated`] for a request naming `tenant` (authenticated by
    /// [`Engine::authenticate_in`] with the same tenant).
    ///
    /// Fails only when the target is malformed.
    pub fn check_authenticated_in(
        &self,
        call: Call,
        tenant: RequestTenant<'_>,
        authentication: &Authentication,
        target: &Target,
        facts: &Extra,
    ) -> Result<Decision, TargetError> {
        let requested = self.tenants.requested(tenant);
        Ok(self.decide(
            &requested,
            authentication,
            target,
            &self.prepare(target)?,
            facts,
            unix_now(),
            Some(call),
        ))
    }

    /// [`Engine::check_authenticated`] with the policies' clock (`context.now`) frozen at
    /// `now` (unix seconds), for policy tests and replay; the request path always uses the real
    /// clock. Writes no decision record and counts no decision: nothing is let through.
    ///
    /// Fails only when the target is malformed.
    pub fn check_authenticated_at(
        &self,
        authentication: &Authentication,
        target: &Target,
        facts: &Extra,
        now: i64,
    ) -> Result<Decision, TargetError> {
        self.check_authenticated_in_at(RequestTenant::Unnamed, authentication, target, facts, now)
    }

    /// [`Engine::check_authenticated_at`] for a request naming `tenant`: decided by that
    /// tenant's set, as the request path would (`cedargate policy replay` of a tenant's record).
    ///
    /// Fails only when the target is malformed.
    pub fn check_authenticated_in_at(
        &self,
        tenant: RequestTenant<'_>,
        authentication: &Authentication,
        target: &Target,
        facts: &Extra,
        now: i64,
    ) -> Result<Decision, TargetError> {
        let requested = self.tenants.requested(tenant);
        Ok(self.decide(&requested, authentication, target, &self.prepare(target)?, facts, now, None))
    }

    /// Decides one target for an identity as [`Engine::check_authenticated`] does, at `now`
    /// (unix seconds), and says why (`cedargate policy explain`). Logs no decision: nothing is
    /// let through.
    ///
    /// Fails only when the target is malformed.
    pub fn explain(
        &self,
        authentication: &Authentication,
        target: &Target,
        facts: &Extra,
        now: i64,
    ) -> Result<ExplainedDecision, TargetError> {
        let prepared = self.prepare(target)?;
        let asked = match &prepared {
            PreparedTarget::Route(route) if route.template != route.path => {
                format!("route {} {} (template {})", route.method, route.path, route.template)
            }
            PreparedTarget::Route(route) => format!("route {} {}", route.method, route.path),
            PreparedTarget::Mcp { kind, name, server, .. } if !server.is_empty() => {
                format!("{} {name} on server {server}", kind.as_str())
            }
            PreparedTarget::Mcp { kind, name, .. } => format!("{} {name}", kind.as_str()),
        };
        let (auth, credential_error) = match authentication {
            Authentication::Anonymous => (None, None),
            Authentication::Authenticated { auth, .. } => (Some(auth), None),
            Authentication::Failed { error, .. } => {
                let outcome = if matches!(error, CredentialError::Unavailable { .. }) {
                    Outcome::Unavailable
                } else {
                    Outcome::Unauthenticated
                };
                return Ok(ExplainedDecision {
                    outcome,
                    auth_info: None,
                    asked,
                    credential_error: Some(error.to_string()),
                    explanation: None,
                });
            }
        };
        let resource = resource_of(&prepared);
        let explanation = self.policies.explain(&Query { auth, resource, facts, now });
        let outcome = match (explanation.allowed, auth) {
            (true, _) => Outcome::Allowed,
            (false, None) => Outcome::Unauthenticated,
            (false, Some(_)) => Outcome::Forbidden,
        };
        Ok(ExplainedDecision {
            outcome,
            auth_info: auth.cloned(),
            asked,
            credential_error,
            explanation: Some(explanation),
        })
    }

    /// For each of `entries`, whether the caller could use it: whether some call of it could
    /// be allowed, whatever its arguments ([`PolicyEngine::could_allow`]). This is how an
    /// entry of an MCP list (`tools/list`, `prompts/list`, `resources/list`) is decided: one
    /// identity and one set of facts for all of them. A route-generated tool is decided as its
    /// route, each path parameter standing for itself (`/users/{id}`). A credential that
    /// failed lists nothing; a malformed entry is not listed.
    pub fn could_use(&self, authentication: &Authentication, entries: &[Target], facts: &Extra) -> Vec<bool> {
        self.could_use_in(RequestTenant::Unnamed, authentication, entries, facts)
    }

    /// [`Engine::could_use`] for a request naming `tenant`: by the set a call would be decided
    /// by. A request whose tenant is refused lists nothing.
    pub fn could_use_in(
        &self,
        tenant: RequestTenant<'_>,
        authentication: &Authentication,
        entries: &[Target],
        facts: &Extra,
    ) -> Vec<bool> {
        let auth = match authentication {
            Authentication::Authenticated { auth, .. } => Some(auth),
            Authentication::Anonymous => None,
            Authentication::Failed { .. } => return vec![false; entries.len()],
        };
        let requested = self.tenants.requested(tenant);
        let Ok(scope) = self.tenants.scope(&requested, auth.map(AsRef::as_ref), self.base_scope()) else {
            return vec![false; entries.len()];
        };
        let prepared: Vec<Option<PreparedTarget<'_>>> =
            entries.iter().map(|target| self.prepare_listed(target).ok()).collect();
        let resources: Vec<Resource<'_>> = prepared.iter().flatten().map(resource_of).collect();
        let mut decided = scope.policies.could_allow_each(auth, &resources, facts, unix_now()).into_iter();
        prepared.iter().map(|prepared| prepared.is_some() && decided.next().unwrap_or(false)).collect()
    }

    /// [`Engine::prepare`] for a list entry: a route-generated tool's parameters are not known.
    fn prepare_listed<'a>(&self, target: &'a Target) -> Result<PreparedTarget<'a>, TargetError> {
        if let Target::Tool(tool) = target {
            if let Some((method, path)) = route::route_of_listed_tool(&tool.name)? {
                return Ok(PreparedTarget::Route(self.routes.resolve(&method, &path)?));
            }
        }
        self.prepare(target)
    }

    /// Refuses a batch larger than `max_batch_targets`.
    pub fn check_batch_size(&self, count: usize) -> Result<(), TargetError> {
        let max = self.settings.max_batch_targets;
        if count > max {
            return Err(TargetError::TooMany { count, max });
        }
        Ok(())
    }

    fn prepare<'a>(&self, target: &'a Target) -> Result<PreparedTarget<'a>, TargetError> {
        match target {
            Target::Route(request) => Ok(PreparedTarget::Route(match &request.template {
                Some(template) => self.routes.resolve_as(&request.method, &request.path, template)?,
                None => self.routes.resolve(&request.method, &request.path)?,
            })),
            Target::Mcp(kind, call) => {
                if call.name.is_empty() || call.name.len() > 2048 || call.name.chars().any(char::is_control) {
                    return Err(TargetError::McpName);
                }
                Ok(PreparedTarget::Mcp {
                    kind: (*kind).into(),
                    name: &call.name,
                    server: &call.server,
                    arguments: &call.arguments,
                })
            }
            Target::Tool(tool) => {
                if tool.name.is_empty() || tool.name.len() > 256 || tool.name.chars().any(char::is_control) {
                    return Err(TargetError::ToolName);
                }
                // INVARIANT: a tool generated from a route is decided exactly as that route, so
                // MCP can never bypass a route's policies.
                match route::route_of_tool(&tool.name, &tool.arguments)? {
                    Some((method, path)) => Ok(PreparedTarget::Route(self.routes.resolve(&method, &path)?)),
                    None => Ok(PreparedTarget::Mcp {
                        kind: McpKind::Tool,
                        name: &tool.name,
                        server: &tool.server,
                        arguments: &tool.arguments,
                    }),
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        requested: &Requested<'_>,
        authentication: &Authentication,
        asked: &Target,
        target: &PreparedTarget<'_>,
        facts: &Extra,
        now: i64,
        call: Option<Call>,
    ) -> Decision {
        let decision_id = new_decision_id();
        let mut revision: Option<Arc<str>> = None;
        let fingerprint = authentication.fingerprint().map(str::to_owned);
        let authenticated = match authentication {
            Authentication::Authenticated { auth, .. } => Some(auth.as_ref()),
            Authentication::Anonymous | Authentication::Failed { .. } => None,
        };
        let scope = self.tenants.scope(requested, authenticated, self.base_scope());
        let metadata = match &scope {
            Ok(scope) => scope.resource_metadata,
            Err(refusal) => refusal.resource_metadata,
        };
        let deciding_tenant = scope.as_ref().ok().and_then(|scope| scope.tenant);
        let tenant_refused = scope.is_err();
        if let (Some(tenant), true) = (deciding_tenant, trace::enabled()) {
            trace::record("cedargate.tenant", tenant.to_owned());
        }
        let decision = match (authentication, scope) {
            (_, Err(refusal)) => {
                let www_authenticate = (refusal.outcome == Outcome::Unauthenticated).then(|| {
                    let scheme = match authentication {
                        Authentication::Authenticated { scheme, .. } => *scheme,
                        _ => Scheme::Bearer,
                    };
                    self.challenge_for(metadata, scheme, Some(("invalid_token", &refusal.reason)), &[])
                });
                Decision {
                    outcome: refusal.outcome,
                    auth_info: match authentication {
                        Authentication::Authenticated { auth, .. } => Some(Arc::clone(auth)),
                        _ => None,
                    },
                    policy_ids: Vec::new(),
                    reason: refusal.reason,
                    www_authenticate,
                    decision_id,
                    errors: Vec::new(),
                    credential_fingerprint: fingerprint,
                    required_scopes: Vec::new(),
                    shadow: None,
                }
            }
            (Authentication::Failed { error, .. }, Ok(_)) => {
                let reason = error.to_string();
                let (outcome, challenge) = if matches!(error, CredentialError::Unavailable { .. }) {
                    (Outcome::Unavailable, None)
                } else {
                    (Outcome::Unauthenticated, self.authentication_challenge_for(metadata, authentication))
                };
                Decision {
                    outcome,
                    auth_info: None,
                    policy_ids: Vec::new(),
                    reason,
                    www_authenticate: challenge,
                    decision_id,
                    errors: Vec::new(),
                    credential_fingerprint: fingerprint,
                    required_scopes: Vec::new(),
                    shadow: None,
                }
            }
            (Authentication::Anonymous, Ok(scope)) => {
                let verdict = self.evaluate(scope.policies, None, target, facts, now);
                revision = Some(Arc::clone(&verdict.revision));
                let (outcome, www_authenticate) = if verdict.allowed {
                    (Outcome::Allowed, None)
                } else {
                    (Outcome::Unauthenticated, self.authentication_challenge_for(metadata, authentication))
                };
                from_verdict(verdict, outcome, None, www_authenticate, decision_id, fingerprint)
            }
            (Authentication::Authenticated { auth, scheme, .. }, Ok(scope)) => {
                let verdict = self.evaluate(scope.policies, Some(auth), target, facts, now);
                revision = Some(Arc::clone(&verdict.revision));
                let (outcome, www_authenticate) = if verdict.allowed {
                    (Outcome::Allowed, None)
                } else if verdict.required_scopes.is_empty() {
                    (Outcome::Forbidden, None)
                } else {
                    let challenge = self.challenge_for(
                        metadata,
                        *scheme,
                        Some(("insufficient_scope", &verdict.reason)),
                        &verdict.required_scopes,
                    );
                    (Outcome::Forbidden, Some(challenge))
                };
                from_verdict(
                    verdict,
                    outcome,
                    Some(Arc::clone(auth)),
                    www_authenticate,
                    decision_id,
                    fingerprint,
                )
            }
        };
        if let Some(call) = call {
            let elapsed = call.started.elapsed();
            let credential_kind = match authentication {
                Authentication::Anonymous => "anonymous",
                Authentication::Authenticated { auth, .. } => auth.kind.as_str(),
                Authentication::Failed { .. } => "unresolved",
            };
            metrics().decision(call.wire, decision.outcome, credential_kind, elapsed);
            if decision.shadow.is_some() {
                metrics().shadow_disagreement();
            }
            if trace::enabled() {
                trace::record("cedargate.decision.outcome", decision.outcome.as_str());
                trace::record("cedargate.decision.id", decision.decision_id.clone());
            }
            if self.settings.decision_log.wants(decision.allowed()) {
                let facts = record::Facts {
                    wire: call.wire,
                    authentication,
                    target: asked,
                    prepared: target,
                    facts,
                    revision: revision.as_deref().unwrap_or(""),
                    tenant: deciding_tenant,
                    tenant_refused,
                    evaluated_at: now,
                    elapsed,
                };
                self.settings.decision_log.write(&record::record(&decision, &facts));
            }
        }
        decision
    }

    fn evaluate(
        &self,
        policies: &PolicyEngine,
        auth: Option<&Arc<AuthInfo>>,
        target: &PreparedTarget<'_>,
        facts: &Extra,
        now: i64,
    ) -> Verdict {
        let span = trace::Span::child("cedargate.policy.evaluate", trace::Kind::Internal, Vec::new);
        let started = Instant::now();
        let verdict = policies.evaluate(&Query { auth, resource: resource_of(target), facts, now });
        metrics().stage("policy", started.elapsed());
        if span.is_some() {
            span.set("cedargate.policy.revision", verdict.revision.to_string());
        }
        verdict
    }

    /// The challenge for a caller who is not authenticated: `invalid_token` when a credential
    /// was sent and failed, and, RFC 6750 §3.1, no error code when none was sent. `None` for an
    /// authenticated caller.
    pub fn authentication_challenge(&self, authentication: &Authentication) -> Option<String> {
        self.authentication_challenge_for(self.settings.resource_metadata.as_deref(), authentication)
    }

    /// [`Engine::authentication_challenge`] naming `resource_metadata`.
    fn authentication_challenge_for(
        &self,
        resource_metadata: Option<&str>,
        authentication: &Authentication,
    ) -> Option<String> {
        match authentication {
            Authentication::Anonymous => {
                Some(self.challenge_for(resource_metadata, Scheme::Bearer, None, &[]))
            }
            Authentication::Failed { scheme, error, .. } => Some(self.challenge_for(
                resource_metadata,
                scheme.unwrap_or(Scheme::Bearer),
                Some(("invalid_token", &error.to_string())),
                &[],
            )),
            Authentication::Authenticated { .. } => None,
        }
    }

    /// A `WWW-Authenticate` value (RFC 6750 §3): the scheme, the realm, for bearer tokens the
    /// RFC 9728 `resource_metadata` URL when one is configured, then the error, its
    /// description and the scopes when there is an error.
    pub fn challenge(&self, scheme: Scheme, error: Option<(&str, &str)>, scopes: &[String]) -> String {
        self.challenge_for(self.settings.resource_metadata.as_deref(), scheme, error, scopes)
    }

    /// [`Engine::challenge`] naming `resource_metadata` (a tenant's own, or the global one).
    fn challenge_for(
        &self,
        resource_metadata: Option<&str>,
        scheme: Scheme,
        error: Option<(&str, &str)>,
        scopes: &[String],
    ) -> String {
        let mut parameters = vec![format!("realm=\"{}\"", quoted_string(&self.settings.realm))];
        if let (Scheme::Bearer, Some(url)) = (scheme, resource_metadata) {
            parameters.push(format!("resource_metadata=\"{}\"", quoted_string(url)));
        }
        if let Some((code, description)) = error {
            parameters.push(format!("error=\"{code}\""));
            parameters.push(format!("error_description=\"{}\"", quoted_string(description)));
        }
        if !scopes.is_empty() {
            parameters.push(format!("scope=\"{}\"", quoted_string(&scopes.join(" "))));
        }
        format!("{} {}", scheme.as_str(), parameters.join(", "))
    }
}

/// The Cedar view of a prepared target.
fn resource_of<'a>(target: &'a PreparedTarget<'_>) -> Resource<'a> {
    match target {
        PreparedTarget::Route(route) => Resource::Route {
            method: &route.method,
            path: &route.path,
            template: &route.template,
            params: &route.params,
        },
        PreparedTarget::Mcp { kind, name, server, arguments } => {
            Resource::Mcp { kind: *kind, name, server, arguments }
        }
    }
}

/// One decision and why, for `cedargate policy explain`.
#[derive(Debug, Clone)]
pub struct ExplainedDecision {
    /// What the caller would get.
    pub outcome: Outcome,
    /// The identity the policies saw (`None`: anonymous, or the credential failed).
    pub auth_info: Option<Arc<AuthInfo>>,
    /// What was asked, after normalization: `route GET /users/7 (template /users/{id})`,
    /// `tool echo`; a route-generated tool shows as its route.
    pub asked: String,
    /// Why the credential was refused (then no policy was evaluated).
    pub credential_error: Option<String>,
    /// The policies' side; `None` when the credential was refused.
    pub explanation: Option<Explanation>,
}

impl ExplainedDecision {
    /// The explanation as text: the outcome, the identity, then the policies' reasons.
    pub fn text(&self) -> String {
        let mut out = format!(
            "decision: {} (HTTP {})\nrequest: {}\n",
            self.outcome.as_str(),
            self.outcome.http_status(),
            self.asked
        );
        match (&self.auth_info, &self.credential_error) {
            (_, Some(error)) => out.push_str(&format!("credential: refused: {error}\n")),
            (Some(auth), None) => out.push_str(&format!(
                "identity: {} `{}`, roles [{}], scopes [{}]{}\n",
                auth.kind.as_str(),
                auth.subject,
                auth.roles.join(", "),
                auth.scopes.join(", "),
                if auth.tenant.is_empty() { String::new() } else { format!(", tenant `{}`", auth.tenant) }
            )),
            (None, None) => out.push_str("identity: anonymous (no credential)\n"),
        }
        if let Some(explanation) = &self.explanation {
            out.push_str(&explanation.text());
        }
        out
    }

    /// The explanation as JSON (`--format json`), named as in a decision's JSON: `outcome`
    /// (`OUTCOME_FORBIDDEN`, ...), `httpStatus`, `request`,
    /// `authInfo` (subject, kind, roles, scopes, tenant), `credentialError`, `policies`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "outcome": self.outcome.api_name(),
            "httpStatus": self.outcome.http_status(),
            "request": self.asked,
            "authInfo": self.auth_info.as_ref().map(|auth| serde_json::json!({
                "subject": auth.subject,
                "credentialKind": auth.kind.as_str(),
                "roles": auth.roles,
                "scopes": auth.scopes,
                "tenant": auth.tenant,
            })),
            "credentialError": self.credential_error,
            "policies": self.explanation.as_ref().and_then(|explanation| serde_json::to_value(explanation).ok()),
        })
    }
}

fn from_verdict(
    verdict: Verdict,
    outcome: Outcome,
    auth_info: Option<Arc<AuthInfo>>,
    www_authenticate: Option<String>,
    decision_id: String,
    credential_fingerprint: Option<String>,
) -> Decision {
    let authenticated = auth_info.is_some();
    Decision {
        outcome,
        auth_info,
        policy_ids: verdict.policy_ids,
        reason: verdict.reason,
        www_authenticate,
        decision_id,
        errors: verdict.errors,
        credential_fingerprint,
        // Only a 403 names missing scopes; an allow or a 401 has nothing to ask for.
        required_scopes: if outcome == Outcome::Forbidden { verdict.required_scopes } else { Vec::new() },
        shadow: verdict.shadow.map(|shadow| ShadowDecision {
            // A denial is a 401 for a caller without a credential, as the enforced one is.
            outcome: match (shadow.allowed, authenticated) {
                (true, _) => Outcome::Allowed,
                (false, true) => Outcome::Forbidden,
                (false, false) => Outcome::Unauthenticated,
            },
            policy_ids: shadow.policy_ids,
            reason: shadow.reason,
        }),
    }
}

/// A UUIDv7: time-ordered, so decision ids sort like the log. The random part comes from the
/// thread-local CSPRNG rather than a `getrandom` system call per decision.
fn new_decision_id() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
    uuid::Builder::from_unix_timestamp_millis(millis, &rand::random()).into_uuid().to_string()
}

/// Escapes `"` and `\` for an RFC 9110 quoted-string, dropping control characters.
fn quoted_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for character in text.chars().filter(|character| !character.is_control()) {
        if character == '"' || character == '\\' {
            out.push('\\');
        }
        out.push(character);
    }
    out
}

#[cfg(test)]
mod tests;
