//! Queue routing and priority over any broker: a [`RoutedBroker`] is a set of *lanes*, one
//! broker per (named queue, priority level), each a queue of its own (on SQS, one SQS queue
//! per lane). A message goes to the lane its [`QUEUE_LABEL`] and [`PRIORITY_LABEL`] name
//! (the default queue and the default level when unlabelled); a listener consumes the lanes
//! of the queues it is given ([`RoutedBroker::consuming`]), taking from higher levels first
//! in the [`LevelOrder`] the routes set:
//!
//! - [`LevelOrder::Strict`]: the highest level with a message always goes first (a steady
//!   stream of high messages starves lower levels).
//! - [`LevelOrder::Weighted`] (the default): each receive round starts at a level chosen by
//!   smooth weighted round-robin (weights 4 : 2 : 1 for high / normal / low by default), then
//!   goes down the others in order, so a level with messages waits at most `sum / weight`
//!   rounds: starvation-free, and a higher level is still served first almost always.
//!
//! Queues of one level take turns. The merged listener never takes more deliveries from its
//! lanes than its consumer can start (the [`Demand`]; on SQS each lane's own listener may
//! hold a poll's worth more, see [`RoutedBroker`]); a delivery it took but did not yield
//! when it stops is made visible again at once, and [`Broker::shutdown`] waits for that.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use futures::StreamExt;
//! use stepq_broker::routing::{Routes, RoutedBroker, PRIORITY_LABEL};
//! use stepq_broker::{Broker, InMemoryBroker, TaskMessage};
//!
//! let routes = Routes::new(["high", "normal", "low"], "normal").unwrap().strict();
//! let broker = RoutedBroker::with_lanes(routes, ["default"], |_, _| {
//!     Arc::new(InMemoryBroker::new()) as Arc<dyn Broker>
//! })
//! .unwrap();
//! broker.kick(&TaskMessage::new("backfill").with_label(PRIORITY_LABEL, "low")).await.unwrap();
//! broker.kick(&TaskMessage::new("urgent").with_label(PRIORITY_LABEL, "high")).await.unwrap();
//!
//! let mut stream = broker.listen(Default::default()).await.unwrap();
//! let first = stream.next().await.unwrap().unwrap();
//! assert_eq!(TaskMessage::from_json(first.body()).unwrap().task_name, "urgent");
//! # });
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, DeliveryStream, Demand};
use crate::dead_letter::DeadLetters;
use crate::error::BrokerError;
use crate::message::TaskMessage;

mod dead_letters;
mod merge;
#[cfg(test)]
mod tests;

pub use merge::LevelPicker;

/// The label naming the queue a message goes to (absent: [`DEFAULT_QUEUE`]).
pub const QUEUE_LABEL: &str = "queue";
/// The label naming a message's priority level (absent: the routes' default level).
pub const PRIORITY_LABEL: &str = "priority";
/// The queue every message goes to unless routed elsewhere.
pub const DEFAULT_QUEUE: &str = "default";

/// How a listener orders the priority levels of its lanes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LevelOrder {
    /// The highest level with a message first, always.
    Strict,
    /// Smooth weighted round-robin over the levels (one weight per level, highest first,
    /// each at least 1): starvation-free.
    Weighted(Vec<u32>),
}

/// Routing errors: a name that is not a lane name, or a route that does not exist.
fn config_error(field: &'static str, reason: String) -> BrokerError {
    BrokerError::Config { field, reason }
}

/// Whether `name` can name a queue or a level: 1-40 of `a-z`, `0-9`, `_`, `-` (it becomes
/// part of a queue name).
pub fn is_lane_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The priority levels (highest first), the default one, and how listeners order them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routes {
    levels: Vec<String>,
    default_level: usize,
    order: LevelOrder,
}

