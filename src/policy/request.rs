//! Turning a [`Query`] into a Cedar request and entity store.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;
use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request, RestrictedExpression, Schema,
};
use cedar_policy_core::ast::{self, PartialValue};
use cedar_policy_core::entities::{Dereference, Entities as CoreEntities, NoEntitiesSchema, TCComputation};
use cedar_policy_core::extensions::Extensions;
use dashmap::DashMap;
use ref_cast::RefCast;
use smol_str::SmolStr;

use super::authorize::Compiled;
use super::{PolicySnapshot, Query, Resource};
use crate::model::{AuthInfo, CredentialKind, Extra, McpKind};

/// The entity type names cedargate sends, parsed once.
#[derive(Debug, Clone)]
pub(super) struct Names {
    user: EntityTypeName,
    role: EntityTypeName,
    anonymous: EntityTypeName,
    route: EntityTypeName,
    tool: EntityTypeName,
    prompt: EntityTypeName,
    mcp_resource: EntityTypeName,
    mcp_method: EntityTypeName,
    server: EntityTypeName,
    facts: EntityTypeName,
    action: EntityTypeName,
}

impl Names {
    pub(super) fn new() -> Result<Self, String> {
        let parse = |name: &str| {
            EntityTypeName::from_str(name).map_err(|error| format!("entity type `{name}`: {error}"))
        };
        Ok(Self {
            user: parse("User")?,
            role: parse("Role")?,
            anonymous: parse("Anonymous")?,
            route: parse("Route")?,
            tool: parse("Tool")?,
            prompt: parse("Prompt")?,
            mcp_resource: parse("McpResource")?,
            mcp_method: parse("McpMethod")?,
            server: parse("Server")?,
            facts: parse("Facts")?,
            action: parse("Action")?,
        })
    }

    fn mcp_type(&self, kind: McpKind) -> &EntityTypeName {
        match kind {
            McpKind::Tool => &self.tool,
            McpKind::Prompt => &self.prompt,
            McpKind::Resource => &self.mcp_resource,
            McpKind::Method => &self.mcp_method,
        }
    }

    /// The types of the resources cedargate builds per request: a route, an MCP entity.
    fn request_resource_types(&self) -> [&EntityTypeName; 5] {
        [&self.route, &self.tool, &self.prompt, &self.mcp_resource, &self.mcp_method]
    }

    fn uid(&self, type_name: &EntityTypeName, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(type_name.clone(), EntityId::new(id))
    }
}

/// The Cedar action of each kind of MCP request.
fn mcp_action(kind: McpKind) -> &'static str {
    match kind {
        McpKind::Tool => "call",
        McpKind::Prompt => "get_prompt",
        McpKind::Resource => "read_resource",
        McpKind::Method => "rpc",
    }
}

fn string(value: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(value.to_owned())
}

/// The Cedar side of one identity, built once and reused for as long as the identity and the
/// policy snapshot live: the principal's entity store and its context.
#[derive(Debug)]
pub(super) struct Prepared {
    /// The snapshot generation this was built for.
    generation: u64,
    uid: EntityUid,
    /// The principal, its ancestors closed against the snapshot's static entities: a role's
    /// ancestors are the principal's too. Only the entity, not a store of its own: a few
    /// hundred bytes per identity rather than a copy of every action and static entity.
    principal: Arc<ast::Entity>,
    /// The context, for the second (`now`) it was last built for.
    context: ArcSwap<(i64, Context)>,
}

