use super::*;
use crate::policy::{PolicyEngine, SCHEMA};

fn sources(files: &[(&str, &str)]) -> PolicySources {
    PolicySources {
        schema: SourceFile { name: "schema.cedarschema".to_owned(), text: SCHEMA.to_owned() },
        policies: files
            .iter()
            .map(|(name, text)| SourceFile { name: (*name).to_owned(), text: (*text).to_owned() })
            .collect(),
        entities: None,
    }
}

/// The ids a loaded snapshot holds, sorted.
fn loaded_ids(sources: &PolicySources) -> Vec<String> {
    let engine = PolicyEngine::new(sources).unwrap();
    let mut ids: Vec<String> =
        engine.snapshot().policies.policies().map(|policy| policy.id().to_string()).collect();
    ids.sort();
    ids
}

const UNNAMED: &str = r#"
permit (principal, action == Action::"GET", resource is Route);

@id("named")
forbid (principal, action, resource is Route)
when { resource.path like "/a/*" && context.authenticated }
unless { principal in Role::"admin" || principal in Role::"root" };

permit (principal in Role::"user", action == Action::"call", resource is Tool)
when { resource.name == "x" || (resource.name == "y" && context.subject == "s") };
"#;

#[test]
fn the_outline_names_policies_as_the_loader_does() {
    for sources in [PolicySources::embedded_demo(), sources(&[("dir/extra.cedar", UNNAMED)])] {
        let outline = outline(&sources).unwrap();
        let mut ids: Vec<String> = outline.iter().map(|policy| policy.id.clone()).collect();
        ids.sort();
        assert_eq!(ids, loaded_ids(&sources));
    }
    let outline = outline(&sources(&[("dir/extra.cedar", UNNAMED)])).unwrap();
    let shape: Vec<_> = outline.iter().map(|p| (p.id.as_str(), p.line, p.effect, p.shadow)).collect();
    assert_eq!(
        shape,
        [
            ("extra#0", 2, PolicyEffect::Permit, false),
            ("named", 5, PolicyEffect::Forbid, false),
            ("extra#2", 9, PolicyEffect::Permit, false)
        ]
    );
}

#[test]
fn every_kind_of_mutant_is_made_once_per_place() {
    let mutants = mutants(&sources(&[("dir/extra.cedar", UNNAMED)])).unwrap();
    let of = |id: &str| -> Vec<String> {
        mutants.iter().filter(|m| m.policy_id == id).map(|m| m.mutation.to_string()).collect()
    };
    assert_eq!(of("extra#0"), ["deleted", "permit → forbid"]);
    assert_eq!(
        of("named"),
        [
            "deleted",
            "forbid → permit",
            "clause 1 (`when`) dropped",
            "clause 2 (`unless`) dropped",
            "operator 1 `&&` → `||`",
            "operator 2 `||` → `&&`",
        ]
    );
    // Reading order: `x || (y && s)`: the `||` first, then the `&&`.
    let swaps: Vec<_> =
        mutants.iter().filter(|m| m.policy_id == "extra#2").filter_map(|m| m.text.clone()).collect();
    assert_eq!(swaps.len(), 4, "{swaps:?}");
    let first = &swaps[2];
    let second = &swaps[3];
    assert!(first.contains("&&") && !first.contains("||"), "{first}");
    assert!(second.contains("||") && !second.contains("&&"), "{second}");
}

#[test]
fn a_deleted_policy_renames_no_other() {
    let mutants = mutants(&sources(&[("dir/extra.cedar", UNNAMED)])).unwrap();
    let deleted =
        mutants.iter().find(|m| m.policy_id == "extra#0" && m.mutation == Mutation::Deleted).unwrap();
    assert_eq!(loaded_ids(&deleted.sources), ["extra#2", "named"]);
    assert!(deleted.text.is_none());
}

#[test]
fn every_mutant_of_the_demo_differs_and_loads_or_is_refused_by_the_validator() {
    let demo = PolicySources::embedded_demo();
    let original_ids = loaded_ids(&demo);
    let mutants = mutants(&demo).unwrap();
    assert!(mutants.len() > 3 * original_ids.len(), "{}", mutants.len());
    let mut refused = 0;
    for mutant in &mutants {
        assert_ne!(mutant.sources, demo, "{} {}", mutant.policy_id, mutant.mutation);
        match PolicyEngine::new(&mutant.sources) {
            Ok(engine) => {
                let count = engine.snapshot().policy_count();
                let expected = original_ids.len() - usize::from(mutant.mutation == Mutation::Deleted);
                assert_eq!(count, expected, "{} {}", mutant.policy_id, mutant.mutation);
            }
            Err(PolicyError::Invalid { diagnostics }) => {
                refused += 1;
                assert!(!diagnostics.is_empty());
            }
            Err(other) => panic!("{other}"),
        }
    }
    // Swapping an `&&` that guards `getTag` with `hasTag` is caught by strict validation.
    assert!(refused > 0);
}

#[test]
fn a_flipped_effect_keeps_annotations_and_conditions() {
    let mutants = mutants(&PolicySources::embedded_demo()).unwrap();
    let flipped = mutants
        .iter()
        .find(|m| m.policy_id == "public-routes" && matches!(m.mutation, Mutation::EffectFlipped { .. }))
        .unwrap();
    let text = flipped.text.as_deref().unwrap();
    assert!(text.contains("@id(\"public-routes\")"), "{text}");
    assert!(text.contains("@reason(\"Public endpoints need no credential\")"), "{text}");
    assert!(text.contains("forbid") && text.contains("/public/*"), "{text}");
    assert_eq!(flipped.line, 5);
}

#[test]
fn shadow_policies_are_outlined_but_never_mutated() {
    let text = format!("{UNNAMED}\n@id(\"trial\")\n@shadow\nforbid (principal, action, resource) when {{ context.authenticated }};\n");
    let sources = sources(&[("dir/extra.cedar", &text)]);
    let outline = outline(&sources).unwrap();
    assert!(outline.iter().any(|policy| policy.id == "trial" && policy.shadow));
    assert_eq!(outline.iter().filter(|policy| policy.shadow).count(), 1);
    let mutants = mutants(&sources).unwrap();
    assert!(mutants.iter().all(|mutant| mutant.policy_id != "trial"));
    // The shadow policy stays in every mutant, still a shadow.
    let deleted = mutants.iter().find(|m| m.policy_id == "named" && m.mutation == Mutation::Deleted).unwrap();
    let engine = PolicyEngine::new(&deleted.sources).unwrap();
    assert_eq!(engine.snapshot().shadow_count(), 1);
}
