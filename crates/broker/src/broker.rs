//! The `Broker` trait.

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use tokio_util::sync::CancellationToken;

use crate::delivery::Delivery;
use crate::error::BrokerError;
use crate::message::TaskMessage;

/// A stream of deliveries from a broker.
pub type DeliveryStream = BoxStream<'static, Result<Delivery, BrokerError>>;

/// How many deliveries a consumer could start right now, asked by a broker before it takes
/// messages from its transport: counts the delivery being asked for, so it is at least 1
/// whenever the consumer polls the stream. A broker that receives in batches (SQS) takes at
/// most this many per receive and hands back at once what it took but can no longer deliver.
///
/// ```
/// use stepq_broker::broker::Demand;
///
/// assert_eq!(Demand::fixed(3).get(), 3);
/// assert_eq!(Demand::from_fn(|| 0).get(), 1); // a poll always asks for one
/// ```
#[derive(Clone)]
pub struct Demand {
    free: Arc<dyn Fn() -> usize + Send + Sync>,
    running: Option<Arc<dyn Fn() -> usize + Send + Sync>>,
}

impl std::fmt::Debug for Demand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Demand")
            .field("free", &self.get())
            .field("running", &self.running())
            .finish()
    }
}

impl Demand {
    /// A demand read from `free` at each receive (values below 1 count as 1).
    pub fn from_fn(free: impl Fn() -> usize + Send + Sync + 'static) -> Self {
        Demand {
            free: Arc::new(free),
            running: None,
        }
    }

    /// A constant demand of `n` (at least 1).
    pub fn fixed(n: usize) -> Self {
        Demand::from_fn(move || n)
    }

    /// No bound: the broker takes as many per receive as its own config allows.
    pub fn unbounded() -> Self {
        Demand::fixed(usize::MAX)
    }

    /// Also tells the broker how many deliveries the consumer is running now (read at each
    /// receive). A broker whose pending receive outlives a killed consumer (an SQS long
    /// poll) keeps it short while deliveries run, so a killed worker's message is not taken
    /// by its dead poll when it reappears.
    ///
    /// ```
    /// use stepq_broker::broker::Demand;
    ///
    /// let demand = Demand::fixed(2).with_running(|| 3);
    /// assert_eq!((demand.get(), demand.running()), (2, 3));
    /// assert_eq!(Demand::fixed(2).running(), 0);
    /// ```
    pub fn with_running(mut self, running: impl Fn() -> usize + Send + Sync + 'static) -> Self {
        self.running = Some(Arc::new(running));
        self
    }

    /// The deliveries the consumer could start now, at least 1.
    pub fn get(&self) -> usize {
        (self.free)().max(1)
    }

    /// The deliveries the consumer runs now (0 unless given by
    /// [`with_running`](Demand::with_running)).
    pub fn running(&self) -> usize {
        self.running.as_ref().map_or(0, |running| running())
    }
}

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

    /// [`Broker::listen`] for a consumer with bounded room: the broker takes from its
    /// transport at most `demand` messages at a time, so it never holds messages invisible that
    /// the consumer cannot start (other consumers get them instead). The default ignores
    /// `demand`, which is right for brokers that take one message per stream poll.
    async fn listen_with_demand(
        &self,
        stop: CancellationToken,
        demand: Demand,
    ) -> Result<DeliveryStream, BrokerError> {
        let _ = demand;
        self.listen(stop).await
    }

    /// Whether the broker answers now, for a readiness check: a cheap request to the
    /// transport (SQS: the queue's attributes). The default (an in-process broker) is always
    /// ready.
    async fn probe(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Short name for logs, e.g. `memory`, `sqs`.
    fn kind(&self) -> &'static str;

    /// Where this broker keeps dead letters, to list, redrive and purge them; `None` if it
    /// has no dead-letter place.
    fn dead_letters(&self) -> Option<Arc<dyn crate::dead_letter::DeadLetters>> {
        None
    }
}
