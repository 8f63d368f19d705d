//! The run launcher: runs recorded in a [`RunStore`], started in this process or submitted as
//! `execute_job` / `resume_job` tasks for a worker to orchestrate.
//!
//! - [`create_run`] plans a request and stores its run record (QUEUED); a bad job, selection
//!   or run id is an error before anything is written.
//! - [`RunLauncher::start`] claims a recorded run with a compare-and-set status change (to
//!   STARTING by an orchestrator, then STARTED), starts the [`Executor`] for it, appends its
//!   events to the run's log in batches ([`MAX_EVENTS_PER_BATCH`]), watches the record so a
//!   run moved to CANCELING (by `stepq cancel`) is interrupted, and records its final status
//!   ([`RecordedRun::wait`]).
//! - [`RunLauncher::submit_run`] / [`RunLauncher::submit_resume`] enqueue the tasks;
//!   [`RunLauncher::execute_run_task`] / [`RunLauncher::resume_run_task`] are what a worker
//!   runs for them. Only the orchestrator that wins the claim runs the executor: a redelivered
//!   `execute_job` whose run is no longer QUEUED fails with kind [`RUN_ALREADY_CLAIMED`] and
//!   starts nothing.
//! - A resume rebuilds the run's [`KnownState`] from its event log
//!   ([`known_state_from_events`]): steps that succeeded keep their stored outputs (same run
//!   id, same output keys) and are not run again; the others run again, their attempt numbers
//!   counting on from the log.
//!
//! Run stores shared between processes (a local directory, S3) cannot notify another process,
//! so the cancel watch re-reads the record with a backoff from 25 ms doubling to
//! [`CANCEL_WATCH_MAX_DELAY`] (500 ms): one cheap read (a file, one S3 GET) every half second
//! per running run.
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use stepq_executor::launcher::known_state_from_events;
//! use stepq_plan::{Event, EventKind};
//!
//! let events = vec![
//!     Event::step("r1", "a", EventKind::StepQueued { attempt: 1, task_id: "t1".into() }),
//!     Event::step("r1", "a", EventKind::StepOutputHandled { output: "result".into(), bytes: 2 }),
//!     Event::step("r1", "a", EventKind::StepSuccess { duration: std::time::Duration::ZERO }),
//!     Event::step("r1", "b", EventKind::StepQueued { attempt: 1, task_id: "t2".into() }),
//! ];
//! let known = known_state_from_events(&events);
//! assert!(known.is_completed("a") && !known.is_completed("b"));
//! assert_eq!(known.attempts_of("b"), 1, "b's next attempt is 2");
//! # });
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stepq_broker::{BrokerError, ErrorClass, TaskHandle, TaskMessage, TaskOutcome, TaskQueue};
use stepq_plan::{
    Event, EventKind, ExecuteRunArgs, ExecutionPlan, Job, KnownState, PackError, ResumeRunArgs,
};
use stepq_results::TaskError;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::ExecutorError;
use crate::executor::{check_run_id, Executor, RunRequest};
use crate::handle::{EventStream, RunHandle};
use crate::outcome::{RunResult, RunStatus};
use crate::protocol::{self, ProtocolError};
use crate::storage::{
    EventCursor, RunRecord, RunStatus as StoredStatus, RunStore, StatusChange, StorageError,
};

/// Most events written to the run store as one batch.
pub const MAX_EVENTS_PER_BATCH: usize = 1000;

/// Longest pause between two reads of a running run's record while its orchestrator watches
/// for a cancel request (see the [module docs](self)).
pub const CANCEL_WATCH_MAX_DELAY: Duration = Duration::from_millis(500);

/// First pause of that watch.
const CANCEL_WATCH_FIRST_DELAY: Duration = Duration::from_millis(25);

/// Error kind of an orchestration task whose run another orchestrator holds, or that no
/// longer waits to start (a redelivered `execute_job`).
pub const RUN_ALREADY_CLAIMED: &str = "RunAlreadyClaimed";
/// Error kind of an orchestration task whose arguments do not decode.
pub const INVALID_RUN_ARGS: &str = "InvalidRunArgs";
/// Error kind of an orchestration task that could not be carried out (unknown job, run store
/// failure, unplannable request).
pub const RUN_NOT_STARTED: &str = "RunNotStarted";

