//! Retry modes, policies and op retry requests.

use std::time::Duration;

use stepq_executor::{ExecutorConfig, RunStatus, StepRunState};
use stepq_plan::{Backoff, EventKind, Job, RetryMode, RetryPolicy, StepDef};

use crate::harness::{Behaviour, Harness};

fn backoff_ms(ms: u64) -> Backoff {
    Backoff {
        initial: Duration::from_millis(ms),
        multiplier: 2.0,
        max: Duration::from_secs(1),
        jitter: false,
    }
}

/// `flaky -> after`, `flaky` with the given policy.
fn retry_job(policy: Option<RetryPolicy>) -> Job {
    let mut flaky = StepDef::new("flaky", "flaky").output("result");
    if let Some(p) = policy {
        flaky = flaky.retry(p);
    }
    Job::builder("retry")
        .step(flaky)
        .step(
            StepDef::new("after", "add_one")
                .input("num", "flaky", "result")
                .output("result"),
        )
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_failing_twice_succeeds_on_attempt_3() {
    let h = Harness::builder(retry_job(Some(RetryPolicy::new(3, backoff_ms(10)))))
        .behaviour("flaky", Behaviour::FailTimes(2))
        .start();
    let ex = h.executor(ExecutorConfig::default());
    let run = h.run(&ex, h.request("retry-1")).await;

    assert_eq!(run.result.status, RunStatus::Success);
    let flaky = &run.result.steps["flaky"];
    assert_eq!(flaky.state, StepRunState::Succeeded);
    assert_eq!(flaky.attempts, 3);
    assert!(flaky.error.is_none());
    assert_eq!(
        run.retries("flaky"),
        vec![
            (2, Duration::from_millis(10)),
            (3, Duration::from_millis(20))
        ]
    );
    assert_eq!(
        run.failures("flaky"),
        vec![("op_error".into(), true), ("op_error".into(), true)]
    );
    // Each attempt is queued with its number, after the retry event that announced it.
    let queued: Vec<u32> = run
        .step_events("flaky")
        .into_iter()
        .filter_map(|k| match k {
            EventKind::StepQueued { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(queued, vec![1, 2, 3]);
    assert_eq!(run.result.known_state.attempts_of("flaky"), 3);
    // The stored output is the successful attempt's.
    let v: i64 = ex.output(&run.result, "flaky", "result").await.unwrap();
    assert_eq!(v, 3);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_at_max_attempts() {
    let h = Harness::builder(retry_job(Some(RetryPolicy::new(2, Backoff::none()))))
        .behaviour("flaky", Behaviour::FailTimes(5))
        .start();
    let ex = h.executor(ExecutorConfig::default());
    let run = h.run(&ex, h.request("retry-2")).await;

    assert_eq!(run.result.status, RunStatus::Failure);
    assert_eq!(run.result.steps["flaky"].attempts, 2);
    assert_eq!(run.result.steps["after"].state, StepRunState::Skipped);
    assert_eq!(
        run.failures("flaky"),
        vec![("op_error".into(), true), ("op_error".into(), false)]
    );
    assert_eq!(run.result.errors.len(), 1);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_policy_covers_steps_without_one() {
    let h = Harness::builder(retry_job(None))
        .behaviour("flaky", Behaviour::FailTimes(1))
        .start();
    let ex = h.executor(ExecutorConfig {
        default_retry: Some(RetryPolicy::new(2, Backoff::none())),
        ..Default::default()
    });
    let run = h.run(&ex, h.request("retry-3")).await;

    assert_eq!(run.result.status, RunStatus::Success);
    assert_eq!(run.result.steps["flaky"].attempts, 2);
    assert_eq!(run.retries("flaky"), vec![(2, Duration::ZERO)]);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_mode_makes_the_first_failure_final() {
    let h = Harness::builder(retry_job(Some(RetryPolicy::new(3, Backoff::none()))))
        .behaviour("flaky", Behaviour::FailTimes(1))
        .start();
    let ex = h.executor(ExecutorConfig {
        retry_mode: RetryMode::Disabled,
        ..Default::default()
    });
    let run = h.run(&ex, h.request("disabled-1")).await;

    assert_eq!(run.result.status, RunStatus::Failure);
    assert_eq!(run.result.steps["flaky"].attempts, 1);
    assert!(run.retries("flaky").is_empty());
    assert_eq!(run.failures("flaky"), vec![("op_error".into(), false)]);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_op_retry_request_retries_without_a_policy_and_honours_its_delay() {
    let h = Harness::builder(retry_job(None))
        .behaviour(
            "flaky",
            Behaviour::RequestRetry {
                after_ms: Some(30),
                times: 1,
            },
        )
        .start();
    let ex = h.executor(ExecutorConfig::default());
    let run = h.run(&ex, h.request("request-1")).await;

    assert_eq!(run.result.status, RunStatus::Success);
    assert_eq!(run.result.steps["flaky"].attempts, 2);
    assert_eq!(run.retries("flaky"), vec![(2, Duration::from_millis(30))]);
    // The retry was queued no earlier than the delay after the failure was seen.
    let failure_at = run
        .events
        .iter()
        .find(|e| matches!(e.kind, EventKind::StepFailure { .. }))
        .unwrap()
        .timestamp_us;
    let requeued_at = run
        .events
        .iter()
        .find(|e| matches!(e.kind, EventKind::StepQueued { attempt: 2, .. }))
        .unwrap()
        .timestamp_us;
    assert!(
        requeued_at - failure_at >= 30_000,
        "{}",
        requeued_at - failure_at
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn op_retry_requests_are_bounded_by_the_requested_retry_policy() {
    let h = Harness::builder(retry_job(None))
        .behaviour(
            "flaky",
            Behaviour::RequestRetry {
                after_ms: None,
                times: 10,
            },
        )
        .start();
    let ex = h.executor(ExecutorConfig {
        requested_retry: RetryPolicy::new(3, backoff_ms(5)),
        ..Default::default()
    });
    let run = h.run(&ex, h.request("request-2")).await;

    assert_eq!(run.result.status, RunStatus::Failure);
    assert_eq!(run.result.steps["flaky"].attempts, 3);
    // Without an op-given delay, the policy's backoff applies.
    assert_eq!(
        run.retries("flaky"),
        vec![
            (2, Duration::from_millis(5)),
            (3, Duration::from_millis(10))
        ]
    );
    assert_eq!(
        run.result.steps["flaky"].error.as_ref().unwrap().kind,
        "retry_requested"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_mode_ends_the_step_and_a_resume_reruns_it() {
    let h = Harness::builder(retry_job(None))
        .behaviour(
            "flaky",
            Behaviour::RequestRetry {
                after_ms: None,
                times: 1,
            },
        )
        .start();
    let ex = h.executor(ExecutorConfig {
        retry_mode: RetryMode::Deferred,
        ..Default::default()
    });
    let run = h.run(&ex, h.request("deferred-1")).await;

    assert_eq!(run.result.status, RunStatus::Failure);
    let flaky = &run.result.steps["flaky"];
    assert_eq!(flaky.state, StepRunState::Failed);
    assert!(flaky.retry_deferred);
    assert_eq!(flaky.attempts, 1);
    assert!(run.retries("flaky").is_empty());
    assert_eq!(
        run.failures("flaky"),
        vec![("retry_requested".into(), false)]
    );
    assert!(!run.result.known_state.is_completed("flaky"));
    assert_eq!(run.result.known_state.attempts_of("flaky"), 1);

    // Resuming from the known state reruns it as attempt 2, which succeeds.
    let run = h
        .run(
            &ex,
            h.request("deferred-1")
                .with_known_state(run.result.known_state.clone()),
        )
        .await;
    assert_eq!(run.result.status, RunStatus::Success);
    assert!(run
        .step_events("flaky")
        .iter()
        .any(|k| matches!(k, EventKind::StepQueued { attempt: 2, .. })));
    assert_eq!(run.result.steps["after"].state, StepRunState::Succeeded);
    h.shutdown().await;
}
