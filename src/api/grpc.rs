//! The gRPC services `cedargate.v1.Authorizer`, `cedargate.v1.Sessions` and
//! `cedargate.v1.Admin`, and the one mapping of decisions and errors onto gRPC.

use std::sync::Arc;
use std::time::SystemTime;

use tonic::{Request, Response, Status};

use super::admin::{check_admin, AdminRefusal};
use super::json::{extra_to_struct, struct_to_extra};
use super::proto;
use crate::engine::{Authentication, Call, Engine, RequestTenant};
use crate::gateway::listing::{self, ListKind};
use crate::gateway::TrustedProxies;
use crate::model::{
    AuthInfo, Decision, McpRequest, Outcome, Refusal, RouteRequest, Secret, Target, ToolCall, Wire,
};
use crate::policy::{PolicyReloader, PolicyStatus, ReloadTrigger};
use crate::route::TargetError;
use crate::session::{SessionError, SessionManager, SessionTokens};
use crate::telemetry::metrics::metrics;
use crate::telemetry::trace;

/// `cedargate.v1.Authorizer`.
#[derive(Debug, Clone)]
pub struct AuthorizerService {
    engine: Arc<Engine>,
}

impl AuthorizerService {
    /// Serves decisions from `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

impl AuthorizerService {
    /// The entries of `request` the caller could use, as `kind`'s list answer is trimmed.
    async fn filter(
        &self,
        method: &'static str,
        request: Request<proto::FilterRequest>,
        kind: ListKind,
    ) -> Result<Response<proto::FilterResponse>, Status> {
        let span = rpc_span("cedargate.v1.Authorizer", method, request.metadata());
        let answer = async {
            let _in_flight = metrics().in_flight(Wire::Grpc);
            let request = request.into_inner();
            self.engine.check_batch_size(request.entries.len()).map_err(|error| target_status(&error))?;
            let facts = struct_to_extra(request.context.as_ref()).map_err(|error| target_status(&error))?;
            let tenant = request_tenant(&request.tenant);
            let authentication = self.engine.authenticate_in(tenant, &request.authorization).await;
            let auth_info = match &authentication {
                Authentication::Authenticated { auth, .. } => Some(auth_info_to_proto(auth)),
                Authentication::Anonymous => None,
                Authentication::Failed { error, .. } => {
                    let code = if matches!(error, crate::credential::CredentialError::Unavailable { .. }) {
                        tonic::Code::Unavailable
                    } else {
                        tonic::Code::Unauthenticated
                    };
                    return Err(Status::new(code, error.to_string()));
                }
            };
            let names = request.entries.iter().map(|entry| entry_name(entry, kind));
            let mut decide =
                |targets: &[Target]| self.engine.could_use_in(tenant, &authentication, targets, &facts);
            let allowed = listing::allowed(kind, &request.server, names, &mut decide);
            let total = request.entries.len();
            let entries: Vec<_> = request
                .entries
                .into_iter()
                .zip(allowed)
                .filter(|(_, allowed)| *allowed)
                .map(|(entry, _)| entry)
                .collect();
            let removed = u32::try_from(total - entries.len()).unwrap_or(u32::MAX);
            Ok(Response::new(proto::FilterResponse { entries, removed, auth_info }))
        };
        let answer = span.run(answer).await;
        record_status(&span, &answer);
        answer
    }
}

/// The tenant a caller named in a request's `tenant` field ("" for none).
fn request_tenant(tenant: &str) -> RequestTenant<'_> {
    if tenant.is_empty() {
        RequestTenant::Unnamed
    } else {
        RequestTenant::Named(tenant)
    }
}

/// The name of a list entry: `uri` (or `uriTemplate`) for resources, `name` otherwise.
fn entry_name(entry: &prost_types::Struct, kind: ListKind) -> Option<&str> {
    let field = |key: &str| match entry.fields.get(key).and_then(|value| value.kind.as_ref()) {
        Some(prost_types::value::Kind::StringValue(name)) => Some(name.as_str()),
        _ => None,
    };
    match kind {
        ListKind::Resources | ListKind::ResourceTemplates => field("uri").or_else(|| field("uriTemplate")),
        ListKind::Tools | ListKind::Prompts => field("name"),
    }
}

/// `cedargate.v1.Sessions`.
#[derive(Debug, Clone)]
pub struct SessionsService {
    sessions: Arc<SessionManager>,
    /// Whose `x-forwarded-for` names the client for the login rate limit.
    trusted_proxies: TrustedProxies,
}

