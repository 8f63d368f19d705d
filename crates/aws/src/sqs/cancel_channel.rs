//! SQS fan-out wake-ups of the cancellation extension: one inbox queue per listening worker.
//!
//! The reference sends each cancel to one shared `<queue>-cancels` queue, so whichever worker
//! receives it deletes it and the worker running the task may never hear of it. Here every
//! listening worker creates its own inbox `<cancel-queue-name>-<worker>-<random>` when it
//! subscribes (deleted when it stops), and a cancel is sent to every inbox that
//! `ListQueues(prefix = <cancel-queue-name>)` finds — plus the shared queue itself if someone
//! created it, so dagster-taskiq style listeners still hear it. Cancels are rare: the cost is
//! paid at cancel time (one ListQueues, one SendMessage per worker), never per step.
//!
//! A worker that dies without stopping leaves its inbox behind. Each live worker re-tags its
//! inbox with the time (`stepq:alive-at`) every [`SqsFanoutOptions::inbox_heartbeat`]; a
//! worker subscribing deletes inboxes whose tag is older than
//! [`SqsFanoutOptions::stale_inbox_after`]. A live inbox deleted by mistake is noticed at its
//! next receive, recreated, and its worker re-reads the markers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::sqs::error::sqs_service_error;
use crate::sqs::owned_queue::{self, is_missing_queue, queue_name, sanitize};
use async_trait::async_trait;
use aws_sdk_sqs::types::QueueAttributeName;
use bytes::Bytes;
use futures::StreamExt;
use stepq_broker::{BrokerError, ServiceError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use stepq_cancel::channel::{CancelChannel, ChannelEvent, ChannelStream};
use stepq_cancel::error::CancelError;
use stepq_cancel::{CancelStore, CancellableBroker, Canceller};

use crate::sqs::SqsBroker;

pub use crate::sqs::owned_queue::{ALIVE_AT_TAG, MAX_QUEUE_NAME, ROLE_TAG};
/// Tag with the subscriber (worker) name of an inbox.
pub const SUBSCRIBER_TAG: &str = "stepq:subscriber";
/// Value of [`ROLE_TAG`] on inboxes.
pub const INBOX_ROLE: &str = "cancel-inbox";

/// First wait after a failed receive; doubles up to 10 s.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A queue younger than this that "does not exist" is waited for, not recreated.
const NEW_QUEUE_SETTLE: Duration = Duration::from_secs(10);
/// How long a received notice stays hidden in an inbox; one not deleted comes back after it.
const INBOX_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(30);

/// Derives the cancel queue URL from a task queue URL as dagster-taskiq does
/// (`…/name` -> `…/name-cancels`), keeping FIFO names valid (`…/name.fifo` ->
/// `…/name-cancels.fifo`, where the reference produced an invalid `name.fifo-cancels`).
///
/// ```
/// use stepq_aws::sqs::cancel_channel::derive_cancel_queue_url;
/// assert_eq!(
///     derive_cancel_queue_url("https://sqs.us-east-1.amazonaws.com/1/tasks").unwrap(),
///     "https://sqs.us-east-1.amazonaws.com/1/tasks-cancels"
/// );
/// assert_eq!(
///     derive_cancel_queue_url("http://127.0.0.1:4566/000000000000/tasks.fifo/").unwrap(),
///     "http://127.0.0.1:4566/000000000000/tasks-cancels.fifo"
/// );
/// ```
pub fn derive_cancel_queue_url(queue_url: &str) -> Result<String, CancelError> {
    let trimmed = queue_url.trim_end_matches('/');
    let (prefix, name) = trimmed.rsplit_once('/').unwrap_or(("", trimmed));
    if name.is_empty() || prefix.is_empty() || !prefix.contains("://") {
        return Err(CancelError::Config {
            field: "queue_url",
            reason: format!("`{queue_url}` is not a queue URL (`scheme://host/account/name`)"),
        });
    }
    let cancel_name = match name.strip_suffix(".fifo") {
        Some(stem) => format!("{stem}-cancels.fifo"),
        None => format!("{name}-cancels"),
    };
    Ok(format!("{prefix}/{cancel_name}"))
}

/// Settings of the SQS fan-out channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqsFanoutOptions {
    /// Long-poll wait of an inbox receive, 1-20 seconds (default 20: an idle worker makes
    /// three requests a minute, and a notice is still received the moment it arrives).
    pub wait_time_seconds: u32,
    /// How long an inbox keeps an unreceived notice (default 1 h; the marker outlives it).
    pub inbox_retention: Duration,
    /// After subscribing, re-read the markers once this much later (default 60 s), since a
    /// brand-new inbox may take a moment to show in ListQueues and a cancel sent meanwhile
    /// would miss it. `None` skips the re-read.
    pub resync_after: Option<Duration>,
    /// How often a worker re-tags its inbox as alive (default 10 min).
    pub inbox_heartbeat: Duration,
    /// Inboxes not re-tagged for this long are deleted by the next worker that subscribes
    /// (default 1 h; must exceed `inbox_heartbeat`).
    pub stale_inbox_after: Duration,
    /// Inboxes sent to at once by a cancel (default 16).
    pub send_concurrency: usize,
}

