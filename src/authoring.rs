//! Policy authoring: `cedargate policy test` and `policy replay`. YAML suites (`DIR/tests/*.yaml`) name
//! principals (raw credentials resolved by the configured backends, logins, inline
//! identities, JWT claims mapped by an issuer's claim mapping), targets, request facts and a
//! frozen clock, and expect an outcome, the determining policies and the reason. A run reports
//! as text, JSON or JUnit XML, counts which policies determined which tests (coverage), and
//! re-runs the suites against mutants of the policy set to list the changes no test notices.
//! `cedargate policy replay` ([`replay`]) decides the requests of a decision log again against
//! a candidate policy set and reports the decisions that would change.
//!
//! The formats are documented in `docs/policy-tests.md` and `docs/decision-log.md`. This
//! module sits above `app`: a test or a replay builds the real service from the config, so a
//! request is decided exactly as it would be when served, and only the policies and the clock
//! are the test's (or the record's).

mod locate;
pub mod replay;
mod report;
mod runner;
mod suite;

use std::path::PathBuf;

use crate::policy::PolicyError;
use crate::AppError;

pub use replay::{replay, replay_path, ReplayFormat, ReplayOptions, ReplayReport};
pub use report::ReportFormat;
pub use runner::{run, TestOptions, TestRun};

/// Why a run could not be made (exit 2): invalid policies, config or suites.
#[derive(Debug, thiserror::Error)]
pub enum AuthoringError {
    /// The config's backends could not be built.
    #[error(transparent)]
    App(#[from] AppError),
    /// The policies do not load.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A directory or suite file could not be read.
    #[error("cannot read `{path}`: {source}")]
    Read {
        /// What was being read.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The suites are invalid; one `file:line:column: path: problem` line each.
    #[error("invalid test suites:\n{}", .problems.join("\n"))]
    Suite {
        /// Every problem found.
        problems: Vec<String>,
    },
    /// `--filter` is not a glob.
    #[error("--filter `{filter}` is not a glob pattern: {reason}")]
    Filter {
        /// The pattern.
        filter: String,
        /// Why.
        reason: String,
    },
    /// `--filter` selects no test: a typo would otherwise pass without running anything.
    #[error("--filter `{0}` matches no test (see the names with `--format json`)")]
    FilterMatchesNothing(String),
    /// The report could not be written.
    #[error("cannot write the report: {0}")]
    Report(String),
    /// The decision log could not be read.
    #[error("cannot read the decision log `{log}`: {error}")]
    Log {
        /// The log, as named.
        log: String,
        /// The I/O error (in the message, so not also a `source`).
        error: std::io::Error,
    },
    /// A line of the decision log is too long, or claims to be a decision record
    /// (`"event":"cedargate.decision"`) and is not a valid one of format version 1.
    #[error("{log}:{line}: {problem}")]
    Record {
        /// The log, as named.
        log: String,
        /// The 1-based line.
        line: usize,
        /// What is wrong, naming the field: `` `credential.state`: unknown variant ... ``.
        problem: String,
    },
    /// The decision log holds no decision record: a replay of it would test nothing.
    #[error("{log}: no decision record (a line with \"event\":\"cedargate.decision\") in {lines} lines: nothing to replay")]
    NoRecords {
        /// The log, as named.
        log: String,
        /// The lines it had.
        lines: usize,
    },
    /// The candidate policies do not load; every finding, as `policy validate` shows it.
    #[error(
        "the policies in `{}` are invalid: {errors} errors, {warnings} warnings\n{}",
        dir.display(),
        findings.join("\n")
    )]
    InvalidPolicies {
        /// The directory, as given.
        dir: PathBuf,
        /// How many errors.
        errors: usize,
        /// How many warnings.
        warnings: usize,
        /// Each finding, rendered.
        findings: Vec<String>,
    },
}

#[cfg(test)]
mod tests;
