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
//! - `stepq logs RUN_ID [--follow]`: the run's event log, one line per event; `--follow`
//!   keeps printing until the run ends.
//! - `stepq jobs`: the jobs of the code location and the jobs files.
//! - `stepq status RUN_ID`: a run from the run store, step by step, with the worker holding
//!   each in-flight step (from the workers' health heartbeats) and a line for each step that
//!   sits on a lost worker.
//! - `stepq runs [--limit N]`: the latest runs.
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
//! - `stepq worker list`: queue depth of the task queue (distributed), and every worker with a
//!   health heartbeat: live, or LOST once silent for three `worker.health_interval_seconds`.
//!
//! Exit code 2 means the command could not start (bad arguments, config, jobs file, unknown
//! job or run).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use stepq_plan::{ExecutionPlan, KnownState};
use stepq_runs::{EventCursor, RunRecord, StorageError};
use stepq_worker::CodeLocation;
use tokio_util::sync::CancellationToken;

use stepq::app::{find_job, make_app, App, AppError, RunOptions};
use stepq::config::{Mode, StepqConfig};
use stepq_worker::service::host_name;
use stepq_worker::shell::{ShellJobs, TomlJobsError};

pub use crate::report::format_timestamp;
use crate::report::{human_duration, render_table, rows_from_events};

/// Exit code of a run that failed (and of runtime errors).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code when a command could not start: bad arguments, config, jobs file, unknown name.
pub const EXIT_USAGE: u8 = 2;
/// Exit code of an interrupted run (128 + SIGINT).
pub const EXIT_INTERRUPTED: u8 = 130;

mod follow;

/// Runs with more steps than this get a condensed summary.
pub const SUMMARY_MAX_ROWS: usize = 40;

/// How often `stepq worker start` writes its health heartbeat unless
/// `worker.health_interval_seconds` says otherwise.
pub const HEARTBEAT_INTERVAL: Duration = stepq_worker::health::DEFAULT_HEALTH_INTERVAL;

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
    /// List the jobs of the code location and the jobs files.
    Jobs,
    /// Show a run, step by step, from the run store.
    Status {
        /// The run id.
        run_id: String,
    },
    /// List the latest runs.
    Runs {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Cancel a run: it goes CANCELING, its orchestrator cancels its steps, it ends CANCELED.
    Cancel(CancelArgs),
    /// Run or inspect workers.
    #[command(subcommand)]
    Worker(WorkerCommand),
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
}

/// `stepq worker ...`.
#[derive(Debug, Subcommand)]
pub enum WorkerCommand {
    /// Run a worker until SIGTERM or Ctrl-C.
    Start(WorkerStartArgs),
    /// Show the task queue's depth and the workers' heartbeats.
    List,
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

/// Why a command failed, and which exit code that gives.
#[derive(Debug)]
struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    fn usage(message: impl std::fmt::Display) -> Self {
        Failure {
            message: message.to_string(),
            code: EXIT_USAGE,
        }
    }

    fn runtime(message: impl std::fmt::Display) -> Self {
        Failure {
            message: message.to_string(),
            code: EXIT_FAILURE,
        }
    }
}

impl From<AppError> for Failure {
    fn from(e: AppError) -> Self {
        match e {
            AppError::Config(_)
            | AppError::UnknownJob { .. }
            | AppError::Executor(_)
            | AppError::NotDistributed { .. } => Failure::usage(e),
            AppError::Launch(stepq_executor::LaunchError::UnknownJob { .. }) => Failure::usage(e),
            AppError::Storage(StorageError::RunNotFound { .. }) => Failure::usage(e),
            other => Failure::runtime(other),
        }
    }
}

impl From<TomlJobsError> for Failure {
    fn from(e: TomlJobsError) -> Self {
        Failure::usage(e)
    }
}

/// Parses the process arguments and runs the command on a new multi-threaded runtime.
///
/// On Unix, a closed stdout (`stepq logs RUN | head`) ends the process quietly, as it does for
/// other command-line tools, instead of a "failed printing to stdout" panic.
pub fn main(location: CodeLocation) -> ExitCode {
    crate::process::restore_default_sigpipe();
    main_from(location, std::env::args_os())
}

