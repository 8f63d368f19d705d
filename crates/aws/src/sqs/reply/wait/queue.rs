//! The orchestrator half: [`ReplyQueue`], this process's own SQS queue that workers notify —
//! its settings and stats, creating it on first use (one CreateQueue), starting its poller,
//! and deleting it at shutdown (or, best effort, when the last handle is dropped).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use tokio::sync::Mutex as AsyncMutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::dispatch::Dispatch;
use super::names::{base_name, owner, prune, RANDOM_HEX, REPLY_QUEUE_INFIX};
use super::poll::poll;
use crate::sqs::owned_queue;
pub use crate::sqs::owned_queue::{ALIVE_AT_TAG, ROLE_TAG};
use crate::sqs::SqsBroker;
use stepq_broker::error::{BrokerError, ErrorClass, ServiceError};

/// Visibility timeout of a reply queue. A received notification is deleted well within it
/// (the poller deletes what it holds before a long poll could outlast it); if the answer of a
/// ReceiveMessage is lost on the way (a network failure after SQS handed the messages out),
/// the notifications come back after this long instead of staying hidden. In reply-only mode
/// the notification is the result's only copy, so this bounds how long such a loss delays a
/// step.
pub const REPLY_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(30);
/// Value of [`ROLE_TAG`] on reply queues.
pub const REPLY_ROLE: &str = "reply-queue";
/// Tag with the process (`host-pid`) that owns a reply queue.
pub const OWNER_TAG: &str = "stepq:owner";

/// Settings of a [`ReplyQueue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyQueueOptions {
    /// Long-poll wait of each receive, 1-20 s (default 20: an idle orchestrator makes three
    /// requests a minute, and a notification is received the moment it arrives).
    pub wait_time_seconds: u32,
    /// Long-poll wait while a result is awaited, 1 s up to `wait_time_seconds` (default 5).
    /// A long poll cut off by a network failure may still be served by SQS to its end,
    /// and the notifications it takes stay hidden for the reply queue's 30 s visibility
    /// timeout; a short wait ends such an orphaned poll before a longer outage is over, so
    /// the results sent after it come through at once. Costs at most 12 receives a minute
    /// while steps run and no result arrives.
    pub busy_wait_time_seconds: u32,
    /// How often the owner re-tags its queue as alive (default 10 min).
    pub alive_heartbeat: Duration,
    /// Reply queues of this task queue not re-tagged for this long are deleted when another
    /// orchestrator starts its own (default 1 h; must exceed `alive_heartbeat`).
    pub stale_after: Duration,
    /// Whether starting a reply queue prunes stale ones in the background (default true).
    pub prune_stale: bool,
}

impl Default for ReplyQueueOptions {
    fn default() -> Self {
        ReplyQueueOptions {
            wait_time_seconds: 20,
            busy_wait_time_seconds: 5,
            alive_heartbeat: Duration::from_secs(600),
            stale_after: Duration::from_secs(3600),
            prune_stale: true,
        }
    }
}

impl ReplyQueueOptions {
    /// Checks the settings; the error names the bad field.
    pub fn validate(&self) -> Result<(), BrokerError> {
        let bad = |field: &'static str, reason: String| Err(BrokerError::Config { field, reason });
        if !(1..=20).contains(&self.wait_time_seconds) {
            return bad(
                "wait_time_seconds",
                format!("{} is out of range 1-20", self.wait_time_seconds),
            );
        }
        if !(1..=self.wait_time_seconds).contains(&self.busy_wait_time_seconds) {
            return bad(
                "busy_wait_time_seconds",
                format!(
                    "{} is out of range 1-{} (wait_time_seconds)",
                    self.busy_wait_time_seconds, self.wait_time_seconds
                ),
            );
        }
        if self.alive_heartbeat.is_zero() {
            return bad("alive_heartbeat", "must be positive".into());
        }
        if self.stale_after <= self.alive_heartbeat {
            return bad(
                "stale_after",
                format!(
                    "{:?} must exceed alive_heartbeat ({:?}), or live reply queues look stale",
                    self.stale_after, self.alive_heartbeat
                ),
            );
        }
        Ok(())
    }
}

