//! Dead letters: messages that can never succeed — delivered more often than the receiver's
//! `max_receive_count` without finishing (their worker died or was stopped every time),
//! malformed bodies, task names no worker knows — are moved by the receiver to their
//! broker's dead-letter place ([`Delivery::dead_letter`](crate::Delivery::dead_letter))
//! instead of being dropped or delivered forever. A person lists them with their reason,
//! moves them back to the task queue once the cause is fixed, or purges them
//! ([`DeadLetters`]; `stepq dlq` on the command line).
//!
//! The in-memory broker keeps them in memory (for as long as the broker lives); the SQS broker
//! sends them to a dead-letter queue beside the task queue.

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::BrokerError;
use crate::message::TaskMessage;

/// Delivered more than this many times without finishing, a message is dead-lettered
/// (`ReceiverConfig::max_receive_count`'s default).
pub const DEFAULT_MAX_RECEIVE_COUNT: u32 = 10;

/// A dead-lettered message, as [`DeadLetters::list`] shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The broker's id of the dead letter (what [`DeadLetters::redrive`] takes).
    pub id: String,
    /// The message body as it was on the task queue.
    pub body: Bytes,
    /// Why it was dead-lettered.
    pub reason: String,
    /// How many times it had been delivered then.
    pub receive_count: u32,
}

impl DeadLetter {
    /// The task message, if the body is one.
    pub fn message(&self) -> Option<TaskMessage> {
        TaskMessage::from_json(&self.body).ok()
    }
}

/// A broker's dead-letter place: list, move back, purge.
#[async_trait]
pub trait DeadLetters: Send + Sync {
    /// Up to `limit` dead letters, oldest first where the broker knows the order. On SQS the
    /// listing holds them for a moment (a receive that hides them) and then makes them visible
    /// again; none is taken.
    async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError>;

    /// Moves the dead letters with these ids back to the task queue, as they were; returns how
    /// many moved. With `None`, those there when it starts (on SQS up to 10,000, all held
    /// before any moves), so a message dead-lettered again at once is not moved twice.
    async fn redrive(&self, ids: Option<&[String]>) -> Result<usize, BrokerError>;

    /// Deletes every dead letter; returns how many there were (approximately, on SQS).
    async fn purge(&self) -> Result<usize, BrokerError>;
}
