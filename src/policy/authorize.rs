//! Deciding a request by a slice: Cedar's authorization over policies prepared once per load.
//!
//! Cedar's `Authorizer` rebuilds each policy's condition (its scope and its `when`/`unless`
//! clauses joined into one expression) on every evaluation, then frees it, and records every
//! policy's outcome in a partial response before reading the decision from it. That was about
//! a third of Cedar's cost for the demo's check. Here each condition is built once, when a set
//! loads, and a request is answered by Cedar's own evaluator over those expressions.
//!
//! INVARIANT: the answer is Cedar's: a forbid that holds denies, else a permit that holds
//! allows, else deny; a policy that fails to evaluate is neither satisfied nor determining and
//! is reported with Cedar's message. The property test in `policy/tests.rs` holds
//! [`authorize`] to `cedar_policy::Authorizer` on random sets and requests.

use std::collections::HashMap;
use std::sync::Arc;

use cedar_policy::{Decision, Entities, EntityTypeName, EntityUid, Policy, PolicyId, Request};
use cedar_policy_core::ast::{self, Effect, PartialValue};
use cedar_policy_core::authorizer::AuthorizationError;
use cedar_policy_core::evaluator::Evaluator;
use cedar_policy_core::extensions::Extensions;

use super::slice::{OpenSlice, Slicer};

/// A policy with its condition built.
#[derive(Debug)]
pub(super) struct Compiled {
    pub(super) policy: Policy,
    condition: ast::Expr,
    /// The condition with every read of the resource's tags (a call's arguments, a route's
    /// parameters) made unknown, for deciding a list entry; `None` when it reads none.
    listing: Option<ast::Expr>,
    /// The entities named by literals that the condition reads (`Tool::"a".name`,
    /// `Tool::"a" in ..`): looked up in the request's store, not only compared.
    reads: Box<[ast::EntityUID]>,
}

impl Compiled {
    pub(super) fn new(policy: &Policy) -> Self {
        let condition = AsRef::<ast::Policy>::as_ref(policy).condition();
        let listing = reads_resource_tags(&condition).then(|| with_resource_tags_unknown(&condition));
        let mut reads = Vec::new();
        read_literals(&condition, &mut reads);
        Self { policy: policy.clone(), condition, listing, reads: reads.into() }
    }

    pub(super) fn reads(&self) -> &[ast::EntityUID] {
        &self.reads
    }

    /// The condition a list entry is decided by.
    fn listing_condition(&self) -> &ast::Expr {
        self.listing.as_ref().unwrap_or(&self.condition)
    }
}

/// Puts into `out` each entity literal of `expr` that evaluating it may look up: every one but
/// an operand of `==`, the right of `in` (alone or in a set literal) and the left of `is`,
/// where only its name counts.
fn read_literals(expr: &ast::Expr, out: &mut Vec<ast::EntityUID>) {
    use ast::{BinaryOp, ExprKind};
    let unless_literal = |expr: &ast::Expr, out: &mut Vec<ast::EntityUID>| {
        if !matches!(expr.expr_kind(), ExprKind::Lit(ast::Literal::EntityUID(_))) {
            read_literals(expr, out);
        }
    };
    match expr.expr_kind() {
        ExprKind::Lit(ast::Literal::EntityUID(uid)) => out.push(uid.as_ref().clone()),
        ExprKind::Lit(_) | ExprKind::Var(_) | ExprKind::Slot(_) | ExprKind::Unknown(_) => {}
        ExprKind::BinaryApp { op: BinaryOp::Eq, arg1, arg2 } => {
            unless_literal(arg1, out);
            unless_literal(arg2, out);
        }
        ExprKind::BinaryApp { op: BinaryOp::In, arg1, arg2 } => {
            read_literals(arg1, out);
            match arg2.expr_kind() {
                ExprKind::Set(members) => members.iter().for_each(|member| unless_literal(member, out)),
                _ => unless_literal(arg2, out),
            }
        }
        ExprKind::Is { expr, .. } => unless_literal(expr, out),
        ExprKind::If { test_expr, then_expr, else_expr } => {
            for expr in [test_expr, then_expr, else_expr] {
                read_literals(expr, out);
            }
        }
        ExprKind::And { left: arg1, right: arg2 }
        | ExprKind::Or { left: arg1, right: arg2 }
        | ExprKind::BinaryApp { arg1, arg2, .. } => {
            read_literals(arg1, out);
            read_literals(arg2, out);
        }
        ExprKind::UnaryApp { arg: expr, .. }
        | ExprKind::GetAttr { expr, .. }
        | ExprKind::HasAttr { expr, .. }
        | ExprKind::ExtHasAttr { expr, .. }
        | ExprKind::Like { expr, .. } => read_literals(expr, out),
        ExprKind::ExtensionFunctionApp { args, .. } => args.iter().for_each(|arg| read_literals(arg, out)),
        ExprKind::Set(members) => members.iter().for_each(|member| read_literals(member, out)),
        ExprKind::Record(fields) => fields.values().for_each(|field| read_literals(field, out)),
    }
}