/// Rust ignores SIGPIPE, so writing to a closed pipe is an error, which `println!` turns into
/// a panic; a command-line tool should just end instead.
/// Like [`main`], with the given arguments (the first is the program name).
pub fn main_from<I, T>(location: CodeLocation, args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    runtime.block_on(run(cli, location))
}

/// Runs a parsed command line.
pub async fn run(cli: Cli, location: CodeLocation) -> ExitCode {
    // A run shows step failures itself; a worker service logs what it does.
    let default_filter = match &cli.command {
        Command::Worker(WorkerCommand::Start(_)) => "info",
        _ => "error",
    };
    init_tracing(cli.log_format, default_filter);
    match dispatch(cli, location).await {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// Sets up tracing to stderr: the filter of RUST_LOG, else `default_filter`.
fn init_tracing(format: LogFormat, default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

async fn dispatch(cli: Cli, base: CodeLocation) -> Result<u8, Failure> {
    let config =
        StepqConfig::load_with_process_env(cli.config.as_deref()).map_err(Failure::usage)?;
    let files = cli
        .jobs_files
        .iter()
        .map(|p| ShellJobs::load(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut location = base.clone();
    for file in &files {
        location = file.extend(&location)?;
    }
    let location = Arc::new(location);
    match cli.command {
        Command::Jobs => {
            print_jobs(&base, &files);
            Ok(0)
        }
        command => {
            let app = make_app(&config)
                .await
                .map_err(Failure::usage)?
                .with_process_probe(Arc::new(crate::process::process_runs));
            match command {
                Command::Jobs => unreachable!("handled above"),
                Command::Run(args) => run_job(&app, location, args).await,
                Command::Status { run_id } => show_status(&app, &run_id).await,
                Command::Runs { limit } => list_runs(&app, limit).await,
                Command::Cancel(args) => cancel_run(&app, args).await,
                Command::Launch(args) => launch_run(&app, &location, args).await,
                Command::Resume(args) => resume_run(&app, location, args).await,
                Command::Logs(args) => show_logs(&app, args).await,
                Command::Worker(WorkerCommand::Start(args)) => {
                    start_worker(&app, location, args).await
                }
                Command::Worker(WorkerCommand::List) => list_workers(&app).await,
            }
        }
    }
}

fn print_jobs(base: &CodeLocation, files: &[ShellJobs]) {
    let mut rows: Vec<[String; 4]> = base
        .jobs()
        .map(|job| {
            [
                job.name().to_string(),
                job.steps().len().to_string(),
                "code location".to_string(),
                String::new(),
            ]
        })
        .collect();
    for file in files {
        for job in file.jobs() {
            rows.push([
                job.job.name().to_string(),
                job.job.steps().len().to_string(),
                file.path().display().to_string(),
                job.description.clone().unwrap_or_default(),
            ]);
        }
    }
    print!(
        "{}",
        simple_table(["JOB", "STEPS", "SOURCE", "DESCRIPTION"], &rows)
    );
}

/// An aligned table; the last column is not padded.
pub(crate) fn simple_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            text.push_str(cell);
            if i + 1 < N {
                text.push_str(&" ".repeat(w - cell.chars().count() + 2));
            }
        }
        format!("{}\n", text.trim_end())
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// The `--run-config` value: JSON text, or `@FILE` for a file of JSON.
fn parse_run_config(text: Option<&str>) -> Result<serde_json::Value, Failure> {
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

/// Listens for Ctrl-C (from the moment it returns): the first interrupts the run, the second
/// exits at once with 130.
fn spawn_interrupt_handler(interrupt: CancellationToken) -> tokio::task::JoinHandle<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut sigint) = signal(SignalKind::interrupt()) {
            return tokio::spawn(async move {
                if sigint.recv().await.is_none() {
                    return;
                }
                eprintln!("\ninterrupting the run (press Ctrl-C again to exit at once)");
                interrupt.cancel();
                if sigint.recv().await.is_some() {
                    eprintln!("exiting without waiting for the run");
                    std::process::exit(i32::from(EXIT_INTERRUPTED));
                }
            });
        }
    }
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        eprintln!("\ninterrupting the run (press Ctrl-C again to exit at once)");
        interrupt.cancel();
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("exiting without waiting for the run");
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
    })
}

