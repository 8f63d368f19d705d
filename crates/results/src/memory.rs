//! In-memory result backend and output store, for tests and the single-process default.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::oneshot;

use crate::backend::ResultBackend;
use crate::error::ResultError;
use crate::local::check_segment;
use crate::output::{OutputKey, OutputStore};
use crate::result::TaskResult;

/// A task's slot: its result, or the waiters to wake when it arrives.
enum Slot {
    Ready(TaskResult),
    Waiting(Vec<oneshot::Sender<TaskResult>>),
}

/// Waiters keyed by task id, woken by notification. Shared by the in-memory and local backends.
#[derive(Default)]
pub(crate) struct Waiters {
    slots: Mutex<HashMap<String, Slot>>,
}

impl Waiters {
    /// Registers interest in `task_id`; returns the result at once if `ready` says so.
    pub(crate) fn register(&self, task_id: &str) -> oneshot::Receiver<TaskResult> {
        let (tx, rx) = oneshot::channel();
        let mut slots = self.slots.lock().expect("waiters lock");
        match slots
            .entry(task_id.to_string())
            .or_insert_with(|| Slot::Waiting(Vec::new()))
        {
            Slot::Ready(r) => {
                let _ = tx.send(r.clone());
            }
            Slot::Waiting(list) => {
                list.retain(|s| !s.is_closed());
                list.push(tx)
            }
        }
        rx
    }

    /// Wakes every waiter of `task_id` with `result`; keeps it if `keep` is true.
    pub(crate) fn publish(&self, task_id: &str, result: &TaskResult, keep: bool) {
        let mut slots = self.slots.lock().expect("waiters lock");
        let previous = if keep {
            slots.insert(task_id.to_string(), Slot::Ready(result.clone()))
        } else {
            slots.remove(task_id)
        };
        if let Some(Slot::Waiting(list)) = previous {
            for tx in list {
                let _ = tx.send(result.clone());
            }
        }
    }

    /// Forgets a task's stored result, keeping any waiters.
    pub(crate) fn remove(&self, task_id: &str) {
        let mut slots = self.slots.lock().expect("waiters lock");
        if let Some(Slot::Ready(_)) = slots.get(task_id) {
            slots.remove(task_id);
        }
    }

    /// The stored result, if any.
    pub(crate) fn get(&self, task_id: &str) -> Option<TaskResult> {
        match self.slots.lock().expect("waiters lock").get(task_id) {
            Some(Slot::Ready(r)) => Some(r.clone()),
            _ => None,
        }
    }

    /// Number of task ids with a stored result or registered waiters.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.lock().expect("waiters lock").len()
    }

    /// Drops waiters whose receiver is gone, and the slot if none remain.
    pub(crate) fn forget_closed(&self, task_id: &str) {
        let mut slots = self.slots.lock().expect("waiters lock");
        if let Some(Slot::Waiting(list)) = slots.get_mut(task_id) {
            list.retain(|s| !s.is_closed());
            if list.is_empty() {
                slots.remove(task_id);
            }
        }
    }
}

/// Awaits a registered waiter, bounded by `timeout`.
pub(crate) async fn await_waiter(
    waiters: &Waiters,
    task_id: &str,
    rx: oneshot::Receiver<TaskResult>,
    timeout: Option<Duration>,
) -> Result<TaskResult, ResultError> {
    let outcome = match timeout {
        Some(t) => match tokio::time::timeout(t, rx).await {
            Ok(r) => r,
            Err(_) => {
                waiters.forget_closed(task_id);
                return Err(ResultError::Timeout {
                    task_id: task_id.to_string(),
                    waited: t,
                });
            }
        },
        None => rx.await,
    };
    outcome.map_err(|_| ResultError::Closed)
}

/// Results held in process memory; waiters are woken by notification, never by polling.
/// Task ids are checked like the other backends' (no `/`, not empty, ...).
#[derive(Default)]
pub struct InMemoryResultBackend {
    waiters: Waiters,
}

impl InMemoryResultBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }
}

fn strip_log(mut r: TaskResult, with_logs: bool) -> TaskResult {
    if !with_logs {
        r.log = None;
    }
    r
}

#[async_trait]
impl ResultBackend for InMemoryResultBackend {
    async fn set_result(&self, task_id: &str, result: &TaskResult) -> Result<(), ResultError> {
        check_segment(task_id)?;
        self.waiters.publish(task_id, result, true);
        Ok(())
    }

