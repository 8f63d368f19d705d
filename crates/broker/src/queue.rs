//! `TaskQueue`: a broker, its result backend and middleware, with typed task handles.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};
use stepq_results::ResultBackend;

use crate::broker::Broker;
use crate::error::BrokerError;
use crate::message::TaskMessage;
use crate::middleware::MiddlewareChain;

/// A broker with its result backend and middleware: what producers and receivers share.
#[derive(Clone)]
pub struct TaskQueue {
    broker: Arc<dyn Broker>,
    results: Arc<dyn ResultBackend>,
    middleware: MiddlewareChain,
}

/// A typed task: `queue.task::<Args, Out>("name")`.
pub struct Task<Args, Out> {
    queue: TaskQueue,
    name: String,
    labels: Vec<(String, String)>,
    _types: PhantomData<fn(Args) -> Out>,
}

/// A sent task: its id, and a way to await its typed result.
pub struct TaskHandle<Out> {
    queue: TaskQueue,
    task_id: String,
    task_name: String,
    _out: PhantomData<fn() -> Out>,
}

/// Why waiting for a task's result failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskWaitError {
    /// The task ran and failed.
    #[error("task `{task_name}` ({task_id}) failed: [{kind}] {message}")]
    TaskFailed {
        /// Task name.
        task_name: String,
        /// Task id.
        task_id: String,
        /// Error kind from the result.
        kind: String,
        /// Error message from the result.
        message: String,
    },
    /// The result backend failed or timed out.
    #[error(transparent)]
    Results(#[from] stepq_results::ResultError),
    /// The return value does not decode as the expected type.
    #[error("result of task `{task_name}` does not decode: {reason}")]
    Decode {
        /// Task name.
        task_name: String,
        /// Why.
        reason: String,
    },
}

impl TaskQueue {
    /// A queue over `broker`, storing results in `results`, with no middleware.
    pub fn new(broker: Arc<dyn Broker>, results: Arc<dyn ResultBackend>) -> Self {
        todo!()
    }
    /// Adds a middleware at the end of the chain.
    pub fn with_middleware(mut self, m: Arc<dyn crate::Middleware>) -> Self {
        todo!()
    }
    /// The broker.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }
    /// The result backend.
    pub fn results(&self) -> &Arc<dyn ResultBackend> {
        &self.results
    }
    /// The middleware chain.
    pub fn middleware(&self) -> &MiddlewareChain {
        &self.middleware
    }
    /// Starts broker, result backend and middleware.
    pub async fn startup(&self) -> Result<(), BrokerError> {
        todo!()
    }
    /// Shuts them down (all of them, reporting the first error).
    pub async fn shutdown(&self) -> Result<(), BrokerError> {
        todo!()
    }
    /// Sends a message through pre_send / post_send middleware.
    pub async fn kick(&self, message: TaskMessage) -> Result<TaskMessage, BrokerError> {
        todo!()
    }
    /// Sends several messages (one batch where the broker allows), through middleware.
    pub async fn kick_batch(
        &self,
        messages: Vec<TaskMessage>,
    ) -> Result<Vec<TaskMessage>, BrokerError> {
        todo!()
    }
    /// A typed task by name.
    pub fn task<Args: Serialize, Out: DeserializeOwned>(&self, name: &str) -> Task<Args, Out> {
        todo!()
    }
}

impl<Args: Serialize, Out: DeserializeOwned> Task<Args, Out> {
    /// Adds a string label to messages sent by this task.
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        todo!()
    }
    /// Builds the message for `args` without sending it: an `Args` serializing to a JSON
    /// object becomes kwargs, anything else the single positional argument.
    pub fn message(&self, args: &Args) -> Result<TaskMessage, BrokerError> {
        todo!()
    }
    /// Sends the task ("kick it in the queue") and returns its handle.
    pub async fn kiq(&self, args: &Args) -> Result<TaskHandle<Out>, BrokerError> {
        todo!()
    }
}

impl<Out: DeserializeOwned> TaskHandle<Out> {
    /// A handle for a task already sent.
    pub fn new(queue: TaskQueue, task_id: String, task_name: String) -> Self {
        todo!()
    }
    /// The task id.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }
    /// Awaits the result (by notification where the backend supports it), bounded by `timeout`.
    pub async fn wait_result(&self, timeout: Option<Duration>) -> Result<Out, TaskWaitError> {
        todo!()
    }
}
