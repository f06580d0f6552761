//! Typed, strict configuration: one YAML file, `${ENV_VAR}` substitution in secret fields,
//! unknown fields rejected, every error naming file, line and field. With no file, the
//! embedded demo (the auth-token-passthrough example) is served.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use crate::model::SecretDigest;

mod credentials;
mod gateway;
pub mod init;
mod listen;
mod sessions;
mod state;
mod telemetry;
mod tenants;
mod values;

pub use credentials::*;
pub use gateway::*;
pub use listen::*;
pub use sessions::*;
pub use state::*;
pub use telemetry::*;
pub use tenants::*;
pub use values::*;

/// The configuration the binary serves when given no file.
pub const DEMO_YAML: &str = include_str!("../config/demo.yaml");
/// The name the demo config has in diagnostics.
pub const DEMO_NAME: &str = "<embedded>/config/demo.yaml";

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file does not exist.
    #[error(
        "`{path}` does not exist. `cedargate init {dir}` writes a commented starting config \
         there (cedargate.yaml and a policies/ directory); examples/ has configs for nginx and \
         Envoy; without --config cedargate serves its embedded demo",
        dir = init_dir(path).display()
    )]
    NotFound {
        /// The file.
        path: PathBuf,
    },
    /// The file could not be read.
    #[error("cannot read `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML did not fit the schema; serde_yaml names the field path, line and column.
    #[error("{file}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, with the field path.
        message: String,
    },
    /// Settings that parse but do not make sense together; one line per problem.
    #[error("{}", .problems.join("\n"))]
    Invalid {
        /// `file:line: field: problem` lines.
        problems: Vec<String>,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listen addresses and connection limits.
    #[serde(default)]
    pub listen: ListenConfig,
    /// `realm` of every `WWW-Authenticate` challenge.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Request size limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Where the Cedar schema and policies are.
    #[serde(default)]
    pub policies: PoliciesConfig,
    /// Route templates such as `/users/{id}`; a path matching one is the resource
    /// `Route::"<template>"`, with the parameters as tags.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Which unusual path forms are accepted (each refused by default).
    #[serde(default)]
    pub paths: PathsConfig,
    /// Credentials known in advance.
    #[serde(default)]
    pub credentials: CredentialsConfig,
    /// Login sessions.
    #[serde(default)]
    pub sessions: SessionsConfig,
    /// Where the state replicas share lives (sessions, login limits, revocations): memory
    /// unless `redis` is set.
    #[serde(default)]
    pub state: StateConfig,
    /// The operator API (`cedargate.v1.Admin`).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Gateway integration: Envoy ext_authz (gRPC and HTTP), nginx `auth_request` and
    /// Traefik `forwardAuth`.
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// The OAuth protected resource cedargate guards (RFC 9728): served as metadata on the
    /// HTTP port and named in every bearer challenge.
    pub protected_resource: Option<ProtectedResourceConfig>,
    /// Tenants: each with its own policies (`<policies.dir>/tenants/<name>/`), JWT issuers,
    /// introspection endpoints and protected resource, and where a request names one.
    #[serde(default)]
    pub tenants: TenantsConfig,
    /// OpenTelemetry export (OTLP); the `OTEL_*` environment variables override it.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// One record per decision (`docs/decision-log.md`).
    #[serde(default)]
    pub decision_log: DecisionLogConfig,
    /// The file this came from (set by the loader), to resolve relative paths and for errors.
    #[serde(skip)]
    pub source: String,
}

