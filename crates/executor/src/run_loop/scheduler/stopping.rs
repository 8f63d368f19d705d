//! Stopping a run and telling how it ended: an interrupt or a final failure with
//! `fail_fast` stops submitting, cancels every step not started and asks in-flight tasks to
//! cancel; the cancel grace period ending records steps still in flight as canceled; a
//! stalled loop ends the run failed; [`Scheduler::finish`] gives the run's final event and
//! result.

use std::collections::BTreeMap;

use stepq_plan::{ErrorInfo, Event, EventKind, StepState, StepStatus};

use crate::outcome::{RunResult, RunStatus, StepRunState};

use super::{Decision, Phase, Scheduler, Stop};

impl Scheduler {
    /// The run was interrupted: stop as [`begin_stop`](Self::begin_stop) says. The driver
    /// calls it once, and only while the run is not stopping.
    pub(crate) fn interrupt(&mut self) -> Vec<Decision> {
        self.begin_stop(Stop::Interrupted);
        self.decisions()
    }

    /// Stops submitting, starts the grace period, cancels what has not started (steps not
    /// ready, waiting for admission or for a retry delay) and asks in-flight tasks to cancel.
    pub(super) fn begin_stop(&mut self, reason: Stop) {
        self.stop = Some(reason);
        self.decide(Decision::StartGrace);
        let in_flight = self
            .steps
            .iter()
            .filter(|t| matches!(t.phase, Phase::Submitting | Phase::InFlight))
            .count();
        let message = match reason {
            Stop::Interrupted => format!(
                "run interrupted: canceling steps not started, asking {in_flight} in-flight step(s) to cancel"
            ),
            Stop::FailFast => format!(
                "fail fast: a step failed; canceling steps not started, asking {in_flight} in-flight step(s) to cancel"
            ),
        };
        tracing::info!(run_id = %self.run_id, "{message}");
        self.emit(Event::run(&self.run_id, EventKind::EngineEvent { message }));
        for key in self.progress.cancel_pending() {
            let step = self.index(&key);
            self.steps[step].phase = Phase::Done;
            self.inline.mark_consumed(step);
            if self.steps[step].early.success_emitted {
                // A step of an in-flight fused task that its worker said succeeded (recorded
                // so): its task's result, or the end of the grace period, takes it up as
                // succeeded.
                continue;
            }
            self.emit(Event::step(&self.run_id, &key, EventKind::StepCanceled));
        }
        for step in self.admission.drain_waiting() {
            self.cancel_step(step);
        }
        for step in 0..self.steps.len() {
            match self.steps[step].phase {
                Phase::RetryDelay => self.cancel_step(step),
                Phase::InFlight => {
                    if let Some(task_id) = self.steps[step].task_id.clone() {
                        self.decide(Decision::Cancel { task_id });
                    }
                }
                _ => {}
            }
        }
    }

    /// The cancel grace period ended: steps still in flight are recorded as canceled, and
    /// results that still come for them change nothing. The driver ends the run after it.
    pub(crate) fn end_grace(&mut self) -> Vec<Decision> {
        let left: Vec<usize> = (0..self.steps.len())
            .filter(|&s| matches!(self.steps[s].phase, Phase::Submitting | Phase::InFlight))
            .collect();
        let message = format!(
            "{} in-flight step(s) did not report within the {:?} cancel grace period; recorded as canceled",
            left.len(),
            self.config.cancel_grace
        );
        tracing::warn!(run_id = %self.run_id, "{message}");
        self.emit(Event::run(&self.run_id, EventKind::EngineEvent { message }));
        for step in left {
            if self.steps[step].phase == Phase::InFlight && self.steps[step].early.success.is_some()
            {
                // Steps of its task said to have succeeded stay so; the next one is canceled.
                let task_id = self.steps[step].task_id.take().unwrap_or_default();
                self.admission.release(step);
                let chain = self.release_chain(step);
                self.no_result(step, &task_id, chain, StepStatus::Canceled);
            } else {
                self.cancel_step(step);
            }
        }
        self.decisions()
    }

    /// Nothing is in flight but the plan is unfinished: a bug. Ends the run FAILURE instead
    /// of hanging: steps not started are marked done (without events), steps handed out are
    /// canceled.
    pub(crate) fn stalled(&mut self) -> Vec<Decision> {
        let unfinished: Vec<String> = self
            .progress
            .states()
            .filter(|(_, s)| !s.is_final())
            .map(|(k, _)| k.to_string())
            .collect();
        let error = ErrorInfo::new(
            "internal",
            format!(
                "run loop has nothing in flight but steps {} are unfinished",
                unfinished.join(", ")
            ),
        );
        tracing::error!(run_id = %self.run_id, %error, "run loop stalled");
        self.errors.push(error);
        self.failed = true;
        for key in self.progress.cancel_pending() {
            let step = self.index(&key);
            self.steps[step].phase = Phase::Done;
        }
        for step in 0..self.steps.len() {
            if self.progress.state_of(&self.job.steps()[step].key) == Some(&StepState::InFlight) {
                self.cancel_step(step);
            }
        }
        self.decisions()
    }

    /// How the run ended: its final event (to emit last) and its result.
    pub(crate) fn finish(self) -> (Event, RunResult) {
        let status = if self.failed || self.stop == Some(Stop::FailFast) {
            RunStatus::Failure
        } else if self.stop == Some(Stop::Interrupted)
            || self
                .progress
                .states()
                .any(|(_, state)| *state == StepState::Canceled)
        {
            // Interrupted, or a step was canceled (someone cancelled its task).
            RunStatus::Canceled
        } else {
            RunStatus::Success
        };
        let kind = match status {
            RunStatus::Success => EventKind::RunSuccess,
            RunStatus::Failure => EventKind::RunFailure {
                errors: self.errors.clone(),
            },
            RunStatus::Canceled => EventKind::RunCanceled,
        };
        tracing::info!(run_id = %self.run_id, %status, "run ended");
        let event = Event::run(&self.run_id, kind);
        let mut steps = BTreeMap::new();
        for (def, track) in self.job.steps().iter().zip(self.steps) {
            let mut summary = track.summary;
            summary.attempts = track.attempts;
            summary.state = match self.progress.state_of(&def.key) {
                Some(StepState::Succeeded) => StepRunState::Succeeded,
                Some(StepState::Failed) => StepRunState::Failed,
                Some(StepState::Skipped) => StepRunState::Skipped,
                Some(StepState::NotInPlan) | None => StepRunState::NotRun,
                Some(_) => StepRunState::Canceled,
            };
            steps.insert(def.key.clone(), summary);
        }
        let result = RunResult {
            run_id: self.run_id,
            status,
            steps,
            errors: self.errors,
            known_state: self.progress.known_state().clone(),
        };
        (event, result)
    }
}
