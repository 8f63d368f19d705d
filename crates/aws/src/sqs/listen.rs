//! Receiving: long polls, deliveries and their acks (batched), and the release of everything a
//! stopped listener still holds.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::{ChangeMessageVisibilityBatchRequestEntry, MessageSystemAttributeName};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::broker::Inner;
use super::dead_letters::{self, RawMessage};
use super::error::{all_failed, entry_outcomes, numbered_entries, sqs_error};
use super::owned_queue;
use super::payload::{S3Pointer, EXTENDED_MESSAGE_ATTRIBUTE};
use crate::timeouts;
use stepq_broker::broker::{DeliveryStream, Demand};
use stepq_broker::delivery::{Delivery, DeliveryHandle};
use stepq_broker::error::{BrokerError, ErrorClass, ServiceError};

/// Entries per DeleteMessageBatch / ChangeMessageVisibilityBatch call (an SQS limit).
const MAX_BATCH_ENTRIES: usize = 10;
/// First wait before polling again after a failed receive; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait between failed receives.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A received message not yet handed out.
struct Received {
    receipt: String,
    body: String,
    receive_count: u32,
    extended: bool,
    received_at: Instant,
    /// SQS's message id (a dead letter's deduplication id on FIFO queues).
    message_id: String,
    /// The message group on a FIFO queue.
    group_id: Option<String>,
    /// When SQS received it from its sender (`SentTimestamp`).
    sent_at: Option<std::time::SystemTime>,
}

/// Messages one receive asks for: the configured `max_number_of_messages`, but never more than
/// the consumer can start (`demand`).
fn receive_limit(configured: u32, demand: usize) -> u32 {
    configured
        .min(u32::try_from(demand).unwrap_or(u32::MAX))
        .max(1)
}

/// Seconds one long poll waits: `wait_time_seconds` while the consumer runs nothing, but a
/// sixth of the visibility timeout (at least 1 s; 1 s at the default 6 s) while it runs
/// deliveries.
///
/// SQS cannot cancel a long poll, and a SIGKILLed worker's pending poll lives on in the queue
/// service: a message that becomes visible while such a poll waits (a killed step's message,
/// a timeout less one heartbeat period, two thirds of it, after the kill) can be taken by it
/// and hidden for another timeout with nobody to run it. Only a busy worker can be killed
/// with a step in flight: its own polls end long before its messages reappear, and the dead
/// poll of a worker killed later has only that short window to take anyone's message. An
/// idle worker keeps the full wait, so idle request rates do not change; under load a poll
/// returns with messages at once, so the short wait costs requests only while a worker is
/// busy but the queue is empty.
fn poll_wait(wait_time_seconds: u32, visibility_timeout: u32, running: usize) -> u32 {
    if running == 0 {
        wait_time_seconds
    } else {
        (visibility_timeout / 6).max(1).min(wait_time_seconds)
    }
}

/// One long poll for at most `max` messages, waiting up to `wait` seconds.
async fn receive(inner: Arc<Inner>, max: u32, wait: u32) -> Result<Vec<Received>, BrokerError> {
    let c = &inner.config.config_source;
    let out = inner
        .sqs
        .receive_message()
        .queue_url(&inner.config.queue_url)
        .max_number_of_messages(max as i32)
        .wait_time_seconds(wait as i32)
        .visibility_timeout(c.visibility_timeout as i32)
        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
        .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
        .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
        .message_attribute_names(EXTENDED_MESSAGE_ATTRIBUTE)
        .customize()
        .config_override(timeouts::sqs_long_poll(wait))
        .send()
        .await
        .map_err(|e| sqs_error("ReceiveMessage", e))?;
    let received_at = Instant::now();
    Ok(out
        .messages
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| {
            let receive_count = m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            let extended = m
                .message_attributes()
                .is_some_and(|a| a.contains_key(EXTENDED_MESSAGE_ATTRIBUTE));
            let group_id = m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                .cloned();
            // Epoch milliseconds, as SQS gives them.
            let sent_at = m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                .and_then(|v| v.parse::<u64>().ok())
                .map(|ms| std::time::UNIX_EPOCH + Duration::from_millis(ms));
            Some(Received {
                receipt: m.receipt_handle?,
                message_id: m.message_id.unwrap_or_default(),
                body: m.body.unwrap_or_default(),
                receive_count,
                extended,
                received_at,
                group_id,
                sent_at,
            })
        })
        .collect())
}

