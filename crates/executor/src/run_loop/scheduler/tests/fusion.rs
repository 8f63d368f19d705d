//! Chain fusion and inline values: what goes out in one task, and which inline inputs
//! travel with it.

use super::*;

// ---- fusion --------------------------------------------------------------------------------

#[test]
fn a_chain_goes_out_as_one_task_of_at_most_max_fused_steps() {
    let config = ExecutorConfig {
        max_fused_steps: 3,
        step_timeout: Some(Duration::from_secs(10)),
        ..Default::default()
    };
    let mut s = started(chain(4), config);
    let batch = s.next_batch();
    assert_eq!(keys(&batch), [["s0", "s1", "s2"]]);
    let attempts = &batch[0].args.known_state.attempts;
    assert_eq!(
        *attempts,
        BTreeMap::from([("s0".into(), 1), ("s1".into(), 1), ("s2".into(), 1)])
    );
    let id = "s0+s1+s2#1";
    assert_eq!(
        sent(&mut s, &batch),
        [
            format!("s0:queued 1 {id}"),
            format!("s1:queued 1 {id}"),
            format!("s2:queued 1 {id}"),
            // The step timeout once per step of the task.
            format!("await {id} Some(30s)"),
        ]
    );
    assert_eq!(
        result(&mut s, &batch[0], &[ok("s0", 1), ok("s1", 1), ok("s2", 1)]),
        ["s0:success", "s1:success", "s2:success"]
    );
    let rest = s.next_batch();
    assert_eq!(keys(&rest), [["s3"]]);
    sent(&mut s, &rest);
    result(&mut s, &rest[0], &[ok("s3", 1)]);
    let (_, status, steps) = finish(s);
    assert_eq!(status, RunStatus::Success);
    assert!(steps.values().all(|&v| v == (StepRunState::Succeeded, 1)));
}

#[test]
fn fusion_stops_at_other_tags_or_policies_fan_outs_fan_ins_and_when_off() {
    let first_batch = |job: Job, config: ExecutorConfig| {
        let mut s = started(job, config);
        let tasks = s.next_batch();
        keys(&tasks)
            .into_iter()
            .map(|k| k.join("+"))
            .collect::<Vec<_>>()
    };
    let on = ExecutorConfig::default;
    let pair = || job([step("a", &[]), step("b", &["a"])]);
    assert_eq!(
        first_batch(pair(), on()),
        ["a+b"],
        "the control: a pair fuses"
    );

    let tagged = job([step("a", &[]), step("b", &["a"]).tag("db", "warehouse")]);
    assert_eq!(first_batch(tagged, on()), ["a"]);
    let retried = job([
        step("a", &[]),
        step("b", &["a"]).retry(RetryPolicy::new(2, Backoff::none())),
    ]);
    assert_eq!(first_batch(retried, on()), ["a"]);
    let fan_out = job([step("a", &[]), step("b", &["a"]), step("c", &["a"])]);
    assert_eq!(first_batch(fan_out, on()), ["a"]);
    let fan_in = job([step("a", &[]), step("b", &[]), step("c", &["a", "b"])]);
    assert_eq!(first_batch(fan_in, on()), ["a", "b"]);
    let off = ExecutorConfig {
        fuse_chains: false,
        ..on()
    };
    assert_eq!(first_batch(pair(), off), ["a"]);
    let one = ExecutorConfig {
        max_fused_steps: 1,
        ..on()
    };
    assert_eq!(first_batch(pair(), one), ["a"]);
}

#[test]
fn steps_a_fused_task_did_not_run_are_sent_again() {
    let mut s = started(chain(4), ExecutorConfig::default());
    let task = send_one(&mut s);
    assert_eq!(
        keys(std::slice::from_ref(&task)),
        [["s0", "s1", "s2", "s3"]]
    );
    // The worker stopped after `s1`: `s2` and `s3` did not start.
    assert_eq!(
        result(&mut s, &task, &[ok("s0", 1), ok("s1", 1)]),
        ["s0:success", "s1:success"]
    );
    let again = s.next_batch();
    assert_eq!(keys(&again), [["s2", "s3"]]);
    assert_eq!(
        again[0].attempt, 1,
        "a step that did not run keeps its attempt"
    );
    assert_eq!(
        completed(&again[0].args.known_state),
        BTreeSet::from(["s1"])
    );
    sent(&mut s, &again);
    result(&mut s, &again[0], &[ok("s2", 1), ok("s3", 1)]);
    let (_, status, steps) = finish(s);
    assert_eq!(status, RunStatus::Success);
    assert!(steps.values().all(|&v| v == (StepRunState::Succeeded, 1)));
}

