//! `stepq status`: a run from the run store, step by step, with the workers holding its
//! in-flight steps; and the wall time of a recorded run.

use std::time::Duration;

use std::collections::BTreeMap;

use stepq::app::{App, AppError};
use stepq::config::Mode;
use stepq::protocol::QUEUE_TAG;
use stepq_plan::Job;
use stepq_runs::{RunRecord, WorkerHealth, WorkerState};
use stepq_worker::CodeLocation;

use super::failure::Failure;
use super::json::{print_document, RunJson, StatusDocument, StepJson};
use crate::report::{format_timestamp, human_duration, render_table, rows_from_events, StepRow};

/// Wall time of a recorded run (start to end), if both are known.
pub(super) async fn finished_elapsed(app: &App, run_id: &str) -> Option<Duration> {
    let record = app.runs().get_run(run_id).await.ok()?;
    record_duration(&record)
}

pub(super) fn record_duration(record: &RunRecord) -> Option<Duration> {
    let start = record.started_at?;
    let end = record.ended_at?;
    Some(Duration::from_micros(end.saturating_sub(start)))
}

pub(super) async fn show_status(
    app: &App,
    location: &CodeLocation,
    run_id: &str,
    json: bool,
) -> Result<u8, Failure> {
    let record = app.runs().get_run(run_id).await.map_err(AppError::from)?;
    let events = stepq_executor::launcher::read_all_events(app.runs().as_ref(), run_id)
        .await
        .map_err(AppError::from)?;
    let mut rows = rows_from_events(&events);
    let mut placed = place_steps(app, &record, &mut rows).await;
    if app.mode() == Mode::Distributed && !record.status.is_terminal() {
        if let (Some(job), Ok(workers)) = (
            location.job(&record.job_name),
            crate::health::worker_states(app).await,
        ) {
            placed.extend(unserved_queues(&job, &rows, &workers));
        }
    }
    if json {
        print_document(&StatusDocument {
            run: RunJson::from(&record),
            steps: rows.iter().map(StepJson::from).collect(),
            notes: placed,
        })?;
        return Ok(0);
    }
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
    print!("{}", render_table(&rows));
    if !placed.is_empty() {
        println!();
        placed.iter().for_each(|line| println!("{line}"));
    }
    Ok(0)
}

/// Places the run's in-flight steps on the workers holding them (from their heartbeats) and
/// returns the lines about them; a heartbeat store that cannot be read is a warning on stderr.
async fn place_steps(app: &App, record: &RunRecord, rows: &mut [StepRow]) -> Vec<String> {
    match crate::health::worker_states(app).await {
        Ok(workers) => crate::health::place_in_flight(
            &record.run_id,
            record.status.is_terminal(),
            rows,
            &workers,
            app.config().health_interval(),
            crate::health::visibility_timeout(app),
        ),
        Err(e) => {
            eprintln!("warning: cannot read the workers' heartbeats: {e}");
            Vec::new()
        }
    }
}

/// Lines about the run's sent steps that wait on a queue no live worker consumes (from the
/// workers' heartbeats; a heartbeat that names no queues consumes the default one).
fn unserved_queues(job: &Job, rows: &[StepRow], workers: &[WorkerState]) -> Vec<String> {
    const DEFAULT: &str = stepq::broker::routing::DEFAULT_QUEUE;
    let mut live: BTreeMap<&str, usize> = BTreeMap::new();
    for worker in workers.iter().filter(|w| w.health == WorkerHealth::Live) {
        if worker.heartbeat.queues.is_empty() {
            *live.entry(DEFAULT).or_default() += 1;
        }
        for queue in &worker.heartbeat.queues {
            *live.entry(queue.as_str()).or_default() += 1;
        }
    }
    let mut waiting: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.status == "QUEUED") {
        let queue = job
            .step(&row.step)
            .and_then(|s| s.tags.get(QUEUE_TAG))
            .map_or(DEFAULT, String::as_str);
        if !live.contains_key(queue) {
            waiting.entry(queue).or_default().push(&row.step);
        }
    }
    waiting
        .into_iter()
        .map(|(queue, steps)| {
            let what = match &steps[..] {
                [one] => format!("step {one} waits"),
                many => format!("steps {} wait", many.join(", ")),
            };
            format!(
                "{what} on queue `{queue}`: 0 live workers consume it (start one with \
                 `stepq worker start --queues {queue}`)"
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use stepq_plan::StepDef;
    use stepq_runs::WorkerHeartbeat;

    fn row(step: &str, status: &str) -> StepRow {
        let mut row = StepRow::queued(step);
        row.status = status.into();
        row
    }

    fn worker(queues: &[&str], health: WorkerHealth) -> WorkerState {
        let mut heartbeat = WorkerHeartbeat::new("w", "h", 1);
        heartbeat.queues = queues.iter().map(|q| q.to_string()).collect();
        WorkerState { heartbeat, health }
    }

    #[test]
    fn a_queued_step_on_a_queue_no_live_worker_consumes_is_named() {
        let job = Job::builder("ml")
            .step(StepDef::new("prep", "op"))
            .step(StepDef::new("train", "op").tag(QUEUE_TAG, "gpu"))
            .step(StepDef::new("eval", "op").tag(QUEUE_TAG, "gpu"))
            .build()
            .unwrap();
        let rows = [
            row("prep", "QUEUED"),
            row("train", "QUEUED"),
            row("eval", "QUEUED"),
        ];
        // An old heartbeat (no queues) serves the default queue; a lost gpu worker serves none.
        let workers = [
            worker(&[], WorkerHealth::Live),
            worker(&["gpu"], WorkerHealth::Lost),
        ];
        assert_eq!(
            unserved_queues(&job, &rows, &workers),
            [
                "steps train, eval wait on queue `gpu`: 0 live workers consume it (start one with \
              `stepq worker start --queues gpu`)"
            ]
        );
        let workers = [worker(&["gpu", "default"], WorkerHealth::Live)];
        assert!(unserved_queues(&job, &rows, &workers).is_empty());
        let running = [row("train", "RUNNING")];
        assert!(unserved_queues(&job, &running, &[]).is_empty());
    }
}