/// Where policies are, and how they are reloaded.
///
/// A directory's set is reloaded on SIGHUP, on `cedargate.v1.Admin/ReloadPolicies`, and (with
/// `watch`) whenever a file in it changes: in-place edits, files written elsewhere and renamed
/// in, new and deleted files, and the atomic `..data` symlink swap of a Kubernetes ConfigMap
/// volume. The whole new set is parsed and validated off the request path and replaces the
/// one in force only if all of it is valid; otherwise the last good set stays in force and the
/// error is logged and reported by `Admin/PolicyStatus` and `GET /policies/status`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoliciesConfig {
    /// Directory with `schema.cedarschema` and `*.cedar`, relative to the config file.
    /// Absent: the embedded demo policies (never reloaded).
    pub dir: Option<PathBuf>,
    /// Watch `dir` and reload when it changes, about a quarter of a second after the last
    /// change of a burst (default `true`; `false` leaves SIGHUP and `Admin/ReloadPolicies`).
    /// The directory is watched itself, not its subdirectories, and its parent for the
    /// directory being replaced; an edit of a symlink's target outside the directory is not
    /// seen. Without `dir` it has no effect.
    #[serde(default = "default_watch")]
    pub watch: bool,
    /// Each request is decided by the policies whose scope can match it (its slice); slices
    /// are cached per policy set, and this bounds the policies the cached slices hold (default
    /// 100000; each holds a pointer to each of its policies, about 8 bytes per policy). A
    /// slice that finds the cache full clears it and the cache starts over (correct, slower
    /// while it refills), logged once per set and counted in
    /// `cedargate_policy_slice_cache_resets_total`. `0` turns slicing off.
    #[serde(default = "default_slice_cache_max_policies")]
    pub slice_cache_max_policies: usize,
}

impl Default for PoliciesConfig {
    fn default() -> Self {
        Self {
            dir: None,
            watch: default_watch(),
            slice_cache_max_policies: default_slice_cache_max_policies(),
        }
    }
}

fn default_slice_cache_max_policies() -> usize {
    crate::policy::DEFAULT_SLICE_CACHE_MAX_POLICIES
}

fn default_watch() -> bool {
    true
}

/// The operator API.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// SHA-256 of the bearer token Admin calls must carry (`cedargate hash-key`). Absent: the
    /// Admin service refuses every call.
    pub token_sha256: Option<Digest>,
}

// Defaults a component owns come from the component's own `Default`, so each lives once.
fn default_realm() -> String {
    crate::engine::EngineSettings::default().realm
}
/// The directory `cedargate init` would write a missing config file into.
fn init_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

impl Config {
    /// Reads and validates a config file.
    ///
    /// Fails when the file cannot be read, does not parse, or holds invalid settings; every
    /// message names the file, the line and the field.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ConfigError::NotFound { path: path.to_path_buf() },
            _ => ConfigError::Read { path: path.to_path_buf(), source },
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// The embedded demo.
    ///
    /// Fails only if the embedded file is broken (a test guards it).
    pub fn demo() -> Result<Self, ConfigError> {
        Self::parse(DEMO_NAME, DEMO_YAML)
    }

