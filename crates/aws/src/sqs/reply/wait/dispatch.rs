//! The orchestrator half, in memory: the dispatch of result notifications — which tasks this
//! process sent with its reply address, who waits for them, and notifications that arrived
//! before anyone asked.
//!
//! A task id moves through `Expected` (sent with our reply address) → `Waiting` (someone
//! awaits it) → gone (a notification woke the waiters), or `Expected` → `Arrived` (notified
//! before anyone asked) → gone (claimed by the first waiter). Notifications for ids not
//! expected here (a duplicate after the first was claimed, a foreign message) are dropped.
//!
//! A *companion* of an expected task is expected with it: a key made of the task id, a `.`
//! and more (a progress entry `<task id>.progress.1` a worker stores while the task runs).
//! Its notification is kept, and its waiter registered, while the task itself still has a
//! slot here; once the task's own result was claimed, later companions are dropped (the
//! result carries what they would have said).
//! Unclaimed entries are bounded: the oldest are forgotten past [`MAX_UNCLAIMED`] entries or
//! [`MAX_UNCLAIMED_BYTES`] of inline results, and a wait for a forgotten id simply reads the
//! durable backend.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use stepq_results::TaskResult;
use tokio::sync::oneshot;

/// Most task ids kept as expected or arrived without a waiter.
pub(crate) const MAX_UNCLAIMED: usize = 100_000;
/// Most bytes of inline results kept without a waiter.
pub(crate) const MAX_UNCLAIMED_BYTES: usize = 64 * 1024 * 1024;

/// What a notification said.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reply {
    /// The result itself (also stored in the durable backend).
    Inline(TaskResult),
    /// The result itself, which has no durable copy.
    Only(TaskResult),
    /// The result is stored in the durable backend.
    Stored,
}

/// What a waiter gets when it registers.
#[derive(Debug)]
pub(crate) enum Claim<'a> {
    /// The task was not sent with this process's reply address (or was forgotten): read the
    /// durable backend.
    NotExpected,
    /// The notification already arrived.
    Ready(Reply),
    /// Not notified yet.
    Pending(Pending<'a>),
    /// The reply queue is gone: read the durable backend.
    Lost,
}

enum Slot {
    Expected {
        seq: u64,
    },
    Waiting(Vec<oneshot::Sender<Reply>>),
    Arrived {
        seq: u64,
        reply: Reply,
        bytes: usize,
    },
}

#[derive(Default)]
struct State {
    slots: HashMap<String, Slot>,
    /// Unclaimed ids in the order they became unclaimed, with the slot's `seq` then (stale
    /// entries are skipped).
    order: VecDeque<(String, u64)>,
    next_seq: u64,
    unclaimed: usize,
    unclaimed_bytes: usize,
    closed: bool,
}

/// The outcome of a delivered notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivered {
    /// Waiters were woken.
    Woken,
    /// Kept for the first waiter.
    Kept,
    /// Not expected here: dropped.
    Unexpected,
}

/// Task ids this process expects notifications for, and their waiters.
#[derive(Default)]
pub(crate) struct Dispatch {
    state: Mutex<State>,
}

impl State {
    /// Whether `key` is a companion of a task that has a slot: that task's id, a `.` and more.
    fn is_companion(&self, key: &str) -> bool {
        key.match_indices('.')
            .any(|(at, _)| at > 0 && self.slots.contains_key(&key[..at]))
    }

    /// Keeps `reply` for the first waiter of `task_id`: `seq` is its slot's place among the
    /// unclaimed when it is counted there already (an `Expected` slot), else it is counted now.
    fn keep(&mut self, task_id: &str, seq: Option<u64>, reply: Reply, bytes: usize) -> Delivered {
        let seq = seq.unwrap_or_else(|| self.push_unclaimed(task_id));
        self.unclaimed_bytes += bytes;
        self.slots
            .insert(task_id.to_string(), Slot::Arrived { seq, reply, bytes });
        self.evict();
        Delivered::Kept
    }

    fn push_unclaimed(&mut self, task_id: &str) -> u64 {
        self.next_seq += 1;
        let seq = self.next_seq;
        self.order.push_back((task_id.to_string(), seq));
        self.unclaimed += 1;
        seq
    }

