//! The orchestrator half of [`NotifyingResultBackend`]: waiting for a task's notification
//! through this process's [`ReplyQueue`](super::ReplyQueue) (registered with its dispatch),
//! racing the slow [`FallbackPoll`] of the durable backend, and holding results that arrived
//! without a durable copy until they are deleted.

use std::collections::HashMap;
use std::time::Duration;

use stepq_results::{ResultBackend, ResultError, TaskResult};

use super::dispatch::{Claim, Dispatch, Reply};
use crate::sqs::reply::notify::backend::bump;
use crate::sqs::reply::NotifyingResultBackend;

/// The slow poll of the durable backend that races a notification, in case it is lost (a
/// worker that could not send it, a malformed message, a result saved by other means): the
/// first read after `first`, then after doubling waits up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FallbackPoll {
    /// Wait before the first read (default 2 s).
    pub first: Duration,
    /// Longest wait between reads (default 30 s).
    pub max: Duration,
}

impl Default for FallbackPoll {
    fn default() -> Self {
        FallbackPoll {
            first: Duration::from_secs(2),
            max: Duration::from_secs(30),
        }
    }
}

/// Most results without a durable copy held in memory at once (the executor deletes each right
/// after reading it); past it, further ones are not kept after their first wait.
const MAX_UNSTORED: usize = 10_000;

impl<B: ResultBackend> NotifyingResultBackend<B> {
    /// Waits for a notification of `task_id` (registered with `dispatch`), racing the
    /// fallback poll. No time bound (the caller adds it).
    pub(in crate::sqs::reply) async fn wait_notified(
        &self,
        dispatch: &Dispatch,
        task_id: &str,
    ) -> Result<TaskResult, ResultError> {
        let mut pending = match dispatch.register(task_id) {
            Claim::Ready(reply) => return self.answer(task_id, reply).await,
            Claim::Pending(pending) => pending,
            Claim::NotExpected | Claim::Lost => return self.wait_durable(task_id, None).await,
        };
        if pending.is_companion() {
            // No fallback poll for a companion (a progress entry): its task's result carries
            // what it would say, so a lost one costs nothing but lateness, and a long step's
            // wait makes no S3 request.
            let reply = pending.recv().await;
            drop(pending);
            return match reply {
                Some(reply) => self.answer(task_id, reply).await,
                None => self.wait_durable(task_id, None).await,
            };
        }
        let mut delay = self.fallback.first;
        loop {
            tokio::select! {
                biased;
                reply = pending.recv() => {
                    drop(pending);
                    return match reply {
                        Some(reply) => self.answer(task_id, reply).await,
                        None => self.wait_durable(task_id, None).await,
                    };
                }
                _ = tokio::time::sleep(delay) => {
                    bump(&self.counters.fallback_reads);
                    match self.durable.get_result(task_id, false).await {
                        Ok(result) => {
                            bump(&self.counters.answered_by_fallback);
                            tracing::debug!(task_id, "a result was found by the fallback poll");
                            return Ok(result);
                        }
                        Err(ResultError::NotFound { .. }) => {}
                        Err(e) if e.is_temporary() => {
                            tracing::debug!(task_id, error = %e, "a fallback read failed; the notification may still come");
                        }
                        Err(e) => return Err(e),
                    }
                    delay = (delay * 2).min(self.fallback.max);
                }
            }
        }
    }

    /// The result a notification points to.
    async fn answer(&self, task_id: &str, reply: Reply) -> Result<TaskResult, ResultError> {
        match reply {
            Reply::Inline(result) => {
                bump(&self.counters.answered_inline);
                Ok(result)
            }
            Reply::Only(result) => {
                bump(&self.counters.answered_inline);
                let mut unstored = self.lock_unstored();
                if unstored.len() < MAX_UNSTORED {
                    unstored.insert(task_id.to_string(), result.clone());
                } else {
                    tracing::warn!(
                        task_id,
                        "too many undeleted results without a durable copy; this one is not \
                         kept after this wait"
                    );
                }
                Ok(result)
            }
            Reply::Stored => {
                bump(&self.counters.read_after_notice);
                match self.durable.get_result(task_id, false).await {
                    // Deleted since it was notified: wait for it to be stored again.
                    Err(ResultError::NotFound { .. }) => self.wait_durable(task_id, None).await,
                    other => other,
                }
            }
        }
    }

