//! A real `Worker` on an in-memory broker, result backend and output store, driven by
//! `execute_plan` messages built with the wire protocol.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::harness::{Harness, WAIT};
use common::*;
use stepq_broker::{InMemoryBroker, TaskMessage, TaskQueue, WORKER_NAME_LABEL};
use stepq_plan::{FailureKind, Job, StepDef, StepReport, StepStatus};
use stepq_protocol as protocol;
use stepq_results::{
    InMemoryOutputStore, InMemoryResultBackend, OutputKey, OutputStore, ResultBackend, TaskResult,
};
use stepq_worker::{decode_value, op_fn, CodeLocation, StepOutputs, Worker, WorkerConfig};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

impl Harness {
    /// A worker named `lab-worker` for the `lab` and `serial` jobs.
    async fn lab() -> Self {
        Harness::start(lab_location(), WorkerConfig::named("lab-worker")).await
    }

    /// Runs one step through the queue and returns its report.
    async fn step(&self, job: &str, step: &str) -> StepReport {
        let task_id = self.send(&args("run-1", job, &[step])).await;
        let mut reports = self.reports(&task_id).await;
        assert_eq!(reports.len(), 1);
        reports.remove(0)
    }
}

#[tokio::test]
async fn two_step_job_runs_through_the_queue() {
    let h = Harness::lab().await;
    let simple = h.step("serial", "simple").await;
    assert_eq!(emitted(&simple), ["result"]);
    assert_eq!(simple.worker, "lab-worker");
    let add_one = h.step("serial", "add_one").await;
    assert_eq!(emitted(&add_one), ["result"]);
    assert_eq!(
        event_names(&add_one),
        ["start", "input", "output", "success"]
    );
    let stored = h
        .outputs
        .get(&OutputKey::new("run-1", "add_one", "result"))
        .await
        .unwrap();
    assert_eq!(decode_value::<i64>(&stored).unwrap(), 2);

    // Typed struct outputs travel the same way.
    assert_eq!(emitted(&h.step("lab", "source").await), ["reading"]);
    let double = h.step("lab", "double").await;
    assert_eq!(emitted(&double), ["result"]);
    let stored = h
        .outputs
        .get(&OutputKey::new("run-1", "double", "result"))
        .await
        .unwrap();
    assert_eq!(decode_value::<i64>(&stored).unwrap(), 42);

    let stats = h.stop().await;
    assert_eq!(stats.steps_succeeded, 4);
    assert_eq!(stats.tasks.succeeded, 4);
    assert_eq!((stats.steps_failed, stats.steps_canceled), (0, 0));
}

#[tokio::test]
async fn result_carries_the_worker_name_label() {
    let h = Harness::lab().await;
    let task_id = h.send(&args("run-1", "serial", &["simple"])).await;
    let result = h.result(&task_id).await;
    assert_eq!(
        result.labels.get(WORKER_NAME_LABEL),
        Some(&serde_json::json!("lab-worker"))
    );
    assert_eq!(
        result.labels.get("step_key"),
        Some(&serde_json::json!("simple"))
    );
    h.stop().await;
}

#[tokio::test]
async fn several_step_keys_in_one_task_run_in_order() {
    let h = Harness::lab().await;
    let task_id = h
        .send(&args("run-1", "serial", &["simple", "add_one"]))
        .await;
    let reports = h.reports(&task_id).await;
    let keys: Vec<&str> = reports.iter().map(|r| r.step_key.as_str()).collect();
    assert_eq!(keys, ["simple", "add_one"]);
    assert!(reports
        .iter()
        .all(|r| matches!(r.status, StepStatus::Success { .. })));
    h.stop().await;
}

#[tokio::test]
async fn unknown_job_is_a_failed_step_and_the_worker_goes_on() {
    let h = Harness::lab().await;
    let report = h.step("no_such_job", "simple").await;
    let (error, _) = failure(&report);
    assert_eq!(error.kind, "unknown_job");
    assert!(error.message.contains("lab, serial"), "{error}");
    // The worker keeps serving.
    assert_eq!(emitted(&h.step("serial", "simple").await), ["result"]);
    let stats = h.stop().await;
    assert_eq!((stats.steps_failed, stats.steps_succeeded), (1, 1));
}

