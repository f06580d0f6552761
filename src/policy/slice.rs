//! Policy slicing: each request is decided by the policies whose scope can match it, not by
//! the whole set.
//!
//! A set is indexed once, when it loads: every policy goes into one bucket, by the most
//! selective part of its scope (the resource's entity, else the principal's, else the
//! action's, else the resource's or principal's type, else "always"). A request gathers the
//! buckets of its resource, principal and action and of their ancestors, keeps the policies
//! whose whole scope matches, and is decided by exactly those (`authorize.rs`), listed once
//! per distinct slice and cached within a bound on the policies the cache holds (full, it
//! starts over).
//!
//! INVARIANT: a slice decides as the whole set does (decision, determining policies, errors).
//! A policy left out has a scope that does not match, and Cedar evaluates a policy's scope
//! before its conditions, so that policy is neither satisfied nor able to fail. The property
//! test in `policy/tests.rs` holds the two to the same answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cedar_policy::{
    ActionConstraint, Entities, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, PrincipalConstraint,
    Request, ResourceConstraint,
};
use dashmap::DashMap;

use super::authorize::Compiled;

/// The indexes' maps: seeded (a request's uids are the caller's) and cheaper than SipHash.
type Index<K> = HashMap<K, Vec<u32>, foldhash::fast::RandomState>;

/// The policies of one slice.
pub(super) type Policies = Arc<[Arc<Compiled>]>;

/// Where a request stands in the entity hierarchy: its uid and every ancestor.
struct Place<'a> {
    uid: &'a EntityUid,
    ancestors: Vec<&'a EntityUid>,
}

impl<'a> Place<'a> {
    fn of(uid: &'a EntityUid, entities: &'a Entities) -> Self {
        let ancestors = entities.ancestors(uid).map(Iterator::collect).unwrap_or_default();
        Self { uid, ancestors }
    }

    fn owned((uid, ancestors): &'a (EntityUid, Vec<EntityUid>)) -> Self {
        Self { uid, ancestors: ancestors.iter().collect() }
    }

    /// Cedar's `in`: the entity itself or one of its ancestors.
    fn is_in(&self, target: &EntityUid) -> bool {
        self.uid == target || self.ancestors.contains(&target)
    }

    fn is(&self, type_name: &EntityTypeName) -> bool {
        self.uid.type_name() == type_name
    }

    /// The entity and its ancestors.
    fn all(&self) -> impl Iterator<Item = &'a EntityUid> + '_ {
        std::iter::once(self.uid).chain(self.ancestors.iter().copied())
    }
}

/// A policy's scope, as Cedar states it.
#[derive(Debug)]
struct Scope {
    principal: PrincipalConstraint,
    action: ActionConstraint,
    resource: ResourceConstraint,
}

impl Scope {
    fn of(policy: &Policy) -> Self {
        Self {
            principal: policy.principal_constraint(),
            action: policy.action_constraint(),
            resource: policy.resource_constraint(),
        }
    }

    /// Whether this scope holds for the request: Cedar's semantics of `==`, `in` and `is`.
    fn matches(&self, principal: &Place<'_>, action: &Place<'_>, resource: &Place<'_>) -> bool {
        self.matches_caller(principal, action) && self.matches_resource(resource)
    }

    fn matches_caller(&self, principal: &Place<'_>, action: &Place<'_>) -> bool {
        let principal_matches = match &self.principal {
            PrincipalConstraint::Any => true,
            PrincipalConstraint::Eq(uid) => principal.uid == uid,
            PrincipalConstraint::In(uid) => principal.is_in(uid),
            PrincipalConstraint::Is(type_name) => principal.is(type_name),
            PrincipalConstraint::IsIn(type_name, uid) => principal.is(type_name) && principal.is_in(uid),
        };
        let action_matches = match &self.action {
            ActionConstraint::Any => true,
            ActionConstraint::Eq(uid) => action.uid == uid,
            ActionConstraint::In(uids) => uids.iter().any(|uid| action.is_in(uid)),
        };
        principal_matches && action_matches
    }