    /// Forgets the oldest unclaimed entries while over the bounds.
    fn evict(&mut self) {
        while self.unclaimed > MAX_UNCLAIMED || self.unclaimed_bytes > MAX_UNCLAIMED_BYTES {
            let Some((id, seq)) = self.order.pop_front() else {
                break;
            };
            let current = match self.slots.get(&id) {
                Some(Slot::Expected { seq: s }) | Some(Slot::Arrived { seq: s, .. }) => *s == seq,
                _ => false,
            };
            if current {
                self.take_unclaimed(&id);
            }
        }
        // Drop stale order entries when they pile up.
        if self.order.len() > 2 * self.unclaimed + 1024 {
            let slots = &self.slots;
            self.order.retain(|(id, seq)| {
                matches!(slots.get(id),
                    Some(Slot::Expected { seq: s }) | Some(Slot::Arrived { seq: s, .. }) if s == seq)
            });
        }
    }

    /// Removes an `Expected` or `Arrived` slot, keeping the counts; returns an arrived reply.
    fn take_unclaimed(&mut self, task_id: &str) -> Option<Reply> {
        match self.slots.get(task_id) {
            Some(Slot::Expected { .. }) | Some(Slot::Arrived { .. }) => {}
            _ => return None,
        }
        self.unclaimed -= 1;
        match self.slots.remove(task_id) {
            Some(Slot::Arrived { reply, bytes, .. }) => {
                self.unclaimed_bytes -= bytes;
                Some(reply)
            }
            _ => None,
        }
    }
}

impl Dispatch {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that `task_id` was sent with this process's reply address; false once closed.
    pub(crate) fn expect(&self, task_id: &str) -> bool {
        let mut state = self.lock();
        if state.closed {
            return false;
        }
        if !state.slots.contains_key(task_id) {
            let seq = state.push_unclaimed(task_id);
            state
                .slots
                .insert(task_id.to_string(), Slot::Expected { seq });
            state.evict();
        }
        true
    }

    /// Hands a notification to the waiters of `task_id`, or keeps it for the first one.
    /// `bytes` is its size, for the bound on unclaimed results.
    pub(crate) fn deliver(&self, task_id: &str, reply: Reply, bytes: usize) -> Delivered {
        let mut state = self.lock();
        match state.slots.remove(task_id) {
            None if state.is_companion(task_id) => state.keep(task_id, None, reply, bytes),
            None => Delivered::Unexpected,
            Some(Slot::Waiting(senders)) => {
                let mut woken = false;
                for tx in senders {
                    woken |= tx.send(reply.clone()).is_ok();
                }
                if woken {
                    return Delivered::Woken;
                }
                state.keep(task_id, None, reply, bytes)
            }
            Some(Slot::Expected { seq }) => state.keep(task_id, Some(seq), reply, bytes),
            Some(Slot::Arrived {
                seq,
                bytes: old_bytes,
                ..
            }) => {
                // A duplicate (the task ran twice): keep the newer one.
                state.unclaimed_bytes = state.unclaimed_bytes - old_bytes + bytes;
                state
                    .slots
                    .insert(task_id.to_string(), Slot::Arrived { seq, reply, bytes });
                state.evict();
                Delivered::Kept
            }
        }
    }

    /// Whether a result sent with this process's reply address is still to arrive.
    pub(crate) fn awaits_any(&self) -> bool {
        self.lock()
            .slots
            .values()
            .any(|slot| matches!(slot, Slot::Expected { .. } | Slot::Waiting(_)))
    }

