//! What policy tests need to know about a policy set: where each policy is written (for
//! coverage), and mutants of the set (for mutation testing).
//!
//! A mutant is built on Cedar's JSON form of a policy (the EST): the policy is turned into
//! JSON, changed in one place, and turned back into Cedar text, so every mutant is a policy
//! set the loader reads like any other (and validates: a mutant the validator refuses is
//! killed by it). Every policy of a mutated file gets an explicit `@id`, so deleting one does
//! not renumber the `<file>#<n>` ids of the policies after it.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{Effect, Policy, PolicySet};
use serde_json::{Map, Value};

use super::findings::line_column;
use super::load::{PolicyError, PolicySources, SourceFile};

/// Whether a policy permits or forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyEffect {
    /// `permit`.
    Permit,
    /// `forbid`.
    Forbid,
}

impl PolicyEffect {
    /// The Cedar keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyEffect::Permit => "permit",
            PolicyEffect::Forbid => "forbid",
        }
    }

    fn flipped(self) -> Self {
        match self {
            PolicyEffect::Permit => PolicyEffect::Forbid,
            PolicyEffect::Forbid => PolicyEffect::Permit,
        }
    }
}

/// One policy of a set and where it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyOutline {
    /// The id decisions name it by (`@id`, or `<file>#<n>`).
    pub id: String,
    /// The file (its name in the sources).
    pub file: String,
    /// 1-based line of the policy's first line after its annotations.
    pub line: usize,
    /// Permit or forbid.
    pub effect: PolicyEffect,
    /// An `@shadow` policy: evaluated beside the others, never deciding.
    pub shadow: bool,
}

/// The kind of a condition clause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionKind {
    /// `when { … }`.
    When,
    /// `unless { … }`.
    Unless,
}

/// A boolean operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoolOperator {
    /// `&&`.
    And,
    /// `||`.
    Or,
}

impl BoolOperator {
    fn as_str(self) -> &'static str {
        match self {
            BoolOperator::And => "&&",
            BoolOperator::Or => "||",
        }
    }

    fn swapped(self) -> Self {
        match self {
            BoolOperator::And => BoolOperator::Or,
            BoolOperator::Or => BoolOperator::And,
        }
    }
}

/// One change to one policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// The policy is gone.
    Deleted,
    /// `permit` became `forbid` or the other way round; `to` is the new effect.
    EffectFlipped {
        /// The effect of the mutant.
        to: PolicyEffect,
    },
    /// A `when` or `unless` clause is gone.
    ConditionDropped {
        /// 1-based position among the policy's clauses.
        clause: usize,
        /// `when` or `unless`.
        kind: ConditionKind,
    },
    /// One `&&` became `||`, or the other way round.
    OperatorSwapped {
        /// The operator as written.
        from: BoolOperator,
        /// 1-based position among the policy's `&&` and `||`, in reading order.
        occurrence: usize,
    },
}

impl fmt::Display for Mutation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mutation::Deleted => f.write_str("deleted"),
            Mutation::EffectFlipped { to } => write!(f, "{} → {}", to.flipped().as_str(), to.as_str()),
            Mutation::ConditionDropped { clause, kind } => {
                let kind = match kind {
                    ConditionKind::When => "when",
                    ConditionKind::Unless => "unless",
                };
                write!(f, "clause {clause} (`{kind}`) dropped")
            }
            Mutation::OperatorSwapped { from, occurrence } => {
                write!(f, "operator {occurrence} `{}` → `{}`", from.as_str(), from.swapped().as_str())
            }
        }
    }
}

/// A policy set that differs from the original in one place.
#[derive(Debug, Clone)]
pub struct Mutant {
    /// The mutated policy.
    pub policy_id: String,
    /// Its file.
    pub file: String,
    /// Its line in the original file.
    pub line: usize,
    /// What was changed.
    pub mutation: Mutation,
    /// The mutated policy in Cedar syntax (`None` when it was deleted).
    pub text: Option<String>,
    /// The whole mutated set, to load in place of the original.
    pub sources: PolicySources,
}

/// One parsed policy with the id the loader gives it.
struct Named {
    id: String,
    line: usize,
    policy: Policy,
}

