//! The entry points (`main`, `main_from`, `run`): parsing the process arguments, the async
//! runtime, tracing, and handing each command to its module.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use stepq::app::make_app;
use stepq::config::{Mode, StateStore, StepqConfig};
use stepq_worker::shell::ShellJobs;
use stepq_worker::CodeLocation;

use super::cancel::cancel_run;
use super::failure::Failure;
use super::gc::collect_runs;
use super::jobs::print_jobs;
use super::launch::{launch_run, resume_run};
use super::logs::show_logs;
use super::report::write_run_report;
use super::run_job::run_job;
use super::runs::list_runs;
use super::status::show_status;
use super::worker::{list_workers, start_worker};
use super::{Cli, Command, LogFormat, WorkerCommand, EXIT_FAILURE};

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
    // Held to the end, so exported spans are flushed before the process exits.
    let _telemetry = init_tracing(cli.log_format, default_filter);
    match dispatch(cli, location).await {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// What keeps span export going until dropped (nothing without the `otel` feature).
#[cfg(feature = "otel")]
type TelemetryGuard = Option<stepq_otel::OtelGuard>;
/// What keeps span export going until dropped (nothing without the `otel` feature).
#[cfg(not(feature = "otel"))]
type TelemetryGuard = Option<std::convert::Infallible>;

/// Sets up tracing to stderr: the filter of RUST_LOG, else `default_filter`. Built with the
/// `otel` feature and with `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans are also exported there
/// (OTLP/HTTP; see `stepq_otel`).
fn init_tracing(format: LogFormat, default_filter: &str) -> TelemetryGuard {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let subscriber = tracing_subscriber::registry().with(filter).with(fmt);
    #[cfg(feature = "otel")]
    {
        let exported = std::env::var_os(stepq_otel::ENDPOINT_ENV).is_some();
        let (layer, guard) = match exported.then(|| stepq_otel::init("stepq")) {
            Some(Ok((layer, guard))) => (Some(layer), Some(guard)),
            Some(Err(e)) => {
                eprintln!("warning: {e}; spans are not exported");
                (None, None)
            }
            None => (None, None),
        };
        let _ = subscriber.with(layer).try_init();
        guard
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = subscriber.try_init();
        None
    }
}

async fn dispatch(cli: Cli, base: CodeLocation) -> Result<u8, Failure> {
    let mut config =
        StepqConfig::load_with_process_env(cli.config.as_deref()).map_err(Failure::usage)?;
    if let Command::Worker(WorkerCommand::Start(args)) = &cli.command {
        // A worker process consumes `--queues`, else `worker.queues`, else the default queue.
        let queues = args
            .queues
            .clone()
            .or_else(|| config.worker.queues.clone())
            .unwrap_or_else(|| vec![stepq::broker::routing::DEFAULT_QUEUE.to_string()]);
        config.worker.queues = Some(queues);
        config.validate().map_err(Failure::usage)?;
    }
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
        Command::Jobs { json } => print_jobs(&base, &files, json),
        command => {
            if config.mode() == Mode::Embedded && config.state_store == StateStore::Sqlite {
                // Said on every run until the old directories are gone or kept on purpose.
                if let Some(notice) = stepq_sqlite::old_layout_notice(&config.state_dir) {
                    eprintln!("warning: {notice}");
                }
            }
            let app = make_app(&config)
                .await
                .map_err(Failure::usage)?
                .with_process_probe(Arc::new(crate::process::process_runs));
            match command {
                Command::Jobs { .. } => unreachable!("handled above"),
                Command::Run(args) => run_job(&app, location, args).await,
                Command::Status { run_id, json } => {
                    show_status(&app, &location, &run_id, json).await
                }
                Command::Runs(args) => list_runs(&app, &args).await,
                Command::Cancel(args) => cancel_run(&app, args).await,
                Command::Gc(args) => collect_runs(&app, &args).await,
                Command::Launch(args) => launch_run(&app, &location, args).await,
                Command::Resume(args) => resume_run(&app, location, args).await,
                Command::Logs(args) => show_logs(&app, args).await,
                Command::Report(args) => write_run_report(&app, &location, args).await,
                Command::Worker(WorkerCommand::Start(args)) => {
                    start_worker(&app, location, args).await
                }
                Command::Worker(WorkerCommand::List { json }) => list_workers(&app, json).await,
                Command::Dlq(command) => super::dlq::dlq(&app, command).await,
            }
        }
    }
}
