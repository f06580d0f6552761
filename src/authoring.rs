//! Policy authoring: `cedargate policy test`. YAML suites (`DIR/tests/*.yaml`) name
//! principals (raw credentials resolved by the configured backends, logins, inline
//! identities, JWT claims mapped by an issuer's claim mapping), targets, request facts and a
//! frozen clock, and expect an outcome, the determining policies and the reason. A run reports
//! as text, JSON or JUnit XML, counts which policies determined which tests (coverage), and
//! re-runs the suites against mutants of the policy set to list the changes no test notices.
//!
//! The format is documented in `docs/policy-tests.md`. This module sits above `app`: a test
//! builds the real service from the config, so a credential is resolved exactly as it would
//! be when served, and only the policies and the clock are the test's.

mod locate;
mod report;
mod runner;
mod suite;

use std::path::PathBuf;

use crate::policy::PolicyError;
use crate::AppError;

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
}

#[cfg(test)]
mod tests;