/// Whether `expr` may read a tag of the resource (a call's arguments, a route's parameters).
fn reads_resource_tags(expr: &ast::Expr) -> bool {
    expr.subexpressions().any(|sub| resource_tag_read(sub).is_some())
}

/// The tag operation `expr` applies, if it is one whose entity may be the resource: any but
/// the principal's, the action's and the facts' (`context.facts`). The resource may come by
/// any path (`resource.hasTag`, `{r: resource}.r.getTag`, `Tool::"a".hasTag`, an `if`), and
/// an entry listed for a tag read that could not have been the resource's is at worst listed
/// and refused when called, never hidden though callable.
fn resource_tag_read(expr: &ast::Expr) -> Option<ast::BinaryOp> {
    use ast::{ExprKind, Var};
    let ExprKind::BinaryApp { op: op @ (ast::BinaryOp::HasTag | ast::BinaryOp::GetTag), arg1, .. } =
        expr.expr_kind()
    else {
        return None;
    };
    let another_entity = match arg1.expr_kind() {
        ExprKind::Var(Var::Principal | Var::Action) => true,
        ExprKind::GetAttr { expr, attr } => {
            matches!(expr.expr_kind(), ExprKind::Var(Var::Context)) && attr == super::request::FACTS_ATTRIBUTE
        }
        _ => false,
    };
    (!another_entity).then_some(*op)
}

/// `expr` with each `resource.hasTag(..)` and `resource.getTag(..)` replaced by an unknown of
/// its own: a list entry is asked for before its arguments exist.
fn with_resource_tags_unknown(expr: &ast::Expr) -> ast::Expr {
    rewrite(expr, &|expr| {
        resource_tag_read(expr).map(|_| ast::Expr::unknown(ast::Unknown::new_untyped("argument")))
    })
}

/// The unknown Cedar puts for a request's resource left open (`EntityUIDEntry::Unknown`).
const OPEN_RESOURCE: &str = "resource";

/// A residual of [`Lister`]'s open request with the resource's unknown read as `resource`
/// again, to be evaluated for each entry.
fn with_resource_restored(residual: &ast::Expr) -> ast::Expr {
    rewrite(residual, &|expr| match expr.expr_kind() {
        ast::ExprKind::Unknown(unknown) if unknown.name == OPEN_RESOURCE => {
            Some(ast::Expr::var(ast::Var::Resource))
        }
        _ => None,
    })
}

