//! Apps and code locations the in-process tests share.

use std::path::Path;
use std::sync::Arc;

use std::time::Duration;
use stepq::app::{make_app, App, LaunchedRun, RunOptions};
use stepq::config::StepqConfig;
use stepq_cli::demo;

use stepq_executor::storage::{RunRecord, RunStatus as StoredStatus, StatusChange};
use stepq_executor::Executor;
use stepq_plan::{Event, EventKind};
use stepq_results::OutputKey;
use stepq_worker::{encode_value, op_fn, CodeLocation, Op};

/// The embedded default app whose state is `dir/.stepq` (where a `stepq` process started in
/// `dir` finds it).
pub(crate) async fn app_in(dir: &Path) -> App {
    let config = StepqConfig {
        state_dir: dir.join(".stepq"),
        ..StepqConfig::default()
    };
    make_app(&config).await.unwrap()
}

/// The `slow` job's location, its `sleep` op announcing each start on `started`.
pub(crate) fn announced_slow_location(started: Arc<tokio::sync::Semaphore>) -> Arc<CodeLocation> {
    let mut ops = demo::ops();
    let sleep = ops.remove("sleep").unwrap();
    let announced: Arc<dyn Op> = op_fn(move |ctx, inputs| {
        let (started, sleep) = (started.clone(), sleep.clone());
        async move {
            started.add_permits(1);
            sleep.run(&ctx, inputs).await
        }
    });
    ops.insert("sleep".into(), announced);
    Arc::new(demo::location_with(ops).unwrap())
}

/// Launches the `slow` job of `location`, its steps sleeping ten minutes, as run `run_id` (a
/// fresh id when `None`) on `executor`.
pub(crate) async fn launch_slow(
    app: &App,
    executor: &Executor,
    location: &CodeLocation,
    run_id: Option<&str>,
) -> LaunchedRun {
    let options = RunOptions {
        run_id: run_id.map(Into::into),
        run_config: serde_json::json!({ "sleep_ms": 600_000 }),
        ..RunOptions::default()
    };
    app.launch(executor, location, "slow", options)
        .await
        .unwrap()
}

/// `first` (appends a line to `first_calls`) -> `fixable` (fails until the file `fixed`
/// exists) -> `last`, as shell steps run in the directory of whoever runs them (the test's, or a worker's).
pub(crate) const FIXABLE_JOBS: &str = r#"
[[jobs.fixable.steps]]
key = "first"
argv = ["sh", "-c", "echo called >> first_calls; echo 1"]

[[jobs.fixable.steps]]
key = "fixable"
argv = ["sh", "-c", "test -f fixed && echo 2"]
inputs = { n = "first.stdout" }

[[jobs.fixable.steps]]
key = "last"
argv = ["echo", "3"]
inputs = { n = "fixable.stdout" }
"#;

/// What an orchestrator killed mid-run leaves: run `orphan` of `serial` STARTED by
/// `orchestrator`, `simple` done (output 41 stored), `add_one` queued and never reported.
pub(crate) async fn orphan_run(app: &App, orchestrator: &str) {
    let record = RunRecord::new("orphan", "serial", serde_json::Value::Null);
    app.runs().create_run(&record).await.unwrap();
    let claim = StatusChange::to(StoredStatus::Starting).by(orchestrator);
    app.runs().change_status("orphan", &claim).await.unwrap();
    app.runs()
        .update_status("orphan", StoredStatus::Started)
        .await
        .unwrap();
    app.outputs()
        .put(
            &OutputKey::new("orphan", "simple", "result"),
            encode_value(&41_i64).unwrap(),
        )
        .await
        .unwrap();
    let step = |key: &str, kind| Event::step("orphan", key, kind);
    let queued = EventKind::StepQueued {
        attempt: 1,
        task_id: "t".into(),
    };
    let log = [
        Event::run("orphan", EventKind::RunStarted),
        step("simple", queued.clone()),
        step(
            "simple",
            EventKind::StepOutputHandled {
                output: "result".into(),
                bytes: 1,
            },
        ),
        step(
            "simple",
            EventKind::StepSuccess {
                duration: Duration::ZERO,
            },
        ),
        step("add_one", queued),
    ];
    app.runs().append_events("orphan", &log).await.unwrap();
}

/// Writes a heartbeat of worker `id` (host `elsewhere`, one task running) last written `ago`
/// ago: an hour makes it LOST, zero live.
pub(crate) async fn heartbeat_of(
    heartbeats: &dyn stepq_executor::storage::HeartbeatStore,
    id: &str,
    ago: Duration,
) {
    let at = stepq_plan::events::now_us() - ago.as_micros() as u64;
    let beat = stepq_executor::storage::WorkerHeartbeat {
        worker_id: id.into(),
        host: "elsewhere".into(),
        pid: 1,
        started_at: at,
        last_seen: at,
        tasks_running: 1,
        tasks_done: 0,
        running_tasks: Vec::new(),
        queues: Vec::new(),
    };
    heartbeats.put_heartbeat(&beat).await.unwrap();
}
