//! The `Canceller`: writes markers and wakes workers; reads markers and notices back.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{BoxStream, Stream};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::channel::{CancelChannel, ChannelEvent};
use crate::error::CancelError;
use crate::marker::{check_task_id, now_ms, CancelMarker};
use crate::store::CancelStore;

/// Default life of a cancel marker: 24 hours.
pub const DEFAULT_MARKER_TTL: Duration = Duration::from_secs(24 * 3600);

/// Requests cancels and hears of them: a marker store (durable) plus a wake-up channel
/// (fast). Cloning gives another handle to the same pair.
///
/// `cancel_task` writes the marker first, then publishes the notice, so a worker that
/// subscribes and then lists markers misses nothing: a cancel either finds its subscription
/// or left its marker before the listing.
#[derive(Clone)]
pub struct Canceller {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn CancelStore>,
    channel: Arc<dyn CancelChannel>,
    marker_ttl: Duration,
}

impl std::fmt::Debug for Canceller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Canceller")
            .field("store", &self.inner.store.kind())
            .field("channel", &self.inner.channel.kind())
            .field("marker_ttl", &self.inner.marker_ttl)
            .finish()
    }
}

impl Canceller {
    /// A canceller on `store` and `channel`, with markers living [`DEFAULT_MARKER_TTL`].
    pub fn new(store: Arc<dyn CancelStore>, channel: Arc<dyn CancelChannel>) -> Self {
        Self::with_marker_ttl(store, channel, DEFAULT_MARKER_TTL)
    }

    /// Like [`new`](Canceller::new), with markers ignored (and deleted by whoever lists them)
    /// once older than `marker_ttl`.
    pub fn with_marker_ttl(
        store: Arc<dyn CancelStore>,
        channel: Arc<dyn CancelChannel>,
        marker_ttl: Duration,
    ) -> Self {
        Canceller {
            inner: Arc::new(Inner {
                store,
                channel,
                marker_ttl,
            }),
        }
    }

    /// The marker store.
    pub fn store(&self) -> &Arc<dyn CancelStore> {
        &self.inner.store
    }

    /// The wake-up channel.
    pub fn channel(&self) -> &Arc<dyn CancelChannel> {
        &self.inner.channel
    }

    /// How long markers count.
    pub fn marker_ttl(&self) -> Duration {
        self.inner.marker_ttl
    }

    /// Starts the store and the channel.
    pub async fn startup(&self) -> Result<(), CancelError> {
        self.inner.store.startup().await?;
        self.inner.channel.startup().await
    }

    /// Ends every subscription and waits until their resources (inbox queues) are released.
    pub async fn shutdown(&self) -> Result<(), CancelError> {
        self.inner.channel.shutdown().await
    }

    /// Cancels `task_id`, queued or running, on whichever worker holds it.
    pub async fn cancel_task(&self, task_id: &str) -> Result<(), CancelError> {
        self.cancel_task_with_reason(task_id, None).await
    }

    /// Cancels `task_id`, recording `reason` in its marker: writes the marker, then wakes
    /// every listening worker. Returns once both are done; an error after the marker is
    /// written still leaves the cancel recorded (workers see it when they next list markers).
    pub async fn cancel_task_with_reason(
        &self,
        task_id: &str,
        reason: Option<&str>,
    ) -> Result<(), CancelError> {
        let marker = CancelMarker::new(task_id, reason.map(str::to_string))?;
        self.inner.store.put(&marker).await?;
        let reached = self
            .inner
            .channel
            .publish(task_id, &marker.to_notice())
            .await?;
        tracing::info!(
            task_id,
            reason = reason.unwrap_or(""),
            listeners = reached,
            "cancel requested"
        );
        Ok(())
    }

    /// Whether `task_id` has a live (unexpired) cancel marker. One store read.
    pub async fn is_cancelled(&self, task_id: &str) -> Result<bool, CancelError> {
        Ok(self
            .inner
            .store
            .get(task_id)
            .await?
            .is_some_and(|m| !m.is_expired(self.inner.marker_ttl, now_ms())))
    }

    /// Deletes the marker of `task_id` (e.g. once its run is over).
    pub async fn forget(&self, task_id: &str) -> Result<(), CancelError> {
        check_task_id(task_id)?;
        self.inner.store.delete(task_id).await
    }

