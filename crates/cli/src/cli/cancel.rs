//! `stepq cancel`: asking for a run to be canceled (or forcing a stuck one to CANCELED), and
//! waiting for it to end.

use std::time::Duration;

use stepq::app::{App, AppError};

use super::failure::Failure;
use super::CancelArgs;

/// Longest pause between two reads of the run record while `stepq cancel` waits for the run
/// to end (another process's writes cannot be awaited).
const CANCEL_WAIT_MAX_DELAY: Duration = Duration::from_millis(500);

pub(super) async fn cancel_run(app: &App, args: CancelArgs) -> Result<u8, Failure> {
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
