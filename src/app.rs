//! The composition root: builds every part from a [`Config`], binds, serves gRPC and HTTP,
//! runs the background tasks (among them the policy directory watch, `policy_watch`), and shuts
//! down gracefully.

mod policy_watch;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

use crate::api::ext_authz::{AuthorizationServer, ExtAuthzService};
use crate::api::ext_proc::{ExtProcService, ExternalProcessorServer};
use crate::api::grpc::{AdminService, AuthorizerService, SessionsService};
use crate::api::http::{router, HttpState, ProtectedResource};
use crate::api::proto;
use crate::api::serve::{grpc_incoming, serve_http};
use crate::config::{Config, ConfigError, IntrospectionConfig, KnownCredential, ProtectedResourceConfig};
use crate::credential::{
    CacheSettings, CachedResolver, CredentialChain, DigestTable, IntrospectionResolver,
    IntrospectionSettings, IssuerSettings, JwtResolver, TokenCaches,
};
use crate::engine::{Engine, EngineSettings, Tenant, Tenants};
use crate::gateway::mcp_sessions;
use crate::gateway::Gateway;
use crate::gateway::TrustedProxies;
use crate::model::SecretDigest;
use crate::model::{AuthInfo, CredentialKind, Scheme};
use crate::policy::{
    PolicyEngine, PolicyError, PolicyReloader, PolicySources, ReloadError, ReloadTrigger, Reloaded,
    TenantPolicies,
};
use crate::route::RouteTable;
use crate::session::{
    Account, LimitRule, LoginRateLimiter, MemoryRateLimiter, MemorySessionStore, SessionManager,
    SessionSettings, SessionStore,
};
use crate::state::{
    Event, EventHandler, Events, Redis, RedisMcpSessions, RedisRateLimiter, RedisSessionStore,
};
use crate::telemetry::decision_log::DecisionLog;
use crate::telemetry::metrics::metrics;

/// How often expired sessions and rate-limit windows are dropped.
const PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Bad policies.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A part could not be built from the configuration.
    #[error("{0}")]
    Setup(String),
    /// A socket could not be bound or served.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

/// A built service, ready to serve.
#[derive(Debug)]
pub struct App {
    config: Config,
    policy_dir: Option<PathBuf>,
    /// Every reload goes through it (watch, SIGHUP, `Admin/ReloadPolicies`), one at a time.
    policies: Arc<PolicyReloader>,
    engine: Arc<Engine>,
    gateway: Arc<Gateway>,
    sessions: Arc<SessionManager>,
    /// Where sessions and login limits live.
    state: SharedState,
    /// The JWT backend, when issuers are configured (its keys are refreshed in the background).
    jwt: Option<Arc<JwtResolver>>,
    /// The caches in front of remote or expensive backends, for eviction.
    token_caches: TokenCaches,
}