/// The policies of one file, with their ids.
///
/// Fails when the file does not parse.
fn named_policies(file: &SourceFile) -> Result<Vec<Named>, PolicyError> {
    let parsed = PolicySet::from_str(&file.text)
        .map_err(|error| PolicyError::Invalid { diagnostics: vec![format!("{}: {error}", file.name)] })?;
    let stem = Path::new(&file.name)
        .file_stem()
        .map_or_else(|| file.name.clone(), |stem| stem.to_string_lossy().into_owned());
    // INVARIANT: the same ids as `load::load` gives (checked by a test): `@id`, else
    // `<stem>#<index>` in file order.
    let mut cursor = 0;
    Ok(parsed
        .policies()
        .enumerate()
        .map(|(index, policy)| {
            let (line, end) = position(file, policy, cursor);
            cursor = end;
            Named {
                id: super::annotation(policy, "id").map_or_else(|| format!("{stem}#{index}"), str::to_owned),
                line,
                policy: policy.clone(),
            }
        })
        .collect())
}

/// The line of a policy's first line after its annotations, and the offset where the search
/// for the next policy starts. Policies are in file order, and a parsed policy displays as its
/// source text, so each is looked for after the one before (two policies may share a line of
/// text). The file's first line if it cannot be found.
fn position(file: &SourceFile, policy: &Policy, from: usize) -> (usize, usize) {
    let text = policy.to_string();
    let rest = file.text.get(from..).unwrap_or_default();
    let Some(start) = rest.find(text.trim()).map(|offset| offset + from) else {
        return (1, from);
    };
    let head = text.trim().lines().map(str::trim).find(|line| !line.is_empty() && !line.starts_with('@'));
    let head =
        head.and_then(|head| file.text.get(start..)?.find(head)).map_or(start, |offset| start + offset);
    (line_column(&file.text, head).0, start + text.trim().len())
}

fn effect_of(policy: &Policy) -> PolicyEffect {
    match policy.effect() {
        Effect::Permit => PolicyEffect::Permit,
        Effect::Forbid => PolicyEffect::Forbid,
    }
}

/// Every policy of `sources`, file by file, in file order.
///
/// Fails when a file does not parse.
pub fn outline(sources: &PolicySources) -> Result<Vec<PolicyOutline>, PolicyError> {
    let mut outline = Vec::new();
    for file in &sources.policies {
        for named in named_policies(file)? {
            outline.push(PolicyOutline {
                id: named.id,
                file: file.name.clone(),
                line: named.line,
                effect: effect_of(&named.policy),
                shadow: super::annotation(&named.policy, "shadow").is_some(),
            });
        }
    }
    Ok(outline)
}

/// Every mutant of `sources`: for each policy, deleted, its effect flipped, each of its
/// `when`/`unless` clauses dropped, and each of its `&&`/`||` swapped, one at a time. `@shadow`
/// policies are left alone: they never decide, so no test could notice a change to one.
///
/// Fails when a file does not parse or a policy has no JSON form.
pub fn mutants(sources: &PolicySources) -> Result<Vec<Mutant>, PolicyError> {
    let mut mutants = Vec::new();
    for (file_index, file) in sources.policies.iter().enumerate() {
        let policies = named_policies(file)?;
        let mut json = Vec::with_capacity(policies.len());
        for named in &policies {
            let mut est = named.policy.to_json().map_err(|error| invalid(file, &named.id, &error))?;
            // Explicit ids, so no mutation renames another policy.
            if let Some(annotations) = annotations(&mut est) {
                annotations.insert("id".to_owned(), Value::String(named.id.clone()));
            }
            json.push(est);
        }
        for (index, named) in policies.iter().enumerate() {
            let Some(original) = json.get(index) else { continue };
            if super::annotation(&named.policy, "shadow").is_some() {
                continue;
            }
            for (mutation, changed) in mutations_of(original, effect_of(&named.policy)) {
                let mut text = String::new();
                let mut mutated_text = None;
                for (other_index, est) in json.iter().enumerate() {
                    let est = if other_index == index {
                        match &changed {
                            Some(changed) => changed,
                            None => continue,
                        }
                    } else {
                        est
                    };
                    let rendered = render(est).map_err(|error| invalid(file, &named.id, &error))?;
                    if other_index == index {
                        mutated_text = Some(rendered.clone());
                    }
                    text.push_str(&rendered);
                    text.push_str("\n\n");
                }
                let mut mutated = sources.clone();
                if let Some(target) = mutated.policies.get_mut(file_index) {
                    target.text = text;
                }
                mutants.push(Mutant {
                    policy_id: named.id.clone(),
                    file: file.name.clone(),
                    line: named.line,
                    mutation,
                    text: mutated_text,
                    sources: mutated,
                });
            }
        }
    }
    Ok(mutants)
}

fn invalid(file: &SourceFile, id: &str, error: &dyn fmt::Display) -> PolicyError {
    PolicyError::Invalid { diagnostics: vec![format!("{}: policy `{id}`: {error}", file.name)] }
}

