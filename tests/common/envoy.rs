//! A real Envoy (`.tools/bin/envoy`, installed by `scripts/install-test-deps.sh`) in front of the
//! test upstreams, configured from an [`EnvoyConfig`]: a plain proxy, ext_authz over gRPC or
//! HTTP, or Envoy's own `jwt_authn` + `rbac` as the baseline to compare cedargate against.
//!
//! [`Envoy::start_example`] runs the shipped `examples/envoy/envoy.yaml` instead, with only its
//! addresses replaced.
//!
//! Every port is ephemeral: admin and the listener bind `127.0.0.1:0`, the admin address is read
//! from `--admin-address-path` and the listener port from the admin API.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tempfile::TempDir;

/// The path the protected-resource metadata lives under; routed to cedargate's HTTP port.
pub const METADATA_PREFIX: &str = "/.well-known/oauth-protected-resource";

const EXT_AUTHZ: &str = "envoy.filters.http.ext_authz";
const EXT_PROC: &str = "envoy.filters.http.ext_proc";
const JWT_AUTHN: &str = "envoy.filters.http.jwt_authn";
const JWT_PROVIDER: &str = "test-issuer";
/// The shipped Envoy example, relative to the crate root.
pub const EXAMPLE: &str = "examples/envoy/envoy.yaml";
const STARTUP: Duration = Duration::from_secs(30);
const HCM: &str = "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const CONNECTION_LIMIT: &str =
    "extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig";

/// Who decides at the proxy.
#[derive(Debug, Clone)]
pub enum Auth {
    /// A plain proxy.
    None,
    /// `ext_authz` calling `envoy.service.auth.v3.Authorization/Check` over HTTP/2 at `addr`.
    ExtAuthzGrpc { addr: SocketAddr, with_body: bool },
    /// The same over the Unix domain socket at `path` (Envoy's `pipe` address).
    ExtAuthzGrpcPipe { path: std::path::PathBuf, with_body: bool },
    /// `ext_authz` in HTTP mode: the request's method, `path_prefix` + path and the allowed headers
    /// go to `addr`; a 200 lets the request through with its `x-auth-*` headers.
    ExtAuthzHttp { addr: SocketAddr, path_prefix: String, with_body: bool },
    /// Envoy alone: `jwt_authn` verifies the JWT against the inline JWKS (401 on a missing or bad
    /// token), then `rbac` admits a path under `path_prefix` only when the token's `roles` claim
    /// holds `role` (403 otherwise); other paths need only a valid token.
    JwtRbac { issuer: String, audience: String, jwks: String, role: String, path_prefix: String },
}

/// What the Envoy in front of the test upstreams looks like.
#[derive(Debug, Clone)]
pub struct EnvoyConfig {
    /// Where every route goes unless said otherwise.
    pub upstream: SocketAddr,
    /// Exactly `/mcp` goes here (the MCP server); `/mcp/invoke` and the rest stay on `upstream`.
    pub mcp_upstream: Option<SocketAddr>,
    /// [`METADATA_PREFIX`] and `/auth/` (login, refresh, logout) go here (cedargate's HTTP
    /// port), without ext_authz.
    pub metadata_upstream: Option<SocketAddr>,
    pub auth: Auth,
    /// Per path prefix, the `context_extensions` ext_authz sends with the check. Each entry is a
    /// route of its own, tried in order before the catch-all; the `/mcp` route takes the entry
    /// with the longest prefix of `/mcp`.
    pub context_extensions: Vec<(String, Vec<(String, String)>)>,
    /// Envoy's worker threads.
    pub concurrency: u32,
    /// cedargate's ext_proc server on the `/mcp` route (before ext_authz), as the shipped
    /// example configures it.
    pub ext_proc: Option<SocketAddr>,
    /// Put ext_proc after ext_authz instead.
    pub ext_proc_after_authz: bool,
}

impl EnvoyConfig {
    /// A plain proxy to `upstream` with one worker.
    pub fn new(upstream: SocketAddr) -> Self {
        Self {
            upstream,
            mcp_upstream: None,
            metadata_upstream: None,
            auth: Auth::None,
            context_extensions: Vec::new(),
            concurrency: 1,
            ext_proc: None,
            ext_proc_after_authz: false,
        }
    }

    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    pub fn with_mcp(mut self, mcp: SocketAddr) -> Self {
        self.mcp_upstream = Some(mcp);
        self
    }