impl App {
    /// Builds every part from `config`.
    ///
    /// Fails when the policies do not load or a credential or account setting is unusable.
    pub fn build(config: Config) -> Result<Self, AppError> {
        let policy_dir = config.policy_dir();
        let sources = match &policy_dir {
            Some(dir) => PolicySources::from_dir(dir)?,
            None => PolicySources::embedded_demo(),
        };
        let policies =
            Arc::new(PolicyEngine::new(&sources)?.with_slice_cache(config.policies.slice_cache_max_policies));
        let mut tenant_policies = Vec::with_capacity(config.tenants.tenants.len());
        for name in config.tenants.tenants.keys() {
            tenant_policies.push(TenantPolicies::load(
                name,
                policy_dir.as_deref(),
                &sources,
                config.policies.slice_cache_max_policies,
            )?);
        }
        let tenant_engines: HashMap<String, Arc<PolicyEngine>> = tenant_policies
            .iter()
            .map(|tenant| (tenant.name().to_owned(), Arc::clone(tenant.engine())))
            .collect();
        let reloader = Arc::new(
            PolicyReloader::new(Arc::clone(&policies), policy_dir.clone(), sources)
                .with_tenants(tenant_policies),
        );
        let routes = RouteTable::new(config.routes.iter().map(String::as_str), config.paths.rules())
            .map_err(AppError::Setup)?;

        let state = SharedState::build(&config)?;
        let accounts: HashMap<String, Account> = config
            .sessions
            .users
            .iter()
            .map(|user| {
                let mut identity = AuthInfo::new(
                    CredentialKind::Session,
                    user.subject.clone().unwrap_or_else(|| user.username.clone()),
                    user.roles.clone(),
                );
                identity.scopes = user.scopes.clone();
                identity.tenant = user.tenant.clone();
                identity.extra.insert("username".to_owned(), user.username.clone().into());
                (user.username.clone(), Account { password_hash: user.password_hash.0.clone(), identity })
            })
            .collect();
        let sessions = Arc::new(
            SessionManager::new(
                accounts,
                Arc::clone(&state.store),
                Arc::clone(&state.limiter),
                SessionSettings {
                    access_ttl: config.sessions.access_ttl.0,
                    refresh_ttl: config.sessions.refresh_ttl.0,
                    refresh_reuse_grace: config.sessions.refresh_reuse_grace.0,
                    max_per_user: config.sessions.max_per_user,
                    max_rotations: config.sessions.max_rotations,
                },
            )
            .map_err(|error| AppError::Setup(error.to_string()))?,
        );

        let mut local = CredentialChain::default();
        let static_tokens = table("static", CredentialKind::Static, &config.credentials.static_tokens)?;
        let api_keys = table("api_key", CredentialKind::ApiKey, &config.credentials.api_keys)?;
        // Order: cheap exact lookups first, then the session store, then JWTs, each saying
        // "not mine" for what it does not know.
        local.push(Scheme::Bearer, Arc::new(static_tokens));
        local.push(Scheme::Bearer, Arc::clone(&sessions) as _);
        local.push(Scheme::ApiKey, Arc::new(api_keys));
        let cache_settings = CacheSettings {
            max_ttl: config.credentials.token_cache.max_ttl.0,
            negative_ttl: config.credentials.token_cache.negative_ttl.0,
            max_entries: config.credentials.token_cache.max_entries,
        };
        let jwt = jwt_resolver(&config)?;
        let mut token_caches = TokenCaches::default();
        let mut cached = |backend: Arc<dyn crate::credential::CredentialResolver>| {
            let cached = Arc::new(CachedResolver::new(backend, cache_settings));
            token_caches.push(Arc::clone(&cached));
            cached as Arc<dyn crate::credential::CredentialResolver>
        };
        // One JWT backend for every issuer, global and of each tenant: a token goes to its
        // `iss`, and a tenant's issuer stamps its tenant on the identity.
        let jwt_backend = jwt.as_ref().map(|jwt| cached(Arc::clone(jwt) as _));
        let mut global_introspection = Vec::new();
        for endpoint in &config.credentials.introspection {
            global_introspection.push(cached(introspection_resolver(endpoint, None)?));
        }
        let mut tenant_introspection: Vec<(&str, bool, Arc<dyn crate::credential::CredentialResolver>)> =
            Vec::new();
        for (name, tenant) in &config.tenants.tenants {
            for endpoint in &tenant.introspection {
                let backend = cached(introspection_resolver(endpoint, Some(name))?);
                tenant_introspection.push((name, !endpoint.prefixes.is_empty(), backend));
            }
        }
        // A request naming no tenant: the global backends, and a tenant's introspection
        // endpoint only for the tokens of its `prefixes` (one without would see every other
        // tenant's opaque tokens).
        let mut chain = local.clone();
        chain.extend(Scheme::Bearer, jwt_backend.iter().cloned());
        chain.extend(Scheme::Bearer, global_introspection.iter().cloned());
        chain.extend(
            Scheme::Bearer,
            tenant_introspection
                .iter()
                .filter(|(_, prefixed, _)| *prefixed)
                .map(|(_, _, backend)| Arc::clone(backend)),
        );
        // A request naming tenant T: the global backends and T's own endpoints, first.
        let mut tenants = HashMap::new();
        for (name, tenant) in &config.tenants.tenants {
            let mut chain = local.clone();
            chain.extend(Scheme::Bearer, jwt_backend.iter().cloned());
            chain.extend(
                Scheme::Bearer,
                tenant_introspection
                    .iter()
                    .filter(|(owner, _, _)| owner == name)
                    .map(|(_, _, backend)| Arc::clone(backend)),
            );
            chain.extend(Scheme::Bearer, global_introspection.iter().cloned());
            let Some(policies) = tenant_engines.get(name) else {
                return Err(AppError::Setup(format!("tenant `{name}` has no policies")));
            };
            tenants.insert(
                name.clone(),
                Tenant {
                    policies: Arc::clone(policies),
                    credentials: chain,
                    resource_metadata: tenant
                        .protected_resource
                        .as_ref()
                        .map(ProtectedResourceConfig::metadata_url),
                },
            );
        }

        let settings = EngineSettings {
            realm: config.realm.clone(),
            max_authorization_bytes: config.limits.max_authorization_bytes,
            max_batch_targets: config.limits.max_batch_targets,
            resource_metadata: config.protected_resource.as_ref().map(|resource| resource.metadata_url()),
            decision_log: Arc::new(
                DecisionLog::open(&config.decision_log_settings())
                    .map_err(|error| AppError::Setup(format!("decision_log: {error}")))?,
            ),
        };
        let engine =
            Arc::new(Engine::new(chain, policies, routes, settings).with_tenants(Tenants::new(tenants)));
        let snapshot = engine.policies().snapshot();
        metrics().policies_loaded(snapshot.revision(), snapshot.policy_count());
        tracing::info!(
            policies = engine.policies().snapshot().policy_count(),
            revision = engine.policies().snapshot().revision(),
            source = %policy_dir.as_ref().map_or_else(|| "<embedded demo>".to_owned(), |dir| dir.display().to_string()),
            "policies loaded"
        );
        let mut gateway = Gateway::new(Arc::clone(&engine), &config.gateway).with_tenants(&config.tenants);
        if let Some(redis) = &state.redis {
            gateway = gateway.with_session_bindings(Arc::clone(&redis.mcp_sessions) as _);
        }
        let gateway = Arc::new(gateway);
        Ok(Self {
            config,
            policy_dir,
            policies: reloader,
            engine,
            gateway,
            sessions,
            state,
            jwt,
            token_caches,
        })
    }