impl SessionsService {
    /// Serves logins from `sessions`.
    pub fn new(sessions: Arc<SessionManager>, trusted_proxies: TrustedProxies) -> Self {
        Self { sessions, trusted_proxies }
    }
}

fn target_from_proto(target: Option<&proto::Target>) -> Result<Target, TargetError> {
    match target.and_then(|target| target.kind.as_ref()) {
        Some(proto::target::Kind::Route(route)) => Ok(Target::Route(RouteRequest {
            method: route.method.clone(),
            path: route.path.clone(),
            template: (!route.template.is_empty()).then(|| route.template.clone()),
        })),
        Some(proto::target::Kind::Mcp(request)) => {
            let kind = match request.kind() {
                proto::mcp_request::Kind::Prompt => McpRequest::Prompt,
                proto::mcp_request::Kind::Resource => McpRequest::Resource,
                proto::mcp_request::Kind::Method => McpRequest::Method,
                proto::mcp_request::Kind::Unspecified => return Err(TargetError::McpKind),
            };
            Ok(Target::Mcp(
                kind,
                ToolCall {
                    name: request.name.clone(),
                    server: request.server.clone(),
                    arguments: struct_to_extra(request.arguments.as_ref())?,
                },
            ))
        }
        Some(proto::target::Kind::Tool(tool)) => Ok(Target::Tool(ToolCall {
            name: tool.name.clone(),
            server: tool.server.clone(),
            arguments: struct_to_extra(tool.arguments.as_ref())?,
        })),
        None => Err(TargetError::Missing),
    }
}

/// An identity on the wire.
pub fn auth_info_to_proto(auth: &AuthInfo) -> proto::AuthInfo {
    proto::AuthInfo {
        subject: auth.subject.clone(),
        client_id: auth.client_id.clone(),
        scopes: auth.scopes.clone(),
        expires_at: auth.expires_at.unwrap_or(0),
        resource: auth.resource.clone(),
        roles: auth.roles.clone(),
        tenant: auth.tenant.clone(),
        issuer: auth.issuer.clone(),
        credential_kind: auth.kind.as_str().to_owned(),
        extra: (!auth.extra.is_empty()).then(|| extra_to_struct(&auth.extra)),
    }
}

pub(crate) fn outcome_to_proto(outcome: Outcome) -> proto::Outcome {
    match outcome {
        Outcome::Allowed => proto::Outcome::Allowed,
        Outcome::Unauthenticated => proto::Outcome::Unauthenticated,
        Outcome::Forbidden => proto::Outcome::Forbidden,
        Outcome::Unavailable => proto::Outcome::Unavailable,
    }
}

/// A decision on the wire.
pub fn decision_to_proto(decision: Decision) -> proto::CheckResponse {
    let error = decision.error_code().to_owned();
    let allowed = decision.allowed();
    let shadow = decision.shadow.map(|shadow| proto::ShadowDecision {
        outcome: outcome_to_proto(shadow.outcome).into(),
        policy_ids: shadow.policy_ids,
        reason: shadow.reason,
    });
    proto::CheckResponse {
        allowed,
        outcome: outcome_to_proto(decision.outcome).into(),
        http_status: u32::from(decision.outcome.http_status()),
        auth_info: decision.auth_info.as_deref().map(auth_info_to_proto),
        policy_ids: decision.policy_ids,
        reason: decision.reason,
        www_authenticate: decision.www_authenticate.unwrap_or_default(),
        decision_id: decision.decision_id,
        errors: decision.errors,
        credential_fingerprint: decision.credential_fingerprint.unwrap_or_default(),
        error,
        shadow,
    }
}

/// A malformed target in a batch: its own answer, so the other targets still get theirs.
fn invalid_target_to_proto(error: &TargetError) -> proto::CheckResponse {
    proto::CheckResponse {
        outcome: proto::Outcome::InvalidRequest.into(),
        http_status: 400,
        reason: error.to_string(),
        error: "invalid_request".to_owned(),
        ..Default::default()
    }
}

fn target_status(error: &TargetError) -> Status {
    Status::invalid_argument(error.to_string())
}

