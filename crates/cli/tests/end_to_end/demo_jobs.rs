//! Acceptance tests: every example job runs end to end on the embedded default (in-memory
//! broker, local-directory backends in a temp dir, in-process workers), and its values are
//! read back from the output store.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::app::{announced_slow_location, launch_slow};
use stepq::app::{make_app, App, FinishedRun, RunOptions};
use stepq::config::{StepqConfig, TagLimitSetting};
use stepq::ShellJobs;
use stepq_cli::demo::{self, RESULT};
use stepq_executor::storage::{EventCursor, RunStatus as StoredStatus};
use stepq_executor::{RunStatus, StepRunState};
use stepq_plan::{EventKind, Job, StepDef};
use stepq_worker::{op_output, CodeLocation, Op};

const WORKERS: usize = 3;

async fn app(dir: &Path) -> App {
    app_with(dir, |_| {}).await
}

async fn app_with(dir: &Path, tweak: impl FnOnce(&mut StepqConfig)) -> App {
    let mut config = StepqConfig {
        state_dir: dir.to_path_buf(),
        ..StepqConfig::default()
    };
    tweak(&mut config);
    let app = make_app(&config).await.unwrap();
    app.startup().await.unwrap();
    app
}

async fn run_in(app: &App, location: CodeLocation, job: &str, options: RunOptions) -> FinishedRun {
    let finished = app
        .run_with_local_workers(Arc::new(location), job, options, WORKERS)
        .await
        .unwrap();
    finished.recorded.as_ref().unwrap();
    finished
}

async fn run_example(app: &App, job: &str) -> FinishedRun {
    run_in(app, demo::location(), job, RunOptions::default()).await
}

async fn value(app: &App, run: &FinishedRun, step: &str, output: &str) -> i64 {
    run.result
        .output::<i64>(app.outputs().as_ref(), step, output)
        .await
        .unwrap_or_else(|e| panic!("output {step}.{output}: {e}"))
}

