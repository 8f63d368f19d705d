//! Fused chains (a linear run of steps sent as one task) and inline inputs (small upstream
//! outputs carried in a step's message).

use std::collections::BTreeMap;

use stepq_executor::{known_state_from_events, ExecutorConfig, RunStatus, StepRunState};
use stepq_plan::{Backoff, EventKind, Job, RetryPolicy, SkipReason, StepDef};

use crate::harness::{collect, output_value, Behaviour, Finished, Harness};

/// `s0 -> s1 -> ... -> s{n-1}`, each reading the previous step's `result`.
fn chain(n: usize, retry: Option<RetryPolicy>) -> Job {
    Job::builder("chain")
        .steps((0..n).map(|i| {
            let mut step = StepDef::new(format!("s{i}"), "op").output("result");
            if i > 0 {
                step = step.input("num", format!("s{}", i - 1), "result");
            }
            match &retry {
                Some(policy) => step.retry(policy.clone()),
                None => step,
            }
        }))
        .build()
        .unwrap()
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("s{i}")).collect()
}

/// `(attempt, task_id)` of each StepQueued event of a step.
fn queued(run: &Finished, step: &str) -> Vec<(u32, String)> {
    run.step_events(step)
        .into_iter()
        .filter_map(|k| match k {
            EventKind::StepQueued { attempt, task_id } => Some((*attempt, task_id.clone())),
            _ => None,
        })
        .collect()
}

/// Short names of a step's events, in order.
fn names(run: &Finished, step: &str) -> Vec<&'static str> {
    run.step_events(step)
        .into_iter()
        .map(|k| match k {
            EventKind::StepQueued { .. } => "queued",
            EventKind::StepStart { .. } => "start",
            EventKind::StepOutputHandled { .. } => "output",
            EventKind::StepSuccess { .. } => "success",
            EventKind::StepFailure { .. } => "failure",
            EventKind::StepRetry { .. } => "retry",
            EventKind::StepSkipped { .. } => "skipped",
            EventKind::StepCanceled => "canceled",
            _ => "other",
        })
        .collect()
}

