//! `cedargate policy explain`: one decision with the reasons behind it.
//!
//! The decision itself is [`PolicyEngine::evaluate`]'s. For a deny, every `permit` whose scope
//! (principal, action, resource) matches the request is taken apart: its conditions are
//! re-evaluated one at a time, each as a policy of its own built from the permit's policy
//! structure tree (Cedar's PST, which keeps the clauses as written), on the same request and
//! entities. Conditions are listed in source order up to the
//! first that stopped the permit, as Cedar evaluates them (`when { a } unless { b }` is
//! `a && !b`: `b` is never looked at when `a` is false, so its errors are not the permit's).
//! Inside that condition, a `when { a && b && .. }` is split at its top-level `&&` and an
//! `unless { a || b || .. }` at its top-level `||`, and the first part that decided is named.
//! Cedar's partial evaluation would also do this, but it is an experimental feature; this uses
//! only the stable API and evaluates exactly what Cedar would.

use std::fmt::Write as _;

use std::sync::Arc;

use cedar_policy::{
    pst, Authorizer, Decision as CedarDecision, Effect, Entities, Policy, PolicyId, PolicySet, Request,
};
use serde::Serialize;

use super::load::PolicyLocation;
use super::{PolicySnapshot, Verdict};

/// A policy named in an explanation.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRef {
    /// Its id (`@id`, or `file#index`).
    pub id: String,
    /// `permit` or `forbid`.
    pub effect: &'static str,
    /// Where it starts.
    pub location: Option<PolicyLocation>,
    /// Its `@reason`, if any.
    pub reason: Option<String>,
}

/// What one condition (or part of one) evaluated to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConditionResult {
    /// It held.
    True,
    /// It did not.
    False,
    /// It failed to evaluate (a missing tag, an overflow, ...).
    Error(String),
}

/// One `when` or `unless` clause of a permit, evaluated alone.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionCheck {
    /// `when` or `unless`.
    pub kind: &'static str,
    /// 1-based position among the policy's conditions.
    pub index: usize,
    /// The clause's expression, in Cedar syntax (as Cedar prints it: the file's expression,
    /// with Cedar's spacing and parentheses).
    pub expression: String,
    /// What the expression evaluated to. A `when` lets the permit through when true, an
    /// `unless` when false.
    pub result: ConditionResult,
    /// For the clause that stopped the permit, when its expression is a chain of `&&`
    /// (`when`) or `||` (`unless`): the first part that decided, its 1-based position and how
    /// many parts there are.
    pub deciding_part: Option<DecidingPart>,
}

/// The part of an `&&`/`||` chain that decided a clause.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DecidingPart {
    /// 1-based position in the chain.
    pub position: usize,
    /// Number of parts.
    pub of: usize,
    /// The part, in Cedar syntax.
    pub expression: String,
    /// What it evaluated to.
    pub result: ConditionResult,
}

/// A permit whose scope matched a denied request.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PermitExplanation {
    /// The permit.
    pub policy: PolicyRef,
    /// Its clauses in order, up to and including the one that stopped it; all of them when
    /// none did.
    pub conditions: Vec<ConditionCheck>,
    /// True when every clause let it through: the permit held, and a forbid (or an
    /// evaluation error) decided.
    pub held: bool,
}

/// One decision and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// The policies' answer (as [`Verdict::allowed`]).
    pub allowed: bool,
    /// The reason the decision gives.
    pub reason: String,
    /// The determining policies (or the ones that failed to evaluate).
    pub determining: Vec<PolicyRef>,
    /// Evaluation errors.
    pub errors: Vec<String>,
    /// Scopes named by the denying policies' `@scopes`.
    pub required_scopes: Vec<String>,
    /// For a deny: every permit whose scope matched, and what stopped it.
    pub permits: Vec<PermitExplanation>,
    /// The revision of the policy set that decided.
    pub revision: String,
}

