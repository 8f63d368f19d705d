//! In-memory run and heartbeat stores, for tests and the single-process embedded mode.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use stepq_plan::Event;
use tokio::sync::watch;

use crate::error::{check_id, StorageError};
use crate::heartbeat::{HeartbeatStore, WorkerHeartbeat};
use crate::record::{RunRecord, RunStatus, StatusChange};
use crate::store::{
    check_batch, check_deletable, check_for_events, newest_first, DeletedRun, EventCursor,
    EventPage, RunStore, MAX_BATCHES_PER_READ, MAX_POLL_DELAY,
};

struct MemRun {
    record: RunRecord,
    batches: Vec<Vec<Event>>,
}

#[derive(Default)]
struct Inner {
    runs: Mutex<HashMap<String, MemRun>>,
    /// Bumped on every append and status change; waiters re-check on each bump.
    changes: ChangeCounter,
}

/// A counter that wakes waiters when it changes.
pub(crate) struct ChangeCounter(watch::Sender<u64>);

impl Default for ChangeCounter {
    fn default() -> Self {
        ChangeCounter(watch::channel(0).0)
    }
}

impl ChangeCounter {
    /// A receiver; subscribe *before* checking the condition waited for.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }

    /// Wakes every receiver.
    pub(crate) fn bump(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// [`RunStore::wait_events`] of a `store` whose writers in this process bump this counter:
    /// checks the log, then waits for the next change. With `poll_others` (other processes
    /// write the store too, unseen by this counter) it also checks again after a capped
    /// backoff, 5 ms doubling to [`MAX_POLL_DELAY`].
    pub(crate) async fn wait_events<S: RunStore + ?Sized>(
        &self,
        store: &S,
        run_id: &str,
        from: EventCursor,
        poll_others: bool,
    ) -> Result<EventPage, StorageError> {
        let mut changes = self.subscribe();
        let mut delay = Duration::from_millis(5);
        loop {
            if let Some(page) = check_for_events(store, run_id, from).await? {
                return Ok(page);
            }
            if poll_others {
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = tokio::time::sleep(delay) => delay = (delay * 2).min(MAX_POLL_DELAY),
                }
            } else {
                // The sender lives in `self`, so `changed` cannot fail while it is borrowed.
                let _ = changes.changed().await;
            }
        }
    }
}

/// Runs held in process memory. Clones share the same runs; waiters are woken by
/// notification, never by polling.
#[derive(Clone, Default)]
pub struct InMemoryRunStore {
    inner: Arc<Inner>,
}

impl InMemoryRunStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with_run<T>(
        &self,
        run_id: &str,
        f: impl FnOnce(&mut MemRun) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let mut runs = self.inner.runs.lock().expect("runs lock");
        match runs.get_mut(run_id) {
            Some(run) => f(run),
            None => Err(StorageError::RunNotFound {
                run_id: run_id.to_string(),
            }),
        }
    }

    fn read_now(&self, run_id: &str, from: EventCursor) -> Result<EventPage, StorageError> {
        self.with_run(run_id, |run| {
            let start = usize::try_from(from.0)
                .unwrap_or(usize::MAX)
                .min(run.batches.len());
            let end = start
                .saturating_add(MAX_BATCHES_PER_READ)
                .min(run.batches.len());
            Ok(EventPage {
                events: run.batches[start..end].iter().flatten().cloned().collect(),
                next: if end > start {
                    EventCursor(end as u64)
                } else {
                    from
                },
            })
        })
    }
}

#[async_trait]
impl RunStore for InMemoryRunStore {
    async fn create_run(&self, record: &RunRecord) -> Result<(), StorageError> {
        check_id(&record.run_id)?;
        let mut runs = self.inner.runs.lock().expect("runs lock");
        if runs.contains_key(&record.run_id) {
            return Err(StorageError::RunExists {
                run_id: record.run_id.clone(),
            });
        }
        runs.insert(
            record.run_id.clone(),
            MemRun {
                record: record.clone(),
                batches: Vec::new(),
            },
        );
        Ok(())
    }

