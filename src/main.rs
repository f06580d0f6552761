//! The `cedargate` binary: parses arguments, loads config, starts logging, calls the library.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use cedargate::authoring::{self, ReplayFormat, ReplayOptions, ReportFormat, TestOptions};
use cedargate::config::Config;
use cedargate::engine::Authentication;
use cedargate::model::{Outcome, RouteRequest, Scheme, SecretDigest, Target, ToolCall, Wire};
use cedargate::policy::{self, PolicySources, ReportStyle, Severity};
use cedargate::telemetry::{self, LogFormat};
use cedargate::App;
use clap::{Parser, Subcommand};

/// Every password check allocates 19 MiB (argon2id, m=19456). glibc's malloc keeps freed
/// blocks that size in its per-thread arenas, so a burst of logins left hundreds of MiB
/// resident for good; mimalloc returns them to the OS (`tests/login_storm.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// cedargate: authorization decisions for gateways and MCP servers.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file, for `serve` (the default) and `check`; without one the embedded demo is used.
    #[arg(long, global = true, env = "CEDARGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t)]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve gRPC and HTTP (the default).
    Serve,
    /// Decide one request without starting a server, and print the decision as JSON: the
    /// protobuf JSON mapping of `CheckResponse`, every field present. Exit code: 0 allowed,
    /// 1 denied, 2 error.
    Check {
        /// The `Authorization` value, e.g. `Bearer user-token-123` ("" for none).
        #[arg(long, default_value = "")]
        authorization: String,
        #[command(flatten)]
        request: RequestArgs,
    },
    /// Write, test and inspect Cedar policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Write a commented starting config (`cedargate.yaml`) and a policy directory
    /// (`policies/`) into DIR, with a development token printed once. Overwrites nothing.
    Init {
        /// Where to write them (created if missing).
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Print the SHA-256 digest of an API key or static token for the config.
    /// Reads the key from standard input when not given.
    HashKey {
        /// The key (prefer standard input: arguments show up in process lists).
        key: Option<String>,
    },
    /// Print an argon2id hash of a password (read from standard input) for the config.
    HashPassword,
}

/// What `check` and `policy explain` decide: a route or a tool, and request facts.
#[derive(Debug, clap::Args)]
struct RequestArgs {
    /// An HTTP route: `METHOD /path`.
    #[arg(long, conflicts_with = "tool", required_unless_present = "tool")]
    route: Option<String>,
    /// An MCP tool name.
    #[arg(long)]
    tool: Option<String>,
    /// The tool's server.
    #[arg(long, default_value = "", requires = "tool")]
    server: String,
    /// The tool's arguments, a JSON object.
    #[arg(long, requires = "tool")]
    arguments: Option<String>,
    /// Request facts, a JSON object.
    #[arg(long)]
    context: Option<String>,
}

