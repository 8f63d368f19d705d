//! Cancelling running tasks by id: the [`CancelHandle`] a receiver hands out, and the
//! [`Registration`] guard that keeps a running task in it for as long as the task runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Receiver;

/// Cancels running tasks by id; cloneable and usable from other tasks.
#[derive(Debug, Clone, Default)]
pub struct CancelHandle {
    /// The cancel tokens of the tasks running now, by task id.
    running: Arc<std::sync::Mutex<HashMap<String, Vec<RunningTask>>>>,
}

/// One running execution of a task id (a redelivered duplicate may run alongside).
#[derive(Debug)]
struct RunningTask {
    /// Tells this execution apart from others of the same task id.
    registration: u64,
    /// The token handed to this execution's handler.
    cancel: CancellationToken,
}

/// The source of [`RunningTask::registration`] numbers, unique within the process.
static NEXT_REGISTRATION: AtomicU64 = AtomicU64::new(0);

impl CancelHandle {
    /// Cancels the token of the running task `task_id`; `false` if no such task runs here.
    /// Cancellation is cooperative: the handler sees [`TaskContext::cancel`](super::TaskContext::cancel)
    /// fire and decides what to return.
    pub fn cancel(&self, task_id: &str) -> bool {
        let running = self.lock();
        match running.get(task_id) {
            Some(list) if !list.is_empty() => {
                list.iter().for_each(|r| r.cancel.cancel());
                true
            }
            _ => false,
        }
    }

    /// Ids of the tasks running now, sorted.
    pub fn running(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.lock().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The running tasks, even if a holder of the lock panicked.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<RunningTask>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a running task until the returned guard drops.
    pub(super) fn register(&self, task_id: &str, cancel: CancellationToken) -> Registration {
        let registration = NEXT_REGISTRATION.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .entry(task_id.to_string())
            .or_default()
            .push(RunningTask {
                registration,
                cancel,
            });
        Registration {
            handle: self.clone(),
            task_id: task_id.to_string(),
            registration,
        }
    }
}

/// Removes a task from its [`CancelHandle`] when dropped.
pub(super) struct Registration {
    /// The handle the task is registered with.
    handle: CancelHandle,
    /// The registered task's id.
    task_id: String,
    /// Which execution of `task_id` this guard removes.
    registration: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut running = self.handle.lock();
        if let Some(list) = running.get_mut(&self.task_id) {
            list.retain(|r| r.registration != self.registration);
            if list.is_empty() {
                running.remove(&self.task_id);
            }
        }
    }
}

impl Receiver {
    /// A handle that cancels running tasks by id.
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancelling_an_id_that_is_not_running_is_false() {
        let handle = CancelHandle::default();
        assert!(!handle.cancel("t1"));
        let token = CancellationToken::new();
        let _running = handle.register("t1", token.clone());
        assert!(!handle.cancel("t2"));
        assert!(!token.is_cancelled());
    }

    #[test]
    fn cancel_reaches_every_execution_of_the_id_and_no_other() {
        let handle = CancelHandle::default();
        let (first, duplicate, other) = (
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let _first = handle.register("t1", first.clone());
        let _duplicate = handle.register("t1", duplicate.clone());
        let _other = handle.register("t2", other.clone());
        assert!(handle.cancel("t1"));
        assert!(first.is_cancelled() && duplicate.is_cancelled());
        assert!(!other.is_cancelled());
    }

    #[test]
    fn a_dropped_registration_removes_only_its_own_execution() {
        let handle = CancelHandle::default();
        let (first, duplicate) = (CancellationToken::new(), CancellationToken::new());
        let first_registration = handle.register("t1", first.clone());
        let duplicate_registration = handle.register("t1", duplicate.clone());
        drop(first_registration);
        assert_eq!(handle.running(), ["t1"]);
        assert!(handle.cancel("t1"));
        assert!(duplicate.is_cancelled());
        assert!(
            !first.is_cancelled(),
            "a finished execution is not cancelled"
        );
        drop(duplicate_registration);
        assert!(handle.running().is_empty());
        assert!(!handle.cancel("t1"));
    }

    #[test]
    fn running_ids_are_sorted_and_shared_by_clones() {
        let handle = CancelHandle::default();
        let clone = handle.clone();
        let _registrations: Vec<_> = ["c", "a", "b", "a"]
            .into_iter()
            .map(|id| handle.register(id, CancellationToken::new()))
            .collect();
        assert_eq!(clone.running(), ["a", "b", "c"]);
    }
}