    pub fn with_metadata(mut self, cedargate_http: SocketAddr) -> Self {
        self.metadata_upstream = Some(cedargate_http);
        self
    }

    pub fn with_context_extensions(mut self, prefix: &str, pairs: &[(&str, &str)]) -> Self {
        let pairs = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        self.context_extensions.push((prefix.to_owned(), pairs));
        self
    }

    pub fn with_ext_proc(mut self, cedargate_grpc: SocketAddr) -> Self {
        self.ext_proc = Some(cedargate_grpc);
        self
    }

    pub fn with_ext_proc_after_authz(mut self, cedargate_grpc: SocketAddr) -> Self {
        self.ext_proc = Some(cedargate_grpc);
        self.ext_proc_after_authz = true;
        self
    }

    pub fn with_concurrency(mut self, concurrency: u32) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// The bootstrap, as YAML.
    pub fn render(&self) -> String {
        serde_yaml::to_string(&self.bootstrap()).unwrap()
    }

    fn bootstrap(&self) -> Value {
        let mut clusters = vec![cluster("upstream", self.upstream, false)];
        if let Some(mcp) = self.mcp_upstream {
            clusters.push(cluster("mcp", mcp, false));
        }
        if let Some(metadata) = self.metadata_upstream {
            clusters.push(cluster("metadata", metadata, false));
        }
        match &self.auth {
            Auth::ExtAuthzGrpc { addr, .. } => clusters.push(cluster("ext_authz", *addr, true)),
            Auth::ExtAuthzGrpcPipe { path, .. } => {
                let mut pipe = cluster("ext_authz", "127.0.0.1:9".parse().unwrap(), true);
                pipe["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] =
                    json!({ "pipe": { "path": path.to_str().unwrap() } });
                clusters.push(pipe);
            }
            Auth::ExtAuthzHttp { addr, .. } => clusters.push(cluster("ext_authz", *addr, false)),
            Auth::None | Auth::JwtRbac { .. } => {}
        }

        let mut http_filters = Vec::new();
        if let Some(addr) = self.ext_proc {
            clusters.push(cluster("ext_proc", addr, true));
        }
        match (self.ext_proc, self.ext_proc_after_authz) {
            // Before ext_authz: it sees the request as the client sent it, and the replies
            // ext_authz makes pass back through it like any other answer.
            (Some(_), false) => {
                http_filters.push(ext_proc_filter());
                http_filters.extend(self.auth_filters());
            }
            // After: it reads the identity ext_authz established from the dynamic metadata.
            (Some(_), true) => {
                http_filters.extend(self.auth_filters());
                http_filters.push(ext_proc_filter());
            }
            (None, _) => http_filters.extend(self.auth_filters()),
        }
        http_filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": { "@type": any_type("extensions.filters.http.router.v3.Router") }
        }));

        json!({
            "admin": { "address": socket_address("127.0.0.1".parse().unwrap(), 0) },
            // A connection limit, as Envoy asks of every deployment (it warns at start-up without
            // one); far above what a test or a benchmark opens.
            "overload_manager": { "resource_monitors": [{
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": any_type(CONNECTION_LIMIT),
                    "max_active_downstream_connections": 100000,
                }
            }]},
            "static_resources": {
                "listeners": [{
                    "name": "ingress",
                    "address": socket_address("127.0.0.1".parse().unwrap(), 0),
                    "filter_chains": [{
                        "filters": [{
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": {
                                "@type": any_type(HCM),
                                "stat_prefix": "ingress",
                                "codec_type": "AUTO",
                                // An edge proxy: Envoy appends the peer to x-forwarded-for
                                // (for a loopback peer, the host's own address instead).
                                "use_remote_address": true,
                                "route_config": {
                                    "name": "local",
                                    "virtual_hosts": [self.virtual_host()]
                                },
                                "http_filters": http_filters,
                            }
                        }]
                    }]
                }],
                "clusters": clusters,
            }
        })
    }

    fn virtual_host(&self) -> Value {
        let mut host = json!({ "name": "all", "domains": ["*"], "routes": self.routes() });
        if matches!(self.auth, Auth::ExtAuthzGrpc { .. } | Auth::ExtAuthzGrpcPipe { .. }) {
            // Shows the client what ext_authz put into the dynamic metadata for other filters.
            host["response_headers_to_add"] = json!([{
                "header": {
                    "key": "x-ext-authz-subject",
                    "value": "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:subject)%",
                },
            }]);
        }
        host
    }

    fn auth_filters(&self) -> Vec<Value> {
        match &self.auth {
            Auth::None => Vec::new(),
            Auth::ExtAuthzGrpc { with_body, .. } | Auth::ExtAuthzGrpcPipe { with_body, .. } => {
                let mut config = json!({
                    "@type": any_type("extensions.filters.http.ext_authz.v3.ExtAuthz"),
                    "transport_api_version": "V3",
                    "failure_mode_allow": false,
                    "include_peer_certificate": true,
                    "grpc_service": { "envoy_grpc": { "cluster_name": "ext_authz" }, "timeout": "2s" },
                });
                if *with_body {
                    config["with_request_body"] = request_body();
                }
                vec![json!({ "name": EXT_AUTHZ, "typed_config": config })]
            }
            Auth::ExtAuthzHttp { addr, path_prefix, with_body } => {
                let exact = |names: &[&str]| -> Value {
                    let patterns: Vec<Value> =
                        names.iter().map(|n| json!({ "exact": n, "ignore_case": true })).collect();
                    json!({ "patterns": patterns })
                };
                let mut config = json!({
                    "@type": any_type("extensions.filters.http.ext_authz.v3.ExtAuthz"),
                    "transport_api_version": "V3",
                    "failure_mode_allow": false,
                    "include_peer_certificate": true,
                    // The filter-level list; http_service.authorization_request.allowed_headers is
                    // deprecated in favour of it.
                    "allowed_headers": exact(&[
                        "authorization", "x-api-key", "cookie", "mcp-method", "mcp-name",
                        "content-type", "x-forwarded-for",
                    ]),
                    "http_service": {
                        "server_uri": {
                            "uri": format!("http://{addr}"), "cluster": "ext_authz", "timeout": "2s",
                        },
                        "path_prefix": path_prefix,
                        "authorization_response": {
                            // `cookie`: cedargate rewrites it to drop an API key cookie.
                            "allowed_upstream_headers": {
                                "patterns": [{ "prefix": "x-auth-" }, { "exact": "cookie" }]
                            },
                            "allowed_client_headers": exact(&["www-authenticate", "content-type"]),
                        }
                    },
                });
                if *with_body {
                    config["with_request_body"] = request_body();
                }
                vec![json!({ "name": EXT_AUTHZ, "typed_config": config })]
            }
            Auth::JwtRbac { issuer, audience, jwks, role, path_prefix } => {
                let mut rules = Vec::new();
                if self.metadata_upstream.is_some() {
                    // The metadata is public: a rule without `requires` verifies nothing.
                    rules.push(json!({ "match": { "prefix": METADATA_PREFIX } }));
                }
                rules.push(
                    json!({ "match": { "prefix": "/" }, "requires": { "provider_name": JWT_PROVIDER } }),
                );
                let jwt = json!({
                    "name": JWT_AUTHN,
                    "typed_config": {
                        "@type": any_type("extensions.filters.http.jwt_authn.v3.JwtAuthentication"),
                        "providers": { JWT_PROVIDER: {
                            "issuer": issuer,
                            "audiences": [audience],
                            "local_jwks": { "inline_string": jwks },
                            "forward": true,
                            "payload_in_metadata": "jwt_payload",
                        }},
                        "rules": rules,
                    }
                });
                let under_prefix = json!({ "url_path": { "path": { "prefix": path_prefix } } });
                let rbac = json!({
                    "name": "envoy.filters.http.rbac",
                    "typed_config": {
                        "@type": any_type("extensions.filters.http.rbac.v3.RBAC"),
                        "rules": {
                            "action": "ALLOW",
                            "policies": {
                                // Under the prefix, the role is required ...
                                "role-on-prefix": {
                                    "permissions": [under_prefix],
                                    // `sourced_metadata`: `Principal.metadata` is deprecated.
                                    "principals": [{ "sourced_metadata": { "metadata_matcher": {
                                        "filter": JWT_AUTHN,
                                        "path": [{ "key": "jwt_payload" }, { "key": "roles" }],
                                        "value": { "list_match": { "one_of": {
                                            "string_match": { "exact": role },
                                        }}},
                                    }}}],
                                },
                                // ... elsewhere the verified token is enough.
                                "elsewhere": {
                                    "permissions": [{ "not_rule": under_prefix }],
                                    "principals": [{ "any": true }],
                                },
                            }
                        }
                    }
                });
                vec![jwt, rbac]
            }
        }
    }

    fn routes(&self) -> Vec<Value> {
        let ext_authz = matches!(
            self.auth,
            Auth::ExtAuthzGrpc { .. } | Auth::ExtAuthzGrpcPipe { .. } | Auth::ExtAuthzHttp { .. }
        );
        let extensions = |pairs: &[(String, String)]| -> Option<Value> {
            ext_authz.then(|| {
                let map: Map<String, Value> =
                    pairs.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
                json!({ EXT_AUTHZ: {
                    "@type": any_type("extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"),
                    "check_settings": { "context_extensions": map },
                }})
            })
        };
        let ext_proc = self.ext_proc.is_some();
        let route = |name: &str, matcher: Value, cluster: &str, per_filter: Option<Value>| -> Value {
            let mut route = json!({ "name": name, "match": matcher, "route": { "cluster": cluster } });
            if let Some(per_filter) = per_filter {
                route["typed_per_filter_config"] = per_filter;
            }
            // Only the MCP endpoint's exchanges are cedargate's to follow.
            if ext_proc && name != "mcp" {
                route["typed_per_filter_config"][EXT_PROC] = json!({
                    "@type": any_type("extensions.filters.http.ext_proc.v3.ExtProcPerRoute"),
                    "disabled": true,
                });
            }
            if ext_proc && name == "mcp" {
                // Tool calls and event streams may last.
                route["route"]["timeout"] = json!("0s");
            }
            route
        };

        let mut routes = Vec::new();
        if self.metadata_upstream.is_some() {
            let disabled = ext_authz.then(|| {
                json!({ EXT_AUTHZ: {
                    "@type": any_type("extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"),
                    "disabled": true,
                }})
            });
            routes.push(route(
                "metadata",
                json!({ "prefix": METADATA_PREFIX }),
                "metadata",
                disabled.clone(),
            ));
            // The seed's login, refresh and logout live on cedargate's HTTP port too.
            routes.push(route("sessions", json!({ "prefix": "/auth/" }), "metadata", disabled));
        }
        if self.mcp_upstream.is_some() {
            let for_mcp = self
                .context_extensions
                .iter()
                .filter(|(prefix, _)| "/mcp".starts_with(prefix.as_str()))
                .max_by_key(|(prefix, _)| prefix.len())
                .and_then(|(_, pairs)| extensions(pairs));
            routes.push(route("mcp", json!({ "path": "/mcp" }), "mcp", for_mcp));
        }
        for (i, (prefix, pairs)) in self.context_extensions.iter().enumerate() {
            let name = format!("context-{i}");
            routes.push(route(&name, json!({ "prefix": prefix }), "upstream", extensions(pairs)));
        }
        routes.push(route("default", json!({ "prefix": "/" }), "upstream", None));
        routes
    }
}