async fn run_job(app: &App, location: Arc<CodeLocation>, args: RunArgs) -> Result<u8, Failure> {
    let job = find_job(&location, &args.job)?;
    let run_config = parse_run_config(args.run_config.as_deref())?;
    ExecutionPlan::new(job.clone(), args.steps.as_deref(), &KnownState::default())
        .map_err(Failure::usage)?;
    let workers = follow::in_process_workers(app, args.workers)?;
    let (local, executor) = follow::start_here(app, &location, workers).await?;
    let options = RunOptions {
        run_id: args.run_id,
        step_selection: args.steps,
        run_config,
        tags: BTreeMap::new(),
    };
    let run = match app.launch(&executor, &location, job.name(), options).await {
        Ok(run) => run,
        Err(e) => {
            if let Some(local) = local {
                let _ = local.shutdown().await;
            }
            return Err(e.into());
        }
    };
    let where_ = follow::where_steps_run(app, workers);
    Ok(follow::follow_run(app, run, local, "run", &where_).await)
}

/// Wall time of a recorded run (start to end), if both are known.
async fn finished_elapsed(app: &App, run_id: &str) -> Option<Duration> {
    let record = app.runs().get_run(run_id).await.ok()?;
    record_duration(&record)
}

fn record_duration(record: &RunRecord) -> Option<Duration> {
    let start = record.started_at?;
    let end = record.ended_at?;
    Some(Duration::from_micros(end.saturating_sub(start)))
}

async fn show_status(app: &App, run_id: &str) -> Result<u8, Failure> {
    let record = app.runs().get_run(run_id).await.map_err(AppError::from)?;
    let events = stepq_executor::launcher::read_all_events(app.runs().as_ref(), run_id)
        .await
        .map_err(AppError::from)?;
    println!("run:          {}", record.run_id);
    println!("job:          {}", record.job_name);
    println!("status:       {}", record.status);
    println!("created:      {}", format_timestamp(record.created_at));
    if let Some(d) = record_duration(&record) {
        println!("duration:     {}", human_duration(d));
    }
    if let Some(o) = &record.orchestrator {
        println!("orchestrator: {o}");
    }
    if let Some(steps) = &record.step_selection {
        println!("steps:        {}", steps.join(", "));
    }
    println!();
    let mut rows = rows_from_events(&events);
    let placed = match crate::health::worker_states(app).await {
        Ok(workers) => crate::health::place_in_flight(
            run_id,
            record.status.is_terminal(),
            &mut rows,
            &workers,
            app.config().health_interval(),
            crate::health::visibility_timeout(app),
        ),
        Err(e) => {
            eprintln!("warning: cannot read the workers' heartbeats: {e}");
            Vec::new()
        }
    };
    print!("{}", render_table(&rows));
    if !placed.is_empty() {
        println!();
        placed.iter().for_each(|line| println!("{line}"));
    }
    Ok(0)
}

/// `KEY=VALUE` tags.
fn parse_tags(tags: &[String]) -> Result<BTreeMap<String, String>, Failure> {
    tags.iter()
        .map(|tag| match tag.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                Ok((key.trim().to_string(), value.to_string()))
            }
            _ => Err(Failure::usage(format!("--tag `{tag}` is not KEY=VALUE"))),
        })
        .collect()
}

