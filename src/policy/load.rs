//! Reading policy sources, parsing, strict validation against the schema, and diagnostics
//! that name file, line and column.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{PolicyId, PolicySet, Schema, ValidationMode, Validator};
use miette::Diagnostic;
use sha2::{Digest, Sha256};

use super::request::Names;
use super::{PolicyMeta, PolicySnapshot};

/// The name of the schema file inside a policy directory.
pub const SCHEMA_FILE: &str = "schema.cedarschema";

/// The schema cedargate sends requests in: the shipped `policies/schema.cedarschema`, the
/// starting point of every policy directory (`cedargate policy schema`).
pub const SCHEMA: &str = include_str!("../../policies/schema.cedarschema");

/// One source text and the name diagnostics use for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Path or embedded name, shown in diagnostics.
    pub name: String,
    /// The text.
    pub text: String,
}

/// Schema plus policy files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySources {
    /// The Cedar schema (`schema.cedarschema`).
    pub schema: SourceFile,
    /// The `*.cedar` files, in name order.
    pub policies: Vec<SourceFile>,
}

/// Why a policy set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A file or directory could not be read.
    #[error("cannot read `{path}`: {source}")]
    Read {
        /// What was being read.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The schema or the policies are invalid; one line per problem, each with file:line:col.
    #[error("invalid policies:\n{}", .diagnostics.join("\n"))]
    Invalid {
        /// Every problem found.
        diagnostics: Vec<String>,
    },
}

impl PolicySources {
    /// Reads `dir/schema.cedarschema` and every `dir/*.cedar` (sorted by name).
    ///
    /// Fails when the directory or a file cannot be read, or when the schema is missing.
    pub fn from_dir(dir: &Path) -> Result<Self, PolicyError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path)
                .map_err(|source| PolicyError::Read { path: path.to_path_buf(), source })
        };
        let schema_path = dir.join(SCHEMA_FILE);
        let schema = SourceFile { name: schema_path.display().to_string(), text: read(&schema_path)? };
        let entries =
            std::fs::read_dir(dir).map_err(|source| PolicyError::Read { path: dir.to_path_buf(), source })?;
        let mut paths = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| PolicyError::Read { path: dir.to_path_buf(), source })?;
            let path = entry.path();
            if path.extension().is_some_and(|extension| extension == "cedar") {
                paths.push(path);
            }
        }
        paths.sort();
        let mut policies = Vec::with_capacity(paths.len());
        for path in paths {
            policies.push(SourceFile { name: path.display().to_string(), text: read(&path)? });
        }
        Ok(Self { schema, policies })
    }

    /// The demo policies compiled into the binary (the `policies/` directory of the repository).
    pub fn embedded_demo() -> Self {
        Self {
            schema: SourceFile {
                name: "<embedded>/policies/schema.cedarschema".to_owned(),
                text: SCHEMA.to_owned(),
            },
            policies: vec![
                SourceFile {
                    name: "<embedded>/policies/mcp.cedar".to_owned(),
                    text: include_str!("../../policies/mcp.cedar").to_owned(),
                },
                SourceFile {
                    name: "<embedded>/policies/routes.cedar".to_owned(),
                    text: include_str!("../../policies/routes.cedar").to_owned(),
                },
            ],
        }
    }

    fn revision(&self) -> String {
        let mut hasher = Sha256::new();
        for file in std::iter::once(&self.schema).chain(&self.policies) {
            hasher.update(file.name.as_bytes());
            hasher.update([0]);
            hasher.update(file.text.as_bytes());
            hasher.update([0]);
        }
        hex::encode(&hasher.finalize()[..6])
    }
}

