//! Arguments that travel with tasks, and what a step task reports back.

use serde::{Deserialize, Serialize};

use crate::events::{ErrorInfo, Event};
use crate::state::KnownState;

/// How failed steps are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RetryMode {
    /// Retries are honoured per the step's policy.
    #[default]
    Enabled,
    /// No retries: the first failure is final.
    Disabled,
    /// Failures that ask for a retry end the step as retry-requested; a later resume reruns them.
    Deferred,
}

/// Arguments of an `execute_plan` task: run some steps of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecuteStepArgs {
    /// Run id.
    pub run_id: String,
    /// Job name in the worker's code location.
    pub job_name: String,
    /// Steps to execute (usually one).
    pub step_keys: Vec<String>,
    /// What the run knows so far (completed steps, emitted outputs, attempts).
    pub known_state: KnownState,
    /// Retry mode of the run.
    pub retry_mode: RetryMode,
    /// Attempt number of these steps, 1-based.
    pub attempt: u32,
    /// Free-form run config, handed to ops.
    pub run_config: serde_json::Value,
}

/// Arguments of an `execute_job` task: orchestrate a whole run on a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecuteRunArgs {
    /// Run id.
    pub run_id: String,
    /// Job name in the worker's code location.
    pub job_name: String,
    /// Step selection; `None` runs every step.
    pub step_selection: Option<Vec<String>>,
    /// Free-form run config.
    pub run_config: serde_json::Value,
}

/// Arguments of a `resume_job` task: re-run only what did not succeed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResumeRunArgs {
    /// Run id to resume.
    pub run_id: String,
    /// Job name in the worker's code location.
    pub job_name: String,
    /// Free-form run config.
    pub run_config: serde_json::Value,
}

/// How a step attempt ended, as a worker reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StepStatus {
    /// The op succeeded; `emitted` lists the outputs it stored.
    Success {
        /// Outputs stored.
        emitted: Vec<String>,
    },
    /// The op failed.
    Failure {
        /// The error.
        error: ErrorInfo,
        /// The op asked to be retried (after this many milliseconds, if it said).
        ///
        /// Encoded as `nil` or `{after_ms: nil | n}` so that `Some(None)` ("retry, no delay
        /// given") stays distinct from `None` ("no retry asked") in MessagePack and JSON.
        #[serde(default, with = "retry_request")]
        retry_requested: Option<Option<u64>>,
    },
    /// The step was canceled before or while running.
    Canceled,
}

/// What a worker returns for one step of an `execute_plan` task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// Step key.
    pub step_key: String,
    /// Attempt number.
    pub attempt: u32,
    /// Name of the worker that ran it.
    pub worker: String,
    /// How it ended.
    pub status: StepStatus,
    /// Events produced while running it, in order.
    pub events: Vec<Event>,
}

/// Serde adapter for [`StepStatus::Failure::retry_requested`]: plain `Option<Option<_>>`
/// collapses `Some(None)` into `None` in self-describing formats.
mod retry_request {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct RetryRequest {
        after_ms: Option<u64>,
    }

    pub(super) fn serialize<S: Serializer>(
        value: &Option<Option<u64>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        value
            .map(|after_ms| RetryRequest { after_ms })
            .serialize(serializer)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Option<u64>>, D::Error> {
        Ok(Option::<RetryRequest>::deserialize(deserializer)?.map(|r| r.after_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(retry_requested: Option<Option<u64>>) -> StepStatus {
        StepStatus::Failure {
            error: ErrorInfo::new("op_error", "boom"),
            retry_requested,
        }
    }

    #[test]
    fn retry_request_keeps_its_three_states_in_json() {
        for retry in [None, Some(None), Some(Some(0)), Some(Some(1500))] {
            let json = serde_json::to_string(&failure(retry)).unwrap();
            let back: StepStatus = serde_json::from_str(&json).unwrap();
            assert_eq!(back, failure(retry), "{json}");
        }
    }

    #[test]
    fn retry_request_missing_in_json_means_none() {
        let back: StepStatus = serde_json::from_str(
            r#"{"Failure":{"error":{"kind":"op_error","message":"boom","causes":[]}}}"#,
        )
        .unwrap();
        assert_eq!(back, failure(None));
    }
}
