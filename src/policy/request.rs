//! Turning a [`Query`] into a Cedar request and entity store.

use std::collections::HashSet;
use std::str::FromStr;

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request, RestrictedExpression, Schema,
};

use super::{PolicySnapshot, Query, Resource};
use crate::model::{AuthInfo, CredentialKind, Extra};

/// The entity type names cedargate sends, parsed once.
#[derive(Debug, Clone)]
pub(super) struct Names {
    user: EntityTypeName,
    role: EntityTypeName,
    anonymous: EntityTypeName,
    route: EntityTypeName,
    tool: EntityTypeName,
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
            server: parse("Server")?,
            facts: parse("Facts")?,
            action: parse("Action")?,
        })
    }

    fn uid(&self, type_name: &EntityTypeName, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(type_name.clone(), EntityId::new(id))
    }
}

fn string(value: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(value.to_owned())
}

/// A tag value: strings as they are, anything else as its JSON text.
fn tag_value(value: &serde_json::Value) -> RestrictedExpression {
    match value {
        serde_json::Value::String(text) => string(text),
        other => RestrictedExpression::new_string(other.to_string()),
    }
}

/// The pieces of one Cedar request.
struct Parts {
    principal: Entity,
    action: EntityUid,
    resource: Entity,
    facts: Entity,
    context: Context,
}

fn parts(names: &Names, query: &Query<'_>) -> Result<Parts, String> {
    let principal = match query.auth {
        Some(auth) => Entity::new_no_attrs(
            names.uid(&names.user, &auth.subject),
            auth.roles.iter().map(|role| names.uid(&names.role, role)).collect(),
        ),
        None => Entity::new_no_attrs(names.uid(&names.anonymous, "anonymous"), HashSet::new()),
    };
    let (action, resource) = match query.resource {
        Resource::Route { method, path, template, params } => (
            names.uid(&names.action, method),
            Entity::new_with_tags(
                names.uid(&names.route, template),
                [("path".to_owned(), string(path)), ("template".to_owned(), string(template))],
                [],
                params.iter().map(|(name, value)| (name.clone(), string(value))),
            ),
        ),
        Resource::Tool { name, server, arguments } => (
            names.uid(&names.action, "call"),
            Entity::new_with_tags(
                names.uid(&names.tool, name),
                [("name".to_owned(), string(name)), ("server".to_owned(), string(server))],
                (!server.is_empty()).then(|| names.uid(&names.server, server)),
                arguments.iter().map(|(key, value)| (key.clone(), tag_value(value))),
            ),
        ),
    };
    let resource = resource.map_err(|error| error.to_string())?;
    let facts_uid = names.uid(&names.facts, "request");
    let facts = Entity::new_with_tags(
        facts_uid.clone(),
        [],
        [],
        query.facts.iter().map(|(key, value)| (key.clone(), tag_value(value))),
    )
    .map_err(|error| error.to_string())?;
    let context = Context::from_pairs(context_pairs(query.auth, facts_uid, query.now))
        .map_err(|error| error.to_string())?;
    Ok(Parts { principal, action, resource, facts, context })
}

/// Builds the request and the entity store for `query`.
pub(super) fn build(
    names: &Names,
    snapshot: &PolicySnapshot,
    query: &Query<'_>,
) -> Result<(Request, Entities), String> {
    if let Resource::Route { method, .. } = query.resource {
        if !snapshot.route_actions.contains(method) {
            return Err(format!("method `{method}` is not an action of the schema that applies to `Route`"));
        }
    }
    let Parts { principal, action, resource, facts, context } = parts(names, query)?;
    let request = Request::new(principal.uid(), action, resource.uid(), context, None)
        .map_err(|error| error.to_string())?;
    let entities = snapshot
        .action_entities
        .clone()
        .add_entities([principal, resource, facts], None)
        .map_err(|error| error.to_string())?;
    Ok((request, entities))
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
        ("facts".to_owned(), RestrictedExpression::new_entity_uid(facts)),
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
    let mut resources = vec![Resource::Tool { name: "tool", server: "server", arguments: &facts }];
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
            let query = Query { auth: principal, resource, facts: &facts, now: 0 };
            let Parts { principal, action, resource, facts, context } = parts(names, &query)?;
            let shape = format!("{action} on {}", resource.uid());
            Request::new(principal.uid(), action, resource.uid(), context, Some(schema))
                .map_err(|error| format!("{shape}: {error}"))?;
            Entities::from_entities([principal, resource, facts], Some(schema))
                .map_err(|error| format!("{shape}: {error}"))?;
        }
    }
    Ok(())
}
