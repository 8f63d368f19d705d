//! Known state: what a run already knows about its steps, enough to resume without redoing work.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Addresses one output of one step.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StepOutputHandle {
    /// Step key.
    pub step_key: String,
    /// Output name.
    pub output_name: String,
}

/// Which steps completed, which outputs each emitted, and attempts used per step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownState {
    /// Completed (succeeded) steps and the outputs each emitted.
    pub completed: BTreeMap<String, BTreeSet<String>>,
    /// Attempts started per step (completed or not).
    pub attempts: BTreeMap<String, u32>,
}

impl KnownState {
    /// Records that `step_key` succeeded and emitted `outputs`.
    pub fn record_success(&mut self, step_key: &str, outputs: impl IntoIterator<Item = String>) {
        self.completed
            .insert(step_key.to_string(), outputs.into_iter().collect());
    }

    /// Records that an attempt of `step_key` started; returns the attempt number (1-based).
    pub fn record_attempt(&mut self, step_key: &str) -> u32 {
        let n = self.attempts.entry(step_key.to_string()).or_insert(0);
        *n += 1;
        *n
    }

    /// Whether `step_key` completed.
    pub fn is_completed(&self, step_key: &str) -> bool {
        self.completed.contains_key(step_key)
    }

    /// Whether the given output is known to have been emitted.
    pub fn has_output(&self, handle: &StepOutputHandle) -> bool {
        self.completed
            .get(&handle.step_key)
            .is_some_and(|outs| outs.contains(&handle.output_name))
    }

    /// Attempts recorded for `step_key`.
    pub fn attempts_of(&self, step_key: &str) -> u32 {
        self.attempts.get(step_key).copied().unwrap_or(0)
    }
}