    fn matches_resource(&self, resource: &Place<'_>) -> bool {
        match &self.resource {
            ResourceConstraint::Any => true,
            ResourceConstraint::Eq(uid) => resource.uid == uid,
            ResourceConstraint::In(uid) => resource.is_in(uid),
            ResourceConstraint::Is(type_name) => resource.is(type_name),
            ResourceConstraint::IsIn(type_name, uid) => resource.is(type_name) && resource.is_in(uid),
        }
    }
}

/// The policies that can match one caller asking one action of resources of one type (an
/// MCP list), found once for the list: those whose resource scope names no entity, matched
/// already, and the caller's place, to match those filed under a resource's entities.
#[derive(Debug)]
pub(super) struct OpenSlice {
    /// Policies whose whole scope holds for every resource of the type.
    every: Vec<u32>,
    principal: (EntityUid, Vec<EntityUid>),
    action: (EntityUid, Vec<EntityUid>),
}

impl OpenSlice {
    /// The policies whose whole scope matches `resource` (of the slice's type), in `out`: the
    /// ones [`Slicer::slice`] would give the request, in another order.
    pub(super) fn matching(
        &self,
        slicer: &Slicer,
        resource: &EntityUid,
        entities: &Entities,
        out: &mut Vec<u32>,
    ) {
        out.clear();
        out.extend_from_slice(&self.every);
        if slicer.by_resource.is_empty() {
            return;
        }
        let resource = Place::of(resource, entities);
        let mut caller = None;
        for uid in resource.all() {
            let Some(bucket) = slicer.by_resource.get(uid) else { continue };
            let (principal, action) =
                caller.get_or_insert_with(|| (Place::owned(&self.principal), Place::owned(&self.action)));
            // A policy is in one bucket, so none is found twice.
            out.extend(bucket.iter().filter(|&&index| {
                slicer
                    .scopes
                    .get(index as usize)
                    .is_some_and(|scope| scope.matches(principal, action, &resource))
            }));
        }
    }
}

/// The policies a request is decided by.
#[derive(Debug, Clone)]
pub(super) enum Slice {
    /// The policies whose scope matched.
    Set(Policies),
    /// The whole set: slicing is off.
    Whole,
}

/// What a request's slice cost, for the caller's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cache {
    /// Cached already, empty, or slicing off.
    Hit,
    /// Built and cached.
    Miss,
    /// Built, and the cache was full: it started over with this slice.
    Reset,
    /// Built, larger than the whole bound: used for this request only.
    TooLarge,
}

/// One policy set, indexed for slicing, with its cache of slices.
#[derive(Debug)]
pub(super) struct Slicer {
    policies: Vec<Arc<Compiled>>,
    scopes: Vec<Scope>,
    by_resource: Index<EntityUid>,
    by_principal: Index<EntityUid>,
    by_action: Index<EntityUid>,
    by_resource_type: Index<EntityTypeName>,
    by_principal_type: Index<EntityTypeName>,
    /// Policies whose scope names no entity and no type: in every slice.
    always: Vec<u32>,
    /// Slices by the (sorted) indexes of their policies.
    cache: DashMap<Box<[u32]>, Policies, foldhash::fast::RandomState>,
    /// Policies held by the cached slices, against the bound; taken to add or clear (misses
    /// only), so the count is exact.
    held: Mutex<usize>,
    /// Whether a full cache was reported (once per set).
    reported_full: AtomicBool,
    empty: Policies,
}

impl Slicer {
    /// Indexes `set` (its static policies; cedargate refuses templates).
    pub(super) fn new(set: &PolicySet) -> Self {
        Self::reusing(set, &HashMap::new())
    }

    /// Indexes `set`, taking the compiled policies `shared` holds rather than building them
    /// again: the set with the `@shadow` policies holds every enforced one.
    pub(super) fn sharing(set: &PolicySet, shared: &Slicer) -> Self {
        let compiled = shared.policies.iter().map(|compiled| (compiled.policy.id(), compiled)).collect();
        Self::reusing(set, &compiled)
    }

