//! Unit tests of the scheduler: real plans, fed by hand as the driver would, asserting the
//! exact decisions each input gives.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use stepq_plan::{
    Backoff, ErrorInfo, Event, EventKind, ExecutionPlan, InlineValue, Job, KnownState, RetryPolicy,
    StepDef, StepReport, StepStatus,
};
use stepq_results::TaskResult;

use super::{Answer, Decision, Scheduler, StepTask};
use crate::config::ExecutorConfig;
use crate::outcome::{RunStatus, StepRunState};
use crate::protocol;

mod fusion;
mod progress;
mod stopping;

// ---- helpers -------------------------------------------------------------------------------

/// A scheduler for every step of `job`, nothing known from earlier runs.
fn scheduler(job: Job, config: ExecutorConfig) -> Scheduler {
    let job = Arc::new(job);
    let plan = ExecutionPlan::new(job.clone(), None, &KnownState::default()).unwrap();
    Scheduler::new(
        "run-1".into(),
        job,
        Arc::new(config),
        serde_json::Value::Null,
        plan.progress(),
    )
}

/// A started scheduler (its start decisions checked).
fn started(job: Job, config: ExecutorConfig) -> Scheduler {
    let mut s = scheduler(job, config);
    let d = s.start();
    assert_eq!(show(&s, &d), ["run:starting", "run:started"]);
    s
}

/// A step reading output `result` of each of `from`, emitting its own `result`.
fn step(key: &str, from: &[&str]) -> StepDef {
    from.iter()
        .fold(StepDef::new(key, "op").output("result"), |s, u| {
            s.input(format!("in_{u}"), *u, "result")
        })
}

/// A job of these steps.
fn job(steps: impl IntoIterator<Item = StepDef>) -> Job {
    Job::builder("j").steps(steps).build().unwrap()
}

/// `s0 -> s1 -> ... -> s{n-1}`.
fn chain(n: usize) -> Job {
    job((0..n).map(|i| match i {
        0 => step("s0", &[]),
        _ => step(&format!("s{i}"), &[&format!("s{}", i - 1)]),
    }))
}

/// The task id the fake queue gives a task: its step keys and attempt.
fn task_id(task: &StepTask) -> String {
    format!("{}#{}", task.args.step_keys.join("+"), task.attempt)
}

/// Step keys of each task.
fn keys(tasks: &[StepTask]) -> Vec<Vec<&str>> {
    tasks
        .iter()
        .map(|t| t.args.step_keys.iter().map(String::as_str).collect())
        .collect()
}

/// The tasks were sent at t = 1000 µs.
fn sent(s: &mut Scheduler, tasks: &[StepTask]) -> Vec<String> {
    let steps = tasks.iter().map(|t| (t.step, t.attempt)).collect();
    let ids = tasks.iter().map(task_id).collect();
    let d = s.on_submitted(steps, 1000, Ok(ids));
    show(s, &d)
}

/// Takes the next batch, which must be one task, and sends it.
fn send_one(s: &mut Scheduler) -> StepTask {
    let mut tasks = s.next_batch();
    assert_eq!(tasks.len(), 1, "{:?}", keys(&tasks));
    sent(s, &tasks);
    tasks.remove(0)
}

/// A success report of `key`'s attempt `attempt`, emitting `result`.
fn ok(key: &str, attempt: u32) -> StepReport {
    report(
        key,
        attempt,
        StepStatus::Success {
            emitted: vec!["result".into()],
        },
    )
}

/// A failure report (kind `op_error`), no retry asked.
fn failed(key: &str, attempt: u32) -> StepReport {
    report(
        key,
        attempt,
        StepStatus::Failure {
            error: ErrorInfo::new("op_error", "boom"),
            retry_requested: None,
        },
    )
}

/// A report without events.
fn report(key: &str, attempt: u32, status: StepStatus) -> StepReport {
    StepReport {
        step_key: key.into(),
        attempt,
        worker: "w".into(),
        status,
        events: vec![],
        inline_outputs: vec![],
    }
}

/// A task's result carrying `reports`, run in 0.25 s.
fn answer(reports: &[StepReport]) -> Answer {
    Answer::Result(TaskResult::ok(
        protocol::reports_value(reports).unwrap(),
        0.25,
    ))
}

