//! The broker conformance suite against the in-memory broker, one test per check, and proof
//! that the suite catches a broken broker.

use std::sync::Arc;
use std::time::Duration;

use stepq_broker::conformance::{self, BrokerFactory};
use stepq_broker::{Broker, InMemoryBroker};

struct Memory;

#[async_trait::async_trait]
impl BrokerFactory for Memory {
    async fn fresh(&self, visibility_timeout: Duration) -> Arc<dyn Broker> {
        Arc::new(InMemoryBroker::with_visibility_timeout(visibility_timeout))
    }
}

stepq_broker::broker_conformance_tests!(in_memory, Memory);

/// The aggregate entry point runs every check, on a single-threaded runtime too.
#[tokio::test]
async fn whole_suite_passes_on_a_single_threaded_runtime() {
    conformance::run_broker_suite(&Memory).await;
}

/// The suite itself must catch a broken broker: one that hands every message to every
/// listener and ignores acks.
mod catches_a_broken_broker {
    use super::*;
    use futures::StreamExt;
    use std::sync::Mutex;
    use stepq_broker::{BrokerError, Delivery, DeliveryHandle, DeliveryStream, TaskMessage};
    use tokio_util::sync::CancellationToken;

    /// Broadcasts every message to every listener; acks do nothing, so nothing is ever done.
    #[derive(Default)]
    struct Broadcast {
        listeners: Mutex<Vec<tokio::sync::mpsc::UnboundedSender<bytes::Bytes>>>,
        sent: Mutex<Vec<bytes::Bytes>>,
    }

    struct NoOp;

    #[async_trait::async_trait]
    impl DeliveryHandle for NoOp {
        async fn ack(&self) -> Result<(), BrokerError> {
            Ok(())
        }
        async fn nack(&self) -> Result<(), BrokerError> {
            Ok(())
        }
        async fn extend_visibility(&self, _by: Duration) -> Result<(), BrokerError> {
            Ok(())
        }
    }

    #[async_trait::async_trait]
    impl Broker for Broadcast {
        async fn kick(&self, message: &TaskMessage) -> Result<(), BrokerError> {
            let body = bytes::Bytes::from(message.to_json());
            self.sent.lock().unwrap().push(body.clone());
            for l in self.listeners.lock().unwrap().iter() {
                let _ = l.send(body.clone());
            }
            Ok(())
        }
        async fn listen(&self, stop: CancellationToken) -> Result<DeliveryStream, BrokerError> {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            for body in self.sent.lock().unwrap().iter() {
                let _ = tx.send(body.clone());
            }
            self.listeners.lock().unwrap().push(tx);
            let stream = tokio_stream_from(rx)
                .map(|body| Ok(Delivery::new(body, 1, Box::new(NoOp))))
                .take_until(stop.cancelled_owned());
            Ok(stream.boxed())
        }
        fn kind(&self) -> &'static str {
            "broadcast"
        }
    }

    fn tokio_stream_from(
        rx: tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>,
    ) -> impl futures::Stream<Item = bytes::Bytes> {
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
    }

    struct BroadcastFactory;

    #[async_trait::async_trait]
    impl BrokerFactory for BroadcastFactory {
        async fn fresh(&self, _visibility_timeout: Duration) -> Arc<dyn Broker> {
            Arc::new(Broadcast::default())
        }
    }

    #[tokio::test]
    #[should_panic(expected = "a message went to both listeners")]
    async fn duplicate_deliveries_fail_the_listener_check() {
        conformance::check_concurrent_listeners_share_the_work(&BroadcastFactory).await;
    }

    #[tokio::test]
    #[should_panic(expected = "no delivery within")]
    async fn missing_redelivery_fails_the_nack_check() {
        conformance::check_nack_redelivers_at_once(&BroadcastFactory).await;
    }
}
