//! The YAML test suite format (`DIR/tests/*.yaml`, see `docs/policy-tests.md`): reading,
//! with unknown fields refused, and checking, with every problem at `file:line:column`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::Path;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::locate::{display, locate, Step};
use crate::config::EnvString;
use crate::model::{CredentialKind, Extra, McpRequest, Outcome, RouteRequest, Target, ToolCall};

/// A suite file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuiteFile {
    /// Shown in reports; default: the file's stem.
    name: Option<String>,
    /// Free text for the reader.
    #[allow(dead_code)]
    description: Option<String>,
    /// The clock of every test without its own `now`.
    now: Option<Instant>,
    /// The principals tests name.
    #[serde(default)]
    principals: BTreeMap<String, PrincipalSpec>,
    /// The tests, in order.
    #[serde(default)]
    tests: Vec<TestSpec>,
}

/// Who asks, as a suite defines it: a mapping with exactly one of these keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "PrincipalFields")]
pub(super) enum PrincipalSpec {
    /// An `Authorization` value, resolved by the configured backends (`${ENV}` expanded).
    Authorization(EnvString),
    /// A login through the session manager; the session's token is the credential.
    Login {
        /// The configured username.
        username: String,
        /// Its password (`${ENV}` expanded).
        password: EnvString,
    },
    /// An identity written out, as a backend would have produced it.
    AuthInfo(InlineAuth),
    /// A JWT's claims, mapped through a configured issuer's claim mapping. The signature is
    /// not checked: there is none.
    Jwt(JwtClaims),
}

/// A principal as written (serde_yaml reads enums only from YAML tags, not from a mapping).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalFields {
    authorization: Option<EnvString>,
    login: Option<LoginFields>,
    auth_info: Option<InlineAuth>,
    jwt: Option<JwtClaims>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginFields {
    username: String,
    password: EnvString,
}

impl TryFrom<PrincipalFields> for PrincipalSpec {
    type Error = &'static str;

    fn try_from(fields: PrincipalFields) -> Result<Self, Self::Error> {
        match fields {
            PrincipalFields { authorization: Some(value), login: None, auth_info: None, jwt: None } => {
                Ok(PrincipalSpec::Authorization(value))
            }
            PrincipalFields { authorization: None, login: Some(login), auth_info: None, jwt: None } => {
                Ok(PrincipalSpec::Login { username: login.username, password: login.password })
            }
            PrincipalFields { authorization: None, login: None, auth_info: Some(auth), jwt: None } => {
                Ok(PrincipalSpec::AuthInfo(auth))
            }
            PrincipalFields { authorization: None, login: None, auth_info: None, jwt: Some(jwt) } => {
                Ok(PrincipalSpec::Jwt(jwt))
            }
            _ => Err("a principal has exactly one of `authorization`, `login`, `auth_info` and `jwt`"),
        }
    }
}

/// An inline identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InlineAuth {
    pub subject: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub tenant: String,
    #[serde(default)]
    pub client_id: String,
    #[serde(default)]
    pub issuer: String,
    /// The audience (`resource` of the AuthInfo).
    #[serde(default)]
    pub resource: String,
    #[serde(default)]
    pub credential_kind: Kind,
    pub expires_at: Option<Instant>,
    #[serde(default)]
    pub extra: Extra,
}

/// The credential kinds an identity can have.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Kind {
    #[default]
    Static,
    ApiKey,
    Session,
    Jwt,
    Introspection,
}

impl From<Kind> for CredentialKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Static => CredentialKind::Static,
            Kind::ApiKey => CredentialKind::ApiKey,
            Kind::Session => CredentialKind::Session,
            Kind::Jwt => CredentialKind::Jwt,
            Kind::Introspection => CredentialKind::Introspection,
        }
    }
}

/// JWT claims and the issuer whose mapping applies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JwtClaims {
    /// A configured issuer; may be left out when exactly one is configured.
    pub issuer: Option<String>,
    /// The token's claims.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// One test as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestSpec {
    name: String,
    #[allow(dead_code)]
    description: Option<String>,
    principal: Option<String>,
    route: Option<String>,
    template: Option<String>,
    tool: Option<String>,
    prompt: Option<String>,
    resource: Option<String>,
    method: Option<String>,
    server: Option<String>,
    arguments: Option<Extra>,
    #[serde(default)]
    context: Extra,
    now: Option<Instant>,
    #[serde(default, deserialize_with = "some_expectation")]
    expect: Option<Expectation>,
}

