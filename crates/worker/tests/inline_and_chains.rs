//! Inline values and multi-step (fused) tasks: inputs carried in the message are used instead
//! of the output store, small outputs come back in the report (and are stored anyway), and a
//! task of several steps hands outputs on in memory, stopping at the first step that does not
//! succeed.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use common::harness::{Harness, WAIT};
use stepq_plan::{ExecuteStepArgs, InlineValue, Job, StepDef, StepReport, StepStatus};
use stepq_results::{InMemoryOutputStore, OutputKey, OutputStore, ResultError};
use stepq_worker::{
    decode_value, encode_value, execute_step, op_fn, op_map, op_output, CodeLocation, OpError,
    StepOutputs, WorkerConfig, DEFAULT_INLINE_OUTPUT_LIMIT,
};
use tokio_util::sync::CancellationToken;

/// Notified when op `waits` starts (one test uses it).
static WAITS_STARTED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// The in-memory output store, counting reads (a real store; the count is what is tested).
#[derive(Default)]
struct CountingStore {
    inner: InMemoryOutputStore,
    gets: AtomicUsize,
}

#[async_trait]
impl OutputStore for CountingStore {
    async fn put(&self, key: &OutputKey, value: Bytes) -> Result<(), ResultError> {
        self.inner.put(key, value).await
    }
    async fn get(&self, key: &OutputKey) -> Result<Bytes, ResultError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(key).await
    }
    async fn exists(&self, key: &OutputKey) -> Result<bool, ResultError> {
        self.inner.exists(key).await
    }
    async fn delete_run(&self, run_id: &str) -> Result<(), ResultError> {
        self.inner.delete_run(run_id).await
    }
}

/// `c0` emits 1; `c1`..`c3` add one each; `bad` fails; `partial` emits only `result`, not
/// `maybe`; `waits` runs until cancelled; `big` emits a value larger than the inline limit.
fn chain_job() -> Job {
    Job::builder("chain")
        .step(StepDef::new("c0", "one").output("result"))
        .steps((1..4).map(|i| {
            StepDef::new(format!("c{i}"), "add_one")
                .input("num", format!("c{}", i - 1), "result")
                .output("result")
        }))
        .step(
            StepDef::new("bad", "fails")
                .input("num", "c0", "result")
                .output("result"),
        )
        .step(
            StepDef::new("after_bad", "add_one")
                .input("num", "bad", "result")
                .output("result"),
        )
        .step(
            StepDef::new("partial", "partial")
                .output("result")
                .optional_output("maybe"),
        )
        .step(
            StepDef::new("needs_maybe", "add_one")
                .input("num", "partial", "maybe")
                .output("result"),
        )
        .step(
            StepDef::new("waits", "waits")
                .input("num", "c0", "result")
                .output("result"),
        )
        .step(
            StepDef::new("after_waits", "add_one")
                .input("num", "waits", "result")
                .output("result"),
        )
        .step(StepDef::new("big", "big").output("result"))
        .build()
        .unwrap()
}

fn location() -> CodeLocation {
    CodeLocation::builder()
        .op("one", op_output("result", |_ctx, _in| async { Ok(1_i64) }))
        .op(
            "add_one",
            op_map("num", "result", |_ctx, n: i64| async move { Ok(n + 1) }),
        )
        .op(
            "fails",
            op_fn(|_ctx, _in| async { Err::<StepOutputs, _>(OpError::new("op_error", "boom")) }),
        )
        .op(
            "partial",
            op_output("result", |_ctx, _in| async { Ok(5_i64) }),
        )
        .op(
            "waits",
            op_fn(|ctx, _in| async move {
                WAITS_STARTED.notify_one();
                // Never returns by itself: the worker drops it once the task is cancelled.
                let _ = &ctx;
                std::future::pending::<Result<StepOutputs, OpError>>().await
            }),
        )
        .op(
            "big",
            op_output("result", |_ctx, _in| async {
                Ok("x".repeat(DEFAULT_INLINE_OUTPUT_LIMIT + 1))
            }),
        )
        .job(chain_job())
        .build()
        .unwrap()
}