    /// Every live cancel marker. Expired ones are deleted (failures are logged).
    pub async fn pending_cancels(&self) -> Result<Vec<CancelMarker>, CancelError> {
        let now = now_ms();
        let (expired, live): (Vec<_>, Vec<_>) = self
            .inner
            .store
            .list()
            .await?
            .into_iter()
            .partition(|m| m.is_expired(self.inner.marker_ttl, now));
        for marker in expired {
            if let Err(e) = self.inner.store.delete(&marker.task_id).await {
                tracing::warn!(task_id = %marker.task_id, error = %e, "could not delete an expired cancel marker");
            }
        }
        Ok(live)
    }

    /// Listens for cancels as `listener` (a worker name) until `stop` fires.
    ///
    /// Subscribes to the channel first, then lists the markers: the stream yields every live
    /// marker already stored, then each cancel as it is published, then (after the channel
    /// says notices may have been missed) the stored markers again. A notice that does not
    /// decode is reported with `tracing::error!` naming the problem and skipped; the stream
    /// goes on. Duplicates are possible; cancelling is idempotent.
    pub async fn listen_canceller(
        &self,
        listener: &str,
        stop: CancellationToken,
    ) -> Result<CancelStream, CancelError> {
        let events = self.inner.channel.subscribe(listener, stop).await?;
        let initial: VecDeque<CancelMarker> = self.pending_cancels().await?.into();
        tracing::debug!(
            listener,
            channel = self.inner.channel.kind(),
            store = self.inner.store.kind(),
            pending = initial.len(),
            "listening for cancels"
        );
        let canceller = self.clone();
        let live = futures::stream::unfold(
            (events, VecDeque::new(), canceller),
            |(mut events, mut pending, canceller)| async move {
                loop {
                    if let Some(marker) = pending.pop_front() {
                        return Some((marker, (events, pending, canceller)));
                    }
                    match events.next().await? {
                        ChannelEvent::Notice(body) => match CancelMarker::from_notice(&body) {
                            Ok(marker) if marker.is_expired(canceller.marker_ttl(), now_ms()) => {
                                tracing::debug!(task_id = %marker.task_id, "ignoring an expired cancel notice");
                            }
                            Ok(marker) => pending.push_back(marker),
                            Err(e) => tracing::error!(
                                error = %e,
                                body = %excerpt(&body),
                                "ignoring a malformed cancel message"
                            ),
                        },
                        ChannelEvent::Resync { reason } => {
                            tracing::info!(%reason, "re-reading cancel markers");
                            match canceller.pending_cancels().await {
                                Ok(markers) => pending.extend(markers),
                                Err(e) => tracing::error!(
                                    error = %e,
                                    "could not re-read cancel markers; cancels sent meanwhile reach this worker only when it restarts"
                                ),
                            }
                        }
                    }
                }
            },
        );
        Ok(CancelStream {
            initial,
            live: live.boxed(),
        })
    }
}

/// Lossy text of the start of a body, for logs.
fn excerpt(body: &[u8]) -> String {
    const LIMIT: usize = 256;
    let cut = body.len().min(LIMIT);
    let mut text = String::from_utf8_lossy(&body[..cut]).into_owned();
    if cut < body.len() {
        text.push_str(&format!("... ({} bytes)", body.len()));
    }
    text
}

/// The cancels a listener hears: markers stored before it subscribed, then live ones. Ends
/// when the listener's `stop` fires.
pub struct CancelStream {
    initial: VecDeque<CancelMarker>,
    live: BoxStream<'static, CancelMarker>,
}

impl std::fmt::Debug for CancelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelStream")
            .field("initial", &self.initial.len())
            .finish()
    }
}

impl CancelStream {
    /// Takes the markers that were stored before the subscription (the stream then yields
    /// only live cancels), so a worker can apply them before it takes its first task.
    pub fn take_initial(&mut self) -> Vec<CancelMarker> {
        self.initial.drain(..).collect()
    }
}

