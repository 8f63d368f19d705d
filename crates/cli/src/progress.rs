//! Live progress of a run for the CLI: a bar with step counts on a terminal, plain lines
//! otherwise.

use std::collections::HashMap;
use std::io::Write;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use stepq_plan::{Event, EventKind};

use crate::report::human_duration;

/// Where a step is, as far as the events seen so far tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Phase {
    Queued,
    Running,
    Retrying,
    Succeeded,
    Failed,
    Skipped,
    Canceled,
}

impl Phase {
    fn is_final(self) -> bool {
        matches!(
            self,
            Phase::Succeeded | Phase::Failed | Phase::Skipped | Phase::Canceled
        )
    }
}

/// Step counts of a run in progress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Steps in the plan.
    pub total: usize,
    /// Sent to the queue and not finished: waiting for a worker, running, or waiting for a
    /// retry. (Workers report a step's start together with its end.)
    pub in_flight: usize,
    /// Succeeded.
    pub succeeded: usize,
    /// Failed for good.
    pub failed: usize,
    /// Skipped.
    pub skipped: usize,
    /// Canceled.
    pub canceled: usize,
}

impl Counts {
    /// Steps that reached a final state.
    pub fn finished(&self) -> usize {
        self.succeeded + self.failed + self.skipped + self.canceled
    }

    fn summary(&self) -> String {
        let mut text = format!("{} done, {} in flight", self.succeeded, self.in_flight);
        for (n, what) in [
            (self.failed, "failed"),
            (self.skipped, "skipped"),
            (self.canceled, "canceled"),
        ] {
            if n > 0 {
                text.push_str(&format!(", {n} {what}"));
            }
        }
        text
    }

    fn slot(&mut self, phase: Phase) -> &mut usize {
        match phase {
            Phase::Queued | Phase::Running | Phase::Retrying => &mut self.in_flight,
            Phase::Succeeded => &mut self.succeeded,
            Phase::Failed => &mut self.failed,
            Phase::Skipped => &mut self.skipped,
            Phase::Canceled => &mut self.canceled,
        }
    }
}

/// One line of text saying what `event` says, e.g. `add_one succeeded in 2.0ms`,
/// `flaky failed, will retry: [op_error] ...`, `run started` (the lines of [`Progress`] and
/// of `stepq logs`).
pub fn describe_event(event: &Event) -> String {
    let Some(step) = event.step_key.as_deref() else {
        return match &event.kind {
            EventKind::RunStarting => "run starting".to_string(),
            EventKind::RunStarted => "run started".to_string(),
            EventKind::RunSuccess => "run succeeded".to_string(),
            EventKind::RunFailure { errors } if errors.is_empty() => "run failed".to_string(),
            EventKind::RunFailure { errors } => format!(
                "run failed: {}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            EventKind::RunCanceled => "run canceled".to_string(),
            EventKind::EngineEvent { message } => message.clone(),
            other => format!("{other:?}"),
        };
    };
    match &event.kind {
        EventKind::StepQueued { attempt, task_id } => {
            format!("{step} queued, attempt {attempt} (task {task_id})")
        }
        EventKind::StepStart { attempt, worker } => {
            format!("{step} started on {worker}, attempt {attempt}")
        }
        EventKind::StepInputLoaded { input, bytes } => {
            format!("{step} loaded input `{input}` ({bytes} bytes)")
        }
        EventKind::StepOutputHandled { output, bytes } => {
            format!("{step} stored output `{output}` ({bytes} bytes)")
        }
        EventKind::StepSuccess { duration } => {
            format!("{step} succeeded in {}", human_duration(*duration))
        }
        EventKind::StepFailure {
            error,
            will_retry: true,
        } => format!("{step} failed, will retry: {error}"),
        EventKind::StepFailure { error, .. } => format!("{step} failed: {error}"),
        EventKind::StepRetry { attempt, delay } => {
            let after = if delay.is_zero() {
                String::new()
            } else {
                format!(" in {}", human_duration(*delay))
            };
            format!("{step}: retrying, attempt {attempt}{after}")
        }
        EventKind::StepSkipped { reason } => format!("{step} skipped: {reason}"),
        EventKind::StepCanceled => format!("{step} canceled"),
        EventKind::EngineEvent { message } => format!("{step}: {message}"),
        other => format!("{step}: {other:?}"),
    }
}

/// Follows a run's events and shows them.
pub struct Progress {
    phases: HashMap<String, Phase>,
    counts: Counts,
    bar: Option<ProgressBar>,
    out: Box<dyn Write + Send>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("counts", &self.counts)
            .finish()
    }
}