/// `task`'s result arrived with `reports`.
fn result(s: &mut Scheduler, task: &StepTask, reports: &[StepReport]) -> Vec<String> {
    let d = s.on_result(task.step, task_id(task), answer(reports), None);
    show(s, &d)
}

/// Short names of decisions: `key:event` for events (`run:` for run events), else the
/// decision with its task id.
fn show(s: &Scheduler, decisions: &[Decision]) -> Vec<String> {
    decisions
        .iter()
        .map(|d| match d {
            Decision::Emit(e) => format!(
                "{}:{}",
                e.step_key.as_deref().unwrap_or("run"),
                event_name(&e.kind)
            ),
            Decision::AwaitResult {
                task_id, timeout, ..
            } => format!("await {task_id} {timeout:?}"),
            Decision::RetryAfter { step, delay } => {
                format!("retry-after {} {delay:?}", s.job.steps()[*step].key)
            }
            Decision::Cancel { task_id } => format!("cancel {task_id}"),
            Decision::StartGrace => "grace".into(),
        })
        .collect()
}

/// Short name of an event kind.
fn event_name(kind: &EventKind) -> String {
    match kind {
        EventKind::RunStarting => "starting".into(),
        EventKind::RunStarted => "started".into(),
        EventKind::RunSuccess => "success".into(),
        EventKind::RunFailure { .. } => "failure".into(),
        EventKind::RunCanceled => "canceled".into(),
        EventKind::StepQueued { attempt, task_id } => format!("queued {attempt} {task_id}"),
        EventKind::StepStart { .. } => "start".into(),
        EventKind::StepInputLoaded { .. } => "input".into(),
        EventKind::StepOutputHandled { .. } => "output".into(),
        EventKind::StepSuccess { .. } => "success".into(),
        EventKind::StepFailure { error, will_retry } => {
            let then = if *will_retry { "retry" } else { "final" };
            format!("failure {} {then}", error.kind)
        }
        EventKind::StepSkipped { .. } => "skipped".into(),
        EventKind::StepRetry { attempt, delay } => format!("retry {attempt} {delay:?}"),
        EventKind::StepCanceled => "canceled".into(),
        EventKind::EngineEvent { .. } => "engine".into(),
    }
}

/// The message of the engine event at `at` in `decisions`.
fn engine_message(decisions: &[Decision], at: usize) -> &str {
    match &decisions[at] {
        Decision::Emit(Event {
            kind: EventKind::EngineEvent { message },
            ..
        }) => message,
        other => panic!("not an engine event: {other:?}"),
    }
}

/// The run's final event name and status, and each step's final state and attempts.
fn finish(s: Scheduler) -> (String, RunStatus, BTreeMap<String, (StepRunState, u32)>) {
    assert!(s.is_finished(), "the plan is not complete");
    let (event, result) = s.finish();
    let steps = result
        .steps
        .iter()
        .map(|(k, v)| (k.clone(), (v.state, v.attempts)))
        .collect();
    (event_name(&event.kind), result.status, steps)
}

/// `(key, state, attempts)` as the map [`finish`] returns.
fn states(of: &[(&str, StepRunState, u32)]) -> BTreeMap<String, (StepRunState, u32)> {
    of.iter()
        .map(|(k, st, n)| (k.to_string(), (*st, *n)))
        .collect()
}

/// Keys of the steps whose outputs `known` lists as completed.
fn completed(known: &KnownState) -> BTreeSet<&str> {
    known.completed.keys().map(String::as_str).collect()
}

// ---- scheduling ----------------------------------------------------------------------------

