//! A run's report as text (for people), JSON (for tools) and JUnit XML (for CI).

use std::fmt::Write as _;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use super::runner::{ids, MutantStatus, TestReport, TestRun};
use super::AuthoringError;

/// How the report is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ReportFormat {
    /// For people.
    #[default]
    Text,
    /// One JSON document.
    Json,
    /// JUnit XML, one `<testsuite>` per suite (and one for mutants, one for the coverage
    /// threshold when they are asked for).
    Junit,
}

impl TestRun {
    /// The report in `format`.
    ///
    /// Fails only if the JSON or XML writer does.
    pub fn render(&self, format: ReportFormat) -> Result<String, AuthoringError> {
        match format {
            ReportFormat::Text => Ok(self.text()),
            ReportFormat::Json => serde_json::to_string_pretty(self)
                .map(|mut json| {
                    json.push('\n');
                    json
                })
                .map_err(|error| AuthoringError::Report(error.to_string())),
            ReportFormat::Junit => self.junit(),
        }
    }

    fn text(&self) -> String {
        let mut out = String::new();
        let policies = &self.policies;
        let _ = writeln!(
            out,
            "policies: {} ({}, {}, revision {})",
            policies.dir,
            plural(policies.files.len(), "file"),
            plural(policies.count, "policy"),
            policies.revision
        );
        for suite in &self.suites {
            let _ = writeln!(out, "\n{}  {}", suite.name, suite.file);
            for test in &suite.tests {
                if test.passed {
                    let _ = writeln!(out, "  ok    {}", test.name);
                } else {
                    let _ = writeln!(out, "  FAIL  {}  ({})", test.name, test.location);
                    out.push_str(&failure_text(test, "          "));
                }
            }
        }
        let total = self.passed + self.failed;
        if total == 0 {
            out.push_str("\nno test matches the filter\n");
        } else {
            let noun = if total == 1 { "test" } else { "tests" };
            let _ = writeln!(out, "\n{total} {noun}: {} passed, {} failed", self.passed, self.failed);
        }
        if let Some(coverage) = &self.coverage {
            let _ = write!(
                out,
                "\ncoverage: {} of {} policies determined a test ({:.1}%",
                coverage.exercised, coverage.total, coverage.percent
            );
            match coverage.threshold {
                Some(threshold) if coverage.met => {
                    let _ = write!(out, ", threshold {threshold}% met");
                }
                Some(threshold) => {
                    let _ = write!(out, ", BELOW the threshold of {threshold}%");
                }
                None => {}
            }
            out.push_str(")\n");
            for file in &coverage.files {
                let _ = writeln!(out, "  {}", file.file);
                let width = file.policies.iter().map(|policy| policy.id.len()).max().unwrap_or(0);
                for policy in &file.policies {
                    let tests = match policy.tests {
                        _ if policy.shadow => "shadow (never decides; not counted)".to_owned(),
                        0 => "NOT EXERCISED".to_owned(),
                        n => plural(n, "test"),
                    };
                    let _ = writeln!(
                        out,
                        "    {:>4}  {:<6}  {:<width$}  {tests}",
                        policy.line, policy.effect, policy.id
                    );
                }
            }
            if coverage.unexercised.is_empty() {
                out.push_str("  every policy determined at least one test\n");
            } else {
                let _ = writeln!(out, "  not exercised: {}", coverage.unexercised.join(", "));
            }
        }
        if let Some(mutation) = &self.mutation {
            match &mutation.skipped {
                Some(why) => {
                    let _ = writeln!(out, "\nmutants: not run: {why}");
                }
                None => {
                    let _ = writeln!(
                        out,
                        "\nmutants: {} made: {} killed by tests, {} refused by the validator, {} survived",
                        mutation.total, mutation.killed, mutation.refused, mutation.survived
                    );
                    for mutant in mutation.mutants.iter().filter(|m| m.status == MutantStatus::Survived) {
                        let _ = writeln!(
                            out,
                            "  SURVIVED  {}:{} `{}`: {}",
                            mutant.file, mutant.line, mutant.policy, mutant.mutation
                        );
                        if let Some(text) = &mutant.text {
                            for line in text.lines() {
                                let _ = writeln!(out, "              {line}");
                            }
                        }
                    }
                    if mutation.survived > 0 {
                        out.push_str("  no test noticed these changes: add tests that tell them apart\n");
                    }
                }
            }
        }
        out
    }

