//! Execution plans: which steps of a job run, and incremental readiness as steps finish.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::events::SkipReason;
use crate::job::Job;
use crate::state::KnownState;

/// Why a plan could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The selection names a step the job does not have.
    #[error("job `{job}` has no step `{step}`")]
    UnknownStep {
        /// Job name.
        job: String,
        /// The unknown key.
        step: String,
    },
    /// A selected step consumes an output of a step that will not run and has no known result.
    #[error("step `{step}` needs output `{output}` of `{upstream}`, which is neither selected nor known from an earlier run")]
    MissingUpstream {
        /// The selected step.
        step: String,
        /// The unselected upstream step.
        upstream: String,
        /// The output needed.
        output: String,
    },
    /// The selection is empty.
    #[error("the step selection is empty")]
    EmptySelection,
}

/// How a step attempt ended, as the orchestrator feeds it back into [`PlanProgress`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// Succeeded, having emitted these outputs.
    Success {
        /// Emitted output names.
        emitted: Vec<String>,
    },
    /// Failed for good (retries exhausted or disabled).
    Failure,
    /// Canceled.
    Canceled,
}

/// The state of one step during a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepState {
    /// Not part of this plan (unselected, or completed in an earlier run).
    NotInPlan,
    /// Waiting for this many upstream steps.
    Waiting(usize),
    /// All inputs available, not yet handed out by [`PlanProgress::take_ready`].
    Ready,
    /// Handed out, outcome not yet known.
    InFlight,
    /// Succeeded.
    Succeeded,
    /// Failed.
    Failed,
    /// Skipped.
    Skipped,
    /// Canceled.
    Canceled,
}

impl StepState {
    /// Whether the step has reached a final state.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            StepState::NotInPlan
                | StepState::Succeeded
                | StepState::Failed
                | StepState::Skipped
                | StepState::Canceled
        )
    }
}

/// An immutable plan: a job, the steps to run, and the precomputed edges between them.
#[derive(Debug, Clone)]
pub struct ExecutionPlan {
    job: Arc<Job>,
    in_plan: Vec<bool>,
    /// Distinct in-plan downstream steps of each step.
    downstream: Vec<Vec<usize>>,
    /// Parallel to `downstream`: for `downstream[u][k] = d`, the indices of `d`'s inputs wired
    /// to `u`, so a completion checks only the edges it closes (O(edges) for a whole run).
    downstream_inputs: Vec<Vec<Vec<usize>>>,
    /// Number of distinct in-plan upstream steps of each step.
    upstream_count: Vec<usize>,
    /// Steps skipped from the start (they consume an output a known step did not emit).
    initially_skipped: Vec<(usize, SkipReason)>,
    known: KnownState,
}

