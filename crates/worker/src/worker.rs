//! The worker runtime: an `execute_plan` handler on a [`Receiver`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use stepq_broker::{
    BrokerError, CancelHandle, ErrorClass, Receiver, ReceiverConfig, ReceiverStats, TaskContext,
    TaskHandler, TaskOutcome, TaskQueue, TraceParent,
};
use stepq_plan::{ExecuteStepArgs, FailureKind, StepReport, StepStatus};
use stepq_protocol as protocol;
use stepq_results::{OutputStore, ResultBackend, TaskError};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::execute::{run_step, InlineInputs, InlineOptions};
use crate::fleet::FleetLimiter;
use crate::health::WorkerActivity;
use crate::location::CodeLocation;
use crate::observe::{TaskEnd, WorkerObserver};
use crate::progress::ProgressWriter;

/// Error kind of a task whose step arguments do not decode (or name no step).
pub const INVALID_STEP_ARGS: FailureKind = FailureKind::InvalidStepArgs;
/// Error kind of a task whose step reports could not be encoded.
pub const REPORT_ENCODE_ERROR: FailureKind = FailureKind::ReportEncodeError;

/// The visibility timeout [`WorkerConfig::default`] is made for: the SQS broker's default
/// (`stepq_aws::sqs::DEFAULT_VISIBILITY_TIMEOUT`, 6 s).
pub const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(6);

/// Worker settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Name written into step events and results (default `hostname-pid`).
    pub name: String,
    /// Tasks run at once (default: number of cores).
    pub concurrency: usize,
    /// On stop, how long in-flight tasks may run before they are cancelled and returned to the
    /// queue (default 30 s).
    pub grace_period: Duration,
    /// While a task runs, its message stays invisible for this much more ... (default 6 s,
    /// the SQS broker's default visibility timeout)
    pub heartbeat_extension: Duration,
    /// ... renewed this often (default a third of that; must be shorter than the extension,
    /// and the first renewal must come well within the broker's visibility timeout, which a
    /// delivered message may already have spent half of in the receive buffer). `None`
    /// disables these visibility heartbeats: long steps are then redelivered after the
    /// broker's visibility timeout. (Not the worker's health heartbeat: see
    /// [`health`](crate::health).)
    pub heartbeat_interval: Option<Duration>,
    /// A successful step's outputs up to this many bytes each (at most eight such outputs'
    /// worth per step) are also copied into its report, so the orchestrator can hand them to
    /// downstream steps in their messages instead of each reading the output store. Every
    /// output is stored either way. Default [`DEFAULT_INLINE_OUTPUT_LIMIT`] (8 KiB); 0 turns
    /// copies off.
    pub inline_output_limit: usize,
    /// Deliveries of one message without its task finishing after which it is dead-lettered
    /// instead of run again ([`ReceiverConfig::max_receive_count`]; default 10, `None`: never).
    pub max_receive_count: Option<u32>,
}

/// Default [`WorkerConfig::inline_output_limit`]: 8 KiB.
pub const DEFAULT_INLINE_OUTPUT_LIMIT: usize = 8 * 1024;

impl Default for WorkerConfig {
    /// Name `hostname-pid`, concurrency = cores, 30 s grace (the receiver's defaults), and
    /// visibility heartbeats safe on the SQS broker's default visibility timeout: every
    /// 2 s, each keeping the message hidden 6 s more (see
    /// [`with_visibility_timeout`](WorkerConfig::with_visibility_timeout)).
    fn default() -> Self {
        let r = ReceiverConfig::default();
        WorkerConfig {
            name: r.worker_name,
            concurrency: r.concurrency,
            grace_period: r.grace_period,
            heartbeat_extension: r.heartbeat_extension,
            heartbeat_interval: r.heartbeat_interval,
            inline_output_limit: DEFAULT_INLINE_OUTPUT_LIMIT,
            max_receive_count: r.max_receive_count,
        }
        .with_visibility_timeout(DEFAULT_VISIBILITY_TIMEOUT)
    }
}

impl WorkerConfig {
    /// Default settings under the given name.
    pub fn named(name: impl Into<String>) -> Self {
        WorkerConfig {
            name: name.into(),
            ..WorkerConfig::default()
        }
    }

    /// Sets the concurrency.
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Sets the grace period.
    pub fn with_grace_period(mut self, grace_period: Duration) -> Self {
        self.grace_period = grace_period;
        self
    }

