//! `Receiver`: runs registered tasks from a broker (the generic worker loop).
//!
//! This file holds the [`Receiver`] itself, the [`WORKER_NAME_LABEL`] and the error
//! [`kinds`] the receiver writes into failed results. The rest, by concern:
//!
//! - `registry`: the handler contract ([`TaskHandler`], [`TaskContext`], [`TaskOutcome`]),
//!   the handlers by task name with their slot flags, the registration API, [`TaskGate`].
//! - `listen`: [`Receiver::run`], the loop taking deliveries from the broker while a
//!   concurrency slot is free, and the shutdown grace period.
//! - `pipeline`: one delivery from decoding to ack: gate, handler with its cancel token,
//!   visibility heartbeats; its `settle` part saves the result and acks (or nacks), and rejects
//!   malformed and unknown messages with a failed result.
//! - `config`: [`ReceiverConfig`]; `stats`: [`ReceiverStats`]; `cancel`: [`CancelHandle`];
//!   `observe`: [`ReceiverObserver`], the hook metrics are built on.

use std::sync::Arc;

use crate::queue::TaskQueue;

mod cancel;
mod config;
mod listen;
mod observe;
mod pipeline;
mod registry;
mod stats;

pub use cancel::CancelHandle;
pub use config::{default_worker_name, ReceiverConfig};
pub use observe::{ReceiverObserver, TaskEnd};
use registry::Registry;
pub use registry::{TaskContext, TaskGate, TaskHandler, TaskOutcome};
use stats::Counters;
pub use stats::ReceiverStats;

/// Label added to every stored result: the [`ReceiverConfig::worker_name`] of the worker that
/// produced it (unless the message already carries a label of that name).
pub const WORKER_NAME_LABEL: &str = "worker_name";

/// The failure kinds the receiver itself writes into failed results: names for
/// [`FailureKind`](stepq_results::FailureKind) variants, which have the one spelling each.
pub mod kinds {
    use stepq_results::FailureKind;

    /// The message body is not a task message (stored when a task id could be salvaged).
    pub const MALFORMED_MESSAGE: FailureKind = FailureKind::MalformedMessage;
    /// No handler is registered under the message's task name.
    pub const UNKNOWN_TASK: FailureKind = FailureKind::UnknownTask;
    /// Delivered more than `max_receive_count` times without finishing: dead-lettered.
    pub const DEAD_LETTERED: FailureKind = FailureKind::DeadLettered;
    /// The handler panicked.
    pub const PANIC: FailureKind = FailureKind::Panic;
    /// A `pre_execute` middleware failed, so the handler did not run.
    pub const MIDDLEWARE_ERROR: FailureKind = FailureKind::MiddlewareError;
    /// The arguments do not decode as the typed handler's argument ([`Receiver::register_fn`](super::Receiver::register_fn)).
    pub const INVALID_ARGUMENTS: FailureKind = FailureKind::InvalidArguments;
    /// The typed handler's return value does not encode as JSON.
    pub const INVALID_RETURN_VALUE: FailureKind = FailureKind::InvalidReturnValue;
    /// The task was cancelled and dropped (the default [`TaskGate::aborted_result`](super::TaskGate::aborted_result)).
    pub const CANCELED: FailureKind = FailureKind::Canceled;
}

/// Runs registered tasks: decode, pre_execute, run, post_execute / on_error, save result,
/// post_save, then ack. Malformed messages, unknown task names and messages delivered more
/// than `max_receive_count` times get a failed result (when a task id can be salvaged), are
/// logged, and move to the broker's dead-letter place; the receiver keeps going.
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
    /// Where deliveries come from and results go, with its middleware.
    queue: TaskQueue,
    /// The registered handlers by task name.
    handlers: Registry,
    /// The settings [`Receiver::run`] validates and runs with.
    config: ReceiverConfig,
    /// Cancels this receiver's running tasks; handed out by [`Receiver::cancel_handle`].
    cancel: CancelHandle,
    /// Consulted before each task starts, if installed.
    gate: Option<Arc<dyn TaskGate>>,
    /// Told what the receiver does, if installed.
    observer: Option<Arc<dyn ReceiverObserver>>,
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
            observer: None,
        }
    }
}
