//! The only module that knows Cedar: loading and validating policies against the schema,
//! building Cedar requests from an [`AuthInfo`] and a target, evaluating, and hot reload; and
//! the authoring tools behind `cedargate policy`: validation findings, formatting, and
//! explaining one decision.
//!
//! The policy set lives in an immutable [`PolicySnapshot`] behind an `ArcSwap`: evaluation
//! takes a lock-free snapshot, and a reload swaps in a new one only after the whole set parsed
//! and validated, so a bad reload keeps the last good set.

mod authorize;
mod explain;
mod findings;
mod format;
mod load;
mod mutate;
mod reload;
mod request;
mod slice;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use cedar_policy::{Authorizer, Decision as CedarDecision, Entities, PolicyId, PolicySet};

use crate::model::{AuthInfo, Extra, McpKind};

pub use explain::{ConditionCheck, ConditionResult, Explanation, PermitExplanation, PolicyRef};
pub use findings::{Finding, ReportStyle, Severity};
pub use format::{format_dir, format_policies, FormatReport};
pub use load::{
    undeclared_tenant_dirs, PolicyError, PolicyLocation, PolicySources, SourceFile, ENTITIES_FILE,
    NOT_LOADED_POLICY, SCHEMA, SCHEMA_FILE, TENANTS_DIR,
};
pub use mutate::{
    mutants, outline, BoolOperator, ConditionKind, Mutant, Mutation, PolicyEffect, PolicyOutline,
};
pub use reload::{
    PolicyReloader, PolicyStatus, ReloadError, ReloadFailure, ReloadTrigger, Reloaded, TenantPolicies,
    TenantPolicyStatus,
};

/// The Cedar view of a target, after the engine normalized it.
#[derive(Debug, Clone, Copy)]
pub enum Resource<'a> {
    /// An HTTP route: `Action::"<method>"` on `Route::"<template>"`.
    Route {
        /// Upper-case HTTP method.
        method: &'a str,
        /// Normalized concrete path.
        path: &'a str,
        /// The matched template, or the path itself.
        template: &'a str,
        /// Template parameters.
        params: &'a [(String, String)],
    },
    /// An MCP request: for a tool, `Action::"call"` on `Tool::"<name>"`; the other kinds
    /// as [`McpKind`] says.
    Mcp {
        /// Tool, prompt, resource or method.
        kind: McpKind,
        /// Tool or prompt name, resource URI, or JSON-RPC method.
        name: &'a str,
        /// Server name ("" if none).
        server: &'a str,
        /// Call arguments, exposed as tags.
        arguments: &'a Extra,
    },
}

/// One question for the policies.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// The identity; `None` for a caller without a credential. An `Arc` because the Cedar
    /// view of an identity is built once per `Arc` and cached.
    pub auth: Option<&'a Arc<AuthInfo>>,
    /// What is asked for.
    pub resource: Resource<'a>,
    /// Caller-supplied request facts.
    pub facts: &'a Extra,
    /// Unix seconds.
    pub now: i64,
}

/// What the policies said.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// True only when Cedar allowed and no policy failed to evaluate.
    pub allowed: bool,
    /// Determining policies (or the ones that failed), sorted.
    pub policy_ids: Vec<String>,
    /// The determining policy's `@reason`, or a description of what happened.
    pub reason: String,
    /// Scopes named by the `@scopes` annotations of the denying policies.
    pub required_scopes: Vec<String>,
    /// Evaluation errors.
    pub errors: Vec<String>,
    /// Set only when the `@shadow` policies, enforced, would have decided otherwise.
    pub shadow: Option<ShadowVerdict>,
    /// The revision of the policy set that decided.
    pub revision: Arc<str>,
}

/// What the decision would have been with the `@shadow` policies enforced, when that differs.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowVerdict {
    /// Whether it would have been allowed.
    pub allowed: bool,
    /// The shadow policies that made the difference (determining, or failing to evaluate).
    pub policy_ids: Vec<String>,
    /// The reason that decision would have given.
    pub reason: String,
}

/// Annotations cedargate reads from each policy, parsed once per load.
#[derive(Debug, Clone, Default)]
struct PolicyMeta {
    reason: Option<String>,
    scopes: Vec<String>,
}

