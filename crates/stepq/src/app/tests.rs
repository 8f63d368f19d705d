use super::*;
use crate::config::{RetryModeSetting, TagLimitSetting};
use std::time::Duration;
use stepq_executor::TagLimit;

#[cfg(feature = "aws")]
fn distributed() -> StepqConfig {
    let mut config = StepqConfig::default();
    config.sqs.queue_url = Some("http://127.0.0.1:9/000000000000/q".into());
    config.sqs.region_name = Some("us-east-1".into());
    config.sqs.config_source.visibility_timeout = 12;
    config.s3.bucket = Some("bucket-1".into());
    config
}

#[tokio::test]
async fn embedded_default_is_memory_and_local_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let config = StepqConfig {
        state_dir: dir.path().into(),
        ..StepqConfig::default()
    };
    let app = make_app(&config).await.unwrap();
    assert_eq!(app.mode(), Mode::Embedded);
    assert_eq!(app.queue().broker().kind(), "memory");
    #[cfg(feature = "aws")]
    assert!(matches!(
        app.queue_depth().await,
        Err(AppError::NotDistributed { .. })
    ));
    let worker = app.worker_config("w");
    assert_eq!(
        worker.heartbeat_interval,
        WorkerConfig::default().heartbeat_interval
    );
}

#[cfg(feature = "aws")]
#[tokio::test]
async fn distributed_config_builds_sqs_without_a_request() {
    let app = make_app(&distributed()).await.unwrap();
    assert_eq!(app.mode(), Mode::Distributed);
    assert_eq!(app.queue().broker().kind(), "sqs");
    let worker = app.worker_config("w");
    assert_eq!(worker.heartbeat_extension, Duration::from_secs(12));
    assert_eq!(worker.heartbeat_interval, Some(Duration::from_secs(4)));
    worker.validate().unwrap();
}

#[cfg(feature = "aws")]
#[tokio::test]
async fn cancellation_follows_the_config_in_both_modes() {
    let app = make_app(&distributed()).await.unwrap();
    assert!(app.canceller().is_some());
    assert_eq!(app.queue().broker().kind(), "sqs");
    let mut config = distributed();
    config.enable_cancellation = false;
    let app = make_app(&config).await.unwrap();
    assert!(app.canceller().is_none());
    assert!(app.cancel_hook().is_none());

    let dir = tempfile::tempdir().unwrap();
    let config = StepqConfig {
        state_dir: dir.path().into(),
        enable_cancellation: false,
        ..StepqConfig::default()
    };
    let app = make_app(&config).await.unwrap();
    assert!(app.canceller().is_none());
    assert_eq!(app.queue().broker().kind(), "memory");
}

#[tokio::test]
async fn worker_cancel_grace_stays_below_the_executors() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StepqConfig {
        state_dir: dir.path().into(),
        ..StepqConfig::default()
    };
    let app = make_app(&config).await.unwrap();
    assert_eq!(app.worker_cancel_grace(), DEFAULT_CANCEL_GRACE);
    config.executor.cancel_grace_seconds = 2.0;
    let app = make_app(&config).await.unwrap();
    assert_eq!(app.worker_cancel_grace(), Duration::from_secs(1));
}

#[cfg(feature = "aws")]
#[tokio::test]
async fn task_always_eager_wins_over_a_queue_url() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = distributed();
    config.task_always_eager = true;
    config.state_dir = dir.path().into();
    let app = make_app(&config).await.unwrap();
    assert_eq!(app.queue().broker().kind(), "memory");
}

#[cfg(feature = "aws")]
#[tokio::test]
async fn invalid_config_is_refused() {
    let mut config = distributed();
    config.sqs.config_source.max_number_of_messages = 11;
    let err = make_app(&config).await.unwrap_err();
    assert!(
        matches!(&err, ConfigError::Invalid { key, .. } if key == "sqs.config_source.max_number_of_messages"),
        "{err}"
    );
}

#[tokio::test]
async fn executor_settings_come_from_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StepqConfig {
        state_dir: dir.path().into(),
        ..StepqConfig::default()
    };
    config.executor.max_in_flight = 7;
    config.executor.retry_mode = RetryModeSetting::Disabled;
    config.executor.step_timeout_seconds = Some(2.5);
    config.executor.fail_fast = true;
    config.executor.cancel_grace_seconds = 0.5;
    config.executor.tag_concurrency_limits = vec![TagLimitSetting {
        key: "db".into(),
        value: "warehouse".into(),
        limit: 2,
    }];
    let app = make_app(&config).await.unwrap();
    let ex = app.executor_config();
    assert_eq!(ex.max_in_flight, 7);
    assert_eq!(ex.retry_mode, stepq_plan::RetryMode::Disabled);
    assert_eq!(ex.step_timeout, Some(Duration::from_millis(2500)));
    assert!(ex.fail_fast);
    assert_eq!(ex.cancel_grace, Duration::from_millis(500));
    assert_eq!(ex.tag_limits, vec![TagLimit::new("db", "warehouse", 2)]);
    app.executor(None).unwrap();
}

#[cfg(feature = "aws")]
#[tokio::test]
async fn step_progress_is_on_embedded_and_on_sqs_unless_set() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = StepqConfig {
        state_dir: dir.path().into(),
        ..StepqConfig::default()
    };
    assert!(embedded.executor_config().unwrap().step_progress);
    let mut sqs = distributed();
    assert!(sqs.executor_config().unwrap().step_progress);
    sqs.executor.step_progress = Some(false);
    assert!(
        !sqs.executor_config().unwrap().step_progress,
        "turned off explicitly"
    );
}

