//! Middleware hooks, as TaskIQ has them, run in order by the task queue and the receiver.

use std::sync::Arc;

use async_trait::async_trait;
use stepq_results::TaskResult;

use crate::message::TaskMessage;

/// A hook failed. Names the middleware and the hook.
#[derive(Debug, thiserror::Error)]
#[error("middleware `{middleware}` failed in `{hook}`: {message}")]
pub struct MiddlewareError {
    /// Middleware name.
    pub middleware: String,
    /// Hook name, e.g. `pre_send`.
    pub hook: &'static str,
    /// What went wrong.
    pub message: String,
}

/// TaskIQ's middleware hooks. Every hook defaults to doing nothing.
#[async_trait]
pub trait Middleware: Send + Sync + 'static {
    /// Name used in error reports.
    fn name(&self) -> &str;

    /// When the queue or receiver starts.
    async fn startup(&self) -> Result<(), MiddlewareError> {
        Ok(())
    }
    /// When the queue or receiver shuts down.
    async fn shutdown(&self) -> Result<(), MiddlewareError> {
        Ok(())
    }
    /// Before a message is sent; may change it.
    async fn pre_send(&self, message: TaskMessage) -> Result<TaskMessage, MiddlewareError> {
        Ok(message)
    }
    /// After a message was sent.
    async fn post_send(&self, _message: &TaskMessage) -> Result<(), MiddlewareError> {
        Ok(())
    }
    /// Before a task runs; may change its message.
    async fn pre_execute(&self, message: TaskMessage) -> Result<TaskMessage, MiddlewareError> {
        Ok(message)
    }
    /// After a task ran, before its result is saved.
    async fn post_execute(
        &self,
        _message: &TaskMessage,
        _result: &TaskResult,
    ) -> Result<(), MiddlewareError> {
        Ok(())
    }
    /// After a task failed, before its result is saved.
    async fn on_error(
        &self,
        _message: &TaskMessage,
        _result: &TaskResult,
    ) -> Result<(), MiddlewareError> {
        Ok(())
    }
    /// After the result was saved.
    async fn post_save(
        &self,
        _message: &TaskMessage,
        _result: &TaskResult,
    ) -> Result<(), MiddlewareError> {
        Ok(())
    }
}

/// An ordered list of middleware. Hooks that may change the message stop at the first error;
/// observing hooks run every middleware, log each error, and return the first.
#[derive(Clone, Default)]
pub struct MiddlewareChain {
    items: Vec<Arc<dyn Middleware>>,
}