    /// Registers a waiter for `task_id`.
    pub(crate) fn register(&self, task_id: &str) -> Claim<'_> {
        let mut state = self.lock();
        if state.closed {
            return Claim::Lost;
        }
        if let Some(Slot::Arrived { .. }) = state.slots.get(task_id) {
            let reply = state.take_unclaimed(task_id).expect("an arrived reply");
            return Claim::Ready(reply);
        }
        let (tx, rx) = oneshot::channel();
        let companion = !state.slots.contains_key(task_id) && state.is_companion(task_id);
        if companion {
            state
                .slots
                .insert(task_id.to_string(), Slot::Waiting(Vec::new()));
        }
        match state.slots.get_mut(task_id) {
            None => return Claim::NotExpected,
            Some(Slot::Waiting(list)) => {
                list.retain(|s| !s.is_closed());
                list.push(tx);
            }
            Some(Slot::Expected { .. }) => {
                state.unclaimed -= 1;
                state
                    .slots
                    .insert(task_id.to_string(), Slot::Waiting(vec![tx]));
            }
            Some(Slot::Arrived { .. }) => unreachable!("taken above"),
        }
        Claim::Pending(Pending {
            dispatch: self,
            task_id: task_id.to_string(),
            rx,
            companion,
        })
    }

    /// Drops the waiters of `task_id` that are gone; with none left it is expected again.
    fn forget_waiters(&self, task_id: &str) {
        let mut state = self.lock();
        let empty = match state.slots.get_mut(task_id) {
            Some(Slot::Waiting(list)) => {
                list.retain(|s| !s.is_closed());
                list.is_empty()
            }
            _ => false,
        };
        if empty {
            let seq = state.push_unclaimed(task_id);
            state
                .slots
                .insert(task_id.to_string(), Slot::Expected { seq });
            state.evict();
        }
    }

    /// Forgets an unclaimed task id (its result was deleted); waiters are kept.
    pub(crate) fn remove(&self, task_id: &str) {
        self.lock().take_unclaimed(task_id);
    }

    /// A notification that arrived for `task_id` and was not claimed yet (without claiming it).
    pub(crate) fn peek(&self, task_id: &str) -> Option<Reply> {
        match self.lock().slots.get(task_id) {
            Some(Slot::Arrived { reply, .. }) => Some(reply.clone()),
            _ => None,
        }
    }

    /// The reply queue is gone: every waiter, present and future, reads the durable backend.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.slots.clear();
        state.order.clear();
        state.unclaimed = 0;
        state.unclaimed_bytes = 0;
    }

    /// Whether [`Dispatch::close`] was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// (unclaimed ids, unclaimed inline bytes, slots), for tests.
    #[cfg(test)]
    fn counts(&self) -> (usize, usize, usize) {
        let s = self.lock();
        (s.unclaimed, s.unclaimed_bytes, s.slots.len())
    }
}

/// A registered waiter; dropping it unregisters.
pub(crate) struct Pending<'a> {
    dispatch: &'a Dispatch,
    task_id: String,
    rx: oneshot::Receiver<Reply>,
    /// Registered as a companion of an expected task (not sent with our address itself).
    companion: bool,
}

impl std::fmt::Debug for Pending<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("task_id", &self.task_id)
            .finish()
    }
}