/// cedargate's ext_proc filter as `examples/envoy/envoy.yaml` has it: request headers and the
/// buffered body, and what cedargate asks for beyond (an MCP exchange's response headers, a
/// list answer's body); closed when cedargate cannot be reached; ext_authz's dynamic metadata
/// with each message.
fn ext_proc_filter() -> Value {
    let mut filter = json!({
        "name": EXT_PROC,
        "typed_config": {
            "@type": any_type("extensions.filters.http.ext_proc.v3.ExternalProcessor"),
            "grpc_service": { "envoy_grpc": { "cluster_name": "ext_proc" }, "timeout": "5s" },
            "failure_mode_allow": false,
            "allow_mode_override": true,
            "message_timeout": "5s",
            "processing_mode": {
                "request_header_mode": "SEND",
                "request_body_mode": "BUFFERED",
                "response_header_mode": "SKIP",
                "response_body_mode": "NONE",
                "request_trailer_mode": "SKIP",
                "response_trailer_mode": "SKIP",
            },
            "request_attributes": ["source.address"],
        }
    });
    // What ext_authz decided the request with (the caller, the facts, the server) comes along
    // once it ran: before ext_authz, from the response on; after it, from the start.
    filter["typed_config"]["metadata_options"] =
        json!({ "forwarding_namespaces": { "untyped": [EXT_AUTHZ] } });
    filter
}

