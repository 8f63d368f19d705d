//! Taking a run over from an orchestrator that died: a STARTING or STARTED run is resumed
//! without `--force` when its orchestrator's worker heartbeat says that orchestrator is
//! lost ([`App::check_takeover`]).
//!
//! A run's orchestrator is the name on its record: a worker orchestrating a launched run uses
//! its worker name, which is also its heartbeat's worker id. A `stepq run` process
//! (`stepq@HOST:PID`, [`orchestrator_name`](crate::app::orchestrator_name)) writes no
//! heartbeat; when HOST is this machine and no process PID runs here any more (the laptop
//! case: a `stepq run` killed or its terminal closed), it is gone and the run is taken over.
//! Otherwise a missing heartbeat proves nothing: such a run is only taken over with `force`.
//!
//! ```
//! use stepq::takeover::{LostOrchestrator, TakeoverRefused};
//!
//! let lost = LostOrchestrator { orchestrator: "w1".into(), last_heartbeat_us: 0, gone_pid: None };
//! assert!(lost.to_string().contains("orchestrator w1 is lost"));
//! let refused = TakeoverRefused::NoHeartbeat;
//! assert!(refused.explain("r1", Some("stepq@h:1")).contains("--force"));
//! ```

use stepq_executor::storage::{RunRecord, RunStatus as StoredStatus, WorkerHealth};

use crate::app::{App, AppError};
use crate::report::format_timestamp;

/// The orchestrator of a STARTING / STARTED run whose heartbeat is lost (or, for a `stepq run`
/// process on this machine, whose process is gone): the run may be taken over without
/// `force`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostOrchestrator {
    /// The orchestrator (its worker id, or `stepq@HOST:PID`).
    pub orchestrator: String,
    /// Microseconds since the Unix epoch of its last heartbeat (0 for a process found gone).
    pub last_heartbeat_us: u64,
    /// Set when the orchestrator is a `stepq run` process of this machine that no longer runs.
    pub gone_pid: Option<u32>,
}

impl LostOrchestrator {
    /// What shows the orchestrator is dead: `orchestrator W is lost (last heartbeat T)` or
    /// `orchestrator stepq@H:P is gone (no process P runs on this machine)`.
    pub fn evidence(&self) -> String {
        match self.gone_pid {
            Some(pid) => format!(
                "orchestrator {} is gone (no process {pid} runs on this machine)",
                self.orchestrator
            ),
            None => format!(
                "orchestrator {} is lost (last heartbeat {})",
                self.orchestrator,
                format_timestamp(self.last_heartbeat_us)
            ),
        }
    }
}

impl std::fmt::Display for LostOrchestrator {
    /// The [`evidence`](LostOrchestrator::evidence), then `: taking the run over`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: taking the run over", self.evidence())
    }
}

/// The pid of `orchestrator` if it names a `stepq run` process of this machine
/// (`stepq@HOST:PID` with this host name) that no longer runs.
fn gone_local_process(orchestrator: &str) -> Option<u32> {
    let (host, pid) = orchestrator.strip_prefix("stepq@")?.rsplit_once(':')?;
    let pid: u32 = pid.parse().ok()?;
    let this_host = hostname::get().ok()?.to_string_lossy().into_owned();
    (host == this_host && pid != std::process::id() && !process_runs(pid)).then_some(pid)
}

/// Whether a process `pid` runs on this machine (Unix: `kill(pid, 0)` does not say ESRCH;
/// elsewhere: assumed to run, so nothing is taken over without `force`).
fn process_runs(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return true;
        };
        // SAFETY: signal 0 only checks that the process exists; nothing is sent.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Why a STARTING / STARTED run is not taken over without `force`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeoverRefused {
    /// Its orchestrator has a live heartbeat (last one at this time, µs since the epoch).
    Live(u64),
    /// Its orchestrator writes no heartbeat (a `stepq run` process), or has none left.
    NoHeartbeat,
}

