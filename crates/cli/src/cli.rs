//! The `stepq` command line: run jobs, list them, show runs, and run workers.
//!
//! Any binary built on a [`CodeLocation`] gets the whole CLI with [`main`]:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     stepq_cli::main(stepq_cli::demo::location())
//! }
//! ```
//!
//! Commands (global options `--config FILE`, `--jobs-file FILE.toml` (repeatable),
//! `--log-format text|json`):
//!
//! - `stepq run JOB [--steps a,b] [--workers N] [--run-config JSON] [--run-id ID]`: runs a job
//!   with live progress and a summary table. On the embedded default it starts N in-process
//!   workers (default: the number of cores); with a distributed config it orchestrates over
//!   SQS while `stepq worker start` processes do the steps (`--workers N` adds in-process
//!   ones). Exits 0 on success, 1 on failure, 130 when interrupted (Ctrl-C interrupts the
//!   run; a second Ctrl-C exits at once).
//! - `stepq launch JOB [--steps a,b] [--run-config JSON] [--run-id ID] [--tag K=V]`: submits a
//!   run as an `execute_job` task (distributed config) and prints its run id at once; a worker
//!   claims the run and orchestrates it (its steps go out as usual). Exits 0 once the run is
//!   queued; 2 for an unknown job or step.
//! - `stepq resume RUN_ID [--force] [--here] [--workers N]`: re-runs the steps of a FAILURE or
//!   CANCELED run that did not succeed, reusing the stored outputs of those that did (attempt
//!   numbers count on). On the embedded default (or with `--here`) this process orchestrates
//!   the resume with `--workers` in-process workers, showing progress and a summary and
//!   exiting like `stepq run`; with a distributed config it submits a `resume_job` task for a
//!   worker and exits 0 once queued. `--force` takes over a STARTING / STARTED run whose
//!   orchestrator died; without it, such a run is taken over only when its orchestrator's
//!   worker heartbeat is LOST (said on stderr). Exits 2 for an unknown run, 1 for a run that
//!   cannot be resumed (SUCCESS, still running without `--force`).
//! - `stepq logs RUN_ID [--follow] [--json]`: the run's event log, one line per event (JSON
//!   lines with `--json`); `--follow` keeps printing until the run ends.
//! - `stepq report RUN_ID [-o FILE]`: writes the run's timeline as one self-contained HTML
//!   file (default `RUN_ID.html`; see [`crate::report_html`]) and prints its path and size.
//! - `stepq jobs [--json]`: the jobs of the code location and the jobs files.
//! - `stepq status RUN_ID [--json]`: a run from the run store, step by step, with the worker
//!   holding each in-flight step (from the workers' health heartbeats) and a line for each
//!   step that sits on a lost worker.
//! - `stepq runs [--status S,...] [--job NAME] [--tag K=V]... [--since 2h|RFC3339] [--limit
//!   N] [--json]`: the latest runs (20 by default) that meet every filter given
//!   ([`stepq_runs::RunFilter`]): any of the statuses, the job, every tag, created since a
//!   duration ago or a time.
//! - `stepq cancel RUN_ID [--wait SECONDS]`: asks for a run to be canceled, from any terminal
//!   or machine sharing its run store (the same `.stepq/` directory, or the same bucket). The
//!   run goes CANCELING; its orchestrator (the `stepq run` process, which watches the run's
//!   record) interrupts it and cancels its in-flight steps, and the run ends CANCELED (that
//!   `stepq run` exits 130). Waits up to `--wait` seconds (default 30; 0: do not wait) for
//!   the run to end. Exits 0 once the request is recorded (and the run ended, when waiting),
//!   2 for an unknown run, 1 for a run that already ended or did not end in time. With
//!   `--force`, a run stuck CANCELING (its orchestrator died) ends CANCELED at once.
//! - `stepq worker start [--concurrency N] [--name NAME]`: a worker service (distributed
//!   config); stops gracefully on SIGTERM or Ctrl-C and exits 0.
//! - `stepq worker list [--json]`: queue depth of the task queue (distributed), and every
//!   worker with a health heartbeat: live, or LOST once silent for three
//!   `worker.health_interval_seconds`.
//!
//! `--json` prints one JSON document on stdout (JSON lines for `logs`), in the shapes of
//! `docs/operations.md` ("Machine-readable output"); errors stay on stderr with the same exit
//! codes.
//!
//! Exit code 2 means the command could not start (bad arguments, config, jobs file, unknown
//! job or run).
//!
//! [`CodeLocation`]: stepq_worker::CodeLocation

use std::time::Duration;

mod args;
mod cancel;
mod dispatch;
mod dlq;
mod failure;
mod follow;
mod gc;
mod jobs;
mod json;
mod launch;
mod logs;
mod report;
mod run_job;
mod runs;
mod status;
mod table;
mod timestamps;
mod worker;

pub use args::{
    CancelArgs, Cli, Command, GcArgs, LaunchArgs, LogFormat, LogsArgs, ResumeArgs, RunArgs,
    RunsArgs, WorkerCommand, WorkerStartArgs,
};
pub use dispatch::{main, main_from, run};
pub use dlq::DlqCommand;
pub use report::ReportArgs;
pub(crate) use table::simple_table;
pub use timestamps::{ParseSinceError, Since};

pub use crate::report::format_timestamp;

/// Exit code of a run that failed (and of runtime errors).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code when a command could not start: bad arguments, config, jobs file, unknown name.
pub const EXIT_USAGE: u8 = 2;
/// Exit code of an interrupted run (128 + SIGINT).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Runs with more steps than this get a condensed summary.
pub const SUMMARY_MAX_ROWS: usize = 40;

/// How often `stepq worker start` writes its health heartbeat unless
/// `worker.health_interval_seconds` says otherwise.
pub const HEARTBEAT_INTERVAL: Duration = stepq_worker::health::DEFAULT_HEALTH_INTERVAL;
