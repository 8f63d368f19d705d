//! Step failures, bad reports, submission and result-backend errors, step timeouts.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use stepq_broker::{
    Broker, BrokerError, DeliveryStream, Middleware, MiddlewareError, TaskMessage, TaskQueue,
};
use stepq_executor::{BackendRetry, ExecutorConfig, RunStatus, StepRunState};
use stepq_plan::{Backoff, EventKind, Job, RetryPolicy, SkipReason, StepDef};
use stepq_results::{
    ErrorClass, InMemoryResultBackend, ResultBackend, ResultError, ServiceError, TaskResult,
};
use tokio_util::sync::CancellationToken;

use crate::harness::{Behaviour, Harness};

/// `fails -> should_never_execute`, and an independent `a -> b`.
fn failure_job() -> Job {
    Job::builder("failure")
        .step(StepDef::new("fails", "fails").output("result"))
        .step(StepDef::new("should_never_execute", "noop").input("x", "fails", "result"))
        .step(StepDef::new("a", "simple").output("result"))
        .step(StepDef::new("b", "add_one").input("num", "a", "result"))
        .build()
        .unwrap()
}

fn single() -> Job {
    Job::builder("single")
        .step(StepDef::new("simple", "simple").output("result"))
        .build()
        .unwrap()
}

