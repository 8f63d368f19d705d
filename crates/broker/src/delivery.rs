//! A delivered message and its acknowledgement handle.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::BrokerError;
use crate::message::TaskMessage;

/// Transport-specific acknowledgement of one delivery.
#[async_trait]
pub trait DeliveryHandle: Send + Sync + 'static {
    /// The message is done: delete it.
    async fn ack(&self) -> Result<(), BrokerError>;
    /// Return the message to the queue, visible at once.
    async fn nack(&self) -> Result<(), BrokerError>;
    /// Keep the message invisible for `by` more, counted from now (a heartbeat).
    async fn extend_visibility(&self, by: Duration) -> Result<(), BrokerError>;
    /// Move the message to the broker's dead-letter place with `reason` (and the delivery's
    /// `receive_count`), removing it from the queue. The default: the broker has none
    /// ([`BrokerError::NoDeadLetters`]; the caller keeps the message or acks it knowingly).
    async fn dead_letter(&self, reason: &str, receive_count: u32) -> Result<(), BrokerError> {
        let _ = (reason, receive_count);
        Err(BrokerError::NoDeadLetters)
    }
}

/// One delivery of a message: the raw body (it may not even decode) and its handle.
pub struct Delivery {
    body: Bytes,
    receive_count: u32,
    sent_at: Option<SystemTime>,
    handle: Box<dyn DeliveryHandle>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("bytes", &self.body.len())
            .field("receive_count", &self.receive_count)
            .finish()
    }
}

impl Delivery {
    /// A delivery of `body`, received `receive_count` times so far (1 on first delivery).
    pub fn new(body: Bytes, receive_count: u32, handle: Box<dyn DeliveryHandle>) -> Self {
        Delivery {
            body,
            receive_count,
            sent_at: None,
            handle,
        }
    }

    /// This delivery, whose message was first sent at `sent_at` (by the broker's clock).
    pub fn with_sent_at(mut self, sent_at: SystemTime) -> Self {
        self.sent_at = Some(sent_at);
        self
    }

    /// When the message was sent, if the broker says.
    pub fn sent_at(&self) -> Option<SystemTime> {
        self.sent_at
    }

    /// How long the message waited between being sent and this delivery (0 if clocks
    /// disagree), if the broker says when it was sent.
    pub fn queue_wait(&self) -> Option<Duration> {
        self.sent_at
            .map(|sent| SystemTime::now().duration_since(sent).unwrap_or_default())
    }

    /// The raw body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// How many times this message has been delivered, this delivery included.
    pub fn receive_count(&self) -> u32 {
        self.receive_count
    }

    /// Decodes the body as a [`TaskMessage`].
    pub fn message(&self) -> Result<TaskMessage, BrokerError> {
        TaskMessage::from_json(&self.body)
    }

    /// Acknowledges: the message is done and will not be delivered again.
    pub async fn ack(self) -> Result<(), BrokerError> {
        self.handle.ack().await
    }

    /// Returns the message to the queue, visible again at once.
    pub async fn nack(self) -> Result<(), BrokerError> {
        self.handle.nack().await
    }

    /// Keeps the message invisible for `by` more (heartbeat of a long task).
    pub async fn extend_visibility(&self, by: Duration) -> Result<(), BrokerError> {
        self.handle.extend_visibility(by).await
    }

    /// Moves the message to the broker's dead-letter place with `reason` (see
    /// [`DeliveryHandle::dead_letter`]).
    pub async fn dead_letter(&self, reason: &str) -> Result<(), BrokerError> {
        self.handle.dead_letter(reason, self.receive_count).await
    }
}