/// An immutable, validated policy set with everything evaluation needs.
#[derive(Debug)]
pub struct PolicySnapshot {
    /// The enforced policies.
    policies: PolicySet,
    /// `policies`, indexed for slicing.
    sliced: slice::Slicer,
    /// The enforced policies and the `@shadow` ones, indexed for slicing; `None` when there
    /// are no shadow policies.
    sliced_with_shadow: Option<slice::Slicer>,
    /// Ids of the `@shadow` policies.
    shadow_ids: HashSet<PolicyId>,
    /// The schema's action entities (with the `read`/`write` groups) and the static entities
    /// of `entities.json`; every request's entity store starts from a clone of this.
    base_entities: Entities,
    /// Entities of `base_entities` of a per-request type that are ancestors of others (rare):
    /// a request that adds one has its closure computed by Cedar.
    request_ancestors: HashSet<cedar_policy_core::ast::EntityUID>,
    /// Whether nothing but a request's resource reaches a route or an MCP entity: the
    /// entries of a list then share one store and one partial evaluation.
    lists_share_store: bool,
    /// Upper-case names of the actions that apply to `Route`: the HTTP methods policies know.
    route_actions: HashSet<String>,
    /// Distinguishes snapshots, so prepared principals built for an older one are rebuilt.
    generation: u64,
    /// The prepared principal of every caller without a credential.
    anonymous: Arc<request::Prepared>,
    meta: HashMap<PolicyId, PolicyMeta>,
    /// Where each policy starts in its file.
    locations: HashMap<PolicyId, PolicyLocation>,
    /// Short SHA-256 of all sources (schema, policies, entities), to tell which set decided.
    revision: Arc<str>,
}

impl PolicySnapshot {
    /// Short digest of the sources this snapshot was built from.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// Number of policies, shadow policies included.
    pub fn policy_count(&self) -> usize {
        self.policies.policies().count() + self.shadow_ids.len()
    }

    /// Number of `@shadow` policies.
    pub fn shadow_count(&self) -> usize {
        self.shadow_ids.len()
    }

    /// The id of every policy, sorted.
    pub fn policy_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.policies.policies().map(|policy| policy.id().to_string()).collect();
        ids.sort_unstable();
        ids
    }

    /// Where the policy `id` starts (file, line, column); `None` for an id not in the set.
    pub fn policy_location(&self, id: &str) -> Option<&PolicyLocation> {
        self.locations.get(&PolicyId::new(id))
    }
}

/// What `cedargate policy validate` found in a policy directory.
#[derive(Debug, Clone)]
pub struct Validation {
    /// Every error and warning, errors first, each in file order.
    pub findings: Vec<Finding>,
    /// Policies in the set (0 when it did not load).
    pub policy_count: usize,
}

impl Validation {
    /// Number of findings of `severity`.
    pub fn count(&self, severity: Severity) -> usize {
        self.findings.iter().filter(|finding| finding.severity == severity).count()
    }
}

/// Checks `sources` exactly as the server loads them (strict validation, the schema against
/// the requests cedargate sends, static entities against the schema) and keeps the warnings
/// too: policies that can never apply, policies without `@id`, confusable text.
pub fn validate(sources: &PolicySources, style: ReportStyle) -> Validation {
    let (snapshot, mut findings) = match request::Names::new() {
        Ok(names) => load::check(sources, &names, 0, style),
        Err(problem) => (None, vec![Finding::plain(&sources.schema.name, problem, Severity::Error)]),
    };
    // Stable: errors first, then by file and position, as they were found within one place.
    findings.sort_by(|a, b| (a.severity, &a.file, a.position).cmp(&(b.severity, &b.file, b.position)));
    Validation { findings, policy_count: snapshot.map_or(0, |snapshot| snapshot.policy_count()) }
}

/// Evaluates queries against the current snapshot; reloadable.
#[derive(Debug)]
pub struct PolicyEngine {
    current: ArcSwap<PolicySnapshot>,
    names: request::Names,
    authorizer: Authorizer,
    principals: request::PrincipalCache,
    /// Source of snapshot generations.
    generations: AtomicU64,
    /// Decisions the `@shadow` policies would have changed, since start.
    shadow_disagreements: AtomicU64,
    /// Bound on the policies the slice caches of a snapshot hold; 0: no slicing.
    slice_cache_max_policies: usize,
    /// Decide by `cedar_policy::Authorizer` over the whole set instead (the tests' oracle).
    #[cfg(test)]
    cedar_authorizer: bool,
}

