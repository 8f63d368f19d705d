//! The app factory: from a [`StepqConfig`] to the [`Backends`] it names (a task queue, output,
//! run and heartbeat stores), and what runs on them — worker services, in-process workers, and
//! runs recorded in the run store.
//!
//! - Embedded default (`task_always_eager = true` or no `sqs.queue_url`): an in-memory broker,
//!   and every store in one SQLite database under `state_dir` (`.stepq/stepq.db`; or, with
//!   `state_store = "files"`, the local-directory stores). Workers run in the same process.
//! - Distributed (feature `aws`): the SQS broker, and the S3 result backend, output store and
//!   run store in `s3.bucket` under `s3.base_path`. Workers are `stepq worker start` processes
//!   anywhere.
//!
//! With a `[signing]` key the broker is a [`SignedBroker`](stepq_broker::signing::SignedBroker):
//! every task message is signed, and a worker refuses (and dead-letters) any it cannot check.
//!
//! With `enable_cancellation = true` (the default) the broker is a
//! [`CancellableBroker`](stepq_cancel::CancellableBroker): cancel markers in the state directory
//! (embedded) or under `cancels/` in the bucket (distributed), wake-ups over an in-process
//! broadcast or per-worker SQS inboxes (see `docs/cancellation.md`). The app's
//! [`Canceller`] is the executor's cancel hook, and every worker service built by
//! [`App::worker_service`] runs a cancel listener whose gate refuses cancelled steps.
//!
//! A run launched by [`App::launch`] watches its run record: once `stepq cancel` (or anyone)
//! moves it to CANCELING, the orchestrator interrupts its executor, which cancels the in-flight
//! steps, and the run ends CANCELED (see [`stepq_executor::launcher`], which records runs, for
//! how often the record is read: [`CANCEL_WATCH_MAX_DELAY`]).
//!
//! Runs can also be submitted as tasks ([`App::submit_run`], `stepq launch`; [`App::submit_resume`],
//! `stepq resume`): every worker service built by [`App::worker_service`] also orchestrates `execute_job` and
//! `resume_job` tasks, without taking one of its step slots (see
//! [`Worker::register_task_without_slot`](stepq_worker::Worker::register_task_without_slot)), so a
//! worker of concurrency 1 runs both a run and its steps. [`App::resume_here`] resumes a run
//! in this process instead (`stepq resume` on the embedded default, or with `--here`), taking
//! over a STARTED run without `force` when its orchestrator's heartbeat is lost
//! ([`App::check_takeover`]).

use std::sync::Arc;

use std::time::Duration;

#[cfg(feature = "aws")]
use stepq_aws::sqs::QueueDepth;
use stepq_broker::{BrokerError, TaskQueue};
use stepq_cancel::{CancelError, Canceller, DEFAULT_CANCEL_GRACE};
pub use stepq_executor::control::orchestrator_name;
use stepq_executor::control::{ControlError, LostOrchestrator, ProcessProbe, RunControl};
pub use stepq_executor::launcher::CANCEL_WATCH_MAX_DELAY;
use stepq_executor::storage::{HeartbeatStore, RunRecord, RunStore, StorageError};
use stepq_executor::{protocol, CancelHook, Executor, ExecutorConfig, ExecutorError, LaunchError};
use stepq_results::OutputStore;
use stepq_worker::service::routing::RouteTagError;
use stepq_worker::service::{Backends, ServiceError, ServiceSettings, WorkerService};
use stepq_worker::{CodeLocation, WorkerConfig, WorkerError, WorkerStats};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Mode, StepqConfig};

mod launch;

use launch::orchestration_handler;
pub use launch::{find_job, FinishedRun, LaunchedRun, RunOptions};

/// Why an app could not do what it was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The code location has no such job.
    #[error("unknown job `{job}`; known jobs: {known}")]
    UnknownJob {
        /// The name asked for.
        job: String,
        /// Names of the jobs there are.
        known: String,
    },
    /// The run could not be started (bad run id, unknown step in the selection ...).
    #[error(transparent)]
    Executor(#[from] ExecutorError),
    /// A worker could not be built or failed.
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// A worker service could not start (its cancel listener, health heartbeat, queue).
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The broker or result backend failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The run store failed.
    #[error("run store: {0}")]
    Storage(#[from] StorageError),
    /// The cancellation extension failed (listener, marker store, wake-up channel).
    #[error("cancellation: {0}")]
    Cancel(#[from] CancelError),
    /// Cancelling, force-cancelling or taking a run over was refused (a failing run store is
    /// [`AppError::Storage`]).
    #[error(transparent)]
    Control(ControlError),
    /// A run could not be submitted, claimed or resumed (see [`LaunchError`]).
    #[error(transparent)]
    Launch(LaunchError),
    /// A step's `stepq/queue` or `stepq/priority` tag names no declared queue or level.
    #[error(transparent)]
    Route(#[from] RouteTagError),
    /// A run's priority (`--priority`, the run tag `stepq/priority`) is not a level.
    #[error("run priority `{level}` {reason}")]
    Priority {
        /// The level asked for.
        level: String,
        /// Why it is refused.
        reason: String,
    },
    /// The operation needs the distributed (SQS) setup.
    #[error("{what} needs a distributed config: set `sqs.queue_url` (or STEPQ_SQS_QUEUE_URL) and `s3.bucket`")]
    NotDistributed {
        /// What was asked.
        what: &'static str,
    },
}

impl From<ControlError> for AppError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Storage(e) => AppError::Storage(e),
            other => AppError::Control(other),
        }
    }
}

