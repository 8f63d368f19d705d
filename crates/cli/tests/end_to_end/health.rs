//! Worker health through the app: a worker's heartbeats in the local-directory store show it
//! live with the steps it runs; once they stop (as when the process is killed) it shows lost
//! within three health intervals, in `stepq worker list` and in `stepq status` of the run
//! whose step it held.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::app::{announced_slow_location, launch_slow};
use crate::common::cli::{stderr, stdout, stepq_configured};
use stepq::app::{make_app, App};
use stepq::config::StepqConfig;
use stepq_cli::demo;
use stepq_cli::health::worker_states;
use stepq_executor::storage::{WorkerHealth, WorkerState};
use stepq_worker::health::HealthWriter;
use stepq_worker::service::host_name;
use tokio_util::sync::CancellationToken;

/// The health interval of these tests: long enough that a loaded CI machine never starves a
/// beat for three intervals while the worker is meant to look live.
const INTERVAL: Duration = Duration::from_secs(1);
/// Generous bound on anything that takes a few intervals.
const PATIENCE: Duration = Duration::from_secs(30);

/// Writes `stepq.toml` for the embedded default under `dir` with the test's health interval.
fn write_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("stepq.toml");
    std::fs::write(
        &path,
        format!(
            "state_dir = {:?}\n[worker]\nhealth_interval_seconds = {}\n",
            dir.join(".stepq").display().to_string(),
            INTERVAL.as_secs_f64()
        ),
    )
    .unwrap();
    path
}

async fn app_in(dir: &Path) -> App {
    let config = StepqConfig::load(Some(&write_config(dir)), &Default::default()).unwrap();
    make_app(&config).await.unwrap()
}

/// Runs the `stepq` binary with `args` against the test's config; (exit code, stdout, stderr).
async fn stepq(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::from(stepq_configured(dir))
        .args(args)
        .output()
        .await
        .expect("stepq starts");
    (out.status.code(), stdout(&out), stderr(&out))
}

