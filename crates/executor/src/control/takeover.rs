//! Taking a run over from an orchestrator that died.
//!
//! A run's orchestrator is the name on its record: a worker orchestrating a launched run uses
//! its worker name, which is also its heartbeat's worker id. A `stepq run` process
//! (`stepq@HOST:PID`, [`orchestrator_name`]) writes no heartbeat; when HOST is this machine
//! and no process PID runs here any more (the laptop case: a `stepq run` killed or its
//! terminal closed), it is gone and the run is taken over. Otherwise a missing heartbeat proves
//! nothing: such a run is only taken over with `force`.
//!
//! ```
//! use stepq_executor::control::{LostOrchestrator, TakeoverRefused};
//!
//! let lost = LostOrchestrator { orchestrator: "w1".into(), last_heartbeat_us: 0, gone_pid: None };
//! assert!(lost.to_string().contains("orchestrator w1 is lost"));
//! let refused = TakeoverRefused::NoHeartbeat;
//! assert!(refused.explain("r1", Some("stepq@h:1")).contains("--force"));
//! ```

use std::sync::Arc;

use stepq_plan::events::format_timestamp;

/// Tells whether a process of this machine, by pid, still runs.
pub type ProcessProbe = Arc<dyn Fn(u32) -> bool + Send + Sync>;

/// The default [`ProcessProbe`]: on Linux, whether `/proc/PID` exists; elsewhere every
/// process is assumed to run (so nothing is taken over without `force`). The `stepq` command
/// line installs a `kill(pid, 0)` probe on every Unix.
pub const DEFAULT_PROCESS_PROBE: fn(u32) -> bool = proc_entry_exists;

fn proc_entry_exists(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

/// This machine's host name (`unknown-host` when it cannot be read).
pub fn host_name() -> String {
    hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown-host".into())
}

/// `stepq@<host>:<pid>`: who orchestrates runs started by this process.
pub fn orchestrator_name() -> String {
    format!("stepq@{}:{}", host_name(), std::process::id())
}

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
/// (`stepq@HOST:PID` with this host name) that no longer runs, by `process_runs`.
pub(crate) fn gone_local_process(
    orchestrator: &str,
    process_runs: &(dyn Fn(u32) -> bool + Send + Sync),
) -> Option<u32> {
    let (host, pid) = orchestrator.strip_prefix("stepq@")?.rsplit_once(':')?;
    let pid: u32 = pid.parse().ok()?;
    (host == host_name() && pid != std::process::id() && !process_runs(pid)).then_some(pid)
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
        let host = host_name();
        // A child that has ended and been reaped: its pid runs no process (for a moment; pids
        // are reused only after wrapping around).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(
            gone_local_process(&format!("stepq@{host}:{pid}"), &DEFAULT_PROCESS_PROBE),
            Some(pid)
        );
        // This process runs; another host's process cannot be checked; other names are not
        // `stepq run` processes.
        let me = std::process::id();
        assert_eq!(
            gone_local_process(&format!("stepq@{host}:{me}"), &DEFAULT_PROCESS_PROBE),
            None
        );
        assert_eq!(
            gone_local_process(
                &format!("stepq@elsewhere-{host}:{pid}"),
                &DEFAULT_PROCESS_PROBE
            ),
            None
        );
        assert_eq!(gone_local_process("worker-1", &DEFAULT_PROCESS_PROBE), None);
        assert_eq!(
            gone_local_process(&format!("stepq@{host}:not-a-pid"), &DEFAULT_PROCESS_PROBE),
            None
        );
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