impl Routes {
    /// Levels `levels` (highest first), of which `default` is the one unlabelled messages get,
    /// ordered by weights halving level by level (4 : 2 : 1 for three levels).
    pub fn new<S: Into<String>>(
        levels: impl IntoIterator<Item = S>,
        default: &str,
    ) -> Result<Self, BrokerError> {
        let levels: Vec<String> = levels.into_iter().map(Into::into).collect();
        if levels.is_empty() {
            return Err(config_error("priority.levels", "no level".into()));
        }
        for (i, level) in levels.iter().enumerate() {
            if !is_lane_name(level) {
                return Err(config_error(
                    "priority.levels",
                    format!("`{level}` is not a level name (1-40 of a-z, 0-9, _ and -)"),
                ));
            }
            if levels[..i].contains(level) {
                return Err(config_error(
                    "priority.levels",
                    format!("`{level}` is listed twice"),
                ));
            }
        }
        let default_level = levels.iter().position(|l| l == default).ok_or_else(|| {
            config_error(
                "priority.default",
                format!("`{default}` is not one of the levels {levels:?}"),
            )
        })?;
        let n = levels.len().min(31);
        let weights = (0..levels.len())
            .map(|i| 1u32 << (n - 1 - i.min(n - 1)))
            .collect();
        Ok(Routes {
            levels,
            default_level,
            order: LevelOrder::Weighted(weights),
        })
    }

    /// One level, `normal`: no priority.
    pub fn single() -> Self {
        Routes::new(["normal"], "normal").expect("a valid level")
    }

    /// These routes with strict order.
    #[must_use]
    pub fn strict(mut self) -> Self {
        self.order = LevelOrder::Strict;
        self
    }

    /// These routes with weighted order of these weights (one per level, each at least 1).
    pub fn weighted(mut self, weights: Vec<u32>) -> Result<Self, BrokerError> {
        if weights.len() != self.levels.len() {
            return Err(config_error(
                "priority.weights",
                format!("{} weights for {} levels", weights.len(), self.levels.len()),
            ));
        }
        if weights.contains(&0) {
            return Err(config_error(
                "priority.weights",
                "a weight of 0 would starve its level; the least is 1".into(),
            ));
        }
        self.order = LevelOrder::Weighted(weights);
        Ok(self)
    }

    /// The levels, highest first.
    pub fn levels(&self) -> &[String] {
        &self.levels
    }

    /// The level unlabelled messages get.
    pub fn default_level(&self) -> &str {
        &self.levels[self.default_level]
    }

    /// How listeners order the levels.
    pub fn order(&self) -> &LevelOrder {
        &self.order
    }

    /// The index of level `name`, or an error naming the known levels.
    pub fn level_index(&self, name: &str) -> Result<usize, BrokerError> {
        self.levels.iter().position(|l| l == name).ok_or_else(|| {
            config_error(
                "priority",
                format!(
                    "`{name}` is not a priority level (the levels are {})",
                    self.levels.join(", ")
                ),
            )
        })
    }
}

/// One lane: the broker holding the messages of one queue at one level.
#[derive(Clone)]
pub struct Lane {
    /// The queue's name.
    pub queue: String,
    /// The level's name.
    pub level: String,
    /// The broker of this lane.
    pub broker: Arc<dyn Broker>,
}

impl Lane {
    /// `queue/level`, as logs and dead-letter ids name the lane.
    pub fn name(&self) -> String {
        format!("{}/{}", self.queue, self.level)
    }
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane")
            .field("queue", &self.queue)
            .field("level", &self.level)
            .field("broker", &self.broker.kind())
            .finish()
    }
}