    /// Fits the visibility heartbeats to a broker whose deliveries stay hidden for
    /// `visibility` (the SQS queue's or receive's visibility timeout): each heartbeat keeps a
    /// running step's message hidden one `visibility` more, and they come three times per
    /// `visibility`. The first comes after a third of it, while a delivered message has at
    /// least half of it left (the SQS broker renews messages that waited longer in its
    /// buffer), so a slow step is never delivered twice; a killed worker's step is delivered
    /// again within one `visibility` of its last heartbeat.
    pub fn with_visibility_timeout(mut self, visibility: Duration) -> Self {
        self.heartbeat_extension = visibility;
        self.heartbeat_interval = Some(visibility / 3);
        self
    }

    /// Checks the settings; the error names the bad field.
    pub fn validate(&self) -> Result<(), WorkerError> {
        if self.name.trim().is_empty() {
            return Err(WorkerError::Config {
                field: "name",
                reason: "must not be empty".into(),
            });
        }
        self.receiver_config().validate().map_err(|e| match e {
            BrokerError::Config { field, reason } => WorkerError::Config { field, reason },
            other => WorkerError::Broker(other),
        })
    }

    /// The receiver settings these translate to.
    pub fn receiver_config(&self) -> ReceiverConfig {
        ReceiverConfig {
            concurrency: self.concurrency,
            grace_period: self.grace_period,
            heartbeat_extension: self.heartbeat_extension,
            heartbeat_interval: self.heartbeat_interval,
            worker_name: self.name.clone(),
            max_receive_count: self.max_receive_count,
        }
    }
}

/// Why a worker could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// A setting is invalid.
    #[error("invalid worker config `{field}`: {reason}")]
    Config {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The broker, result backend or receiver failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl WorkerError {
    /// Whether retrying (restarting the worker) may help.
    pub fn class(&self) -> ErrorClass {
        match self {
            WorkerError::Config { .. } => ErrorClass::Permanent,
            WorkerError::Broker(e) => e.class(),
        }
    }
}

/// What a worker did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Task counts from the receiver (all task names).
    pub tasks: ReceiverStats,
    /// Steps that succeeded.
    pub steps_succeeded: u64,
    /// Steps that failed.
    pub steps_failed: u64,
    /// Steps that were canceled.
    pub steps_canceled: u64,
}

#[derive(Default)]
struct StepCounters {
    succeeded: AtomicU64,
    failed: AtomicU64,
    canceled: AtomicU64,
}

/// What the `execute_plan` handler needs.
struct StepRunner {
    location: Arc<CodeLocation>,
    outputs: Arc<dyn OutputStore>,
    /// Where progress entries go: the task queue's result backend.
    results: Arc<dyn ResultBackend>,
    worker_name: String,
    inline: InlineOptions,
    counters: StepCounters,
    /// Told about step tasks and steps, once installed.
    observer: std::sync::OnceLock<Arc<dyn WorkerObserver>>,
    /// Fleet-wide tag limits, once installed.
    fleet: std::sync::OnceLock<Arc<FleetLimiter>>,
}