fn some_expectation<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Expectation>, D::Error> {
    deserializer.deserialize_any(ExpectationVisitor).map(Some)
}

/// Unix seconds, written as RFC 3339 or as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub(super) struct Instant(pub i64);

impl<'de> Deserialize<'de> for Instant {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InstantVisitor;
        impl Visitor<'_> for InstantVisitor {
            type Value = Instant;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 time such as `2026-01-01T00:00:00Z` or unix seconds")
            }
            fn visit_i64<E: de::Error>(self, seconds: i64) -> Result<Instant, E> {
                Ok(Instant(seconds))
            }
            fn visit_u64<E: de::Error>(self, seconds: u64) -> Result<Instant, E> {
                i64::try_from(seconds).map(Instant).map_err(|_| E::custom("unix seconds out of range"))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Instant, E> {
                let instant = humantime::parse_rfc3339_weak(text)
                    .map_err(|error| E::custom(format!("`{text}` is not an RFC 3339 time: {error}")))?;
                let seconds = instant
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_err(|_| E::custom("time is before 1970: write unix seconds"))?
                    .as_secs();
                i64::try_from(seconds).map(Instant).map_err(|_| E::custom("time out of range"))
            }
        }
        deserializer.deserialize_any(InstantVisitor)
    }
}

/// The outcomes a test can expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum ExpectedOutcome {
    Allowed,
    Forbidden,
    Unauthenticated,
    Unavailable,
}

impl ExpectedOutcome {
    pub(super) fn matches(self, outcome: Outcome) -> bool {
        self.as_str() == outcome.as_str()
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            ExpectedOutcome::Allowed => Outcome::Allowed.as_str(),
            ExpectedOutcome::Forbidden => Outcome::Forbidden.as_str(),
            ExpectedOutcome::Unauthenticated => Outcome::Unauthenticated.as_str(),
            ExpectedOutcome::Unavailable => Outcome::Unavailable.as_str(),
        }
    }
}

/// A denial's code (`Decision::error_code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum DenialCode {
    Unauthorized,
    InvalidToken,
    Forbidden,
    InsufficientScope,
    TemporarilyUnavailable,
}

impl DenialCode {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            DenialCode::Unauthorized => "unauthorized",
            DenialCode::InvalidToken => "invalid_token",
            DenialCode::Forbidden => "forbidden",
            DenialCode::InsufficientScope => "insufficient_scope",
            DenialCode::TemporarilyUnavailable => "temporarily_unavailable",
        }
    }
}

/// What a test expects: the outcome, and optionally the determining policies (exactly, in any
/// order), the reason (exactly) and the denial's code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(super) struct Expectation {
    pub outcome: ExpectedOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policies: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<DenialCode>,
}

/// `expect: forbidden` or `expect: {outcome: forbidden, …}`.
struct ExpectationVisitor;

impl<'de> Visitor<'de> for ExpectationVisitor {
    type Value = Expectation;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "an outcome (allowed, forbidden, unauthenticated, unavailable) or a mapping with `outcome`",
        )
    }
    fn visit_str<E: de::Error>(self, text: &str) -> Result<Expectation, E> {
        let outcome = ExpectedOutcome::deserialize(de::value::StrDeserializer::<E>::new(text))?;
        Ok(Expectation { outcome, policies: None, reason: None, error: None })
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Expectation, A::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            outcome: ExpectedOutcome,
            policies: Option<Vec<String>>,
            reason: Option<String>,
            error: Option<DenialCode>,
        }
        let full = Full::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(Expectation {
            outcome: full.outcome,
            policies: full.policies,
            reason: full.reason,
            error: full.error,
        })
    }
}

/// A checked suite, ready to run.
#[derive(Debug)]
pub(super) struct Suite {
    pub name: String,
    /// The file, as shown in reports.
    pub file: String,
    pub principals: BTreeMap<String, (PrincipalSpec, String)>,
    pub tests: Vec<Case>,
}

