//! The worker's local set of cancelled task ids.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use crate::marker::{now_ms, CancelMarker};

/// Task ids this worker knows are cancelled, each until its marker expires. Checking it costs
/// a hash lookup: this is what lets a worker refuse a cancelled task at no per-task cost.
#[derive(Debug)]
pub struct CancelledSet {
    ttl: Duration,
    ids: Mutex<HashMap<String, u64>>,
    /// Bumped on every insert, so waiters are woken without polling.
    version: watch::Sender<u64>,
}

impl CancelledSet {
    /// An empty set whose entries count for `ttl` after their cancel was requested.
    pub fn new(ttl: Duration) -> Self {
        CancelledSet {
            ttl,
            ids: Mutex::new(HashMap::new()),
            version: watch::channel(0).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn expired(&self, requested_at_ms: u64, now: u64) -> bool {
        now.saturating_sub(requested_at_ms) > self.ttl.as_millis().min(u64::MAX as u128) as u64
    }

    /// Records a cancel (dropping expired entries); true if the id was not known yet.
    pub fn insert(&self, marker: &CancelMarker) -> bool {
        let now = now_ms();
        let added = {
            let mut ids = self.lock();
            ids.retain(|_, at| !self.expired(*at, now));
            if self.expired(marker.requested_at_ms, now) {
                false
            } else {
                ids.insert(marker.task_id.clone(), marker.requested_at_ms)
                    .is_none()
            }
        };
        self.version.send_modify(|v| *v += 1);
        added
    }

    /// Whether `task_id` is known to be cancelled.
    pub fn contains(&self, task_id: &str) -> bool {
        self.lock()
            .get(task_id)
            .is_some_and(|at| !self.expired(*at, now_ms()))
    }

    /// How many cancelled ids are known.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no cancelled id is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The known cancelled ids, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.lock().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Waits until `task_id` is known to be cancelled (for tools and tests that must know a
    /// worker heard a cancel).
    pub async fn wait_for(&self, task_id: &str) {
        let mut changes = self.version.subscribe();
        loop {
            if self.contains(task_id) {
                return;
            }
            // The sender lives as long as `self`, so this only waits.
            if changes.changed().await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn marker(id: &str, at: u64) -> CancelMarker {
        CancelMarker {
            task_id: id.into(),
            requested_at_ms: at,
            reason: None,
        }
    }

    #[test]
    fn ids_count_until_they_expire() {
        let set = CancelledSet::new(Duration::from_secs(60));
        assert!(set.is_empty());
        assert!(set.insert(&marker("a", now_ms())));
        assert!(!set.insert(&marker("a", now_ms())), "known already");
        assert!(
            !set.insert(&marker("old", now_ms() - 120_000)),
            "expired on arrival"
        );
        assert!(set.contains("a"));
        assert!(!set.contains("old"));
        assert!(!set.contains("b"));
        assert_eq!(set.ids(), ["a"]);
        assert_eq!(set.len(), 1);
    }

    #[tokio::test]
    async fn waiters_wake_when_the_id_arrives() {
        let set = Arc::new(CancelledSet::new(Duration::from_secs(60)));
        let waiter = tokio::spawn({
            let set = set.clone();
            async move { set.wait_for("late").await }
        });
        tokio::task::yield_now().await;
        set.insert(&marker("other", now_ms()));
        assert!(!waiter.is_finished());
        set.insert(&marker("late", now_ms()));
        waiter.await.unwrap();
        set.wait_for("late").await; // known: returns at once
    }
}