/// A code location of one job: `prep` (default queue, the run's level), `train` (queue
/// `gpu`, level `low`) reading it.
fn routed_location(train_queue: &str) -> CodeLocation {
    use stepq_plan::{Job, StepDef};
    use stepq_worker::{op_fn, op_map, StepOutputs};
    CodeLocation::builder()
        .op(
            "emit",
            op_fn(|_ctx, _inputs| async move { StepOutputs::new().with("n", &1_i64) }),
        )
        .op(
            "add_one",
            op_map("n", "result", |_ctx, n: i64| async move { Ok(n + 1) }),
        )
        .job(
            Job::builder("ml")
                .step(StepDef::new("prep", "emit").output("n"))
                .step(
                    StepDef::new("train", "add_one")
                        .input("n", "prep", "n")
                        .output("result")
                        .tag(protocol::QUEUE_TAG, train_queue)
                        .tag(protocol::PRIORITY_TAG, "low"),
                )
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_routes_steps_to_lanes_its_workers_all_serve() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[queues.gpu]\n[priority]\nlevels = [\"high\", \"normal\", \"low\"]\ndefault = \"normal\"\n";
    let mut config = StepqConfig::from_toml_str(text, std::path::Path::new("stepq.toml")).unwrap();
    config.state_dir = dir.path().into();
    let app = make_app(&config).await.unwrap();
    assert!(config.routing().unwrap().is_routed());
    let options = RunOptions {
        tags: [(protocol::PRIORITY_TAG.to_string(), "high".to_string())].into(),
        ..RunOptions::default()
    };
    let finished = app
        .run_with_local_workers(Arc::new(routed_location("gpu")), "ml", options, 2)
        .await
        .unwrap();
    assert_eq!(finished.result.status, stepq_executor::RunStatus::Success);

    // A step routed to an undeclared queue, and a run level that does not exist, are refused
    // before anything runs.
    let err = app
        .run_with_local_workers(
            Arc::new(routed_location("tpu")),
            "ml",
            RunOptions::default(),
            1,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, AppError::Route(_)), "{err}");
    assert!(err.to_string().contains("step `train`"), "{err}");
    let options = RunOptions {
        tags: [(protocol::PRIORITY_TAG.to_string(), "urgent".to_string())].into(),
        ..RunOptions::default()
    };
    let err = app
        .run_with_local_workers(Arc::new(routed_location("gpu")), "ml", options, 1)
        .await
        .unwrap_err();
    assert!(matches!(err, AppError::Priority { .. }), "{err}");
}

/// Most steps running at once in `events`, from their StepStart and end events.
fn max_concurrent(events: &[stepq_plan::Event]) -> usize {
    use stepq_plan::EventKind;
    let mut edges: Vec<(u64, i32)> = Vec::new();
    for e in events {
        match &e.kind {
            EventKind::StepStart { .. } => edges.push((e.timestamp_us, 1)),
            EventKind::StepSuccess { .. }
            | EventKind::StepFailure { .. }
            | EventKind::StepCanceled => edges.push((e.timestamp_us, -1)),
            _ => {}
        }
    }
    // Ends before starts at the same instant.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    most as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_wide_limit_holds_across_runs_on_the_embedded_store() {
    use stepq_plan::{Job, StepDef};
    use stepq_worker::{op_fn, StepOutputs};
    let dir = tempfile::tempdir().unwrap();
    let text = "[worker]\nfleet_limits = [{ key = \"db\", value = \"warehouse\", limit = 2 }]\n";
    let mut config = StepqConfig::from_toml_str(text, std::path::Path::new("stepq.toml")).unwrap();
    config.state_dir = dir.path().into();
    config.validate().unwrap();
    let app = make_app(&config).await.unwrap();
    let mut job = Job::builder("warehouse");
    for i in 0..6 {
        job = job.step(StepDef::new(format!("load{i}"), "load").tag("db", "warehouse"));
    }
    let location = Arc::new(
        CodeLocation::builder()
            .op(
                "load",
                op_fn(|_ctx, _inputs| async move {
                    tokio::time::sleep(Duration::from_millis(60)).await;
                    Ok(StepOutputs::new())
                }),
            )
            .job(job.build().unwrap())
            .build()
            .unwrap(),
    );
    // Two runs at once, on six in-process workers each: twelve slots, two may run.
    let (a, b) = tokio::join!(
        app.run_with_local_workers(location.clone(), "warehouse", RunOptions::default(), 6),
        app.run_with_local_workers(location.clone(), "warehouse", RunOptions::default(), 6),
    );
    let mut all = Vec::new();
    for run in [a.unwrap(), b.unwrap()] {
        assert_eq!(run.result.status, stepq_executor::RunStatus::Success);
        let events =
            stepq_executor::launcher::read_all_events(app.runs().as_ref(), &run.result.run_id)
                .await
                .unwrap();
        all.extend(events);
    }
    assert_eq!(max_concurrent(&all), 2, "the limit of 2 across both runs");

    // A limit of 0 is refused at config load, naming the tag.
    let zero = "[worker]\nfleet_limits = [{ key = \"db\", value = \"warehouse\", limit = 0 }]\n";
    let config = StepqConfig::from_toml_str(zero, std::path::Path::new("stepq.toml")).unwrap();
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains("worker.fleet_limits") && err.contains("`db = \"warehouse\"` is 0"),
        "{err}"
    );
}
