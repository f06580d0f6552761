//! Problems found in a policy directory, each with file, line and column: the one-line form
//! the server logs and `PolicyError` carries, and miette's rendering with the snippet of the
//! right file and Cedar's help for `cedargate policy validate`.

use std::fmt::{self, Write as _};

use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceCode};

use super::load::SourceFile;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The set would not load: the server refuses it.
    Error,
    /// The set loads, but something in it is likely a mistake (a policy that can never apply,
    /// a policy without `@id`).
    Warning,
}

/// How [`Finding::rendered`] is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReportStyle {
    /// No graphical rendering (the server's load path): `rendered` is the one-line form.
    #[default]
    OneLine,
    /// miette's graphical report, Unicode, without colour (files, pipes, tests).
    Plain,
    /// miette's graphical report with colour (a terminal).
    Color,
}

/// One problem in a policy directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// The file it is in (as named in [`SourceFile::name`]).
    pub file: String,
    /// 1-based line and column of the first label, when the problem has a place.
    pub position: Option<(usize, usize)>,
    /// What is wrong, one line.
    pub message: String,
    /// Cedar's (or cedargate's) suggestion, if any.
    pub help: Option<String>,
    /// The report as the [`ReportStyle`] asked: a miette report with the snippet, or the
    /// one-line form.
    pub rendered: String,
    /// The one-line form: `file:line:col: message (label); help: help`.
    one_line: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.one_line)
    }
}

impl Finding {
    /// Findings of `diagnostic` (and of its related diagnostics, each its own finding) in
    /// `file`.
    pub(super) fn from_diagnostic(
        file: &SourceFile,
        diagnostic: &dyn Diagnostic,
        severity: Severity,
        style: ReportStyle,
    ) -> Vec<Self> {
        let source = NamedSource::new(&file.name, file.text.clone());
        let mut findings = vec![Self::one(file, &source, diagnostic, severity, style)];
        if let Some(related) = diagnostic.related() {
            for related in related {
                findings.push(Self::one(file, &source, related, severity, style));
            }
        }
        findings
    }

    /// A finding cedargate itself raises, labelled at `span` (byte offset and length) in `file`.
    pub(super) fn problem(
        file: &SourceFile,
        span: Option<(usize, usize)>,
        message: String,
        help: Option<String>,
        severity: Severity,
        style: ReportStyle,
    ) -> Self {
        let problem = Problem { message, help, span };
        let source = NamedSource::new(&file.name, file.text.clone());
        Self::one(file, &source, &problem, severity, style)
    }

    fn one(
        file: &SourceFile,
        source: &NamedSource<String>,
        diagnostic: &dyn Diagnostic,
        severity: Severity,
        style: ReportStyle,
    ) -> Self {
        let first_label = diagnostic.labels().and_then(|mut labels| labels.next());
        let position = first_label.as_ref().map(|label| line_column(&file.text, label.offset()));
        let message = message_with_causes(diagnostic);
        let help = diagnostic.help().map(|help| help.to_string());
        let mut one_line = match position {
            Some((line, column)) => format!("{}:{line}:{column}: {message}", file.name),
            None => format!("{}: {message}", file.name),
        };
        if let Some(label) = first_label.as_ref().and_then(|label| label.label()) {
            let _ = write!(one_line, " ({label})");
        }
        if let Some(help) = &help {
            let _ = write!(one_line, "; help: {help}");
        }
        let rendered = render(diagnostic, source, severity, style).unwrap_or_else(|| one_line.clone());
        Self { severity, file: file.name.clone(), position, message, help, rendered, one_line }
    }

    /// A finding for a file with no text to point into (a file that could not be read).
    pub(super) fn plain(file: &str, message: String, severity: Severity) -> Self {
        let one_line = format!("{file}: {message}");
        Self {
            severity,
            file: file.to_owned(),
            position: None,
            message,
            help: None,
            rendered: one_line.clone(),
            one_line,
        }
    }
}

/// The diagnostic's message and, when they add something, its causes (Cedar's entity JSON
/// errors say "error during entity deserialization" and keep the detail in the cause).
fn message_with_causes(diagnostic: &dyn Diagnostic) -> String {
    let mut message = diagnostic.to_string();
    let mut cause = diagnostic.source();
    while let Some(error) = cause {
        let text = error.to_string();
        if !message.contains(&text) {
            let _ = write!(message, ": {text}");
        }
        cause = error.source();
    }
    message
}