    /// The decision pipeline (also what the CLI's `check` uses).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The session manager.
    pub fn sessions(&self) -> &Arc<SessionManager> {
        &self.sessions
    }

    /// The policy reloader: reloads and the status.
    pub fn policies(&self) -> &Arc<PolicyReloader> {
        &self.policies
    }

    /// Re-reads the policy directory (off the async workers, one reload at a time); on any
    /// problem the last good set stays in force.
    ///
    /// Fails with the diagnostics of the rejected set; embedded policies cannot be reloaded.
    pub async fn reload_policies(&self) -> Result<Reloaded, ReloadError> {
        self.policies.reload(ReloadTrigger::Request).await
    }

    /// Binds the configured addresses and serves until `shutdown` completes.
    ///
    /// Fails when an address cannot be bound or a server fails.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
        let grpc = bind(self.config.listen.grpc).await?;
        let http = bind(self.config.listen.http).await?;
        let (_socket_file, unix) = match &self.config.listen.grpc_unix {
            Some(path) => {
                let (file, listener) = SocketFile::bind(self.config.resolve(path))?;
                let path = file.0.clone();
                (Some(file), Some((listener, path)))
            }
            None => (None, None),
        };
        self.serve_with_unix(grpc, unix, http, shutdown).await
    }

    /// Serves gRPC on `grpc` and HTTP on `http` (already bound, so tests can bind port 0)
    /// until `shutdown` completes, then lets in-flight requests finish.
    ///
    /// Fails when a server fails.
    pub async fn serve(
        &self,
        grpc: TcpListener,
        http: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), AppError> {
        self.serve_with_unix(grpc, None, http, shutdown).await
    }

    /// As [`App::serve`], with the gRPC services also on the Unix domain socket `unix` (the
    /// listener, and the path it is at now, for the log).
    ///
    /// Fails when a server fails.
    pub async fn serve_with_unix(
        &self,
        grpc: TcpListener,
        unix: Option<(UnixListener, PathBuf)>,
        http: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), AppError> {
        let (unix, unix_address) = match unix {
            Some((listener, path)) => (Some(listener), Some(path.display().to_string())),
            None => (None, None),
        };
        let (stop_sender, stop) = watch::channel(false);
        let ready = Arc::new(AtomicBool::new(false));
        let (health, health_service) = tonic_health::server::health_reporter();
        // Not serving until ready (below): policies are loaded by now; the JWT issuers' keys
        // may still be on their way.
        health.set_not_serving::<proto::authorizer_server::AuthorizerServer<AuthorizerService>>().await;
        health.set_not_serving::<proto::sessions_server::SessionsServer<SessionsService>>().await;
        health.set_not_serving::<AuthorizationServer<ExtAuthzService>>().await;
        health.set_not_serving::<ExternalProcessorServer<ExtProcService>>().await;
        health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1().map_err(|error| AppError::Setup(error.to_string()))?;
        let reflection_v1alpha =
            reflection().build_v1alpha().map_err(|error| AppError::Setup(error.to_string()))?;

        let grpc_address = local_address(&grpc);
        let http_address = local_address(&http);
        let listen = &self.config.listen;
        let grpc_server = tonic::transport::Server::builder()
            .layer(crate::api::panic::grpc_layer())
            .timeout(listen.request_timeout.0)
            .max_concurrent_streams(listen.grpc_max_concurrent_streams)
            .http2_keepalive_interval(Some(listen.grpc_keepalive_interval.0))
            .http2_keepalive_timeout(Some(listen.grpc_keepalive_timeout.0))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(proto::authorizer_server::AuthorizerServer::new(AuthorizerService::new(Arc::clone(
                &self.engine,
            ))))
            .add_service(proto::sessions_server::SessionsServer::new(SessionsService::new(
                Arc::clone(&self.sessions),
                TrustedProxies::new(self.config.gateway.trusted_proxies.clone()),
            )))
            .add_service(AuthorizationServer::new(ExtAuthzService::new(Arc::clone(&self.gateway))))
            // A list answer up to `max_list_bytes` arrives in one message, with room for the
            // rest of it (tonic's default bound is 4 MiB).
            .add_service(
                ExternalProcessorServer::new(ExtProcService::new(Arc::clone(&self.gateway)))
                    .max_decoding_message_size(
                        self.config
                            .gateway
                            .mcp_exchange
                            .max_list_bytes
                            .saturating_add(64 * 1024)
                            .max(4 << 20),
                    ),
            )
            .add_service(proto::admin_server::AdminServer::new(AdminService::new(
                self.config.admin.token_sha256.map(|digest| digest.0),
                self.token_caches.clone(),
                self.state.redis.as_ref().map(|redis| redis.events.clone()),
                Arc::clone(&self.policies),
            )))
            .serve_with_incoming_shutdown(grpc_incoming(grpc, unix, listen), stopped(stop.clone()));
        let http_router = router(HttpState {
            sessions: Arc::clone(&self.sessions),
            ready: Arc::clone(&ready),
            gateway: Arc::clone(&self.gateway),
            protected_resource: self
                .config
                .protected_resource
                .as_ref()
                .map(|resource| Arc::new(ProtectedResource::new(resource))),
            tenant_resources: self
                .config
                .tenants
                .tenants
                .values()
                .filter_map(|tenant| tenant.protected_resource.as_ref())
                .map(|resource| Arc::new(ProtectedResource::new(resource)))
                .collect(),
            max_gateway_body_bytes: self.config.gateway.max_body_bytes,
            trusted_proxies: TrustedProxies::new(self.config.gateway.trusted_proxies.clone()),
            forward_auth: self.config.gateway.forward_auth.convention,
            policies: Arc::clone(&self.policies),
            admin_token: self.config.admin.token_sha256.map(|digest| digest.0),
        });
        let http_server = serve_http(http, http_router, listen, stopped(stop.clone()));

        let purge = tokio::spawn(purge_task(
            Arc::clone(&self.sessions),
            self.state.memory_limiter.clone(),
            stop.clone(),
        ));
        let events = self.state.redis.as_ref().map(|redis| {
            tokio::spawn(
                redis.events.clone().listen(redis.handler(self.token_caches.clone()), stopped(stop.clone())),
            )
        });
        // There is a JWT resolver only when at least one issuer is configured.
        let refresh_interval = self
            .config
            .credentials
            .jwt
            .iter()
            .chain(self.config.tenants.tenants.values().flat_map(|tenant| &tenant.jwt))
            .map(|issuer| issuer.refresh_interval.0)
            .min();
        let jwks_refresh = self.jwt.as_ref().zip(refresh_interval).map(|(jwt, interval)| {
            tokio::spawn(Arc::clone(jwt).refresh_task(interval, stopped(stop.clone())))
        });
        let policy_watch = self.policy_dir.as_ref().filter(|_| self.config.policies.watch).map(|dir| {
            tokio::spawn(policy_watch::watch_policies_task(
                Arc::clone(&self.policies),
                dir.clone(),
                stop.clone(),
            ))
        });
        tracing::info!(grpc = %grpc_address, grpc_unix = unix_address, http = %http_address, "cedargate serving");
        // Ready (`/readyz`, gRPC health) once every required backend can answer: the JWT
        // issuers' keys are loaded (the refresh task fetches them at start and retries).
        let readiness = {
            let (ready, health, jwt, mut stop) =
                (Arc::clone(&ready), health.clone(), self.jwt.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    if jwt.as_ref().is_none_or(|jwt| jwt.has_keys()) {
                        break;
                    }
                    tokio::select! {
                        _ = stop.changed() => return,
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
                health.set_serving::<proto::authorizer_server::AuthorizerServer<AuthorizerService>>().await;
                health.set_serving::<proto::sessions_server::SessionsServer<SessionsService>>().await;
                health.set_serving::<AuthorizationServer<ExtAuthzService>>().await;
                health.set_serving::<ExternalProcessorServer<ExtProcService>>().await;
                health.set_service_status("", tonic_health::ServingStatus::Serving).await;
                ready.store(true, Ordering::Release);
                tracing::info!("ready");
            })
        };

        let http_server = async {
            http_server.await;
            Ok(())
        };
        let grpc_server = async { grpc_server.await.map_err(AppError::from) };
        let servers = async { tokio::try_join!(grpc_server, http_server).map(|_| ()) };
        tokio::pin!(servers, shutdown);
        let result = tokio::select! {
            // A server only ends by itself when it fails.
            result = &mut servers => result,
            () = &mut shutdown => {
                tracing::info!("shutting down: finishing in-flight requests");
                readiness.abort();
                ready.store(false, Ordering::Release);
                // Every service and the server as a whole, so a balancer probing any of them
                // stops sending new work.
                health.set_not_serving::<proto::authorizer_server::AuthorizerServer<AuthorizerService>>().await;
                health.set_not_serving::<proto::sessions_server::SessionsServer<SessionsService>>().await;
                health.set_not_serving::<AuthorizationServer<ExtAuthzService>>().await;
                health.set_not_serving::<ExternalProcessorServer<ExtProcService>>().await;
                health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
                let _ = stop_sender.send(true);
                let grace = self.config.listen.shutdown_grace.0;
                match tokio::time::timeout(grace, &mut servers).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::warn!(grace_seconds = grace.as_secs(), "shutdown grace period over; closing the remaining connections");
                        Ok(())
                    }
                }
            }
        };
        let _ = stop_sender.send(true);
        let _ = purge.await;
        if let Some(events) = events {
            let _ = events.await;
        }
        if let Some(refresh) = jwks_refresh {
            let _ = refresh.await;
        }
        // The watcher's thread ends with its task.
        if let Some(policy_watch) = policy_watch {
            let _ = policy_watch.await;
        }
        // Every record of a decision made is written before the process says it stopped.
        self.engine.decision_log().flush();
        tracing::info!("cedargate stopped");
        result
    }

    /// Reloads policies on every SIGHUP; a bad set is logged and the last good one kept.
    #[cfg(unix)]
    pub async fn reload_on_sighup_task(self: Arc<Self>) {
        let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; policy reload by signal is off");
            return;
        };
        while hangups.recv().await.is_some() {
            // The reloader logs the outcome, a refusal with its diagnostics.
            if let Err(ReloadError::Embedded) = self.policies.reload(ReloadTrigger::Signal).await {
                tracing::warn!("SIGHUP: {}", ReloadError::Embedded);
            }
        }
    }
}

