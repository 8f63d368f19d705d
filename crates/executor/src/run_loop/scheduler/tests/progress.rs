//! Progress entries: a step's start and a fused task's successes recorded before the task's
//! result, never twice, and kept when the task ends without a result or the run stops.

use stepq_plan::TaskProgress;

use super::*;

/// The `StepStart` of `key`'s attempt `attempt`, stamped at t = 2000 µs.
fn start_event(key: &str, attempt: u32) -> Event {
    Event {
        timestamp_us: 2000,
        run_id: "run-1".into(),
        step_key: Some(key.into()),
        kind: EventKind::StepStart {
            attempt,
            worker: "w".into(),
        },
    }
}

/// A success report of `key` carrying its start and its success (as a worker's does).
fn ok_with_events(key: &str) -> StepReport {
    let mut report = ok(key, 1);
    report.events = vec![
        start_event(key, 1),
        Event::step(
            "run-1",
            key,
            EventKind::StepSuccess {
                duration: Duration::from_millis(5),
            },
        ),
    ];
    report
}

/// Entry: `finished` succeeded, `starting` starts.
fn entry(finished: &[&str], starting: Option<&str>) -> TaskProgress {
    TaskProgress {
        finished: finished.iter().map(|k| ok_with_events(k)).collect(),
        started: starting.map(|k| start_event(k, 1)),
    }
}

fn progress(s: &mut Scheduler, task: &StepTask, progress: TaskProgress) -> Vec<String> {
    let d = s.on_progress(task.step, &task_id(task), progress);
    show(s, &d)
}

#[test]
fn a_fused_tasks_steps_are_recorded_as_they_start_and_end_and_not_again_from_its_result() {
    let mut s = started(chain(3), ExecutorConfig::default());
    let task = send_one(&mut s);
    assert_eq!(task.args.step_keys, ["s0", "s1", "s2"]);
    assert_eq!(
        progress(&mut s, &task, entry(&[], Some("s0"))),
        ["s0:start"]
    );
    assert_eq!(
        progress(&mut s, &task, entry(&["s0"], Some("s1"))),
        ["s0:success", "s1:start"]
    );
    // A duplicate entry (a redelivered task) adds nothing.
    assert!(progress(&mut s, &task, entry(&["s0"], Some("s1"))).is_empty());
    assert_eq!(
        progress(&mut s, &task, entry(&["s1"], Some("s2"))),
        ["s1:success", "s2:start"]
    );
    let reports = ["s0", "s1", "s2"].map(ok_with_events);
    assert_eq!(result(&mut s, &task, &reports), ["s2:success"]);
    // An entry after the result changes nothing.
    assert!(progress(&mut s, &task, entry(&["s1"], Some("s2"))).is_empty());
    let (_, status, steps) = finish(s);
    assert_eq!(status, RunStatus::Success);
    assert!(steps.values().all(|&v| v == (StepRunState::Succeeded, 1)));
}

#[test]
fn a_redelivered_task_started_on_another_worker_is_recorded_again() {
    let mut s = started(chain(1), ExecutorConfig::default());
    let task = send_one(&mut s);
    assert_eq!(
        progress(&mut s, &task, entry(&[], Some("s0"))),
        ["s0:start"]
    );
    // Its worker died; the message came back and another worker started the same attempt:
    // its result carries that start, which the log gets too (the table shows who ran it).
    let mut report = ok_with_events("s0");
    report.worker = "survivor".into();
    report.events[0].timestamp_us = 9000;
    report.events[0].kind = EventKind::StepStart {
        attempt: 1,
        worker: "survivor".into(),
    };
    assert_eq!(result(&mut s, &task, &[report]), ["s0:start", "s0:success"]);
    let (_, status, steps) = finish(s);
    assert_eq!(status, RunStatus::Success);
    assert_eq!(steps["s0"], (StepRunState::Succeeded, 1));
}

#[test]
fn successes_out_of_order_or_of_another_attempt_are_not_recorded_early() {
    let mut s = started(chain(3), ExecutorConfig::default());
    let task = send_one(&mut s);
    assert!(progress(&mut s, &task, entry(&["s1"], None)).is_empty());
    let mut other = entry(&["s0"], None);
    other.finished[0].attempt = 2;
    assert!(progress(&mut s, &task, other).is_empty());
}

#[test]
fn a_task_timing_out_after_some_steps_succeeded_keeps_them_and_fails_the_next() {
    let config = ExecutorConfig {
        step_timeout: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    let mut s = started(chain(3), config);
    let task = send_one(&mut s);
    progress(&mut s, &task, entry(&[], Some("s0")));
    progress(&mut s, &task, entry(&["s0"], Some("s1")));
    let d = s.on_result(task.step, task_id(&task), Answer::TimedOut, None);
    // s0 stays succeeded (not failed, not re-run); s1, in flight, failed for good (no
    // retry policy): s2 is skipped.
    assert_eq!(
        show(&s, &d),
        [
            "cancel s0+s1+s2#1",
            "s1:failure timeout final",
            "s2:skipped"
        ]
    );
    let (_, status, steps) = finish(s);
    assert_eq!(status, RunStatus::Failure);
    assert_eq!(steps["s0"], (StepRunState::Succeeded, 1));
    assert_eq!(steps["s1"], (StepRunState::Failed, 1));
}

#[test]
fn an_interrupt_keeps_steps_heard_to_succeed_when_the_grace_period_ends() {
    let mut s = started(chain(3), ExecutorConfig::default());
    let task = send_one(&mut s);
    progress(&mut s, &task, entry(&[], Some("s0")));
    progress(&mut s, &task, entry(&["s0"], Some("s1")));
    let d = s.interrupt();
    // s1 and s2 are not started as far as the plan goes; s1 is running on the worker.
    assert_eq!(
        show(&s, &d),
        [
            "grace",
            "run:engine",
            "s1:canceled",
            "s2:canceled",
            "cancel s0+s1+s2#1"
        ]
    );
    let d = s.end_grace();
    // s0 succeeded on its worker: not canceled.
    assert_eq!(show(&s, &d), ["run:engine"]);
    let (_, status, steps) = finish(s);
    assert_eq!(status, RunStatus::Canceled);
    assert_eq!(steps["s0"].0, StepRunState::Succeeded);
    assert_eq!(steps["s1"].0, StepRunState::Canceled);
}

#[test]
fn an_interrupt_after_a_member_succeeded_does_not_cancel_it() {
    let mut s = started(chain(3), ExecutorConfig::default());
    let task = send_one(&mut s);
    progress(&mut s, &task, entry(&["s0"], None));
    progress(&mut s, &task, entry(&["s1"], Some("s2")));
    let d = s.interrupt();
    assert_eq!(
        show(&s, &d),
        ["grace", "run:engine", "s2:canceled", "cancel s0+s1+s2#1"]
    );
    let d = s.end_grace();
    assert_eq!(show(&s, &d), ["run:engine"]);
    let (_, _, steps) = finish(s);
    assert_eq!(steps["s0"].0, StepRunState::Succeeded);
    assert_eq!(steps["s1"].0, StepRunState::Succeeded);
    assert_eq!(steps["s2"].0, StepRunState::Canceled);
}
