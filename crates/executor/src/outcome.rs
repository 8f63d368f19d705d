//! What a finished run reports: its status, each step's summary, every failure, and typed
//! access to the outputs its steps stored.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::DeserializeOwned;
use stepq_plan::{ErrorInfo, KnownState, SkipReason, StepOutputHandle};
use stepq_results::{OutputKey, OutputStore};

use crate::error::OutputError;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Every step succeeded or was skipped for an un-emitted optional output.
    Success,
    /// At least one step failed (before any interrupt).
    Failure,
    /// The run was interrupted.
    Canceled,
}

impl RunStatus {
    /// Whether the run succeeded.
    pub fn is_success(self) -> bool {
        self == RunStatus::Success
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunStatus::Success => "SUCCESS",
            RunStatus::Failure => "FAILURE",
            RunStatus::Canceled => "CANCELED",
        })
    }
}

/// How one step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepRunState {
    /// It succeeded.
    Succeeded,
    /// It failed (for good, or with its retry deferred to a later resume).
    Failed,
    /// It was skipped (an upstream step did not succeed, or an output it needs was not emitted).
    Skipped,
    /// It was canceled (interrupt or fail-fast).
    Canceled,
    /// It was not part of this run (not selected, or completed in an earlier run).
    NotRun,
}

impl std::fmt::Display for StepRunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StepRunState::Succeeded => "SUCCEEDED",
            StepRunState::Failed => "FAILED",
            StepRunState::Skipped => "SKIPPED",
            StepRunState::Canceled => "CANCELED",
            StepRunState::NotRun => "NOT RUN",
        })
    }
}

/// What happened to one step in a run.
#[derive(Debug, Clone, PartialEq)]
pub struct StepSummary {
    /// How it ended.
    pub state: StepRunState,
    /// Attempts submitted in this run.
    pub attempts: u32,
    /// Worker that ran the last attempt, if one reported.
    pub worker: Option<String>,
    /// Queue wait of the last attempt: its `StepStart` minus its `StepQueued` timestamp.
    pub queue_wait: Option<Duration>,
    /// Run time of the last attempt (the op's wall time on success, else the task's).
    pub duration: Option<Duration>,
    /// The error of the last failed attempt, if the step did not succeed because of one.
    pub error: Option<ErrorInfo>,
    /// Why it was skipped.
    pub skip_reason: Option<SkipReason>,
    /// The op asked for a retry in `RetryMode::Deferred`: a later resume reruns the step.
    pub retry_deferred: bool,
}

impl StepSummary {
    pub(crate) fn new(state: StepRunState) -> Self {
        StepSummary {
            state,
            attempts: 0,
            worker: None,
            queue_wait: None,
            duration: None,
            error: None,
            skip_reason: None,
            retry_deferred: false,
        }
    }
}

/// The final result of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    /// Run id.
    pub run_id: String,
    /// How the run ended.
    pub status: RunStatus,
    /// Every step of the job, by key.
    pub steps: BTreeMap<String, StepSummary>,
    /// Every final step failure's error (message prefixed with the step key), in the order
    /// they happened.
    pub errors: Vec<ErrorInfo>,
    /// What is known after the run: completed steps with their outputs, attempts per step.
    /// Resuming from it reruns only what did not succeed.
    pub known_state: KnownState,
}

impl RunResult {
    /// The summary of one step.
    pub fn step(&self, key: &str) -> Option<&StepSummary> {
        self.steps.get(key)
    }

    /// Reads output `name` of step `step` from `store` and decodes it (MessagePack, as
    /// workers store outputs with `rmp-serde`).
    pub async fn output<T: DeserializeOwned>(
        &self,
        store: &dyn OutputStore,
        step: &str,
        name: &str,
    ) -> Result<T, OutputError> {
        let handle = StepOutputHandle {
            step_key: step.to_string(),
            output_name: name.to_string(),
        };
        if !self.known_state.has_output(&handle) {
            return Err(OutputError::NotEmitted {
                run_id: self.run_id.clone(),
                step: step.to_string(),
                output: name.to_string(),
            });
        }
        let key = OutputKey::new(self.run_id.clone(), step, name);
        let bytes = store.get(&key).await.map_err(|source| OutputError::Store {
            step: step.to_string(),
            output: name.to_string(),
            source,
        })?;
        rmp_serde::from_slice(&bytes).map_err(|source| OutputError::Decode {
            step: step.to_string(),
            output: name.to_string(),
            source,
        })
    }
}