/// `examples/envoy/envoy.yaml` with admin and `ingress` on `127.0.0.1:0` and the endpoints of
/// each named cluster at its address, as YAML.
fn example_bootstrap(clusters: &[(&str, SocketAddr)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(EXAMPLE);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut bootstrap: Value =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{EXAMPLE} is not YAML: {e}"));
    let loopback = "127.0.0.1".parse().unwrap();

    assert!(bootstrap["admin"]["address"].is_object(), "{EXAMPLE} has no admin.address");
    bootstrap["admin"]["address"] = socket_address(loopback, 0);
    let resources = &mut bootstrap["static_resources"];
    let ingress = resources["listeners"]
        .as_array_mut()
        .and_then(|listeners| listeners.iter_mut().find(|l| l["name"] == "ingress"))
        .unwrap_or_else(|| panic!("{EXAMPLE} has no listener named ingress"));
    ingress["address"] = socket_address(loopback, 0);

    let all = resources["clusters"]
        .as_array_mut()
        .unwrap_or_else(|| panic!("{EXAMPLE} has no static_resources.clusters"));
    for (name, addr) in clusters {
        let known: Vec<String> = all.iter().filter_map(|c| c["name"].as_str().map(str::to_owned)).collect();
        let cluster = all
            .iter_mut()
            .find(|c| c["name"] == *name)
            .unwrap_or_else(|| panic!("{EXAMPLE} has no cluster {name:?} (it has {known:?})"));
        let endpoints = cluster["load_assignment"]["endpoints"]
            .as_array_mut()
            .unwrap_or_else(|| panic!("cluster {name:?} in {EXAMPLE} has no load_assignment.endpoints"));
        let mut replaced = 0;
        for locality in endpoints {
            for endpoint in locality["lb_endpoints"].as_array_mut().into_iter().flatten() {
                endpoint["endpoint"]["address"] = socket_address(addr.ip(), addr.port());
                replaced += 1;
            }
        }
        assert!(replaced > 0, "cluster {name:?} in {EXAMPLE} has no lb_endpoints");
    }
    serde_yaml::to_string(&bootstrap).unwrap()
}

/// The `@type` of an `Any` holding the Envoy message `envoy.<name>`.
fn any_type(name: &str) -> String {
    format!("type.googleapis.com/envoy.{name}")
}

fn socket_address(ip: std::net::IpAddr, port: u16) -> Value {
    json!({ "socket_address": { "address": ip.to_string(), "port_value": port } })
}

fn cluster(name: &str, addr: SocketAddr, http2: bool) -> Value {
    let mut cluster = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{
                "endpoint": { "address": socket_address(addr.ip(), addr.port()) },
            }]}]
        }
    });
    if http2 {
        cluster["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": any_type("extensions.upstreams.http.v3.HttpProtocolOptions"),
                "explicit_http_config": { "http2_protocol_options": {} }
            }
        });
    }
    cluster
}

