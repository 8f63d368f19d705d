//! Worker heartbeats: what each worker last said about itself, and whether it is still alive.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::StorageError;

/// A worker is lost once its last heartbeat is older than this many heartbeat intervals.
pub const LOST_AFTER_INTERVALS: u32 = 3;

/// What a worker writes about itself every heartbeat interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerHeartbeat {
    /// Worker id (unique per worker process).
    pub worker_id: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Microseconds since the Unix epoch when the worker started.
    pub started_at: u64,
    /// Microseconds since the Unix epoch of this heartbeat.
    pub last_seen: u64,
    /// Tasks running now.
    pub tasks_running: u64,
    /// Tasks finished since start.
    pub tasks_done: u64,
    /// The tasks running at this heartbeat, with the run and step each belongs to (empty in
    /// heartbeats written before this field existed).
    #[serde(default)]
    pub running_tasks: Vec<RunningTask>,
    /// The queues the worker consumes (`default` and named queues); empty in heartbeats of
    /// workers that did not say (before routing existed): the default queue.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<String>,
}

/// A task a worker is running, as its heartbeat lists it: which run and step(s) it belongs to
/// (from the task message's `run_id` / `step_key` / `step_keys` labels) and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningTask {
    /// The task id (the broker message's).
    pub task_id: String,
    /// The task name, e.g. `execute_plan`.
    pub task_name: String,
    /// The run it belongs to (`run_id` label), if labelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The step it runs (`step_key` label), if labelled; orchestration tasks have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_key: Option<String>,
    /// Every step it runs, in order, when it runs more than one (a fused chain, `step_key`
    /// being the first); empty for a one-step task, and in heartbeats written before this
    /// field existed. [`RunningTask::steps`] gives the steps either way.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub step_keys: Vec<String>,
    /// Microseconds since the Unix epoch when the worker started it.
    pub since: u64,
}

impl RunningTask {
    /// The steps the task runs, in order: `step_keys`, or else `step_key` alone, or else none
    /// (an orchestration task).
    pub fn steps(&self) -> Vec<&str> {
        if self.step_keys.is_empty() {
            self.step_key.as_deref().into_iter().collect()
        } else {
            self.step_keys.iter().map(String::as_str).collect()
        }
    }
}

impl WorkerHeartbeat {
    /// A first heartbeat, stamped now, with no tasks.
    pub fn new(worker_id: impl Into<String>, host: impl Into<String>, pid: u32) -> Self {
        let now = stepq_plan::events::now_us();
        WorkerHeartbeat {
            worker_id: worker_id.into(),
            host: host.into(),
            pid,
            started_at: now,
            last_seen: now,
            tasks_running: 0,
            tasks_done: 0,
            running_tasks: Vec::new(),
            queues: Vec::new(),
        }
    }

    /// The running tasks of run `run_id`.
    pub fn tasks_of_run<'a>(&'a self, run_id: &'a str) -> impl Iterator<Item = &'a RunningTask> {
        self.running_tasks
            .iter()
            .filter(move |t| t.run_id.as_deref() == Some(run_id))
    }

    /// When the worker counts as lost, given the heartbeat `interval`: [`LOST_AFTER_INTERVALS`]
    /// intervals after its last heartbeat (microseconds since the Unix epoch, saturating).
    pub fn lost_at(&self, interval: Duration) -> u64 {
        self.last_seen.saturating_add(lost_after_us(interval))
    }

    /// Whether the worker is live at `now_us` given the heartbeat `interval`: lost once
    /// `last_seen` is more than [`LOST_AFTER_INTERVALS`] intervals old. A `last_seen` in the
    /// future (clock skew) counts as live.
    pub fn health(&self, now_us: u64, interval: Duration) -> WorkerHealth {
        if now_us.saturating_sub(self.last_seen) > lost_after_us(interval) {
            WorkerHealth::Lost
        } else {
            WorkerHealth::Live
        }
    }
}

/// [`LOST_AFTER_INTERVALS`] intervals in microseconds, saturating.
fn lost_after_us(interval: Duration) -> u64 {
    interval
        .saturating_mul(LOST_AFTER_INTERVALS)
        .as_micros()
        .min(u128::from(u64::MAX)) as u64
}

/// Whether a worker still heart-beats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WorkerHealth {
    /// Heart-beat within the last [`LOST_AFTER_INTERVALS`] intervals.
    Live,
    /// Stopped heart-beating (killed, hung, or cut off).
    Lost,
}

impl fmt::Display for WorkerHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WorkerHealth::Live => "live",
            WorkerHealth::Lost => "lost",
        })
    }
}

/// A worker's last heartbeat and its health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerState {
    /// The last heartbeat.
    pub heartbeat: WorkerHeartbeat,
    /// Live or lost.
    pub health: WorkerHealth,
}

/// Classifies heartbeats at `now_us`; the result is sorted by worker id.
pub fn classify_workers(
    heartbeats: Vec<WorkerHeartbeat>,
    now_us: u64,
    interval: Duration,
) -> Vec<WorkerState> {
    let mut states: Vec<_> = heartbeats
        .into_iter()
        .map(|heartbeat| WorkerState {
            health: heartbeat.health(now_us, interval),
            heartbeat,
        })
        .collect();
    states.sort_by(|a, b| a.heartbeat.worker_id.cmp(&b.heartbeat.worker_id));
    states
}