impl Prepared {
    pub(super) fn new(
        names: &Names,
        base_entities: &Entities,
        generation: u64,
        auth: Option<&AuthInfo>,
    ) -> Result<Self, String> {
        let principal = principal_entity(names, auth);
        let uid = principal.uid();
        // Cedar closes it (and refuses a principal that is also a static entity).
        let closed =
            base_entities.clone().add_entities([principal], None).map_err(|error| error.to_string())?;
        let store: &CoreEntities = closed.as_ref();
        let principal = match store.entity(uid.as_ref()) {
            Dereference::Data(principal) => Arc::new(principal.clone()),
            Dereference::NoSuchEntity | Dereference::Residual(_) => {
                return Err(format!("the principal {uid} is missing from its own entity store"))
            }
        };
        let context = context(names, auth, 0)?;
        Ok(Self { generation, uid, principal, context: ArcSwap::from_pointee((0, context)) })
    }

    /// The principal entity, closed.
    #[cfg(test)]
    pub(super) fn principal(&self) -> &Arc<ast::Entity> {
        &self.principal
    }

    /// The context at `now`; rebuilt at most once per second per identity.
    fn context_at(&self, names: &Names, auth: Option<&AuthInfo>, now: i64) -> Result<Context, String> {
        let cached = self.context.load();
        if cached.0 == now {
            return Ok(cached.1.clone());
        }
        let fresh = context(names, auth, now)?;
        self.context.store(Arc::new((now, fresh.clone())));
        Ok(fresh)
    }
}

/// Prepared principals by identity.
///
/// Keyed by the address of the `Arc<AuthInfo>` a backend handed out. INVARIANT: each entry holds
/// a `Weak` to that allocation, which keeps the address from being reused while the entry
/// exists, so an address that matches is the same identity (a backend never mutates an
/// `AuthInfo` behind an `Arc`).
#[derive(Debug)]
pub(super) struct PrincipalCache {
    entries: DashMap<usize, (Weak<AuthInfo>, Arc<Prepared>)>,
    max: usize,
}

/// Above this many entries, entries of dropped identities are purged before adding; if that
/// is not enough, a tenth of them go.
const PRINCIPAL_CACHE_MAX: usize = 65_536;

impl Default for PrincipalCache {
    fn default() -> Self {
        Self::with_max(PRINCIPAL_CACHE_MAX)
    }
}

