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

use std::sync::Arc;

use cedar_policy::{Decision, Entities, Policy, PolicyId, Request};
use cedar_policy_core::ast::{self, Effect, PartialValue};
use cedar_policy_core::authorizer::AuthorizationError;
use cedar_policy_core::evaluator::Evaluator;
use cedar_policy_core::extensions::Extensions;

/// A policy with its condition built.
#[derive(Debug)]
pub(super) struct Compiled {
    pub(super) policy: Policy,
    condition: ast::Expr,
    /// The condition with every read of the resource's tags (a call's arguments, a route's
    /// parameters) made unknown, for deciding a list entry; `None` when it reads none.
    listing: Option<ast::Expr>,
}

impl Compiled {
    pub(super) fn new(policy: &Policy) -> Self {
        let condition = AsRef::<ast::Policy>::as_ref(policy).condition();
        let listing = reads_resource_tags(&condition).then(|| with_resource_tags_unknown(&condition));
        Self { policy: policy.clone(), condition, listing }
    }
}

/// Whether `expr` reads a tag of `resource` (`resource.hasTag(..)`, `resource.getTag(..)`).
fn reads_resource_tags(expr: &ast::Expr) -> bool {
    expr.subexpressions().any(|sub| resource_tag_read(sub).is_some())
}

/// The tag operation `expr` applies to `resource`, if it is one.
fn resource_tag_read(expr: &ast::Expr) -> Option<ast::BinaryOp> {
    match expr.expr_kind() {
        ast::ExprKind::BinaryApp {
            op: op @ (ast::BinaryOp::HasTag | ast::BinaryOp::GetTag), arg1, ..
        } if matches!(arg1.expr_kind(), ast::ExprKind::Var(ast::Var::Resource)) => Some(*op),
        _ => None,
    }
}

/// `expr` with each `resource.hasTag(..)` and `resource.getTag(..)` replaced by an unknown of
/// its own: a list entry is asked for before its arguments exist.
fn with_resource_tags_unknown(expr: &ast::Expr) -> ast::Expr {
    use ast::{Expr, ExprKind};
    if resource_tag_read(expr).is_some() {
        return Expr::unknown(ast::Unknown::new_untyped("argument"));
    }
    let map = with_resource_tags_unknown;
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
    let mut permitted = false;
    for compiled in policies {
        let policy: &ast::Policy = compiled.policy.as_ref();
        let condition = compiled.listing.as_ref().unwrap_or(&compiled.condition);
        let holds = match evaluator.partial_interpret(condition, policy.env()) {
            Ok(PartialValue::Value(ast::Value {
                value: ast::ValueKind::Lit(ast::Literal::Bool(holds)),
                ..
            })) => Some(holds),
            Ok(PartialValue::Residual(_)) => None,
            // A type error or a failure that no argument can avoid: every call is denied.
            Ok(PartialValue::Value(_)) | Err(_) => return false,
        };
        match (policy.effect(), holds) {
            (Effect::Forbid, Some(true)) => return false,
            (Effect::Permit, Some(true) | None) => permitted = true,
            _ => {}
        }
    }
    permitted
}