impl Default for SqsFanoutOptions {
    fn default() -> Self {
        SqsFanoutOptions {
            wait_time_seconds: 20,
            inbox_retention: Duration::from_secs(3600),
            resync_after: Some(Duration::from_secs(60)),
            inbox_heartbeat: Duration::from_secs(600),
            stale_inbox_after: Duration::from_secs(3600),
            send_concurrency: 16,
        }
    }
}

impl SqsFanoutOptions {
    /// Checks the settings; the error names the bad field.
    pub fn validate(&self) -> Result<(), CancelError> {
        let bad = |field: &'static str, reason: String| Err(CancelError::Config { field, reason });
        if !(1..=20).contains(&self.wait_time_seconds) {
            return bad(
                "wait_time_seconds",
                format!("{} is out of range 1-20", self.wait_time_seconds),
            );
        }
        let retention = self.inbox_retention.as_secs();
        if !(60..=1_209_600).contains(&retention) {
            return bad(
                "inbox_retention",
                format!("{retention} s is out of SQS's range 60 s - 14 days"),
            );
        }
        if self.inbox_heartbeat.is_zero() {
            return bad("inbox_heartbeat", "must be positive".into());
        }
        if self.stale_inbox_after <= self.inbox_heartbeat {
            return bad(
                "stale_inbox_after",
                format!(
                    "{:?} must exceed inbox_heartbeat ({:?}), or live inboxes look stale",
                    self.stale_inbox_after, self.inbox_heartbeat
                ),
            );
        }
        if self.send_concurrency == 0 {
            return bad("send_concurrency", "must be at least 1".into());
        }
        Ok(())
    }
}

/// The SQS fan-out wake-up channel. Cloning gives another handle to the same channel.
///
/// ```no_run
/// # async fn demo() -> Result<(), stepq_cancel::CancelError> {
/// use stepq_aws::sqs::cancel_channel::{derive_cancel_queue_url, SqsFanoutChannel, SqsFanoutOptions};
///
/// let sdk = aws_config::load_from_env().await;
/// let url = derive_cancel_queue_url("https://sqs.us-east-1.amazonaws.com/123456789012/stepq")?;
/// let channel = SqsFanoutChannel::new(aws_sdk_sqs::Client::new(&sdk), &url, SqsFanoutOptions::default())?;
/// assert_eq!(channel.inbox_prefix(), "stepq-cancels");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqsFanoutChannel {
    inner: Arc<Inner>,
}

struct Inner {
    client: aws_sdk_sqs::Client,
    cancel_queue_url: String,
    /// The cancel queue name without `.fifo`; inbox names start with it and a dash.
    base: String,
    options: SqsFanoutOptions,
    /// Running subscriptions: their stop token and their task (which deletes the inbox).
    subscriptions: Mutex<Vec<(CancellationToken, JoinHandle<()>)>>,
}

impl std::fmt::Debug for SqsFanoutChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsFanoutChannel")
            .field("cancel_queue_url", &self.inner.cancel_queue_url)
            .field("options", &self.inner.options)
            .finish()
    }
}