/// The gRPC code of a refusal: the one mapping, for cedargate's services and Envoy's.
pub fn code_of(refusal: Refusal) -> tonic::Code {
    match refusal {
        Refusal::InvalidRequest => tonic::Code::InvalidArgument,
        Refusal::Unauthenticated => tonic::Code::Unauthenticated,
        Refusal::Forbidden => tonic::Code::PermissionDenied,
        Refusal::RateLimited => tonic::Code::ResourceExhausted,
        Refusal::Unavailable => tonic::Code::Unavailable,
        Refusal::Internal => tonic::Code::Internal,
    }
}

fn session_status(error: &SessionError) -> Status {
    if let SessionError::Internal(_) = error {
        tracing::error!("session operation failed: {error}");
    }
    let mut status = Status::new(code_of(error.refusal()), error.public_message());
    if let Some(value) = error.retry_after_seconds().and_then(|after| after.to_string().parse().ok()) {
        status.metadata_mut().insert("retry-after", value);
    }
    status
}

fn tokens_to_proto(tokens: SessionTokens) -> proto::SessionTokens {
    let expires_in = tokens.expires_at.saturating_sub(crate::model::unix_now()).max(0);
    proto::SessionTokens {
        access_token: tokens.access_token.expose().to_owned(),
        refresh_token: tokens.refresh_token.expose().to_owned(),
        token_type: "Bearer".to_owned(),
        expires_at: tokens.expires_at,
        expires_in,
        refresh_expires_at: tokens.refresh_expires_at,
    }
}

#[tonic::async_trait]
impl proto::authorizer_server::Authorizer for AuthorizerService {
    async fn check(
        &self,
        request: Request<proto::CheckRequest>,
    ) -> Result<Response<proto::CheckResponse>, Status> {
        let span = rpc_span("cedargate.v1.Authorizer", "Check", request.metadata());
        let answer = async {
            let request = request.into_inner();
            let target = target_from_proto(request.target.as_ref()).map_err(|error| target_status(&error))?;
            let facts = struct_to_extra(request.context.as_ref()).map_err(|error| target_status(&error))?;
            let decision = self
                .engine
                .check_in(
                    Wire::Grpc,
                    request_tenant(&request.tenant),
                    &request.authorization,
                    &target,
                    &facts,
                )
                .await
                .map_err(|error| target_status(&error))?;
            Ok(Response::new(decision_to_proto(decision)))
        };
        let answer = span.run(answer).await;
        record_status(&span, &answer);
        answer
    }

    async fn batch_check(
        &self,
        request: Request<proto::BatchCheckRequest>,
    ) -> Result<Response<proto::BatchCheckResponse>, Status> {
        let span = rpc_span("cedargate.v1.Authorizer", "BatchCheck", request.metadata());
        let answer = async {
            let call = Call::now(Wire::Grpc);
            let _in_flight = metrics().in_flight(Wire::Grpc);
            let request = request.into_inner();
            self.engine.check_batch_size(request.targets.len()).map_err(|error| target_status(&error))?;
            let facts = struct_to_extra(request.context.as_ref()).map_err(|error| target_status(&error))?;
            let tenant = request_tenant(&request.tenant);
            let authentication = self.engine.authenticate_in(tenant, &request.authorization).await;
            let results = request
                .targets
                .iter()
                .map(|target| {
                    target_from_proto(Some(target))
                        .and_then(|target| {
                            self.engine.check_authenticated_in(call, tenant, &authentication, &target, &facts)
                        })
                        .map_or_else(|error| invalid_target_to_proto(&error), decision_to_proto)
                })
                .collect();
            Ok(Response::new(proto::BatchCheckResponse { results }))
        };
        let answer = span.run(answer).await;
        record_status(&span, &answer);
        answer
    }

    async fn filter_tools(
        &self,
        request: Request<proto::FilterRequest>,
    ) -> Result<Response<proto::FilterResponse>, Status> {
        self.filter("FilterTools", request, ListKind::Tools).await
    }

    async fn filter_prompts(
        &self,
        request: Request<proto::FilterRequest>,
    ) -> Result<Response<proto::FilterResponse>, Status> {
        self.filter("FilterPrompts", request, ListKind::Prompts).await
    }

    async fn filter_resources(
        &self,
        request: Request<proto::FilterRequest>,
    ) -> Result<Response<proto::FilterResponse>, Status> {
        self.filter("FilterResources", request, ListKind::Resources).await
    }