/// miette's graphical report of `diagnostic` with `source` as its named source; `None` for
/// [`ReportStyle::OneLine`] or when miette cannot draw it (a label outside the text).
fn render(
    diagnostic: &dyn Diagnostic,
    source: &NamedSource<String>,
    severity: Severity,
    style: ReportStyle,
) -> Option<String> {
    let theme = match style {
        ReportStyle::OneLine => return None,
        ReportStyle::Plain => GraphicalTheme::unicode_nocolor(),
        ReportStyle::Color => GraphicalTheme::unicode(),
    };
    let handler = GraphicalReportHandler::new_themed(theme).with_width(100).with_links(false);
    // Without a label there is no snippet to name the file: the message does.
    let unplaced = diagnostic.labels().is_none_or(|mut labels| labels.next().is_none());
    let named = InFile { inner: diagnostic, source, severity, file_in_message: unplaced };
    let mut out = String::new();
    handler.render_report(&mut out, &named).ok()?;
    Some(out)
}

/// A diagnostic shown against a named source. Cedar's diagnostics carry their own source
/// text, without a file name; miette prefers a diagnostic's own source over one given from
/// outside, so this wrapper replaces it (the offsets are the same: each file is parsed alone).
#[derive(Debug)]
struct InFile<'a> {
    inner: &'a dyn Diagnostic,
    source: &'a NamedSource<String>,
    severity: Severity,
    /// Start the message with the file name (there is no snippet that names it).
    file_in_message: bool,
}

impl fmt::Display for InFile<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.file_in_message {
            write!(formatter, "{}: ", self.source.name())?;
        }
        fmt::Display::fmt(self.inner, formatter)
    }
}

impl std::error::Error for InFile<'_> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source()
    }
}

impl Diagnostic for InFile<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.inner.code()
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.inner.help()
    }

    fn url<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.inner.url()
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        Some(self.source)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.inner.labels()
    }
}

/// A problem cedargate finds itself (a duplicate id, a template, a policy without `@id`).
#[derive(Debug)]
struct Problem {
    message: String,
    help: Option<String>,
    span: Option<(usize, usize)>,
}

impl fmt::Display for Problem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.message)
    }
}

impl std::error::Error for Problem {}

impl Diagnostic for Problem {
    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.help.as_ref().map(|help| Box::new(help) as Box<dyn fmt::Display>)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let (offset, length) = self.span?;
        Some(Box::new(std::iter::once(LabeledSpan::underline(offset..offset + length))))
    }
}

/// 1-based line and column of a byte offset.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    Lines::new(text).at(offset)
}

/// Line and column of offsets met in increasing order, counting each newline once (a file of
/// thousands of policies would otherwise be counted from its start for each).
pub(super) struct Lines<'a> {
    text: &'a str,
    /// Where counting stopped, and the line there.
    offset: usize,
    line: usize,
}

impl<'a> Lines<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        Self { text, offset: 0, line: 1 }
    }

    /// The 1-based line and column (in characters) of byte `offset`.
    pub(super) fn at(&mut self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        if offset < self.offset {
            (self.offset, self.line) = (0, 1);
        }
        let before = self.text.get(..offset).unwrap_or(self.text);
        self.line += before.get(self.offset..).map_or(0, |skipped| skipped.matches('\n').count());
        self.offset = before.len();
        let column = before.rfind('\n').map_or_else(
            || before.chars().count(),
            |newline| before.get(newline + 1..).map_or(0, |rest| rest.chars().count()),
        ) + 1;
        (self.line, column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_from_one() {
        let text = "ab\ncd\nef";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 4), (2, 2));
        assert_eq!(line_column(text, 6), (3, 1));
        assert_eq!(line_column(text, 100), (3, 3));
        let mut lines = Lines::new(text);
        let forward: Vec<_> = [0, 1, 3, 4, 6, 8].into_iter().map(|offset| lines.at(offset)).collect();
        assert_eq!(forward, [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 3)]);
        assert_eq!(lines.at(2), (1, 3), "an earlier offset counts again from the start");
        assert_eq!(lines.at(5), (2, 3));
    }

    #[test]
    fn a_rendered_problem_names_its_file_and_shows_the_snippet() {
        let file = SourceFile { name: "dir/p.cedar".into(), text: "line one\nline two\n".into() };
        let finding = Finding::problem(
            &file,
            Some((9, 4)),
            "something is off".into(),
            Some("do better".into()),
            Severity::Warning,
            ReportStyle::Plain,
        );
        assert_eq!(finding.to_string(), "dir/p.cedar:2:1: something is off; help: do better");
        assert_eq!(finding.position, Some((2, 1)));
        assert!(finding.rendered.contains("[dir/p.cedar:2:1]"), "{}", finding.rendered);
        assert!(finding.rendered.contains("line two"), "{}", finding.rendered);
        assert!(finding.rendered.contains("help: do better"), "{}", finding.rendered);
        assert!(finding.rendered.contains('⚠'), "{}", finding.rendered);
    }
}