/// Arguments for attempt 1 of `steps` of `chain` in `run-1`.
fn args(steps: &[&str]) -> ExecuteStepArgs {
    common::args("run-1", "chain", steps)
}

impl Harness<CountingStore> {
    /// A worker for the `chain` job, its outputs in a [`CountingStore`].
    async fn chain(config: WorkerConfig) -> Self {
        Harness::start_with(location(), Arc::new(CountingStore::default()), config).await
    }

    /// Runs one task and returns its reports.
    async fn run(&self, args: &ExecuteStepArgs) -> Vec<StepReport> {
        let task_id = self.send(args).await;
        self.reports(&task_id).await
    }

    async fn stored(&self, step: &str) -> i64 {
        let bytes = self
            .outputs
            .inner
            .get(&OutputKey::new("run-1", step, "result"))
            .await
            .unwrap();
        decode_value(&bytes).unwrap()
    }

    fn gets(&self) -> usize {
        self.outputs.gets.load(Ordering::SeqCst)
    }
}

fn keys_and_status(reports: &[StepReport]) -> Vec<(&str, &'static str)> {
    reports
        .iter()
        .map(|r| {
            let status = match r.status {
                StepStatus::Success { .. } => "success",
                StepStatus::Failure { .. } => "failure",
                StepStatus::Canceled => "canceled",
            };
            (r.step_key.as_str(), status)
        })
        .collect()
}

#[tokio::test]
async fn an_inline_input_is_used_instead_of_the_output_store() {
    let store = CountingStore::default();
    let cancel = CancellationToken::new();
    let mut a = args(&["c1"]);
    a.inline_inputs = vec![InlineValue::new(
        "c0",
        "result",
        encode_value(&41_i64).unwrap().to_vec(),
    )];
    let report = execute_step(&location(), &store, &a, "c1", "w", &cancel).await;
    assert_eq!(
        report.status,
        StepStatus::Success {
            emitted: vec!["result".into()]
        }
    );
    assert_eq!(store.gets.load(Ordering::SeqCst), 0, "nothing read");
    let stored = store
        .inner
        .get(&OutputKey::new("run-1", "c1", "result"))
        .await
        .unwrap();
    assert_eq!(decode_value::<i64>(&stored).unwrap(), 42, "stored anyway");
    // `execute_step` itself copies no output into the report.
    assert!(report.inline_outputs.is_empty());

    // An inline value for another output does not stand in for the one the step reads.
    a.inline_inputs[0].output_name = "other".into();
    let report = execute_step(&location(), &store, &a, "c1", "w", &cancel).await;
    match report.status {
        StepStatus::Failure { error, .. } => assert_eq!(error.kind, "missing_input"),
        other => panic!("expected missing_input, got {other:?}"),
    }
    assert_eq!(store.gets.load(Ordering::SeqCst), 1, "read from the store");
}

#[tokio::test]
async fn small_outputs_come_back_inline_and_are_stored_too() {
    let h = Harness::chain(WorkerConfig::named("w")).await;
    let reports = h.run(&args(&["c0"])).await;
    assert_eq!(
        reports[0].inline_outputs,
        vec![InlineValue::new(
            "c0",
            "result",
            encode_value(&1_i64).unwrap().to_vec()
        )]
    );
    assert_eq!(h.stored("c0").await, 1);

    // Larger than the limit: stored, not copied.
    let reports = h.run(&args(&["big"])).await;
    assert!(matches!(reports[0].status, StepStatus::Success { .. }));
    assert!(reports[0].inline_outputs.is_empty());
    assert!(h
        .outputs
        .inner
        .exists(&OutputKey::new("run-1", "big", "result"))
        .await
        .unwrap());

    // A failed step copies nothing.
    let reports = h.run(&args(&["bad"])).await;
    assert!(reports[0].inline_outputs.is_empty());
    h.stop().await;

    // A limit of 0 turns copies off.
    let mut config = WorkerConfig::named("w");
    config.inline_output_limit = 0;
    let h = Harness::chain(config).await;
    let reports = h.run(&args(&["c0"])).await;
    assert!(matches!(reports[0].status, StepStatus::Success { .. }));
    assert!(reports[0].inline_outputs.is_empty());
    assert_eq!(h.stored("c0").await, 1);
    h.stop().await;
}

