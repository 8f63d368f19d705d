//! In-memory broker: in-process, many producers and consumers, SQS-like visibility.
//!
//! Messages wait in a FIFO of visible messages. A delivery leases its message until a deadline
//! (now + visibility timeout) under a fresh receipt, like an SQS receipt handle: ack, nack and
//! extend act only while that receipt is current, so a stale handle never touches a redelivered
//! copy. Expired leases are reclaimed from a deadline heap by the listeners themselves: a waiting
//! listener sleeps until the earliest deadline or until notified of a change (a send, a nack, a
//! shortened lease), never on a polling tick.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, DeliveryStream};
use crate::dead_letter::{DeadLetter, DeadLetters};
use crate::delivery::{Delivery, DeliveryHandle};
use crate::error::{BrokerError, ErrorClass, ServiceError};
use crate::message::TaskMessage;

/// Default visibility timeout, as SQS has it.
const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(30);

/// An in-process broker. Unacked deliveries come back after the visibility timeout, a nack
/// makes a delivery visible again at once.
///
/// Cloning gives another handle to the same queue.
#[derive(Clone)]
pub struct InMemoryBroker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for InMemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryBroker")
            .field("visibility_timeout", &self.shared.visibility_timeout)
            .field("pending", &self.pending())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

struct Shared {
    visibility_timeout: Duration,
    state: Mutex<State>,
    /// Woken (all waiters) whenever a message may have become visible or a deadline moved.
    changed: Notify,
}

/// A stored message.
struct Stored {
    body: Bytes,
    /// When it was sent.
    sent_at: std::time::SystemTime,
    /// Deliveries so far.
    receive_count: u32,
    /// Set while a delivery holds the message.
    lease: Option<Lease>,
}

/// A message [`State::take`] leased: its id, the lease's receipt, and what the delivery
/// carries.
struct Taken {
    id: u64,
    receipt: u64,
    body: Bytes,
    receive_count: u32,
    sent_at: std::time::SystemTime,
}

#[derive(Clone, Copy)]
struct Lease {
    receipt: u64,
    deadline: Instant,
}

#[derive(Default)]
struct State {
    next_id: u64,
    next_receipt: u64,
    messages: HashMap<u64, Stored>,
    /// Ids of messages without a lease, in delivery order.
    visible: VecDeque<u64>,
    /// `(deadline, id, receipt)` of leases; entries whose lease changed since are skipped.
    deadlines: BinaryHeap<Reverse<(Instant, u64, u64)>>,
    in_flight: usize,
    /// Dead-lettered messages, oldest first.
    dead: VecDeque<DeadLetter>,
    /// Dead letters so far (for their ids).
    dead_count: u64,
}

impl State {
    fn push(&mut self, body: Bytes) {
        let id = self.next_id;
        self.next_id += 1;
        self.messages.insert(
            id,
            Stored {
                body,
                sent_at: std::time::SystemTime::now(),
                receive_count: 0,
                lease: None,
            },
        );
        self.visible.push_back(id);
    }

    /// Makes every lease whose deadline passed visible again; true if any did.
    fn reclaim_expired(&mut self, now: Instant) -> bool {
        let mut reclaimed = false;
        while let Some(&Reverse((deadline, id, receipt))) = self.deadlines.peek() {
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            let Some(stored) = self.messages.get_mut(&id) else {
                continue;
            };
            match stored.lease {
                Some(lease) if lease.receipt == receipt && lease.deadline <= now => {
                    stored.lease = None;
                    self.visible.push_back(id);
                    self.in_flight -= 1;
                    reclaimed = true;
                }
                _ => {}
            }
        }
        reclaimed
    }

    /// Leases the next visible message, if any.
    fn take(&mut self, now: Instant, visibility: Duration) -> Option<Taken> {
        let id = self.visible.pop_front()?;
        let stored = self
            .messages
            .get_mut(&id)
            .expect("a visible message is stored");
        let receipt = self.next_receipt;
        self.next_receipt += 1;
        let deadline = now + visibility;
        stored.receive_count += 1;
        stored.lease = Some(Lease { receipt, deadline });
        self.deadlines.push(Reverse((deadline, id, receipt)));
        self.in_flight += 1;
        Some(Taken {
            id,
            receipt,
            body: stored.body.clone(),
            receive_count: stored.receive_count,
            sent_at: stored.sent_at,
        })
    }

