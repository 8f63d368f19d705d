//! The worker side: a listener that applies cancels to running tasks, and a gate that keeps
//! cancelled tasks from starting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use stepq_broker::receiver::TaskGate;
use stepq_broker::{CancelHandle, TaskMessage};
use stepq_results::TaskResult;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cancelled::CancelledSet;
use crate::canceller::{CancelStream, Canceller};
use crate::error::CancelError;
use crate::marker::{check_task_id, now_ms, CancelMarker};

/// Error kind of the generic result of a cancelled task: the receiver's own,
/// [`FailureKind::Canceled`](stepq_results::FailureKind::Canceled).
pub const CANCELED_KIND: stepq_results::FailureKind = stepq_broker::receiver::kinds::CANCELED;

/// Default time a task has, after its cancellation token fired, to end on its own before the
/// receiver drops it: 5 s (shorter than the executor's default 10 s cancel grace, so the
/// orchestrator hears the CANCELED result).
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(5);

/// When a cancelled task's result was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanceledWhen {
    /// Its cancel arrived before it started: the handler never ran.
    BeforeStart,
    /// It ignored its cancellation token for the whole grace period and was dropped.
    AfterGrace,
}

/// Builds the result recorded for a cancelled task (e.g. a list of CANCELED step reports for
/// `execute_plan` tasks, so the orchestrator sees a canceled step, not a failed one).
pub type CanceledResultFn = Arc<dyn Fn(&TaskMessage, CanceledWhen) -> TaskResult + Send + Sync>;

/// The generic result of a cancelled task: failed, kind [`CANCELED_KIND`], with a message
/// saying when it was cancelled.
pub fn generic_canceled_result(message: &TaskMessage, when: CanceledWhen) -> TaskResult {
    let text = match when {
        CanceledWhen::BeforeStart => format!(
            "task `{}` ({}) was cancelled before it started",
            message.task_name, message.task_id
        ),
        CanceledWhen::AfterGrace => format!(
            "task `{}` ({}) was cancelled and did not stop within its grace period; it was aborted",
            message.task_name, message.task_id
        ),
    };
    TaskResult::err(CANCELED_KIND, text, 0.0)
}

/// Settings of a [`CancelListener`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelListenerConfig {
    /// The worker's name (names its inbox, appears in logs).
    pub name: String,
    /// How long a running task may go on after its token fired before it is dropped and
    /// answered CANCELED (default [`DEFAULT_CANCEL_GRACE`]).
    pub cancel_grace: Duration,
    /// Whether to read the marker store before each task starts. `None` (default) does so
    /// only when lookups are free (memory, local directory), closing the window between a
    /// cancel being stored and its notice reaching this worker; with S3 it costs one GET per
    /// task, so it is off unless set to `Some(true)`.
    pub check_store_before_start: Option<bool>,
}

impl CancelListenerConfig {
    /// Default settings for worker `name`.
    pub fn named(name: impl Into<String>) -> Self {
        CancelListenerConfig {
            name: name.into(),
            cancel_grace: DEFAULT_CANCEL_GRACE,
            check_store_before_start: None,
        }
    }

    /// Sets the cancel grace.
    pub fn with_cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// Checks the settings; the error names the bad field.
    pub fn validate(&self) -> Result<(), CancelError> {
        if self.name.trim().is_empty() {
            return Err(CancelError::Config {
                field: "name",
                reason: "must not be empty".into(),
            });
        }
        Ok(())
    }
}

/// Refuses tasks whose cancel arrived before they started, and says how long a cancelled
/// task may run on. Install it on the worker's receiver (see the crate docs).
pub struct CancelGate {
    canceller: Canceller,
    cancelled: Arc<CancelledSet>,
    check_store: bool,
    cancel_grace: Duration,
    canceled_result: CanceledResultFn,
}

impl std::fmt::Debug for CancelGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelGate")
            .field("known_cancelled", &self.cancelled.len())
            .field("check_store", &self.check_store)
            .field("cancel_grace", &self.cancel_grace)
            .finish()
    }
}

