//! What goes into a step's task and what happens once it was sent: the batch of admitted
//! steps, the known state a worker needs, chain fusion (a linear run of steps sent as one
//! task), inline inputs, and how long a task's result is awaited.

use std::time::Duration;

use stepq_plan::{ErrorInfo, Event, EventKind, ExecuteStepArgs, KnownState, StepState};

use super::{Decision, Phase, Scheduler, StepTask};

impl Scheduler {
    /// Moves the steps the plan made ready into admission and takes every step the limits
    /// admit now, each as one task (with the steps fused after it). Each is `Submitting`
    /// until [`on_submitted`](Self::on_submitted) hears of it. Empty while the run is
    /// stopping.
    pub(crate) fn next_batch(&mut self) -> Vec<StepTask> {
        if self.stop.is_some() {
            return Vec::new();
        }
        self.admit_ready();
        let batch = self.admission.take_admitted();
        let mut tasks = Vec::with_capacity(batch.len());
        for step in batch {
            let key = self.key(step);
            let attempt = self.progress.record_attempt(&key);
            let track = &mut self.steps[step];
            track.phase = Phase::Submitting;
            track.attempt = attempt;
            track.attempts += 1;
            track.early = Default::default();
            let mut known_state = self.known_state_for(step);
            let inline_inputs = self.inline.inputs_for(&self.job, step);
            self.inline.mark_consumed(step);
            let chain = self.fusable_chain(step);
            let mut step_keys = vec![key];
            for &member in &chain {
                let member_key = self.key(member);
                // Recorded when its report shows it started; until then, the number it gets.
                let planned = self.progress.known_state().attempts_of(&member_key) + 1;
                known_state.attempts.insert(member_key.clone(), planned);
                self.steps[member].phase = Phase::Fused;
                self.steps[member].attempt = planned;
                self.steps[member].early = Default::default();
                step_keys.push(member_key);
            }
            self.steps[step].chain = chain;
            let args = ExecuteStepArgs {
                run_id: self.run_id.clone(),
                job_name: self.job.name().to_string(),
                known_state,
                step_keys,
                retry_mode: self.config.retry_mode,
                attempt,
                run_config: self.run_config.clone(),
                inline_inputs,
            };
            tasks.push(StepTask {
                step,
                attempt,
                args,
            });
        }
        tasks
    }

    /// A batch of tasks was sent at `queued_us` (µs since the epoch), their task ids in the
    /// order of `steps` (`(head step, attempt)` of each), or sending failed with this error.
    /// Sent tasks are queued (one `StepQueued` per step they carry) and awaited, and canceled
    /// at once if the run is stopping; the steps of a batch that failed fail their attempt.
    pub(crate) fn on_submitted(
        &mut self,
        steps: Vec<(usize, u32)>,
        queued_us: u64,
        outcome: Result<Vec<String>, ErrorInfo>,
    ) -> Vec<Decision> {
        match outcome {
            Ok(sent) => {
                for ((step, attempt), task_id) in steps.into_iter().zip(sent) {
                    if self.steps[step].phase != Phase::Submitting {
                        // Recorded as canceled when the grace period ended; nothing to await.
                        continue;
                    }
                    let track = &mut self.steps[step];
                    track.phase = Phase::InFlight;
                    track.task_id = Some(task_id.clone());
                    track.queued_us = queued_us;
                    let mut queued = vec![(step, attempt)];
                    for &m in &self.steps[step].chain {
                        if self.steps[m].phase == Phase::Fused {
                            queued.push((m, self.steps[m].attempt));
                        }
                    }
                    for (s, attempt) in queued {
                        self.steps[s].queued_us = queued_us;
                        self.emit(Event {
                            timestamp_us: queued_us,
                            run_id: self.run_id.clone(),
                            step_key: Some(self.key(s)),
                            kind: EventKind::StepQueued {
                                attempt,
                                task_id: task_id.clone(),
                            },
                        });
                    }
                    self.decide(Decision::AwaitResult {
                        step,
                        task_id: task_id.clone(),
                        timeout: self.task_timeout(self.steps[step].chain.len()),
                        steps: 1 + self.steps[step].chain.len(),
                    });
                    if self.stop.is_some() {
                        self.decide(Decision::Cancel { task_id });
                    }
                }
            }
            Err(error) => {
                for (step, _) in steps {
                    if self.steps[step].phase != Phase::Submitting {
                        continue;
                    }
                    self.release_chain(step);
                    self.admission.release(step);
                    self.attempt_failed(step, error.clone(), None);
                }
            }
        }
        self.decisions()
    }

    /// The part of the known state a step's worker needs: its upstream steps' emitted outputs
    /// and its own attempt count. Keeps each message O(inputs), not O(run).
    pub(super) fn known_state_for(&self, step: usize) -> KnownState {
        let known = self.progress.known_state();
        let def = &self.job.steps()[step];
        let mut out = KnownState::default();
        for input in &def.inputs {
            if out.completed.contains_key(&input.from_step) {
                continue;
            }
            if let Some(outputs) = known.completed.get(&input.from_step) {
                out.completed
                    .insert(input.from_step.clone(), outputs.clone());
            }
        }
        if let Some(&n) = known.attempts.get(&def.key) {
            out.attempts.insert(def.key.clone(), n);
        }
        out
    }

    /// The steps to send in `head`'s task after it: each the only in-plan downstream step of
    /// the one before, reading only from it, not sent yet, with the same tags and retry
    /// policy; at most `max_fused_steps` steps in all. Empty when fusing is off.
    pub(super) fn fusable_chain(&self, head: usize) -> Vec<usize> {
        let mut chain = Vec::new();
        if !self.config.fuse_chains {
            return chain;
        }
        let steps = self.job.steps();
        let mut last = head;
        while chain.len() + 1 < self.config.max_fused_steps {
            let [next] = self.progress.plan().downstream_indices(last)[..] else {
                break;
            };
            let (from, to) = (&steps[last], &steps[next]);
            let fusable = self.steps[next].phase == Phase::Idle
                && matches!(self.progress.state_of(&to.key), Some(StepState::Waiting(_)))
                && !to.inputs.is_empty()
                && to.inputs.iter().all(|i| i.from_step == from.key)
                && to.tags == from.tags
                && to.retry == from.retry;
            if !fusable {
                break;
            }
            chain.push(next);
            last = next;
        }
        chain
    }

    /// The result timeout of a task carrying `fused` steps after its head: the per-step
    /// `step_timeout` times its steps.
    pub(super) fn task_timeout(&self, fused: usize) -> Option<Duration> {
        self.config.step_timeout.map(|t| t * (1 + fused as u32))
    }

    /// The members of `head`'s task go back to not sent (the default when a task ends); the
    /// ones a report shows started are then taken up again by `on_members`.
    pub(super) fn release_chain(&mut self, head: usize) -> Vec<usize> {
        let chain = std::mem::take(&mut self.steps[head].chain);
        for &m in &chain {
            if self.steps[m].phase == Phase::Fused {
                self.steps[m].phase = Phase::Idle;
            }
        }
        chain
    }
}