/// Why a run could not be launched, submitted, claimed or resumed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The request cannot be run (bad run id, unknown step, empty selection ...).
    #[error(transparent)]
    Executor(#[from] ExecutorError),
    /// The run store failed, or has no such run.
    #[error("run store: {0}")]
    Storage(#[from] StorageError),
    /// The broker refused the task.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The task's arguments could not be encoded.
    #[error("cannot encode the task arguments: {0}")]
    Pack(#[from] PackError),
    /// Another orchestrator claimed the run first, or it is not in a status this claim
    /// starts from.
    #[error("run `{run_id}` is {status}{}: it is not started again{}", by_orchestrator(.orchestrator), resume_hint(.run_id, *.status))]
    AlreadyClaimed {
        /// The run.
        run_id: String,
        /// Its status.
        status: StoredStatus,
        /// Who holds it.
        orchestrator: Option<String>,
    },
    /// The run cannot be resumed in its status.
    #[error("run `{run_id}` is {status}: {}", not_resumable_reason(*.status, .orchestrator))]
    NotResumable {
        /// The run.
        run_id: String,
        /// Its status.
        status: StoredStatus,
        /// Who holds it.
        orchestrator: Option<String>,
    },
    /// The code location has no job of the run's name.
    #[error("run `{run_id}`: this worker has no job `{job}`")]
    UnknownJob {
        /// The run.
        run_id: String,
        /// The job name.
        job: String,
    },
}

fn by_orchestrator(orchestrator: &Option<String>) -> String {
    orchestrator
        .as_deref()
        .map(|o| format!(" by {o}"))
        .unwrap_or_default()
}

fn resume_hint(run_id: &str, status: StoredStatus) -> String {
    match status {
        StoredStatus::Starting | StoredStatus::Started => {
            format!("; if its orchestrator died, `stepq resume {run_id} --force` continues it")
        }
        StoredStatus::Failure | StoredStatus::Canceled => {
            format!("; `stepq resume {run_id}` re-runs what did not succeed")
        }
        _ => String::new(),
    }
}

fn not_resumable_reason(status: StoredStatus, orchestrator: &Option<String>) -> String {
    match status {
        StoredStatus::Success => "every step succeeded, there is nothing to resume".into(),
        StoredStatus::Queued => "it has not started yet; its worker will start it".into(),
        StoredStatus::Canceling => "it is being canceled; resume it once it is CANCELED".into(),
        _ => format!(
            "its orchestrator{} may still be running it; if it died (`stepq worker list`), resume with --force",
            orchestrator
                .as_deref()
                .map(|o| format!(" {o}"))
                .unwrap_or_default()
        ),
    }
}

impl LaunchError {
    /// Whether retrying may help.
    pub fn class(&self) -> ErrorClass {
        match self {
            LaunchError::Storage(e) => e.class(),
            LaunchError::Broker(e) => e.class(),
            _ => ErrorClass::Permanent,
        }
    }
}

/// Plans `job` with the record's step selection (so a bad selection is an error, not a run
/// record), checks its run id, and stores `record` (QUEUED). A taken run id is
/// [`StorageError::RunExists`]: a second run under one id never touches the first one's
/// outputs.
pub async fn create_run(
    runs: &dyn RunStore,
    job: &Arc<Job>,
    record: &RunRecord,
) -> Result<(), LaunchError> {
    ExecutionPlan::new(
        job.clone(),
        record.step_selection.as_deref(),
        &KnownState::default(),
    )
    .map_err(ExecutorError::from)?;
    check_run_id(&record.run_id)?;
    runs.create_run(record).await?;
    Ok(())
}

/// Rebuilds what a run's event log says it completed: every step with a `StepSuccess`, with
/// the outputs its successful attempt stored (`StepOutputHandled` events since that attempt
/// was queued or started), and for every step the highest attempt number queued or started,
/// so a resumed step's next attempt counts on (attempt `n + 1`). An attempt queued and then
/// skipped without starting (a step sent along with its upstream in one task) does not count:
/// it never ran and its task is done. A queued attempt with no outcome does count: its
/// message may still be delivered, and the re-run must not share its attempt number.
///
/// Events of steps that succeeded in an earlier resume are kept: a log holds every attempt
/// of every orchestrator of the run, in order.
pub fn known_state_from_events(events: &[Event]) -> KnownState {
    let mut known = KnownState::default();
    let mut handled: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut started: BTreeMap<&str, u32> = BTreeMap::new();
    for event in events {
        let Some(step) = event.step_key.as_deref() else {
            continue;
        };
        match &event.kind {
            EventKind::StepQueued { attempt, .. } | EventKind::StepStart { attempt, .. } => {
                if matches!(event.kind, EventKind::StepStart { .. }) {
                    let s = started.entry(step).or_insert(0);
                    *s = (*s).max(*attempt);
                }
                let n = known.attempts.entry(step.to_string()).or_insert(0);
                if *attempt > *n {
                    *n = *attempt;
                    handled.remove(step);
                }
            }
            EventKind::StepSkipped { .. } => {
                let ran = started.get(step).copied().unwrap_or(0);
                if ran == 0 {
                    known.attempts.remove(step);
                } else {
                    known.attempts.insert(step.to_string(), ran);
                }
            }
            EventKind::StepOutputHandled { output, .. } => {
                handled.entry(step).or_default().insert(output.clone());
            }
            EventKind::StepSuccess { .. } => {
                known.record_success(step, handled.remove(step).unwrap_or_default());
            }
            _ => {}
        }
    }
    known
}

/// Reads a run's whole event log.
pub async fn read_all_events(
    runs: &dyn RunStore,
    run_id: &str,
) -> Result<Vec<Event>, StorageError> {
    let mut events = Vec::new();
    let mut cursor = EventCursor::START;
    loop {
        let page = runs.read_events(run_id, cursor).await?;
        if page.events.is_empty() {
            return Ok(events);
        }
        events.extend(page.events);
        cursor = page.next;
    }
}

/// What the result of an `execute_job` / `resume_job` task says: how the run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunTaskOutcome {
    /// The run.
    pub run_id: String,
    /// How it ended: `SUCCESS`, `FAILURE` or `CANCELED`.
    pub status: String,
    /// The orchestrator that ran it (the worker's name).
    pub orchestrator: String,
    /// Set when the run store missed part of the run (its events or final status).
    #[serde(default)]
    pub unrecorded: Option<String>,
}

/// A run submitted as a task: its id and the handle of its orchestration task.
#[derive(Debug, Clone)]
pub struct SubmittedRun {
    /// The run id.
    pub run_id: String,
    /// The `execute_job` / `resume_job` task; its result is a [`RunTaskOutcome`].
    pub task: TaskHandle<RunTaskOutcome>,
}

/// Starts runs recorded in a run store, here or through orchestration tasks. Cheap to clone.
#[derive(Clone)]
pub struct RunLauncher {
    executor: Executor,
    runs: Arc<dyn RunStore>,
}

impl std::fmt::Debug for RunLauncher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunLauncher")
            .field("executor", &self.executor)
            .finish_non_exhaustive()
    }
}