impl Stream for CancelStream {
    type Item = CancelMarker;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<CancelMarker>> {
        if let Some(marker) = self.initial.pop_front() {
            return Poll::Ready(Some(marker));
        }
        self.live.poll_next_unpin(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::BroadcastChannel;
    use crate::store::InMemoryCancelStore;

    fn canceller() -> (Canceller, InMemoryCancelStore, BroadcastChannel) {
        let store = InMemoryCancelStore::new();
        let channel = BroadcastChannel::new();
        (
            Canceller::new(Arc::new(store.clone()), Arc::new(channel.clone())),
            store,
            channel,
        )
    }

    #[tokio::test]
    async fn a_cancel_writes_the_marker_then_wakes_listeners() {
        let (c, store, _) = canceller();
        let stop = CancellationToken::new();
        let mut stream = c.listen_canceller("w1", stop.clone()).await.unwrap();
        assert!(stream.take_initial().is_empty());
        c.cancel_task_with_reason("t1", Some("user asked"))
            .await
            .unwrap();
        let heard = stream.next().await.unwrap();
        assert_eq!(heard.task_id, "t1");
        assert_eq!(heard.reason.as_deref(), Some("user asked"));
        assert_eq!(store.get("t1").await.unwrap().unwrap(), heard);
        assert!(c.is_cancelled("t1").await.unwrap());
        assert!(!c.is_cancelled("t2").await.unwrap());
        c.forget("t1").await.unwrap();
        assert!(!c.is_cancelled("t1").await.unwrap());
        stop.cancel();
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn markers_stored_before_subscribing_come_first() {
        let (c, _, _) = canceller();
        c.cancel_task("early").await.unwrap();
        let mut stream = c
            .listen_canceller("w1", CancellationToken::new())
            .await
            .unwrap();
        let initial = stream.take_initial();
        assert_eq!(initial.len(), 1);
        assert_eq!(initial[0].task_id, "early");
        // Without taking them, they are the stream's first items.
        let mut again = c
            .listen_canceller("w2", CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(again.next().await.unwrap().task_id, "early");
    }

    #[tokio::test]
    async fn malformed_and_expired_notices_are_skipped_and_the_stream_goes_on() {
        let (c, _, channel) = canceller();
        let mut stream = c
            .listen_canceller("w", CancellationToken::new())
            .await
            .unwrap();
        channel.send_raw("garbage");
        channel.send_raw(r#"{"task_id":"x","task_name":"canceller","kwargs":{}}"#);
        let old = CancelMarker {
            task_id: "old".into(),
            requested_at_ms: 1,
            reason: None,
        };
        channel.send_raw(old.to_notice());
        c.cancel_task("good").await.unwrap();
        assert_eq!(stream.next().await.unwrap().task_id, "good");
    }

    #[tokio::test]
    async fn expired_markers_are_not_reported_and_are_deleted() {
        let store = InMemoryCancelStore::new();
        let c = Canceller::with_marker_ttl(
            Arc::new(store.clone()),
            Arc::new(BroadcastChannel::new()),
            Duration::from_secs(60),
        );
        store
            .put(&CancelMarker {
                task_id: "stale".into(),
                requested_at_ms: now_ms() - 120_000,
                reason: None,
            })
            .await
            .unwrap();
        c.cancel_task("fresh").await.unwrap();
        assert!(!c.is_cancelled("stale").await.unwrap());
        let pending = c.pending_cancels().await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].task_id, "fresh");
        assert!(store.get("stale").await.unwrap().is_none(), "deleted");
    }

    #[tokio::test]
    async fn a_lagging_listener_re_reads_the_markers() {
        let store = InMemoryCancelStore::new();
        let channel = BroadcastChannel::with_capacity(1);
        let c = Canceller::new(Arc::new(store), Arc::new(channel));
        let mut stream = c
            .listen_canceller("slow", CancellationToken::new())
            .await
            .unwrap();
        for id in ["a", "b", "c"] {
            c.cancel_task(id).await.unwrap();
        }
        let mut heard = Vec::new();
        while heard.len() < 4 {
            heard.push(stream.next().await.unwrap().task_id);
        }
        // The resync yields all three markers, then the one notice kept in the channel.
        let mut all = heard.clone();
        all.sort();
        all.dedup();
        assert_eq!(all, ["a", "b", "c"], "{heard:?}");
    }

    #[tokio::test]
    async fn bad_task_ids_are_refused_before_anything_is_written() {
        let (c, store, _) = canceller();
        let err = c.cancel_task("../etc").await.unwrap_err();
        assert!(matches!(err, CancelError::InvalidTaskId { .. }), "{err}");
        assert!(store.list().await.unwrap().is_empty());
        assert!(c.forget("").await.is_err());
    }
}