impl ExecutionPlan {
    /// Builds a plan for `job`, running `selection` (all steps if `None`) minus the steps
    /// `known` reports as completed. Inputs from steps outside the plan come from `known`.
    pub fn new(
        job: Arc<Job>,
        selection: Option<&[String]>,
        known: &KnownState,
    ) -> Result<Self, PlanError> {
        let n = job.steps.len();
        let mut in_plan = vec![selection.is_none(); n];
        if let Some(sel) = selection {
            if sel.is_empty() {
                return Err(PlanError::EmptySelection);
            }
            for key in sel {
                let i = job.step_index(key).ok_or_else(|| PlanError::UnknownStep {
                    job: job.name.clone(),
                    step: key.clone(),
                })?;
                in_plan[i] = true;
            }
        }
        for (i, step) in job.steps.iter().enumerate() {
            if known.is_completed(&step.key) {
                in_plan[i] = false;
            }
        }
        let mut downstream = vec![Vec::new(); n];
        let mut downstream_inputs: Vec<Vec<Vec<usize>>> = vec![Vec::new(); n];
        let mut upstream_count = vec![0usize; n];
        let mut initially_skipped = Vec::new();
        for (i, step) in job.steps.iter().enumerate() {
            if !in_plan[i] {
                continue;
            }
            // (upstream index, input index), for in-plan upstream steps.
            let mut ups: Vec<(usize, usize)> = Vec::new();
            let mut skip = None;
            for (input_index, input) in step.inputs.iter().enumerate() {
                let u = job.index[&input.from_step];
                if in_plan[u] {
                    ups.push((u, input_index));
                } else if let Some(outs) = known.completed.get(&input.from_step) {
                    if !outs.contains(&input.from_output) && skip.is_none() {
                        skip = Some(SkipReason::OutputNotEmitted {
                            upstream: input.from_step.clone(),
                            output: input.from_output.clone(),
                        });
                    }
                } else {
                    return Err(PlanError::MissingUpstream {
                        step: step.key.clone(),
                        upstream: input.from_step.clone(),
                        output: input.from_output.clone(),
                    });
                }
            }
            ups.sort_unstable();
            for (u, input_index) in ups {
                if downstream[u].last() == Some(&i) {
                    downstream_inputs[u]
                        .last_mut()
                        .expect("parallel to downstream")
                        .push(input_index);
                } else {
                    upstream_count[i] += 1;
                    downstream[u].push(i);
                    downstream_inputs[u].push(vec![input_index]);
                }
            }
            if let Some(reason) = skip {
                initially_skipped.push((i, reason));
            }
        }
        Ok(ExecutionPlan {
            job,
            in_plan,
            downstream,
            downstream_inputs,
            upstream_count,
            initially_skipped,
            known: known.clone(),
        })
    }

    /// The job.
    pub fn job(&self) -> &Arc<Job> {
        &self.job
    }

    /// The known state the plan started from.
    pub fn known_state(&self) -> &KnownState {
        &self.known
    }

    /// Keys of the steps this plan runs, in topological order.
    pub fn steps_to_run(&self) -> impl Iterator<Item = &str> {
        self.job
            .topo
            .iter()
            .filter(|&&i| self.in_plan[i])
            .map(|&i| self.job.steps[i].key.as_str())
    }

    /// Number of steps this plan runs.
    pub fn len(&self) -> usize {
        self.in_plan.iter().filter(|&&b| b).count()
    }

    /// Whether the plan runs no step (everything already completed).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Distinct in-plan steps that read an output of step `index` (both job-order indices, see
    /// [`Job::step_index`]), in job order; empty for a step outside the plan.
    pub fn downstream_indices(&self, index: usize) -> &[usize] {
        self.downstream.get(index).map_or(&[], Vec::as_slice)
    }

    /// Every in-plan step downstream of `key` (transitively), in breadth-first order.
    pub fn downstream_of(&self, key: &str) -> Vec<String> {
        let Some(start) = self.job.step_index(key) else {
            return Vec::new();
        };
        let mut seen = vec![false; self.in_plan.len()];
        let mut queue = VecDeque::from([start]);
        let mut out = Vec::new();
        while let Some(i) = queue.pop_front() {
            for &d in &self.downstream[i] {
                if !seen[d] {
                    seen[d] = true;
                    out.push(self.job.steps[d].key.clone());
                    queue.push_back(d);
                }
            }
        }
        out
    }

    /// Starts tracking a run of this plan.
    pub fn progress(&self) -> PlanProgress {
        PlanProgress::new(self.clone())
    }
}

/// Mutable progress of a plan: readiness in O(edges) overall, however many steps finish.
#[derive(Debug, Clone)]
pub struct PlanProgress {
    plan: ExecutionPlan,
    states: Vec<StepState>,
    ready: VecDeque<usize>,
    skipped_pending: Vec<(String, SkipReason)>,
    unfinished: usize,
    known: KnownState,
    /// Per step: canceled by [`PlanProgress::cancel_pending`] before it was handed out, and
    /// not reopened since.
    canceled_unstarted: Vec<bool>,
}