impl CancelGate {
    /// `Some(result)` if `message`'s task is cancelled, so it must not run; `None` to run it.
    ///
    /// Looks in the local set of cancelled ids (free) and, when configured, in the marker
    /// store; a store error is logged and the task runs (a cancel then still reaches it
    /// through its token).
    pub async fn check(&self, message: &TaskMessage) -> Option<TaskResult> {
        let task_id = &message.task_id;
        let cancelled = self.cancelled.contains(task_id) || self.check_store(task_id).await;
        if !cancelled {
            return None;
        }
        tracing::info!(
            task = %message.task_name,
            %task_id,
            "not starting a task that was cancelled before it started"
        );
        Some((self.canceled_result)(message, CanceledWhen::BeforeStart))
    }

    async fn check_store(&self, task_id: &str) -> bool {
        if !self.check_store || check_task_id(task_id).is_err() {
            return false;
        }
        match self.canceller.store().get(task_id).await {
            Ok(Some(marker)) if !marker.is_expired(self.canceller.marker_ttl(), now_ms()) => {
                self.cancelled.insert(&marker);
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(task_id, error = %e, "could not read the cancel marker store; starting the task");
                false
            }
        }
    }

    /// How long a task may run after its token fired before it is dropped.
    pub fn cancel_grace(&self) -> Duration {
        self.cancel_grace
    }

    /// The result recorded for a cancelled task.
    pub fn canceled_result(&self, message: &TaskMessage, when: CanceledWhen) -> TaskResult {
        (self.canceled_result)(message, when)
    }
}

/// The receiver hook: refuse cancelled tasks, drop stubborn ones after the cancel grace.
#[async_trait]
impl TaskGate for CancelGate {
    async fn before_start(&self, message: &TaskMessage) -> Option<TaskResult> {
        self.check(message).await
    }

    fn cancel_grace(&self) -> Option<Duration> {
        Some(self.cancel_grace)
    }

    fn aborted_result(&self, message: &TaskMessage) -> TaskResult {
        self.canceled_result(message, CanceledWhen::AfterGrace)
    }
}

/// Counts of what a listener did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerStats {
    /// Cancels heard (stored markers at start included; duplicates counted).
    pub heard: u64,
    /// Cancels that hit a task running on this worker.
    pub cancelled_running: u64,
}

/// The worker-side half: hears every cancel (from [`Canceller::listen_canceller`]), cancels
/// the token of a matching running task through the receiver's [`CancelHandle`], and
/// remembers the id so the task is refused if it has not started yet (see [`CancelGate`]).
pub struct CancelListener {
    canceller: Canceller,
    handle: CancelHandle,
    config: CancelListenerConfig,
    cancelled: Arc<CancelledSet>,
    canceled_result: CanceledResultFn,
}

impl std::fmt::Debug for CancelListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelListener")
            .field("config", &self.config)
            .field("canceller", &self.canceller)
            .finish()
    }
}

impl CancelListener {
    /// A listener applying cancels from `canceller` to the tasks of `handle` (the worker's
    /// receiver's [`CancelHandle`]).
    pub fn new(
        canceller: Canceller,
        handle: CancelHandle,
        config: CancelListenerConfig,
    ) -> Result<Self, CancelError> {
        config.validate()?;
        Ok(CancelListener {
            cancelled: Arc::new(CancelledSet::new(canceller.marker_ttl())),
            canceller,
            handle,
            config,
            canceled_result: Arc::new(generic_canceled_result),
        })
    }

    /// Uses `f` to build the result of a cancelled task (default
    /// [`generic_canceled_result`]); call before [`gate`](CancelListener::gate).
    pub fn with_canceled_result(
        mut self,
        f: impl Fn(&TaskMessage, CanceledWhen) -> TaskResult + Send + Sync + 'static,
    ) -> Self {
        self.canceled_result = Arc::new(f);
        self
    }

