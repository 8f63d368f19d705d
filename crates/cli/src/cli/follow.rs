//! Following a run orchestrated by this process (`stepq run`, and `stepq resume` on the
//! embedded default or with `--here`): in-process workers, live progress, the summary, and
//! the exit code.

use std::io::IsTerminal;
use std::sync::Arc;

use stepq_executor::RunStatus;
use stepq_worker::CodeLocation;

use super::failure::Failure;
use super::run_job::spawn_interrupt_handler;
use super::status::finished_elapsed;
use super::{ResumeArgs, EXIT_FAILURE, EXIT_INTERRUPTED, SUMMARY_MAX_ROWS};
use crate::progress::Progress;
use crate::report::{final_steps, human_duration, output_lines, render_table, rows_from_events};
use stepq::app::{App, LaunchedRun, LocalWorkers};
use stepq::config::{default_parallelism, Mode};

/// How many in-process workers `--workers` asks for (default: the number of cores on the
/// embedded default, 0 with a distributed config); 0 on the embedded default is a usage
/// error (nothing would run the steps).
pub(super) fn in_process_workers(app: &App, requested: Option<usize>) -> Result<usize, Failure> {
    let workers = requested.unwrap_or(match app.mode() {
        Mode::Embedded => default_parallelism(),
        Mode::Distributed => 0,
    });
    if app.mode() == Mode::Embedded && workers == 0 {
        return Err(Failure::usage(
            "--workers 0 on the embedded default: nothing would run the steps (the in-memory queue is not shared between processes)",
        ));
    }
    Ok(workers)
}

/// Where the steps run: `4 in-process workers, state in .stepq` / `SQS, 0 in-process workers`.
pub(super) fn where_steps_run(app: &App, workers: usize) -> String {
    match app.mode() {
        Mode::Embedded => format!(
            "{workers} in-process workers, state in {}",
            app.config().state_dir.display()
        ),
        Mode::Distributed => format!("SQS, {workers} in-process workers"),
    }
}

/// Follows `run` (started by `what`, e.g. `run` or `resuming run`) to its end: a headline,
/// live progress (Ctrl-C interrupts it), then stops the in-process workers `local`, prints the
/// summary table, the final outputs and the run's status line. Exits 0 on success, 1 on
/// failure, 130 when canceled.
pub(super) async fn follow_run(
    app: &App,
    mut run: LaunchedRun,
    local: Option<LocalWorkers>,
    what: &str,
    where_: &str,
) -> u8 {
    let steps = run.step_count();
    let ctrl_c = spawn_interrupt_handler(run.interrupt_token());
    println!(
        "{what} {} of job `{}`: {steps} step{} ({where_})",
        run.run_id(),
        run.job().name(),
        if steps == 1 { "" } else { "s" }
    );
    let mut progress = Progress::new(steps, std::io::stdout().is_terminal());
    // What this process saw, for the summary should the run's log not be readable.
    let mut seen = Vec::new();
    if let Some(mut events) = run.events() {
        while let Some(event) = events.recv().await {
            progress.on_event(&event);
            seen.push(event);
        }
    }
    progress.finish();
    let finished = run.wait().await;
    ctrl_c.abort();
    if let Some(local) = local {
        if let Err(e) = local.shutdown().await {
            eprintln!("warning: an in-process worker stopped with an error: {e}");
        }
    }
    let _ = app.shutdown().await;
    let result = &finished.result;
    let elapsed = finished_elapsed(app, &result.run_id).await;
    println!();
    // The table `stepq status` shows: rows from the run's log (earlier attempts of a resumed
    // run included).
    let events = match stepq_executor::launcher::read_all_events(
        app.runs().as_ref(),
        &result.run_id,
    )
    .await
    {
        Ok(events) => events,
        Err(e) => {
            eprintln!("warning: cannot read the run's events back ({e}); the summary shows this process's");
            seen
        }
    };
    let rows = rows_from_events(&events);
    if rows.len() <= SUMMARY_MAX_ROWS {
        print!("{}", render_table(&rows));
    } else {
        let (ok, other): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| r.status == "SUCCEEDED");
        if !other.is_empty() {
            print!(
                "{}",
                render_table(&other[..other.len().min(SUMMARY_MAX_ROWS)])
            );
        }
        println!(
            "{} steps succeeded{} (every step: stepq status {})",
            ok.len(),
            if other.len() > SUMMARY_MAX_ROWS {
                format!(", {} more did not", other.len() - SUMMARY_MAX_ROWS)
            } else {
                String::new()
            },
            result.run_id
        );
    }
    let finals = final_steps(&finished.job, result);
    let outputs = output_lines(&finished.job, result, app.outputs().as_ref(), &finals, 10).await;
    if !outputs.is_empty() {
        println!();
        println!("outputs:");
        for line in outputs {
            println!("  {line}");
        }
    }
    println!();
    println!(
        "run {} {}{}",
        result.run_id,
        result.status,
        elapsed
            .map(|d| format!(" in {}", human_duration(d)))
            .unwrap_or_default()
    );
    if let Err(e) = &finished.recorded {
        eprintln!("warning: the run store missed part of this run: {e}");
    }
    match result.status {
        RunStatus::Success => 0,
        RunStatus::Failure => EXIT_FAILURE,
        RunStatus::Canceled => EXIT_INTERRUPTED,
    }
}

/// Starts the app, `workers` in-process workers (none for 0), and an executor whose cancel
/// hook reaches them: what a run orchestrated by this process needs.
pub(super) async fn start_here(
    app: &App,
    location: &Arc<CodeLocation>,
    workers: usize,
) -> Result<(Option<LocalWorkers>, stepq_executor::Executor), Failure> {
    start_here_observed(app, location, workers, None).await
}

/// [`start_here`], the in-process workers told to `observer` when given.
pub(super) async fn start_here_observed(
    app: &App,
    location: &Arc<CodeLocation>,
    workers: usize,
    observer: Option<Arc<dyn stepq_worker::WorkerObserver>>,
) -> Result<(Option<LocalWorkers>, stepq_executor::Executor), Failure> {
    app.startup().await?;
    let local = if workers > 0 {
        Some(app.start_local_workers_observed(location.clone(), workers, observer)?)
    } else {
        None
    };
    let executor = app.executor(local.as_ref().map(|l| l.cancel_hook()))?;
    Ok((local, executor))
}

/// `stepq resume RUN_ID` orchestrated by this process (the embedded default, or `--here`):
/// `--workers` in-process workers, then [`follow_run`] like `stepq run`. A takeover from a
/// lost orchestrator is said on stderr.
pub(super) async fn resume_here(
    app: &App,
    location: Arc<CodeLocation>,
    args: ResumeArgs,
) -> Result<u8, Failure> {
    let workers = in_process_workers(app, args.workers)?;
    let (local, executor) = start_here(app, &location, workers).await?;
    let run = match app
        .resume_here(&executor, &location, &args.run_id, args.force)
        .await
    {
        Ok(run) => run,
        Err(e) => {
            if let Some(local) = local {
                let _ = local.shutdown().await;
            }
            return Err(e.into());
        }
    };
    if let Some(lost) = run.taken_over_from() {
        eprintln!("{lost}");
    }
    let where_ = where_steps_run(app, workers);
    Ok(follow_run(app, run, local, "resuming run", &where_).await)
}