/// The HTTP client for authorization servers: bounded, and never following a redirect to
/// somewhere the config did not name.
fn http_client() -> Result<reqwest::Client, AppError> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|error| AppError::Setup(format!("HTTP client: {error}")))
}

fn jwt_resolver(config: &Config) -> Result<Option<Arc<JwtResolver>>, AppError> {
    let all = config.credentials.jwt.iter().map(|issuer| (issuer, None)).chain(
        config
            .tenants
            .tenants
            .iter()
            .flat_map(|(name, tenant)| tenant.jwt.iter().map(move |issuer| (issuer, Some(name.clone())))),
    );
    let mut issuers = Vec::new();
    for (issuer, tenant) in all {
        let mut claims = issuer.claims.mapping();
        claims.issuer_tenant = tenant;
        issuers.push(IssuerSettings {
            issuer: issuer.issuer.clone(),
            audiences: issuer.audiences.clone(),
            algorithms: issuer.algorithm_list().map_err(AppError::Setup)?,
            leeway: issuer.leeway.0,
            strict_rfc9068: issuer.strict_rfc9068,
            claims,
            keys: issuer.key_source().map_err(AppError::Setup)?,
            refetch_interval: issuer.refetch_interval.0,
        });
    }
    if issuers.is_empty() {
        return Ok(None);
    }
    // A JWT of an issuer not listed here goes on only when an introspection endpoint takes it.
    let pass_on_untrusted = config
        .credentials
        .introspection
        .iter()
        .chain(config.tenants.tenants.values().flat_map(|tenant| &tenant.introspection))
        .any(|endpoint| endpoint.accept_jwts);
    Ok(Some(Arc::new(JwtResolver::new(issuers, http_client()?).pass_on_untrusted(pass_on_untrusted))))
}

