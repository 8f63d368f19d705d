//! `cargo xtask bench --localstack`: the driving side. Builds the measuring side (this crate
//! with feature `bench`, in release, so the figures are those of optimized code) and the
//! `stepq` binary the workers run, starts LocalStack, runs `xtask bench-run` against it (see
//! `bench_run.rs`), and stops LocalStack on every way out.
//!
//! Request counts come from LocalStack's request log (`target/localstack.log`, one line per
//! request), so LocalStack must run natively (the default when no Docker engine answers): a
//! Docker Compose LocalStack writes its log only when stopped. Nothing else should use the
//! LocalStack during a measurement.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::localstack::{self, LocalStack};

/// Options of `cargo xtask bench`, passed on to `bench-run`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BenchArgs {
    /// Measure on LocalStack (SQS + S3). The embedded default has its own benchmark:
    /// `cargo bench -p stepq-worker --bench embedded`.
    #[arg(long)]
    pub localstack: bool,
    /// Measured runs of each job (after one warm-up run of each).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Steps each of the two workers runs at once.
    #[arg(long, default_value_t = 8)]
    pub worker_concurrency: usize,
    /// No-op tasks of each broker-alone measurement.
    #[arg(long, default_value_t = 2000)]
    pub broker_tasks: usize,
    /// Run the two workers inside the measuring process (each with its own AWS clients)
    /// instead of as two `stepq worker start` processes.
    #[arg(long)]
    pub in_process_workers: bool,
    /// Instead of the throughput scenarios, the fault benchmark (issue #16): how long a
    /// SIGKILLed `stepq worker start`'s step takes to start again elsewhere, how fast ready
    /// steps start on idle workers, and the idle workers' request rate (`bench_run/faults.rs`).
    #[arg(long)]
    pub faults: bool,
    /// With `--faults`: kills that hit a running step to collect (runs repeat until then).
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
    /// With `--faults`: rounds of the prefetch scenario.
    #[arg(long, default_value_t = 10)]
    pub prefetch_rounds: usize,
    /// Instead of the throughput scenarios, compare the broker alone with a peer's on the same
    /// LocalStack: `taskiq` (taskiq-aio-sqs's SQSBroker + S3Backend, one `taskiq worker`) beside
    /// stepq's, results in S3 and in memory (`bench_run/peer.rs`).
    #[arg(long, value_enum)]
    pub peer: Option<Peer>,
    /// With `--peer`: no-op tasks of each measurement.
    #[arg(long, default_value_t = 1000)]
    pub peer_tasks: usize,
    /// Leave LocalStack running afterwards (stop it with `cargo xtask localstack-down`).
    #[arg(long)]
    pub keep: bool,
}

/// A peer to compare the broker with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Peer {
    /// Python TaskIQ with taskiq-aio-sqs (the packages of `xtask/taskiq-requirements.txt`).
    Taskiq,
}

impl BenchArgs {
    /// The arguments that reproduce these options.
    pub(crate) fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--reps={}", self.reps),
            format!("--worker-concurrency={}", self.worker_concurrency),
            format!("--broker-tasks={}", self.broker_tasks),
        ];
        if self.localstack {
            args.push("--localstack".into());
        }
        if self.in_process_workers {
            args.push("--in-process-workers".into());
        }
        if self.peer.is_some() {
            args.push("--peer=taskiq".into());
            args.push(format!("--peer-tasks={}", self.peer_tasks));
        }
        if self.faults {
            args.push("--faults".into());
            args.push(format!("--kills={}", self.kills));
            args.push(format!("--prefetch-rounds={}", self.prefetch_rounds));
        }
        args
    }

    /// Checks the options.
    pub(crate) fn validate(&self) -> Result<()> {
        if !self.localstack {
            bail!(
                "only `--localstack` is measured here; the embedded default has its own \
                 benchmark: `cargo bench -p stepq-worker --bench embedded`"
            );
        }
        if self.reps == 0 || self.worker_concurrency == 0 || self.broker_tasks == 0 {
            bail!("--reps, --worker-concurrency and --broker-tasks must be at least 1");
        }
        if self.faults && self.in_process_workers {
            bail!(
                "--faults kills `stepq worker start` processes: it cannot use --in-process-workers"
            );
        }
        if self.peer.is_some() && (self.faults || self.peer_tasks == 0) {
            bail!("--peer cannot be combined with --faults, and --peer-tasks must be at least 1");
        }
        if self.faults && (self.kills == 0 || self.prefetch_rounds == 0) {
            bail!("--kills and --prefetch-rounds must be at least 1");
        }
        Ok(())
    }
}

