//! Reloading a policy directory into a [`PolicyEngine`]: one reload at a time, off the async
//! workers, with the record `Admin/PolicyStatus` reports.
//!
//! Every trigger (the directory watcher, SIGHUP, `Admin/ReloadPolicies`) calls
//! [`PolicyReloader::reload`]. Reloads are serialized, and a burst of requests coalesces: a
//! request that waited while another reload ran is answered by the next reload to start, which
//! reads the files after the request was made, so no caller is told about files older than its
//! request, and a storm of a hundred triggers costs at most two reloads.

use crate::telemetry::metrics::metrics;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use super::{PolicyEngine, PolicyError, PolicySnapshot, PolicySources, SourceFile, TENANTS_DIR};

/// What asked for a reload, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadTrigger {
    /// The policy directory changed.
    Watch,
    /// SIGHUP.
    Signal,
    /// `Admin/ReloadPolicies`, or a library call.
    Request,
}

impl ReloadTrigger {
    /// The name in log events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Watch => "watch",
            Self::Signal => "signal",
            Self::Request => "request",
        }
    }
}

/// A reload that went through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// False when the files were exactly those already in force (nothing was swapped).
    pub changed: bool,
    /// The revision in force afterwards.
    pub revision: String,
}

/// Why a reload did not replace the set in force (which then stays).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    /// No policy directory is configured.
    #[error("no policy directory is configured: the embedded demo policies cannot be reloaded")]
    Embedded,
    /// The files could not be read or are invalid.
    #[error("policy reload refused, the last good set stays in force:\n{}", .diagnostics.join("\n"))]
    Rejected {
        /// One line per problem, `file:line:column: message` where a position is known.
        diagnostics: Vec<String>,
    },
}

/// A refused reload, as the status reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadFailure {
    /// When the reload was refused.
    pub at: SystemTime,
    /// One line per problem, `file:line:column: message` where a position is known.
    pub diagnostics: Vec<String>,
}

/// The policy set in force and how reloads went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyStatus {
    /// Short content hash of the set in force.
    pub revision: String,
    /// When the set in force was loaded.
    pub loaded_at: SystemTime,
    /// The policy directory, or `<embedded demo>`.
    pub source: String,
    /// The files of the set in force, schema first and `entities.json` (if any) last, by the
    /// names diagnostics use.
    pub files: Vec<String>,
    /// Number of policies in force.
    pub policy_count: usize,
    /// Whether the directory is being watched for changes.
    pub watching: bool,
    /// Reloads that went through (also those that found the files unchanged).
    pub reloads_succeeded: u64,
    /// Reloads refused.
    pub reloads_failed: u64,
    /// Why the latest reload was refused; `None` once a later one went through (the files on
    /// disk are then what is in force).
    pub last_error: Option<ReloadFailure>,
    /// Of `policy_count`, the `@shadow` policies (evaluated, never enforced).
    pub shadow_policy_count: usize,
    /// Decisions the `@shadow` policies would have changed, since start.
    pub shadow_disagreements: u64,
    /// Each tenant's set (the base set and its own directory), by name.
    pub tenants: Vec<TenantPolicyStatus>,
}

/// A tenant's policy set and how its reloads went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantPolicyStatus {
    /// The tenant.
    pub name: String,
    /// Short content hash of the tenant's set in force (the base files and its own).
    pub revision: String,
    /// Whether its own files ever loaded; until they do, its requests are refused.
    pub loaded: bool,
    /// When the set in force was loaded.
    pub loaded_at: SystemTime,
    /// The tenant's directory, `<policy dir>/tenants/<name>` (`<embedded demo>` without one).
    pub source: String,
    /// The tenant's own files in force.
    pub files: Vec<String>,
    /// Number of policies in force, the base ones included.
    pub policy_count: usize,
    /// Reloads of this tenant that went through (also those that found nothing changed).
    pub reloads_succeeded: u64,
    /// Reloads of this tenant refused.
    pub reloads_failed: u64,
    /// Why its latest reload was refused; `None` once a later one went through.
    pub last_error: Option<ReloadFailure>,
}

/// What the status is built from; replaced whole after each reload.
#[derive(Debug, Clone)]
struct Record {
    /// The sources in force, to tell an unchanged directory from a changed one.
    sources: Arc<PolicySources>,
    revision: String,
    policy_count: usize,
    loaded_at: SystemTime,
    succeeded: u64,
    failed: u64,
    last_error: Option<ReloadFailure>,
    /// What the latest reload answered, for the requests it covered.
    last_outcome: Result<Reloaded, ReloadError>,
}