/// The backend of one introspection endpoint; `tenant`: the tenant it is configured under.
fn introspection_resolver(
    endpoint: &IntrospectionConfig,
    tenant: Option<&str>,
) -> Result<Arc<dyn crate::credential::CredentialResolver>, AppError> {
    let mut claims = endpoint.claims.mapping();
    claims.issuer_tenant = tenant.map(str::to_owned);
    let settings = IntrospectionSettings {
        endpoint: endpoint.location().map_err(AppError::Setup)?,
        auth: endpoint.client_auth().map_err(AppError::Setup)?,
        token_type_hint: Some(endpoint.token_type_hint.clone()).filter(|hint| !hint.is_empty()),
        prefixes: endpoint.prefixes.clone(),
        audiences: endpoint.audiences.clone(),
        claims,
        timeout: endpoint.timeout.0,
        accept_jwts: endpoint.accept_jwts,
    };
    Ok(Arc::new(IntrospectionResolver::new(settings, http_client()?)))
}

fn table(
    name: &'static str,
    kind: CredentialKind,
    entries: &[KnownCredential],
) -> Result<DigestTable, AppError> {
    let rows = entries.iter().filter_map(|entry| {
        let mut auth = AuthInfo::new(kind, entry.subject.clone(), entry.roles.clone());
        auth.scopes = entry.scopes.clone();
        auth.tenant = entry.tenant.clone();
        auth.client_id = entry.client_id.clone();
        auth.expires_at = entry.expires_at.map(|timestamp| timestamp.0);
        entry.digest().map(|digest| (digest, auth))
    });
    DigestTable::new(name, rows).map_err(AppError::Setup)
}

