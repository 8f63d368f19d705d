//! The worker half's result backend: [`NotifyingResultBackend`], a durable result backend that
//! also sends a notification to the reply queue a result's `reply_to` label names (or, for a
//! reply-only result that fits, sends it in the notification only, storing it durably if that
//! fails). It owns the type, its settings and stats, and its [`ResultBackend`] impl; the
//! orchestrator's waiting through a reply queue is in the wait half
//! ([`reply::wait`](crate::sqs::reply::wait)).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use stepq_results::{ResultBackend, ResultError, ServiceError, TaskResult};

use super::batcher::Notifier;
use crate::sqs::reply::wait::{FallbackPoll, Reply, ReplyQueue};
use crate::sqs::reply::{wire, INLINE_RESULT_LIMIT, REPLY_ONLY_LABEL, REPLY_TO_LABEL};
use crate::sqs::send::MAX_BATCH_BYTES;
use stepq_broker::error::BrokerError;
use stepq_core::SharedFailureLog;

/// What a [`NotifyingResultBackend`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifyStats {
    /// Notifications sent with the result inline.
    pub sent_inline: u64,
    /// Notifications sent with the task id only (the result was too large, or had characters
    /// SQS refuses).
    pub sent_by_reference: u64,
    /// Results sent in the notification only, without a durable copy (asked for with
    /// [`REPLY_ONLY_LABEL`]).
    pub sent_reply_only: u64,
    /// Notifications that could not be sent (each logged; the waiter's fallback poll finds the
    /// result).
    pub send_failures: u64,
    /// SQS calls made to send notifications (SendMessage, SendMessageBatch).
    pub send_calls: u64,
    /// Waits answered by an inline result, without reading the durable backend.
    pub answered_inline: u64,
    /// Waits answered by reading the durable backend once after a notification.
    pub read_after_notice: u64,
    /// Reads of the fallback poll.
    pub fallback_reads: u64,
    /// Waits answered by the fallback poll (the notification was lost or late).
    pub answered_by_fallback: u64,
    /// Waits handed to the durable backend's own `wait_result` (task not sent with this
    /// process's reply address, or the reply queue is gone).
    pub durable_waits: u64,
}

/// The counts behind [`NotifyStats`] (but `send_calls`, which the notifier keeps).
#[derive(Default)]
pub(in crate::sqs::reply) struct Counters {
    pub(in crate::sqs::reply) sent_inline: AtomicU64,
    pub(in crate::sqs::reply) sent_by_reference: AtomicU64,
    pub(in crate::sqs::reply) sent_reply_only: AtomicU64,
    pub(in crate::sqs::reply) send_failures: AtomicU64,
    pub(in crate::sqs::reply) answered_inline: AtomicU64,
    pub(in crate::sqs::reply) read_after_notice: AtomicU64,
    pub(in crate::sqs::reply) fallback_reads: AtomicU64,
    pub(in crate::sqs::reply) answered_by_fallback: AtomicU64,
    pub(in crate::sqs::reply) durable_waits: AtomicU64,
}

/// Adds one to a counter.
pub(in crate::sqs::reply) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A [`ResultBackend`] over a durable one (S3 in production) that tells the orchestrator when a
/// result is there.
///
/// - `set_result` writes the durable result first; then, if the result's labels carry
///   [`REPLY_TO_LABEL`] (the [`Receiver`](stepq_broker::Receiver) copies every message label into
///   its result), sends a notification to that queue: the result inline when it fits in
///   [`INLINE_RESULT_LIMIT`] (without its log), else the task id. Notifications saved at the
///   same moment share a SendMessageBatch. A notification that cannot be sent is logged and
///   counted, never an error: the result is stored, and the waiter's fallback poll finds it.
/// - `wait_result` (with a [`ReplyQueue`], on the orchestrator): for a task sent with this
///   process's reply address, waits for its notification — an inline result is returned
///   without any request; otherwise the result is read once — while a slow [`FallbackPoll`]
///   of the durable backend races it. Other tasks, and every task once the reply queue is
///   gone, are left to the durable backend's own `wait_result`.
/// - A message labelled [`REPLY_ONLY_LABEL`] (see
///   [`ReplyToMiddleware::with_reply_only`](crate::sqs::reply::ReplyToMiddleware::with_reply_only)) whose
///   result fits inline gets no durable copy: `set_result` only sends the notification (and
///   falls back to the durable write if that fails); the orchestrator keeps the result in
///   memory until `delete_result`, which then makes no request.
/// - `get_result`, `is_result_ready`, `delete_result`, `startup` delegate; `shutdown` also
///   shuts the reply queue down (deleting it).
pub struct NotifyingResultBackend<B> {
    pub(in crate::sqs::reply) durable: B,
    notifier: Notifier,
    pub(in crate::sqs::reply) replies: Option<ReplyQueue>,
    pub(in crate::sqs::reply) fallback: FallbackPoll,
    inline_limit: usize,
    pub(in crate::sqs::reply) counters: Arc<Counters>,
    /// Results received without a durable copy, until deleted.
    pub(in crate::sqs::reply) unstored: Mutex<HashMap<String, TaskResult>>,
    /// Failed notification sends, logged once per period for all tasks (an outage is one
    /// warning, not one per finished task); each task's detail is at debug level.
    send_failures: SharedFailureLog,
}

