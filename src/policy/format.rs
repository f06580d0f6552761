//! `cedargate policy fmt`: Cedar's own formatter (`cedar-policy-formatter`, of the same release
//! as `cedar-policy`) over the `*.cedar` files of a directory. It keeps comments and
//! annotations and checks, itself, that the formatted text parses to the same policies.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::PolicySet;

use super::findings::{Finding, ReportStyle, Severity};
use super::load::{PolicyError, SourceFile};

/// What formatting a directory did (or, with `--check`, would do).
#[derive(Debug, Default)]
pub struct FormatReport {
    /// Every `*.cedar` file looked at, in name order.
    pub files: Vec<PathBuf>,
    /// The files whose text changed (or would change).
    pub changed: Vec<PathBuf>,
    /// Files that could not be formatted (they do not parse), with why.
    pub failed: Vec<Finding>,
}

/// The Cedar formatter's text for `source` (80 columns, 2-space indent, the Cedar CLI's
/// defaults).
///
/// Fails, with file:line:col, when `source` does not parse, or when the formatter refuses it.
pub fn format_policies(source: &SourceFile, style: ReportStyle) -> Result<String, Box<Finding>> {
    if let Some(offset) = super::load::too_deep(&source.text) {
        return Err(Box::new(super::load::nesting_finding(source, offset, style)));
    }
    if let Err(parse_error) = PolicySet::from_str(&source.text) {
        let findings = Finding::from_diagnostic(source, &parse_error, Severity::Error, style);
        let first = findings.into_iter().next();
        return Err(Box::new(
            first.unwrap_or_else(|| Finding::plain(&source.name, parse_error.to_string(), Severity::Error)),
        ));
    }
    cedar_policy_formatter::policies_str_to_pretty(&source.text, &cedar_policy_formatter::Config::default())
        .map_err(|report| {
            let message = report.chain().map(ToString::to_string).collect::<Vec<_>>().join(": ");
            Box::new(Finding::plain(
                &source.name,
                format!("the Cedar formatter refused it: {message}"),
                Severity::Error,
            ))
        })
}

/// Formats every `dir/*.cedar`; with `write`, replaces each changed file atomically (a
/// temporary file in the same directory, renamed over it), so a watcher or a server reading
/// the directory never sees half a file.
///
/// Fails when the directory or a file cannot be read or written.
pub fn format_dir(dir: &Path, write: bool, style: ReportStyle) -> Result<FormatReport, PolicyError> {
    let read_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PolicyError::Read { path, source }
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_error(dir))? {
        let path = entry.map_err(read_error(dir))?.path();
        if path.extension().is_some_and(|extension| extension == "cedar") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    let mut report = FormatReport::default();
    for path in files {
        let text = super::load::read_source(&path).map_err(read_error(&path))?;
        let source = SourceFile { name: path.display().to_string(), text };
        match format_policies(&source, style) {
            Err(finding) => report.failed.push(*finding),
            Ok(formatted) if formatted == source.text => {}
            Ok(formatted) => {
                if write {
                    replace_atomically(&path, &formatted).map_err(read_error(&path))?;
                }
                report.changed.push(path.clone());
            }
        }
        report.files.push(path);
    }
    Ok(report)
}

