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
mod tests {
    use super::*;
    use crate::cli::EXIT_USAGE;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_arguments_parse() {
        let cli = Cli::parse_from([
            "stepq",
            "run",
            "diamond",
            "--steps",
            "emit_values,add_one",
            "--workers",
            "3",
            "--run-config",
            "{\"sleep_ms\": 5}",
            "--config",
            "stepq.toml",
        ]);
        assert_eq!(cli.config, Some(PathBuf::from("stepq.toml")));
        let Command::Run(args) = cli.command else {
            panic!("not a run")
        };
        assert_eq!(args.job, "diamond");
        assert_eq!(args.steps.unwrap(), ["emit_values", "add_one"]);
        assert_eq!(args.workers, Some(3));
        assert_eq!(
            parse_run_config(args.run_config.as_deref()).unwrap()["sleep_ms"],
            5
        );
    }

    #[test]
    fn bad_run_config_is_a_usage_error() {
        let e = parse_run_config(Some("{nope")).unwrap_err();
        assert_eq!(e.code, EXIT_USAGE);
        assert!(e.message.contains("--run-config"), "{}", e.message);
        let e = parse_run_config(Some("@/nonexistent/config.json")).unwrap_err();
        assert_eq!(e.code, EXIT_USAGE);
        assert!(
            e.message.contains("/nonexistent/config.json"),
            "{}",
            e.message
        );
    }

    #[test]
    fn run_config_is_read_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rc.json");
        std::fs::write(&path, r#"{"sleep_ms": 7}"#).unwrap();
        let value = parse_run_config(Some(&format!("@{}", path.display()))).unwrap();
        assert_eq!(value["sleep_ms"], 7);
        std::fs::write(&path, "not json").unwrap();
        let e = parse_run_config(Some(&format!("@{}", path.display()))).unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
    }

    #[test]
    fn worker_arguments_parse() {
        let cli = Cli::parse_from([
            "stepq",
            "worker",
            "start",
            "--jobs-file",
            "a.toml",
            "--jobs-file",
            "b.toml",
            "--log-format",
            "json",
            "--concurrency",
            "4",
        ]);
        assert_eq!(cli.jobs_files.len(), 2);
        assert_eq!(cli.log_format, LogFormat::Json);
        assert!(matches!(
            cli.command,
            Command::Worker(WorkerCommand::Start(WorkerStartArgs {
                concurrency: Some(4),
                ..
            }))
        ));
    }

    #[test]
    fn cancel_arguments_parse() {
        let cli = Cli::parse_from(["stepq", "cancel", "run-1", "--wait", "0"]);
        let Command::Cancel(args) = cli.command else {
            panic!("not a cancel")
        };
        assert_eq!(args.run_id, "run-1");
        assert_eq!(args.wait, 0.0);
        let cli = Cli::parse_from(["stepq", "cancel", "run-2"]);
        assert!(
            matches!(cli.command, Command::Cancel(CancelArgs { wait, force: false, .. }) if wait == 30.0)
        );
        let cli = Cli::parse_from(["stepq", "cancel", "run-3", "--force"]);
        assert!(matches!(
            cli.command,
            Command::Cancel(CancelArgs { force: true, .. })
        ));
    }