    async fn introspect(
        &self,
        request: Request<proto::IntrospectRequest>,
    ) -> Result<Response<proto::IntrospectResponse>, Status> {
        let request = request.into_inner();
        let authentication = self.engine.authenticate(&request.authorization).await;
        let credential_fingerprint = authentication.fingerprint().unwrap_or_default().to_owned();
        let www_authenticate = self.engine.authentication_challenge(&authentication).unwrap_or_default();
        let response = match authentication {
            Authentication::Authenticated { auth, .. } => proto::IntrospectResponse {
                active: true,
                auth_info: Some(auth_info_to_proto(&auth)),
                credential_fingerprint,
                ..Default::default()
            },
            Authentication::Anonymous => proto::IntrospectResponse {
                reason: "no credential".to_owned(),
                www_authenticate,
                ..Default::default()
            },
            Authentication::Failed { error, .. } => proto::IntrospectResponse {
                reason: error.to_string(),
                www_authenticate,
                credential_fingerprint,
                ..Default::default()
            },
        };
        Ok(Response::new(response))
    }
}

#[tonic::async_trait]
impl proto::sessions_server::Sessions for SessionsService {
    async fn login(
        &self,
        request: Request<proto::LoginRequest>,
    ) -> Result<Response<proto::SessionTokens>, Status> {
        let forwarded_for = request.metadata().get_all("x-forwarded-for");
        let forwarded_for = forwarded_for.iter().filter_map(|value| value.to_str().ok());
        let client = request.remote_addr().map(|peer| self.trusted_proxies.client(peer.ip(), forwarded_for));
        let request = request.into_inner();
        let tokens = self
            .sessions
            .login(&request.username, &Secret::new(request.password), client)
            .await
            .map_err(|error| session_status(&error))?;
        Ok(Response::new(tokens_to_proto(tokens)))
    }

    async fn refresh(
        &self,
        request: Request<proto::RefreshRequest>,
    ) -> Result<Response<proto::SessionTokens>, Status> {
        let refresh_token = Secret::new(request.into_inner().refresh_token);
        let tokens = self.sessions.refresh(&refresh_token).await.map_err(|error| session_status(&error))?;
        Ok(Response::new(tokens_to_proto(tokens)))
    }

    async fn logout(
        &self,
        request: Request<proto::LogoutRequest>,
    ) -> Result<Response<proto::LogoutResponse>, Status> {
        let token = Secret::new(request.into_inner().token);
        let revoked = self.sessions.logout(&token).await.map_err(|error| session_status(&error))?;
        Ok(Response::new(proto::LogoutResponse { revoked }))
    }
}

/// `cedargate.v1.Admin`.
#[derive(Debug, Clone)]
pub struct AdminService {
    token: Option<crate::model::SecretDigest>,
    caches: crate::credential::TokenCaches,
    /// The other replicas, when state is shared: an eviction is published to them.
    events: Option<crate::state::Events>,
    policies: Arc<PolicyReloader>,
}

impl AdminService {
    /// Serves operator calls authenticated by the bearer token whose digest is `token`.
    pub fn new(
        token: Option<crate::model::SecretDigest>,
        caches: crate::credential::TokenCaches,
        events: Option<crate::state::Events>,
        policies: Arc<PolicyReloader>,
    ) -> Self {
        Self { token, caches, events, policies }
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let presented = request.metadata().get("authorization").and_then(|value| value.to_str().ok());
        check_admin(self.token, presented).map_err(|refusal| match refusal {
            AdminRefusal::Off => Status::failed_precondition(refusal.to_string()),
            AdminRefusal::Unauthenticated => Status::unauthenticated(refusal.to_string()),
        })
    }
}

/// A moment on the wire.
fn timestamp(at: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(at)
}

