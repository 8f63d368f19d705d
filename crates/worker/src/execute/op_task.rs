//! Running a step's op on a task of its own: cancelled with the step, aborted if the step's
//! future is dropped, its panic or abort turned into failure `panic`.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{StepAttempt, Stop, PANIC};
use crate::context::OpContext;
use crate::io::{StepInputs, StepOutputs};

impl StepAttempt<'_> {
    /// Runs `op` with `ctx` on `inputs` until it ends or `cancel` fires.
    pub(super) async fn run_op(
        &self,
        op: Arc<dyn crate::op::Op>,
        ctx: OpContext,
        inputs: StepInputs,
        cancel: &CancellationToken,
        op_name: &str,
    ) -> Result<StepOutputs, Stop> {
        // Aborted if this future is dropped (e.g. a receiver giving up after its grace period),
        // so an op never outlives its step.
        let mut task = AbortOnDrop(tokio::spawn(
            async move { op.run(&ctx, inputs).await }.instrument(tracing::Span::current()),
        ));
        let joined = tokio::select! {
            biased;
            joined = &mut task.0 => joined,
            _ = cancel.cancelled() => {
                task.0.abort();
                // Wait until the op's future is dropped, so nothing of it outlives the step.
                let _ = (&mut task.0).await;
                return Err(Stop::Canceled);
            }
        };
        match joined {
            Ok(Ok(outputs)) => Ok(outputs),
            // The op gave up because its token fired (it raced the cancel branch above).
            Ok(Err(_)) if cancel.is_cancelled() => Err(Stop::Canceled),
            Ok(Err(error)) => Err(Stop::from_op(error)),
            Err(join_error) if join_error.is_panic() => {
                let payload = join_error.into_panic();
                let what = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a non-string payload".to_string());
                Err(Stop::failed(
                    PANIC,
                    format!(
                        "op `{op_name}` of step `{}` panicked: {what}",
                        self.step_key
                    ),
                ))
            }
            Err(join_error) => Err(Stop::failed(
                PANIC,
                format!(
                    "op `{op_name}` of step `{}` was aborted: {join_error}",
                    self.step_key
                ),
            )),
        }
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
