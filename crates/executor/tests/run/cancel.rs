//! Interrupt and fail-fast.

use std::collections::BTreeSet;
use std::time::Duration;

use stepq_executor::{ExecutorConfig, RunStatus, StepRunState};
use stepq_plan::{EventKind, Job, StepDef};
use tokio_util::sync::CancellationToken;

use crate::harness::{collect, Behaviour, Harness};

/// Three long steps `long_0..2` and `after` downstream of `long_0`.
fn long_job() -> Job {
    Job::builder("long")
        .steps((0..3).map(|i| StepDef::new(format!("long_{i}"), "sleep").output("result")))
        .step(StepDef::new("after", "noop").input("x", "long_0", "result"))
        .build()
        .unwrap()
}

fn long_harness(behaviour: Behaviour) -> Harness {
    let mut b = Harness::builder(long_job());
    for i in 0..3 {
        b = b.behaviour(&format!("long_{i}"), behaviour.clone());
    }
    b.start()
}

fn queued_ids(run: &crate::harness::Finished, prefix: &str) -> BTreeSet<String> {
    run.events
        .iter()
        .filter(|e| e.step_key.as_deref().is_some_and(|k| k.starts_with(prefix)))
        .filter_map(|e| match &e.kind {
            EventKind::StepQueued { task_id, .. } => Some(task_id.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_cancels_in_flight_steps_through_the_hook_and_ends_canceled() {
    let h = long_harness(Behaviour::UntilCancelled);
    let hook = h.recording_hook(false);
    let ex = h
        .executor(ExecutorConfig::default())
        .with_cancel_hook(hook.clone());
    let handle = ex.start(h.request("interrupt-1")).unwrap();
    h.worker.wait_load(|l| l.running == 3).await;
    handle.interrupt();
    let run = collect(handle).await;

    assert_eq!(run.result.status, RunStatus::Canceled);
    assert_eq!(run.events.last().unwrap().kind, EventKind::RunCanceled);
    for i in 0..3 {
        let key = format!("long_{i}");
        assert_eq!(
            run.result.steps[&key].state,
            StepRunState::Canceled,
            "{key}"
        );
        assert!(run
            .step_events(&key)
            .iter()
            .any(|k| matches!(k, EventKind::StepCanceled)));
    }
    assert_eq!(run.result.steps["after"].state, StepRunState::Canceled);
    // The hook was asked for exactly the in-flight tasks.
    let called: BTreeSet<String> = hook.ids.lock().unwrap().iter().cloned().collect();
    assert_eq!(called, queued_ids(&run, "long_"));
    assert!(!h.worker.executed_steps().contains("after"));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_that_never_report_are_canceled_after_the_grace_period() {
    let h = long_harness(Behaviour::NeverAnswer);
    // The hook fails: that is reported, and the run still ends.
    let hook = h.recording_hook(true);
    let ex = h
        .executor(ExecutorConfig {
            cancel_grace: Duration::from_millis(200),
            ..Default::default()
        })
        .with_cancel_hook(hook.clone());
    let token = CancellationToken::new();
    let handle = ex
        .start_with_interrupt(h.request("interrupt-2"), token.clone())
        .unwrap();
    h.worker.wait_load(|l| l.running == 3).await;
    token.cancel();
    let run = collect(handle).await;

    assert_eq!(run.result.status, RunStatus::Canceled);
    for i in 0..3 {
        assert_eq!(
            run.result.steps[&format!("long_{i}")].state,
            StepRunState::Canceled
        );
    }
    assert_eq!(hook.ids.lock().unwrap().len(), 3);
    let engine: Vec<&str> = run
        .events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::EngineEvent { message } => Some(message.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        engine
            .iter()
            .any(|m| m.contains("cancel queue unreachable")),
        "{engine:?}"
    );
    assert!(
        engine.iter().any(|m| m.contains("did not report within")),
        "{engine:?}"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupting_through_the_handle_leaves_a_shared_token_alone() {
    let h = long_harness(Behaviour::UntilCancelled);
    let ex = h
        .executor(ExecutorConfig::default())
        .with_cancel_hook(h.recording_hook(false));
    let shared = CancellationToken::new();
    let handle = ex
        .start_with_interrupt(h.request("interrupt-3"), shared.clone())
        .unwrap();
    h.worker.wait_load(|l| l.running == 3).await;
    handle.interrupt_token().cancel();
    let run = collect(handle).await;
    assert_eq!(run.result.status, RunStatus::Canceled);
    assert!(!shared.is_cancelled());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_cancels_in_flight_steps_and_ends_failure() {
    let job = Job::builder("fail_fast")
        .step(StepDef::new("fails", "fails"))
        .step(StepDef::new("long", "sleep").output("result"))
        .step(StepDef::new("after_long", "noop").input("x", "long", "result"))
        .build()
        .unwrap();
    // `fails` fails only once `long` runs, so `long` is surely in flight.
    let h = Harness::builder(job)
        .behaviour("fails", Behaviour::Fail)
        .behaviour("long", Behaviour::UntilCancelled)
        .hold(|key, load| key != "fails" || load.started >= 2)
        .start();
    let hook = h.recording_hook(false);
    let ex = h
        .executor(ExecutorConfig {
            fail_fast: true,
            ..Default::default()
        })
        .with_cancel_hook(hook.clone());
    let run = h.run(&ex, h.request("fail-fast-1")).await;

    assert_eq!(run.result.status, RunStatus::Failure);
    assert_eq!(run.result.steps["fails"].state, StepRunState::Failed);
    assert_eq!(run.result.steps["long"].state, StepRunState::Canceled);
    assert_eq!(run.result.steps["after_long"].state, StepRunState::Canceled);
    let called: BTreeSet<String> = hook.ids.lock().unwrap().iter().cloned().collect();
    assert_eq!(called, queued_ids(&run, "long"));
    assert!(matches!(
        run.events.last().unwrap().kind,
        EventKind::RunFailure { .. }
    ));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fail_fast_other_steps_run_to_their_end() {
    let job = Job::builder("no_fail_fast")
        .step(StepDef::new("fails", "fails"))
        .step(StepDef::new("slow", "slow").output("result"))
        .step(StepDef::new("after_slow", "noop").input("x", "slow", "result"))
        .build()
        .unwrap();
    // `slow` finishes only after `fails` was reported.
    let h = Harness::builder(job)
        .behaviour("fails", Behaviour::Fail)
        .hold(|key, load| key != "slow" || load.started >= 2 && load.running == 1)
        .start();
    let ex = h.executor(ExecutorConfig::default());
    let run = h.run(&ex, h.request("no-fail-fast-1")).await;

    assert_eq!(run.result.status, RunStatus::Failure);
    assert_eq!(run.result.steps["slow"].state, StepRunState::Succeeded);
    assert_eq!(
        run.result.steps["after_slow"].state,
        StepRunState::Succeeded
    );
    h.shutdown().await;
}
