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
}

impl Compiled {
    pub(super) fn new(policy: &Policy) -> Self {
        let condition = AsRef::<ast::Policy>::as_ref(policy).condition();
        Self { policy: policy.clone(), condition }
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
