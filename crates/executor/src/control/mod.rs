//! Run control: what `stepq cancel` and `stepq resume` do to a recorded run from any process,
//! beside its orchestrator.
//!
//! - [`RunControl::request_cancel`]: a QUEUED run goes straight to CANCELED; a STARTING or
//!   STARTED one goes to CANCELING, and its orchestrator (which watches its record, see
//!   [`crate::launcher`]) interrupts it and ends it CANCELED.
//! - [`RunControl::force_cancel`]: ends a run stuck CANCELING because its orchestrator died.
//! - [`RunControl::check_takeover`] / [`RunControl::orchestrator_state`]: whether a STARTING /
//!   STARTED run may be taken over (resumed) without `force`, because its orchestrator's
//!   worker heartbeat is LOST, or it is a `stepq run` process of this machine that no longer
//!   runs ([`takeover`]).
//!
//! Every change is a compare-and-set on the run record, so two processes controlling one run
//! never both win.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use stepq_executor::control::RunControl;
//! use stepq_executor::storage::{InMemoryHeartbeatStore, InMemoryRunStore, RunRecord, RunStatus, RunStore};
//!
//! let runs = Arc::new(InMemoryRunStore::new());
//! runs.create_run(&RunRecord::new("r1", "etl", serde_json::json!({}))).await.unwrap();
//! let control = RunControl::new(runs.clone(), Arc::new(InMemoryHeartbeatStore::new()), Duration::from_secs(10));
//! // Nobody claimed the run yet: cancelling it ends it at once.
//! let record = control.request_cancel("r1").await.unwrap();
//! assert_eq!(record.status, RunStatus::Canceled);
//! # });
//! ```

pub mod takeover;

use std::sync::Arc;
use std::time::Duration;

use stepq_plan::{Event, EventKind};
use stepq_runs::{
    HeartbeatStore, RunRecord, RunStatus, RunStore, StatusChange, StorageError, WorkerHealth,
};

pub use takeover::{
    orchestrator_name, LostOrchestrator, ProcessProbe, TakeoverRefused, DEFAULT_PROCESS_PROBE,
};

/// How many times [`RunControl::request_cancel`] re-reads a run whose status changed under it.
const CANCEL_REQUEST_ATTEMPTS: usize = 5;

/// Why a control operation on a run was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The run store or heartbeat store failed (an unknown run is
    /// [`StorageError::RunNotFound`]).
    #[error("run store: {0}")]
    Storage(#[from] StorageError),
    /// A cancel was asked for a run that has already ended.
    #[error("run `{run_id}` already ended {status}: there is nothing to cancel")]
    RunEnded {
        /// The run.
        run_id: String,
        /// How it ended.
        status: RunStatus,
    },
    /// `stepq cancel --force` on a run that is not stuck CANCELING.
    #[error("run `{run_id}` is {status}, not CANCELING: --force only ends a run stuck CANCELING; `stepq cancel {run_id}` (without --force) asks its orchestrator to cancel it")]
    NotCanceling {
        /// The run.
        run_id: String,
        /// Its status.
        status: RunStatus,
    },
    /// A STARTING / STARTED run whose orchestrator is not shown dead is not taken over
    /// without `force` (see [`RunControl::check_takeover`]).
    #[error("run `{run_id}` is {status}: {}", .reason.explain(.run_id, .orchestrator.as_deref()))]
    TakeoverRefused {
        /// The run.
        run_id: String,
        /// Its status.
        status: RunStatus,
        /// Who holds it.
        orchestrator: Option<String>,
        /// Why it is not taken over.
        reason: TakeoverRefused,
    },
}

/// Cancels, force-cancels and checks takeovers of recorded runs (see the [module docs](self)).
#[derive(Clone)]
pub struct RunControl {
    runs: Arc<dyn RunStore>,
    heartbeats: Arc<dyn HeartbeatStore>,
    health_interval: Duration,
    process_probe: ProcessProbe,
}

impl std::fmt::Debug for RunControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunControl")
            .field("health_interval", &self.health_interval)
            .finish_non_exhaustive()
    }
}

impl RunControl {
    /// Control over the runs of `runs`; orchestrators' liveness is read from `heartbeats`,
    /// a worker being LOST after three missed `health_interval`s.
    pub fn new(
        runs: Arc<dyn RunStore>,
        heartbeats: Arc<dyn HeartbeatStore>,
        health_interval: Duration,
    ) -> Self {
        RunControl {
            runs,
            heartbeats,
            health_interval,
            process_probe: Arc::new(DEFAULT_PROCESS_PROBE),
        }
    }

    /// Uses `probe` to tell whether a process of this machine runs (for `stepq run`
    /// orchestrators, which write no heartbeat). The default, [`DEFAULT_PROCESS_PROBE`],
    /// reads `/proc` on Linux and assumes every process runs elsewhere.
    pub fn with_process_probe(mut self, probe: ProcessProbe) -> Self {
        self.process_probe = probe;
        self
    }

    /// The run store.
    pub fn runs(&self) -> &Arc<dyn RunStore> {
        &self.runs
    }

