//! Project automation (`cargo xtask ...`).
//!
//! - `deploy-check`: the worker image's checks that need no Docker engine: the declared
//!   `rust-version` against every locked package, the Dockerfile against the workspace
//!   (`deploy_check.rs`).
//! - `test`: `deploy-check`, then the offline tests of the workspace, then those of the
//!   `stepq` facade, the worker and the executor without their AWS features, a check of the
//!   CLI with its `otel` feature, then `localstack-test` (what CI runs).
//! - `localstack-test [--keep] [-- CARGO_TEST_ARGS]`: starts LocalStack (Docker when an engine
//!   answers, else natively from a venv under `target/`), creates the smoke queues and bucket,
//!   runs the LocalStack-gated (`#[ignore = "localstack"]`) tests against it, and stops it —
//!   also on failure and on Ctrl-C. Arguments after `--` go to `cargo test` (e.g.
//!   `-- -p stepq-broker -p stepq-results`, or `-- -p stepq-broker -- sqs_` to filter tests).
//! - `localstack-up`: starts LocalStack, creates the resources, prints the environment to
//!   export, and leaves it running; `localstack-down` stops it.
//! - `bench --localstack [--reps N] [--worker-concurrency N] [--broker-tasks N]
//!   [--in-process-workers] [--keep]`: builds the measuring side (this crate with feature
//!   `bench`) and the `stepq` binary in release, starts LocalStack, and measures a 10-step
//!   chain and a 1→50→1 fan-out with two workers, and the broker alone; prints a Markdown
//!   report (figures for docs/benchmarks.md) and writes it under `target/stepq-bench/`.
//!   With `--faults [--kills N] [--prefetch-rounds N]` it measures faults instead (issue #16):
//!   how long a SIGKILLed `stepq worker start`'s step takes to start again, how fast ready
//!   steps start on idle workers, and the idle workers' request rate.

mod bench;
#[cfg(feature = "bench")]
mod bench_run;
mod deploy_check;
mod localstack;
mod requests;
mod resources;
mod taskiq;
mod venv;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use localstack::LocalStack;
use resources::TestResources;

/// Test threads of the LocalStack suite: modest, the machine has 2 cores.
const LOCALSTACK_TEST_THREADS: &str = "4";

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "stepq project automation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Offline tests of the whole workspace, then the facade without AWS, then the LocalStack
    /// suite.
    Test {
        /// Arguments for the LocalStack suite's `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Check the declared rust-version against Cargo.lock and the Dockerfile against the
    /// workspace (no Docker engine needed).
    DeployCheck,
    /// Start LocalStack, run the LocalStack-gated tests against it, stop it.
    LocalstackTest {
        /// Leave LocalStack running afterwards (stop it with `cargo xtask localstack-down`).
        #[arg(long)]
        keep: bool,
        /// Arguments for `cargo test` (after `--`); default `--workspace`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Start LocalStack with the smoke resources and leave it running; prints the env to export.
    LocalstackUp,
    /// Stop a LocalStack left running by `localstack-up` or `localstack-test --keep`.
    LocalstackDown,
    /// Measure stepq on LocalStack (SQS + S3): chain and fan-out end to end, broker alone.
    Bench(bench::BenchArgs),
    /// The measuring side of `bench` (run by it, against a running LocalStack).
    #[cfg(feature = "bench")]
    #[command(hide = true)]
    BenchRun(bench_run::BenchRunArgs),
}

/// The workspace root (the parent of this crate's directory).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xtask: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<u8> {
    let root = workspace_root();
    localstack::watch_signals();
    match command {
        Command::Test { args } => {
            println!("== deploy check (rust-version, Dockerfile)");
            deploy_check::deploy_check(&root).await?;
            println!("== offline tests: cargo test --workspace");
            let code = cargo_test(&root, &["--workspace".to_string()], &[], None).await?;
            if code != 0 {
                return Ok(code);
            }
            // Without the AWS features: the facade, the worker and the executor on the
            // embedded default alone, with no AWS SDK in their build.
            for package in ["stepq", "stepq-worker", "stepq-executor"] {
                println!("== offline tests: cargo test -p {package} --no-default-features");
                let no_aws = ["-p", package, "--no-default-features"].map(String::from);
                let code = cargo_test(&root, &no_aws, &[], None).await?;
                if code != 0 {
                    return Ok(code);
                }
            }
            // The CLI with OpenTelemetry export (off by default; crate stepq-otel has its own
            // tests in the workspace run above): it must keep compiling.
            println!("== cargo check -p stepq-cli --features otel");
            let code =
                cargo_run(&root, &["check", "-p", "stepq-cli", "--features", "otel"]).await?;
            if code != 0 {
                return Ok(code);
            }
            println!("== LocalStack tests");
            localstack_test(&root, false, &args).await
        }
        Command::DeployCheck => deploy_check::deploy_check(&root).await.map(|()| 0),
        Command::LocalstackTest { keep, args } => localstack_test(&root, keep, &args).await,
        Command::LocalstackUp => {
            let mut ls = LocalStack::start_or_reuse(&root, true).await?;
            let res = TestResources::create(&ls.endpoint).await?;
            ls.keep()?;
            println!("LocalStack is running at {}. To use it:\n", ls.endpoint);
            for (k, v) in res.env() {
                println!("export {k}={v}");
            }
            let taskiq_python = taskiq::ensure_venv(&root).await?;
            println!("export {}={}", taskiq::PYTHON_ENV, taskiq_python.display());
            println!("\nStop it with: cargo xtask localstack-down");
            Ok(0)
        }
        Command::LocalstackDown => {
            if LocalStack::stop_recorded(&root)? {
                println!("LocalStack stopped");
            } else {
                println!("no LocalStack recorded as running");
            }
            Ok(0)
        }
        Command::Bench(args) => bench::bench(&root, &args).await,
        #[cfg(feature = "bench")]
        Command::BenchRun(args) => bench_run::bench_run(&root, &args).await,
    }
}

