//! Inline values: the copies of small outputs that succeeded steps send back in their reports,
//! kept while a step that reads them is not sent yet, and put into the messages of those
//! steps (see `ExecutorConfig::inline_inputs_per_message`). Once the last reader of a step's
//! outputs is sent (or ends without being sent) its values are dropped.

use std::collections::HashMap;

use stepq_plan::{ExecutionPlan, InlineValue, Job};

/// The inline values of one run and the steps that may still read them.
#[derive(Debug)]
pub(super) struct InlineValues {
    /// Byte budget of one message's inline inputs; 0 turns inlining off.
    budget: usize,
    /// Distinct in-plan upstream steps of each step.
    upstream: Vec<Vec<usize>>,
    /// Per step: downstream steps not yet sent (nor ended) that may want its inline values.
    consumers_left: Vec<usize>,
    /// Per step: its upstream steps no longer keep inline values for it (it was sent, or
    /// ended without being sent).
    consumed: Vec<bool>,
    /// Inline copies of small outputs of succeeded steps, kept while a consumer is unsent.
    values: HashMap<usize, Vec<InlineValue>>,
}

impl InlineValues {
    /// Bookkeeping for the steps of `plan`, with `budget` bytes of inline inputs per message.
    pub(super) fn new(plan: &ExecutionPlan, budget: usize) -> Self {
        let upstream = upstream_indices(plan);
        let consumers_left = (0..upstream.len())
            .map(|i| plan.downstream_indices(i).len())
            .collect();
        InlineValues {
            budget,
            consumed: vec![false; upstream.len()],
            upstream,
            consumers_left,
            values: HashMap::new(),
        }
    }

    /// Inline values of `step`'s inputs, within the budget (first come, first served).
    pub(super) fn inputs_for(&self, job: &Job, step: usize) -> Vec<InlineValue> {
        let mut budget = self.budget;
        let mut out: Vec<InlineValue> = Vec::new();
        if budget == 0 || self.values.is_empty() {
            return out;
        }
        for input in &job.steps()[step].inputs {
            let Some(values) = job
                .step_index(&input.from_step)
                .and_then(|u| self.values.get(&u))
            else {
                continue;
            };
            let Some(value) = values.iter().find(|v| v.output_name == input.from_output) else {
                continue;
            };
            let taken = out
                .iter()
                .any(|v| v.step_key == value.step_key && v.output_name == value.output_name);
            if !taken && value.value.len() <= budget {
                budget -= value.value.len();
                out.push(value.clone());
            }
        }
        out
    }

    /// `step` no longer needs inline values from its upstream steps: drops those no other
    /// unsent step needs. Only the first call for a step counts.
    pub(super) fn mark_consumed(&mut self, step: usize) {
        if std::mem::replace(&mut self.consumed[step], true) {
            return;
        }
        for &u in &self.upstream[step] {
            self.consumers_left[u] = self.consumers_left[u].saturating_sub(1);
            if self.consumers_left[u] == 0 {
                self.values.remove(&u);
            }
        }
    }

    /// Keeps the inline copies of succeeded step `step`'s outputs (those it reported for
    /// itself) while some step may want them.
    pub(super) fn remember(&mut self, job: &Job, step: usize, values: Vec<InlineValue>) {
        if values.is_empty() || self.consumers_left[step] == 0 || self.budget == 0 {
            return;
        }
        let key = &job.steps()[step].key;
        let values: Vec<InlineValue> = values.into_iter().filter(|v| &v.step_key == key).collect();
        if !values.is_empty() {
            self.values.insert(step, values);
        }
    }

    /// Whether inline values of `step` are kept.
    #[cfg(test)]
    pub(super) fn keeps(&self, step: usize) -> bool {
        self.values.contains_key(&step)
    }
}

/// Distinct in-plan upstream steps of each step of the plan's job (job-order indices): the
/// plan's downstream edges turned around.
fn upstream_indices(plan: &ExecutionPlan) -> Vec<Vec<usize>> {
    let mut upstream = vec![Vec::new(); plan.job().steps().len()];
    for u in 0..upstream.len() {
        for &d in plan.downstream_indices(u) {
            upstream[d].push(u);
        }
    }
    upstream
}