/// The policy status on the wire (also the shape of `GET /policies/status`).
pub fn policy_status_to_proto(status: &PolicyStatus) -> proto::PolicyStatusResponse {
    let count = |value: u64| u32::try_from(value).unwrap_or(u32::MAX);
    proto::PolicyStatusResponse {
        revision: status.revision.clone(),
        loaded_at: Some(timestamp(status.loaded_at)),
        source: status.source.clone(),
        files: status.files.clone(),
        policy_count: u32::try_from(status.policy_count).unwrap_or(u32::MAX),
        watching: status.watching,
        reloads_succeeded: count(status.reloads_succeeded),
        reloads_failed: count(status.reloads_failed),
        last_error: status.last_error.as_ref().map(|failure| proto::PolicyReloadError {
            at: Some(timestamp(failure.at)),
            diagnostics: failure.diagnostics.clone(),
        }),
        shadow_policy_count: u32::try_from(status.shadow_policy_count).unwrap_or(u32::MAX),
        shadow_disagreements: status.shadow_disagreements,
        tenants: status
            .tenants
            .iter()
            .map(|tenant| proto::TenantPolicyStatus {
                name: tenant.name.clone(),
                revision: tenant.revision.clone(),
                loaded: tenant.loaded,
                loaded_at: Some(timestamp(tenant.loaded_at)),
                source: tenant.source.clone(),
                files: tenant.files.clone(),
                policy_count: u32::try_from(tenant.policy_count).unwrap_or(u32::MAX),
                reloads_succeeded: count(tenant.reloads_succeeded),
                reloads_failed: count(tenant.reloads_failed),
                last_error: tenant.last_error.as_ref().map(|failure| proto::PolicyReloadError {
                    at: Some(timestamp(failure.at)),
                    diagnostics: failure.diagnostics.clone(),
                }),
            })
            .collect(),
    }
}

use crate::state::Event;

#[tonic::async_trait]
impl proto::admin_server::Admin for AdminService {
    async fn evict_token(
        &self,
        request: Request<proto::EvictTokenRequest>,
    ) -> Result<Response<proto::EvictTokenResponse>, Status> {
        self.authorize(&request)?;
        let (evicted, event) = match request.into_inner().selector {
            Some(proto::evict_token_request::Selector::Token(token)) => {
                let digest = crate::model::SecretDigest::of(token.as_bytes());
                (self.caches.evict_digest(&digest), Event::Evict(digest))
            }
            Some(proto::evict_token_request::Selector::Fingerprint(fingerprint)) => {
                let fingerprint = fingerprint.to_ascii_lowercase();
                (self.caches.evict_fingerprint(&fingerprint), Event::EvictFingerprint(fingerprint))
            }
            None => return Err(Status::invalid_argument("set `token` or `fingerprint`")),
        };
        tracing::info!(evicted, "token cache eviction");
        // Every other replica evicts too; an eviction they did not hear of is an error, so the
        // operator retries rather than trusting a token gone everywhere.
        if let Some(events) = &self.events {
            events.publish(&event).await.map_err(|error| {
                Status::unavailable(format!(
                    "evicted on this replica ({evicted}), but not published to the others: {error}"
                ))
            })?;
        }
        Ok(Response::new(proto::EvictTokenResponse { evicted: u32::try_from(evicted).unwrap_or(u32::MAX) }))
    }

    async fn reload_policies(
        &self,
        request: Request<proto::ReloadPoliciesRequest>,
    ) -> Result<Response<proto::ReloadPoliciesResponse>, Status> {
        self.authorize(&request)?;
        let reloaded = self
            .policies
            .reload(ReloadTrigger::Request)
            .await
            .map_err(|error| Status::failed_precondition(error.to_string()))?;
        Ok(Response::new(proto::ReloadPoliciesResponse {
            changed: reloaded.changed,
            status: Some(policy_status_to_proto(&self.policies.status())),
        }))
    }

    async fn policy_status(
        &self,
        request: Request<proto::PolicyStatusRequest>,
    ) -> Result<Response<proto::PolicyStatusResponse>, Status> {
        self.authorize(&request)?;
        Ok(Response::new(policy_status_to_proto(&self.policies.status())))
    }
}

/// The server span of one RPC (OpenTelemetry RPC conventions), a child of the caller's trace
/// when its metadata carries a W3C `traceparent`.
pub(crate) fn rpc_span(
    service: &'static str,
    method: &'static str,
    metadata: &tonic::metadata::MetadataMap,
) -> trace::Span {
    trace::Span::server(
        format!("{service}/{method}"),
        || {
            vec![
                trace::attribute("rpc.system", "grpc"),
                trace::attribute("rpc.service", service),
                trace::attribute("rpc.method", method),
            ]
        },
        |name| metadata.get(name).and_then(|value| value.to_str().ok()),
    )
}

/// `rpc.grpc.status_code` of the answer.
pub(crate) fn record_status<T>(span: &trace::Span, answer: &Result<T, Status>) {
    let code = match answer {
        Ok(_) => 0,
        Err(status) => i64::from(i32::from(status.code())),
    };
    span.set("rpc.grpc.status_code", code);
}
