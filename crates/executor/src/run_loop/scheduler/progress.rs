//! A task's progress heard before its result: a step's start, and in a fused task the
//! successes of its steps before the last, recorded when they happen (see
//! `stepq_protocol`'s docs on progress entries).
//!
//! A step's `StepStart` is emitted when its entry arrives, so a run's log says RUNNING while
//! it runs. A step of a task reported as succeeded gets its events and its `StepSuccess`
//! emitted at once — its outputs are stored, so a resume after an orchestrator crash knows it
//! and does not run it again — but it stays as it was in the plan until the task's result
//! (its head may not be released before): the result's reports then change the plan without
//! emitting those events a second time. Should no result come (the task timed out, the
//! backend failed, the worker's cancel gate answered a redelivery, or the cancel grace
//! period ended), the steps heard to succeed are taken up as if the result had said so, and
//! the outcome goes to the step after them.

use stepq_plan::{ErrorInfo, Event, EventKind, StepReport, StepStatus, TaskProgress};

use super::{Decision, Phase, Scheduler};

/// What the current attempt of a step told before its task's result.
#[derive(Debug, Clone, Default)]
pub(super) struct EarlyProgress {
    /// The `(worker, timestamp)` of the `StepStart` emitted last for this attempt.
    pub(super) start_emitted: Option<(String, u64)>,
    /// Its success report, heard before the result.
    pub(super) success: Option<StepReport>,
    /// Its events and `StepSuccess` were emitted from that report.
    pub(super) success_emitted: bool,
}

impl Scheduler {
    /// Whether task `task_id` of `step` is still awaited: the driver waits for its next
    /// progress entry only then.
    pub(crate) fn awaits(&self, step: usize, task_id: &str) -> bool {
        let track = &self.steps[step];
        track.phase == Phase::InFlight && track.task_id.as_deref() == Some(task_id)
    }

    /// A progress entry of task `task_id` of `step` arrived. An entry of a task no longer
    /// awaited changes nothing.
    pub(crate) fn on_progress(
        &mut self,
        step: usize,
        task_id: &str,
        progress: TaskProgress,
    ) -> Vec<Decision> {
        if !self.awaits(step, task_id) {
            return Vec::new();
        }
        let members: Vec<usize> = std::iter::once(step)
            .chain(self.steps[step].chain.iter().copied())
            .collect();
        for report in progress.finished {
            let Some(at) = members.iter().position(|&m| self.key(m) == report.step_key) else {
                continue;
            };
            // Successes come in order: each step after the ones before it.
            let in_order = members[..at]
                .iter()
                .all(|&m| self.steps[m].early.success.is_some());
            let m = members[at];
            if !in_order
                || self.steps[m].early.success.is_some()
                || report.attempt != self.steps[m].attempt
                || !matches!(report.status, StepStatus::Success { .. })
            {
                continue;
            }
            self.early_success(m, report);
        }
        if let Some(event) = progress.started {
            let m = event
                .step_key
                .as_deref()
                .and_then(|key| members.iter().copied().find(|&m| self.key(m) == key));
            if let (Some(m), EventKind::StepStart { attempt, .. }) = (m, &event.kind) {
                if *attempt == self.steps[m].attempt && self.can_emit_for(m, step) {
                    self.emit_start(m, event);
                }
            }
        }
        self.decisions()
    }

    /// Whether events of step `m` of `head`'s task may be emitted now: the head while in
    /// flight, a member while it is sent with it.
    fn can_emit_for(&self, m: usize, head: usize) -> bool {
        let phase = self.steps[m].phase;
        (m == head && phase == Phase::InFlight) || (m != head && phase == Phase::Fused)
    }

    /// Emits step `m`'s `StepStart` and notes its queue wait and worker: once per attempt,
    /// and again when the attempt started anew — its message redelivered after its worker
    /// died, so another worker (or the same one later) runs it — so the log shows who runs it
    /// now. The same start heard twice (a progress entry, then the result) is emitted once.
    pub(super) fn emit_start(&mut self, m: usize, event: Event) {
        let EventKind::StepStart { worker, .. } = &event.kind else {
            return;
        };
        let start = (worker.clone(), event.timestamp_us);
        let track = &mut self.steps[m];
        let anew = match &track.early.start_emitted {
            None => true,
            Some((w, at)) => *w != start.0 || start.1 > *at,
        };
        if !anew {
            return;
        }
        track.summary.queue_wait = Some(std::time::Duration::from_micros(
            event.timestamp_us.saturating_sub(track.queued_us),
        ));
        track.summary.worker = Some(start.0.clone());
        track.early.start_emitted = Some(start);
        self.emit(event);
    }

    /// Step `m` of an awaited task succeeded on its worker: keeps the report and, if the step
    /// is still sent with its task, emits its events and its `StepSuccess` now. A report
    /// lacking a required output is left for the result to fail.
    fn early_success(&mut self, m: usize, report: StepReport) {
        let StepStatus::Success { emitted } = &report.status else {
            return;
        };
        let missing = self.job.steps()[m]
            .outputs
            .iter()
            .any(|o| o.required && !emitted.contains(&o.name));
        if missing {
            return;
        }
        let head = self.head_of(m);
        if self.can_emit_for(m, head) {
            let key = self.key(m);
            let mut duration = None;
            for event in &report.events {
                match &event.kind {
                    EventKind::StepStart { .. } => self.emit_start(m, event.clone()),
                    EventKind::StepSuccess { duration: d } => duration = Some(*d),
                    EventKind::StepInputLoaded { .. }
                    | EventKind::StepOutputHandled { .. }
                    | EventKind::EngineEvent { .. } => self.emit(event.clone()),
                    _ => {}
                }
            }
            let duration = duration.unwrap_or_default();
            self.steps[m].summary.worker = Some(report.worker.clone());
            self.steps[m].summary.duration = Some(duration);
            self.steps[m].early.success_emitted = true;
            self.emit(Event::step(
                &self.run_id,
                &key,
                EventKind::StepSuccess { duration },
            ));
        }
        self.steps[m].early.success = Some(report);
    }

    /// The head step of the task step `m` is sent in (`m` itself if it heads one).
    fn head_of(&self, m: usize) -> usize {
        (0..self.steps.len())
            .find(|&h| self.steps[h].chain.contains(&m))
            .unwrap_or(m)
    }

    /// When `head`'s task ends without a result but some of its steps were heard to succeed:
    /// their reports, in order, and for the step after them one of `tail` (without events).
    /// `None` when the head itself was not heard to succeed.
    pub(super) fn early_reports(
        &self,
        head: usize,
        chain: &[usize],
        tail: StepStatus,
    ) -> Option<Vec<StepReport>> {
        self.steps[head].early.success.as_ref()?;
        let mut reports = Vec::new();
        for &m in std::iter::once(&head).chain(chain) {
            match &self.steps[m].early.success {
                Some(report) => reports.push(report.clone()),
                None => {
                    reports.push(StepReport {
                        step_key: self.key(m),
                        attempt: self.steps[m].attempt,
                        worker: reports
                            .last()
                            .map(|r: &StepReport| r.worker.clone())
                            .unwrap_or_default(),
                        status: tail,
                        events: Vec::new(),
                        inline_outputs: Vec::new(),
                    });
                    break;
                }
            }
        }
        Some(reports)
    }
}

/// A failure report's status for `error` (no retry asked).
pub(super) fn failure(error: ErrorInfo) -> StepStatus {
    StepStatus::Failure {
        error,
        retry_requested: None,
    }
}