impl From<LaunchError> for AppError {
    fn from(e: LaunchError) -> Self {
        match e {
            LaunchError::Executor(e) => AppError::Executor(e),
            LaunchError::Storage(e) => AppError::Storage(e),
            LaunchError::Broker(e) => AppError::Broker(e),
            other => AppError::Launch(other),
        }
    }
}

/// Everything a process of stepq needs, built from a [`StepqConfig`] by [`make_app`].
#[derive(Clone)]
pub struct App {
    config: StepqConfig,
    backends: Backends,
    process_probe: Option<ProcessProbe>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("mode", &self.mode())
            .field("broker", &self.backends.queue.broker().kind())
            .finish_non_exhaustive()
    }
}

/// Builds the broker, result backend, output store and run store the config selects (see the
/// [module docs](self)). Validates the config first, and reads `[signing]`'s keys from the
/// process environment. Makes no network request: a missing queue or bucket shows at
/// [`App::startup`].
pub async fn make_app(config: &StepqConfig) -> Result<App, ConfigError> {
    config.validate()?;
    let routing = config.routing()?;
    let backends = match config.mode() {
        Mode::Embedded => Backends::embedded_routed(
            &config.state_dir,
            config.state_store,
            config.enable_cancellation,
            &routing,
        )
        .map_err(|e| ConfigError::Build {
            component: e.component,
            message: e.message,
        })?,
        #[cfg(feature = "aws")]
        Mode::Distributed => Backends::distributed_routed(
            &config.sqs,
            &config.s3,
            config.enable_cancellation,
            &routing,
        )
        .await
        .map_err(|e| ConfigError::Build {
            component: e.component,
            message: e.message,
        })?,
        // `StepqConfig::mode` never says so without the feature; a config built by hand
        // cannot either (it has no `[sqs]`), but the refusal is the same everywhere.
        #[cfg(not(feature = "aws"))]
        Mode::Distributed => {
            return Err(ConfigError::NoAwsSupport {
                key: "sqs.queue_url".to_string(),
            })
        }
    };
    let signer = config.signing.signer_from_process_env()?;
    let backends = backends.with_signer(signer);
    Ok(App {
        config: config.clone(),
        backends,
        process_probe: None,
    })
}

impl App {
    /// The configuration.
    pub fn config(&self) -> &StepqConfig {
        &self.config
    }

    /// Embedded or distributed.
    pub fn mode(&self) -> Mode {
        self.config.mode()
    }

    /// The task queue (broker + result backend).
    pub fn queue(&self) -> &TaskQueue {
        &self.backends.queue
    }

    /// The output store.
    pub fn outputs(&self) -> &Arc<dyn OutputStore> {
        &self.backends.outputs
    }

    /// The run store.
    pub fn runs(&self) -> &Arc<dyn RunStore> {
        &self.backends.runs
    }

    /// The worker heartbeat store.
    pub fn heartbeats(&self) -> &Arc<dyn HeartbeatStore> {
        &self.backends.heartbeats
    }

    /// Starts the broker and result backend (checks the queue and bucket exist).
    pub async fn startup(&self) -> Result<(), AppError> {
        self.backends.queue.startup().await?;
        Ok(())
    }

    /// Shuts the broker and result backend down.
    pub async fn shutdown(&self) -> Result<(), AppError> {
        self.backends.queue.shutdown().await?;
        Ok(())
    }

    /// The executor settings of `[executor]`.
    pub fn executor_config(&self) -> ExecutorConfig {
        // `make_app` validated the config, and an app's config does not change.
        self.config.executor_config().unwrap_or_default()
    }

    /// The canceller of the app's [`CancellableBroker`](stepq_cancel::CancellableBroker); `None` when
    /// `enable_cancellation = false`.
    pub fn canceller(&self) -> Option<&Canceller> {
        self.backends.canceller.as_ref()
    }

