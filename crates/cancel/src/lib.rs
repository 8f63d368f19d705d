//! # stepq-cancel
//!
//! Cancelling tasks across a fleet of workers. dagster-taskiq's `CancellableSQSBroker` sends
//! each cancel to one shared `<queue>-cancels` queue, so whichever worker receives it deletes
//! it and the worker actually running the task may never hear of it; a cancel that arrives
//! before the task starts is lost too. Here a cancel has two halves:
//!
//! - a durable **marker** (`cancels/<task_id>.json`, with time and reason) in a
//!   [`CancelStore`] — in memory, a local directory or S3 — written first;
//! - a fast **wake-up** on a [`CancelChannel`] that every listening worker sees: a tokio
//!   broadcast in-process ([`BroadcastChannel`]), or one SQS inbox queue per worker
//!   (`SqsFanoutChannel` in `stepq-aws`).
//!
//! A worker subscribes, then lists the markers, so it misses no cancel; it keeps the
//! cancelled ids in a local set, so refusing a cancelled task costs nothing per task.
//!
//! - [`CancellableBroker`] wraps any [`Broker`](stepq_broker::Broker) and adds
//!   [`cancel_task`](CancellableBroker::cancel_task) and
//!   [`listen_canceller`](CancellableBroker::listen_canceller) (through its [`Canceller`]).
//! - [`CancelListener`] (worker side) cancels the token of a running task through the
//!   receiver's [`CancelHandle`](stepq_broker::CancelHandle); its [`CancelGate`], installed on
//!   the receiver, refuses tasks cancelled before they started (saving a CANCELED result and
//!   acking) and drops a cancelled task that ignores its token for the cancel grace.
//!
//! See `docs/cancellation.md` for the design, its latency and its cost.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use stepq_broker::{InMemoryBroker, Receiver, TaskContext, TaskQueue, TaskWaitError};
//! use stepq_cancel::{CancelListener, CancelListenerConfig, CancellableBroker, InMemoryCancelStore};
//! use stepq_results::{FailureKind, InMemoryResultBackend, TaskError};
//!
//! let broker = CancellableBroker::in_memory(InMemoryBroker::new(), Arc::new(InMemoryCancelStore::new()));
//! let queue = TaskQueue::new(Arc::new(broker.clone()), Arc::new(InMemoryResultBackend::new()));
//!
//! // A worker: a task that waits for its cancellation token, and a cancel listener.
//! let mut receiver = Receiver::new(queue.clone());
//! let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
//! receiver.register("wait_for_cancel", Arc::new(move |ctx: TaskContext| {
//!     let started_tx = started_tx.clone();
//!     Box::pin(async move {
//!         started_tx.send(()).unwrap();
//!         ctx.cancel.cancelled().await;
//!         Err(TaskError { kind: FailureKind::Canceled, message: "stopped on request".into() })
//!     })
//! }));
//! let listener = CancelListener::new(
//!     broker.canceller().clone(),
//!     receiver.cancel_handle(),
//!     CancelListenerConfig::named("worker-1"),
//! ).unwrap();
//! receiver.set_gate(listener.gate());
//! let stop = tokio_util::sync::CancellationToken::new();
//! let listening = listener.start(stop.clone()).await.unwrap();
//! let worker = tokio::spawn(receiver.run(stop.clone()));
//!
//! // Start a task, then cancel it.
//! let handle = queue.task::<(), ()>("wait_for_cancel").kiq(&()).await.unwrap();
//! started.recv().await.unwrap();
//! broker.cancel_task(handle.task_id()).await.unwrap();
//! match handle.wait_result(Some(Duration::from_secs(5))).await {
//!     Err(TaskWaitError::TaskFailed { kind, .. }) => assert_eq!(kind, "Canceled"),
//!     other => panic!("{other:?}"),
//! }
//!
//! // A task cancelled before it starts never runs.
//! let early = queue.task::<(), ()>("wait_for_cancel").message(&()).unwrap();
//! broker.cancel_task(&early.task_id).await.unwrap();
//! let early_id = early.task_id.clone();
//! queue.kick(early).await.unwrap();
//! let result = queue.results().wait_result(&early_id, Some(Duration::from_secs(5))).await.unwrap();
//! assert!(result.error.unwrap().message.contains("before it started"));
//!
//! stop.cancel();
//! worker.await.unwrap().unwrap();
//! listening.join().await;
//! # });
//! ```
//!
//! The SQS fan-out channel and the S3 marker store are in the `stepq-aws` crate.
#![warn(missing_docs)]

pub mod broker;
pub mod cancelled;
pub mod canceller;
pub mod channel;
#[cfg(feature = "conformance")]
pub mod conformance;
// The test-generating machinery the suites' macros expand to (shared with stepq-results).
#[cfg(feature = "conformance")]
#[doc(hidden)]
pub use stepq_results::{__conformance_tests, __run_checks};
pub mod error;
pub mod listener;
pub mod marker;
pub mod store;

pub use broker::CancellableBroker;
pub use cancelled::CancelledSet;
pub use canceller::{CancelStream, Canceller, DEFAULT_MARKER_TTL};
pub use channel::{BroadcastChannel, CancelChannel, ChannelEvent, ChannelStream};
pub use error::{CancelError, ErrorClass};
pub use listener::{
    generic_canceled_result, CancelGate, CancelListener, CancelListenerConfig, CanceledResultFn,
    CanceledWhen, ListenerHandle, ListenerStats, CANCELED_KIND, DEFAULT_CANCEL_GRACE,
};
pub use marker::CancelMarker;
pub use store::{CancelStore, InMemoryCancelStore, LocalDirCancelStore};