impl RunLauncher {
    /// A launcher running `executor`'s runs, recorded in `runs`.
    pub fn new(executor: Executor, runs: Arc<dyn RunStore>) -> Self {
        RunLauncher { executor, runs }
    }

    /// The executor.
    pub fn executor(&self) -> &Executor {
        &self.executor
    }

    /// The run store.
    pub fn runs(&self) -> &Arc<dyn RunStore> {
        &self.runs
    }

    fn queue(&self) -> &TaskQueue {
        self.executor.queue()
    }

    /// Claims the recorded run of `request` with `claim` (a change to STARTING by an
    /// orchestrator), starts it, and moves it to STARTED. Its events are appended to the
    /// run's log and its record watched for CANCELING until [`RecordedRun::wait`].
    ///
    /// A lost claim is [`LaunchError::AlreadyClaimed`] and starts nothing. A request the
    /// executor refuses ends the claimed run FAILURE (with a `RunFailure` event saying why).
    pub async fn start(
        &self,
        request: RunRequest,
        claim: &StatusChange,
    ) -> Result<RecordedRun, LaunchError> {
        let run_id = request.run_id.clone();
        match self.runs.change_status(&run_id, claim).await {
            Ok(_) => {}
            Err(
                StorageError::UnexpectedStatus { .. }
                | StorageError::InvalidTransition { .. }
                | StorageError::UnexpectedOrchestrator { .. },
            ) => {
                let record = self.runs.get_run(&run_id).await?;
                return Err(LaunchError::AlreadyClaimed {
                    run_id,
                    status: record.status,
                    orchestrator: record.orchestrator,
                });
            }
            Err(e) => return Err(e.into()),
        }
        let mut handle = match self.executor.start(request) {
            Ok(handle) => handle,
            Err(e) => {
                let failure = Event::run(
                    &run_id,
                    EventKind::RunFailure {
                        errors: vec![stepq_plan::ErrorInfo::from_error("run_not_started", &e)],
                    },
                );
                let _ = self.runs.append_events(&run_id, &[failure]).await;
                let _ = self
                    .runs
                    .update_status(&run_id, StoredStatus::Failure)
                    .await;
                return Err(e.into());
            }
        };
        if let Err(e) = self
            .runs
            .update_status(&run_id, StoredStatus::Started)
            .await
        {
            // Canceled while starting (or the store failed): the run does not go on.
            handle.interrupt();
            let _ = handle.wait().await;
            let _ = self
                .runs
                .update_status(&run_id, StoredStatus::Canceled)
                .await;
            return Err(e.into());
        }
        let watcher = tokio::spawn(watch_for_cancel(
            self.runs.clone(),
            run_id.clone(),
            handle.interrupt_token(),
        ));
        let stream = handle.events().expect("a new run's event stream is there");
        let (forward_tx, forward_rx) = mpsc::channel(MAX_EVENTS_PER_BATCH);
        let recorder = tokio::spawn(record_events(
            self.runs.clone(),
            run_id.clone(),
            stream,
            forward_tx,
        ));
        Ok(RecordedRun {
            run_id,
            handle,
            events: Some(forward_rx),
            recorder,
            watcher,
            runs: self.runs.clone(),
        })
    }

