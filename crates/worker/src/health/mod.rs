//! Worker health: what a worker is running ([`WorkerActivity`]) and the heartbeat it writes
//! about itself every interval ([`HealthWriter`]), so `stepq worker list` can tell live workers
//! from lost ones and `stepq status` can say which worker holds a step.
//!
//! These heartbeats are not the SQS *visibility* heartbeats of
//! [`WorkerConfig::heartbeat_interval`](crate::WorkerConfig::heartbeat_interval), which keep a
//! running task's message hidden; a health heartbeat is one record per worker in a
//! [`HeartbeatStore`] (a local directory or S3).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use stepq_runs::{HeartbeatStore, InMemoryHeartbeatStore};
//! use stepq_worker::health::{HealthWriter, WorkerActivity};
//!
//! let store = Arc::new(InMemoryHeartbeatStore::new());
//! let activity = WorkerActivity::new(); // a Worker has one: `worker.activity().clone()`
//! let writer = HealthWriter::new(store.clone(), activity, "worker-1", "host-a")
//!     .with_interval(Duration::from_secs(10));
//! // The first heartbeat is written before `start` returns ...
//! let health = writer.start().await.unwrap();
//! assert_eq!(store.list_heartbeats().await.unwrap()[0].worker_id, "worker-1");
//! // ... and a clean stop removes it (a killed worker's stays, and turns lost).
//! health.stop().await.unwrap();
//! assert!(store.list_heartbeats().await.unwrap().is_empty());
//! # });
//! ```
//!
//! [`HeartbeatStore`]: stepq_runs::HeartbeatStore

mod activity;
mod writer;

use std::time::Duration;

pub use activity::{ActivityGuard, WorkerActivity};
pub use writer::{HealthError, HealthHandle, HealthWriter};

/// How often a worker writes its health heartbeat unless told otherwise.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);

/// Message label naming the run a task belongs to.
pub const RUN_ID_LABEL: &str = "run_id";
pub use stepq_protocol::STEP_KEY_LABEL;

/// Task messages and contexts shared by the unit tests of the activity and the writer.
#[cfg(test)]
mod test_support {
    use std::sync::Arc;

    use stepq_broker::{TaskContext, TaskMessage};
    use tokio_util::sync::CancellationToken;

    use super::{RUN_ID_LABEL, STEP_KEY_LABEL};

    /// A step task of run `run_id`, labelled like the executor's.
    pub(super) fn step_message(run_id: &str, step: &str) -> TaskMessage {
        TaskMessage::new("execute_plan")
            .with_label(RUN_ID_LABEL, run_id)
            .with_label(STEP_KEY_LABEL, step)
    }

    /// The context a receiver hands a handler for `message` (first delivery).
    pub(super) fn context(message: TaskMessage) -> TaskContext {
        TaskContext {
            message: Arc::new(message),
            receive_count: 1,
            queue_wait: None,
            cancel: CancellationToken::new(),
        }
    }
}
