//! Why a run could not be launched ([`LaunchError`]), and the error kinds an orchestration
//! task fails with.

use stepq_broker::{BrokerError, ErrorClass};
use stepq_plan::{FailureKind, PackError};

use crate::error::ExecutorError;
use crate::storage::{RunStatus as StoredStatus, StorageError};

/// Error kind of an orchestration task whose run another orchestrator holds, or that no
/// longer waits to start (a redelivered `execute_job`).
pub const RUN_ALREADY_CLAIMED: FailureKind = FailureKind::RunAlreadyClaimed;
/// Error kind of an orchestration task whose arguments do not decode.
pub const INVALID_RUN_ARGS: FailureKind = FailureKind::InvalidRunArgs;
/// Error kind of an orchestration task that could not be carried out (unknown job, run store
/// failure, unplannable request); also the kind of the run failure recorded for it.
pub const RUN_NOT_STARTED: FailureKind = FailureKind::RunNotStarted;

/// Why a run could not be launched, submitted, claimed or resumed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// The request cannot be run (bad run id, unknown step, empty selection ...).
    #[error(transparent)]
    Executor(#[from] ExecutorError),
    /// The run store failed, or has no such run.
    #[error("run store: {0}")]
    Storage(#[from] StorageError),
    /// The broker refused the task.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The task's arguments could not be encoded.
    #[error("cannot encode the task arguments: {0}")]
    Pack(#[from] PackError),
    /// Another orchestrator claimed the run first, or it is not in a status this claim
    /// starts from.
    #[error("run `{run_id}` is {status}{}: it is not started again{}", by_orchestrator(.orchestrator), resume_hint(.run_id, *.status))]
    AlreadyClaimed {
        /// The run.
        run_id: String,
        /// Its status.
        status: StoredStatus,
        /// Who holds it.
        orchestrator: Option<String>,
    },
    /// The run cannot be resumed in its status.
    #[error("run `{run_id}` is {status}: {}", not_resumable_reason(*.status, .orchestrator))]
    NotResumable {
        /// The run.
        run_id: String,
        /// Its status.
        status: StoredStatus,
        /// Who holds it.
        orchestrator: Option<String>,
    },
    /// The code location has no job of the run's name.
    #[error("run `{run_id}`: this worker has no job `{job}`")]
    UnknownJob {
        /// The run.
        run_id: String,
        /// The job name.
        job: String,
    },
}

fn by_orchestrator(orchestrator: &Option<String>) -> String {
    orchestrator
        .as_deref()
        .map(|o| format!(" by {o}"))
        .unwrap_or_default()
}

fn resume_hint(run_id: &str, status: StoredStatus) -> String {
    match status {
        StoredStatus::Starting | StoredStatus::Started => {
            format!("; if its orchestrator died, `stepq resume {run_id} --force` continues it")
        }
        StoredStatus::Failure | StoredStatus::Canceled => {
            format!("; `stepq resume {run_id}` re-runs what did not succeed")
        }
        _ => String::new(),
    }
}

fn not_resumable_reason(status: StoredStatus, orchestrator: &Option<String>) -> String {
    match status {
        StoredStatus::Success => "every step succeeded, there is nothing to resume".into(),
        StoredStatus::Queued => "it has not started yet; its worker will start it".into(),
        StoredStatus::Canceling => "it is being canceled; resume it once it is CANCELED".into(),
        _ => format!(
            "its orchestrator{} may still be running it; if it died (`stepq worker list`), resume with --force",
            orchestrator
                .as_deref()
                .map(|o| format!(" {o}"))
                .unwrap_or_default()
        ),
    }
}

impl LaunchError {
    /// Whether retrying may help.
    pub fn class(&self) -> ErrorClass {
        match self {
            LaunchError::Executor(e) => e.class(),
            LaunchError::Storage(e) => e.class(),
            LaunchError::Broker(e) => e.class(),
            _ => ErrorClass::Permanent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_errors_say_what_to_do() {
        let claimed = LaunchError::AlreadyClaimed {
            run_id: "r1".into(),
            status: StoredStatus::Started,
            orchestrator: Some("w1".into()),
        };
        let text = claimed.to_string();
        assert!(text.contains("STARTED by w1"), "{text}");
        assert!(text.contains("stepq resume r1 --force"), "{text}");
        let canceled = LaunchError::AlreadyClaimed {
            run_id: "r1".into(),
            status: StoredStatus::Canceled,
            orchestrator: None,
        };
        assert!(
            canceled.to_string().contains("`stepq resume r1`"),
            "{canceled}"
        );
        let done = LaunchError::NotResumable {
            run_id: "r1".into(),
            status: StoredStatus::Success,
            orchestrator: Some("w1".into()),
        };
        assert!(done.to_string().contains("nothing to resume"), "{done}");
        let running = LaunchError::NotResumable {
            run_id: "r1".into(),
            status: StoredStatus::Started,
            orchestrator: Some("w1".into()),
        };
        assert!(running.to_string().contains("--force"), "{running}");
        assert_eq!(running.class(), ErrorClass::Permanent);
    }

    #[test]
    fn classes_follow_the_wrapped_error() {
        let contention = LaunchError::from(StorageError::Contention {
            run_id: "r1".into(),
            attempts: 64,
        });
        assert_eq!(contention.class(), ErrorClass::Persistent);
        let throttled = LaunchError::from(BrokerError::Service(stepq_broker::ServiceError::new(
            "sqs",
            "RequestThrottled",
            "slow down",
            ErrorClass::Temporary,
        )));
        assert_eq!(throttled.class(), ErrorClass::Temporary);
        let missing = LaunchError::from(StorageError::RunNotFound {
            run_id: "r1".into(),
        });
        assert_eq!(missing.class(), ErrorClass::Permanent);
    }
}
