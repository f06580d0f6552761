//! README.md as a test: every block that can run without a server runs as written, so the
//! README cannot drift from the code.
//!
//! - `yaml` blocks go through the config loader (with each `${VAR}` they name set);
//! - `cedar` blocks are validated against the shipped schema in strict mode;
//! - `sh` blocks: each `cargo run --release -- …` command runs the built binary (in a scratch
//!   directory that sees the repository's `examples/`, `policies/` and `scripts/`), and its
//!   trailing `# comment` is the expectation; a `json` block right after an `sh` block is the
//!   output of that block's last command. Commands that need a running server (`grpcurl`,
//!   `curl`) are counted, not run; the scenario tests cover them. Any other command fails the
//!   test until it is taught here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use cedargate::config::Config;
use cedargate::policy::{PolicyEngine, PolicySources, SourceFile};
use serde_json::Value;

const README: &str = include_str!("../README.md");

/// A fenced block: its language, the line of its opening fence and its text.
struct Block {
    lang: String,
    line: usize,
    text: String,
}

fn blocks() -> Vec<Block> {
    blocks_of(README)
}

fn blocks_of(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (index, line) in text.lines().enumerate() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(lang)) => {
                open = Some(Block { lang: lang.trim().to_owned(), line: index + 1, text: String::new() })
            }
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (Some(block), None) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "an unclosed block");
    blocks
}

#[test]
fn every_config_block_loads() {
    let yaml: Vec<Block> = blocks().into_iter().filter(|block| block.lang == "yaml").collect();
    assert!(yaml.len() >= 5, "found {} yaml blocks", yaml.len());
    let hash = cedargate::session::hash_password("readme").unwrap();
    for block in &yaml {
        for name in env_names(&block.text) {
            // SAFETY of intent: this test binary reads these variables only here.
            let value = if name.ends_with("_HASH") {
                hash.clone()
            } else if name.ends_with("_SHA256") {
                "0".repeat(64)
            } else {
                "readme-test-secret".to_owned()
            };
            std::env::set_var(&name, value);
        }
        let source = format!("README.md:{}", block.line);
        let config = Config::parse(&source, &block.text).unwrap_or_else(|error| panic!("{source}: {error}"));
        if let Some(dir) = config.policy_dir() {
            assert!(dir.join("schema.cedarschema").is_file(), "{source}: no policies in {}", dir.display());
        }
    }
}

/// The names of the `${VAR}`s in `text`.
fn env_names(text: &str) -> Vec<String> {
    text.split("${")
        .skip(1)
        .filter_map(|rest| rest.split_once('}'))
        .map(|(name, _)| name.to_owned())
        .collect()
}

#[test]
fn every_policy_block_validates_against_the_schema() {
    let cedar: Vec<Block> = blocks().into_iter().filter(|block| block.lang == "cedar").collect();
    assert!(cedar.len() >= 2, "found {} cedar blocks", cedar.len());
    for block in cedar {
        let sources = PolicySources {
            schema: SourceFile {
                name: "policies/schema.cedarschema".to_owned(),
                text: include_str!("../policies/schema.cedarschema").to_owned(),
            },
            policies: vec![SourceFile { name: format!("README.md:{}", block.line), text: block.text }],
            entities: None,
        };
        if let Err(error) = PolicyEngine::new(&sources) {
            panic!("README.md:{}: {error}", block.line);
        }
    }
}

/// docs/writing-policies.md: every Cedar block validates against the shipped schema, with the
/// guide's `entities.json` block as the directory's entities.
#[test]
fn every_policy_block_of_the_authoring_guide_validates() {
    let guide = blocks_of(include_str!("../docs/writing-policies.md"));
    let entities: Vec<&Block> = guide.iter().filter(|block| block.lang == "json").collect();
    assert_eq!(entities.len(), 1, "the guide shows one entities.json");
    let cedar: Vec<&Block> = guide.iter().filter(|block| block.lang == "cedar").collect();
    assert!(cedar.len() >= 7, "found {} cedar blocks", cedar.len());
    for block in cedar {
        let name = format!("docs/writing-policies.md:{}", block.line);
        let sources = PolicySources {
            schema: SourceFile {
                name: "policies/schema.cedarschema".to_owned(),
                text: include_str!("../policies/schema.cedarschema").to_owned(),
            },
            policies: vec![SourceFile { name: name.clone(), text: block.text.clone() }],
            entities: Some(SourceFile { name: "entities.json".to_owned(), text: entities[0].text.clone() }),
        };
        if let Err(error) = PolicyEngine::new(&sources) {
            panic!("{name}: {error}");
        }
    }
}

