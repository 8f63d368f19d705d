//! The heartbeat writer: [`HealthWriter`] writes a worker's heartbeat at start and every
//! interval, [`HealthHandle`] stops it (removing the record), and [`HealthError`] says why it
//! could not start or stop cleanly.

use std::sync::Arc;
use std::time::Duration;

use stepq_broker::ErrorClass;
use stepq_plan::events::now_us;
use stepq_runs::{HeartbeatStore, StorageError, WorkerHeartbeat};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{WorkerActivity, DEFAULT_HEALTH_INTERVAL};

/// Why a [`HealthWriter`] could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HealthError {
    /// The heartbeat interval is zero.
    #[error("invalid worker health config `health_interval`: must be positive")]
    ZeroInterval,
    /// The heartbeat store refused the first heartbeat (permanently) or its removal.
    #[error("worker heartbeat: {0}")]
    Storage(#[from] StorageError),
}

impl HealthError {
    /// Whether retrying may help.
    pub fn class(&self) -> ErrorClass {
        match self {
            HealthError::ZeroInterval => ErrorClass::Permanent,
            HealthError::Storage(e) => e.class(),
        }
    }
}

/// Writes a worker's heartbeat (id, host, pid, started, last seen, tasks running and done,
/// and which run's step each running task is) to a [`HeartbeatStore`]: the first at
/// [`start`](HealthWriter::start), then one every interval, and removes it on
/// [`HealthHandle::stop`]. One write per interval however busy the worker is.
pub struct HealthWriter {
    store: Arc<dyn HeartbeatStore>,
    activity: WorkerActivity,
    heartbeat: WorkerHeartbeat,
    interval: Duration,
}

impl std::fmt::Debug for HealthWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthWriter")
            .field("worker_id", &self.heartbeat.worker_id)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl HealthWriter {
    /// A writer for worker `worker_id` on `host` (this process's pid), reporting `activity`
    /// every [`DEFAULT_HEALTH_INTERVAL`].
    pub fn new(
        store: Arc<dyn HeartbeatStore>,
        activity: WorkerActivity,
        worker_id: impl Into<String>,
        host: impl Into<String>,
    ) -> Self {
        HealthWriter {
            store,
            activity,
            heartbeat: WorkerHeartbeat::new(worker_id, host, std::process::id()),
            interval: DEFAULT_HEALTH_INTERVAL,
        }
    }

    /// Sets the interval between heartbeats (readers call a worker lost after
    /// [`LOST_AFTER_INTERVALS`](stepq_runs::LOST_AFTER_INTERVALS) of them).
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Says in every heartbeat that the worker consumes `queues`.
    pub fn with_queues(mut self, queues: Vec<String>) -> Self {
        self.heartbeat.queues = queues;
        self
    }

    /// The interval between heartbeats.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Writes the first heartbeat, then keeps writing one every interval in a background task
    /// until [`HealthHandle::stop`]. A first heartbeat the store refuses permanently (a bad
    /// worker id, no permission) is an error and nothing is started; a temporary (or persistent)
    /// failure is logged and the next interval tries again, as for every later heartbeat.
    pub async fn start(self) -> Result<HealthHandle, HealthError> {
        if self.interval.is_zero() {
            return Err(HealthError::ZeroInterval);
        }
        let HealthWriter {
            store,
            activity,
            mut heartbeat,
            interval,
        } = self;
        let (written_tx, written) = watch::channel(0_u64);
        match beat(store.as_ref(), &activity, &mut heartbeat).await {
            Ok(()) => {
                written_tx.send_modify(|n| *n += 1);
            }
            Err(e) if e.class() != ErrorClass::Permanent => {
                warn_beat_failed(&heartbeat.worker_id, &e)
            }
            Err(e) => return Err(e.into()),
        }
        let stop = CancellationToken::new();
        let task = tokio::spawn(beat_until_stopped(
            store,
            activity,
            heartbeat,
            interval,
            stop.clone(),
            written_tx,
        ));
        Ok(HealthHandle {
            stop,
            task: Some(task),
            written,
        })
    }
}

/// Refreshes `heartbeat` from `activity` and writes it.
async fn beat(
    store: &dyn HeartbeatStore,
    activity: &WorkerActivity,
    heartbeat: &mut WorkerHeartbeat,
) -> Result<(), StorageError> {
    heartbeat.last_seen = now_us();
    heartbeat.running_tasks = activity.running();
    heartbeat.tasks_running = heartbeat.running_tasks.len() as u64;
    heartbeat.tasks_done = activity.tasks_done();
    store.put_heartbeat(heartbeat).await
}