impl Explanation {
    /// The explanation as text, one fact a line, for `cedargate policy explain`.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "policies: {}", if self.allowed { "allow" } else { "deny" });
        let _ = writeln!(out, "reason: {}", self.reason);
        let _ = writeln!(out, "policy set: revision {}", self.revision);
        if self.determining.is_empty() {
            let _ = writeln!(out, "determining policies: none");
        } else {
            let _ = writeln!(out, "determining policies:");
            for policy in &self.determining {
                let _ = writeln!(out, "  {}", policy_line(policy));
            }
        }
        if !self.required_scopes.is_empty() {
            let _ = writeln!(out, "required scopes: {}", self.required_scopes.join(" "));
        }
        if !self.errors.is_empty() {
            let _ = writeln!(out, "evaluation errors:");
            for error in &self.errors {
                let _ = writeln!(out, "  {error}");
            }
        }
        if !self.allowed {
            if self.permits.is_empty() {
                let _ = writeln!(out, "permits whose scope matched: none");
            } else {
                let _ = writeln!(out, "permits whose scope matched:");
            }
            for permit in &self.permits {
                let _ = writeln!(out, "  {}", policy_line(&permit.policy));
                if permit.conditions.is_empty() {
                    let _ = writeln!(out, "    no conditions: it held");
                }
                for condition in &permit.conditions {
                    let _ = writeln!(out, "    {}", condition_line(condition));
                    if let Some(part) = &condition.deciding_part {
                        let _ = writeln!(
                            out,
                            "      part {} of {}: `{}` {}",
                            part.position,
                            part.of,
                            part.expression,
                            result_text(&part.result)
                        );
                    }
                }
                if permit.held && !permit.conditions.is_empty() {
                    let _ = writeln!(out, "    every condition held");
                }
            }
        }
        out
    }
}

fn policy_line(policy: &PolicyRef) -> String {
    let mut line = format!("{} {}", policy.effect, policy.id);
    if let Some(location) = &policy.location {
        let _ = write!(line, " ({location})");
    }
    if let Some(reason) = &policy.reason {
        let _ = write!(line, ": {reason}");
    }
    line
}

fn condition_line(condition: &ConditionCheck) -> String {
    let verdict = match (condition.kind, &condition.result) {
        ("when", ConditionResult::True) | ("unless", ConditionResult::False) => "lets it through",
        _ => "stopped it",
    };
    format!("{} {{ {} }} {}: {verdict}", condition.kind, condition.expression, result_text(&condition.result))
}

fn result_text(result: &ConditionResult) -> String {
    match result {
        ConditionResult::True => "is true".to_owned(),
        ConditionResult::False => "is false".to_owned(),
        ConditionResult::Error(error) => format!("failed to evaluate: {error}"),
    }
}

/// Builds the explanation of `verdict`, decided on `snapshot` for `request` and `entities`
/// (`None` when the request could not be built, so nothing was evaluated).
pub(super) fn explain(
    snapshot: &PolicySnapshot,
    authorizer: &Authorizer,
    built: Option<&(Request, Entities)>,
    verdict: Verdict,
) -> Explanation {
    let policy_ref = |id: &PolicyId| {
        let policy = snapshot.policies.policy(id);
        PolicyRef {
            id: id.to_string(),
            effect: match policy.map(Policy::effect) {
                Some(Effect::Forbid) => "forbid",
                _ => "permit",
            },
            location: snapshot.locations.get(id).cloned(),
            reason: snapshot.meta.get(id).and_then(|meta| meta.reason.clone()),
        }
    };
    let determining = verdict.policy_ids.iter().map(|id| policy_ref(&PolicyId::new(id))).collect();
    let mut permits = Vec::new();
    if let (false, Some((request, entities))) = (verdict.allowed, built) {
        let mut candidates: Vec<&Policy> =
            snapshot.policies.policies().filter(|policy| policy.effect() == Effect::Permit).collect();
        candidates.sort_by_key(|policy| {
            snapshot.locations.get(policy.id()).map(|location| (location.file.clone(), location.line))
        });
        for policy in candidates {
            // The policy structure tree keeps the clauses as written (`>` stays `>`).
            let Ok(tree) = policy.to_pst() else { continue };
            let body = tree.body().clone();
            // Evaluated under the permit's own id, so an error names the policy it is in.
            let evaluate = |template: pst::Template| {
                evaluate_alone(
                    authorizer,
                    request,
                    entities,
                    template.with_id(pst::PolicyID::from(AsRef::<str>::as_ref(policy.id()))),
                )
            };
            let clauses = body.clauses().clone();
            let scope_matched = body.try_with_clauses([]).map(evaluate);
            if scope_matched != Ok(ConditionResult::True) {
                continue;
            }
            let (conditions, held) = check_conditions(&clauses, &evaluate);
            permits.push(PermitExplanation { policy: policy_ref(policy.id()), conditions, held });
        }
    }
    Explanation {
        allowed: verdict.allowed,
        reason: verdict.reason,
        determining,
        errors: verdict.errors,
        required_scopes: verdict.required_scopes,
        permits,
        revision: snapshot.revision.to_string(),
    }
}

