//! One inbox subscription: creating the worker's inbox, its receive loop (handing notices on
//! and deleting them), recreating it when it disappears, the periodic resync and the
//! `stepq:alive-at` heartbeat tag, and deleting it when the subscription stops.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use bytes::Bytes;
use stepq_broker::ServiceError;
use stepq_cancel::channel::ChannelEvent;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Inner, INBOX_ROLE, SUBSCRIBER_TAG};
use crate::sqs::owned_queue::{self, is_missing_queue, sanitize};

/// First wait after a failed receive; doubles up to 10 s.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A queue younger than this that "does not exist" is waited for, not recreated.
const NEW_QUEUE_SETTLE: Duration = Duration::from_secs(10);
/// How long a received notice stays hidden in an inbox; one not deleted comes back after it.
const INBOX_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(30);

impl Inner {
    /// Creates an inbox named `name` for `subscriber` (one CreateQueue), tagged with its role
    /// and subscriber; returns its URL.
    pub(super) async fn create_inbox(
        &self,
        name: &str,
        subscriber: &str,
    ) -> Result<String, ServiceError> {
        let o = &self.options;
        owned_queue::create(
            &self.client,
            name,
            INBOX_ROLE,
            [
                (
                    QueueAttributeName::MessageRetentionPeriod,
                    o.inbox_retention.as_secs().to_string(),
                ),
                (
                    QueueAttributeName::ReceiveMessageWaitTimeSeconds,
                    o.wait_time_seconds.to_string(),
                ),
                (
                    QueueAttributeName::VisibilityTimeout,
                    INBOX_VISIBILITY_TIMEOUT.as_secs().to_string(),
                ),
            ],
            [(SUBSCRIBER_TAG, sanitize(subscriber))],
        )
        .await
    }
}

/// One subscription: receives from its inbox until stopped, then deletes it.
pub(super) struct Inbox {
    /// The channel it belongs to.
    pub(super) inner: Arc<Inner>,
    /// The worker listening.
    pub(super) subscriber: String,
    /// The inbox's URL (a new one after a recreate).
    pub(super) url: String,
    /// Where notices and resyncs go.
    pub(super) tx: mpsc::Sender<ChannelEvent>,
    /// Stops the subscription.
    pub(super) stop: CancellationToken,
}

impl Inbox {
    /// The receive loop; deletes the inbox when stopped or when the stream's reader is gone.
    pub(super) async fn run(mut self) {
        let pruner = {
            let inner = Arc::clone(&self.inner);
            let own = self.url.clone();
            tokio::spawn(async move { inner.prune_stale_inboxes(&own).await })
        };
        let started = Instant::now();
        let mut created = started;
        let mut resync_at = self.inner.options.resync_after.map(|d| started + d);
        let mut heartbeat_at = started + self.inner.options.inbox_heartbeat;
        let mut backoff = FIRST_BACKOFF;
        let mut failing = stepq_core::FailureLog::new("receiving cancels");
        loop {
            let received = tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                _ = self.tx.closed() => break,
                received = self.receive() => received,
            };
            match received {
                Ok(messages) => {
                    backoff = FIRST_BACKOFF;
                    failing.succeeded();
                    if !self.deliver(messages).await {
                        break;
                    }
                }
                Err(e) if is_missing_queue(&e) && created.elapsed() < NEW_QUEUE_SETTLE => {
                    // A queue may not answer for a moment after it is created.
                    tracing::debug!(inbox = %self.url, error = %e, "the new cancel inbox does not answer yet");
                    if self.pause(&mut backoff).await {
                        break;
                    }
                }
                Err(e) if is_missing_queue(&e) => {
                    tracing::warn!(inbox = %self.url, "the cancel inbox disappeared; creating a new one");
                    if self.recreate().await.is_ok() {
                        created = Instant::now();
                    } else if self.pause(&mut backoff).await {
                        break;
                    }
                }
                Err(e) => {
                    failing.failed(&format_args!("{}: {e}", self.url));
                    if self.pause(&mut backoff).await {
                        break;
                    }
                }
            }
            let now = Instant::now();
            if resync_at.is_some_and(|at| now >= at) {
                resync_at = None;
                let event = ChannelEvent::Resync {
                    reason: "the settle window after creating the inbox ended".into(),
                };
                if self.tx.send(event).await.is_err() {
                    break;
                }
            }
            if now >= heartbeat_at {
                heartbeat_at = now + self.inner.options.inbox_heartbeat;
                self.heartbeat().await;
            }
        }
        pruner.abort();
        match owned_queue::delete(&self.inner.client, &self.url).await {
            Ok(()) => tracing::info!(inbox = %self.url, "deleted the cancel inbox"),
            Err(e) => tracing::warn!(
                inbox = %self.url,
                error = %e,
                "could not delete the cancel inbox; the next worker to start prunes it once stale"
            ),
        }
    }

    /// Sleeps `backoff` (doubling it); true if stopped meanwhile.
    async fn pause(&self, backoff: &mut Duration) -> bool {
        let stopped = tokio::select! {
            biased;
            _ = self.stop.cancelled() => true,
            _ = tokio::time::sleep(*backoff) => false,
        };
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
        stopped
    }

    async fn receive(&self) -> Result<Vec<(String, String)>, ServiceError> {
        let wait = self.inner.options.wait_time_seconds;
        owned_queue::receive(&self.inner.client, &self.url, wait).await
    }

    /// Hands the notices on, then deletes them; false if the stream's reader is gone.
    async fn deliver(&self, messages: Vec<(String, String)>) -> bool {
        if messages.is_empty() {
            return true;
        }
        let mut receipts = Vec::with_capacity(messages.len());
        for (receipt, body) in messages {
            if self
                .tx
                .send(ChannelEvent::Notice(Bytes::from(body)))
                .await
                .is_err()
            {
                return false;
            }
            receipts.push(receipt);
        }
        // A notice not deleted comes back after INBOX_VISIBILITY_TIMEOUT: a harmless
        // duplicate (cancels are idempotent), so failures are only logged.
        match owned_queue::delete_messages(&self.inner.client, &self.url, &receipts).await {
            Ok(out) => {
                for f in out.failed() {
                    tracing::warn!(code = f.code(), "could not delete a cancel notice");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not delete cancel notices"),
        }
        true
    }

    /// Creates a fresh inbox (SQS refuses a deleted queue's name for 60 s) and asks the
    /// reader to re-read the markers, since notices sent meanwhile went nowhere.
    async fn recreate(&mut self) -> Result<(), ()> {
        let name = self.inner.inbox_name(&self.subscriber);
        match self.inner.create_inbox(&name, &self.subscriber).await {
            Ok(url) => {
                tracing::info!(inbox = %url, "created a new cancel inbox");
                self.url = url;
                let _ = self
                    .tx
                    .send(ChannelEvent::Resync {
                        reason: "the inbox was recreated".into(),
                    })
                    .await;
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "could not create a new cancel inbox");
                Err(())
            }
        }
    }

    /// Re-tags the inbox as alive.
    async fn heartbeat(&self) {
        if let Err(e) = owned_queue::tag_alive(&self.inner.client, &self.url).await {
            tracing::warn!(inbox = %self.url, error = %e, "could not re-tag the cancel inbox as alive");
        }
    }
}
