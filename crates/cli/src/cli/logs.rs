//! `stepq logs`: a run's event log, one line per event (text, or JSON lines with `--json`),
//! optionally followed to the run's end.

use stepq::app::{App, AppError};
use stepq_runs::EventCursor;

use super::failure::Failure;
use super::json::{print_line, EventJson};
use super::LogsArgs;
use crate::report::format_timestamp;

/// One `stepq logs` line: the event's time and what it says.
fn log_line(event: &stepq_plan::Event) -> String {
    format!(
        "{} {}",
        format_timestamp(event.timestamp_us),
        crate::progress::describe_event(event)
    )
}

/// Prints one event as text or as a JSON line.
fn print_event(event: &stepq_plan::Event, json: bool) -> Result<(), Failure> {
    if json {
        print_line(&EventJson::from(event))
    } else {
        println!("{}", log_line(event));
        Ok(())
    }
}

pub(super) async fn show_logs(app: &App, args: LogsArgs) -> Result<u8, Failure> {
    use futures::StreamExt;
    let run_id = args.run_id.as_str();
    // An unknown run exits 2.
    let record = app.runs().get_run(run_id).await.map_err(AppError::from)?;
    if !args.follow {
        let events = stepq_executor::launcher::read_all_events(app.runs().as_ref(), run_id)
            .await
            .map_err(AppError::from)?;
        for event in &events {
            print_event(event, args.json)?;
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
        print_event(&event, args.json)?;
    }
    // JSON lines are events only: the run's last event says how it ended.
    if !args.json {
        let ended = app.runs().get_run(run_id).await.unwrap_or(record);
        println!("run {run_id} {}", ended.status);
    }
    Ok(0)
}
