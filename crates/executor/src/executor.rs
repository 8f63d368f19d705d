//! `Executor`: starts runs of jobs on a task queue.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use stepq_broker::TaskQueue;
use stepq_plan::{ExecutionPlan, Job, KnownState};
use stepq_results::{OutputKey, OutputStore, ResultError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cancel_hook::{CancelHook, NoopCancelHook};
use crate::config::ExecutorConfig;
use crate::error::{ExecutorError, OutputError};
use crate::handle::{EventStream, RunHandle};
use crate::outcome::RunResult;
use crate::run_loop::{RunLoop, StepRoutes};

/// What to run: a job (or some of its steps), with what is known from earlier runs.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// Run id; names the run's stored outputs, so it must be usable as a path segment.
    pub run_id: String,
    /// The job.
    pub job: Arc<Job>,
    /// Steps to run; `None` runs every step.
    pub step_selection: Option<Vec<String>>,
    /// What earlier runs completed: those steps are not run again, their outputs are used.
    pub known_state: KnownState,
    /// Free-form run config handed to every op.
    pub run_config: serde_json::Value,
    /// The priority level of the run's steps that have no `stepq/priority` tag
    /// ([`PRIORITY_TAG`](stepq_protocol::PRIORITY_TAG)); `None`: the broker's default level.
    pub priority: Option<String>,
}

impl RunRequest {
    /// Runs every step of `job` under `run_id`, from scratch, with a `null` run config.
    pub fn new(run_id: impl Into<String>, job: Arc<Job>) -> Self {
        RunRequest {
            run_id: run_id.into(),
            job,
            step_selection: None,
            known_state: KnownState::default(),
            run_config: serde_json::Value::Null,
            priority: None,
        }
    }

    /// Sends the run's steps at `level` unless a step's own `stepq/priority` tag says
    /// otherwise (see [`stepq_broker::routing`]).
    pub fn with_priority(mut self, level: impl Into<String>) -> Self {
        self.priority = Some(level.into());
        self
    }

    /// Runs only these steps.
    pub fn with_steps(mut self, steps: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.step_selection = Some(steps.into_iter().map(Into::into).collect());
        self
    }

    /// Starts from what earlier runs completed.
    pub fn with_known_state(mut self, known_state: KnownState) -> Self {
        self.known_state = known_state;
        self
    }

    /// Sets the run config.
    pub fn with_run_config(mut self, run_config: serde_json::Value) -> Self {
        self.run_config = run_config;
        self
    }
}

/// Checks that `run_id` can name a run's stored outputs (it becomes a path segment / object
/// key segment); [`ExecutorError::InvalidRunId`] says why not.
pub fn check_run_id(run_id: &str) -> Result<(), ExecutorError> {
    match OutputKey::new(run_id, "step", "output").relative_path() {
        Ok(_) => Ok(()),
        Err(e) => Err(ExecutorError::InvalidRunId {
            run_id: run_id.to_string(),
            reason: match e {
                ResultError::InvalidKey { reason, .. } => reason.to_string(),
                other => other.to_string(),
            },
        }),
    }
}

/// Starts runs: each run is a tokio task that submits its steps to the queue as
/// `execute_plan` tasks and follows them to the end. Cheap to clone; runs share the queue's
/// clients and connections (none are created per run or per step).
#[derive(Clone)]
pub struct Executor {
    queue: TaskQueue,
    outputs: Arc<dyn OutputStore>,
    config: Arc<ExecutorConfig>,
    hook: Arc<dyn CancelHook>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("broker", &self.queue.broker().kind())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Executor {
    /// An executor submitting to `queue`, whose workers store step outputs in `outputs`.
    /// Fails with [`ExecutorError::Config`] naming the first invalid field.
    pub fn new(
        queue: TaskQueue,
        outputs: Arc<dyn OutputStore>,
        config: ExecutorConfig,
    ) -> Result<Self, ExecutorError> {
        config.validate()?;
        Ok(Executor {
            queue,
            outputs,
            config: Arc::new(config),
            hook: Arc::new(NoopCancelHook),
        })
    }

    /// Uses `hook` to cancel in-flight tasks (interrupt, fail-fast, timed-out attempts).
    pub fn with_cancel_hook(mut self, hook: Arc<dyn CancelHook>) -> Self {
        self.hook = hook;
        self
    }

    /// The cancel hook (see [`Executor::with_cancel_hook`]; [`NoopCancelHook`] by default).
    pub fn cancel_hook(&self) -> &Arc<dyn CancelHook> {
        &self.hook
    }

    /// The config.
    pub fn config(&self) -> &ExecutorConfig {
        &self.config
    }

    /// The task queue.
    pub fn queue(&self) -> &TaskQueue {
        &self.queue
    }

    /// The output store.
    pub fn outputs(&self) -> &Arc<dyn OutputStore> {
        &self.outputs
    }

    /// Starts a run; it runs on the current tokio runtime until it ends or is interrupted.
    ///
    /// Fails at once for an unusable run id or a request that cannot be planned (unknown
    /// step, empty selection, missing upstream result).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn start(&self, request: RunRequest) -> Result<RunHandle, ExecutorError> {
        self.start_with_interrupt(request, CancellationToken::new())
    }

    /// Like [`start`](Executor::start); cancelling `interrupt` interrupts the run (as
    /// [`RunHandle::interrupt`] does). One token may interrupt many runs; interrupting one run
    /// through its handle does not cancel the token.
    pub fn start_with_interrupt(
        &self,
        request: RunRequest,
        interrupt: CancellationToken,
    ) -> Result<RunHandle, ExecutorError> {
        let RunRequest {
            run_id,
            job,
            step_selection,
            known_state,
            run_config,
            priority,
        } = request;
        check_run_id(&run_id)?;
        let routes = StepRoutes::of(&job, priority.as_deref());
        let plan = ExecutionPlan::new(job.clone(), step_selection.as_deref(), &known_state)?;
        let (tx, rx) = mpsc::channel(self.config.event_buffer);
        let interrupt = interrupt.child_token();
        let run = RunLoop {
            run_id: run_id.clone(),
            job,
            config: self.config.clone(),
            queue: self.queue.clone(),
            hook: self.hook.clone(),
            run_config,
            routes,
            progress: plan.progress(),
            events: tx,
            interrupt: interrupt.clone(),
        };
        let step_count = plan.len();
        // The run's trace: the one its step tasks' `traceparent` labels carry.
        let trace = stepq_broker::TraceParent::for_key(&run_id);
        let span = tracing::info_span!("run", %run_id, trace_id = %trace.trace_id_hex());
        stepq_broker::trace::adopt(&span, trace);
        tracing::info!(parent: &span, %run_id, steps = step_count, "starting run");
        let task = tokio::spawn(tracing::Instrument::instrument(run.run(), span));
        Ok(RunHandle::new(
            run_id,
            EventStream::new(rx),
            interrupt,
            task,
            step_count,
        ))
    }

    /// Reads a typed output of a finished run from this executor's output store.
    pub async fn output<T: DeserializeOwned>(
        &self,
        result: &RunResult,
        step: &str,
        name: &str,
    ) -> Result<T, OutputError> {
        result.output(self.outputs.as_ref(), step, name).await
    }
}