impl StepRunner {
    /// `job` if the code location has it, else `unknown`: what observers (metrics) label a
    /// step with, so a message naming any job cannot mint new series.
    fn job_label<'a>(&self, job: &'a str) -> &'a str {
        match self.location.job(job) {
            Some(_) => job,
            None => "unknown",
        }
    }

    /// Runs the task's steps in order, handing each step's outputs to the next in memory (they
    /// are stored too). Stops after the first step that does not succeed, and before a step
    /// that reads an output an earlier step of the task did not emit: the steps after that
    /// get no report (not run), and the orchestrator schedules or skips them itself.
    ///
    /// With `progress`, each step's start and each success are told to it as they happen.
    async fn run_steps(
        &self,
        args: &ExecuteStepArgs,
        cancel: &CancellationToken,
        progress: Option<&ProgressWriter>,
    ) -> Vec<StepReport> {
        let mut inline = InlineInputs::from_args(args);
        let job = self.location.job(&args.job_name);
        let inputs_of = |key: &str| {
            job.as_deref()
                .and_then(|job| job.step(key))
                .map_or(&[][..], |step| step.inputs.as_slice())
        };
        // Outputs a later step of this task reads: only those are kept in memory.
        let mut wanted = std::collections::HashSet::new();
        for key in args.step_keys.iter().skip(1) {
            for input in inputs_of(key) {
                wanted.insert((input.from_step.clone(), input.from_output.clone()));
            }
        }
        let mut reports: Vec<StepReport> = Vec::with_capacity(args.step_keys.len());
        for (i, step_key) in args.step_keys.iter().enumerate() {
            if i > 0 {
                let earlier = &args.step_keys[..i];
                let unmet = inputs_of(step_key).iter().find(|input| {
                    earlier.contains(&input.from_step)
                        && inline.get(&input.from_step, &input.from_output).is_none()
                });
                if let Some(input) = unmet {
                    tracing::debug!(
                        run_id = %args.run_id,
                        step_key,
                        upstream = %input.from_step,
                        output = %input.from_output,
                        "not running the rest of the task: an earlier step did not emit an input"
                    );
                    break;
                }
            }
            let started = std::time::Instant::now();
            let executed = run_step(
                &self.location,
                self.outputs.as_ref(),
                args,
                step_key,
                &self.worker_name,
                cancel,
                &inline,
                self.inline,
                progress,
            )
            .await;
            let succeeded = matches!(executed.report.status, StepStatus::Success { .. });
            let counter = match executed.report.status {
                StepStatus::Success { .. } => &self.counters.succeeded,
                StepStatus::Failure { .. } => &self.counters.failed,
                StepStatus::Canceled => &self.counters.canceled,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if let Some(observer) = self.observer.get() {
                let end = match executed.report.status {
                    StepStatus::Success { .. } => TaskEnd::Succeeded,
                    StepStatus::Failure { .. } => TaskEnd::Failed,
                    StepStatus::Canceled => TaskEnd::Canceled,
                };
                observer.step_finished(self.job_label(&args.job_name), end, started.elapsed());
            }
            if let (true, Some(progress)) = (succeeded, progress) {
                if i + 1 < args.step_keys.len() {
                    progress.finished(&executed.report);
                }
            }
            reports.push(executed.report);
            if !succeeded {
                break;
            }
            for (name, bytes) in executed.outputs {
                let key = (step_key.clone(), name);
                if wanted.contains(&key) {
                    inline.insert(&key.0, &key.1, bytes);
                }
            }
        }
        // Inline copies only matter where the orchestrator may hand them on: not for a step
        // whose (only) consumer in this task already succeeded. Keeps the result small.
        for i in 1..reports.len() {
            if matches!(reports[i].status, StepStatus::Success { .. }) {
                reports[i - 1].inline_outputs.clear();
            }
        }
        reports
    }

    async fn execute_plan(&self, task: TaskContext) -> TaskOutcome {
        let message = &task.message;
        let args = protocol::read_step_args(message).map_err(|e| TaskError {
            kind: INVALID_STEP_ARGS,
            message: format!(
                "task `{}` ({}) has unreadable step arguments: {e}",
                message.task_name, message.task_id
            ),
        })?;
        if args.step_keys.is_empty() {
            return Err(TaskError {
                kind: INVALID_STEP_ARGS,
                message: format!(
                    "task `{}` ({}) names no step of job `{}` in run `{}`",
                    message.task_name, message.task_id, args.job_name, args.run_id
                ),
            });
        }
        if let Some(observer) = self.observer.get() {
            // A redelivery's wait since the first send includes its earlier attempts.
            let wait = task.queue_wait.filter(|_| task.receive_count == 1);
            observer.step_task_started(self.job_label(&args.job_name), wait);
        }
        if task.receive_count > 1 {
            tracing::info!(
                task_id = %message.task_id,
                receive_count = task.receive_count,
                "running a redelivered step task"
            );
        }
        // Progress entries only when the orchestrator asked (it waits for them, and deletes
        // them); an older one does not.
        let progress = message.label(protocol::PROGRESS_LABEL).map(|_| {
            ProgressWriter::start(
                self.results.clone(),
                message.task_id.clone(),
                message.result_labels(),
            )
        });
        // The sender's trace, so this task's log lines join it (see `stepq_broker::trace`).
        let trace = TraceParent::of(message);
        let span = tracing::info_span!(
            "task",
            task_id = %message.task_id,
            trace_id = trace.map(|t| t.trace_id_hex()).as_deref(),
            parent_span_id = trace.map(|t| t.span_id_hex()).as_deref(),
        );
        if let Some(parent) = trace {
            stepq_broker::trace::adopt(&span, parent);
        }
        // Fleet-wide slots: taken before the task's first step, given back after its last.
        let holder = format!("{}/{}", self.worker_name, message.task_id);
        let fleet = self.fleet.get().map(|f| &**f);
        let slots =
            crate::fleet::slots_for_task(fleet, &self.location, &args, &holder, &task.cancel)
                .instrument(span.clone())
                .await;
        let reports = self
            .run_steps(&args, &task.cancel, progress.as_ref())
            .instrument(span)
            .await;
        if let Some(slots) = slots {
            slots.release().await;
        }
        if let Some(progress) = progress {
            progress.finish().await;
        }
        protocol::reports_value(&reports).map_err(|e| TaskError {
            kind: REPORT_ENCODE_ERROR,
            message: format!(
                "step reports of task {} do not encode: {e}",
                message.task_id
            ),
        })
    }
}