impl Progress {
    /// Progress of a run of `total` steps: a bar on stderr when `interactive`, else plain
    /// lines on stdout.
    pub fn new(total: usize, interactive: bool) -> Self {
        let bar = interactive.then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
                )
                .expect("the progress template is valid")
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(100));
            bar
        });
        Self::with_output(total, bar, Box::new(std::io::stdout()))
    }

    /// Plain-line progress written to `out` (for tests and logs).
    pub fn plain(total: usize, out: Box<dyn Write + Send>) -> Self {
        Self::with_output(total, None, out)
    }

    fn with_output(total: usize, bar: Option<ProgressBar>, out: Box<dyn Write + Send>) -> Self {
        Progress {
            phases: HashMap::new(),
            counts: Counts {
                total,
                ..Counts::default()
            },
            bar,
            out,
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    fn move_to(&mut self, step: &str, phase: Phase) {
        if let Some(old) = self.phases.insert(step.to_string(), phase) {
            *self.counts.slot(old) -= 1;
        }
        *self.counts.slot(phase) += 1;
    }

    fn line(&mut self, text: String) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => {
                let _ = writeln!(self.out, "{text}");
            }
        }
    }

    fn position(&self) -> String {
        format!("[{}/{}]", self.counts.finished(), self.counts.total)
    }

    /// The line of a step reaching a final state, after the finished / total position.
    fn final_line(&mut self, event: &Event) {
        let pos = self.position();
        self.line(format!("{pos} {}", describe_event(event)));
    }

    /// Takes one event into account.
    pub fn on_event(&mut self, event: &Event) {
        let Some(step) = event.step_key.as_deref() else {
            return;
        };
        // A fused step canceled when its run stopped may report success after all (see
        // `stepq_executor`'s run loop): the one final state that changes.
        let late_success = matches!(event.kind, EventKind::StepSuccess { .. })
            && self.phases.get(step) == Some(&Phase::Canceled);
        if !late_success && self.phases.get(step).is_some_and(|p| p.is_final()) {
            return;
        }
        match &event.kind {
            EventKind::StepQueued { .. } => self.move_to(step, Phase::Queued),
            EventKind::StepStart { .. } => self.move_to(step, Phase::Running),
            EventKind::StepSuccess { .. } => {
                self.move_to(step, Phase::Succeeded);
                if self.bar.is_none() {
                    self.final_line(event);
                }
            }
            EventKind::StepFailure { will_retry, .. } => {
                // The orchestrator's event: `will_retry` is its decision.
                if *will_retry {
                    self.move_to(step, Phase::Retrying);
                    self.line(describe_event(event));
                } else {
                    self.move_to(step, Phase::Failed);
                    self.final_line(event);
                }
            }
            EventKind::StepRetry { .. } => {
                self.move_to(step, Phase::Retrying);
                self.line(describe_event(event));
            }
            EventKind::StepSkipped { .. } => {
                self.move_to(step, Phase::Skipped);
                self.final_line(event);
            }
            EventKind::StepCanceled => {
                self.move_to(step, Phase::Canceled);
                self.final_line(event);
            }
            _ => {}
        }
        self.refresh();
    }

    fn refresh(&self) {
        if let Some(bar) = &self.bar {
            bar.set_position(self.counts.finished() as u64);
            bar.set_message(self.counts.summary());
        }
    }

    /// Removes the bar (the summary follows).
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use stepq_plan::{ErrorInfo, SkipReason};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn ev(step: &str, kind: EventKind) -> Event {
        Event::step("r", step, kind)
    }

    #[test]
    fn counts_follow_the_events_and_plain_lines_are_written() {
        let sink = Sink::default();
        let mut p = Progress::plain(3, Box::new(sink.clone()));
        p.on_event(&Event::run("r", EventKind::RunStarted));
        p.on_event(&ev(
            "a",
            EventKind::StepQueued {
                attempt: 1,
                task_id: "t".into(),
            },
        ));
        p.on_event(&ev(
            "b",
            EventKind::StepQueued {
                attempt: 1,
                task_id: "u".into(),
            },
        ));
        assert_eq!(p.counts().in_flight, 2);
        p.on_event(&ev(
            "a",
            EventKind::StepStart {
                attempt: 1,
                worker: "w".into(),
            },
        ));
        assert_eq!(p.counts().in_flight, 2);
        p.on_event(&ev(
            "a",
            EventKind::StepSuccess {
                duration: Duration::from_millis(2),
            },
        ));
        p.on_event(&ev(
            "b",
            EventKind::StepStart {
                attempt: 1,
                worker: "w".into(),
            },
        ));
        p.on_event(&ev(
            "b",
            EventKind::StepFailure {
                error: ErrorInfo::new("op_error", "boom"),
                will_retry: false,
            },
        ));
        p.on_event(&ev(
            "c",
            EventKind::StepSkipped {
                reason: SkipReason::UpstreamNotSucceeded {
                    upstream: "b".into(),
                },
            },
        ));
        let c = p.counts().clone();
        assert_eq!(
            (c.succeeded, c.failed, c.skipped, c.in_flight),
            (1, 1, 1, 0)
        );
        assert_eq!(c.finished(), 3);
        p.finish();
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("[1/3] a succeeded in 2.0ms"), "{text}");
        assert!(text.contains("[2/3] b failed: [op_error] boom"), "{text}");
        assert!(
            text.contains("[3/3] c skipped: upstream step `b` did not succeed"),
            "{text}"
        );
    }

    #[test]
    fn every_event_has_a_line() {
        let run = |kind| describe_event(&Event::run("r", kind));
        assert_eq!(run(EventKind::RunStarted), "run started");
        assert_eq!(
            run(EventKind::RunFailure {
                errors: vec![ErrorInfo::new("a", "x"), ErrorInfo::new("b", "y")]
            }),
            "run failed: [a] x; [b] y"
        );
        assert_eq!(
            describe_event(&ev(
                "s",
                EventKind::StepStart {
                    attempt: 2,
                    worker: "w1".into()
                }
            )),
            "s started on w1, attempt 2"
        );
        assert_eq!(
            describe_event(&ev(
                "s",
                EventKind::StepOutputHandled {
                    output: "result".into(),
                    bytes: 3
                }
            )),
            "s stored output `result` (3 bytes)"
        );
        assert_eq!(
            describe_event(&ev(
                "s",
                EventKind::StepRetry {
                    attempt: 3,
                    delay: Duration::from_millis(5)
                }
            )),
            "s: retrying, attempt 3 in 5.0ms"
        );
    }

    #[test]
    fn retries_count_as_in_flight_and_finals_are_kept() {
        let mut p = Progress::plain(1, Box::new(Sink::default()));
        p.on_event(&ev(
            "a",
            EventKind::StepStart {
                attempt: 1,
                worker: "w".into(),
            },
        ));
        p.on_event(&ev(
            "a",
            EventKind::StepFailure {
                error: ErrorInfo::new("e", "x"),
                will_retry: true,
            },
        ));
        p.on_event(&ev(
            "a",
            EventKind::StepRetry {
                attempt: 2,
                delay: Duration::ZERO,
            },
        ));
        assert_eq!(p.counts().in_flight, 1);
        p.on_event(&ev(
            "a",
            EventKind::StepSuccess {
                duration: Duration::ZERO,
            },
        ));
        p.on_event(&ev("a", EventKind::StepCanceled));
        assert_eq!((p.counts().succeeded, p.counts().canceled), (1, 0));
    }

    #[test]
    fn a_canceled_step_that_succeeded_after_all_counts_as_succeeded() {
        let mut p = Progress::plain(2, Box::new(Sink::default()));
        let success = || EventKind::StepSuccess {
            duration: Duration::ZERO,
        };
        p.on_event(&ev("a", EventKind::StepCanceled));
        p.on_event(&ev("b", EventKind::StepCanceled));
        assert_eq!((p.counts().succeeded, p.counts().canceled), (0, 2));
        p.on_event(&ev("a", success()));
        assert_eq!((p.counts().succeeded, p.counts().canceled), (1, 1));
        assert_eq!(p.counts().finished(), 2);
        p.on_event(&ev(
            "b",
            EventKind::StepSkipped {
                reason: SkipReason::UpstreamNotSucceeded {
                    upstream: "x".into(),
                },
            },
        ));
        assert_eq!(p.counts().canceled, 1, "other finals are kept");
    }
}