    fn reusing(set: &PolicySet, compiled: &HashMap<&PolicyId, &Arc<Compiled>>) -> Self {
        let mut slicer = Self {
            policies: Vec::new(),
            scopes: Vec::new(),
            by_resource: Index::default(),
            by_principal: Index::default(),
            by_action: Index::default(),
            by_resource_type: Index::default(),
            by_principal_type: Index::default(),
            always: Vec::new(),
            cache: DashMap::default(),
            held: Mutex::new(0),
            reported_full: AtomicBool::new(false),
            empty: Arc::new([]),
        };
        for policy in set.policies() {
            let index = u32::try_from(slicer.policies.len()).unwrap_or(u32::MAX);
            let scope = Scope::of(policy);
            slicer.file(index, &scope);
            slicer.scopes.push(scope);
            let shared = compiled.get(policy.id()).map(|compiled| Arc::clone(compiled));
            slicer.policies.push(shared.unwrap_or_else(|| Arc::new(Compiled::new(policy))));
        }
        slicer
    }

    /// Every policy of the set, for a request decided without slicing.
    pub(super) fn all(&self) -> &[Arc<Compiled>] {
        &self.policies
    }

    /// Policy `index` of [`Slicer::slice`] and [`OpenSlice::matching`].
    pub(super) fn compiled(&self, index: u32) -> Option<&Arc<Compiled>> {
        self.policies.get(index as usize)
    }

    /// The policies whose scope can match `principal` asking `action` of some resource of
    /// type `resource`, over `entities` (which hold the principal, the action and their
    /// ancestors): the buckets [`Slicer::slice`] gathers, but the resource's own.
    pub(super) fn open(
        &self,
        principal: &EntityUid,
        action: &EntityUid,
        resource: &EntityTypeName,
        entities: &Entities,
    ) -> OpenSlice {
        let (principal, action) = (Place::of(principal, entities), Place::of(action, entities));
        let mut every: Vec<u32> = self.always.clone();
        for (buckets, place) in [(&self.by_principal, &principal), (&self.by_action, &action)] {
            for uid in place.all() {
                if let Some(bucket) = buckets.get(uid) {
                    every.extend_from_slice(bucket);
                }
            }
        }
        if let Some(bucket) = self.by_resource_type.get(resource) {
            every.extend_from_slice(bucket);
        }
        if let Some(bucket) = self.by_principal_type.get(principal.uid.type_name()) {
            every.extend_from_slice(bucket);
        }
        // What is not filed by its resource's entity names none in its resource scope: it
        // is `resource`, `resource is T`, or filed under `resource`'s entity (found per entry).
        every.retain(|&index| {
            self.scopes.get(index as usize).is_some_and(|scope| {
                scope.matches_caller(&principal, &action)
                    && match &scope.resource {
                        ResourceConstraint::Any => true,
                        ResourceConstraint::Is(type_name) => type_name == resource,
                        ResourceConstraint::Eq(_)
                        | ResourceConstraint::In(_)
                        | ResourceConstraint::IsIn(..) => false,
                    }
            })
        });
        every.sort_unstable();
        every.dedup();
        let owned =
            |place: &Place<'_>| (place.uid.clone(), place.ancestors.iter().map(|&uid| uid.clone()).collect());
        OpenSlice { every, principal: owned(&principal), action: owned(&action) }
    }

