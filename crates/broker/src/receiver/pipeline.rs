//! The delivery pipeline, one spawned task per delivery: [`process`] decodes it, looks up
//! its handler (giving back the concurrency slot of a slotless one), runs `pre_execute`, and
//! [`Shared::execute`]s the handler behind the gate with its cancel token registered, a
//! visibility heartbeat and the cancel and shutdown grace periods. Saving the result and
//! acking or nacking the delivery, and rejecting malformed and unknown messages, is
//! [`settle`]'s part.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use stepq_core::SharedFailureLog;
use stepq_results::{FailureKind, TaskError, TaskResult};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::registry::{Registered, Registry};
use super::{
    kinds, CancelHandle, Counters, ReceiverConfig, ReceiverObserver, TaskContext, TaskEnd,
    TaskGate, TaskHandler,
};
use crate::delivery::Delivery;
use crate::message::TaskMessage;
use crate::queue::TaskQueue;

mod settle;

/// What every delivery's task shares.
/// What a failing heartbeat is, in the receiver's log.
pub(super) const HEARTBEAT_FAILURES: &str = "extending running tasks' visibility (heartbeat)";

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
    /// Told what the receiver does, if installed.
    pub(super) observer: Option<Arc<dyn ReceiverObserver>>,
    /// Fires when the grace period after stop is over.
    pub(super) grace_expired: CancellationToken,
    /// What the receiver did so far.
    pub(super) stats: Counters,
    /// Heartbeats failing with a temporary error (an outage), logged once per period for all
    /// running tasks.
    pub(super) heartbeat_failures: SharedFailureLog,
}

/// Handles one delivery from decoding to ack.
pub(super) async fn process(shared: Arc<Shared>, delivery: Delivery, permit: OwnedSemaphorePermit) {
    let mut permit = Some(permit);
    if let Some(max) = shared.config.max_receive_count {
        if delivery.receive_count() > max {
            return shared.dead_letter_overdelivered(delivery, max).await;
        }
    }
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
    // Without middleware the message is used as it is (no copy for a chain that cannot fail).
    let middleware = shared.queue.middleware();
    let prepared = match middleware.is_empty() {
        true => Ok(message),
        false => match middleware.pre_execute(message.clone()).await {
            Ok(prepared) => Ok(prepared),
            Err(e) => Err((message, e)),
        },
    };
    let (message, result) = match prepared {
        Ok(prepared) => match shared.execute(&delivery, &prepared, handler).await {
            Some(result) => (prepared, result),
            None => return shared.release(delivery, &prepared).await,
        },
        Err((message, e)) => {
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
        let queue_wait = delivery.queue_wait();
        let ctx = TaskContext {
            message: Arc::new(message.clone()),
            receive_count: delivery.receive_count(),
            queue_wait,
            cancel: token.clone(),
        };
        if let Some(observer) = &self.observer {
            observer.task_started(message, delivery.receive_count(), queue_wait);
        }
        tracing::debug!(
            task = %message.task_name,
            task_id = %message.task_id,
            receive_count = delivery.receive_count(),
            "task started"
        );
        let started = Instant::now();
        let run = AssertUnwindSafe(async move { handler(ctx).await }).catch_unwind();
        let heartbeat = self.heartbeat(delivery, message);
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
                if let Some(observer) = &self.observer {
                    observer.task_finished(message, TaskEnd::Released, started.elapsed());
                }
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
                if let Some(observer) = &self.observer {
                    observer.task_finished(message, TaskEnd::of(&result), started.elapsed());
                }
                return Some(result);
            }
            () = &mut heartbeat => unreachable!("the heartbeat never ends"),
        };
        let run_time = started.elapsed();
        let seconds = run_time.as_secs_f64();
        let result = match outcome {
            Ok(Ok(value)) => TaskResult::ok(value, seconds),
            Ok(Err(e)) => {
                log_failure(message, &e);
                TaskResult::err(e.kind, e.message, seconds)
            }
            Err(payload) => {
                let text = format!(
                    "task `{}` panicked: {}",
                    message.task_name,
                    panic_message(payload.as_ref())
                );
                tracing::error!(task_id = %message.task_id, "{text}");
                TaskResult::err(kinds::PANIC, text, seconds)
            }
        };
        if let Some(observer) = &self.observer {
            observer.task_finished(message, TaskEnd::of(&result), run_time);
        }
        Some(result)
    }

    /// Extends the delivery's visibility every heartbeat interval; never returns. Temporary
    /// failures go to the receiver's shared log (one warning per outage, not per task and
    /// beat); a permanent one (the receipt is no longer valid: the message was delivered
    /// again) is logged once and ends the extending, which cannot succeed any more.
    async fn heartbeat(&self, delivery: &Delivery, message: &TaskMessage) {
        let task_id = message.task_id.as_str();
        let Some(every) = self.config.heartbeat_interval else {
            return std::future::pending().await;
        };
        let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let extended = delivery
                .extend_visibility(self.config.heartbeat_extension)
                .await;
            if let Some(observer) = &self.observer {
                observer.visibility_extended(message, extended.as_ref().map(|_| ()));
            }
            match extended {
                Ok(()) => self.heartbeat_failures.succeeded(),
                Err(e) if e.is_temporary() => {
                    self.heartbeat_failures.failed(&format_args!(
                        "{e}; a task's message may be delivered again while it runs"
                    ));
                }
                Err(e) => {
                    tracing::warn!(
                        task_id,
                        error = %e,
                        "heartbeat could not extend the message's visibility; it may be \
                         delivered again while this task runs"
                    );
                    return std::future::pending().await;
                }
            }
        }
    }
}

