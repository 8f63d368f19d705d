//! `execute_step` against the in-memory output store.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use common::*;
use stepq_plan::{EventKind, FailureKind, Job, RetryMode, StepDef, StepStatus};
use stepq_results::{
    ErrorClass, InMemoryOutputStore, OutputKey, OutputStore, ResultError, ServiceError,
};
use stepq_worker::{decode_value, encode_value, execute_step, op_fn, CodeLocation, StepOutputs};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

async fn run(
    location: &CodeLocation,
    store: &dyn OutputStore,
    job: &str,
    step: &str,
) -> stepq_plan::StepReport {
    let args = args("run-1", job, &[step]);
    execute_step(
        location,
        store,
        &args,
        step,
        "w1",
        &CancellationToken::new(),
    )
    .await
}

#[tokio::test]
async fn typed_outputs_are_stored_and_loaded_downstream() {
    let location = lab_location();
    let store = InMemoryOutputStore::new();

    let source = run(&location, &store, "lab", "source").await;
    assert_eq!(emitted(&source), ["reading"]);
    assert_eq!(event_names(&source), ["start", "log", "output", "success"]);
    assert_eq!(source.step_key, "source");
    assert_eq!(source.attempt, 1);
    assert_eq!(source.worker, "w1");
    assert!(matches!(
        &source.events[0].kind,
        EventKind::StepStart { attempt: 1, worker } if worker == "w1"
    ));
    assert!(source
        .events
        .iter()
        .all(|e| e.run_id == "run-1" && e.step_key.as_deref() == Some("source")));
    let stored = store
        .get(&OutputKey::new("run-1", "source", "reading"))
        .await
        .unwrap();
    assert_eq!(
        decode_value::<Reading>(&stored).unwrap(),
        Reading {
            sensor: "t1".into(),
            value: 21
        }
    );

    let double = run(&location, &store, "lab", "double").await;
    assert_eq!(emitted(&double), ["result"]);
    assert_eq!(
        event_names(&double),
        ["start", "input", "output", "success"]
    );
    assert!(matches!(
        &double.events[1].kind,
        EventKind::StepInputLoaded { input, bytes } if input == "reading" && *bytes == stored.len() as u64
    ));
    let result = store
        .get(&OutputKey::new("run-1", "double", "result"))
        .await
        .unwrap();
    assert_eq!(decode_value::<i64>(&result).unwrap(), 42);
}

#[tokio::test]
async fn logged_lines_become_engine_events_in_order() {
    let location = lab_location();
    let store = InMemoryOutputStore::new();
    let report = run(&location, &store, "lab", "source").await;
    assert!(matches!(
        &report.events[1].kind,
        EventKind::EngineEvent { message } if message == "reading the sensor"
    ));
}

