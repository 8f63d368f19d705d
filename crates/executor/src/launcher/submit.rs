//! Submitting runs as tasks for a worker to orchestrate: [`RunLauncher::submit_run`]
//! (`execute_job`), [`RunLauncher::submit_resume`] (`resume_job`, with the labels saying what
//! it was submitted from), and what such a task hands back ([`SubmittedRun`],
//! [`RunTaskOutcome`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use stepq_broker::{TaskHandle, TaskMessage};
use stepq_plan::{ExecuteRunArgs, Job, ResumeRunArgs};

use super::resume::check_resumable;
use super::{create_run, LaunchError, RunLauncher};
use crate::protocol;
use crate::storage::{RunRecord, RunStatus as StoredStatus, StatusChange};

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

impl RunLauncher {
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
            let message = with_run_priority(protocol::run_message(&args)?, &record);
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
        let mut message = with_run_priority(protocol::resume_message(&args)?, &record);
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
}

/// Label of a `resume_job` message: the run status it was submitted from.
pub const RESUME_FROM_LABEL: &str = "resume_from";
/// Label of a `resume_job` message: the orchestrator holding the run when it was submitted.
pub const RESUME_ORCHESTRATOR_LABEL: &str = "resume_orchestrator";

/// `message` (a run's orchestration task) at the run's priority level (its `stepq/priority`
/// tag), so it goes to that level's lane and its orchestrator sends the run's steps there.
fn with_run_priority(message: TaskMessage, record: &RunRecord) -> TaskMessage {
    match record.tags.get(protocol::PRIORITY_TAG) {
        Some(level) => message.with_label(stepq_broker::routing::PRIORITY_LABEL, level.clone()),
        None => message,
    }
}