/// `expr` with each subexpression that `replace` answers for replaced by its answer.
fn rewrite(expr: &ast::Expr, replace: &dyn Fn(&ast::Expr) -> Option<ast::Expr>) -> ast::Expr {
    use ast::{Expr, ExprKind};
    if let Some(replaced) = replace(expr) {
        return replaced;
    }
    let map = |expr: &ast::Expr| rewrite(expr, replace);
    match expr.expr_kind() {
        ExprKind::Lit(_) | ExprKind::Var(_) | ExprKind::Slot(_) | ExprKind::Unknown(_) => expr.clone(),
        ExprKind::If { test_expr, then_expr, else_expr } => {
            Expr::ite(map(test_expr), map(then_expr), map(else_expr))
        }
        ExprKind::And { left, right } => Expr::and(map(left), map(right)),
        ExprKind::Or { left, right } => Expr::or(map(left), map(right)),
        ExprKind::UnaryApp { op, arg } => Expr::unary_app(*op, map(arg)),
        ExprKind::BinaryApp { op, arg1, arg2 } => Expr::binary_app(*op, map(arg1), map(arg2)),
        ExprKind::ExtensionFunctionApp { fn_name, args } => {
            Expr::call_extension_fn(fn_name.clone(), args.iter().map(map).collect())
        }
        ExprKind::GetAttr { expr, attr } => Expr::get_attr(map(expr), attr.clone()),
        ExprKind::HasAttr { expr, attr } => Expr::has_attr(map(expr), attr.clone()),
        ExprKind::ExtHasAttr { expr, attrs } => Expr::extended_has_attr(map(expr), attrs.clone()),
        ExprKind::Like { expr, pattern } => Expr::like(map(expr), pattern.clone()),
        ExprKind::Set(members) => Expr::set(members.iter().map(map)),
        // A record's keys are already unique; rebuilding it cannot fail, but if it did, the
        // record stays as it was and the entry is decided on its known arguments, never more.
        ExprKind::Record(fields) => {
            Expr::record(fields.iter().map(|(name, value)| (name.clone(), map(value))))
                .unwrap_or_else(|_| expr.clone())
        }
        ExprKind::Is { expr, entity_type } => Expr::is_entity_type(map(expr), entity_type.clone()),
    }
}

/// Cedar's answer: the decision, the policies that determined it, and the evaluation errors
/// (policy id and Cedar's message), in the order of the slice.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Decided {
    pub(super) decision: Decision,
    pub(super) determining: Vec<PolicyId>,
    pub(super) errors: Vec<(PolicyId, String)>,
}

impl Decided {
    /// The same answer read from Cedar's own response (the tests' oracle).
    #[cfg(test)]
    pub(super) fn from_response(response: &cedar_policy::Response) -> Self {
        let diagnostics = response.diagnostics();
        Self {
            decision: response.decision(),
            determining: diagnostics.reason().cloned().collect(),
            errors: diagnostics
                .errors()
                .map(|error| {
                    let cedar_policy::AuthorizationError::PolicyEvaluationError(evaluation) = error;
                    (evaluation.policy_id().clone(), error.to_string())
                })
                .collect(),
        }
    }
}

