//! What a run's event log says it completed: the [`KnownState`] a resume starts from, and the
//! tasks it left unfinished ([`unfinished_tasks`]), which a resume asks to stop.

use std::collections::{BTreeMap, BTreeSet};

use stepq_plan::{Event, EventKind, KnownState};

/// Rebuilds what a run's event log says it completed: every step with a `StepSuccess`, with
/// the outputs its successful attempt stored (`StepOutputHandled` events since that attempt
/// was queued or started), and for every step the highest attempt number queued or started,
/// so a resumed step's next attempt counts on (attempt `n + 1`). An attempt queued and then
/// skipped without starting (a step sent along with its upstream in one task) does not count:
/// it never ran and its task is done. A queued attempt with no outcome does count: its
/// message may still be delivered, and the re-run must not share its attempt number.
///
/// Events of steps that succeeded in an earlier resume are kept: a log holds every attempt
/// of every orchestrator of the run, in order.
pub fn known_state_from_events(events: &[Event]) -> KnownState {
    let mut known = KnownState::default();
    let mut handled: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut started: BTreeMap<&str, u32> = BTreeMap::new();
    for event in events {
        let Some(step) = event.step_key.as_deref() else {
            continue;
        };
        match &event.kind {
            EventKind::StepQueued { attempt, .. } | EventKind::StepStart { attempt, .. } => {
                if matches!(event.kind, EventKind::StepStart { .. }) {
                    let s = started.entry(step).or_insert(0);
                    *s = (*s).max(*attempt);
                }
                let n = known.attempts.entry(step.to_string()).or_insert(0);
                if *attempt > *n {
                    *n = *attempt;
                    handled.remove(step);
                }
            }
            EventKind::StepSkipped { .. } => {
                let ran = started.get(step).copied().unwrap_or(0);
                if ran == 0 {
                    known.attempts.remove(step);
                } else {
                    known.attempts.insert(step.to_string(), ran);
                }
            }
            EventKind::StepOutputHandled { output, .. } => {
                handled.entry(step).or_default().insert(output.clone());
            }
            EventKind::StepSuccess { .. } => {
                known.record_success(step, handled.remove(step).unwrap_or_default());
            }
            _ => {}
        }
    }
    known
}

