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
//!
//! Files: this one holds the channel, its constructors and the [`CancelChannel`] impl;
//! `options.rs` the settings, `publish.rs` the ListQueues fan-out of a cancel, `inbox.rs` a
//! subscription's inbox and receive loop, `stale.rs` the cleanup of dead workers' inboxes.

mod inbox;
mod options;
mod publish;
mod stale;

use std::sync::{Arc, Mutex};

use crate::sqs::owned_queue::{queue_name, sanitize};
use async_trait::async_trait;
use futures::StreamExt;
use stepq_broker::BrokerError;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use stepq_cancel::channel::{CancelChannel, ChannelStream};
use stepq_cancel::error::CancelError;
use stepq_cancel::{CancelStore, CancellableBroker, Canceller};

use crate::sqs::SqsBroker;
use inbox::Inbox;
pub use options::SqsFanoutOptions;

pub use crate::sqs::owned_queue::{ALIVE_AT_TAG, MAX_QUEUE_NAME, ROLE_TAG};
/// Tag with the subscriber (worker) name of an inbox.
pub const SUBSCRIBER_TAG: &str = "stepq:subscriber";
/// Value of [`ROLE_TAG`] on inboxes.
pub const INBOX_ROLE: &str = "cancel-inbox";

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
/// What every handle of a channel shares.
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
}

#[async_trait]
impl CancelChannel for SqsFanoutChannel {
    /// Sends the notice to every inbox at once (at most `send_concurrency` in flight). An
    /// inbox deleted in between is skipped; any other failure is
    /// [`CancelError::PartialWakeUp`] after every inbox was tried.
    async fn publish(&self, task_id: &str, body: &[u8]) -> Result<usize, CancelError> {
        self.inner.publish(task_id, body).await
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
    let sqs = inner.clone();
    cancellable_over_sqs(inner, &sqs, store, cancel_queue_url, options)
}

/// A [`CancellableBroker`] over any broker `inner` (a [`RoutedBroker`] of SQS lanes) with the
/// wake-up channel of [`cancellable_sqs_broker`] on `sqs`'s client, its inboxes named after
/// `cancel_queue_url` or `sqs`'s task queue. Makes no request.
///
/// [`RoutedBroker`]: stepq_broker::routing::RoutedBroker
pub fn cancellable_over_sqs<B: stepq_broker::Broker>(
    inner: B,
    sqs: &SqsBroker,
    store: Arc<dyn CancelStore>,
    cancel_queue_url: Option<&str>,
    options: SqsFanoutOptions,
) -> Result<CancellableBroker<B>, CancelError> {
    let url = match cancel_queue_url {
        Some(url) => url.to_string(),
        None => derive_cancel_queue_url(&sqs.config().queue_url)?,
    };
    let channel = SqsFanoutChannel::new(sqs.sqs_client().clone(), &url, options)?;
    Ok(CancellableBroker::new(
        inner,
        Canceller::new(store, Arc::new(channel)),
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A client for tests that make no request.
    pub(crate) fn client() -> aws_sdk_sqs::Client {
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
}