/// Writes `text` to a temporary file beside `path` (same permissions) and renames it over
/// `path`.
fn replace_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let file_name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    // Not `*.cedar`, so a directory watcher or a concurrent load never takes it for a policy.
    let temporary = path.with_file_name(format!(".{file_name}.{}.fmt-tmp", std::process::id()));
    let permissions = std::fs::metadata(path)?.permissions();
    // `create_new`: never through a symlink or into a file someone else put at that name.
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&temporary)?;
    let result = (|| {
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::set_permissions(&temporary, permissions)?;
        std::fs::rename(&temporary, path)
    })();
    if result.is_err() {
        // Ours: `create_new` made it.
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> SourceFile {
        SourceFile { name: "p.cedar".into(), text: text.into() }
    }

    fn format(text: &str) -> String {
        format_policies(&source(text), ReportStyle::OneLine).unwrap()
    }

    const MESSY: &str = "// header comment\n\n@id(\"a\") @reason(\"why\")\npermit(principal in Role::\"user\",action,resource is Route)\n  when {   resource.path like \"/a/*\" // trailing\n   && context.authenticated } ;\n// between\nforbid (principal, action, resource) unless { principal in Role::\"admin\" };\n// the end\n";

    #[test]
    fn formatting_is_idempotent_and_keeps_comments_and_annotations() {
        let once = format(MESSY);
        assert_ne!(once, MESSY, "the sample is not formatted yet");
        assert_eq!(format(&once), once, "formatting twice changes nothing");
        for kept in
            ["// header comment", "// trailing", "// between", "// the end", "@id(\"a\")", "@reason(\"why\")"]
        {
            assert!(once.contains(kept), "{kept} lost:\n{once}");
        }
        let before = PolicySet::from_str(MESSY).unwrap();
        let after = PolicySet::from_str(&once).unwrap();
        let effects = |set: &PolicySet| set.policies().map(|p| p.to_json().unwrap()).collect::<Vec<_>>();
        assert_eq!(effects(&before), effects(&after), "the policies are the same");
    }

    #[test]
    fn tricky_text_keeps_every_policy_and_comment() {
        let tricky = "@id(\"a\") @reason(\"no // comment here; nor } this\")\npermit(principal,action,resource) when { context.subject == \"//not-a-comment\" && context.tenant like \"caf\u{e9}*\" };// end of a\n@id(\"b\")\n// before b's effect\nforbid(principal,action,resource)unless{context.issuer==\"\\\"//\\\"\"};  // the very end, no newline";
        let once = format(tricky);
        assert_eq!(format(&once), once, "idempotent");
        for kept in ["// end of a", "// before b's effect", "// the very end, no newline"] {
            assert!(once.contains(kept), "{kept} lost:\n{once}");
        }
        let json = |text: &str| {
            PolicySet::from_str(text).unwrap().policies().map(|p| p.to_json().unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(json(tricky), json(&once), "the policies are the same");
    }

    #[cfg(unix)]
    #[test]
    fn a_planted_symlink_at_the_temporary_name_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let messy = dir.path().join("a.cedar");
        std::fs::write(&messy, MESSY).unwrap();
        let planted = dir.path().join(format!(".a.cedar.{}.fmt-tmp", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let _ = format_dir(dir.path(), true, ReportStyle::OneLine);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious", "written through a symlink");
    }

    #[test]
    fn the_shipped_policies_are_formatted() {
        for (name, text) in [
            ("routes.cedar", include_str!("../../policies/routes.cedar")),
            ("mcp.cedar", include_str!("../../policies/mcp.cedar")),
        ] {
            assert_eq!(format(text), text, "run `cedargate policy fmt policies` ({name})");
        }
    }

    #[test]
    fn a_file_that_does_not_parse_names_file_line_and_column() {
        let error = format_policies(
            &source("permit (principal, action, resource);\nforbid (principal"),
            ReportStyle::OneLine,
        )
        .unwrap_err();
        assert!(error.to_string().starts_with("p.cedar:2:"), "{error}");
    }

    #[test]
    fn a_directory_is_checked_then_rewritten_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let messy = dir.path().join("a.cedar");
        let tidy = dir.path().join("b.cedar");
        let broken = dir.path().join("c.cedar");
        std::fs::write(&messy, MESSY).unwrap();
        std::fs::write(&tidy, format(MESSY)).unwrap();
        std::fs::write(&broken, "permit (").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not policy").unwrap();

        let check = format_dir(dir.path(), false, ReportStyle::OneLine).unwrap();
        assert_eq!(check.files.len(), 3);
        assert_eq!(check.changed, vec![messy.clone()]);
        assert_eq!(check.failed.len(), 1);
        assert_eq!(std::fs::read_to_string(&messy).unwrap(), MESSY, "--check writes nothing");

        let written = format_dir(dir.path(), true, ReportStyle::OneLine).unwrap();
        assert_eq!(written.changed, vec![messy.clone()]);
        assert_eq!(std::fs::read_to_string(&messy).unwrap(), format(MESSY));
        assert_eq!(std::fs::read_to_string(&broken).unwrap(), "permit (", "a broken file is left alone");
        let again = format_dir(dir.path(), false, ReportStyle::OneLine).unwrap();
        assert!(again.changed.is_empty());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains("fmt-tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