/// A broker over lanes (see the [module docs](self)). Cloning shares the lanes.
///
/// On SQS each lane's listener keeps its own long poll, so a worker consuming several lanes
/// can have received up to one poll's worth per lane while it has fewer free slots: those
/// messages wait in that lane's listener until the worker's next free slot (renewed past
/// half the visibility timeout, else left to return to the queue) rather than going to an
/// idle worker at once. Lanes few and busy are where this costs least; one SQS listener over
/// several queues would not have it.
#[derive(Clone)]
pub struct RoutedBroker {
    routes: Arc<Routes>,
    /// The queue names, the default queue first, then in the order given.
    queues: Arc<Vec<String>>,
    /// `lanes[queue][level]`.
    lanes: Arc<Vec<Vec<Lane>>>,
    /// The queues a listener consumes (indices into `queues`): all unless narrowed.
    consume: Vec<usize>,
    /// Releases of dropped listeners' held deliveries, awaited by `shutdown`.
    drains: merge::Drains,
}

impl std::fmt::Debug for RoutedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutedBroker")
            .field("queues", &self.queues)
            .field("levels", &self.routes.levels)
            .field("order", &self.routes.order)
            .field("consumes", &self.consumed_queues().collect::<Vec<_>>())
            .finish()
    }
}

impl RoutedBroker {
    /// A routed broker over `queues` (unique lane names; [`DEFAULT_QUEUE`] is added first if
    /// missing) with one lane per queue and level, each built by `lane(queue, level)`.
    pub fn with_lanes<S: AsRef<str>>(
        routes: Routes,
        queues: impl IntoIterator<Item = S>,
        mut lane: impl FnMut(&str, &str) -> Arc<dyn Broker>,
    ) -> Result<Self, BrokerError> {
        let mut names = vec![DEFAULT_QUEUE.to_string()];
        for queue in queues {
            let queue = queue.as_ref();
            if !is_lane_name(queue) {
                return Err(config_error(
                    "queues",
                    format!("`{queue}` is not a queue name (1-40 of a-z, 0-9, _ and -)"),
                ));
            }
            if !names.iter().any(|n| n == queue) {
                names.push(queue.to_string());
            }
        }
        let lanes = names
            .iter()
            .map(|queue| {
                routes
                    .levels
                    .iter()
                    .map(|level| Lane {
                        queue: queue.clone(),
                        level: level.clone(),
                        broker: lane(queue, level),
                    })
                    .collect()
            })
            .collect();
        Ok(RoutedBroker {
            routes: Arc::new(routes),
            consume: (0..names.len()).collect(),
            queues: Arc::new(names),
            lanes: Arc::new(lanes),
            drains: Default::default(),
        })
    }

    /// This broker listening to `queues` only (sending is unchanged); an unknown queue is an
    /// error naming the known ones, and so is an empty list.
    pub fn consuming<S: AsRef<str>>(
        mut self,
        queues: impl IntoIterator<Item = S>,
    ) -> Result<Self, BrokerError> {
        let mut consume = Vec::new();
        for queue in queues {
            let index = self.queue_index(queue.as_ref())?;
            if !consume.contains(&index) {
                consume.push(index);
            }
        }
        if consume.is_empty() {
            return Err(config_error("queues", "a worker consumes no queue".into()));
        }
        self.consume = consume;
        Ok(self)
    }

    /// The routes.
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// Every queue's name, the default queue first.
    pub fn queues(&self) -> &[String] {
        &self.queues
    }

    /// The queues a listener consumes.
    pub fn consumed_queues(&self) -> impl Iterator<Item = &str> {
        self.consume.iter().map(|&q| self.queues[q].as_str())
    }

    /// Every lane, queue by queue, highest level first.
    pub fn lanes(&self) -> impl Iterator<Item = &Lane> {
        self.lanes.iter().flatten()
    }

    fn queue_index(&self, name: &str) -> Result<usize, BrokerError> {
        self.queues.iter().position(|q| q == name).ok_or_else(|| {
            config_error(
                "queues",
                format!(
                    "`{name}` is not a declared queue (the queues are {})",
                    self.queues.join(", ")
                ),
            )
        })
    }

    /// The lane a message goes to, by its labels; an unknown queue or level is an error
    /// naming the known ones.
    pub fn lane_of(&self, message: &TaskMessage) -> Result<&Lane, BrokerError> {
        let (queue, level) = self.route(message)?;
        Ok(&self.lanes[queue][level])
    }