/// Decides `request` over `entities` by `policies`, as `cedar_policy::Authorizer` does.
pub(super) fn authorize(request: &Request, entities: &Entities, policies: &[Arc<Compiled>]) -> Decided {
    let request: &ast::Request = request.as_ref();
    let evaluator = Evaluator::new(request.clone(), entities.as_ref(), Extensions::all_available());
    let (mut permits, mut forbids, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for compiled in policies {
        let policy: &ast::Policy = compiled.policy.as_ref();
        let satisfied = match evaluator.partial_interpret(&compiled.condition, policy.env()) {
            Ok(PartialValue::Value(ast::Value {
                value: ast::ValueKind::Lit(ast::Literal::Bool(holds)),
                ..
            })) => Ok(holds),
            // A condition joins its parts with `&&`, which yields a boolean or fails; any other
            // value gets Cedar's own answer, its type error included.
            Ok(PartialValue::Value(_)) => evaluator.evaluate(policy),
            // Only an unknown value leaves a residual, and requests here have none; Cedar's
            // concrete answer counts such a policy neither satisfied nor failed.
            Ok(PartialValue::Residual(_)) => Ok(false),
            Err(error) => Err(error),
        };
        match satisfied {
            Ok(true) => match policy.effect() {
                Effect::Permit => permits.push(compiled.policy.id().clone()),
                Effect::Forbid => forbids.push(compiled.policy.id().clone()),
            },
            Ok(false) => {}
            Err(error) => {
                let error = AuthorizationError::PolicyEvaluationError { id: policy.id().clone(), error };
                errors.push((
                    compiled.policy.id().clone(),
                    cedar_policy::AuthorizationError::from(error).to_string(),
                ));
            }
        }
    }
    let (decision, determining) = if !forbids.is_empty() {
        (Decision::Deny, forbids)
    } else if !permits.is_empty() {
        (Decision::Allow, permits)
    } else {
        (Decision::Deny, Vec::new())
    };
    Decided { decision, determining, errors }
}

/// Whether some call of `request`'s resource could be allowed, whatever its arguments: the
/// decision of a list entry (`tools/list` and the like), asked before any arguments exist.
///
/// Each policy's condition is read with the resource's tags unknown. A forbid that holds
/// regardless hides the entry, as does a policy that fails regardless (every call would be
/// denied for it); otherwise the entry is listed if a permit holds or might hold. A permit
/// that cannot hold for any arguments never lists an entry, so an entry left out is one no
/// call can get through; one listed is one some call can, unless its permits only hold for
/// arguments that contradict each other.
pub(super) fn could_allow(request: &Request, entities: &Entities, policies: &[Arc<Compiled>]) -> bool {
    let request: &ast::Request = request.as_ref();
    let evaluator = Evaluator::new(request.clone(), entities.as_ref(), Extensions::all_available());
    let mut listing = Listing::default();
    for compiled in policies {
        let policy: &ast::Policy = compiled.policy.as_ref();
        if !listing.add(policy.effect(), listed(&evaluator, compiled.listing_condition(), policy)) {
            return false;
        }
    }
    listing.permitted
}

/// How a policy's condition comes out for a list entry.
#[derive(Debug, Clone, Copy)]
enum Listed {
    Holds(bool),
    /// Holds for some arguments, perhaps.
    Might,
    /// Fails whatever the arguments: a type error, or an error no argument avoids.
    Fails,
}

fn listed(evaluator: &Evaluator<'_>, condition: &ast::Expr, policy: &ast::Policy) -> Listed {
    match evaluator.partial_interpret(condition, policy.env()) {
        Ok(PartialValue::Value(ast::Value {
            value: ast::ValueKind::Lit(ast::Literal::Bool(holds)), ..
        })) => Listed::Holds(holds),
        Ok(PartialValue::Residual(_)) => Listed::Might,
        Ok(PartialValue::Value(_)) | Err(_) => Listed::Fails,
    }
}

/// An entry's policies, added one by one: a forbid that holds or a policy that fails hides
/// the entry whatever else holds; otherwise a permit that holds or might lists it.
#[derive(Debug, Default)]
struct Listing {
    permitted: bool,
}

impl Listing {
    /// Adds one policy's outcome; false once the entry is hidden.
    fn add(&mut self, effect: Effect, listed: Listed) -> bool {
        match (effect, listed) {
            (_, Listed::Fails) | (Effect::Forbid, Listed::Holds(true)) => return false,
            (Effect::Permit, Listed::Holds(true) | Listed::Might) => self.permitted = true,
            _ => {}
        }
        true
    }
}

/// [`could_allow`] for many entries of one caller's list (one principal, one context): each
/// policy whose principal and action scope match is partially evaluated once per action and
/// resource type, with the resource unknown, and only what remains is evaluated per entry.
///
/// INVARIANT: each answer is [`could_allow`]'s for the entry's request. Cedar's partial
/// evaluation leaves a residual wherever the resource is read, and the residual evaluated with
/// the resource known comes out as the condition would. (A part it could not evaluate behind
/// a residual `&&`, `||` or `if` is kept as written, `resource` and all, which per entry
/// reads the entry; a residual without the open resource's unknown may still hold such a
/// part, and then reads as "might hold" for every entry, as evaluating it per entry would:
/// its residual left side is an argument's.) What else a condition reads (the
/// principal, the context, the static entities) must be the same for every entry: the caller
/// asks only for a snapshot where nothing but `resource` reaches a route or an MCP entity
/// (`request::lists_share_store`). The property test
/// `policy::tests::slicing::an_unlisted_tool_is_denied_for_every_argument` holds the two to
/// the same answers.
pub(super) struct Lister<'s> {
    slicer: &'s Slicer,
    plans: Vec<Plan>,
    /// The policies matching the entry at hand (kept to reuse its allocation).
    matching: Vec<u32>,
}

/// The policies of one action on one resource type, with the resource open.
struct Plan {
    action: EntityUid,
    resource_type: EntityTypeName,
    slice: OpenSlice,
    /// The request with its resource unknown (of the type).
    open: ast::Request,
    /// Policies specialized so far, by their index in the slicer.
    specialized: HashMap<u32, Specialized, foldhash::fast::RandomState>,
}

