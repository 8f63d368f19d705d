//! Results and step reports: a task's result (or why there is none) turns into its steps'
//! events and outcomes: success, a retry, a final failure, a cancellation; the later steps
//! of a fused task are taken up from the same result; skipped steps are recorded.

use std::time::Duration;

use stepq_plan::{ErrorInfo, Event, EventKind, StepOutcome, StepReport, StepState, StepStatus};

use crate::protocol;
use crate::retry::{self, RetryDecision};

use super::progress::failure;
use super::{Answer, Decision, Phase, Scheduler, Stop};

impl Scheduler {
    /// Waiting for task `task_id` of `step` ended with `answer`; `delete_error` says why the
    /// consumed result could not be deleted. An answer for a task the step no longer awaits
    /// (a stale one) changes nothing.
    pub(crate) fn on_result(
        &mut self,
        step: usize,
        task_id: String,
        answer: Answer,
        delete_error: Option<String>,
    ) -> Vec<Decision> {
        self.take_result(step, task_id, answer, delete_error);
        self.decisions()
    }

    /// The body of [`on_result`](Self::on_result).
    fn take_result(
        &mut self,
        step: usize,
        task_id: String,
        answer: Answer,
        delete_error: Option<String>,
    ) {
        let track = &mut self.steps[step];
        if track.phase != Phase::InFlight || track.task_id.as_deref() != Some(&task_id) {
            return;
        }
        track.task_id = None;
        self.admission.release(step);
        let chain = self.release_chain(step);
        let key = self.key(step);
        if let Some(e) = delete_error {
            tracing::warn!(run_id = %self.run_id, step = %key, %task_id, error = %e, "could not delete a consumed task result");
            self.emit(Event::step(
                &self.run_id,
                &key,
                EventKind::EngineEvent {
                    message: format!("could not delete the result of task {task_id}: {e}"),
                },
            ));
        }
        let attempt = self.steps[step].attempt;
        let result = match answer {
            Answer::Result(result) => result,
            Answer::TimedOut => {
                let steps = 1 + chain.len() as u32;
                let timeout = self.task_timeout(chain.len()).unwrap_or_default();
                let task = if steps > 1 {
                    format!(
                        "task {task_id}, fused with the {} step(s) after it",
                        steps - 1
                    )
                } else {
                    format!("task {task_id}")
                };
                let error = ErrorInfo::new(
                    "timeout",
                    format!(
                        "no result for attempt {attempt} of step `{key}` ({task}) within {timeout:?}"
                    ),
                );
                self.decide(Decision::Cancel {
                    task_id: task_id.clone(),
                });
                self.no_result(step, &task_id, chain, failure(error));
                return;
            }
            Answer::Failed(error) => {
                self.no_result(step, &task_id, chain, failure(error));
                return;
            }
        };
        let task_time = Duration::try_from_secs_f64(result.execution_time).ok();
        if result.is_err {
            self.steps[step].summary.duration = task_time;
            let canceled = result
                .error
                .as_ref()
                .is_some_and(|e| e.kind == stepq_broker::receiver::kinds::CANCELED);
            if canceled {
                // A worker's cancellation gate answered the task without running it.
                self.no_result(step, &task_id, chain, StepStatus::Canceled);
                return;
            }
            let error = match result.error {
                Some(e) => ErrorInfo::new(
                    e.kind,
                    format!("worker could not run the step: {}", e.message),
                ),
                None => ErrorInfo::new(
                    "task_error",
                    "worker reported a failed task without an error",
                ),
            };
            self.no_result(step, &task_id, chain, failure(error));
            return;
        }
        let reports = match protocol::read_reports(&result.return_value) {
            Err(e) => {
                self.steps[step].summary.duration = task_time;
                let error = ErrorInfo::from_error("bad_report", &e);
                self.attempt_failed(step, error, None);
                return;
            }
            Ok(reports) => reports,
        };
        // A fused task's own time is not one step's: each step has its op time.
        let task_time = task_time.filter(|_| chain.is_empty());
        self.take_reports(step, &task_id, chain, reports, task_time);
    }

    /// A task's steps' reports, from its result or (see [`no_result`](Self::no_result)) from
    /// its progress: the head's first, then its fused members'.
    fn take_reports(
        &mut self,
        step: usize,
        task_id: &str,
        chain: Vec<usize>,
        mut reports: Vec<StepReport>,
        task_time: Option<Duration>,
    ) {
        let key = self.key(step);
        let Some(at) = reports.iter().position(|r| r.step_key == key) else {
            self.steps[step].summary.duration = task_time;
            let error = ErrorInfo::new(
                "bad_report",
                format!("the result of task {task_id} has no report for step `{key}`"),
            );
            self.attempt_failed(step, error, None);
            return;
        };
        let report = reports.swap_remove(at);
        self.on_report(step, report, task_time);
        if !chain.is_empty() {
            self.on_members(step, task_id, chain, reports);
        }
    }

