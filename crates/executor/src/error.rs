//! Typed errors of the executor.

use stepq_plan::PlanError;
use stepq_results::{ErrorClass, ResultError};

/// Why a run could not be started, or the executor not built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecutorError {
    /// Invalid configuration; names the field.
    #[error("invalid executor config `{field}`: {reason}")]
    Config {
        /// Field name, e.g. `max_in_flight`.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The run id cannot be used (it becomes a path segment / object key of stored outputs).
    #[error("invalid run id `{run_id}`: {reason}")]
    InvalidRunId {
        /// The run id.
        run_id: String,
        /// What is wrong.
        reason: String,
    },
    /// No plan could be built from the job, selection and known state.
    #[error("cannot plan the run: {0}")]
    Plan(#[from] PlanError),
}

impl ExecutorError {
    /// Whether retrying may help (never, for these: the request or config must change).
    pub fn class(&self) -> ErrorClass {
        ErrorClass::Permanent
    }

    /// Shorthand for `class() == Temporary`: whether retrying may help.
    pub fn is_temporary(&self) -> bool {
        self.class().is_retryable()
    }
}

/// Why a typed step output could not be read from a finished run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutputError {
    /// The run knows of no such output: the step did not succeed, or did not emit it.
    #[error("step `{step}` of run `{run_id}` did not emit output `{output}`")]
    NotEmitted {
        /// Run id.
        run_id: String,
        /// Step key.
        step: String,
        /// Output name.
        output: String,
    },
    /// The output store failed (or lost the output).
    #[error("cannot read output `{output}` of step `{step}`: {source}")]
    Store {
        /// Step key.
        step: String,
        /// Output name.
        output: String,
        /// The store's error.
        #[source]
        source: ResultError,
    },
    /// The stored bytes do not decode as the requested type.
    #[error("output `{output}` of step `{step}` does not decode as the requested type: {source}")]
    Decode {
        /// Step key.
        step: String,
        /// Output name.
        output: String,
        /// The decoder's error.
        #[source]
        source: rmp_serde::decode::Error,
    },
}

impl OutputError {
    /// Whether retrying may help (only for temporary store errors).
    pub fn class(&self) -> ErrorClass {
        match self {
            OutputError::Store { source, .. } => source.class(),
            _ => ErrorClass::Permanent,
        }
    }
}

/// A cancel hook could not cancel a task.
#[derive(Debug, thiserror::Error)]
#[error("could not cancel task `{task_id}`: {message}")]
pub struct CancelHookError {
    /// Task id.
    pub task_id: String,
    /// What went wrong.
    pub message: String,
    /// Whether retrying may help.
    pub class: ErrorClass,
}
