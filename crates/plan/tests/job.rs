//! Job validation (every `JobError`), topological order, and retry backoff.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use stepq_plan::{Backoff, Job, JobError, JobErrors, RetryPolicy, StepDef};

fn build(steps: Vec<StepDef>) -> Result<Job, JobErrors> {
    Job::builder("test").steps(steps).build()
}

fn errors_of(steps: Vec<StepDef>) -> Vec<JobError> {
    let err = build(steps).expect_err("job must be invalid");
    assert_eq!(err.job, "test");
    assert!(!err.errors.is_empty());
    err.errors
}

/// A step with one output `out` fed by output `out` of each upstream.
fn step(key: &str, upstream: &[&str]) -> StepDef {
    upstream
        .iter()
        .fold(StepDef::new(key, "op").output("out"), |s, u| {
            s.input(format!("in_{u}"), *u, "out")
        })
}

/// Checks `cycle` lists exactly `expected` (as a set) and that each step feeds the next.
fn assert_cycle(job_steps: &[StepDef], cycle: &[String], expected: &[&str]) {
    let got: BTreeSet<&str> = cycle.iter().map(String::as_str).collect();
    let want: BTreeSet<&str> = expected.iter().copied().collect();
    assert_eq!(got, want, "cycle {cycle:?}");
    assert_eq!(
        cycle.len(),
        expected.len(),
        "cycle {cycle:?} repeats a step"
    );
    let by_key: HashMap<&str, &StepDef> = job_steps.iter().map(|s| (s.key.as_str(), s)).collect();
    for (i, from) in cycle.iter().enumerate() {
        let to = &cycle[(i + 1) % cycle.len()];
        assert!(
            by_key[to.as_str()]
                .inputs
                .iter()
                .any(|inp| &inp.from_step == from),
            "cycle {cycle:?}: `{from}` does not feed `{to}`"
        );
    }
}

#[test]
fn empty_job_is_rejected() {
    let err = Job::builder("nothing").build().unwrap_err();
    assert_eq!(
        err.errors,
        vec![JobError::Empty {
            job: "nothing".into()
        }]
    );
    assert_eq!(
        err.to_string(),
        "invalid job `nothing`: job `nothing` has no steps"
    );
}

#[test]
fn duplicate_step_key_is_rejected() {
    let errors = errors_of(vec![step("a", &[]), step("b", &[]), step("a", &[])]);
    assert_eq!(errors, vec![JobError::DuplicateStepKey { key: "a".into() }]);
    assert_eq!(errors[0].to_string(), "duplicate step key `a`");
}

#[test]
fn duplicate_input_name_is_rejected() {
    let errors = errors_of(vec![
        step("a", &[]),
        StepDef::new("b", "op")
            .input("x", "a", "out")
            .input("x", "a", "out"),
    ]);
    assert_eq!(
        errors,
        vec![JobError::DuplicateName {
            step: "b".into(),
            what: "input",
            name: "x".into()
        }]
    );
    assert_eq!(errors[0].to_string(), "step `b` declares input `x` twice");
}

#[test]
fn duplicate_output_name_is_rejected() {
    let errors = errors_of(vec![StepDef::new("a", "op")
        .output("out")
        .optional_output("out")]);
    assert_eq!(
        errors,
        vec![JobError::DuplicateName {
            step: "a".into(),
            what: "output",
            name: "out".into()
        }]
    );
    assert_eq!(
        errors[0].to_string(),
        "step `a` declares output `out` twice"
    );
}

#[test]
fn unknown_upstream_step_is_rejected() {
    let errors = errors_of(vec![
        step("a", &[]),
        StepDef::new("b", "op").input("x", "ghost", "out"),
    ]);
    assert_eq!(
        errors,
        vec![JobError::UnknownUpstreamStep {
            step: "b".into(),
            input: "x".into(),
            upstream: "ghost".into()
        }]
    );
    assert_eq!(
        errors[0].to_string(),
        "input `x` of step `b` is wired to unknown step `ghost`"
    );
}

#[test]
fn unknown_upstream_output_is_rejected() {
    let errors = errors_of(vec![
        step("a", &[]),
        StepDef::new("b", "op").input("x", "a", "missing"),
    ]);
    assert_eq!(
        errors,
        vec![JobError::UnknownUpstreamOutput {
            step: "b".into(),
            input: "x".into(),
            upstream: "a".into(),
            output: "missing".into()
        }]
    );
    assert_eq!(
        errors[0].to_string(),
        "input `x` of step `b` is wired to unknown output `missing` of step `a`"
    );
}