impl SqsFanoutChannel {
    /// A channel fanning out under `cancel_queue_url` (its name is the inbox prefix; the
    /// queue itself need not exist). Makes no request.
    pub fn new(
        client: aws_sdk_sqs::Client,
        cancel_queue_url: &str,
        options: SqsFanoutOptions,
    ) -> Result<Self, CancelError> {
        options.validate()?;
        let name = queue_name(cancel_queue_url);
        let base = name.strip_suffix(".fifo").unwrap_or(name).to_string();
        if !cancel_queue_url.contains("://") || base.is_empty() {
            return Err(CancelError::Config {
                field: "cancel_queue_url",
                reason: format!("`{cancel_queue_url}` is not a queue URL"),
            });
        }
        // Room for `-<worker>-<8 hex>` with at least a few characters of worker name.
        if base.len() > MAX_QUEUE_NAME - 14 {
            return Err(CancelError::Config {
                field: "cancel_queue_url",
                reason: format!(
                    "queue name `{base}` is too long to name worker inboxes after it (at most {} characters)",
                    MAX_QUEUE_NAME - 14
                ),
            });
        }
        Ok(SqsFanoutChannel {
            inner: Arc::new(Inner {
                client,
                cancel_queue_url: cancel_queue_url.to_string(),
                base,
                options,
                subscriptions: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The configured (or derived) cancel queue URL.
    pub fn cancel_queue_url(&self) -> &str {
        &self.inner.cancel_queue_url
    }

    /// The name every inbox starts with (the cancel queue name without `.fifo`).
    pub fn inbox_prefix(&self) -> &str {
        &self.inner.base
    }

    /// The settings.
    pub fn options(&self) -> &SqsFanoutOptions {
        &self.inner.options
    }

    /// A fresh inbox name for `subscriber`: `<prefix>-<subscriber>-<8 hex>`, cut to fit.
    pub fn inbox_name(&self, subscriber: &str) -> String {
        self.inner.inbox_name(subscriber)
    }

    /// URLs of every queue a cancel is sent to: the inboxes and, if it exists, the shared
    /// cancel queue.
    pub async fn targets(&self) -> Result<Vec<String>, CancelError> {
        self.inner.targets().await
    }
}

impl Inner {
    /// See [`SqsFanoutChannel::inbox_name`].
    fn inbox_name(&self, subscriber: &str) -> String {
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let room = MAX_QUEUE_NAME - self.base.len() - suffix.len() - 2;
        let mut who = sanitize(subscriber);
        who.truncate(room);
        if who.is_empty() {
            who.push('w');
        }
        format!("{}-{who}-{suffix}", self.base)
    }

    async fn targets(&self) -> Result<Vec<String>, CancelError> {
        let mut urls = owned_queue::list_with_prefix(&self.client, &self.base)
            .await
            .map_err(BrokerError::from)?;
        let inbox_start = format!("{}-", self.base);
        let fifo_name = format!("{}.fifo", self.base);
        urls.retain(|url| {
            let name = queue_name(url);
            name == self.base || name == fifo_name || name.starts_with(&inbox_start)
        });
        Ok(urls)
    }

    async fn send(&self, url: &str, task_id: &str, body: &str) -> Result<(), ServiceError> {
        let mut request = self.client.send_message().queue_url(url).message_body(body);
        if queue_name(url).ends_with(".fifo") {
            request = request
                .message_group_id(task_id)
                .message_deduplication_id(uuid::Uuid::new_v4().to_string());
        }
        request
            .send()
            .await
            .map_err(|e| sqs_service_error("SendMessage", e))?;
        Ok(())
    }

    async fn create_inbox(&self, name: &str, subscriber: &str) -> Result<String, ServiceError> {
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

    /// Deletes inboxes (other than `own`) whose alive tag is older than the stale limit.
    async fn prune_stale_inboxes(&self, own: &str) {
        let urls = match self.targets().await {
            Ok(urls) => urls,
            Err(e) => {
                tracing::warn!(error = %e, "could not list cancel inboxes to prune stale ones");
                return;
            }
        };
        let stale_after = self.options.stale_inbox_after;
        owned_queue::prune_stale(&self.client, urls, INBOX_ROLE, stale_after, Some(own)).await;
    }
}

#[async_trait]
impl CancelChannel for SqsFanoutChannel {
    /// Sends the notice to every inbox at once (at most `send_concurrency` in flight). An
    /// inbox deleted in between is skipped; any other failure is
    /// [`CancelError::PartialWakeUp`] after every inbox was tried.
    async fn publish(&self, task_id: &str, body: &[u8]) -> Result<usize, CancelError> {
        let body: Arc<str> = String::from_utf8_lossy(body).into();
        let targets = self.inner.targets().await?;
        let total = targets.len();
        let sends = targets.into_iter().map(|url| {
            let inner = Arc::clone(&self.inner);
            let (task_id, body) = (task_id.to_string(), Arc::clone(&body));
            async move { inner.send(&url, &task_id, &body).await }
        });
        let results: Vec<Result<(), ServiceError>> = futures::stream::iter(sends)
            .buffer_unordered(self.inner.options.send_concurrency)
            .collect()
            .await;
        let mut reached = 0;
        let mut first = None;
        for result in results {
            match result {
                Ok(()) => reached += 1,
                Err(e) if is_missing_queue(&e) => {}
                Err(e) => {
                    tracing::warn!(task_id, error = %e, "could not wake a worker inbox");
                    first.get_or_insert(e);
                }
            }
        }
        match first {
            None => Ok(reached),
            Some(first) => Err(CancelError::PartialWakeUp {
                task_id: task_id.to_string(),
                reached,
                total,
                first: Box::new(first.into()),
            }),
        }
    }

    /// Creates this worker's inbox, then starts receiving from it; also prunes stale inboxes
    /// in the background.
    async fn subscribe(
        &self,
        subscriber: &str,
        stop: CancellationToken,
    ) -> Result<ChannelStream, CancelError> {
        let name = self.inbox_name(subscriber);
        let url = self
            .inner
            .create_inbox(&name, subscriber)
            .await
            .map_err(BrokerError::from)?;
        tracing::info!(inbox = %url, subscriber, "listening for cancels");
        let stop = stop.child_token();
        let (tx, rx) = mpsc::channel(256);
        let inbox = Inbox {
            inner: Arc::clone(&self.inner),
            subscriber: subscriber.to_string(),
            url,
            tx,
            stop: stop.clone(),
        };
        let task = tokio::spawn(inbox.run());
        {
            let mut subs = self
                .inner
                .subscriptions
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            subs.retain(|(_, h)| !h.is_finished());
            subs.push((stop, task));
        }
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|event| (event, rx))
        });
        Ok(stream.boxed())
    }

    /// Stops every subscription and waits until their inboxes are deleted.
    async fn shutdown(&self) -> Result<(), CancelError> {
        let subs: Vec<_> = {
            let mut guard = self
                .inner
                .subscriptions
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            guard.drain(..).collect()
        };
        for (stop, task) in subs {
            stop.cancel();
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "a cancel inbox task failed");
            }
        }
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "sqs-fanout"
    }
}

/// One subscription: receives from its inbox until stopped, then deletes it.
struct Inbox {
    inner: Arc<Inner>,
    subscriber: String,
    url: String,
    tx: mpsc::Sender<ChannelEvent>,
    stop: CancellationToken,
}

impl Inbox {
    async fn run(mut self) {
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
                    tracing::warn!(inbox = %self.url, error = %e, retry_in = ?backoff, "receiving cancels failed");
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

/// A [`CancellableBroker`] on SQS: `inner`'s SQS client fans wake-ups out to one inbox queue per
/// worker, named after `cancel_queue_url` (default: derived from the task queue URL as the
/// reference does, see [`derive_cancel_queue_url`]), with markers in `store` (usually
/// [`S3CancelStore`](crate::S3CancelStore) on the result bucket). Makes no request.
pub fn cancellable_sqs_broker(
    inner: SqsBroker,
    store: Arc<dyn CancelStore>,
    cancel_queue_url: Option<&str>,
) -> Result<CancellableBroker<SqsBroker>, CancelError> {
    cancellable_sqs_broker_with_options(inner, store, cancel_queue_url, Default::default())
}

/// [`cancellable_sqs_broker`] with explicit fan-out settings.
pub fn cancellable_sqs_broker_with_options(
    inner: SqsBroker,
    store: Arc<dyn CancelStore>,
    cancel_queue_url: Option<&str>,
    options: SqsFanoutOptions,
) -> Result<CancellableBroker<SqsBroker>, CancelError> {
    let url = match cancel_queue_url {
        Some(url) => url.to_string(),
        None => derive_cancel_queue_url(&inner.config().queue_url)?,
    };
    let channel = SqsFanoutChannel::new(inner.sqs_client().clone(), &url, options)?;
    Ok(CancellableBroker::new(
        inner,
        Canceller::new(store, Arc::new(channel)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> aws_sdk_sqs::Client {
        let conf = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .build();
        aws_sdk_sqs::Client::from_conf(conf)
    }

    #[test]
    fn cancel_queue_urls_derive_as_the_reference_does_with_fifo_fixed() {
        let base = "https://sqs.us-east-1.amazonaws.com/123456789012";
        assert_eq!(
            derive_cancel_queue_url(&format!("{base}/dagster-tasks")).unwrap(),
            format!("{base}/dagster-tasks-cancels")
        );
        assert_eq!(
            derive_cancel_queue_url(&format!("{base}/runs.fifo")).unwrap(),
            format!("{base}/runs-cancels.fifo")
        );
        for bad in ["", "tasks", "https://host", "/tasks", "https://host/"] {
            let err = derive_cancel_queue_url(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    CancelError::Config {
                        field: "queue_url",
                        ..
                    }
                ),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn inbox_names_fit_sqs_and_start_with_the_prefix() {
        let channel = SqsFanoutChannel::new(
            client(),
            "http://127.0.0.1:4566/000000000000/tasks-cancels.fifo",
            SqsFanoutOptions::default(),
        )
        .unwrap();
        assert_eq!(channel.inbox_prefix(), "tasks-cancels");
        let name = channel.inbox_name("host.example.com-1234");
        assert!(
            name.starts_with("tasks-cancels-host-example-com-1234-"),
            "{name}"
        );
        assert_eq!(name.len(), "tasks-cancels-host-example-com-1234-".len() + 8);
        let long = channel.inbox_name(&"w".repeat(200));
        assert_eq!(long.len(), MAX_QUEUE_NAME, "{long}");
        assert!(long
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_ne!(channel.inbox_name("a"), channel.inbox_name("a"));
        assert!(channel.inbox_name("").contains("-w-"));
        assert_eq!(channel.kind(), "sqs-fanout");
    }

    #[test]
    fn bad_settings_are_named() {
        let url = "http://127.0.0.1:4566/000000000000/q-cancels";
        type Edit = fn(&mut SqsFanoutOptions);
        let cases: &[(Edit, &str)] = &[
            (|o| o.wait_time_seconds = 0, "wait_time_seconds"),
            (|o| o.wait_time_seconds = 21, "wait_time_seconds"),
            (
                |o| o.inbox_retention = Duration::from_secs(59),
                "inbox_retention",
            ),
            (|o| o.inbox_heartbeat = Duration::ZERO, "inbox_heartbeat"),
            (
                |o| o.stale_inbox_after = o.inbox_heartbeat,
                "stale_inbox_after",
            ),
            (|o| o.send_concurrency = 0, "send_concurrency"),
        ];
        for (edit, field) in cases {
            let mut o = SqsFanoutOptions::default();
            edit(&mut o);
            match SqsFanoutChannel::new(client(), url, o) {
                Err(CancelError::Config { field: f, .. }) => assert_eq!(f, *field),
                other => panic!("{field}: expected a config error, got {other:?}"),
            }
        }
        let long = format!("http://h/1/{}", "q".repeat(70));
        assert!(matches!(
            SqsFanoutChannel::new(client(), &long, SqsFanoutOptions::default()),
            Err(CancelError::Config {
                field: "cancel_queue_url",
                ..
            })
        ));
        assert!(matches!(
            SqsFanoutChannel::new(client(), "not-a-url", SqsFanoutOptions::default()),
            Err(CancelError::Config {
                field: "cancel_queue_url",
                ..
            })
        ));
    }
}