impl RequestArgs {
    /// The target and the facts.
    fn parse(self) -> anyhow::Result<(Target, cedargate::model::Extra)> {
        let target = match (self.route, self.tool) {
            (Some(route), _) => {
                let (method, path) = route
                    .split_once(' ')
                    .context("--route must be `METHOD /path`, e.g. `GET /user/profile`")?;
                Target::Route(RouteRequest {
                    method: method.to_owned(),
                    path: path.trim().to_owned(),
                    template: None,
                })
            }
            (None, Some(name)) => Target::Tool(ToolCall {
                name,
                server: self.server,
                arguments: json_object("--arguments", self.arguments.as_deref())?,
            }),
            (None, None) => bail!("give --route or --tool"),
        };
        Ok((target, json_object("--context", self.context.as_deref())?))
    }
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Print the Cedar schema cedargate sends requests in: the starting point of a policy
    /// directory's `schema.cedarschema`.
    Schema,
    /// Check a policy directory as the server loads it (strict validation against its schema,
    /// `entities.json` against the schema) and print every error and warning with
    /// file:line:column, the snippet and Cedar's help. Warnings: policies that can never apply,
    /// policies without `@id`. Exit code: 0 clean, 1 errors (or warnings with
    /// --deny-warnings), 2 the directory cannot be read.
    Validate {
        /// The policy directory [default: the --config's policy directory, else ./policies].
        dir: Option<PathBuf>,
        /// Fail (exit 1) on warnings too.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Format the `*.cedar` files of a policy directory in place with Cedar's own formatter
    /// (comments and annotations kept; formatting twice changes nothing). Exit code: 0 done,
    /// 1 a file does not parse (or, with --check, a file would change), 2 an I/O error.
    Fmt {
        /// List the files that would change and change nothing.
        #[arg(long)]
        check: bool,
        /// The policy directory [default: the --config's policy directory, else ./policies].
        dir: Option<PathBuf>,
    },
    /// Explain one decision: the outcome, the determining policies with file:line, the reason,
    /// evaluation errors, and for a deny every permit whose scope matched with the condition
    /// that stopped it. Uses the --config's backends and policies (default: the embedded
    /// demo). Exit code: 0 allowed, 1 denied, 2 error.
    Explain {
        /// The `Authorization` value, resolved by the configured backends ("" for none).
        #[arg(long, default_value = "", conflicts_with = "auth_info")]
        authorization: String,
        /// The identity inline instead, as JSON in the shape `cedargate check` prints
        /// `authInfo`: `{"subject": "alice", "roles": ["user"], "scopes": []}`.
        #[arg(long)]
        auth_info: Option<String>,
        #[command(flatten)]
        request: RequestArgs,
        /// The time of the decision, unix seconds or RFC 3339 [default: now].
        #[arg(long)]
        now: Option<String>,
        /// Use this policy directory instead of the config's.
        #[arg(long)]
        policies: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: OutputFormat,
    },
    /// Run the YAML test suites `DIR/tests/*.yaml` against DIR's policies, with the
    /// credential backends of --config (the embedded demo's without one). Exit code: 0 every
    /// test passed (and coverage and mutants, when asked, are fine), 1 a test failed, coverage
    /// is below the threshold or a mutant survived, 2 the suites or the policies are invalid.
    /// The format: docs/policy-tests.md.
    Test {
        /// The policy directory (default: the config's policy directory, else ./policies).
        dir: Option<PathBuf>,
        /// How the report is written.
        #[arg(long, value_enum, default_value_t)]
        format: ReportFormat,
        /// Only tests whose name or `suite::name` contains this (or matches it, as a glob with
        /// `*`, `?` or `[`).
        #[arg(long)]
        filter: Option<String>,
        /// For each policy, how many tests it determined; the policies none did.
        #[arg(long)]
        coverage: bool,
        /// Fail when fewer than PERCENT of the policies determined a test (implies --coverage).
        #[arg(long, value_name = "PERCENT")]
        coverage_threshold: Option<f64>,
        /// Re-run the suites against every mutant of the policy set (each policy deleted, its
        /// effect flipped, each `when`/`unless` dropped, each `&&`/`||` swapped) and list the
        /// mutants no test noticed.
        #[arg(long)]
        mutate: bool,
    },
    /// Decide every request of a decision log (`docs/decision-log.md`) again against the
    /// policies of DIR, with the --config's routes and settings (the embedded demo's without
    /// one), and report the decisions that would change: which, from what outcome and
    /// determining policies to what, by which policies; also those that keep their outcome
    /// with other determining policies. Records of refused or unavailable credentials, and
    /// records with a masked decision input, are skipped and counted. Exit code: 0 no outcome
    /// would change, 1 some would, 2 error (unreadable log, invalid record, invalid policies).
    Replay {
        /// The decision log, JSON lines (`-`: standard input); other log lines are skipped.
        #[arg(long, value_name = "FILE")]
        log: PathBuf,
        /// The candidate policy directory [default: the --config's policy directory, else
        /// ./policies].
        dir: Option<PathBuf>,
        /// How the report is written.
        #[arg(long, value_enum, default_value_t)]
        format: ReplayFormat,
    },
}

/// How `policy explain` prints.
#[derive(Debug, Clone, Copy, Default, clap::ValueEnum)]
enum OutputFormat {
    /// One fact a line.
    #[default]
    Text,
    /// One JSON object.
    Json,
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("cedargate: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => match load_config(cli.config.as_ref()) {
            Ok(config) => serve(cli.log_format, config),
            Err(error) => {
                // In the log's own format: with --log-format json every line is JSON.
                let _guard = telemetry::init(cli.log_format);
                tracing::error!("{error:#}");
                Ok(ExitCode::from(2))
            }
        },
        Command::Check { authorization, request } => {
            let (target, facts) = request.parse()?;
            let config = load_config(cli.config.as_ref())?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let decision = runtime.block_on(async {
                let app = App::build(config)?;
                app.engine()
                    .check(Wire::Cli, &authorization, &target, &facts)
                    .await
                    .map_err(anyhow::Error::from)
            })?;
            let allowed = decision.allowed();
            println!("{}", serde_json::to_string_pretty(&cedargate::api::json::decision_json(decision)?)?);
            Ok(if allowed { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Policy { command } => match command {
            PolicyCommand::Schema => {
                print!("{}", cedargate::policy::SCHEMA);
                Ok(ExitCode::SUCCESS)
            }
            PolicyCommand::Validate { dir, deny_warnings } => {
                let dir = policy_dir(dir, cli.config.as_ref())?;
                let sources = PolicySources::from_dir(&dir)?;
                let validation = policy::validate(&sources, report_style());
                for finding in &validation.findings {
                    println!("{}", finding.rendered.trim_end());
                }
                let errors = validation.count(Severity::Error);
                let warnings = validation.count(Severity::Warning);
                let failed = errors > 0 || (deny_warnings && warnings > 0);
                let verdict = if errors > 0 { "invalid" } else { "valid" };
                println!(
                    "{}: {verdict}: {} policies, {errors} errors, {warnings} warnings{}",
                    dir.display(),
                    validation.policy_count,
                    if deny_warnings && errors == 0 && warnings > 0 { " (--deny-warnings)" } else { "" }
                );
                Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
            }
            PolicyCommand::Fmt { check, dir } => {
                let dir = policy_dir(dir, cli.config.as_ref())?;
                let report = policy::format_dir(&dir, !check, report_style())?;
                for finding in &report.failed {
                    eprintln!("{}", finding.rendered.trim_end());
                }
                for file in &report.changed {
                    println!("{} {}", if check { "would reformat" } else { "reformatted" }, file.display());
                }
                let failed = !report.failed.is_empty() || (check && !report.changed.is_empty());
                eprintln!(
                    "{} files, {} {}, {} not formatted (they do not parse)",
                    report.files.len(),
                    report.changed.len(),
                    if check { "would change" } else { "changed" },
                    report.failed.len()
                );
                Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
            }
            PolicyCommand::Explain { authorization, auth_info, request, now, policies, format } => {
                let (target, facts) = request.parse()?;
                let now = match now {
                    Some(text) => parse_time(&text)?,
                    None => cedargate::model::unix_now(),
                };
                let inline = match auth_info {
                    Some(text) => Some(Arc::new(
                        cedargate::api::json::auth_info_from_json(&text)
                            .map_err(|error| anyhow::anyhow!("--auth-info: {error}"))?,
                    )),
                    None => None,
                };
                let mut config = load_config(cli.config.as_ref())?;
                if let Some(dir) = policies {
                    config.policies.dir = Some(std::path::absolute(dir)?);
                }
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let explained = runtime.block_on(async {
                    let app = App::build(config)?;
                    let authentication = match inline {
                        Some(auth) => Authentication::Authenticated {
                            auth,
                            scheme: Scheme::Bearer,
                            fingerprint: String::new(),
                        },
                        None => app.engine().authenticate(&authorization).await,
                    };
                    app.engine().explain(&authentication, &target, &facts, now).map_err(anyhow::Error::from)
                })?;
                match format {
                    OutputFormat::Text => print!("{}", explained.text()),
                    OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&explained.to_json())?),
                }
                Ok(if explained.outcome == Outcome::Allowed { ExitCode::SUCCESS } else { ExitCode::from(1) })
            }
            PolicyCommand::Test { dir, format, filter, coverage, coverage_threshold, mutate } => {
                if coverage_threshold.is_some_and(|percent| !(0.0..=100.0).contains(&percent)) {
                    bail!("--coverage-threshold must be a percentage from 0 to 100");
                }
                let config = load_config(cli.config.as_ref())?;
                let dir = dir.unwrap_or_else(|| config.policy_dir_or_default());
                let options = TestOptions { dir, config, filter, coverage, coverage_threshold, mutate };
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let run = runtime.block_on(authoring::run(options))?;
                print!("{}", run.render(format)?);
                Ok(ExitCode::from(run.exit_code()))
            }
            PolicyCommand::Replay { log, dir, format } => {
                let config = load_config(cli.config.as_ref())?;
                let dir = dir.unwrap_or_else(|| config.policy_dir_or_default());
                let options = ReplayOptions { dir, config, style: report_style() };
                let report = authoring::replay_path(options, &log)?;
                print!("{}", report.render(format)?);
                Ok(ExitCode::from(report.exit_code()))
            }
        },
        Command::Init { dir } => {
            let written = cedargate::config::init::write(&dir)?;
            let config = written.config.display();
            println!("Wrote:");
            for file in &written.files {
                println!("  {}", file.display());
            }
            println!();
            println!("Development token (shown only now; cedargate.yaml keeps its SHA-256):");
            println!("  {}", written.dev_token);
            println!();
            println!("Try:");
            println!("  cedargate check --config {config} --route 'GET /public/hello'        # allowed");
            println!(
                "  cedargate check --config {config} --route 'GET /users/developer'     # 401: no credential"
            );
            println!(
                "  cedargate check --config {config} --authorization 'Bearer {}' --route 'DELETE /users/7'   # allowed: a developer",
                written.dev_token
            );
            println!("  cedargate --config {config}                                          # serve it");
            Ok(ExitCode::SUCCESS)
        }
        Command::HashKey { key } => {
            let key = match key {
                Some(key) => key,
                None => read_secret("key")?,
            };
            println!("{}", SecretDigest::of(key.as_bytes()).to_hex());
            Ok(ExitCode::SUCCESS)
        }
        Command::HashPassword => {
            let password = read_secret("password")?;
            println!("{}", cedargate::session::hash_password(&password).map_err(anyhow::Error::msg)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The target of `check` and `policy explain`.
/// The policy directory of `validate`, `fmt` and `test`: the argument, else the config's
/// (`Config::policy_dir_or_default`).
fn policy_dir(dir: Option<PathBuf>, config: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    match dir {
        Some(dir) => Ok(dir),
        None => Ok(load_config(config)?.policy_dir_or_default()),
    }
}

/// Colour on a terminal, unless `NO_COLOR` is set.
fn report_style() -> ReportStyle {
    if std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
        ReportStyle::Color
    } else {
        ReportStyle::Plain
    }
}

/// Unix seconds, or an RFC 3339 time.
fn parse_time(text: &str) -> anyhow::Result<i64> {
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds);
    }
    let time = humantime::parse_rfc3339_weak(text)
        .with_context(|| format!("--now `{text}` is neither unix seconds nor an RFC 3339 time"))?;
    let seconds = match time.duration_since(std::time::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs())?,
        Err(before) => -i64::try_from(before.duration().as_secs())?,
    };
    Ok(seconds)
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(path) => Config::load(path)?,
        None => Config::demo()?,
    })
}