    /// The gate to install on the receiver; it shares this listener's set of cancelled ids.
    pub fn gate(&self) -> Arc<CancelGate> {
        Arc::new(CancelGate {
            canceller: self.canceller.clone(),
            cancelled: Arc::clone(&self.cancelled),
            check_store: self
                .config
                .check_store_before_start
                .unwrap_or_else(|| self.canceller.store().lookups_are_free()),
            cancel_grace: self.config.cancel_grace,
            canceled_result: Arc::clone(&self.canceled_result),
        })
    }

    /// The ids this worker knows are cancelled.
    pub fn cancelled(&self) -> &Arc<CancelledSet> {
        &self.cancelled
    }

    /// Subscribes and applies the markers already stored, then listens in the background
    /// until `stop` fires. Returns once the worker is sure to hear every later cancel, so
    /// start it before the receiver takes tasks.
    pub async fn start(self, stop: CancellationToken) -> Result<ListenerHandle, CancelError> {
        let mut stream = self
            .canceller
            .listen_canceller(&self.config.name, stop.clone())
            .await?;
        let applier = Applier {
            handle: self.handle,
            cancelled: Arc::clone(&self.cancelled),
            heard: AtomicU64::new(0),
            cancelled_running: AtomicU64::new(0),
        };
        let initial = stream.take_initial();
        if !initial.is_empty() {
            tracing::info!(
                worker = %self.config.name,
                count = initial.len(),
                "cancels stored before this worker started"
            );
        }
        for marker in &initial {
            applier.apply(marker);
        }
        let name = self.config.name.clone();
        let join = tokio::spawn(applier.run(stream, stop, name));
        Ok(ListenerHandle {
            join,
            cancelled: self.cancelled,
        })
    }
}

/// A running listener.
#[derive(Debug)]
pub struct ListenerHandle {
    join: JoinHandle<ListenerStats>,
    cancelled: Arc<CancelledSet>,
}

impl ListenerHandle {
    /// The ids this worker knows are cancelled.
    pub fn cancelled(&self) -> &Arc<CancelledSet> {
        &self.cancelled
    }

    /// Waits until the listener stopped (after its `stop` fired) and returns what it did.
    pub async fn join(self) -> ListenerStats {
        match self.join.await {
            Ok(stats) => stats,
            Err(e) => {
                tracing::error!(error = %e, "the cancel listener task failed");
                ListenerStats::default()
            }
        }
    }
}

struct Applier {
    handle: CancelHandle,
    cancelled: Arc<CancelledSet>,
    heard: AtomicU64,
    cancelled_running: AtomicU64,
}

impl Applier {
    /// Remembers the id first, then cancels a running task: a task registering in between
    /// is either still running (its token is cancelled here) or checks the set after
    /// registering (and finds the id).
    fn apply(&self, marker: &CancelMarker) {
        self.heard.fetch_add(1, Ordering::Relaxed);
        let new = self.cancelled.insert(marker);
        if self.handle.cancel(&marker.task_id) {
            self.cancelled_running.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                task_id = %marker.task_id,
                reason = marker.reason.as_deref().unwrap_or(""),
                "cancelling a running task"
            );
        } else if new {
            tracing::debug!(task_id = %marker.task_id, "remembered the cancel of a task not running here");
        }
    }

    async fn run(
        self,
        mut stream: CancelStream,
        stop: CancellationToken,
        name: String,
    ) -> ListenerStats {
        loop {
            let next = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                next = stream.next() => next,
            };
            match next {
                Some(marker) => self.apply(&marker),
                None => {
                    if !stop.is_cancelled() {
                        tracing::error!(worker = %name, "the cancel stream ended before the worker stopped; later cancels reach running tasks only through their markers");
                    }
                    break;
                }
            }
        }
        ListenerStats {
            heard: self.heard.load(Ordering::Relaxed),
            cancelled_running: self.cancelled_running.load(Ordering::Relaxed),
        }
    }
}