#[test]
fn every_offline_command_does_what_its_comment_says() {
    let scratch = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for shared in ["examples", "policies", "scripts"] {
        std::os::unix::fs::symlink(root.join(shared), scratch.path().join(shared)).unwrap();
    }
    let (mut ran, mut need_a_server) = (0, 0);
    let mut last_output: Option<(String, String)> = None;
    let mut previous_lang = String::new();
    for block in blocks() {
        match block.lang.as_str() {
            "sh" => {
                for (line, command) in commands(&block) {
                    let at = format!("README.md:{line}");
                    match run(&at, &command, scratch.path()) {
                        Ran::Output(output) => {
                            ran += 1;
                            last_output = Some((at, output));
                        }
                        Ran::Checked => {
                            ran += 1;
                            last_output = None;
                        }
                        Ran::NeedsServer => {
                            need_a_server += 1;
                            last_output = None;
                        }
                    }
                }
            }
            "json" if previous_lang == "sh" => {
                let (at, output) = last_output.take().unwrap_or_else(|| {
                    panic!("README.md:{}: a json block after a command that prints nothing here", block.line)
                });
                let printed: Value = serde_json::from_str(&output).unwrap();
                let shown: Value = serde_json::from_str(&block.text)
                    .unwrap_or_else(|error| panic!("README.md:{}: {error}", block.line));
                assert_eq!(
                    without_decision_id(printed),
                    without_decision_id(shown),
                    "README.md:{} shows another output than {at} prints",
                    block.line
                );
            }
            _ => {}
        }
        previous_lang = block.lang;
    }
    assert!(ran >= 12, "ran {ran} commands");
    assert!(need_a_server >= 5, "{need_a_server} commands need a server");
}

fn without_decision_id(mut decision: Value) -> Value {
    decision["decisionId"] = Value::Null;
    decision
}

/// The commands of an `sh` block with the line each starts on: continuation lines (`\`) and
/// quotes left open across lines are joined; `#` lines are skipped.
fn commands(block: &Block) -> Vec<(usize, String)> {
    let mut commands = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (offset, line) in block.text.lines().enumerate() {
        let (start, mut text) = current.take().unwrap_or((block.line + 1 + offset, String::new()));
        if text.is_empty() && (line.trim().is_empty() || line.trim_start().starts_with('#')) {
            continue;
        }
        text.push_str(line);
        text.push('\n');
        let open_quote = text.matches('\'').count() % 2 == 1;
        if open_quote || line.trim_end().ends_with('\\') {
            current = Some((start, text));
        } else {
            commands.push((start, text));
        }
    }
    assert!(current.is_none(), "README.md:{}: a command does not end", block.line);
    commands
}

/// Splits `command` into the shell text and its trailing `# comment` (outside quotes).
fn split_comment(command: &str) -> (&str, &str) {
    let mut quote = None;
    let mut previous = ' ';
    for (index, char) in command.char_indices() {
        match (quote, char) {
            (None, '\'' | '"') => quote = Some(char),
            (Some(open), _) if char == open => quote = None,
            (None, '#') if previous.is_whitespace() => {
                return (&command[..index], command[index + 1..].trim())
            }
            _ => {}
        }
        previous = char;
    }
    (command, "")
}

enum Ran {
    /// Ran; here is its standard output.
    Output(String),
    /// Checked without running (a serve command's config, a script's presence).
    Checked,
    /// Needs a running server.
    NeedsServer,
}

const CARGO_RUN: &str = "cargo run --release --";

