//! [`WorkerObserver`]: a receiver's observer that also hears about the steps a worker runs —
//! what the worker service's metrics (`/metrics`, feature `http`) are built on. Calls are
//! made inline on the step's task: keep them cheap.

use std::time::Duration;

pub use stepq_broker::{ReceiverObserver, TaskEnd};

/// Told what a [`Worker`](crate::Worker) does: everything its receiver does
/// ([`ReceiverObserver`]), and per step task and step, under the step's job. Install one with
/// [`Worker::set_observer`](crate::Worker::set_observer).
pub trait WorkerObserver: ReceiverObserver {
    /// A task of job `job`'s steps starts, after waiting `queue_wait` on the queue (if the
    /// broker says when it was sent).
    fn step_task_started(&self, job: &str, queue_wait: Option<Duration>) {
        let _ = (job, queue_wait);
    }

    /// A step of job `job` ended after running `run_time`.
    fn step_finished(&self, job: &str, end: TaskEnd, run_time: Duration) {
        let _ = (job, end, run_time);
    }
}
