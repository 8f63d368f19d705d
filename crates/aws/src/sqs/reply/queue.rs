//! `ReplyQueue`: the orchestrator's own SQS queue that workers notify, its poller, and the
//! `ReplyToMiddleware` that gives every sent message its address.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::QueueAttributeName;
use tokio::sync::Mutex as AsyncMutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::dispatch::{Delivered, Dispatch, Reply};
use super::{wire, REPLY_ONLY_LABEL, REPLY_TO_LABEL};
use crate::sqs::owned_queue::is_missing_queue;
use crate::sqs::owned_queue::{self, queue_name, sanitize, MAX_QUEUE_NAME};
pub use crate::sqs::owned_queue::{ALIVE_AT_TAG, ROLE_TAG};
use crate::sqs::SqsBroker;
use stepq_broker::error::{BrokerError, ErrorClass, ServiceError};
use stepq_broker::message::TaskMessage;
use stepq_broker::middleware::{Middleware, MiddlewareError};

/// What follows the task queue name in a reply queue's name, before the random part.
pub const REPLY_QUEUE_INFIX: &str = "-reply-";
/// Hex digits of the random part of a reply queue's name.
const RANDOM_HEX: usize = 16;
/// Visibility timeout of a reply queue: the SQS maximum, so a received notification is never
/// delivered again during a run and needs no DeleteMessage of its own.
pub const REPLY_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(12 * 3600);
/// Value of [`ROLE_TAG`] on reply queues.
pub const REPLY_ROLE: &str = "reply-queue";
/// Tag with the process (`host-pid`) that owns a reply queue.
pub const OWNER_TAG: &str = "stepq:owner";
/// Notifications deleted per DeleteMessageBatch call.
const DELETE_BATCH: usize = 10;
/// First wait after a failed receive; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A queue younger than this that "does not exist" is waited for (AWS may take a moment to
/// show a new queue), not given up.
const NEW_QUEUE_SETTLE: Duration = Duration::from_secs(10);

/// Settings of a [`ReplyQueue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyQueueOptions {
    /// Long-poll wait of each receive, 1-20 s (default 20: an idle orchestrator makes three
    /// requests a minute, and a notification is received the moment it arrives).
    pub wait_time_seconds: u32,
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

#[derive(Default)]
struct Counters {
    receive_calls: AtomicU64,
    notifications: AtomicU64,
    unexpected: AtomicU64,
    malformed: AtomicU64,
    receive_errors: AtomicU64,
    deleted: AtomicU64,
    lost: AtomicBool,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// What the poller shares with the handles.
pub(crate) struct Shared {
    pub sqs: aws_sdk_sqs::Client,
    pub dispatch: Dispatch,
    options: ReplyQueueOptions,
    counters: Counters,
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

/// The part of reply queue names before the random suffix, for a task queue name (or URL):
/// `<name without .fifo, sanitized, cut to fit>-reply-`.
///
/// ```
/// use stepq_aws::sqs::reply::reply_queue_prefix;
/// assert_eq!(reply_queue_prefix("tasks.fifo"), "tasks-reply-");
/// assert_eq!(reply_queue_prefix("http://127.0.0.1:4566/000000000000/jobs"), "jobs-reply-");
/// ```
pub fn reply_queue_prefix(task_queue: &str) -> String {
    format!("{}{REPLY_QUEUE_INFIX}", base_name(task_queue))
}

fn base_name(task_queue: &str) -> String {
    let name = queue_name(task_queue);
    let stem = name.strip_suffix(".fifo").unwrap_or(name);
    let mut base = sanitize(stem);
    base.truncate(MAX_QUEUE_NAME - REPLY_QUEUE_INFIX.len() - RANDOM_HEX);
    if base.is_empty() {
        base.push_str("stepq");
    }
    base
}

/// A fresh reply queue name for a task queue: `<prefix>-<16 hex>`, at most 80 characters.
pub fn reply_queue_name(task_queue: &str) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{}{}",
        reply_queue_prefix(task_queue),
        &random[..RANDOM_HEX]
    )
}

/// `host-pid` of this process.
fn owner() -> String {
    sanitize(&stepq_broker::receiver::default_worker_name())
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

/// Receives notifications until stopped, hands them to the dispatch, deletes them in full
/// batches of ten in the background (so a long-lived orchestrator stays far below SQS's
/// 120,000 in-flight messages; fewer than ten stay in flight, hidden for 12 h, until the queue
/// is deleted), and re-tags the queue as alive now and then. If the queue disappears, every
/// waiter falls back to the durable backend.
async fn poll(shared: Arc<Shared>, url: String, stop: CancellationToken) {
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

/// URLs of the queues whose name starts with `prefix` (e.g. [`ReplyQueue::prefix`]).
pub async fn list_reply_queues(
    sqs: &aws_sdk_sqs::Client,
    prefix: &str,
) -> Result<Vec<String>, BrokerError> {
    Ok(owned_queue::list_with_prefix(sqs, prefix).await?)
}

/// Deletes the reply queues under `prefix` (other than `keep`) tagged as reply queues whose
/// owner has not re-tagged them for `stale_after`: those of orchestrators that ended without
/// shutting down. Returns how many were deleted. For tooling (`stepq`) and run at every
/// [`ReplyQueue::start`].
pub async fn prune_stale_reply_queues(
    sqs: &aws_sdk_sqs::Client,
    prefix: &str,
    stale_after: Duration,
) -> Result<usize, BrokerError> {
    prune(sqs, prefix, stale_after, None).await
}

async fn prune(
    sqs: &aws_sdk_sqs::Client,
    prefix: &str,
    stale_after: Duration,
    keep: Option<&str>,
) -> Result<usize, BrokerError> {
    let urls = list_reply_queues(sqs, prefix).await?;
    Ok(owned_queue::prune_stale(sqs, urls, REPLY_ROLE, stale_after, keep).await)
}

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
pub(crate) mod tests {
    use super::*;

    /// A client for an endpoint where nothing listens, without retries.
    pub(crate) fn unreachable_client() -> aws_sdk_sqs::Client {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .endpoint_url(format!("http://127.0.0.1:{port}"))
            .retry_config(aws_sdk_sqs::config::retry::RetryConfig::disabled())
            .build();
        aws_sdk_sqs::Client::from_conf(conf)
    }

    #[test]
    fn names_fit_sqs_and_start_with_the_prefix() {
        let name = reply_queue_name("http://127.0.0.1:4566/000000000000/tasks.fifo");
        assert!(name.starts_with("tasks-reply-"), "{name}");
        assert_eq!(name.len(), "tasks-reply-".len() + RANDOM_HEX);
        assert_ne!(name, reply_queue_name("tasks.fifo"), "names are random");
        let long = "q".repeat(200);
        let name = reply_queue_name(&long);
        assert_eq!(name.len(), MAX_QUEUE_NAME);
        assert!(name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(reply_queue_prefix("we!rd name"), "we-rd-name-reply-");
        assert_eq!(reply_queue_prefix(""), "stepq-reply-");
    }

    #[test]
    fn bad_options_are_named() {
        type Edit = fn(&mut ReplyQueueOptions);
        let cases: &[(Edit, &str)] = &[
            (|o| o.wait_time_seconds = 0, "wait_time_seconds"),
            (|o| o.wait_time_seconds = 21, "wait_time_seconds"),
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