    /// The app's canceller as the executor's cancel hook (`None` when cancellation is off).
    pub fn cancel_hook(&self) -> Option<Arc<dyn CancelHook>> {
        self.backends
            .canceller
            .clone()
            .map(|c| Arc::new(c) as Arc<dyn CancelHook>)
    }

    /// An executor on this app's queue and output store. It cancels in-flight tasks on
    /// interrupt through `cancel`, or when that is `None` through the app's
    /// [`cancel_hook`](App::cancel_hook); with `enable_cancellation = false` it has no hook.
    pub fn executor(&self, cancel: Option<Arc<dyn CancelHook>>) -> Result<Executor, AppError> {
        let executor = Executor::new(
            self.backends.queue.clone(),
            self.backends.outputs.clone(),
            self.executor_config(),
        )?;
        Ok(match cancel.or_else(|| self.cancel_hook()) {
            Some(hook) if self.config.enable_cancellation => executor.with_cancel_hook(hook),
            _ => executor,
        })
    }

    /// How long a worker's cancelled step may ignore its token before it is dropped: the
    /// listener's default, or half the executor's `cancel_grace` if that is shorter (so the
    /// worker's CANCELED result arrives before the executor stops waiting).
    fn worker_cancel_grace(&self) -> Duration {
        DEFAULT_CANCEL_GRACE.min(self.executor_config().cancel_grace / 2)
    }

    /// Worker settings of `[worker]` under `name`. On SQS, a running step's message is kept
    /// invisible for one visibility timeout past each heartbeat, and heartbeats come three
    /// times per visibility timeout: a slow step is never delivered twice, and the step of a
    /// killed worker is delivered again within one visibility timeout.
    pub fn worker_config(&self, name: impl Into<String>) -> WorkerConfig {
        let config = WorkerConfig::named(name)
            .with_concurrency(self.config.worker_concurrency())
            .with_grace_period(self.config.grace_period());
        self.with_sqs_visibility(config)
    }

    /// `config` as is: a build without feature `aws` has no SQS.
    #[cfg(not(feature = "aws"))]
    fn with_sqs_visibility(&self, config: WorkerConfig) -> WorkerConfig {
        config
    }

    /// `config` with the SQS visibility timeout, on SQS.
    #[cfg(feature = "aws")]
    fn with_sqs_visibility(&self, mut config: WorkerConfig) -> WorkerConfig {
        if let Some(sqs) = self
            .config
            .sqs_config()
            .filter(|_| self.backends.sqs.is_some())
        {
            config = config.with_visibility_timeout(std::time::Duration::from_secs(u64::from(
                sqs.config_source.visibility_timeout,
            )));
        }
        config
    }

    /// A worker service serving `location` on this app's queue and output store, with a
    /// cancel listener when cancellation is on and, with `health` (a worker process), the
    /// worker's health heartbeat every `worker.health_interval_seconds` and its HTTP listener
    /// when `worker.http` is set (see [`stepq_worker::service`]).
    /// Besides steps (`execute_plan`), it orchestrates runs submitted as tasks
    /// ([`App::submit_run`], [`App::submit_resume`]) as orchestrator `config.name`, outside
    /// its step slots: an orchestration waits for steps, so holding a slot could deadlock a
    /// worker of concurrency 1.
    pub fn worker_service(
        &self,
        location: Arc<CodeLocation>,
        config: WorkerConfig,
        health: bool,
    ) -> Result<WorkerService, AppError> {
        let name = config.name.clone();
        let parts = self.backends.service_parts(health);
        let mut settings = ServiceSettings::new(config)
            .with_health_interval(self.config.health_interval())
            .with_cancel_grace(self.worker_cancel_grace());
        let file_settings = self
            .config
            .worker
            .service_settings(name.clone())
            .map_err(crate::config::worker_error)?;
        settings.fleet_limits = file_settings.fleet_limits;
        settings.fleet_lease = file_settings.fleet_lease;
        if health {
            settings.http = self.config.worker.http_address()?;
            let routing = self.config.routing()?;
            if routing.is_routed() || self.config.worker.queues.is_some() {
                settings = settings.with_queues(routing.consumed());
            }
        }
        let mut service = WorkerService::new(location.clone(), parts, settings)?;
        let launcher = self.launcher()?;
        for (task, resume) in [(protocol::EXECUTE_JOB, false), (protocol::RESUME_JOB, true)] {
            let handler =
                orchestration_handler(resume, launcher.clone(), location.clone(), name.clone());
            // Tracked, so the worker's health heartbeat lists the runs it orchestrates.
            service.register_task_without_slot(task, handler);
        }
        Ok(service)
    }

    /// Starts `count` workers in this process, each running one step at a time, named
    /// `local-0`, `local-1` ..., each a [`worker_service`](App::worker_service) without a
    /// health heartbeat (so with a cancel listener when cancellation is on). They have no
    /// shutdown grace period: they are stopped once the runs they serve ended, when whatever
    /// they still run belongs to a canceled run.
    pub fn start_local_workers(
        &self,
        location: Arc<CodeLocation>,
        count: usize,
    ) -> Result<LocalWorkers, AppError> {
        self.start_local_workers_observed(location, count, None)
    }

