//! How a delivery ends: its result is labelled, passed to the `on_error` / `post_execute`
//! hooks, saved (retrying temporary backend errors) and the message acked, or nacked when the
//! result cannot be saved or the task was cut off at shutdown. Malformed messages, unknown
//! task names and messages delivered too often are rejected here with a failed result and
//! moved to the broker's dead-letter place.

use std::collections::BTreeMap;
use std::time::Duration;

use stepq_results::{ResultError, TaskResult};

use super::Shared;
use crate::delivery::Delivery;
use crate::error::BrokerError;
use crate::message::TaskMessage;
use crate::receiver::{kinds, Counters, WORKER_NAME_LABEL};

/// Attempts to save a result when the backend reports a temporary error.
const SAVE_ATTEMPTS: u32 = 3;
/// Delay before the second save attempt; doubles after each.
const SAVE_RETRY_DELAY: Duration = Duration::from_millis(100);
/// Bytes of a malformed body quoted in the log.
const BODY_EXCERPT: usize = 512;

impl Shared {
    /// Hooks, save, post_save, ack.
    pub(super) async fn finish(
        &self,
        delivery: Delivery,
        message: TaskMessage,
        mut result: TaskResult,
    ) {
        result.labels = self.result_labels(message.result_labels());
        let middleware = self.queue.middleware();
        let hook = if result.is_err {
            middleware.on_error(&message, &result).await
        } else {
            middleware.post_execute(&message, &result).await
        };
        if hook.is_err() {
            Counters::bump(&self.stats.hook_errors);
        }
        let Some(delivery) = self.save_or_nack(delivery, &message.task_id, &result).await else {
            return;
        };
        Counters::bump(if result.is_err {
            &self.stats.failed
        } else {
            &self.stats.succeeded
        });
        // The result is saved: a post_save error is logged (by the chain) and counted, and the
        // message is still acked, since running the task again would not undo the hook's failure.
        if middleware.post_save(&message, &result).await.is_err() {
            Counters::bump(&self.stats.hook_errors);
        }
        self.ack(delivery, &message.task_id).await;
    }

    /// Saves the failed result of a message rejected before running, then moves the message
    /// to the dead-letter place, the result's error as the reason. A result that can never be
    /// saved (a task id the backend refuses as a key) does not keep the message cycling: it is
    /// dead-lettered all the same, the save error in its reason; any other save failure
    /// returns it to the queue as for any task.
    async fn finish_rejected(&self, delivery: Delivery, task_id: &str, result: TaskResult) {
        let mut reason = match &result.error {
            Some(e) => format!("{}: {}", e.kind, e.message),
            None => "rejected".to_string(),
        };
        match self.save(task_id, &result).await {
            Ok(()) => {}
            Err(e @ ResultError::InvalidKey { .. }) => {
                Counters::bump(&self.stats.unsaved);
                tracing::error!(task_id, error = %e, "the failed result of a rejected message cannot be saved");
                reason.push_str(&format!(" (its failed result could not be saved: {e})"));
            }
            Err(e) => {
                Counters::bump(&self.stats.unsaved);
                tracing::error!(task_id, error = %e, class = %e.class(), "could not save the failed result of a rejected message; returning it to the queue");
                if let Err(nack) = delivery.nack().await {
                    tracing::error!(task_id, error = %nack, "could not return the message; it comes back after its visibility timeout");
                }
                return;
            }
        }
        Counters::bump(&self.stats.failed);
        self.move_to_dead_letters(delivery, task_id, &reason).await;
    }

    /// A message delivered more than `max` times: a failed result of kind `DeadLettered`
    /// (so its orchestrator stops waiting), then the dead-letter place. A malformed one is
    /// rejected as such.
    pub(super) async fn dead_letter_overdelivered(&self, delivery: Delivery, max: u32) {
        let count = delivery.receive_count();
        let message = match delivery.message() {
            Ok(message) => message,
            Err(e) => return self.reject_malformed(delivery, e).await,
        };
        let text = format!(
            "dead-lettered after {count} deliveries: task `{}` was delivered more than \
             max_receive_count ({max}) times without a result (each time its worker died, was \
             stopped, handed it back, or could not store the result)",
            message.task_name
        );
        tracing::error!(task_id = %message.task_id, receive_count = count, "{text}");
        let mut result = TaskResult::err(kinds::DEAD_LETTERED, text, 0.0);
        result.labels = self.result_labels(message.result_labels());
        self.finish_rejected(delivery, &message.task_id, result)
            .await;
    }

