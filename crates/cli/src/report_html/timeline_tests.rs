//! Tests of the timeline model and of the page's size for a large run.

use std::time::Duration;

use stepq_plan::{ErrorInfo, Event, EventKind, Job, SkipReason, StepDef};

use super::*;

use crate::report::event_at as at;

fn queued(us: u64, step: &str, attempt: u32) -> Event {
    at(
        us,
        step,
        EventKind::StepQueued {
            attempt,
            task_id: format!("t-{step}-{attempt}"),
        },
    )
}

fn start(us: u64, step: &str, attempt: u32, worker: &str) -> Event {
    at(
        us,
        step,
        EventKind::StepStart {
            attempt,
            worker: worker.into(),
        },
    )
}

fn success(us: u64, step: &str, ran_us: u64) -> Event {
    at(
        us,
        step,
        EventKind::StepSuccess {
            duration: Duration::from_micros(ran_us),
        },
    )
}

fn failure(us: u64, step: &str, message: &str, will_retry: bool) -> Event {
    at(
        us,
        step,
        EventKind::StepFailure {
            error: ErrorInfo::new("op_error", message),
            will_retry,
        },
    )
}

fn run_event(us: u64, kind: EventKind) -> Event {
    let mut e = Event::run("r", kind);
    e.timestamp_us = us;
    e
}

/// A diamond `a -> (b, c) -> d` on two workers: `b` fails once and is retried, `d` fails,
/// `e` (after `d`) is skipped.
fn diamond_events() -> Vec<Event> {
    vec![
        run_event(0, EventKind::RunStarted),
        queued(10, "a", 1),
        start(20, "a", 1, "w1"),
        success(120, "a", 100),
        queued(130, "b", 1),
        queued(130, "c", 1),
        start(140, "b", 1, "w1"),
        start(150, "c", 1, "w2"),
        failure(200, "b", "flaky", true),
        at(
            201,
            "b",
            EventKind::StepRetry {
                attempt: 2,
                delay: Duration::ZERO,
            },
        ),
        queued(210, "b", 2),
        start(260, "b", 2, "w2"),
        success(400, "b", 140),
        success(900, "c", 750),
        queued(910, "d", 1),
        start(920, "d", 1, "w1"),
        failure(1000, "d", "join exploded", false),
        at(
            1001,
            "e",
            EventKind::StepSkipped {
                reason: SkipReason::UpstreamNotSucceeded {
                    upstream: "d".into(),
                },
            },
        ),
        run_event(1010, EventKind::RunFailure { errors: vec![] }),
    ]
}

fn diamond_job() -> Job {
    let step = |key: &str| StepDef::new(key, "noop").output("result");
    Job::builder("diamond")
        .step(step("a"))
        .step(step("b").input("x", "a", "result"))
        .step(step("c").input("x", "a", "result"))
        .step(
            step("d")
                .input("x", "b", "result")
                .input("y", "c", "result"),
        )
        .step(step("e").input("x", "d", "result"))
        .build()
        .unwrap()
}

#[test]
fn lanes_are_workers_in_order_of_first_start() {
    let t = Timeline::build(&diamond_events(), None, Some(1010), 5_000);
    let names: Vec<&str> = t.lanes.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["w1", "w2"]);
    assert_eq!(t.lanes[0].attempts, 3, "a, b#1, d");
    assert_eq!(t.lanes[1].attempts, 2, "c, b#2");
    assert!(!t.running);
    assert_eq!((t.start_us, t.end_us), (0, 1010));
}

#[test]
fn each_attempt_is_its_own_bar_with_queue_wait_and_run_time() {
    let t = Timeline::build(&diamond_events(), None, Some(1010), 5_000);
    let b: Vec<&Attempt> = t.attempts.iter().filter(|a| a.step == "b").collect();
    assert_eq!(b.len(), 2);
    assert_eq!((b[0].attempt, b[0].outcome), (1, Outcome::Failed));
    assert_eq!(b[0].error.as_deref(), Some("[op_error] flaky"));
    assert_eq!(b[0].queue_wait(), Duration::from_micros(10));
    assert_eq!(b[0].run_time(), Duration::from_micros(60));
    assert_eq!((b[1].attempt, b[1].outcome), (2, Outcome::Succeeded));
    assert_eq!(b[1].worker.as_deref(), Some("w2"));
    assert_eq!(b[1].queue_wait(), Duration::from_micros(50));
    assert_eq!(t.summary.retries, 1);
    assert_eq!(t.summary.attempts, 5);
    // a 10, b#1 10, c 20, b#2 50, d 10
    assert_eq!(t.summary.total_queue_wait, Duration::from_micros(100));
}

#[test]
fn failures_skips_and_states_are_summarized() {
    let t = Timeline::build(&diamond_events(), None, Some(1010), 5_000);
    let d = t.attempts.iter().find(|a| a.step == "d").unwrap();
    assert_eq!(d.outcome, Outcome::Failed);
    assert!(d.error.as_deref().unwrap().contains("join exploded"));
    assert!(
        t.attempts.iter().all(|a| a.step != "e"),
        "a skipped step has no bar"
    );
    let e = t.steps.iter().find(|r| r.step == "e").unwrap();
    assert_eq!(e.status, "SKIPPED");
    assert_eq!(
        t.summary.by_status,
        [
            ("SUCCEEDED".to_string(), 3),
            ("FAILED".to_string(), 1),
            ("SKIPPED".to_string(), 1)
        ]
    );
    assert_eq!(t.summary.wall_time, Duration::from_micros(1010));
    assert_eq!(
        t.summary.slowest[0],
        ("c".to_string(), Duration::from_micros(750))
    );
}

