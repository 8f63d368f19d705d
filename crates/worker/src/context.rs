//! `OpContext`: what a running op knows about its step, its logger and its cancellation signal.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use stepq_plan::{Event, EventKind};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tracing::Level;

/// Who the step is.
#[derive(Debug, Clone)]
struct StepIdentity {
    run_id: String,
    job_name: String,
    step_key: String,
    attempt: u32,
    worker: String,
    tags: BTreeMap<String, String>,
    run_config: serde_json::Value,
}

/// Where logged lines go: the step's event list.
#[derive(Debug, Default)]
pub(crate) struct EventSink {
    events: Mutex<Vec<Event>>,
}

impl EventSink {
    pub(crate) fn push(&self, event: Event) {
        self.events.lock().expect("event sink lock").push(event);
    }

    pub(crate) fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.lock().expect("event sink lock"))
    }

    fn messages(&self) -> Vec<String> {
        self.events
            .lock()
            .expect("event sink lock")
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::EngineEvent { message } => Some(message.clone()),
                _ => None,
            })
            .collect()
    }
}

/// What a running op knows: run id, job, step key, attempt, tags, run config, a logger and a
/// cancellation signal. Cheap to clone (a few `Arc`s); clones share the logger and the signal.
///
/// Lines logged at `INFO` and above are recorded in the step's events (as
/// [`EventKind::EngineEvent`]) and so reach the orchestrator; every line is also emitted through
/// `tracing`, with the run id and step key as fields.
///
/// ```
/// use stepq_worker::OpContext;
///
/// let ctx = OpContext::new("run-1", "etl", "load").with_attempt(2);
/// ctx.info("loaded 12 rows");
/// ctx.debug("only in tracing");
/// assert_eq!(ctx.attempt(), 2);
/// assert_eq!(ctx.logged(), ["loaded 12 rows"]);
/// assert!(!ctx.is_cancelled());
/// ```
#[derive(Debug, Clone)]
pub struct OpContext {
    step: Arc<StepIdentity>,
    cancel: CancellationToken,
    sink: Arc<EventSink>,
}

impl OpContext {
    /// A context for attempt 1 of `step_key` in run `run_id` of `job_name`, with no tags, a
    /// `null` run config and a fresh cancellation signal. Workers build contexts themselves;
    /// this is for calling an op directly, e.g. in a unit test.
    pub fn new(
        run_id: impl Into<String>,
        job_name: impl Into<String>,
        step_key: impl Into<String>,
    ) -> Self {
        OpContext {
            step: Arc::new(StepIdentity {
                run_id: run_id.into(),
                job_name: job_name.into(),
                step_key: step_key.into(),
                attempt: 1,
                worker: String::new(),
                tags: BTreeMap::new(),
                run_config: serde_json::Value::Null,
            }),
            cancel: CancellationToken::new(),
            sink: Arc::new(EventSink::default()),
        }
    }