fn state(run: &FinishedRun, step: &str) -> StepRunState {
    run.result
        .step(step)
        .unwrap_or_else(|| panic!("no step {step}"))
        .state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let run = run_example(&app, "single").await;
    assert_eq!(run.result.status, RunStatus::Success);
    assert_eq!(value(&app, &run, "simple", RESULT).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let run = run_example(&app, "serial").await;
    assert_eq!(run.result.status, RunStatus::Success);
    assert_eq!(value(&app, &run, "simple", RESULT).await, 1);
    assert_eq!(value(&app, &run, "add_one", RESULT).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diamond() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let run = run_example(&app, "diamond").await;
    assert_eq!(
        run.result.status,
        RunStatus::Success,
        "{:?}",
        run.result.errors
    );
    assert_eq!(value(&app, &run, "emit_values", "value_one").await, 1);
    assert_eq!(value(&app, &run, "emit_values", "value_two").await, 2);
    assert_eq!(value(&app, &run, "add_one", RESULT).await, 2);
    assert_eq!(value(&app, &run, "renamed", RESULT).await, 3);
    assert_eq!(value(&app, &run, "subtract", RESULT).await, -1);
    for step in ["emit_values", "add_one", "renamed", "subtract"] {
        let summary = run.result.step(step).unwrap();
        assert_eq!(summary.state, StepRunState::Succeeded);
        assert_eq!(summary.attempts, 1);
        assert!(summary.worker.as_deref().unwrap().starts_with("local-"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let run = run_example(&app, "parallel").await;
    assert_eq!(run.result.status, RunStatus::Success);
    assert_eq!(run.result.steps.len(), 11);
    for i in 0..10 {
        assert_eq!(value(&app, &run, &format!("add_one_{i}"), RESULT).await, 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_graphs_flatten_to_sixteen_steps() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let run = run_example(&app, "nested").await;
    assert_eq!(run.result.status, RunStatus::Success);
    assert_eq!(run.result.steps.len(), 16);
    assert!(run
        .result
        .steps
        .values()
        .all(|s| s.state == StepRunState::Succeeded));
    assert_eq!(value(&app, &run, demo::NESTED_LAST_STEP, RESULT).await, 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_outputs_skip_their_consumers() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let run = run_example(&app, "optional_outputs").await;
    assert_eq!(run.result.status, RunStatus::Success);
    let count = |s: StepRunState| run.result.steps.values().filter(|x| x.state == s).count();
    assert_eq!(count(StepRunState::Succeeded), 2);
    assert_eq!(count(StepRunState::Skipped), 2);
    assert_eq!(state(&run, "echo_1"), StepRunState::Succeeded);
    assert_eq!(state(&run, "echo_2"), StepRunState::Skipped);
    assert_eq!(state(&run, "echo_3"), StepRunState::Skipped);
    assert_eq!(value(&app, &run, "echo_1", RESULT).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subset_runs_only_the_selected_step() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let options = RunOptions {
        step_selection: Some(vec!["emit_values".into()]),
        ..RunOptions::default()
    };
    let run = run_in(&app, demo::location(), "diamond", options).await;
    assert_eq!(run.result.status, RunStatus::Success);
    assert_eq!(state(&run, "emit_values"), StepRunState::Succeeded);
    for step in ["add_one", "renamed", "subtract"] {
        assert_eq!(state(&run, step), StepRunState::NotRun, "{step}");
    }
    assert_eq!(value(&app, &run, "emit_values", "value_two").await, 2);
    let record = app.runs().get_run(&run.result.run_id).await.unwrap();
    assert_eq!(record.step_selection, Some(vec!["emit_values".to_string()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_never_runs_the_downstream_step() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let called = Arc::new(AtomicBool::new(false));
    let flag = called.clone();
    let mut ops = demo::ops();
    let spy: Arc<dyn Op> = op_output(RESULT, move |_ctx, _inputs| {
        flag.store(true, Ordering::SeqCst);
        async { Ok(0_i64) }
    });
    ops.insert("should_never_execute".into(), spy);
    let location = demo::location_with(ops).unwrap();
    let run = run_in(&app, location, "failure", RunOptions::default()).await;
    assert_eq!(run.result.status, RunStatus::Failure);
    assert!(!called.load(Ordering::SeqCst), "should_never_execute ran");
    assert_eq!(state(&run, "fails"), StepRunState::Failed);
    assert_eq!(state(&run, "should_never_execute"), StepRunState::Skipped);
    assert_eq!(run.result.errors.len(), 1);
    assert!(run.result.errors[0].message.contains("always fails"));
    let record = app.runs().get_run(&run.result.run_id).await.unwrap();
    assert_eq!(record.status, StoredStatus::Failure);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_succeeds_on_the_third_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let run = run_example(&app, "retry").await;
    assert_eq!(run.result.status, RunStatus::Success);
    assert_eq!(run.result.step("flaky").unwrap().attempts, 3);
    assert_eq!(value(&app, &run, "flaky", RESULT).await, 3);
    let page = app
        .runs()
        .read_events(&run.result.run_id, EventCursor::START)
        .await
        .unwrap();
    let retries = page
        .events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::StepRetry { .. }))
        .count();
    assert_eq!(retries, 2, "every retry is an event");
}

/// An op that counts how many of its steps run at once (and the highest count seen).
fn counting_op(current: Arc<AtomicUsize>, max: Arc<AtomicUsize>) -> Arc<dyn Op> {
    op_output(RESULT, move |_ctx, _inputs| {
        let (current, max) = (current.clone(), max.clone());
        async move {
            let now = current.fetch_add(1, Ordering::SeqCst) + 1;
            max.fetch_max(now, Ordering::SeqCst);
            // Long enough for other admitted steps to start meanwhile.
            tokio::time::sleep(Duration::from_millis(30)).await;
            current.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_limit_is_never_exceeded() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_with(dir.path(), |c| c.executor.max_in_flight = 2).await;
    let (current, max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let job = Job::builder("wide")
        .steps((0..12).map(|i| StepDef::new(format!("s{i}"), "count").output(RESULT)))
        .build()
        .unwrap();
    let location = CodeLocation::builder()
        .op("count", counting_op(current, max.clone()))
        .job(job)
        .build()
        .unwrap();
    let finished = app
        .run_with_local_workers(Arc::new(location), "wide", RunOptions::default(), 6)
        .await
        .unwrap();
    assert_eq!(finished.result.status, RunStatus::Success);
    assert_eq!(
        max.load(Ordering::SeqCst),
        2,
        "six workers, twelve ready steps: exactly the limit runs at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_limit_is_never_exceeded() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_with(dir.path(), |c| {
        c.executor.tag_concurrency_limits = vec![TagLimitSetting {
            key: "db".into(),
            value: "warehouse".into(),
            limit: 1,
        }]
    })
    .await;
    let (current, max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (other_current, other_max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut steps: Vec<StepDef> = (0..5)
        .map(|i| {
            StepDef::new(format!("db{i}"), "db")
                .output(RESULT)
                .tag("db", "warehouse")
        })
        .collect();
    steps.extend((0..5).map(|i| StepDef::new(format!("free{i}"), "free").output(RESULT)));
    let location = CodeLocation::builder()
        .op("db", counting_op(current, max.clone()))
        .op("free", counting_op(other_current, other_max.clone()))
        .job(Job::builder("tagged").steps(steps).build().unwrap())
        .build()
        .unwrap();
    let finished = app
        .run_with_local_workers(Arc::new(location), "tagged", RunOptions::default(), 6)
        .await
        .unwrap();
    assert_eq!(finished.result.status, RunStatus::Success);
    assert_eq!(
        max.load(Ordering::SeqCst),
        1,
        "db=warehouse steps ran together"
    );
    assert!(
        other_max.load(Ordering::SeqCst) >= 2,
        "untagged steps are not limited"
    );
}

/// Runs `slow` (ten-minute steps) on `workers` in-process workers, interrupts it once
/// `running` steps run, and returns how it ended.
async fn interrupted_slow_run(app: &App, workers: usize, running: u32) -> FinishedRun {
    let started = Arc::new(tokio::sync::Semaphore::new(0));
    let location = announced_slow_location(started.clone());
    let local = app.start_local_workers(location.clone(), workers).unwrap();
    let executor = app.executor(Some(local.cancel_hook())).unwrap();
    let run = launch_slow(app, &executor, &location, None).await;
    let _running = started.acquire_many(running).await.unwrap();
    run.interrupt();
    let finished = tokio::time::timeout(Duration::from_secs(60), run.wait())
        .await
        .expect("an interrupted run ends without waiting for its ten-minute steps");
    local.shutdown().await.unwrap();
    finished
}

fn assert_all_canceled(app_runs: &FinishedRun) {
    assert_eq!(app_runs.result.status, RunStatus::Canceled);
    assert!(
        app_runs
            .result
            .steps
            .values()
            .all(|s| s.state == StepRunState::Canceled),
        "{:?}",
        app_runs.result.steps
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_ends_the_run_canceled() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    // Four workers: every step is running when the interrupt comes.
    let finished = interrupted_slow_run(&app, 4, 4).await;
    assert_all_canceled(&finished);
    let record = app.runs().get_run(&finished.result.run_id).await.unwrap();
    assert_eq!(record.status, StoredStatus::Canceled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_cancels_steps_still_in_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    // With a ten-minute cancel grace, the run can only end in time if the two steps still in
    // the queue at the interrupt are refused when a worker picks them up.
    let app = app_with(dir.path(), |c| c.executor.cancel_grace_seconds = 600.0).await;
    let finished = interrupted_slow_run(&app, 2, 2).await;
    assert_all_canceled(&finished);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toml_shell_jobs_run_their_commands() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/jobs.toml");
    let jobs = ShellJobs::load(&file).unwrap();
    let location = jobs.extend(&CodeLocation::default()).unwrap();

    let run = run_in(&app, location.clone(), "word_count", RunOptions::default()).await;
    assert_eq!(
        run.result.status,
        RunStatus::Success,
        "{:?}",
        run.result.errors
    );
    let count: String = run
        .result
        .output(app.outputs().as_ref(), "count", "stdout")
        .await
        .unwrap();
    assert_eq!(count.trim(), "10");

    let run = run_in(&app, location.clone(), "greeting", RunOptions::default()).await;
    assert_eq!(
        run.result.status,
        RunStatus::Success,
        "{:?}",
        run.result.errors
    );
    let greeting: String = run
        .result
        .output(app.outputs().as_ref(), "greet", "stdout")
        .await
        .unwrap();
    assert_eq!(greeting, "hello STEPQ (6 bytes with the newline)\n");

    let run = run_in(&app, location, "broken", RunOptions::default()).await;
    assert_eq!(run.result.status, RunStatus::Failure);
    assert_eq!(state(&run, "never"), StepRunState::Skipped);
    let error = run.result.step("fails").unwrap().error.as_ref().unwrap();
    assert_eq!(error.kind, "command_failed");
    assert!(
        error.to_string().contains("something went wrong"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_recorded_with_their_events() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let options = RunOptions {
        run_id: Some("recorded-run".into()),
        tags: BTreeMap::from([("owner".to_string(), "tests".to_string())]),
        ..RunOptions::default()
    };
    let run = run_in(&app, demo::location(), "serial", options).await;
    assert_eq!(run.result.run_id, "recorded-run");
    // A second app on the same directory (as another process would) sees the run.
    let other = app_with(dir.path(), |_| {}).await;
    let record = other.runs().get_run("recorded-run").await.unwrap();
    assert_eq!(record.status, StoredStatus::Success);
    assert_eq!(record.job_name, "serial");
    assert_eq!(record.tags["owner"], "tests");
    assert!(record
        .orchestrator
        .as_deref()
        .unwrap()
        .starts_with("stepq@"));
    let mut events = Vec::new();
    let mut cursor = EventCursor::START;
    loop {
        let page = other
            .runs()
            .read_events("recorded-run", cursor)
            .await
            .unwrap();
        if page.events.is_empty() {
            break;
        }
        events.extend(page.events);
        cursor = page.next;
    }
    assert!(matches!(
        events.first().unwrap().kind,
        EventKind::RunStarting
    ));
    assert!(matches!(events.last().unwrap().kind, EventKind::RunSuccess));
    let rows = stepq_cli::report::rows_from_events(&events);
    assert_eq!(
        rows.iter()
            .map(|r| (r.step.as_str(), r.status.as_str()))
            .collect::<Vec<_>>(),
        [("simple", "SUCCEEDED"), ("add_one", "SUCCEEDED")]
    );
    // A run id cannot be used twice.
    let again = app
        .run_with_local_workers(
            Arc::new(demo::location()),
            "serial",
            RunOptions {
                run_id: Some("recorded-run".into()),
                ..RunOptions::default()
            },
            1,
        )
        .await;
    assert!(again.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_errors_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let location = Arc::new(demo::location());
    let err = app
        .run_with_local_workers(location.clone(), "no_such_job", RunOptions::default(), 1)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("unknown job `no_such_job`"),
        "{err}"
    );
    assert!(err.to_string().contains("diamond"), "{err}");
    let options = RunOptions {
        step_selection: Some(vec!["no_such_step".into()]),
        ..RunOptions::default()
    };
    let err = app
        .run_with_local_workers(location, "diamond", options, 1)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no_such_step"), "{err}");
    assert!(app.runs().list_runs(10).await.unwrap().is_empty());
}