#[test]
fn a_diamond_sends_each_step_once_its_upstream_steps_succeeded() {
    use StepRunState::Succeeded;
    let mut s = started(
        job([
            step("a", &[]),
            step("b", &["a"]),
            step("c", &["a"]),
            step("d", &["b", "c"]),
        ]),
        ExecutorConfig::default(),
    );

    let first = s.next_batch();
    assert_eq!(keys(&first), [["a"]]);
    assert_eq!(first[0].attempt, 1);
    assert_eq!(
        first[0].args.known_state.attempts,
        BTreeMap::from([("a".into(), 1)])
    );
    assert!(first[0].args.known_state.completed.is_empty());
    assert_eq!(sent(&mut s, &first), ["a:queued 1 a#1", "await a#1 None"]);
    assert!(s.next_batch().is_empty(), "nothing else is ready");

    assert_eq!(result(&mut s, &first[0], &[ok("a", 1)]), ["a:success"]);
    // `a` has two readers, `b` reads from `a` but `d` reads from `c` too: nothing fuses.
    let middle = s.next_batch();
    assert_eq!(keys(&middle), [["b"], ["c"]]);
    assert_eq!(
        completed(&middle[0].args.known_state),
        BTreeSet::from(["a"])
    );
    assert_eq!(
        sent(&mut s, &middle),
        [
            "b:queued 1 b#1",
            "await b#1 None",
            "c:queued 1 c#1",
            "await c#1 None"
        ]
    );

    assert_eq!(result(&mut s, &middle[0], &[ok("b", 1)]), ["b:success"]);
    assert!(s.next_batch().is_empty(), "`d` still waits for `c`");
    assert_eq!(result(&mut s, &middle[1], &[ok("c", 1)]), ["c:success"]);
    let last = s.next_batch();
    assert_eq!(keys(&last), [["d"]]);
    // Only what `d` reads travels with it.
    assert_eq!(
        completed(&last[0].args.known_state),
        BTreeSet::from(["b", "c"])
    );
    sent(&mut s, &last);
    assert!(!s.is_finished());
    assert_eq!(result(&mut s, &last[0], &[ok("d", 1)]), ["d:success"]);

    let expected = states(&[
        ("a", Succeeded, 1),
        ("b", Succeeded, 1),
        ("c", Succeeded, 1),
        ("d", Succeeded, 1),
    ]);
    assert_eq!(finish(s), ("success".into(), RunStatus::Success, expected));
}

#[test]
fn admission_holds_back_steps_beyond_max_in_flight() {
    let config = ExecutorConfig {
        max_in_flight: 2,
        ..Default::default()
    };
    let mut s = started(
        job([step("a", &[]), step("b", &[]), step("c", &[])]),
        config,
    );
    let batch = s.next_batch();
    assert_eq!(keys(&batch), [["a"], ["b"]]);
    sent(&mut s, &batch);
    assert!(s.next_batch().is_empty());
    result(&mut s, &batch[1], &[ok("b", 1)]);
    assert_eq!(keys(&s.next_batch()), [["c"]]);
}

#[test]
fn a_report_forwards_worker_events_and_sets_the_summary() {
    let mut s = started(job([step("a", &[])]), ExecutorConfig::default());
    let task = send_one(&mut s);
    let event = |kind| Event {
        timestamp_us: 1500,
        ..Event::step("run-1", "a", kind)
    };
    let mut report = ok("a", 1);
    report.events = vec![
        event(EventKind::StepStart {
            attempt: 1,
            worker: "w".into(),
        }),
        event(EventKind::StepOutputHandled {
            output: "result".into(),
            bytes: 3,
        }),
        // The worker's own success event gives the op time; the loop emits its own.
        event(EventKind::StepSuccess {
            duration: Duration::from_millis(7),
        }),
        // Run-level kinds are the orchestrator's: dropped.
        event(EventKind::RunSuccess),
    ];
    assert_eq!(
        result(&mut s, &task, &[report]),
        ["a:start", "a:output", "a:success"]
    );
    let (_, run) = s.finish();
    let a = &run.steps["a"];
    assert_eq!(a.duration, Some(Duration::from_millis(7)));
    assert_eq!(a.queue_wait, Some(Duration::from_micros(500)));
    assert_eq!(a.worker.as_deref(), Some("w"));
}

