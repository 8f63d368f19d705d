//! `Receiver`: runs registered tasks from a broker (the generic worker loop).

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use stepq_results::{ResultError, TaskResult};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::delivery::Delivery;
use crate::error::BrokerError;
use crate::message::TaskMessage;
use crate::queue::TaskQueue;

mod cancel;
mod config;
mod registry;
mod stats;

// The SQS broker tags the queues it owns with this (as `crate::receiver::default_worker_name`).
#[cfg(feature = "sqs")]
pub(crate) use config::default_worker_name;
pub use cancel::CancelHandle;
pub use config::ReceiverConfig;
use registry::{Registered, Registry};
pub use registry::{TaskContext, TaskGate, TaskHandler, TaskOutcome};
use stats::Counters;
pub use stats::ReceiverStats;

/// Label added to every stored result: the [`ReceiverConfig::worker_name`] of the worker that
/// produced it (unless the message already carries a label of that name).
pub const WORKER_NAME_LABEL: &str = "worker_name";

/// Error kinds the receiver itself writes into failed results.
pub mod kinds {
    /// The message body is not a task message (stored when a task id could be salvaged).
    pub const MALFORMED_MESSAGE: &str = "MalformedMessage";
    /// No handler is registered under the message's task name.
    pub const UNKNOWN_TASK: &str = "UnknownTask";
    /// The handler panicked.
    pub const PANIC: &str = "Panic";
    /// A `pre_execute` middleware failed, so the handler did not run.
    pub const MIDDLEWARE_ERROR: &str = "MiddlewareError";
    /// The arguments do not decode as the typed handler's argument ([`Receiver::register_fn`](super::Receiver::register_fn)).
    pub const INVALID_ARGUMENTS: &str = "InvalidArguments";
    /// The typed handler's return value does not encode as JSON.
    pub const INVALID_RETURN_VALUE: &str = "InvalidReturnValue";
    /// The task was cancelled and dropped (the default [`TaskGate::aborted_result`](super::TaskGate::aborted_result)).
    pub const CANCELED: &str = "Canceled";
}

/// Attempts to save a result when the backend reports a temporary error.
const SAVE_ATTEMPTS: u32 = 3;
/// Delay before the second save attempt; doubles after each.
const SAVE_RETRY_DELAY: Duration = Duration::from_millis(100);
/// Bounds of the backoff after the broker's stream yields an error.
const STREAM_BACKOFF_MIN: Duration = Duration::from_millis(50);
const STREAM_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Bytes of a malformed body quoted in the log.
const BODY_EXCERPT: usize = 512;

/// Runs registered tasks: decode, pre_execute, run, post_execute / on_error, save result,
/// post_save, then ack. Malformed messages and unknown task names get a failed result (when a
/// task id can be salvaged), are logged, and are acked; the receiver keeps going.
///
/// - A message is acked only once its result is saved. A result that cannot be saved (after
///   retrying temporary backend errors) is logged and the message nacked, so the task runs
///   again; [`ReceiverStats::unsaved`] counts these.
/// - Errors of observing hooks (`post_execute`, `on_error`, `post_save`) are logged and counted
///   in [`ReceiverStats::hook_errors`] but do not change the outcome: after a `post_save` error
///   the message is still acked, since its result is saved and running the task again would
///   not undo the hook's failure. A `pre_execute` error fails the task (kind
///   [`kinds::MIDDLEWARE_ERROR`]) without running it.
/// - A panicking handler fails its task (kind [`kinds::PANIC`]); the receiver keeps going.
/// - While a handler runs, a heartbeat extends its message's visibility every
///   [`ReceiverConfig::heartbeat_interval`] by [`ReceiverConfig::heartbeat_extension`].
/// - At most [`ReceiverConfig::concurrency`] handlers run at once; a delivery is taken from the
///   broker only when one of them is free. Tasks registered with
///   [`Receiver::register_without_slot`] give their slot back as soon as they are recognised.
/// - An installed [`TaskGate`] may refuse a task before it starts (its result is saved and the
///   message acked) and bound how long a cancelled handler may run on.
pub struct Receiver {
    queue: TaskQueue,
    handlers: Registry,
    config: ReceiverConfig,
    cancel: CancelHandle,
    gate: Option<Arc<dyn TaskGate>>,
}