    /// Stores `record` (see [`create_run`]) and enqueues an `execute_job` task for it; a
    /// worker claims and orchestrates it. If the task cannot be sent, the run ends FAILURE.
    pub async fn submit_run(
        &self,
        job: &Arc<Job>,
        record: RunRecord,
    ) -> Result<SubmittedRun, LaunchError> {
        create_run(self.runs.as_ref(), job, &record).await?;
        let args = ExecuteRunArgs {
            run_id: record.run_id.clone(),
            job_name: record.job_name.clone(),
            step_selection: record.step_selection.clone(),
            run_config: record.run_config.clone(),
        };
        let sent = async {
            let message = protocol::run_message(&args)?;
            Ok::<_, LaunchError>(self.queue().kick(message).await?)
        }
        .await;
        match sent {
            Ok(message) => Ok(self.submitted(record.run_id, &message)),
            Err(e) => {
                let _ = self
                    .runs
                    .change_status(
                        &record.run_id,
                        &StatusChange::to(StoredStatus::Failure).expecting(StoredStatus::Queued),
                    )
                    .await;
                Err(e)
            }
        }
    }

    /// Enqueues a `resume_job` task for run `run_id`. FAILURE and CANCELED runs resume; a
    /// STARTING or STARTED run only with `force` (its orchestrator died: the worker takes it
    /// over from that orchestrator, compare-and-set). Others are [`LaunchError::NotResumable`].
    pub async fn submit_resume(
        &self,
        run_id: &str,
        force: bool,
    ) -> Result<SubmittedRun, LaunchError> {
        let record = self.runs.get_run(run_id).await?;
        let resumable = match record.status {
            StoredStatus::Failure | StoredStatus::Canceled => true,
            StoredStatus::Starting | StoredStatus::Started => force,
            _ => false,
        };
        if !resumable {
            return Err(LaunchError::NotResumable {
                run_id: run_id.to_string(),
                status: record.status,
                orchestrator: record.orchestrator,
            });
        }
        let args = ResumeRunArgs {
            run_id: run_id.to_string(),
            job_name: record.job_name.clone(),
            run_config: record.run_config.clone(),
        };
        let mut message = protocol::resume_message(&args)?;
        // The state the resume was asked from: the worker claims the run only from it.
        message = message.with_label(RESUME_FROM_LABEL, record.status.as_str());
        if let Some(orchestrator) = &record.orchestrator {
            message = message.with_label(RESUME_ORCHESTRATOR_LABEL, orchestrator.clone());
        }
        let message = self.queue().kick(message).await?;
        Ok(self.submitted(run_id.to_string(), &message))
    }