    /// `step`'s task ended without reports: its steps heard to succeed (progress) are taken
    /// up as succeeded and the next one ends with `tail`; with none heard, the head does.
    pub(super) fn no_result(
        &mut self,
        step: usize,
        task_id: &str,
        chain: Vec<usize>,
        tail: StepStatus,
    ) {
        if let Some(reports) = self.early_reports(step, &chain, tail.clone()) {
            self.take_reports(step, task_id, chain, reports, None);
            return;
        }
        match tail {
            StepStatus::Canceled => self.cancel_step(step),
            StepStatus::Failure {
                error,
                retry_requested,
            } => self.attempt_failed(step, error, retry_requested),
            StepStatus::Success { .. } => unreachable!("a task without a result did not succeed"),
        }
    }

    /// Takes up the reports of the later steps of `head`'s fused task, in order, while the
    /// step before succeeded. A step without a report did not start (the worker stopped
    /// earlier): it stays not sent, and the plan schedules (or skips) it as usual.
    fn on_members(
        &mut self,
        head: usize,
        task_id: &str,
        chain: Vec<usize>,
        mut reports: Vec<StepReport>,
    ) {
        let queued_us = self.steps[head].queued_us;
        let mut prev = head;
        for m in chain {
            let prev_key = &self.job.steps()[prev].key;
            if self.progress.state_of(prev_key) != Some(&StepState::Succeeded) {
                break;
            }
            let key = self.key(m);
            let Some(at) = reports.iter().position(|r| r.step_key == key) else {
                break;
            };
            let report = reports.swap_remove(at);
            if self.steps[m].phase != Phase::Idle {
                // Ended meanwhile: stopping the run (interrupt, fail fast) cancels the steps
                // of a fused task that have not reported yet, as it cancels every step not
                // started. One that reports success ran after all: its success is recorded
                // (the run has not ended: this task was the step before it, in flight);
                // any other outcome leaves it canceled, and the steps after it too.
                let succeeded = matches!(report.status, StepStatus::Success { .. });
                if !succeeded || !self.progress.reopen_canceled(&key) {
                    break;
                }
                if self.steps[m].early.success_emitted {
                    // Recorded as succeeded when its worker said so, before the run stopped.
                    self.take_up_member(m, queued_us, report);
                    prev = m;
                    continue;
                }
                self.emit(Event::step(
                    &self.run_id,
                    &key,
                    EventKind::EngineEvent {
                        message: format!(
                            "step `{key}` of fused task {task_id} succeeded on worker {} after the run began to stop; recorded as succeeded, not canceled",
                            report.worker
                        ),
                    },
                ));
                self.take_up_member(m, queued_us, report);
                prev = m;
                continue;
            }
            // Its upstream succeeded, so the plan made it ready: hand it out as in flight
            // without admitting it again (it ran in its head's slot).
            self.steps[m].phase = Phase::Fused;
            self.admit_ready();
            if self.progress.state_of(&key) != Some(&StepState::InFlight) {
                self.steps[m].phase = Phase::Idle;
                break;
            }
            self.take_up_member(m, queued_us, report);
            prev = m;
        }
    }

    /// Records the attempt of fused step `m` (in flight in the plan) that `report` reports,
    /// queued with its task at `queued_us`, and takes up the report.
    fn take_up_member(&mut self, m: usize, queued_us: u64, report: StepReport) {
        let key = self.key(m);
        let attempt = self.progress.record_attempt(&key);
        let track = &mut self.steps[m];
        track.phase = Phase::InFlight;
        track.attempt = attempt;
        track.attempts += 1;
        track.queued_us = queued_us;
        self.inline.mark_consumed(m);
        self.on_report(m, report, None);
    }

