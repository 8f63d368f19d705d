//! The run-launching half of [`App`]: runs started, resumed or submitted as tasks and recorded
//! in the run store, and the orchestration handlers every worker service registers.

use std::collections::BTreeMap;
use std::sync::Arc;

use stepq_broker::{TaskContext, TaskHandler};
use stepq_executor::control::{orchestrator_name, LostOrchestrator};
use stepq_executor::launcher::{create_run, RecordedRun, RunLauncher, SubmittedRun};
use stepq_executor::storage::{RunRecord, RunStatus as StoredStatus, StatusChange, StorageError};
use stepq_executor::{protocol, Executor, RunRequest, RunResult};
use stepq_plan::{Event, Job};
use stepq_worker::CodeLocation;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[cfg(doc)]
use stepq_executor::LaunchError;

use super::{App, AppError};

/// How to start a run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Run id; a fresh UUID when unset.
    pub run_id: Option<String>,
    /// Steps to run; every step when unset.
    pub step_selection: Option<Vec<String>>,
    /// Free-form run config handed to every op.
    pub run_config: serde_json::Value,
    /// Tags stored on the run record.
    pub tags: BTreeMap<String, String>,
}

impl App {
    /// Starts a run of `job` from `location` with `executor`, recording it (record, status
    /// and every event) in the run store as it goes, orchestrated by this process.
    pub async fn launch(
        &self,
        executor: &Executor,
        location: &CodeLocation,
        job: &str,
        options: RunOptions,
    ) -> Result<LaunchedRun, AppError> {
        let job = self.routed_job(location, job, &options.tags)?;
        let record = new_run_record(&job, options);
        // Plans first: a bad selection or run id is an error, not a run record.
        create_run(self.backends.runs.as_ref(), &job, &record).await?;
        let mut request = RunRequest::new(record.run_id.clone(), job.clone())
            .with_run_config(record.run_config.clone());
        request.step_selection = record.step_selection.clone();
        request.priority = record.tags.get(protocol::PRIORITY_TAG).cloned();
        let claim = StatusChange::to(StoredStatus::Starting)
            .by(orchestrator_name())
            .expecting(StoredStatus::Queued);
        let run = RunLauncher::new(executor.clone(), self.backends.runs.clone())
            .start(request, &claim)
            .await?;
        Ok(LaunchedRun {
            job,
            run,
            taken_over_from: None,
        })
    }

    /// Resumes run `run_id` in this process with `executor`, like [`App::launch`] starts a
    /// run: its job (by the record's job name) from `location`, the steps that did not
    /// succeed re-run (attempt numbers counting on), recorded in the run store, orchestrated
    /// by this process ([`RunLauncher::resume`]). FAILURE and CANCELED runs resume; a
    /// STARTING or STARTED run with `force`, or without it when its orchestrator's heartbeat
    /// is lost ([`App::check_takeover`]; [`LaunchedRun::taken_over_from`] then says from
    /// whom). Errors: [`StorageError::RunNotFound`], [`AppError::UnknownJob`],
    /// [`ControlError::TakeoverRefused`](stepq_executor::control::ControlError::TakeoverRefused) (as [`AppError::Control`]), [`LaunchError::NotResumable`] (as
    /// [`AppError::Launch`]) for a run in another status.
    pub async fn resume_here(
        &self,
        executor: &Executor,
        location: &CodeLocation,
        run_id: &str,
        force: bool,
    ) -> Result<LaunchedRun, AppError> {
        let record = self.backends.runs.get_run(run_id).await?;
        let job = self.routed_job(location, &record.job_name, &record.tags)?;
        let lost = self.control().check_takeover(&record, force).await?;
        let run = RunLauncher::new(executor.clone(), self.backends.runs.clone())
            .resume(
                run_id,
                &orchestrator_name(),
                force || lost.is_some(),
                job.clone(),
            )
            .await?;
        Ok(LaunchedRun {
            job,
            run,
            taken_over_from: lost,
        })
    }

    /// Job `name` of `location`, its steps' routing tags and the run's priority (its
    /// `stepq/priority` tag in `run_tags`) checked against `[queues]` and `[priority]`.
    fn routed_job(
        &self,
        location: &CodeLocation,
        name: &str,
        run_tags: &BTreeMap<String, String>,
    ) -> Result<Arc<Job>, AppError> {
        let job = find_job(location, name)?;
        let routing = self.config.routing()?;
        routing.check_job(&job)?;
        if let Some(level) = run_tags.get(protocol::PRIORITY_TAG) {
            routing
                .check_level(level)
                .map_err(|reason| AppError::Priority {
                    level: level.clone(),
                    reason,
                })?;
        }
        Ok(job)
    }

    /// The run launcher of this app: its [`executor`](App::executor) and run store.
    pub fn launcher(&self) -> Result<RunLauncher, AppError> {
        Ok(RunLauncher::new(
            self.executor(None)?,
            self.backends.runs.clone(),
        ))
    }

    /// Submits a run of `job` as an `execute_job` task and returns at once: the run record
    /// (QUEUED, with its tags, run config and step selection) is stored, then the task is
    /// enqueued; a worker service built by [`App::worker_service`] claims and orchestrates the run. An unknown
    /// job, a bad step selection or run id fails before anything is written.
    ///
    /// On the embedded default the in-memory queue only reaches workers of this process.
    pub async fn submit_run(
        &self,
        location: &CodeLocation,
        job: &str,
        options: RunOptions,
    ) -> Result<SubmittedRun, AppError> {
        let job = self.routed_job(location, job, &options.tags)?;
        let record = new_run_record(&job, options);
        Ok(self.launcher()?.submit_run(&job, record).await?)
    }