    fn junit(&self) -> Result<String, AuthoringError> {
        let mut report = Report::new("cedargate policy test");
        for suite in &self.suites {
            let mut junit = TestSuite::new(suite.name.as_str());
            for test in &suite.tests {
                let status = if test.passed {
                    TestCaseStatus::success()
                } else {
                    let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    status
                        .set_message(test.mismatches.join("; "))
                        .set_type("policy test failure")
                        .set_description(failure_text(test, ""));
                    status
                };
                let mut case = TestCase::new(test.name.as_str(), status);
                case.set_classname(suite.name.as_str());
                junit.add_test_case(case);
            }
            report.add_test_suite(junit);
        }
        if let Some(coverage) = &self.coverage {
            if let Some(threshold) = coverage.threshold {
                let mut junit = TestSuite::new("coverage");
                let status = if coverage.met {
                    TestCaseStatus::success()
                } else {
                    let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    status.set_message(format!(
                        "{:.1}% of the policies determined a test, below {threshold}%; not exercised: {}",
                        coverage.percent,
                        coverage.unexercised.join(", ")
                    ));
                    status
                };
                let mut case = TestCase::new(format!("at least {threshold}% of the policies"), status);
                case.set_classname("coverage");
                junit.add_test_case(case);
                report.add_test_suite(junit);
            }
        }
        if let Some(mutation) = &self.mutation {
            let mut junit = TestSuite::new("mutants");
            if let Some(why) = &mutation.skipped {
                let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
                status.set_message(why.as_str());
                junit.add_test_case(TestCase::new("mutants", status));
            }
            for mutant in &mutation.mutants {
                let status = match mutant.status {
                    MutantStatus::Killed | MutantStatus::Refused => TestCaseStatus::success(),
                    MutantStatus::Survived => {
                        let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                        status.set_message("no test noticed this mutant").set_type("surviving mutant");
                        if let Some(text) = &mutant.text {
                            status.set_description(text.as_str());
                        }
                        status
                    }
                };
                let mut case = TestCase::new(
                    format!("{}:{} {}: {}", mutant.file, mutant.line, mutant.policy, mutant.mutation),
                    status,
                );
                case.set_classname("mutants");
                let note = match (&mutant.killed_by, &mutant.diagnostic) {
                    (Some(test), _) => Some(format!("killed by {test}")),
                    (None, Some(diagnostic)) => Some(format!("refused by the validator: {diagnostic}")),
                    (None, None) => None,
                };
                if let Some(note) = note {
                    case.set_system_out(note);
                }
                junit.add_test_case(case);
            }
            report.add_test_suite(junit);
        }
        report.to_string().map_err(|error| AuthoringError::Report(error.to_string()))
    }
}

/// The lines that say how a failed test's decision differs from its expectation.
fn failure_text(test: &TestReport, indent: &str) -> String {
    let mut out = String::new();
    let principal = test.principal.as_deref().unwrap_or("no credential");
    let _ = writeln!(out, "{indent}principal {principal}, {}", test.target);
    for mismatch in &test.mismatches {
        let _ = writeln!(out, "{indent}{mismatch}");
    }
    let actual = &test.actual;
    let by = if actual.policies.is_empty() { "no policy".to_owned() } else { ids(&actual.policies) };
    let _ = writeln!(out, "{indent}decision: {} by {by}: {:?}", actual.outcome, actual.reason);
    for error in &actual.errors {
        let _ = writeln!(out, "{indent}evaluation error: {error}");
    }
    out
}

/// `1 test`, `2 tests`, `1 policy`, `2 policies`.
fn plural(count: usize, noun: &str) -> String {
    match (count, noun.strip_suffix('y')) {
        (1, _) => format!("1 {noun}"),
        (_, Some(stem)) => format!("{count} {stem}ies"),
        (_, None) => format!("{count} {noun}s"),
    }
}