    fn submitted(&self, run_id: String, message: &TaskMessage) -> SubmittedRun {
        SubmittedRun {
            run_id,
            task: TaskHandle::new(
                self.queue().clone(),
                message.task_id.clone(),
                message.task_name.clone(),
            ),
        }
    }

    /// Runs an `execute_job` task as `orchestrator`: claims the run (QUEUED -> STARTING), runs
    /// it to the end and returns a [`RunTaskOutcome`]. A run that is no longer QUEUED (a
    /// redelivered task, a canceled run) fails the task with kind [`RUN_ALREADY_CLAIMED`]
    /// and starts nothing. `find_job` looks the run's job up by name.
    pub async fn execute_run_task(
        &self,
        orchestrator: &str,
        message: &TaskMessage,
        find_job: &(dyn Fn(&str) -> Option<Arc<Job>> + Send + Sync),
    ) -> TaskOutcome {
        let args = protocol::read_run_args(message).map_err(|e| invalid_args(message, e))?;
        let Some(job) = find_job(&args.job_name) else {
            let error = LaunchError::UnknownJob {
                run_id: args.run_id.clone(),
                job: args.job_name.clone(),
            };
            self.fail_queued_run(&args.run_id, &error).await;
            return Err(task_error(RUN_NOT_STARTED, &error));
        };
        let mut request =
            RunRequest::new(args.run_id.clone(), job).with_run_config(args.run_config.clone());
        request.step_selection = args.step_selection.clone();
        let claim = StatusChange::to(StoredStatus::Starting)
            .by(orchestrator)
            .expecting(StoredStatus::Queued);
        self.orchestrate(orchestrator, request, &claim).await
    }

    /// Runs a `resume_job` task as `orchestrator`: rebuilds the run's [`KnownState`] from its
    /// event log, claims the run from the status (and orchestrator) it was submitted from,
    /// and runs only the steps of its selection that did not succeed.
    pub async fn resume_run_task(
        &self,
        orchestrator: &str,
        message: &TaskMessage,
        find_job: &(dyn Fn(&str) -> Option<Arc<Job>> + Send + Sync),
    ) -> TaskOutcome {
        let args = protocol::read_resume_args(message).map_err(|e| invalid_args(message, e))?;
        let run_id = args.run_id.clone();
        let not_started = |e: LaunchError| task_error(RUN_NOT_STARTED, &e);
        let record = self
            .runs
            .get_run(&run_id)
            .await
            .map_err(|e| not_started(e.into()))?;
        let job = find_job(&args.job_name).ok_or_else(|| {
            not_started(LaunchError::UnknownJob {
                run_id: run_id.clone(),
                job: args.job_name.clone(),
            })
        })?;
        let from = message
            .label(RESUME_FROM_LABEL)
            .and_then(|s| s.parse::<StoredStatus>().ok())
            .unwrap_or(record.status);
        let mut claim = StatusChange::to(StoredStatus::Starting)
            .by(orchestrator)
            .expecting(from);
        if from.is_takeover(StoredStatus::Starting) {
            let held_by = message
                .label(RESUME_ORCHESTRATOR_LABEL)
                .map(str::to_string)
                .or(record.orchestrator.clone())
                .unwrap_or_default();
            claim = claim.expecting_orchestrator(held_by);
        }
        let events = read_all_events(self.runs.as_ref(), &run_id)
            .await
            .map_err(|e| not_started(e.into()))?;
        let mut request = RunRequest::new(run_id, job)
            .with_run_config(args.run_config.clone())
            .with_known_state(known_state_from_events(&events));
        request.step_selection = record.step_selection.clone();
        self.orchestrate(orchestrator, request, &claim).await
    }