#[test]
fn three_cycle_names_its_steps() {
    let steps = vec![
        step("start", &[]),
        step("a", &["c", "start"]),
        step("b", &["a"]),
        step("c", &["b"]),
    ];
    let errors = errors_of(steps.clone());
    assert_eq!(errors.len(), 1, "{errors:?}");
    let JobError::Cycle { steps: cycle } = &errors[0] else {
        panic!("expected a cycle, got {errors:?}");
    };
    assert_cycle(&steps, cycle, &["a", "b", "c"]);
    let msg = errors[0].to_string();
    assert!(msg.starts_with("cycle between steps: "), "{msg}");
    for k in ["a", "b", "c"] {
        assert!(msg.contains(k), "{msg}");
    }
}

#[test]
fn self_loop_is_a_cycle_of_one() {
    let steps = vec![step("a", &["a"])];
    let errors = errors_of(steps);
    assert_eq!(
        errors,
        vec![JobError::Cycle {
            steps: vec!["a".into()]
        }]
    );
    assert_eq!(errors[0].to_string(), "cycle between steps: a");
}

#[test]
fn steps_downstream_of_a_cycle_are_not_reported_as_on_it() {
    // x <-> y is the cycle; d1, d2 hang below it, d2 is declared before the cycle's steps.
    let steps = vec![
        step("root", &[]),
        step("d2", &["d1"]),
        step("d1", &["y", "root"]),
        step("x", &["y", "root"]),
        step("y", &["x"]),
    ];
    let errors = errors_of(steps.clone());
    assert_eq!(errors.len(), 1, "{errors:?}");
    let JobError::Cycle { steps: cycle } = &errors[0] else {
        panic!("expected a cycle, got {errors:?}");
    };
    assert_cycle(&steps, cycle, &["x", "y"]);
}

#[test]
fn two_separate_cycles_are_both_reported() {
    let steps = vec![
        step("a", &["b"]),
        step("b", &["a"]),
        step("c", &["e"]),
        step("d", &["c"]),
        step("e", &["d"]),
        step("free", &[]),
    ];
    let errors = errors_of(steps.clone());
    assert_eq!(errors.len(), 2, "{errors:?}");
    let cycles: Vec<&Vec<String>> = errors
        .iter()
        .map(|e| match e {
            JobError::Cycle { steps } => steps,
            other => panic!("expected cycles only, got {other:?}"),
        })
        .collect();
    let (ab, cde) = if cycles[0].len() == 2 {
        (cycles[0], cycles[1])
    } else {
        (cycles[1], cycles[0])
    };
    assert_cycle(&steps, ab, &["a", "b"]);
    assert_cycle(&steps, cde, &["c", "d", "e"]);
}

fn invalid_policy_reason(policy: RetryPolicy) -> String {
    let errors = errors_of(vec![step("a", &[]).retry(policy)]);
    match errors.as_slice() {
        [JobError::InvalidRetryPolicy { step, reason }] => {
            assert_eq!(step, "a");
            reason.clone()
        }
        other => panic!("expected one InvalidRetryPolicy, got {other:?}"),
    }
}

#[test]
fn invalid_retry_policies_are_rejected() {
    let reason = invalid_policy_reason(RetryPolicy::new(0, Backoff::none()));
    assert!(reason.contains("max_attempts"), "{reason}");

    let slow = |multiplier: f64| Backoff {
        initial: Duration::from_millis(10),
        multiplier,
        max: Duration::from_secs(1),
        jitter: false,
    };
    for multiplier in [0.5, 0.0, -2.0, f64::NAN, f64::INFINITY] {
        let reason = invalid_policy_reason(RetryPolicy::new(3, slow(multiplier)));
        assert!(reason.contains("multiplier"), "{multiplier}: {reason}");
    }

    let err = build(vec![
        step("a", &[]).retry(RetryPolicy::new(0, Backoff::none()))
    ])
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("step `a` has an invalid retry policy: max_attempts must be at least 1"),
        "{err}"
    );
}

#[test]
fn valid_retry_policies_are_accepted() {
    let job = build(vec![
        step("a", &[]).retry(RetryPolicy::new(1, Backoff::none())),
        step("b", &["a"]).retry(RetryPolicy::new(
            5,
            Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5)),
        )),
    ])
    .unwrap();
    assert_eq!(
        job.step("b").unwrap().retry.as_ref().unwrap().max_attempts,
        5
    );
}

