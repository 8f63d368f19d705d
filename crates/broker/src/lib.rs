//! # stepq-broker
//!
//! A task queue in TaskIQ's spirit: the [`TaskMessage`] envelope (TaskIQ's JSON shape), the
//! [`Broker`] trait with an in-memory implementation (the SQS one is in `stepq-aws`), [`Middleware`] hooks, typed task
//! handles through [`TaskQueue`], and a [`Receiver`] that runs registered tasks from a broker.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use stepq_broker::{InMemoryBroker, Receiver, TaskQueue};
//! use stepq_results::InMemoryResultBackend;
//!
//! let queue = TaskQueue::new(Arc::new(InMemoryBroker::new()), Arc::new(InMemoryResultBackend::new()));
//! let mut receiver = Receiver::new(queue.clone());
//! receiver.register_fn("double", |x: i64| async move { Ok::<_, std::io::Error>(x * 2) });
//! let stop = tokio_util::sync::CancellationToken::new();
//! let worker = tokio::spawn(receiver.run(stop.clone()));
//!
//! let handle = queue.task::<i64, i64>("double").kiq(&21).await.unwrap();
//! assert_eq!(handle.wait_result(Some(Duration::from_secs(5))).await.unwrap(), 42);
//! stop.cancel();
//! worker.await.unwrap().unwrap();
//! # });
//! ```
//!
//! Feature `conformance` adds the `conformance` module, the suite
//! every [`Broker`] implementation runs against itself, and `broker_conformance_tests!`.

#![warn(missing_docs)]

pub mod broker;
pub mod dead_letter;
pub mod delivery;
pub mod error;
pub mod message;
pub mod middleware;

pub use broker::{Broker, DeliveryStream, Demand};
pub use dead_letter::{DeadLetter, DeadLetters, DEFAULT_MAX_RECEIVE_COUNT};
pub use delivery::{Delivery, DeliveryHandle};
pub use error::{BrokerError, ErrorClass, ServiceError};
pub use message::{TaskMessage, LABEL_TYPE_STR, NO_REPLY_LABEL};
pub use middleware::{Middleware, MiddlewareChain, MiddlewareError};
pub mod memory;
pub mod queue;
pub mod receiver;
pub mod routing;
pub mod signing;
pub mod trace;

#[cfg(feature = "conformance")]
pub mod conformance;
// The test-generating machinery the suite's macro expands to (shared with stepq-results).
#[cfg(feature = "conformance")]
#[doc(hidden)]
pub use stepq_results::{__conformance_tests, __run_checks};

pub use memory::InMemoryBroker;
pub use queue::{Task, TaskHandle, TaskQueue, TaskWaitError};
pub use receiver::{
    CancelHandle, Receiver, ReceiverConfig, ReceiverObserver, ReceiverStats, TaskContext, TaskEnd,
    TaskGate, TaskHandler, TaskOutcome, WORKER_NAME_LABEL,
};
pub use trace::{TraceParent, TRACEPARENT_LABEL};