    /// Parses and validates YAML text; `file` names it in errors.
    ///
    /// Fails as [`Config::load`] does.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        let deserializer = serde_yaml::Deserializer::from_str(text);
        let mut config: Config = serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let path = error.path().to_string();
            let inner = error.into_inner();
            let (line, column) =
                inner.location().map_or((1, 1), |location| (location.line(), location.column()));
            // serde_yaml's message repeats a shorter path and the position; keep the reason.
            let message = inner.to_string();
            let message = message.rsplit_once(" at line ").map_or(message.as_str(), |(message, _)| message);
            let reason = match message.split_once(": ") {
                Some((prefix, rest)) if path.starts_with(prefix) => rest,
                _ => message,
            };
            // A value rejected by its own type is reported at the start of its mapping; point
            // at the key itself.
            let key = path.rsplit('.').next().unwrap_or_default();
            let (line, column) = key_position(text, line, key).unwrap_or((line, column));
            ConfigError::Parse { file: file.to_owned(), line, column, message: format!("{path}: {reason}") }
        })?;
        config.source = file.to_owned();
        let problems = config.problems(text);
        if !problems.is_empty() {
            return Err(ConfigError::Invalid { problems });
        }
        Ok(config)
    }

    /// The policy directory, resolved against the config file's directory.
    pub fn policy_dir(&self) -> Option<PathBuf> {
        let dir = self.policies.dir.as_ref()?;
        if dir.is_absolute() || self.source.starts_with('<') {
            return Some(dir.clone());
        }
        let base = Path::new(&self.source).parent().unwrap_or_else(|| Path::new("."));
        Some(base.join(dir))
    }

    /// `path` resolved against the config file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() || self.source.starts_with('<') {
            return path.to_path_buf();
        }
        Path::new(&self.source).parent().unwrap_or_else(|| Path::new(".")).join(path)
    }

    /// Where the policy commands (`policy validate`, `fmt`, `test`) look without a directory:
    /// the policy directory, else `./policies`.
    pub fn policy_dir_or_default(&self) -> PathBuf {
        self.policy_dir().unwrap_or_else(|| PathBuf::from("policies"))
    }

    /// Cross-field checks; each problem is `file:line: field: what`.
    fn problems(&self, text: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let mut report = |needle: &str, field: String, problem: String| {
            let line = line_of(text, needle);
            problems.push(format!("{}:{line}: {field}: {problem}", self.source));
        };
        for (field, value) in [
            ("http_max_connections", self.listen.http_max_connections),
            ("grpc_max_connections", self.listen.grpc_max_connections),
            ("grpc_max_concurrent_streams", self.listen.grpc_max_concurrent_streams as usize),
        ] {
            if value == 0 {
                report(field, format!("listen.{field}"), "must be at least 1".into());
            }
        }
        if self.limits.max_authorization_bytes < 16 {
            report(
                "max_authorization_bytes",
                "limits.max_authorization_bytes".into(),
                "must be at least 16".into(),
            );
        }
        let log = &self.decision_log;
        if !(0.0..=1.0).contains(&log.allow_sample_rate) {
            report(
                "allow_sample_rate",
                "decision_log.allow_sample_rate".into(),
                "must be between 0 and 1".into(),
            );
        }
        match (&log.to, &log.path) {
            (crate::telemetry::decision_log::Destination::File, None) => {
                report("decision_log", "decision_log.path".into(), "is required with `to: file`".into());
            }
            (crate::telemetry::decision_log::Destination::Otlp, _)
                if self.telemetry.otlp.is_none()
                    && std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_none() =>
            {
                report(
                    "decision_log",
                    "decision_log.to".into(),
                    "`otlp` needs telemetry.otlp.endpoint or OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                );
            }
            _ => {}
        }
        for (index, path) in log.mask.iter().enumerate() {
            if path.is_empty() || path.split('.').any(str::is_empty) {
                report("mask", format!("decision_log.mask[{index}]"), "is not a dotted field path".into());
            }
        }
        if let Some(redis) = &self.state.redis {
            for (field, problem) in redis.problems() {
                // The key as the block form writes it (`url` and `tls` are common words).
                let needle = match field {
                    "url" => "    url:",
                    "tls" => "    tls:",
                    other => other.split('.').next().unwrap_or(other),
                };
                report(needle, format!("state.redis.{field}"), problem);
            }
        }
        if self.limits.max_batch_targets == 0 {
            report("max_batch_targets", "limits.max_batch_targets".into(), "must be at least 1".into());
        }
        let exchange = &self.gateway.mcp_exchange;
        for (field, value) in
            [("max_list_bytes", exchange.max_list_bytes), ("max_sessions", exchange.max_sessions)]
        {
            if value == 0 {
                report(field, format!("gateway.mcp_exchange.{field}"), "must be at least 1".into());
            }
        }
        if let Err(error) =
            crate::route::RouteTable::new(self.routes.iter().map(String::as_str), self.paths.rules())
        {
            report("routes", "routes".into(), error);
        }
        let mut seen = std::collections::HashSet::new();
        for (list, entries) in
            [("static_tokens", &self.credentials.static_tokens), ("api_keys", &self.credentials.api_keys)]
        {
            for (index, entry) in entries.iter().enumerate() {
                let field = format!("credentials.{list}[{index}]");
                let needle = format!("subject: {}", entry.subject);
                match (&entry.sha256, &entry.value) {
                    (Some(_), Some(_)) => report(&needle, field.clone(), "set `sha256` or `value`, not both".into()),
                    (None, None) => report(&needle, field.clone(), "`sha256` is required".into()),
                    (None, Some(_)) if list == "api_keys" => report(
                        &needle,
                        format!("{field}.value"),
                        "API keys are stored only as SHA-256 digests: use `sha256` (see `cedargate hash-key`)"
                            .into(),
                    ),
                    _ => {}
                }
                if let Some(digest) = entry.digest() {
                    if !seen.insert(digest) {
                        report(&needle, field.clone(), "the same credential is configured twice".into());
                    }
                }
                if entry.subject.trim().is_empty() {
                    report(&needle, format!("{field}.subject"), "must not be empty".into());
                }
                check_names(&entry.roles, &format!("{field}.roles"), &needle, &mut report);
            }
        }
        let mut issuers = std::collections::HashSet::new();
        let issuer_lists = std::iter::once(("credentials".to_owned(), &self.credentials.jwt)).chain(
            self.tenants.tenants.iter().map(|(name, tenant)| (format!("tenants.{name}"), &tenant.jwt)),
        );
        for (index, issuer, prefix) in issuer_lists.flat_map(|(prefix, list)| {
            list.iter().enumerate().map(move |(i, issuer)| (i, issuer, prefix.clone()))
        }) {
            let field = format!("{prefix}.jwt[{index}]");
            let needle = format!("issuer: {}", issuer.issuer);
            if !issuers.insert(issuer.issuer.as_str()) {
                report(&needle, format!("{field}.issuer"), "the same issuer is configured twice".into());
            }
            if issuer.audiences.is_empty() {
                report(&needle, format!("{field}.audiences"), "name at least one audience".into());
            }
            let sources = usize::from(issuer.jwks_url.is_some())
                + usize::from(issuer.jwks.is_some())
                + usize::from(issuer.discovery);
            if sources != 1 {
                report(
                    &needle,
                    field.clone(),
                    "set exactly one of `jwks_url`, `jwks` and `discovery: true`".into(),
                );
            }
            if let Err(error) = issuer.key_source() {
                report(&needle, format!("{field}.jwks"), error);
            }
            if let Err(error) = issuer.algorithm_list() {
                report(&needle, format!("{field}.algorithms"), error);
            }
            if issuer.refetch_interval.0 < MIN_REFETCH_INTERVAL {
                report(
                    &needle,
                    format!("{field}.refetch_interval"),
                    "must be at least 100ms: each unknown `kid` would fetch the issuer's keys".into(),
                );
            }
        }
        let endpoint_lists = std::iter::once(("credentials".to_owned(), &self.credentials.introspection))
            .chain(
                self.tenants
                    .tenants
                    .iter()
                    .map(|(name, tenant)| (format!("tenants.{name}"), &tenant.introspection)),
            );
        for (index, endpoint, prefix) in endpoint_lists.flat_map(|(prefix, list)| {
            list.iter().enumerate().map(move |(i, endpoint)| (i, endpoint, prefix.clone()))
        }) {
            let field = format!("{prefix}.introspection[{index}]");
            let needle = format!("client_id: {}", endpoint.client_id);
            if let Err(error) = endpoint.client_auth() {
                report(&needle, field.clone(), error);
            }
            if endpoint.endpoint.is_some() == endpoint.issuer.is_some() {
                report(&needle, field, "set exactly one of `endpoint` and `issuer`".into());
            }
        }
        let mut usernames = std::collections::HashSet::new();
        for (index, user) in self.sessions.users.iter().enumerate() {
            let needle = format!("username: {}", user.username);
            let field = format!("sessions.users[{index}]");
            if user.username.is_empty() || user.username.len() > crate::session::MAX_USERNAME_BYTES {
                report(&needle, format!("{field}.username"), "must be 1 to 256 bytes".into());
            }
            if !usernames.insert(user.username.as_str()) {
                report(
                    &needle,
                    format!("{field}.username"),
                    format!("`{}` is configured twice", user.username),
                );
            }
            check_names(&user.roles, &format!("{field}.roles"), &needle, &mut report);
        }
        let identity = &self.gateway.identity_headers;
        for (name, value) in [
            ("subject", &identity.subject),
            ("client_id", &identity.client_id),
            ("scopes", &identity.scopes),
            ("roles", &identity.roles),
            ("tenant", &identity.tenant),
        ] {
            if !value.is_empty() && !is_header_name(value) {
                report(
                    &format!("{name}:"),
                    format!("gateway.identity_headers.{name}"),
                    format!("`{value}` is not an HTTP header name"),
                );
            }
            // Every `-`/`_` spelling of the name is removed from requests; keep that list short.
            if value.bytes().filter(|byte| matches!(byte, b'-' | b'_')).count() > MAX_HEADER_SEPARATORS {
                report(
                    &format!("{name}:"),
                    format!("gateway.identity_headers.{name}"),
                    format!("`{value}` has more than {MAX_HEADER_SEPARATORS} `-` or `_`"),
                );
            }
        }
        for (name, value) in
            [("header", &self.gateway.api_key.header), ("cookie", &self.gateway.api_key.cookie)]
        {
            if let Some(value) = value.as_deref().filter(|value| !is_header_name(value)) {
                report(
                    &format!("{name}:"),
                    format!("gateway.api_key.{name}"),
                    format!("`{value}` is not a valid name"),
                );
            }
        }
        for (index, endpoint) in self.gateway.mcp.iter().enumerate() {
            let canonical = crate::route::normalize_path(&endpoint.path, crate::route::PathRules::default());
            if canonical.ok().as_deref() != Some(endpoint.path.as_str()) {
                report(
                    &format!("path: {}", endpoint.path),
                    format!("gateway.mcp[{index}].path"),
                    "must be a normalized path such as `/mcp`, without a query".into(),
                );
            }
        }
        let resources = std::iter::once(("protected_resource".to_owned(), &self.protected_resource)).chain(
            self.tenants.tenants.iter().map(|(name, tenant)| {
                (format!("tenants.{name}.protected_resource"), &tenant.protected_resource)
            }),
        );
        for (prefix, resource) in resources {
            let Some(resource) = resource else { continue };
            let parsed = url::Url::parse(&resource.resource);
            if !parsed.is_ok_and(|url| matches!(url.scheme(), "https" | "http") && url.fragment().is_none()) {
                report(
                    &resource.resource,
                    format!("{prefix}.resource"),
                    "must be an https URL without a fragment (RFC 9728 §1.2)".into(),
                );
            }
            for (index, server) in resource.authorization_servers.iter().enumerate() {
                if url::Url::parse(server).is_err() {
                    report(
                        server,
                        format!("{prefix}.authorization_servers[{index}]"),
                        "must be an issuer URL".into(),
                    );
                }
            }
        }
        self.tenant_problems(&mut report);
        if self.sessions.refresh_reuse_grace.0 > Duration::from_secs(60) {
            report(
                "refresh_reuse_grace",
                "sessions.refresh_reuse_grace".into(),
                "must be at most 60s: within it, a refresh token presented again gets live tokens".into(),
            );
        }
        if !(1..=MAX_PER_USER).contains(&self.sessions.max_per_user) {
            report(
                "max_per_user",
                "sessions.max_per_user".into(),
                format!("must be 1 to {MAX_PER_USER}: it bounds what logins in a loop can store"),
            );
        }
        if !(1..=MAX_ROTATIONS).contains(&self.sessions.max_rotations) {
            report(
                "max_rotations",
                "sessions.max_rotations".into(),
                format!(
                    "must be 1 to {MAX_ROTATIONS}: each is a few hundred bytes kept for a refresh lifetime"
                ),
            );
        }
        if self.sessions.refresh_ttl.0 < self.sessions.access_ttl.0 {
            report(
                "refresh_ttl",
                "sessions.refresh_ttl".into(),
                "must not be shorter than access_ttl".into(),
            );
        }
        problems
    }
}