    /// Forwards a report's events and feeds its outcome into the plan.
    fn on_report(&mut self, step: usize, mut report: StepReport, task_time: Option<Duration>) {
        let key = self.key(step);
        let inline_outputs = std::mem::take(&mut report.inline_outputs);
        let mut op_time = None;
        // Events already emitted from the task's progress are not emitted again.
        let early = self.steps[step].early.success_emitted;
        for event in report.events {
            match &event.kind {
                EventKind::StepStart { .. } => self.emit_start(step, event),
                EventKind::StepSuccess { duration } => op_time = Some(*duration),
                EventKind::StepInputLoaded { .. }
                | EventKind::StepOutputHandled { .. }
                | EventKind::EngineEvent { .. } => {
                    if !early {
                        self.emit(event);
                    }
                }
                other => {
                    tracing::debug!(run_id = %self.run_id, step = %key, kind = ?other, "dropping an orchestrator-owned event kind from a step report");
                }
            }
        }
        self.steps[step].summary.worker = Some(report.worker);
        match report.status {
            StepStatus::Success { emitted } => {
                let missing: Vec<&str> = self.job.steps()[step]
                    .outputs
                    .iter()
                    .filter(|o| o.required && !emitted.contains(&o.name))
                    .map(|o| o.name.as_str())
                    .collect();
                if !missing.is_empty() {
                    let error = ErrorInfo::new(
                        "missing_output",
                        format!(
                            "step `{key}` reported success without its required output(s) {}",
                            missing.join(", ")
                        ),
                    );
                    self.steps[step].summary.duration = op_time.or(task_time);
                    self.attempt_failed(step, error, None);
                    return;
                }
                let duration = op_time.or(task_time).unwrap_or_default();
                let track = &mut self.steps[step];
                track.summary.duration = Some(duration);
                track.summary.error = None;
                track.phase = Phase::Done;
                if !early {
                    self.emit(Event::step(
                        &self.run_id,
                        &key,
                        EventKind::StepSuccess { duration },
                    ));
                }
                self.inline.remember(&self.job, step, inline_outputs);
                self.progress
                    .complete(&key, StepOutcome::Success { emitted });
                self.flush_skipped();
            }
            StepStatus::Failure {
                error,
                retry_requested,
            } => {
                self.steps[step].summary.duration = task_time;
                self.attempt_failed(step, error, retry_requested);
            }
            StepStatus::Canceled => {
                self.steps[step].summary.duration = task_time;
                self.cancel_step(step);
            }
        }
    }

    /// An attempt failed: retry it, or record the step as failed (and stop the run when
    /// `fail_fast` is on).
    pub(super) fn attempt_failed(
        &mut self,
        step: usize,
        error: ErrorInfo,
        retry_requested: Option<Option<u64>>,
    ) {
        let def = &self.job.steps()[step];
        let key = def.key.clone();
        let attempt = self.steps[step].attempt;
        let decision = if self.stop.is_some() {
            RetryDecision::Final
        } else {
            retry::decide(&self.config, def.retry.as_ref(), attempt, retry_requested)
        };
        tracing::debug!(run_id = %self.run_id, step = %key, attempt, error = %error, ?decision, "step attempt failed");
        self.steps[step].summary.error = Some(error.clone());
        if let RetryDecision::Retry {
            next_attempt,
            delay,
        } = decision
        {
            self.emit(Event::step(
                &self.run_id,
                &key,
                EventKind::StepFailure {
                    error,
                    will_retry: true,
                },
            ));
            self.emit(Event::step(
                &self.run_id,
                &key,
                EventKind::StepRetry {
                    attempt: next_attempt,
                    delay,
                },
            ));
            if delay.is_zero() {
                self.steps[step].phase = Phase::Admitting;
                self.admission.push(step);
            } else {
                self.steps[step].phase = Phase::RetryDelay;
                self.decide(Decision::RetryAfter { step, delay });
            }
            return;
        }
        self.emit(Event::step(
            &self.run_id,
            &key,
            EventKind::StepFailure {
                error: error.clone(),
                will_retry: false,
            },
        ));
        if decision == RetryDecision::Deferred {
            self.steps[step].summary.retry_deferred = true;
            self.emit(Event::step(
                &self.run_id,
                &key,
                EventKind::EngineEvent {
                    message: format!(
                        "retry of step `{key}` deferred (retry mode deferred): a resume of this run reruns it"
                    ),
                },
            ));
        }
        self.errors.push(ErrorInfo {
            kind: error.kind,
            message: format!("step `{key}`: {}", error.message),
            causes: error.causes,
        });
        self.steps[step].phase = Phase::Done;
        self.progress.complete(&key, StepOutcome::Failure);
        self.flush_skipped();
        if self.stop.is_none() {
            self.failed = true;
            if self.config.fail_fast {
                self.begin_stop(Stop::FailFast);
            }
        }
    }

    /// Records a step that started (handed out by the plan) as canceled.
    pub(super) fn cancel_step(&mut self, step: usize) {
        let key = self.key(step);
        self.steps[step].phase = Phase::Done;
        self.inline.mark_consumed(step);
        self.emit(Event::step(&self.run_id, &key, EventKind::StepCanceled));
        self.progress.complete(&key, StepOutcome::Canceled);
        self.flush_skipped();
    }

    /// Records the steps the plan skipped since the last call.
    pub(super) fn flush_skipped(&mut self) {
        for (key, reason) in self.progress.take_skipped() {
            let step = self.index(&key);
            self.inline.mark_consumed(step);
            let track = &mut self.steps[step];
            track.phase = Phase::Done;
            track.summary.skip_reason = Some(reason.clone());
            self.emit(Event::step(
                &self.run_id,
                &key,
                EventKind::StepSkipped { reason },
            ));
        }
    }
}
