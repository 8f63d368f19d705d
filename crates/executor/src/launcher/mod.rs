//! The run launcher: runs recorded in a [`RunStore`], started in this process or submitted as
//! `execute_job` / `resume_job` tasks for a worker to orchestrate.
//!
//! - [`create_run`] plans a request and stores its run record (QUEUED); a bad job, selection
//!   or run id is an error before anything is written.
//! - [`RunLauncher::start`] claims a recorded run with a compare-and-set status change (to
//!   STARTING by an orchestrator, then STARTED), starts the [`Executor`] for it, appends its
//!   events to the run's log in batches (up to [`MAX_EVENTS_PER_BATCH`] events collected for
//!   at most [`DEFAULT_EVENT_LINGER`], a run's last event at once), watches the record so a
//!   run moved to CANCELING (by `stepq cancel`) is interrupted, and records its final status
//!   ([`RecordedRun::wait`]).
//! - [`RunLauncher::resume`] resumes a run in this process (what `stepq resume` does on the
//!   embedded default, or with `--here`).
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

mod error;
mod known_state;
mod recorded;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stepq_broker::{TaskHandle, TaskMessage, TaskOutcome, TaskQueue};
use stepq_plan::{Event, EventKind, ExecuteRunArgs, ExecutionPlan, Job, KnownState, ResumeRunArgs};
use stepq_results::{FailureKind, TaskError};

use crate::error::ExecutorError;
use crate::executor::{check_run_id, Executor, RunRequest};
use crate::protocol::{self, ProtocolError};
use crate::storage::{RunRecord, RunStatus as StoredStatus, RunStore, StatusChange, StorageError};

