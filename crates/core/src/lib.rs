//! # stepq-core
//!
//! The error model every stepq crate shares:
//!
//! - [`ErrorClass`]: whether retrying an operation may help — [`Temporary`](ErrorClass::Temporary)
//!   (it may), [`Permanent`](ErrorClass::Permanent) (it will not) or
//!   [`Persistent`](ErrorClass::Persistent) (it was temporary, was retried, and still fails).
//! - [`ServiceError`]: the one shape of a remote service's failure (service, code, message,
//!   class, and the underlying error as its `source()`), wrapped by each layer's error enum.
//! - [`FailureKind`]: the kinds of failure stored in failed task results and step errors,
//!   with one spelling each on the wire.
//! - [`FailureLog`]: an operation that keeps failing (an endpoint down) logged once per
//!   period and once when it works again, instead of once per attempt.
//! - [`Backoff`]: the growing, bounded pauses of a retry loop, and [`retry_temporary`], the
//!   loop itself (temporary errors only, failures logged through a [`FailureLog`]).
//! - Feature `fuzz`: [`fuzz`], the input mutations the decoders' fuzz harnesses share.
//!
//! ```
//! use stepq_core::{ErrorClass, FailureKind, ServiceError};
//!
//! let throttled = ServiceError::new("sqs", "RequestThrottled", "slow down", ErrorClass::Temporary);
//! assert!(throttled.class().is_retryable());
//! // A retry loop that gives up reports the error as persistent: not to be retried again.
//! let given_up = throttled.exhausted();
//! assert_eq!(given_up.class(), ErrorClass::Persistent);
//! assert!(!given_up.class().is_retryable());
//!
//! assert_eq!("panic".parse::<FailureKind>(), Ok(FailureKind::Panic));
//! assert_eq!(FailureKind::from("ValueError").as_str(), "ValueError");
//! ```

#![warn(missing_docs)]

mod backoff;
mod class;
mod failure_log;
#[cfg(feature = "fuzz")]
pub mod fuzz;
mod kind;
mod retry;
mod service;

pub use backoff::Backoff;
pub use class::ErrorClass;
pub use failure_log::{FailureLog, FailureSink, SharedFailureLog, DEFAULT_REPEAT_EVERY};
pub use kind::FailureKind;
pub use retry::retry_temporary;
pub use service::ServiceError;
