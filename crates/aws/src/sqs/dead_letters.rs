//! The SQS broker's dead-letter queue: where the receiver moves a message that can never
//! succeed (see [`stepq_broker::dead_letter`]), and [`SqsDeadLetters`] to list, redrive and
//! purge it.
//!
//! The queue is `config_source.dead_letter_queue_url`, or by default `<task queue>-dlq` (FIFO:
//! `<name>-dlq.fifo`) beside the task queue, created (one CreateQueue, 14 days' retention) on
//! the first dead letter; a missing one lists as empty. A dead letter is the message exactly as
//! it was on the task queue — an extended payload's pointer, whose S3 object stays — with
//! message attributes saying why ([`REASON_ATTRIBUTE`]), after how many deliveries
//! ([`RECEIVE_COUNT_ATTRIBUTE`]) and, on FIFO queues, its message group
//! ([`GROUP_ATTRIBUTE`]); a redrive sends it back the same way and deletes it from the
//! dead-letter queue.
//!
//! This is stepq's own move, not SQS's RedrivePolicy (which moves a message after
//! `maxReceiveCount` receives without the worker having a say): the worker first stores the
//! task's failed result, so the orchestrator marks the step FAILED instead of waiting. A
//! RedrivePolicy on the task queue can still be set as a backstop with a higher count.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName};
use bytes::Bytes;
use stepq_broker::dead_letter::{DeadLetter, DeadLetters};
use stepq_broker::error::BrokerError;

use super::broker::Inner;
use super::error::{build_error, sqs_error};
use super::owned_queue::is_missing_queue;
use super::payload::EXTENDED_MESSAGE_ATTRIBUTE;
use crate::timeouts;

/// Message attribute of a dead letter: why it was dead-lettered.
pub const REASON_ATTRIBUTE: &str = "stepq_dead_letter_reason";
/// Message attribute of a dead letter: its deliveries then.
pub const RECEIVE_COUNT_ATTRIBUTE: &str = "stepq_dead_letter_receive_count";
/// Message attribute of a dead letter from a FIFO queue: its message group.
pub const GROUP_ATTRIBUTE: &str = "stepq_dead_letter_group_id";
/// Longest reason kept (SQS attributes count against the 256 KiB message limit).
const MAX_REASON_BYTES: usize = 4096;
/// How long a dead letter is kept: SQS's maximum, 14 days.
const RETENTION_SECONDS: &str = "1209600";
/// How long a listing or redrive holds the dead letters it looks at (they are made visible
/// again as soon as it is done).
const HOLD_SECONDS: i32 = 60;
/// Receives that bring nothing after which a listing or redrive has seen the whole queue.
const EMPTY_ROUNDS: u32 = 2;
/// Most dead letters one redrive of all looks at.
const MAX_REDRIVE: usize = 10_000;

/// What the dead-letter queue needs of a received message.
#[derive(Debug, Clone)]
pub(super) struct RawMessage {
    /// The body as it is on the queue (SQS bodies are text).
    pub(super) body: Bytes,
    /// Whether it is an extended payload's pointer.
    pub(super) extended: bool,
    /// SQS's message id.
    pub(super) message_id: String,
    /// Its message group on a FIFO queue.
    pub(super) group_id: Option<String>,
}

/// The dead-letter queue URL of `inner`'s task queue: the configured one, or `<name>-dlq`
/// (`<name>-dlq.fifo`) beside it.
pub(super) fn dead_letter_queue_url(inner: &Inner) -> String {
    if let Some(url) = &inner.config.config_source.dead_letter_queue_url {
        return url.clone();
    }
    super::sibling_queue_url(&inner.config.queue_url, "dlq")
}

/// The dead-letter queue's URL, creating the default one if it does not exist yet.
async fn ensure_queue(inner: &Inner) -> Result<String, BrokerError> {
    let url = dead_letter_queue_url(inner);
    if inner.config.config_source.dead_letter_queue_url.is_some() {
        return Ok(url);
    }
    if let Some(known) = inner.dead_letter_queue.get() {
        return Ok(known.clone());
    }
    let name = url.rsplit('/').next().unwrap_or_default().to_string();
    // An existing queue (made by hand or by Terraform, perhaps with other attributes) is
    // used as it is: CreateQueue would refuse different attributes.
    match inner.sqs.get_queue_url().queue_name(&name).send().await {
        Ok(out) => {
            let existing = out.queue_url.unwrap_or(url);
            let _ = inner.dead_letter_queue.set(existing.clone());
            return Ok(existing);
        }
        Err(e) => match sqs_error("GetQueueUrl", e) {
            BrokerError::Service(e) if is_missing_queue(&e) => {}
            other => return Err(other),
        },
    }
    let mut create = inner.sqs.create_queue().queue_name(&name).attributes(
        QueueAttributeName::MessageRetentionPeriod,
        RETENTION_SECONDS,
    );
    if name.ends_with(".fifo") {
        create = create.attributes(QueueAttributeName::FifoQueue, "true");
    }
    let out = create
        .send()
        .await
        .map_err(|e| sqs_error("CreateQueue", e))?;
    let created = out.queue_url.unwrap_or(url);
    tracing::info!(queue = %created, "created the dead-letter queue");
    let _ = inner.dead_letter_queue.set(created.clone());
    Ok(created)
}