/// Asserts `fails` failed with an error of `kind`, its downstream was skipped, and the
/// independent branch succeeded.
fn assert_failed_branch(run: &crate::harness::Finished, kind: &str) {
    assert_eq!(run.result.status, RunStatus::Failure);
    let fails = &run.result.steps["fails"];
    assert_eq!(fails.state, StepRunState::Failed);
    assert_eq!(fails.error.as_ref().unwrap().kind, kind);
    assert_eq!(
        run.result.steps["should_never_execute"].state,
        StepRunState::Skipped
    );
    assert_eq!(
        run.result.steps["should_never_execute"].skip_reason,
        Some(SkipReason::UpstreamNotSucceeded {
            upstream: "fails".into()
        })
    );
    assert_eq!(run.result.steps["a"].state, StepRunState::Succeeded);
    assert_eq!(run.result.steps["b"].state, StepRunState::Succeeded);
    assert_eq!(run.result.errors.len(), 1);
    assert_eq!(run.result.errors[0].kind, kind);
    assert!(run.result.errors[0].message.starts_with("step `fails`: "));
    match &run.events.last().unwrap().kind {
        EventKind::RunFailure { errors } => assert_eq!(errors, &run.result.errors),
        other => panic!("last event is {other:?}"),
    }
    assert_eq!(run.failures("fails"), vec![(kind.to_string(), false)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_step_skips_its_downstream_and_the_run_fails_with_its_error_chain() {
    let h = Harness::builder(failure_job())
        .behaviour("fails", Behaviour::Fail)
        .start();
    let ex = h.executor(ExecutorConfig::default());
    let run = h.run(&ex, h.request("failure-1")).await;

    assert_failed_branch(&run, "op_error");
    let error = &run.result.errors[0];
    assert_eq!(error.message, "step `fails`: boom");
    assert_eq!(error.causes, vec!["root cause".to_string()]);
    assert!(!h.worker.executed_steps().contains("should_never_execute"));
    assert!(run
        .step_events("should_never_execute")
        .iter()
        .any(|k| matches!(k, EventKind::StepSkipped { .. })));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_that_does_not_decode_fails_the_step_and_the_run_goes_on() {
    let h = Harness::builder(failure_job())
        .behaviour("fails", Behaviour::Malformed)
        .start();
    let ex = h.executor(ExecutorConfig::default());
    let run = h.run(&ex, h.request("malformed-1")).await;

    assert_failed_branch(&run, "bad_report");
    let message = &run.result.steps["fails"].error.as_ref().unwrap().message;
    assert!(message.contains("expected an array"), "{message}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_for_another_step_fails_the_step() {
    let h = Harness::builder(failure_job())
        .behaviour("fails", Behaviour::WrongStep)
        .start();
    let ex = h.executor(ExecutorConfig::default());
    let run = h.run(&ex, h.request("wrong-step-1")).await;

    assert_failed_branch(&run, "bad_report");
    let message = &run.result.steps["fails"].error.as_ref().unwrap().message;
    assert!(message.contains("no report for step `fails`"), "{message}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_task_result_is_a_step_failure_with_the_workers_error() {
    let h = Harness::builder(failure_job())
        .behaviour("fails", Behaviour::TaskError)
        .start();
    let ex = h.executor(ExecutorConfig::default());
    let run = h.run(&ex, h.request("task-error-1")).await;

    assert_failed_branch(&run, "UnknownJob");
    let message = &run.result.steps["fails"].error.as_ref().unwrap().message;
    assert!(message.contains("no such job here"), "{message}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_cancelled_before_it_started_is_a_canceled_step_not_a_failure() {
    let h = Harness::builder(failure_job())
        .behaviour("fails", Behaviour::CanceledBeforeStart)
        .start();
    let ex = h.executor(ExecutorConfig::default());
    let run = h.run(&ex, h.request("gate-canceled-1")).await;

    assert_eq!(run.result.status, RunStatus::Canceled);
    let fails = &run.result.steps["fails"];
    assert_eq!(fails.state, StepRunState::Canceled);
    assert_eq!(fails.attempts, 1, "a canceled step is not retried");
    assert_eq!(
        run.result.steps["should_never_execute"].state,
        StepRunState::Skipped
    );
    assert_eq!(run.result.steps["a"].state, StepRunState::Succeeded);
    assert!(run.result.errors.is_empty(), "{:?}", run.result.errors);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_without_a_required_output_is_a_failure() {
    let h = Harness::builder(failure_job())
        .behaviour("fails", Behaviour::Emit(vec![]))
        .start();
    let ex = h.executor(ExecutorConfig::default());
    let run = h.run(&ex, h.request("missing-output-1")).await;

    assert_failed_branch(&run, "missing_output");
    h.shutdown().await;
}

/// Rejects every message in `pre_send`.
struct RejectAll;

#[async_trait]
impl Middleware for RejectAll {
    fn name(&self) -> &str {
        "reject-all"
    }
    async fn pre_send(&self, _message: TaskMessage) -> Result<TaskMessage, MiddlewareError> {
        Err(MiddlewareError {
            middleware: "reject-all".into(),
            hook: "pre_send",
            message: "no sending today".into(),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_cannot_be_sent_fails_with_a_submit_error() {
    let h = Harness::builder(single())
        .executor_queue(|q| q.with_middleware(Arc::new(RejectAll)))
        .start();
    let ex = h.executor(ExecutorConfig::default());
    let run = h.run(&ex, h.request("submit-1")).await;

    assert_eq!(run.result.status, RunStatus::Failure);
    let s = &run.result.steps["simple"];
    assert_eq!(s.state, StepRunState::Failed);
    assert_eq!(s.attempts, 1);
    let error = s.error.as_ref().unwrap();
    assert_eq!(error.kind, "submit");
    assert!(error.message.contains("no sending today"), "{error}");
    assert!(h.worker.executed_steps().is_empty());
    h.shutdown().await;
}

/// An in-memory backend whose waits and deletes fail on demand.
#[derive(Default)]
struct FlakyResults {
    inner: InMemoryResultBackend,
    temporary_wait_failures: AtomicU32,
    permanent_wait_failure: AtomicBool,
    delete_fails: AtomicBool,
}

fn service(code: &str, class: ErrorClass) -> ResultError {
    ResultError::Service(ServiceError::new("test", code, "injected", class))
}

#[async_trait]
impl ResultBackend for FlakyResults {
    async fn set_result(&self, task_id: &str, result: &TaskResult) -> Result<(), ResultError> {
        self.inner.set_result(task_id, result).await
    }
    async fn is_result_ready(&self, task_id: &str) -> Result<bool, ResultError> {
        self.inner.is_result_ready(task_id).await
    }
    async fn get_result(&self, task_id: &str, with_logs: bool) -> Result<TaskResult, ResultError> {
        self.inner.get_result(task_id, with_logs).await
    }
    async fn wait_result(
        &self,
        task_id: &str,
        timeout: Option<Duration>,
    ) -> Result<TaskResult, ResultError> {
        if self.permanent_wait_failure.load(Ordering::SeqCst) {
            return Err(service("AccessDenied", ErrorClass::Permanent));
        }
        let left = self.temporary_wait_failures.load(Ordering::SeqCst);
        if left > 0 {
            self.temporary_wait_failures
                .store(left - 1, Ordering::SeqCst);
            return Err(service("SlowDown", ErrorClass::Temporary));
        }
        self.inner.wait_result(task_id, timeout).await
    }
    async fn delete_result(&self, task_id: &str) -> Result<(), ResultError> {
        if self.delete_fails.load(Ordering::SeqCst) {
            return Err(service("InternalError", ErrorClass::Temporary));
        }
        self.inner.delete_result(task_id).await
    }
}

fn quick_result_wait(retries: u32) -> ExecutorConfig {
    ExecutorConfig {
        result_wait: BackendRetry {
            retries,
            backoff: Backoff::none(),
        },
        // The injected wait failures are counted over every wait: keep them for results.
        step_progress: false,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_result_backend_errors_are_waited_out() {
    let flaky = Arc::new(FlakyResults::default());
    flaky.temporary_wait_failures.store(3, Ordering::SeqCst);
    let h = Harness::builder(single()).results(flaky.clone()).start();
    let ex = h.executor(quick_result_wait(3));
    let run = h.run(&ex, h.request("flaky-1")).await;

    assert_eq!(run.result.status, RunStatus::Success);
    assert_eq!(run.result.steps["simple"].attempts, 1);
    assert_eq!(flaky.temporary_wait_failures.load(Ordering::SeqCst), 0);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_or_permanent_result_backend_errors_fail_the_step() {
    let flaky = Arc::new(FlakyResults::default());
    flaky.temporary_wait_failures.store(3, Ordering::SeqCst);
    let h = Harness::builder(single()).results(flaky.clone()).start();
    let ex = h.executor(quick_result_wait(2));
    let run = h.run(&ex, h.request("flaky-2")).await;
    assert_eq!(run.result.status, RunStatus::Failure);
    let error = run.result.steps["simple"].error.clone().unwrap();
    assert_eq!(error.kind, "result_backend");
    assert!(error.message.contains("SlowDown"), "{error}");

    flaky.permanent_wait_failure.store(true, Ordering::SeqCst);
    let run = h.run(&ex, h.request("flaky-3")).await;
    assert_eq!(run.result.status, RunStatus::Failure);
    let error = run.result.steps["simple"].error.clone().unwrap();
    assert_eq!(error.kind, "result_backend");
    assert!(error.message.contains("AccessDenied"), "{error}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_result_delete_is_reported_and_the_run_goes_on() {
    let flaky = Arc::new(FlakyResults::default());
    flaky.delete_fails.store(true, Ordering::SeqCst);
    let h = Harness::builder(single()).results(flaky.clone()).start();
    let ex = h.executor(ExecutorConfig::default());
    let run = h.run(&ex, h.request("delete-1")).await;

    assert_eq!(run.result.status, RunStatus::Success);
    assert!(run.step_events("simple").iter().any(|k| matches!(
        k,
        EventKind::EngineEvent { message } if message.contains("could not delete the result")
    )));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_without_a_result_in_time_fails_with_kind_timeout_and_is_retried() {
    let job = Job::builder("timeouts")
        .step(
            StepDef::new("hangs", "hangs")
                .output("result")
                .retry(RetryPolicy::new(2, Backoff::none())),
        )
        .step(StepDef::new("after", "noop").input("x", "hangs", "result"))
        .step(StepDef::new("fine", "simple"))
        .build()
        .unwrap();
    let h = Harness::builder(job)
        .behaviour("hangs", Behaviour::NeverAnswer)
        .start();
    let hook = h.recording_hook(false);
    let ex = h
        .executor(ExecutorConfig {
            step_timeout: Some(Duration::from_millis(300)),
            ..Default::default()
        })
        .with_cancel_hook(hook.clone());
    let run = h.run(&ex, h.request("timeout-1")).await;

    assert_eq!(run.result.status, RunStatus::Failure);
    let hangs = &run.result.steps["hangs"];
    assert_eq!(hangs.state, StepRunState::Failed);
    assert_eq!(hangs.attempts, 2);
    let error = hangs.error.as_ref().unwrap();
    assert_eq!(error.kind, "timeout");
    assert!(error.message.contains("300ms"), "{error}");
    assert_eq!(
        run.failures("hangs"),
        vec![
            ("timeout".to_string(), true),
            ("timeout".to_string(), false)
        ]
    );
    assert_eq!(run.result.steps["after"].state, StepRunState::Skipped);
    assert_eq!(run.result.steps["fine"].state, StepRunState::Succeeded);
    // Both timed-out attempts were handed to the cancel hook.
    let hangs_ids: Vec<String> = run
        .events
        .iter()
        .filter(|e| e.step_key.as_deref() == Some("hangs"))
        .filter_map(|e| match &e.kind {
            EventKind::StepQueued { task_id, .. } => Some(task_id.clone()),
            _ => None,
        })
        .collect();
    let mut called = hook.ids.lock().unwrap().clone();
    called.sort();
    let mut expected = hangs_ids;
    expected.sort();
    assert_eq!(called, expected);
    h.shutdown().await;
}

/// A broker whose sends fail with a temporary error a given number of times.
struct FlakyBroker {
    inner: Arc<dyn Broker>,
    temporary_failures: AtomicU32,
}

impl FlakyBroker {
    fn maybe_fail(&self) -> Result<(), BrokerError> {
        let left = self.temporary_failures.load(Ordering::SeqCst);
        if left == 0 {
            return Ok(());
        }
        self.temporary_failures.store(left - 1, Ordering::SeqCst);
        Err(BrokerError::Service(ServiceError::new(
            "test",
            "ThrottlingException",
            "injected",
            ErrorClass::Temporary,
        )))
    }
}

#[async_trait]
impl Broker for FlakyBroker {
    async fn kick(&self, message: &TaskMessage) -> Result<(), BrokerError> {
        self.maybe_fail()?;
        self.inner.kick(message).await
    }
    async fn kick_batch(&self, messages: &[TaskMessage]) -> Result<(), BrokerError> {
        self.maybe_fail()?;
        self.inner.kick_batch(messages).await
    }
    async fn listen(&self, stop: CancellationToken) -> Result<DeliveryStream, BrokerError> {
        self.inner.listen(stop).await
    }
    fn kind(&self) -> &'static str {
        "flaky"
    }
}

fn flaky_broker_harness(failures: u32) -> Harness {
    Harness::builder(single())
        .executor_queue(move |q| {
            let flaky = FlakyBroker {
                inner: q.broker().clone(),
                temporary_failures: AtomicU32::new(failures),
            };
            TaskQueue::new(Arc::new(flaky), q.results().clone())
        })
        .start()
}

fn quick_submit_retry(retries: u32) -> ExecutorConfig {
    ExecutorConfig {
        submit_retry: BackendRetry {
            retries,
            backoff: Backoff::none(),
        },
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_broker_errors_are_sent_again() {
    let h = flaky_broker_harness(2);
    let ex = h.executor(quick_submit_retry(2));
    let run = h.run(&ex, h.request("flaky-broker-1")).await;

    assert_eq!(run.result.status, RunStatus::Success);
    assert_eq!(run.result.steps["simple"].attempts, 1);
    assert_eq!(run.task_ids().len(), 1);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_broker_errors_fail_the_step_with_a_submit_error() {
    let h = flaky_broker_harness(3);
    let ex = h.executor(quick_submit_retry(2));
    let run = h.run(&ex, h.request("flaky-broker-2")).await;

    assert_eq!(run.result.status, RunStatus::Failure);
    let error = run.result.steps["simple"].error.clone().unwrap();
    assert_eq!(error.kind, "submit");
    assert!(error.message.contains("ThrottlingException"), "{error}");
    assert!(run.task_ids().is_empty());
    h.shutdown().await;
}
