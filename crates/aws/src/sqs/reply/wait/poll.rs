//! The orchestrator half: the reply queue's poller — long-polls the queue, hands each
//! notification to the dispatch (waking its waiter), deletes received notifications ten at a
//! time (or sooner, before they could become visible again), re-tags the queue as alive, and
//! closes the dispatch if the queue disappears.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::dispatch::{Delivered, Reply};
use super::queue::{bump, Shared, REPLY_VISIBILITY_TIMEOUT};
use crate::sqs::owned_queue::{self, is_missing_queue};
use crate::sqs::reply::wire;
use stepq_broker::error::ServiceError;

/// Notifications deleted per DeleteMessageBatch call.
const DELETE_BATCH: usize = 10;
/// First wait after a failed receive; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A queue younger than this that "does not exist" is waited for (AWS may take a moment to
/// show a new queue), not given up.
const NEW_QUEUE_SETTLE: Duration = Duration::from_secs(10);
/// Room left between deleting a notification and its visibility running out.
const DELETE_MARGIN: Duration = Duration::from_secs(5);

/// Receives notifications until stopped, hands them to the dispatch, deletes them in the
/// background in batches of ten, or all that are held before a long poll that could keep them
/// past their visibility timeout ([`must_delete_before_polling`]), and re-tags the queue as
/// alive now and then. If the queue disappears, every waiter falls back to the durable
/// backend.
pub(super) async fn poll(shared: Arc<Shared>, url: String, stop: CancellationToken) {
    let created = Instant::now();
    let mut heartbeat_at = created + shared.options.alive_heartbeat;
    let mut backoff = FIRST_BACKOFF;
    let mut receipts: Vec<String> = Vec::new();
    // When the oldest receipt held was received.
    let mut oldest: Option<Instant> = None;
    let mut failing = stepq_core::FailureLog::new("receiving result notifications");
    loop {
        let wait = poll_wait(&shared);
        let poll_for = Duration::from_secs(wait.into());
        if let Some(at) = oldest {
            if must_delete_before_polling(at.elapsed(), poll_for) {
                delete_in_background(&shared, &url, receipts.drain(..));
                oldest = None;
            }
        }
        if Instant::now() >= heartbeat_at {
            heartbeat_at = Instant::now() + shared.options.alive_heartbeat;
            tokio::spawn(tag_alive(shared.sqs.clone(), url.clone()));
        }
        let received = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            received = receive(&shared, &url, wait) => received,
        };
        match received {
            Ok(messages) => {
                backoff = FIRST_BACKOFF;
                failing.succeeded();
                if oldest.is_none() && !messages.is_empty() {
                    oldest = Some(Instant::now());
                }
                for (receipt, body) in messages {
                    deliver(&shared, &body);
                    receipts.push(receipt);
                }
                let full = receipts.len() - receipts.len() % DELETE_BATCH;
                delete_in_background(&shared, &url, receipts.drain(..full));
                if receipts.is_empty() {
                    oldest = None;
                }
            }
            Err(e) if is_missing_queue(&e) && created.elapsed() > NEW_QUEUE_SETTLE => {
                tracing::error!(
                    reply_queue = %url,
                    error = %e,
                    "the reply queue was deleted; results are read from the result backend from now on"
                );
                shared.counters.lost.store(true, Ordering::Relaxed);
                shared.dispatch.close();
                return;
            }
            Err(e) => {
                bump(&shared.counters.receive_errors, 1);
                failing.failed(&format_args!("{url}: {e}"));
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Whether receipts held for `held` must be deleted before a long poll of `poll_for`: the
/// poll could return after their visibility timeout (less [`DELETE_MARGIN`]) ran out, and
/// they would be delivered again.
fn must_delete_before_polling(held: Duration, poll_for: Duration) -> bool {
    held + poll_for + DELETE_MARGIN >= REPLY_VISIBILITY_TIMEOUT
}

/// The next long poll's wait: short while a result is awaited (see
/// [`ReplyQueueOptions::busy_wait_time_seconds`](super::ReplyQueueOptions)), long when idle.
fn poll_wait(shared: &Shared) -> u32 {
    if shared.dispatch.awaits_any() {
        shared.options.busy_wait_time_seconds
    } else {
        shared.options.wait_time_seconds
    }
}

async fn receive(
    shared: &Shared,
    url: &str,
    wait: u32,
) -> Result<Vec<(String, String)>, ServiceError> {
    bump(&shared.counters.receive_calls, 1);
    owned_queue::receive(&shared.sqs, url, wait).await
}

/// Hands one message to the dispatch.
fn deliver(shared: &Shared, body: &str) {
    match wire::decode(body) {
        Ok(n) => {
            let reply = match (n.result, n.stored) {
                (Some(result), true) => Reply::Inline(result),
                (Some(result), false) => Reply::Only(result),
                (None, _) => Reply::Stored,
            };
            match shared.dispatch.deliver(&n.task_id, reply, body.len()) {
                Delivered::Woken | Delivered::Kept => bump(&shared.counters.notifications, 1),
                Delivered::Unexpected => {
                    bump(&shared.counters.unexpected, 1);
                    tracing::debug!(task_id = %n.task_id, "a result notification nobody here expects");
                }
            }
        }
        Err(reason) => {
            bump(&shared.counters.malformed, 1);
            let excerpt: String = body.chars().take(200).collect();
            tracing::warn!(%reason, body = %excerpt, "dropping a malformed message from the reply queue");
        }
    }
}

/// Deletes `receipts` in DeleteMessageBatch calls of up to [`DELETE_BATCH`], in the
/// background.
fn delete_in_background(shared: &Arc<Shared>, url: &str, receipts: impl Iterator<Item = String>) {
    let receipts: Vec<String> = receipts.collect();
    for batch in receipts.chunks(DELETE_BATCH) {
        tokio::spawn(delete_batch(
            Arc::clone(shared),
            url.to_string(),
            batch.to_vec(),
        ));
    }
}

async fn delete_batch(shared: Arc<Shared>, url: String, receipts: Vec<String>) {
    match owned_queue::delete_messages(&shared.sqs, &url, &receipts).await {
        Ok(out) => bump(&shared.counters.deleted, out.successful().len() as u64),
        // They come back after the visibility timeout; the dispatch drops a notification of a
        // task already settled, and the next receive deletes it again: only logged.
        Err(e) => tracing::debug!(error = %e, "could not delete notifications"),
    }
}

async fn tag_alive(sqs: aws_sdk_sqs::Client, url: String) {
    if let Err(e) = owned_queue::tag_alive(&sqs, &url).await {
        tracing::warn!(reply_queue = %url, error = %e, "could not re-tag the reply queue as alive");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_are_deleted_before_a_poll_could_outlast_their_visibility() {
        let poll = Duration::from_secs(20);
        assert!(!must_delete_before_polling(Duration::ZERO, poll));
        assert!(!must_delete_before_polling(Duration::from_secs(4), poll));
        assert!(must_delete_before_polling(Duration::from_secs(5), poll));
        // A short poll lets receipts wait longer for a full batch.
        assert!(!must_delete_before_polling(
            Duration::from_secs(20),
            Duration::from_secs(1)
        ));
        assert!(must_delete_before_polling(
            Duration::from_secs(24),
            Duration::from_secs(1)
        ));
    }
}
