//! A run whose orchestrator dies while its step runs on a worker, taken over by a resume: the
//! resume asks the dead orchestrator's task to stop (cancel marker, wake-up of the worker's
//! cancel listener) before it queues its own attempt, so the step does not run twice at once.
//!
//! The orchestrator runs on a tokio runtime of its own, which the test shuts down: its tasks
//! are dropped where they stand, as by a SIGKILL, while the real worker services (on the
//! test's runtime) keep running the step.

use std::sync::Arc;
use std::time::Duration;

use stepq::app::App;
use stepq_executor::launcher::{create_run, read_all_events, RunLauncher};
use stepq_executor::storage::{EventCursor, RunRecord, RunStatus as StoredStatus, StatusChange};
use stepq_executor::{RunRequest, RunStatus};
use stepq_plan::{EventKind, Job, StepDef, StepReport, StepStatus};
use stepq_worker::{op_output, CodeLocation};
use tokio::sync::mpsc;

use crate::common::app::{app_in, heartbeat_of};

const RUN: &str = "taken-over";

/// Sends on its channel when dropped: the worker stopped the step's future.
struct Stopped(mpsc::UnboundedSender<&'static str>);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.send("stopped");
    }
}

/// Job `hang` of one step, `hang`: attempt 1 says it started on `events` and sleeps an hour
/// (saying `stopped` when the worker drops it); later attempts return at once.
fn hang_location(events: mpsc::UnboundedSender<&'static str>) -> Arc<CodeLocation> {
    let op = op_output("result", move |ctx, _inputs| {
        let events = events.clone();
        async move {
            if ctx.attempt() == 1 {
                let _stopped = Stopped(events.clone());
                let _ = events.send("started");
                tokio::time::sleep(Duration::from_secs(3_600)).await;
            }
            Ok(i64::from(ctx.attempt()))
        }
    });
    let job = Job::builder("hang")
        .step(StepDef::new("hang", "hang").output("result"))
        .build()
        .unwrap();
    Arc::new(
        CodeLocation::builder()
            .op("hang", op)
            .job(job)
            .build()
            .unwrap(),
    )
}

/// Starts run [`RUN`] of `hang` on a runtime of its own, orchestrated as `dead-worker`, and
/// returns that runtime (shut it down to kill the orchestrator).
async fn orchestrate_elsewhere(app: &App, location: &CodeLocation) -> tokio::runtime::Runtime {
    let job = location.job("hang").unwrap();
    let record = RunRecord::new(RUN, "hang", serde_json::Value::Null);
    create_run(app.runs().as_ref(), &job, &record)
        .await
        .unwrap();
    let launcher = RunLauncher::new(app.executor(None).unwrap(), app.runs().clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let claim = StatusChange::to(StoredStatus::Starting)
        .by("dead-worker")
        .expecting(StoredStatus::Queued);
    runtime.spawn(async move {
        let run = launcher
            .start(RunRequest::new(RUN, job), &claim)
            .await
            .unwrap();
        run.wait().await;
    });
    runtime
}

/// The task id of the first `StepQueued` in the run's log, waiting for it to be recorded.
async fn queued_task(app: &App) -> String {
    let mut cursor = EventCursor::START;
    loop {
        let page = app.runs().wait_events(RUN, cursor).await.unwrap();
        for event in &page.events {
            if let EventKind::StepQueued { task_id, .. } = &event.kind {
                return task_id.clone();
            }
        }
        cursor = page.next;
    }
}

/// `future`'s output, or a panic naming `what` after 30 s.
async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within 30 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_stops_the_dead_orchestrators_task_on_its_worker() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path()).await;
    let (tx, mut op_events) = mpsc::unbounded_channel();
    let location = hang_location(tx);
    // Two workers: the resume's attempt has a free one while the old task still runs.
    let workers = app.start_local_workers(location.clone(), 2).unwrap();

    let orchestrator = orchestrate_elsewhere(&app, &location).await;
    let said = within("the step's start", op_events.recv()).await;
    assert_eq!(said, Some("started"));
    let old_task = within("the step's StepQueued in the log", queued_task(&app)).await;
    // The orchestrator dies; its worker keeps running the step.
    orchestrator.shutdown_background();
    // The run's orchestrator, `dead-worker`, was last seen an hour ago: it is LOST.
    heartbeat_of(
        app.heartbeats().as_ref(),
        "dead-worker",
        Duration::from_secs(3_600),
    )
    .await;
    let canceller = app.canceller().expect("cancellation is on by default");
    assert!(!canceller.is_cancelled(&old_task).await.unwrap());

    let executor = app.executor(Some(workers.cancel_hook())).unwrap();
    let run = app
        .resume_here(&executor, &location, RUN, false)
        .await
        .unwrap();
    assert_eq!(
        run.taken_over_from().map(|l| l.orchestrator.as_str()),
        Some("dead-worker")
    );
    let finished = within("the resumed run's end", run.wait()).await;
    assert_eq!(finished.result.status, RunStatus::Success);

    // The old task was asked to stop, and its worker stopped it: CANCELED.
    assert!(canceller.is_cancelled(&old_task).await.unwrap());
    let said = within("the old step's stop", op_events.recv()).await;
    assert_eq!(said, Some("stopped"));
    let result = within(
        "the old task's result",
        app.queue().results().wait_result(&old_task, None),
    )
    .await
    .unwrap();
    let reports: Vec<StepReport> =
        stepq_executor::protocol::read_reports(&result.return_value).unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].status, StepStatus::Canceled);
    assert_eq!(reports[0].attempt, 1);

    let log = read_all_events(app.runs().as_ref(), RUN).await.unwrap();
    let expected = format!("resume: asked 1 task of the attempt it replaces to stop ({old_task})");
    assert!(
        log.iter()
            .any(|e| matches!(&e.kind, EventKind::EngineEvent { message } if *message == expected)),
        "{log:#?}"
    );
    let record = app.runs().get_run(RUN).await.unwrap();
    assert_eq!(record.status, StoredStatus::Success);
    workers.shutdown().await.unwrap();
}