/// Most `sessions.max_per_user`.
const MAX_PER_USER: usize = 10_000;

/// Most `sessions.max_rotations`: about 4 MB of one login's markers at most.
const MAX_ROTATIONS: usize = 10_000;

/// An RFC 9110 token, which header, cookie and query parameter names here must be.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte))
}

fn check_names(names: &[String], field: &str, needle: &str, report: &mut impl FnMut(&str, String, String)) {
    for (index, name) in names.iter().enumerate() {
        if name.trim().is_empty() || name.chars().any(char::is_control) {
            report(needle, format!("{field}[{index}]"), "must be a non-empty name".into());
        }
    }
}

/// The line and column of `key:` at or after 1-based `from_line`, if the key is a plain name.
fn key_position(text: &str, from_line: usize, key: &str) -> Option<(usize, usize)> {
    if key.is_empty() || !key.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_') {
        return None;
    }
    let pattern = format!("{key}:");
    text.lines().enumerate().skip(from_line.saturating_sub(1)).find_map(|(index, line)| {
        let trimmed = line.trim_start().trim_start_matches("- ");
        trimmed.starts_with(&pattern).then(|| (index + 1, line.len() - trimmed.len() + 1))
    })
}

/// The 1-based line of the first occurrence of `needle`, or 1.
fn line_of(text: &str, needle: &str) -> usize {
    text.find(needle).map_or(1, |offset| text[..offset].matches('\n').count() + 1)
}

#[cfg(test)]
mod tests;
