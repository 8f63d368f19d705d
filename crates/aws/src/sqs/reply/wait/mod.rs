//! The orchestrator half of result notification: what waits for notifications.
//!
//! - [`queue`]: [`ReplyQueue`], the process's own reply queue (create on first use, delete at
//!   shutdown), its options and stats.
//! - [`poll`]: the queue's poller (receive, hand to the dispatch, delete in batches, re-tag).
//! - [`dispatch`]: in memory, which tasks expect a reply, who waits, notifications kept.
//! - [`waiter`]: [`NotifyingResultBackend`](super::NotifyingResultBackend)'s waiting —
//!   notification or [`FallbackPoll`], results held without a durable copy.
//! - [`middleware`]: [`ReplyToMiddleware`], the reply address on every sent message.
//! - [`names`]: reply queue names, listing them, pruning stale ones.

mod dispatch;
mod middleware;
mod names;
mod poll;
mod queue;
mod waiter;

pub(crate) use dispatch::Reply;
pub use middleware::ReplyToMiddleware;
pub use names::{
    list_reply_queues, prune_stale_reply_queues, reply_queue_name, reply_queue_prefix,
    REPLY_QUEUE_INFIX,
};
pub use queue::{
    ReplyQueue, ReplyQueueOptions, ReplyStats, ALIVE_AT_TAG, OWNER_TAG, REPLY_ROLE,
    REPLY_VISIBILITY_TIMEOUT, ROLE_TAG,
};
pub use waiter::FallbackPoll;

/// Test helpers of both halves.
#[cfg(test)]
pub(crate) mod tests {
    /// A client for an endpoint where nothing listens, without retries.
    pub(crate) fn unreachable_client() -> aws_sdk_sqs::Client {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .endpoint_url(format!("http://127.0.0.1:{port}"))
            .retry_config(aws_sdk_sqs::config::retry::RetryConfig::disabled())
            .build();
        aws_sdk_sqs::Client::from_conf(conf)
    }
}