    /// Asks for run `run_id` to be cancelled: a QUEUED run (no orchestrator yet) goes straight
    /// to CANCELED; a STARTING or STARTED one goes to CANCELING, and its orchestrator, which
    /// watches its record, interrupts it, cancels its in-flight steps and ends it CANCELED.
    /// A run already CANCELING is left as it is. Returns the record after the change.
    ///
    /// Errors: [`StorageError::RunNotFound`] for an unknown run, [`ControlError::RunEnded`]
    /// for a run that already ended.
    pub async fn request_cancel(&self, run_id: &str) -> Result<RunRecord, ControlError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let record = self.runs.get_run(run_id).await?;
            let change = match record.status {
                RunStatus::Canceling => return Ok(record),
                status if status.is_terminal() => {
                    return Err(ControlError::RunEnded {
                        run_id: run_id.to_string(),
                        status,
                    })
                }
                RunStatus::Queued => {
                    StatusChange::to(RunStatus::Canceled).expecting(RunStatus::Queued)
                }
                status => StatusChange::to(RunStatus::Canceling).expecting(status),
            };
            match self.runs.change_status(run_id, &change).await {
                Ok(record) => return Ok(record),
                // Its status changed between the read and the write: read it again.
                Err(
                    StorageError::UnexpectedStatus { .. } | StorageError::InvalidTransition { .. },
                ) if attempt < CANCEL_REQUEST_ATTEMPTS => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Ends run `run_id`, stuck CANCELING because its orchestrator died, CANCELED without its
    /// orchestrator: appends an `EngineEvent` saying so (naming `by`, who forces it) and a
    /// `RunCanceled` event, then moves the run CANCELING -> CANCELED with a compare-and-set on
    /// its status and orchestrator (what `stepq cancel --force` does). Steps the dead
    /// orchestrator had in flight are not cancelled on their workers here (run control has no
    /// cancel hook); a later resume of the run asks them to stop before it queues anything
    /// (see [`crate::launcher`]). Returns the record after the change.
    ///
    /// Errors: [`StorageError::RunNotFound`] for an unknown run, [`ControlError::RunEnded`]
    /// for a run that already ended, [`ControlError::NotCanceling`] for any other status.
    pub async fn force_cancel(&self, run_id: &str, by: &str) -> Result<RunRecord, ControlError> {
        let record = self.runs.get_run(run_id).await?;
        match record.status {
            RunStatus::Canceling => {}
            status if status.is_terminal() => {
                return Err(ControlError::RunEnded {
                    run_id: run_id.to_string(),
                    status,
                })
            }
            status => {
                return Err(ControlError::NotCanceling {
                    run_id: run_id.to_string(),
                    status,
                })
            }
        }
        let mut change = StatusChange::to(RunStatus::Canceled).expecting(RunStatus::Canceling);
        if let Some(orchestrator) = &record.orchestrator {
            change = change.expecting_orchestrator(orchestrator.clone());
        }
        let message = format!(
            "force-canceled by `stepq cancel --force` from {by}: the run was CANCELING and its orchestrator{} did not end it",
            record.orchestrator.as_deref().map(|o| format!(" {o}")).unwrap_or_default()
        );
        // The final events first: a run in a terminal status has its whole log.
        let events = [
            Event::run(run_id, EventKind::EngineEvent { message }),
            Event::run(run_id, EventKind::RunCanceled),
        ];
        self.runs.append_events(run_id, &events).await?;
        match self.runs.change_status(run_id, &change).await {
            Ok(record) => Ok(record),
            // Its orchestrator (or another --force) ended it meanwhile.
            Err(StorageError::UnexpectedStatus { found, .. }) if found.is_terminal() => {
                Err(ControlError::RunEnded {
                    run_id: run_id.to_string(),
                    status: found,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Whether a resume of the run of `record` takes it over from a lost orchestrator.
    /// `Ok(None)` when no takeover is needed (the run is not STARTING / STARTED, or `force`
    /// was given: the resume rules decide); `Ok(Some(lost))` when its orchestrator is shown
    /// dead (resume it with `force`); [`ControlError::TakeoverRefused`] when its heartbeat is
    /// live or missing (a missing heartbeat proves nothing).
    pub async fn check_takeover(
        &self,
        record: &RunRecord,
        force: bool,
    ) -> Result<Option<LostOrchestrator>, ControlError> {
        if force || !matches!(record.status, RunStatus::Starting | RunStatus::Started) {
            return Ok(None);
        }
        let refused = |reason| ControlError::TakeoverRefused {
            run_id: record.run_id.clone(),
            status: record.status,
            orchestrator: record.orchestrator.clone(),
            reason,
        };
        let Some(orchestrator) = record.orchestrator.as_deref() else {
            return Err(refused(TakeoverRefused::NoHeartbeat));
        };
        match self.orchestrator_state(orchestrator).await? {
            Ok(lost) => Ok(Some(lost)),
            Err(reason) => Err(refused(reason)),
        }
    }

    /// Whether `orchestrator` (a run record's orchestrator) is shown dead: `Ok(lost)` when
    /// its worker heartbeat is LOST or it is a `stepq run` process of this machine that no
    /// longer runs; otherwise why nothing shows it (a live heartbeat, or none).
    pub async fn orchestrator_state(
        &self,
        orchestrator: &str,
    ) -> Result<Result<LostOrchestrator, TakeoverRefused>, ControlError> {
        let workers = self
            .heartbeats
            .list_workers(stepq_plan::events::now_us(), self.health_interval)
            .await?;
        Ok(
            match workers
                .iter()
                .find(|w| w.heartbeat.worker_id == orchestrator)
            {
                Some(w) if w.health == WorkerHealth::Lost => Ok(LostOrchestrator {
                    orchestrator: orchestrator.to_string(),
                    last_heartbeat_us: w.heartbeat.last_seen,
                    gone_pid: None,
                }),
                Some(w) => Err(TakeoverRefused::Live(w.heartbeat.last_seen)),
                None => match takeover::gone_local_process(orchestrator, &*self.process_probe) {
                    Some(pid) => Ok(LostOrchestrator {
                        orchestrator: orchestrator.to_string(),
                        last_heartbeat_us: 0,
                        gone_pid: Some(pid),
                    }),
                    None => Err(TakeoverRefused::NoHeartbeat),
                },
            },
        )
    }
}