fn string_attribute(value: &str) -> Result<MessageAttributeValue, BrokerError> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(|e| build_error("SendMessage", e).into())
}

/// Sends `message` to the dead-letter queue with `reason` and `receive_count` (the caller
/// deletes it from the task queue after).
pub(super) async fn move_to_dead_letters(
    inner: &Inner,
    message: &RawMessage,
    reason: &str,
    receive_count: u32,
) -> Result<(), BrokerError> {
    let queue = ensure_queue(inner).await?;
    let mut cut = reason.len().min(MAX_REASON_BYTES);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut send = inner
        .sqs
        .send_message()
        .queue_url(&queue)
        .message_body(String::from_utf8_lossy(&message.body))
        .message_attributes(REASON_ATTRIBUTE, string_attribute(&reason[..cut])?)
        .message_attributes(
            RECEIVE_COUNT_ATTRIBUTE,
            MessageAttributeValue::builder()
                .data_type("Number")
                .string_value(receive_count.to_string())
                .build()
                .map_err(|e| BrokerError::from(build_error("SendMessage", e)))?,
        );
    if message.extended {
        send = send.message_attributes(EXTENDED_MESSAGE_ATTRIBUTE, string_attribute("true")?);
    }
    if queue.ends_with(".fifo") {
        if let Some(group) = &message.group_id {
            send = send.message_attributes(GROUP_ATTRIBUTE, string_attribute(group)?);
        }
        // A group per letter, so a listing is not held up behind one group's head.
        send = send
            .message_group_id(&message.message_id)
            .message_deduplication_id(&message.message_id);
    }
    send.send().await.map_err(|e| sqs_error("SendMessage", e))?;
    Ok(())
}

/// The SQS broker's dead letters (see the [module docs](self)).
pub struct SqsDeadLetters {
    inner: Arc<Inner>,
}

impl SqsDeadLetters {
    pub(super) fn new(inner: Arc<Inner>) -> Self {
        SqsDeadLetters { inner }
    }

    /// The dead-letter queue's URL (it may not exist yet).
    pub fn queue_url(&self) -> String {
        dead_letter_queue_url(&self.inner)
    }

