//! The orchestrator half: how reply queues are named (`<task queue>-reply-<16 hex>`) and
//! found again — listing those of a task queue and deleting the stale ones that orchestrators
//! which ended without shutting down left behind.

use std::time::Duration;

use super::queue::REPLY_ROLE;
use crate::sqs::owned_queue::{self, queue_name, sanitize, MAX_QUEUE_NAME};
use stepq_broker::error::BrokerError;

/// What follows the task queue name in a reply queue's name, before the random part.
pub const REPLY_QUEUE_INFIX: &str = "-reply-";
/// Hex digits of the random part of a reply queue's name.
pub(super) const RANDOM_HEX: usize = 16;

/// The part of reply queue names before the random suffix, for a task queue name (or URL):
/// `<name without .fifo, sanitized, cut to fit>-reply-`.
///
/// ```
/// use stepq_aws::sqs::reply::reply_queue_prefix;
/// assert_eq!(reply_queue_prefix("tasks.fifo"), "tasks-reply-");
/// assert_eq!(reply_queue_prefix("http://127.0.0.1:4566/000000000000/jobs"), "jobs-reply-");
/// ```
pub fn reply_queue_prefix(task_queue: &str) -> String {
    format!("{}{REPLY_QUEUE_INFIX}", base_name(task_queue))
}

/// The task queue name without `.fifo`, sanitized and cut so reply queue names fit.
pub(super) fn base_name(task_queue: &str) -> String {
    let name = queue_name(task_queue);
    let stem = name.strip_suffix(".fifo").unwrap_or(name);
    let mut base = sanitize(stem);
    base.truncate(MAX_QUEUE_NAME - REPLY_QUEUE_INFIX.len() - RANDOM_HEX);
    if base.is_empty() {
        base.push_str("stepq");
    }
    base
}

/// A fresh reply queue name for a task queue: `<prefix>-<16 hex>`, at most 80 characters.
pub fn reply_queue_name(task_queue: &str) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{}{}",
        reply_queue_prefix(task_queue),
        &random[..RANDOM_HEX]
    )
}
/// `host-pid` of this process.
pub(super) fn owner() -> String {
    sanitize(&stepq_broker::receiver::default_worker_name())
}
/// URLs of the queues whose name starts with `prefix` (e.g. [`ReplyQueue::prefix`]).
pub async fn list_reply_queues(
    sqs: &aws_sdk_sqs::Client,
    prefix: &str,
) -> Result<Vec<String>, BrokerError> {
    Ok(owned_queue::list_with_prefix(sqs, prefix).await?)
}

/// Deletes the reply queues under `prefix` (other than `keep`) tagged as reply queues whose
/// owner has not re-tagged them for `stale_after`: those of orchestrators that ended without
/// shutting down. Returns how many were deleted. For tooling (`stepq`) and run at every
/// [`ReplyQueue::start`].
pub async fn prune_stale_reply_queues(
    sqs: &aws_sdk_sqs::Client,
    prefix: &str,
    stale_after: Duration,
) -> Result<usize, BrokerError> {
    prune(sqs, prefix, stale_after, None).await
}

/// [`prune_stale_reply_queues`], sparing `keep` (the caller's own queue).
pub(super) async fn prune(
    sqs: &aws_sdk_sqs::Client,
    prefix: &str,
    stale_after: Duration,
    keep: Option<&str>,
) -> Result<usize, BrokerError> {
    let urls = list_reply_queues(sqs, prefix).await?;
    Ok(owned_queue::prune_stale(sqs, urls, REPLY_ROLE, stale_after, keep).await)
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_sqs_and_start_with_the_prefix() {
        let name = reply_queue_name("http://127.0.0.1:4566/000000000000/tasks.fifo");
        assert!(name.starts_with("tasks-reply-"), "{name}");
        assert_eq!(name.len(), "tasks-reply-".len() + RANDOM_HEX);
        assert_ne!(name, reply_queue_name("tasks.fifo"), "names are random");
        let long = "q".repeat(200);
        let name = reply_queue_name(&long);
        assert_eq!(name.len(), MAX_QUEUE_NAME);
        assert!(name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(reply_queue_prefix("we!rd name"), "we-rd-name-reply-");
        assert_eq!(reply_queue_prefix(""), "stepq-reply-");
    }
}