    /// Claims and runs a run; the task outcome says how it ended. The run goes on in its own
    /// tokio task, so a handler dropped at shutdown does not tear it down half-recorded.
    async fn orchestrate(
        &self,
        orchestrator: &str,
        request: RunRequest,
        claim: &StatusChange,
    ) -> TaskOutcome {
        let run_id = request.run_id.clone();
        let launcher = self.clone();
        let claim = claim.clone();
        let orchestrator = orchestrator.to_string();
        let run = tokio::spawn(async move {
            let run = match launcher.start(request, &claim).await {
                Ok(run) => run,
                Err(e @ LaunchError::AlreadyClaimed { .. }) => {
                    tracing::warn!(%run_id, error = %e, "not orchestrating the run");
                    return Err(task_error(RUN_ALREADY_CLAIMED, &e));
                }
                Err(e) => {
                    tracing::error!(%run_id, error = %e, "cannot start the run");
                    return Err(task_error(RUN_NOT_STARTED, &e));
                }
            };
            tracing::info!(%run_id, %orchestrator, "orchestrating the run");
            let finished = run.wait().await;
            let outcome = RunTaskOutcome {
                run_id,
                status: finished.result.status.to_string(),
                orchestrator,
                unrecorded: finished.recorded.err().map(|e| e.to_string()),
            };
            serde_json::to_value(&outcome).map_err(|e| TaskError {
                kind: RUN_NOT_STARTED.to_string(),
                message: format!("the run outcome does not encode: {e}"),
            })
        });
        match run.await {
            Ok(outcome) => outcome,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(TaskError {
                kind: RUN_NOT_STARTED.to_string(),
                message: format!("the orchestration stopped: {e}"),
            }),
        }
    }

    /// Ends a QUEUED run that cannot start FAILURE, with a `RunFailure` event saying why.
    async fn fail_queued_run(&self, run_id: &str, error: &LaunchError) {
        let change = StatusChange::to(StoredStatus::Failure).expecting(StoredStatus::Queued);
        let event = Event::run(
            run_id,
            EventKind::RunFailure {
                errors: vec![stepq_plan::ErrorInfo::from_error("run_not_started", error)],
            },
        );
        if self.runs.append_events(run_id, &[event]).await.is_ok() {
            let _ = self.runs.change_status(run_id, &change).await;
        }
    }
}

/// Label of a `resume_job` message: the run status it was submitted from.
pub const RESUME_FROM_LABEL: &str = "resume_from";
/// Label of a `resume_job` message: the orchestrator holding the run when it was submitted.
pub const RESUME_ORCHESTRATOR_LABEL: &str = "resume_orchestrator";

fn task_error(kind: &str, error: &LaunchError) -> TaskError {
    TaskError {
        kind: kind.to_string(),
        message: error.to_string(),
    }
}

fn invalid_args(message: &TaskMessage, error: ProtocolError) -> TaskError {
    TaskError {
        kind: INVALID_RUN_ARGS.to_string(),
        message: format!(
            "task `{}` ({}) has unreadable arguments: {error}",
            message.task_name, message.task_id
        ),
    }
}

