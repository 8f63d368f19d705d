//! `TaskQueue`: a broker, its result backend and middleware, with typed task handles.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};
use stepq_results::{FailureKind, ResultBackend};

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
#[non_exhaustive]
pub enum TaskWaitError {
    /// The task ran and failed.
    #[error("task `{task_name}` ({task_id}) failed: [{kind}] {message}")]
    TaskFailed {
        /// Task name.
        task_name: String,
        /// Task id.
        task_id: String,
        /// Error kind from the result.
        kind: FailureKind,
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
        TaskQueue {
            broker,
            results,
            middleware: MiddlewareChain::default(),
        }
    }
    /// Adds a middleware at the end of the chain.
    pub fn with_middleware(mut self, m: Arc<dyn crate::Middleware>) -> Self {
        self.middleware.push(m);
        self
    }
    /// The same queue over `layer(broker)`: a broker wrapped in another (e.g.
    /// [`SignedBroker`](crate::signing::SignedBroker)), results and middleware kept.
    pub fn map_broker(mut self, layer: impl FnOnce(Arc<dyn Broker>) -> Arc<dyn Broker>) -> Self {
        self.broker = layer(self.broker);
        self
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
    /// Starts broker, result backend and middleware, in that order, stopping at the first
    /// error.
    pub async fn startup(&self) -> Result<(), BrokerError> {
        self.broker.startup().await?;
        self.results.startup().await?;
        self.middleware.startup().await?;
        Ok(())
    }
    /// Shuts them down (all of them, reporting the first error).
    pub async fn shutdown(&self) -> Result<(), BrokerError> {
        let middleware = self.middleware.shutdown().await.map_err(BrokerError::from);
        let results = self.results.shutdown().await.map_err(BrokerError::from);
        if let Err(e) = &results {
            tracing::error!(error = %e, "result backend shutdown failed");
        }
        let broker = self.broker.shutdown().await;
        if let Err(e) = &broker {
            tracing::error!(broker = self.broker.kind(), error = %e, "broker shutdown failed");
        }
        middleware.and(results).and(broker)
    }
    /// Sends a message through pre_send / post_send middleware and returns it as sent (after
    /// pre_send).
    ///
    /// A `pre_send` error aborts the send and is returned. A `post_send` error comes after the
    /// message is on the queue: it is logged with `tracing::error!` (by the chain) and does not
    /// fail the send, so a producer neither loses the task id nor sends the task twice.
    ///
    /// A message without a valid [`TRACEPARENT_LABEL`](crate::trace::TRACEPARENT_LABEL) gets
    /// one (a trace of its own) before the middleware sees it.
    pub async fn kick(&self, message: TaskMessage) -> Result<TaskMessage, BrokerError> {
        let message = crate::trace::ensure_traceparent(message);
        let message = self.middleware.pre_send(message).await?;
        self.broker.kick(&message).await?;
        // Errors are logged by the chain; see the doc comment for why they do not fail the send.
        let _ = self.middleware.post_send(&message).await;
        Ok(message)
    }
    /// Sends several messages (one batch where the broker allows), through middleware.
    ///
    /// `pre_send` runs on every message first; any error aborts the whole batch before anything
    /// is sent. `post_send` errors are logged, and messages get a trace context, as in
    /// [`TaskQueue::kick`].
    pub async fn kick_batch(
        &self,
        messages: Vec<TaskMessage>,
    ) -> Result<Vec<TaskMessage>, BrokerError> {
        let mut prepared = Vec::with_capacity(messages.len());
        for m in messages {
            let m = crate::trace::ensure_traceparent(m);
            prepared.push(self.middleware.pre_send(m).await?);
        }
        if prepared.is_empty() {
            return Ok(prepared);
        }
        self.broker.kick_batch(&prepared).await?;
        for m in &prepared {
            let _ = self.middleware.post_send(m).await;
        }
        Ok(prepared)
    }
    /// A typed task by name.
    pub fn task<Args: Serialize, Out: DeserializeOwned>(&self, name: &str) -> Task<Args, Out> {
        Task {
            queue: self.clone(),
            name: name.to_string(),
            labels: Vec::new(),
            _types: PhantomData,
        }
    }
}

impl<Args, Out> Clone for Task<Args, Out> {
    fn clone(&self) -> Self {
        Task {
            queue: self.queue.clone(),
            name: self.name.clone(),
            labels: self.labels.clone(),
            _types: PhantomData,
        }
    }
}

impl<Out> Clone for TaskHandle<Out> {
    fn clone(&self) -> Self {
        TaskHandle {
            queue: self.queue.clone(),
            task_id: self.task_id.clone(),
            task_name: self.task_name.clone(),
            _out: PhantomData,
        }
    }
}

impl<Out> std::fmt::Debug for TaskHandle<Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskHandle")
            .field("task_id", &self.task_id)
            .field("task_name", &self.task_name)
            .finish()
    }
}

