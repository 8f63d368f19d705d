//! Typed errors of the cancellation extension.

use stepq_broker::BrokerError;
pub use stepq_results::ErrorClass;
use stepq_results::ResultError;

/// An error from a cancel store, a wake-up channel or the cancellable broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CancelError {
    /// A task id is unusable (empty, a path, too long ...).
    #[error("invalid task id `{task_id}`: {reason}")]
    InvalidTaskId {
        /// The id as given.
        task_id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A cancel notice or a stored cancel marker does not decode.
    #[error("malformed cancel message: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// Invalid configuration; names the field.
    #[error("invalid cancellation config `{field}`: {reason}")]
    Config {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The marker store failed.
    #[error("cancel marker store: {0}")]
    Store(#[from] ResultError),
    /// The wake-up channel (a broker-like transport) failed.
    #[error("cancel channel: {0}")]
    Channel(#[from] BrokerError),
    /// Waking the fleet reached only some of the workers' inboxes. The marker is stored, so
    /// the others still see the cancel when they next list markers.
    #[error(
        "cancel of task `{task_id}` reached {reached} of {total} worker inboxes; first failure: {first}"
    )]
    PartialWakeUp {
        /// Task id.
        task_id: String,
        /// Inboxes reached.
        reached: usize,
        /// Inboxes tried.
        total: usize,
        /// The first failure.
        first: Box<BrokerError>,
    },
}

impl CancelError {
    /// Whether retrying may help.
    pub fn class(&self) -> ErrorClass {
        match self {
            CancelError::Store(e) => e.class(),
            CancelError::Channel(e) => e.class(),
            CancelError::PartialWakeUp { first, .. } => first.class(),
            _ => ErrorClass::Permanent,
        }
    }

    /// Shorthand for `class() == Temporary`: whether retrying may help.
    pub fn is_temporary(&self) -> bool {
        self.class().is_retryable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stepq_broker::ServiceError;

    #[test]
    fn classes_follow_the_wrapped_error() {
        let temporary = ResultError::Timeout {
            task_id: "t".into(),
            waited: std::time::Duration::from_secs(1),
        };
        assert!(CancelError::from(temporary).is_temporary());
        let permanent = ResultError::NotFound {
            task_id: "t".into(),
        };
        assert!(!CancelError::from(permanent).is_temporary());
        let throttled = BrokerError::Service(ServiceError::new(
            "sqs",
            "RequestThrottled",
            "slow down",
            ErrorClass::Temporary,
        ));
        let partial = CancelError::PartialWakeUp {
            task_id: "t".into(),
            reached: 1,
            total: 2,
            first: Box::new(throttled),
        };
        assert!(partial.is_temporary());
        assert!(partial.to_string().contains("1 of 2"), "{partial}");
        let given_up = BrokerError::Service(ServiceError::new(
            "sqs",
            "RequestThrottled",
            "still throttled after retrying",
            ErrorClass::Persistent,
        ));
        let given_up = CancelError::from(given_up);
        assert_eq!(given_up.class(), ErrorClass::Persistent);
        assert!(!given_up.is_temporary());
        let bad = CancelError::InvalidTaskId {
            task_id: "a/b".into(),
            reason: "contains a path separator",
        };
        assert_eq!(bad.class(), ErrorClass::Permanent);
        assert!(bad.to_string().contains("a/b"));
    }
}
