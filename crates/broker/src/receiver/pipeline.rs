//! The delivery pipeline, one spawned task per delivery: [`process`] decodes it, looks up
//! its handler (giving back the concurrency slot of a slotless one), runs `pre_execute`, and
//! [`Shared::execute`]s the handler behind the gate with its cancel token registered, a
//! visibility heartbeat and the cancel and shutdown grace periods. Saving the result and
//! acking or nacking the delivery, and rejecting malformed and unknown messages, is
//! [`settle`]'s part.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use stepq_results::TaskResult;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::registry::{Registered, Registry};
use super::{kinds, CancelHandle, Counters, ReceiverConfig, TaskContext, TaskGate, TaskHandler};
use crate::delivery::Delivery;
use crate::message::TaskMessage;
use crate::queue::TaskQueue;

mod settle;

/// What every delivery's task shares.
pub(super) struct Shared {
    /// The receiver's queue: broker, result backend and middleware.
    pub(super) queue: TaskQueue,
    /// The registered handlers by task name.
    pub(super) handlers: Registry,
    /// Sorted task names, for error messages.
    pub(super) known: Vec<String>,
    /// The receiver's (validated) settings.
    pub(super) config: ReceiverConfig,
    /// Where running tasks register their cancel tokens.
    pub(super) cancel: CancelHandle,
    /// Consulted before each task starts, if installed.
    pub(super) gate: Option<Arc<dyn TaskGate>>,
    /// Fires when the grace period after stop is over.
    pub(super) grace_expired: CancellationToken,
    /// What the receiver did so far.
    pub(super) stats: Counters,
}

/// Handles one delivery from decoding to ack.
pub(super) async fn process(shared: Arc<Shared>, delivery: Delivery, permit: OwnedSemaphorePermit) {
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
