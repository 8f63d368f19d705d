//! A shell step's processes: its command runs as the leader of a process group of its own,
//! and every way the step ends takes the whole group down.
//!
//! - The command exits: whatever it left running in its group (`cmd &` without `wait`) gets
//!   SIGTERM, then SIGKILL if it is still there after the grace.
//! - Timeout, cancel (and so a worker shutdown past its grace, which cancels): the group gets
//!   SIGTERM, then SIGKILL after the grace ([`ProcessGroup::terminate`]).
//! - The op's future is dropped (the worker drops a cancelled step's op at once, and a
//!   receiver drops tasks still running when its grace is over): [`ProcessGroup`]'s `Drop`
//!   hands the group to a task of its own that does the same, or, without a runtime to run it
//!   on (or when that task is dropped in turn, as a runtime shutting down does), sends SIGKILL
//!   to the group at once.
//! - The worker dies (even SIGKILLed): on Linux the group's leader is a supervisor process
//!   whose parent-death signal (`PR_SET_PDEATHSIG`) makes it SIGKILL the whole group
//!   (`supervisor.rs`; see `docs/cancellation.md`, "Step processes").
//!
//! Signalling a group by its id is safe from hitting an unrelated group while its leader is
//! not reaped: a zombie keeps its pid, so the id cannot be reused. [`ProcessGroup::terminate`]
//! reaps the leader last for that reason. After the leader exited by itself (it has been reaped
//! to read its status), the group is only signalled right after a scan saw a live member in it,
//! which keeps the id from being reused in between (on Linux; elsewhere `kill(-pgid, 0)` is the
//! check, which cannot tell zombies from live members).

use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How often the group is checked for live members while it is given its grace.
const POLL: Duration = Duration::from_millis(10);
/// How long SIGKILLed members are waited for (a process stuck in the kernel dies late).
const KILLED_WAIT: Duration = Duration::from_secs(1);

/// The signals a group gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sig {
    Term,
    Kill,
}

/// A running command, leader of its own process group; see the [module docs](self).
#[derive(Debug)]
pub(super) struct ProcessGroup {
    /// `None` only while being handed to the task that ends the group after a drop.
    child: Option<Child>,
    /// The group's id: the leader's pid.
    pgid: u32,
    /// Between SIGTERM and SIGKILL.
    grace: Duration,
    /// Set until the group was taken down (or the command finished and its leftovers were).
    armed: bool,
    /// Set on the copy a dropped group hands over: its own drop kills at once.
    handed_off: bool,
}

impl ProcessGroup {
    /// Starts `cmd` as a new process group, on Linux under a supervisor that leads it and
    /// SIGKILLs the whole group if the worker dies (`supervisor.rs`). `grace` is how long
    /// SIGTERM is given before SIGKILL.
    pub(super) fn spawn(cmd: &mut Command, grace: Duration) -> io::Result<Self> {
        cmd.kill_on_drop(true);
        #[cfg(unix)]
        cmd.process_group(0);
        #[cfg(target_os = "linux")]
        super::supervisor::supervise(cmd);
        let child = cmd.spawn()?;
        let pgid = child
            .id()
            .ok_or_else(|| io::Error::other("the spawned command has no pid"))?;
        Ok(ProcessGroup {
            child: Some(child),
            pgid,
            grace,
            armed: true,
            handed_off: false,
        })
    }