#[test]
fn task_errors_and_bad_results_fail_or_cancel_the_step() {
    let four = || {
        job([
            step("a", &[]),
            step("b", &[]),
            step("c", &[]),
            step("d", &[]),
        ])
    };
    let mut s = started(four(), ExecutorConfig::default());
    let tasks = s.next_batch();
    sent(&mut s, &tasks);
    let canceled = TaskResult::err(stepq_broker::receiver::kinds::CANCELED, "gate", 0.0);
    let d = s.on_result(
        tasks[0].step,
        task_id(&tasks[0]),
        Answer::Result(canceled),
        None,
    );
    assert_eq!(show(&s, &d), ["a:canceled"]);
    let failed = TaskResult::err("UnknownJob", "no job j", 0.0);
    let d = s.on_result(
        tasks[1].step,
        task_id(&tasks[1]),
        Answer::Result(failed),
        None,
    );
    assert_eq!(show(&s, &d), ["b:failure UnknownJob final"]);
    let garbage = TaskResult::ok(serde_json::json!("not reports"), 0.0);
    let d = s.on_result(
        tasks[2].step,
        task_id(&tasks[2]),
        Answer::Result(garbage),
        None,
    );
    assert_eq!(show(&s, &d), ["c:failure bad_report final"]);
    // Deleting the result failed, and the report is for another step.
    let d = s.on_result(
        tasks[3].step,
        task_id(&tasks[3]),
        answer(&[ok("a", 1)]),
        Some("backend down".into()),
    );
    assert_eq!(show(&s, &d), ["d:engine", "d:failure bad_report final"]);
    assert_eq!(
        engine_message(&d, 0),
        "could not delete the result of task d#1: backend down"
    );
    let (event, status, _) = finish(s);
    assert_eq!((event.as_str(), status), ("failure", RunStatus::Failure));
}

#[test]
fn success_without_a_required_output_is_a_failure() {
    let mut s = started(job([step("a", &[])]), ExecutorConfig::default());
    let task = send_one(&mut s);
    let none = report("a", 1, StepStatus::Success { emitted: vec![] });
    assert_eq!(
        result(&mut s, &task, &[none]),
        ["a:failure missing_output final"]
    );
}

// ---- retries -------------------------------------------------------------------------------

#[test]
fn a_failed_attempt_waits_its_delay_then_fails_for_good_and_skips_downstream() {
    use StepRunState::{Failed, Skipped};
    let backoff = Backoff {
        initial: Duration::from_millis(50),
        multiplier: 2.0,
        max: Duration::from_secs(1),
        jitter: false,
    };
    let mut s = started(
        job([
            step("a", &[]).retry(RetryPolicy::new(2, backoff)),
            step("b", &["a"]),
        ]),
        ExecutorConfig::default(),
    );
    let first = send_one(&mut s);
    assert_eq!(first.args.step_keys, ["a"], "other retry policy: not fused");
    assert_eq!(
        result(&mut s, &first, &[failed("a", 1)]),
        [
            "a:failure op_error retry",
            "a:retry 2 50ms",
            "retry-after a 50ms"
        ]
    );
    assert!(s.next_batch().is_empty(), "waiting for its delay");
    s.on_retry_due(first.step);
    let second = s.next_batch();
    assert_eq!(keys(&second), [["a"]]);
    assert_eq!((second[0].attempt, second[0].args.attempt), (2, 2));
    assert_eq!(second[0].args.known_state.attempts["a"], 2);
    sent(&mut s, &second);
    // A result for the first attempt's task comes late: nothing happens.
    assert!(result(&mut s, &first, &[ok("a", 1)]).is_empty());
    assert_eq!(
        result(&mut s, &second[0], &[failed("a", 2)]),
        ["a:failure op_error final", "b:skipped"]
    );
    let errors = s.errors.clone();
    assert_eq!(
        finish(s),
        (
            "failure".into(),
            RunStatus::Failure,
            states(&[("a", Failed, 2), ("b", Skipped, 0)])
        )
    );
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].message, "step `a`: boom");
}

#[test]
fn a_task_without_a_result_in_time_is_canceled_and_its_attempt_fails() {
    let config = ExecutorConfig {
        step_timeout: Some(Duration::from_secs(5)),
        ..Default::default()
    };
    let mut s = started(job([step("a", &[])]), config);
    let task = send_one(&mut s);
    let d = s.on_result(task.step, task_id(&task), Answer::TimedOut, None);
    assert_eq!(show(&s, &d), ["cancel a#1", "a:failure timeout final"]);
    assert!(s.errors[0].message.contains("within 5s"), "{:?}", s.errors);
    assert_eq!(finish(s).1, RunStatus::Failure);
}
