//! The AWS SQS broker, with S3 extended payloads, and what else stepq runs on SQS.
//!
//! - [`SqsConfig`]: `queue_url`, `region_name`, `endpoint_url` and `config_source` options, as
//!   dagster-taskiq's executor config has them, validated field by field.
//! - [`SqsBroker`]: the [`Broker`](stepq_broker::Broker). FIFO queues (URL ending `.fifo`) get a
//!   MessageGroupId per run when fair (per task otherwise) and a deduplication id; bodies over
//!   the size threshold go to S3 in taskiq-aio-sqs's pointer layout.
//! - AWS failures are [`BrokerError::Service`](stepq_broker::BrokerError::Service) with the AWS error
//!   code and an [`ErrorClass`](stepq_broker::ErrorClass); the SDK retries transient ones with backoff.
//! - [`cancel_channel`]: the per-worker cancel inboxes of the cancellation extension.
//! - [`reply`]: result notification through a per-orchestrator reply queue, so the
//!   orchestrator learns of finished tasks without polling S3.
//!
//! Credentials and region come from aws-config's chain (environment, profile, instance role).

mod broker;
pub mod cancel_channel;
mod config;
pub mod dead_letters;
mod error;
mod listen;
pub mod owned_queue;
mod payload;
pub mod reply;
mod send;

pub use broker::{QueueDepth, SqsBroker};
pub use config::{
    resolve_fair_queue, SqsConfig, SqsConfigSource, DEFAULT_MAX_NUMBER_OF_MESSAGES,
    DEFAULT_PAYLOAD_SIZE_THRESHOLD, DEFAULT_VISIBILITY_TIMEOUT, DEFAULT_WAIT_TIME_SECONDS,
    MAX_SQS_MESSAGE_SIZE, MAX_VISIBILITY_TIMEOUT,
};
pub use error::sqs_error;

/// The URL of the queue beside `queue_url` named `<name>-<suffix>` (`<name>-<suffix>.fifo`
/// for a FIFO queue): a dead-letter queue (`dlq`), a priority level's queue (`high`).
///
/// ```
/// use stepq_aws::sqs::sibling_queue_url;
///
/// assert_eq!(sibling_queue_url("https://q/1/tasks", "high"), "https://q/1/tasks-high");
/// assert_eq!(sibling_queue_url("https://q/1/tasks.fifo/", "dlq"), "https://q/1/tasks-dlq.fifo");
/// ```
pub fn sibling_queue_url(queue_url: &str, suffix: &str) -> String {
    let url = queue_url.trim_end_matches('/');
    match url.strip_suffix(".fifo") {
        Some(base) => format!("{base}-{suffix}.fifo"),
        None => format!("{url}-{suffix}"),
    }
}
pub use payload::{S3Pointer, EXTENDED_MESSAGE_ATTRIBUTE, PAYLOAD_KEY_PREFIX};
pub use reply::{
    NotifyingResultBackend, ReplyQueue, ReplyToMiddleware, ReplyWiring, REPLY_ONLY_LABEL,
    REPLY_TO_LABEL,
};
pub use send::{GROUP_LABEL, MAX_BATCH_BYTES, MAX_BATCH_ENTRIES};