/// Serves until a signal; every failure is logged (in the log's format), then exit code 2.
fn serve(log_format: LogFormat, config: Config) -> anyhow::Result<ExitCode> {
    // Password checks run on the blocking pool; an idle thread exits after a second, and with
    // it the allocator's cache of its 19 MiB argon2 buffers.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_keep_alive(std::time::Duration::from_secs(1))
        .build()?;
    Ok(runtime.block_on(async {
        // Inside the runtime: the OTLP exporters are its tasks. Before the app: its parts
        // record metrics from the start.
        let _telemetry = match telemetry::init_with_export(log_format, &config.telemetry_settings()) {
            Ok(telemetry) => telemetry,
            Err(error) => {
                let _guard = telemetry::init(log_format);
                tracing::error!("{error}");
                return ExitCode::from(2);
            }
        };
        let run = async {
            let app = Arc::new(App::build(config)?);
            #[cfg(unix)]
            tokio::spawn(Arc::clone(&app).reload_on_sighup_task());
            app.run(shutdown_signal()).await
        };
        match run.await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!("{error}");
                ExitCode::from(2)
            }
        }
    }))
}

/// Completes on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
}

fn json_object(flag: &str, text: Option<&str>) -> anyhow::Result<cedargate::model::Extra> {
    let Some(text) = text else { return Ok(Default::default()) };
    serde_json::from_str(text).with_context(|| format!("{flag} must be a JSON object"))
}

/// One line from standard input, without its line ending.
fn read_secret(what: &str) -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        eprintln!("{what}: ");
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let secret = line.trim_end_matches(['\r', '\n']).to_owned();
    if secret.is_empty() {
        bail!("empty {what} on standard input");
    }
    Ok(secret)
}