/// Makes messages visible again at once (ChangeMessageVisibilityBatch, 10 per call). Failures
/// are logged: the messages then come back after their visibility timeout instead.
async fn release(inner: &Inner, receipts: Vec<String>) {
    for chunk in receipts.chunks(MAX_BATCH_ENTRIES) {
        let entries = numbered_entries("ChangeMessageVisibilityBatch", chunk, |id, r| {
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(id)
                .receipt_handle(r)
                .visibility_timeout(0)
                .build()
        });
        let entries = match entries {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "could not build a release request");
                continue;
            }
        };
        match inner
            .sqs
            .change_message_visibility_batch()
            .queue_url(&inner.config.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(out) => {
                for f in out.failed() {
                    tracing::warn!(
                        code = f.code(),
                        message = f.message().unwrap_or(""),
                        "could not release a message; it comes back after its visibility timeout"
                    );
                }
                tracing::debug!(
                    released = out.successful().len(),
                    "released messages of a stopped listener"
                );
            }
            Err(e) => tracing::warn!(
                error = %sqs_error("ChangeMessageVisibilityBatch", e),
                count = chunk.len(),
                "could not release messages; they come back after their visibility timeout"
            ),
        }
    }
}

/// Sets a message's visibility timeout, counted from now.
async fn change_visibility(inner: &Inner, receipt: &str, seconds: i32) -> Result<(), BrokerError> {
    inner
        .sqs
        .change_message_visibility()
        .queue_url(&inner.config.queue_url)
        .receipt_handle(receipt)
        .visibility_timeout(seconds)
        .send()
        .await
        .map_err(|e| sqs_error("ChangeMessageVisibility", e))?;
    Ok(())
}

/// An ack waiting for the batcher.
struct AckRequest {
    receipt: String,
    reply: oneshot::Sender<Result<(), BrokerError>>,
}

/// Deletes acked messages: takes every ack queued at the moment (up to 10) and deletes them in
/// one call, so acks that pile up while a call is in flight share the next one. Ends when the
/// listener and all its deliveries are gone.
async fn run_ack_batcher(inner: Arc<Inner>, mut requests: mpsc::UnboundedReceiver<AckRequest>) {
    let mut batch = Vec::with_capacity(MAX_BATCH_ENTRIES);
    while requests.recv_many(&mut batch, MAX_BATCH_ENTRIES).await > 0 {
        if batch.len() == 1 {
            let request = batch.pop().expect("one ack");
            let result = delete_one(&inner, &request.receipt).await;
            let _ = request.reply.send(result);
            continue;
        }
        let receipts: Vec<String> = batch.iter().map(|r| r.receipt.clone()).collect();
        let results = match owned_queue::delete_messages(
            &inner.sqs,
            &inner.config.queue_url,
            &receipts,
        )
        .await
        {
            Ok(out) => entry_outcomes("DeleteMessageBatch", batch.len(), out.failed()),
            Err(err) => all_failed(&err, batch.len()),
        };
        for (r, result) in batch.drain(..).zip(results) {
            let _ = r.reply.send(result);
        }
    }
}

async fn delete_one(inner: &Inner, receipt: &str) -> Result<(), BrokerError> {
    inner
        .sqs
        .delete_message()
        .queue_url(&inner.config.queue_url)
        .receipt_handle(receipt)
        .send()
        .await
        .map_err(|e| sqs_error("DeleteMessage", e))?;
    Ok(())
}

/// The handle of one SQS delivery.
struct SqsDelivery {
    inner: Arc<Inner>,
    receipt: String,
    /// The message as it is on the queue (an extended payload's pointer, not its body), for
    /// the dead-letter queue.
    raw: RawMessage,
    /// The S3 object of an extended payload, deleted once the message is acked.
    pointer: Option<S3Pointer>,
    acks: mpsc::UnboundedSender<AckRequest>,
}

#[async_trait]
impl DeliveryHandle for SqsDelivery {
    async fn ack(&self) -> Result<(), BrokerError> {
        let (reply, answer) = oneshot::channel();
        let request = AckRequest {
            receipt: self.receipt.clone(),
            reply,
        };
        let result = match self.acks.send(request) {
            Ok(()) => match answer.await {
                Ok(result) => result,
                Err(_) => delete_one(&self.inner, &self.receipt).await,
            },
            Err(_) => delete_one(&self.inner, &self.receipt).await,
        };
        result?;
        if let Some(pointer) = &self.pointer {
            pointer.delete_logged(&self.inner.s3).await;
        }
        Ok(())
    }

    async fn nack(&self) -> Result<(), BrokerError> {
        change_visibility(&self.inner, &self.receipt, 0).await
    }

    async fn extend_visibility(&self, by: Duration) -> Result<(), BrokerError> {
        let seconds = by.as_secs_f64().ceil().clamp(0.0, 43_200.0) as i32;
        change_visibility(&self.inner, &self.receipt, seconds).await
    }