/// The permit's clauses in order up to the first that stops it, and whether none did.
fn check_conditions(
    clauses: &[pst::Clause],
    evaluate: &dyn Fn(pst::Template) -> ConditionResult,
) -> (Vec<ConditionCheck>, bool) {
    let holds = |expression: &Arc<pst::Expr>| match expression_policy(expression) {
        Ok(template) => evaluate(template),
        Err(error) => ConditionResult::Error(error),
    };
    let mut checks = Vec::new();
    for (index, clause) in clauses.iter().enumerate() {
        let (kind, expression) = match clause {
            pst::Clause::When(expression) => ("when", expression),
            pst::Clause::Unless(expression) => ("unless", expression),
        };
        let result = holds(expression);
        // A `when` lets the permit through when true, an `unless` when false.
        let lets_through = |kind: &str, result: &ConditionResult| {
            matches!((kind, result), ("when", ConditionResult::True) | ("unless", ConditionResult::False))
        };
        let mut check = ConditionCheck {
            kind,
            index: index + 1,
            expression: expression.to_string(),
            result,
            deciding_part: None,
        };
        if lets_through(kind, &check.result) {
            checks.push(check);
            continue;
        }
        // `when { a && b }` stops at the first part not true; `unless { a || b }` at the
        // first part not false, as Cedar short-circuits.
        let operator = if kind == "when" { pst::BinaryOp::And } else { pst::BinaryOp::Or };
        let mut parts = Vec::new();
        chain(expression, &operator, &mut parts);
        if parts.len() > 1 {
            let of = parts.len();
            for (position, part) in parts.into_iter().enumerate() {
                let result = holds(part);
                if !lets_through(kind, &result) {
                    check.deciding_part = Some(DecidingPart {
                        position: position + 1,
                        of,
                        expression: part.to_string(),
                        result,
                    });
                    break;
                }
            }
        }
        checks.push(check);
        return (checks, false);
    }
    (checks, true)
}

/// The operands of a chain of `operator` (`&&` or `||`), left to right.
fn chain<'a>(expression: &'a Arc<pst::Expr>, operator: &pst::BinaryOp, parts: &mut Vec<&'a Arc<pst::Expr>>) {
    match expression.as_ref() {
        pst::Expr::BinaryOp { op, left, right } if op == operator => {
            chain(left, operator, parts);
            chain(right, operator, parts);
        }
        _ => parts.push(expression),
    }
}

/// A policy that applies to every request exactly when `expression` is true.
fn expression_policy(expression: &Arc<pst::Expr>) -> Result<pst::Template, String> {
    pst::Template::new(
        "condition",
        pst::Effect::Permit,
        pst::PrincipalConstraint::Any,
        pst::ActionConstraint::Any,
        pst::ResourceConstraint::Any,
    )
    .try_with_clauses([pst::Clause::When(Arc::clone(expression))])
    .map_err(|error| error.to_string())
}

/// Evaluates one policy alone: true when it applies, false when it does not, the error when
/// it fails.
fn evaluate_alone(
    authorizer: &Authorizer,
    request: &Request,
    entities: &Entities,
    template: pst::Template,
) -> ConditionResult {
    let policy = pst::StaticPolicy::try_from(template)
        .map_err(|error| error.to_string())
        .and_then(|policy| Policy::from_pst(pst::Policy::Static(policy)).map_err(|error| error.to_string()))
        .and_then(|policy| PolicySet::from_policies([policy]).map_err(|error| error.to_string()));
    let set = match policy {
        Ok(set) => set,
        Err(error) => return ConditionResult::Error(error),
    };
    let response = authorizer.is_authorized(request, &set, entities);
    if let Some(error) = response.diagnostics().errors().next() {
        return ConditionResult::Error(error.to_string());
    }
    match response.decision() {
        CedarDecision::Allow => ConditionResult::True,
        CedarDecision::Deny => ConditionResult::False,
    }
}