    /// Submits a `resume_job` task for run `run_id`: a worker re-runs the steps that did not
    /// succeed, reusing the stored outputs of those that did. FAILURE and CANCELED runs
    /// resume; a STARTING or STARTED run (its orchestrator died) only with `force`. Errors:
    /// [`StorageError::RunNotFound`], and [`LaunchError::NotResumable`] (as
    /// [`AppError::Launch`]) for a run in another status (a SUCCESS run has nothing to resume).
    pub async fn submit_resume(&self, run_id: &str, force: bool) -> Result<SubmittedRun, AppError> {
        Ok(self.launcher()?.submit_resume(run_id, force).await?)
    }

    /// Runs `job` to the end on the embedded default's shape: `workers` in-process workers
    /// (none when 0; then workers elsewhere must serve the queue), recorded in the run store.
    pub async fn run_with_local_workers(
        &self,
        location: Arc<CodeLocation>,
        job: &str,
        options: RunOptions,
        workers: usize,
    ) -> Result<FinishedRun, AppError> {
        let local = if workers > 0 {
            Some(self.start_local_workers(location.clone(), workers)?)
        } else {
            None
        };
        let executor = self.executor(local.as_ref().map(|l| l.cancel_hook()))?;
        let launched = self.launch(&executor, &location, job, options).await;
        let finished = match launched {
            Ok(run) => Ok(run.wait().await),
            Err(e) => Err(e),
        };
        if let Some(local) = local {
            local.shutdown().await?;
        }
        finished
    }
}

/// Looks a job up, or says which jobs there are.
pub fn find_job(location: &CodeLocation, name: &str) -> Result<Arc<Job>, AppError> {
    location.job(name).ok_or_else(|| AppError::UnknownJob {
        job: name.to_string(),
        known: location.job_names().collect::<Vec<_>>().join(", "),
    })
}

/// The QUEUED record of a new run of `job` with `options` (a fresh UUID unless a run id is
/// given).
fn new_run_record(job: &Job, options: RunOptions) -> RunRecord {
    let run_id = options
        .run_id
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut record = RunRecord::new(run_id, job.name(), options.run_config);
    record.tags = options.tags;
    record.step_selection = options.step_selection;
    record
}

/// The handler of `execute_job` (or, with `resume`, `resume_job`) tasks on a worker named
/// `name`: it orchestrates the run with `launcher`, looking its job up in `location`.
pub(super) fn orchestration_handler(
    resume: bool,
    launcher: RunLauncher,
    location: Arc<CodeLocation>,
    name: String,
) -> TaskHandler {
    Arc::new(move |task: TaskContext| {
        let (launcher, location, name) = (launcher.clone(), location.clone(), name.clone());
        Box::pin(async move {
            let find = move |job: &str| location.job(job);
            if resume {
                launcher.resume_run_task(&name, &task.message, &find).await
            } else {
                launcher.execute_run_task(&name, &task.message, &find).await
            }
        })
    })
}

/// A run started by [`App::launch`]: its events (also written to the run store), an
/// interrupt, and its end.
pub struct LaunchedRun {
    job: Arc<Job>,
    run: RecordedRun,
    taken_over_from: Option<LostOrchestrator>,
}

impl std::fmt::Debug for LaunchedRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchedRun")
            .field("run_id", &self.run.run_id())
            .field("job", &self.job.name())
            .finish_non_exhaustive()
    }
}

/// A run that ended: its result, and whether it was fully recorded.
#[derive(Debug)]
pub struct FinishedRun {
    /// The job.
    pub job: Arc<Job>,
    /// The run's result.
    pub result: RunResult,
    /// `Err` if the run store missed some of the run (its events or its final status).
    pub recorded: Result<(), StorageError>,
}

impl LaunchedRun {
    /// The run id.
    pub fn run_id(&self) -> &str {
        self.run.run_id()
    }

    /// How many steps run (for a resume, only those that run again).
    pub fn step_count(&self) -> usize {
        self.run.step_count()
    }

    /// For a resume that took the run over from a lost orchestrator: which, and when it was
    /// last heard of.
    pub fn taken_over_from(&self) -> Option<&LostOrchestrator> {
        self.taken_over_from.as_ref()
    }

    /// The job.
    pub fn job(&self) -> &Arc<Job> {
        &self.job
    }

    /// Takes the event stream (`None` if taken). Read it to the end or drop it.
    pub fn events(&mut self) -> Option<mpsc::Receiver<Event>> {
        self.run.events()
    }

    /// A token that interrupts the run when cancelled.
    pub fn interrupt_token(&self) -> CancellationToken {
        self.run.interrupt_token()
    }

    /// Interrupts the run (see [`stepq_executor::RunHandle::interrupt`]).
    pub fn interrupt(&self) {
        self.run.interrupt();
    }

    /// Waits for the run to end, for its events to be recorded, and records its final status
    /// (see [`RecordedRun::wait`]).
    pub async fn wait(self) -> FinishedRun {
        let outcome = self.run.wait().await;
        FinishedRun {
            job: self.job,
            result: outcome.result,
            recorded: outcome.recorded,
        }
    }
}
