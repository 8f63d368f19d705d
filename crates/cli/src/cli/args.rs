//! The command line's shape: the clap types (`Cli`, `Command`, the `*Args` of each command)
//! and the parsing of argument values that clap leaves as text (`--run-config`, `--tag`).

use super::dlq::DlqCommand;
use super::report::ReportArgs;
use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use stepq_runs::{RunFilter, RunStatus};

use super::failure::Failure;
use super::timestamps::Since;

/// The `stepq` command line.
#[derive(Debug, Parser)]
#[command(
    name = "stepq",
    version,
    about = "Run DAG-shaped jobs as tasks on a queue, on a laptop or across many machines"
)]
pub struct Cli {
    /// Config file (TOML). Without one: the embedded default (in-memory queue, state under
    /// .stepq/). STEPQ_SQS_QUEUE_URL, STEPQ_S3_BUCKET_NAME ... override it.
    #[arg(long, global = true, env = "STEPQ_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A TOML file of jobs whose steps are shell commands (repeatable).
    #[arg(long = "jobs-file", global = true, value_name = "FILE.toml")]
    pub jobs_files: Vec<PathBuf>,
    /// Log format (logs go to stderr; RUST_LOG sets the level).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

/// A `stepq` command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a job and wait for it, with live progress and a summary.
    Run(RunArgs),
    /// Submit a run as a task and print its id at once; a worker runs it (distributed config).
    Launch(LaunchArgs),
    /// Re-run, on a worker, the steps of a run that did not succeed.
    Resume(ResumeArgs),
    /// Print a run's event log.
    Logs(LogsArgs),
    /// Write a run's timeline (lanes per worker, attempts, critical path, summary) as one
    /// self-contained HTML file.
    Report(ReportArgs),
    /// List the jobs of the code location and the jobs files.
    Jobs {
        /// Print one JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a run, step by step, from the run store.
    Status {
        /// The run id.
        run_id: String,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List the latest runs, optionally only those of given statuses, job, tags or age.
    Runs(RunsArgs),
    /// Cancel a run: it goes CANCELING, its orchestrator cancels its steps, it ends CANCELED.
    Cancel(CancelArgs),
    /// Delete finished runs (record, events, outputs, step results) and report the space
    /// reclaimed; runs not finished are never touched.
    Gc(GcArgs),
    /// Run or inspect workers.
    #[command(subcommand)]
    Worker(WorkerCommand),
    /// The task queue's dead letters: messages workers moved aside because they can never
    /// succeed (delivered too often, malformed, naming no known task).
    #[command(subcommand)]
    Dlq(DlqCommand),
}

/// Arguments of `stepq launch`.
#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// Job name.
    pub job: String,
    /// Run only these steps (comma-separated keys).
    #[arg(long, value_delimiter = ',', value_name = "STEP,...")]
    pub steps: Option<Vec<String>>,
    /// Run config handed to every op: JSON text, or @FILE to read it from a file.
    #[arg(long, value_name = "JSON")]
    pub run_config: Option<String>,
    /// Run id (default: a fresh UUID).
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
    /// A tag stored on the run record (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Priority level of the run's steps (a level of `[priority]`; a step's own
    /// `stepq/priority` tag wins). Stored as the run tag `stepq/priority`.
    #[arg(long, value_name = "LEVEL")]
    pub priority: Option<String>,
}

/// Arguments of `stepq resume`.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The run id.
    pub run_id: String,
    /// Also take over a STARTING or STARTED run (its orchestrator died). Not needed when its
    /// orchestrator's worker heartbeat is LOST.
    #[arg(long)]
    pub force: bool,
    /// With a distributed config: orchestrate the resume from this process (with progress
    /// and a summary, like `stepq run`) instead of queueing it for a worker. The embedded
    /// default always resumes here.
    #[arg(long)]
    pub here: bool,
    /// In-process workers when resuming here (default: number of cores on the embedded
    /// default, 0 with a distributed config).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
}

/// Arguments of `stepq logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The run id.
    pub run_id: String,
    /// Keep printing new events until the run ends.
    #[arg(long, short)]
    pub follow: bool,
    /// Print one JSON object per event per line (JSON lines) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `stepq runs`: which runs (every condition given must hold), how many, and how
/// to print them.
#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Only runs in this status (repeatable, or comma-separated: any of them; any case), e.g.
    /// `--status failure,canceled`.
    #[arg(long = "status", value_delimiter = ',', value_name = "STATUS")]
    pub statuses: Vec<RunStatus>,
    /// Only runs of this job.
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
    /// Only runs with this tag (repeatable: every one must match).
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    /// Only runs created since then: a duration back from now (`30m`, `2h`, `7d`, `1h30m`)
    /// or an RFC 3339 time (`2026-05-01T12:00:00Z`, or a date, `2026-05-01`).
    #[arg(long, value_name = "DURATION|TIME")]
    pub since: Option<Since>,
    /// How many runs at most (the newest).
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl RunsArgs {
    /// The run-store filter these arguments ask for, `now_us` being now (for `--since`).
    pub fn filter(&self, now_us: u64) -> RunFilter {
        let mut filter = RunFilter::new()
            .with_statuses(self.statuses.iter().copied())
            .with_limit(self.limit);
        if let Some(job) = &self.job {
            filter = filter.with_job(job);
        }
        for (key, value) in &self.tags {
            filter = filter.with_tag(key, value);
        }
        if let Some(since) = self.since {
            filter = filter.created_since(since.resolve(now_us));
        }
        filter
    }
}