    /// Sets the attempt number (1-based).
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        Arc::make_mut(&mut self.step).attempt = attempt;
        self
    }

    /// Sets the name of the worker running the step.
    pub fn with_worker(mut self, worker: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.step).worker = worker.into();
        self
    }

    /// Sets the step's tags.
    pub fn with_tags(mut self, tags: BTreeMap<String, String>) -> Self {
        Arc::make_mut(&mut self.step).tags = tags;
        self
    }

    /// Sets the run config.
    pub fn with_run_config(mut self, run_config: serde_json::Value) -> Self {
        Arc::make_mut(&mut self.step).run_config = run_config;
        self
    }

    /// Uses `cancel` as the cancellation signal.
    pub fn with_cancellation(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    pub(crate) fn with_sink(mut self, sink: Arc<EventSink>) -> Self {
        self.sink = sink;
        self
    }

    /// Run id.
    pub fn run_id(&self) -> &str {
        &self.step.run_id
    }

    /// Job name.
    pub fn job_name(&self) -> &str {
        &self.step.job_name
    }

    /// Step key.
    pub fn step_key(&self) -> &str {
        &self.step.step_key
    }

    /// Attempt number, 1-based.
    pub fn attempt(&self) -> u32 {
        self.step.attempt
    }

    /// Name of the worker running the step (empty outside a worker).
    pub fn worker(&self) -> &str {
        &self.step.worker
    }

    /// The step's tags.
    pub fn tags(&self) -> &BTreeMap<String, String> {
        &self.step.tags
    }

    /// One tag's value.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.step.tags.get(key).map(String::as_str)
    }

    /// The run config (free-form JSON given when the run was launched).
    pub fn run_config(&self) -> &serde_json::Value {
        &self.step.run_config
    }

    /// Resolves when the step is cancelled (run interrupted, or the worker shutting down past
    /// its grace period). Use it in `tokio::select!` around long awaits.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    /// Whether the step was cancelled; for blocking code that polls between units of work.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The cancellation token itself, e.g. to hand to a spawned task.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Logs a line at `level`: always through `tracing`; at `INFO` and above also into the
    /// step's events (prefixed with the level unless it is `INFO`).
    pub fn log(&self, level: Level, message: impl AsRef<str>) {
        let message = message.as_ref();
        let (run_id, step_key, attempt) = (self.run_id(), self.step_key(), self.attempt());
        match level {
            Level::ERROR => tracing::error!(run_id, step_key, attempt, "{message}"),
            Level::WARN => tracing::warn!(run_id, step_key, attempt, "{message}"),
            Level::INFO => tracing::info!(run_id, step_key, attempt, "{message}"),
            Level::DEBUG => tracing::debug!(run_id, step_key, attempt, "{message}"),
            _ => tracing::trace!(run_id, step_key, attempt, "{message}"),
        }
        if level <= Level::INFO {
            let message = if level == Level::INFO {
                message.to_string()
            } else {
                format!("{level}: {message}")
            };
            self.sink.push(Event::step(
                run_id,
                step_key,
                EventKind::EngineEvent { message },
            ));
        }
    }

    /// Logs at `ERROR`.
    pub fn error(&self, message: impl AsRef<str>) {
        self.log(Level::ERROR, message)
    }

    /// Logs at `WARN`.
    pub fn warn(&self, message: impl AsRef<str>) {
        self.log(Level::WARN, message)
    }

    /// Logs at `INFO`.
    pub fn info(&self, message: impl AsRef<str>) {
        self.log(Level::INFO, message)
    }

    /// Logs at `DEBUG` (tracing only).
    pub fn debug(&self, message: impl AsRef<str>) {
        self.log(Level::DEBUG, message)
    }

    /// Messages recorded in the step's events so far (lines logged at `INFO` and above), e.g.
    /// to check an op's logging in a unit test. Empty once a worker collected them.
    pub fn logged(&self) -> Vec<String> {
        self.sink.messages()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_sets_identity() {
        let tags = BTreeMap::from([("db".to_string(), "warehouse".to_string())]);
        let ctx = OpContext::new("r", "j", "s")
            .with_attempt(3)
            .with_worker("w1")
            .with_tags(tags.clone())
            .with_run_config(serde_json::json!({"limit": 5}));
        assert_eq!(
            (ctx.run_id(), ctx.job_name(), ctx.step_key()),
            ("r", "j", "s")
        );
        assert_eq!(ctx.attempt(), 3);
        assert_eq!(ctx.worker(), "w1");
        assert_eq!(ctx.tags(), &tags);
        assert_eq!(ctx.tag("db"), Some("warehouse"));
        assert_eq!(ctx.tag("nope"), None);
        assert_eq!(ctx.run_config()["limit"], 5);
    }

    #[test]
    fn log_records_info_and_above_as_step_events() {
        let ctx = OpContext::new("r", "j", "s");
        ctx.info("one");
        ctx.debug("hidden");
        ctx.log(Level::TRACE, "hidden too");
        ctx.warn("two");
        ctx.error("three");
        assert_eq!(ctx.logged(), ["one", "WARN: two", "ERROR: three"]);
        let events = ctx.sink.take();
        assert_eq!(events.len(), 3);
        assert!(events
            .iter()
            .all(|e| e.run_id == "r" && e.step_key.as_deref() == Some("s")));
        assert!(ctx.logged().is_empty());
    }

    #[tokio::test]
    async fn clones_share_the_cancellation_signal() {
        let token = CancellationToken::new();
        let ctx = OpContext::new("r", "j", "s").with_cancellation(token.clone());
        let clone = ctx.clone();
        assert!(!clone.is_cancelled());
        let waiter = tokio::spawn(async move { clone.cancelled().await });
        token.cancel();
        waiter.await.unwrap();
        assert!(ctx.is_cancelled());
        assert!(ctx.cancellation_token().is_cancelled());
    }
}