    /// Sends the message as it is (an extended payload's S3 object stays) to the dead-letter
    /// queue, then deletes it from the task queue.
    async fn dead_letter(&self, reason: &str, receive_count: u32) -> Result<(), BrokerError> {
        dead_letters::move_to_dead_letters(&self.inner, &self.raw, reason, receive_count).await?;
        delete_one(&self.inner, &self.receipt).await
    }
}

/// One listener: a lazy stream that long-polls only when it has nothing buffered, for no more
/// messages than its consumer can start.
struct Listener {
    inner: Arc<Inner>,
    stop: CancellationToken,
    /// How many deliveries the consumer could start now.
    demand: Demand,
    buffer: VecDeque<Received>,
    /// The long poll in flight, if any (a task, so a stopped listener can hand it over).
    poll: Option<JoinHandle<Result<Vec<Received>, BrokerError>>>,
    /// Wait before the next poll after a failed one.
    backoff: Option<Duration>,
    acks: mpsc::UnboundedSender<AckRequest>,
}

impl Listener {
    async fn next(&mut self) -> Option<Result<Delivery, BrokerError>> {
        loop {
            if self.stop.is_cancelled() {
                return None;
            }
            self.hand_back_excess();
            if let Some(message) = self.buffer.front() {
                // Popped only once handed out: if this future is dropped meanwhile (the
                // consumer stopped), the message is still released by `Drop`.
                let item = self.deliver(message).await;
                self.buffer.pop_front();
                match item {
                    Some(item) => return Some(item),
                    None => continue,
                }
            }
            if let Some(delay) = self.backoff {
                tokio::select! {
                    _ = self.stop.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            if self.stop.is_cancelled() {
                return None;
            }
            let inner = Arc::clone(&self.inner);
            let max = receive_limit(
                self.inner.config.config_source.max_number_of_messages,
                self.demand.get(),
            );
            let c = &self.inner.config.config_source;
            let wait = poll_wait(
                c.wait_time_seconds,
                c.visibility_timeout,
                self.demand.running(),
            );
            let poll = self
                .poll
                .get_or_insert_with(|| tokio::spawn(receive(inner, max, wait)));
            let outcome = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return None,
                outcome = poll => outcome,
            };
            self.poll = None;
            match outcome {
                Ok(Ok(messages)) => {
                    self.backoff = None;
                    self.buffer.extend(messages);
                }
                Ok(Err(e)) => {
                    self.backoff = Some(
                        self.backoff
                            .map_or(FIRST_BACKOFF, |b| (b * 2).min(MAX_BACKOFF)),
                    );
                    return Some(Err(e));
                }
                Err(join) => {
                    self.backoff = Some(FIRST_BACKOFF);
                    let message = format!("the ReceiveMessage task failed: {join}");
                    let error = ServiceError::new(
                        "sqs",
                        "ReceiveTaskFailed",
                        message,
                        ErrorClass::Temporary,
                    );
                    return Some(Err(error.with_source(join).into()));
                }
            }
        }
    }

    /// Makes buffered messages beyond what the consumer can start visible again at once (in
    /// the background; `shutdown` waits for it), so another worker takes them rather than
    /// finding them hidden by a busy one.
    fn hand_back_excess(&mut self) {
        let room = self.demand.get();
        if self.buffer.len() <= room {
            return;
        }
        let excess: Vec<String> = self.buffer.drain(room..).map(|m| m.receipt).collect();
        tracing::debug!(
            count = excess.len(),
            room,
            "handing back received messages this worker cannot start now"
        );
        let inner = Arc::clone(&self.inner);
        let handle = tokio::spawn(async move { release(&inner, excess).await });
        self.inner.track_drain(handle);
    }

    /// Turns a received message into a delivery: renews its visibility if it waited in the
    /// buffer for over half the timeout, skips it (`None`) if its timeout ran out (it is back
    /// in the queue, perhaps already with another worker) or the renewal fails, and fetches an
    /// extended payload from S3.
    async fn deliver(&self, message: &Received) -> Option<Result<Delivery, BrokerError>> {
        let visibility = self.inner.config.config_source.visibility_timeout;
        let timeout = Duration::from_secs(visibility.into());
        let waited = message.received_at.elapsed();
        if waited >= timeout {
            tracing::debug!(
                ?waited,
                "a buffered message outlived its visibility timeout; it is left to the queue"
            );
            return None;
        }
        if waited > timeout / 2 {
            if let Err(e) =
                change_visibility(&self.inner, &message.receipt, visibility as i32).await
            {
                tracing::debug!(
                    error = %e,
                    "a buffered message could not be kept hidden; it is left to the queue"
                );
                return None;
            }
        }
        // The body as it is on the queue: the delivery's body too unless it points to S3, and
        // what a dead letter keeps (one copy of the received text, shared).
        let raw = Bytes::from(message.body.clone());
        let mut pointer = None;
        let body = if message.extended {
            match S3Pointer::from_body(&message.body) {
                Ok(p) => match p.download(&self.inner.s3).await {
                    Ok(bytes) => {
                        pointer = Some(p);
                        bytes
                    }
                    // The message stays hidden and comes back after its visibility timeout.
                    Err(e) => return Some(Err(e)),
                },
                Err(e) => {
                    // Not a pointer: hand the raw body over, the receiver reports it malformed.
                    tracing::warn!(error = %e, "an extended-payload message has no valid pointer");
                    raw.clone()
                }
            }
        } else {
            raw.clone()
        };
        let handle = SqsDelivery {
            inner: Arc::clone(&self.inner),
            receipt: message.receipt.clone(),
            raw: RawMessage {
                body: raw,
                extended: message.extended,
                message_id: message.message_id.clone(),
                group_id: message.group_id.clone(),
            },
            pointer,
            acks: self.acks.clone(),
        };
        let delivery = Delivery::new(body, message.receive_count, Box::new(handle));
        Some(Ok(match message.sent_at {
            Some(sent_at) => delivery.with_sent_at(sent_at),
            None => delivery,
        }))
    }
}

impl Drop for Listener {
    /// Hands what the listener still holds (buffered messages, the outstanding long poll) to a
    /// background task that makes it visible again at once; `shutdown` waits for it.
    fn drop(&mut self) {
        let buffered: Vec<String> = self.buffer.drain(..).map(|m| m.receipt).collect();
        let poll = self.poll.take();
        if buffered.is_empty() && poll.is_none() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                count = buffered.len(),
                "no runtime to release a stopped listener's messages; they come back after \
                 their visibility timeout"
            );
            return;
        };
        if poll.is_some() {
            tracing::info!(
                queue = %self.inner.config.queue_url,
                wait_time_seconds = self.inner.config.config_source.wait_time_seconds,
                "waiting for the pending long poll to end (SQS cannot cancel one), so a message \
                 it brings is made visible again at once"
            );
        }
        let inner = Arc::clone(&self.inner);
        let drain = runtime.spawn(async move {
            let mut receipts = buffered;
            if let Some(poll) = poll {
                match poll.await {
                    Ok(Ok(messages)) => receipts.extend(messages.into_iter().map(|m| m.receipt)),
                    Ok(Err(e)) => tracing::debug!(error = %e, "the last long poll failed"),
                    Err(e) => tracing::debug!(error = %e, "the last long poll task failed"),
                }
            }
            if !receipts.is_empty() {
                release(&inner, receipts).await;
            }
        });
        self.inner.track_drain(drain);
    }
}

