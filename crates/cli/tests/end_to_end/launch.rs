//! Runs submitted as tasks (`stepq launch` / `stepq resume` through the app): a worker claims
//! and orchestrates them, on the embedded default's in-memory queue with in-process workers
//! and the local-directory run store; and `stepq logs` reading that store from another
//! process.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::app::{app_in, orphan_run};
use crate::common::cli::{run, stepq};
use stepq::app::{App, AppError, LocalWorkers, RunOptions};
use stepq_broker::{TaskHandle, TaskWaitError};
use stepq_cli::demo;
use stepq_executor::launcher::{
    known_state_from_events, read_all_events, RunTaskOutcome, SubmittedRun, RUN_ALREADY_CLAIMED,
};
use stepq_executor::storage::{RunStatus as StoredStatus, StorageError};
use stepq_executor::{protocol, LaunchError};
use stepq_plan::{Event, EventKind, ExecuteRunArgs, Job, StepDef};
use stepq_results::OutputKey;
use stepq_worker::{decode_value, op_map, op_output, CodeLocation, Op, OpError};

const WAIT: Option<Duration> = Some(Duration::from_secs(20));

/// Steps of the `slow` job that announce their start on `started` and then wait for a permit
/// of `release` (instead of sleeping).
fn gated_slow_location(
    started: Arc<tokio::sync::Semaphore>,
    release: Arc<tokio::sync::Semaphore>,
    calls: Arc<AtomicUsize>,
) -> Arc<CodeLocation> {
    let mut ops = demo::ops();
    let gated: Arc<dyn Op> = op_output("result", move |_ctx, _inputs| {
        let (started, release, calls) = (started.clone(), release.clone(), calls.clone());
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            started.add_permits(1);
            release.acquire().await.expect("open").forget();
            Ok(1_i64)
        }
    });
    ops.insert("sleep".into(), gated);
    Arc::new(demo::location_with(ops).unwrap())
}

struct Gated {
    location: Arc<CodeLocation>,
    started: Arc<tokio::sync::Semaphore>,
    release: Arc<tokio::sync::Semaphore>,
    calls: Arc<AtomicUsize>,
}

fn gated() -> Gated {
    let started = Arc::new(tokio::sync::Semaphore::new(0));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    Gated {
        location: gated_slow_location(started.clone(), release.clone(), calls.clone()),
        started,
        release,
        calls,
    }
}

fn with_id(run_id: &str) -> RunOptions {
    RunOptions {
        run_id: Some(run_id.into()),
        ..RunOptions::default()
    }
}

async fn outcome(submitted: &SubmittedRun) -> RunTaskOutcome {
    submitted
        .task
        .wait_result(WAIT)
        .await
        .expect("the orchestration task succeeds")
}

async fn events_of(app: &App, run_id: &str) -> Vec<Event> {
    read_all_events(app.runs().as_ref(), run_id).await.unwrap()
}

