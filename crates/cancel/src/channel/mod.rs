//! Wake-up channels: the fast half of a cancel, telling every listening worker at once.
//!
//! A channel only has to be fast and reach every current subscriber; it need not be durable,
//! since the marker in the [`CancelStore`](crate::CancelStore) is the record. When a
//! subscriber may have missed notices it is told to re-read the markers
//! ([`ChannelEvent::Resync`]).

mod broadcast;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use tokio_util::sync::CancellationToken;

use crate::error::CancelError;

pub use broadcast::{BroadcastChannel, DEFAULT_BROADCAST_CAPACITY};

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelEvent {
    /// A notice body as it was published (it may not decode: the reader reports and skips it).
    Notice(Bytes),
    /// Notices may have been missed (the subscriber lagged behind, its inbox was recreated,
    /// or the settle window after subscribing ended): re-read the markers.
    Resync {
        /// Why, for logs.
        reason: String,
    },
}

/// The events of one subscription; it ends when the subscription's `stop` fires.
pub type ChannelStream = BoxStream<'static, ChannelEvent>;

/// Publishes cancel notices to every subscriber (every worker).
#[async_trait]
pub trait CancelChannel: Send + Sync + 'static {
    /// Prepares the channel.
    async fn startup(&self) -> Result<(), CancelError> {
        Ok(())
    }

    /// Delivers `body` (the notice of `task_id`) to every current subscriber; returns how
    /// many subscribers (inboxes) it reached.
    async fn publish(&self, task_id: &str, body: &[u8]) -> Result<usize, CancelError>;

    /// Subscribes as `subscriber` (a worker name, for logs and inbox names). Once this
    /// returns, every later publish reaches the returned stream, until `stop` fires or the
    /// stream is dropped; then the subscription's resources (an inbox queue) are released.
    async fn subscribe(
        &self,
        subscriber: &str,
        stop: CancellationToken,
    ) -> Result<ChannelStream, CancelError>;

    /// Ends every subscription and waits until their resources are released.
    async fn shutdown(&self) -> Result<(), CancelError> {
        Ok(())
    }

    /// Short name for logs, e.g. `broadcast`, `sqs-fanout`.
    fn kind(&self) -> &'static str;
}