    pub(in crate::sqs::reply) fn lock_unstored(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, TaskResult>> {
        self.unstored.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A result this process holds in memory: received without a durable copy and not yet
    /// deleted, or notified inline and not yet claimed.
    pub(in crate::sqs::reply) fn held(&self, task_id: &str) -> Option<TaskResult> {
        if let Some(r) = self.lock_unstored().get(task_id) {
            return Some(r.clone());
        }
        match self.replies.as_ref()?.dispatch().peek(task_id)? {
            Reply::Inline(r) | Reply::Only(r) => Some(r),
            Reply::Stored => None,
        }
    }

    pub(in crate::sqs::reply) async fn wait_durable(
        &self,
        task_id: &str,
        timeout: Option<Duration>,
    ) -> Result<TaskResult, ResultError> {
        bump(&self.counters.durable_waits);
        self.durable.wait_result(task_id, timeout).await
    }
}
#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use async_trait::async_trait;
    use stepq_results::InMemoryResultBackend;

    use super::*;
    use crate::sqs::reply::wait::dispatch::Delivered;
    use crate::sqs::reply::wait::tests::unreachable_client;
    use crate::sqs::reply::ReplyQueue;

    /// An in-memory backend that counts reads (what would be S3 GetObject / HeadObject calls)
    /// and deletes.
    #[derive(Default)]
    struct Counting {
        inner: InMemoryResultBackend,
        reads: AtomicUsize,
        deletes: AtomicUsize,
    }

    impl Counting {
        fn reads(&self) -> usize {
            self.reads.load(Ordering::Relaxed)
        }
        fn deletes(&self) -> usize {
            self.deletes.load(Ordering::Relaxed)
        }
    }

    #[async_trait]
    impl ResultBackend for Counting {
        async fn set_result(&self, id: &str, r: &TaskResult) -> Result<(), ResultError> {
            self.inner.set_result(id, r).await
        }
        async fn is_result_ready(&self, id: &str) -> Result<bool, ResultError> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            self.inner.is_result_ready(id).await
        }
        async fn get_result(&self, id: &str, logs: bool) -> Result<TaskResult, ResultError> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            self.inner.get_result(id, logs).await
        }
        async fn wait_result(
            &self,
            id: &str,
            timeout: Option<Duration>,
        ) -> Result<TaskResult, ResultError> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            self.inner.wait_result(id, timeout).await
        }
        async fn delete_result(&self, id: &str) -> Result<(), ResultError> {
            self.deletes.fetch_add(1, Ordering::Relaxed);
            self.inner.delete_result(id).await
        }
    }

    const FAST: FallbackPoll = FallbackPoll {
        first: Duration::from_millis(10),
        max: Duration::from_millis(20),
    };

    /// An orchestrator-side backend whose reply queue is never created (no SQS needed: the
    /// tests deliver notifications to its dispatch directly).
    fn orchestrator() -> (Arc<NotifyingResultBackend<Counting>>, ReplyQueue) {
        let replies = ReplyQueue::new(unreachable_client(), "tasks");
        let backend = NotifyingResultBackend::new(Counting::default(), unreachable_client())
            .with_reply_queue(replies.clone());
        (Arc::new(backend), replies)
    }

    #[tokio::test]
    async fn a_companion_is_awaited_by_its_notification_only() {
        let (backend, replies) = orchestrator();
        let backend = Arc::new(
            Arc::into_inner(backend)
                .expect("one handle")
                .with_fallback_poll(FAST),
        );
        replies.dispatch().expect("t1");
        // Long past the fallback's first read: no durable read for a companion.
        let waited = backend
            .wait_result("t1.progress.1", Some(Duration::from_millis(200)))
            .await;
        assert!(
            matches!(waited, Err(ResultError::Timeout { .. })),
            "{waited:?}"
        );
        assert_eq!(backend.durable().reads(), 0);
        assert_eq!(backend.stats().fallback_reads, 0);
        // Its notification answers it.
        let waiter = {
            let backend = backend.clone();
            tokio::spawn(async move {
                backend
                    .wait_result("t1.progress.2", Some(Duration::from_secs(10)))
                    .await
            })
        };
        tokio::task::yield_now().await;
        let entry = TaskResult::ok(serde_json::json!("entry"), 0.0);
        replies
            .dispatch()
            .deliver("t1.progress.2", Reply::Inline(entry.clone()), 10);
        assert_eq!(waiter.await.unwrap().unwrap(), entry);
        assert_eq!(backend.durable().reads(), 0);
    }

    #[tokio::test]
    async fn an_inline_notification_answers_without_reading_the_durable_backend() {
        let (backend, replies) = orchestrator();
        replies.dispatch().expect("t1");
        let waiter = {
            let backend = backend.clone();
            tokio::spawn(async move {
                backend
                    .wait_result("t1", Some(Duration::from_secs(10)))
                    .await
            })
        };
        let r = TaskResult::ok(serde_json::json!("done"), 0.5);
        // Deliver once the waiter registered (or before: both paths answer inline).
        tokio::task::yield_now().await;
        replies
            .dispatch()
            .deliver("t1", Reply::Inline(r.clone()), 10);
        assert_eq!(waiter.await.unwrap().unwrap(), r);
        assert_eq!(backend.durable().reads(), 0, "no durable read");
        assert_eq!(backend.stats().answered_inline, 1);
    }

    #[tokio::test]
    async fn a_notification_before_the_wait_is_claimed_by_it() {
        let (backend, replies) = orchestrator();
        replies.dispatch().expect("t1");
        let r = TaskResult::ok(serde_json::json!(3), 0.0);
        assert_eq!(
            replies
                .dispatch()
                .deliver("t1", Reply::Inline(r.clone()), 10),
            Delivered::Kept
        );
        assert!(backend.is_result_ready("t1").await.unwrap());
        assert_eq!(backend.get_result("t1", false).await.unwrap(), r);
        assert_eq!(backend.durable().reads(), 0);
        assert_eq!(backend.wait_result("t1", None).await.unwrap(), r);
        assert_eq!(backend.durable().reads(), 0);
    }

    #[tokio::test]
    async fn a_by_reference_notification_reads_the_durable_backend_once() {
        let (backend, replies) = orchestrator();
        replies.dispatch().expect("t1");
        let r = TaskResult::ok(serde_json::json!("big"), 0.0);
        backend.durable().set_result("t1", &r).await.unwrap();
        replies.dispatch().deliver("t1", Reply::Stored, 10);
        assert_eq!(backend.wait_result("t1", None).await.unwrap(), r);
        assert_eq!(backend.durable().reads(), 1);
        assert_eq!(backend.stats().read_after_notice, 1);
    }

    #[tokio::test]
    async fn a_lost_notification_is_found_by_the_fallback_poll() {
        let (backend, replies) = orchestrator();
        let backend = Arc::new(
            Arc::try_unwrap(backend)
                .expect("sole owner")
                .with_fallback_poll(FAST),
        );
        replies.dispatch().expect("t1");
        let r = TaskResult::ok(serde_json::json!(9), 0.0);
        backend.durable().set_result("t1", &r).await.unwrap();
        assert_eq!(
            backend
                .wait_result("t1", Some(Duration::from_secs(10)))
                .await
                .unwrap(),
            r
        );
        let stats = backend.stats();
        assert_eq!(stats.answered_by_fallback, 1, "{stats:?}");
        assert!(stats.fallback_reads >= 1);
    }

    #[tokio::test]
    async fn a_permanent_fallback_read_error_is_returned() {
        let replies = ReplyQueue::new(unreachable_client(), "tasks");
        let backend =
            NotifyingResultBackend::new(InMemoryResultBackend::new(), unreachable_client())
                .with_reply_queue(replies.clone())
                .with_fallback_poll(FAST);
        // An id the durable backend refuses: the fallback read fails for good.
        replies.dispatch().expect("bad/id");
        let err = backend.wait_result("bad/id", None).await.unwrap_err();
        assert!(matches!(err, ResultError::InvalidKey { .. }), "{err}");
    }

    #[tokio::test]
    async fn tasks_sent_without_the_reply_address_wait_on_the_durable_backend() {
        let (backend, _replies) = orchestrator();
        let r = TaskResult::ok(serde_json::json!(1), 0.0);
        backend.durable().set_result("other", &r).await.unwrap();
        assert_eq!(backend.wait_result("other", None).await.unwrap(), r);
        assert_eq!(backend.stats().durable_waits, 1);
    }

    #[tokio::test]
    async fn a_timeout_keeps_the_task_expected() {
        let (backend, replies) = orchestrator();
        replies.dispatch().expect("t1");
        let err = backend
            .wait_result("t1", Some(Duration::from_millis(20)))
            .await
            .unwrap_err();
        assert!(matches!(err, ResultError::Timeout { .. }), "{err}");
        assert_eq!(
            replies.dispatch().deliver("t1", Reply::Stored, 1),
            Delivered::Kept
        );
    }

    #[tokio::test]
    async fn waiters_switch_to_the_durable_backend_when_the_reply_queue_shuts_down() {
        let (backend, replies) = orchestrator();
        replies.dispatch().expect("t1");
        let waiter = {
            let backend = backend.clone();
            tokio::spawn(async move {
                backend
                    .wait_result("t1", Some(Duration::from_secs(10)))
                    .await
            })
        };
        tokio::task::yield_now().await;
        backend.shutdown().await.unwrap();
        let r = TaskResult::ok(serde_json::json!("late"), 0.0);
        backend.durable().set_result("t1", &r).await.unwrap();
        assert_eq!(waiter.await.unwrap().unwrap(), r);
        assert_eq!(backend.stats().durable_waits, 1);
    }

    #[tokio::test]
    async fn delete_forgets_a_kept_notification() {
        let (backend, replies) = orchestrator();
        replies.dispatch().expect("t1");
        replies.dispatch().deliver(
            "t1",
            Reply::Inline(TaskResult::ok(serde_json::json!(1), 0.0)),
            10,
        );
        backend.delete_result("t1").await.unwrap();
        assert!(!backend.is_result_ready("t1").await.unwrap());
        assert!(matches!(
            backend.get_result("t1", false).await,
            Err(ResultError::NotFound { .. })
        ));
    }
    #[tokio::test]
    async fn a_result_without_durable_copy_is_held_until_deleted() {
        let (backend, replies) = orchestrator();
        replies.dispatch().expect("t1");
        let r = TaskResult::ok(serde_json::json!("only"), 0.0);
        replies.dispatch().deliver("t1", Reply::Only(r.clone()), 10);
        // Held before and after the wait claims it, without touching the durable backend.
        assert_eq!(backend.get_result("t1", true).await.unwrap(), r);
        assert_eq!(backend.wait_result("t1", None).await.unwrap(), r);
        assert!(backend.is_result_ready("t1").await.unwrap());
        assert_eq!(backend.get_result("t1", false).await.unwrap(), r);
        assert_eq!(
            backend.wait_result("t1", None).await.unwrap(),
            r,
            "a second wait"
        );
        assert_eq!(backend.durable().reads(), 0);
        backend.delete_result("t1").await.unwrap();
        assert_eq!(backend.durable().deletes(), 0, "nothing durable to delete");
        assert!(!backend.is_result_ready("t1").await.unwrap());
        // A durably stored one is deleted there.
        replies.dispatch().expect("t2");
        replies.dispatch().deliver(
            "t2",
            Reply::Inline(TaskResult::ok(serde_json::json!(2), 0.0)),
            10,
        );
        backend.wait_result("t2", None).await.unwrap();
        backend.delete_result("t2").await.unwrap();
        assert_eq!(backend.durable().deletes(), 1);
    }

    #[tokio::test]
    async fn an_unclaimed_result_without_durable_copy_is_forgotten_by_delete() {
        let (backend, replies) = orchestrator();
        replies.dispatch().expect("t1");
        let r = TaskResult::ok(serde_json::json!(1), 0.0);
        replies.dispatch().deliver("t1", Reply::Only(r.clone()), 10);
        assert_eq!(backend.get_result("t1", false).await.unwrap(), r);
        backend.delete_result("t1").await.unwrap();
        assert_eq!(backend.durable().deletes(), 0);
        assert!(matches!(
            backend.get_result("t1", false).await,
            Err(ResultError::NotFound { .. })
        ));
    }
}