/// Watches run `run_id`'s record until the run ends, and cancels `interrupt` once the record
/// is CANCELING (see the [module docs](self) for why this reads the record rather than waiting
/// for a notification). A failed read is logged and retried at the next turn.
async fn watch_for_cancel(runs: Arc<dyn RunStore>, run_id: String, interrupt: CancellationToken) {
    let mut delay = CANCEL_WATCH_FIRST_DELAY;
    loop {
        tokio::select! {
            _ = interrupt.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        match runs.get_run(&run_id).await {
            Ok(record) if record.status == StoredStatus::Canceling => {
                tracing::info!(%run_id, "the run is being canceled: interrupting it");
                interrupt.cancel();
                return;
            }
            Ok(record) if record.status.is_terminal() => return,
            Ok(_) => {}
            Err(e) => tracing::warn!(%run_id, error = %e, "cannot read the run's status"),
        }
        delay = (delay * 2).min(CANCEL_WATCH_MAX_DELAY);
    }
}

/// Reads the executor's events, appends them to the run store in batches (whatever has
/// arrived, up to [`MAX_EVENTS_PER_BATCH`]), and forwards them to `forward` while someone
/// reads it. Returns the first storage error, after draining the stream so the run is never
/// held back.
async fn record_events(
    runs: Arc<dyn RunStore>,
    run_id: String,
    mut stream: EventStream,
    forward: mpsc::Sender<Event>,
) -> Result<(), StorageError> {
    let mut first_error = None;
    let mut forwarding = true;
    let mut batch = Vec::new();
    while let Some(event) = stream.recv().await {
        batch.push(event);
        while batch.len() < MAX_EVENTS_PER_BATCH {
            match futures::FutureExt::now_or_never(stream.recv()) {
                Some(Some(event)) => batch.push(event),
                _ => break,
            }
        }
        if first_error.is_none() {
            if let Err(e) = runs.append_events(&run_id, &batch).await {
                tracing::error!(%run_id, error = %e, "cannot record run events");
                first_error = Some(e);
            }
        }
        for event in batch.drain(..) {
            if forwarding && forward.send(event).await.is_err() {
                forwarding = false;
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// A run started by [`RunLauncher::start`]: its events (also written to the run store), an
/// interrupt, and its end.
pub struct RecordedRun {
    run_id: String,
    handle: RunHandle,
    events: Option<mpsc::Receiver<Event>>,
    recorder: JoinHandle<Result<(), StorageError>>,
    watcher: JoinHandle<()>,
    runs: Arc<dyn RunStore>,
}

impl std::fmt::Debug for RecordedRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordedRun")
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
}

/// A recorded run that ended: its result, and whether it was fully recorded.
#[derive(Debug)]
pub struct RecordedOutcome {
    /// The run's result.
    pub result: RunResult,
    /// `Err` if the run store missed some of the run (its events or its final status).
    pub recorded: Result<(), StorageError>,
}

impl RecordedRun {
    /// The run id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Takes the event stream (`None` if taken). Read it to the end or drop it.
    pub fn events(&mut self) -> Option<mpsc::Receiver<Event>> {
        self.events.take()
    }

    /// A token that interrupts the run when cancelled.
    pub fn interrupt_token(&self) -> CancellationToken {
        self.handle.interrupt_token()
    }

    /// Interrupts the run (see [`RunHandle::interrupt`]).
    pub fn interrupt(&self) {
        self.handle.interrupt();
    }

    /// Waits for the run to end, for its events to be recorded, and records its final status
    /// (CANCELED for a run asked to cancel, even one that ended otherwise meanwhile: a
    /// CANCELING run can only become CANCELED).
    pub async fn wait(mut self) -> RecordedOutcome {
        drop(self.events.take());
        let result = self.handle.wait().await;
        self.watcher.abort();
        let mut recorded = match self.recorder.await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(StorageError::Io {
                path: format!("events of run {}", self.run_id),
                source: std::io::Error::other(format!("the event recorder stopped: {e}")),
            }),
        };
        let status = match result.status {
            RunStatus::Success => StoredStatus::Success,
            RunStatus::Failure => StoredStatus::Failure,
            RunStatus::Canceled => StoredStatus::Canceled,
        };
        let mut update = self.runs.update_status(&self.run_id, status).await;
        if let Err(StorageError::InvalidTransition {
            from: StoredStatus::Canceling,
            ..
        }) = update
        {
            update = self
                .runs
                .update_status(&self.run_id, StoredStatus::Canceled)
                .await;
        }
        if let Err(e) = update {
            tracing::error!(run_id = %self.run_id, error = %e, "cannot record the run's status");
            if recorded.is_ok() {
                recorded = Err(e);
            }
        }
        RecordedOutcome { result, recorded }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::InMemoryRunStore;
    use stepq_plan::ErrorInfo;

    fn ev(step: &str, kind: EventKind) -> Event {
        Event::step("r1", step, kind)
    }

    fn queued(step: &str, attempt: u32) -> Event {
        ev(
            step,
            EventKind::StepQueued {
                attempt,
                task_id: format!("{step}-{attempt}"),
            },
        )
    }

    fn handled(step: &str, output: &str) -> Event {
        ev(
            step,
            EventKind::StepOutputHandled {
                output: output.into(),
                bytes: 1,
            },
        )
    }

    fn success(step: &str) -> Event {
        ev(
            step,
            EventKind::StepSuccess {
                duration: Duration::ZERO,
            },
        )
    }

    fn failure(step: &str, will_retry: bool) -> Event {
        ev(
            step,
            EventKind::StepFailure {
                error: ErrorInfo::new("op_error", "boom"),
                will_retry,
            },
        )
    }

    #[test]
    fn known_state_keeps_successes_with_their_outputs_and_counts_attempts() {
        let events = vec![
            Event::run("r1", EventKind::RunStarted),
            queued("a", 1),
            ev(
                "a",
                EventKind::StepStart {
                    attempt: 1,
                    worker: "w".into(),
                },
            ),
            handled("a", "left"),
            handled("a", "right"),
            success("a"),
            queued("b", 1),
            // A failed attempt's stored output does not count for the later success.
            handled("b", "stale"),
            failure("b", true),
            queued("b", 2),
            handled("b", "result"),
            success("b"),
            queued("c", 1),
            failure("c", true),
            queued("c", 2),
            failure("c", false),
            ev(
                "d",
                EventKind::StepSkipped {
                    reason: stepq_plan::SkipReason::UpstreamNotSucceeded {
                        upstream: "c".into(),
                    },
                },
            ),
            queued("e", 1),
            // Sent along with its upstream, skipped without starting: no attempt used.
            queued("f", 1),
            ev(
                "f",
                EventKind::StepSkipped {
                    reason: stepq_plan::SkipReason::UpstreamNotSucceeded {
                        upstream: "c".into(),
                    },
                },
            ),
        ];
        let known = known_state_from_events(&events);
        let outputs = |step: &str| -> Vec<&str> {
            known.completed[step].iter().map(String::as_str).collect()
        };
        assert_eq!(outputs("a"), ["left", "right"]);
        assert_eq!(outputs("b"), ["result"]);
        assert_eq!(known.completed.len(), 2, "{known:?}");
        assert_eq!(
            known.attempts,
            BTreeMap::from([
                ("a".to_string(), 1),
                ("b".to_string(), 2),
                ("c".to_string(), 2),
                ("e".to_string(), 1),
            ])
        );
        assert!(!known.is_completed("d"), "skipped steps run again");
        assert_eq!(known_state_from_events(&[]), KnownState::default());
    }

    #[test]
    fn known_state_of_a_resumed_log_counts_on() {
        // First run: `x` fails on attempt 1; the resume runs attempt 2, which succeeds.
        let events = vec![
            queued("x", 1),
            failure("x", false),
            Event::run("r1", EventKind::RunFailure { errors: Vec::new() }),
            Event::run("r1", EventKind::RunStarting),
            queued("x", 2),
            handled("x", "result"),
            success("x"),
        ];
        let known = known_state_from_events(&events);
        assert!(known.is_completed("x"));
        assert_eq!(known.attempts_of("x"), 2);
    }

    #[test]
    fn launch_errors_say_what_to_do() {
        let claimed = LaunchError::AlreadyClaimed {
            run_id: "r1".into(),
            status: StoredStatus::Started,
            orchestrator: Some("w1".into()),
        };
        let text = claimed.to_string();
        assert!(text.contains("STARTED by w1"), "{text}");
        assert!(text.contains("stepq resume r1 --force"), "{text}");
        let canceled = LaunchError::AlreadyClaimed {
            run_id: "r1".into(),
            status: StoredStatus::Canceled,
            orchestrator: None,
        };
        assert!(
            canceled.to_string().contains("`stepq resume r1`"),
            "{canceled}"
        );
        let done = LaunchError::NotResumable {
            run_id: "r1".into(),
            status: StoredStatus::Success,
            orchestrator: Some("w1".into()),
        };
        assert!(done.to_string().contains("nothing to resume"), "{done}");
        let running = LaunchError::NotResumable {
            run_id: "r1".into(),
            status: StoredStatus::Started,
            orchestrator: Some("w1".into()),
        };
        assert!(running.to_string().contains("--force"), "{running}");
        assert_eq!(running.class(), ErrorClass::Permanent);
    }

    #[tokio::test]
    async fn create_run_refuses_bad_requests_before_writing() {
        let store = InMemoryRunStore::new();
        let job = Arc::new(
            Job::builder("j")
                .step(stepq_plan::StepDef::new("a", "op"))
                .build()
                .unwrap(),
        );
        let bad_step = RunRecord::new("r1", "j", serde_json::Value::Null)
            .with_step_selection(vec!["nope".into()]);
        assert!(matches!(
            create_run(&store, &job, &bad_step).await,
            Err(LaunchError::Executor(ExecutorError::Plan(_)))
        ));
        let bad_id = RunRecord::new("a/b", "j", serde_json::Value::Null);
        assert!(matches!(
            create_run(&store, &job, &bad_id).await,
            Err(LaunchError::Executor(ExecutorError::InvalidRunId { .. }))
        ));
        assert!(store.list_runs(10).await.unwrap().is_empty());
        let good = RunRecord::new("r1", "j", serde_json::Value::Null);
        create_run(&store, &job, &good).await.unwrap();
        assert!(matches!(
            create_run(&store, &job, &good).await,
            Err(LaunchError::Storage(StorageError::RunExists { .. }))
        ));
    }
}
