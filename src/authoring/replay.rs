//! `cedargate policy replay`: every request of a decision log decided again, by the engine the
//! config builds, against a candidate policy set; the decisions that would change, and those
//! another set of policies would determine.
//!
//! Only the policy set is the candidate's: the routes, path rules and engine settings are the
//! config's, the identity is the recorded one (credentials are not resolved again: the record
//! holds no credential), and the clock is the record's `evaluatedAt`.

mod record;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::AuthoringError;
use crate::config::Config;
use crate::engine::{Authentication, Engine, RequestTenant};
use crate::model::{quote, AuthInfo, Extra, McpKind, Scheme, Target, ToolCall};
use crate::policy::{self, PolicySources, ReportStyle, Severity};
use crate::App;

pub use record::{
    is_decision_input, CredentialState, DecisionRecord, LogLine, RecordReader, RecordedInput, RecordedShadow,
    DECISION_EVENT, FORMAT_VERSION, MAX_LINE_BYTES,
};

/// The most changes (and the most policy-only differences) the text report lists; JSON has all.
pub const TEXT_LISTING_CAP: usize = 50;

/// What `cedargate policy replay` is asked to do.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The candidate policy directory.
    pub dir: PathBuf,
    /// Where the engine's routes, path rules and settings come from (the embedded demo's
    /// without `--config`).
    pub config: Config,
    /// How invalid policies' findings are rendered.
    pub style: ReportStyle,
}

/// How the replay report is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ReplayFormat {
    /// For people: a summary, then each change (at most 50 listed).
    #[default]
    Text,
    /// One JSON object with every change.
    Json,
}

/// The result of a replay.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayReport {
    /// The log, as named (`<stdin>` for `-`).
    pub log: String,
    /// The candidate set.
    pub policies: CandidatePolicies,
    /// Decision records read.
    pub records: usize,
    /// Other lines skipped (other log events, blank lines).
    pub other_lines: usize,
    /// Records decided again.
    pub redecided: usize,
    /// Records not decided again, by reason.
    pub skipped: Skipped,
    /// Records whose outcome would change (`changes.len()`).
    pub changed: usize,
    /// Records whose outcome stays but whose determining policies differ
    /// (`policyChanges.len()`).
    pub policies_differ: usize,
    /// The revisions of the policy sets that made the recorded decisions, with how many
    /// records each made (`""`: no policy was consulted).
    pub recorded_revisions: BTreeMap<String, usize>,
    /// Every decision whose outcome would change, in log order.
    pub changes: Vec<Change>,
    /// Every decision with the same outcome but other determining policies, in log order.
    pub policy_changes: Vec<Change>,
}

/// The candidate policy set.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CandidatePolicies {
    /// Its directory, as given.
    pub dir: String,
    /// Its revision.
    pub revision: String,
    /// How many policies it has.
    pub count: usize,
}

/// The records that were not decided again.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Skipped {
    /// All of them.
    pub total: usize,
    /// The credential was refused (401): no policy was consulted.
    pub credential_refused: usize,
    /// A credential backend was unavailable (503): no policy was consulted.
    pub credential_unavailable: usize,
    /// The request was refused for its tenant: no policy was consulted.
    pub tenant_refused: usize,
    /// A decision input was masked.
    pub masked: usize,
    /// Each masked decision input, with the number of skipped records it was masked in.
    pub masked_paths: BTreeMap<String, usize>,
}

/// One decision that would be different.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// The log line of its record.
    pub line: usize,
    /// The recorded decision's id.
    pub decision_id: String,
    /// When it was decided.
    pub time: String,
    /// The wire it came over.
    pub wire: String,
    /// The target as recorded.
    pub target: Value,
    /// The target in words: `route GET /users/7`, `tool echo on server files`.
    pub request: String,
    /// The subject; `None` for a caller without a credential.
    pub subject: Option<String>,
    /// The recorded decision.
    pub from: Side,
    /// The candidate's decision.
    pub to: Side,
    /// Policies that determine the candidate's decision and did not determine the recorded one.
    pub policies_added: Vec<String>,
    /// Policies that determined the recorded decision and do not determine the candidate's.
    pub policies_removed: Vec<String>,
}

/// One side of a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Side {
    /// `OUTCOME_ALLOWED`, `OUTCOME_UNAUTHENTICATED`, `OUTCOME_FORBIDDEN`,
    /// `OUTCOME_UNAVAILABLE`, or `OUTCOME_INVALID_REQUEST` when the target is now refused as
    /// malformed (as `BatchCheck` names it).
    pub outcome: &'static str,
    /// The determining policies, sorted.
    pub policy_ids: Vec<String>,
    /// The reason.
    pub reason: String,
}

