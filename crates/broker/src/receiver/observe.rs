//! [`ReceiverObserver`]: what a receiver tells an observer as it works — the hook metrics
//! (e.g. the worker service's Prometheus endpoint) are built on. Calls are made inline on the
//! delivery's task, so an observer must be cheap and must not block.

use std::time::Duration;

use stepq_results::{FailureKind, TaskResult};

use crate::error::BrokerError;
use crate::message::TaskMessage;

/// How a task that ran ended, as an observer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskEnd {
    /// Its result is a success.
    Succeeded,
    /// Its result is a failure other than a cancel.
    Failed,
    /// It was cancelled (a failure of kind [`FailureKind::Canceled`]).
    Canceled,
    /// It was still running when the receiver's shutdown grace period ran out: ended, and its
    /// message returned to the queue (it runs again elsewhere).
    Released,
}

impl TaskEnd {
    /// How a task with `result` ended.
    pub fn of(result: &TaskResult) -> Self {
        if !result.is_err {
            TaskEnd::Succeeded
        } else if result
            .error
            .as_ref()
            .is_some_and(|e| matches!(e.kind, FailureKind::Canceled))
        {
            TaskEnd::Canceled
        } else {
            TaskEnd::Failed
        }
    }

    /// `succeeded` / `failed` / `canceled`.
    pub fn name(self) -> &'static str {
        match self {
            TaskEnd::Succeeded => "succeeded",
            TaskEnd::Failed => "failed",
            TaskEnd::Canceled => "canceled",
            TaskEnd::Released => "released",
        }
    }
}

/// Told what a receiver does; every method defaults to nothing. Install one with
/// [`Receiver::set_observer`](super::Receiver::set_observer).
pub trait ReceiverObserver: Send + Sync + 'static {
    /// A task's handler starts: its message, how often it was delivered (this time
    /// included; above 1 it is a redelivery) and how long it waited on the queue since it
    /// was sent, if the broker says when.
    fn task_started(
        &self,
        message: &TaskMessage,
        receive_count: u32,
        queue_wait: Option<Duration>,
    ) {
        let _ = (message, receive_count, queue_wait);
    }

    /// A task's handler ended after `run_time`: its result is saved next, or, when `end` is
    /// [`TaskEnd::Released`], its message goes back to the queue. Called exactly once for
    /// every [`task_started`](Self::task_started).
    fn task_finished(&self, message: &TaskMessage, end: TaskEnd, run_time: Duration) {
        let _ = (message, end, run_time);
    }

    /// A running task's visibility was extended (a heartbeat), or the extension failed.
    fn visibility_extended(&self, message: &TaskMessage, outcome: Result<(), &BrokerError>) {
        let _ = (message, outcome);
    }

    /// Taking deliveries from the broker failed (the receiver backs off and retries).
    fn broker_error(&self, error: &BrokerError) {
        let _ = error;
    }

    /// A message was moved to the broker's dead-letter place (delivered too often,
    /// malformed, or naming no registered task).
    fn dead_lettered(&self, reason: &str) {
        let _ = reason;
    }
}
