//! Apps and code locations the in-process tests share.

use std::path::Path;
use std::sync::Arc;

use stepq::app::{make_app, App, LaunchedRun, RunOptions};
use stepq::config::StepqConfig;
use stepq::examples;
use stepq_executor::Executor;
use stepq_worker::{op_fn, CodeLocation, Op};

/// The embedded default app whose state is `dir/.stepq` (where a `stepq` process started in
/// `dir` finds it).
pub async fn app_in(dir: &Path) -> App {
    let config = StepqConfig {
        state_dir: dir.join(".stepq"),
        ..StepqConfig::default()
    };
    make_app(&config).await.unwrap()
}

/// The `slow` job's location, its `sleep` op announcing each start on `started`.
pub fn announced_slow_location(started: Arc<tokio::sync::Semaphore>) -> Arc<CodeLocation> {
    let mut ops = examples::ops();
    let sleep = ops.remove("sleep").unwrap();
    let announced: Arc<dyn Op> = op_fn(move |ctx, inputs| {
        let (started, sleep) = (started.clone(), sleep.clone());
        async move {
            started.add_permits(1);
            sleep.run(&ctx, inputs).await
        }
    });
    ops.insert("sleep".into(), announced);
    Arc::new(examples::location_with(ops).unwrap())
}

/// Launches the `slow` job of `location`, its steps sleeping ten minutes, as run `run_id` (a
/// fresh id when `None`) on `executor`.
pub async fn launch_slow(
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