// Lives in `storage` (it is a plain log read); kept here for existing callers.
pub use crate::storage::read_all_events;
pub use error::{LaunchError, INVALID_RUN_ARGS, RUN_ALREADY_CLAIMED, RUN_NOT_STARTED};
pub use known_state::known_state_from_events;
pub use recorded::{
    RecordedOutcome, RecordedRun, CANCEL_WATCH_MAX_DELAY, DEFAULT_EVENT_LINGER,
    MAX_EVENTS_PER_BATCH,
};

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
    event_linger: Duration,
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
        RunLauncher {
            executor,
            runs,
            event_linger: DEFAULT_EVENT_LINGER,
        }
    }

    /// Collects a run's events for up to `linger` after the first of a batch before appending
    /// them to the run store as one batch (default [`DEFAULT_EVENT_LINGER`]; zero appends
    /// whatever has arrived at each wake-up). A run-terminal event and the end of the run
    /// flush at once; [`RecordedRun::events`] gets each event as it arrives either way.
    pub fn with_event_linger(mut self, linger: Duration) -> Self {
        self.event_linger = linger;
        self
    }

    /// How long a batch of events lingers (see [`RunLauncher::with_event_linger`]).
    pub fn event_linger(&self) -> Duration {
        self.event_linger
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
        let handle = match self.executor.start(request) {
            Ok(handle) => handle,
            Err(e) => {
                let failure = Event::run(
                    &run_id,
                    EventKind::RunFailure {
                        errors: vec![stepq_plan::ErrorInfo::from_error(RUN_NOT_STARTED, &e)],
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
        Ok(RecordedRun::record(
            self.runs.clone(),
            run_id,
            handle,
            self.event_linger,
        ))
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
        check_resumable(&record, force)?;
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
        let held_by = message
            .label(RESUME_ORCHESTRATOR_LABEL)
            .map(str::to_string)
            .or(record.orchestrator.clone());
        let (request, claim) = self
            .resume_request(
                &record,
                job,
                args.run_config.clone(),
                orchestrator,
                from,
                held_by,
            )
            .await
            .map_err(not_started)?;
        self.orchestrate(orchestrator, request, &claim).await
    }

    /// Resumes run `run_id` of `job` in this process as `orchestrator`: the same rules as
    /// [`RunLauncher::submit_resume`] (FAILURE and CANCELED runs resume; a STARTING or
    /// STARTED run only with `force`, taken over from its orchestrator by compare-and-set;
    /// others are [`LaunchError::NotResumable`]), and the same run as a worker's
    /// `resume_job` task: the known state rebuilt from the run's event log, the step
    /// selection and run config of its record. It is started with [`RunLauncher::start`]
    /// (events recorded, record watched for CANCELING).
    ///
    /// A `job` that is not the run's job is [`LaunchError::UnknownJob`]; a run that changed
    /// meanwhile (another resume won) is [`LaunchError::AlreadyClaimed`].
    pub async fn resume(
        &self,
        run_id: &str,
        orchestrator: &str,
        force: bool,
        job: Arc<Job>,
    ) -> Result<RecordedRun, LaunchError> {
        let record = self.runs.get_run(run_id).await?;
        check_resumable(&record, force)?;
        if job.name() != record.job_name {
            return Err(LaunchError::UnknownJob {
                run_id: run_id.to_string(),
                job: record.job_name,
            });
        }
        let (request, claim) = self
            .resume_request(
                &record,
                job,
                record.run_config.clone(),
                orchestrator,
                record.status,
                record.orchestrator.clone(),
            )
            .await?;
        self.start(request, &claim).await
    }

    /// The request and claim of a resume of `record` by `orchestrator`: the run's known
    /// state from its event log, its step selection, `run_config`; claimed from status
    /// `from` (and, for a takeover of a STARTING / STARTED run, from orchestrator `held_by`).
    async fn resume_request(
        &self,
        record: &RunRecord,
        job: Arc<Job>,
        run_config: serde_json::Value,
        orchestrator: &str,
        from: StoredStatus,
        held_by: Option<String>,
    ) -> Result<(RunRequest, StatusChange), LaunchError> {
        let mut claim = StatusChange::to(StoredStatus::Starting)
            .by(orchestrator)
            .expecting(from);
        if from.is_takeover(StoredStatus::Starting) {
            claim = claim.expecting_orchestrator(held_by.unwrap_or_default());
        }
        let events = read_all_events(self.runs.as_ref(), &record.run_id).await?;
        let mut request = RunRequest::new(record.run_id.clone(), job)
            .with_run_config(run_config)
            .with_known_state(known_state_from_events(&events));
        request.step_selection = record.step_selection.clone();
        Ok((request, claim))
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
                kind: RUN_NOT_STARTED,
                message: format!("the run outcome does not encode: {e}"),
            })
        });
        match run.await {
            Ok(outcome) => outcome,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(TaskError {
                kind: RUN_NOT_STARTED,
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
                errors: vec![stepq_plan::ErrorInfo::from_error(RUN_NOT_STARTED, error)],
            },
        );
        if self.runs.append_events(run_id, &[event]).await.is_ok() {
            let _ = self.runs.change_status(run_id, &change).await;
        }
    }
}

/// FAILURE and CANCELED runs resume; a STARTING or STARTED run only with `force` (its
/// orchestrator died); others are [`LaunchError::NotResumable`].
fn check_resumable(record: &RunRecord, force: bool) -> Result<(), LaunchError> {
    let resumable = match record.status {
        StoredStatus::Failure | StoredStatus::Canceled => true,
        StoredStatus::Starting | StoredStatus::Started => force,
        _ => false,
    };
    if resumable {
        Ok(())
    } else {
        Err(LaunchError::NotResumable {
            run_id: record.run_id.clone(),
            status: record.status,
            orchestrator: record.orchestrator.clone(),
        })
    }
}

/// Label of a `resume_job` message: the run status it was submitted from.
pub const RESUME_FROM_LABEL: &str = "resume_from";
/// Label of a `resume_job` message: the orchestrator holding the run when it was submitted.
pub const RESUME_ORCHESTRATOR_LABEL: &str = "resume_orchestrator";

fn task_error(kind: FailureKind, error: &LaunchError) -> TaskError {
    TaskError {
        kind,
        message: error.to_string(),
    }
}