fn warn_beat_failed(worker_id: &str, e: &StorageError) {
    tracing::warn!(
        worker = worker_id,
        error = %e,
        "cannot write the worker heartbeat; trying again at the next interval"
    );
}

/// The heartbeat loop after the first beat; removes the heartbeat when stopped.
async fn beat_until_stopped(
    store: Arc<dyn HeartbeatStore>,
    activity: WorkerActivity,
    mut heartbeat: WorkerHeartbeat,
    interval: Duration,
    stop: CancellationToken,
    written: watch::Sender<u64>,
) -> Result<(), StorageError> {
    let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        match beat(store.as_ref(), &activity, &mut heartbeat).await {
            Ok(()) => {
                written.send_modify(|n| *n += 1);
            }
            Err(e) => warn_beat_failed(&heartbeat.worker_id, &e),
        }
    }
    store
        .remove_heartbeat(&heartbeat.worker_id)
        .await
        .inspect_err(|e| {
            tracing::warn!(
                worker = %heartbeat.worker_id,
                error = %e,
                "cannot remove the worker heartbeat; the worker will be listed as lost"
            );
        })
}

/// A running [`HealthWriter`]. [`stop`](HealthHandle::stop) it when the worker stopped;
/// dropping it ends the heartbeats without removing the record, as a crash would, so the
/// worker turns lost.
#[derive(Debug)]
pub struct HealthHandle {
    stop: CancellationToken,
    task: Option<JoinHandle<Result<(), StorageError>>>,
    written: watch::Receiver<u64>,
}

impl HealthHandle {
    /// How many heartbeats were written so far (the first included); changes on every write.
    pub fn beats_written(&self) -> watch::Receiver<u64> {
        self.written.clone()
    }

    /// Stops the heartbeats and removes the worker's record (it stopped cleanly). Errors:
    /// the store could not remove it (the worker is then listed as lost).
    pub async fn stop(mut self) -> Result<(), HealthError> {
        self.stop.cancel();
        let task = self.task.take().expect("the task is there until stopped");
        match task.await {
            Ok(removed) => Ok(removed?),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(HealthError::Storage(StorageError::Io {
                path: "worker heartbeat".into(),
                source: std::io::Error::other(format!("the heartbeat task stopped: {e}")),
            })),
        }
    }
}

impl Drop for HealthHandle {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::test_support::{context, step_message};
    use std::sync::Mutex;
    use stepq_broker::TaskHandler;
    use stepq_runs::{InMemoryHeartbeatStore, LocalDirHeartbeatStore};
    use tokio::sync::oneshot;

    /// Generous bound on waits for something that happens within a few short intervals.
    const PATIENCE: Duration = Duration::from_secs(30);
    const SHORT: Duration = Duration::from_millis(20);

    async fn only_beat(store: &InMemoryHeartbeatStore) -> WorkerHeartbeat {
        let mut beats = store.list_heartbeats().await.unwrap();
        assert_eq!(beats.len(), 1, "{beats:?}");
        beats.pop().unwrap()
    }

    /// Waits for `n` more heartbeats to be written after `seen`.
    async fn wait_for_beats(rx: &mut watch::Receiver<u64>, at_least: u64) {
        tokio::time::timeout(PATIENCE, rx.wait_for(|n| *n >= at_least))
            .await
            .expect("heartbeats stopped coming")
            .expect("the writer is gone");
    }

