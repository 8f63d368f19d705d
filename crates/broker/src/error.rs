//! Typed broker errors.

pub use stepq_results::{ErrorClass, ServiceError};

/// An error from a broker, a task queue or a receiver.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// A message body is not a valid task message.
    #[error("malformed task message: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// A message is larger than the broker accepts and cannot be offloaded.
    #[error("message of {size} bytes exceeds the {limit}-byte limit{hint}")]
    PayloadTooLarge {
        /// Body size.
        size: usize,
        /// The limit.
        limit: usize,
        /// Extra advice, e.g. "; configure an S3 bucket for extended payloads".
        hint: &'static str,
    },
    /// Invalid configuration; names the field.
    #[error("invalid broker config `{field}`: {reason}")]
    Config {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A remote service (e.g. SQS) failed; its error code (e.g.
    /// `AWS.SimpleQueueService.NonExistentQueue`) and class, and the underlying error as the
    /// source.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// Arguments or a return value do not (de)serialize.
    #[error("cannot encode or decode task `{task_name}` payload: {reason}")]
    Codec {
        /// Task name.
        task_name: String,
        /// The serializer's message.
        reason: String,
    },
    /// A middleware hook failed.
    #[error(transparent)]
    Middleware(#[from] crate::middleware::MiddlewareError),
    /// The result backend failed.
    #[error(transparent)]
    Results(#[from] stepq_results::ResultError),
    /// The broker was shut down.
    #[error("broker is closed")]
    Closed,
    /// The broker has no dead-letter place (see [`crate::dead_letter`]).
    #[error("this broker has no dead-letter place")]
    NoDeadLetters,
}

impl BrokerError {
    /// Whether retrying may help.
    pub fn class(&self) -> ErrorClass {
        match self {
            BrokerError::Service(e) => e.class(),
            BrokerError::Results(e) => e.class(),
            _ => ErrorClass::Permanent,
        }
    }

    /// Shorthand for `class() == Temporary`: whether retrying may help.
    pub fn is_temporary(&self) -> bool {
        self.class().is_retryable()
    }

    /// The error a retry loop reports when it gives up on this one: a temporary service or
    /// result backend error becomes [`ErrorClass::Persistent`] (see
    /// [`ResultError::exhausted`](stepq_results::ResultError::exhausted)).
    #[must_use]
    pub fn exhausted(self) -> Self {
        match self {
            BrokerError::Service(e) => BrokerError::Service(e.exhausted()),
            BrokerError::Results(e) => BrokerError::Results(e.exhausted()),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    fn service(class: ErrorClass) -> BrokerError {
        BrokerError::from(ServiceError::new("sqs", "Code", "m", class))
    }

    #[test]
    fn classes_follow_the_wrapped_error() {
        for class in [
            ErrorClass::Temporary,
            ErrorClass::Permanent,
            ErrorClass::Persistent,
        ] {
            assert_eq!(service(class).class(), class);
            let results = BrokerError::from(stepq_results::ResultError::from(ServiceError::new(
                "s3", "Code", "m", class,
            )));
            assert_eq!(results.class(), class);
        }
        let malformed = BrokerError::Malformed { reason: "x".into() };
        assert_eq!(malformed.class(), ErrorClass::Permanent);
        assert!(service(ErrorClass::Temporary).is_temporary());
        assert!(!service(ErrorClass::Persistent).is_temporary());
    }

    #[test]
    fn giving_up_makes_temporary_errors_persistent() {
        assert_eq!(
            service(ErrorClass::Temporary).exhausted().class(),
            ErrorClass::Persistent
        );
        assert_eq!(
            service(ErrorClass::Permanent).exhausted().class(),
            ErrorClass::Permanent
        );
        let timeout = BrokerError::from(stepq_results::ResultError::from(ServiceError::new(
            "s3",
            "SlowDown",
            "m",
            ErrorClass::Temporary,
        )));
        assert_eq!(timeout.exhausted().class(), ErrorClass::Persistent);
        assert!(matches!(
            BrokerError::Closed.exhausted(),
            BrokerError::Closed
        ));
    }

    #[test]
    fn service_errors_keep_their_source() {
        let e = BrokerError::from(
            ServiceError::new("sqs", "Timeout", "ReceiveMessage", ErrorClass::Temporary)
                .with_source(std::io::Error::from(std::io::ErrorKind::TimedOut)),
        );
        assert_eq!(e.to_string(), "sqs error Timeout: ReceiveMessage");
        assert!(e
            .source()
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some());
    }
}