/// Reloads one policy directory into a [`PolicyEngine`], one reload at a time.
#[derive(Debug)]
pub struct PolicyReloader {
    engine: Arc<PolicyEngine>,
    /// `None` for the embedded demo, which cannot be reloaded.
    dir: Option<PathBuf>,
    /// Held for the whole of a reload, including its blocking part, so reloads never overlap
    /// even when a caller gives up waiting. Never taken on the request path.
    running: Arc<tokio::sync::Mutex<()>>,
    /// Tickets handed to reload requests so far.
    requested: AtomicU64,
    /// Every ticket up to this one has been answered by a reload that started after it.
    covered: AtomicU64,
    watching: AtomicBool,
    record: ArcSwap<Record>,
    /// Each tenant's set, reloaded after the base set by the same reload.
    tenants: Vec<TenantPolicies>,
}

/// One tenant's policy set: the base set in force and the tenant's own directory, loaded,
/// validated and swapped together, apart from every other tenant's.
#[derive(Debug)]
pub struct TenantPolicies {
    name: String,
    /// `<policy dir>/tenants/<name>`; `None` for the embedded demo (the base set only).
    dir: Option<PathBuf>,
    engine: Arc<PolicyEngine>,
    record: ArcSwap<TenantRecord>,
}

/// What a tenant's status is built from; replaced whole after each of its reloads.
#[derive(Debug, Clone)]
struct TenantRecord {
    /// The tenant's own files in force; `None` until they first load.
    files: Option<Arc<Vec<SourceFile>>>,
    /// The base sources the set in force was built on: a change rebuilds the tenant.
    base: Arc<PolicySources>,
    revision: String,
    policy_count: usize,
    loaded_at: SystemTime,
    succeeded: u64,
    failed: u64,
    last_error: Option<ReloadFailure>,
}

impl TenantPolicies {
    /// Loads tenant `name`: the `base` sources (read from `base_dir`, `None` for the embedded
    /// demo) with the `*.cedar` files of `<base_dir>/tenants/<name>/`. A tenant whose files do
    /// not load gets a set that refuses all its requests, and the error in its status, until a
    /// reload loads them: one tenant's mistake never stops the service or another tenant.
    ///
    /// Fails only when not even that set loads (the base set itself is broken).
    pub fn load(
        name: &str,
        base_dir: Option<&Path>,
        base: &PolicySources,
        slice_cache_max_policies: usize,
    ) -> Result<Self, PolicyError> {
        let dir = base_dir.map(|dir| dir.join(TENANTS_DIR).join(name));
        let files = dir.as_deref().map_or_else(|| Ok(Vec::new()), PolicySources::tenant_files);
        let loaded = files.and_then(|files| {
            let engine = PolicyEngine::new(&base.with_tenant(&files))?;
            Ok((files, engine))
        });
        let (files, engine, last_error) = match loaded {
            Ok((files, engine)) => (Some(Arc::new(files)), engine, None),
            Err(error) => {
                tracing::error!(tenant = name, "the policies of tenant `{name}` did not load; its requests are refused until they do:\n{error}");
                let failure = ReloadFailure { at: SystemTime::now(), diagnostics: diagnostics_of(&error) };
                (None, PolicyEngine::new(&base.not_loaded(name))?, Some(failure))
            }
        };
        let engine = Arc::new(engine.with_slice_cache(slice_cache_max_policies));
        let snapshot = engine.snapshot();
        let record = TenantRecord {
            files,
            base: Arc::new(base.clone()),
            revision: snapshot.revision().to_owned(),
            policy_count: snapshot.policy_count(),
            loaded_at: SystemTime::now(),
            succeeded: 0,
            failed: u64::from(last_error.is_some()),
            last_error,
        };
        Ok(Self { name: name.to_owned(), dir, engine, record: ArcSwap::from_pointee(record) })
    }

    /// The tenant.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tenant's directory, `<policy dir>/tenants/<name>` (`None` for the embedded demo).
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The tenant's policies: what its requests are decided by.
    pub fn engine(&self) -> &Arc<PolicyEngine> {
        &self.engine
    }