impl Receiver {
    /// A receiver on `queue` with default config.
    pub fn new(queue: TaskQueue) -> Self {
        Receiver {
            queue,
            handlers: Registry::default(),
            config: ReceiverConfig::default(),
            cancel: CancelHandle::default(),
            gate: None,
        }
    }
    /// Listens and runs tasks until `stop` fires, then lets in-flight tasks finish within the
    /// grace period (cancelling and nacking the rest) and returns.
    ///
    /// Runs the middleware `startup` hooks first and `shutdown` hooks last; the broker and the
    /// result backend are started and shut down by the owner of the [`TaskQueue`]
    /// ([`TaskQueue::startup`]), since producers may share them. An invalid config is
    /// [`BrokerError::Config`]; a broker stream that ends before `stop` fires is
    /// [`BrokerError::Closed`] (after in-flight tasks were drained).
    pub async fn run(self, stop: CancellationToken) -> Result<ReceiverStats, BrokerError> {
        self.config.validate()?;
        let Receiver {
            queue,
            handlers,
            config,
            cancel,
            gate,
        } = self;
        let known = handlers.names();
        let shared = Arc::new(Shared {
            queue,
            handlers,
            known,
            config,
            cancel,
            gate,
            grace_expired: CancellationToken::new(),
            stats: Counters::default(),
        });
        shared.queue.middleware().startup().await?;
        let mut stream = match shared.queue.broker().listen(stop.clone()).await {
            Ok(stream) => stream,
            Err(e) => {
                shared.shutdown_middleware().await;
                return Err(e);
            }
        };
        tracing::info!(
            worker = %shared.config.worker_name,
            broker = shared.queue.broker().kind(),
            concurrency = shared.config.concurrency,
            tasks = ?shared.known,
            "receiver started"
        );

        let semaphore = Arc::new(Semaphore::new(shared.config.concurrency));
        let mut tasks = JoinSet::new();
        let mut backoff = STREAM_BACKOFF_MIN;
        let mut stream_ended = false;
        loop {
            while let Some(done) = tasks.try_join_next() {
                log_join(done);
            }
            // A permit first, so no delivery is taken that cannot run at once.
            let permit = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                permit = Arc::clone(&semaphore).acquire_owned() => {
                    permit.expect("the semaphore is never closed")
                }
            };
            let next = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                next = stream.next() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    backoff = STREAM_BACKOFF_MIN;
                    tasks.spawn(process(Arc::clone(&shared), delivery, permit));
                }
                Some(Err(e)) => {
                    drop(permit);
                    tracing::error!(
                        broker = shared.queue.broker().kind(),
                        error = %e,
                        temporary = e.is_temporary(),
                        retry_in = ?backoff,
                        "receiving from the broker failed"
                    );
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(STREAM_BACKOFF_MAX);
                }
                None => {
                    stream_ended = !stop.is_cancelled();
                    break;
                }
            }
        }
        drop(stream);

        let grace = shared.config.grace_period;
        if !tasks.is_empty() {
            tracing::info!(
                running = tasks.len(),
                grace = ?grace,
                "receiver stopping: waiting for running tasks"
            );
        }
        let drain = async {
            while let Some(done) = tasks.join_next().await {
                log_join(done);
            }
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!(
                running = tasks.len(),
                grace = ?grace,
                "grace period over: cancelling the running tasks and returning their messages"
            );
            shared.grace_expired.cancel();
            while let Some(done) = tasks.join_next().await {
                log_join(done);
            }
        }
        shared.shutdown_middleware().await;
        let stats = shared.stats.snapshot();
        tracing::info!(worker = %shared.config.worker_name, ?stats, "receiver stopped");
        if stream_ended {
            tracing::error!(
                broker = shared.queue.broker().kind(),
                "the broker's delivery stream ended before the receiver was stopped"
            );
            return Err(BrokerError::Closed);
        }
        Ok(stats)
    }
}

fn log_join(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        // Handler panics are caught inside; this is a bug in the receiver itself. The delivery
        // was neither acked nor nacked, so it comes back after its visibility timeout.
        tracing::error!(error = %e, "a receiver task failed");
    }
}

/// Text of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Lossy text of the start of a body, for logs.
fn excerpt(body: &[u8]) -> String {
    let cut = body.len().min(BODY_EXCERPT);
    let mut text = String::from_utf8_lossy(&body[..cut]).into_owned();
    if cut < body.len() {
        text.push_str(&format!("... ({} bytes)", body.len()));
    }
    text
}

/// What every delivery's task shares.
struct Shared {
    queue: TaskQueue,
    handlers: Registry,
    /// Sorted task names, for error messages.
    known: Vec<String>,
    config: ReceiverConfig,
    cancel: CancelHandle,
    gate: Option<Arc<dyn TaskGate>>,
    /// Fires when the grace period after stop is over.
    grace_expired: CancellationToken,
    stats: Counters,
}