async fn launch_run(app: &App, location: &CodeLocation, args: LaunchArgs) -> Result<u8, Failure> {
    let job = find_job(location, &args.job)?;
    let options = RunOptions {
        run_id: args.run_id,
        step_selection: args.steps,
        run_config: parse_run_config(args.run_config.as_deref())?,
        tags: parse_tags(&args.tags)?,
    };
    ExecutionPlan::new(
        job.clone(),
        options.step_selection.as_deref(),
        &KnownState::default(),
    )
    .map_err(Failure::usage)?;
    if app.mode() == Mode::Embedded {
        return Err(AppError::NotDistributed {
            what: "`stepq launch` (a worker must pick the run up; use `stepq run` on the embedded default)",
        }
        .into());
    }
    app.startup().await?;
    let submitted = app.submit_run(location, job.name(), options).await;
    let _ = app.shutdown().await;
    let submitted = submitted?;
    println!("{}", submitted.run_id);
    eprintln!(
        "run {} of job `{}` queued: `stepq logs {} --follow` follows it",
        submitted.run_id,
        job.name(),
        submitted.run_id
    );
    Ok(0)
}

async fn resume_run(
    app: &App,
    location: Arc<CodeLocation>,
    args: ResumeArgs,
) -> Result<u8, Failure> {
    if app.mode() == Mode::Embedded || args.here {
        return follow::resume_here(app, location, args).await;
    }
    let lost = app.check_takeover(&args.run_id, args.force).await?;
    if let Some(lost) = &lost {
        eprintln!("{lost}");
    }
    app.startup().await?;
    let submitted = app
        .submit_resume(&args.run_id, args.force || lost.is_some())
        .await;
    let _ = app.shutdown().await;
    let submitted = submitted?;
    println!("{}", submitted.run_id);
    eprintln!(
        "run {} queued for resume: `stepq logs {} --follow` follows it",
        submitted.run_id, submitted.run_id
    );
    Ok(0)
}

/// One `stepq logs` line: the event's time and what it says.
fn log_line(event: &stepq_plan::Event) -> String {
    format!(
        "{} {}",
        format_timestamp(event.timestamp_us),
        crate::progress::describe_event(event)
    )
}

async fn show_logs(app: &App, args: LogsArgs) -> Result<u8, Failure> {
    use futures::StreamExt;
    let run_id = args.run_id.as_str();
    // An unknown run exits 2.
    let record = app.runs().get_run(run_id).await.map_err(AppError::from)?;
    if !args.follow {
        let events = stepq_executor::launcher::read_all_events(app.runs().as_ref(), run_id)
            .await
            .map_err(AppError::from)?;
        for event in &events {
            println!("{}", log_line(event));
        }
        return Ok(0);
    }
    let runs = app.runs().clone();
    let mut events = std::pin::pin!(stepq_executor::storage::follow_events(
        runs.as_ref(),
        run_id,
        EventCursor::START
    ));
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| Failure::runtime(AppError::from(e)))?;
        println!("{}", log_line(&event));
    }
    let ended = app.runs().get_run(run_id).await.unwrap_or(record);
    println!("run {run_id} {}", ended.status);
    Ok(0)
}