/// The gRPC port's Unix domain socket file, removed when dropped (at shutdown).
#[derive(Debug)]
struct SocketFile(PathBuf);

impl SocketFile {
    /// Binds `path`, owner and group only. A socket left there by a run that did not shut
    /// down is replaced; a socket something still listens on, or any other file, is an error.
    fn bind(path: PathBuf) -> Result<(Self, UnixListener), AppError> {
        use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
        let setup = |what: String| AppError::Setup(format!("listen.grpc_unix {}: {what}", path.display()));
        if let Ok(existing) = std::fs::symlink_metadata(&path) {
            if !existing.file_type().is_socket() {
                return Err(setup("exists and is not a socket; refusing to replace it".to_owned()));
            }
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                return Err(setup("another process is listening on it".to_owned()));
            }
            std::fs::remove_file(&path)
                .map_err(|error| setup(format!("cannot remove the stale socket: {error}")))?;
        }
        // Bound under a name nobody knows, narrowed to 0660, then renamed into place: no one can
        // connect while it still has the umask's permissions.
        let name = path.file_name().map_or_else(|| "grpc".into(), |name| name.to_string_lossy().into_owned());
        let staging = Self(path.with_file_name(format!(".{name}.{:016x}", rand::random::<u64>())));
        let listener = UnixListener::bind(&staging.0)
            .map_err(|source| AppError::Io { context: format!("cannot bind {}", path.display()), source })?;
        std::fs::set_permissions(&staging.0, std::fs::Permissions::from_mode(0o660))
            .map_err(|error| setup(format!("cannot set its permissions: {error}")))?;
        std::fs::rename(&staging.0, &path)
            .map_err(|error| setup(format!("cannot put it in place: {error}")))?;
        // `staging` is dropped with nothing left at its name; on an error above, it removes it.
        Ok((Self(path), listener))
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn bind(address: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| AppError::Io { context: format!("cannot bind {address}"), source })
}

