//! Reading policy sources, parsing, strict validation against the schema, static entities,
//! and findings that name file, line and column.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{Entities, PolicyId, PolicySet, Schema, ValidationMode, Validator};
use sha2::{Digest, Sha256};

use super::findings::{Finding, Lines, ReportStyle, Severity};
use super::request::Names;
use super::{PolicyMeta, PolicySnapshot};

/// The name of the schema file inside a policy directory.
pub const SCHEMA_FILE: &str = "schema.cedarschema";

/// The name of the optional static entities file inside a policy directory: Cedar's entity
/// JSON, for example a role hierarchy (`Role::"admin"` with the parent `Role::"user"`).
pub const ENTITIES_FILE: &str = "entities.json";

/// Largest schema, policy or entities file read (a policy directory is text an author wrote;
/// a file above this is a mistake, or someone filling the server's memory).
pub const MAX_SOURCE_BYTES: u64 = 16 * 1024 * 1024;

/// Deepest nesting of brackets (and `if`s; `<>` in a schema) a policy or schema file may have. Cedar's parser recurses
/// once per level and a stack overflow aborts the process, so deeper text is refused before
/// Cedar sees it; hand-written policies nest a few levels.
pub const MAX_NESTING: usize = 32;

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
    /// The static entities (`entities.json`), if the directory has them.
    pub entities: Option<SourceFile>,
}

/// Where a policy starts in its file (its first annotation, else its effect).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PolicyLocation {
    /// The file, as named in [`SourceFile::name`].
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl fmt::Display for PolicyLocation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}:{}:{}", self.file, self.line, self.column)
    }
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
    /// Reads `dir/schema.cedarschema`, every `dir/*.cedar` (sorted by name) and, when it
    /// exists, `dir/entities.json`.
    ///
    /// Fails when the directory or a file cannot be read, or when the schema is missing.
    pub fn from_dir(dir: &Path) -> Result<Self, PolicyError> {
        let read = |path: &Path| {
            read_source(path).map_err(|source| PolicyError::Read { path: path.to_path_buf(), source })
        };
        let schema_path = dir.join(SCHEMA_FILE);
        let schema = SourceFile { name: schema_path.display().to_string(), text: read(&schema_path)? };
        // Only the directory's own files: `tenants/` and any other subdirectory are not read.
        let policies = cedar_files(dir)?;
        let entities_path = dir.join(ENTITIES_FILE);
        let entities = match read_source(&entities_path) {
            Ok(text) => Some(SourceFile { name: entities_path.display().to_string(), text }),
            // Absent only when there is nothing at all: a dangling symlink is an error, so a
            // role hierarchy is never dropped without a word.
            Err(error)
                if error.kind() == std::io::ErrorKind::NotFound
                    && std::fs::symlink_metadata(&entities_path).is_err() =>
            {
                None
            }
            Err(source) => return Err(PolicyError::Read { path: entities_path, source }),
        };
        Ok(Self { schema, policies, entities })
    }

    /// The `*.cedar` files of the tenant directory `dir` (`<policy dir>/tenants/<name>`), by
    /// name; none when the directory does not exist.
    ///
    /// Fails when the directory or a file cannot be read (a dangling symlink included).
    pub fn tenant_files(dir: &Path) -> Result<Vec<SourceFile>, PolicyError> {
        if std::fs::symlink_metadata(dir).is_err_and(|error| error.kind() == std::io::ErrorKind::NotFound) {
            return Ok(Vec::new());
        }
        cedar_files(dir)
    }

    /// These sources with a tenant's policies after their own: one set, validated as a whole,
    /// in which a base `forbid` overrides a tenant's `permit` as Cedar decides any set.
    pub fn with_tenant(&self, tenant: &[SourceFile]) -> Self {
        let mut sources = self.clone();
        sources.policies.extend_from_slice(tenant);
        sources
    }

    /// The set of a tenant whose own policies never loaded: the base schema and entities and
    /// one `forbid` of everything, so its requests are refused (never decided by the base
    /// set alone) until its files load.
    pub fn not_loaded(&self, tenant: &str) -> Self {
        let text = format!(
            "@id(\"{NOT_LOADED_POLICY}\")\n\
             @reason(\"the policies of tenant `{tenant}` did not load; its requests are refused until they do\")\n\
             forbid (principal, action, resource);\n"
        );
        Self {
            schema: self.schema.clone(),
            policies: vec![SourceFile { name: format!("<tenant {tenant}: not loaded>"), text }],
            entities: self.entities.clone(),
        }
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
            entities: None,
        }
    }

    /// A hash of the contents and the file names within the directory, not of where the
    /// directory is: the same set checked out elsewhere has the same revision.
    fn revision(&self) -> String {
        let mut hasher = Sha256::new();
        for file in std::iter::once(&self.schema).chain(&self.policies).chain(&self.entities) {
            let name = Path::new(&file.name)
                .file_name()
                .map_or(file.name.as_str(), |name| name.to_str().unwrap_or(file.name.as_str()));
            hasher.update(name.as_bytes());
            hasher.update([0]);
            hasher.update(file.text.as_bytes());
            hasher.update([0]);
        }
        hex::encode(&hasher.finalize()[..6])
    }
}

