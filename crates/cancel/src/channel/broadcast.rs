//! In-process wake-ups over a tokio broadcast channel.

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{CancelChannel, ChannelEvent, ChannelStream};
use crate::error::CancelError;

/// Notices kept for a subscriber that is behind; one further behind is told to resync.
pub const DEFAULT_BROADCAST_CAPACITY: usize = 1024;

/// Wake-ups for workers in the same process as the canceller (the embedded default): every
/// subscriber sees every notice. A subscriber that falls more than the capacity behind gets
/// [`ChannelEvent::Resync`] and re-reads the markers, so nothing is lost.
///
/// Cloning gives another handle to the same channel.
#[derive(Debug, Clone)]
pub struct BroadcastChannel {
    sender: broadcast::Sender<Bytes>,
}

impl Default for BroadcastChannel {
    fn default() -> Self {
        Self::new()
    }
}

impl BroadcastChannel {
    /// A channel keeping [`DEFAULT_BROADCAST_CAPACITY`] notices per lagging subscriber.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_BROADCAST_CAPACITY)
    }

    /// A channel keeping `capacity` (at least 1) notices per lagging subscriber.
    pub fn with_capacity(capacity: usize) -> Self {
        BroadcastChannel {
            sender: broadcast::channel(capacity.max(1)).0,
        }
    }

    /// Publishes a raw body, as a foreign producer could (for tests of malformed notices);
    /// returns how many subscribers got it.
    pub fn send_raw(&self, body: impl Into<Bytes>) -> usize {
        self.sender.send(body.into()).unwrap_or(0)
    }

    /// Current subscribers.
    pub fn subscribers(&self) -> usize {
        self.sender.receiver_count()
    }
}

#[async_trait]
impl CancelChannel for BroadcastChannel {
    async fn publish(&self, _task_id: &str, body: &[u8]) -> Result<usize, CancelError> {
        Ok(self.send_raw(Bytes::copy_from_slice(body)))
    }

    async fn subscribe(
        &self,
        _subscriber: &str,
        stop: CancellationToken,
    ) -> Result<ChannelStream, CancelError> {
        let receiver = self.sender.subscribe();
        let stream = futures::stream::unfold((receiver, stop), |(mut rx, stop)| async move {
            let event = tokio::select! {
                biased;
                _ = stop.cancelled() => return None,
                received = rx.recv() => match received {
                    Ok(body) => ChannelEvent::Notice(body),
                    Err(broadcast::error::RecvError::Lagged(missed)) => ChannelEvent::Resync {
                        reason: format!("the subscriber fell behind and missed {missed} notice(s)"),
                    },
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            Some((event, (rx, stop)))
        });
        Ok(stream.boxed())
    }

    fn kind(&self) -> &'static str {
        "broadcast"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_subscriber_sees_every_notice() {
        let channel = BroadcastChannel::new();
        let stop = CancellationToken::new();
        let mut a = channel.subscribe("a", stop.clone()).await.unwrap();
        let mut b = channel.subscribe("b", stop.clone()).await.unwrap();
        assert_eq!(channel.publish("t1", b"one").await.unwrap(), 2);
        assert_eq!(channel.publish("t2", b"two").await.unwrap(), 2);
        for s in [&mut a, &mut b] {
            assert_eq!(s.next().await, Some(ChannelEvent::Notice("one".into())));
            assert_eq!(s.next().await, Some(ChannelEvent::Notice("two".into())));
        }
        stop.cancel();
        assert_eq!(a.next().await, None);
        assert_eq!(channel.kind(), "broadcast");
    }

    #[tokio::test]
    async fn publishing_without_subscribers_reaches_nobody() {
        let channel = BroadcastChannel::default();
        assert_eq!(channel.publish("t", b"x").await.unwrap(), 0);
        assert_eq!(channel.subscribers(), 0);
    }

    #[tokio::test]
    async fn a_lagging_subscriber_is_told_to_resync() {
        let channel = BroadcastChannel::with_capacity(2);
        let mut s = channel
            .subscribe("slow", CancellationToken::new())
            .await
            .unwrap();
        for body in ["1", "2", "3", "4"] {
            channel.send_raw(body);
        }
        match s.next().await {
            Some(ChannelEvent::Resync { reason }) => {
                assert!(reason.contains("missed 2"), "{reason}")
            }
            other => panic!("expected a resync, got {other:?}"),
        }
        assert_eq!(s.next().await, Some(ChannelEvent::Notice("3".into())));
    }
}