#[tokio::test]
async fn context_carries_step_identity_tags_and_run_config() {
    let location = lab_location();
    let store = InMemoryOutputStore::new();
    let mut args = args("run-7", "lab", &["describe"]);
    args.attempt = 2;
    args.run_config = serde_json::json!({"limit": 10});
    let report = execute_step(
        &location,
        &store,
        &args,
        "describe",
        "w9",
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(emitted(&report), ["result"]);
    assert_eq!(report.attempt, 2);
    let text: String = decode_value(
        &store
            .get(&OutputKey::new("run-7", "describe", "result"))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        text,
        "run-7/lab/describe/attempt 2/w9/db=warehouse/limit=10"
    );
}

#[tokio::test]
async fn unknown_job_fails_naming_the_known_jobs() {
    let location = lab_location();
    let store = InMemoryOutputStore::new();
    let report = run(&location, &store, "nope", "source").await;
    let (error, retry) = failure(&report);
    assert_eq!(error.kind, "unknown_job");
    assert!(
        error.message.contains("`nope`") && error.message.contains("lab, serial"),
        "{error}"
    );
    assert_eq!(retry, None);
    assert_eq!(event_names(&report), ["start", "failure"]);
    assert!(!will_retry(&report));
}

#[tokio::test]
async fn unknown_step_fails_naming_the_job_steps() {
    let location = lab_location();
    let store = InMemoryOutputStore::new();
    let report = run(&location, &store, "serial", "ghost").await;
    let (error, _) = failure(&report);
    assert_eq!(error.kind, "unknown_step");
    assert!(
        error.message.contains("`ghost`")
            && error.message.contains("`serial`")
            && error.message.contains("simple, add_one"),
        "{error}"
    );
    assert_eq!(event_names(&report), ["start", "failure"]);
}

#[tokio::test]
async fn missing_input_fails_naming_the_upstream_output() {
    let location = lab_location();
    let store = InMemoryOutputStore::new();
    let report = run(&location, &store, "lab", "double").await;
    let (error, retry) = failure(&report);
    assert_eq!(error.kind, "missing_input");
    assert!(
        error.message.contains("`reading`") && error.message.contains("`source`"),
        "{error}"
    );
    assert_eq!(retry, None);
    assert!(!store
        .exists(&OutputKey::new("run-1", "double", "result"))
        .await
        .unwrap());
}

#[tokio::test]
async fn missing_required_output_fails() {
    let location = lab_location();
    let store = InMemoryOutputStore::new();
    let report = run(&location, &store, "lab", "forgets").await;
    let (error, _) = failure(&report);
    assert_eq!(error.kind, "missing_output");
    assert!(
        error.message.contains("`result`") && error.message.contains("`forgets`"),
        "{error}"
    );
}

#[tokio::test]
async fn undeclared_output_fails_and_stores_nothing() {
    let location = lab_location();
    let store = InMemoryOutputStore::new();
    let report = run(&location, &store, "lab", "extra").await;
    let (error, _) = failure(&report);
    assert_eq!(error.kind, "unknown_output");
    assert!(
        error.message.contains("`surprise`") && error.message.contains("declares: result"),
        "{error}"
    );
    for output in ["result", "surprise"] {
        assert!(!store
            .exists(&OutputKey::new("run-1", "extra", output))
            .await
            .unwrap());
    }
    assert!(!event_names(&report).contains(&"output"));
}

#[tokio::test]
async fn optional_outputs_may_be_left_out() {
    let location = lab_location();
    let store = InMemoryOutputStore::new();
    let report = run(&location, &store, "lab", "optional").await;
    assert_eq!(emitted(&report), ["result"]);
}

#[tokio::test]
async fn op_error_keeps_its_cause_chain() {
    let location = lab_location();
    let store = InMemoryOutputStore::new();
    let report = run(&location, &store, "lab", "fails").await;
    let (error, retry) = failure(&report);
    assert_eq!(error.kind, "op_error");
    assert_eq!(error.message, "opening the warehouse");
    assert_eq!(error.causes, ["permission denied"]);
    assert_eq!(retry, None);
    assert_eq!(event_names(&report), ["start", "failure"]);
    assert!(!will_retry(&report));
}

#[tokio::test]
async fn retry_request_is_reported_with_its_delay() {
    let location = lab_location();
    let store = InMemoryOutputStore::new();
    let report = run(&location, &store, "lab", "flaky").await;
    let (error, retry) = failure(&report);
    assert_eq!(error.message, "warehouse busy");
    assert_eq!(retry, Some(Some(250)));
    assert!(
        will_retry(&report),
        "retry mode enabled, no policy, op asked"
    );

    for mode in [RetryMode::Disabled, RetryMode::Deferred] {
        let mut a = args("run-1", "lab", &["flaky"]);
        a.retry_mode = mode;
        let report = execute_step(
            &location,
            &store,
            &a,
            "flaky",
            "w1",
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(failure(&report).1, Some(Some(250)), "{mode:?}");
        assert!(!will_retry(&report), "{mode:?}");
    }
}

#[tokio::test]
async fn will_retry_follows_the_step_policy() {
    let location = lab_location();
    let store = InMemoryOutputStore::new();
    for (attempt, expected) in [(1, true), (2, true), (3, false)] {
        let mut a = args("run-1", "lab", &["flaky_with_policy"]);
        a.attempt = attempt;
        let report = execute_step(
            &location,
            &store,
            &a,
            "flaky_with_policy",
            "w1",
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(will_retry(&report), expected, "attempt {attempt}");
    }
}

#[tokio::test]
async fn op_panic_becomes_a_failure() {
    let location = lab_location();
    let store = InMemoryOutputStore::new();
    let report = run(&location, &store, "lab", "panics").await;
    let (error, _) = failure(&report);
    assert!(matches!(error.kind, FailureKind::Panic), "{error}");
    assert!(
        error.message.contains("the op exploded") && error.message.contains("`panics`"),
        "{error}"
    );
    // A panic with a formatted (String) payload is reported too.
    let location = CodeLocation::builder()
        .op(
            "p",
            op_fn(|ctx, _in| async move {
                if ctx.attempt() > 0 {
                    panic!("attempt {} exploded", ctx.attempt());
                }
                Ok(StepOutputs::new())
            }),
        )
        .job(single_step_job("boom", "p"))
        .build()
        .unwrap();
    let report = run(&location, &store, "boom", "only").await;
    assert!(failure(&report).0.message.contains("attempt 1 exploded"));
}

fn single_step_job(name: &str, op: &str) -> Job {
    Job::builder(name)
        .step(StepDef::new("only", op).output("result"))
        .build()
        .unwrap()
}

/// A location with one job `wait` whose op signals it started, then waits for cancellation.
fn waiting_location(
    started: Arc<std::sync::Mutex<Option<oneshot::Sender<()>>>>,
    saw_cancel: Arc<AtomicBool>,
) -> CodeLocation {
    CodeLocation::builder()
        .op(
            "wait",
            op_fn(move |ctx, _in| {
                let started = started.clone();
                let saw_cancel = saw_cancel.clone();
                async move {
                    let token = ctx.cancellation_token();
                    // A spawned helper sees the cancellation even though the op itself is dropped.
                    tokio::spawn(async move {
                        token.cancelled().await;
                        saw_cancel.store(true, Ordering::SeqCst);
                    });
                    if let Some(tx) = started.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                    std::future::pending::<()>().await;
                    Ok(StepOutputs::new())
                }
            }),
        )
        .job(single_step_job("wait", "wait"))
        .build()
        .unwrap()
}

#[tokio::test]
async fn cancelling_a_running_op_reports_canceled() {
    let (tx, rx) = oneshot::channel();
    let saw_cancel = Arc::new(AtomicBool::new(false));
    let location = Arc::new(waiting_location(
        Arc::new(std::sync::Mutex::new(Some(tx))),
        saw_cancel.clone(),
    ));
    let store = Arc::new(InMemoryOutputStore::new());
    let cancel = CancellationToken::new();
    let task = {
        let (location, store, cancel) = (location.clone(), store.clone(), cancel.clone());
        tokio::spawn(async move {
            let a = args("run-1", "wait", &["only"]);
            execute_step(&location, store.as_ref(), &a, "only", "w1", &cancel).await
        })
    };
    rx.await.unwrap();
    cancel.cancel();
    let report = task.await.unwrap();
    assert_eq!(report.status, StepStatus::Canceled);
    assert_eq!(event_names(&report), ["start", "canceled"]);
    // The op's context was cancelled (the helper task it spawned observed it).
    for _ in 0..100 {
        if saw_cancel.load(Ordering::SeqCst) {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(saw_cancel.load(Ordering::SeqCst));
}

#[tokio::test]
async fn cancelled_before_start_never_runs_the_op() {
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    let location = CodeLocation::builder()
        .op(
            "o",
            op_fn(move |_ctx, _in| {
                flag.store(true, Ordering::SeqCst);
                async { StepOutputs::one("result", &1) }
            }),
        )
        .job(single_step_job("j", "o"))
        .build()
        .unwrap();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let a = args("run-1", "j", &["only"]);
    let store = InMemoryOutputStore::new();
    let report = execute_step(&location, &store, &a, "only", "w1", &cancel).await;
    assert_eq!(report.status, StepStatus::Canceled);
    assert!(!ran.load(Ordering::SeqCst));
    assert!(!store
        .exists(&OutputKey::new("run-1", "only", "result"))
        .await
        .unwrap());
}

/// An op that stops with an error because its token fired is cancelled, not failed: the error
/// and the cancellation arrive together, and the cancellation decides the status.
#[tokio::test]
async fn an_op_erring_after_its_token_fired_reports_canceled() {
    let cancel = CancellationToken::new();
    let parent = cancel.clone();
    let location = CodeLocation::builder()
        .op(
            "stop_on_request",
            op_fn(move |ctx, _in| {
                // The cancel arrives while the op runs; the op notices it and gives up with an
                // error before the step's own cancel branch gets a look in.
                parent.cancel();
                async move {
                    ctx.cancelled().await;
                    Err::<StepOutputs, _>(stepq_worker::OpError::msg("stopped on request"))
                }
            }),
        )
        .job(single_step_job("j", "stop_on_request"))
        .build()
        .unwrap();
    let a = args("run-1", "j", &["only"]);
    let store = InMemoryOutputStore::new();
    let report = execute_step(&location, &store, &a, "only", "w1", &cancel).await;
    assert_eq!(report.status, StepStatus::Canceled, "{report:?}");
    assert_eq!(event_names(&report), ["start", "canceled"]);
}

/// An output store whose every operation fails with the given class: the storage error paths.
struct BrokenStore {
    class: ErrorClass,
}

impl BrokenStore {
    fn error(&self) -> ResultError {
        ResultError::Service(ServiceError::new(
            "s3",
            "SlowDown",
            "please reduce your request rate",
            self.class,
        ))
    }
}

#[async_trait]
impl OutputStore for BrokenStore {
    async fn put(&self, _key: &OutputKey, _value: Bytes) -> Result<(), ResultError> {
        Err(self.error())
    }
    async fn get(&self, _key: &OutputKey) -> Result<Bytes, ResultError> {
        Err(self.error())
    }
    async fn exists(&self, _key: &OutputKey) -> Result<bool, ResultError> {
        Err(self.error())
    }
    async fn delete_run(&self, _run_id: &str) -> Result<(), ResultError> {
        Err(self.error())
    }
}

/// (On a paused clock: a temporary failure is retried for `OUTPUT_STORE_RETRY_FOR` first.)
#[tokio::test(start_paused = true)]
async fn output_store_failures_are_reported_with_retry_advice() {
    let location = lab_location();
    for (class, retry) in [
        (ErrorClass::Temporary, Some(None)),
        (ErrorClass::Permanent, None),
        // The store gave up retrying already: the step does not ask for another attempt.
        (ErrorClass::Persistent, None),
    ] {
        let store = BrokenStore { class };
        let report = run(&location, &store, "serial", "simple").await;
        let (error, requested) = failure(&report);
        assert_eq!(error.kind, "output_store_error");
        assert!(error.message.contains("`result`"), "{error}");
        assert!(error.causes[0].contains("SlowDown"), "{error}");
        assert_eq!(requested, retry, "{class:?}");

        let report = run(&location, &store, "serial", "add_one").await;
        let (error, requested) = failure(&report);
        assert_eq!(error.kind, "input_load_error");
        assert!(
            error.message.contains("`num`") && error.message.contains("`simple`"),
            "{error}"
        );
        assert_eq!(requested, retry, "{class:?}");
    }
}

#[tokio::test]
async fn raw_inputs_and_outputs_pass_through() {
    let location = CodeLocation::builder()
        .op(
            "copy",
            op_fn(|_ctx, inputs| async move {
                let raw = inputs.raw("in").cloned().unwrap();
                let mut out = StepOutputs::new();
                out.emit_raw("result", raw)?;
                Ok(out)
            }),
        )
        .op(
            "simple",
            stepq_worker::op_output("result", |_c, _i| async { Ok(5_u8) }),
        )
        .job(
            Job::builder("copy")
                .step(StepDef::new("simple", "simple").output("result"))
                .step(
                    StepDef::new("copy", "copy")
                        .input("in", "simple", "result")
                        .output("result"),
                )
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let store = InMemoryOutputStore::new();
    emitted(&run(&location, &store, "copy", "simple").await);
    emitted(&run(&location, &store, "copy", "copy").await);
    let copied = store
        .get(&OutputKey::new("run-1", "copy", "result"))
        .await
        .unwrap();
    assert_eq!(copied, encode_value(&5_u8).unwrap());
}
