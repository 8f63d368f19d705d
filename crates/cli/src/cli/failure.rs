//! `Failure`: why a command failed, and which exit code that gives; the conversions from
//! the library errors a command can meet.

use stepq::app::AppError;
use stepq_runs::StorageError;
use stepq_worker::shell::TomlJobsError;

use super::{EXIT_FAILURE, EXIT_USAGE};

/// Why a command failed, and which exit code that gives.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) message: String,
    pub(super) code: u8,
}

impl Failure {
    pub(super) fn usage(message: impl std::fmt::Display) -> Self {
        Failure {
            message: message.to_string(),
            code: EXIT_USAGE,
        }
    }

    pub(super) fn runtime(message: impl std::fmt::Display) -> Self {
        Failure {
            message: message.to_string(),
            code: EXIT_FAILURE,
        }
    }
}

impl From<AppError> for Failure {
    fn from(e: AppError) -> Self {
        match e {
            AppError::Config(_)
            | AppError::UnknownJob { .. }
            | AppError::Executor(_)
            | AppError::NotDistributed { .. }
            | AppError::Route(_)
            | AppError::Priority { .. } => Failure::usage(e),
            AppError::Launch(stepq_executor::LaunchError::UnknownJob { .. }) => Failure::usage(e),
            AppError::Storage(StorageError::RunNotFound { .. }) => Failure::usage(e),
            other => Failure::runtime(other),
        }
    }
}

impl From<TomlJobsError> for Failure {
    fn from(e: TomlJobsError) -> Self {
        Failure::usage(e)
    }
}
