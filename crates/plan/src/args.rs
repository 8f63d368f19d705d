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
    /// Upstream outputs carried in the message, so the worker need not read them from the
    /// output store (which still holds every one of them). Inputs not listed here are read
    /// from the store. Empty (and not written) when there are none, so messages of older
    /// orchestrators read as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inline_inputs: Vec<InlineValue>,
}

impl ExecuteStepArgs {
    /// Attempt number of `step_key` in this task: [`attempt`](Self::attempt) for the first
    /// step; for a later step of a multi-step (fused) task, its count in `known_state.attempts`
    /// (the orchestrator writes each step's attempt there), falling back to `attempt`.
    pub fn attempt_of(&self, step_key: &str) -> u32 {
        if self.step_keys.first().map(String::as_str) == Some(step_key) {
            return self.attempt;
        }
        self.known_state
            .attempts
            .get(step_key)
            .copied()
            .unwrap_or(self.attempt)
    }
}

/// One stored step output's encoded bytes, carried in a message besides the output store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InlineValue {
    /// Step that emitted the output.
    pub step_key: String,
    /// Output name.
    pub output_name: String,
    /// The encoded value, exactly as stored in the output store (MessagePack binary).
    #[serde(with = "raw_bytes")]
    pub value: Vec<u8>,
}

impl InlineValue {
    /// An inline copy of output `output_name` of `step_key`.
    pub fn new(
        step_key: impl Into<String>,
        output_name: impl Into<String>,
        value: impl Into<Vec<u8>>,
    ) -> Self {
        InlineValue {
            step_key: step_key.into(),
            output_name: output_name.into(),
            value: value.into(),
        }
    }
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
    /// Copies of small outputs of a successful step (each also in the output store), so the
    /// orchestrator can hand them to downstream steps in their messages. Empty (and not
    /// written) when there are none, so reports of older workers read as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inline_outputs: Vec<InlineValue>,
}

/// What a worker says about a task while it runs (when the message asks for it): one entry
/// right before each of its steps starts, carrying that step's `StepStart` event and, in a
/// fused task, the reports of the steps of the task that succeeded since the entry before.
/// The orchestrator records them as they come, so a step shows RUNNING while it runs and a
/// fused task's finished steps are recorded before the task ends. The task's result still
/// carries every report; these entries only bring parts of it forward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskProgress {
    /// Reports of steps of the task that succeeded since the last entry, in order (their
    /// outputs are stored; `inline_outputs` left empty).
    #[serde(default)]
    pub finished: Vec<StepReport>,
    /// The `StepStart` event of the step starting now, stamped by the worker.
    #[serde(default)]
    pub started: Option<Event>,
}

/// Serde adapter writing a `Vec<u8>` as one MessagePack `bin` value (not an array of
/// integers); reads `bin`, strings' bytes, or a sequence of integers.
mod raw_bytes {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(value: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(value)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        struct BytesVisitor;
        impl<'de> Visitor<'de> for BytesVisitor {
            type Value = Vec<u8>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }

            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }

            fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }

            fn visit_str<E: Error>(self, v: &str) -> Result<Vec<u8>, E> {
                Ok(v.as_bytes().to_vec())
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        deserializer.deserialize_byte_buf(BytesVisitor)
    }
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
    fn attempt_of_reads_later_steps_from_the_known_state() {
        let mut args = ExecuteStepArgs {
            run_id: "r".into(),
            job_name: "j".into(),
            step_keys: vec!["a".into(), "b".into(), "c".into()],
            known_state: KnownState::default(),
            retry_mode: RetryMode::Enabled,
            attempt: 3,
            run_config: serde_json::Value::Null,
            inline_inputs: Vec::new(),
        };
        args.known_state.attempts.insert("a".into(), 3);
        args.known_state.attempts.insert("b".into(), 1);
        assert_eq!(args.attempt_of("a"), 3);
        assert_eq!(args.attempt_of("b"), 1);
        assert_eq!(args.attempt_of("c"), 3, "no count: the task's attempt");
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
