//! `stepq run`: a job orchestrated by this process, and the Ctrl-C handling of a run followed
//! here.

use std::collections::BTreeMap;
use std::sync::Arc;
use stepq_worker::http::{HttpListener, WorkerMetrics};

use stepq::app::{find_job, App, RunOptions};
use stepq_plan::{ExecutionPlan, KnownState};
use stepq_worker::CodeLocation;
use tokio_util::sync::CancellationToken;

use super::args::parse_run_config;
use super::failure::Failure;
use super::follow;
use super::{RunArgs, EXIT_INTERRUPTED};

/// Listens for Ctrl-C (from the moment it returns): the first interrupts the run, the second
/// exits at once with 130.
pub(super) fn spawn_interrupt_handler(interrupt: CancellationToken) -> tokio::task::JoinHandle<()> {
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

pub(super) async fn run_job(
    app: &App,
    location: Arc<CodeLocation>,
    args: RunArgs,
) -> Result<u8, Failure> {
    let job = find_job(&location, &args.job)?;
    let run_config = parse_run_config(args.run_config.as_deref())?;
    ExecutionPlan::new(job.clone(), args.steps.as_deref(), &KnownState::default())
        .map_err(Failure::usage)?;
    let workers = follow::in_process_workers(app, args.workers)?;
    let http = match args.http {
        Some(address) => {
            let metrics = Arc::new(WorkerMetrics::new());
            let broker = app.queue().broker().clone();
            let listener = HttpListener::start(address, metrics.clone(), broker)
                .await
                .map_err(Failure::usage)?;
            eprintln!(
                "serving /healthz, /readyz and /metrics on http://{}",
                listener.address()
            );
            Some((metrics, listener))
        }
        None => None,
    };
    let observer = http
        .as_ref()
        .map(|(metrics, _)| metrics.clone() as Arc<dyn stepq_worker::WorkerObserver>);
    let (local, executor) = follow::start_here_observed(app, &location, workers, observer).await?;
    let options = RunOptions {
        run_id: args.run_id,
        step_selection: args.steps,
        run_config,
        tags: super::launch::with_priority(BTreeMap::new(), args.priority.clone()),
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
    let code = follow::follow_run(app, run, local, "run", &where_).await;
    if let Some((_, listener)) = http {
        listener.stop().await;
    }
    super::gc::apply_retention(app).await;
    Ok(code)
}
