//! Middleware hooks, as TaskIQ has them, run in order by the task queue and the receiver.

use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
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
///
/// | hook | on error |
/// |------|----------|
/// | `startup`, `pre_send`, `pre_execute` | stop at the first error and return it |
/// | `shutdown`, `post_send`, `post_execute`, `on_error`, `post_save` | run every middleware, log each error with `tracing::error!`, return the first |
#[derive(Clone, Default)]
pub struct MiddlewareChain {
    items: Vec<Arc<dyn Middleware>>,
}

impl std::fmt::Debug for MiddlewareChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.items.iter().map(|m| m.name()))
            .finish()
    }
}

impl MiddlewareChain {
    /// An empty chain.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a middleware at the end of the chain.
    pub fn push(&mut self, middleware: Arc<dyn Middleware>) {
        self.items.push(middleware);
    }

    /// The middleware, in the order their hooks run.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Middleware>> {
        self.items.iter()
    }

    /// Number of middleware.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the chain is empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Runs every `startup` in order, stopping at the first error (later middleware are not
    /// started).
    pub async fn startup(&self) -> Result<(), MiddlewareError> {
        for m in &self.items {
            m.startup().await?;
        }
        Ok(())
    }

    /// Runs every `shutdown`; logs each error and returns the first.
    pub async fn shutdown(&self) -> Result<(), MiddlewareError> {
        self.observe("shutdown", |m| m.shutdown()).await
    }

    /// Runs every `pre_send` in order, each on the previous one's message; stops at the first
    /// error.
    pub async fn pre_send(&self, mut message: TaskMessage) -> Result<TaskMessage, MiddlewareError> {
        for m in &self.items {
            message = m.pre_send(message).await?;
        }
        Ok(message)
    }

    /// Runs every `post_send`; logs each error and returns the first.
    pub async fn post_send(&self, message: &TaskMessage) -> Result<(), MiddlewareError> {
        self.observe("post_send", |m| m.post_send(message)).await
    }

    /// Runs every `pre_execute` in order, each on the previous one's message; stops at the
    /// first error.
    pub async fn pre_execute(
        &self,
        mut message: TaskMessage,
    ) -> Result<TaskMessage, MiddlewareError> {
        for m in &self.items {
            message = m.pre_execute(message).await?;
        }
        Ok(message)
    }

    /// Runs every `post_execute`; logs each error and returns the first.
    pub async fn post_execute(
        &self,
        message: &TaskMessage,
        result: &TaskResult,
    ) -> Result<(), MiddlewareError> {
        self.observe("post_execute", |m| m.post_execute(message, result))
            .await
    }

    /// Runs every `on_error`; logs each error and returns the first.
    pub async fn on_error(
        &self,
        message: &TaskMessage,
        result: &TaskResult,
    ) -> Result<(), MiddlewareError> {
        self.observe("on_error", |m| m.on_error(message, result))
            .await
    }

    /// Runs every `post_save`; logs each error and returns the first.
    pub async fn post_save(
        &self,
        message: &TaskMessage,
        result: &TaskResult,
    ) -> Result<(), MiddlewareError> {
        self.observe("post_save", |m| m.post_save(message, result))
            .await
    }

    /// Runs an observing hook on every middleware, logging each error, returning the first.
    async fn observe<'a, F>(&'a self, hook: &'static str, call: F) -> Result<(), MiddlewareError>
    where
        F: Fn(&'a dyn Middleware) -> BoxFuture<'a, Result<(), MiddlewareError>>,
    {
        let mut first = None;
        for m in &self.items {
            if let Err(e) = call(m.as_ref()).await {
                tracing::error!(middleware = m.name(), hook, error = %e, "middleware hook failed");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records its hook calls into a shared log; fails the hooks named in `fail`.
    struct Recorder {
        name: &'static str,
        fail: &'static [&'static str],
        log: Arc<Mutex<Vec<String>>>,
    }

    impl Recorder {
        fn hit(&self, hook: &'static str) -> Result<(), MiddlewareError> {
            self.log
                .lock()
                .unwrap()
                .push(format!("{}.{hook}", self.name));
            if self.fail.contains(&hook) {
                return Err(MiddlewareError {
                    middleware: self.name.to_string(),
                    hook,
                    message: "boom".into(),
                });
            }
            Ok(())
        }
    }

    #[async_trait]
    impl Middleware for Recorder {
        fn name(&self) -> &str {
            self.name
        }
        async fn startup(&self) -> Result<(), MiddlewareError> {
            self.hit("startup")
        }
        async fn shutdown(&self) -> Result<(), MiddlewareError> {
            self.hit("shutdown")
        }
        async fn pre_send(&self, m: TaskMessage) -> Result<TaskMessage, MiddlewareError> {
            self.hit("pre_send")?;
            Ok(m.with_label(self.name, "pre_send"))
        }
        async fn post_send(&self, _m: &TaskMessage) -> Result<(), MiddlewareError> {
            self.hit("post_send")
        }
        async fn pre_execute(&self, m: TaskMessage) -> Result<TaskMessage, MiddlewareError> {
            self.hit("pre_execute")?;
            Ok(m.with_label(self.name, "pre_execute"))
        }
        async fn post_execute(
            &self,
            _m: &TaskMessage,
            _r: &TaskResult,
        ) -> Result<(), MiddlewareError> {
            self.hit("post_execute")
        }
        async fn on_error(&self, _m: &TaskMessage, _r: &TaskResult) -> Result<(), MiddlewareError> {
            self.hit("on_error")
        }
        async fn post_save(
            &self,
            _m: &TaskMessage,
            _r: &TaskResult,
        ) -> Result<(), MiddlewareError> {
            self.hit("post_save")
        }
    }

    fn chain(
        failing: &[(&'static str, &'static [&'static str])],
    ) -> (MiddlewareChain, Arc<Mutex<Vec<String>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut chain = MiddlewareChain::new();
        for (name, fail) in failing {
            chain.push(Arc::new(Recorder {
                name,
                fail,
                log: Arc::clone(&log),
            }));
        }
        (chain, log)
    }

    fn taken(log: &Mutex<Vec<String>>) -> Vec<String> {
        std::mem::take(&mut *log.lock().unwrap())
    }

    #[tokio::test]
    async fn message_hooks_run_in_order_and_pass_the_message_along() {
        let (chain, log) = chain(&[("a", &[]), ("b", &[])]);
        assert_eq!(chain.len(), 2);
        assert_eq!(format!("{chain:?}"), r#"["a", "b"]"#);
        let m = chain.pre_send(TaskMessage::new("t")).await.unwrap();
        assert_eq!(
            (m.label("a"), m.label("b")),
            (Some("pre_send"), Some("pre_send"))
        );
        let m = chain.pre_execute(TaskMessage::new("t")).await.unwrap();
        assert_eq!(m.label("b"), Some("pre_execute"));
        assert_eq!(
            taken(&log),
            ["a.pre_send", "b.pre_send", "a.pre_execute", "b.pre_execute"]
        );
    }

    #[tokio::test]
    async fn changing_hooks_stop_at_the_first_error() {
        let (chain, log) = chain(&[
            ("a", &["pre_send", "pre_execute", "startup"]),
            ("b", &["pre_send"]),
        ]);
        let err = chain.pre_send(TaskMessage::new("t")).await.unwrap_err();
        assert_eq!((err.middleware.as_str(), err.hook), ("a", "pre_send"));
        assert_eq!(err.to_string(), "middleware `a` failed in `pre_send`: boom");
        let err = chain.pre_execute(TaskMessage::new("t")).await.unwrap_err();
        assert_eq!(err.hook, "pre_execute");
        let err = chain.startup().await.unwrap_err();
        assert_eq!(err.hook, "startup");
        assert_eq!(taken(&log), ["a.pre_send", "a.pre_execute", "a.startup"]);
    }

    #[tokio::test]
    async fn observing_hooks_run_every_middleware_and_return_the_first_error() {
        let all: &'static [&'static str] = &[
            "shutdown",
            "post_send",
            "post_execute",
            "on_error",
            "post_save",
        ];
        let (chain, log) = chain(&[("a", &[]), ("b", all), ("c", all)]);
        let m = TaskMessage::new("t");
        let r = TaskResult::ok(serde_json::Value::Null, 0.0);
        let errors = [
            chain.shutdown().await.unwrap_err(),
            chain.post_send(&m).await.unwrap_err(),
            chain.post_execute(&m, &r).await.unwrap_err(),
            chain.on_error(&m, &r).await.unwrap_err(),
            chain.post_save(&m, &r).await.unwrap_err(),
        ];
        for (e, hook) in errors.iter().zip(all) {
            assert_eq!((e.middleware.as_str(), e.hook), ("b", *hook));
        }
        let expected: Vec<String> = all
            .iter()
            .flat_map(|h| ["a", "b", "c"].map(|n| format!("{n}.{h}")))
            .collect();
        assert_eq!(taken(&log), expected);
    }

    #[tokio::test]
    async fn an_empty_chain_passes_everything() {
        let chain = MiddlewareChain::default();
        assert!(chain.is_empty());
        let m = TaskMessage::new("t");
        assert_eq!(chain.pre_send(m.clone()).await.unwrap(), m);
        chain.startup().await.unwrap();
        chain.shutdown().await.unwrap();
    }
}