/// Arguments of `stepq gc`: which finished runs to delete (every condition given must hold;
/// at least one must be given).
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Only runs that ended longer ago than this (`30m`, `2h`, `7d`, `1w`; `0s`: any age).
    #[arg(long, value_name = "DURATION", value_parser = parse_age)]
    pub older_than: Option<std::time::Duration>,
    /// Keep the N newest runs (of any status), whatever their age.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<usize>,
    /// Only runs in this status (repeatable, or comma-separated; SUCCESS, FAILURE or
    /// CANCELED, any case).
    #[arg(long = "status", value_delimiter = ',', value_name = "STATUS")]
    pub statuses: Vec<RunStatus>,
    /// Report what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

impl GcArgs {
    /// The policy these arguments ask for; a usage failure when none is given or a status
    /// is not a terminal one.
    pub(super) fn policy(&self) -> Result<stepq::retention::GcPolicy, Failure> {
        if let Some(status) = self.statuses.iter().find(|s| !s.is_terminal()) {
            return Err(Failure::usage(format!(
                "--status {status}: only finished runs (SUCCESS, FAILURE, CANCELED) are collected"
            )));
        }
        if self.older_than.is_none() && self.keep_last.is_none() && self.statuses.is_empty() {
            return Err(Failure::usage(
                "say which runs: --older-than DURATION, --keep-last N and/or --status S \
                 (--older-than 0s for every finished run)",
            ));
        }
        Ok(stepq::retention::GcPolicy {
            older_than: self.older_than,
            keep_last: self.keep_last,
            statuses: self.statuses.clone(),
        })
    }
}

fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    super::timestamps::parse_duration(text)
}

/// Arguments of `stepq cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The run id.
    pub run_id: String,
    /// Seconds to wait for the run to end CANCELED (0: return once the request is recorded).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub wait: f64,
    /// End a run stuck CANCELING (its orchestrator died) CANCELED at once, without its
    /// orchestrator. Only for a run already CANCELING.
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `stepq run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Job name.
    pub job: String,
    /// Run only these steps (comma-separated keys).
    #[arg(long, value_delimiter = ',', value_name = "STEP,...")]
    pub steps: Option<Vec<String>>,
    /// In-process workers (default: number of cores on the embedded default, 0 with a
    /// distributed config).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Run config handed to every op: JSON text, or @FILE to read it from a file.
    #[arg(long, value_name = "JSON")]
    pub run_config: Option<String>,
    /// Run id (default: a fresh UUID).
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
    /// While the run goes on, serve /healthz, /readyz and Prometheus /metrics of its
    /// in-process workers on ADDR (e.g. 127.0.0.1:9465).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,
    /// Priority level of the run's steps (a level of `[priority]`; a step's own
    /// `stepq/priority` tag wins). Stored as the run tag `stepq/priority`.
    #[arg(long, value_name = "LEVEL")]
    pub priority: Option<String>,
}

/// `stepq worker ...`.
#[derive(Debug, Subcommand)]
pub enum WorkerCommand {
    /// Run a worker until SIGTERM or Ctrl-C.
    Start(WorkerStartArgs),
    /// Show the task queue's depth and the workers' heartbeats.
    List {
        /// Print one JSON document instead of tables.
        #[arg(long)]
        json: bool,
    },
}

/// Arguments of `stepq worker start`.
#[derive(Debug, Args)]
pub struct WorkerStartArgs {
    /// Steps run at once (default: `worker.concurrency`, else the number of cores).
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// Worker name in logs, step events and results (default: `worker-HOST-PID`).
    #[arg(long)]
    pub name: Option<String>,
    /// Queues to consume: `default` and names of `[queues.NAME]` (default: `worker.queues`,
    /// else the default queue only).
    #[arg(long, value_delimiter = ',', value_name = "QUEUE,...")]
    pub queues: Option<Vec<String>>,
}

/// The `--run-config` value: JSON text, or `@FILE` for a file of JSON.
pub(super) fn parse_run_config(text: Option<&str>) -> Result<serde_json::Value, Failure> {
    let Some(text) = text else {
        return Ok(serde_json::Value::Null);
    };
    if let Some(path) = text.strip_prefix('@') {
        let body = std::fs::read_to_string(path)
            .map_err(|e| Failure::usage(format!("--run-config: cannot read `{path}`: {e}")))?;
        return serde_json::from_str(&body)
            .map_err(|e| Failure::usage(format!("--run-config: `{path}` is not valid JSON: {e}")));
    }
    serde_json::from_str(text)
        .map_err(|e| Failure::usage(format!("--run-config is not valid JSON: {e}")))
}

/// One `KEY=VALUE` tag (the value may hold `=`; the key is trimmed and not empty).
fn parse_tag(tag: &str) -> Result<(String, String), String> {
    match tag.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.to_string()))
        }
        _ => Err(format!("`{tag}` is not KEY=VALUE")),
    }
}

/// `KEY=VALUE` tags.
pub(super) fn parse_tags(tags: &[String]) -> Result<BTreeMap<String, String>, Failure> {
    tags.iter()
        .map(|tag| parse_tag(tag).map_err(|e| Failure::usage(format!("--tag {e}"))))
        .collect()
}

#[cfg(test)]
mod tests;