    /// [`start_local_workers`](App::start_local_workers), each worker told to `observer`
    /// (e.g. the metrics of `stepq run --http`) when given.
    pub fn start_local_workers_observed(
        &self,
        location: Arc<CodeLocation>,
        count: usize,
        observer: Option<Arc<dyn stepq_worker::WorkerObserver>>,
    ) -> Result<LocalWorkers, AppError> {
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(count);
        for i in 0..count {
            let config = self
                .worker_config(format!("local-{i}"))
                .with_concurrency(1)
                .with_grace_period(Duration::ZERO);
            let mut service = self.worker_service(location.clone(), config, false)?;
            if let Some(observer) = &observer {
                service.set_observer(observer.clone());
            }
            let stop = stop.clone();
            handles.push(tokio::spawn(async move {
                service.run(stop).await.map_err(AppError::from)
            }));
        }
        Ok(LocalWorkers {
            stop,
            handles,
            cancel: self.cancel_hook(),
        })
    }

    /// Run control on this app's run and heartbeat stores: cancel, force-cancel and
    /// takeover checks (see [`stepq_executor::control`]).
    pub fn control(&self) -> RunControl {
        let control = RunControl::new(
            self.backends.runs.clone(),
            self.backends.heartbeats.clone(),
            self.config.health_interval(),
        );
        match &self.process_probe {
            Some(probe) => control.with_process_probe(probe.clone()),
            None => control,
        }
    }

    /// Tells run control how to see whether a process of this machine runs (see
    /// [`RunControl::with_process_probe`]; the `stepq` command line installs `kill(pid, 0)`).
    pub fn with_process_probe(mut self, probe: ProcessProbe) -> Self {
        self.process_probe = Some(probe);
        self
    }

    /// Asks for run `run_id` to be cancelled (see [`RunControl::request_cancel`]).
    pub async fn request_cancel(&self, run_id: &str) -> Result<RunRecord, AppError> {
        Ok(self.control().request_cancel(run_id).await?)
    }

    /// Ends run `run_id`, stuck CANCELING because its orchestrator died, CANCELED (see
    /// [`RunControl::force_cancel`]); the events name this process as who forced it.
    pub async fn force_cancel(&self, run_id: &str) -> Result<RunRecord, AppError> {
        Ok(self
            .control()
            .force_cancel(run_id, &orchestrator_name())
            .await?)
    }

    /// Whether a resume of run `run_id` takes it over from a lost orchestrator (see
    /// [`RunControl::check_takeover`]).
    pub async fn check_takeover(
        &self,
        run_id: &str,
        force: bool,
    ) -> Result<Option<LostOrchestrator>, AppError> {
        let record = self.backends.runs.get_run(run_id).await?;
        Ok(self.control().check_takeover(&record, force).await?)
    }

    /// The approximate depth of the SQS task queue; [`AppError::NotDistributed`] on the
    /// embedded default. Feature `aws`.
    #[cfg(feature = "aws")]
    pub async fn queue_depth(&self) -> Result<QueueDepth, AppError> {
        let sqs = self.backends.sqs.as_ref().ok_or(AppError::NotDistributed {
            what: "reading the queue depth",
        })?;
        Ok(sqs.queue_depth().await?)
    }
}

/// Workers running in this process (the embedded default's workers).
pub struct LocalWorkers {
    stop: CancellationToken,
    handles: Vec<JoinHandle<Result<WorkerStats, AppError>>>,
    cancel: Option<Arc<dyn CancelHook>>,
}

impl std::fmt::Debug for LocalWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalWorkers")
            .field("workers", &self.handles.len())
            .finish()
    }
}

impl LocalWorkers {
    /// The app's cancel hook (its canceller), which reaches these workers' cancel listeners;
    /// a hook that does nothing when cancellation is off.
    pub fn cancel_hook(&self) -> Arc<dyn CancelHook> {
        self.cancel
            .clone()
            .unwrap_or_else(|| Arc::new(stepq_executor::NoopCancelHook))
    }

    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Stops the workers (in-flight steps get the grace period) and returns what each did.
    pub async fn shutdown(self) -> Result<Vec<WorkerStats>, AppError> {
        self.stop.cancel();
        let mut stats = Vec::with_capacity(self.handles.len());
        let mut first_error = None;
        for handle in self.handles {
            match handle.await {
                Ok(Ok(s)) => stats.push(s),
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => {}
            }
        }
        first_error.map_or(Ok(stats), Err)
    }
}

#[cfg(test)]
mod tests;