impl TakeoverRefused {
    /// What the refusal means for run `run_id` held by `orchestrator`, and what to do.
    pub fn explain(&self, run_id: &str, orchestrator: Option<&str>) -> String {
        let who = orchestrator.unwrap_or("an unknown orchestrator");
        match self {
            TakeoverRefused::Live(last) => format!(
                "its orchestrator {who} is alive (last heartbeat {}) and may still be running it; if it is really gone, `stepq resume {run_id} --force` takes the run over",
                format_timestamp(*last)
            ),
            TakeoverRefused::NoHeartbeat => format!(
                "its orchestrator {who} has no worker heartbeat (a `stepq run` process writes none; only one of this machine is checked for being gone), so nothing shows it died; if it is gone, `stepq resume {run_id} --force` takes the run over"
            ),
        }
    }
}

impl App {
    /// Whether a resume of run `run_id` takes it over from a lost orchestrator. `Ok(None)`
    /// when no takeover is needed (the run is not STARTING / STARTED, or `force` was given:
    /// the resume rules decide); `Ok(Some(lost))` when its orchestrator's heartbeat is LOST
    /// (resume it with `force`); [`AppError::TakeoverRefused`] when the heartbeat is live or
    /// missing (a missing heartbeat proves nothing).
    ///
    /// Errors also: [`stepq_executor::storage::StorageError::RunNotFound`], and a failing run
    /// or heartbeat store.
    pub async fn check_takeover(
        &self,
        run_id: &str,
        force: bool,
    ) -> Result<Option<LostOrchestrator>, AppError> {
        let record = self.runs().get_run(run_id).await?;
        self.check_takeover_of(&record, force).await
    }

    /// [`App::check_takeover`] on a record already read.
    pub(crate) async fn check_takeover_of(
        &self,
        record: &RunRecord,
        force: bool,
    ) -> Result<Option<LostOrchestrator>, AppError> {
        if force
            || !matches!(
                record.status,
                StoredStatus::Starting | StoredStatus::Started
            )
        {
            return Ok(None);
        }
        let refused = |reason| AppError::TakeoverRefused {
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
    ) -> Result<Result<LostOrchestrator, TakeoverRefused>, AppError> {
        let workers = crate::health::worker_states(self).await?;
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
                None => match gone_local_process(orchestrator) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_say_why_and_what_to_do() {
        let live = TakeoverRefused::Live(0).explain("r1", Some("w1"));
        assert!(live.contains("w1 is alive"), "{live}");
        assert!(live.contains("1970-01-01 00:00:00 UTC"), "{live}");
        assert!(live.contains("stepq resume r1 --force"), "{live}");
        let none = TakeoverRefused::NoHeartbeat.explain("r1", None);
        assert!(none.contains("unknown orchestrator"), "{none}");
        assert!(none.contains("no worker heartbeat"), "{none}");
        assert!(none.contains("stepq resume r1 --force"), "{none}");
        let lost = LostOrchestrator {
            orchestrator: "w1".into(),
            last_heartbeat_us: 0,
            gone_pid: None,
        };
        assert_eq!(
            lost.to_string(),
            "orchestrator w1 is lost (last heartbeat 1970-01-01 00:00:00 UTC): taking the run over"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_stepq_run_process_of_this_machine_that_is_gone_is_found() {
        let host = hostname::get().unwrap().to_string_lossy().into_owned();
        // A child that has ended and been reaped: its pid runs no process (for a moment; pids
        // are reused only after wrapping around).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(
            gone_local_process(&format!("stepq@{host}:{pid}")),
            Some(pid)
        );
        // This process runs; another host's process cannot be checked; other names are not
        // `stepq run` processes.
        let me = std::process::id();
        assert_eq!(gone_local_process(&format!("stepq@{host}:{me}")), None);
        assert_eq!(
            gone_local_process(&format!("stepq@elsewhere-{host}:{pid}")),
            None
        );
        assert_eq!(gone_local_process("worker-1"), None);
        assert_eq!(gone_local_process(&format!("stepq@{host}:not-a-pid")), None);
        let gone = LostOrchestrator {
            orchestrator: format!("stepq@{host}:{pid}"),
            last_heartbeat_us: 0,
            gone_pid: Some(pid),
        };
        assert!(gone
            .to_string()
            .contains(&format!("no process {pid} runs on this machine")));
    }
}