/// The delivery stream of one listener.
pub(crate) fn listen(inner: Arc<Inner>, stop: CancellationToken, demand: Demand) -> DeliveryStream {
    let (acks, requests) = mpsc::unbounded_channel();
    tokio::spawn(run_ack_batcher(Arc::clone(&inner), requests));
    let listener = Listener {
        inner,
        stop,
        demand,
        buffer: VecDeque::new(),
        poll: None,
        backoff: None,
        acks,
    };
    futures::stream::unfold(listener, |mut listener| async move {
        let item = listener.next().await?;
        Some((item, listener))
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::{poll_wait, receive_limit};

    #[test]
    fn a_busy_worker_polls_for_a_sixth_of_a_visibility_timeout() {
        // Idle: the configured wait, whatever the timeout.
        assert_eq!(poll_wait(20, 6, 0), 20);
        assert_eq!(poll_wait(20, 1, 0), 20);
        // Busy: a sixth of the timeout, at least a second, never above the configured wait.
        assert_eq!(poll_wait(20, 6, 1), 1);
        assert_eq!(poll_wait(20, 30, 4), 5);
        assert_eq!(poll_wait(20, 1, 1), 1);
        assert_eq!(poll_wait(20, 600, 1), 20);
        assert_eq!(poll_wait(0, 6, 1), 0);
        // The poll of a worker killed with a step in flight ends before that step's
        // message reappears: a timeout less one heartbeat period (a third of it) after the
        // last heartbeat, which came at most a period before the kill.
        for visibility in 2..=60 {
            assert!(
                3 * poll_wait(20, visibility, 1) < 2 * visibility,
                "{visibility}"
            );
        }
    }

    #[test]
    fn a_receive_asks_for_no_more_than_the_consumer_can_start() {
        assert_eq!(receive_limit(10, 1), 1);
        assert_eq!(receive_limit(10, 3), 3);
        assert_eq!(receive_limit(10, 25), 10);
        assert_eq!(receive_limit(4, usize::MAX), 4);
        assert_eq!(receive_limit(10, 0), 1);
    }
}