/// Logs a task its handler failed, so the reason is on the worker's log and not only in the
/// stored result: at error level, but a cancelled task at info and a task whose run another
/// orchestrator already holds (a redelivered launch) at warn.
fn log_failure(message: &TaskMessage, error: &TaskError) {
    let (task, task_id, kind) = (&message.task_name, &message.task_id, &error.kind);
    let reason = &error.message;
    match error.kind {
        FailureKind::Canceled => tracing::info!(%task, %task_id, %kind, %reason, "task canceled"),
        FailureKind::RunAlreadyClaimed => {
            tracing::warn!(%task, %task_id, %kind, %reason, "task refused")
        }
        _ => tracing::error!(%task, %task_id, %kind, %reason, "task failed"),
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use async_trait::async_trait;
    use bytes::Bytes;
    use serde_json::json;
    use stepq_results::{InMemoryResultBackend, ResultBackend};
    use tokio::sync::{Notify, Semaphore};

    use super::*;
    use crate::delivery::DeliveryHandle;
    use crate::error::BrokerError;
    use crate::InMemoryBroker;

    /// How often a test delivery was acked and nacked.
    #[derive(Default)]
    pub(super) struct Settled {
        /// Acks so far.
        pub(super) acks: AtomicU32,
        /// Nacks so far.
        pub(super) nacks: AtomicU32,
    }

    /// A delivery handle that only counts what is done to it.
    struct Recording(Arc<Settled>);

    #[async_trait]
    impl DeliveryHandle for Recording {
        async fn ack(&self) -> Result<(), BrokerError> {
            self.0.acks.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        async fn nack(&self) -> Result<(), BrokerError> {
            self.0.nacks.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        async fn extend_visibility(&self, _by: std::time::Duration) -> Result<(), BrokerError> {
            Ok(())
        }
    }

    /// A first delivery of `body` and the record of how it was settled.
    pub(super) fn delivery(body: impl Into<Bytes>) -> (Delivery, Arc<Settled>) {
        let settled = Arc::new(Settled::default());
        let handle = Box::new(Recording(Arc::clone(&settled)));
        (Delivery::new(body.into(), 1, handle), settled)
    }

    /// What a receiver named `w1` without heartbeats shares, running `handlers`.
    pub(super) fn shared(handlers: Registry) -> (Arc<Shared>, Arc<InMemoryResultBackend>) {
        let results = Arc::new(InMemoryResultBackend::new());
        let queue = TaskQueue::new(Arc::new(InMemoryBroker::new()), results.clone());
        let config = ReceiverConfig {
            heartbeat_interval: None,
            worker_name: "w1".into(),
            ..ReceiverConfig::default()
        };
        let shared = Shared {
            queue,
            known: handlers.names(),
            handlers,
            config,
            cancel: CancelHandle::default(),
            gate: None,
            observer: None,
            grace_expired: CancellationToken::new(),
            stats: Counters::default(),
            heartbeat_failures: SharedFailureLog::new(HEARTBEAT_FAILURES),
        };
        (Arc::new(shared), results)
    }

    /// A registry of task `block`, which notifies `started` and then waits for `release`,
    /// and of `other` tasks that must not run.
    fn blocking(holds_slot: bool, other: &[&str]) -> (Registry, Arc<Notify>, Arc<Notify>) {
        let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let (s, r) = (Arc::clone(&started), Arc::clone(&release));
        let handler: TaskHandler = Arc::new(move |_ctx: TaskContext| {
            let (s, r) = (Arc::clone(&s), Arc::clone(&r));
            Box::pin(async move {
                s.notify_one();
                r.notified().await;
                Ok(json!("done"))
            })
        });
        let mut registry = Registry::default();
        registry.insert(
            "block",
            Registered {
                handler,
                holds_slot,
            },
        );
        for &name in other {
            let never: TaskHandler =
                Arc::new(|_ctx: TaskContext| Box::pin(async { panic!("must not run") }));
            let registered = Registered {
                handler: never,
                holds_slot: true,
            };
            registry.insert(name, registered);
        }
        (registry, started, release)
    }

    /// Runs task `block` through the pipeline on a receiver with one slot; the slots free
    /// while the handler runs.
    async fn free_slots_while_running(holds_slot: bool) -> usize {
        let (registry, started, release) = blocking(holds_slot, &[]);
        let (shared, results) = shared(registry);
        let slots = Arc::new(Semaphore::new(1));
        let permit = Arc::clone(&slots).acquire_owned().await.unwrap();
        let message = TaskMessage::new("block");
        let (delivery, settled) = delivery(message.to_json());
        let task = tokio::spawn(process(Arc::clone(&shared), delivery, permit));
        started.notified().await;
        let free = slots.available_permits();
        release.notify_one();
        task.await.unwrap();
        assert_eq!(
            slots.available_permits(),
            1,
            "the slot is free once it is done"
        );
        let result = results.get_result(&message.task_id, false).await.unwrap();
        assert_eq!(result.return_value, json!("done"));
        assert_eq!(settled.acks.load(Ordering::SeqCst), 1);
        assert_eq!(shared.stats.snapshot().succeeded, 1);
        free
    }

    #[tokio::test]
    async fn a_task_holds_its_slot_until_it_is_done() {
        assert_eq!(free_slots_while_running(true).await, 0);
    }

    #[tokio::test]
    async fn a_slotless_task_gives_its_slot_back_before_its_handler_runs() {
        assert_eq!(free_slots_while_running(false).await, 1);
    }

    #[tokio::test]
    async fn an_unknown_task_gets_a_failed_result_listing_the_known_ones_and_is_acked() {
        let (registry, _, _) = blocking(true, &["add"]);
        let (shared, results) = shared(registry);
        let slots = Arc::new(Semaphore::new(1));
        let permit = Arc::clone(&slots).acquire_owned().await.unwrap();
        let message = TaskMessage::new("triple").with_label("tenant", "t1");
        let (delivery, settled) = delivery(message.to_json());
        process(Arc::clone(&shared), delivery, permit).await;

        let result = results.get_result(&message.task_id, false).await.unwrap();
        let error = result.error.expect("a failed result");
        assert_eq!(error.kind, kinds::UNKNOWN_TASK);
        assert_eq!(
            error.message,
            "no task named `triple` is registered on worker `w1`; known tasks: add, block"
        );
        assert_eq!(result.labels["tenant"], json!("t1"));
        assert_eq!(result.labels[super::super::WORKER_NAME_LABEL], json!("w1"));
        assert_eq!(settled.acks.load(Ordering::SeqCst), 1);
        assert_eq!(settled.nacks.load(Ordering::SeqCst), 0);
        assert_eq!(slots.available_permits(), 1);
        let stats = shared.stats.snapshot();
        assert_eq!((stats.failed, stats.succeeded), (1, 0));
    }

    #[tokio::test]
    async fn with_nothing_registered_the_known_tasks_are_none() {
        let (shared, results) = shared(Registry::default());
        let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.unwrap();
        let message = TaskMessage::new("add");
        let (delivery, settled) = delivery(message.to_json());
        process(shared, delivery, permit).await;
        let result = results.get_result(&message.task_id, false).await.unwrap();
        let error = result.error.expect("a failed result");
        assert!(
            error.message.ends_with("known tasks: none"),
            "{}",
            error.message
        );
        assert_eq!(settled.acks.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_malformed_message_gets_a_failed_result_under_its_salvaged_id_and_is_acked() {
        let (registry, _, _) = blocking(true, &[]);
        let (shared, results) = shared(registry);
        let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.unwrap();
        let (delivery, settled) = delivery(r#"{"task_id": "m1", "task_name": 7}"#);
        process(Arc::clone(&shared), delivery, permit).await;
        let result = results.get_result("m1", false).await.unwrap();
        assert_eq!(result.error.unwrap().kind, kinds::MALFORMED_MESSAGE);
        assert_eq!(result.labels[super::super::WORKER_NAME_LABEL], json!("w1"));
        assert_eq!(settled.acks.load(Ordering::SeqCst), 1);
        assert_eq!(shared.stats.snapshot().failed, 1);
    }

    #[test]
    fn panic_messages_are_read_from_str_and_string_payloads() {
        assert_eq!(panic_message(&"static text"), "static text");
        assert_eq!(panic_message(&String::from("formatted 7")), "formatted 7");
        assert_eq!(panic_message(&7_u32), "non-string panic payload");
    }
}