    #[test]
    fn launch_resume_and_logs_arguments_parse() {
        let cli = Cli::parse_from([
            "stepq",
            "launch",
            "slow",
            "--steps",
            "slow_0,slow_1",
            "--run-config",
            "{\"sleep_ms\": 5}",
            "--run-id",
            "r1",
            "--tag",
            "owner=me",
            "--tag",
            "team=data=eng",
        ]);
        let Command::Launch(args) = cli.command else {
            panic!("not a launch")
        };
        assert_eq!(args.job, "slow");
        assert_eq!(args.steps.unwrap(), ["slow_0", "slow_1"]);
        assert_eq!(args.run_id.as_deref(), Some("r1"));
        let tags = parse_tags(&args.tags).unwrap();
        assert_eq!(tags["owner"], "me");
        assert_eq!(tags["team"], "data=eng");
        let e = parse_tags(&["nope".to_string()]).unwrap_err();
        assert_eq!(e.code, EXIT_USAGE);
        assert!(e.message.contains("KEY=VALUE"), "{}", e.message);

        let cli = Cli::parse_from(["stepq", "resume", "r1", "--force"]);
        assert!(matches!(
            cli.command,
            Command::Resume(ResumeArgs {
                force: true,
                here: false,
                workers: None,
                ..
            })
        ));
        let cli = Cli::parse_from(["stepq", "resume", "r1", "--here", "--workers", "3"]);
        assert!(matches!(
            cli.command,
            Command::Resume(ResumeArgs {
                force: false,
                here: true,
                workers: Some(3),
                ..
            })
        ));
        let cli = Cli::parse_from(["stepq", "logs", "r1", "-f"]);
        assert!(matches!(
            cli.command,
            Command::Logs(LogsArgs { follow: true, .. })
        ));
    }

    #[test]
    fn runs_filter_arguments_parse_into_a_run_filter() {
        let cli = Cli::parse_from([
            "stepq",
            "runs",
            "--status",
            "failure,CANCELED",
            "--status",
            "Success",
            "--job",
            "diamond",
            "--tag",
            "owner=me",
            "--tag",
            "team=data=eng",
            "--since",
            "2h",
            "--limit",
            "5",
            "--json",
        ]);
        let Command::Runs(args) = cli.command else {
            panic!("not runs")
        };
        assert!(args.json);
        let now = 10 * 3_600 * 1_000_000;
        let filter = args.filter(now);
        assert_eq!(
            filter.statuses,
            [RunStatus::Failure, RunStatus::Canceled, RunStatus::Success]
        );
        assert_eq!(filter.job_name.as_deref(), Some("diamond"));
        assert_eq!(
            filter.tags,
            [
                ("owner".to_string(), "me".to_string()),
                ("team".to_string(), "data=eng".to_string())
            ]
        );
        assert_eq!(filter.created_since, Some(8 * 3_600 * 1_000_000));
        assert_eq!(filter.limit, Some(5));

        let Command::Runs(args) = Cli::parse_from(["stepq", "runs"]).command else {
            panic!("not runs")
        };
        let filter = args.filter(now);
        assert_eq!(
            filter,
            RunFilter::new().with_limit(20),
            "the default limit stays 20"
        );
        assert!(!args.json);
        let Command::Runs(args) =
            Cli::parse_from(["stepq", "runs", "--since", "2026-05-01T12:00:00Z"]).command
        else {
            panic!("not runs")
        };
        assert_eq!(args.filter(now).created_since, Some(1_777_636_800_000_000));
    }

    #[test]
    fn bad_runs_filter_values_are_refused_by_the_parser() {
        for args in [
            ["stepq", "runs", "--status", "running"],
            ["stepq", "runs", "--tag", "nokey"],
            ["stepq", "runs", "--since", "5x"],
            ["stepq", "runs", "--since", "2026-02-30"],
            ["stepq", "runs", "--limit", "-1"],
        ] {
            let e = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn json_flags_parse_on_every_listing_command() {
        assert!(matches!(
            Cli::parse_from(["stepq", "status", "r1", "--json"]).command,
            Command::Status { json: true, .. }
        ));
        assert!(matches!(
            Cli::parse_from(["stepq", "jobs", "--json"]).command,
            Command::Jobs { json: true }
        ));
        assert!(matches!(
            Cli::parse_from(["stepq", "worker", "list", "--json"]).command,
            Command::Worker(WorkerCommand::List { json: true })
        ));
        assert!(matches!(
            Cli::parse_from(["stepq", "logs", "r1", "--follow", "--json"]).command,
            Command::Logs(LogsArgs {
                follow: true,
                json: true,
                ..
            })
        ));
    }
}