fn attempts(run: &Finished) -> BTreeMap<String, u32> {
    run.result
        .steps
        .iter()
        .map(|(k, s)| (k.clone(), s.attempts))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_runs_as_one_task_with_events_per_step() {
    let h = Harness::builder(chain(5, None)).start();
    let ex = h.executor(ExecutorConfig::default());
    let run = h.run(&ex, h.request("fused-1")).await;

    assert_eq!(run.result.status, RunStatus::Success);
    assert_eq!(*h.worker.tasks.lock().unwrap(), vec![keys(5)]);
    let task_id = queued(&run, "s0")[0].1.clone();
    for key in keys(5) {
        assert_eq!(queued(&run, &key), vec![(1, task_id.clone())], "{key}");
        assert_eq!(
            names(&run, &key),
            ["queued", "start", "output", "success"],
            "{key}"
        );
        let summary = &run.result.steps[&key];
        assert_eq!(summary.state, StepRunState::Succeeded, "{key}");
        assert_eq!(summary.attempts, 1, "{key}");
        assert!(summary.queue_wait.is_some(), "{key}");
        assert_eq!(summary.worker.as_deref(), Some("test-worker"));
    }
    // Successes come in chain order.
    let order: Vec<&str> = run
        .events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::StepSuccess { .. }))
        .filter_map(|e| e.step_key.as_deref())
        .collect();
    assert_eq!(order, ["s0", "s1", "s2", "s3", "s4"]);
    assert_eq!(run.result.known_state.completed.len(), 5);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fused_tasks_are_capped_and_fusing_can_be_turned_off() {
    let h = Harness::builder(chain(5, None)).start();
    let ex = h.executor(ExecutorConfig {
        max_fused_steps: 2,
        ..Default::default()
    });
    let run = h.run(&ex, h.request("fused-cap")).await;
    assert_eq!(run.result.status, RunStatus::Success);
    assert_eq!(
        *h.worker.tasks.lock().unwrap(),
        vec![
            vec!["s0".to_string(), "s1".into()],
            vec!["s2".into(), "s3".into()],
            vec!["s4".into()]
        ]
    );
    h.worker.tasks.lock().unwrap().clear();

    let ex = h.executor(ExecutorConfig {
        fuse_chains: false,
        ..Default::default()
    });
    let run = h.run(&ex, h.request("fused-off")).await;
    assert_eq!(run.result.status, RunStatus::Success);
    let tasks = h.worker.tasks.lock().unwrap().clone();
    assert_eq!(
        tasks,
        keys(5).into_iter().map(|k| vec![k]).collect::<Vec<_>>()
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_with_other_tags_or_several_upstreams_are_not_fused() {
    let job = Job::builder("mixed")
        .step(StepDef::new("a", "op").output("result"))
        .step(
            StepDef::new("b", "op")
                .input("x", "a", "result")
                .output("result")
                .tag("db", "warehouse"),
        )
        .step(StepDef::new("c", "op").output("result"))
        .step(
            StepDef::new("d", "op")
                .input("x", "b", "result")
                .input("y", "c", "result")
                .tag("db", "warehouse"),
        )
        .build()
        .unwrap();
    let h = Harness::builder(job).start();
    let ex = h.executor(ExecutorConfig::default());
    let run = h.run(&ex, h.request("mixed-1")).await;
    assert_eq!(run.result.status, RunStatus::Success);
    let tasks = h.worker.tasks.lock().unwrap().clone();
    assert_eq!(tasks.len(), 4, "{tasks:?}");
    assert!(tasks.iter().all(|t| t.len() == 1), "{tasks:?}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_in_the_middle_is_retried_from_that_step() {
    let policy = RetryPolicy::new(3, Backoff::none());
    let h = Harness::builder(chain(5, Some(policy)))
        .behaviour("s2", Behaviour::FailTimes(1))
        .start();
    let ex = h.executor(ExecutorConfig::default());
    let run = h.run(&ex, h.request("fused-retry")).await;

    assert_eq!(run.result.status, RunStatus::Success);
    let tasks = h.worker.tasks.lock().unwrap().clone();
    assert_eq!(
        tasks,
        vec![keys(5), vec!["s2".into(), "s3".into(), "s4".into()]],
        "the retry re-fuses the failed step with the rest"
    );
    assert_eq!(
        *h.worker.executed.lock().unwrap(),
        vec![
            ("s0".to_string(), 1),
            ("s1".into(), 1),
            ("s2".into(), 1),
            ("s2".into(), 2),
            ("s3".into(), 1),
            ("s4".into(), 1)
        ]
    );
    let expected: BTreeMap<String, u32> = [("s0", 1), ("s1", 1), ("s2", 2), ("s3", 1), ("s4", 1)]
        .into_iter()
        .map(|(k, n)| (k.to_string(), n))
        .collect();
    assert_eq!(attempts(&run), expected);
    assert_eq!(run.failures("s2"), [("op_error".to_string(), true)]);
    assert_eq!(run.retries("s2").len(), 1);
    assert_eq!(run.retries("s2")[0].0, 2);
    assert_eq!(
        names(&run, "s2"),
        ["queued", "start", "failure", "retry", "queued", "start", "output", "success"]
    );
    // s3 was queued in both tasks, started once, with attempt 1.
    let s3 = queued(&run, "s3");
    assert_eq!(s3.len(), 2);
    assert!(s3.iter().all(|(attempt, _)| *attempt == 1));
    assert_ne!(s3[0].1, s3[1].1);
    assert_eq!(
        names(&run, "s3"),
        ["queued", "queued", "start", "output", "success"]
    );
    assert!(run.failures("s3").is_empty() && run.failures("s4").is_empty());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_failure_in_the_middle_skips_the_rest() {
    let h = Harness::builder(chain(5, None))
        .behaviour("s2", Behaviour::Fail)
        .start();
    let ex = h.executor(ExecutorConfig::default());
    let run = h.run(&ex, h.request("fused-fail")).await;

    assert_eq!(run.result.status, RunStatus::Failure);
    assert_eq!(h.worker.tasks.lock().unwrap().len(), 1);
    for key in ["s0", "s1"] {
        assert_eq!(run.result.steps[key].state, StepRunState::Succeeded);
    }
    assert_eq!(run.result.steps["s2"].state, StepRunState::Failed);
    assert_eq!(run.result.steps["s2"].attempts, 1);
    assert_eq!(run.failures("s2"), [("op_error".to_string(), false)]);
    for key in ["s3", "s4"] {
        assert_eq!(run.result.steps[key].state, StepRunState::Skipped, "{key}");
        assert_eq!(run.result.steps[key].attempts, 0, "{key}: never started");
    }
    assert_eq!(
        run.result.steps["s3"].skip_reason,
        Some(SkipReason::UpstreamNotSucceeded {
            upstream: "s2".into()
        })
    );
    assert_eq!(
        h.worker.executed_steps(),
        ["s0", "s1", "s2"].iter().map(|s| s.to_string()).collect()
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_left_unrun_by_the_worker_is_sent_again() {
    // The worker stops before `s2` (it reports only what it ran); the executor sends the rest.
    let h = Harness::builder(chain(4, None))
        .behaviour("s2", Behaviour::NotRunInTask)
        .start();
    let ex = h.executor(ExecutorConfig::default());
    let run = h.run(&ex, h.request("fused-partial")).await;
    assert_eq!(run.result.status, RunStatus::Success);
    assert_eq!(
        *h.worker.tasks.lock().unwrap(),
        vec![keys(4), vec!["s2".to_string(), "s3".into()]]
    );
    for key in keys(4) {
        assert_eq!(run.result.steps[&key].attempts, 1, "{key}");
        assert_eq!(run.result.steps[&key].state, StepRunState::Succeeded);
    }
    assert_eq!(
        names(&run, "s2"),
        ["queued", "queued", "start", "output", "success"]
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupting_mid_chain_cancels_the_running_step_and_the_rest() {
    let h = Harness::builder(chain(5, None))
        .behaviour("s2", Behaviour::UntilCancelled)
        .start();
    let hook = h.recording_hook(false);
    let ex = h
        .executor(ExecutorConfig::default())
        .with_cancel_hook(hook.clone());
    let handle = ex.start(h.request("fused-cancel")).unwrap();
    h.worker
        .wait_load(|l| l.started == 3 && l.running == 1)
        .await;
    handle.interrupt();
    let run = collect(handle).await;

    assert_eq!(run.result.status, RunStatus::Canceled);
    // `s1` finished on the worker before the interrupt, and reported with the task after
    // it: first recorded canceled (it had not reported), then its success.
    for key in ["s0", "s1"] {
        assert_eq!(
            run.result.steps[key].state,
            StepRunState::Succeeded,
            "{key}"
        );
        assert_eq!(run.result.steps[key].attempts, 1, "{key}");
    }
    assert_eq!(
        names(&run, "s1"),
        ["queued", "canceled", "other", "start", "output", "success"]
    );
    assert!(run.events.iter().any(|e| e.step_key.as_deref() == Some("s1")
        && matches!(&e.kind, EventKind::EngineEvent { message } if message.contains("recorded as succeeded, not canceled"))));
    for key in ["s2", "s3", "s4"] {
        assert_eq!(run.result.steps[key].state, StepRunState::Canceled, "{key}");
        assert!(names(&run, key).contains(&"canceled"), "{key}");
        assert!(!names(&run, key).contains(&"success"), "{key}");
    }
    // The one task was asked to cancel.
    let task_id = queued(&run, "s0")[0].1.clone();
    assert_eq!(*hook.ids.lock().unwrap(), vec![task_id]);
    assert!(!h.worker.executed_steps().contains("s3"));
    // A resume takes `s1` as done: only `s2` onwards run again.
    let known = known_state_from_events(&run.events);
    assert_eq!(
        known
            .completed
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["s0", "s1"]
    );
    assert_eq!(known.completed["s1"].iter().collect::<Vec<_>>(), ["result"]);
    assert_eq!(run.result.known_state.completed, known.completed);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_of_a_chain_whose_first_step_is_canceled_stays_canceled() {
    // The interrupt cancels `s0` on the worker, which then stops: `s1` and `s2` stay canceled.
    let h = Harness::builder(chain(3, None))
        .behaviour("s0", Behaviour::UntilCancelled)
        .start();
    let hook = h.recording_hook(false);
    let ex = h
        .executor(ExecutorConfig::default())
        .with_cancel_hook(hook.clone());
    let handle = ex.start(h.request("fused-cancel-head")).unwrap();
    h.worker
        .wait_load(|l| l.started == 1 && l.running == 1)
        .await;
    handle.interrupt();
    let run = collect(handle).await;
    assert_eq!(run.result.status, RunStatus::Canceled);
    for key in ["s0", "s1", "s2"] {
        assert_eq!(run.result.steps[key].state, StepRunState::Canceled, "{key}");
    }
    assert_eq!(names(&run, "s1"), ["queued", "canceled"]);
    assert!(known_state_from_events(&run.events).completed.is_empty());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_outputs_reach_downstream_steps_inline() {
    // root -> 3 leaves -> join: no chain to fuse; outputs come back inline and go out inline.
    let job = Job::builder("fan")
        .step(StepDef::new("root", "op").output("result"))
        .steps((0..3).map(|i| {
            StepDef::new(format!("leaf_{i}"), "op")
                .input("num", "root", "result")
                .output("result")
        }))
        .step((0..3).fold(StepDef::new("join", "op"), |s, i| {
            s.input(format!("in_{i}"), format!("leaf_{i}"), "result")
        }))
        .build()
        .unwrap();
    let h = Harness::builder(job).start();
    let ex = h.executor(ExecutorConfig::default());
    let run = h.run(&ex, h.request("inline-1")).await;
    assert_eq!(run.result.status, RunStatus::Success);
    let received: BTreeMap<String, Vec<(String, String, Vec<u8>)>> = h
        .worker
        .inline_received
        .lock()
        .unwrap()
        .iter()
        .map(|(step, values)| {
            (
                step.clone(),
                values
                    .iter()
                    .map(|v| (v.step_key.clone(), v.output_name.clone(), v.value.clone()))
                    .collect(),
            )
        })
        .collect();
    assert!(received["root"].is_empty());
    for i in 0..3 {
        assert_eq!(
            received[&format!("leaf_{i}")],
            [("root".to_string(), "result".to_string(), output_value(1))]
        );
    }
    let join: Vec<&str> = received["join"].iter().map(|v| v.0.as_str()).collect();
    assert_eq!(join, ["leaf_0", "leaf_1", "leaf_2"]);

    // Off: nothing inline.
    h.worker.inline_received.lock().unwrap().clear();
    let ex = h.executor(ExecutorConfig {
        inline_inputs_per_message: 0,
        ..Default::default()
    });
    let run = h.run(&ex, h.request("inline-off")).await;
    assert_eq!(run.result.status, RunStatus::Success);
    assert!(h
        .worker
        .inline_received
        .lock()
        .unwrap()
        .iter()
        .all(|(_, v)| v.is_empty()));

    // A cap smaller than two values: the join gets what fits, reads the rest from the store.
    h.worker.inline_received.lock().unwrap().clear();
    let ex = h.executor(ExecutorConfig {
        inline_inputs_per_message: output_value(1).len() * 2 - 1,
        ..Default::default()
    });
    let run = h.run(&ex, h.request("inline-cap")).await;
    assert_eq!(run.result.status, RunStatus::Success);
    let join = h
        .worker
        .inline_received
        .lock()
        .unwrap()
        .iter()
        .find(|(s, _)| s == "join")
        .map(|(_, v)| v.len());
    assert_eq!(join, Some(1));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_values_are_dropped_once_their_last_reader_is_sent() {
    // `leaf` has a retry policy and `root` none, so they are not fused: `leaf`'s first attempt
    // gets `root`'s output inline; by its retry the copy is gone (its only reader was sent),
    // and the retry reads the output store instead.
    let job = Job::builder("pair")
        .step(StepDef::new("root", "op").output("result"))
        .step(
            StepDef::new("leaf", "op")
                .input("num", "root", "result")
                .output("result")
                .retry(RetryPolicy::new(2, Backoff::none())),
        )
        .build()
        .unwrap();
    let h = Harness::builder(job)
        .behaviour("leaf", Behaviour::FailTimes(1))
        .start();
    let ex = h.executor(ExecutorConfig::default());
    let run = h.run(&ex, h.request("inline-drop")).await;
    assert_eq!(run.result.status, RunStatus::Success);
    let leaf: Vec<usize> = h
        .worker
        .inline_received
        .lock()
        .unwrap()
        .iter()
        .filter(|(s, _)| s == "leaf")
        .map(|(_, v)| v.len())
        .collect();
    assert_eq!(leaf, [1, 0]);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fused_task_gets_the_step_timeout_once_per_step() {
    // `s1` never answers, so the task never does: after 3 x the step timeout the attempt of
    // the task's first step fails (which step hung cannot be told), and the rest are skipped.
    let timeout = std::time::Duration::from_millis(150);
    let h = Harness::builder(chain(3, None))
        .behaviour("s1", Behaviour::NeverAnswer)
        .start();
    let ex = h.executor(ExecutorConfig {
        step_timeout: Some(timeout),
        ..Default::default()
    });
    let run = h.run(&ex, h.request("fused-timeout")).await;
    assert_eq!(run.result.status, RunStatus::Failure);
    assert_eq!(run.failures("s0"), [("timeout".to_string(), false)]);
    assert_eq!(run.result.steps["s1"].state, StepRunState::Skipped);
    assert_eq!(run.result.steps["s2"].state, StepRunState::Skipped);
    let at = |pred: fn(&EventKind) -> bool| {
        run.events
            .iter()
            .find(|e| e.step_key.as_deref() == Some("s0") && pred(&e.kind))
            .map(|e| e.timestamp_us)
            .unwrap()
    };
    let waited = at(|k| matches!(k, EventKind::StepFailure { .. }))
        - at(|k| matches!(k, EventKind::StepQueued { .. }));
    assert!(
        waited >= 3 * timeout.as_micros() as u64,
        "timed out after {waited} µs, before 3 x {timeout:?}"
    );
    h.shutdown().await;
}