/// The subdirectory of a policy directory holding one directory of policies per tenant.
pub const TENANTS_DIR: &str = "tenants";

/// The id of the one policy of a tenant whose own policies never loaded.
pub const NOT_LOADED_POLICY: &str = "cedargate.tenant_not_loaded";

/// The `*.cedar` files directly in `dir`, sorted by name.
fn cedar_files(dir: &Path) -> Result<Vec<SourceFile>, PolicyError> {
    let read = |path: &Path| {
        read_source(path).map_err(|source| PolicyError::Read { path: path.to_path_buf(), source })
    };
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
    Ok(policies)
}

/// The names of the directories under `<dir>/tenants/` that are not in `declared`: never read,
/// and worth a warning (a typo, or a tenant removed from the config).
pub fn undeclared_tenant_dirs<'a>(dir: &Path, declared: impl Fn(&str) -> bool + 'a) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir.join(TENANTS_DIR)) else { return Vec::new() };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.path().is_dir())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| !declared(name))
        .collect();
    names.sort();
    names
}

/// The text of the regular file at `path` (a symlink is followed: a ConfigMap volume is made
/// of them), at most [`MAX_SOURCE_BYTES`] long.
///
/// Fails for anything else: a FIFO or a device would block the reader or never end, and the
/// reloader holds its lock while it reads. (A file swapped for a FIFO between the check and
/// the open is not caught; whoever can do that can write the policies anyway.)
pub(super) fn read_source(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let refuse = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
    let metadata = std::fs::metadata(path)?;
    if !metadata.is_file() {
        return Err(refuse("not a regular file".to_owned()));
    }
    let too_large = || refuse(format!("larger than {MAX_SOURCE_BYTES} bytes"));
    if metadata.len() > MAX_SOURCE_BYTES {
        return Err(too_large());
    }
    let mut text = String::new();
    std::fs::File::open(path)?.take(MAX_SOURCE_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_SOURCE_BYTES {
        return Err(too_large());
    }
    Ok(text)
}

/// Where `text` first nests deeper than [`MAX_NESTING`]: brackets, plus the `if`s open inside
/// them (an `if` nests without a bracket). Strings and `//` comments are skipped. An upper
/// bound of what Cedar recurses on, cheap and without recursion itself.
pub(super) fn too_deep(text: &str) -> Option<usize> {
    nesting(text, false)
}

/// [`too_deep`] for a Cedar schema, where `<`/`>` nest too (`Set<Set<...>>`).
fn schema_too_deep(text: &str) -> Option<usize> {
    nesting(text, true)
}

fn nesting(text: &str, angles: bool) -> Option<usize> {
    // For each open bracket, the `if`s opened directly inside it; `ifs` counts all of them.
    let mut open: Vec<usize> = Vec::new();
    let mut ifs = 0usize;
    let mut chars = text.char_indices().peekable();
    let mut previous_word = false;
    while let Some((offset, c)) = chars.next() {
        let word = c.is_alphanumeric() || c == '_';
        match c {
            '"' => {
                while let Some((_, inner)) = chars.next() {
                    match inner {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '/' if chars.peek().is_some_and(|(_, next)| *next == '/') => {
                for (_, inner) in chars.by_ref() {
                    if inner == '\n' {
                        break;
                    }
                }
            }
            '(' | '[' | '{' => open.push(0),
            '<' if angles => open.push(0),
            '>' if angles => {
                ifs = ifs.saturating_sub(open.pop().unwrap_or(0));
            }
            ')' | ']' | '}' => {
                ifs = ifs.saturating_sub(open.pop().unwrap_or(0));
            }
            'i' if !previous_word
                && chars.peek().is_some_and(|(_, next)| *next == 'f')
                && text
                    .get(offset + 2..)
                    .and_then(|rest| rest.chars().next())
                    .is_none_or(|after| !(after.is_alphanumeric() || after == '_')) =>
            {
                ifs += 1;
                if let Some(count) = open.last_mut() {
                    *count += 1;
                }
            }
            _ => {}
        }
        previous_word = word;
        if open.len() + ifs > MAX_NESTING {
            return Some(offset);
        }
    }
    None
}

/// The finding for text [`too_deep`] refused at `offset`.
pub(super) fn nesting_finding(file: &SourceFile, offset: usize, style: ReportStyle) -> Finding {
    Finding::problem(
        file,
        Some((offset, 1)),
        format!(
            "nested more than {MAX_NESTING} levels deep: refused, as Cedar's parser could run out of stack"
        ),
        Some("flatten it: conditions chain `&&` and `||` without nesting".to_owned()),
        Severity::Error,
        style,
    )
}

/// Parses, names, validates and checks `sources`; all problems are reported at once, and
/// warnings are logged.
pub(super) fn load(
    sources: &PolicySources,
    names: &Names,
    generation: u64,
) -> Result<PolicySnapshot, PolicyError> {
    let (snapshot, findings) = check(sources, names, generation, ReportStyle::OneLine);
    for warning in findings.iter().filter(|finding| finding.severity == Severity::Warning) {
        tracing::warn!("policy warning: {warning}");
    }
    snapshot.ok_or_else(|| PolicyError::Invalid {
        diagnostics: findings
            .iter()
            .filter(|finding| finding.severity == Severity::Error)
            .map(ToString::to_string)
            .collect(),
    })
}

/// Entity types cedargate builds for every request; `entities.json` may not declare them,
/// as a request's own entity of the same uid would collide with it.
const PER_REQUEST_TYPES: &[&str] =
    &["User", "Anonymous", "Facts", "Route", "Tool", "Prompt", "McpResource", "McpMethod", "Action"];

/// Everything `load` does, keeping every finding: the snapshot when no finding is an error.
pub(super) fn check(
    sources: &PolicySources,
    names: &Names,
    generation: u64,
    style: ReportStyle,
) -> (Option<PolicySnapshot>, Vec<Finding>) {
    let mut findings = Vec::new();
    let error = |file: &SourceFile, diagnostic: &dyn miette::Diagnostic, out: &mut Vec<Finding>| {
        out.extend(Finding::from_diagnostic(file, diagnostic, Severity::Error, style));
    };
    let schema = if let Some(offset) = schema_too_deep(&sources.schema.text) {
        findings.push(nesting_finding(&sources.schema, offset, style));
        None
    } else {
        match Schema::from_cedarschema_str(&sources.schema.text) {
            Ok((schema, warnings)) => {
                for warning in warnings {
                    findings.extend(Finding::from_diagnostic(
                        &sources.schema,
                        &warning,
                        Severity::Warning,
                        style,
                    ));
                }
                Some(schema)
            }
            Err(schema_error) => {
                error(&sources.schema, &schema_error, &mut findings);
                None
            }
        }
    };

    let mut policies = PolicySet::new();
    // `@shadow` policies: validated with the rest, evaluated beside them, never enforced.
    let mut shadow = PolicySet::new();
    let mut meta = HashMap::new();
    let mut locations: HashMap<PolicyId, PolicyLocation> = HashMap::new();
    // Which file each policy came from, for validation findings.
    let mut origin: HashMap<PolicyId, usize> = HashMap::new();
    for (file_index, file) in sources.policies.iter().enumerate() {
        if let Some(offset) = too_deep(&file.text) {
            findings.push(nesting_finding(file, offset, style));
            continue;
        }
        let parsed = match PolicySet::from_str(&file.text) {
            Ok(parsed) => parsed,
            Err(parse_error) => {
                error(file, &parse_error, &mut findings);
                continue;
            }
        };
        if parsed.templates().next().is_some() {
            findings.push(Finding::problem(
                file,
                None,
                "policy templates are not supported".to_owned(),
                None,
                Severity::Error,
                style,
            ));
        }
        let stem = Path::new(&file.name)
            .file_stem()
            .map_or_else(|| file.name.clone(), |stem| stem.to_string_lossy().into_owned());
        // Policies come in source order, each with its exact source text: searching from the
        // end of the previous one finds each where it is.
        let mut cursor = 0;
        let mut lines = Lines::new(&file.text);
        for (index, policy) in parsed.policies().enumerate() {
            let span = policy.to_cedar().and_then(|text| {
                let offset = cursor + file.text.get(cursor..)?.find(&text)?;
                cursor = offset + text.len();
                let first_line = text.lines().next().map_or(0, str::len);
                Some((offset, first_line))
            });
            let location = {
                let (line, column) = span.map_or((1, 1), |(offset, _)| lines.at(offset));
                PolicyLocation { file: file.name.clone(), line, column }
            };
            let id = match super::annotation(policy, "id") {
                Some(id) => id.to_owned(),
                None => {
                    let id = format!("{stem}#{index}");
                    findings.push(Finding::problem(
                        file,
                        span,
                        format!("policy without `@id`: it is known as `{id}`, which changes when a policy is added above it"),
                        Some("give it a stable name with `@id(\"...\")`; test suites and decision logs refer to it".to_owned()),
                        Severity::Warning,
                        style,
                    ));
                    id
                }
            };
            let id = PolicyId::new(&id);
            if let Some(previous) = origin.get(&id) {
                let previous = sources.policies.get(*previous).map_or("?", |f| f.name.as_str());
                findings.push(Finding::problem(
                    file,
                    span,
                    format!("policy id `{id}` is already used in {previous}"),
                    None,
                    Severity::Error,
                    style,
                ));
                continue;
            }
            meta.insert(
                id.clone(),
                PolicyMeta {
                    reason: super::annotation(policy, "reason").map(str::to_owned),
                    scopes: super::annotation(policy, "scopes")
                        .map(|scopes| scopes.split_whitespace().map(str::to_owned).collect())
                        .unwrap_or_default(),
                },
            );
            origin.insert(id.clone(), file_index);
            locations.insert(id.clone(), location);
            let set = if super::annotation(policy, "shadow").is_some() { &mut shadow } else { &mut policies };
            if let Err(add_error) = set.add(policy.new_id(id)) {
                error(file, &add_error, &mut findings);
            }
        }
    }

    let Some(schema) = schema else {
        return (None, findings);
    };
    // The enforced set with the shadow policies in it: what would decide if they were enforced.
    let with_shadow = (!shadow.is_empty()).then(|| {
        let mut all = policies.clone();
        for policy in shadow.policies() {
            if let Err(add_error) = all.add(policy.clone()) {
                findings.push(Finding::plain(&sources.schema.name, add_error.to_string(), Severity::Error));
            }
        }
        all
    });
    let validation = Validator::new(schema.clone())
        .validate(with_shadow.as_ref().unwrap_or(&policies), ValidationMode::Strict);
    let file_of = |id: &PolicyId| origin.get(id).and_then(|index| sources.policies.get(*index));
    for validation_error in validation.validation_errors() {
        match file_of(validation_error.policy_id()) {
            Some(file) => error(file, validation_error, &mut findings),
            None => findings.push(Finding::plain(
                &sources.schema.name,
                validation_error.to_string(),
                Severity::Error,
            )),
        }
    }
    // A policy with an error gets no warnings besides: an unknown action also makes it
    // "impossible", which says less than the error.
    let failed: std::collections::HashSet<&PolicyId> =
        validation.validation_errors().map(|validation_error| validation_error.policy_id()).collect();
    for warning in validation.validation_warnings().filter(|warning| !failed.contains(warning.policy_id())) {
        match file_of(warning.policy_id()) {
            Some(file) => findings.extend(Finding::from_diagnostic(file, warning, Severity::Warning, style)),
            None => {
                findings.push(Finding::plain(&sources.schema.name, warning.to_string(), Severity::Warning))
            }
        }
    }
    if let Err(problem) = super::request::check_schema(names, &schema) {
        findings.push(Finding::plain(
            &sources.schema.name,
            format!("the schema does not accept the requests cedargate sends: {problem}"),
            Severity::Error,
        ));
    }

    let base_entities = match schema.action_entities() {
        Ok(actions) => actions,
        Err(actions_error) => {
            error(&sources.schema, &actions_error, &mut findings);
            return (None, findings);
        }
    };
    let base_entities = match &sources.entities {
        None => Some(base_entities),
        Some(file) => static_entities(file, base_entities, &schema, style, &mut findings),
    };
    if findings.iter().any(|finding| finding.severity == Severity::Error) {
        return (None, findings);
    }
    let Some(base_entities) = base_entities else {
        return (None, findings);
    };

    let route_actions = super::request::route_actions(names, &schema);
    let anonymous = match super::request::Prepared::new(names, &base_entities, generation, None) {
        Ok(anonymous) => anonymous,
        Err(problem) => {
            findings.push(Finding::plain(&sources.schema.name, problem, Severity::Error));
            return (None, findings);
        }
    };
    let sliced = super::slice::Slicer::new(&policies);
    let lists_share_store = super::request::lists_share_store(names, &base_entities, sliced.all());
    let snapshot = PolicySnapshot {
        shadow_ids: shadow.policies().map(|policy| policy.id().clone()).collect(),
        sliced_with_shadow: with_shadow
            .as_ref()
            .map(|with_shadow| super::slice::Slicer::sharing(with_shadow, &sliced)),
        sliced,
        policies,
        request_ancestors: super::request::request_ancestors(names, &base_entities),
        lists_share_store,
        base_entities: super::request::with_room_for_requests(names, base_entities),
        route_actions,
        generation,
        anonymous: Arc::new(anonymous),
        meta,
        locations,
        revision: sources.revision().into(),
    };
    (Some(snapshot), findings)
}

/// `actions` plus the entities of `file`, validated against the schema; `None` (with
/// findings) when they do not load.
fn static_entities(
    file: &SourceFile,
    actions: Entities,
    schema: &Schema,
    style: ReportStyle,
    findings: &mut Vec<Finding>,
) -> Option<Entities> {
    let parsed = match Entities::from_json_str(&file.text, Some(schema)) {
        Ok(parsed) => parsed,
        Err(entities_error) => {
            findings.extend(Finding::from_diagnostic(file, &entities_error, Severity::Error, style));
            return None;
        }
    };
    let mut refused = false;
    let mut declared = Vec::new();
    for entity in parsed.iter() {
        let uid = entity.uid();
        let type_name = uid.type_name().to_string();
        if PER_REQUEST_TYPES.contains(&type_name.as_str()) {
            // Actions come from the schema (and Cedar checked any listed here match it).
            if type_name != "Action" {
                refused = true;
                findings.push(Finding::plain(
                    &file.name,
                    format!(
                        "`{uid}`: `{type_name}` entities are built from each request, so they cannot be \
                         declared here; declare roles (`Role`) or servers (`Server`) instead"
                    ),
                    Severity::Error,
                ));
            }
            continue;
        }
        declared.push(entity.clone());
    }
    if refused {
        return None;
    }
    match actions.add_entities(declared, Some(schema)) {
        Ok(entities) => Some(entities),
        Err(entities_error) => {
            findings.extend(Finding::from_diagnostic(file, &entities_error, Severity::Error, style));
            None
        }
    }
}