impl PrincipalCache {
    pub(super) fn with_max(max: usize) -> Self {
        Self { entries: DashMap::new(), max: max.max(1) }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn get(
        &self,
        names: &Names,
        snapshot: &PolicySnapshot,
        auth: &Arc<AuthInfo>,
    ) -> Result<Arc<Prepared>, String> {
        let key = Arc::as_ptr(auth).addr();
        if let Some(entry) = self.entries.get(&key) {
            if entry.1.generation == snapshot.generation {
                return Ok(Arc::clone(&entry.1));
            }
        }
        let prepared =
            Arc::new(Prepared::new(names, &snapshot.base_entities, snapshot.generation, Some(auth))?);
        // An identity prepared again for a new snapshot replaces its entry: no room needed.
        if self.entries.len() >= self.max && !self.entries.contains_key(&key) {
            self.entries.retain(|_, (owner, _)| owner.strong_count() > 0);
            if self.entries.len() >= self.max {
                // Still full of live identities (a token cache holds them): drop a tenth, in
                // the map's order (the hash of an address: no caller picks whom), rather than
                // all of them, so memory and the hit rate stay level instead of a sawtooth.
                let mut seen = 0_usize;
                self.entries.retain(|_, _| {
                    seen += 1;
                    seen % 10 != 1
                });
            }
        }
        self.entries.insert(key, (Arc::downgrade(auth), Arc::clone(&prepared)));
        Ok(prepared)
    }
}

fn principal_entity(names: &Names, auth: Option<&AuthInfo>) -> Entity {
    match auth {
        Some(auth) => Entity::new_no_attrs(
            names.uid(&names.user, &auth.subject),
            auth.roles.iter().map(|role| names.uid(&names.role, role)).collect(),
        ),
        None => Entity::new_no_attrs(names.uid(&names.anonymous, "anonymous"), HashSet::new()),
    }
}

/// The resource entity and the action of `resource`.
///
/// Built as Cedar's core type, with values rather than expressions: Cedar's public constructor
/// runs its evaluator on every attribute and tag, and the entity would then be copied again to
/// close its ancestors.
fn resource_entity(names: &Names, resource: Resource<'_>) -> (EntityUid, ast::Entity) {
    match resource {
        Resource::Route { method, path, template, params } => (
            names.uid(&names.action, method),
            core_entity(
                names.uid(&names.route, template),
                [(NAME_PATH, core_string(path)), (NAME_TEMPLATE, core_string(template))],
                None,
                params.iter().map(|(name, value)| (SmolStr::new(name), core_string(value))),
            ),
        ),
        Resource::Mcp { kind, name, server, arguments } => (
            names.uid(&names.action, mcp_action(kind)),
            core_entity(
                names.uid(names.mcp_type(kind), name),
                [(NAME_NAME, core_string(name)), (NAME_SERVER, core_string(server))],
                (!server.is_empty()).then(|| names.uid(&names.server, server)),
                arguments.iter().map(|(key, value)| (SmolStr::new(key), core_tag(value))),
            ),
        ),
    }
}

const NAME_PATH: &str = "path";
const NAME_TEMPLATE: &str = "template";
const NAME_NAME: &str = "name";
const NAME_SERVER: &str = "server";

fn core_entity(
    uid: EntityUid,
    attrs: [(&'static str, PartialValue); 2],
    parent: Option<EntityUid>,
    tags: impl Iterator<Item = (SmolStr, PartialValue)>,
) -> ast::Entity {
    ast::Entity::new_with_attr_partial_value(
        uid.into(),
        attrs.into_iter().map(|(name, value)| (SmolStr::new_static(name), value)),
        HashSet::new(),
        parent.into_iter().map(Into::into).collect(),
        tags,
    )
}

fn core_string(value: &str) -> PartialValue {
    PartialValue::from(value)
}

/// A tag value: strings as they are, anything else as its JSON text.
fn core_tag(value: &serde_json::Value) -> PartialValue {
    match value {
        serde_json::Value::String(text) => core_string(text),
        other => PartialValue::from(other.to_string()),
    }
}

fn facts_entity(names: &Names, facts: &Extra) -> ast::Entity {
    ast::Entity::new_with_attr_partial_value(
        names.uid(&names.facts, FACTS_ID).into(),
        [],
        HashSet::new(),
        HashSet::new(),
        facts.iter().map(|(key, value)| (SmolStr::new(key), core_tag(value))),
    )
}

fn context(names: &Names, auth: Option<&AuthInfo>, now: i64) -> Result<Context, String> {
    Context::from_pairs(context_pairs(auth, names.uid(&names.facts, FACTS_ID), now))
        .map_err(|error| error.to_string())
}

/// The context attribute holding the request's `Facts` entity.
pub(super) const FACTS_ATTRIBUTE: &str = "facts";

/// The id of the one `Facts` entity of a request.
const FACTS_ID: &str = "request";

/// Builds the request and the entity store for `query`.
pub(super) fn build(
    names: &Names,
    snapshot: &PolicySnapshot,
    cache: &PrincipalCache,
    query: &Query<'_>,
) -> Result<(Request, Entities), String> {
    if let Resource::Route { method, .. } = query.resource {
        if !snapshot.route_actions.contains(method) {
            return Err(format!("method `{method}` is not an action of the schema that applies to `Route`"));
        }
    }
    let prepared = match query.auth {
        Some(auth) => cache.get(names, snapshot, auth)?,
        None => Arc::clone(&snapshot.anonymous),
    };
    let context = prepared.context_at(names, query.auth.map(Arc::as_ref), query.now)?;
    let (action, resource) = resource_entity(names, query.resource);
    let resource_uid = EntityUid::from(resource.uid().clone());
    let mut added = vec![resource];
    // No facts, no entity: `context.facts.hasTag(..)` is then false, as it should be.
    if !query.facts.is_empty() {
        added.push(facts_entity(names, query.facts));
    }
    let entities = with_request_entities(
        &snapshot.base_entities,
        &prepared.principal,
        added,
        &snapshot.request_ancestors,
    )?;
    let request = Request::new(prepared.uid.clone(), action, resource_uid, context, None)
        .map_err(|error| error.to_string())?;
    Ok((request, entities))
}

/// `base` (the snapshot's actions and static entities) with the request's own entities: the
/// principal, already closed when it was prepared, and the resource and facts.
///
/// Cedar's `add_entities` recomputes the transitive closure by walking every entity of the
/// store, which cost about a quarter of a decision. It is not needed when the new entities
/// are leaves of a closed graph: `base` is closed, so a new entity's ancestors are its
/// parents and their ancestors in `base`; and no entity of `base` has a new entity as an
/// ancestor, so nothing else changes. INVARIANT: the result equals Cedar's own closure
/// (`policy::tests::request_entities_are_closed_as_cedar_closes_them`); when an entity of
/// `base` does name a request entity as an ancestor (`request_ancestors`, from
/// `entities.json`), Cedar computes it.
pub(super) fn with_request_entities(
    base: &Entities,
    principal: &Arc<ast::Entity>,
    added: Vec<ast::Entity>,
    request_ancestors: &HashSet<ast::EntityUID>,
) -> Result<Entities, String> {
    let named_as_ancestor = |uid: &ast::EntityUID| request_ancestors.contains(uid);
    if named_as_ancestor(principal.uid()) || added.iter().any(|entity| named_as_ancestor(entity.uid())) {
        let principal = Entity::from(ast::Entity::clone(principal));
        let added = std::iter::once(principal).chain(added.into_iter().map(Entity::from));
        return base.clone().add_entities(added, None).map_err(|error| error.to_string());
    }
    let store: &CoreEntities = base.as_ref();
    let closed = added.into_iter().map(|entity| Arc::new(closed_leaf(store, entity)));
    let added = std::iter::once(Arc::clone(principal)).chain(closed);
    store
        .clone()
        .add_entities(
            added,
            None::<&NoEntitiesSchema>,
            TCComputation::AssumeAlreadyComputed,
            Extensions::all_available(),
        )
        .map(Entities::from)
        .map_err(|error| error.to_string())
}

/// `entity`, a leaf new to `store` (closed), with its parents' ancestors as its own: what
/// Cedar's closure would give it.
fn closed_leaf(store: &CoreEntities, mut entity: ast::Entity) -> ast::Entity {
    let inherited: Vec<_> = entity
        .parents()
        .filter_map(|parent| match store.entity(parent) {
            Dereference::Data(parent) => Some(parent.ancestors().cloned()),
            Dereference::NoSuchEntity | Dereference::Residual(_) => None,
        })
        .flatten()
        .collect();
    for ancestor in inherited {
        entity.add_indirect_ancestor(ancestor);
    }
    entity
}

/// One caller's requests for many resources (the entries of an MCP list): what a request
/// builds every time (the prepared principal, the context, the facts, the store with the
/// static entities and the principal) is built once, and every resource's entity goes into
/// that one store, added once for the whole list.
///
/// INVARIANT: each request is decided as over the store [`build`] would give it. Its store
/// here also holds the other entries, which no decision can tell: resources are leaves (no
/// entity has one as an ancestor), and a batch is only made for a snapshot in which nothing
/// reaches a route or an MCP entity but through `resource` (`lists_share_store`: no static
/// entity holds one, no policy reads one a literal names). An entry whose entity differs
/// from another of the same name, or that could not be added, is left to be decided alone.
/// `policy::tests::slicing::an_unlisted_tool_is_denied_for_every_argument` holds the batch to
/// single decisions.
pub(super) struct Batch {
    principal: EntityUid,
    context: Context,
    store: CoreEntities,
    /// Each resource's action and entity, `None` for one decided alone.
    entries: Vec<Option<(EntityUid, EntityUid)>>,
}

impl Batch {
    /// The batch for `auth` asking for each of `resources` with `facts` at `now`; `None` when
    /// the snapshot does not let requests share a store.
    pub(super) fn new(
        names: &Names,
        snapshot: &PolicySnapshot,
        cache: &PrincipalCache,
        auth: Option<&Arc<AuthInfo>>,
        facts: &Extra,
        now: i64,
        resources: &[Resource<'_>],
    ) -> Result<Option<Self>, String> {
        if !snapshot.request_ancestors.is_empty() || !snapshot.lists_share_store {
            return Ok(None);
        }
        let prepared = match auth {
            Some(auth) => cache.get(names, snapshot, auth)?,
            None => Arc::clone(&snapshot.anonymous),
        };
        let context = prepared.context_at(names, auth.map(Arc::as_ref), now)?;
        let base: &CoreEntities = snapshot.base_entities.as_ref();
        let mut leaves: HashMap<ast::EntityUID, ast::Entity> = HashMap::new();
        let entries = resources
            .iter()
            .map(|&resource| {
                if let Resource::Route { method, .. } = resource {
                    if !snapshot.route_actions.contains(method) {
                        return None;
                    }
                }
                let (action, entity) = resource_entity(names, resource);
                let entity = closed_leaf(base, entity);
                let uid = entity.uid().clone();
                // A repeated entry shares its entity when it is the same one, as `add_entities`
                // would share it; a static entity of its name (`entities.json` may declare
                // none) leaves it to be decided alone.
                let shared = match leaves.entry(uid.clone()) {
                    _ if matches!(base.entity(&uid), Dereference::Data(_)) => false,
                    Entry::Occupied(there) => there.get().deep_eq(&entity),
                    Entry::Vacant(slot) => {
                        slot.insert(entity);
                        true
                    }
                };
                shared.then(|| (action, EntityUid::from(uid)))
            })
            .collect();
        let mut added = vec![Arc::clone(&prepared.principal)];
        if !facts.is_empty() {
            added.push(Arc::new(closed_leaf(base, facts_entity(names, facts))));
        }
        added.extend(leaves.into_values().map(Arc::new));
        let store = base
            .clone()
            .add_entities(
                added,
                None::<&NoEntitiesSchema>,
                TCComputation::AssumeAlreadyComputed,
                Extensions::all_available(),
            )
            .map_err(|error| error.to_string())?;
        Ok(Some(Self { principal: prepared.uid.clone(), context, store, entries }))
    }

    /// `decide` over the request for resource `index` and the store; `None` when that one is
    /// to be decided alone.
    pub(super) fn each<T>(&self, index: usize, decide: impl FnOnce(&Request, &Entities) -> T) -> Option<T> {
        let (action, resource) = self.entries.get(index)?.as_ref()?;
        let request = Request::new(
            self.principal.clone(),
            action.clone(),
            resource.clone(),
            self.context.clone(),
            None,
        );
        request.ok().map(|request| decide(&request, Entities::ref_cast(&self.store)))
    }
}

/// Whether nothing but a request's `resource` reaches a route or an MCP entity: no static
/// entity holds one in an attribute or a tag, and no condition reads one a literal names
/// (`Tool::"a".name`). What a request adds holds no entity values (principals have no
/// attributes; facts, arguments, parameters and the context's fields are strings, but for
/// `context.facts`), and `entities.json` may not declare routes or MCP entities. Then the entries of a list can share one store
/// ([`Batch`]) and one partial evaluation ([`super::authorize::Lister`]).
pub(super) fn lists_share_store(names: &Names, base: &Entities, policies: &[Arc<Compiled>]) -> bool {
    let per_request = names.request_resource_types();
    !holds_request_resources(names, base)
        && policies.iter().all(|compiled| {
            compiled
                .reads()
                .iter()
                .all(|uid| !per_request.iter().any(|type_name| uid.entity_type() == type_name.as_ref()))
        })
}

/// The most entities a request adds to its store: the principal, the resource, the facts.
const REQUEST_ENTITIES: usize = 3;

/// `base` with room for a request's entities. Every request's store is a clone of `base`,
/// and a clone has its original's capacity: a store built full would grow, rehashing every
/// entry, on each request. Room is made by adding placeholders and removing them again (a
/// map does not shrink); failing that, `base` is returned as it was, slower and as correct.
pub(super) fn with_room_for_requests(names: &Names, base: Entities) -> Entities {
    // Of a per-request type: `entities.json` cannot hold one, so none is overwritten.
    let placeholders: Vec<ast::EntityUID> =
        (0..REQUEST_ENTITIES).map(|n| names.uid(&names.facts, &format!("room {n}")).into()).collect();
    let store: &CoreEntities = base.as_ref();
    // Removing an entity also strips it from its descendants' ancestors: a placeholder that a
    // static entity names as a parent (a schema may allow that) would lose the edge. Such a
    // store gets no room.
    if store.iter().any(|entity| placeholders.iter().any(|uid| entity.is_descendant_of(uid))) {
        return base;
    }
    let roomy = store
        .clone()
        .add_entities(
            placeholders.iter().map(|uid| {
                Arc::new(ast::Entity::new_with_attr_partial_value(
                    uid.clone(),
                    [],
                    HashSet::new(),
                    HashSet::new(),
                    [],
                ))
            }),
            None::<&NoEntitiesSchema>,
            TCComputation::AssumeAlreadyComputed,
            Extensions::all_available(),
        )
        .ok()
        .and_then(|store| store.remove_entities(placeholders, TCComputation::AssumeAlreadyComputed).ok());
    roomy.map_or(base, Entities::from)
}

/// The entities of `base` whose type is one cedargate builds per request (a principal, a
/// route, an MCP entity, the facts) and that some entity of `base` names as an ancestor:
/// adding such an entity to a request changes other entities' ancestors.
pub(super) fn request_ancestors(names: &Names, base: &Entities) -> HashSet<ast::EntityUID> {
    let per_request = [
        &names.user,
        &names.anonymous,
        &names.route,
        &names.tool,
        &names.prompt,
        &names.mcp_resource,
        &names.mcp_method,
        &names.facts,
    ];
    base.iter()
        .filter_map(|entity| base.ancestors(&entity.uid()))
        .flatten()
        .filter(|ancestor| per_request.contains(&ancestor.type_name()))
        .map(|ancestor| ancestor.as_ref().clone())
        .collect()
}

/// Whether an attribute or a tag of an entity of `base` holds (anywhere in its value) an
/// entity of a type cedargate builds per request as a resource (a route, an MCP entity):
/// reading it gives a different entity, or none, from one resource to the next, so the
/// entries of a list cannot share what their policies read besides the resource.
pub(super) fn holds_request_resources(names: &Names, base: &Entities) -> bool {
    let per_request = names.request_resource_types();
    let names_one =
        |uid: &ast::EntityUID| per_request.iter().any(|type_name| uid.entity_type() == type_name.as_ref());
    fn holds(value: &PartialValue, names_one: &dyn Fn(&ast::EntityUID) -> bool) -> bool {
        let PartialValue::Value(value) = value else { return true };
        holds_value(value, names_one)
    }
    fn holds_value(value: &ast::Value, names_one: &dyn Fn(&ast::EntityUID) -> bool) -> bool {
        match &value.value {
            ast::ValueKind::Lit(ast::Literal::EntityUID(uid)) => names_one(uid),
            ast::ValueKind::Lit(_) | ast::ValueKind::ExtensionValue(_) => false,
            ast::ValueKind::Set(set) => set.iter().any(|member| holds_value(member, names_one)),
            ast::ValueKind::Record(record) => record.values().any(|field| holds_value(field, names_one)),
        }
    }
    let store: &CoreEntities = base.as_ref();
    store.iter().any(|entity| {
        entity.attrs().any(|(_, value)| holds(value, &names_one))
            || entity.tags().any(|(_, value)| holds(value, &names_one))
    })
}

fn context_pairs(auth: Option<&AuthInfo>, facts: EntityUid, now: i64) -> Vec<(String, RestrictedExpression)> {
    let strings = |values: &[String]| RestrictedExpression::new_set(values.iter().map(|value| string(value)));
    let (kind, subject, client_id, scopes, roles, tenant, issuer) = match auth {
        Some(auth) => (
            auth.kind.as_str(),
            auth.subject.as_str(),
            auth.client_id.as_str(),
            strings(&auth.scopes),
            strings(&auth.roles),
            auth.tenant.as_str(),
            auth.issuer.as_str(),
        ),
        None => (CredentialKind::Anonymous.as_str(), "", "", strings(&[]), strings(&[]), "", ""),
    };
    vec![
        ("authenticated".to_owned(), RestrictedExpression::new_bool(auth.is_some())),
        ("credential_kind".to_owned(), string(kind)),
        ("subject".to_owned(), string(subject)),
        ("client_id".to_owned(), string(client_id)),
        ("scopes".to_owned(), scopes),
        ("roles".to_owned(), roles),
        ("tenant".to_owned(), string(tenant)),
        ("issuer".to_owned(), string(issuer)),
        ("now".to_owned(), RestrictedExpression::new_long(now)),
        (FACTS_ATTRIBUTE.to_owned(), RestrictedExpression::new_entity_uid(facts)),
    ]
}

/// The upper-case names of the actions that apply to `User` principals on `Route` resources.
pub(super) fn route_actions(names: &Names, schema: &Schema) -> HashSet<String> {
    schema
        .actions_for_principal_and_resource(&names.user, &names.route)
        .map(|action| action.id().unescaped().to_owned())
        .collect()
}

/// Checks, with the schema, a sample of every request shape cedargate builds, so a schema that
/// would reject them fails at load time rather than denying every request later.
pub(super) fn check_schema(names: &Names, schema: &Schema) -> Result<(), String> {
    let route_methods = route_actions(names, schema);
    if route_methods.is_empty() {
        return Err("no action applies to `User` principals on `Route` resources".to_owned());
    }
    let mut auth = AuthInfo::new(CredentialKind::Static, "schema-check", vec!["role".to_owned()]);
    auth.scopes = vec!["scope".to_owned()];
    let facts = Extra::from([("key".to_owned(), serde_json::Value::from("value"))]);
    let params = [("id".to_owned(), "1".to_owned())];
    let mut resources: Vec<_> = [McpKind::Tool, McpKind::Prompt, McpKind::Resource, McpKind::Method]
        .into_iter()
        .map(|kind| Resource::Mcp { kind, name: "name", server: "server", arguments: &facts })
        .collect();
    for method in &route_methods {
        resources.push(Resource::Route {
            method,
            path: "/items/1",
            template: "/items/{id}",
            params: &params,
        });
    }
    for resource in resources {
        for principal in [Some(&auth), None] {
            let principal_entity = principal_entity(names, principal);
            let (action, resource) = resource_entity(names, resource);
            let resource = Entity::from(resource);
            let shape = format!("{action} on {}", resource.uid());
            Request::new(
                principal_entity.uid(),
                action,
                resource.uid(),
                context(names, principal, 0)?,
                Some(schema),
            )
            .map_err(|error| format!("{shape}: {error}"))?;
            Entities::from_entities(
                [principal_entity, resource, Entity::from(facts_entity(names, &facts))],
                Some(schema),
            )
            .map_err(|error| format!("{shape}: {error}"))?;
        }
    }
    Ok(())
}