    /// Moves a rejected message to the broker's dead-letter place. A broker without one gets
    /// the message acked (its failed result is stored, and the error log says it was dropped);
    /// a move that fails leaves the message to come back after its visibility timeout, when
    /// the move is tried again.
    async fn move_to_dead_letters(&self, delivery: Delivery, task_id: &str, reason: &str) {
        match delivery.dead_letter(reason).await {
            Ok(()) => {
                Counters::bump(&self.stats.dead_lettered);
                if let Some(observer) = &self.observer {
                    observer.dead_lettered(reason);
                }
                tracing::warn!(
                    task_id,
                    receive_count = delivery.receive_count(),
                    reason,
                    "message moved to the dead-letter place"
                );
            }
            Err(BrokerError::NoDeadLetters) => {
                tracing::error!(
                    task_id,
                    reason,
                    "this broker has no dead-letter place: the message is dropped (its failed \
                     result is stored where one could be)"
                );
                self.ack(delivery, task_id).await;
            }
            Err(e) => {
                tracing::error!(
                    task_id,
                    error = %e,
                    "could not move a rejected message to the dead-letter place; it comes back \
                     after its visibility timeout and the move is tried again"
                );
            }
        }
    }

    /// The labels stored with a result: `labels` (a message's
    /// [`result_labels`](TaskMessage::result_labels)), plus [`WORKER_NAME_LABEL`] naming this
    /// worker unless they already have one.
    fn result_labels(
        &self,
        mut labels: BTreeMap<String, serde_json::Value>,
    ) -> BTreeMap<String, serde_json::Value> {
        labels
            .entry(WORKER_NAME_LABEL.to_string())
            .or_insert_with(|| serde_json::Value::String(self.config.worker_name.clone()));
        labels
    }

    /// Saves the result and gives the delivery back; if saving fails, nacks the delivery (so
    /// the task runs again) and returns `None`.
    async fn save_or_nack(
        &self,
        delivery: Delivery,
        task_id: &str,
        result: &TaskResult,
    ) -> Option<Delivery> {
        let Err(e) = self.save(task_id, result).await else {
            return Some(delivery);
        };
        Counters::bump(&self.stats.unsaved);
        tracing::error!(
            task_id,
            error = %e,
            class = %e.class(),
            "could not save the task's result; returning its message to the queue"
        );
        if let Err(nack) = delivery.nack().await {
            tracing::error!(
                task_id,
                error = %nack,
                "could not return the message; it comes back after its visibility timeout"
            );
        }
        None
    }