/// Default of [`PolicyEngine::with_slice_cache`]. The bound counts policies, not bytes: a
/// cached slice holds a pointer to each of its policies (built once per load), so the cache
/// holds at most about this many pointers and indexes (a few MB).
pub const DEFAULT_SLICE_CACHE_MAX_POLICIES: usize = 100_000;

impl PolicyEngine {
    /// Loads, validates (strict mode) and checks the sources.
    ///
    /// Fails with file:line diagnostics when the schema or a policy does not parse or validate,
    /// or when the schema does not declare what cedargate sends.
    pub fn new(sources: &PolicySources) -> Result<Self, PolicyError> {
        let names =
            request::Names::new().map_err(|error| PolicyError::Invalid { diagnostics: vec![error] })?;
        let generations = AtomicU64::new(1);
        let snapshot = load::load(sources, &names, 0)?;
        Ok(Self {
            current: ArcSwap::from_pointee(snapshot),
            names,
            authorizer: Authorizer::new(),
            principals: request::PrincipalCache::default(),
            generations,
            shadow_disagreements: AtomicU64::new(0),
            slice_cache_max_policies: DEFAULT_SLICE_CACHE_MAX_POLICIES,
            #[cfg(test)]
            cedar_authorizer: false,
        })
    }

    /// Bounds the policies the cached slices of a policy set hold (`0`: every request is
    /// decided by the whole set). A slice that finds the cache full clears it, and the cache
    /// starts over with the slices requests then need: correct, slower while it refills, and
    /// counted in `cedargate_policy_slice_cache_resets_total`.
    #[must_use]
    pub fn with_slice_cache(mut self, max_policies: usize) -> Self {
        self.slice_cache_max_policies = max_policies;
        self
    }

    /// Replaces the policy set with `sources` if they load; otherwise keeps the current set
    /// and returns why.
    pub fn reload(&self, sources: &PolicySources) -> Result<Arc<PolicySnapshot>, PolicyError> {
        let snapshot = self.prepare(sources)?;
        self.install(Arc::clone(&snapshot));
        Ok(snapshot)
    }