/// Stores the last heartbeat of each worker.
#[async_trait]
pub trait HeartbeatStore: Send + Sync + 'static {
    /// Stores `heartbeat`, replacing the worker's previous one.
    async fn put_heartbeat(&self, heartbeat: &WorkerHeartbeat) -> Result<(), StorageError>;

    /// The last heartbeat of every worker, in no particular order.
    async fn list_heartbeats(&self) -> Result<Vec<WorkerHeartbeat>, StorageError>;

    /// Forgets a worker (it stopped cleanly); unknown workers are ignored.
    async fn remove_heartbeat(&self, worker_id: &str) -> Result<(), StorageError>;

    /// Every worker, live or lost at `now_us` given the heartbeat `interval`, by worker id.
    async fn list_workers(
        &self,
        now_us: u64,
        interval: Duration,
    ) -> Result<Vec<WorkerState>, StorageError> {
        Ok(classify_workers(
            self.list_heartbeats().await?,
            now_us,
            interval,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(id: &str, last_seen: u64) -> WorkerHeartbeat {
        WorkerHeartbeat {
            last_seen,
            ..WorkerHeartbeat::new(id, "host", 1)
        }
    }

    #[test]
    fn lost_means_older_than_three_intervals() {
        let interval = Duration::from_secs(1);
        let now = 100_000_000;
        assert_eq!(beat("w", now).health(now, interval), WorkerHealth::Live);
        assert_eq!(
            beat("w", now - 3_000_000).health(now, interval),
            WorkerHealth::Live,
            "exactly three intervals is still live"
        );
        assert_eq!(
            beat("w", now - 3_000_001).health(now, interval),
            WorkerHealth::Lost
        );
        assert_eq!(
            beat("w", now + 5_000_000).health(now, interval),
            WorkerHealth::Live,
            "clock skew"
        );
        assert_eq!(
            beat("w", 0).health(now, Duration::MAX),
            WorkerHealth::Live,
            "huge intervals do not overflow"
        );
    }

    #[test]
    fn lost_at_is_three_intervals_after_the_last_beat() {
        let b = beat("w", 5_000_000);
        assert_eq!(b.lost_at(Duration::from_secs(2)), 11_000_000);
        assert_eq!(b.lost_at(Duration::MAX), u64::MAX);
    }

    #[test]
    fn heartbeats_without_running_tasks_still_read() {
        // A heartbeat as written before `running_tasks` existed.
        let old = r#"{"worker_id":"w1","host":"h","pid":7,"started_at":1,"last_seen":2,
            "tasks_running":0,"tasks_done":3}"#;
        let b: WorkerHeartbeat = serde_json::from_str(old).unwrap();
        assert_eq!(b.tasks_done, 3);
        assert!(b.running_tasks.is_empty());
    }

    #[test]
    fn running_tasks_without_step_keys_still_read() {
        // A running task as written before `step_keys` existed.
        let old = r#"{"worker_id":"w1","host":"h","pid":7,"started_at":1,"last_seen":2,
            "tasks_running":1,"tasks_done":0,"running_tasks":[{"task_id":"t1",
            "task_name":"execute_plan","run_id":"r1","step_key":"a","since":1}]}"#;
        let b: WorkerHeartbeat = serde_json::from_str(old).unwrap();
        let task = &b.running_tasks[0];
        assert_eq!(task.step_key.as_deref(), Some("a"));
        assert!(task.step_keys.is_empty());
        assert_eq!(task.steps(), ["a"]);
    }

    #[test]
    fn running_tasks_round_trip_and_filter_by_run() {
        let mut b = beat("w", 1);
        b.running_tasks = vec![
            RunningTask {
                task_id: "t1".into(),
                task_name: "execute_plan".into(),
                run_id: Some("r1".into()),
                step_key: Some("a".into()),
                step_keys: Vec::new(),
                since: 1,
            },
            RunningTask {
                task_id: "t2".into(),
                task_name: "execute_job".into(),
                run_id: Some("r2".into()),
                step_key: None,
                step_keys: Vec::new(),
                since: 2,
            },
            RunningTask {
                task_id: "t3".into(),
                task_name: "other".into(),
                run_id: None,
                step_key: None,
                step_keys: Vec::new(),
                since: 3,
            },
            RunningTask {
                task_id: "t4".into(),
                task_name: "execute_plan".into(),
                run_id: Some("r1".into()),
                step_key: Some("b".into()),
                step_keys: vec!["b".into(), "c".into()],
                since: 4,
            },
        ];
        let text = serde_json::to_string(&b).unwrap();
        assert!(!text.contains("null"), "unset labels are left out: {text}");
        let back: WorkerHeartbeat = serde_json::from_str(&text).unwrap();
        assert_eq!(back, b);
        let ids: Vec<_> = b.tasks_of_run("r1").map(|t| t.task_id.as_str()).collect();
        assert_eq!(ids, ["t1", "t4"]);
        let steps: Vec<_> = b.running_tasks.iter().map(RunningTask::steps).collect();
        assert_eq!(steps, [vec!["a"], vec![], vec![], vec!["b", "c"]]);
        assert_eq!(
            text.matches("step_keys").count(),
            1,
            "only a fused task lists its steps: {text}"
        );
        assert_eq!(b.tasks_of_run("nope").count(), 0);
    }

    #[test]
    fn classify_sorts_by_worker_id() {
        let now = 10_000_000;
        let states = classify_workers(
            vec![beat("b", 0), beat("a", now)],
            now,
            Duration::from_secs(1),
        );
        let got: Vec<_> = states
            .iter()
            .map(|s| (s.heartbeat.worker_id.as_str(), s.health))
            .collect();
        assert_eq!(
            got,
            vec![("a", WorkerHealth::Live), ("b", WorkerHealth::Lost)]
        );
        assert_eq!(WorkerHealth::Lost.to_string(), "lost");
    }
}
