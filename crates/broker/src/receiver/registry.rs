//! What a receiver can run: the handler contract ([`TaskHandler`], [`TaskContext`],
//! [`TaskOutcome`]), the [`Registry`] of handlers by task name with each one's slot flag, the
//! registration API on [`Receiver`] (raw, slotless and typed handlers), and the [`TaskGate`]
//! consulted before each task starts.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{de::DeserializeOwned, Serialize};
use stepq_results::{TaskError, TaskResult};
use tokio_util::sync::CancellationToken;

use super::{kinds, Receiver};
use crate::message::TaskMessage;

/// What a running task knows about itself.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// The message (after pre_execute middleware).
    pub message: Arc<TaskMessage>,
    /// Times the message was delivered, this one included.
    pub receive_count: u32,
    /// How long the message waited on the queue before this delivery, if the broker says
    /// when it was sent.
    pub queue_wait: Option<std::time::Duration>,
    /// Cancelled when the task is cancelled (see [`Receiver::cancel_handle`]) or the receiver
    /// is shutting down past its grace period.
    pub cancel: CancellationToken,
}

/// A task's outcome: a JSON return value, or an error stored in its result.
pub type TaskOutcome = Result<serde_json::Value, TaskError>;

/// A registered task handler.
pub type TaskHandler = Arc<dyn Fn(TaskContext) -> BoxFuture<'static, TaskOutcome> + Send + Sync>;

/// A check the receiver makes before each task starts, and how it ends a cancelled task that
/// does not stop on its own. Installed with [`Receiver::set_gate`]; the cancellation extension
/// (`stepq-cancel`) provides one that refuses tasks cancelled before they started.
#[async_trait::async_trait]
pub trait TaskGate: Send + Sync + 'static {
    /// Called after `pre_execute`, once the task is registered with the
    /// [`CancelHandle`](super::CancelHandle) (so a cancel from then on reaches its token),
    /// before its handler runs. `Some(result)` skips the task: the handler never runs,
    /// `result` is saved as a handler's would be (through the `on_error` / `post_execute` and
    /// `post_save` hooks) and the message is acked. `None` runs it.
    async fn before_start(&self, message: &TaskMessage) -> Option<TaskResult>;

    /// How long a handler may go on after its task was cancelled through the
    /// [`CancelHandle`](super::CancelHandle) before the receiver drops it and saves
    /// [`aborted_result`](TaskGate::aborted_result). `None` (the default) lets a cancelled
    /// handler run to its own end.
    fn cancel_grace(&self) -> Option<Duration> {
        None
    }

    /// The result saved (and the message acked) for a task dropped after its cancel grace;
    /// the receiver fills in its execution time. Default: failed, kind [`kinds::CANCELED`].
    fn aborted_result(&self, message: &TaskMessage) -> TaskResult {
        TaskResult::err(
            kinds::CANCELED,
            format!(
                "task `{}` ({}) was cancelled and did not stop within its grace period",
                message.task_name, message.task_id
            ),
            0.0,
        )
    }
}

/// A registered handler and whether its tasks hold a concurrency slot while they run.
#[derive(Clone)]
pub(super) struct Registered {
    /// Runs the task.
    pub(super) handler: TaskHandler,
    /// `false` for [`Receiver::register_without_slot`]: the delivery gives its slot back as
    /// soon as its task name is recognised.
    pub(super) holds_slot: bool,
}

/// The handlers a receiver runs, by task name.
#[derive(Default)]
pub(super) struct Registry {
    /// The handler of each registered task name.
    handlers: HashMap<String, Registered>,
}

impl Registry {
    /// Registers `registered` under `name`; `true` if it replaced a handler of that name.
    pub(super) fn insert(&mut self, name: &str, registered: Registered) -> bool {
        self.handlers.insert(name.to_string(), registered).is_some()
    }

    /// The handler registered under `name`, if any.
    pub(super) fn get(&self, name: &str) -> Option<&Registered> {
        self.handlers.get(name)
    }

    /// Names of the registered tasks, sorted.
    pub(super) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.handlers.keys().cloned().collect();
        names.sort();
        names
    }
}