/// A checked test.
#[derive(Debug)]
pub(super) struct Case {
    pub name: String,
    /// `suite::name`.
    pub full_name: String,
    /// `file:line:column` of the test.
    pub location: String,
    pub principal: Option<String>,
    pub target: Target,
    /// The target as the report shows it (`GET /user/profile`, `tool echo`).
    pub target_text: String,
    pub facts: Extra,
    /// The frozen clock; `None` for the real one.
    pub now: Option<i64>,
    pub expect: Expectation,
    /// `file:line:column` of the target, for a target the engine refuses.
    pub target_location: String,
}

/// What suites are checked against.
pub(super) struct Known<'a> {
    /// Every policy id of the set.
    pub policy_ids: &'a HashSet<String>,
    /// The configured JWT issuers.
    pub issuers: &'a [String],
}

/// Reads and checks one suite file; every problem is a `file:line:column: path: what` line.
pub(super) fn parse(file: &str, text: &str, known: &Known<'_>) -> Result<Suite, Vec<String>> {
    let deserializer = serde_yaml::Deserializer::from_str(text);
    let parsed: SuiteFile =
        serde_path_to_error::deserialize(deserializer).map_err(|error| vec![parse_error(file, error)])?;
    let mut problems = Vec::new();
    let mut report = |path: &[Step], message: String| {
        let (line, column) = locate(text, path).unwrap_or((1, 1));
        problems.push(format!("{file}:{line}:{column}: {}: {message}", display(path)));
    };
    let at = |path: &[Step]| {
        let (line, column) = locate(text, path).unwrap_or((1, 1));
        format!("{file}:{line}:{column}")
    };
    let key = |name: &str| Step::Key(name.to_owned());

    let name = parsed.name.clone().unwrap_or_else(|| {
        Path::new(file)
            .file_stem()
            .map_or_else(|| file.to_owned(), |stem| stem.to_string_lossy().into_owned())
    });
    let mut principals = BTreeMap::new();
    for (principal, spec) in &parsed.principals {
        let path = [key("principals"), key(principal)];
        match spec {
            PrincipalSpec::Jwt(jwt) => match (&jwt.issuer, known.issuers) {
                (Some(issuer), issuers) if !issuers.contains(issuer) => report(
                    &[key("principals"), key(principal), key("jwt"), key("issuer")],
                    format!(
                        "`{issuer}` is not a configured JWT issuer (configured: {})",
                        list_or_none(issuers)
                    ),
                ),
                (None, issuers) if issuers.len() != 1 => report(
                    &path,
                    format!(
                        "name the `issuer` whose claim mapping applies (configured: {})",
                        list_or_none(issuers)
                    ),
                ),
                _ => {}
            },
            PrincipalSpec::AuthInfo(auth) if auth.subject.trim().is_empty() => {
                report(
                    &[key("principals"), key(principal), key("auth_info"), key("subject")],
                    "must not be empty".into(),
                );
            }
            PrincipalSpec::Login { username, .. } if username.is_empty() => {
                report(
                    &[key("principals"), key(principal), key("login"), key("username")],
                    "must not be empty".into(),
                );
            }
            _ => {}
        }
        principals.insert(principal.clone(), (spec.clone(), at(&path)));
    }

    if parsed.tests.is_empty() {
        report(&[key("tests")], "a suite needs at least one test".into());
    }
    let mut names = HashSet::new();
    let mut tests = Vec::new();
    for (index, test) in parsed.tests.into_iter().enumerate() {
        let here = |field: &str| [key("tests"), Step::Index(index), key(field)];
        let test_path = [key("tests"), Step::Index(index)];
        if test.name.trim().is_empty() {
            report(&here("name"), "must not be empty".into());
        } else if !names.insert(test.name.clone()) {
            report(&here("name"), format!("`{}` is the name of an earlier test of this suite", test.name));
        }
        if let Some(principal) = &test.principal {
            if !parsed.principals.contains_key(principal) {
                let defined: Vec<String> = parsed.principals.keys().cloned().collect();
                report(
                    &here("principal"),
                    format!(
                        "unknown principal `{principal}` (this suite defines: {}; leave `principal` out for \
                         a caller without a credential)",
                        list_or_none(&defined)
                    ),
                );
            }
        }
        let Some(expect) = test.expect.clone() else {
            report(
                &test_path,
                format!(
                    "test `{}` has no expectation: add `expect: allowed` (or forbidden, unauthenticated, \
                     unavailable)",
                    test.name
                ),
            );
            continue;
        };
        for (position, id) in expect.policies.iter().flatten().enumerate() {
            if !known.policy_ids.contains(id) {
                let mut path = here("expect").to_vec();
                path.extend([key("policies"), Step::Index(position)]);
                report(&path, format!("unknown policy id `{id}`"));
            }
        }
        let kinds: Vec<&str> = [
            ("route", test.route.is_some()),
            ("tool", test.tool.is_some()),
            ("prompt", test.prompt.is_some()),
            ("resource", test.resource.is_some()),
            ("method", test.method.is_some()),
        ]
        .into_iter()
        .filter_map(|(kind, set)| set.then_some(kind))
        .collect();
        let [kind] = kinds.as_slice() else {
            report(
                &test_path,
                format!(
                    "test `{}` needs exactly one target of `route`, `tool`, `prompt`, `resource`, `method`{}",
                    test.name,
                    if kinds.is_empty() { String::new() } else { format!(" (has {})", kinds.join(", ")) }
                ),
            );
            continue;
        };
        let target_location = at(&here(kind));
        let mcp = |name: &Option<String>| ToolCall {
            name: name.clone().unwrap_or_default(),
            server: test.server.clone().unwrap_or_default(),
            arguments: test.arguments.clone().unwrap_or_default(),
        };
        let (target, target_text) = match *kind {
            "route" => {
                for field in ["server", "arguments"] {
                    let set =
                        if field == "server" { test.server.is_some() } else { test.arguments.is_some() };
                    if set {
                        report(
                            &here(field),
                            "applies to `tool`, `prompt`, `resource` and `method` only".into(),
                        );
                    }
                }
                let route = test.route.clone().unwrap_or_default();
                let Some((method, path)) = route.trim().split_once(' ') else {
                    report(&here("route"), format!("`{route}` is not `METHOD /path`"));
                    continue;
                };
                let target = Target::Route(RouteRequest {
                    method: method.to_owned(),
                    path: path.trim().to_owned(),
                    template: test.template.clone(),
                });
                (target, format!("{method} {}", path.trim()))
            }
            other => {
                if test.template.is_some() {
                    report(&here("template"), "applies to `route` only".into());
                }
                let (target, value) = match other {
                    "tool" => (Target::Tool(mcp(&test.tool)), &test.tool),
                    "prompt" => (Target::Mcp(McpRequest::Prompt, mcp(&test.prompt)), &test.prompt),
                    "resource" => (Target::Mcp(McpRequest::Resource, mcp(&test.resource)), &test.resource),
                    _ => (Target::Mcp(McpRequest::Method, mcp(&test.method)), &test.method),
                };
                let server = test.server.as_deref().filter(|server| !server.is_empty());
                let text = match server {
                    Some(server) => format!("{other} {} on {server}", value.as_deref().unwrap_or_default()),
                    None => format!("{other} {}", value.as_deref().unwrap_or_default()),
                };
                (target, text)
            }
        };
        tests.push(Case {
            full_name: format!("{name}::{}", test.name),
            name: test.name,
            location: at(&test_path),
            principal: test.principal,
            target,
            target_text,
            facts: test.context,
            now: test.now.or(parsed.now).map(|instant| instant.0),
            expect,
            target_location,
        });
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Suite { name, file: file.to_owned(), principals, tests })
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.iter().map(|item| format!("`{item}`")).collect::<Vec<_>>().join(", ")
    }
}

/// `file:line:column: path: reason`, as the config loader reports its YAML errors.
fn parse_error(file: &str, error: serde_path_to_error::Error<serde_yaml::Error>) -> String {
    let path = error.path().to_string();
    let inner = error.into_inner();
    let (line, column) = inner.location().map_or((1, 1), |location| (location.line(), location.column()));
    // serde_yaml's message repeats a shorter path and the position; keep the reason.
    let message = inner.to_string();
    let message = message.rsplit_once(" at line ").map_or(message.as_str(), |(message, _)| message);
    let reason = match message.split_once(": ") {
        Some((prefix, rest)) if path.starts_with(prefix) => rest,
        _ => message,
    };
    if path == "." || path.is_empty() {
        format!("{file}:{line}:{column}: {reason}")
    } else {
        format!("{file}:{line}:{column}: {path}: {reason}")
    }
}
