//! Running orchestration tasks on a worker: [`RunLauncher::execute_run_task`] (`execute_job`)
//! and [`RunLauncher::resume_run_task`] (`resume_job`) claim the run, orchestrate it in its
//! own tokio task, and turn how it ended into the task's [`RunTaskOutcome`].

use std::sync::Arc;

use stepq_broker::{TaskMessage, TaskOutcome};
use stepq_plan::{Event, EventKind, Job};
use stepq_results::{FailureKind, TaskError};

use super::resume::Resume;
use super::{
    LaunchError, RunLauncher, RunTaskOutcome, INVALID_RUN_ARGS, RESUME_FROM_LABEL,
    RESUME_ORCHESTRATOR_LABEL, RUN_ALREADY_CLAIMED, RUN_NOT_STARTED,
};
use crate::executor::RunRequest;
use crate::protocol::{self, ProtocolError};
use crate::storage::{RunStatus as StoredStatus, StatusChange};

impl RunLauncher {
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
        request.priority = message
            .label(stepq_broker::routing::PRIORITY_LABEL)
            .map(str::to_string);
        let claim = StatusChange::to(StoredStatus::Starting)
            .by(orchestrator)
            .expecting(StoredStatus::Queued);
        let start = Resume {
            request,
            claim,
            stale_tasks: Vec::new(),
        };
        self.orchestrate(orchestrator, start).await
    }

    /// Runs a `resume_job` task as `orchestrator`: rebuilds the run's [`KnownState`] from its
    /// event log, claims the run from the status (and orchestrator) it was submitted from,
    /// and runs only the steps of its selection that did not succeed.
    ///
    /// [`KnownState`]: stepq_plan::KnownState
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
        let resume = self
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
        self.orchestrate(orchestrator, resume).await
    }

    /// Claims and runs a run (stopping the tasks left by the attempt it replaces, if any);
    /// the task outcome says how it ended. The run goes on in its own tokio task, so a
    /// handler dropped at shutdown does not tear it down half-recorded.
    async fn orchestrate(&self, orchestrator: &str, start: Resume) -> TaskOutcome {
        let run_id = start.request.run_id.clone();
        let launcher = self.clone();
        let orchestrator = orchestrator.to_string();
        let run = tokio::spawn(async move {
            let run = match launcher.start_resume(start).await {
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