    /// The stored message if `receipt` is its current lease.
    fn leased(&mut self, id: u64, receipt: u64) -> Option<&mut Stored> {
        self.messages
            .get_mut(&id)
            .filter(|s| s.lease.is_some_and(|l| l.receipt == receipt))
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((d, _, _))| *d)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every mutation completes
        // before any call that could panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reclaims expired leases, waking listeners if any became visible.
    fn reclaim(&self) {
        let reclaimed = self.lock().reclaim_expired(Instant::now());
        if reclaimed {
            self.changed.notify_waiters();
        }
    }

    /// Waits for the next delivery; `None` once `stop` fired.
    async fn next_delivery(self: &Arc<Self>, stop: &CancellationToken) -> Option<Delivery> {
        loop {
            if stop.is_cancelled() {
                return None;
            }
            // Registered before the state is inspected, so no change in between is missed.
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (taken, wake_at, reclaimed) = {
                let mut state = self.lock();
                let now = Instant::now();
                let reclaimed = state.reclaim_expired(now);
                let taken = state.take(now, self.visibility_timeout);
                (taken, state.next_deadline(), reclaimed)
            };
            if reclaimed {
                self.changed.notify_waiters();
            }
            if let Some(taken) = taken {
                let handle = MemoryHandle {
                    shared: Arc::clone(self),
                    id: taken.id,
                    receipt: taken.receipt,
                };
                return Some(
                    Delivery::new(taken.body, taken.receive_count, Box::new(handle))
                        .with_sent_at(taken.sent_at),
                );
            }
            tokio::select! {
                biased;
                _ = stop.cancelled() => return None,
                _ = &mut notified => {}
                _ = sleep_until(wake_at) => {}
            }
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl InMemoryBroker {
    /// A broker with a 30 s visibility timeout.
    pub fn new() -> Self {
        Self::with_visibility_timeout(DEFAULT_VISIBILITY_TIMEOUT)
    }
    /// A broker with the given visibility timeout.
    pub fn with_visibility_timeout(visibility_timeout: Duration) -> Self {
        InMemoryBroker {
            shared: Arc::new(Shared {
                visibility_timeout,
                state: Mutex::new(State::default()),
                changed: Notify::new(),
            }),
        }
    }
    /// The visibility timeout of deliveries.
    pub fn visibility_timeout(&self) -> Duration {
        self.shared.visibility_timeout
    }
    /// Messages waiting to be delivered (visible).
    pub fn pending(&self) -> usize {
        self.shared.reclaim();
        self.shared.lock().visible.len()
    }
    /// Messages delivered but not yet acked.
    pub fn in_flight(&self) -> usize {
        self.shared.reclaim();
        self.shared.lock().in_flight
    }
    /// Enqueues `body` exactly as given, without checking that it is a task message: for tests
    /// of how consumers handle malformed input (it arrives as a [`Delivery`] whose
    /// [`Delivery::message`] fails).
    pub fn kick_raw(&self, body: impl Into<Bytes>) {
        self.shared.lock().push(body.into());
        self.shared.changed.notify_waiters();
    }
}

impl Default for InMemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Broker for InMemoryBroker {
    async fn kick(&self, message: &TaskMessage) -> Result<(), BrokerError> {
        self.kick_raw(message.to_json());
        Ok(())
    }

    async fn kick_batch(&self, messages: &[TaskMessage]) -> Result<(), BrokerError> {
        {
            let mut state = self.shared.lock();
            for m in messages {
                state.push(m.to_json().into());
            }
        }
        self.shared.changed.notify_waiters();
        Ok(())
    }

    async fn listen(&self, stop: CancellationToken) -> Result<DeliveryStream, BrokerError> {
        let shared = Arc::clone(&self.shared);
        let stream = futures::stream::unfold((shared, stop), |(shared, stop)| async move {
            let delivery = shared.next_delivery(&stop).await?;
            Some((Ok(delivery), (shared, stop)))
        });
        Ok(stream.boxed())
    }

    fn dead_letters(&self) -> Option<Arc<dyn DeadLetters>> {
        Some(Arc::new(self.clone()))
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

/// The broker's dead letters, in memory.
#[async_trait]
impl DeadLetters for InMemoryBroker {
    async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        Ok(self
            .shared
            .lock()
            .dead
            .iter()
            .take(limit)
            .cloned()
            .collect())
    }

    /// Moves them back as new messages (their receive count starts again).
    async fn redrive(&self, ids: Option<&[String]>) -> Result<usize, BrokerError> {
        let moved = {
            let mut state = self.shared.lock();
            let (back, kept): (Vec<DeadLetter>, Vec<DeadLetter>) = state
                .dead
                .drain(..)
                .partition(|d| ids.is_none_or(|ids| ids.contains(&d.id)));
            state.dead = kept.into();
            for letter in &back {
                state.push(letter.body.clone());
            }
            back.len()
        };
        if moved > 0 {
            self.shared.changed.notify_waiters();
        }
        Ok(moved)
    }

    async fn purge(&self) -> Result<usize, BrokerError> {
        let mut state = self.shared.lock();
        let purged = state.dead.len();
        state.dead.clear();
        Ok(purged)
    }
}

/// The lease of one delivery.
struct MemoryHandle {
    shared: Arc<Shared>,
    id: u64,
    receipt: u64,
}

#[async_trait]
impl DeliveryHandle for MemoryHandle {
    async fn ack(&self) -> Result<(), BrokerError> {
        let mut state = self.shared.lock();
        if state.leased(self.id, self.receipt).is_some() {
            state.messages.remove(&self.id);
            state.in_flight -= 1;
        } else {
            tracing::debug!(
                message = self.id,
                "ack of a stale delivery ignored: the message was acked, nacked or redelivered"
            );
        }
        Ok(())
    }

    async fn nack(&self) -> Result<(), BrokerError> {
        {
            let mut state = self.shared.lock();
            let Some(stored) = state.leased(self.id, self.receipt) else {
                tracing::debug!(
                    message = self.id,
                    "nack of a stale delivery ignored: the message was acked, nacked or redelivered"
                );
                return Ok(());
            };
            stored.lease = None;
            state.visible.push_back(self.id);
            state.in_flight -= 1;
        }
        self.shared.changed.notify_waiters();
        Ok(())
    }

    /// Moves the message to the broker's dead letters (kept as long as the broker lives).
    async fn dead_letter(&self, reason: &str, receive_count: u32) -> Result<(), BrokerError> {
        let mut state = self.shared.lock();
        if state.leased(self.id, self.receipt).is_none() {
            tracing::debug!(
                message = self.id,
                "dead-lettering a stale delivery ignored: the message was acked, nacked or \
                 redelivered"
            );
            return Ok(());
        }
        let stored = state
            .messages
            .remove(&self.id)
            .expect("a leased message is stored");
        state.in_flight -= 1;
        state.dead_count += 1;
        let id = format!("dl-{}", state.dead_count);
        state.dead.push_back(DeadLetter {
            id,
            body: stored.body,
            reason: reason.to_string(),
            receive_count,
        });
        Ok(())
    }

    async fn extend_visibility(&self, by: Duration) -> Result<(), BrokerError> {
        {
            let mut state = self.shared.lock();
            let deadline = Instant::now() + by;
            let Some(stored) = state.leased(self.id, self.receipt) else {
                return Err(BrokerError::Service(ServiceError::new(
                    "memory",
                    "MessageNotInflight",
                    "cannot extend the visibility of a delivery that was acked, nacked or \
                     redelivered since",
                    ErrorClass::Permanent,
                )));
            };
            stored.lease = Some(Lease {
                receipt: self.receipt,
                deadline,
            });
            state
                .deadlines
                .push(Reverse((deadline, self.id, self.receipt)));
        }
        // The deadline may be earlier than the one listeners sleep until.
        self.shared.changed.notify_waiters();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WITHIN: Duration = Duration::from_secs(10);

    async fn next(stream: &mut DeliveryStream) -> Delivery {
        tokio::time::timeout(WITHIN, stream.next())
            .await
            .expect("a delivery within 10 s")
            .expect("stream still open")
            .expect("no broker error")
    }

    #[tokio::test]
    async fn malformed_body_arrives_as_a_delivery_whose_message_fails() {
        let broker = InMemoryBroker::new();
        broker.kick_raw(&b"\xffnot json"[..]);
        let mut stream = broker.listen(CancellationToken::new()).await.unwrap();
        let delivery = next(&mut stream).await;
        assert_eq!(delivery.body().as_ref(), b"\xffnot json");
        match delivery.message() {
            Err(BrokerError::Malformed { reason }) => {
                assert!(reason.contains("not a task message"), "{reason}")
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
        delivery.ack().await.unwrap();
        assert_eq!((broker.pending(), broker.in_flight()), (0, 0));
    }

    #[tokio::test]
    async fn counts_pending_and_in_flight() {
        let broker = InMemoryBroker::new();
        broker
            .kick_batch(&[TaskMessage::new("a"), TaskMessage::new("b")])
            .await
            .unwrap();
        assert_eq!((broker.pending(), broker.in_flight()), (2, 0));
        let mut stream = broker.listen(CancellationToken::new()).await.unwrap();
        let first = next(&mut stream).await;
        assert_eq!((broker.pending(), broker.in_flight()), (1, 1));
        first.nack().await.unwrap();
        assert_eq!((broker.pending(), broker.in_flight()), (2, 0));
        let d = next(&mut stream).await;
        d.ack().await.unwrap();
        assert_eq!((broker.pending(), broker.in_flight()), (1, 0));
    }

    #[tokio::test]
    async fn stale_ack_does_not_delete_the_redelivered_copy() {
        let broker = InMemoryBroker::with_visibility_timeout(Duration::from_millis(50));
        broker.kick(&TaskMessage::new("t")).await.unwrap();
        let mut stream = broker.listen(CancellationToken::new()).await.unwrap();
        let first = next(&mut stream).await;
        let second = next(&mut stream).await; // came back after the visibility timeout
        assert_eq!(second.receive_count(), 2);
        let err = first.extend_visibility(Duration::from_secs(5)).await;
        assert!(
            matches!(&err, Err(BrokerError::Service(e)) if e.code == "MessageNotInflight"),
            "{err:?}"
        );
        first.ack().await.unwrap();
        assert_eq!(
            broker.in_flight(),
            1,
            "the stale ack removed the live delivery"
        );
        second
            .extend_visibility(Duration::from_secs(30))
            .await
            .unwrap();
        second.ack().await.unwrap();
        assert_eq!((broker.pending(), broker.in_flight()), (0, 0));
    }

    #[tokio::test]
    async fn stale_nack_is_ignored() {
        let broker = InMemoryBroker::new();
        broker.kick(&TaskMessage::new("t")).await.unwrap();
        let mut stream = broker.listen(CancellationToken::new()).await.unwrap();
        let first = next(&mut stream).await;
        first.nack().await.unwrap();
        let second = next(&mut stream).await;
        // A second handle to the first lease: it was released, so it must not touch `second`.
        let stale = MemoryHandle {
            shared: Arc::clone(&broker.shared),
            id: 0,
            receipt: 0,
        };
        stale.nack().await.unwrap();
        assert_eq!((broker.pending(), broker.in_flight()), (0, 1));
        second.ack().await.unwrap();
    }

    #[tokio::test]
    async fn shortening_a_lease_wakes_a_waiting_listener() {
        let broker = InMemoryBroker::with_visibility_timeout(Duration::from_secs(3600));
        broker.kick(&TaskMessage::new("t")).await.unwrap();
        let mut stream = broker.listen(CancellationToken::new()).await.unwrap();
        let first = next(&mut stream).await;
        let waiter = tokio::spawn(async move { next(&mut stream).await.receive_count() });
        tokio::task::yield_now().await;
        first.extend_visibility(Duration::ZERO).await.unwrap();
        assert_eq!(waiter.await.unwrap(), 2);
    }

    #[test]
    fn default_visibility_is_30_seconds() {
        assert_eq!(
            InMemoryBroker::default().visibility_timeout(),
            Duration::from_secs(30)
        );
    }
}
