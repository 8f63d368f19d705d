//! Stopping: interrupt, fail fast, the cancel grace period, and fused steps that report after
//! the run began to stop.

use super::*;

// ---- stopping ------------------------------------------------------------------------------

#[test]
fn an_interrupt_cancels_steps_not_started_and_asks_in_flight_tasks_to_cancel() {
    use StepRunState::Canceled;
    let config = ExecutorConfig {
        max_in_flight: 1,
        ..Default::default()
    };
    let steps = [
        step("a", &[]),
        step("b", &[]),
        step("c", &[]),
        step("d", &["b"]),
    ];
    let mut s = started(job(steps), config);
    let a = send_one(&mut s);
    assert_eq!(a.args.step_keys, ["a"]);
    let d = s.interrupt();
    assert_eq!(
        show(&s, &d),
        [
            "grace",
            "run:engine",
            "d:canceled",
            "b:canceled",
            "c:canceled",
            "cancel a#1"
        ]
    );
    assert_eq!(
        engine_message(&d, 1),
        "run interrupted: canceling steps not started, asking 1 in-flight step(s) to cancel"
    );
    assert!(s.is_stopping());
    assert!(s.next_batch().is_empty(), "nothing is sent while stopping");
    let canceled = report("a", 1, StepStatus::Canceled);
    assert_eq!(result(&mut s, &a, &[canceled]), ["a:canceled"]);
    let expected = states(&[
        ("a", Canceled, 1),
        ("b", Canceled, 0),
        ("c", Canceled, 0),
        ("d", Canceled, 0),
    ]);
    assert_eq!(
        finish(s),
        ("canceled".into(), RunStatus::Canceled, expected)
    );
}

#[test]
fn fail_fast_stops_the_run_at_the_first_final_failure() {
    use StepRunState::{Canceled, Failed, Succeeded};
    let config = ExecutorConfig {
        fail_fast: true,
        ..Default::default()
    };
    let steps = [
        step("a", &[]),
        step("b", &[]),
        step("c", &["b"]).tag("db", "warehouse"),
    ];
    let mut s = started(job(steps), config);
    let batch = s.next_batch();
    assert_eq!(keys(&batch), [["a"], ["b"]]);
    sent(&mut s, &batch);
    assert_eq!(
        result(&mut s, &batch[0], &[failed("a", 1)]),
        [
            "a:failure op_error final",
            "grace",
            "run:engine",
            "c:canceled",
            "cancel b#1"
        ]
    );
    // `b` finishes anyway; `c` stays canceled.
    assert_eq!(result(&mut s, &batch[1], &[ok("b", 1)]), ["b:success"]);
    let expected = states(&[("a", Failed, 1), ("b", Succeeded, 1), ("c", Canceled, 0)]);
    assert_eq!(finish(s), ("failure".into(), RunStatus::Failure, expected));
}

#[test]
fn a_retry_due_while_stopping_is_canceled_not_sent() {
    let retry = RetryPolicy::new(
        3,
        Backoff::exponential(Duration::from_secs(1), Duration::from_secs(1)),
    );
    let mut s = started(
        job([step("a", &[]).retry(retry)]),
        ExecutorConfig::default(),
    );
    let task = send_one(&mut s);
    let d = result(&mut s, &task, &[failed("a", 1)]);
    assert_eq!(d.len(), 3, "{d:?}");
    assert!(d[2].starts_with("retry-after a "), "{d:?}");
    let d = s.interrupt();
    assert_eq!(show(&s, &d), ["grace", "run:engine", "a:canceled"]);
    s.on_retry_due(task.step);
    assert!(s.next_batch().is_empty());
    assert_eq!(finish(s).1, RunStatus::Canceled);
}

#[test]
fn the_end_of_the_grace_period_cancels_what_did_not_report() {
    // In flight: canceled; its late result changes nothing.
    let mut s = started(job([step("a", &[])]), ExecutorConfig::default());
    let task = send_one(&mut s);
    let d = s.interrupt();
    assert_eq!(show(&s, &d), ["grace", "run:engine", "cancel a#1"]);
    let d = s.end_grace();
    assert_eq!(show(&s, &d), ["run:engine", "a:canceled"]);
    assert!(engine_message(&d, 0).starts_with("1 in-flight step(s) did not report"));
    assert!(result(&mut s, &task, &[ok("a", 1)]).is_empty());
    assert_eq!(finish(s).1, RunStatus::Canceled);

    // Still being sent: canceled; once sent, it is not awaited.
    let mut s = started(job([step("a", &[])]), ExecutorConfig::default());
    let batch = s.next_batch();
    let d = s.interrupt();
    assert_eq!(show(&s, &d), ["grace", "run:engine"]);
    let d = s.end_grace();
    assert_eq!(show(&s, &d), ["run:engine", "a:canceled"]);
    assert!(sent(&mut s, &batch).is_empty());
    assert_eq!(finish(s).1, RunStatus::Canceled);
}

#[test]
fn a_fused_step_that_succeeded_after_the_run_began_to_stop_counts_as_succeeded() {
    use StepRunState::{Canceled, Succeeded};
    let mut s = started(chain(3), ExecutorConfig::default());
    let task = send_one(&mut s);
    assert_eq!(task.args.step_keys, ["s0", "s1", "s2"]);
    let id = task_id(&task);
    let d = s.interrupt();
    assert_eq!(
        show(&s, &d),
        [
            "grace",
            "run:engine",
            "s1:canceled",
            "s2:canceled",
            &format!("cancel {id}")
        ]
    );
    // The worker ran `s0` and `s1` before the cancel reached it.
    let reports = [
        ok("s0", 1),
        ok("s1", 1),
        report("s2", 1, StepStatus::Canceled),
    ];
    let d = s.on_result(task.step, id.clone(), answer(&reports), None);
    assert_eq!(show(&s, &d), ["s0:success", "s1:engine", "s1:success"]);
    assert!(engine_message(&d, 1).contains("after the run began to stop"));
    let expected = states(&[
        ("s0", Succeeded, 1),
        ("s1", Succeeded, 1),
        ("s2", Canceled, 0),
    ]);
    assert_eq!(
        finish(s),
        ("canceled".into(), RunStatus::Canceled, expected)
    );
}