    #[tokio::test]
    async fn first_beat_at_start_running_steps_done_counts_and_removal() {
        let store = Arc::new(InMemoryHeartbeatStore::new());
        let activity = WorkerActivity::new();
        let health = HealthWriter::new(store.clone(), activity.clone(), "w1", "host-a")
            .with_interval(SHORT)
            .start()
            .await
            .unwrap();
        // The first heartbeat is there as soon as start returns.
        let first = only_beat(&store).await;
        assert_eq!(first.worker_id, "w1");
        assert_eq!(first.host, "host-a");
        assert_eq!(first.pid, std::process::id());
        assert_eq!((first.tasks_running, first.tasks_done), (0, 0));
        assert!(first.running_tasks.is_empty());

        // A tracked handler that runs until told to finish.
        let (release, released) = oneshot::channel::<()>();
        let released = Arc::new(Mutex::new(Some(released)));
        let handler: TaskHandler = Arc::new(move |_ctx| {
            let released = released.lock().unwrap().take();
            Box::pin(async move {
                if let Some(rx) = released {
                    let _ = rx.await;
                }
                Ok(serde_json::Value::Null)
            })
        });
        let tracked = activity.track(handler);
        let message = step_message("run-7", "add_one");
        let task_id = message.task_id.clone();
        let running = tokio::spawn(tracked(context(message)));
        let mut written = health.beats_written();
        let seen = *written.borrow_and_update();
        wait_for_beats(&mut written, seen + 2).await;
        let busy = only_beat(&store).await;
        assert_eq!(busy.tasks_running, 1);
        assert_eq!(busy.running_tasks.len(), 1);
        let task = &busy.running_tasks[0];
        assert_eq!(task.task_id, task_id);
        assert_eq!(task.run_id.as_deref(), Some("run-7"));
        assert_eq!(task.step_key.as_deref(), Some("add_one"));
        assert!(task.since >= first.started_at);
        assert!(busy.last_seen > first.last_seen);
        assert_eq!(busy.started_at, first.started_at);

        release.send(()).unwrap();
        running.await.unwrap().unwrap();
        let seen = *written.borrow_and_update();
        wait_for_beats(&mut written, seen + 2).await;
        let idle = only_beat(&store).await;
        assert_eq!((idle.tasks_running, idle.tasks_done), (0, 1));
        assert!(idle.running_tasks.is_empty());

        health.stop().await.unwrap();
        assert!(store.list_heartbeats().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn dropping_the_handle_leaves_the_heartbeat_to_turn_lost() {
        let store = Arc::new(InMemoryHeartbeatStore::new());
        let health = HealthWriter::new(store.clone(), WorkerActivity::new(), "w1", "h")
            .with_interval(SHORT)
            .start()
            .await
            .unwrap();
        drop(health);
        let last = only_beat(&store).await;
        // No more heartbeats: the record stays as it was.
        tokio::time::sleep(SHORT * 3).await;
        assert_eq!(only_beat(&store).await, last);
    }

    #[tokio::test]
    async fn a_zero_interval_is_refused() {
        let store = Arc::new(InMemoryHeartbeatStore::new());
        let err = HealthWriter::new(store.clone(), WorkerActivity::new(), "w1", "h")
            .with_interval(Duration::ZERO)
            .start()
            .await
            .unwrap_err();
        assert!(matches!(err, HealthError::ZeroInterval), "{err}");
        assert!(err.to_string().contains("health_interval"), "{err}");
        assert_eq!(err.class(), ErrorClass::Permanent);
        assert!(store.list_heartbeats().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_first_beat_refused_for_good_is_an_error() {
        let store = Arc::new(InMemoryHeartbeatStore::new());
        let err = HealthWriter::new(store, WorkerActivity::new(), "../escape", "h")
            .start()
            .await
            .unwrap_err();
        assert!(matches!(err, HealthError::Storage(_)), "{err}");
        assert_eq!(err.class(), ErrorClass::Permanent);
    }

    #[tokio::test]
    async fn failed_beats_are_retried_at_the_next_interval() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalDirHeartbeatStore::new(dir.path()));
        let health = HealthWriter::new(store.clone(), WorkerActivity::new(), "w1", "h")
            .with_interval(SHORT)
            .start()
            .await
            .unwrap();
        // Break the store: its `workers` directory becomes a file (again, should a heartbeat
        // re-create the directory in between).
        let workers = dir.path().join("workers");
        loop {
            let _ = std::fs::remove_dir_all(&workers);
            if std::fs::write(&workers, b"not a directory").is_ok() {
                break;
            }
        }
        // Let a heartbeat that was under way end (generously: CI machines are loaded).
        tokio::time::sleep(SHORT * 10).await;
        let mut written = health.beats_written();
        let before = *written.borrow_and_update();
        tokio::time::sleep(SHORT * 3).await;
        assert_eq!(*written.borrow(), before, "no heartbeat can be written");
        // Repair it: the heartbeats come back.
        std::fs::remove_file(&workers).unwrap();
        wait_for_beats(&mut written, before + 1).await;
        assert_eq!(store.list_heartbeats().await.unwrap().len(), 1);
        health.stop().await.unwrap();
        assert!(store.list_heartbeats().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_failed_removal_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalDirHeartbeatStore::new(dir.path()));
        let health = HealthWriter::new(store, WorkerActivity::new(), "w1", "h")
            .with_interval(Duration::from_secs(3600))
            .start()
            .await
            .unwrap();
        // Make the record a non-empty directory, which a file removal cannot remove.
        let record = dir.path().join("workers").join("w1.json");
        std::fs::remove_file(&record).unwrap();
        std::fs::create_dir_all(record.join("x")).unwrap();
        let err = health.stop().await.unwrap_err();
        assert!(matches!(err, HealthError::Storage(_)), "{err}");
    }
}