    /// The leader, e.g. to take its pipes.
    pub(super) fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("a live group has its child")
    }

    /// Waits for the leader to exit (the rest of the group is left as it is: see
    /// [`finish`](Self::finish)).
    pub(super) async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child_mut().wait().await
    }

    /// After the leader exited: takes down what it left running in the group (SIGTERM, then
    /// SIGKILL after the grace), if anything.
    pub(super) async fn finish(&mut self) {
        if has_live_members(self.pgid) {
            self.signal(Sig::Term);
            self.until_empty(Instant::now() + self.grace).await;
            if has_live_members(self.pgid) {
                self.signal(Sig::Kill);
                self.until_empty(Instant::now() + KILLED_WAIT).await;
            }
        }
        self.armed = false;
    }

    /// Takes the running group down: SIGTERM to every member, SIGKILL after the grace to what
    /// is left (sooner if nothing is), and reaps the leader.
    pub(super) async fn terminate(&mut self) {
        self.signal(Sig::Term);
        self.kill_after_grace().await;
    }

    /// The part of [`terminate`](Self::terminate) after SIGTERM was sent.
    async fn kill_after_grace(&mut self) {
        let deadline = Instant::now() + self.grace;
        // Elsewhere the zombie leader counts as a member: wait for it first (which reaps it).
        #[cfg(not(target_os = "linux"))]
        let _ = tokio::time::timeout_at(deadline, self.wait()).await;
        self.until_empty(deadline).await;
        // Whether or not a member is left: no group id is reused while the leader is unreaped.
        self.signal(Sig::Kill);
        self.until_empty(Instant::now() + KILLED_WAIT).await;
        if let Err(e) = self.wait().await {
            tracing::warn!(pgid = self.pgid, error = %e, "cannot reap a killed step command");
        }
        self.armed = false;
    }

    /// Waits until the group has no live member, or `deadline`.
    async fn until_empty(&self, deadline: Instant) {
        while Instant::now() < deadline && has_live_members(self.pgid) {
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sends `sig` to the whole group; a group that is gone already is fine.
    fn signal(&mut self, sig: Sig) {
        #[cfg(unix)]
        {
            use nix::sys::signal::{killpg, Signal};
            use nix::unistd::Pid;
            let signal = match sig {
                Sig::Term => Signal::SIGTERM,
                Sig::Kill => Signal::SIGKILL,
            };
            let Ok(pgid) = i32::try_from(self.pgid) else {
                return;
            };
            match killpg(Pid::from_raw(pgid), signal) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => {
                    tracing::warn!(pgid, ?signal, error = %e, "cannot signal a step's processes")
                }
            }
        }
        #[cfg(not(unix))]
        if sig == Sig::Kill {
            if let Some(child) = self.child.as_mut() {
                let _ = child.start_kill();
            }
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if !self.handed_off {
            if let (Ok(runtime), Some(child)) =
                (tokio::runtime::Handle::try_current(), self.child.take())
            {
                let mut group = ProcessGroup {
                    child: Some(child),
                    pgid: self.pgid,
                    grace: self.grace,
                    armed: true,
                    handed_off: true,
                };
                // SIGTERM now, so it is sent even if the runtime never runs the task. Dropped
                // unfinished (a runtime shutting down drops its tasks), the copy kills at once.
                group.signal(Sig::Term);
                runtime.spawn(async move { group.kill_after_grace().await });
                return;
            }
        }
        // The leader is not reaped yet (its `Child` drops after this), so the id is still ours.
        self.signal(Sig::Kill);
    }
}

/// Whether any process of group `pgid` is alive (not a zombie).
#[cfg(target_os = "linux")]
fn has_live_members(pgid: u32) -> bool {
    !linux::live_members(pgid).is_empty()
}

/// Whether any process of group `pgid` exists (a zombie counts).
#[cfg(all(unix, not(target_os = "linux")))]
fn has_live_members(pgid: u32) -> bool {
    use nix::sys::signal::killpg;
    use nix::unistd::Pid;
    i32::try_from(pgid).is_ok_and(|pgid| match killpg(Pid::from_raw(pgid), None) {
        Ok(()) => true,
        Err(e) => e != nix::errno::Errno::ESRCH,
    })
}

/// Without process groups, nothing but the leader is known.
#[cfg(not(unix))]
fn has_live_members(_pgid: u32) -> bool {
    false
}

#[cfg(target_os = "linux")]
pub(crate) mod linux {
    //! Linux only: reading process groups from `/proc`.

    /// The pids of the live (not zombie) processes of group `pgid`, read from `/proc`.
    pub(crate) fn live_members(pgid: u32) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|stat| parse_stat(&stat))
                    .is_some_and(|(state, group)| group == pgid && !matches!(state, 'Z' | 'X'))
            })
            .collect()
    }

    /// The state and process group of a `/proc/PID/stat` line (`pid (comm) state ppid pgrp
    /// ...`; `comm` may hold spaces and parentheses, so fields are counted after the last `)`).
    fn parse_stat(stat: &str) -> Option<(char, u32)> {
        let rest = &stat[stat.rfind(')')? + 1..];
        let mut fields = rest.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let _ppid = fields.next()?;
        let pgrp = fields.next()?.parse().ok()?;
        Some((state, pgrp))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn stat_lines_with_odd_command_names_parse() {
            assert_eq!(
                parse_stat("42 (sleep) S 1 40 40 0 -1 4194560"),
                Some(('S', 40))
            );
            assert_eq!(parse_stat("42 (a) b) (c) Z 1 7 7 0"), Some(('Z', 7)));
            assert_eq!(parse_stat("garbage"), None);
        }

        #[test]
        fn this_process_is_a_live_member_of_its_group() {
            let own = nix::unistd::getpgrp().as_raw() as u32;
            assert!(live_members(own).contains(&std::process::id()));
        }
    }
}