#[test]
fn critical_path_follows_the_job_graph() {
    let job = diamond_job();
    let t = Timeline::build(&diamond_events(), Some(&job), Some(1010), 5_000);
    assert_eq!(t.path_source, PathSource::JobGraph);
    // d waited for c (ended at 900), not b (ended at 400).
    assert_eq!(t.critical_path, ["a", "c", "d"]);
}

#[test]
fn critical_path_without_the_job_follows_timing() {
    let t = Timeline::build(&diamond_events(), None, Some(1010), 5_000);
    assert_eq!(t.path_source, PathSource::Timing);
    assert_eq!(t.critical_path, ["a", "c", "d"]);
}

#[test]
fn a_running_run_extends_open_bars_to_now() {
    let events = vec![
        run_event(0, EventKind::RunStarted),
        queued(10, "a", 1),
        start(20, "a", 1, "w1"),
        success(120, "a", 100),
        queued(130, "b", 1),
        start(140, "b", 1, "w1"),
        queued(130, "c", 1),
    ];
    let t = Timeline::build(&events, None, None, 2_000);
    assert!(t.running);
    assert_eq!(t.end_us, 2_000);
    let b = t.attempts.iter().find(|a| a.step == "b").unwrap();
    assert_eq!((b.outcome, b.end_us), (Outcome::Running, 2_000));
    let c = t.attempts.iter().find(|a| a.step == "c").unwrap();
    assert_eq!(
        (c.outcome, c.queue_wait()),
        (Outcome::Queued, Duration::from_micros(1_870))
    );
    assert_eq!(
        t.steps.iter().find(|r| r.step == "b").unwrap().status,
        "RUNNING"
    );
    assert_eq!(
        t.summary.slowest[0],
        ("b".to_string(), Duration::from_micros(1_860))
    );
    // Overlapping attempts of one worker go on separate rows.
    let t = Timeline::build(
        &[
            queued(0, "x", 1),
            start(1, "x", 1, "w"),
            queued(2, "y", 1),
            start(3, "y", 1, "w"),
        ],
        None,
        None,
        10,
    );
    assert_eq!(t.lanes[0].rows, 2);
}

#[test]
fn an_attempt_open_when_the_run_ended_has_no_end_recorded() {
    let events = vec![
        queued(10, "a", 1),
        start(20, "a", 1, "w1"),
        queued(30, "b", 1),
    ];
    let t = Timeline::build(&events, None, Some(500), 9_999);
    assert_eq!(t.attempts.len(), 1, "b never started");
    assert_eq!(
        (t.attempts[0].outcome, t.attempts[0].end_us),
        (Outcome::Unknown, 500)
    );
}

#[test]
fn without_worker_names_each_step_gets_a_lane_up_to_the_limit() {
    let mut events = Vec::new();
    for i in 0..80u64 {
        let key = format!("s{i}");
        events.push(queued(i * 10, &key, 1));
        events.push(start(i * 10 + 1, &key, 1, ""));
        events.push(success(i * 10 + 5, &key, 4));
    }
    let t = Timeline::build(&events, None, Some(800), 900);
    assert_eq!(t.lanes.len(), MAX_LANES);
    assert_eq!(t.lanes[0].name, "s0");
    assert_eq!(
        t.lanes[MAX_LANES - 1].name,
        format!("+{} more steps", 80 - (MAX_LANES - 1))
    );
    assert_eq!(t.lanes[MAX_LANES - 1].attempts, 80 - (MAX_LANES - 1));
}

/// A fan-out of `n` leaves after a root, on `workers` workers, with a failure every 97 steps.
pub(crate) fn fanout_events(n: usize, workers: usize) -> Vec<Event> {
    let mut events = vec![
        run_event(0, EventKind::RunStarted),
        queued(1, "root", 1),
        start(2, "root", 1, "local-0"),
        success(50, "root", 48),
    ];
    for i in 0..n {
        let key = format!("leaf_{i}");
        let t = 100 + i as u64 * 7;
        let worker = format!("local-{}", i % workers);
        events.push(queued(60, &key, 1));
        events.push(start(t, &key, 1, &worker));
        if i % 97 == 0 {
            events.push(failure(t + 20, &key, "boom: the leaf op failed", false));
        } else {
            events.push(success(t + 20, &key, 20));
        }
    }
    events
}

#[test]
fn a_10000_step_report_stays_under_5_mb_and_holds_every_step() {
    let events = fanout_events(10_000, 8);
    let started = std::time::Instant::now();
    let t = Timeline::build(&events, None, Some(100 + 70_020), 0);
    let record = stepq_runs::RunRecord::new("r", "fanout_10000", serde_json::Value::Null);
    let page = crate::report_html::render(&record, &t);
    let took = started.elapsed();
    assert!(page.len() < 5_000_000, "{} bytes", page.len());
    assert_eq!(t.steps.len(), 10_001);
    assert_eq!(t.lanes.len(), 8);
    for key in ["root", "leaf_0", "leaf_5000", "leaf_9999"] {
        assert!(page.contains(&format!("data-step=\"{key}\"")), "{key}");
    }
    assert_eq!(page.matches("<tr data-step=").count(), 10_001);
    eprintln!("10,000-step page: {} bytes in {took:?}", page.len());
}