    /// Reads the tenant's directory again and rebuilds its set when its files or the `base`
    /// sources in force changed; on any problem its set in force stays. Answers whether a new
    /// set was swapped in, or the problems.
    fn reload_now(&self, base: &Arc<PolicySources>, trigger: ReloadTrigger) -> Result<bool, Vec<String>> {
        let current = self.record.load_full();
        let files = match &self.dir {
            Some(dir) => read_settled(|| PolicySources::tenant_files(dir)),
            None => Ok(Vec::new()),
        };
        let unchanged = |files: &Vec<SourceFile>| {
            current.files.as_deref() == Some(files)
                && (Arc::ptr_eq(&current.base, base) || *current.base == **base)
        };
        let prepared = files.and_then(|files| {
            if unchanged(&files) {
                return Ok(None);
            }
            let snapshot = self.engine.prepare(&base.with_tenant(&files))?;
            Ok(Some((files, snapshot)))
        });
        let mut record = TenantRecord::clone(&current);
        let outcome = match prepared {
            Ok(None) => {
                record.succeeded += 1;
                record.last_error = None;
                self.record.store(Arc::new(record));
                Ok(false)
            }
            Ok(Some((files, snapshot))) => {
                record.files = Some(Arc::new(files));
                record.base = Arc::clone(base);
                record.revision = snapshot.revision().to_owned();
                record.policy_count = snapshot.policy_count();
                record.loaded_at = SystemTime::now();
                record.succeeded += 1;
                record.last_error = None;
                // INVARIANT: as for the base set, the record is written before the set serves.
                self.record.store(Arc::new(record));
                self.engine.install(Arc::clone(&snapshot));
                tracing::info!(
                    trigger = trigger.as_str(),
                    tenant = %self.name,
                    policies = snapshot.policy_count(),
                    revision = snapshot.revision(),
                    previous = %current.revision,
                    "tenant policies reloaded"
                );
                Ok(true)
            }
            Err(error) => {
                let diagnostics = diagnostics_of(&error);
                tracing::error!(
                    trigger = trigger.as_str(),
                    tenant = %self.name,
                    revision = %current.revision,
                    "tenant policy reload rejected, keeping its last good set:\n{error}"
                );
                record.failed += 1;
                record.last_error =
                    Some(ReloadFailure { at: SystemTime::now(), diagnostics: diagnostics.clone() });
                self.record.store(Arc::new(record));
                Err(diagnostics)
            }
        };
        metrics().policy_reload(outcome.is_ok());
        outcome
    }

    /// The tenant's set in force and how its reloads went.
    pub fn status(&self) -> TenantPolicyStatus {
        let record = self.record.load();
        TenantPolicyStatus {
            name: self.name.clone(),
            revision: record.revision.clone(),
            loaded: record.files.is_some(),
            loaded_at: record.loaded_at,
            source: self
                .dir
                .as_ref()
                .map_or_else(|| "<embedded demo>".to_owned(), |dir| dir.display().to_string()),
            files: record.files.iter().flat_map(|files| files.iter()).map(|file| file.name.clone()).collect(),
            policy_count: record.policy_count,
            reloads_succeeded: record.succeeded,
            reloads_failed: record.failed,
            last_error: record.last_error.clone(),
        }
    }
}

impl PolicyReloader {
    /// Reloads `dir` (`None`: the embedded demo) into `engine`, whose set in force was built
    /// from `sources`.
    pub fn new(engine: Arc<PolicyEngine>, dir: Option<PathBuf>, sources: PolicySources) -> Self {
        let snapshot = engine.snapshot();
        let record = Record {
            sources: Arc::new(sources),
            revision: snapshot.revision().to_owned(),
            policy_count: snapshot.policy_count(),
            loaded_at: SystemTime::now(),
            succeeded: 0,
            failed: 0,
            last_error: None,
            last_outcome: Ok(Reloaded { changed: false, revision: snapshot.revision().to_owned() }),
        };
        Self {
            engine,
            dir,
            running: Arc::new(tokio::sync::Mutex::new(())),
            requested: AtomicU64::new(0),
            covered: AtomicU64::new(0),
            watching: AtomicBool::new(false),
            record: ArcSwap::from_pointee(record),
            tenants: Vec::new(),
        }
    }

    /// Reloads `tenants` too, each after the base set and apart from the others.
    #[must_use]
    pub fn with_tenants(mut self, tenants: Vec<TenantPolicies>) -> Self {
        self.tenants = tenants;
        self.warn_undeclared_tenant_dirs();
        self
    }

    /// The tenants' sets.
    pub fn tenants(&self) -> &[TenantPolicies] {
        &self.tenants
    }

    /// A directory under `tenants/` no declared tenant has is never read: say so.
    fn warn_undeclared_tenant_dirs(&self) {
        let Some(dir) = &self.dir else { return };
        for name in
            super::undeclared_tenant_dirs(dir, |name| self.tenants.iter().any(|tenant| tenant.name == name))
        {
            tracing::warn!(
                tenant = %crate::model::quote(&name),
                "{}/{TENANTS_DIR}/{} is not the directory of a declared tenant (tenants:) and is ignored",
                dir.display(),
                crate::model::quote(&name)
            );
        }
    }

    /// The policy directory, if one is configured.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Records whether the directory watcher is running.
    pub fn set_watching(&self, watching: bool) {
        self.watching.store(watching, Ordering::Relaxed);
    }