    /// Loads `sources` without putting them in force (the reloader records a set before
    /// [`PolicyEngine::install`] makes it serve).
    fn prepare(&self, sources: &PolicySources) -> Result<Arc<PolicySnapshot>, PolicyError> {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(load::load(sources, &self.names, generation)?))
    }

    /// Puts a snapshot of [`PolicyEngine::prepare`] in force.
    fn install(&self, snapshot: Arc<PolicySnapshot>) {
        self.current.store(snapshot);
    }

    /// The snapshot in force.
    pub fn snapshot(&self) -> Arc<PolicySnapshot> {
        self.current.load_full()
    }

    /// Decides `query`. Never fails: a request that cannot be built or a policy that fails to
    /// evaluate is a deny that says why.
    pub fn evaluate(&self, query: &Query<'_>) -> Verdict {
        let snapshot = self.current.load();
        self.evaluate_on(&snapshot, query).0
    }

    /// Whether some call of `query`'s resource could be allowed, whatever its arguments: how
    /// an entry of an MCP list (`tools/list`, `prompts/list`, `resources/list`) is decided.
    /// The resource's tags (a call's arguments) are unknown, everything else is as a call
    /// would have it; `@shadow` policies take no part. False when the request cannot be built.
    pub fn could_allow(&self, query: &Query<'_>) -> bool {
        self.could_allow_in(&self.current.load(), query)
    }

    fn could_allow_in(&self, snapshot: &PolicySnapshot, query: &Query<'_>) -> bool {
        match request::build(&self.names, snapshot, &self.principals, query) {
            Ok((request, entities)) => self.could_allow_on(snapshot, &request, &entities),
            Err(_) => false,
        }
    }

    /// [`PolicyEngine::could_allow`] for each of `resources`, asked by one caller with one set
    /// of facts at one time (an MCP list): what every request shares is built once.
    pub fn could_allow_each(
        &self,
        auth: Option<&Arc<AuthInfo>>,
        resources: &[Resource<'_>],
        facts: &Extra,
        now: i64,
    ) -> Vec<bool> {
        let snapshot = self.current.load();
        let batch =
            request::Batch::new(&self.names, &snapshot, &self.principals, auth, facts, now, resources)
                .ok()
                .flatten();
        let mut lister = authorize::Lister::new(&snapshot.sliced);
        resources
            .iter()
            .enumerate()
            .map(|(index, &resource)| {
                let batched = batch.as_ref().and_then(|batch| {
                    batch.each(index, |request, entities| lister.could_allow(request, entities))
                });
                // Alone, but by the same snapshot: a reload never splits a list.
                batched
                    .unwrap_or_else(|| self.could_allow_in(&snapshot, &Query { auth, resource, facts, now }))
            })
            .collect()
    }

    fn could_allow_on(
        &self,
        snapshot: &PolicySnapshot,
        request: &cedar_policy::Request,
        entities: &Entities,
    ) -> bool {
        let (slice, cache) = snapshot.sliced.slice(request, entities, self.slice_cache_max_policies);
        if matches!(cache, slice::Cache::Reset | slice::Cache::TooLarge) {
            crate::telemetry::metrics::metrics().slice_cache_reset();
        }
        match slice {
            slice::Slice::Set(policies) => authorize::could_allow(request, entities, &policies),
            slice::Slice::Whole => authorize::could_allow(request, entities, snapshot.sliced.all()),
        }
    }

    /// Decides `query` as [`PolicyEngine::evaluate`] does, and says why: the determining
    /// policies with file:line, and for a deny every permit whose scope matched with the
    /// condition that stopped it.
    pub fn explain(&self, query: &Query<'_>) -> Explanation {
        let snapshot = self.current.load_full();
        let (verdict, built) = self.evaluate_on(&snapshot, query);
        explain::explain(&snapshot, &self.authorizer, built.as_ref(), verdict)
    }

    /// The verdict, and the request and entities it was decided on (`None` when they could
    /// not be built).
    fn evaluate_on(
        &self,
        snapshot: &PolicySnapshot,
        query: &Query<'_>,
    ) -> (Verdict, Option<(cedar_policy::Request, Entities)>) {
        let (request, entities) = match request::build(&self.names, snapshot, &self.principals, query) {
            Ok(built) => built,
            Err(error) => {
                let verdict = Verdict {
                    allowed: false,
                    policy_ids: Vec::new(),
                    reason: format!("policy request could not be built: {error}"),
                    required_scopes: Vec::new(),
                    errors: vec![error],
                    shadow: None,
                    revision: Arc::clone(&snapshot.revision),
                };
                return (verdict, None);
            }
        };
        let decided = self.decide(&request, &entities, &snapshot.sliced);
        let mut verdict = verdict_from(snapshot, decided);
        // INVARIANT: shadow policies never change the verdict; they only report.
        if let Some(sliced) = &snapshot.sliced_with_shadow {
            let trial = self.decide(&request, &entities, sliced);
            let would = verdict_from(snapshot, trial);
            if would.allowed != verdict.allowed {
                self.shadow_disagreements.fetch_add(1, Ordering::Relaxed);
                let shadow_ids: Vec<String> = would
                    .policy_ids
                    .iter()
                    .filter(|id| snapshot.shadow_ids.contains(&PolicyId::new(id.as_str())))
                    .cloned()
                    .collect();
                verdict.shadow = Some(ShadowVerdict {
                    allowed: would.allowed,
                    // A difference without a shadow id among the deciding policies cannot
                    // happen, but would name every shadow policy rather than none.
                    policy_ids: if shadow_ids.is_empty() {
                        let mut all: Vec<String> =
                            snapshot.shadow_ids.iter().map(ToString::to_string).collect();
                        all.sort_unstable();
                        all
                    } else {
                        shadow_ids
                    },
                    reason: would.reason,
                });
            }
        }
        (verdict, Some((request, entities)))
    }

    /// Cedar's answer for `request` from the slice of the set that can match it.
    fn decide(
        &self,
        request: &cedar_policy::Request,
        entities: &Entities,
        sliced: &slice::Slicer,
    ) -> authorize::Decided {
        #[cfg(test)]
        if self.cedar_authorizer {
            let whole = sliced.all().iter().map(|compiled| compiled.policy.clone());
            let whole = PolicySet::from_policies(whole).expect("the policies of one set");
            return authorize::Decided::from_response(
                &self.authorizer.is_authorized(request, &whole, entities),
            );
        }
        let (slice, cache) = sliced.slice(request, entities, self.slice_cache_max_policies);
        if matches!(cache, slice::Cache::Reset | slice::Cache::TooLarge) {
            crate::telemetry::metrics::metrics().slice_cache_reset();
        }
        match slice {
            slice::Slice::Set(policies) => authorize::authorize(request, entities, &policies),
            slice::Slice::Whole => authorize::authorize(request, entities, sliced.all()),
        }
    }

    /// Decides by Cedar's own authorizer over the whole set: the oracle of the tests.
    #[cfg(test)]
    fn with_cedar_authorizer(mut self) -> Self {
        self.cedar_authorizer = true;
        self
    }

    /// How many decisions the `@shadow` policies would have changed since start.
    pub fn shadow_disagreements(&self) -> u64 {
        self.shadow_disagreements.load(Ordering::Relaxed)
    }
}