/// Where cargo puts build output.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// Runs `cargo <args>` in the workspace; fails unless it succeeds.
async fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("== cargo {}", args.join(" "));
    let status = tokio::process::Command::new(cargo)
        .current_dir(root)
        .args(args)
        .status()
        .await
        .context("running cargo")?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// `cargo xtask bench`.
pub(crate) async fn bench(root: &Path, args: &BenchArgs) -> Result<u8> {
    args.validate()?;
    cargo(
        root,
        &["build", "--release", "-p", "xtask", "--features", "bench"],
    )
    .await?;
    let measurer = target_dir(root).join("release/xtask");
    let taskiq_python = match args.peer {
        Some(Peer::Taskiq) => Some(crate::taskiq::ensure_venv(root).await?),
        None => None,
    };
    let stepq_bin = if args.in_process_workers || args.peer.is_some() {
        None
    } else {
        cargo(
            root,
            &["build", "--release", "-p", "stepq-cli", "--bin", "stepq"],
        )
        .await?;
        Some(target_dir(root).join("release/stepq"))
    };

    // From here on LocalStack is stopped on every way out (see `localstack`).
    let mut ls = LocalStack::start_or_reuse(root, args.keep).await?;
    let outcome = run_measurer(
        root,
        &measurer,
        &ls.endpoint,
        stepq_bin.as_deref(),
        taskiq_python.as_deref(),
        args,
    )
    .await;
    ls.keep_or_stop(args.keep)?;
    outcome
}

/// Runs `xtask bench-run` (the release build) in its own process group.
async fn run_measurer(
    root: &Path,
    measurer: &Path,
    endpoint: &str,
    stepq_bin: Option<&Path>,
    taskiq_python: Option<&Path>,
    args: &BenchArgs,
) -> Result<u8> {
    let mut command = tokio::process::Command::new(measurer);
    command
        .current_dir(root)
        .arg("bench-run")
        .args(args.to_args())
        .arg(format!("--endpoint={endpoint}"))
        .envs(aws_env());
    if let Some(bin) = stepq_bin {
        command.arg(format!("--stepq-bin={}", bin.display()));
    }
    if let Some(python) = taskiq_python {
        command.arg(format!("--taskiq-python={}", python.display()));
    }
    command.process_group(0).kill_on_drop(true);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", measurer.display()))?;
    let _registered = child.id().map(localstack::ChildGroup::register);
    let status = child.wait().await.context("waiting for the measurement")?;
    Ok(status.code().map_or(1, |c| c.clamp(0, 255) as u8))
}

/// Static LocalStack credentials and region, for the measuring process and its workers.
pub(crate) fn aws_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_DEFAULT_REGION", crate::resources::REGION.into()),
        ("AWS_REGION", crate::resources::REGION.into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> BenchArgs {
        BenchArgs {
            localstack: true,
            reps: 3,
            worker_concurrency: 4,
            broker_tasks: 100,
            in_process_workers: true,
            faults: false,
            kills: 20,
            prefetch_rounds: 10,
            peer: None,
            peer_tasks: 1000,
            keep: true,
        }
    }

    #[test]
    fn the_peer_option_is_passed_on_and_checked() {
        let mut a = args();
        a.peer = Some(Peer::Taskiq);
        assert!(a.to_args().contains(&"--peer=taskiq".to_string()));
        assert!(a.to_args().contains(&"--peer-tasks=1000".to_string()));
        a.validate().unwrap();
        a.faults = true;
        assert!(a.validate().is_err());
    }

    #[test]
    fn options_are_passed_on_except_keep() {
        assert_eq!(
            args().to_args(),
            [
                "--reps=3",
                "--worker-concurrency=4",
                "--broker-tasks=100",
                "--localstack",
                "--in-process-workers"
            ]
        );
    }

    #[test]
    fn bad_options_are_refused() {
        args().validate().unwrap();
        let mut a = args();
        a.localstack = false;
        assert!(a
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--bench embedded"));
        let mut a = args();
        a.reps = 0;
        assert!(a.validate().is_err());
        let mut a = args();
        a.faults = true;
        assert!(a.validate().is_err(), "faults need worker processes");
        a.in_process_workers = false;
        a.validate().unwrap();
        a.kills = 0;
        assert!(a.validate().is_err());
    }

    #[test]
    fn fault_options_are_passed_on_with_faults() {
        let mut a = args();
        a.in_process_workers = false;
        a.faults = true;
        a.kills = 25;
        assert_eq!(
            a.to_args()[3..],
            [
                "--localstack",
                "--faults",
                "--kills=25",
                "--prefetch-rounds=10"
            ]
        );
    }
}