/// The task ids of a run's event log that may still be queued or running: for every step, the
/// task of its last `StepQueued` unless an outcome (`StepSuccess`, `StepFailure`,
/// `StepSkipped`, `StepCanceled`) followed it. A fused task counts while any of its steps
/// has none. Each once, in log order.
///
/// A resume asks these to stop before it queues its own steps: their orchestrator is gone
/// (or ended the run without hearing from them), so nobody waits for them, and a worker still
/// running one would run the step twice, beside the resume's attempt.
pub fn unfinished_tasks(events: &[Event]) -> Vec<String> {
    let mut open: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    for (i, event) in events.iter().enumerate() {
        let Some(step) = event.step_key.as_deref() else {
            continue;
        };
        match &event.kind {
            EventKind::StepQueued { task_id, .. } => {
                open.insert(step, (i, task_id.as_str()));
            }
            EventKind::StepSuccess { .. }
            | EventKind::StepFailure { .. }
            | EventKind::StepSkipped { .. }
            | EventKind::StepCanceled => {
                open.remove(step);
            }
            _ => {}
        }
    }
    // Each open task once, at the earliest of its open steps' queueing.
    let mut first: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, task) in open.into_values() {
        let at = first.entry(task).or_insert(i);
        *at = (*at).min(i);
    }
    let mut tasks: Vec<(usize, &str)> = first.into_iter().map(|(t, i)| (i, t)).collect();
    tasks.sort_unstable();
    tasks.into_iter().map(|(_, t)| t.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use stepq_plan::ErrorInfo;

    fn ev(step: &str, kind: EventKind) -> Event {
        Event::step("r1", step, kind)
    }

    fn queued(step: &str, attempt: u32) -> Event {
        ev(
            step,
            EventKind::StepQueued {
                attempt,
                task_id: format!("{step}-{attempt}"),
            },
        )
    }

    fn handled(step: &str, output: &str) -> Event {
        ev(
            step,
            EventKind::StepOutputHandled {
                output: output.into(),
                bytes: 1,
            },
        )
    }

    fn success(step: &str) -> Event {
        ev(
            step,
            EventKind::StepSuccess {
                duration: Duration::ZERO,
            },
        )
    }

    fn failure(step: &str, will_retry: bool) -> Event {
        ev(
            step,
            EventKind::StepFailure {
                error: ErrorInfo::new("op_error", "boom"),
                will_retry,
            },
        )
    }

    #[test]
    fn known_state_keeps_successes_with_their_outputs_and_counts_attempts() {
        let events = vec![
            Event::run("r1", EventKind::RunStarted),
            queued("a", 1),
            ev(
                "a",
                EventKind::StepStart {
                    attempt: 1,
                    worker: "w".into(),
                },
            ),
            handled("a", "left"),
            handled("a", "right"),
            success("a"),
            queued("b", 1),
            // A failed attempt's stored output does not count for the later success.
            handled("b", "stale"),
            failure("b", true),
            queued("b", 2),
            handled("b", "result"),
            success("b"),
            queued("c", 1),
            failure("c", true),
            queued("c", 2),
            failure("c", false),
            ev(
                "d",
                EventKind::StepSkipped {
                    reason: stepq_plan::SkipReason::UpstreamNotSucceeded {
                        upstream: "c".into(),
                    },
                },
            ),
            queued("e", 1),
            // Sent along with its upstream, skipped without starting: no attempt used.
            queued("f", 1),
            ev(
                "f",
                EventKind::StepSkipped {
                    reason: stepq_plan::SkipReason::UpstreamNotSucceeded {
                        upstream: "c".into(),
                    },
                },
            ),
        ];
        let known = known_state_from_events(&events);
        let outputs = |step: &str| -> Vec<&str> {
            known.completed[step].iter().map(String::as_str).collect()
        };
        assert_eq!(outputs("a"), ["left", "right"]);
        assert_eq!(outputs("b"), ["result"]);
        assert_eq!(known.completed.len(), 2, "{known:?}");
        assert_eq!(
            known.attempts,
            BTreeMap::from([
                ("a".to_string(), 1),
                ("b".to_string(), 2),
                ("c".to_string(), 2),
                ("e".to_string(), 1),
            ])
        );
        assert!(!known.is_completed("d"), "skipped steps run again");
        assert_eq!(known_state_from_events(&[]), KnownState::default());
    }

    #[test]
    fn known_state_of_a_resumed_log_counts_on() {
        // First run: `x` fails on attempt 1; the resume runs attempt 2, which succeeds.
        let events = vec![
            queued("x", 1),
            failure("x", false),
            Event::run("r1", EventKind::RunFailure { errors: Vec::new() }),
            Event::run("r1", EventKind::RunStarting),
            queued("x", 2),
            handled("x", "result"),
            success("x"),
        ];
        let known = known_state_from_events(&events);
        assert!(known.is_completed("x"));
        assert_eq!(known.attempts_of("x"), 2);
    }

    #[test]
    fn unfinished_tasks_are_those_with_a_step_without_outcome() {
        let queued_in = |step: &str, task: &str| {
            ev(
                step,
                EventKind::StepQueued {
                    attempt: 1,
                    task_id: task.into(),
                },
            )
        };
        let events = vec![
            Event::run("r1", EventKind::RunStarted),
            // Done, failed for good, canceled: nothing to stop.
            queued_in("done", "t-done"),
            success("done"),
            queued_in("failed", "t-failed"),
            failure("failed", false),
            queued_in("canceled", "t-canceled"),
            ev("canceled", EventKind::StepCanceled),
            // Failed and queued again: only the second attempt's task is open.
            queued_in("retried", "t-retry-1"),
            failure("retried", true),
            queued_in("retried", "t-retry-2"),
            // A fused task whose first step succeeded: its second step still runs in it.
            queued_in("head", "t-fused"),
            queued_in("tail", "t-fused"),
            success("head"),
            // Queued, never heard of again.
            queued_in("waiting", "t-waiting"),
            // Skipped: its task (sent with its upstream) is done.
            queued_in("skipped", "t-skipped"),
            ev(
                "skipped",
                EventKind::StepSkipped {
                    reason: stepq_plan::SkipReason::UpstreamNotSucceeded {
                        upstream: "failed".into(),
                    },
                },
            ),
        ];
        assert_eq!(
            unfinished_tasks(&events),
            ["t-retry-2", "t-fused", "t-waiting"]
        );
        assert!(unfinished_tasks(&events[..3]).is_empty());
        assert!(unfinished_tasks(&[]).is_empty());
    }
}