fn local_address(listener: &TcpListener) -> String {
    listener.local_addr().map_or_else(|_| "?".to_owned(), |address| address.to_string())
}

/// Completes once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Where sessions and login limits live: this process's memory, or a Redis every replica
/// shares.
#[derive(Debug)]
struct SharedState {
    store: Arc<dyn SessionStore>,
    limiter: Arc<dyn LoginRateLimiter>,
    /// The in-memory limiter, purged by the background task (Redis expires its own keys).
    memory_limiter: Option<Arc<MemoryRateLimiter>>,
    redis: Option<RedisState>,
}

/// The Redis side of [`SharedState`]: the events every replica hears, and what they change.
#[derive(Debug)]
struct RedisState {
    events: Events,
    sessions: Arc<RedisSessionStore>,
    /// Who each MCP session belongs to, for the gateway.
    mcp_sessions: Arc<RedisMcpSessions>,
}

impl SharedState {
    fn build(config: &Config) -> Result<Self, AppError> {
        let limits = &config.sessions.login_rate_limit;
        let per_username = LimitRule {
            max_failures: limits.per_username.max_failures,
            window: limits.per_username.window.0,
        };
        let per_address =
            LimitRule { max_failures: limits.per_address.max_failures, window: limits.per_address.window.0 };
        let Some(redis) = &config.state.redis else {
            let limiter = Arc::new(MemoryRateLimiter::new(per_username, per_address));
            return Ok(Self {
                store: Arc::new(MemorySessionStore::default()),
                limiter: Arc::clone(&limiter) as _,
                memory_limiter: Some(limiter),
                redis: None,
            });
        };
        let settings = redis.settings(|path| config.resolve(path)).map_err(AppError::Setup)?;
        let redis = Redis::new(settings).map_err(AppError::Setup)?;
        let sessions = Arc::new(RedisSessionStore::new(redis.clone()));
        let exchange = &config.gateway.mcp_exchange;
        let mcp_sessions = Arc::new(RedisMcpSessions::new(
            redis.clone(),
            exchange.session_ttl.0,
            exchange.max_sessions_per_caller,
        ));
        Ok(Self {
            store: Arc::clone(&sessions) as _,
            limiter: Arc::new(RedisRateLimiter::new(redis.clone(), per_username, per_address)),
            memory_limiter: None,
            redis: Some(RedisState { events: Events::new(redis), sessions, mcp_sessions }),
        })
    }
}