    async fn get_run(&self, run_id: &str) -> Result<RunRecord, StorageError> {
        check_id(run_id)?;
        self.with_run(run_id, |run| Ok(run.record.clone()))
    }

    async fn list_runs(&self, limit: usize) -> Result<Vec<RunRecord>, StorageError> {
        let runs = self.inner.runs.lock().expect("runs lock");
        Ok(newest_first(
            runs.values().map(|r| r.record.clone()).collect(),
            limit,
        ))
    }

    async fn change_status(
        &self,
        run_id: &str,
        change: &StatusChange,
    ) -> Result<RunRecord, StorageError> {
        check_id(run_id)?;
        let next = self.with_run(run_id, |run| {
            let next = run.record.apply(change, stepq_plan::events::now_us())?;
            run.record = next.clone();
            Ok(next)
        })?;
        self.inner.changes.bump();
        Ok(next)
    }

    /// Checks the status and removes the run under the one lock every change takes.
    async fn delete_run(
        &self,
        run_id: &str,
        expected: RunStatus,
    ) -> Result<DeletedRun, StorageError> {
        check_deletable(run_id, expected)?;
        check_id(run_id)?;
        let removed = {
            let mut runs = self.inner.runs.lock().expect("runs lock");
            let Some(run) = runs.get(run_id) else {
                return Err(StorageError::RunNotFound {
                    run_id: run_id.to_string(),
                });
            };
            if run.record.status != expected {
                return Err(StorageError::UnexpectedStatus {
                    run_id: run_id.to_string(),
                    expected,
                    found: run.record.status,
                });
            }
            runs.remove(run_id).expect("the run just found")
        };
        self.inner.changes.bump();
        Ok(DeletedRun::new(
            removed.record,
            removed.batches.len() as u64,
            None,
        ))
    }

    async fn append_events(&self, run_id: &str, events: &[Event]) -> Result<(), StorageError> {
        check_id(run_id)?;
        check_batch(run_id, events)?;
        self.with_run(run_id, |run| {
            if !events.is_empty() {
                run.batches.push(events.to_vec());
            }
            Ok(())
        })?;
        self.inner.changes.bump();
        Ok(())
    }

    async fn read_events(
        &self,
        run_id: &str,
        from: EventCursor,
    ) -> Result<EventPage, StorageError> {
        check_id(run_id)?;
        self.read_now(run_id, from)
    }

    async fn wait_events(
        &self,
        run_id: &str,
        from: EventCursor,
    ) -> Result<EventPage, StorageError> {
        check_id(run_id)?;
        self.inner
            .changes
            .wait_events(self, run_id, from, false)
            .await
    }
}

/// Heartbeats held in process memory. Clones share the same heartbeats.
#[derive(Clone, Default)]
pub struct InMemoryHeartbeatStore {
    heartbeats: Arc<Mutex<HashMap<String, WorkerHeartbeat>>>,
}

impl InMemoryHeartbeatStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl HeartbeatStore for InMemoryHeartbeatStore {
    async fn put_heartbeat(&self, heartbeat: &WorkerHeartbeat) -> Result<(), StorageError> {
        check_id(&heartbeat.worker_id)?;
        self.heartbeats
            .lock()
            .expect("heartbeats lock")
            .insert(heartbeat.worker_id.clone(), heartbeat.clone());
        Ok(())
    }

    async fn list_heartbeats(&self) -> Result<Vec<WorkerHeartbeat>, StorageError> {
        Ok(self
            .heartbeats
            .lock()
            .expect("heartbeats lock")
            .values()
            .cloned()
            .collect())
    }

    async fn remove_heartbeat(&self, worker_id: &str) -> Result<(), StorageError> {
        check_id(worker_id)?;
        self.heartbeats
            .lock()
            .expect("heartbeats lock")
            .remove(worker_id);
        Ok(())
    }
}