/// A worker: runs `execute_plan` tasks for the steps of its code location, loading inputs from
/// and storing outputs in an output store, with a concurrency limit, heartbeats and graceful
/// shutdown (all through a [`Receiver`]).
///
/// Failed steps are reported, not thrown: the task's result is a successful list of step
/// reports whose status says how each step ended. Only a task whose arguments cannot be read
/// gets a failed result (kind [`INVALID_STEP_ARGS`]); either way the message is acked and the
/// worker goes on.
pub struct Worker {
    receiver: Receiver,
    runner: Arc<StepRunner>,
    config: WorkerConfig,
    activity: WorkerActivity,
}

impl Worker {
    /// A worker on `queue` running steps from `location`, with outputs in `outputs`.
    pub fn new(
        location: Arc<CodeLocation>,
        queue: TaskQueue,
        outputs: Arc<dyn OutputStore>,
        config: WorkerConfig,
    ) -> Result<Self, WorkerError> {
        config.validate()?;
        let runner = Arc::new(StepRunner {
            location,
            outputs,
            results: queue.results().clone(),
            worker_name: config.name.clone(),
            inline: InlineOptions::up_to(config.inline_output_limit),
            counters: StepCounters::default(),
            observer: std::sync::OnceLock::new(),
            fleet: std::sync::OnceLock::new(),
        });
        let mut receiver = Receiver::new(queue).with_config(config.receiver_config());
        let handler_runner = runner.clone();
        let handler: TaskHandler = Arc::new(move |task: TaskContext| {
            let runner = handler_runner.clone();
            Box::pin(async move { runner.execute_plan(task).await })
        });
        let activity = WorkerActivity::new();
        receiver.register(protocol::EXECUTE_PLAN, activity.track(handler));
        Ok(Worker {
            receiver,
            runner,
            config,
            activity,
        })
    }

    /// Registers another task handler (e.g. `execute_job`) on the worker's receiver; its
    /// tasks are recorded in the worker's [`activity`](Worker::activity).
    pub fn register_task(&mut self, name: &str, handler: TaskHandler) {
        self.receiver.register(name, self.activity.track(handler));
    }

    /// Like [`register_task`](Worker::register_task), for a task that waits for other tasks
    /// (a run's orchestration waits for its steps): it does not hold one of the worker's
    /// concurrency slots ([`Receiver::register_without_slot`]).
    pub fn register_task_without_slot(&mut self, name: &str, handler: TaskHandler) {
        self.receiver
            .register_without_slot(name, self.activity.track(handler));
    }

    /// What the worker runs now and how many tasks it finished (tasks of `execute_plan`, of
    /// [`register_task`](Worker::register_task) and of
    /// [`register_task_without_slot`](Worker::register_task_without_slot); not of handlers
    /// registered straight on
    /// [`receiver_mut`](Worker::receiver_mut)). A [`HealthWriter`](crate::health::HealthWriter)
    /// reports it.
    pub fn activity(&self) -> &WorkerActivity {
        &self.activity
    }

    /// Installs `observer` (e.g. the service's metrics): told what the worker's receiver does
    /// and about every step task and step. One observer per worker: a second call is
    /// ignored.
    pub fn set_observer(&mut self, observer: Arc<dyn WorkerObserver>) {
        if self.runner.observer.set(observer.clone()).is_ok() {
            self.receiver.set_observer(observer);
        }
    }