impl<B> std::fmt::Debug for NotifyingResultBackend<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyingResultBackend")
            .field("replies", &self.replies)
            .field("fallback", &self.fallback)
            .field("inline_limit", &self.inline_limit)
            .finish_non_exhaustive()
    }
}

impl<B: ResultBackend> NotifyingResultBackend<B> {
    /// Wraps `durable`; notifications are sent with `sqs`. Without a reply queue (a worker),
    /// `wait_result` is the durable backend's.
    pub fn new(durable: B, sqs: aws_sdk_sqs::Client) -> Self {
        NotifyingResultBackend {
            durable,
            notifier: Notifier::new(sqs),
            replies: None,
            fallback: FallbackPoll::default(),
            inline_limit: INLINE_RESULT_LIMIT,
            counters: Arc::new(Counters::default()),
            unstored: Mutex::new(HashMap::new()),
            send_failures: SharedFailureLog::new(
                "sending result notifications to the orchestrator's reply queue",
            ),
        }
    }

    /// Waits through `replies` (an orchestrator).
    pub fn with_reply_queue(mut self, replies: ReplyQueue) -> Self {
        self.replies = Some(replies);
        self
    }

    /// Replaces the fallback poll's timing.
    pub fn with_fallback_poll(mut self, fallback: FallbackPoll) -> Self {
        self.fallback = fallback;
        self
    }

    /// Largest notification body carrying the result inline, in bytes (default
    /// [`INLINE_RESULT_LIMIT`]; at most 256 KiB, larger values are capped).
    pub fn with_inline_limit(mut self, bytes: usize) -> Self {
        self.inline_limit = bytes.min(MAX_BATCH_BYTES);
        self
    }

    /// The durable backend.
    pub fn durable(&self) -> &B {
        &self.durable
    }

    /// The reply queue, if this backend waits through one.
    pub fn reply_queue(&self) -> Option<&ReplyQueue> {
        self.replies.as_ref()
    }

    /// What it did so far.
    pub fn stats(&self) -> NotifyStats {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NotifyStats {
            sent_inline: load(&c.sent_inline),
            sent_by_reference: load(&c.sent_by_reference),
            sent_reply_only: load(&c.sent_reply_only),
            send_failures: load(&c.send_failures),
            send_calls: self.notifier.calls(),
            answered_inline: load(&c.answered_inline),
            read_after_notice: load(&c.read_after_notice),
            fallback_reads: load(&c.fallback_reads),
            answered_by_fallback: load(&c.answered_by_fallback),
            durable_waits: load(&c.durable_waits),
        }
    }

    /// For a result that asks for it and fits inline: sends it in the notification only.
    /// `true` if sent (nothing else to do); on failure the caller stores it durably.
    async fn reply_only(&self, task_id: &str, result: &TaskResult) -> bool {
        let label = |name: &str| result.labels.get(name).and_then(|v| v.as_str());
        if label(REPLY_ONLY_LABEL) != Some("true") {
            return false;
        }
        let Some(url) = label(REPLY_TO_LABEL).filter(|u| is_queue_url(u)) else {
            return false;
        };
        let Some(body) = wire::encode_unstored(task_id, result, self.inline_limit) else {
            return false;
        };
        match self.notifier.send(url.to_string(), body).await {
            Ok(()) => {
                self.send_failures.succeeded();
                bump(&self.counters.sent_reply_only);
                true
            }
            Err(e) => {
                bump(&self.counters.send_failures);
                self.send_failures.failed(&e);
                tracing::debug!(
                    task_id,
                    reply_to = url,
                    error = %e,
                    "could not send a result to its reply queue; storing it durably instead"
                );
                false
            }
        }
    }

