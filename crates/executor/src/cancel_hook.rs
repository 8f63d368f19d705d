//! The cancel hook: how the executor asks workers to stop in-flight step tasks.

use async_trait::async_trait;

use crate::error::CancelHookError;

/// Cancels a task that is queued or running on some worker. The executor calls it for every
/// in-flight task on interrupt and fail-fast, and for an attempt that timed out.
///
/// The cancellation extension provides the real one: [`stepq_cancel::Canceller`] and
/// [`stepq_cancel::CancellableBroker`] implement it. Without it, [`NoopCancelHook`] does
/// nothing and in-flight steps get the config's `cancel_grace` to end on their own.
#[async_trait]
pub trait CancelHook: Send + Sync + 'static {
    /// Asks for `task_id` to be cancelled. Returns once the request is on its way; the task's
    /// CANCELED result (if it was running) arrives through the result backend.
    async fn cancel_task(&self, task_id: &str) -> Result<(), CancelHookError>;

    /// Whether [`cancel_task`](CancelHook::cancel_task) reaches workers at all (`false` only
    /// for [`NoopCancelHook`]), so what is said about a cancel is true.
    fn reaches_workers(&self) -> bool {
        true
    }
}

/// A cancel hook that does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopCancelHook;

#[async_trait]
impl CancelHook for NoopCancelHook {
    async fn cancel_task(&self, _task_id: &str) -> Result<(), CancelHookError> {
        Ok(())
    }

    fn reaches_workers(&self) -> bool {
        false
    }
}

const ORCHESTRATOR_REASON: &str = "cancelled by the orchestrator";

fn hook_error(task_id: &str, e: stepq_cancel::CancelError) -> CancelHookError {
    CancelHookError {
        task_id: task_id.to_string(),
        message: e.to_string(),
        class: e.class(),
    }
}

#[async_trait]
impl CancelHook for stepq_cancel::Canceller {
    async fn cancel_task(&self, task_id: &str) -> Result<(), CancelHookError> {
        self.cancel_task_with_reason(task_id, Some(ORCHESTRATOR_REASON))
            .await
            .map_err(|e| hook_error(task_id, e))
    }
}

#[async_trait]
impl<B: stepq_broker::Broker> CancelHook for stepq_cancel::CancellableBroker<B> {
    async fn cancel_task(&self, task_id: &str) -> Result<(), CancelHookError> {
        self.canceller()
            .cancel_task_with_reason(task_id, Some(ORCHESTRATOR_REASON))
            .await
            .map_err(|e| hook_error(task_id, e))
    }
}