fn count(events: &[Event], step: Option<&str>, pred: impl Fn(&EventKind) -> bool) -> usize {
    events
        .iter()
        .filter(|e| e.step_key.as_deref() == step && pred(&e.kind))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_returns_at_once_and_a_worker_of_concurrency_one_runs_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path()).await;
    let g = gated();
    let mut options = with_id("launched");
    options.tags.insert("owner".into(), "tests".into());
    options.step_selection = Some(vec!["slow_0".into(), "slow_1".into()]);
    options.run_config = serde_json::json!({ "k": 1 });
    // No worker yet: submitting only records the run and enqueues its task.
    let submitted = app.submit_run(&g.location, "slow", options).await.unwrap();
    assert_eq!(submitted.run_id, "launched");
    let record = app.runs().get_run("launched").await.unwrap();
    assert_eq!(record.status, StoredStatus::Queued);
    assert_eq!(record.tags["owner"], "tests");
    assert_eq!(record.run_config, serde_json::json!({ "k": 1 }));
    assert_eq!(
        record.step_selection.as_deref().unwrap(),
        ["slow_0", "slow_1"]
    );

    // One worker running one task at a time: the orchestration must not take its only slot.
    let local = app.start_local_workers(g.location.clone(), 1).unwrap();
    g.started.acquire_many(1).await.unwrap().forget();
    let record = app.runs().get_run("launched").await.unwrap();
    assert_eq!(record.status, StoredStatus::Started);
    assert_eq!(record.orchestrator.as_deref(), Some("local-0"));
    g.release.add_permits(2);
    let done = outcome(&submitted).await;
    assert_eq!(done.status, "SUCCESS");
    assert_eq!(done.orchestrator, "local-0");
    assert_eq!(done.unrecorded, None);
    let record = app.runs().get_run("launched").await.unwrap();
    assert_eq!(record.status, StoredStatus::Success);
    assert_eq!(
        g.calls.load(Ordering::SeqCst),
        2,
        "only the selected steps ran"
    );
    let events = events_of(&app, "launched").await;
    assert_eq!(count(&events, None, |k| *k == EventKind::RunSuccess), 1);
    local.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_launches_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path()).await;
    let location = demo::location();
    assert!(matches!(
        app.submit_run(&location, "nope", RunOptions::default())
            .await,
        Err(AppError::UnknownJob { .. })
    ));
    let mut options = with_id("bad-steps");
    options.step_selection = Some(vec!["not_a_step".into()]);
    assert!(matches!(
        app.submit_run(&location, "serial", options).await,
        Err(AppError::Executor(_))
    ));
    assert!(matches!(
        app.submit_run(&location, "serial", with_id("../escape"))
            .await,
        Err(AppError::Executor(_))
    ));
    assert!(app.runs().list_runs(10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_execute_job_does_not_start_a_second_orchestrator() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path()).await;
    let g = gated();
    // Two workers run the two steps; the third is free to take the task again.
    let local = app.start_local_workers(g.location.clone(), 3).unwrap();
    let mut options = with_id("once");
    options.step_selection = Some(vec!["slow_0".into(), "slow_1".into()]);
    let submitted = app.submit_run(&g.location, "slow", options).await.unwrap();
    // Both workers run steps: the run is STARTED.
    g.started.acquire_many(2).await.unwrap().forget();
    let holder = app
        .runs()
        .get_run("once")
        .await
        .unwrap()
        .orchestrator
        .unwrap();

    // The same task again, as the broker would deliver it once more.
    let args = ExecuteRunArgs {
        run_id: "once".into(),
        job_name: "slow".into(),
        step_selection: Some(vec!["slow_0".into(), "slow_1".into()]),
        run_config: serde_json::Value::Null,
    };
    let again = app
        .queue()
        .kick(protocol::run_message(&args).unwrap())
        .await
        .unwrap();
    let again: TaskHandle<RunTaskOutcome> =
        TaskHandle::new(app.queue().clone(), again.task_id, again.task_name);
    match again.wait_result(WAIT).await {
        Err(TaskWaitError::TaskFailed { kind, message, .. }) => {
            assert_eq!(kind, RUN_ALREADY_CLAIMED);
            assert!(
                message.contains(&format!("STARTED by {holder}")),
                "{message}"
            );
            assert!(message.contains("stepq resume once"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    g.release.add_permits(2);
    assert_eq!(outcome(&submitted).await.status, "SUCCESS");
    assert_eq!(g.calls.load(Ordering::SeqCst), 2, "every step ran once");
    let events = events_of(&app, "once").await;
    assert_eq!(count(&events, None, |k| *k == EventKind::RunStarting), 1);
    local.shutdown().await.unwrap();
}

/// `first` (counts its calls) -> `fixable` (fails until `fixed`) -> `last`, adding one each.
fn fixable_location(fixed: Arc<AtomicBool>, first_calls: Arc<AtomicUsize>) -> Arc<CodeLocation> {
    let mut ops = demo::ops();
    let first: Arc<dyn Op> = op_output("result", move |_ctx, _inputs| {
        let calls = first_calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(1_i64)
        }
    });
    let fixable: Arc<dyn Op> = op_map("num", "result", move |_ctx, n: i64| {
        let fixed = fixed.clone();
        async move {
            if fixed.load(Ordering::SeqCst) {
                Ok(n + 1)
            } else {
                Err(OpError::new("not_fixed", "fails until the test fixes it"))
            }
        }
    });
    ops.insert("first".into(), first);
    ops.insert("fixable".into(), fixable);
    let job = Job::builder("fixable")
        .step(StepDef::new("first", "first").output("result"))
        .step(
            StepDef::new("fixable", "fixable")
                .input("num", "first", "result")
                .output("result"),
        )
        .step(
            StepDef::new("last", "add_one")
                .input("num", "fixable", "result")
                .output("result"),
        )
        .build()
        .unwrap();
    Arc::new(
        demo::builder_with(ops, demo::jobs().into_iter().chain([job]))
            .build()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_reruns_only_what_did_not_succeed_and_attempts_count_on() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path()).await;
    let fixed = Arc::new(AtomicBool::new(false));
    let first_calls = Arc::new(AtomicUsize::new(0));
    let location = fixable_location(fixed.clone(), first_calls.clone());
    let local = app.start_local_workers(location.clone(), 2).unwrap();

    let submitted = app
        .submit_run(&location, "fixable", with_id("fix-me"))
        .await
        .unwrap();
    assert_eq!(outcome(&submitted).await.status, "FAILURE");
    assert_eq!(
        app.runs().get_run("fix-me").await.unwrap().status,
        StoredStatus::Failure
    );

    fixed.store(true, Ordering::SeqCst);
    let resumed = app.submit_resume("fix-me", false).await.unwrap();
    assert_eq!(outcome(&resumed).await.status, "SUCCESS");
    assert_eq!(
        app.runs().get_run("fix-me").await.unwrap().status,
        StoredStatus::Success
    );
    assert_eq!(
        first_calls.load(Ordering::SeqCst),
        1,
        "`first` is not run again"
    );
    let events = events_of(&app, "fix-me").await;
    let known = known_state_from_events(&events);
    assert_eq!(known.attempts_of("first"), 1);
    assert_eq!(known.attempts_of("fixable"), 2, "the re-run is attempt 2");
    assert_eq!(
        known.attempts_of("last"),
        1,
        "skipped before, first attempt now"
    );
    assert!(["first", "fixable", "last"]
        .iter()
        .all(|s| known.is_completed(s)));
    let last = app
        .outputs()
        .get(&OutputKey::new("fix-me", "last", "result"))
        .await
        .unwrap();
    assert_eq!(
        decode_value::<i64>(&last).unwrap(),
        3,
        "1 + 1 + 1, `first`'s output reused"
    );

    // Nothing left to resume; unknown runs are not found.
    match app.submit_resume("fix-me", true).await {
        Err(AppError::Launch(LaunchError::NotResumable { status, .. })) => {
            assert_eq!(status, StoredStatus::Success)
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        app.submit_resume("nope", false).await,
        Err(AppError::Storage(StorageError::RunNotFound { .. }))
    ));
    local.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_orchestrator_died_is_taken_over_only_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path()).await;
    orphan_run(&app, "dead-worker").await;

    match app.submit_resume("orphan", false).await {
        Err(AppError::Launch(e @ LaunchError::NotResumable { .. })) => {
            let text = e.to_string();
            assert!(
                text.contains("dead-worker") && text.contains("--force"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    let location = Arc::new(demo::location());
    let local = app.start_local_workers(location, 1).unwrap();
    let resumed = app.submit_resume("orphan", true).await.unwrap();
    let done = outcome(&resumed).await;
    assert_eq!(done.status, "SUCCESS");
    let record = app.runs().get_run("orphan").await.unwrap();
    assert_eq!(record.status, StoredStatus::Success);
    assert_eq!(record.orchestrator.as_deref(), Some("local-0"));
    let events = events_of(&app, "orphan").await;
    let queued_simple = count(&events, Some("simple"), |k| {
        matches!(k, EventKind::StepQueued { .. })
    });
    assert_eq!(queued_simple, 1, "`simple` is not run again");
    assert_eq!(known_state_from_events(&events).attempts_of("add_one"), 2);
    let value = app
        .outputs()
        .get(&OutputKey::new("orphan", "add_one", "result"))
        .await
        .unwrap();
    assert_eq!(decode_value::<i64>(&value).unwrap(), 42);
    local.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_canceled_while_queued_is_not_started() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path()).await;
    let location = Arc::new(demo::location());
    let submitted = app
        .submit_run(&location, "serial", with_id("dropped"))
        .await
        .unwrap();
    app.request_cancel("dropped").await.unwrap();
    let local: LocalWorkers = app.start_local_workers(location, 1).unwrap();
    match submitted.task.wait_result(WAIT).await {
        Err(TaskWaitError::TaskFailed { kind, message, .. }) => {
            assert_eq!(kind, RUN_ALREADY_CLAIMED);
            assert!(message.contains("CANCELED"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(events_of(&app, "dropped").await.is_empty());
    local.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launched_run_is_canceled_through_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path()).await;
    let g = gated();
    let local = app.start_local_workers(g.location.clone(), 2).unwrap();
    let submitted = app
        .submit_run(&g.location, "slow", with_id("stop-me"))
        .await
        .unwrap();
    g.started.acquire_many(2).await.unwrap().forget();
    app.request_cancel("stop-me").await.unwrap();
    assert_eq!(outcome(&submitted).await.status, "CANCELED");
    assert_eq!(
        app.runs().get_run("stop-me").await.unwrap().status,
        StoredStatus::Canceled
    );
    local.shutdown().await.unwrap();
}

/// `stepq logs ARGS` in `dir` (whose `.stepq/` is the app's state).
fn stepq_logs(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = stepq(dir);
    cmd.arg("logs").args(args);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_a_run_until_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path()).await;
    let g = gated();
    let local = app.start_local_workers(g.location.clone(), 2).unwrap();
    let mut options = with_id("followed");
    options.step_selection = Some(vec!["slow_0".into()]);
    let submitted = app.submit_run(&g.location, "slow", options).await.unwrap();
    g.started.acquire_many(1).await.unwrap().forget();

    let mut child = stepq_logs(dir.path(), &["followed", "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let _ = lines_tx.send(line);
        }
    });
    // It prints what is there, and keeps following.
    loop {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("`logs --follow` prints the log so far");
        if line.contains("slow_0 queued, attempt 1") {
            break;
        }
    }
    assert!(child.try_wait().unwrap().is_none(), "still following");
    g.release.add_permits(1);
    assert_eq!(outcome(&submitted).await.status, "SUCCESS");
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
    reader.join().unwrap();
    let rest: Vec<String> = lines_rx.try_iter().collect();
    assert!(
        rest.iter().any(|l| l.ends_with("run succeeded")),
        "{rest:?}"
    );
    assert_eq!(
        rest.last().map(String::as_str),
        Some("run followed SUCCESS")
    );

    // Without --follow: the whole log at once; an unknown run is a usage error.
    let out = stepq_logs(dir.path(), &["followed"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text.lines().next().unwrap().ends_with("run starting"),
        "{text}"
    );
    assert!(text.contains("slow_0 succeeded in"), "{text}");
    let out = stepq_logs(dir.path(), &["nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no run `nope`"));
    local.shutdown().await.unwrap();
}

#[test]
fn launch_needs_a_distributed_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["launch", "serial"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs a distributed config"), "{err}");
    let out = run(dir.path(), &["launch", "no_such_job"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown job"));
    let out = run(dir.path(), &["launch", "serial", "--steps", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    // `stepq resume` runs here on the embedded default (tests/resume.rs): an unknown run is 2.
    let out = run(dir.path(), &["resume", "r1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("r1"));
    assert!(
        !dir.path().join(".stepq/runs").exists(),
        "nothing was written"
    );
}
