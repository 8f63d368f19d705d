//! What a worker is running now and how many tasks it finished ([`WorkerActivity`]), recorded
//! by the handlers it wraps and read by the [`HealthWriter`](super::HealthWriter).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use stepq_broker::{TaskContext, TaskHandler, TaskMessage};
use stepq_plan::events::now_us;
use stepq_protocol::labelled_step_keys;
use stepq_runs::RunningTask;

use super::{RUN_ID_LABEL, STEP_KEY_LABEL};

/// What a worker is running now and how many tasks it finished: shared (cloning shares it)
/// between the handlers it wraps ([`track`](WorkerActivity::track)) and the [`HealthWriter`]
/// that reports it.
///
/// [`HealthWriter`]: super::HealthWriter
#[derive(Debug, Clone, Default)]
pub struct WorkerActivity {
    inner: Arc<ActivityInner>,
}

#[derive(Debug, Default)]
struct ActivityInner {
    /// Running tasks by registration number (a redelivered duplicate may run alongside).
    running: Mutex<BTreeMap<u64, RunningTask>>,
    next: AtomicU64,
    done: AtomicU64,
}

impl WorkerActivity {
    /// No task running, none done.
    pub fn new() -> Self {
        WorkerActivity::default()
    }

    /// Records that the task of `message` started now, with its `run_id` / `step_key` labels
    /// and, for a task of several steps, all its step keys (the
    /// [`STEP_KEYS_LABEL`](stepq_protocol::STEP_KEYS_LABEL) label).
    /// It counts as running until the returned guard is finished or dropped; it counts as done
    /// when finished (or when its handler panicked), not when merely dropped (e.g. abandoned
    /// at shutdown and returned to the queue).
    pub fn begin(&self, message: &TaskMessage) -> ActivityGuard {
        let registration = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let mut step_keys = labelled_step_keys(message);
        if step_keys.len() < 2 {
            // One step: `step_key` says it all.
            step_keys.clear();
        }
        let task = RunningTask {
            task_id: message.task_id.clone(),
            task_name: message.task_name.clone(),
            run_id: message.label(RUN_ID_LABEL).map(str::to_string),
            step_key: message.label(STEP_KEY_LABEL).map(str::to_string),
            step_keys,
            since: now_us(),
        };
        self.lock().insert(registration, task);
        ActivityGuard {
            activity: self.clone(),
            registration,
            finished: false,
        }
    }

    /// `handler`, recording each task it runs in this activity.
    pub fn track(&self, handler: TaskHandler) -> TaskHandler {
        let activity = self.clone();
        Arc::new(move |task: TaskContext| {
            let guard = activity.begin(&task.message);
            let run = handler(task);
            Box::pin(async move {
                let outcome = run.await;
                guard.finish();
                outcome
            })
        })
    }

    /// The tasks running now, oldest first.
    pub fn running(&self) -> Vec<RunningTask> {
        let mut tasks: Vec<RunningTask> = self.lock().values().cloned().collect();
        tasks.sort_by(|a, b| (a.since, &a.task_id).cmp(&(b.since, &b.task_id)));
        tasks
    }

    /// How many tasks run now.
    pub fn tasks_running(&self) -> u64 {
        self.lock().len() as u64
    }

    /// How many tasks finished (successfully or not) since the activity was created.
    pub fn tasks_done(&self) -> u64 {
        self.inner.done.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, RunningTask>> {
        self.inner.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A task recorded as running by [`WorkerActivity::begin`]; see there.
#[derive(Debug)]
pub struct ActivityGuard {
    activity: WorkerActivity,
    registration: u64,
    finished: bool,
}

impl ActivityGuard {
    /// The task ended: it stops counting as running and counts as done.
    pub fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.activity.lock().remove(&self.registration);
        // A panicking handler's task still ends (with a failed result).
        if self.finished || std::thread::panicking() {
            self.activity.inner.done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::test_support::{context, step_message};
    use futures::FutureExt;

    #[test]
    fn activity_tracks_running_and_done_tasks() {
        let activity = WorkerActivity::new();
        let a = activity.begin(&step_message("r1", "a"));
        let b = activity.begin(&TaskMessage::new("execute_job").with_label(RUN_ID_LABEL, "r2"));
        let c = activity.begin(&TaskMessage::new("unlabelled"));
        assert_eq!(activity.tasks_running(), 3);
        let running = activity.running();
        assert_eq!(running[0].run_id.as_deref(), Some("r1"));
        assert_eq!(running[0].step_key.as_deref(), Some("a"));
        assert_eq!(running[1].task_name, "execute_job");
        assert_eq!(running[1].step_key, None);
        assert_eq!(running[2].run_id, None);
        a.finish();
        drop(b); // abandoned (e.g. returned to the queue at shutdown): not done
        assert_eq!(activity.tasks_running(), 1);
        assert_eq!(activity.tasks_done(), 1);
        c.finish();
        assert_eq!(activity.tasks_running(), 0);
        assert_eq!(activity.tasks_done(), 2);
    }

    #[test]
    fn activity_lists_every_step_of_a_fused_task() {
        let activity = WorkerActivity::new();
        let args = stepq_plan::ExecuteStepArgs {
            run_id: "r1".into(),
            job_name: "j".into(),
            known_state: Default::default(),
            step_keys: vec!["a".into(), "b \"2\"".into(), "c".into()],
            retry_mode: Default::default(),
            attempt: 1,
            run_config: serde_json::Value::Null,
            inline_inputs: Vec::new(),
        };
        let fused = stepq_protocol::step_message(&args).unwrap();
        let single = step_message("r1", "d");
        let _guards = (activity.begin(&fused), activity.begin(&single));
        let running = activity.running();
        let of = |message: &TaskMessage| {
            running
                .iter()
                .find(|t| t.task_id == message.task_id)
                .cloned()
                .unwrap()
        };
        let (fused, single) = (of(&fused), of(&single));
        assert_eq!(fused.step_key.as_deref(), Some("a"));
        assert_eq!(fused.step_keys, ["a", "b \"2\"", "c"]);
        assert_eq!(fused.steps(), ["a", "b \"2\"", "c"]);
        assert!(single.step_keys.is_empty(), "one step: no list");
        assert_eq!(single.steps(), ["d"]);
    }

    #[tokio::test]
    async fn a_panicking_tracked_handler_still_counts_as_done() {
        let activity = WorkerActivity::new();
        let handler: TaskHandler = Arc::new(|_ctx| Box::pin(async { panic!("boom") }));
        let tracked = activity.track(handler);
        let run = std::panic::AssertUnwindSafe(tracked(context(step_message("r", "s"))));
        assert!(run.catch_unwind().await.is_err());
        assert_eq!(activity.tasks_running(), 0);
        assert_eq!(activity.tasks_done(), 1);
    }
}
