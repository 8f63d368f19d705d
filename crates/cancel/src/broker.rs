//! `CancellableBroker`: any broker, plus `cancel_task` and `listen_canceller`.

use std::sync::Arc;

use async_trait::async_trait;
use stepq_broker::{Broker, BrokerError, DeliveryStream, Demand, ServiceError, TaskMessage};
use tokio_util::sync::CancellationToken;

use crate::canceller::{CancelStream, Canceller};
use crate::channel::BroadcastChannel;
use crate::error::CancelError;
use crate::store::CancelStore;

/// A broker that can cancel tasks: it delegates the [`Broker`] trait to the wrapped broker and
/// adds [`cancel_task`](CancellableBroker::cancel_task) and
/// [`listen_canceller`](CancellableBroker::listen_canceller) through its [`Canceller`].
///
/// Cloning gives another handle to the same broker and canceller.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use stepq_broker::{Broker, InMemoryBroker, TaskMessage};
/// use stepq_cancel::{CancellableBroker, InMemoryCancelStore};
///
/// let broker = CancellableBroker::in_memory(InMemoryBroker::new(), Arc::new(InMemoryCancelStore::new()));
/// broker.startup().await.unwrap();
/// let message = TaskMessage::new("slow");
/// broker.kick(&message).await.unwrap();
/// broker.cancel_task(&message.task_id).await.unwrap();
/// assert!(broker.canceller().is_cancelled(&message.task_id).await.unwrap());
/// # });
/// ```
pub struct CancellableBroker<B> {
    inner: Arc<B>,
    canceller: Canceller,
}

impl<B> Clone for CancellableBroker<B> {
    fn clone(&self) -> Self {
        CancellableBroker {
            inner: Arc::clone(&self.inner),
            canceller: self.canceller.clone(),
        }
    }
}

impl<B: Broker> std::fmt::Debug for CancellableBroker<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancellableBroker")
            .field("inner", &self.inner.kind())
            .field("canceller", &self.canceller)
            .finish()
    }
}

/// A cancellation error as a broker error (for the [`Broker`] lifecycle hooks).
fn to_broker_error(e: CancelError) -> BrokerError {
    match e {
        CancelError::Channel(e) => e,
        CancelError::Store(e) => BrokerError::Results(e),
        CancelError::Config { field, reason } => BrokerError::Config { field, reason },
        other => BrokerError::Service(ServiceError::new(
            "cancel",
            "CancelError",
            other.to_string(),
            other.class(),
        )),
    }
}

impl<B: Broker> CancellableBroker<B> {
    /// Wraps `inner` with `canceller`.
    pub fn new(inner: B, canceller: Canceller) -> Self {
        CancellableBroker {
            inner: Arc::new(inner),
            canceller,
        }
    }

    /// The in-process flavour: markers in `store`, wake-ups over a tokio broadcast channel
    /// that every listener in this process sees. For the embedded default (in-memory broker,
    /// orchestrator and workers in one process).
    pub fn in_memory(inner: B, store: Arc<dyn CancelStore>) -> Self {
        Self::new(
            inner,
            Canceller::new(store, Arc::new(BroadcastChannel::new())),
        )
    }

    /// The wrapped broker.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The canceller (clone it for the executor's cancel hook and the workers' listeners).
    pub fn canceller(&self) -> &Canceller {
        &self.canceller
    }

    /// Cancels `task_id` wherever it is: see [`Canceller::cancel_task_with_reason`].
    pub async fn cancel_task(&self, task_id: &str) -> Result<(), CancelError> {
        self.canceller.cancel_task(task_id).await
    }

    /// Cancels `task_id`, recording why.
    pub async fn cancel_task_with_reason(
        &self,
        task_id: &str,
        reason: &str,
    ) -> Result<(), CancelError> {
        self.canceller
            .cancel_task_with_reason(task_id, Some(reason))
            .await
    }

    /// The cancels this worker must apply: see [`Canceller::listen_canceller`].
    pub async fn listen_canceller(
        &self,
        listener: &str,
        stop: CancellationToken,
    ) -> Result<CancelStream, CancelError> {
        self.canceller.listen_canceller(listener, stop).await
    }
}