#[tokio::test]
async fn a_fused_task_hands_outputs_on_in_memory_and_stores_each() {
    let h = Harness::chain(WorkerConfig::named("w")).await;
    let reports = h.run(&args(&["c0", "c1", "c2", "c3"])).await;
    assert_eq!(
        keys_and_status(&reports),
        [
            ("c0", "success"),
            ("c1", "success"),
            ("c2", "success"),
            ("c3", "success")
        ]
    );
    assert_eq!(h.gets(), 0, "no input read from the store");
    // Only the last step's outputs come back inline: the others were consumed in the task.
    let inline: Vec<usize> = reports.iter().map(|r| r.inline_outputs.len()).collect();
    assert_eq!(inline, [0, 0, 0, 1]);
    for (i, step) in ["c0", "c1", "c2", "c3"].iter().enumerate() {
        assert_eq!(h.stored(step).await, i as i64 + 1, "{step} stored");
    }
    let stats = h.stop().await;
    assert_eq!(stats.steps_succeeded, 4);
    assert_eq!(stats.tasks.succeeded, 1);
}

#[tokio::test]
async fn each_step_of_a_fused_task_gets_its_own_attempt_number() {
    let h = Harness::chain(WorkerConfig::named("w")).await;
    let mut a = args(&["c0", "c1"]);
    a.attempt = 3;
    a.known_state.attempts.insert("c0".into(), 3);
    a.known_state.attempts.insert("c1".into(), 1);
    let reports = h.run(&a).await;
    assert_eq!(
        reports.iter().map(|r| r.attempt).collect::<Vec<_>>(),
        [3, 1]
    );
    h.stop().await;
}

#[tokio::test]
async fn a_fused_task_stops_at_the_first_failure() {
    let h = Harness::chain(WorkerConfig::named("w")).await;
    let reports = h.run(&args(&["c0", "bad", "after_bad"])).await;
    assert_eq!(
        keys_and_status(&reports),
        [("c0", "success"), ("bad", "failure")],
        "after_bad is not run and gets no report"
    );
    assert_eq!(
        reports[0].inline_outputs.len(),
        1,
        "kept for the retry of `bad`"
    );
    assert!(!h
        .outputs
        .inner
        .exists(&OutputKey::new("run-1", "after_bad", "result"))
        .await
        .unwrap());
    let stats = h.stop().await;
    assert_eq!((stats.steps_succeeded, stats.steps_failed), (1, 1));
}

#[tokio::test]
async fn a_fused_task_stops_before_a_step_whose_input_was_not_emitted() {
    let h = Harness::chain(WorkerConfig::named("w")).await;
    let reports = h.run(&args(&["partial", "needs_maybe"])).await;
    assert_eq!(keys_and_status(&reports), [("partial", "success")]);
    let stats = h.stop().await;
    assert_eq!((stats.steps_succeeded, stats.steps_failed), (1, 0));
}

#[tokio::test]
async fn cancelling_a_fused_task_stops_it_at_the_running_step() {
    let h = Harness::chain(WorkerConfig::named("w")).await;
    let task_id = h.send(&args(&["c0", "waits", "after_waits"])).await;
    tokio::time::timeout(WAIT, WAITS_STARTED.notified())
        .await
        .expect("step `waits` started");
    h.cancel.cancel(&task_id);
    let reports = h.reports(&task_id).await;
    assert_eq!(
        keys_and_status(&reports),
        [("c0", "success"), ("waits", "canceled")]
    );
    let stats = h.stop().await;
    assert_eq!((stats.steps_succeeded, stats.steps_canceled), (1, 1));
}
