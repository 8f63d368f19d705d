//! Readiness, batching, limits, skips, selection and the event stream.

use std::collections::BTreeSet;
use std::time::Duration;

use stepq_executor::{ExecutorConfig, RunStatus, StepRunState, TagLimit};
use stepq_plan::{EventKind, Job, KnownState, SkipReason, StepDef};

use crate::harness::{Harness, TAG};

pub(crate) fn diamond() -> Job {
    Job::builder("diamond")
        .step(
            StepDef::new("emit_values", "emit_values")
                .output("value_one")
                .output("value_two"),
        )
        .step(
            StepDef::new("add_one", "add_one")
                .input("num", "emit_values", "value_one")
                .output("result"),
        )
        .step(
            StepDef::new("renamed", "add_one")
                .input("num", "emit_values", "value_two")
                .output("result"),
        )
        .step(
            StepDef::new("subtract", "subtract")
                .input("left", "add_one", "result")
                .input("right", "renamed", "result")
                .output("result"),
        )
        .build()
        .unwrap()
}

pub(crate) fn fan_out(width: usize) -> Job {
    Job::builder("parallel")
        .step(StepDef::new("root", "simple").output("result"))
        .steps((0..width).map(|i| {
            StepDef::new(format!("child_{i}"), "add_one")
                .input("num", "root", "result")
                .output("result")
        }))
        .build()
        .unwrap()
}

fn independent(n: usize, tagged: impl Fn(usize) -> bool) -> Job {
    Job::builder("independent")
        .steps((0..n).map(|i| {
            let s = StepDef::new(format!("s{i:02}"), "op").output("result");
            if tagged(i) {
                s.tag(TAG.0, TAG.1)
            } else {
                s
            }
        }))
        .build()
        .unwrap()
}

