//! Waiting for a task's progress entries (see `stepq_protocol`'s docs): one future per
//! awaited task at a time, for its next entry.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use stepq_results::{ResultBackend, ResultError, TaskResult};
use tokio_util::sync::CancellationToken;

use crate::protocol;

/// A progress entry of a task arrived, or waiting for it ended.
pub(super) struct ProgressWake {
    /// The task's head step.
    pub(super) step: usize,
    /// The task.
    pub(super) task_id: String,
    /// The entry waited for (1-based).
    pub(super) seq: u32,
    /// Steps the task carries: its last possible entry.
    pub(super) steps: u32,
    /// Ends the task's progress wait.
    pub(super) stop: CancellationToken,
    /// The entry (deleted once read), why there is none, or `None` when `stop` ended the
    /// wait (the entries from `seq` on are then deleted).
    pub(super) outcome: Option<Result<TaskResult, ResultError>>,
}

/// Waits for entry `seq` of task `task_id` until `stop` fires; reads and deletes it, or on
/// `stop` deletes it and the ones after it (up to `steps`) in case they were stored.
pub(super) fn wait_for_progress(
    results: Arc<dyn ResultBackend>,
    step: usize,
    task_id: String,
    seq: u32,
    steps: u32,
    stop: CancellationToken,
) -> BoxFuture<'static, ProgressWake> {
    async move {
        let key = protocol::progress_key(&task_id, seq);
        let outcome = tokio::select! {
            biased;
            _ = stop.cancelled() => None,
            read = results.wait_result(&key, None) => Some(read),
        };
        match &outcome {
            Some(Ok(_)) => delete(results.as_ref(), &task_id, seq..=seq).await,
            None => delete(results.as_ref(), &task_id, seq..=steps).await,
            Some(Err(_)) => {}
        }
        ProgressWake {
            step,
            task_id,
            seq,
            steps,
            stop,
            outcome,
        }
    }
    .boxed()
}

/// Deletes the progress entries `seqs` of `task_id`; a failure is only logged (an entry left
/// behind is a stale record, never read again).
async fn delete(results: &dyn ResultBackend, task_id: &str, seqs: std::ops::RangeInclusive<u32>) {
    for seq in seqs {
        if let Err(e) = results
            .delete_result(&protocol::progress_key(task_id, seq))
            .await
        {
            tracing::debug!(%task_id, seq, error = %e, "could not delete a progress entry");
        }
    }
}