fn request_body() -> Value {
    json!({ "max_request_bytes": 65536, "allow_partial_message": false, "pack_as_bytes": true })
}

/// A running Envoy; killed and reaped when dropped.
pub struct Envoy {
    /// The HTTP listener.
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    child: Child,
    dir: TempDir,
}

impl Envoy {
    /// Renders `config` into a temporary directory, starts Envoy on it and waits until the admin
    /// API says LIVE. Panics with Envoy's stderr when it does not come up within 30 s.
    pub async fn start(config: &EnvoyConfig) -> Self {
        Self::start_bootstrap(config.render(), config.concurrency).await
    }

    /// Runs the shipped `examples/envoy/envoy.yaml` as it is, except for its addresses: admin and
    /// the `ingress` listener bind `127.0.0.1:0`, and its clusters point at cedargate's `grpc`
    /// (ext_authz, ext_proc) and `http` ports, the `app` and the `mcp` server. Panics on a
    /// cluster or listener the example does not have. One worker.
    pub async fn start_example(grpc: SocketAddr, http: SocketAddr, app: SocketAddr, mcp: SocketAddr) -> Self {
        let clusters = [("cedargate", grpc), ("cedargate_http", http), ("app", app), ("mcp", mcp)];
        Self::start_bootstrap(example_bootstrap(&clusters), 1).await
    }