#[test]
fn several_errors_are_all_reported_in_one_go() {
    let errors = errors_of(vec![
        step("a", &[]),
        step("a", &[]),
        StepDef::new("b", "op")
            .input("x", "ghost", "out")
            .input("y", "a", "nope")
            .input("y", "a", "out")
            .output("o")
            .output("o")
            .retry(RetryPolicy::new(0, Backoff::none())),
    ]);
    let expected = [
        JobError::DuplicateStepKey { key: "a".into() },
        JobError::DuplicateName {
            step: "b".into(),
            what: "input",
            name: "y".into(),
        },
        JobError::DuplicateName {
            step: "b".into(),
            what: "output",
            name: "o".into(),
        },
        JobError::UnknownUpstreamStep {
            step: "b".into(),
            input: "x".into(),
            upstream: "ghost".into(),
        },
        JobError::UnknownUpstreamOutput {
            step: "b".into(),
            input: "y".into(),
            upstream: "a".into(),
            output: "nope".into(),
        },
    ];
    assert_eq!(errors.len(), expected.len() + 1, "{errors:?}");
    for e in &expected {
        assert!(errors.contains(e), "missing {e:?} in {errors:?}");
    }
    assert!(
        errors
            .iter()
            .any(|e| matches!(e, JobError::InvalidRetryPolicy { step, .. } if step == "b")),
        "{errors:?}"
    );
}

#[test]
fn errors_are_reported_in_a_stable_order() {
    let make = || {
        vec![
            step("a", &["ghost1"]),
            step("b", &["ghost2"]),
            step("c", &["a"]).input("in_a", "a", "out"),
        ]
    };
    let first = errors_of(make());
    for _ in 0..5 {
        assert_eq!(errors_of(make()), first);
    }
}

fn assert_topological(job: &Job) {
    let order: Vec<&str> = job.topological_order().collect();
    assert_eq!(order.len(), job.steps().len());
    let pos: HashMap<&str, usize> = order.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    assert_eq!(pos.len(), order.len(), "order repeats a step: {order:?}");
    for s in job.steps() {
        for inp in &s.inputs {
            assert!(
                pos[inp.from_step.as_str()] < pos[s.key.as_str()],
                "`{}` comes before its upstream `{}` in {order:?}",
                s.key,
                inp.from_step
            );
        }
    }
}

#[test]
fn topological_order_puts_every_step_after_its_upstream() {
    // Declared in reverse order of dependency.
    let job = build(vec![
        step("d", &["b", "c"]),
        step("c", &["a"]),
        step("b", &["a"]),
        step("a", &[]),
    ])
    .unwrap();
    assert_topological(&job);
    assert_eq!(job.topological_order().next(), Some("a"));
    assert_eq!(job.topological_order().last(), Some("d"));
}