/// Reads the workers until `done` holds for them (bounded by [`PATIENCE`]). Other processes'
/// writes to a shared store cannot be awaited, so this re-reads once per health interval.
async fn wait_for_workers(app: &App, what: &str, done: impl Fn(&[WorkerState]) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let states = worker_states(app).await.unwrap();
        if done(&states) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: still {states:#?}");
        tokio::time::sleep(INTERVAL / 2).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_shows_live_with_its_steps_then_lost_once_its_heartbeats_stop() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path()).await;
    let started = Arc::new(tokio::sync::Semaphore::new(0));
    let location = announced_slow_location(started.clone());
    // The service without its own heartbeat: the test writes it, to stop it as a kill would.
    let service = app
        .worker_service(
            location.clone(),
            app.worker_config("w-health").with_concurrency(1),
            false,
        )
        .unwrap();
    let health = HealthWriter::new(
        app.heartbeats().clone(),
        service.worker().activity().clone(),
        "w-health",
        host_name(),
    )
    .with_interval(app.config().health_interval())
    .start()
    .await
    .unwrap();
    let stop = CancellationToken::new();
    let serving = {
        let stop = stop.clone();
        tokio::spawn(async move { service.run(stop).await })
    };

    // A run whose first step sleeps ten minutes on that worker.
    let executor = app.executor(None).unwrap();
    let run = launch_slow(&app, &executor, &location, Some("r-health")).await;
    started.acquire().await.unwrap().forget();

    // The heartbeat after the step started lists it.
    let mut beats = health.beats_written();
    let seen = *beats.borrow_and_update();
    tokio::time::timeout(PATIENCE, beats.wait_for(|n| *n >= seen + 2))
        .await
        .expect("heartbeats keep coming")
        .unwrap();
    let states = worker_states(&app).await.unwrap();
    assert_eq!(states.len(), 1, "{states:#?}");
    let live = &states[0];
    assert_eq!(live.health, WorkerHealth::Live);
    let beat = &live.heartbeat;
    assert_eq!(beat.worker_id, "w-health");
    assert_eq!(beat.pid, std::process::id());
    assert_eq!(beat.tasks_running, 1);
    let task = &beat.running_tasks[0];
    assert_eq!(task.run_id.as_deref(), Some("r-health"));
    let step = task.step_key.clone().expect("a step task names its step");
    assert!(step.starts_with("slow_"), "{step}");

    let (code, list, err) = stepq(dir.path(), &["worker", "list"]).await;
    assert_eq!(code, Some(0), "{list}\n{err}");
    let line = list
        .lines()
        .find(|l| l.starts_with("w-health "))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(line.contains(" live "), "{list}");
    assert!(line.contains(&format!("r-health/{step}")), "{list}");
    assert!(!list.contains("LOST"), "{list}");

    let (code, status, err) = stepq(dir.path(), &["status", "r-health"]).await;
    assert_eq!(code, Some(0), "{status}\n{err}");
    let row = status
        .lines()
        .find(|l| l.starts_with(&format!("{step} ")))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(
        row.contains("RUNNING") && row.contains("w-health"),
        "{status}"
    );
    assert!(!status.contains("sits on worker"), "{status}");

    // The heartbeats stop without the record being removed, as when the process is killed.
    let killed = Instant::now();
    drop(health);
    wait_for_workers(&app, "the worker turns lost", |states| {
        states.len() == 1 && states[0].health == WorkerHealth::Lost
    })
    .await;
    // Lost within three intervals of the last heartbeat (plus what the reads take).
    let took = killed.elapsed();
    assert!(took < INTERVAL * 3 + Duration::from_secs(10), "{took:?}");

    let (code, list, err) = stepq(dir.path(), &["worker", "list"]).await;
    assert_eq!(code, Some(0), "{list}\n{err}");
    assert!(
        list.lines()
            .any(|l| l.starts_with("w-health ") && l.contains(" LOST ")),
        "{list}"
    );
    assert!(list.contains("1 of 1 workers LOST"), "{list}");

    let (code, status, err) = stepq(dir.path(), &["status", "r-health"]).await;
    assert_eq!(code, Some(0), "{status}\n{err}");
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("step {step} sits on worker w-health")))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(line.contains("lost since"), "{line}");
    assert!(line.contains("visibility timeout lapses"), "{line}");
    assert!(status.contains("w-health (LOST)"), "{status}");

    run.interrupt();
    tokio::time::timeout(PATIENCE, run.wait())
        .await
        .expect("the interrupted run ends");
    stop.cancel();
    serving.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stops_cleanly_removes_its_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path()).await;
    let location = Arc::new(demo::location());
    let service = app
        .worker_service(
            location,
            app.worker_config("w-clean").with_concurrency(1),
            true,
        )
        .unwrap();
    let stop = CancellationToken::new();
    let serving = {
        let stop = stop.clone();
        tokio::spawn(async move { service.run(stop).await })
    };
    wait_for_workers(&app, "the service writes its heartbeat", |states| {
        states.len() == 1 && states[0].health == WorkerHealth::Live
    })
    .await;
    stop.cancel();
    serving.await.unwrap().unwrap();
    assert!(worker_states(&app).await.unwrap().is_empty());
    let (code, list, err) = stepq(dir.path(), &["worker", "list"]).await;
    assert_eq!(code, Some(0), "{list}\n{err}");
    assert!(list.contains("no workers have a heartbeat"), "{list}");
}

#[tokio::test]
async fn a_bad_health_interval_is_a_config_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path());
    let out = tokio::process::Command::from(crate::common::cli::stepq(dir.path()))
        .args(["worker", "list"])
        .env("STEPQ_WORKER_HEALTH_INTERVAL_SECONDS", "0")
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("worker.health_interval_seconds"), "{err}");
}

#[test]
fn the_workers_visibility_heartbeats_fit_the_sqs_default() {
    // WorkerConfig's defaults are made for this timeout (see `WorkerConfig::default`).
    assert_eq!(
        stepq_worker::DEFAULT_VISIBILITY_TIMEOUT,
        Duration::from_secs(u64::from(stepq_aws::sqs::DEFAULT_VISIBILITY_TIMEOUT))
    );
    let config = stepq_worker::WorkerConfig::default();
    let first = config.heartbeat_interval.expect("on by default");
    // A delivery may have spent half its visibility timeout in the receive buffer.
    assert!(first < stepq_worker::DEFAULT_VISIBILITY_TIMEOUT / 2);
}