/// Handles one delivery from decoding to ack.
async fn process(shared: Arc<Shared>, delivery: Delivery, permit: OwnedSemaphorePermit) {
    let mut permit = Some(permit);
    let message = match delivery.message() {
        Ok(message) => message,
        Err(e) => return shared.reject_malformed(delivery, e).await,
    };
    let Some(Registered {
        handler,
        holds_slot,
    }) = shared.handlers.get(&message.task_name).cloned()
    else {
        return shared.reject_unknown(delivery, message).await;
    };
    if !holds_slot {
        // Gives the slot back: the receiver takes the next delivery at once.
        drop(permit.take());
    }
    let (message, result) = match shared.queue.middleware().pre_execute(message.clone()).await {
        Ok(prepared) => match shared.execute(&delivery, &prepared, handler).await {
            Some(result) => (prepared, result),
            None => return shared.release(delivery, &prepared).await,
        },
        Err(e) => {
            tracing::error!(
                task = %message.task_name,
                task_id = %message.task_id,
                error = %e,
                "pre_execute middleware failed; the task does not run"
            );
            let result = TaskResult::err(kinds::MIDDLEWARE_ERROR, e.to_string(), 0.0);
            (message, result)
        }
    };
    shared.finish(delivery, message, result).await;
}

impl Shared {
    /// Runs the handler with heartbeats; `None` if the grace period ran out first. With a
    /// gate: a task it refuses is not run (its result is the gate's), and a cancelled
    /// handler still running after the gate's cancel grace is dropped.
    async fn execute(
        &self,
        delivery: &Delivery,
        message: &TaskMessage,
        handler: TaskHandler,
    ) -> Option<TaskResult> {
        let token = CancellationToken::new();
        let _registration = self.cancel.register(&message.task_id, token.clone());
        // Checked after registering, so a cancel is either seen here or reaches the token.
        if let Some(gate) = &self.gate {
            if let Some(result) = gate.before_start(message).await {
                return Some(result);
            }
        }
        let cancel_grace = self.gate.as_ref().and_then(|g| g.cancel_grace());
        let ctx = TaskContext {
            message: Arc::new(message.clone()),
            receive_count: delivery.receive_count(),
            cancel: token.clone(),
        };
        tracing::debug!(
            task = %message.task_name,
            task_id = %message.task_id,
            receive_count = delivery.receive_count(),
            "task started"
        );
        let started = Instant::now();
        let run = AssertUnwindSafe(async move { handler(ctx).await }).catch_unwind();
        let heartbeat = self.heartbeat(delivery, &message.task_id);
        let overdue = async {
            match cancel_grace {
                Some(grace) => {
                    token.cancelled().await;
                    tokio::time::sleep(grace).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(run, heartbeat, overdue);
        let outcome = tokio::select! {
            biased;
            outcome = &mut run => outcome,
            _ = self.grace_expired.cancelled() => {
                token.cancel();
                return None;
            }
            () = &mut overdue => {
                let gate = self.gate.as_ref().expect("a cancel grace comes from a gate");
                tracing::warn!(
                    task = %message.task_name,
                    task_id = %message.task_id,
                    grace = ?cancel_grace,
                    "a cancelled task did not stop within its grace period; dropping it"
                );
                let mut result = gate.aborted_result(message);
                result.execution_time = started.elapsed().as_secs_f64();
                return Some(result);
            }
            () = &mut heartbeat => unreachable!("the heartbeat never ends"),
        };
        let seconds = started.elapsed().as_secs_f64();
        Some(match outcome {
            Ok(Ok(value)) => TaskResult::ok(value, seconds),
            Ok(Err(e)) => TaskResult::err(e.kind, e.message, seconds),
            Err(payload) => {
                let text = format!(
                    "task `{}` panicked: {}",
                    message.task_name,
                    panic_message(payload.as_ref())
                );
                tracing::error!(task_id = %message.task_id, "{text}");
                TaskResult::err(kinds::PANIC, text, seconds)
            }
        })
    }

    /// Extends the delivery's visibility every heartbeat interval; never returns.
    async fn heartbeat(&self, delivery: &Delivery, task_id: &str) {
        let Some(every) = self.config.heartbeat_interval else {
            return std::future::pending().await;
        };
        let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(e) = delivery
                .extend_visibility(self.config.heartbeat_extension)
                .await
            {
                tracing::warn!(
                    task_id,
                    error = %e,
                    "heartbeat could not extend the message's visibility; it may be delivered \
                     again while this task runs"
                );
            }
        }
    }

    /// Hooks, save, post_save, ack.
    async fn finish(&self, delivery: Delivery, message: TaskMessage, mut result: TaskResult) {
        result.labels = self.result_labels(&message.labels);
        let middleware = self.queue.middleware();
        let hook = if result.is_err {
            middleware.on_error(&message, &result).await
        } else {
            middleware.post_execute(&message, &result).await
        };
        if hook.is_err() {
            Counters::bump(&self.stats.hook_errors);
        }
        let Some(delivery) = self.save_or_nack(delivery, &message.task_id, &result).await else {
            return;
        };
        Counters::bump(if result.is_err {
            &self.stats.failed
        } else {
            &self.stats.succeeded
        });
        // The result is saved: a post_save error is logged (by the chain) and counted, and the
        // message is still acked, since running the task again would not undo the hook's failure.
        if middleware.post_save(&message, &result).await.is_err() {
            Counters::bump(&self.stats.hook_errors);
        }
        self.ack(delivery, &message.task_id).await;
    }

    /// Saves a result of a message rejected before running, then acks.
    async fn finish_rejected(&self, delivery: Delivery, task_id: &str, result: TaskResult) {
        if let Some(delivery) = self.save_or_nack(delivery, task_id, &result).await {
            Counters::bump(&self.stats.failed);
            self.ack(delivery, task_id).await;
        }
    }

    fn result_labels(
        &self,
        labels: &BTreeMap<String, serde_json::Value>,
    ) -> BTreeMap<String, serde_json::Value> {
        let mut labels = labels.clone();
        labels
            .entry(WORKER_NAME_LABEL.to_string())
            .or_insert_with(|| serde_json::Value::String(self.config.worker_name.clone()));
        labels
    }

    /// Saves the result and gives the delivery back; if saving fails, nacks the delivery (so
    /// the task runs again) and returns `None`.
    async fn save_or_nack(
        &self,
        delivery: Delivery,
        task_id: &str,
        result: &TaskResult,
    ) -> Option<Delivery> {
        let Err(e) = self.save(task_id, result).await else {
            return Some(delivery);
        };
        Counters::bump(&self.stats.unsaved);
        tracing::error!(
            task_id,
            error = %e,
            "could not save the task's result; returning its message to the queue"
        );
        if let Err(nack) = delivery.nack().await {
            tracing::error!(
                task_id,
                error = %nack,
                "could not return the message; it comes back after its visibility timeout"
            );
        }
        None
    }

    /// `set_result`, retrying temporary errors with backoff.
    async fn save(&self, task_id: &str, result: &TaskResult) -> Result<(), ResultError> {
        let mut delay = SAVE_RETRY_DELAY;
        let mut attempt = 1;
        loop {
            match self.queue.results().set_result(task_id, result).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_temporary() && attempt < SAVE_ATTEMPTS => {
                    tracing::warn!(task_id, attempt, error = %e, retry_in = ?delay, "saving a result failed");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn ack(&self, delivery: Delivery, task_id: &str) {
        if let Err(e) = delivery.ack().await {
            Counters::bump(&self.stats.ack_errors);
            tracing::error!(
                task_id,
                error = %e,
                "could not ack a message whose result is saved; it will be delivered again"
            );
        }
    }

    /// Returns a message whose task did not finish within the grace period.
    async fn release(&self, delivery: Delivery, message: &TaskMessage) {
        Counters::bump(&self.stats.released);
        tracing::warn!(
            task = %message.task_name,
            task_id = %message.task_id,
            "task cancelled at shutdown; returning its message to the queue"
        );
        if let Err(e) = delivery.nack().await {
            tracing::error!(
                task_id = %message.task_id,
                error = %e,
                "could not return the message; it comes back after its visibility timeout"
            );
        }
    }

    async fn reject_malformed(&self, delivery: Delivery, error: BrokerError) {
        let body = excerpt(delivery.body());
        match TaskMessage::salvage_task_id(delivery.body()) {
            Some(task_id) => {
                tracing::error!(%task_id, %error, %body, "rejecting a malformed message");
                let mut result = TaskResult::err(kinds::MALFORMED_MESSAGE, error.to_string(), 0.0);
                result.labels = self.result_labels(&BTreeMap::new());
                self.finish_rejected(delivery, &task_id, result).await;
            }
            None => {
                tracing::error!(
                    %error,
                    %body,
                    "dropping a malformed message: it has no task id to store a failed result under"
                );
                Counters::bump(&self.stats.failed);
                self.ack(delivery, "<none>").await;
            }
        }
    }

    async fn reject_unknown(&self, delivery: Delivery, message: TaskMessage) {
        let known = if self.known.is_empty() {
            "none".to_string()
        } else {
            self.known.join(", ")
        };
        let text = format!(
            "no task named `{}` is registered on worker `{}`; known tasks: {known}",
            message.task_name, self.config.worker_name
        );
        tracing::error!(task_id = %message.task_id, "{text}");
        let mut result = TaskResult::err(kinds::UNKNOWN_TASK, text, 0.0);
        result.labels = self.result_labels(&message.labels);
        self.finish_rejected(delivery, &message.task_id, result)
            .await;
    }

    async fn shutdown_middleware(&self) {
        if self.queue.middleware().shutdown().await.is_err() {
            Counters::bump(&self.stats.hook_errors);
        }
    }
}