    /// Sends the notification of a stored result, if it asks for one; failures are logged.
    async fn notify(&self, task_id: &str, result: &TaskResult) {
        let Some(url) = result.labels.get(REPLY_TO_LABEL).and_then(|v| v.as_str()) else {
            return;
        };
        if !is_queue_url(url) {
            bump(&self.counters.send_failures);
            tracing::warn!(
                task_id,
                reply_to = url,
                "the reply address is not a queue URL; no notification sent"
            );
            return;
        }
        let (body, inline) = wire::encode(task_id, result, self.inline_limit);
        match self.notifier.send(url.to_string(), body).await {
            Ok(()) => {
                self.send_failures.succeeded();
                bump(if inline {
                    &self.counters.sent_inline
                } else {
                    &self.counters.sent_by_reference
                })
            }
            Err(e) => {
                bump(&self.counters.send_failures);
                self.send_failures.failed(&e);
                tracing::debug!(
                    task_id,
                    reply_to = url,
                    error = %e,
                    "could not notify the orchestrator; it finds the stored result by polling"
                );
            }
        }
    }
}

/// A reply queue's error as a result backend error: a service error as it is, any other as an
/// `sqs` service error of code `Unknown` with the broker error as the source.
fn broker_to_result_error(e: BrokerError) -> ResultError {
    match e {
        BrokerError::Service(e) => e.into(),
        BrokerError::Results(e) => e,
        other => {
            let (message, class) = (other.to_string(), other.class());
            ServiceError::new("sqs", "Unknown", message, class)
                .with_source(other)
                .into()
        }
    }
}

#[async_trait]
impl<B: ResultBackend> ResultBackend for NotifyingResultBackend<B> {
    async fn startup(&self) -> Result<(), ResultError> {
        self.durable.startup().await
    }

    /// Shuts the reply queue down (deleting it), then the durable backend; reports the first
    /// error.
    async fn shutdown(&self) -> Result<(), ResultError> {
        let replies = match &self.replies {
            Some(r) => r.shutdown().await.map_err(broker_to_result_error),
            None => Ok(()),
        };
        if let Err(e) = &replies {
            tracing::error!(error = %e, "could not delete the reply queue");
        }
        let durable = self.durable.shutdown().await;
        replies.and(durable)
    }

    /// Stores the result durably, then notifies the queue in its `reply_to` label, if any
    /// (with [`REPLY_ONLY_LABEL`] and a result that fits: only notifies).
    async fn set_result(&self, task_id: &str, result: &TaskResult) -> Result<(), ResultError> {
        if self.reply_only(task_id, result).await {
            return Ok(());
        }
        self.durable.set_result(task_id, result).await?;
        self.notify(task_id, result).await;
        Ok(())
    }

    async fn is_result_ready(&self, task_id: &str) -> Result<bool, ResultError> {
        if self.held(task_id).is_some() {
            return Ok(true);
        }
        self.durable.is_result_ready(task_id).await
    }

    /// A result held in memory is returned from there, without its log (`with_logs` then reads
    /// the durable copy, when there is one).
    async fn get_result(&self, task_id: &str, with_logs: bool) -> Result<TaskResult, ResultError> {
        if let Some(result) = self.held(task_id) {
            let in_memory_only = matches!(
                self.replies
                    .as_ref()
                    .and_then(|r| r.dispatch().peek(task_id)),
                Some(Reply::Only(_))
            ) || self.lock_unstored().contains_key(task_id);
            if !with_logs || in_memory_only {
                return Ok(result);
            }
        }
        self.durable.get_result(task_id, with_logs).await
    }

    async fn wait_result(
        &self,
        task_id: &str,
        timeout: Option<Duration>,
    ) -> Result<TaskResult, ResultError> {
        if let Some(result) = self.lock_unstored().get(task_id) {
            return Ok(result.clone());
        }
        let Some(replies) = &self.replies else {
            return self.wait_durable(task_id, timeout).await;
        };
        let wait = self.wait_notified(replies.dispatch(), task_id);
        match timeout {
            None => wait.await,
            Some(t) => tokio::time::timeout(t, wait).await.unwrap_or_else(|_| {
                Err(ResultError::Timeout {
                    task_id: task_id.to_string(),
                    waited: t,
                })
            }),
        }
    }

    /// A result that has no durable copy is only forgotten (no request).
    async fn delete_result(&self, task_id: &str) -> Result<(), ResultError> {
        let mut in_memory_only = self.lock_unstored().remove(task_id).is_some();
        if let Some(replies) = &self.replies {
            in_memory_only |= matches!(replies.dispatch().peek(task_id), Some(Reply::Only(_)));
            replies.dispatch().remove(task_id);
        }
        if in_memory_only {
            return Ok(());
        }
        self.durable.delete_result(task_id).await
    }
}

/// Whether a reply address looks like a queue URL (anything else is refused unsent).
fn is_queue_url(url: &str) -> bool {
    url.starts_with("https://") || url.starts_with("http://")
}

