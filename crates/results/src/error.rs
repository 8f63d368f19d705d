//! Typed errors of result backends and output stores.

pub use stepq_core::{ErrorClass, ServiceError};

/// An error from a result backend or output store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// A remote service (e.g. S3) failed; its error code and class, and the underlying error
    /// as the source.
    #[error(transparent)]
    Service(#[from] ServiceError),
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
            ResultError::Service(e) => e.class(),
            _ => ErrorClass::Permanent,
        }
    }

    /// Shorthand for `class() == Temporary`: whether retrying may help.
    pub fn is_temporary(&self) -> bool {
        self.class().is_retryable()
    }

    /// The error a retry loop reports when it gives up on this one: a temporary service error
    /// becomes [`ErrorClass::Persistent`]. Errors whose class follows from what they are (a
    /// timeout, an I/O error) are returned as they are.
    #[must_use]
    pub fn exhausted(self) -> Self {
        match self {
            ResultError::Service(e) => ResultError::Service(e.exhausted()),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;
    use std::io::{Error, ErrorKind};

    #[test]
    fn classes_follow_the_failure() {
        let io = |kind| ResultError::Io {
            path: "p".into(),
            source: Error::from(kind),
        };
        assert_eq!(io(ErrorKind::TimedOut).class(), ErrorClass::Temporary);
        assert!(io(ErrorKind::TimedOut).is_temporary());
        assert_eq!(io(ErrorKind::NotFound).class(), ErrorClass::Permanent);
        let timeout = ResultError::Timeout {
            task_id: "t".into(),
            waited: std::time::Duration::from_secs(1),
        };
        assert_eq!(timeout.class(), ErrorClass::Temporary);
        let missing = ResultError::NotFound {
            task_id: "t".into(),
        };
        assert_eq!(missing.class(), ErrorClass::Permanent);
        for class in [
            ErrorClass::Temporary,
            ErrorClass::Permanent,
            ErrorClass::Persistent,
        ] {
            let e = ResultError::from(ServiceError::new("s3", "Code", "m", class));
            assert_eq!(e.class(), class);
            assert_eq!(e.is_temporary(), class == ErrorClass::Temporary);
        }
    }

    #[test]
    fn giving_up_makes_temporary_service_errors_persistent() {
        let slow = ResultError::from(ServiceError::new(
            "s3",
            "SlowDown",
            "PutObject",
            ErrorClass::Temporary,
        ));
        let given_up = slow.exhausted();
        assert_eq!(given_up.class(), ErrorClass::Persistent);
        assert!(!given_up.is_temporary());
        let denied = ResultError::from(ServiceError::new(
            "s3",
            "AccessDenied",
            "m",
            ErrorClass::Permanent,
        ));
        assert_eq!(denied.exhausted().class(), ErrorClass::Permanent);
    }

    #[test]
    fn service_errors_show_as_themselves_and_keep_their_source() {
        let e = ResultError::from(
            ServiceError::new(
                "s3",
                "SlowDown",
                "PutObject: slow down",
                ErrorClass::Temporary,
            )
            .with_source(Error::from(ErrorKind::ConnectionReset)),
        );
        assert_eq!(e.to_string(), "s3 error SlowDown: PutObject: slow down");
        let source = e.source().expect("the service error's source");
        assert_eq!(
            source.downcast_ref::<Error>().map(Error::kind),
            Some(ErrorKind::ConnectionReset)
        );
    }
}