impl Pending<'_> {
    /// Whether this waits for a companion of an expected task (see the module docs).
    pub(crate) fn is_companion(&self) -> bool {
        self.companion
    }

    /// The notification; `None` if the reply queue went away first.
    pub(crate) async fn recv(&mut self) -> Option<Reply> {
        (&mut self.rx).await.ok()
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.rx.close();
        self.dispatch.forget_waiters(&self.task_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inline(v: i64) -> Reply {
        Reply::Inline(TaskResult::ok(serde_json::json!(v), 0.0))
    }

    #[tokio::test]
    async fn a_waiter_is_woken_by_a_later_notification() {
        let d = Dispatch::default();
        assert!(d.expect("t1"));
        let Claim::Pending(mut pending) = d.register("t1") else {
            panic!("expected a pending claim")
        };
        assert_eq!(d.deliver("t1", inline(1), 10), Delivered::Woken);
        assert_eq!(pending.recv().await, Some(inline(1)));
        drop(pending);
        assert_eq!(d.counts(), (0, 0, 0), "nothing is left behind");
    }

    #[test]
    fn a_notification_before_the_waiter_is_kept_and_claimed_once() {
        let d = Dispatch::default();
        d.expect("t1");
        assert_eq!(d.deliver("t1", Reply::Stored, 10), Delivered::Kept);
        assert_eq!(d.peek("t1"), Some(Reply::Stored));
        assert!(matches!(d.register("t1"), Claim::Ready(Reply::Stored)));
        assert!(matches!(d.register("t1"), Claim::NotExpected));
        assert_eq!(d.counts(), (0, 0, 0));
    }

    #[test]
    fn unexpected_notifications_are_dropped() {
        let d = Dispatch::default();
        assert_eq!(d.deliver("nobody", inline(1), 10), Delivered::Unexpected);
        assert!(matches!(d.register("nobody"), Claim::NotExpected));
        assert_eq!(d.counts(), (0, 0, 0));
    }

    #[tokio::test]
    async fn several_waiters_of_one_task_are_all_woken() {
        let d = Dispatch::default();
        d.expect("t1");
        let Claim::Pending(mut a) = d.register("t1") else {
            panic!()
        };
        let Claim::Pending(mut b) = d.register("t1") else {
            panic!()
        };
        d.deliver("t1", inline(7), 10);
        assert_eq!(a.recv().await, Some(inline(7)));
        assert_eq!(b.recv().await, Some(inline(7)));
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_the_task_expected() {
        let d = Dispatch::default();
        d.expect("t1");
        let claim = d.register("t1");
        assert!(matches!(claim, Claim::Pending(_)));
        drop(claim);
        assert_eq!(d.counts(), (1, 0, 1));
        assert_eq!(d.deliver("t1", inline(2), 10), Delivered::Kept);
        assert!(matches!(d.register("t1"), Claim::Ready(r) if r == inline(2)));
    }

    #[tokio::test]
    async fn closing_turns_waiters_and_later_claims_to_lost() {
        let d = Dispatch::default();
        d.expect("t1");
        d.expect("t2");
        d.deliver("t2", inline(1), 10);
        let Claim::Pending(mut pending) = d.register("t1") else {
            panic!()
        };
        d.close();
        assert!(d.is_closed());
        assert_eq!(pending.recv().await, None);
        drop(pending);
        assert!(matches!(d.register("t2"), Claim::Lost));
        assert!(!d.expect("t3"));
        assert_eq!(d.deliver("t1", inline(1), 10), Delivered::Unexpected);
    }

    #[test]
    fn remove_forgets_unclaimed_entries_and_their_bytes() {
        let d = Dispatch::default();
        d.expect("t1");
        d.deliver("t1", inline(1), 500);
        assert_eq!(d.counts(), (1, 500, 1));
        d.remove("t1");
        assert_eq!(d.counts(), (0, 0, 0));
        // A duplicate notification after removal is unexpected.
        assert_eq!(d.deliver("t1", inline(1), 500), Delivered::Unexpected);
    }

    #[tokio::test]
    async fn companions_of_an_expected_task_are_expected_while_it_is() {
        let d = Dispatch::default();
        d.expect("t1");
        // Arrived before its waiter: kept.
        assert_eq!(d.deliver("t1.progress.1", inline(1), 10), Delivered::Kept);
        assert!(matches!(d.register("t1.progress.1"), Claim::Ready(r) if r == inline(1)));
        // Waited for first: woken.
        let Claim::Pending(mut pending) = d.register("t1.progress.2") else {
            panic!("a companion's waiter is registered")
        };
        assert!(pending.is_companion());
        assert_eq!(d.deliver("t1.progress.2", inline(2), 10), Delivered::Woken);
        assert_eq!(pending.recv().await, Some(inline(2)));
        drop(pending);
        // A key that only starts like the task id, or has no `.` after it, is not one.
        assert!(matches!(d.register("t1x.progress.1"), Claim::NotExpected));
        assert_eq!(
            d.deliver("t1progress", inline(3), 10),
            Delivered::Unexpected
        );
        assert_eq!(d.deliver(".t1", inline(3), 10), Delivered::Unexpected);
        // An unclaimed companion is forgotten with its deletion.
        d.deliver("t1.progress.3", inline(3), 10);
        d.remove("t1.progress.3");
        assert_eq!(d.counts(), (1, 0, 1), "only the task itself is left");
        // Once the task's own result was claimed, its companions are dropped.
        d.deliver("t1", inline(9), 10);
        assert!(matches!(d.register("t1"), Claim::Ready(_)));
        assert_eq!(
            d.deliver("t1.progress.4", inline(4), 10),
            Delivered::Unexpected
        );
        assert!(matches!(d.register("t1.progress.4"), Claim::NotExpected));
        assert_eq!(d.counts(), (0, 0, 0));
    }

    #[test]
    fn duplicates_replace_the_kept_notification() {
        let d = Dispatch::default();
        d.expect("t1");
        d.deliver("t1", inline(1), 100);
        d.deliver("t1", inline(2), 40);
        assert_eq!(d.counts(), (1, 40, 1));
        assert!(matches!(d.register("t1"), Claim::Ready(r) if r == inline(2)));
    }

    #[test]
    fn unclaimed_entries_are_bounded_oldest_first() {
        let d = Dispatch::default();
        for i in 0..MAX_UNCLAIMED + 3 {
            d.expect(&format!("t{i}"));
        }
        let (unclaimed, _, slots) = d.counts();
        assert_eq!((unclaimed, slots), (MAX_UNCLAIMED, MAX_UNCLAIMED));
        assert!(matches!(d.register("t0"), Claim::NotExpected));
        assert!(matches!(d.register("t2"), Claim::NotExpected));
        assert!(matches!(d.register("t3"), Claim::Pending(_)));

        let d = Dispatch::default();
        let big = MAX_UNCLAIMED_BYTES / 2;
        for id in ["a", "b", "c"] {
            d.expect(id);
            d.deliver(id, Reply::Stored, big);
        }
        assert_eq!(d.counts(), (2, 2 * big, 2));
        assert!(matches!(d.register("a"), Claim::NotExpected));
        assert!(matches!(d.register("c"), Claim::Ready(_)));
    }
}
