//! Running suites: principals resolved through the configured backends, each test decided by
//! the engine at its frozen clock, coverage counted, and the suite re-run against mutants.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::suite::{self, Case, Expectation, Known, PrincipalSpec, Suite};
use super::AuthoringError;
use crate::config::Config;
use crate::credential::CredentialError;
use crate::engine::{Authentication, Engine};
use crate::model::{unix_now, AuthInfo, CredentialKind, Decision, Scheme, Secret, SecretDigest};
use crate::policy::{self, PolicyOutline, PolicySources};
use crate::App;

/// What `cedargate policy test` is asked to do.
#[derive(Debug, Clone)]
pub struct TestOptions {
    /// The policy directory; the suites are `dir/tests/*.yaml`.
    pub dir: PathBuf,
    /// Where the credential backends come from (the embedded demo's without `--config`).
    pub config: Config,
    /// Only tests whose name (or `suite::name`) contains this, or matches it as a glob when it
    /// has `*`, `?` or `[`.
    pub filter: Option<String>,
    /// Report, for each policy, how many tests it determined.
    pub coverage: bool,
    /// Fail the run when fewer than this percentage of the policies determined a test.
    pub coverage_threshold: Option<f64>,
    /// Re-run the suites against every mutant of the policy set.
    pub mutate: bool,
}

/// The outcome of a run: the report in any format, and the exit code.
#[derive(Debug, Serialize)]
pub struct TestRun {
    pub(super) policies: PolicySummary,
    pub(super) suites: Vec<SuiteReport>,
    pub(super) passed: usize,
    pub(super) failed: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) coverage: Option<CoverageReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) mutation: Option<MutationReport>,
}

#[derive(Debug, Serialize)]
pub(super) struct PolicySummary {
    pub dir: String,
    pub revision: String,
    pub files: Vec<String>,
    pub count: usize,
}