#[cfg(test)]
mod tests {
    use stepq_results::InMemoryResultBackend;

    use super::*;
    use crate::sqs::reply::wait::tests::unreachable_client;

    fn labelled(reply_to: &str) -> TaskResult {
        let mut r = TaskResult::ok(serde_json::json!(42), 0.1);
        r.labels.insert(
            REPLY_TO_LABEL.into(),
            serde_json::Value::String(reply_to.into()),
        );
        r
    }

    #[tokio::test]
    async fn results_without_a_reply_address_are_only_stored() {
        let backend =
            NotifyingResultBackend::new(InMemoryResultBackend::new(), unreachable_client());
        let r = TaskResult::ok(serde_json::json!(1), 0.0);
        backend.set_result("t1", &r).await.unwrap();
        assert_eq!(backend.durable().get_result("t1", true).await.unwrap(), r);
        assert_eq!(backend.stats(), NotifyStats::default());
        assert!(backend.reply_queue().is_none());
        // Without a reply queue, waits are the durable backend's.
        backend
            .wait_result("t1", Some(Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(backend.stats().durable_waits, 1);
    }

    #[tokio::test]
    async fn a_notification_that_cannot_be_sent_is_counted_not_an_error() {
        let backend =
            NotifyingResultBackend::new(InMemoryResultBackend::new(), unreachable_client());
        let r = labelled("http://127.0.0.1:9/000000000000/tasks-reply-x");
        backend.set_result("t1", &r).await.unwrap();
        assert!(
            backend.durable().is_result_ready("t1").await.unwrap(),
            "stored first"
        );
        let stats = backend.stats();
        assert_eq!((stats.send_failures, stats.send_calls), (1, 1), "{stats:?}");
    }

    #[tokio::test]
    async fn a_reply_address_that_is_not_a_url_is_refused_without_a_call() {
        let backend =
            NotifyingResultBackend::new(InMemoryResultBackend::new(), unreachable_client());
        backend
            .set_result("t1", &labelled("not a url"))
            .await
            .unwrap();
        let stats = backend.stats();
        assert_eq!((stats.send_failures, stats.send_calls), (1, 0), "{stats:?}");
        assert!(backend.durable().is_result_ready("t1").await.unwrap());
    }

    #[tokio::test]
    async fn failures_of_the_durable_backend_are_returned_and_nothing_is_sent() {
        let backend =
            NotifyingResultBackend::new(InMemoryResultBackend::new(), unreachable_client());
        let err = backend
            .set_result("a/b", &labelled("http://127.0.0.1:9/0/q"))
            .await
            .unwrap_err();
        assert!(matches!(err, ResultError::InvalidKey { .. }), "{err}");
        assert_eq!(backend.stats().send_calls, 0);
    }

    fn reply_only(reply_to: &str) -> TaskResult {
        let mut r = labelled(reply_to);
        r.labels.insert(
            REPLY_ONLY_LABEL.into(),
            serde_json::Value::String("true".into()),
        );
        r
    }

    #[tokio::test]
    async fn a_reply_only_result_that_cannot_be_sent_is_stored_durably() {
        let backend =
            NotifyingResultBackend::new(InMemoryResultBackend::new(), unreachable_client());
        let r = reply_only("http://127.0.0.1:9/000000000000/tasks-reply-x");
        backend.set_result("t1", &r).await.unwrap();
        assert_eq!(backend.durable().get_result("t1", true).await.unwrap(), r);
        let stats = backend.stats();
        assert_eq!(stats.sent_reply_only, 0);
        // Tried reply-only, then notified after the durable write: both failed.
        assert_eq!(stats.send_failures, 2, "{stats:?}");
    }

    #[tokio::test]
    async fn a_reply_only_result_too_large_to_inline_is_stored_durably() {
        let backend =
            NotifyingResultBackend::new(InMemoryResultBackend::new(), unreachable_client())
                .with_inline_limit(16);
        let r = reply_only("http://127.0.0.1:9/000000000000/tasks-reply-x");
        backend.set_result("t1", &r).await.unwrap();
        assert!(backend.durable().is_result_ready("t1").await.unwrap());
        // No reply-only attempt: one (failed) by-reference notification after the write.
        let stats = backend.stats();
        assert_eq!(
            (stats.send_calls, stats.sent_reply_only),
            (1, 0),
            "{stats:?}"
        );
    }

    #[test]
    fn the_inline_limit_is_capped_at_the_batch_size() {
        let backend =
            NotifyingResultBackend::new(InMemoryResultBackend::new(), unreachable_client())
                .with_inline_limit(10 * 1024 * 1024);
        assert_eq!(backend.inline_limit, MAX_BATCH_BYTES);
    }
}