#[tokio::test]
async fn unknown_step_is_a_failed_step() {
    let h = Harness::lab().await;
    let report = h.step("serial", "no_such_step").await;
    let (error, _) = failure(&report);
    assert_eq!(error.kind, "unknown_step");
    assert!(error.message.contains("simple, add_one"), "{error}");
    h.stop().await;
}

fn garbage_message(kwarg_value: serde_json::Value) -> TaskMessage {
    let mut message = TaskMessage::new(protocol::EXECUTE_PLAN);
    message
        .kwargs
        .insert(protocol::STEP_ARGS_KWARG.to_string(), kwarg_value);
    message
}

/// Log lines of the current thread (the test runtime runs the worker's tasks on it).
#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn garbage_step_args_are_logged_as_errors_with_the_task_and_reason() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let h = Harness::lab().await;
    let message = garbage_message(serde_json::json!("aGVsbG8gd29ybGQ="));
    let task_id = h.queue.kick(message).await.unwrap().task_id;
    assert!(
        h.result(&task_id).await.is_err,
        "the failed result is still stored"
    );
    h.stop().await;
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("ERROR") && l.contains(&task_id))
        .unwrap_or_else(|| panic!("the failure is not logged at error level: {text}"));
    for needle in [protocol::EXECUTE_PLAN, "InvalidStepArgs", "magic"] {
        assert!(line.contains(needle), "{needle} missing: {line}");
    }
}

#[tokio::test]
async fn undecodable_payloads_get_failed_results_and_the_worker_goes_on() {
    let h = Harness::lab().await;
    let mut no_kwarg = TaskMessage::new(protocol::EXECUTE_PLAN);
    no_kwarg.kwargs.insert("other".into(), serde_json::json!(1));
    let cases = [
        (
            garbage_message(serde_json::json!("%%% not base64 %%%")),
            "base64",
        ),
        // Valid base64, but not a packed value.
        (
            garbage_message(serde_json::json!("aGVsbG8gd29ybGQ=")),
            "magic",
        ),
        (
            garbage_message(serde_json::json!(42)),
            protocol::STEP_ARGS_KWARG,
        ),
        (no_kwarg, protocol::STEP_ARGS_KWARG),
    ];
    for (message, needle) in cases {
        let task_id = h.queue.kick(message).await.unwrap().task_id;
        let result = h.result(&task_id).await;
        assert!(result.is_err);
        let error = result.error.unwrap();
        assert_eq!(error.kind, stepq_worker::worker::INVALID_STEP_ARGS);
        assert!(
            error.message.contains(&task_id) && error.message.contains(needle),
            "{needle}: {}",
            error.message
        );
    }
    // A task naming no step is rejected the same way.
    let task_id = h.send(&args("run-1", "serial", &[])).await;
    let error = h.result(&task_id).await.error.unwrap();
    assert_eq!(error.kind, stepq_worker::worker::INVALID_STEP_ARGS);
    assert!(error.message.contains("names no step"), "{}", error.message);

    // A following good task still runs, and every message was acked.
    assert_eq!(emitted(&h.step("serial", "simple").await), ["result"]);
    assert_eq!((h.broker.pending(), h.broker.in_flight()), (0, 0));
    let stats = h.stop().await;
    assert_eq!(stats.tasks.failed, 5);
    assert_eq!(stats.tasks.succeeded, 1);
}

#[tokio::test]
async fn missing_required_output_is_reported() {
    let h = Harness::lab().await;
    let report = h.step("lab", "forgets").await;
    assert_eq!(failure(&report).0.kind, "missing_output");
    h.stop().await;
}

#[tokio::test]
async fn undeclared_output_is_reported() {
    let h = Harness::lab().await;
    let report = h.step("lab", "extra").await;
    assert_eq!(failure(&report).0.kind, "unknown_output");
    assert!(!h
        .outputs
        .exists(&OutputKey::new("run-1", "extra", "surprise"))
        .await
        .unwrap());
    h.stop().await;
}

#[tokio::test]
async fn op_error_arrives_with_its_cause_chain() {
    let h = Harness::lab().await;
    let report = h.step("lab", "fails").await;
    let (error, retry) = failure(&report);
    assert_eq!(error.kind, "op_error");
    assert_eq!(error.message, "opening the warehouse");
    assert_eq!(error.causes, ["permission denied"]);
    assert_eq!(retry, None);
    h.stop().await;
}