/// What a reply queue's poller did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplyStats {
    /// ReceiveMessage calls made.
    pub receive_calls: u64,
    /// Notifications handed to a waiter or kept for one.
    pub notifications: u64,
    /// Notifications for tasks this process does not expect (duplicates, foreign), dropped.
    pub unexpected: u64,
    /// Messages that are not notifications (logged and dropped).
    pub malformed: u64,
    /// Failed receives (each was logged and retried with backoff).
    pub receive_errors: u64,
    /// Notifications deleted (in batches of ten).
    pub deleted: u64,
    /// Whether the queue disappeared under the poller (waiters then read the durable backend).
    pub lost: bool,
}

/// The counts behind [`ReplyStats`].
#[derive(Default)]
pub(super) struct Counters {
    pub(super) receive_calls: AtomicU64,
    pub(super) notifications: AtomicU64,
    pub(super) unexpected: AtomicU64,
    pub(super) malformed: AtomicU64,
    pub(super) receive_errors: AtomicU64,
    pub(super) deleted: AtomicU64,
    pub(super) lost: AtomicBool,
}

/// Adds `n` to a counter.
pub(super) fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// What the poller shares with the handles.
pub(super) struct Shared {
    /// The SQS client of the queue.
    pub(super) sqs: aws_sdk_sqs::Client,
    /// Who waits for which notification.
    pub(super) dispatch: Dispatch,
    /// The queue's settings.
    pub(super) options: ReplyQueueOptions,
    /// What the poller did.
    pub(super) counters: Counters,
}

enum State {
    /// No queue yet (nothing was sent).
    Idle,
    /// The queue exists and is polled.
    Running { url: String, poller: JoinHandle<()> },
    /// Creating the queue failed with a permanent error (e.g. access denied): not retried.
    Failed(ServiceError),
    /// Shut down (the queue is deleted).
    Closed,
}

struct Inner {
    shared: Arc<Shared>,
    /// Task queue name without `.fifo`, sanitized and cut so reply queue names fit.
    base: String,
    url: OnceLock<String>,
    state: AsyncMutex<State>,
    stop: CancellationToken,
}

/// The reply queue of one orchestrator process: an SQS standard queue created on first use
/// (the first message sent through [`ReplyToMiddleware`], or [`ReplyQueue::start`]), named
/// `<task queue>-reply-<16 hex>`, long-polled by one background task that hands each
/// notification to the waiting [`NotifyingResultBackend`](super::NotifyingResultBackend),
/// and deleted by [`ReplyQueue::shutdown`]. Cloning gives another handle to the same queue.
///
/// A process that ends without `shutdown` (a crash, SIGKILL) leaves its queue behind; it is
/// tagged `stepq:role = reply-queue` and re-tagged `stepq:alive-at` every
/// [`ReplyQueueOptions::alive_heartbeat`], and the next orchestrator on the same task queue
/// deletes it once stale (see [`prune_stale_reply_queues`]).
#[derive(Clone)]
pub struct ReplyQueue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ReplyQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyQueue")
            .field("prefix", &self.prefix())
            .field("url", &self.inner.url.get())
            .finish()
    }
}
impl ReplyQueue {
    /// A reply queue for the task queue named `task_queue` (a name or a URL), with default
    /// options. Makes no request: the queue is created on first use.
    pub fn new(sqs: aws_sdk_sqs::Client, task_queue: &str) -> Self {
        Self::with_options(sqs, task_queue, ReplyQueueOptions::default())
            .expect("the default options are valid")
    }

    /// A reply queue for `broker`'s task queue, on its SQS client.
    pub fn for_broker(broker: &SqsBroker) -> Self {
        Self::new(broker.sqs_client().clone(), broker.config().queue_name())
    }