#[test]
fn topological_order_of_a_larger_dag() {
    // Step i depends on steps i/2 and i/3 (when distinct from i), declared back to front.
    let steps: Vec<StepDef> = (0..500usize)
        .rev()
        .map(|i| {
            let ups: BTreeSet<usize> = [i / 2, i / 3].into_iter().filter(|&u| u != i).collect();
            let names: Vec<String> = ups.iter().map(|u| format!("s{u}")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            step(&format!("s{i}"), &refs)
        })
        .collect();
    let job = build(steps).unwrap();
    assert_topological(&job);
}

#[test]
fn job_lookups() {
    let job = build(vec![
        StepDef::new("a", "make")
            .output("out")
            .optional_output("extra")
            .tag("pool", "db"),
        step("b", &["a"]),
    ])
    .unwrap();
    assert_eq!(job.name(), "test");
    assert_eq!(job.steps().len(), 2);
    assert_eq!(job.step_index("b"), Some(1));
    assert_eq!(job.step_index("zzz"), None);
    assert!(job.step("zzz").is_none());
    let a = job.step("a").unwrap();
    assert_eq!(a.op, "make");
    assert_eq!(a.tags.get("pool").map(String::as_str), Some("db"));
    assert!(a.output_def("out").unwrap().required);
    assert!(!a.output_def("extra").unwrap().required);
    assert!(a.output_def("nope").is_none());
}

#[test]
fn an_input_may_read_two_outputs_of_the_same_upstream() {
    let job = build(vec![
        StepDef::new("a", "op").output("x").output("y"),
        StepDef::new("b", "op")
            .input("x", "a", "x")
            .input("y", "a", "y"),
    ])
    .unwrap();
    assert_topological(&job);
}

// ---- backoff --------------------------------------------------------------------------------

fn fixed(initial_ms: u64, multiplier: f64, max_ms: u64) -> Backoff {
    Backoff {
        initial: Duration::from_millis(initial_ms),
        multiplier,
        max: Duration::from_millis(max_ms),
        jitter: false,
    }
}

#[test]
fn backoff_without_jitter_grows_exactly_and_caps() {
    let b = fixed(100, 2.0, 1000);
    let ms = |attempt| b.delay_before(attempt);
    assert_eq!(ms(1), Duration::from_millis(100));
    assert_eq!(ms(2), Duration::from_millis(100));
    assert_eq!(ms(3), Duration::from_millis(200));
    assert_eq!(ms(4), Duration::from_millis(400));
    assert_eq!(ms(5), Duration::from_millis(800));
    assert_eq!(ms(6), Duration::from_millis(1000));
    assert_eq!(ms(7), Duration::from_millis(1000));
    assert_eq!(ms(100), Duration::from_millis(1000));
    assert_eq!(ms(u32::MAX), Duration::from_millis(1000));
}

#[test]
fn backoff_with_other_multipliers() {
    let constant = fixed(250, 1.0, 10_000);
    for attempt in 2..20 {
        assert_eq!(constant.delay_before(attempt), Duration::from_millis(250));
    }
    let quad = fixed(1, 4.0, 60_000);
    assert_eq!(quad.delay_before(2), Duration::from_millis(1));
    assert_eq!(quad.delay_before(3), Duration::from_millis(4));
    assert_eq!(quad.delay_before(4), Duration::from_millis(16));
    assert_eq!(quad.delay_before(5), Duration::from_millis(64));
    // Initial above the cap is capped too.
    assert_eq!(
        fixed(5000, 2.0, 1000).delay_before(2),
        Duration::from_millis(1000)
    );
}

#[test]
fn no_backoff_is_zero() {
    let b = Backoff::none();
    for attempt in [0, 1, 2, 3, 50, u32::MAX] {
        assert_eq!(b.delay_before(attempt), Duration::ZERO);
    }
    // Jitter on a zero delay stays zero.
    let zero = Backoff {
        jitter: true,
        ..Backoff::none()
    };
    assert_eq!(zero.delay_before(5), Duration::ZERO);
}

#[test]
fn jittered_backoff_stays_within_half_to_full_delay() {
    let b = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(2));
    assert!(b.jitter);
    assert_eq!(b.multiplier, 2.0);
    for (attempt, full_ms) in [
        (2u32, 100u64),
        (3, 200),
        (4, 400),
        (6, 1600),
        (7, 2000),
        (30, 2000),
    ] {
        let full = Duration::from_millis(full_ms);
        let mut distinct = BTreeSet::new();
        for _ in 0..200 {
            let d = b.delay_before(attempt);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} outside [{:?}, {full:?}]",
                full / 2
            );
            distinct.insert(d);
        }
        assert!(distinct.len() > 1, "attempt {attempt}: jitter never varied");
    }
}

#[test]
fn cycles_are_reported_alongside_other_errors() {
    let steps = vec![
        step("a", &["c"]),
        step("b", &["a"]),
        step("c", &["b", "ghost"]),
        step("dup", &[]),
        step("dup", &["dup"]),
    ];
    let errors = errors_of(steps.clone());
    assert!(errors.contains(&JobError::UnknownUpstreamStep {
        step: "c".into(),
        input: "in_ghost".into(),
        upstream: "ghost".into()
    }));
    assert!(errors.contains(&JobError::DuplicateStepKey { key: "dup".into() }));
    let cycles: Vec<&Vec<String>> = errors
        .iter()
        .filter_map(|e| match e {
            JobError::Cycle { steps } => Some(steps),
            _ => None,
        })
        .collect();
    assert_eq!(cycles.len(), 2, "{errors:?}");
    assert!(cycles.contains(&&vec!["dup".to_string()]), "{errors:?}");
    let abc = cycles.iter().find(|c| c.len() == 3).expect("a-b-c cycle");
    assert_cycle(&steps, abc, &["a", "b", "c"]);
    // Problems found per step come first, cycles last.
    assert!(matches!(errors.last(), Some(JobError::Cycle { .. })));
}