/// The value of annotation `key` of `policy` (`Some("")` for one without a value).
///
/// Cedar's own `Policy::annotation` runs its parser on the key at every call, which made
/// loading 20,000 policies take seconds; the annotations are few and searched here instead.
fn annotation<'a>(policy: &'a cedar_policy::Policy, key: &str) -> Option<&'a str> {
    policy.annotations().find(|(name, _)| *name == key).map(|(_, value)| value)
}

fn verdict_from(snapshot: &PolicySnapshot, decided: authorize::Decided) -> Verdict {
    let authorize::Decided { decision, mut determining, errors: mut failed } = decided;
    determining.sort_unstable_by(|a, b| AsRef::<str>::as_ref(a).cmp(b.as_ref()));
    // By policy id, so the reason names the same failure whichever order the policies ran in.
    failed.sort_by(|(a, _), (b, _)| AsRef::<str>::as_ref(a).cmp(b.as_ref()));
    let mut errors = Vec::with_capacity(failed.len());
    let mut failed_ids = Vec::with_capacity(failed.len());
    for (id, error) in failed {
        failed_ids.push(id.to_string());
        errors.push(error);
    }
    let first_reason = || {
        determining.first().map(|id| {
            snapshot.meta.get(id).and_then(|meta| meta.reason.clone()).unwrap_or_else(|| match decision {
                CedarDecision::Allow => format!("allowed by policy `{id}`"),
                CedarDecision::Deny => format!("forbidden by policy `{id}`"),
            })
        })
    };

    // INVARIANT: any evaluation error turns the answer into a deny, even when Cedar allowed:
    // a forbid policy that failed to evaluate must not be silently skipped.
    if decision == CedarDecision::Allow && errors.is_empty() {
        return Verdict {
            allowed: true,
            reason: first_reason().unwrap_or_else(|| "allowed".to_owned()),
            policy_ids: determining.iter().map(ToString::to_string).collect(),
            required_scopes: Vec::new(),
            errors,
            shadow: None,
            revision: Arc::clone(&snapshot.revision),
        };
    }
    if decision == CedarDecision::Deny && !determining.is_empty() {
        let mut required_scopes: Vec<String> = determining
            .iter()
            .filter_map(|id| snapshot.meta.get(id))
            .flat_map(|meta| meta.scopes.iter().cloned())
            .collect();
        required_scopes.sort_unstable();
        required_scopes.dedup();
        return Verdict {
            allowed: false,
            reason: first_reason().unwrap_or_default(),
            policy_ids: determining.iter().map(ToString::to_string).collect(),
            required_scopes,
            errors,
            shadow: None,
            revision: Arc::clone(&snapshot.revision),
        };
    }
    if let Some(first_error) = errors.first() {
        failed_ids.sort_unstable();
        failed_ids.dedup();
        return Verdict {
            allowed: false,
            reason: format!("denied because a policy failed to evaluate: {first_error}"),
            policy_ids: failed_ids,
            required_scopes: Vec::new(),
            errors,
            shadow: None,
            revision: Arc::clone(&snapshot.revision),
        };
    }
    Verdict {
        allowed: false,
        reason: "no policy permits this request".to_owned(),
        policy_ids: Vec::new(),
        required_scopes: Vec::new(),
        errors,
        shadow: None,
        revision: Arc::clone(&snapshot.revision),
    }
}

#[cfg(test)]
mod tests;
