//! The `Broker` trait.

use async_trait::async_trait;
use futures::stream::BoxStream;
use tokio_util::sync::CancellationToken;

use crate::delivery::Delivery;
use crate::error::BrokerError;
use crate::message::TaskMessage;

/// A stream of deliveries from a broker.
pub type DeliveryStream = BoxStream<'static, Result<Delivery, BrokerError>>;

/// A message transport: sends task messages and delivers them to listeners at least once.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Prepares the broker (checks the queue exists, creates clients).
    async fn startup(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Releases resources.
    async fn shutdown(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Sends one message.
    async fn kick(&self, message: &TaskMessage) -> Result<(), BrokerError>;

    /// Sends several messages, batched where the transport allows.
    async fn kick_batch(&self, messages: &[TaskMessage]) -> Result<(), BrokerError> {
        for m in messages {
            self.kick(m).await?;
        }
        Ok(())
    }

    /// Delivers messages until `stop` is cancelled. Each delivery must be acked (done) or
    /// nacked (visible again at once); one neither acked nor nacked comes back after the
    /// broker's visibility timeout. When `stop` fires, the stream ends and every message the
    /// broker received but did not yield is released at once.
    async fn listen(&self, stop: CancellationToken) -> Result<DeliveryStream, BrokerError>;

    /// Short name for logs, e.g. `memory`, `sqs`.
    fn kind(&self) -> &'static str;
}
