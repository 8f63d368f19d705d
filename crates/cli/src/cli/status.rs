//! `stepq status`: a run from the run store, step by step, with the workers holding its
//! in-flight steps; and the wall time of a recorded run.

use std::time::Duration;

use stepq::app::{App, AppError};
use stepq_runs::RunRecord;

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

pub(super) async fn show_status(app: &App, run_id: &str, json: bool) -> Result<u8, Failure> {
    let record = app.runs().get_run(run_id).await.map_err(AppError::from)?;
    let events = stepq_executor::launcher::read_all_events(app.runs().as_ref(), run_id)
        .await
        .map_err(AppError::from)?;
    let mut rows = rows_from_events(&events);
    let placed = place_steps(app, &record, &mut rows).await;
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