    /// Re-reads the directory and swaps the new set in if it all loads; otherwise keeps the
    /// set in force. Parsing and validation run on the blocking pool. Answers once a reload
    /// that started after this call finished (possibly one another caller asked for).
    ///
    /// Fails when no directory is configured, or with every problem of the refused files.
    pub async fn reload(self: &Arc<Self>, trigger: ReloadTrigger) -> Result<Reloaded, ReloadError> {
        if self.dir.is_none() {
            return Err(ReloadError::Embedded);
        }
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let running = Arc::clone(&self.running).lock_owned().await;
        if self.covered.load(Ordering::SeqCst) >= ticket {
            // A reload that started after this request has just finished.
            return self.record.load().last_outcome.clone();
        }
        // Every request made so far is answered by this reload: it reads the files after all
        // of them were made.
        let covers = self.requested.load(Ordering::SeqCst);
        let reloader = Arc::clone(self);
        let blocking = tokio::task::spawn_blocking(move || {
            let _running = running;
            let outcome = reloader.reload_now(trigger);
            reloader.covered.store(covers, Ordering::SeqCst);
            outcome
        });
        match blocking.await {
            Ok(outcome) => outcome,
            // The loader panicked (the guard is released with it); nothing was swapped.
            Err(error) => {
                Err(ReloadError::Rejected { diagnostics: vec![format!("the policy loader failed: {error}")] })
            }
        }
    }

    /// One reload, under `running`.
    fn reload_now(&self, trigger: ReloadTrigger) -> Result<Reloaded, ReloadError> {
        let Some(dir) = &self.dir else { return Err(ReloadError::Embedded) };
        let started = std::time::Instant::now();
        let current = self.record.load_full();
        let loaded = read_settled(|| PolicySources::from_dir(dir)).and_then(|sources| {
            if sources == *current.sources {
                return Ok(None);
            }
            let snapshot = self.engine.prepare(&sources)?;
            Ok(Some((sources, snapshot)))
        });
        let mut record = Record::clone(&current);
        let mut swapped = None;
        let outcome = match loaded {
            Ok(None) => {
                // A watched directory also changes for files that are not policies.
                if trigger == ReloadTrigger::Watch {
                    tracing::debug!(trigger = trigger.as_str(), revision = %record.revision, "policies unchanged");
                } else {
                    tracing::info!(trigger = trigger.as_str(), revision = %record.revision, "policies unchanged");
                }
                record.succeeded += 1;
                record.last_error = None;
                metrics().policy_reload(true);
                Ok(Reloaded { changed: false, revision: record.revision.clone() })
            }
            Ok(Some((sources, snapshot))) => {
                record.apply(sources, &snapshot);
                metrics().policy_reload(true);
                metrics().policies_loaded(snapshot.revision(), snapshot.policy_count());
                swapped = Some(snapshot);
                Ok(Reloaded { changed: true, revision: record.revision.clone() })
            }
            Err(error) => {
                let diagnostics = diagnostics_of(&error);
                tracing::error!(
                    trigger = trigger.as_str(),
                    revision = %record.revision,
                    "policy reload rejected, keeping the last good set:\n{error}"
                );
                record.failed += 1;
                metrics().policy_reload(false);
                record.last_error =
                    Some(ReloadFailure { at: SystemTime::now(), diagnostics: diagnostics.clone() });
                Err(ReloadError::Rejected { diagnostics })
            }
        };
        record.last_outcome = outcome.clone();
        self.record.store(Arc::new(record));
        // INVARIANT: the record is updated before the set serves, so whoever saw a decision of
        // the new set and then asks for the status sees it there too.
        if let Some(snapshot) = swapped {
            self.engine.install(Arc::clone(&snapshot));
            tracing::info!(
                trigger = trigger.as_str(),
                policies = snapshot.policy_count(),
                revision = snapshot.revision(),
                previous = %current.revision,
                took_ms = started.elapsed().as_millis(),
                "policies reloaded"
            );
        }
        if self.tenants.is_empty() {
            return outcome;
        }
        // Each tenant on the base set in force (the new one, or the last good one when the
        // new one was refused), each apart: one tenant's refusal changes no other set.
        if trigger != ReloadTrigger::Watch {
            self.warn_undeclared_tenant_dirs();
        }
        let base = Arc::clone(&self.record.load().sources);
        let mut tenant_changed = false;
        let mut refused = Vec::new();
        for tenant in &self.tenants {
            match tenant.reload_now(&base, trigger) {
                Ok(changed) => tenant_changed |= changed,
                Err(diagnostics) => {
                    refused.extend(
                        diagnostics.into_iter().map(|line| format!("tenant `{}`: {line}", tenant.name)),
                    );
                }
            }
        }
        let outcome = match outcome {
            Ok(_) if !refused.is_empty() => Err(ReloadError::Rejected { diagnostics: refused }),
            Ok(reloaded) => Ok(Reloaded { changed: reloaded.changed || tenant_changed, ..reloaded }),
            Err(ReloadError::Rejected { mut diagnostics }) => {
                diagnostics.extend(refused);
                Err(ReloadError::Rejected { diagnostics })
            }
            Err(error) => Err(error),
        };
        let mut record = Record::clone(&self.record.load());
        record.last_outcome = outcome.clone();
        self.record.store(Arc::new(record));
        outcome
    }

