//! A routed listener's one stream over its lanes' streams: each receive round tries the levels
//! in the [`LevelPicker`]'s order (queues of one level taking turns) and takes no more
//! deliveries than the consumer can start.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use super::LevelOrder;
use crate::broker::{DeliveryStream, Demand};
use crate::delivery::Delivery;
use crate::error::BrokerError;

/// The order in which one receive round tries the priority levels (0 = highest).
///
/// Strict: always highest first. Weighted: smooth weighted round-robin picks the level that
/// goes first (each level goes first `weight / sum` of the rounds, evenly spread), the others
/// follow highest first.
///
/// ```
/// use stepq_broker::routing::{LevelOrder, LevelPicker};
///
/// let mut strict = LevelPicker::new(&LevelOrder::Strict, 3);
/// assert_eq!(strict.next_round(), [0, 1, 2]);
/// let mut weighted = LevelPicker::new(&LevelOrder::Weighted(vec![2, 1]), 2);
/// let firsts: Vec<usize> = (0..6).map(|_| weighted.next_round()[0]).collect();
/// assert_eq!(firsts, [0, 1, 0, 0, 1, 0]);
/// ```
#[derive(Debug, Clone)]
pub struct LevelPicker {
    levels: usize,
    weights: Option<Vec<i64>>,
    current: Vec<i64>,
}

impl LevelPicker {
    /// A picker over `levels` levels in `order` (weights beyond `levels` are ignored, missing
    /// ones count 1).
    pub fn new(order: &LevelOrder, levels: usize) -> Self {
        let weights = match order {
            LevelOrder::Strict => None,
            LevelOrder::Weighted(w) => Some(
                (0..levels)
                    .map(|i| i64::from(w.get(i).copied().unwrap_or(1).max(1)))
                    .collect(),
            ),
        };
        LevelPicker {
            levels,
            weights,
            current: vec![0; levels],
        }
    }

    /// The levels in the order the next round tries them.
    pub fn next_round(&mut self) -> Vec<usize> {
        let Some(weights) = &self.weights else {
            return (0..self.levels).collect();
        };
        let total: i64 = weights.iter().sum();
        for (current, weight) in self.current.iter_mut().zip(weights) {
            *current += weight;
        }
        let mut first = 0;
        for (i, &current) in self.current.iter().enumerate() {
            if current > self.current[first] {
                first = i;
            }
        }
        self.current[first] -= total;
        std::iter::once(first)
            .chain((0..self.levels).filter(|&l| l != first))
            .collect()
    }
}

/// The merged stream (see the module docs).
struct Merged {
    /// `levels[level][k]`: the stream of the k-th consumed queue's lane at that level.
    levels: Vec<Vec<DeliveryStream>>,
    /// Per level, the queue that goes first next round.
    turn: Vec<usize>,
    picker: LevelPicker,
    /// The order of the round under way (kept until it yields, so wake-ups do not advance
    /// the weighted order).
    round: Option<Vec<usize>>,
    /// Taken but not yet yielded: fewer than the consumer can start.
    buffer: VecDeque<Delivery>,
    /// The levels served by the round under way (their queues' turns move on).
    served: Vec<usize>,
    error: Option<BrokerError>,
    ended: bool,
    demand: Demand,
    stop: CancellationToken,
    /// Where a dropped stream's release of what it held goes, for the broker's shutdown.
    drains: Drains,
}

/// Releases of dropped listeners still under way; [`RoutedBroker`](super::RoutedBroker)'s
/// shutdown waits for them.
pub(super) type Drains = std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>;

/// One stream over `levels` (highest first), ordered by `picker`.
pub(super) fn merged(
    levels: Vec<Vec<DeliveryStream>>,
    picker: LevelPicker,
    demand: Demand,
    stop: CancellationToken,
    drains: Drains,
) -> DeliveryStream {
    let turn = vec![0; levels.len()];
    Merged {
        levels,
        turn,
        picker,
        round: None,
        buffer: VecDeque::new(),
        served: Vec::new(),
        error: None,
        ended: false,
        demand,
        stop,
        drains,
    }
    .boxed()
}

impl Merged {
    /// Takes what the lanes have ready, in this round's order, up to `room` in all.
    fn take_ready(&mut self, cx: &mut Context<'_>, room: usize) {
        let round = match &self.round {
            Some(round) => round.clone(),
            None => {
                let round = self.picker.next_round();
                self.round = Some(round.clone());
                round
            }
        };
        for level in round {
            let queues = self.levels[level].len();
            // One delivery per queue per pass, so queues of one level share the room.
            let mut pending = vec![false; queues];
            loop {
                let mut took = false;
                for k in 0..queues {
                    let q = (self.turn[level] + k) % queues;
                    if pending[q] {
                        continue;
                    }
                    if self.buffer.len() >= room {
                        return;
                    }
                    match self.levels[level][q].poll_next_unpin(cx) {
                        Poll::Ready(Some(Ok(delivery))) => {
                            self.buffer.push_back(delivery);
                            self.served.push(level);
                            took = true;
                        }
                        Poll::Ready(Some(Err(e))) => {
                            self.error = Some(e);
                            return;
                        }
                        Poll::Ready(None) => {
                            self.ended = true;
                            return;
                        }
                        Poll::Pending => pending[q] = true,
                    }
                }
                if !took {
                    break;
                }
            }
        }
    }
}

impl Stream for Merged {
    type Item = Result<Delivery, BrokerError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.stop.is_cancelled() {
            return Poll::Ready(None);
        }
        if let Some(delivery) = this.buffer.pop_front() {
            return Poll::Ready(Some(Ok(delivery)));
        }
        if this.error.is_none() && !this.ended {
            let room = this.demand.get();
            this.take_ready(cx, room);
        }
        if let Some(delivery) = this.buffer.pop_front() {
            this.round = None;
            // The next round starts at the next queue of each level served.
            this.served.sort_unstable();
            this.served.dedup();
            for &level in &this.served {
                this.turn[level] = (this.turn[level] + 1) % this.levels[level].len().max(1);
            }
            this.served.clear();
            return Poll::Ready(Some(Ok(delivery)));
        }
        if let Some(e) = this.error.take() {
            return Poll::Ready(Some(Err(e)));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

impl Drop for Merged {
    /// Makes the deliveries taken but not yielded visible again at once.
    fn drop(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                count = self.buffer.len(),
                "no runtime to release a stopped listener's messages; they come back after \
                 their visibility timeout"
            );
            return;
        };
        let taken: Vec<Delivery> = self.buffer.drain(..).collect();
        let drain = runtime.spawn(async move {
            for delivery in taken {
                if let Err(e) = delivery.nack().await {
                    tracing::debug!(
                        error = %e,
                        "could not release a message; it comes back after its visibility timeout"
                    );
                }
            }
        });
        let mut drains = self.drains.lock().unwrap_or_else(|p| p.into_inner());
        drains.retain(|d| !d.is_finished());
        drains.push(drain);
    }
}
