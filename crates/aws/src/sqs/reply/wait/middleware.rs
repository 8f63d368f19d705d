//! The orchestrator half: [`ReplyToMiddleware`], which gives every message sent the reply
//! queue's address (creating the queue on the first send) and notes its task as expecting a
//! reply.

use async_trait::async_trait;
use stepq_broker::message::TaskMessage;
use stepq_broker::middleware::{Middleware, MiddlewareError};

use super::queue::ReplyQueue;
use crate::sqs::reply::{REPLY_ONLY_LABEL, REPLY_TO_LABEL};

/// Gives every sent message the reply queue's address (label [`REPLY_TO_LABEL`], replacing
/// any), creating the queue on the first send. If the queue cannot be created the message is
/// sent without an address (the failure is logged; its result is then read from the durable
/// backend), so a missing permission never stops a run.
#[derive(Debug, Clone)]
pub struct ReplyToMiddleware {
    replies: ReplyQueue,
    reply_only: bool,
}

impl ReplyToMiddleware {
    /// Labels messages with `replies`' address.
    pub fn new(replies: ReplyQueue) -> Self {
        ReplyToMiddleware {
            replies,
            reply_only: false,
        }
    }

    /// With `true`, also labels messages [`REPLY_ONLY_LABEL`]` = "true"`: a worker whose
    /// result fits in the notification sends it there only, without the durable copy (two
    /// requests fewer per task: the worker's PutObject and the orchestrator's DeleteObject).
    /// The result then lives in the reply queue (SQS keeps it durably) and this process's
    /// memory; it is lost if the reply queue is deleted while the notification is on its way.
    /// Default `false`.
    pub fn with_reply_only(mut self, reply_only: bool) -> Self {
        self.reply_only = reply_only;
        self
    }

    /// Whether messages ask for [`REPLY_ONLY_LABEL`].
    pub fn is_reply_only(&self) -> bool {
        self.reply_only
    }

    /// The reply queue.
    pub fn reply_queue(&self) -> &ReplyQueue {
        &self.replies
    }
}

#[async_trait]
impl Middleware for ReplyToMiddleware {
    fn name(&self) -> &str {
        "reply_to"
    }

    async fn pre_send(&self, mut message: TaskMessage) -> Result<TaskMessage, MiddlewareError> {
        message.labels.remove(REPLY_ONLY_LABEL);
        message.labels_types.remove(REPLY_ONLY_LABEL);
        if message.labels.contains_key(stepq_broker::NO_REPLY_LABEL) {
            // Nobody waits for this one: no reply queue is made for it.
            message.labels.remove(REPLY_TO_LABEL);
            message.labels_types.remove(REPLY_TO_LABEL);
            return Ok(message);
        }
        Ok(match self.replies.address_for(&message.task_id).await {
            Some(url) if self.reply_only => message
                .with_label(REPLY_TO_LABEL, url)
                .with_label(REPLY_ONLY_LABEL, "true"),
            Some(url) => message.with_label(REPLY_TO_LABEL, url),
            None => message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqs::reply::wait::tests::unreachable_client;
    use stepq_broker::error::BrokerError;

    #[tokio::test]
    async fn an_unreachable_service_sends_without_an_address_and_tries_again() {
        let replies = ReplyQueue::new(unreachable_client(), "tasks");
        let err = replies.start().await.unwrap_err();
        assert!(err.is_temporary(), "{err}");
        let middleware = ReplyToMiddleware::new(replies.clone());
        let m = TaskMessage::new("t");
        let sent = middleware.pre_send(m.clone()).await.unwrap();
        assert_eq!(sent, m, "no label without a reply queue");
        assert!(replies.url().is_none());
        assert!(!replies.is_running());
        // A temporary failure is tried again (and fails again here).
        assert!(replies.start().await.unwrap_err().is_temporary());
        // Nothing was expected, so waits go to the durable backend.
        assert!(matches!(
            replies.dispatch().register(&m.task_id),
            super::super::dispatch::Claim::NotExpected
        ));
    }

    #[tokio::test]
    async fn after_shutdown_nothing_is_created() {
        let replies = ReplyQueue::new(unreachable_client(), "tasks");
        replies.shutdown().await.unwrap();
        replies.shutdown().await.unwrap();
        assert!(matches!(replies.start().await, Err(BrokerError::Closed)));
        let middleware = ReplyToMiddleware::new(replies).with_reply_only(true);
        assert!(middleware.is_reply_only());
        let m = TaskMessage::new("t");
        assert_eq!(middleware.pre_send(m.clone()).await.unwrap(), m);
        assert_eq!(middleware.name(), "reply_to");
        // A reply-only request without a reply address would be meaningless: it is dropped.
        let labelled = m.clone().with_label(REPLY_ONLY_LABEL, "true");
        assert_eq!(middleware.pre_send(labelled).await.unwrap(), m);
    }
}