    async fn is_result_ready(&self, task_id: &str) -> Result<bool, ResultError> {
        check_segment(task_id)?;
        Ok(self.waiters.get(task_id).is_some())
    }

    async fn get_result(&self, task_id: &str, with_logs: bool) -> Result<TaskResult, ResultError> {
        check_segment(task_id)?;
        self.waiters
            .get(task_id)
            .map(|r| strip_log(r, with_logs))
            .ok_or_else(|| ResultError::NotFound {
                task_id: task_id.to_string(),
            })
    }

    async fn wait_result(
        &self,
        task_id: &str,
        timeout: Option<Duration>,
    ) -> Result<TaskResult, ResultError> {
        check_segment(task_id)?;
        let rx = self.waiters.register(task_id);
        await_waiter(&self.waiters, task_id, rx, timeout)
            .await
            .map(|r| strip_log(r, false))
    }

    async fn delete_result(&self, task_id: &str) -> Result<(), ResultError> {
        check_segment(task_id)?;
        self.waiters.remove(task_id);
        Ok(())
    }
}

/// Step outputs held in process memory. Keys are checked like the other stores'.
#[derive(Default)]
pub struct InMemoryOutputStore {
    outputs: Mutex<HashMap<OutputKey, Bytes>>,
}

impl InMemoryOutputStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl OutputStore for InMemoryOutputStore {
    async fn put(&self, key: &OutputKey, value: Bytes) -> Result<(), ResultError> {
        key.relative_path()?;
        self.outputs
            .lock()
            .expect("outputs lock")
            .insert(key.clone(), value);
        Ok(())
    }

    async fn get(&self, key: &OutputKey) -> Result<Bytes, ResultError> {
        key.relative_path()?;
        self.outputs
            .lock()
            .expect("outputs lock")
            .get(key)
            .cloned()
            .ok_or_else(|| ResultError::OutputNotFound {
                key: key.to_string(),
            })
    }

    async fn exists(&self, key: &OutputKey) -> Result<bool, ResultError> {
        key.relative_path()?;
        Ok(self.outputs.lock().expect("outputs lock").contains_key(key))
    }

    async fn delete_run(&self, run_id: &str) -> Result<(), ResultError> {
        check_segment(run_id)?;
        self.outputs
            .lock()
            .expect("outputs lock")
            .retain(|k, _| k.run_id != run_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn waiters_leave_no_state_behind_after_a_timeout() {
        let backend = InMemoryResultBackend::new();
        for i in 0..10 {
            let err = backend
                .wait_result(&format!("t{i}"), Some(Duration::from_millis(1)))
                .await
                .unwrap_err();
            assert!(matches!(err, ResultError::Timeout { .. }), "{err:?}");
        }
        assert_eq!(backend.waiters.len(), 0);
    }

    #[tokio::test]
    async fn a_timed_out_waiter_does_not_drop_the_others() {
        let backend = Arc::new(InMemoryResultBackend::new());
        let patient = {
            let b = backend.clone();
            tokio::spawn(async move { b.wait_result("t", None).await })
        };
        while backend.waiters.len() == 0 {
            tokio::task::yield_now().await;
        }
        let err = backend
            .wait_result("t", Some(Duration::from_millis(1)))
            .await
            .unwrap_err();
        assert!(matches!(err, ResultError::Timeout { .. }));
        backend
            .set_result("t", &TaskResult::ok(serde_json::json!(7), 0.0))
            .await
            .unwrap();
        let r = patient.await.unwrap().unwrap();
        assert_eq!(r.return_value, serde_json::json!(7));
    }

    #[tokio::test]
    async fn deleted_results_are_gone_but_waiters_stay() {
        let backend = Arc::new(InMemoryResultBackend::new());
        let r = TaskResult::ok(serde_json::json!(1), 0.0);
        backend.set_result("t", &r).await.unwrap();
        backend.delete_result("t").await.unwrap();
        assert!(!backend.is_result_ready("t").await.unwrap());
        let waiter = {
            let b = backend.clone();
            tokio::spawn(async move { b.wait_result("u", None).await })
        };
        while backend.waiters.len() == 0 {
            tokio::task::yield_now().await;
        }
        backend.delete_result("u").await.unwrap();
        backend.set_result("u", &r).await.unwrap();
        assert_eq!(waiter.await.unwrap().unwrap(), r);
    }
}
