//! The `ResultBackend` trait.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::ResultError;
use crate::result::TaskResult;

/// Where workers store task results and orchestrators read them.
#[async_trait]
pub trait ResultBackend: Send + Sync + 'static {
    /// Prepares the backend (creates directories, checks the bucket).
    async fn startup(&self) -> Result<(), ResultError> {
        Ok(())
    }

    /// Releases resources.
    async fn shutdown(&self) -> Result<(), ResultError> {
        Ok(())
    }

    /// Stores (or overwrites) the result of a task.
    async fn set_result(&self, task_id: &str, result: &TaskResult) -> Result<(), ResultError>;

    /// Whether a result is stored for the task.
    async fn is_result_ready(&self, task_id: &str) -> Result<bool, ResultError>;

    /// Reads a task's result; `with_logs = false` drops its log.
    /// A missing result is [`ResultError::NotFound`].
    async fn get_result(&self, task_id: &str, with_logs: bool) -> Result<TaskResult, ResultError>;

    /// Waits until the task's result is stored, then returns it (without logs).
    /// `None` waits without a bound; `Some(t)` fails with [`ResultError::Timeout`] after `t`.
    ///
    /// Backends that can be notified (in-memory, local directory within one process) answer at
    /// once; the default implementation polls `is_result_ready` with capped exponential backoff.
    async fn wait_result(
        &self,
        task_id: &str,
        timeout: Option<Duration>,
    ) -> Result<TaskResult, ResultError> {
        crate::backend::poll_until_ready(self, task_id, timeout).await
    }

    /// Deletes a task's result, if stored.
    async fn delete_result(&self, task_id: &str) -> Result<(), ResultError>;
}

/// Polls `get_result` with exponential backoff (5 ms doubling to 500 ms) until it is found,
/// fails otherwise, or `timeout` lapses. For backends that cannot be notified.
pub async fn poll_until_ready<B: ResultBackend + ?Sized>(
    backend: &B,
    task_id: &str,
    timeout: Option<Duration>,
) -> Result<TaskResult, ResultError> {
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(5);
    loop {
        match backend.get_result(task_id, false).await {
            Ok(r) => return Ok(r),
            Err(ResultError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        if let Some(t) = timeout {
            let waited = started.elapsed();
            if waited >= t {
                return Err(ResultError::Timeout {
                    task_id: task_id.to_string(),
                    waited,
                });
            }
            delay = delay.min(t - waited);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}