impl Receiver {
    /// Registers a raw handler (replacing one of the same name, with a warning).
    pub fn register(&mut self, name: &str, handler: TaskHandler) {
        self.insert(name, handler, true);
    }
    /// Registers `handler` under `name`, warning if it replaces an earlier one.
    fn insert(&mut self, name: &str, handler: TaskHandler, holds_slot: bool) {
        let registered = Registered {
            handler,
            holds_slot,
        };
        if self.handlers.insert(name, registered) {
            tracing::warn!(task = name, "a handler registered earlier was replaced");
        }
    }
    /// Registers a raw handler whose tasks do not count against
    /// [`ReceiverConfig::concurrency`](super::ReceiverConfig::concurrency): a delivery of it
    /// gives its slot back once its task name is read, and the handler runs beside the limited
    /// ones (with heartbeats, gate and grace period as usual). For long-lived coordinating
    /// tasks that wait for other tasks this receiver may have to run (a run's orchestration
    /// waits for its steps): holding a slot, they would deadlock a receiver of concurrency 1.
    /// Their number is not limited.
    pub fn register_without_slot(&mut self, name: &str, handler: TaskHandler) {
        self.insert(name, handler, false);
    }
    /// Registers a typed async fn: its argument is decoded from kwargs (object) or the single
    /// positional argument; its `Ok` is encoded as the return value, its `Err` as the error.
    ///
    /// More than one positional argument (as a Python producer may send) decodes as a JSON
    /// array, e.g. into a tuple. Arguments that do not decode fail the task with kind
    /// [`kinds::INVALID_ARGUMENTS`]; an `Err(e)` is stored with the error's type name as kind
    /// and `e.to_string()` as message.
    pub fn register_fn<A, O, E, F, Fut>(&mut self, name: &str, f: F)
    where
        A: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        E: std::fmt::Display + Send + 'static,
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
    {
        let f = Arc::new(f);
        let handler: TaskHandler = Arc::new(move |ctx: TaskContext| {
            let f = Arc::clone(&f);
            Box::pin(async move {
                let arg: A = decode_argument(&ctx.message)?;
                let out = f(arg).await.map_err(|e| TaskError {
                    kind: std::any::type_name::<E>().into(),
                    message: e.to_string(),
                })?;
                serde_json::to_value(out).map_err(|e| TaskError {
                    kind: kinds::INVALID_RETURN_VALUE,
                    message: format!(
                        "return value of task `{}` does not encode as JSON: {e}",
                        ctx.message.task_name
                    ),
                })
            })
        });
        self.register(name, handler);
    }
    /// Names of the registered tasks, sorted.
    pub fn task_names(&self) -> Vec<String> {
        self.handlers.names()
    }
    /// Installs a [`TaskGate`] consulted before every task starts (replacing any earlier one).
    pub fn set_gate(&mut self, gate: Arc<dyn TaskGate>) {
        self.gate = Some(gate);
    }
    /// Installs `observer`, told what the receiver does (tasks started and finished,
    /// visibility extensions, broker errors, dead letters): the hook for metrics.
    pub fn set_observer(&mut self, observer: Arc<dyn super::ReceiverObserver>) {
        self.observer = Some(observer);
    }
    /// Installs a [`TaskGate`]; see [`set_gate`](Receiver::set_gate).
    pub fn with_gate(mut self, gate: Arc<dyn TaskGate>) -> Self {
        self.set_gate(gate);
        self
    }
}

