//! Execution plans and incremental progress.

use std::collections::BTreeSet;
use std::sync::Arc;

use stepq_plan::{
    ExecutionPlan, Job, KnownState, PlanError, PlanProgress, SkipReason, StepDef, StepOutcome,
    StepState,
};

/// A step with one output `out` fed by output `out` of each upstream.
fn step(key: &str, upstream: &[&str]) -> StepDef {
    upstream
        .iter()
        .fold(StepDef::new(key, "op").output("out"), |s, u| {
            s.input(format!("in_{u}"), *u, "out")
        })
}

fn job(steps: Vec<StepDef>) -> Arc<Job> {
    Arc::new(
        Job::builder("test")
            .steps(steps)
            .build()
            .expect("valid job"),
    )
}

/// a -> {b, c} -> d
fn diamond() -> Arc<Job> {
    job(vec![
        step("a", &[]),
        step("b", &["a"]),
        step("c", &["a"]),
        step("d", &["b", "c"]),
    ])
}

fn full_plan(job: Arc<Job>) -> ExecutionPlan {
    ExecutionPlan::new(job, None, &KnownState::default()).expect("plan")
}

fn sel(keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| k.to_string()).collect()
}

fn success() -> StepOutcome {
    StepOutcome::Success {
        emitted: vec!["out".into()],
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn state(p: &PlanProgress, key: &str) -> StepState {
    p.state_of(key).cloned().expect("step exists")
}

fn upstream_failed(upstream: &str) -> SkipReason {
    SkipReason::UpstreamNotSucceeded {
        upstream: upstream.into(),
    }
}

// ---- ExecutionPlan --------------------------------------------------------------------------

#[test]
fn selection_of_an_unknown_step_is_rejected() {
    let err = ExecutionPlan::new(
        diamond(),
        Some(&sel(&["a", "nope"])),
        &KnownState::default(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        PlanError::UnknownStep {
            job: "test".into(),
            step: "nope".into()
        }
    );
    assert_eq!(err.to_string(), "job `test` has no step `nope`");
}

#[test]
fn empty_selection_is_rejected() {
    let err = ExecutionPlan::new(diamond(), Some(&[]), &KnownState::default()).unwrap_err();
    assert_eq!(err, PlanError::EmptySelection);
    assert_eq!(err.to_string(), "the step selection is empty");
}

#[test]
fn selection_without_its_upstream_is_rejected() {
    let err =
        ExecutionPlan::new(diamond(), Some(&sel(&["b", "d"])), &KnownState::default()).unwrap_err();
    assert_eq!(
        err,
        PlanError::MissingUpstream {
            step: "b".into(),
            upstream: "a".into(),
            output: "out".into()
        }
    );
    let msg = err.to_string();
    assert!(
        msg.contains("`b`") && msg.contains("`a`") && msg.contains("`out`"),
        "{msg}"
    );
}

#[test]
fn selection_reads_inputs_from_known_state() {
    let mut known = KnownState::default();
    known.record_success("a", ["out".to_string()]);
    let plan = ExecutionPlan::new(diamond(), Some(&sel(&["b", "c", "d"])), &known).unwrap();
    assert_eq!(plan.len(), 3);
    assert!(!plan.is_empty());
    assert_eq!(plan.known_state(), &known);
    let mut p = plan.progress();
    assert_eq!(sorted(p.take_ready()), sel(&["b", "c"]));
    assert_eq!(state(&p, "a"), StepState::NotInPlan);
    assert!(
        !p.complete("a", success()),
        "a step not in the plan cannot complete"
    );
}

#[test]
fn selection_of_a_subset_runs_only_it() {
    let plan =
        ExecutionPlan::new(diamond(), Some(&sel(&["a", "c"])), &KnownState::default()).unwrap();
    assert_eq!(plan.steps_to_run().collect::<Vec<_>>(), ["a", "c"]);
    let mut p = plan.progress();
    assert_eq!(p.take_ready(), sel(&["a"]));
    assert!(p.complete("a", success()));
    assert_eq!(p.take_ready(), sel(&["c"]));
    assert!(p.complete("c", success()));
    assert!(p.is_complete());
    assert_eq!(state(&p, "b"), StepState::NotInPlan);
    assert_eq!(state(&p, "d"), StepState::NotInPlan);
}

#[test]
fn selecting_a_step_twice_is_harmless() {
    let plan =
        ExecutionPlan::new(diamond(), Some(&sel(&["a", "a"])), &KnownState::default()).unwrap();
    assert_eq!(plan.len(), 1);
}

#[test]
fn resume_skips_completed_steps() {
    let mut known = KnownState::default();
    known.record_success("a", ["out".to_string()]);
    known.record_success("b", ["out".to_string()]);
    let plan = ExecutionPlan::new(diamond(), None, &known).unwrap();
    assert_eq!(plan.steps_to_run().collect::<Vec<_>>(), ["c", "d"]);
    assert_eq!(plan.len(), 2);
    let mut p = plan.progress();
    assert_eq!(p.take_ready(), sel(&["c"]));
    assert_eq!(state(&p, "d"), StepState::Waiting(1));
    assert!(p.complete("c", success()));
    assert_eq!(p.take_ready(), sel(&["d"]));
    assert!(p.complete("d", success()));
    assert!(p.is_complete());
    // Everything is known now: a resume from here has nothing to run.
    let done = ExecutionPlan::new(diamond(), None, p.known_state()).unwrap();
    assert!(done.is_empty());
    assert_eq!(done.len(), 0);
    let mut p = done.progress();
    assert!(p.is_complete());
    assert!(p.take_ready().is_empty());
}

#[test]
fn resume_skips_consumers_of_outputs_the_known_step_did_not_emit() {
    let j = job(vec![
        StepDef::new("a", "op").optional_output("maybe"),
        StepDef::new("b", "op")
            .input("x", "a", "maybe")
            .output("out"),
        step("c", &["b"]),
        step("free", &[]),
    ]);
    let mut known = KnownState::default();
    known.record_success("a", Vec::<String>::new());
    let plan = ExecutionPlan::new(j, None, &known).unwrap();
    let mut p = plan.progress();
    assert_eq!(
        p.take_skipped(),
        vec![
            (
                "b".to_string(),
                SkipReason::OutputNotEmitted {
                    upstream: "a".into(),
                    output: "maybe".into()
                }
            ),
            ("c".to_string(), upstream_failed("b")),
        ]
    );
    assert_eq!(p.take_ready(), sel(&["free"]));
    assert_eq!(p.unfinished(), 1);
    assert!(p.complete("free", success()));
    assert!(p.is_complete());
}

#[test]
fn steps_to_run_is_topological() {
    let j = job(vec![
        step("d", &["b", "c"]),
        step("c", &["a"]),
        step("b", &["a"]),
        step("a", &[]),
    ]);
    let plan = full_plan(j);
    let order: Vec<&str> = plan.steps_to_run().collect();
    assert_eq!(order.first(), Some(&"a"));
    assert_eq!(order.last(), Some(&"d"));
    assert_eq!(order.len(), 4);
}

#[test]
fn downstream_of_is_transitive_and_breadth_first() {
    let j = job(vec![
        step("a", &[]),
        step("b", &["a"]),
        step("c", &["a"]),
        step("d", &["b", "c"]),
        step("e", &["d"]),
        step("other", &[]),
    ]);
    let plan = full_plan(j.clone());
    assert_eq!(plan.downstream_of("a"), sel(&["b", "c", "d", "e"]));
    assert_eq!(plan.downstream_of("c"), sel(&["d", "e"]));
    assert!(plan.downstream_of("e").is_empty());
    assert!(plan.downstream_of("other").is_empty());
    assert!(plan.downstream_of("no-such-step").is_empty());
    // Steps outside the plan are not listed.
    let partial =
        ExecutionPlan::new(j, Some(&sel(&["a", "b", "c"])), &KnownState::default()).unwrap();
    assert_eq!(partial.downstream_of("a"), sel(&["b", "c"]));
}

#[test]
fn downstream_indices_are_the_distinct_in_plan_readers() {
    // `d` reads two outputs of `b`: listed once.
    let d = step("d", &["b", "c"]).input("again", "b", "out");
    let j = job(vec![
        step("a", &[]),
        step("b", &["a"]),
        step("c", &["a"]),
        d,
        step("other", &[]),
    ]);
    let ix = |key: &str| j.step_index(key).unwrap();
    let plan = full_plan(j.clone());
    assert_eq!(plan.downstream_indices(ix("a")), [ix("b"), ix("c")]);
    assert_eq!(plan.downstream_indices(ix("b")), [ix("d")]);
    assert!(plan.downstream_indices(ix("d")).is_empty());
    assert!(plan.downstream_indices(ix("other")).is_empty());
    assert!(plan.downstream_indices(99).is_empty(), "no such index");
    // Steps outside the plan neither read nor are read.
    let partial =
        ExecutionPlan::new(j.clone(), Some(&sel(&["a", "b"])), &KnownState::default()).unwrap();
    assert_eq!(partial.downstream_indices(ix("a")), [ix("b")]);
    assert!(partial.downstream_indices(ix("b")).is_empty());
    assert!(partial.downstream_indices(ix("c")).is_empty());
}

// ---- PlanProgress ---------------------------------------------------------------------------

#[test]
fn diamond_becomes_ready_in_dependency_order() {
    let mut p = full_plan(diamond()).progress();
    assert_eq!(p.unfinished(), 4);
    assert_eq!(state(&p, "a"), StepState::Ready);
    assert_eq!(state(&p, "d"), StepState::Waiting(2));
    assert_eq!(p.take_ready(), sel(&["a"]));
    assert_eq!(state(&p, "a"), StepState::InFlight);
    assert!(p.take_ready().is_empty(), "nothing new before a completes");

    assert!(p.complete("a", success()));
    assert_eq!(p.unfinished(), 3);
    assert_eq!(sorted(p.take_ready()), sel(&["b", "c"]));

    assert!(p.complete("c", success()));
    assert_eq!(state(&p, "d"), StepState::Waiting(1));
    assert!(p.take_ready().is_empty(), "d still waits for b");

    assert!(p.complete("b", success()));
    assert_eq!(p.take_ready(), sel(&["d"]));
    assert!(!p.is_complete());
    assert!(p.complete("d", success()));
    assert!(p.is_complete());
    assert_eq!(p.unfinished(), 0);
    assert!(p.take_skipped().is_empty());
    for key in ["a", "b", "c", "d"] {
        assert_eq!(state(&p, key), StepState::Succeeded);
        assert!(p.known_state().is_completed(key));
    }
}

#[test]
fn states_lists_every_step_in_declaration_order() {
    let p = full_plan(diamond()).progress();
    let keys: Vec<&str> = p.states().map(|(k, _)| k).collect();
    assert_eq!(keys, ["a", "b", "c", "d"]);
    assert!(p.state_of("zzz").is_none());
    assert_eq!(p.plan().len(), 4);
}

#[test]
fn failure_skips_downstream_transitively_while_independent_branches_go_on() {
    // a -> b -> c -> d, a -> x -> y, and an unrelated root r.
    let j = job(vec![
        step("a", &[]),
        step("b", &["a"]),
        step("c", &["b"]),
        step("d", &["c"]),
        step("x", &["a"]),
        step("y", &["x"]),
        step("r", &[]),
    ]);
    let mut p = full_plan(j).progress();
    assert_eq!(sorted(p.take_ready()), sel(&["a", "r"]));
    assert!(p.complete("a", success()));
    assert_eq!(sorted(p.take_ready()), sel(&["b", "x"]));

    assert!(p.complete("b", StepOutcome::Failure));
    assert_eq!(state(&p, "b"), StepState::Failed);
    assert_eq!(
        p.take_skipped(),
        vec![
            ("c".to_string(), upstream_failed("b")),
            ("d".to_string(), upstream_failed("c")),
        ]
    );
    assert_eq!(state(&p, "c"), StepState::Skipped);
    assert_eq!(state(&p, "d"), StepState::Skipped);
    assert_eq!(p.unfinished(), 3, "x, y and r are unaffected");

    assert!(p.complete("x", success()));
    assert_eq!(p.take_ready(), sel(&["y"]));
    assert!(p.complete("y", success()));
    assert!(p.complete("r", success()));
    assert!(p.is_complete());
    assert!(p.take_skipped().is_empty(), "skips are drained once");
}

#[test]
fn failure_in_a_diamond_skips_the_join_once() {
    let mut p = full_plan(diamond()).progress();
    p.take_ready();
    assert!(p.complete("a", success()));
    p.take_ready();
    assert!(p.complete("b", StepOutcome::Failure));
    assert_eq!(
        p.take_skipped(),
        vec![("d".to_string(), upstream_failed("b"))]
    );
    // c still finishes; d stays skipped.
    assert!(p.complete("c", success()));
    assert!(p.take_ready().is_empty());
    assert_eq!(state(&p, "d"), StepState::Skipped);
    assert!(p.take_skipped().is_empty());
    assert!(p.is_complete());
}

#[test]
fn a_failed_step_skips_a_downstream_step_that_is_already_ready_elsewhere() {
    // c needs a and b; both are roots. a fails before b completes; c must not be handed out.
    let j = job(vec![step("a", &[]), step("b", &[]), step("c", &["a", "b"])]);
    let mut p = full_plan(j).progress();
    assert_eq!(p.take_ready(), sel(&["a", "b"]));
    assert!(p.complete("b", success()));
    assert!(p.complete("a", StepOutcome::Failure));
    assert!(p.take_ready().is_empty());
    assert_eq!(
        p.take_skipped(),
        vec![("c".to_string(), upstream_failed("a"))]
    );
    assert!(p.is_complete());
}

#[test]
fn canceled_step_skips_its_downstream() {
    let mut p = full_plan(diamond()).progress();
    p.take_ready();
    assert!(p.complete("a", StepOutcome::Canceled));
    assert_eq!(state(&p, "a"), StepState::Canceled);
    let skipped: BTreeSet<String> = p.take_skipped().into_iter().map(|(k, _)| k).collect();
    assert_eq!(skipped, ["b", "c", "d"].map(String::from).into());
    assert!(p.is_complete());
}

#[test]
fn optional_output_not_emitted_skips_the_consumer_and_its_downstream() {
    let j = job(vec![
        StepDef::new("a", "op")
            .output("out")
            .optional_output("maybe"),
        StepDef::new("b", "op")
            .input("x", "a", "maybe")
            .output("out"),
        step("c", &["b"]),
        step("d", &["a"]),
    ]);
    let mut p = full_plan(j).progress();
    assert_eq!(p.take_ready(), sel(&["a"]));
    assert!(p.complete(
        "a",
        StepOutcome::Success {
            emitted: vec!["out".into()]
        }
    ));
    assert_eq!(p.take_ready(), sel(&["d"]));
    assert_eq!(
        p.take_skipped(),
        vec![
            (
                "b".to_string(),
                SkipReason::OutputNotEmitted {
                    upstream: "a".into(),
                    output: "maybe".into()
                }
            ),
            ("c".to_string(), upstream_failed("b")),
        ]
    );
    assert!(p.complete("d", success()));
    assert!(p.is_complete());
    let emitted = &p.known_state().completed["a"];
    assert!(emitted.contains("out") && !emitted.contains("maybe"));
}

#[test]
fn optional_output_emitted_runs_the_consumer() {
    let j = job(vec![
        StepDef::new("a", "op").optional_output("maybe"),
        StepDef::new("b", "op").input("x", "a", "maybe"),
    ]);
    let mut p = full_plan(j).progress();
    p.take_ready();
    assert!(p.complete(
        "a",
        StepOutcome::Success {
            emitted: vec!["maybe".into()]
        }
    ));
    assert_eq!(p.take_ready(), sel(&["b"]));
}

#[test]
fn two_inputs_from_one_upstream_count_once() {
    let j = job(vec![
        StepDef::new("a", "op").output("x").output("y"),
        StepDef::new("b", "op")
            .input("x", "a", "x")
            .input("y", "a", "y"),
    ]);
    let mut p = full_plan(j).progress();
    assert_eq!(state(&p, "b"), StepState::Waiting(1));
    p.take_ready();
    assert!(p.complete(
        "a",
        StepOutcome::Success {
            emitted: vec!["x".into(), "y".into()]
        }
    ));
    assert_eq!(p.take_ready(), sel(&["b"]));
}

#[test]
fn cancel_pending_cancels_what_has_not_started() {
    let j = job(vec![
        step("a", &[]),
        step("b", &["a"]),
        step("c", &["b"]),
        step("r", &[]),
    ]);
    let mut p = full_plan(j).progress();
    assert_eq!(p.take_ready(), sel(&["a", "r"]));
    assert!(p.complete("r", success()));
    // a is in flight; b and c wait. Nothing is ready-but-untaken except what we add:
    let canceled = p.cancel_pending();
    assert_eq!(sorted(canceled), sel(&["b", "c"]));
    assert_eq!(state(&p, "a"), StepState::InFlight);
    assert_eq!(state(&p, "b"), StepState::Canceled);
    assert_eq!(state(&p, "r"), StepState::Succeeded);
    assert_eq!(p.unfinished(), 1);
    assert!(!p.is_complete());
    // The in-flight step's outcome still arrives and is recorded; nothing becomes ready.
    assert!(p.complete("a", success()));
    assert!(p.take_ready().is_empty());
    assert!(p.is_complete());
    assert!(p.cancel_pending().is_empty());
}

#[test]
fn cancel_pending_drops_ready_steps() {
    let mut p = full_plan(diamond()).progress();
    let canceled = p.cancel_pending();
    assert_eq!(sorted(canceled), sel(&["a", "b", "c", "d"]));
    assert!(
        p.take_ready().is_empty(),
        "canceled ready steps are not handed out"
    );
    assert!(p.is_complete());
}

#[test]
fn a_step_canceled_before_it_started_can_be_reopened_once_its_upstream_succeeded() {
    // a -> b -> c, plus d reading an output `a` does not emit; a is in flight when the run
    // stops.
    let j = job(vec![
        step("a", &[]).output("other"),
        step("b", &["a"]),
        step("c", &["b"]),
        StepDef::new("d", "op").input("x", "a", "other"),
    ]);
    let mut p = full_plan(j).progress();
    assert_eq!(p.take_ready(), sel(&["a"]));
    assert_eq!(sorted(p.cancel_pending()), sel(&["b", "c", "d"]));
    assert!(
        !p.reopen_canceled("b"),
        "its upstream has not succeeded yet"
    );
    assert!(p.complete("a", success()));
    assert!(p.is_complete());
    assert!(!p.reopen_canceled("c"), "its upstream `b` did not succeed");
    assert!(
        !p.reopen_canceled("d"),
        "`a` did not emit the output it reads"
    );
    assert!(!p.reopen_canceled("a"), "not canceled");
    assert!(!p.reopen_canceled("ghost"), "unknown step");
    assert_eq!(state(&p, "c"), StepState::Canceled);

    // b ran in a's task after all: in flight again, then its success is recorded.
    assert!(p.reopen_canceled("b"));
    assert_eq!(state(&p, "b"), StepState::InFlight);
    assert!(!p.is_complete());
    assert!(!p.reopen_canceled("b"), "only once");
    assert!(p.complete("b", success()));
    assert_eq!(state(&p, "b"), StepState::Succeeded);
    assert!(p.known_state().is_completed("b"));
    assert!(p.take_ready().is_empty(), "its downstream stays canceled");
    assert_eq!(state(&p, "c"), StepState::Canceled);
    assert!(p.is_complete());
    // Now `c`'s upstream succeeded: it could be reopened too (the run loop does so only for
    // a step that reported success).
    assert!(p.reopen_canceled("c"));
    assert!(p.complete("c", StepOutcome::Canceled));
    assert!(
        !p.reopen_canceled("c"),
        "canceled as an outcome, not before it started"
    );
}

#[test]
fn a_failed_or_skipped_step_is_not_reopened() {
    let mut p = full_plan(diamond()).progress();
    p.take_ready();
    assert!(p.complete("a", StepOutcome::Failure));
    assert_eq!(state(&p, "b"), StepState::Skipped);
    assert!(p.cancel_pending().is_empty());
    assert!(!p.reopen_canceled("b"));
    assert!(!p.reopen_canceled("a"));
}

#[test]
fn complete_only_accepts_in_flight_steps() {
    let mut p = full_plan(diamond()).progress();
    assert!(!p.complete("a", success()), "ready but not taken");
    assert_eq!(state(&p, "a"), StepState::Ready);
    assert!(!p.complete("d", success()), "waiting");
    assert!(!p.complete("ghost", success()), "unknown step");
    assert_eq!(p.unfinished(), 4);

    p.take_ready();
    assert!(p.complete("a", success()));
    assert!(!p.complete("a", StepOutcome::Failure), "already final");
    assert_eq!(state(&p, "a"), StepState::Succeeded);
    assert_eq!(p.unfinished(), 3);
    assert_eq!(
        sorted(p.take_ready()),
        sel(&["b", "c"]),
        "second complete changed nothing"
    );
}

#[test]
fn record_attempt_counts_per_step() {
    let mut p = full_plan(diamond()).progress();
    assert_eq!(p.record_attempt("a"), 1);
    assert_eq!(p.record_attempt("a"), 2);
    assert_eq!(p.record_attempt("b"), 1);
    assert_eq!(p.known_state().attempts_of("a"), 2);
    assert_eq!(p.known_state().attempts_of("c"), 0);
}

#[test]
fn wide_fan_out_and_fan_in_progress() {
    const N: usize = 10_000;
    let mut steps = vec![step("root", &[])];
    steps.extend((0..N).map(|i| step(&format!("leaf{i}"), &["root"])));
    let mut sink = StepDef::new("sink", "op");
    for i in 0..N {
        sink = sink.input(format!("in{i}"), format!("leaf{i}"), "out");
    }
    steps.push(sink);
    let j = job(steps);
    let plan = full_plan(j.clone());
    assert_eq!(plan.len(), N + 2);

    let mut p = plan.progress();
    assert_eq!(p.take_ready(), sel(&["root"]));
    assert!(p.complete("root", success()));
    let leaves = p.take_ready();
    assert_eq!(leaves.len(), N);
    assert_eq!(state(&p, "sink"), StepState::Waiting(N));
    for (n, leaf) in leaves.iter().enumerate() {
        assert!(p.complete(leaf, success()));
        if n + 1 < N {
            assert!(p.take_ready().is_empty());
        }
    }
    assert_eq!(p.take_ready(), sel(&["sink"]));
    assert!(p.complete("sink", success()));
    assert!(p.is_complete());

    // The same shape with the root failing skips everything below it.
    let mut p = full_plan(j).progress();
    p.take_ready();
    assert!(p.complete("root", StepOutcome::Failure));
    assert_eq!(p.take_skipped().len(), N + 1);
    assert!(p.is_complete());
}

#[test]
fn long_chain_progresses_one_step_at_a_time() {
    const N: usize = 1_000;
    let steps: Vec<StepDef> = (0..N)
        .map(|i| {
            if i == 0 {
                step("s0", &[])
            } else {
                step(&format!("s{i}"), &[&format!("s{}", i - 1)])
            }
        })
        .collect();
    let j = job(steps);
    let mut p = full_plan(j.clone()).progress();
    for i in 0..N {
        assert_eq!(p.take_ready(), vec![format!("s{i}")]);
        assert_eq!(p.unfinished(), N - i);
        assert!(p.complete(&format!("s{i}"), success()));
    }
    assert!(p.take_ready().is_empty());
    assert!(p.is_complete());

    // Failing the middle skips exactly the second half.
    let mut p = full_plan(j).progress();
    for i in 0..N / 2 {
        p.take_ready();
        assert!(p.complete(&format!("s{i}"), success()));
    }
    p.take_ready();
    assert!(p.complete(&format!("s{}", N / 2), StepOutcome::Failure));
    assert_eq!(p.take_skipped().len(), N - N / 2 - 1);
    assert!(p.is_complete());
}