    /// Like [`ReplyQueue::new`], with `options` (checked first).
    pub fn with_options(
        sqs: aws_sdk_sqs::Client,
        task_queue: &str,
        options: ReplyQueueOptions,
    ) -> Result<Self, BrokerError> {
        options.validate()?;
        Ok(ReplyQueue {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared {
                    sqs,
                    dispatch: Dispatch::default(),
                    options,
                    counters: Counters::default(),
                }),
                base: base_name(task_queue),
                url: OnceLock::new(),
                state: AsyncMutex::new(State::Idle),
                stop: CancellationToken::new(),
            }),
        })
    }

    /// What every reply queue of this task queue's name starts with.
    pub fn prefix(&self) -> String {
        format!("{}{REPLY_QUEUE_INFIX}", self.inner.base)
    }

    /// The queue URL, once created (and until shut down).
    pub fn url(&self) -> Option<&str> {
        if self.inner.stop.is_cancelled() {
            return None;
        }
        self.inner.url.get().map(String::as_str)
    }

    /// Whether the queue was created and is polled (not shut down, not lost).
    pub fn is_running(&self) -> bool {
        self.url().is_some() && !self.inner.shared.dispatch.is_closed()
    }

    /// What the poller did so far.
    pub fn stats(&self) -> ReplyStats {
        let c = &self.inner.shared.counters;
        ReplyStats {
            receive_calls: c.receive_calls.load(Ordering::Relaxed),
            notifications: c.notifications.load(Ordering::Relaxed),
            unexpected: c.unexpected.load(Ordering::Relaxed),
            malformed: c.malformed.load(Ordering::Relaxed),
            receive_errors: c.receive_errors.load(Ordering::Relaxed),
            deleted: c.deleted.load(Ordering::Relaxed),
            lost: c.lost.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn dispatch(&self) -> &Dispatch {
        &self.inner.shared.dispatch
    }

    /// Creates the queue (once; one CreateQueue call) and starts polling it; returns its URL.
    /// Prunes stale reply queues of the same task queue in the background. After a permanent
    /// failure (e.g. access denied) it is not tried again: the error is returned each time.
    /// After [`ReplyQueue::shutdown`], [`BrokerError::Closed`].
    pub async fn start(&self) -> Result<String, BrokerError> {
        if let Some(url) = self.url() {
            return Ok(url.to_string());
        }
        let mut state = self.inner.state.lock().await;
        match &*state {
            State::Running { url, .. } => return Ok(url.clone()),
            State::Closed => return Err(BrokerError::Closed),
            State::Failed(e) => return Err(e.clone().into()),
            State::Idle => {}
        }
        let name = format!(
            "{}{}",
            self.prefix(),
            &uuid::Uuid::new_v4().simple().to_string()[..RANDOM_HEX]
        );
        let url = match create_queue(&self.inner.shared, &name).await {
            Ok(url) => url,
            Err(e) => {
                // Only a permanent failure is remembered: after a temporary or persistent one
                // (an outage), the next send tries again.
                if e.class() == ErrorClass::Permanent {
                    *state = State::Failed(e.clone());
                }
                return Err(e.into());
            }
        };
        tracing::info!(reply_queue = %url, "created the reply queue");
        let poller = tokio::spawn(poll(
            Arc::clone(&self.inner.shared),
            url.clone(),
            self.inner.stop.clone(),
        ));
        if self.inner.shared.options.prune_stale {
            let sqs = self.inner.shared.sqs.clone();
            let prefix = self.prefix();
            let (own, stale_after) = (url.clone(), self.inner.shared.options.stale_after);
            tokio::spawn(async move {
                if let Err(e) = prune(&sqs, &prefix, stale_after, Some(&own)).await {
                    tracing::warn!(error = %e, "could not prune stale reply queues");
                }
            });
        }
        let _ = self.inner.url.set(url.clone());
        *state = State::Running {
            url: url.clone(),
            poller,
        };
        Ok(url)
    }

    /// The address for a message about to be sent, noting that `task_id` expects a reply;
    /// `None` (send without one; its result is then read from the durable backend) when the
    /// queue cannot be created or is shut down.
    pub(crate) async fn address_for(&self, task_id: &str) -> Option<String> {
        let url = match self.start().await {
            Ok(url) => url,
            Err(BrokerError::Closed) => return None,
            Err(e) => {
                if e.class() == ErrorClass::Permanent {
                    tracing::warn!(error = %e, "could not create the reply queue; results are read from the result backend only");
                } else {
                    tracing::warn!(error = %e, "could not create the reply queue; sending without a reply address (will try again)");
                }
                return None;
            }
        };
        self.dispatch().expect(task_id).then_some(url)
    }

    /// Stops polling and deletes the queue (one DeleteQueue call); waiters still pending read
    /// the durable backend from then on. Idempotent.
    pub async fn shutdown(&self) -> Result<(), BrokerError> {
        let mut state = self.inner.state.lock().await;
        self.inner.stop.cancel();
        self.inner.shared.dispatch.close();
        match std::mem::replace(&mut *state, State::Closed) {
            State::Running { url, poller } => {
                if let Err(e) = poller.await {
                    tracing::warn!(error = %e, "the reply queue poller failed");
                }
                owned_queue::delete(&self.inner.shared.sqs, &url).await?;
                tracing::info!(reply_queue = %url, "deleted the reply queue");
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

impl Drop for Inner {
    /// Stops the poller; a queue still there is deleted in the background (best effort — call
    /// [`ReplyQueue::shutdown`] to be sure).
    fn drop(&mut self) {
        self.stop.cancel();
        let State::Running { url, .. } = std::mem::replace(self.state.get_mut(), State::Closed)
        else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let sqs = self.shared.sqs.clone();
                runtime.spawn(async move {
                    if let Err(e) = owned_queue::delete(&sqs, &url).await {
                        tracing::warn!(reply_queue = %url, error = %e, "could not delete a dropped reply queue");
                    }
                });
            }
            Err(_) => tracing::warn!(
                reply_queue = %url,
                "a reply queue was dropped outside a runtime without shutdown; it is left behind"
            ),
        }
    }
}

async fn create_queue(shared: &Shared, name: &str) -> Result<String, ServiceError> {
    owned_queue::create(
        &shared.sqs,
        name,
        REPLY_ROLE,
        [
            (
                QueueAttributeName::VisibilityTimeout,
                REPLY_VISIBILITY_TIMEOUT.as_secs().to_string(),
            ),
            (
                QueueAttributeName::ReceiveMessageWaitTimeSeconds,
                shared.options.wait_time_seconds.to_string(),
            ),
        ],
        [(OWNER_TAG, owner())],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqs::reply::wait::tests::unreachable_client;

    #[test]
    fn bad_options_are_named() {
        type Edit = fn(&mut ReplyQueueOptions);
        let cases: &[(Edit, &str)] = &[
            (|o| o.wait_time_seconds = 0, "wait_time_seconds"),
            (|o| o.wait_time_seconds = 21, "wait_time_seconds"),
            (|o| o.busy_wait_time_seconds = 0, "busy_wait_time_seconds"),
            (
                |o| {
                    o.wait_time_seconds = 4;
                    o.busy_wait_time_seconds = 5
                },
                "busy_wait_time_seconds",
            ),
            (|o| o.alive_heartbeat = Duration::ZERO, "alive_heartbeat"),
            (|o| o.stale_after = o.alive_heartbeat, "stale_after"),
        ];
        for (edit, field) in cases {
            let mut o = ReplyQueueOptions::default();
            edit(&mut o);
            match o.validate() {
                Err(BrokerError::Config { field: f, .. }) => assert_eq!(f, *field),
                other => panic!("{field}: {other:?}"),
            }
            assert!(ReplyQueue::with_options(unreachable_client(), "q", o).is_err());
        }
    }
}