#[derive(Debug, Serialize)]
pub(super) struct SuiteReport {
    pub name: String,
    pub file: String,
    pub tests: Vec<TestReport>,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct TestReport {
    pub name: String,
    pub location: String,
    pub principal: Option<String>,
    pub target: String,
    /// The frozen clock, `None` when the test ran on the real one.
    pub now: Option<i64>,
    pub passed: bool,
    pub expected: Expectation,
    pub actual: Actual,
    /// One line per way the decision differs from the expectation.
    pub mismatches: Vec<String>,
}

/// The parts of a decision a test can expect.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Actual {
    pub outcome: &'static str,
    pub policies: Vec<String>,
    pub reason: String,
    pub error: &'static str,
    pub errors: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct CoverageReport {
    pub exercised: usize,
    pub total: usize,
    pub percent: f64,
    pub threshold: Option<f64>,
    pub met: bool,
    pub files: Vec<FileCoverage>,
    pub unexercised: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct FileCoverage {
    pub file: String,
    pub policies: Vec<PolicyCoverage>,
}

#[derive(Debug, Serialize)]
pub(super) struct PolicyCoverage {
    pub id: String,
    pub line: usize,
    pub effect: &'static str,
    /// An `@shadow` policy: it never decides, so it is not counted.
    pub shadow: bool,
    /// How many tests it determined.
    pub tests: usize,
}

#[derive(Debug, Serialize)]
pub(super) struct MutationReport {
    /// Why no mutant ran (a failing suite proves nothing about mutants).
    pub skipped: Option<String>,
    pub total: usize,
    pub killed: usize,
    pub refused: usize,
    pub survived: usize,
    pub mutants: Vec<MutantReport>,
}

#[derive(Debug, Serialize)]
pub(super) struct MutantReport {
    pub policy: String,
    pub file: String,
    pub line: usize,
    pub mutation: String,
    pub status: MutantStatus,
    /// The first test that noticed it.
    pub killed_by: Option<String>,
    /// The validator's first diagnostic, for a refused mutant.
    pub diagnostic: Option<String>,
    /// The mutated policy.
    pub text: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum MutantStatus {
    /// A test went from passing to failing.
    Killed,
    /// The mutated set does not validate, so it could never be loaded.
    Refused,
    /// No test noticed.
    Survived,
}

impl TestRun {
    /// 0 when every test passed (and, when asked, coverage met its threshold and every mutant
    /// was killed); 1 otherwise. Invalid suites or policies never get here: they are an
    /// [`AuthoringError`] (exit 2).
    pub fn exit_code(&self) -> u8 {
        let coverage_failed = self.coverage.as_ref().is_some_and(|coverage| !coverage.met);
        let mutants_failed = self
            .mutation
            .as_ref()
            .is_some_and(|mutation| mutation.survived > 0 || mutation.skipped.is_some());
        u8::from(self.failed > 0 || coverage_failed || mutants_failed)
    }
}

/// How a principal is presented to the engine.
enum Fixture {
    /// An `Authorization` value, resolved at each test's clock by the configured chain.
    Credential(Secret),
    /// A login's session token, resolved by the chain at the real clock: the session was
    /// opened when the run started, and a frozen clock does not move that.
    Session(Secret),
    /// An identity that bypasses the chain (inline, or mapped from JWT claims); its expiry is
    /// checked at the test's clock.
    Identity(Arc<AuthInfo>, String),
}

/// Runs the suites of `options.dir/tests`.
///
/// Fails (exit 2) when the policies or the config do not load, a suite does not parse or
/// names what does not exist, a principal cannot be set up (a login is refused), or the
/// engine refuses a test's target.
pub async fn run(options: TestOptions) -> Result<TestRun, AuthoringError> {
    let dir = std::path::absolute(&options.dir)
        .map_err(|source| AuthoringError::Read { path: options.dir.clone(), source })?;
    let sources = PolicySources::from_dir(&dir)?;
    let outline = policy::outline(&sources)?;
    let mut config = options.config.clone();
    config.policies.dir = Some(dir.clone());
    let app = App::build(config)?;
    let engine = Arc::clone(app.engine());
    // The set the outline and the mutants were made from, whatever happened to the files since.
    let snapshot = engine.policies().reload(&sources)?;

    let policy_ids: HashSet<String> = outline.iter().map(|policy| policy.id.clone()).collect();
    let issuers: Vec<String> =
        options.config.credentials.jwt.iter().map(|issuer| issuer.issuer.clone()).collect();
    let known = Known { policy_ids: &policy_ids, issuers: &issuers };
    let suites = read_suites(&options.dir, &dir, &known)?;
    let fixtures = fixtures(&app, &options.config, &suites).await?;

    let filter = Filter::new(options.filter.as_deref())?;
    let selected: Vec<(usize, &Case)> = suites
        .iter()
        .enumerate()
        .flat_map(|(index, suite)| suite.tests.iter().map(move |case| (index, case)))
        .filter(|(index, case)| {
            suites.get(*index).is_some_and(|suite| filter.matches(&suite.name, &case.name))
        })
        .collect();
    if selected.is_empty() {
        if let Some(filter) = options.filter.as_deref().filter(|filter| !filter.is_empty()) {
            return Err(AuthoringError::FilterMatchesNothing(filter.to_owned()));
        }
    }

    let mut reports: Vec<SuiteReport> = suites
        .iter()
        .map(|suite| SuiteReport { name: suite.name.clone(), file: suite.file.clone(), tests: Vec::new() })
        .collect();
    let mut problems = Vec::new();
    let mut baseline = Vec::with_capacity(selected.len());
    for (suite_index, case) in &selected {
        match run_case(&engine, &fixtures, *suite_index, case).await {
            Ok(report) => {
                baseline.push(report.passed);
                if let Some(suite) = reports.get_mut(*suite_index) {
                    suite.tests.push(report);
                }
            }
            Err(problem) => problems.push(problem),
        }
    }
    if !problems.is_empty() {
        return Err(AuthoringError::Suite { problems });
    }
    reports.retain(|suite| !suite.tests.is_empty());
    let passed = baseline.iter().filter(|passed| **passed).count();
    let failed = baseline.len() - passed;

    let show = |name: &str| shown(name, &dir, &options.dir);
    let coverage = (options.coverage || options.coverage_threshold.is_some())
        .then(|| coverage(&outline, &reports, options.coverage_threshold, &show));
    let mutation = if options.mutate {
        Some(mutate(&engine, &sources, &fixtures, &selected, failed, &show).await?)
    } else {
        None
    };

    Ok(TestRun {
        policies: PolicySummary {
            dir: options.dir.display().to_string(),
            revision: snapshot.revision().to_owned(),
            files: sources.policies.iter().map(|file| show(&file.name)).collect(),
            count: snapshot.policy_count(),
        },
        suites: reports,
        passed,
        failed,
        coverage,
        mutation,
    })
}

/// A file name as the user wrote its directory (`policies/routes.cedar`, not the absolute path).
fn shown(name: &str, absolute: &Path, written: &Path) -> String {
    Path::new(name)
        .strip_prefix(absolute)
        .map_or_else(|_| name.to_owned(), |relative| written.join(relative).display().to_string())
}

fn read_suites(written: &Path, dir: &Path, known: &Known<'_>) -> Result<Vec<Suite>, AuthoringError> {
    let tests_dir = dir.join("tests");
    let entries = std::fs::read_dir(&tests_dir)
        .map_err(|source| AuthoringError::Read { path: written.join("tests"), source })?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| AuthoringError::Read { path: tests_dir.clone(), source })?;
        let path = entry.path();
        if path.extension().is_some_and(|extension| extension == "yaml" || extension == "yml") {
            paths.push(path);
        }
    }
    paths.sort();
    if paths.is_empty() {
        return Err(AuthoringError::Suite {
            problems: vec![format!("{}: no test suites (`*.yaml`)", written.join("tests").display())],
        });
    }
    let mut problems = Vec::new();
    let mut suites = Vec::new();
    let mut names: HashMap<String, String> = HashMap::new();
    for path in paths {
        let text = std::fs::read_to_string(&path)
            .map_err(|source| AuthoringError::Read { path: path.clone(), source })?;
        let file = shown(&path.display().to_string(), dir, written);
        match suite::parse(&file, &text, known) {
            Ok(suite) => {
                if let Some(previous) = names.insert(suite.name.clone(), file.clone()) {
                    problems
                        .push(format!("{file}: suite name `{}` is also the name of {previous}", suite.name));
                }
                suites.push(suite);
            }
            Err(found) => problems.extend(found),
        }
    }
    if !problems.is_empty() {
        return Err(AuthoringError::Suite { problems });
    }
    Ok(suites)
}

/// Sets up every principal of every suite: logs in, maps claims, builds identities.
async fn fixtures(
    app: &App,
    config: &Config,
    suites: &[Suite],
) -> Result<HashMap<(usize, String), Fixture>, AuthoringError> {
    let mut fixtures = HashMap::new();
    let mut problems = Vec::new();
    for (index, suite) in suites.iter().enumerate() {
        for (name, (spec, location)) in &suite.principals {
            let fingerprint = SecretDigest::of(format!("{}::{name}", suite.name).as_bytes()).fingerprint();
            let fixture = match spec {
                PrincipalSpec::Authorization(value) => Ok(Fixture::Credential(Secret::new(value.0.clone()))),
                PrincipalSpec::Login { username, password } => app
                    .sessions()
                    .login(username, &Secret::new(password.0.clone()), None)
                    .await
                    .map(|tokens| {
                        Fixture::Session(Secret::new(format!("Bearer {}", tokens.access_token.expose())))
                    })
                    .map_err(|error| format!("login as `{username}` failed: {error}")),
                PrincipalSpec::AuthInfo(inline) => {
                    let mut auth =
                        AuthInfo::new(inline.credential_kind.into(), &inline.subject, inline.roles.clone());
                    auth.scopes = inline.scopes.clone();
                    auth.tenant = inline.tenant.clone();
                    auth.client_id = inline.client_id.clone();
                    auth.issuer = inline.issuer.clone();
                    auth.resource = inline.resource.clone();
                    auth.expires_at = inline.expires_at.map(|instant| instant.0);
                    auth.extra = inline.extra.clone();
                    Ok(Fixture::Identity(Arc::new(auth), fingerprint))
                }
                PrincipalSpec::Jwt(jwt) => {
                    let issuer = match &jwt.issuer {
                        Some(wanted) => config.credentials.jwt.iter().find(|issuer| &issuer.issuer == wanted),
                        None => config.credentials.jwt.first(),
                    };
                    match issuer {
                        // `suite::parse` checked the issuer against the same list.
                        None => Err("no JWT issuer is configured".to_owned()),
                        Some(issuer) => {
                            let mut claims = jwt.claims.clone();
                            claims.entry("iss").or_insert_with(|| issuer.issuer.clone().into());
                            issuer
                                .claims
                                .mapping()
                                .auth_info(CredentialKind::Jwt, &claims)
                                .map(|mut auth| {
                                    auth.leeway = issuer.leeway.0;
                                    Fixture::Identity(Arc::new(auth), fingerprint)
                                })
                                .map_err(|error| format!("claims do not map to an identity: {error}"))
                        }
                    }
                }
            };
            match fixture {
                Ok(fixture) => {
                    fixtures.insert((index, name.clone()), fixture);
                }
                Err(problem) => problems.push(format!("{location}: principals.{name}: {problem}")),
            }
        }
    }
    if !problems.is_empty() {
        return Err(AuthoringError::Suite { problems });
    }
    Ok(fixtures)
}

/// Test names to run.
enum Filter {
    All,
    Substring(String),
    Glob(glob::Pattern),
}

impl Filter {
    fn new(filter: Option<&str>) -> Result<Self, AuthoringError> {
        Ok(match filter {
            None | Some("") => Filter::All,
            Some(text) if text.contains(['*', '?', '[']) => {
                Filter::Glob(glob::Pattern::new(text).map_err(|error| AuthoringError::Filter {
                    filter: text.to_owned(),
                    reason: error.to_string(),
                })?)
            }
            Some(text) => Filter::Substring(text.to_owned()),
        })
    }