/// Parses, names, validates and checks `sources`; all problems are reported at once.
pub(super) fn load(
    sources: &PolicySources,
    names: &Names,
    generation: u64,
) -> Result<PolicySnapshot, PolicyError> {
    let mut diagnostics = Vec::new();
    let schema = match Schema::from_cedarschema_str(&sources.schema.text) {
        Ok((schema, _warnings)) => Some(schema),
        Err(error) => {
            render(&sources.schema, &error, &mut diagnostics);
            None
        }
    };

    let mut policies = PolicySet::new();
    // `@shadow` policies: validated with the rest, evaluated beside them, never enforced.
    let mut shadow = PolicySet::new();
    let mut meta = HashMap::new();
    // Which file each policy came from, for validation diagnostics.
    let mut origin: HashMap<PolicyId, usize> = HashMap::new();
    for (file_index, file) in sources.policies.iter().enumerate() {
        let parsed = match PolicySet::from_str(&file.text) {
            Ok(parsed) => parsed,
            Err(error) => {
                render(file, &error, &mut diagnostics);
                continue;
            }
        };
        if parsed.templates().next().is_some() {
            diagnostics.push(format!("{}: policy templates are not supported", file.name));
        }
        let stem = Path::new(&file.name)
            .file_stem()
            .map_or_else(|| file.name.clone(), |stem| stem.to_string_lossy().into_owned());
        for (index, policy) in parsed.policies().enumerate() {
            let id = policy.annotation("id").map_or_else(|| format!("{stem}#{index}"), str::to_owned);
            let id = PolicyId::new(&id);
            if let Some(previous) = origin.get(&id) {
                let previous = sources.policies.get(*previous).map_or("?", |f| f.name.as_str());
                diagnostics.push(format!(
                    "{}: policy id `{id}` is already used in {previous}",
                    locate_policy(file, policy)
                ));
                continue;
            }
            meta.insert(
                id.clone(),
                PolicyMeta {
                    reason: policy.annotation("reason").map(str::to_owned),
                    scopes: policy
                        .annotation("scopes")
                        .map(|scopes| scopes.split_whitespace().map(str::to_owned).collect())
                        .unwrap_or_default(),
                },
            );
            origin.insert(id.clone(), file_index);
            let set = if policy.annotation("shadow").is_some() { &mut shadow } else { &mut policies };
            if let Err(error) = set.add(policy.new_id(id)) {
                diagnostics.push(format!("{}: {error}", file.name));
            }
        }
    }

    let Some(schema) = schema else {
        return Err(PolicyError::Invalid { diagnostics });
    };
    // The enforced set with the shadow policies in it: what would decide if they were enforced.
    let with_shadow = (!shadow.is_empty()).then(|| {
        let mut all = policies.clone();
        for policy in shadow.policies() {
            if let Err(error) = all.add(policy.clone()) {
                diagnostics.push(error.to_string());
            }
        }
        all
    });
    let validation = Validator::new(schema.clone())
        .validate(with_shadow.as_ref().unwrap_or(&policies), ValidationMode::Strict);
    for error in validation.validation_errors() {
        match origin.get(error.policy_id()).and_then(|index| sources.policies.get(*index)) {
            Some(file) => render(file, error, &mut diagnostics),
            None => diagnostics.push(error.to_string()),
        }
    }
    for warning in validation.validation_warnings() {
        tracing::warn!(policy_id = %warning.policy_id(), "policy validation warning: {warning}");
    }
    if let Err(problem) = super::request::check_schema(names, &schema) {
        diagnostics.push(format!(
            "{}: the schema does not accept the requests cedargate sends: {problem}",
            sources.schema.name
        ));
    }
    if !diagnostics.is_empty() {
        return Err(PolicyError::Invalid { diagnostics });
    }

    let action_entities = schema.action_entities().map_err(|error| PolicyError::Invalid {
        diagnostics: vec![format!("{}: {error}", sources.schema.name)],
    })?;
    let route_actions = super::request::route_actions(names, &schema);
    let anonymous = super::request::Prepared::new(names, &action_entities, generation, None)
        .map_err(|error| PolicyError::Invalid { diagnostics: vec![error] })?;
    Ok(PolicySnapshot {
        shadow_ids: shadow.policies().map(|policy| policy.id().clone()).collect(),
        policies,
        with_shadow,
        action_entities,
        route_actions,
        generation,
        anonymous: Arc::new(anonymous),
        meta,
        revision: sources.revision(),
    })
}

/// `file:line:col` of a policy's first character, or just the file.
fn locate_policy(file: &SourceFile, policy: &cedar_policy::Policy) -> String {
    let text = policy.to_string();
    let needle = text.lines().find(|line| !line.trim_start().starts_with('@')).unwrap_or("");
    match file.text.find(needle.trim()) {
        Some(offset) if !needle.trim().is_empty() => {
            let (line, column) = line_column(&file.text, offset);
            format!("{}:{line}:{column}", file.name)
        }
        _ => file.name.clone(),
    }
}

/// Renders a diagnostic and its related diagnostics as `file:line:col: message` lines.
fn render(file: &SourceFile, diagnostic: &dyn Diagnostic, out: &mut Vec<String>) {
    render_one(file, diagnostic, out);
    if let Some(related) = diagnostic.related() {
        for related in related {
            render_one(file, related, out);
        }
    }
}

fn render_one(file: &SourceFile, diagnostic: &dyn Diagnostic, out: &mut Vec<String>) {
    let first_label = diagnostic.labels().and_then(|mut labels| labels.next());
    let mut line = match &first_label {
        Some(label) => {
            let (line, column) = line_column(&file.text, label.offset());
            format!("{}:{line}:{column}: {diagnostic}", file.name)
        }
        None => format!("{}: {diagnostic}", file.name),
    };
    if let Some(label) = first_label.as_ref().and_then(|label| label.label()) {
        let _ = write!(line, " ({label})");
    }
    if let Some(help) = diagnostic.help() {
        let _ = write!(line, "; help: {help}");
    }
    out.push(line);
}

/// 1-based line and column of a byte offset.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.chars().count(), |newline| {
        before.get(newline + 1..).map_or(0, |rest| rest.chars().count())
    }) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::line_column;

    #[test]
    fn line_column_counts_from_one() {
        let text = "ab\ncd\nef";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 4), (2, 2));
        assert_eq!(line_column(text, 6), (3, 1));
        assert_eq!(line_column(text, 100), (3, 3));
    }
}