const INVALID_REQUEST: &str = "OUTCOME_INVALID_REQUEST";

impl ReplayReport {
    /// 1 when any outcome would change, else 0. (Errors never get here: they are an
    /// [`AuthoringError`], exit 2.)
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.changes.is_empty())
    }

    /// The report in `format`.
    ///
    /// Fails only if the JSON writer does.
    pub fn render(&self, format: ReplayFormat) -> Result<String, AuthoringError> {
        match format {
            ReplayFormat::Text => Ok(self.text()),
            ReplayFormat::Json => serde_json::to_string_pretty(self)
                .map(|mut json| {
                    json.push('\n');
                    json
                })
                .map_err(|error| AuthoringError::Report(error.to_string())),
        }
    }

    fn text(&self) -> String {
        let mut out = String::new();
        let policies = &self.policies;
        let _ = writeln!(out, "decision log: {}", self.log);
        let _ = writeln!(
            out,
            "candidate policies: {} (revision {}, {})",
            policies.dir,
            policies.revision,
            plural(policies.count, "policy", "policies")
        );
        let revisions: Vec<String> = self
            .recorded_revisions
            .iter()
            .filter(|(revision, _)| !revision.is_empty())
            .map(|(revision, count)| format!("{revision} ({count})"))
            .collect();
        if !revisions.is_empty() {
            let _ = writeln!(out, "recorded under revision {}", revisions.join(", "));
        }
        let _ = write!(
            out,
            "{} read, {} re-decided, {} skipped",
            plural(self.records, "record", "records"),
            self.redecided,
            self.skipped.total
        );
        let skipped = &self.skipped;
        let mut reasons = Vec::new();
        if skipped.credential_refused > 0 {
            reasons.push(format!("{} credential refused", skipped.credential_refused));
        }
        if skipped.credential_unavailable > 0 {
            reasons.push(format!("{} credential backend unavailable", skipped.credential_unavailable));
        }
        if skipped.tenant_refused > 0 {
            reasons.push(format!("{} refused for its tenant", skipped.tenant_refused));
        }
        if skipped.masked > 0 {
            let paths: Vec<&str> = skipped.masked_paths.keys().map(String::as_str).collect();
            reasons.push(format!("{} with masked input: {}", skipped.masked, paths.join(", ")));
        }
        if !reasons.is_empty() {
            let _ = write!(out, " ({})", reasons.join("; "));
        }
        if self.other_lines > 0 {
            let _ = write!(out, "; {} ignored", plural(self.other_lines, "other line", "other lines"));
        }
        out.push('\n');
        match self.changed {
            0 => out.push_str("no decision would change"),
            changed => {
                let _ = write!(out, "{} would change", plural(changed, "decision", "decisions"));
            }
        }
        match self.policies_differ {
            0 => out.push('\n'),
            1 => out.push_str("; 1 would keep its outcome, determined by other policies\n"),
            differ => {
                let _ = writeln!(out, "; {differ} would keep their outcome, determined by other policies");
            }
        }
        if !self.changes.is_empty() {
            let _ = writeln!(
                out,
                "\nwould change (by: +a policy that now determines it, -one that no longer does):"
            );
            listing(&mut out, &self.changes, |out, change| {
                let _ = writeln!(
                    out,
                    "    {} -> {}{}",
                    side_text(&change.from),
                    side_text(&change.to),
                    if change.to.reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", change.to.reason)
                    }
                );
                let mut by: Vec<String> = change.policies_added.iter().map(|id| format!("+{id}")).collect();
                by.extend(change.policies_removed.iter().map(|id| format!("-{id}")));
                if !by.is_empty() {
                    let _ = writeln!(out, "    by: {}", by.join(", "));
                }
            });
        }
        if !self.policy_changes.is_empty() {
            let _ = writeln!(out, "\nsame outcome, other determining policies:");
            listing(&mut out, &self.policy_changes, |out, change| {
                let _ = writeln!(
                    out,
                    "    {}: {} -> {}",
                    outcome_word(change.from.outcome),
                    ids(&change.from.policy_ids),
                    ids(&change.to.policy_ids)
                );
            });
        }
        out
    }
}