#[tokio::test]
async fn op_retry_request_survives_the_wire() {
    let h = Harness::lab().await;
    let report = h.step("lab", "flaky").await;
    assert_eq!(failure(&report).1, Some(Some(250)));
    h.stop().await;
}

#[tokio::test]
async fn op_panic_is_a_failed_step_and_the_worker_goes_on() {
    let h = Harness::lab().await;
    let report = h.step("lab", "panics").await;
    let (error, _) = failure(&report);
    assert!(matches!(error.kind, FailureKind::Panic), "{error}");
    assert!(error.message.contains("the op exploded"), "{error}");
    assert_eq!(emitted(&h.step("serial", "simple").await), ["result"]);
    h.stop().await;
}

/// Steps whose op reports that it started, then waits for a permit (or forever).
struct Gate {
    started: mpsc::UnboundedSender<String>,
    release: Semaphore,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    cancelled: AtomicBool,
}

impl Gate {
    fn new() -> (Arc<Gate>, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let gate = Gate {
            started: tx,
            release: Semaphore::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            cancelled: AtomicBool::new(false),
        };
        (Arc::new(gate), rx)
    }

    /// Job `gated` with `n` independent steps `g0..` running op `gate`.
    fn location(self: &Arc<Self>, n: usize) -> CodeLocation {
        let gate = self.clone();
        let job = Job::builder("gated")
            .steps((0..n).map(|i| StepDef::new(format!("g{i}"), "gate").output("result")))
            .build()
            .unwrap();
        CodeLocation::builder()
            .op(
                "gate",
                op_fn(move |ctx, _in| {
                    let gate = gate.clone();
                    async move {
                        let now = gate.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        gate.max_in_flight.fetch_max(now, Ordering::SeqCst);
                        let token = ctx.cancellation_token();
                        let watcher = gate.clone();
                        tokio::spawn(async move {
                            token.cancelled().await;
                            watcher.cancelled.store(true, Ordering::SeqCst);
                        });
                        gate.started.send(ctx.step_key().to_string()).unwrap();
                        gate.release.acquire().await.unwrap().forget();
                        gate.in_flight.fetch_sub(1, Ordering::SeqCst);
                        StepOutputs::one("result", ctx.step_key())
                    }
                }),
            )
            .job(job)
            .build()
            .unwrap()
    }
}

#[tokio::test]
async fn cancel_handle_cancels_a_running_step() {
    let (gate, mut started) = Gate::new();
    let h = Harness::start(gate.location(1), WorkerConfig::named("w")).await;
    let task_id = h.send(&args("run-1", "gated", &["g0"])).await;
    assert_eq!(started.recv().await.unwrap(), "g0");
    assert_eq!(h.cancel.running(), vec![task_id.clone()]);
    assert!(h.cancel.cancel(&task_id));
    let reports = h.reports(&task_id).await;
    assert_eq!(reports[0].status, StepStatus::Canceled);
    assert_eq!(event_names(&reports[0]), ["start", "canceled"]);
    assert!(!h
        .outputs
        .exists(&OutputKey::new("run-1", "g0", "result"))
        .await
        .unwrap());
    assert!(!h.cancel.cancel(&task_id), "no longer running");
    let stats = h.stop().await;
    assert_eq!(stats.steps_canceled, 1);
}

#[tokio::test]
async fn concurrency_limit_is_respected() {
    const STEPS: usize = 6;
    const LIMIT: usize = 2;
    let (gate, mut started) = Gate::new();
    let h = Harness::start(
        gate.location(STEPS),
        WorkerConfig::named("w").with_concurrency(LIMIT),
    )
    .await;
    let mut task_ids = Vec::new();
    for i in 0..STEPS {
        task_ids.push(h.send(&args("run-1", "gated", &[&format!("g{i}")])).await);
    }
    for _round in 0..STEPS / LIMIT {
        for _ in 0..LIMIT {
            started.recv().await.unwrap();
        }
        // Give a worker that ignores its limit every chance to start more steps.
        for _ in 0..200 {
            tokio::task::yield_now().await;
        }
        assert_eq!(gate.in_flight.load(Ordering::SeqCst), LIMIT);
        assert!(gate.max_in_flight.load(Ordering::SeqCst) <= LIMIT);
        gate.release.add_permits(LIMIT);
    }
    for task_id in &task_ids {
        assert!(matches!(
            h.reports(task_id).await[0].status,
            StepStatus::Success { .. }
        ));
    }
    assert_eq!(gate.max_in_flight.load(Ordering::SeqCst), LIMIT);
    assert_eq!(h.stop().await.steps_succeeded, STEPS as u64);
}