    fn matches(&self, suite: &str, test: &str) -> bool {
        let full = format!("{suite}::{test}");
        match self {
            Filter::All => true,
            Filter::Substring(text) => full.contains(text.as_str()),
            Filter::Glob(pattern) => pattern.matches(test) || pattern.matches(&full),
        }
    }
}

async fn run_case(
    engine: &Engine,
    fixtures: &HashMap<(usize, String), Fixture>,
    suite: usize,
    case: &Case,
) -> Result<TestReport, String> {
    let now = case.now.unwrap_or_else(unix_now);
    let authentication = match &case.principal {
        None => Authentication::Anonymous,
        Some(name) => match fixtures.get(&(suite, name.clone())) {
            Some(Fixture::Credential(value)) => engine.authenticate_at(value.expose(), now).await,
            Some(Fixture::Session(value)) => engine.authenticate(value.expose()).await,
            Some(Fixture::Identity(auth, fingerprint)) if auth.is_expired(now) => Authentication::Failed {
                scheme: Some(Scheme::Bearer),
                error: CredentialError::Expired,
                fingerprint: fingerprint.clone(),
            },
            Some(Fixture::Identity(auth, fingerprint)) => Authentication::Authenticated {
                auth: Arc::clone(auth),
                scheme: Scheme::Bearer,
                fingerprint: fingerprint.clone(),
            },
            // INVARIANT: `suite::parse` refused tests naming undefined principals, and
            // `fixtures` set up every defined one or failed.
            None => return Err(format!("{}: principal `{name}` is not set up", case.location)),
        },
    };
    let decision = engine
        .check_authenticated_at(&authentication, &case.target, &case.facts, now)
        .map_err(|error| format!("{}: the engine refuses this target: {error}", case.target_location))?;
    Ok(compare(case, &decision))
}

fn compare(case: &Case, decision: &Decision) -> TestReport {
    let mut policies = decision.policy_ids.clone();
    policies.sort();
    let actual = Actual {
        outcome: decision.outcome.as_str(),
        policies,
        reason: decision.reason.clone(),
        error: decision.error_code(),
        errors: decision.errors.clone(),
    };
    let expect = &case.expect;
    let mut mismatches = Vec::new();
    if !expect.outcome.matches(decision.outcome) {
        mismatches.push(format!("outcome: expected {}, got {}", expect.outcome.as_str(), actual.outcome));
    }
    if let Some(expected) = &expect.policies {
        let mut expected = expected.clone();
        expected.sort();
        if expected != actual.policies {
            mismatches.push(format!("policies: expected {}, got {}", ids(&expected), ids(&actual.policies)));
        }
    }
    if let Some(reason) = &expect.reason {
        if *reason != actual.reason {
            mismatches.push(format!("reason: expected {reason:?}, got {:?}", actual.reason));
        }
    }
    if let Some(error) = expect.error {
        if error.as_str() != actual.error {
            let got = if actual.error.is_empty() { "none (allowed)" } else { actual.error };
            mismatches.push(format!("error: expected {}, got {got}", error.as_str()));
        }
    }
    TestReport {
        name: case.name.clone(),
        location: case.location.clone(),
        principal: case.principal.clone(),
        target: case.target_text.clone(),
        now: case.now,
        passed: mismatches.is_empty(),
        expected: expect.clone(),
        actual,
        mismatches,
    }
}

/// `[a, b]`.
pub(super) fn ids(ids: &[String]) -> String {
    format!("[{}]", ids.join(", "))
}

fn coverage(
    outline: &[PolicyOutline],
    suites: &[SuiteReport],
    threshold: Option<f64>,
    show: &dyn Fn(&str) -> String,
) -> CoverageReport {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for test in suites.iter().flat_map(|suite| &suite.tests) {
        for id in &test.actual.policies {
            *counts.entry(id.as_str()).or_default() += 1;
        }
    }
    let mut files: BTreeMap<&str, Vec<PolicyCoverage>> = BTreeMap::new();
    let mut unexercised = Vec::new();
    for policy in outline {
        let tests = counts.get(policy.id.as_str()).copied().unwrap_or(0);
        if tests == 0 && !policy.shadow {
            unexercised.push(policy.id.clone());
        }
        files.entry(policy.file.as_str()).or_default().push(PolicyCoverage {
            id: policy.id.clone(),
            line: policy.line,
            effect: policy.effect.as_str(),
            shadow: policy.shadow,
            tests,
        });
    }
    let total = outline.iter().filter(|policy| !policy.shadow).count();
    let exercised = total - unexercised.len();
    #[allow(clippy::cast_precision_loss)] // policy counts are far below 2^52
    let percent = if total == 0 { 100.0 } else { exercised as f64 * 100.0 / total as f64 };
    CoverageReport {
        exercised,
        total,
        percent,
        threshold,
        met: threshold.is_none_or(|threshold| percent >= threshold),
        files: files
            .into_iter()
            .map(|(file, policies)| FileCoverage { file: show(file), policies })
            .collect(),
        unexercised,
    }
}

/// Runs the selected tests against every mutant. A mutant is killed when a test that passed
/// on the real set fails on it; with failing tests there is nothing to compare against.
async fn mutate(
    engine: &Engine,
    sources: &PolicySources,
    fixtures: &HashMap<(usize, String), Fixture>,
    selected: &[(usize, &Case)],
    failed: usize,
    show: &dyn Fn(&str) -> String,
) -> Result<MutationReport, AuthoringError> {
    let mutants = policy::mutants(sources)?;
    let mut report = MutationReport {
        skipped: None,
        total: mutants.len(),
        killed: 0,
        refused: 0,
        survived: 0,
        mutants: Vec::with_capacity(mutants.len()),
    };
    if failed > 0 {
        report.skipped = Some(format!("{failed} test(s) fail on the policies as written; fix them first"));
        return Ok(report);
    }
    for mutant in mutants {
        let mut entry = MutantReport {
            policy: mutant.policy_id.clone(),
            file: show(&mutant.file),
            line: mutant.line,
            mutation: mutant.mutation.to_string(),
            status: MutantStatus::Survived,
            killed_by: None,
            diagnostic: None,
            text: mutant.text.clone(),
        };
        // One engine for every mutant: only the policy set is swapped, the credentials and
        // sessions stay.
        match engine.policies().reload(&mutant.sources) {
            Err(error) => {
                entry.status = MutantStatus::Refused;
                let first = match error {
                    policy::PolicyError::Invalid { diagnostics } => {
                        diagnostics.into_iter().next().unwrap_or_default()
                    }
                    other => other.to_string(),
                };
                // Its `file:line:column` is in the mutated text, which exists nowhere: drop it.
                let message = first
                    .strip_prefix(&format!("{}:", mutant.file))
                    .and_then(|rest| rest.split_once(": ").map(|(_, message)| message.to_owned()));
                entry.diagnostic = Some(message.unwrap_or(first));
            }
            Ok(_) => {
                for (suite, case) in selected {
                    let result = run_case(engine, fixtures, *suite, case)
                        .await
                        .map_err(|problem| AuthoringError::Suite { problems: vec![problem] })?;
                    if !result.passed {
                        entry.status = MutantStatus::Killed;
                        entry.killed_by = Some(case.full_name.clone());
                        break;
                    }
                }
            }
        }
        match entry.status {
            MutantStatus::Killed => report.killed += 1,
            MutantStatus::Refused => report.refused += 1,
            MutantStatus::Survived => report.survived += 1,
        }
        report.mutants.push(entry);
    }
    engine.policies().reload(sources)?;
    Ok(report)
}