    /// Takes a fleet-wide slot from `limiter` before running any step task whose steps carry
    /// a limited tag (see [`crate::fleet`]). One limiter per worker: a second call is ignored.
    pub fn set_fleet_limiter(&mut self, limiter: Arc<FleetLimiter>) {
        let _ = self.runner.fleet.set(limiter);
    }

    /// The underlying receiver, e.g. to register typed tasks with [`Receiver::register_fn`].
    pub fn receiver_mut(&mut self) -> &mut Receiver {
        &mut self.receiver
    }

    /// A handle that cancels running tasks by task id (a cancelled step reports `Canceled`).
    pub fn cancel_handle(&self) -> CancelHandle {
        self.receiver.cancel_handle()
    }

    /// The code location.
    pub fn location(&self) -> &Arc<CodeLocation> {
        &self.runner.location
    }

    /// The settings.
    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// Runs tasks until `stop` fires, then stops taking new ones, lets in-flight ones finish
    /// within the grace period (cancelling and returning the rest to the queue) and returns
    /// what it did.
    pub async fn run(self, stop: CancellationToken) -> Result<WorkerStats, WorkerError> {
        let Worker {
            receiver,
            runner,
            config,
            activity: _,
        } = self;
        tracing::info!(
            worker = %config.name,
            concurrency = config.concurrency,
            jobs = ?runner.location.job_names().collect::<Vec<_>>(),
            "worker started"
        );
        let tasks = receiver.run(stop).await?;
        let stats = WorkerStats {
            tasks,
            steps_succeeded: runner.counters.succeeded.load(Ordering::Relaxed),
            steps_failed: runner.counters.failed.load(Ordering::Relaxed),
            steps_canceled: runner.counters.canceled.load(Ordering::Relaxed),
        };
        tracing::info!(worker = %config.name, ?stats, "worker stopped");
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        let config = WorkerConfig::default();
        config.validate().unwrap();
        assert!(config.concurrency >= 1);
        assert!(config.name.ends_with(&format!("-{}", std::process::id())));
        let rc = WorkerConfig::named("w")
            .with_concurrency(3)
            .with_grace_period(Duration::from_secs(2))
            .receiver_config();
        assert_eq!(rc.concurrency, 3);
        assert_eq!(rc.grace_period, Duration::from_secs(2));
        assert_eq!(rc.worker_name, "w");
    }

    #[test]
    fn default_visibility_heartbeats_fit_the_default_visibility_timeout() {
        let config = WorkerConfig::default();
        let every = config
            .heartbeat_interval
            .expect("visibility heartbeats are on");
        // A delivered message may have spent up to half its timeout in the receive buffer:
        // the first heartbeat must come before the other half runs out, with room to spare.
        assert!(every * 2 < DEFAULT_VISIBILITY_TIMEOUT, "{every:?}");
        assert!(config.heartbeat_extension > every);
        assert!(config.heartbeat_extension >= DEFAULT_VISIBILITY_TIMEOUT);
        let fitted = WorkerConfig::named("w").with_visibility_timeout(Duration::from_secs(12));
        assert_eq!(fitted.heartbeat_extension, Duration::from_secs(12));
        assert_eq!(fitted.heartbeat_interval, Some(Duration::from_secs(4)));
        fitted.validate().unwrap();
        let e = WorkerConfig::named("w")
            .with_visibility_timeout(Duration::ZERO)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("heartbeat_interval"), "{e}");
    }

    fn field_of(config: WorkerConfig) -> &'static str {
        match config.validate().unwrap_err() {
            WorkerError::Config { field, .. } => field,
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn invalid_configs_name_the_field() {
        assert_eq!(field_of(WorkerConfig::named(" ")), "name");
        assert_eq!(
            field_of(WorkerConfig::named("w").with_concurrency(0)),
            "concurrency"
        );
        let mut c = WorkerConfig::named("w");
        c.heartbeat_interval = Some(Duration::ZERO);
        assert_eq!(field_of(c.clone()), "heartbeat_interval");
        c.heartbeat_interval = Some(c.heartbeat_extension);
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("heartbeat_extension"), "{e}");
        assert_eq!(e.class(), ErrorClass::Permanent);
        c.heartbeat_interval = None;
        c.validate().unwrap();
    }
}
