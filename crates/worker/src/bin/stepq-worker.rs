//! `stepq-worker`: a worker service on SQS + S3 serving the jobs of TOML files.
//!
//! ```text
//! stepq-worker --config stepq.toml --jobs-file jobs.toml [--jobs-file more.toml]
//!              [--name NAME] [--concurrency N]
//! ```
//!
//! It reads the same `stepq.toml` as the `stepq` command line (`[sqs]`, `[s3]`, `[worker]`;
//! `STEPQ_CONFIG` names it when `--config` is not given; the `STEPQ_*` environment overrides
//! apply), serves the steps of the jobs in the files (a queue message names a job and a step,
//! never a command), writes its health heartbeat, listens for cancels, and stops gracefully on
//! SIGTERM or Ctrl-C. Logs go to stderr (`RUST_LOG` filters them; default `info`).
//!
//! A worker for jobs written in Rust is a binary of its own on its code location: see
//! `stepq_worker::service` and `examples/worker-service`. Runs submitted with `stepq launch`
//! are orchestrated by `stepq worker start` (crate `stepq-cli`), which also serves steps.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use stepq_worker::service::file::ServiceFile;
use stepq_worker::service::{host_name, serve, Backends, WorkerService};
use stepq_worker::{CodeLocation, ShellJobs};

/// The command line, parsed by hand: five options.
#[derive(Debug, Default)]
struct Args {
    config: Option<PathBuf>,
    jobs_files: Vec<PathBuf>,
    name: Option<String>,
    concurrency: Option<usize>,
    queues: Option<Vec<String>>,
}

const USAGE: &str = "usage: stepq-worker [--config stepq.toml] --jobs-file jobs.toml [--jobs-file ...] [--name NAME] [--concurrency N] [--queues default,gpu]";

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args::default();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.to_string());
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--config" => parsed.config = Some(value()?.into()),
            "--jobs-file" => parsed.jobs_files.push(value()?.into()),
            "--name" => parsed.name = Some(value()?),
            "--concurrency" => {
                let v = value()?;
                parsed.concurrency = Some(
                    v.parse()
                        .map_err(|_| format!("--concurrency `{v}` is not a number\n{USAGE}"))?,
                );
            }
            "--queues" => {
                parsed.queues = Some(value()?.split(',').map(|q| q.trim().to_string()).collect())
            }
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    if parsed.jobs_files.is_empty() {
        return Err(format!("no jobs: pass at least one --jobs-file\n{USAGE}"));
    }
    Ok(parsed)
}

/// Why the worker exited: it could not start (exit 2) or it failed while running (exit 1).
enum Exit {
    NotStarted(Box<dyn std::error::Error>),
    Failed(Box<dyn std::error::Error>),
}

impl<E: Into<Box<dyn std::error::Error>>> From<E> for Exit {
    fn from(e: E) -> Self {
        Exit::NotStarted(e.into())
    }
}

async fn run(mut args: Args) -> Result<(), Exit> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let config_path = args
        .config
        .clone()
        .or_else(|| env.get("STEPQ_CONFIG").map(PathBuf::from));
    let mut file = ServiceFile::load(config_path.as_deref(), &env)?;
    if let Some(queues) = args.queues.take() {
        file.worker.queues = Some(queues);
        file.validate()?;
    }
    let mut location = CodeLocation::builder().build()?;
    for path in &args.jobs_files {
        location = ShellJobs::load(path)?.extend(&location)?;
    }
    let name = args
        .name
        .unwrap_or_else(|| format!("worker-{}-{}", host_name(), std::process::id()));
    let mut settings = file.worker.service_settings(name)?;
    if let Some(n) = args.concurrency {
        settings.worker = settings.worker.with_concurrency(n);
    }
    let routing = file.routing()?;
    settings = settings.with_queues(routing.consumed());
    let backends =
        Backends::distributed_routed(&file.sqs, &file.s3, file.enable_cancellation, &routing)
            .await?
            .with_signer(file.signing.signer(&env)?);
    if let Some(sqs) = &backends.sqs {
        let visibility = u64::from(sqs.config().config_source.visibility_timeout);
        settings.worker = settings
            .worker
            .with_visibility_timeout(std::time::Duration::from_secs(visibility));
    }
    let service = WorkerService::new(Arc::new(location), backends.service_parts(true), settings)?;
    tracing::info!(worker = service.name(), "serving steps");
    match serve(service).await {
        Ok(_) => Ok(()),
        Err(e) if e.could_not_start() => Err(Exit::NotStarted(e.into())),
        Err(e) => Err(Exit::Failed(e.into())),
    }
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("stepq-worker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Exit::NotStarted(e)) => {
            eprintln!("stepq-worker: could not start: {e}");
            ExitCode::from(2)
        }
        Err(Exit::Failed(e)) => {
            eprintln!("stepq-worker: {e}");
            ExitCode::FAILURE
        }
    }
}