fn is_queued(k: &EventKind) -> bool {
    matches!(k, EventKind::StepQueued { .. })
}
fn is_start(k: &EventKind) -> bool {
    matches!(k, EventKind::StepStart { .. })
}
fn is_success(k: &EventKind) -> bool {
    matches!(k, EventKind::StepSuccess { .. })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diamond_runs_in_dependency_order_and_succeeds() {
    let h = Harness::builder(diamond()).start();
    let ex = h.executor(ExecutorConfig::default());
    let run = h.run(&ex, h.request("diamond-1")).await;

    assert_eq!(run.result.status, RunStatus::Success);
    assert!(run.result.errors.is_empty());
    for (key, s) in &run.result.steps {
        assert_eq!(s.state, StepRunState::Succeeded, "{key}");
        assert_eq!(s.attempts, 1, "{key}");
        assert_eq!(s.worker.as_deref(), Some("test-worker"), "{key}");
        assert!(s.queue_wait.is_some(), "{key}");
        assert_eq!(s.duration, Some(Duration::from_millis(1)), "{key}");
        assert!(s.error.is_none());
    }
    // Run events frame the run.
    assert_eq!(run.events[0].kind, EventKind::RunStarting);
    assert_eq!(run.events[1].kind, EventKind::RunStarted);
    assert_eq!(run.events.last().unwrap().kind, EventKind::RunSuccess);
    // Per step: queued, then started, then succeeded.
    for key in ["emit_values", "add_one", "renamed", "subtract"] {
        let q = run.position(key, is_queued);
        let s = run.position(key, is_start);
        let ok = run.position(key, is_success);
        assert!(
            q < s && s < ok,
            "{key}: queued {q}, start {s}, success {ok}"
        );
    }
    // Dependents are queued only after their upstream succeeded.
    let root_done = run.position("emit_values", is_success);
    assert!(run.position("add_one", is_queued) > root_done);
    assert!(run.position("renamed", is_queued) > root_done);
    let sub = run.position("subtract", is_queued);
    assert!(sub > run.position("add_one", is_success));
    assert!(sub > run.position("renamed", is_success));
    // Forwarded worker events are there too.
    assert!(run.step_events("emit_values").iter().any(
        |k| matches!(k, EventKind::StepOutputHandled { output, .. } if output == "value_two")
    ));
    // Known state has every step and output; outputs are readable by step and name.
    assert_eq!(run.result.known_state.completed.len(), 4);
    let v: i64 = ex.output(&run.result, "subtract", "result").await.unwrap();
    assert_eq!(v, 1);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ready_step_is_submitted_at_once() {
    // Each child waits until all ten children started (the root too): submitting them one
    // by one as results arrive would never get there.
    let h = Harness::builder(fan_out(10))
        .hold(|key, load| key == "root" || load.started >= 11)
        .start();
    let ex = h.executor(ExecutorConfig::default());
    let run = h.run(&ex, h.request("fan-1")).await;

    assert_eq!(run.result.status, RunStatus::Success);
    assert_eq!(h.worker.load.borrow().max_running, 10);
    // One batch: every child was queued with the same timestamp.
    let stamps: BTreeSet<u64> = run
        .events
        .iter()
        .filter(|e| {
            e.step_key
                .as_deref()
                .is_some_and(|k| k.starts_with("child_"))
        })
        .filter(|e| is_queued(&e.kind))
        .map(|e| e.timestamp_us)
        .collect();
    assert_eq!(
        stamps.len(),
        1,
        "children were queued in more than one batch"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_is_never_exceeded() {
    // Steps hold until 3 run at once (or all started), so more would show if submitted.
    let h = Harness::builder(independent(12, |_| false))
        .hold(|_, load| load.running >= 3 || load.started >= 12)
        .start();
    let ex = h.executor(ExecutorConfig {
        max_in_flight: 3,
        ..Default::default()
    });
    let run = h.run(&ex, h.request("limit-1")).await;

    assert_eq!(run.result.status, RunStatus::Success);
    assert_eq!(h.worker.load.borrow().max_running, 3);
    assert_eq!(h.worker.executed_steps().len(), 12);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_limit_is_never_exceeded_and_untagged_steps_go_on() {
    // s00..s05 are tagged db=warehouse; they hold until 2 of them run at once.
    let h = Harness::builder(independent(10, |i| i < 6))
        .hold(|key, load| key >= "s06" || load.tagged >= 2 || load.tagged_started >= 6)
        .start();
    let ex = h.executor(ExecutorConfig {
        tag_limits: vec![TagLimit::new(TAG.0, TAG.1, 2)],
        ..Default::default()
    });
    let run = h.run(&ex, h.request("tags-1")).await;

    assert_eq!(run.result.status, RunStatus::Success);
    let load = h.worker.load.borrow().clone();
    assert_eq!(load.max_tagged, 2);
    assert_eq!(load.tagged_started, 6);
    // Untagged steps were not held back by the tagged ones: they all ran in the first batch.
    let first_batch = run
        .events
        .iter()
        .find(|e| is_queued(&e.kind))
        .unwrap()
        .timestamp_us;
    for i in 6..10 {
        let key = format!("s{i:02}");
        let queued = run
            .events
            .iter()
            .find(|e| e.step_key.as_deref() == Some(&key) && is_queued(&e.kind))
            .unwrap();
        assert_eq!(queued.timestamp_us, first_batch, "{key}");
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_of_unemitted_optional_outputs_are_skipped_and_the_run_succeeds() {
    let job = Job::builder("optional_outputs")
        .step(
            StepDef::new("maybe", "maybe")
                .optional_output("a")
                .optional_output("b")
                .optional_output("c"),
        )
        .step(StepDef::new("use_a", "use").input("x", "maybe", "a"))
        .step(StepDef::new("use_b", "use").input("x", "maybe", "b"))
        .step(StepDef::new("use_c", "use").input("x", "maybe", "c"))
        .build()
        .unwrap();
    let h = Harness::builder(job)
        .behaviour("maybe", crate::harness::Behaviour::Emit(vec!["a"]))
        .start();
    let ex = h.executor(ExecutorConfig::default());
    let run = h.run(&ex, h.request("optional-1")).await;

    assert_eq!(run.result.status, RunStatus::Success);
    let st = |k: &str| run.result.steps[k].state;
    assert_eq!(st("maybe"), StepRunState::Succeeded);
    assert_eq!(st("use_a"), StepRunState::Succeeded);
    assert_eq!(st("use_b"), StepRunState::Skipped);
    assert_eq!(st("use_c"), StepRunState::Skipped);
    assert_eq!(
        run.result.steps["use_b"].skip_reason,
        Some(SkipReason::OutputNotEmitted {
            upstream: "maybe".into(),
            output: "b".into()
        })
    );
    assert!(run
        .step_events("use_c")
        .iter()
        .any(|k| matches!(k, EventKind::StepSkipped { .. })));
    assert_eq!(
        h.worker.executed_steps(),
        ["maybe", "use_a"].iter().map(|s| s.to_string()).collect()
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selection_runs_only_the_selected_steps() {
    let h = Harness::builder(diamond()).start();
    let ex = h.executor(ExecutorConfig::default());
    let run = h
        .run(&ex, h.request("subset-1").with_steps(["emit_values"]))
        .await;

    assert_eq!(run.result.status, RunStatus::Success);
    assert_eq!(
        run.result.steps["emit_values"].state,
        StepRunState::Succeeded
    );
    for key in ["add_one", "renamed", "subtract"] {
        assert_eq!(run.result.steps[key].state, StepRunState::NotRun, "{key}");
        assert_eq!(run.result.steps[key].attempts, 0);
    }
    assert_eq!(
        h.worker.executed_steps(),
        BTreeSet::from(["emit_values".to_string()])
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_known_from_an_earlier_run_are_not_rerun() {
    let h = Harness::builder(diamond()).start();
    let ex = h.executor(ExecutorConfig::default());
    let mut known = KnownState::default();
    known.record_success(
        "emit_values",
        ["value_one".to_string(), "value_two".to_string()],
    );
    known.record_success("add_one", ["result".to_string()]);
    let run = h
        .run(&ex, h.request("resume-1").with_known_state(known))
        .await;

    assert_eq!(run.result.status, RunStatus::Success);
    assert_eq!(run.result.steps["emit_values"].state, StepRunState::NotRun);
    assert_eq!(run.result.steps["renamed"].state, StepRunState::Succeeded);
    assert_eq!(
        h.worker.executed_steps(),
        BTreeSet::from(["renamed".to_string(), "subtract".to_string()])
    );
    assert_eq!(run.result.known_state.completed.len(), 4);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumed_results_are_deleted() {
    let h = Harness::builder(fan_out(5)).start();
    let ex = h.executor(ExecutorConfig::default());
    let run = h.run(&ex, h.request("cleanup-1")).await;

    assert_eq!(run.result.status, RunStatus::Success);
    let ids = run.task_ids();
    assert_eq!(ids.len(), 6);
    for id in ids {
        assert!(!h.results.is_result_ready(&id).await.unwrap(), "{id} kept");
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_or_unread_event_stream_never_blocks_the_run() {
    let h = Harness::builder(fan_out(8)).start();
    let ex = h.executor(ExecutorConfig {
        event_buffer: 1,
        ..Default::default()
    });
    // Taken and dropped at once.
    let mut handle = ex.start(h.request("dropped-1")).unwrap();
    drop(handle.events());
    let result = tokio::time::timeout(Duration::from_secs(20), handle.wait())
        .await
        .expect("run blocked on a dropped event stream");
    assert_eq!(result.status, RunStatus::Success);
    // Never taken: `wait` drops it.
    let handle = ex.start(h.request("unread-1")).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(20), handle.wait())
        .await
        .expect("run blocked on an unread event stream");
    assert_eq!(result.status, RunStatus::Success);
    h.shutdown().await;
}