impl<Args: Serialize, Out: DeserializeOwned> Task<Args, Out> {
    /// The task name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Adds a string label to messages sent by this task.
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.push((key.into(), value.into()));
        self
    }
    /// Builds the message for `args` without sending it: an `Args` serializing to a JSON
    /// object becomes kwargs, anything else the single positional argument.
    pub fn message(&self, args: &Args) -> Result<TaskMessage, BrokerError> {
        let value = serde_json::to_value(args).map_err(|e| BrokerError::Codec {
            task_name: self.name.clone(),
            reason: format!("arguments do not serialize: {e}"),
        })?;
        let mut message = TaskMessage::new(self.name.clone());
        for (k, v) in &self.labels {
            message = message.with_label(k.clone(), v.clone());
        }
        match value {
            serde_json::Value::Object(kwargs) => message.kwargs = kwargs,
            other => message.args = vec![other],
        }
        Ok(message)
    }
    /// Sends the task ("kick it in the queue") and returns its handle.
    pub async fn kiq(&self, args: &Args) -> Result<TaskHandle<Out>, BrokerError> {
        let sent = self.queue.kick(self.message(args)?).await?;
        Ok(TaskHandle::new(
            self.queue.clone(),
            sent.task_id,
            sent.task_name,
        ))
    }
}