/// A policy's listing condition for one plan.
enum Specialized {
    /// The same for every resource.
    Known(Listed),
    /// Decided by this residual, which reads `resource`, for each entry.
    Depends(ast::Expr),
}

impl<'s> Lister<'s> {
    pub(super) fn new(slicer: &'s Slicer) -> Self {
        Self { slicer, plans: Vec::new(), matching: Vec::new() }
    }

    /// [`could_allow`] for `request` over `entities`, whose principal and context are those
    /// of every request this lister is asked.
    pub(super) fn could_allow(&mut self, request: &Request, entities: &Entities) -> bool {
        let (Some(principal), Some(action), Some(resource)) =
            (request.principal(), request.action(), request.resource())
        else {
            return could_allow(request, entities, self.slicer.all());
        };
        let core: &ast::Request = request.as_ref();
        let resource_type = resource.type_name();
        let plan = match self
            .plans
            .iter()
            .position(|plan| plan.action == *action && plan.resource_type == *resource_type)
        {
            Some(found) => found,
            None => {
                self.plans.push(Plan {
                    action: action.clone(),
                    resource_type: resource_type.clone(),
                    slice: self.slicer.open(principal, action, resource_type, entities),
                    open: ast::Request::new_unchecked(
                        core.principal().clone(),
                        core.action().clone(),
                        ast::EntityUIDEntry::unknown_with_type(resource_type.as_ref().clone(), None),
                        core.context().cloned(),
                    ),
                    specialized: HashMap::default(),
                });
                self.plans.len() - 1
            }
        };
        let Some(plan) = self.plans.get_mut(plan) else {
            return could_allow(request, entities, self.slicer.all());
        };
        plan.slice.matching(self.slicer, resource, entities, &mut self.matching);

        let extensions = Extensions::all_available();
        let evaluator = Evaluator::new(core.clone(), entities.as_ref(), extensions);
        let mut open: Option<Evaluator<'_>> = None;
        let mut listing = Listing::default();
        for &index in &self.matching {
            let Some(compiled) = self.slicer.compiled(index) else { continue };
            let policy: &ast::Policy = compiled.policy.as_ref();
            let specialized = plan.specialized.entry(index).or_insert_with(|| {
                let open = open
                    .get_or_insert_with(|| Evaluator::new(plan.open.clone(), entities.as_ref(), extensions));
                specialize(open, compiled, policy)
            });
            let listed = match specialized {
                Specialized::Known(listed) => *listed,
                Specialized::Depends(residual) => listed(&evaluator, residual, policy),
            };
            if !listing.add(policy.effect(), listed) {
                return false;
            }
        }
        listing.permitted
    }
}

/// `residual` without the `true && ` its scope's known parts leave in front (Cedar keeps them
/// so that what follows must be a boolean). [`listed`] reads `true && x` as it reads `x`: a
/// boolean as itself, a residual as one, anything else (an error, another value) as failing.
fn without_leading_truths(mut residual: &ast::Expr) -> &ast::Expr {
    while let ast::ExprKind::And { left, right } = residual.expr_kind() {
        if !matches!(left.expr_kind(), ast::ExprKind::Lit(ast::Literal::Bool(true))) {
            break;
        }
        residual = right;
    }
    residual
}

/// `compiled`'s listing condition evaluated by `open`, whose resource is unknown.
fn specialize(open: &Evaluator<'_>, compiled: &Compiled, policy: &ast::Policy) -> Specialized {
    match open.partial_interpret(compiled.listing_condition(), policy.env()) {
        Ok(PartialValue::Value(ast::Value {
            value: ast::ValueKind::Lit(ast::Literal::Bool(holds)), ..
        })) => Specialized::Known(Listed::Holds(holds)),
        Ok(PartialValue::Residual(residual)) => {
            if residual.unknowns().any(|unknown| unknown.name == OPEN_RESOURCE) {
                Specialized::Depends(with_resource_restored(without_leading_truths(&residual)))
            } else {
                Specialized::Known(Listed::Might)
            }
        }
        // Failing with the resource unknown is failing whatever it is: partial evaluation
        // keeps a residual wherever the resource could avoid an error.
        Ok(PartialValue::Value(_)) | Err(_) => Specialized::Known(Listed::Fails),
    }
}
