//! Writes that returned before their commit: step results and outputs are queued to the
//! writer and their callers go on at once (the write is on the path of every step, the
//! commit is not); until the batch holding them commits, reads of this process see them here.
//!
//! Why this loses nothing that matters: the writer commits jobs in the order they were sent,
//! so every commit holds a prefix of what the process wrote (the one exception: a step
//! result's row may be held back up to `SqliteOptions::result_hold`, since its reader, the
//! orchestrator, usually deletes it within that time, and then it is never written; a resume
//! needs the events and outputs, not the results). A step's success reaches the run's
//! event log (a write that waits for its commit) only after its output and result were queued,
//! so a committed success implies its output is committed too. A crash loses a suffix of
//! queued writes — steps whose success was not committed either, which a resume runs again —
//! and never part of a record. A queued write that fails (a full disk) stops the writer: the
//! error is logged, and every later write and [`flush`](crate::SqliteStore::flush) returns it
//! (see `writer.rs`'s `commit_batch`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;

/// What a pending write is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum PendingKey {
    /// A task's result.
    Result(String),
    /// A step output: run, step, output name.
    Output(String, String, String),
}

/// What the pending write leaves once committed.
#[derive(Debug, Clone)]
pub(crate) enum PendingValue {
    /// These bytes are stored.
    Put(Bytes),
    /// Nothing is stored.
    Deleted,
}

/// The pending writes of one store.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    entries: Mutex<HashMap<PendingKey, (u64, PendingValue)>>,
    next: AtomicU64,
    superseded: AtomicU64,
}

impl Pending {
    /// Records a queued write; returns its number, for [`settle`](Pending::settle).
    pub(crate) fn record(&self, key: PendingKey, value: PendingValue) -> u64 {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        self.entries
            .lock()
            .expect("pending lock")
            .insert(key, (seq, value));
        seq
    }

    /// The write numbered `seq` committed (or failed): forget it unless a later write of the
    /// same key is pending.
    pub(crate) fn settle(&self, key: &PendingKey, seq: u64) {
        let mut entries = self.entries.lock().expect("pending lock");
        if entries.get(key).is_some_and(|(s, _)| *s == seq) {
            entries.remove(key);
        }
    }

    /// Whether a later write of `key` than the one numbered `seq` was recorded: the later
    /// one is queued to the writer too, and what it leaves is what the overlay shows, so the
    /// earlier one need not run. (The entry of `seq` stays until `seq` settles; if it is gone
    /// or holds another number, a later write replaced it.)
    pub(crate) fn superseded(&self, key: &PendingKey, seq: u64) -> bool {
        self.entries
            .lock()
            .expect("pending lock")
            .get(key)
            .is_none_or(|(s, _)| *s != seq)
    }

    /// A superseded write was skipped.
    pub(crate) fn count_superseded(&self) {
        self.superseded.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes skipped as superseded so far.
    pub(crate) fn superseded_count(&self) -> u64 {
        self.superseded.load(Ordering::Relaxed)
    }

    /// What a read must see for `key` while a write of it is pending.
    pub(crate) fn lookup(&self, key: &PendingKey) -> Option<PendingValue> {
        self.entries
            .lock()
            .expect("pending lock")
            .get(key)
            .map(|(_, v)| v.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_write_of_the_same_key_outlives_the_earlier_ones_settling() {
        let pending = Pending::default();
        let key = PendingKey::Result("t".into());
        let first = pending.record(key.clone(), PendingValue::Put(Bytes::from_static(b"1")));
        let second = pending.record(key.clone(), PendingValue::Deleted);
        pending.settle(&key, first);
        assert!(matches!(pending.lookup(&key), Some(PendingValue::Deleted)));
        pending.settle(&key, second);
        assert!(pending.lookup(&key).is_none());
    }

    #[test]
    fn only_the_latest_write_of_a_key_is_not_superseded() {
        let pending = Pending::default();
        let (key, other) = (
            PendingKey::Result("t".into()),
            PendingKey::Result("u".into()),
        );
        let first = pending.record(key.clone(), PendingValue::Put(Bytes::from_static(b"1")));
        let unrelated = pending.record(other.clone(), PendingValue::Deleted);
        assert!(!pending.superseded(&key, first));
        let second = pending.record(key.clone(), PendingValue::Deleted);
        assert!(pending.superseded(&key, first));
        assert!(!pending.superseded(&key, second));
        assert!(!pending.superseded(&other, unrelated));
        // Once the later write settled, the earlier one is still superseded.
        pending.settle(&key, second);
        assert!(pending.superseded(&key, first));
    }
}