/// Splits `args` into cargo's arguments and the test binaries' arguments (after a `--`).
fn split_test_args(args: &[String]) -> (Vec<String>, Vec<String>) {
    match args.iter().position(|a| a == "--") {
        Some(i) => (args[..i].to_vec(), args[i + 1..].to_vec()),
        None => (args.to_vec(), Vec::new()),
    }
}

/// Whether cargo arguments already select packages.
fn selects_packages(cargo_args: &[String]) -> bool {
    cargo_args.iter().any(|a| {
        a == "-p"
            || a.starts_with("-p")
            || a.starts_with("--package")
            || a == "--workspace"
            || a == "--all"
            || a.starts_with("--manifest-path")
    })
}

async fn localstack_test(root: &Path, keep: bool, args: &[String]) -> Result<u8> {
    let (mut cargo_args, user_test_args) = split_test_args(args);
    if !selects_packages(&cargo_args) {
        cargo_args.insert(0, "--workspace".into());
    }
    let mut test_args = vec![
        "--ignored".to_string(),
        format!("--test-threads={LOCALSTACK_TEST_THREADS}"),
    ];
    test_args.extend(user_test_args);

    // The Python TaskIQ packages the interop tests (crates/aws/tests/taskiq_*) run.
    let taskiq_python = taskiq::ensure_venv(root).await?;

    // From here on LocalStack is stopped on every way out: normal return, error (`?`), panic
    // (Drop) and Ctrl-C / SIGTERM (the signal watcher).
    let mut ls = LocalStack::start_or_reuse(root, keep).await?;
    let outcome = async {
        let res = TestResources::create(&ls.endpoint)
            .await
            .context("creating the smoke queues and bucket")?;
        println!(
            "cargo test {} -- {}",
            cargo_args.join(" "),
            test_args.join(" ")
        );
        let mut env = res.env();
        env.push((taskiq::PYTHON_ENV, taskiq_python.display().to_string()));
        cargo_test(root, &cargo_args, &test_args, Some(&env)).await
    }
    .await;
    ls.keep_or_stop(keep)?;
    if let Some(summary) = requests::summarize(&root.join("target/localstack.log")) {
        println!("{summary}");
    }
    let code = outcome?;
    if code != 0 {
        eprintln!("xtask: LocalStack tests failed (exit code {code})");
    }
    Ok(code)
}

/// Runs `cargo test` in its own process group (so an interrupt can stop all of it), with the
/// LocalStack environment when `resources` are given. Returns its exit code.
async fn cargo_test(
    root: &Path,
    cargo_args: &[String],
    test_args: &[String],
    env: Option<&[(&'static str, String)]>,
) -> Result<u8> {
    let mut args = vec!["test".to_string()];
    args.extend(cargo_args.iter().cloned());
    if !test_args.is_empty() {
        args.push("--".into());
        args.extend(test_args.iter().cloned());
    }
    cargo_with(root, &args, env).await
}

/// Runs `cargo ARGS` like [`cargo_test`]; returns its exit code.
async fn cargo_run(root: &Path, args: &[&str]) -> Result<u8> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    cargo_with(root, &args, None).await
}

/// Runs `cargo ARGS` in its own process group (so an interrupt can stop all of it), with
/// `env` added. Returns its exit code.
async fn cargo_with(
    root: &Path,
    args: &[String],
    env: Option<&[(&'static str, String)]>,
) -> Result<u8> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = tokio::process::Command::new(cargo);
    command.current_dir(root).args(args);
    if let Some(env) = env {
        command.envs(env.iter().cloned());
    }
    command.process_group(0).kill_on_drop(true);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting cargo {}", args.join(" ")))?;
    let _registered = child.id().map(localstack::ChildGroup::register);
    let status = child.wait().await.context("waiting for cargo")?;
    Ok(status.code().map_or(1, |c| c.clamp(0, 255) as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn extra_args_split_at_the_first_double_dash() {
        assert_eq!(
            split_test_args(&strings(&["-p", "x", "--", "sqs_", "--nocapture"])),
            (strings(&["-p", "x"]), strings(&["sqs_", "--nocapture"]))
        );
        assert_eq!(
            split_test_args(&strings(&["-p", "x"])),
            (strings(&["-p", "x"]), vec![])
        );
    }

    #[test]
    fn package_selection_is_detected() {
        assert!(selects_packages(&strings(&["-p", "stepq-broker"])));
        assert!(selects_packages(&strings(&["--package=stepq-broker"])));
        assert!(selects_packages(&strings(&["--workspace"])));
        assert!(!selects_packages(&strings(&["--release"])));
    }
}