    /// Writes `yaml` into a temporary directory as the bootstrap, starts Envoy on it with
    /// `concurrency` workers and waits until the admin API says LIVE and the `ingress` listener is
    /// bound. The bootstrap must bind admin and `ingress` on port 0 (or a free port). Panics with
    /// Envoy's stderr when it does not come up within 30 s.
    pub async fn start_bootstrap(yaml: String, concurrency: u32) -> Self {
        let binary = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/envoy");
        assert!(binary.exists(), "{} is missing: run scripts/install-test-deps.sh", binary.display());
        let dir = tempfile::tempdir().unwrap();
        let bootstrap = dir.path().join("envoy.yaml");
        let admin_path = dir.path().join("admin-address");
        std::fs::write(&bootstrap, yaml).unwrap();
        let stderr = File::create(dir.path().join("envoy.stderr")).unwrap();
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&bootstrap)
            .args(["--disable-hot-restart", "--concurrency", &concurrency.to_string()])
            .args(["-l", "warn", "--admin-address-path"])
            .arg(&admin_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("envoy starts");
        // From here on a panic drops `envoy`, which kills the process.
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut envoy = Self { addr: unbound, admin: unbound, child, dir };
        let deadline = Instant::now() + STARTUP;
        let admin = envoy
            .wait_for("the admin address", deadline, || {
                let read = std::fs::read_to_string(&admin_path);
                async move { read.ok()?.trim().parse::<SocketAddr>().ok() }
            })
            .await;
        envoy.admin = admin;
        envoy
            .wait_for("LIVE on /ready", deadline, || async move {
                let (status, body) = admin_get(admin, "/ready").await.ok()?;
                (status == 200 && body.trim() == "LIVE").then_some(())
            })
            .await;
        envoy.addr = envoy
            .wait_for("a bound listener", deadline, || async move {
                listener_addr(&admin_get(admin, "/listeners?format=json").await.ok()?.1)
            })
            .await;
        envoy
    }

    /// `http://127.0.0.1:<listener port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GET on the admin API: (status, body).
    pub async fn admin_get(&self, path: &str) -> reqwest::Result<(u16, String)> {
        admin_get(self.admin, path).await
    }

    /// A counter or gauge from the admin API (`/stats?format=json`), when Envoy has it.
    pub async fn stat(&self, name: &str) -> Option<u64> {
        let (_, body) = self.admin_get(&format!("/stats?format=json&filter=^{name}$")).await.ok()?;
        let stats: Value = serde_json::from_str(&body).ok()?;
        stats["stats"].as_array()?.iter().find(|s| s["name"] == name)?["value"].as_u64()
    }

    /// What Envoy wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr_path()).unwrap_or_default()
    }

    /// The bootstrap Envoy runs on.
    pub fn bootstrap_path(&self) -> PathBuf {
        self.dir.path().join("envoy.yaml")
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("envoy.stderr")
    }

    /// Polls `probe` until it answers, Envoy exits or the deadline passes; then panics with the
    /// tail of Envoy's stderr.
    async fn wait_for<T, Fut>(&mut self, what: &str, deadline: Instant, probe: impl Fn() -> Fut) -> T
    where
        Fut: std::future::Future<Output = Option<T>>,
    {
        loop {
            if let Some(found) = probe().await {
                return found;
            }
            let exited = self.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                // Keep the bootstrap and the full stderr for a post-mortem.
                self.dir.disable_cleanup(true);
                let why =
                    exited.map_or_else(|| "timed out".to_owned(), |status| format!("exited with {status}"));
                panic!(
                    "envoy did not reach {what} ({why}); kept {}\n--- stderr tail ---\n{}",
                    self.dir.path().display(),
                    tail(&self.stderr(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn admin_get(admin: SocketAddr, path: &str) -> reqwest::Result<(u16, String)> {
    // Never through a proxy from the environment: admin is on loopback.
    let client = reqwest::Client::builder().no_proxy().build()?;
    let response = client.get(format!("http://{admin}{path}")).send().await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

/// The bound address of the `ingress` listener in `/listeners?format=json`.
fn listener_addr(body: &str) -> Option<SocketAddr> {
    let listeners: Value = serde_json::from_str(body).ok()?;
    let ingress = listeners["listener_statuses"].as_array()?.iter().find(|l| l["name"] == "ingress")?;
    let socket = &ingress["local_address"]["socket_address"];
    let port = u16::try_from(socket["port_value"].as_u64()?).ok().filter(|port| *port != 0)?;
    Some(SocketAddr::new(socket["address"].as_str()?.parse().ok()?, port))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