#[test]
fn a_failure_inside_a_fused_task_skips_the_steps_after_it() {
    use StepRunState::{Failed, Skipped, Succeeded};
    let mut s = started(chain(4), ExecutorConfig::default());
    let task = send_one(&mut s);
    // `s2` and `s3` report too, as a wrong worker might: they are not taken up.
    let reports = [ok("s0", 1), failed("s1", 1), ok("s2", 1), ok("s3", 1)];
    assert_eq!(
        result(&mut s, &task, &reports),
        [
            "s0:success",
            "s1:failure op_error final",
            "s2:skipped",
            "s3:skipped"
        ]
    );
    let expected = states(&[
        ("s0", Succeeded, 1),
        ("s1", Failed, 1),
        ("s2", Skipped, 0),
        ("s3", Skipped, 0),
    ]);
    assert_eq!(finish(s), ("failure".into(), RunStatus::Failure, expected));
}

#[test]
fn a_failed_submission_fails_the_attempt_and_frees_the_fused_steps() {
    let policy = RetryPolicy::new(2, Backoff::none());
    let job = job([
        step("a", &[]).retry(policy.clone()),
        step("b", &["a"]).retry(policy),
    ]);
    let mut s = started(job, ExecutorConfig::default());
    let batch = s.next_batch();
    assert_eq!(keys(&batch), [["a", "b"]]);
    let d = s.on_submitted(
        vec![(batch[0].step, 1)],
        1000,
        Err(ErrorInfo::new("submit", "broker down")),
    );
    assert_eq!(show(&s, &d), ["a:failure submit retry", "a:retry 2 0ns"]);
    let again = s.next_batch();
    assert_eq!(
        keys(&again),
        [["a", "b"]],
        "`b` was not sent: it fuses again"
    );
    assert_eq!(again[0].attempt, 2);
    assert_eq!(again[0].args.known_state.attempts["b"], 1);
}

// ---- inline values -------------------------------------------------------------------------

#[test]
fn inline_values_are_kept_until_the_last_reader_is_sent_then_dropped() {
    let retry = RetryPolicy::new(2, Backoff::none());
    let config = ExecutorConfig {
        max_in_flight: 1,
        inline_inputs_per_message: 100,
        ..Default::default()
    };
    let a = 0;
    let mut s = started(
        job([
            step("a", &[]),
            step("b", &["a"]),
            step("c", &["a"]).retry(retry),
        ]),
        config,
    );
    let value = InlineValue::new("a", "result", vec![1, 2, 3]);
    let mut report = ok("a", 1);
    // A copy of another step's output is not `a`'s to hand out.
    report.inline_outputs = vec![value.clone(), InlineValue::new("x", "result", vec![9])];
    let task = send_one(&mut s);
    assert!(task.args.inline_inputs.is_empty());
    result(&mut s, &task, &[report]);
    assert!(s.inline.keeps(a));

    let b = send_one(&mut s);
    assert_eq!(b.args.step_keys, ["b"]);
    assert_eq!(b.args.inline_inputs, std::slice::from_ref(&value));
    assert!(s.inline.keeps(a), "`c` has not been sent");
    result(&mut s, &b, &[ok("b", 1)]);

    let c = send_one(&mut s);
    assert_eq!(c.args.step_keys, ["c"]);
    assert_eq!(c.args.inline_inputs, [value]);
    assert!(!s.inline.keeps(a), "its last reader was sent");
    assert_eq!(
        result(&mut s, &c, &[failed("c", 1)]),
        ["c:failure op_error retry", "c:retry 2 0ns"]
    );
    let again = send_one(&mut s);
    assert_eq!((again.args.step_keys[0].as_str(), again.attempt), ("c", 2));
    assert!(
        again.args.inline_inputs.is_empty(),
        "dropped: read from the store"
    );
}

#[test]
fn inline_inputs_stay_within_the_message_budget() {
    let reader = StepDef::new("b", "op")
        .input("x", "a", "x")
        .input("y", "a", "y")
        .input("z", "a", "z");
    let outputs = StepDef::new("a", "op").output("x").output("y").output("z");
    let run = |budget: usize| {
        let config = ExecutorConfig {
            inline_inputs_per_message: budget,
            fuse_chains: false,
            ..Default::default()
        };
        let mut s = started(job([outputs.clone(), reader.clone()]), config);
        let task = send_one(&mut s);
        let mut done = report(
            "a",
            1,
            StepStatus::Success {
                emitted: vec!["x".into(), "y".into(), "z".into()],
            },
        );
        done.inline_outputs = vec![
            InlineValue::new("a", "x", vec![0; 3]),
            InlineValue::new("a", "y", vec![0; 6]),
            InlineValue::new("a", "z", vec![0; 2]),
        ];
        result(&mut s, &task, &[done]);
        let b = send_one(&mut s);
        b.args
            .inline_inputs
            .iter()
            .map(|v| v.output_name.clone())
            .collect::<Vec<_>>()
    };
    // `y` does not fit after `x`; `z` still does.
    assert_eq!(run(6), ["x", "z"]);
    assert_eq!(run(100), ["x", "y", "z"]);
    assert!(run(0).is_empty(), "0 turns inlining off");
}