impl RedisState {
    /// What this replica does on each event: forget a revoked session's copy, evict a token.
    fn handler(&self, caches: TokenCaches) -> EventHandler {
        let sessions = Arc::clone(&self.sessions);
        Arc::new(move |event: &Event| match event {
            Event::Revoked(access) => sessions.forget(access),
            Event::Evict(digest) => {
                caches.evict_digest(digest);
            }
            Event::EvictFingerprint(fingerprint) => {
                caches.evict_fingerprint(fingerprint);
            }
            // Evictions may have been missed too: the token caches start over.
            Event::Resync => {
                sessions.forget_all();
                caches.clear();
            }
        })
    }
}

/// MCP session bindings in Redis, as the gateway asks for them.
#[async_trait::async_trait]
impl mcp_sessions::Bindings for RedisMcpSessions {
    async fn bind(&self, session: &SecretDigest, owner: &mcp_sessions::Owner) -> Result<bool, String> {
        RedisMcpSessions::bind(self, session, owner.digest()).await.map_err(|error| error.to_string())
    }

    async fn standing(
        &self,
        session: &SecretDigest,
        owner: &mcp_sessions::Owner,
    ) -> Result<mcp_sessions::Standing, String> {
        match RedisMcpSessions::standing(self, session, owner.digest()).await {
            Ok(None) => Ok(mcp_sessions::Standing::Unknown),
            Ok(Some(bound)) if bound.ct_eq(owner.digest()) => Ok(mcp_sessions::Standing::Owned),
            Ok(Some(_)) => Ok(mcp_sessions::Standing::Foreign),
            Err(error) => Err(error.to_string()),
        }
    }

    async fn end(&self, session: &SecretDigest) -> Result<(), String> {
        RedisMcpSessions::end(self, session).await.map_err(|error| error.to_string())
    }
}

/// Drops expired sessions and rate-limit windows every minute until `stop`.
async fn purge_task(
    sessions: Arc<SessionManager>,
    limiter: Option<Arc<MemoryRateLimiter>>,
    stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(PURGE_INTERVAL);
    ticker.tick().await;
    let stopping = stopped(stop);
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            () = &mut stopping => return,
            _ = ticker.tick() => {
                if let Err(error) = sessions.store().purge_expired(crate::model::unix_now()).await {
                    tracing::warn!("session purge failed: {error}");
                }
                if let Some(limiter) = &limiter {
                    limiter.purge_expired();
                }
            }
        }
    }
}
