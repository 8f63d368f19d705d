//! Typed errors of run and heartbeat stores.

use stepq_results::{ErrorClass, ServiceError};

use crate::record::RunStatus;

/// An error from a [`RunStore`](crate::RunStore) or [`HeartbeatStore`](crate::HeartbeatStore).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// A run with this id already exists.
    #[error("run `{run_id}` already exists")]
    RunExists {
        /// Run id.
        run_id: String,
    },
    /// No run has this id.
    #[error("no run `{run_id}`")]
    RunNotFound {
        /// Run id.
        run_id: String,
    },
    /// The run's lifecycle does not allow moving from its current status to the requested one.
    #[error("run `{run_id}` cannot move from {from} to {to}")]
    InvalidTransition {
        /// Run id.
        run_id: String,
        /// Current status.
        from: RunStatus,
        /// Requested status.
        to: RunStatus,
    },
    /// The caller required the run to be in one status and found it in another.
    #[error("run `{run_id}` is {found}, expected {expected}")]
    UnexpectedStatus {
        /// Run id.
        run_id: String,
        /// Status the caller required.
        expected: RunStatus,
        /// Status found.
        found: RunStatus,
    },
    /// The caller required another orchestrator to hold the run (see
    /// [`StatusChange::expecting_orchestrator`](crate::StatusChange::expecting_orchestrator)).
    #[error("run `{run_id}` is held by {}, expected {expected}", found.as_deref().unwrap_or("no orchestrator"))]
    UnexpectedOrchestrator {
        /// Run id.
        run_id: String,
        /// Orchestrator the caller required.
        expected: String,
        /// Orchestrator found.
        found: Option<String>,
    },
    /// An event appended to a run's log names another run.
    #[error("event of run `{event_run_id}` cannot go into the log of run `{run_id}`")]
    ForeignEvent {
        /// The log's run.
        run_id: String,
        /// The run the event names.
        event_run_id: String,
    },
    /// A compare-and-set lost to other writers more times than allowed.
    #[error("run `{run_id}`: gave up after {attempts} conflicting concurrent updates")]
    Contention {
        /// Run id.
        run_id: String,
        /// Attempts made.
        attempts: u32,
    },
    /// An id is unusable as a path segment or object key segment.
    #[error("invalid id `{id}`: {reason}")]
    InvalidId {
        /// The id.
        id: String,
        /// Why.
        reason: &'static str,
    },
    /// Stored data does not decode.
    #[error("stored `{location}` does not decode: {message}")]
    Corrupt {
        /// File path or object key.
        location: String,
        /// Decoder message.
        message: String,
    },
    /// A value could not be encoded for storage.
    #[error("cannot encode {what}: {message}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// Encoder message.
        message: String,
    },
    /// A run may only be deleted from a terminal status (SUCCESS, FAILURE, CANCELED); the
    /// caller asked to delete it expecting another one.
    #[error("run `{run_id}`: only a run in a terminal status can be deleted, not one expected {expected}")]
    NotDeletable {
        /// Run id.
        run_id: String,
        /// The non-terminal status the caller expected.
        expected: RunStatus,
    },
    /// The store cannot do this (e.g. a wrapper store that does not delete runs).
    #[error("this run store does not support {operation}")]
    Unsupported {
        /// What was asked.
        operation: &'static str,
    },
    /// Local filesystem failure.
    #[error("I/O error on `{path}`: {source}")]
    Io {
        /// Path involved.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A remote service (e.g. S3) failed; its error code and class, and the underlying error
    /// as the source.
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl StorageError {
    /// Whether retrying may help.
    pub fn class(&self) -> ErrorClass {
        match self {
            // A compare-and-set loop that gave up: it was retried already.
            StorageError::Contention { .. } => ErrorClass::Persistent,
            StorageError::Io { source, .. } => ErrorClass::of_io(source),
            StorageError::Service(e) => e.class(),
            _ => ErrorClass::Permanent,
        }
    }

    /// Shorthand for `class() == Temporary`: whether retrying may help.
    pub fn is_temporary(&self) -> bool {
        self.class().is_retryable()
    }

    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        StorageError::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

/// Checks that `id` (a run id or worker id) is usable as one path / object key segment.
pub fn check_id(id: &str) -> Result<(), StorageError> {
    let reason = if id.is_empty() {
        Some("empty")
    } else if id == "." || id == ".." {
        Some("is a relative path component")
    } else if id.starts_with('.') {
        Some("starts with a dot")
    } else if id.contains('/') || id.contains('\\') {
        Some("contains a path separator")
    } else if id.chars().any(|c| c.is_control()) {
        Some("contains a control character")
    } else if id.len() > 200 {
        Some("longer than 200 bytes")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(StorageError::InvalidId {
            id: id.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_id_rejects_unusable_ids_and_names_why() {
        for (id, why) in [
            ("", "empty"),
            ("..", "is a relative path component"),
            (".hidden", "starts with a dot"),
            ("a/b", "contains a path separator"),
            ("a\\b", "contains a path separator"),
            ("a\nb", "contains a control character"),
        ] {
            match check_id(id) {
                Err(StorageError::InvalidId { reason, .. }) => assert_eq!(reason, why, "{id:?}"),
                other => panic!("{id:?}: {other:?}"),
            }
        }
        assert!(check_id(&"x".repeat(201)).is_err());
        check_id("run-0f3c_1.2").unwrap();
    }

    #[test]
    fn classes_tell_whether_retrying_helps() {
        let contention = StorageError::Contention {
            run_id: "r".into(),
            attempts: 3,
        };
        // It gave up retrying already: persistent, not to be retried again.
        assert_eq!(contention.class(), ErrorClass::Persistent);
        assert!(!contention.is_temporary());
        let timed_out = StorageError::io("p", std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(timed_out.is_temporary());
        let denied = StorageError::io(
            "p",
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert!(!denied.is_temporary());
        let slow = StorageError::Service(ServiceError::new(
            "s3",
            "SlowDown",
            "m",
            ErrorClass::Temporary,
        ));
        assert!(slow.is_temporary());
        let given_up = StorageError::from(ServiceError::new(
            "s3",
            "SlowDown",
            "m",
            ErrorClass::Persistent,
        ));
        assert_eq!(given_up.class(), ErrorClass::Persistent);
        assert!(!StorageError::RunNotFound { run_id: "r".into() }.is_temporary());
        let invalid = StorageError::InvalidTransition {
            run_id: "r".into(),
            from: RunStatus::Success,
            to: RunStatus::Started,
        };
        assert_eq!(
            invalid.to_string(),
            "run `r` cannot move from SUCCESS to STARTED"
        );
    }
}
