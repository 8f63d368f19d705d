//! `Receiver`: runs registered tasks from a broker (the generic worker loop).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{de::DeserializeOwned, Serialize};
use stepq_results::{TaskError, TaskResult};
use tokio_util::sync::CancellationToken;

use crate::error::BrokerError;
use crate::message::TaskMessage;
use crate::queue::TaskQueue;

/// What a running task knows about itself.
#[derive(Clone)]
pub struct TaskContext {
    /// The message (after pre_execute middleware).
    pub message: Arc<TaskMessage>,
    /// Times the message was delivered, this one included.
    pub receive_count: u32,
    /// Cancelled when the task is cancelled (see [`Receiver::cancel_handle`]) or the receiver
    /// is shutting down past its grace period.
    pub cancel: CancellationToken,
}

/// A task's outcome: a JSON return value, or an error stored in its result.
pub type TaskOutcome = Result<serde_json::Value, TaskError>;

/// A registered task handler.
pub type TaskHandler = Arc<dyn Fn(TaskContext) -> BoxFuture<'static, TaskOutcome> + Send + Sync>;

/// Receiver settings.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// Tasks run at once (default: number of cores).
    pub concurrency: usize,
    /// On stop, how long in-flight tasks may run before they are cancelled and nacked.
    pub grace_period: Duration,
    /// While a task runs, its message's visibility is extended by this much ...
    pub heartbeat_extension: Duration,
    /// ... every this often. `None` disables heartbeats.
    pub heartbeat_interval: Option<Duration>,
    /// Name written into logs and results.
    pub worker_name: String,
}

/// Cancels running tasks by id; cloneable and usable from other tasks.
#[derive(Clone, Default)]
pub struct CancelHandle {
    running: Arc<std::sync::Mutex<HashMap<String, CancellationToken>>>,
}

/// Runs registered tasks: decode, pre_execute, run, post_execute / on_error, save result,
/// post_save, then ack. Malformed messages and unknown task names get a failed result (when a
/// task id can be salvaged), are logged, and are acked; the receiver keeps going.
pub struct Receiver {
    queue: TaskQueue,
    handlers: HashMap<String, TaskHandler>,
    config: ReceiverConfig,
    cancel: CancelHandle,
}

/// Counts of what a receiver did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// Tasks that ran and succeeded.
    pub succeeded: u64,
    /// Tasks that ran and failed, plus rejected messages.
    pub failed: u64,
    /// Deliveries returned to the queue on shutdown.
    pub released: u64,
}

impl Receiver {
    /// A receiver on `queue` with default config.
    pub fn new(queue: TaskQueue) -> Self {
        todo!()
    }
    /// Replaces the config.
    pub fn with_config(mut self, config: ReceiverConfig) -> Self {
        todo!()
    }
    /// Registers a raw handler.
    pub fn register(&mut self, name: &str, handler: TaskHandler) {
        todo!()
    }
    /// Registers a typed async fn: its argument is decoded from kwargs (object) or the single
    /// positional argument; its `Ok` is encoded as the return value, its `Err` as the error.
    pub fn register_fn<A, O, E, F, Fut>(&mut self, name: &str, f: F)
    where
        A: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        E: std::fmt::Display + Send + 'static,
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
    {
        todo!()
    }
    /// A handle that cancels running tasks by id.
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }
    /// Listens and runs tasks until `stop` fires, then lets in-flight tasks finish within the
    /// grace period (cancelling and nacking the rest) and returns.
    pub async fn run(self, stop: CancellationToken) -> Result<ReceiverStats, BrokerError> {
        todo!()
    }
}