/// Cedar text of a policy in JSON form.
fn render(est: &Value) -> Result<String, String> {
    let policy = Policy::from_json(None, est.clone()).map_err(|error| error.to_string())?;
    policy.to_cedar().ok_or_else(|| "policy has no Cedar text".to_owned())
}

fn annotations(est: &mut Value) -> Option<&mut Map<String, Value>> {
    let object = est.as_object_mut()?;
    object.entry("annotations").or_insert_with(|| Value::Object(Map::new())).as_object_mut()
}

/// Each mutation of one policy (in JSON form) with the mutated JSON (`None`: deleted).
fn mutations_of(est: &Value, effect: PolicyEffect) -> Vec<(Mutation, Option<Value>)> {
    let mut out = vec![(Mutation::Deleted, None)];
    let flipped = effect.flipped();
    let mut changed = est.clone();
    if let Some(object) = changed.as_object_mut() {
        object.insert("effect".to_owned(), Value::String(flipped.as_str().to_owned()));
        out.push((Mutation::EffectFlipped { to: flipped }, Some(changed)));
    }
    let conditions = est.get("conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    for (index, condition) in conditions.iter().enumerate() {
        let kind = match condition.get("kind").and_then(Value::as_str) {
            Some("unless") => ConditionKind::Unless,
            _ => ConditionKind::When,
        };
        let mut changed = est.clone();
        if let Some(list) = changed.get_mut("conditions").and_then(Value::as_array_mut) {
            list.remove(index);
            out.push((Mutation::ConditionDropped { clause: index + 1, kind }, Some(changed)));
        }
    }
    let count = est.get("conditions").map_or(0, count_operators);
    for occurrence in 1..=count {
        let mut changed = est.clone();
        let from = changed.get_mut("conditions").and_then(|conditions| swap_operator(conditions, occurrence));
        if let Some(from) = from {
            out.push((Mutation::OperatorSwapped { from, occurrence }, Some(changed)));
        }
    }
    out
}

/// The operator an EST expression object is, if it is `&&` or `||`.
fn operator_of(object: &Map<String, Value>) -> Option<BoolOperator> {
    if object.len() != 1 {
        return None;
    }
    if object.contains_key("&&") {
        Some(BoolOperator::And)
    } else if object.contains_key("||") {
        Some(BoolOperator::Or)
    } else {
        None
    }
}

/// A literal (`{"Value": …}`) holds data, not expressions: its record keys could be spelled
/// `&&`.
fn is_literal(object: &Map<String, Value>) -> bool {
    object.len() == 1 && object.contains_key("Value")
}

/// Visits every `&&`/`||` of an EST value in reading order (an operator after its left
/// operand, before its right one), until `visit` returns true. `visit` may swap the operator.
/// Returns whether it stopped.
fn each_operator(value: &mut Value, visit: &mut impl FnMut(&mut Map<String, Value>) -> bool) -> bool {
    match value {
        Value::Array(items) => items.iter_mut().any(|item| each_operator(item, visit)),
        Value::Object(object) if is_literal(object) => false,
        Value::Object(object) => match operator_of(object).map(BoolOperator::as_str) {
            Some(key) => {
                let mut operands = object.get_mut(key).map(Value::take).unwrap_or(Value::Null);
                let stopped = operands.get_mut("left").is_some_and(|left| each_operator(left, visit))
                    || visit(object)
                    || operands.get_mut("right").is_some_and(|right| each_operator(right, visit));
                // `visit` may have renamed the key: put the operands back under the one there.
                if let Some(slot) = object.values_mut().next() {
                    *slot = operands;
                }
                stopped
            }
            // Everything else is walked whole (a record's keys are attribute names).
            None => object.values_mut().any(|item| each_operator(item, visit)),
        },
        _ => false,
    }
}

/// How many `&&` and `||` a policy's conditions hold.
fn count_operators(conditions: &Value) -> usize {
    let mut conditions = conditions.clone();
    let mut count = 0;
    each_operator(&mut conditions, &mut |_| {
        count += 1;
        false
    });
    count
}

/// Swaps the `occurrence`-th (1-based, reading order) `&&`/`||`, returning what it was.
fn swap_operator(conditions: &mut Value, occurrence: usize) -> Option<BoolOperator> {
    let mut seen = 0;
    let mut swapped = None;
    each_operator(conditions, &mut |object| {
        seen += 1;
        if seen != occurrence {
            return false;
        }
        let Some(operator) = operator_of(object) else { return true };
        if let Some(operands) = object.remove(operator.as_str()) {
            object.insert(operator.swapped().as_str().to_owned(), operands);
            swapped = Some(operator);
        }
        true
    });
    swapped
}

#[cfg(test)]
mod tests;