    /// The set in force and how reloads went.
    pub fn status(&self) -> PolicyStatus {
        let record = self.record.load();
        let sources = &record.sources;
        PolicyStatus {
            revision: record.revision.clone(),
            loaded_at: record.loaded_at,
            source: self
                .dir
                .as_ref()
                .map_or_else(|| "<embedded demo>".to_owned(), |dir| dir.display().to_string()),
            files: std::iter::once(&sources.schema)
                .chain(&sources.policies)
                .chain(&sources.entities)
                .map(|file| file.name.clone())
                .collect(),
            policy_count: record.policy_count,
            watching: self.watching.load(Ordering::Relaxed),
            reloads_succeeded: record.succeeded,
            reloads_failed: record.failed,
            last_error: record.last_error.clone(),
            shadow_policy_count: self.engine.snapshot().shadow_count(),
            shadow_disagreements: self.engine.shadow_disagreements(),
            tenants: self.tenants.iter().map(TenantPolicies::status).collect(),
        }
    }
}

impl Record {
    fn apply(&mut self, sources: PolicySources, snapshot: &PolicySnapshot) {
        self.sources = Arc::new(sources);
        self.revision = snapshot.revision().to_owned();
        self.policy_count = snapshot.policy_count();
        self.loaded_at = SystemTime::now();
        self.succeeded += 1;
        self.last_error = None;
    }
}

/// Reads of a directory made before giving up on it agreeing with itself.
const READ_ATTEMPTS: usize = 4;

/// `read()` once two reads in a row agree. The files are read one by one, so a read during a
/// change (a ConfigMap's `..data` swapped between two files, a file being written) can mix
/// two versions that are each valid but together are neither, say the new `routes.cedar` with
/// the old `mcp.cedar` a rule just moved out of; a second identical read makes that unlikely.
///
/// Fails when a read fails, or when the directory kept changing for [`READ_ATTEMPTS`] reads
/// (the watcher reloads it again when it settles).
fn read_settled<T: PartialEq>(mut read: impl FnMut() -> Result<T, PolicyError>) -> Result<T, PolicyError> {
    let mut previous = read()?;
    for _ in 1..READ_ATTEMPTS {
        let again = read()?;
        if again == previous {
            return Ok(again);
        }
        previous = again;
    }
    Err(PolicyError::Invalid {
        diagnostics: vec![format!(
            "the policy directory kept changing while it was read ({READ_ATTEMPTS} reads differed); \
             it is read again when it changes"
        )],
    })
}

