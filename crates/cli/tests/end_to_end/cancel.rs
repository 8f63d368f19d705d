//! Cancelling runs through the app: the cancellation extension wired by `make_app`, and
//! `App::request_cancel` (what `stepq cancel` does) reaching the run's orchestrator.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::common::app::{announced_slow_location, launch_slow};
use stepq::app::{make_app, App, AppError, FinishedRun, LaunchedRun, LocalWorkers};
use stepq::config::StepqConfig;
use stepq_executor::control::ControlError;
use stepq_executor::storage::{RunStatus as StoredStatus, StorageError};
use stepq_executor::{RunStatus, StepRunState};

async fn app_with(dir: &Path, tweak: impl FnOnce(&mut StepqConfig)) -> App {
    let mut config = StepqConfig {
        state_dir: dir.into(),
        ..StepqConfig::default()
    };
    tweak(&mut config);
    make_app(&config).await.unwrap()
}

/// Launches `slow` (ten-minute steps) on two in-process workers and waits until two steps run.
async fn two_running_slow_steps(app: &App, run_id: &str) -> (LaunchedRun, LocalWorkers) {
    let started = Arc::new(tokio::sync::Semaphore::new(0));
    let location = announced_slow_location(started.clone());
    let local = app.start_local_workers(location.clone(), 2).unwrap();
    let executor = app.executor(None).unwrap();
    let run = launch_slow(app, &executor, &location, Some(run_id)).await;
    started.acquire_many(2).await.unwrap().forget();
    (run, local)
}

async fn ends_in_time(run: LaunchedRun) -> FinishedRun {
    tokio::time::timeout(Duration::from_secs(5), run.wait())
        .await
        .expect("the run ends within 5 s without waiting for its ten-minute steps")
}

fn assert_steps_canceled(finished: &FinishedRun) {
    assert_eq!(finished.result.status, RunStatus::Canceled);
    assert!(
        finished
            .result
            .steps
            .values()
            .all(|s| s.state == StepRunState::Canceled),
        "{:?}",
        finished.result.steps
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_app_wires_the_cancellable_broker_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_with(dir.path(), |_| {}).await;
    let canceller = app.canceller().expect("cancellation is on by default");
    assert!(app.cancel_hook().is_some());
    // Markers go into the state dir's database, where other processes on this machine see
    // them.
    canceller.cancel_task("task-1").await.unwrap();
    let other_process = stepq_sqlite::SqliteStore::open(dir.path())
        .unwrap()
        .cancels();
    assert!(stepq_cancel::CancelStore::get(&other_process, "task-1")
        .await
        .unwrap()
        .is_some());
    assert!(canceller.is_cancelled("task-1").await.unwrap());

    let off = app_with(dir.path(), |c| c.enable_cancellation = false).await;
    assert!(off.canceller().is_none());
    assert!(off.cancel_hook().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_ends_canceled_with_its_running_steps_canceled() {
    let dir = tempfile::tempdir().unwrap();
    // A ten-minute executor grace: only the workers' CANCELED results can end the run in time.
    let app = app_with(dir.path(), |c| c.executor.cancel_grace_seconds = 600.0).await;
    let (run, local) = two_running_slow_steps(&app, "interrupted").await;
    run.interrupt();
    let finished = ends_in_time(run).await;
    assert_steps_canceled(&finished);
    local.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_reaches_the_orchestrator_and_the_run_ends_canceled() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_with(dir.path(), |c| c.executor.cancel_grace_seconds = 600.0).await;
    let (run, local) = two_running_slow_steps(&app, "asked").await;
    // Another process sharing the state dir asks for the cancel.
    let other = app_with(dir.path(), |_| {}).await;
    let record = other.request_cancel("asked").await.unwrap();
    assert_eq!(record.status, StoredStatus::Canceling);
    // Asking again while it is being canceled changes nothing.
    let again = other.request_cancel("asked").await.unwrap();
    assert_eq!(again.status, StoredStatus::Canceling);

    let finished = ends_in_time(run).await;
    assert_steps_canceled(&finished);
    let record = app.runs().get_run("asked").await.unwrap();
    assert_eq!(record.status, StoredStatus::Canceled);
    local.shutdown().await.unwrap();

    // Now it has ended: nothing to cancel.
    match other.request_cancel("asked").await {
        Err(AppError::Control(ControlError::RunEnded { run_id, status })) => {
            assert_eq!(run_id, "asked");
            assert_eq!(status, StoredStatus::Canceled);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_for_an_unknown_run_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_with(dir.path(), |_| {}).await;
    match app.request_cancel("nope").await {
        Err(AppError::Storage(StorageError::RunNotFound { run_id })) => assert_eq!(run_id, "nope"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_run_is_canceled_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_with(dir.path(), |_| {}).await;
    let record = stepq_executor::storage::RunRecord::new("queued", "slow", serde_json::json!({}));
    app.runs().create_run(&record).await.unwrap();
    let record = app.request_cancel("queued").await.unwrap();
    assert_eq!(record.status, StoredStatus::Canceled);
}