fn run(at: &str, command: &str, cwd: &Path) -> Ran {
    let (shell, expected) = split_comment(command);
    let shell = shell.trim();
    let first = shell.split_whitespace().next().unwrap_or_default();
    if matches!(first, "grpcurl" | "curl") {
        return Ran::NeedsServer;
    }
    if let Some(script) = first.strip_prefix("./") {
        let path = cwd.join(script);
        assert!(path.is_file(), "{at}: {script} does not exist");
        return Ran::Checked;
    }
    let Some((_, args)) =
        shell.split_once(CARGO_RUN).or_else(|| (shell == "cargo run --release").then_some(("", "")))
    else {
        panic!("{at}: teach tests/readme.rs this command: {shell}");
    };
    let words: Vec<&str> = args.split_whitespace().collect();
    match words.first().copied() {
        // Serving the demo, or a config: the config must load.
        None => {
            Config::demo().unwrap();
            Ran::Checked
        }
        Some("--config") if words.len() == 2 => {
            let path = cwd.join(words[1]);
            Config::load(&path).unwrap_or_else(|error| panic!("{at}: {error}"));
            Ran::Checked
        }
        Some(subcommand @ ("check" | "hash-key" | "init" | "policy")) => {
            let output = Command::new("sh")
                .args(["-c", &shell.replace(CARGO_RUN, "\"$CEDARGATE\"")])
                .env("CEDARGATE", env!("CARGO_BIN_EXE_cedargate"))
                .env_remove("CEDARGATE_CONFIG")
                .current_dir(cwd)
                .output()
                .unwrap();
            let stdout = String::from_utf8(output.stdout).unwrap();
            let code = output.status.code();
            let context = format!("{at}: {shell}\n{stdout}{}", String::from_utf8_lossy(&output.stderr));
            match subcommand {
                "check" => expect_decision(&context, expected, code, &stdout),
                "policy" => {
                    let code_expected: i32 = expected
                        .strip_prefix("exit ")
                        .and_then(|code| code.trim().parse().ok())
                        .unwrap_or_else(|| panic!("{at}: a policy command's comment is `exit N`"));
                    assert_eq!(code, Some(code_expected), "{context}");
                }
                "hash-key" => {
                    assert_eq!(code, Some(0), "{context}");
                    assert_eq!(stdout.trim(), expected, "{context}");
                }
                _ => {
                    assert_eq!(code, Some(0), "{context}");
                    let paths: Vec<&str> =
                        expected.split_whitespace().filter(|word| word.contains('/')).collect();
                    assert!(!paths.is_empty(), "{at}: say which files it writes");
                    for path in paths {
                        let path = path.trim_end_matches(',');
                        assert!(cwd.join(path).exists(), "{context}: {path} was not written");
                    }
                }
            }
            Ran::Output(stdout)
        }
        _ => panic!("{at}: teach tests/readme.rs this command: {shell}"),
    }
}

/// Holds `check`'s output to its comment: `allowed`, or a status, then optionally a quoted
/// reason and `WWW-Authenticate: <challenge>`.
fn expect_decision(context: &str, expected: &str, code: Option<i32>, stdout: &str) {
    let decision: Value = serde_json::from_str(stdout).unwrap_or_else(|error| panic!("{context}: {error}"));
    let (head, challenge) = match expected.split_once("WWW-Authenticate: ") {
        Some((head, challenge)) => (head.trim(), Some(challenge.trim())),
        None => (expected.trim(), None),
    };
    let (status, reason) = match head.split_once(' ') {
        Some((status, reason)) => (status, Some(reason.trim())),
        None => (head, None),
    };
    match status {
        "allowed" => {
            assert_eq!(code, Some(0), "{context}");
            assert_eq!(decision["outcome"], "OUTCOME_ALLOWED", "{context}");
        }
        status => {
            let status: u64 =
                status.parse().unwrap_or_else(|_| panic!("{context}: no expectation in `{expected}`"));
            assert_eq!(code, Some(1), "{context}");
            assert_eq!(decision["httpStatus"], status, "{context}");
        }
    }
    if let Some(reason) = reason {
        let reason = reason.strip_prefix('"').and_then(|rest| rest.strip_suffix('"'));
        let reason = reason.unwrap_or_else(|| panic!("{context}: a reason is \"quoted\""));
        assert_eq!(decision["reason"], reason, "{context}");
    }
    if let Some(challenge) = challenge {
        assert_eq!(decision["wwwAuthenticate"], challenge, "{context}");
    }
}
