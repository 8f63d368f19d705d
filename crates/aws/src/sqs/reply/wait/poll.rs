//! The orchestrator half: the reply queue's poller — long-polls the queue, hands each
//! notification to the dispatch (waking its waiter), deletes received notifications ten at a
//! time, re-tags the queue as alive, and closes the dispatch if the queue disappears.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::dispatch::{Delivered, Reply};
use super::queue::{bump, Shared};
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
/// Receives notifications until stopped, hands them to the dispatch, deletes them in full
/// batches of ten in the background (so a long-lived orchestrator stays far below SQS's
/// 120,000 in-flight messages; fewer than ten stay in flight, hidden for 12 h, until the queue
/// is deleted), and re-tags the queue as alive now and then. If the queue disappears, every
/// waiter falls back to the durable backend.
pub(super) async fn poll(shared: Arc<Shared>, url: String, stop: CancellationToken) {
    let created = Instant::now();
    let mut heartbeat_at = created + shared.options.alive_heartbeat;
    let mut backoff = FIRST_BACKOFF;
    let mut receipts: Vec<String> = Vec::new();
    loop {
        if Instant::now() >= heartbeat_at {
            heartbeat_at = Instant::now() + shared.options.alive_heartbeat;
            tokio::spawn(tag_alive(shared.sqs.clone(), url.clone()));
        }
        let received = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            received = receive(&shared, &url) => received,
        };
        match received {
            Ok(messages) => {
                backoff = FIRST_BACKOFF;
                for (receipt, body) in messages {
                    deliver(&shared, &body);
                    receipts.push(receipt);
                }
                while receipts.len() >= DELETE_BATCH {
                    let batch: Vec<String> = receipts.drain(..DELETE_BATCH).collect();
                    tokio::spawn(delete_batch(Arc::clone(&shared), url.clone(), batch));
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
                tracing::warn!(reply_queue = %url, error = %e, retry_in = ?backoff, "receiving result notifications failed");
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

async fn receive(shared: &Shared, url: &str) -> Result<Vec<(String, String)>, ServiceError> {
    bump(&shared.counters.receive_calls, 1);
    owned_queue::receive(&shared.sqs, url, shared.options.wait_time_seconds).await
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

async fn delete_batch(shared: Arc<Shared>, url: String, receipts: Vec<String>) {
    match owned_queue::delete_messages(&shared.sqs, &url, &receipts).await {
        Ok(out) => bump(&shared.counters.deleted, out.successful().len() as u64),
        // They stay hidden for 12 h and go with the queue: only logged.
        Err(e) => tracing::debug!(error = %e, "could not delete notifications"),
    }
}

async fn tag_alive(sqs: aws_sdk_sqs::Client, url: String) {
    if let Err(e) = owned_queue::tag_alive(&sqs, &url).await {
        tracing::warn!(reply_queue = %url, error = %e, "could not re-tag the reply queue as alive");
    }
}