async fn list_runs(app: &App, limit: usize) -> Result<u8, Failure> {
    let runs = app.runs().list_runs(limit).await.map_err(AppError::from)?;
    let rows: Vec<[String; 5]> = runs
        .iter()
        .map(|r| {
            [
                r.run_id.clone(),
                r.job_name.clone(),
                r.status.to_string(),
                format_timestamp(r.created_at),
                record_duration(r)
                    .map(human_duration)
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print!(
        "{}",
        simple_table(["RUN ID", "JOB", "STATUS", "CREATED", "DURATION"], &rows)
    );
    Ok(0)
}

/// Longest pause between two reads of the run record while `stepq cancel` waits for the run
/// to end (another process's writes cannot be awaited).
const CANCEL_WAIT_MAX_DELAY: Duration = Duration::from_millis(500);

async fn cancel_run(app: &App, args: CancelArgs) -> Result<u8, Failure> {
    if !(args.wait.is_finite() && args.wait >= 0.0) {
        return Err(Failure::usage(format!(
            "--wait must be a number of seconds >= 0, got {}",
            args.wait
        )));
    }
    let run_id = args.run_id.as_str();
    if args.force {
        let record = app.force_cancel(run_id).await?;
        println!("run {run_id} {} (forced)", record.status);
        return Ok(0);
    }
    // An unknown run exits 2, one that already ended 1 (see `From<AppError> for Failure`).
    let record = app.request_cancel(run_id).await?;
    if record.status.is_terminal() {
        println!("run {run_id} {}", record.status);
        return Ok(0);
    }
    // Nobody would act on CANCELING for an orchestrator shown dead: end the run here.
    if let Some(orchestrator) = record.orchestrator.as_deref() {
        if let Ok(lost) = app
            .control()
            .orchestrator_state(orchestrator)
            .await
            .map_err(AppError::from)?
        {
            eprintln!("{}: ending the run without it", lost.evidence());
            let ended = app.force_cancel(run_id).await?;
            println!("run {run_id} {}", ended.status);
            return Ok(0);
        }
    }
    println!(
        "run {run_id} {}: its orchestrator{} cancels its steps",
        record.status,
        record
            .orchestrator
            .as_deref()
            .map(|o| format!(" ({o})"))
            .unwrap_or_default()
    );
    if args.wait == 0.0 {
        return Ok(0);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.wait);
    let mut delay = Duration::from_millis(25);
    loop {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(Failure::runtime(format!(
                "run {run_id} is still CANCELING after {}s: is its orchestrator{} still running? (`stepq status {run_id}`; if it died, `stepq cancel {run_id} --force` ends the run)",
                args.wait,
                record
                    .orchestrator
                    .as_deref()
                    .map(|o| format!(" {o}"))
                    .unwrap_or_default()
            )));
        }
        tokio::time::sleep(delay.min(deadline - now)).await;
        delay = (delay * 2).min(CANCEL_WAIT_MAX_DELAY);
        let current = app.runs().get_run(run_id).await.map_err(AppError::from)?;
        if current.status.is_terminal() {
            println!("run {run_id} {}", current.status);
            return Ok(0);
        }
    }
}

async fn start_worker(
    app: &App,
    location: Arc<CodeLocation>,
    args: WorkerStartArgs,
) -> Result<u8, Failure> {
    if app.mode() == Mode::Embedded {
        return Err(AppError::NotDistributed {
            what: "`stepq worker start`",
        }
        .into());
    }
    let name = args
        .name
        .unwrap_or_else(|| format!("worker-{}-{}", host_name(), std::process::id()));
    let mut config = app.worker_config(name.clone());
    if let Some(n) = args.concurrency {
        config = config.with_concurrency(n);
    }
    let service = app
        .worker_service(location, config, true)
        .map_err(Failure::usage)?;
    // Health heartbeats until the worker has stopped (its grace period included); the queue's
    // shutdown also ends the cancel subscription (deleting the worker's SQS inbox).
    match stepq_worker::service::serve(service).await {
        Ok(_) => Ok(0),
        Err(e) => Err(Failure::runtime(e)),
    }
}

async fn list_workers(app: &App) -> Result<u8, Failure> {
    if app.mode() == Mode::Embedded {
        println!("task queue: in memory, inside each `stepq run` process (embedded default)");
    } else {
        let depth = app.queue_depth().await?;
        let url = app.config().sqs.queue_url.clone().unwrap_or_default();
        print!(
            "{}",
            simple_table(
                ["QUEUE", "URL", "VISIBLE", "NOT VISIBLE", "DELAYED"],
                &[[
                    "task".to_string(),
                    url,
                    depth.visible.to_string(),
                    depth.not_visible.to_string(),
                    depth.delayed.to_string(),
                ]],
            )
        );
    }
    let workers = crate::health::worker_states(app)
        .await
        .map_err(AppError::from)?;
    println!();
    print!(
        "{}",
        crate::health::render_workers(
            &workers,
            stepq_plan::events::now_us(),
            app.config().health_interval()
        )
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn tables_align() {
        let t = simple_table(["A", "BB"], &[["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxyz  1\n");
    }
}