/// Each change's head line, then `detail`, at most [`TEXT_LISTING_CAP`] of them.
fn listing(out: &mut String, changes: &[Change], detail: impl Fn(&mut String, &Change)) {
    for change in changes.iter().take(TEXT_LISTING_CAP) {
        let _ = writeln!(
            out,
            "  line {}  {}  {}  {}  {}  {}",
            change.line,
            change.decision_id,
            change.time,
            change.wire,
            change.request,
            change
                .subject
                .as_ref()
                .map_or_else(|| "anonymous".to_owned(), |subject| format!("subject `{subject}`"))
        );
        detail(out, change);
    }
    if changes.len() > TEXT_LISTING_CAP {
        let _ = writeln!(out, "  and {} more (--format json lists all)", changes.len() - TEXT_LISTING_CAP);
    }
}

fn side_text(side: &Side) -> String {
    format!("{} {}", outcome_word(side.outcome), ids(&side.policy_ids))
}

/// `allowed`, `forbidden`, ...: the text report's word for an outcome's API name.
fn outcome_word(api_name: &str) -> String {
    if api_name == INVALID_REQUEST {
        return "refused as malformed".to_owned();
    }
    api_name.strip_prefix("OUTCOME_").unwrap_or(api_name).to_ascii_lowercase()
}

fn ids(ids: &[String]) -> String {
    format!("[{}]", ids.join(", "))
}

fn plural(count: usize, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

/// Replays the log at `path` (`-`: standard input); see [`replay`].
///
/// Fails as [`replay`] does, and when the file cannot be opened.
pub fn replay_path(options: ReplayOptions, path: &Path) -> Result<ReplayReport, AuthoringError> {
    if path == Path::new("-") {
        return replay(options, std::io::stdin().lock(), "<stdin>");
    }
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|error| AuthoringError::Log { log: name.clone(), error })?;
    replay(options, std::io::BufReader::new(file), &name)
}

/// Decides every replayable record of `log` (named `log_name` in errors and the report) again
/// with the engine `options.config` builds and the policies of `options.dir`, and reports
/// what would change.
///
/// Fails (exit 2) when the policies do not load (with every finding, as `policy validate`
/// shows them), the config's backends cannot be built, the log cannot be read, a line is
/// longer than [`MAX_LINE_BYTES`], a line that claims to be a decision record is not a valid
/// record of version 1, or the log holds no decision record at all.
pub fn replay(
    options: ReplayOptions,
    log: impl BufRead,
    log_name: &str,
) -> Result<ReplayReport, AuthoringError> {
    let dir = std::path::absolute(&options.dir)
        .map_err(|source| AuthoringError::Read { path: options.dir.clone(), source })?;
    let sources = PolicySources::from_dir(&dir)?;
    let validation = policy::validate(&sources, options.style);
    let errors = validation.count(Severity::Error);
    if errors > 0 {
        return Err(AuthoringError::InvalidPolicies {
            dir: options.dir.clone(),
            errors,
            warnings: validation.count(Severity::Warning),
            findings: validation
                .findings
                .iter()
                .map(|finding| finding.rendered.trim_end().to_owned())
                .collect(),
        });
    }
    let mut config = options.config;
    config.policies.dir = Some(dir);
    let app = App::build(config)?;
    let engine = Arc::clone(app.engine());
    // INVARIANT: the set decided with is the one validated above, loaded as any set is.
    let snapshot = engine.policies().reload(&sources)?;

    let mut report = ReplayReport {
        log: log_name.to_owned(),
        policies: CandidatePolicies {
            dir: options.dir.display().to_string(),
            revision: snapshot.revision().to_owned(),
            count: snapshot.policy_count(),
        },
        records: 0,
        other_lines: 0,
        redecided: 0,
        skipped: Skipped::default(),
        changed: 0,
        policies_differ: 0,
        recorded_revisions: BTreeMap::new(),
        changes: Vec::new(),
        policy_changes: Vec::new(),
    };
    for line in RecordReader::new(log, log_name) {
        let record = match line? {
            LogLine::Other => {
                report.other_lines += 1;
                continue;
            }
            LogLine::Record(record) => record,
        };
        report.records += 1;
        *report.recorded_revisions.entry(record.policy_revision.clone()).or_default() += 1;
        match &record.input {
            RecordedInput::NotConsulted(state) => {
                report.skipped.total += 1;
                if *state == CredentialState::Unavailable {
                    report.skipped.credential_unavailable += 1;
                } else {
                    report.skipped.credential_refused += 1;
                }
            }
            RecordedInput::TenantRefused => {
                report.skipped.total += 1;
                report.skipped.tenant_refused += 1;
            }
            RecordedInput::Masked(paths) => {
                report.skipped.total += 1;
                report.skipped.masked += 1;
                for path in paths {
                    *report.skipped.masked_paths.entry(path.clone()).or_default() += 1;
                }
            }
            RecordedInput::Request { target, auth_info, facts, evaluated_at } => {
                report.redecided += 1;
                match redecide(&engine, &record, target, auth_info.as_ref(), facts, *evaluated_at) {
                    Redecided::OutcomeChanged(change) => report.changes.push(change),
                    Redecided::PoliciesDiffer(change) => report.policy_changes.push(change),
                    Redecided::Same => {}
                }
            }
        }
    }
    if report.records == 0 {
        return Err(AuthoringError::NoRecords { log: log_name.to_owned(), lines: report.other_lines });
    }
    report.changed = report.changes.len();
    report.policies_differ = report.policy_changes.len();
    Ok(report)
}