impl PlanProgress {
    fn new(plan: ExecutionPlan) -> Self {
        let mut states = Vec::with_capacity(plan.in_plan.len());
        let mut ready = VecDeque::new();
        let mut unfinished = 0;
        for i in 0..plan.in_plan.len() {
            if !plan.in_plan[i] {
                states.push(StepState::NotInPlan);
            } else {
                unfinished += 1;
                states.push(StepState::Waiting(plan.upstream_count[i]));
            }
        }
        let known = plan.known.clone();
        let canceled_unstarted = vec![false; states.len()];
        let mut progress = PlanProgress {
            plan,
            states,
            ready: VecDeque::new(),
            skipped_pending: Vec::new(),
            unfinished,
            known,
            canceled_unstarted,
        };
        let initially_skipped = progress.plan.initially_skipped.clone();
        for (i, reason) in initially_skipped {
            progress.skip(i, reason);
        }
        for &i in &progress.plan.job.topo {
            if progress.states[i] == StepState::Waiting(0) {
                progress.states[i] = StepState::Ready;
                ready.push_back(i);
            }
        }
        progress.ready = ready;
        progress
    }

    /// The plan being tracked.
    pub fn plan(&self) -> &ExecutionPlan {
        &self.plan
    }

    /// Hands out every step that became ready since the last call, marking them in flight.
    pub fn take_ready(&mut self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.ready.len());
        while let Some(i) = self.ready.pop_front() {
            self.states[i] = StepState::InFlight;
            out.push(self.plan.job.steps[i].key.clone());
        }
        out
    }

    /// Drains the steps skipped since the last call, with the reason for each.
    pub fn take_skipped(&mut self) -> Vec<(String, SkipReason)> {
        std::mem::take(&mut self.skipped_pending)
    }

    /// Records the final outcome of an in-flight step and unblocks or skips its dependents.
    /// Returns `false` (and changes nothing) if the step is unknown or not in flight.
    pub fn complete(&mut self, key: &str, outcome: StepOutcome) -> bool {
        let Some(i) = self.plan.job.step_index(key) else {
            return false;
        };
        if self.states[i] != StepState::InFlight {
            return false;
        }
        self.unfinished -= 1;
        match outcome {
            StepOutcome::Success { emitted } => {
                self.states[i] = StepState::Succeeded;
                self.known.record_success(key, emitted);
                let emitted = self.known.completed[key].clone();
                for k in 0..self.plan.downstream[i].len() {
                    let d = self.plan.downstream[i][k];
                    if self.states[d].is_final() {
                        continue;
                    }
                    let inputs = &self.plan.job.steps[d].inputs;
                    let missing = self.plan.downstream_inputs[i][k]
                        .iter()
                        .map(|&ix| &inputs[ix])
                        .find(|inp| !emitted.contains(&inp.from_output))
                        .map(|inp| inp.from_output.clone());
                    if let Some(output) = missing {
                        self.skip(
                            d,
                            SkipReason::OutputNotEmitted {
                                upstream: key.to_string(),
                                output,
                            },
                        );
                    } else if let StepState::Waiting(n) = self.states[d] {
                        if n <= 1 {
                            self.states[d] = StepState::Ready;
                            self.ready.push_back(d);
                        } else {
                            self.states[d] = StepState::Waiting(n - 1);
                        }
                    }
                }
            }
            StepOutcome::Failure | StepOutcome::Canceled => {
                self.states[i] = if outcome == StepOutcome::Failure {
                    StepState::Failed
                } else {
                    StepState::Canceled
                };
                self.skip_downstream(i);
            }
        }
        true
    }

    /// Marks every step that has not started as canceled (used when a run is interrupted);
    /// returns their keys. In-flight steps are left for their outcome to arrive.
    pub fn cancel_pending(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for i in 0..self.states.len() {
            if matches!(self.states[i], StepState::Waiting(_) | StepState::Ready) {
                self.states[i] = StepState::Canceled;
                self.canceled_unstarted[i] = true;
                self.unfinished -= 1;
                out.push(self.plan.job.steps[i].key.clone());
            }
        }
        self.ready.clear();
        out
    }

    /// Takes back the cancellation [`cancel_pending`](Self::cancel_pending) recorded for `key`,
    /// for a step that turns out to have run anyway (in one task with its upstream step, whose
    /// report came in once the run was stopping): the step is in flight again, for
    /// [`complete`](Self::complete) to record the outcome it reported.
    /// Only for a step canceled that way (not since reopened) whose in-plan upstream steps
    /// all succeeded and emitted the outputs it reads; returns `false` (and changes nothing)
    /// otherwise. Nothing else changes: its downstream steps stay canceled.
    pub fn reopen_canceled(&mut self, key: &str) -> bool {
        let Some(i) = self.plan.job.step_index(key) else {
            return false;
        };
        if self.states[i] != StepState::Canceled || !self.canceled_unstarted[i] {
            return false;
        }
        let inputs_there = self.plan.job.steps[i].inputs.iter().all(|input| {
            let u = self.plan.job.index[&input.from_step];
            !self.plan.in_plan[u]
                || (self.states[u] == StepState::Succeeded
                    && self
                        .known
                        .completed
                        .get(&input.from_step)
                        .is_some_and(|emitted| emitted.contains(&input.from_output)))
        });
        if !inputs_there {
            return false;
        }
        self.canceled_unstarted[i] = false;
        self.states[i] = StepState::InFlight;
        self.unfinished += 1;
        true
    }

    /// Records that an attempt of `key` started; returns its attempt number (1-based).
    pub fn record_attempt(&mut self, key: &str) -> u32 {
        self.known.record_attempt(key)
    }

    /// Whether every in-plan step reached a final state.
    pub fn is_complete(&self) -> bool {
        self.unfinished == 0
    }

    /// Number of in-plan steps not yet in a final state.
    pub fn unfinished(&self) -> usize {
        self.unfinished
    }

    /// The state of a step, if the job has it.
    pub fn state_of(&self, key: &str) -> Option<&StepState> {
        self.plan.job.step_index(key).map(|i| &self.states[i])
    }

    /// Iterates over `(step key, state)` for every step of the job, in declaration order.
    pub fn states(&self) -> impl Iterator<Item = (&str, &StepState)> {
        self.plan
            .job
            .steps
            .iter()
            .zip(&self.states)
            .map(|(s, st)| (s.key.as_str(), st))
    }

    /// Known state so far: the starting state plus everything that succeeded since.
    pub fn known_state(&self) -> &KnownState {
        &self.known
    }

    fn skip(&mut self, i: usize, reason: SkipReason) {
        if self.states[i].is_final() {
            return;
        }
        if self.states[i] == StepState::Ready {
            self.ready.retain(|&r| r != i);
        }
        self.states[i] = StepState::Skipped;
        self.unfinished -= 1;
        self.skipped_pending
            .push((self.plan.job.steps[i].key.clone(), reason));
        self.skip_downstream(i);
    }

    fn skip_downstream(&mut self, start: usize) {
        let mut stack = vec![start];
        while let Some(u) = stack.pop() {
            let upstream = self.plan.job.steps[u].key.clone();
            for k in 0..self.plan.downstream[u].len() {
                let d = self.plan.downstream[u][k];
                if self.states[d].is_final() || self.states[d] == StepState::InFlight {
                    continue;
                }
                if self.states[d] == StepState::Ready {
                    self.ready.retain(|&r| r != d);
                }
                self.states[d] = StepState::Skipped;
                self.unfinished -= 1;
                self.skipped_pending.push((
                    self.plan.job.steps[d].key.clone(),
                    SkipReason::UpstreamNotSucceeded {
                        upstream: upstream.clone(),
                    },
                ));
                stack.push(d);
            }
        }
    }
}
