//! ARCHITECTURE.md's layering, checked: every `crate::` path in non-test code points to a
//! lower layer, and the crates that carry wire or policy types stay where the document says
//! (rust-analyzer's tidy tests are the model).

// Test code: a failed set-up step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The layers, lowest first; a module may use only modules of lower layers (and itself).
/// Keep in step with ARCHITECTURE.md.
const LAYERS: &[&[&str]] = &[
    &["model"],
    &["telemetry"],
    &["route", "credential", "policy"],
    &["session"],
    &["state"],
    &["engine"],
    &["config"],
    &["gateway"],
    &["api"],
    &["app"],
    &["authoring"],
];

/// Crates only some modules may use: (crate, the top-level modules or files allowed).
const CONFINED: &[(&str, &[&str])] = &[
    ("tonic", &["api", "app"]),
    ("axum", &["api", "app"]),
    ("hyper", &["api", "app"]),
    ("hyper_util", &["api", "app"]),
    ("tower_http", &["api", "app"]),
    ("prost", &["api", "app"]),
    ("prost_types", &["api", "app"]),
    ("envoy_types", &["api", "app"]),
    ("cedar_policy", &["policy"]),
    ("notify", &["app"]),
    ("cedar_policy_formatter", &["policy"]),
    ("reqwest", &["credential", "app"]),
    ("quick_junit", &["authoring"]),
    ("glob", &["authoring"]),
    ("opentelemetry", &["telemetry"]),
    ("opentelemetry_sdk", &["telemetry"]),
    ("opentelemetry_otlp", &["telemetry"]),
    ("opentelemetry_prometheus", &["telemetry"]),
    ("prometheus", &["telemetry"]),
    ("tracing_appender", &["telemetry"]),
    ("redis", &["state"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
}

/// The module a file belongs to: `src/credential/jwt.rs` → `credential`.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_owned()
}

/// The file's code without its tests: a `tests.rs` file is all test, and everything from
/// `#[cfg(test)]` on is test code by this crate's convention.
fn production_code(file: &Path) -> String {
    if file.file_name().is_some_and(|name| name == "tests.rs") {
        return String::new();
    }
    let text = std::fs::read_to_string(file).unwrap();
    text.split("#[cfg(test)]").next().unwrap_or_default().to_owned()
}

/// Every `crate::name` in `code` (also `crate::{a, b}` at the top of a `use`).
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (index, _) in code.match_indices("crate::") {
        let rest = &code[index + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let name: String =
                    item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            found.insert(name);
        }
    }
    found
}

fn uses_crate(code: &str, name: &str) -> bool {
    code.lines().filter(|line| !line.trim_start().starts_with("//")).any(|line| {
        line.match_indices(&format!("{name}::")).any(|(index, _)| {
            // Not the tail of a longer name (`prost_types::` is not `types::`).
            line[..index]
                .chars()
                .next_back()
                .is_none_or(|before| !(before.is_alphanumeric() || before == '_'))
        })
    })
}

/// Every library source file with its top-level module (`main.rs` and `bin/` are not the
/// library, and use it as any client does).
fn modules() -> Vec<(PathBuf, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files
        .into_iter()
        .map(|file| {
            let module = module_of(&src, &file);
            (file, module)
        })
        .filter(|(_, module)| !matches!(module.as_str(), "main" | "bin"))
        .collect()
}

#[test]
fn modules_use_only_lower_layers() {
    let mut violations = Vec::new();
    for (file, module) in modules() {
        if module == "lib" {
            continue;
        }
        let file = &file;
        let Some(layer) = layer_of(&module) else {
            violations.push(format!("{}: module `{module}` has no layer in LAYERS", file.display()));
            continue;
        };
        for used in crate_paths(&production_code(file)) {
            if used == module {
                continue;
            }
            match layer_of(&used) {
                Some(other) if other < layer => {}
                Some(_) => violations
                    .push(format!("{}: `{module}` uses `{used}`, which is not below it", file.display())),
                // `crate::App` and other re-exports from lib.rs.
                None if used.chars().next().is_some_and(char::is_uppercase) => {}
                None => violations.push(format!("{}: `crate::{used}` is not a known module", file.display())),
            }
        }
    }
    assert!(violations.is_empty(), "layering broken (ARCHITECTURE.md):\n{}", violations.join("\n"));
}

#[test]
fn wire_and_policy_crates_stay_in_their_modules() {
    let mut violations = Vec::new();
    for (file, module) in modules() {
        let file = &file;
        let code = production_code(file);
        for (name, allowed) in CONFINED {
            if uses_crate(&code, name) && !allowed.contains(&module.as_str()) {
                violations.push(format!("{}: uses `{name}`, which belongs to {allowed:?}", file.display()));
            }
        }
    }
    assert!(violations.is_empty(), "confinement broken (ARCHITECTURE.md):\n{}", violations.join("\n"));
}

#[test]
fn the_checks_see_what_they_check() {
    let paths = crate_paths(
        "use crate::model::Secret;\nuse crate::{route, engine::Engine};\nlet x = crate::policy::X;",
    );
    assert_eq!(paths, ["engine", "model", "policy", "route"].map(str::to_owned).into_iter().collect());
    assert!(uses_crate("let s = tonic::Status::ok();", "tonic"));
    assert!(!uses_crate("use prost_types::Value;", "types"));
    assert!(!uses_crate("// tonic::Status in a comment", "tonic"));
}