#[tokio::test]
async fn graceful_shutdown_finishes_the_in_flight_step_and_takes_no_more() {
    let (gate, mut started) = Gate::new();
    let h = Harness::start(
        gate.location(2),
        WorkerConfig::named("w")
            .with_concurrency(1)
            .with_grace_period(WAIT),
    )
    .await;
    let first = h.send(&args("run-1", "gated", &["g0"])).await;
    let second = h.send(&args("run-1", "gated", &["g1"])).await;
    assert_eq!(started.recv().await.unwrap(), "g0");

    h.stop.cancel();
    gate.release.add_permits(1);
    let stats = h.running.await.unwrap().unwrap();

    assert!(matches!(
        h.results.get_result(&first, false).await.unwrap(),
        TaskResult { is_err: false, .. }
    ));
    assert!(!gate.cancelled.load(Ordering::SeqCst));
    assert!(!h.results.is_result_ready(&second).await.unwrap());
    assert_eq!(h.broker.pending(), 1, "the second task stays queued");
    assert_eq!(stats.steps_succeeded, 1);
    assert_eq!(stats.tasks.released, 0);
}

#[tokio::test]
async fn shutdown_past_the_grace_period_cancels_and_returns_the_step() {
    let (gate, mut started) = Gate::new();
    let h = Harness::start(
        gate.location(1),
        WorkerConfig::named("w").with_grace_period(Duration::from_millis(50)),
    )
    .await;
    let task_id = h.send(&args("run-1", "gated", &["g0"])).await;
    started.recv().await.unwrap();
    h.stop.cancel();
    let stats = h.running.await.unwrap().unwrap();
    assert_eq!(stats.tasks.released, 1);
    assert!(!h.results.is_result_ready(&task_id).await.unwrap());
    assert_eq!(h.broker.pending(), 1, "the message is back in the queue");
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(gate.cancelled.load(Ordering::SeqCst), "the op was told");
    // The op's task was dropped with its step: it never finishes or stores anything.
    gate.release.add_permits(1);
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(!h
        .outputs
        .exists(&OutputKey::new("run-1", "g0", "result"))
        .await
        .unwrap());
    assert_eq!(
        gate.in_flight.load(Ordering::SeqCst),
        1,
        "the op never resumed"
    );
}

#[tokio::test]
async fn invalid_config_is_rejected_by_name() {
    let queue = TaskQueue::new(
        Arc::new(InMemoryBroker::new()),
        Arc::new(InMemoryResultBackend::new()),
    );
    let err = Worker::new(
        Arc::new(lab_location()),
        queue,
        Arc::new(InMemoryOutputStore::new()),
        WorkerConfig::named("w").with_concurrency(0),
    )
    .err()
    .expect("concurrency 0 is invalid");
    assert!(err.to_string().contains("concurrency"), "{err}");
}

#[tokio::test]
async fn extra_task_handlers_can_be_registered() {
    let broker = Arc::new(InMemoryBroker::new());
    let results = Arc::new(InMemoryResultBackend::new());
    let queue = TaskQueue::new(broker, results);
    let mut worker = Worker::new(
        Arc::new(lab_location()),
        queue.clone(),
        Arc::new(InMemoryOutputStore::new()),
        WorkerConfig::named("w"),
    )
    .unwrap();
    worker.receiver_mut().register_fn(
        "ping",
        |x: u32| async move { Ok::<_, std::io::Error>(x + 1) },
    );
    worker.register_task(
        "jobs",
        Arc::new(|_ctx| Box::pin(async { Ok(serde_json::json!(["lab", "serial"])) })),
    );
    assert_eq!(worker.location().job_names().count(), 2);
    assert_eq!(worker.config().name, "w");
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    let pong = queue.task::<u32, u32>("ping").kiq(&1).await.unwrap();
    assert_eq!(pong.wait_result(Some(WAIT)).await.unwrap(), 2);
    let jobs = queue
        .task::<(), Vec<String>>("jobs")
        .kiq(&())
        .await
        .unwrap();
    assert_eq!(
        jobs.wait_result(Some(WAIT)).await.unwrap(),
        ["lab", "serial"]
    );
    stop.cancel();
    running.await.unwrap().unwrap();
}