/// Decodes a typed handler's argument: kwargs when there are no positional arguments, the
/// single positional argument, or several positional arguments as an array.
fn decode_argument<A: DeserializeOwned>(message: &TaskMessage) -> Result<A, TaskError> {
    let invalid = |text: String| TaskError {
        kind: kinds::INVALID_ARGUMENTS,
        message: text,
    };
    let value = match (message.args.len(), message.kwargs.is_empty()) {
        (0, _) => serde_json::Value::Object(message.kwargs.clone()),
        (1, true) => message.args[0].clone(),
        (_, true) => serde_json::Value::Array(message.args.clone()),
        (n, false) => {
            return Err(invalid(format!(
                "task `{}` takes one argument, but got {n} positional and {} keyword arguments",
                message.task_name,
                message.kwargs.len()
            )))
        }
    };
    serde_json::from_value(value).map_err(|e| {
        invalid(format!(
            "arguments of task `{}` do not decode: {e}",
            message.task_name
        ))
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use stepq_results::InMemoryResultBackend;

    use super::*;
    use crate::queue::TaskQueue;
    use crate::InMemoryBroker;

    /// A handler that returns `value`.
    fn returning(value: i64) -> TaskHandler {
        Arc::new(move |_ctx: TaskContext| Box::pin(async move { Ok(json!(value)) }))
    }

    /// What the handler registered under `name` returns.
    async fn run(registry: &Registry, name: &str) -> TaskOutcome {
        let handler = Arc::clone(&registry.get(name).expect("registered").handler);
        handler(TaskContext {
            message: Arc::new(TaskMessage::new(name)),
            receive_count: 1,
            queue_wait: None,
            cancel: CancellationToken::new(),
        })
        .await
    }

    /// A registry of `(name, returned value, holds_slot)`.
    fn registry(entries: &[(&str, i64, bool)]) -> Registry {
        let mut registry = Registry::default();
        for &(name, value, holds_slot) in entries {
            registry.insert(
                name,
                Registered {
                    handler: returning(value),
                    holds_slot,
                },
            );
        }
        registry
    }

    /// A receiver on an in-memory queue, nothing registered.
    fn receiver() -> Receiver {
        let queue = TaskQueue::new(
            Arc::new(InMemoryBroker::new()),
            Arc::new(InMemoryResultBackend::new()),
        );
        Receiver::new(queue)
    }

    #[tokio::test]
    async fn lookups_find_each_handler_with_its_slot_flag() {
        let registry = registry(&[("a", 1, true), ("b", 2, false)]);
        assert_eq!(run(&registry, "a").await.unwrap(), json!(1));
        assert_eq!(run(&registry, "b").await.unwrap(), json!(2));
        assert!(registry.get("a").unwrap().holds_slot);
        assert!(!registry.get("b").unwrap().holds_slot);
    }

    #[test]
    fn unknown_names_are_not_found() {
        let registry = registry(&[("add", 1, true)]);
        for name in ["", "ad", "add ", "Add", "addd"] {
            assert!(registry.get(name).is_none(), "{name:?}");
        }
        assert!(Registry::default().get("add").is_none());
    }

    #[tokio::test]
    async fn registering_a_name_again_replaces_its_handler_and_slot_flag() {
        let mut registry = registry(&[("a", 1, true)]);
        let replaced = registry.insert(
            "a",
            Registered {
                handler: returning(2),
                holds_slot: false,
            },
        );
        assert!(replaced);
        assert_eq!(run(&registry, "a").await.unwrap(), json!(2));
        assert!(!registry.get("a").unwrap().holds_slot);
        assert_eq!(registry.names(), ["a"]);
        let fresh = registry.insert(
            "b",
            Registered {
                handler: returning(3),
                holds_slot: true,
            },
        );
        assert!(!fresh);
    }

    #[test]
    fn names_are_sorted() {
        let names = ["sub", "add", "mul", "pow", "div", "mod"];
        let entries: Vec<_> = names.iter().map(|&n| (n, 0, n != "mul")).collect();
        assert_eq!(
            registry(&entries).names(),
            ["add", "div", "mod", "mul", "pow", "sub"]
        );
        assert!(Registry::default().names().is_empty());
    }

    #[test]
    fn register_holds_a_slot_and_register_without_slot_does_not() {
        let mut receiver = receiver();
        receiver.register("limited", returning(1));
        receiver.register_without_slot("coordinating", returning(2));
        receiver.register_fn("typed", |x: i64| async move { Ok::<_, std::io::Error>(x) });
        assert!(receiver.handlers.get("limited").unwrap().holds_slot);
        assert!(!receiver.handlers.get("coordinating").unwrap().holds_slot);
        assert!(receiver.handlers.get("typed").unwrap().holds_slot);
        assert_eq!(receiver.task_names(), ["coordinating", "limited", "typed"]);
        // Registering a slotless name again with `register` makes it hold a slot.
        receiver.register("coordinating", returning(3));
        assert!(receiver.handlers.get("coordinating").unwrap().holds_slot);
    }

    /// A message of task `t` with `args` and `kwargs`.
    fn message(args: serde_json::Value, kwargs: serde_json::Value) -> TaskMessage {
        let mut message = TaskMessage::new("t");
        message.args = args.as_array().unwrap().clone();
        message.kwargs = kwargs.as_object().unwrap().clone();
        message
    }

    #[test]
    fn typed_arguments_decode_from_kwargs_one_positional_or_several_as_an_array() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Pair {
            a: i64,
            b: i64,
        }
        let kwargs: Pair = decode_argument(&message(json!([]), json!({"a": 1, "b": 2}))).unwrap();
        assert_eq!(kwargs, Pair { a: 1, b: 2 });
        let single: i64 = decode_argument(&message(json!([7]), json!({}))).unwrap();
        assert_eq!(single, 7);
        let several: (i64, String) = decode_argument(&message(json!([1, "x"]), json!({}))).unwrap();
        assert_eq!(several, (1, "x".to_string()));
    }

    #[test]
    fn positional_and_keyword_arguments_together_are_invalid() {
        let e = decode_argument::<i64>(&message(json!([1]), json!({"b": 2}))).unwrap_err();
        assert_eq!(e.kind, kinds::INVALID_ARGUMENTS);
        assert_eq!(
            e.message,
            "task `t` takes one argument, but got 1 positional and 1 keyword arguments"
        );
    }

    #[test]
    fn arguments_of_the_wrong_type_are_invalid_naming_the_task() {
        let e = decode_argument::<i64>(&message(json!(["seven"]), json!({}))).unwrap_err();
        assert_eq!(e.kind, kinds::INVALID_ARGUMENTS);
        assert!(
            e.message
                .starts_with("arguments of task `t` do not decode: "),
            "{}",
            e.message
        );
    }
}