/// The lines a refused set is reported with.
fn diagnostics_of(error: &PolicyError) -> Vec<String> {
    match error {
        PolicyError::Invalid { diagnostics } => diagnostics.clone(),
        PolicyError::Read { .. } => vec![error.to_string()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = include_str!("../../policies/schema.cedarschema");

    fn write(dir: &Path, policy: &str) {
        std::fs::write(dir.join("schema.cedarschema"), SCHEMA).unwrap();
        std::fs::write(dir.join("rules.cedar"), policy).unwrap();
    }

    fn reloader(dir: &Path) -> Arc<PolicyReloader> {
        let sources = PolicySources::from_dir(dir).unwrap();
        let engine = Arc::new(PolicyEngine::new(&sources).unwrap());
        Arc::new(PolicyReloader::new(engine, Some(dir.to_path_buf()), sources))
    }

    const OPEN: &str = "@id(\"open\") permit (principal, action, resource);";
    const CLOSED: &str = "@id(\"closed\") forbid (principal, action, resource);";

    #[tokio::test]
    async fn a_changed_set_is_swapped_in_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), OPEN);
        let reloader = reloader(dir.path());
        let before = reloader.status();
        assert_eq!((before.policy_count, before.reloads_succeeded, before.watching), (1, 0, false));
        assert_eq!(before.files.len(), 2);
        assert!(before.files[0].ends_with("schema.cedarschema"), "{:?}", before.files);

        std::fs::write(dir.path().join("more.cedar"), CLOSED).unwrap();
        let reloaded = reloader.reload(ReloadTrigger::Request).await.unwrap();
        assert!(reloaded.changed);
        let after = reloader.status();
        assert_ne!(after.revision, before.revision);
        assert_eq!(after.revision, reloaded.revision);
        assert_eq!(reloader.engine.snapshot().revision(), after.revision, "the engine serves it");
        assert_eq!((after.policy_count, after.files.len(), after.reloads_succeeded), (2, 3, 1));
        assert!(after.loaded_at >= before.loaded_at);
    }

    #[test]
    fn the_status_counts_shadow_policies_their_disagreements_and_lists_entities() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &format!("{OPEN}\n@shadow {CLOSED}"));
        std::fs::write(dir.path().join("entities.json"), "[]").unwrap();
        let reloader = reloader(dir.path());
        let query = crate::policy::Query {
            auth: None,
            resource: crate::policy::Resource::Route {
                method: "GET",
                path: "/x",
                template: "/x",
                params: &[],
            },
            facts: &crate::model::Extra::new(),
            now: 0,
        };
        assert!(reloader.engine.evaluate(&query).allowed, "the shadow forbid is not enforced");
        let status = reloader.status();
        assert_eq!((status.policy_count, status.shadow_policy_count, status.shadow_disagreements), (2, 1, 1));
        assert!(
            status.files.last().is_some_and(|file| file.ends_with("entities.json")),
            "{:?}",
            status.files
        );
    }

    #[tokio::test]
    async fn the_status_lists_the_entities_file_in_force() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), OPEN);
        std::fs::write(
            dir.path().join("entities.json"),
            r#"[{"uid": {"type": "Role", "id": "admin"}, "attrs": {}, "parents": [{"type": "Role", "id": "user"}]}]"#,
        )
        .unwrap();
        let status = reloader(dir.path()).status();
        assert_eq!(status.files.len(), 3, "{:?}", status.files);
        assert!(status.files[2].ends_with("entities.json"), "{:?}", status.files);
    }

    #[tokio::test]
    async fn the_status_counts_the_decisions_shadow_policies_would_change() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &format!("{OPEN}\n@id(\"rollout\") @shadow forbid (principal, action, resource);"));
        let reloader = reloader(dir.path());
        assert_eq!((reloader.status().shadow_policy_count, reloader.status().shadow_disagreements), (1, 0));
        let query = super::super::Query {
            auth: None,
            resource: super::super::Resource::Route {
                method: "GET",
                path: "/x",
                template: "/x",
                params: &[],
            },
            facts: &crate::model::Extra::new(),
            now: 0,
        };
        assert!(reloader.engine.evaluate(&query).allowed, "a shadow forbid never decides");
        assert_eq!(reloader.status().shadow_disagreements, 1);
    }

    #[test]
    fn a_directory_is_read_until_two_reads_agree() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), OPEN);
        let old = PolicySources::from_dir(dir.path()).unwrap();
        write(dir.path(), CLOSED);
        let new = PolicySources::from_dir(dir.path()).unwrap();
        // A ConfigMap's `..data` swapped mid-read: the first read mixes old and new files.
        let mut mixed = old.clone();
        mixed.policies = new.policies.clone();
        let reads = std::cell::RefCell::new(vec![mixed, new.clone(), new.clone()].into_iter());
        let settled = read_settled(|| Ok(reads.borrow_mut().next().unwrap()));
        assert_eq!(settled.unwrap(), new);

        // A directory that never stops changing is refused, not loaded half-way.
        let reads = std::cell::RefCell::new([&old, &new].into_iter().cycle());
        match read_settled(|| Ok(reads.borrow_mut().next().unwrap().clone())) {
            Err(PolicyError::Invalid { diagnostics }) => {
                assert!(diagnostics[0].contains("kept changing"), "{diagnostics:?}")
            }
            other => panic!("a changing directory must be refused, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn unchanged_files_are_not_swapped() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), OPEN);
        let reloader = reloader(dir.path());
        let snapshot = reloader.engine.snapshot();
        let reloaded = reloader.reload(ReloadTrigger::Watch).await.unwrap();
        assert!(!reloaded.changed);
        assert!(Arc::ptr_eq(&snapshot, &reloader.engine.snapshot()), "the same snapshot serves");
        assert_eq!(reloader.status().reloads_succeeded, 1);
    }

    #[tokio::test]
    async fn a_refused_set_keeps_the_last_good_one_until_fixed() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), OPEN);
        let reloader = reloader(dir.path());
        let good = reloader.status().revision;
        std::fs::write(dir.path().join("rules.cedar"), "permit (principal, action resource);").unwrap();
        let Err(ReloadError::Rejected { diagnostics }) = reloader.reload(ReloadTrigger::Request).await else {
            panic!("a broken file was accepted");
        };
        assert!(diagnostics.iter().any(|line| line.contains("rules.cedar:1:")), "{diagnostics:?}");
        let status = reloader.status();
        assert_eq!((status.revision.as_str(), status.reloads_failed), (good.as_str(), 1));
        assert_eq!(status.last_error.as_ref().map(|failure| &failure.diagnostics), Some(&diagnostics));
        assert_eq!(reloader.engine.snapshot().revision(), good);

        std::fs::write(dir.path().join("rules.cedar"), CLOSED).unwrap();
        assert!(reloader.reload(ReloadTrigger::Request).await.unwrap().changed);
        let status = reloader.status();
        assert_eq!(status.last_error, None, "a reload that went through clears the error");
        assert_eq!((status.reloads_succeeded, status.reloads_failed), (1, 1));
    }

    #[tokio::test]
    async fn a_missing_schema_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), OPEN);
        let reloader = reloader(dir.path());
        std::fs::remove_file(dir.path().join("schema.cedarschema")).unwrap();
        let error = reloader.reload(ReloadTrigger::Request).await.unwrap_err();
        assert!(error.to_string().contains("schema.cedarschema"), "{error}");
        assert_eq!(reloader.status().policy_count, 1);
    }

    #[tokio::test]
    async fn the_embedded_demo_cannot_be_reloaded() {
        let sources = PolicySources::embedded_demo();
        let engine = Arc::new(PolicyEngine::new(&sources).unwrap());
        let reloader = Arc::new(PolicyReloader::new(engine, None, sources));
        assert_eq!(reloader.reload(ReloadTrigger::Signal).await, Err(ReloadError::Embedded));
        let status = reloader.status();
        assert_eq!((status.source.as_str(), status.reloads_failed), ("<embedded demo>", 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_requests_coalesces_and_each_sees_files_newer_than_its_request() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), OPEN);
        let reloader = reloader(dir.path());
        std::fs::write(dir.path().join("rules.cedar"), CLOSED).unwrap();
        let requests: Vec<_> = (0..50)
            .map(|_| {
                let reloader = Arc::clone(&reloader);
                tokio::spawn(async move { reloader.reload(ReloadTrigger::Request).await })
            })
            .collect();
        let mut changed = 0;
        for request in requests {
            let reloaded = request.await.unwrap().unwrap();
            changed += usize::from(reloaded.changed);
            assert_eq!(reloaded.revision, reloader.status().revision, "every caller sees the new set");
        }
        assert_eq!(changed, 1, "the set was swapped once");
        let status = reloader.status();
        assert!(status.reloads_succeeded < 50, "the burst coalesced: {} reloads", status.reloads_succeeded);
        assert!(reloader.engine.snapshot().policy_count() == 1);
    }

    fn write_tenant(dir: &Path, tenant: &str, policy: &str) {
        let dir = dir.join(TENANTS_DIR).join(tenant);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("rules.cedar"), policy).unwrap();
    }

    fn with_tenants(dir: &Path, names: &[&str]) -> Arc<PolicyReloader> {
        let sources = PolicySources::from_dir(dir).unwrap();
        let engine = Arc::new(PolicyEngine::new(&sources).unwrap());
        let tenants =
            names.iter().map(|name| TenantPolicies::load(name, Some(dir), &sources, 0).unwrap()).collect();
        Arc::new(PolicyReloader::new(engine, Some(dir.to_path_buf()), sources).with_tenants(tenants))
    }

    fn allows(engine: &PolicyEngine, path: &str) -> bool {
        let query = crate::policy::Query {
            auth: None,
            resource: crate::policy::Resource::Route { method: "GET", path, template: path, params: &[] },
            facts: &crate::model::Extra::new(),
            now: 0,
        };
        engine.evaluate(&query).allowed
    }

    fn tenant<'a>(reloader: &'a PolicyReloader, name: &str) -> &'a TenantPolicies {
        reloader.tenants().iter().find(|tenant| tenant.name() == name).unwrap()
    }

    const BASE_FORBIDS_ADMIN: &str =
        "@id(\"no-admin\") forbid (principal, action, resource == Route::\"/admin\");";
    const PERMIT_ALL: &str = "@id(\"tenant-all\") permit (principal, action, resource);";
    const PERMIT_PUBLIC: &str =
        "@id(\"tenant-public\") permit (principal, action, resource == Route::\"/public\");";

    #[test]
    fn a_tenants_set_is_the_base_and_its_own_and_a_base_forbid_wins() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), BASE_FORBIDS_ADMIN);
        write_tenant(dir.path(), "acme", PERMIT_ALL);
        write_tenant(dir.path(), "globex", PERMIT_PUBLIC);
        let reloader = with_tenants(dir.path(), &["acme", "globex"]);
        // `tenants/` is not read as base policies: the base set permits nothing.
        assert_eq!(reloader.status().policy_count, 1);
        assert!(!allows(&reloader.engine, "/public"));
        let (acme, globex) = (tenant(&reloader, "acme").engine(), tenant(&reloader, "globex").engine());
        assert!(allows(acme, "/anything") && allows(acme, "/public"));
        assert!(!allows(acme, "/admin"), "the base forbid beats the tenant's permit");
        assert!(allows(globex, "/public") && !allows(globex, "/anything"), "globex has only its own");
        let status = reloader.status();
        assert_eq!(
            status.tenants.iter().map(|tenant| tenant.name.as_str()).collect::<Vec<_>>(),
            ["acme", "globex"]
        );
        assert!(status.tenants.iter().all(|tenant| tenant.loaded && tenant.policy_count == 2));
        assert_ne!(status.tenants[0].revision, status.tenants[1].revision);
    }

    #[tokio::test]
    async fn a_broken_tenant_keeps_its_last_good_set_and_changes_no_other() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), BASE_FORBIDS_ADMIN);
        write_tenant(dir.path(), "acme", PERMIT_ALL);
        write_tenant(dir.path(), "globex", PERMIT_PUBLIC);
        let reloader = with_tenants(dir.path(), &["acme", "globex"]);
        let globex_before = tenant(&reloader, "globex").engine().snapshot();
        let base_before = reloader.engine.snapshot();

        write_tenant(dir.path(), "acme", "permit (principal, action resource);");
        let Err(ReloadError::Rejected { diagnostics }) = reloader.reload(ReloadTrigger::Request).await else {
            panic!("a broken tenant file was accepted");
        };
        assert!(diagnostics.iter().all(|line| line.starts_with("tenant `acme`: ")), "{diagnostics:?}");
        assert!(allows(tenant(&reloader, "acme").engine(), "/anything"), "acme keeps its last good set");
        assert!(Arc::ptr_eq(&globex_before, &tenant(&reloader, "globex").engine().snapshot()));
        assert!(Arc::ptr_eq(&base_before, &reloader.engine.snapshot()));
        let status = reloader.status();
        assert!(status.last_error.is_none(), "the base set went through");
        assert_eq!((status.tenants[0].reloads_failed, status.tenants[1].last_error.is_none()), (1, true));
        assert!(status.tenants[0].last_error.is_some());

        write_tenant(dir.path(), "acme", PERMIT_PUBLIC);
        assert!(reloader.reload(ReloadTrigger::Request).await.unwrap().changed);
        assert!(!allows(tenant(&reloader, "acme").engine(), "/anything"), "the fixed file is in force");
        assert!(reloader.status().tenants[0].last_error.is_none());
        assert!(Arc::ptr_eq(&globex_before, &tenant(&reloader, "globex").engine().snapshot()), "not rebuilt");
    }

    #[tokio::test]
    async fn a_base_change_rebuilds_every_tenant() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), OPEN);
        write_tenant(dir.path(), "acme", PERMIT_PUBLIC);
        let reloader = with_tenants(dir.path(), &["acme"]);
        assert!(allows(tenant(&reloader, "acme").engine(), "/admin"));
        write(dir.path(), BASE_FORBIDS_ADMIN);
        assert!(reloader.reload(ReloadTrigger::Request).await.unwrap().changed);
        assert!(
            !allows(tenant(&reloader, "acme").engine(), "/admin"),
            "the new base forbid is in acme's set"
        );
        assert!(allows(tenant(&reloader, "acme").engine(), "/public"));
    }

    #[tokio::test]
    async fn a_tenant_that_never_loaded_refuses_everything_until_it_does() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), OPEN);
        write_tenant(dir.path(), "acme", "permit (principal, action resource);");
        write_tenant(dir.path(), "globex", PERMIT_PUBLIC);
        let reloader = with_tenants(dir.path(), &["acme", "globex", "initech"]);
        let acme = tenant(&reloader, "acme");
        assert!(!allows(acme.engine(), "/public"), "never the base set alone");
        assert!(!acme.status().loaded && acme.status().last_error.is_some());
        assert!(allows(tenant(&reloader, "globex").engine(), "/public"));
        // A declared tenant without a directory has the base set.
        assert!(allows(tenant(&reloader, "initech").engine(), "/anything"));
        write_tenant(dir.path(), "acme", PERMIT_PUBLIC);
        reloader.reload(ReloadTrigger::Request).await.unwrap();
        assert!(allows(tenant(&reloader, "acme").engine(), "/public"));
        assert!(tenant(&reloader, "acme").status().loaded);
    }
}
