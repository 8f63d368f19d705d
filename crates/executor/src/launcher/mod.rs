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
//!   counting on from the log. Tasks of the attempt it replaces that the log shows queued
//!   without an outcome ([`unfinished_tasks`]; their orchestrator died, or ended the run
//!   without hearing from them) are asked to stop through the executor's [`CancelHook`](crate::CancelHook)
//!   before the resume queues anything, so a worker still running one does not run its step
//!   beside the new attempt; an `EngineEvent` in the run's log says how many.
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
mod resume;
mod submit;
mod task;

use std::sync::Arc;
use std::time::Duration;

use stepq_broker::TaskQueue;
use stepq_plan::{Event, EventKind, ExecutionPlan, Job, KnownState};

use crate::error::ExecutorError;
use crate::executor::{check_run_id, Executor, RunRequest};
use crate::storage::{RunRecord, RunStatus as StoredStatus, RunStore, StatusChange, StorageError};

// Lives in `storage` (it is a plain log read); kept here for existing callers.
pub use crate::storage::read_all_events;
pub use error::{LaunchError, INVALID_RUN_ARGS, RUN_ALREADY_CLAIMED, RUN_NOT_STARTED};
pub use known_state::{known_state_from_events, unfinished_tasks};
pub use recorded::{
    RecordedOutcome, RecordedRun, CANCEL_WATCH_MAX_DELAY, DEFAULT_EVENT_LINGER,
    MAX_EVENTS_PER_BATCH, RECORD_RETRY_FOR,
};
pub use submit::{RunTaskOutcome, SubmittedRun, RESUME_FROM_LABEL, RESUME_ORCHESTRATOR_LABEL};

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
        self.start_replacing(request, claim, &[]).await
    }

    /// [`RunLauncher::start`], asking `stale_tasks` (tasks of an earlier attempt of the run
    /// that may still be queued or running, see [`unfinished_tasks`]) to stop once the claim
    /// is won and before the executor queues its first step.
    async fn start_replacing(
        &self,
        request: RunRequest,
        claim: &StatusChange,
        stale_tasks: &[String],
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
        // STARTED is recorded before the first step is sent, so a step that runs is never
        // seen under a STARTING run; canceled while starting (or the store failed): the run
        // does not go on.
        if let Err(e) = self
            .runs
            .update_status(&run_id, StoredStatus::Started)
            .await
        {
            let _ = self
                .runs
                .update_status(&run_id, StoredStatus::Canceled)
                .await;
            return Err(e.into());
        }
        if !stale_tasks.is_empty() {
            self.stop_stale_tasks(&run_id, stale_tasks).await;
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
        Ok(RecordedRun::record(
            self.runs.clone(),
            run_id,
            handle,
            self.event_linger,
        ))
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
}