    /// Puts policy `index` into the bucket of the most selective part of its scope.
    fn file(&mut self, index: u32, scope: &Scope) {
        let entity_of_resource = match &scope.resource {
            ResourceConstraint::Eq(uid) | ResourceConstraint::In(uid) | ResourceConstraint::IsIn(_, uid) => {
                Some(uid)
            }
            ResourceConstraint::Any | ResourceConstraint::Is(_) => None,
        };
        let entity_of_principal = match &scope.principal {
            PrincipalConstraint::Eq(uid)
            | PrincipalConstraint::In(uid)
            | PrincipalConstraint::IsIn(_, uid) => Some(uid),
            PrincipalConstraint::Any | PrincipalConstraint::Is(_) => None,
        };
        if let Some(uid) = entity_of_resource {
            self.by_resource.entry(uid.clone()).or_default().push(index);
        } else if let Some(uid) = entity_of_principal {
            self.by_principal.entry(uid.clone()).or_default().push(index);
        } else if let ActionConstraint::Eq(uid) = &scope.action {
            self.by_action.entry(uid.clone()).or_default().push(index);
        } else if let ActionConstraint::In(uids) = &scope.action {
            // In each action's bucket: a request of either finds it (gathering removes repeats).
            for uid in uids {
                self.by_action.entry(uid.clone()).or_default().push(index);
            }
        } else if let ResourceConstraint::Is(type_name) = &scope.resource {
            self.by_resource_type.entry(type_name.clone()).or_default().push(index);
        } else if let PrincipalConstraint::Is(type_name) = &scope.principal {
            self.by_principal_type.entry(type_name.clone()).or_default().push(index);
        } else {
            self.always.push(index);
        }
    }

    /// The slice for `request` over `entities` (which hold its principal, action and resource
    /// and their ancestors). `max_held` bounds the policies all cached slices hold (`0` turns
    /// slicing off): a slice that does not fit clears the cache, which starts over with it, so
    /// the slices in use are always the ones cached, whoever asked first. A slice larger than
    /// the bound itself is built for its request and not kept.
    pub(super) fn slice(&self, request: &Request, entities: &Entities, max_held: usize) -> (Slice, Cache) {
        let (Some(principal), Some(action), Some(resource)) =
            (request.principal(), request.action(), request.resource())
        else {
            return (Slice::Whole, Cache::Hit);
        };
        if max_held == 0 {
            return (Slice::Whole, Cache::Hit);
        }
        let principal = Place::of(principal, entities);
        let action = Place::of(action, entities);
        let resource = Place::of(resource, entities);

        let mut indexes: Vec<u32> = self.always.clone();
        let buckets =
            [(&self.by_resource, &resource), (&self.by_principal, &principal), (&self.by_action, &action)];
        for (buckets, place) in buckets {
            for uid in place.all() {
                if let Some(bucket) = buckets.get(uid) {
                    indexes.extend_from_slice(bucket);
                }
            }
        }
        if let Some(bucket) = self.by_resource_type.get(resource.uid.type_name()) {
            indexes.extend_from_slice(bucket);
        }
        if let Some(bucket) = self.by_principal_type.get(principal.uid.type_name()) {
            indexes.extend_from_slice(bucket);
        }
        indexes.retain(|&index| {
            self.scopes.get(index as usize).is_some_and(|scope| scope.matches(&principal, &action, &resource))
        });
        indexes.sort_unstable();
        indexes.dedup();
        if indexes.is_empty() {
            return (Slice::Set(Arc::clone(&self.empty)), Cache::Hit);
        }
        if let Some(cached) = self.cache.get(indexes.as_slice()) {
            return (Slice::Set(Arc::clone(cached.value())), Cache::Hit);
        }
        let set: Policies =
            indexes.iter().filter_map(|&index| self.policies.get(index as usize).cloned()).collect();
        let size = indexes.len();
        if size > max_held {
            return (Slice::Set(set), Cache::TooLarge);
        }
        // A poisoned count is still a count: nothing panics while holding it.
        let mut held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(cached) = self.cache.get(indexes.as_slice()) {
            return (Slice::Set(Arc::clone(cached.value())), Cache::Hit);
        }
        let mut outcome = Cache::Miss;
        if held.saturating_add(size) > max_held {
            self.cache.clear();
            *held = 0;
            outcome = Cache::Reset;
            if !self.reported_full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    max_policies = max_held,
                    policies = self.policies.len(),
                    "the policy slice cache is full: it starts over when a new slice does not fit, and \
                     requests rebuild their slices, correctly but slower; raise policies.slice_cache_max_policies"
                );
            }
        }
        *held += size;
        self.cache.insert(indexes.into_boxed_slice(), Arc::clone(&set));
        (Slice::Set(set), outcome)
    }
}
