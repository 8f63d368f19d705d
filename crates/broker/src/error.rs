//! Typed broker errors.

pub use stepq_results::ErrorClass;

/// An error from a broker, a task queue or a receiver.
#[derive(Debug, thiserror::Error)]
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
    /// A remote service failed; `code` is its error code (e.g. `AWS.SimpleQueueService.NonExistentQueue`).
    #[error("{service} error {code}: {message}")]
    Service {
        /// Service name, e.g. `sqs`.
        service: &'static str,
        /// Error code.
        code: String,
        /// Message.
        message: String,
        /// Temporary or permanent.
        class: ErrorClass,
    },
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
}

impl BrokerError {
    /// Whether retrying may help.
    pub fn class(&self) -> ErrorClass {
        match self {
            BrokerError::Service { class, .. } => *class,
            BrokerError::Results(e) => e.class(),
            _ => ErrorClass::Permanent,
        }
    }

    /// Shorthand for `class() == Temporary`.
    pub fn is_temporary(&self) -> bool {
        self.class() == ErrorClass::Temporary
    }
}
