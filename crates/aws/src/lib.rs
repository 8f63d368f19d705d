//! # stepq-aws
//!
//! stepq on AWS: every SQS and S3 implementation of the traits the core crates define, and
//! the one table that turns an AWS SDK error into a `ServiceError`: an error code, a message,
//! a retry class, and the SDK error itself as its source.
//! The core crates (`stepq-results`, `stepq-broker`, `stepq-cancel`, `stepq-runs`) build
//! without any AWS SDK; depend on this crate to run on SQS + S3.
//!
//! - [`sqs`]: the [`SqsBroker`] (FIFO, S3 extended payloads in taskiq-aio-sqs's layout), the
//!   reply-queue result notification ([`sqs::reply`]: a worker-side notifying decorator and
//!   the orchestrator's waiting reply queue), the per-worker cancel inboxes
//!   ([`sqs::cancel_channel`]) and [`cancellable_sqs_broker`].
//! - [`s3`]: [`S3ResultBackend`], [`S3OutputStore`], [`S3CancelStore`], [`S3RunStore`] and
//!   [`S3HeartbeatStore`], all under one bucket and base path.
//! - [`error`]: [`aws_error`] and the classification every one of them uses.
//! - [`timeouts`]: how long one call to AWS may take (connect, attempt, retries), so that
//!   every wait on AWS ends.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use stepq_aws::{S3ResultBackend, SqsBroker, SqsConfig};
//! use stepq_broker::TaskQueue;
//!
//! let config = SqsConfig::new("https://sqs.us-east-1.amazonaws.com/123456789012/stepq");
//! let sdk = SqsBroker::load_sdk_config(&config).await;
//! let broker = SqsBroker::from_sdk_config(config, &sdk)?;
//! let results = S3ResultBackend::new(&sdk, "my-bucket", "stepq");
//! let queue = TaskQueue::new(Arc::new(broker), Arc::new(results));
//! queue.startup().await?; // checks that the queue and the bucket exist
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod error;
pub mod s3;
pub mod settings;
pub mod sqs;
pub mod timeouts;

pub use error::{aws_error, body_read_error, classify_aws_failure, AwsFailureKind};
pub use s3::{
    ResultKeys, S3CancelStore, S3HeartbeatStore, S3LeaseStore, S3OutputStore, S3ResultBackend,
    S3RunStore,
};
pub use settings::{InvalidSetting, S3Settings, SqsSettings};
pub use sqs::cancel_channel::{
    cancellable_over_sqs, cancellable_sqs_broker, SqsFanoutChannel, SqsFanoutOptions,
};
pub use sqs::{SqsBroker, SqsConfig};
