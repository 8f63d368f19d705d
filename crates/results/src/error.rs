//! Typed errors of result backends and output stores.

/// Whether retrying an operation may help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transient (network, throttling, timeouts): retrying may succeed.
    Temporary,
    /// Permanent (not found, bad data, bad configuration): retrying will not help.
    Permanent,
}

impl ErrorClass {
    /// The class of a local I/O failure: interrupted, would-block and timed-out operations are
    /// temporary; everything else (not found, permission denied, disk full ...) is permanent.
    pub fn of_io(error: &std::io::Error) -> Self {
        match error.kind() {
            std::io::ErrorKind::Interrupted
            | std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut => ErrorClass::Temporary,
            _ => ErrorClass::Permanent,
        }
    }
}

/// An error from a result backend or output store.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    /// No result is stored for the task.
    #[error("no result for task `{task_id}`")]
    NotFound {
        /// Task id.
        task_id: String,
    },
    /// No output is stored under the key.
    #[error("no stored output `{key}`")]
    OutputNotFound {
        /// The output key, displayed as `run/step/output`.
        key: String,
    },
    /// Waiting for a result took longer than allowed.
    #[error("timed out after {waited:?} waiting for the result of task `{task_id}`")]
    Timeout {
        /// Task id.
        task_id: String,
        /// How long it waited.
        waited: std::time::Duration,
    },
    /// A stored result does not decode.
    #[error("stored result of task `{task_id}` does not decode: {message}")]
    Corrupt {
        /// Task id (or object key).
        task_id: String,
        /// The decoder's message.
        message: String,
    },
    /// An id or name is unusable as a key (empty, contains `/` or `..`).
    #[error("invalid key `{key}`: {reason}")]
    InvalidKey {
        /// The key.
        key: String,
        /// Why.
        reason: &'static str,
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
    /// A remote service failed; `code` is its error code (e.g. an AWS error code).
    #[error("{service} error {code}: {message}")]
    Service {
        /// Service name, e.g. `s3`.
        service: &'static str,
        /// Error code, e.g. `NoSuchBucket`, `SlowDown`.
        code: String,
        /// Message.
        message: String,
        /// Temporary or permanent.
        class: ErrorClass,
    },
    /// The backend was shut down.
    #[error("result backend is closed")]
    Closed,
}

impl ResultError {
    /// Whether retrying may help.
    pub fn class(&self) -> ErrorClass {
        match self {
            ResultError::Timeout { .. } => ErrorClass::Temporary,
            ResultError::Io { source, .. } => ErrorClass::of_io(source),
            ResultError::Service { class, .. } => *class,
            _ => ErrorClass::Permanent,
        }
    }

    /// Shorthand for `class() == Temporary`.
    pub fn is_temporary(&self) -> bool {
        self.class() == ErrorClass::Temporary
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    #[test]
    fn io_failures_that_may_pass_are_temporary() {
        for kind in [
            ErrorKind::Interrupted,
            ErrorKind::WouldBlock,
            ErrorKind::TimedOut,
        ] {
            assert_eq!(ErrorClass::of_io(&Error::from(kind)), ErrorClass::Temporary);
        }
        for kind in [ErrorKind::NotFound, ErrorKind::PermissionDenied] {
            assert_eq!(ErrorClass::of_io(&Error::from(kind)), ErrorClass::Permanent);
        }
        let io = ResultError::Io {
            path: "p".into(),
            source: Error::from(ErrorKind::TimedOut),
        };
        assert!(io.is_temporary());
    }
}