enum Redecided {
    Same,
    OutcomeChanged(Change),
    PoliciesDiffer(Change),
}

/// One record decided again, at its clock, as the identity it recorded.
fn redecide(
    engine: &Engine,
    record: &DecisionRecord,
    target: &Target,
    auth_info: Option<&Arc<AuthInfo>>,
    facts: &Extra,
    now: i64,
) -> Redecided {
    let authentication = match auth_info {
        None => Authentication::Anonymous,
        Some(auth) => Authentication::Authenticated {
            auth: Arc::clone(auth),
            scheme: Scheme::Bearer,
            fingerprint: record.fingerprint.clone().unwrap_or_default(),
        },
    };
    // Under the tenant whose set decided it: a record decided by a tenant's policies is never
    // judged by the base set alone.
    let tenant = record.tenant.as_deref().map_or(RequestTenant::Unnamed, RequestTenant::Named);
    let to = match engine.check_authenticated_in_at(tenant, &authentication, target, facts, now) {
        Ok(decision) => Side {
            outcome: decision.outcome.api_name(),
            policy_ids: sorted(&decision.policy_ids),
            reason: decision.reason,
        },
        Err(error) => Side {
            outcome: INVALID_REQUEST,
            policy_ids: Vec::new(),
            reason: format!("now refused as malformed: {error}"),
        },
    };
    let from = Side {
        outcome: record.outcome.api_name(),
        policy_ids: sorted(&record.policy_ids),
        reason: record.reason.clone(),
    };
    let outcome_changed = from.outcome != to.outcome;
    if !outcome_changed && from.policy_ids == to.policy_ids {
        return Redecided::Same;
    }
    let before: BTreeSet<&String> = from.policy_ids.iter().collect();
    let after: BTreeSet<&String> = to.policy_ids.iter().collect();
    let change = Change {
        line: record.line,
        decision_id: record.decision_id.clone(),
        time: record.time.clone(),
        wire: record.wire.clone(),
        target: record.target.clone().unwrap_or(Value::Null),
        request: request_text(target),
        subject: auth_info.map(|auth| auth.subject.clone()),
        policies_added: after.difference(&before).map(|id| (*id).clone()).collect(),
        policies_removed: before.difference(&after).map(|id| (*id).clone()).collect(),
        from,
        to,
    };
    if outcome_changed {
        Redecided::OutcomeChanged(change)
    } else {
        Redecided::PoliciesDiffer(change)
    }
}

fn sorted(ids: &[String]) -> Vec<String> {
    let mut ids = ids.to_vec();
    ids.sort();
    ids
}

/// The target as asked: `route GET /users/7 (template /users/{id})`, `tool echo on server s`.
fn request_text(target: &Target) -> String {
    let call = |kind: &str, call: &ToolCall| {
        if call.server.is_empty() {
            format!("{kind} {}", quote(&call.name))
        } else {
            format!("{kind} {} on server {}", quote(&call.name), quote(&call.server))
        }
    };
    match target {
        Target::Route(route) => {
            let mut text = format!("route {} {}", quote(&route.method), quote(&route.path));
            if let Some(template) = &route.template {
                let _ = write!(text, " (template {})", quote(template));
            }
            text
        }
        Target::Tool(tool) => call("tool", tool),
        Target::Mcp(kind, request) => call(McpKind::from(*kind).as_str(), request),
    }
}

#[cfg(test)]
mod tests;