fn invalid_args(message: &TaskMessage, error: ProtocolError) -> TaskError {
    TaskError {
        kind: INVALID_RUN_ARGS,
        message: format!(
            "task `{}` ({}) has unreadable arguments: {error}",
            message.task_name, message.task_id
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::InMemoryRunStore;

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

    fn launcher_on(store: &Arc<InMemoryRunStore>) -> RunLauncher {
        let queue = TaskQueue::new(
            Arc::new(stepq_broker::InMemoryBroker::new()),
            Arc::new(stepq_results::InMemoryResultBackend::new()),
        );
        let outputs = Arc::new(stepq_results::InMemoryOutputStore::new());
        let executor =
            Executor::new(queue, outputs, crate::config::ExecutorConfig::default()).unwrap();
        RunLauncher::new(executor, store.clone())
    }

    /// Run `run_id` of the one-step job `j`, whose step `a` succeeded in its log, in `status`
    /// (held by `dead` when STARTED).
    async fn recorded(store: &InMemoryRunStore, run_id: &str, status: StoredStatus) {
        store
            .create_run(&RunRecord::new(run_id, "j", serde_json::json!({ "k": 1 })))
            .await
            .unwrap();
        let step = |kind| Event::step(run_id, "a", kind);
        let log = [
            step(EventKind::StepQueued {
                attempt: 1,
                task_id: "t1".into(),
            }),
            step(EventKind::StepOutputHandled {
                output: "result".into(),
                bytes: 1,
            }),
            step(EventKind::StepSuccess {
                duration: Duration::ZERO,
            }),
        ];
        store.append_events(run_id, &log).await.unwrap();
        match status {
            StoredStatus::Started => {
                let claim = StatusChange::to(StoredStatus::Starting).by("dead");
                store.change_status(run_id, &claim).await.unwrap();
                store
                    .update_status(run_id, StoredStatus::Started)
                    .await
                    .unwrap();
            }
            StoredStatus::Queued => {}
            other => {
                store.update_status(run_id, other).await.unwrap();
            }
        }
    }

    #[tokio::test]
    async fn resume_follows_the_resume_rules_and_claims_from_the_current_holder() {
        let store = Arc::new(InMemoryRunStore::new());
        let launcher = launcher_on(&store);
        let job = Arc::new(
            Job::builder("j")
                .step(stepq_plan::StepDef::new("a", "op").output("result"))
                .build()
                .unwrap(),
        );
        recorded(&store, "canceled", StoredStatus::Canceled).await;
        recorded(&store, "started", StoredStatus::Started).await;
        recorded(&store, "queued", StoredStatus::Queued).await;

        for (run_id, force) in [("started", false), ("queued", true)] {
            match launcher.resume(run_id, "me", force, job.clone()).await {
                Err(LaunchError::NotResumable { run_id: r, .. }) => assert_eq!(r, run_id),
                other => panic!("{run_id}: {other:?}"),
            }
        }
        let other_job = Arc::new(
            Job::builder("other")
                .step(stepq_plan::StepDef::new("a", "op"))
                .build()
                .unwrap(),
        );
        match launcher.resume("canceled", "me", false, other_job).await {
            Err(LaunchError::UnknownJob { job, .. }) => assert_eq!(job, "j"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            launcher.resume("nope", "me", true, job.clone()).await,
            Err(LaunchError::Storage(StorageError::RunNotFound { .. }))
        ));
        assert_eq!(
            store.get_run("started").await.unwrap().status,
            StoredStatus::Started,
            "refusals touch nothing"
        );

        // `a` succeeded in the log: nothing runs again (no worker needed), the run ends
        // SUCCESS, claimed by `me` (a takeover from `dead` with force).
        for run_id in ["canceled", "started"] {
            let run = launcher
                .resume(run_id, "me", true, job.clone())
                .await
                .unwrap();
            assert_eq!(run.step_count(), 0, "{run_id}");
            let done = run.wait().await;
            assert_eq!(done.result.status, crate::RunStatus::Success, "{run_id}");
            let record = store.get_run(run_id).await.unwrap();
            assert_eq!(record.status, StoredStatus::Success, "{run_id}");
            assert_eq!(record.orchestrator.as_deref(), Some("me"), "{run_id}");
        }
    }
}