impl<Out: DeserializeOwned> TaskHandle<Out> {
    /// A handle for a task already sent.
    pub fn new(queue: TaskQueue, task_id: String, task_name: String) -> Self {
        TaskHandle {
            queue,
            task_id,
            task_name,
            _out: PhantomData,
        }
    }
    /// The task id.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }
    /// The task name.
    pub fn task_name(&self) -> &str {
        &self.task_name
    }
    /// Awaits the result (by notification where the backend supports it), bounded by `timeout`.
    ///
    /// A failed task is [`TaskWaitError::TaskFailed`]; a return value that does not decode as
    /// `Out` is [`TaskWaitError::Decode`]; a timeout is `Results(ResultError::Timeout)`.
    pub async fn wait_result(&self, timeout: Option<Duration>) -> Result<Out, TaskWaitError> {
        let result = self
            .queue
            .results()
            .wait_result(&self.task_id, timeout)
            .await?;
        if result.is_err {
            let (kind, message) = match result.error {
                Some(e) => (e.kind, e.message),
                None => (
                    FailureKind::MissingError,
                    "the result is marked failed but carries no error".to_string(),
                ),
            };
            return Err(TaskWaitError::TaskFailed {
                task_name: self.task_name.clone(),
                task_id: self.task_id.clone(),
                kind,
                message,
            });
        }
        serde_json::from_value(result.return_value).map_err(|e| TaskWaitError::Decode {
            task_name: self.task_name.clone(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use async_trait::async_trait;
    use serde::Deserialize;
    use stepq_results::{InMemoryResultBackend, ResultError, TaskResult};

    use super::*;
    use crate::middleware::{Middleware, MiddlewareError};
    use crate::InMemoryBroker;

    /// Fails the hooks named in `fail`; tags messages in pre_send.
    struct Failing {
        fail: &'static [&'static str],
        failing_task: Option<&'static str>,
    }

    impl Failing {
        fn check(&self, hook: &'static str, task: Option<&str>) -> Result<(), MiddlewareError> {
            let task_matches = self.failing_task.is_none() || self.failing_task == task;
            if self.fail.contains(&hook) && task_matches {
                return Err(MiddlewareError {
                    middleware: "failing".into(),
                    hook,
                    message: "refused".into(),
                });
            }
            Ok(())
        }
    }

    #[async_trait]
    impl Middleware for Failing {
        fn name(&self) -> &str {
            "failing"
        }
        async fn shutdown(&self) -> Result<(), MiddlewareError> {
            self.check("shutdown", None)
        }
        async fn pre_send(&self, m: TaskMessage) -> Result<TaskMessage, MiddlewareError> {
            self.check("pre_send", Some(&m.task_name))?;
            Ok(m.with_label("tagged", "yes"))
        }
        async fn post_send(&self, m: &TaskMessage) -> Result<(), MiddlewareError> {
            self.check("post_send", Some(&m.task_name))
        }
    }

    fn queue_with(
        fail: &'static [&'static str],
        failing_task: Option<&'static str>,
    ) -> (TaskQueue, InMemoryBroker) {
        let broker = InMemoryBroker::new();
        let queue = TaskQueue::new(
            Arc::new(broker.clone()),
            Arc::new(InMemoryResultBackend::new()),
        )
        .with_middleware(Arc::new(Failing { fail, failing_task }));
        (queue, broker)
    }

    #[derive(Serialize, Deserialize)]
    struct Pair {
        a: i64,
        b: String,
    }

    #[test]
    fn object_args_become_kwargs_and_others_the_single_positional_arg() {
        let (queue, _) = queue_with(&[], None);
        let m = queue
            .task::<Pair, ()>("pair")
            .with_label("run_id", "r1")
            .message(&Pair {
                a: 1,
                b: "x".into(),
            })
            .unwrap();
        assert_eq!(m.task_name, "pair");
        assert!(m.args.is_empty());
        assert_eq!(
            serde_json::Value::Object(m.kwargs.clone()),
            serde_json::json!({"a": 1, "b": "x"})
        );
        assert_eq!(m.label("run_id"), Some("r1"));
        let m = queue
            .task::<Vec<i64>, ()>("list")
            .message(&vec![1, 2])
            .unwrap();
        assert_eq!(m.args, vec![serde_json::json!([1, 2])]);
        assert!(m.kwargs.is_empty());
    }

    #[test]
    fn unserializable_args_are_a_codec_error_naming_the_task() {
        let (queue, _) = queue_with(&[], None);
        let args: HashMap<(i32, i32), i32> = [((1, 2), 3)].into();
        let err = queue.task::<_, ()>("maps").message(&args).unwrap_err();
        assert!(
            matches!(&err, BrokerError::Codec { task_name, .. } if task_name == "maps"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn pre_send_error_aborts_the_send() {
        let (queue, broker) = queue_with(&["pre_send"], None);
        let err = queue.task::<i64, i64>("t").kiq(&1).await.err().unwrap();
        assert!(
            matches!(&err, BrokerError::Middleware(e) if e.hook == "pre_send"),
            "{err:?}"
        );
        assert_eq!(broker.pending(), 0, "a refused message was sent");
    }

    #[tokio::test]
    async fn pre_send_error_in_a_batch_sends_nothing() {
        let (queue, broker) = queue_with(&["pre_send"], Some("bad"));
        let batch = vec![TaskMessage::new("good"), TaskMessage::new("bad")];
        let err = queue.kick_batch(batch).await.unwrap_err();
        assert!(matches!(err, BrokerError::Middleware(_)), "{err:?}");
        assert_eq!(broker.pending(), 0);
        let sent = queue
            .kick_batch(vec![TaskMessage::new("good"), TaskMessage::new("good")])
            .await
            .unwrap();
        assert_eq!(broker.pending(), 2);
        assert!(sent.iter().all(|m| m.label("tagged") == Some("yes")));
    }

    #[tokio::test]
    async fn post_send_error_does_not_fail_a_sent_message() {
        let (queue, broker) = queue_with(&["post_send"], None);
        let sent = queue.kick(TaskMessage::new("t")).await.unwrap();
        assert_eq!(
            sent.label("tagged"),
            Some("yes"),
            "kick returns the message as sent"
        );
        assert_eq!(broker.pending(), 1);
    }

    #[tokio::test]
    async fn shutdown_reports_a_middleware_error() {
        let (queue, _) = queue_with(&["shutdown"], None);
        queue.startup().await.unwrap();
        let err = queue.shutdown().await.unwrap_err();
        assert!(
            matches!(&err, BrokerError::Middleware(e) if e.hook == "shutdown"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn wait_result_decodes_a_success() {
        let (queue, _) = queue_with(&[], None);
        let handle = queue.task::<i64, Vec<String>>("t").kiq(&1).await.unwrap();
        queue
            .results()
            .set_result(
                handle.task_id(),
                &TaskResult::ok(serde_json::json!(["a"]), 0.1),
            )
            .await
            .unwrap();
        let out = handle
            .wait_result(Some(Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(out, ["a"]);
    }

    #[tokio::test]
    async fn wait_result_of_a_failed_task_is_task_failed() {
        let (queue, _) = queue_with(&[], None);
        let handle: TaskHandle<i64> = TaskHandle::new(queue.clone(), "id-1".into(), "t".into());
        queue
            .results()
            .set_result("id-1", &TaskResult::err("OpError", "bad input", 0.1))
            .await
            .unwrap();
        match handle.wait_result(Some(Duration::from_secs(5))).await {
            Err(TaskWaitError::TaskFailed {
                task_name,
                task_id,
                kind,
                message,
            }) => assert_eq!(
                (
                    task_name.as_str(),
                    task_id.as_str(),
                    kind.as_str(),
                    message.as_str()
                ),
                ("t", "id-1", "OpError", "bad input")
            ),
            other => panic!("expected TaskFailed, got {other:?}"),
        }
        let mut no_error = TaskResult::err("x", "y", 0.0);
        no_error.error = None;
        queue.results().set_result("id-1", &no_error).await.unwrap();
        assert!(matches!(
            handle.wait_result(Some(Duration::from_secs(5))).await,
            Err(TaskWaitError::TaskFailed {
                kind: FailureKind::MissingError,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn wait_result_of_the_wrong_type_is_a_decode_error() {
        let (queue, _) = queue_with(&[], None);
        let handle: TaskHandle<i64> = TaskHandle::new(queue.clone(), "id-2".into(), "t".into());
        queue
            .results()
            .set_result("id-2", &TaskResult::ok(serde_json::json!("text"), 0.1))
            .await
            .unwrap();
        let err = handle
            .wait_result(Some(Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, TaskWaitError::Decode { task_name, .. } if task_name == "t"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn wait_result_times_out() {
        let (queue, _) = queue_with(&[], None);
        let handle: TaskHandle<i64> = TaskHandle::new(queue, "never".into(), "t".into());
        let err = handle
            .wait_result(Some(Duration::from_millis(20)))
            .await
            .unwrap_err();
        assert!(
            matches!(err, TaskWaitError::Results(ResultError::Timeout { .. })),
            "{err:?}"
        );
    }
}