    /// (queue, level) indices of the lane a message goes to.
    fn route(&self, message: &TaskMessage) -> Result<(usize, usize), BrokerError> {
        let queue = self.queue_index(message.label(QUEUE_LABEL).unwrap_or(DEFAULT_QUEUE))?;
        let level = match message.label(PRIORITY_LABEL) {
            Some(level) => self.routes.level_index(level)?,
            None => self.routes.default_level,
        };
        Ok((queue, level))
    }

    /// Every lane's broker, each once.
    fn brokers(&self) -> impl Iterator<Item = &Arc<dyn Broker>> {
        self.lanes().map(|l| &l.broker)
    }
}

#[async_trait]
impl Broker for RoutedBroker {
    async fn startup(&self) -> Result<(), BrokerError> {
        for broker in self.brokers() {
            broker.startup().await?;
        }
        Ok(())
    }

    /// Waits for stopped listeners' releases, then shuts every lane down; reports the first
    /// failure.
    async fn shutdown(&self) -> Result<(), BrokerError> {
        let drains: Vec<_> =
            std::mem::take(&mut *self.drains.lock().unwrap_or_else(|p| p.into_inner()));
        for drain in drains {
            let _ = drain.await;
        }
        let mut first = Ok(());
        for broker in self.brokers() {
            if let Err(e) = broker.shutdown().await {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    async fn kick(&self, message: &TaskMessage) -> Result<(), BrokerError> {
        self.lane_of(message)?.broker.kick(message).await
    }

    /// One `kick_batch` per lane, in the order the lanes first appear in `messages`; a
    /// message with an unknown route fails the batch before anything is sent.
    async fn kick_batch(&self, messages: &[TaskMessage]) -> Result<(), BrokerError> {
        let mut groups: BTreeMap<(usize, usize), Vec<TaskMessage>> = BTreeMap::new();
        let mut order = Vec::new();
        for message in messages {
            let key = self.route(message)?;
            let group = groups.entry(key).or_default();
            if group.is_empty() {
                order.push(key);
            }
            group.push(message.clone());
        }
        for key in order {
            let (queue, level) = key;
            self.lanes[queue][level]
                .broker
                .kick_batch(&groups[&key])
                .await?;
        }
        Ok(())
    }

    async fn listen(&self, stop: CancellationToken) -> Result<DeliveryStream, BrokerError> {
        self.listen_with_demand(stop, Demand::unbounded()).await
    }

    async fn listen_with_demand(
        &self,
        stop: CancellationToken,
        demand: Demand,
    ) -> Result<DeliveryStream, BrokerError> {
        // levels[level] = the consumed queues' lane streams at that level.
        let mut levels = Vec::with_capacity(self.routes.levels.len());
        for level in 0..self.routes.levels.len() {
            let mut streams = Vec::with_capacity(self.consume.len());
            for &queue in &self.consume {
                let lane = &self.lanes[queue][level];
                streams.push(
                    lane.broker
                        .listen_with_demand(stop.clone(), demand.clone())
                        .await?,
                );
            }
            levels.push(streams);
        }
        let picker = LevelPicker::new(&self.routes.order, self.routes.levels.len());
        Ok(merge::merged(
            levels,
            picker,
            demand,
            stop,
            self.drains.clone(),
        ))
    }

    /// Probes every lane; the first failure is the answer.
    async fn probe(&self) -> Result<(), BrokerError> {
        for broker in self.brokers() {
            broker.probe().await?;
        }
        Ok(())
    }

    fn kind(&self) -> &'static str {
        self.lanes[0][0].broker.kind()
    }

    /// Every lane's dead letters as one place, if the lanes have one.
    fn dead_letters(&self) -> Option<Arc<dyn DeadLetters>> {
        dead_letters::RoutedDeadLetters::of(self.lanes().cloned().collect())
            .map(|d| Arc::new(d) as Arc<dyn DeadLetters>)
    }
}