    /// Up to ten dead letters, hidden for `visibility` seconds; `None` if the queue does not
    /// exist.
    async fn receive(
        &self,
        visibility: i32,
    ) -> Result<Option<Vec<aws_sdk_sqs::types::Message>>, BrokerError> {
        let out = self
            .inner
            .sqs
            .receive_message()
            .queue_url(self.queue_url())
            .max_number_of_messages(10)
            // A short long poll asks every SQS server, where a wait of 0 samples some.
            .wait_time_seconds(1)
            .visibility_timeout(visibility)
            .message_attribute_names("All")
            .customize()
            .config_override(timeouts::sqs_long_poll(1))
            .send()
            .await;
        match out.map_err(|e| sqs_error("ReceiveMessage", e)) {
            Ok(out) => Ok(Some(out.messages.unwrap_or_default())),
            Err(BrokerError::Service(e)) if is_missing_queue(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A received dead letter as [`DeadLetter`].
fn letter(message: &aws_sdk_sqs::types::Message) -> DeadLetter {
    let attribute = |name: &str| {
        message
            .message_attributes()
            .and_then(|a| a.get(name))
            .and_then(|v| v.string_value())
    };
    DeadLetter {
        id: message.message_id().unwrap_or_default().to_string(),
        body: Bytes::from(message.body().unwrap_or_default().to_string()),
        reason: attribute(REASON_ATTRIBUTE).unwrap_or_default().to_string(),
        receive_count: attribute(RECEIVE_COUNT_ATTRIBUTE)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
    }
}

#[async_trait]
impl DeadLetters for SqsDeadLetters {
    /// Holds up to `limit` letters for a moment (a receive that hides them), then makes them
    /// visible again: each listed once, none taken.
    async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        let held = self.hold(limit).await?;
        let listed = held.iter().map(letter).collect();
        self.release(&held).await;
        Ok(listed)
    }

    /// Holds the letters first (all of them with `None`, up to 10,000), then moves the ones
    /// asked for and releases the rest: a letter dead-lettered again meanwhile is a new
    /// message, not among those held, so nothing moves twice.
    async fn redrive(&self, ids: Option<&[String]>) -> Result<usize, BrokerError> {
        let held = self.hold(MAX_REDRIVE).await?;
        let (asked, others): (Vec<_>, Vec<_>) = held.into_iter().partition(|m| {
            let id = m.message_id().unwrap_or_default();
            ids.is_none_or(|ids| ids.iter().any(|i| i == id))
        });
        self.release(&others).await;
        let mut moved = 0;
        for (n, m) in asked.iter().enumerate() {
            let sent = self.send_back(m).await.and(
                self.inner
                    .sqs
                    .delete_message()
                    .queue_url(self.queue_url())
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| sqs_error("DeleteMessage", e)),
            );
            if let Err(e) = sent {
                self.release(&asked[n..]).await;
                return Err(e);
            }
            moved += 1;
        }
        Ok(moved)
    }

    async fn purge(&self) -> Result<usize, BrokerError> {
        let Some(count) = self.approximate_count().await? else {
            return Ok(0);
        };
        self.inner
            .sqs
            .purge_queue()
            .queue_url(self.queue_url())
            .send()
            .await
            .map_err(|e| sqs_error("PurgeQueue", e))?;
        Ok(count)
    }
}

impl SqsDeadLetters {
    /// Receives (and so hides for [`HOLD_SECONDS`]) up to `limit` dead letters, until
    /// receives bring nothing more.
    async fn hold(&self, limit: usize) -> Result<Vec<aws_sdk_sqs::types::Message>, BrokerError> {
        let mut held = Vec::new();
        let mut empty = 0;
        while held.len() < limit && empty < EMPTY_ROUNDS {
            let Some(messages) = self.receive(HOLD_SECONDS).await? else {
                break;
            };
            if messages.is_empty() {
                empty += 1;
            }
            held.extend(messages);
        }
        if held.len() > limit {
            let extra = held.split_off(limit);
            self.release(&extra).await;
        }
        Ok(held)
    }

    /// Makes held letters visible again at once; a failure leaves them hidden until their
    /// hold ends (logged).
    async fn release(&self, held: &[aws_sdk_sqs::types::Message]) {
        for m in held {
            let released = self
                .inner
                .sqs
                .change_message_visibility()
                .queue_url(self.queue_url())
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .visibility_timeout(0)
                .send()
                .await;
            if let Err(e) = released {
                tracing::warn!(error = %sqs_error("ChangeMessageVisibility", e), "a dead letter stays hidden until its hold ends");
            }
        }
    }

    /// Dead letters in the queue, visible or not (SQS's approximate counts); `None` if the queue does
    /// not exist.
    async fn approximate_count(&self) -> Result<Option<usize>, BrokerError> {
        let attributes = self
            .inner
            .sqs
            .get_queue_attributes()
            .queue_url(self.queue_url())
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await;
        let attributes = match attributes.map_err(|e| sqs_error("GetQueueAttributes", e)) {
            Ok(out) => out.attributes.unwrap_or_default(),
            Err(BrokerError::Service(e)) if is_missing_queue(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(
            [
                QueueAttributeName::ApproximateNumberOfMessages,
                QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            ]
            .iter()
            .filter_map(|k| attributes.get(k)?.parse::<usize>().ok())
            .sum(),
        ))
    }

    /// Sends a dead letter back to the task queue as it was.
    async fn send_back(&self, m: &aws_sdk_sqs::types::Message) -> Result<(), BrokerError> {
        let attributes = m.message_attributes();
        let mut send = self
            .inner
            .sqs
            .send_message()
            .queue_url(&self.inner.config.queue_url)
            .message_body(m.body().unwrap_or_default());
        if let Some(extended) = attributes.and_then(|a| a.get(EXTENDED_MESSAGE_ATTRIBUTE)) {
            send = send.message_attributes(EXTENDED_MESSAGE_ATTRIBUTE, extended.clone());
        }
        if self.inner.config.is_fifo() {
            let group = attributes
                .and_then(|a| a.get(GROUP_ATTRIBUTE))
                .and_then(|v| v.string_value())
                .unwrap_or("stepq-redriven");
            send = send
                .message_group_id(group)
                .message_deduplication_id(uuid::Uuid::new_v4().simple().to_string());
        }
        send.send().await.map_err(|e| sqs_error("SendMessage", e))?;
        Ok(())
    }
}