#[async_trait]
impl<B: Broker> Broker for CancellableBroker<B> {
    /// Starts the wrapped broker, then the marker store and the channel.
    async fn startup(&self) -> Result<(), BrokerError> {
        self.inner.startup().await?;
        self.canceller.startup().await.map_err(to_broker_error)
    }

    /// Ends the cancel subscriptions (deleting their inboxes), then shuts the wrapped broker
    /// down; reports the first error.
    async fn shutdown(&self) -> Result<(), BrokerError> {
        let channel = self.canceller.shutdown().await.map_err(to_broker_error);
        if let Err(e) = &channel {
            tracing::error!(error = %e, "cancel channel shutdown failed");
        }
        let inner = self.inner.shutdown().await;
        inner.and(channel)
    }

    async fn kick(&self, message: &TaskMessage) -> Result<(), BrokerError> {
        self.inner.kick(message).await
    }

    async fn kick_batch(&self, messages: &[TaskMessage]) -> Result<(), BrokerError> {
        self.inner.kick_batch(messages).await
    }

    async fn listen(&self, stop: CancellationToken) -> Result<DeliveryStream, BrokerError> {
        self.inner.listen(stop).await
    }

    async fn listen_with_demand(
        &self,
        stop: CancellationToken,
        demand: Demand,
    ) -> Result<DeliveryStream, BrokerError> {
        self.inner.listen_with_demand(stop, demand).await
    }

    async fn probe(&self) -> Result<(), BrokerError> {
        self.inner.probe().await
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn dead_letters(&self) -> Option<std::sync::Arc<dyn stepq_broker::dead_letter::DeadLetters>> {
        self.inner.dead_letters()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::InMemoryCancelStore;
    use futures::StreamExt;
    use stepq_broker::InMemoryBroker;
    use stepq_results::ResultError;

    #[tokio::test]
    async fn the_broker_trait_is_delegated() {
        let inner = InMemoryBroker::new();
        let broker =
            CancellableBroker::in_memory(inner.clone(), Arc::new(InMemoryCancelStore::new()));
        broker.startup().await.unwrap();
        assert_eq!(broker.kind(), "memory");
        broker.kick(&TaskMessage::new("a")).await.unwrap();
        broker
            .kick_batch(&[TaskMessage::new("b"), TaskMessage::new("c")])
            .await
            .unwrap();
        assert_eq!(inner.pending(), 3);
        let stop = CancellationToken::new();
        let mut deliveries = broker.listen(stop.clone()).await.unwrap();
        let first = deliveries.next().await.unwrap().unwrap();
        assert_eq!(first.message().unwrap().task_name, "a");
        first.ack().await.unwrap();
        stop.cancel();
        drop(deliveries);
        broker.shutdown().await.unwrap();
        assert!(format!("{broker:?}").contains("broadcast"));
    }

    #[tokio::test]
    async fn clones_share_the_canceller() {
        let broker = CancellableBroker::in_memory(
            InMemoryBroker::new(),
            Arc::new(InMemoryCancelStore::new()),
        );
        let other = broker.clone();
        let mut heard = other
            .listen_canceller("w", CancellationToken::new())
            .await
            .unwrap();
        broker
            .cancel_task_with_reason("t9", "fail fast")
            .await
            .unwrap();
        let marker = heard.next().await.unwrap();
        assert_eq!(marker.task_id, "t9");
        assert_eq!(marker.reason.as_deref(), Some("fail fast"));
    }

    #[test]
    fn cancel_errors_map_to_broker_errors_keeping_their_class() {
        let store = to_broker_error(CancelError::Store(ResultError::Closed));
        assert!(matches!(store, BrokerError::Results(ResultError::Closed)));
        let config = to_broker_error(CancelError::Config {
            field: "cancel_queue_url",
            reason: "bad".into(),
        });
        assert!(matches!(
            config,
            BrokerError::Config {
                field: "cancel_queue_url",
                ..
            }
        ));
        let other = to_broker_error(CancelError::Malformed { reason: "x".into() });
        assert!(
            other.to_string().contains("malformed cancel message"),
            "{other}"
        );
        assert!(!other.is_temporary());
    }
}