    /// `set_result`, retrying temporary errors with backoff; one still failing after the last
    /// attempt is returned as persistent.
    async fn save(&self, task_id: &str, result: &TaskResult) -> Result<(), ResultError> {
        let mut delay = SAVE_RETRY_DELAY;
        let mut attempt = 1;
        loop {
            match self.queue.results().set_result(task_id, result).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_temporary() && attempt < SAVE_ATTEMPTS => {
                    tracing::warn!(task_id, attempt, error = %e, retry_in = ?delay, "saving a result failed");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(e) if attempt > 1 => return Err(e.exhausted()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Acks a delivery whose result is saved; a failure is logged and counted.
    async fn ack(&self, delivery: Delivery, task_id: &str) {
        if let Err(e) = delivery.ack().await {
            Counters::bump(&self.stats.ack_errors);
            tracing::error!(
                task_id,
                error = %e,
                "could not ack a message whose result is saved; it will be delivered again"
            );
        }
    }

    /// Returns a message whose task did not finish within the grace period.
    pub(super) async fn release(&self, delivery: Delivery, message: &TaskMessage) {
        Counters::bump(&self.stats.released);
        tracing::warn!(
            task = %message.task_name,
            task_id = %message.task_id,
            "task cancelled at shutdown; returning its message to the queue"
        );
        if let Err(e) = delivery.nack().await {
            tracing::error!(
                task_id = %message.task_id,
                error = %e,
                "could not return the message; it comes back after its visibility timeout"
            );
        }
    }

    /// Rejects a body that is not a task message: a failed result if a task id can be
    /// salvaged from it, then the dead-letter place; without a task id it is logged and
    /// dead-lettered.
    pub(super) async fn reject_malformed(&self, delivery: Delivery, error: BrokerError) {
        let body = excerpt(delivery.body());
        match TaskMessage::salvage_task_id(delivery.body()) {
            Some(task_id) => {
                tracing::error!(%task_id, %error, %body, "rejecting a malformed message");
                let mut result = TaskResult::err(kinds::MALFORMED_MESSAGE, error.to_string(), 0.0);
                result.labels = self.result_labels(BTreeMap::new());
                self.finish_rejected(delivery, &task_id, result).await;
            }
            None => {
                tracing::error!(
                    %error,
                    %body,
                    "rejecting a malformed message: it has no task id to store a failed result under"
                );
                Counters::bump(&self.stats.failed);
                let reason = format!("{}: {error}", kinds::MALFORMED_MESSAGE);
                self.move_to_dead_letters(delivery, "<none>", &reason).await;
            }
        }
    }

    /// Rejects a message no handler is registered for: a failed result naming the known
    /// tasks, then the dead-letter place (redrive it once a worker knows the task).
    pub(super) async fn reject_unknown(&self, delivery: Delivery, message: TaskMessage) {
        let known = if self.known.is_empty() {
            "none".to_string()
        } else {
            self.known.join(", ")
        };
        let text = format!(
            "no task named `{}` is registered on worker `{}`; known tasks: {known}",
            message.task_name, self.config.worker_name
        );
        tracing::error!(task_id = %message.task_id, "{text}");
        let mut result = TaskResult::err(kinds::UNKNOWN_TASK, text, 0.0);
        result.labels = self.result_labels(message.result_labels());
        self.finish_rejected(delivery, &message.task_id, result)
            .await;
    }
}

/// Lossy text of the start of a body, for logs.
fn excerpt(body: &[u8]) -> String {
    let cut = body.len().min(BODY_EXCERPT);
    let mut text = String::from_utf8_lossy(&body[..cut]).into_owned();
    if cut < body.len() {
        text.push_str(&format!("... ({} bytes)", body.len()));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;
    use stepq_results::{ErrorClass, ResultBackend, ServiceError};

    use super::super::tests::shared;
    use super::*;
    use crate::receiver::registry::Registry;

    #[test]
    fn a_short_body_is_quoted_whole_and_lossily() {
        assert_eq!(excerpt(b"{\"task_id\":"), "{\"task_id\":");
        assert_eq!(excerpt(b"ab\xffcd"), "ab\u{fffd}cd");
        assert_eq!(excerpt(&[b'x'; BODY_EXCERPT]), "x".repeat(BODY_EXCERPT));
    }

    #[test]
    fn a_long_body_is_cut_and_its_length_given() {
        let body = vec![b'x'; BODY_EXCERPT + 1];
        assert_eq!(
            excerpt(&body),
            format!(
                "{}... ({} bytes)",
                "x".repeat(BODY_EXCERPT),
                BODY_EXCERPT + 1
            )
        );
    }

    #[test]
    fn results_carry_the_message_labels_and_the_worker_name() {
        let (shared, _) = shared(Registry::default());
        let message = TaskMessage::new("t").with_label("tenant", "t1");
        let labels = shared.result_labels(message.result_labels());
        assert_eq!(labels.len(), 2);
        assert_eq!(labels["tenant"], json!("t1"));
        assert_eq!(labels[WORKER_NAME_LABEL], json!("w1"));
    }

    #[test]
    fn a_worker_name_label_on_the_message_is_kept() {
        let (shared, _) = shared(Registry::default());
        let message = TaskMessage::new("t").with_label(WORKER_NAME_LABEL, "producer-chosen");
        let labels = shared.result_labels(message.result_labels());
        assert_eq!(labels[WORKER_NAME_LABEL], json!("producer-chosen"));
    }

    /// A result backend whose every write fails with `error` (made from the key).
    struct Failing(fn(&str) -> ResultError);

    /// Every write throttled (a temporary error).
    fn throttled(_: &str) -> ResultError {
        ServiceError::new("s3", "SlowDown", "PutObject", ErrorClass::Temporary).into()
    }

    /// Every key refused for good.
    fn refused(key: &str) -> ResultError {
        ResultError::InvalidKey {
            key: key.into(),
            reason: "contains `/`",
        }
    }

    #[async_trait::async_trait]
    impl ResultBackend for Failing {
        async fn set_result(&self, task_id: &str, _: &TaskResult) -> Result<(), ResultError> {
            Err((self.0)(task_id))
        }
        async fn is_result_ready(&self, _: &str) -> Result<bool, ResultError> {
            Ok(false)
        }
        async fn get_result(&self, task_id: &str, _: bool) -> Result<TaskResult, ResultError> {
            Err(ResultError::NotFound {
                task_id: task_id.into(),
            })
        }
        async fn delete_result(&self, _: &str) -> Result<(), ResultError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_rejected_message_whose_result_can_never_be_saved_is_not_cycled() {
        let (mut shared, _) = shared(Registry::default());
        let queue = crate::TaskQueue::new(
            Arc::new(crate::InMemoryBroker::new()),
            Arc::new(Failing(refused)),
        );
        Arc::get_mut(&mut shared).expect("not shared yet").queue = queue;
        let (delivery, settled) =
            super::super::tests::delivery(r#"{"task_id": "a/b", "task_name": 7}"#);
        shared.reject_malformed(delivery, BrokerError::Closed).await;
        // No dead-letter place on the test delivery: acked (dropped, logged), never nacked.
        use std::sync::atomic::Ordering;
        assert_eq!(settled.acks.load(Ordering::SeqCst), 1);
        assert_eq!(settled.nacks.load(Ordering::SeqCst), 0);
        assert_eq!(shared.stats.snapshot().unsaved, 1);
    }

    #[tokio::test]
    async fn a_save_that_keeps_failing_is_given_up_as_persistent() {
        let (mut shared, _) = shared(Registry::default());
        let queue = crate::TaskQueue::new(
            Arc::new(crate::InMemoryBroker::new()),
            Arc::new(Failing(throttled)),
        );
        Arc::get_mut(&mut shared).expect("not shared yet").queue = queue;
        let result = TaskResult::ok(json!(1), 0.0);
        let err = shared.save("t1", &result).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Persistent, "{err}");
        assert!(!err.is_temporary());
    }
}
