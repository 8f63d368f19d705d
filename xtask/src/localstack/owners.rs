//! What lets an xtask clean up after one that could not: owner records of the LocalStacks
//! xtasks started (`target/localstack-owners/<xtask pid>.json`), stopping the LocalStack of a
//! record whose xtask is gone, the parent-death signal for a LocalStack not to be kept, and
//! the `/proc` reading both need (see the [parent module's docs](super)).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{signal_group, stop_running, Running, STOP_TIMEOUT};

/// The fields of `/proc/PID/stat` after `comm` (which may hold spaces and parentheses):
/// index 0 is the state, 2 the process group, 19 the start time (clock ticks after boot).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The start time of process `pid` if it exists and is not a zombie: with the pid, it tells
/// the process apart from a later one that got the same pid.
fn start_time(pid: u32) -> Option<u64> {
    let fields = stat_fields(pid)?;
    if matches!(fields.first()?.as_str(), "Z" | "X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether any process of group `pgid` exists and is not a zombie.
pub(super) fn group_alive(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .any(|pid| {
            stat_fields(pid).is_some_and(|f| {
                !matches!(f.first().map(String::as_str), Some("Z" | "X"))
                    && f.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid)
            })
        })
}

/// Stops the process group `pgid`: SIGTERM, then SIGKILL if it has not ended within
/// [`STOP_TIMEOUT`]. Another process's end cannot be awaited, so it is looked for every 100 ms.
pub(super) fn stop_group(pgid: u32) {
    signal_group(pgid, "TERM");
    let deadline = Instant::now() + STOP_TIMEOUT;
    while group_alive(pgid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if group_alive(pgid) {
        eprintln!("LocalStack did not stop within {STOP_TIMEOUT:?}; killing it");
        signal_group(pgid, "KILL");
    }
}

/// Where xtasks record the LocalStack each started, one file per xtask (see the
/// [module docs](self)).
fn owners_dir(root: &Path) -> PathBuf {
    root.join("target/localstack-owners")
}

fn owner_path(root: &Path, xtask_pid: u32) -> PathBuf {
    owners_dir(root).join(format!("{xtask_pid}.json"))
}

/// An owner record: which xtask started which LocalStack.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owner {
    /// The xtask's pid and start time.
    xtask: (u32, u64),
    /// The LocalStack.
    running: Running,
    /// A native LocalStack's leader's start time.
    leader_start: Option<u64>,
}

impl Owner {
    fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({ "xtask_pid": self.xtask.0, "xtask_start": self.xtask.1 });
        match self.running {
            Running::Native { pid } => {
                v["backend"] = "native".into();
                v["pgid"] = pid.into();
                v["leader_start"] = self.leader_start.into();
            }
            Running::Docker => v["backend"] = "docker".into(),
        }
        v
    }

    fn from_json(text: &str) -> Option<Owner> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        let pid = |key: &str| u32::try_from(v.get(key)?.as_u64()?).ok();
        let running = match v.get("backend")?.as_str()? {
            "native" => Running::Native { pid: pid("pgid")? },
            "docker" => Running::Docker,
            _ => return None,
        };
        Some(Owner {
            xtask: (pid("xtask_pid")?, v.get("xtask_start")?.as_u64()?),
            running,
            leader_start: v.get("leader_start").and_then(|s| s.as_u64()),
        })
    }

    /// Whether the xtask that wrote the record still runs.
    fn xtask_runs(&self) -> bool {
        start_time(self.xtask.0) == Some(self.xtask.1)
    }

    /// Whether the recorded native LocalStack may still run: its leader runs (the same
    /// process: same start time), or the leader is gone and processes of its group remain (a
    /// group id is not given to a new group while any member lives). Docker: maybe.
    fn localstack_may_run(&self) -> bool {
        match self.running {
            Running::Native { pid } => match start_time(pid) {
                Some(start) => Some(start) == self.leader_start,
                None => group_alive(pid),
            },
            Running::Docker => true,
        }
    }
}

/// Records this process as the owner of `running`.
pub(super) fn write_owner(root: &Path, running: &Running) -> Result<()> {
    let me = std::process::id();
    let owner = Owner {
        xtask: (
            me,
            start_time(me).context("reading this process's start time")?,
        ),
        running: running.clone(),
        leader_start: match running {
            Running::Native { pid } => start_time(*pid),
            Running::Docker => None,
        },
    };
    std::fs::create_dir_all(owners_dir(root)).context("creating target/localstack-owners")?;
    std::fs::write(owner_path(root, me), owner.to_json().to_string())
        .context("writing the owner record")
}

/// Removes this process's owner record (its LocalStack was stopped or is kept).
pub(super) fn remove_owner(root: &Path) {
    let _ = std::fs::remove_file(owner_path(root, std::process::id()));
}

/// Stops the LocalStack of every owner record whose xtask no longer runs (it was SIGKILLed,
/// or lost power), saying so on stderr, and removes those records.
pub(super) fn stop_orphans(root: &Path) {
    let Ok(entries) = std::fs::read_dir(owners_dir(root)) else {
        return;
    };
    for path in entries.filter_map(|e| Some(e.ok()?.path())) {
        let owner = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| Owner::from_json(&text));
        match owner {
            Some(owner) if owner.xtask_runs() => continue,
            Some(owner) if owner.localstack_may_run() => {
                let what = match owner.running {
                    Running::Native { pid } => format!("process group {pid}"),
                    Running::Docker => "docker compose".to_string(),
                };
                eprintln!(
                    "xtask: the LocalStack ({what}) started by xtask pid {}, which is gone, \
                     is still running: stopping it",
                    owner.xtask.0
                );
                stop_running(&owner.running, root);
            }
            _ => {}
        }
        let _ = std::fs::remove_file(&path);
    }
}

/// Makes the process `command` starts get SIGKILL when this process dies, even by SIGKILL
/// (`PR_SET_PDEATHSIG`). Linux sends it when the *thread* that spawned the child exits, so
/// spawn only from a thread that lives as long as the process: xtask's LocalStack is started
/// on the main thread (the future `main` blocks on), never from a `spawn_blocking` thread
/// (those exit when idle).
#[allow(unsafe_code)]
pub(super) fn die_with_this_process(command: &mut Command) {
    use nix::sys::prctl::set_pdeathsig;
    use nix::sys::signal::Signal;
    use nix::unistd::getppid;
    use std::os::unix::process::CommandExt;

    debug_assert_eq!(
        std::thread::current().name(),
        Some("main"),
        "the parent-death signal follows the spawning thread"
    );
    let parent = nix::unistd::getpid();
    // SAFETY: the hook runs in the forked child before `exec`, where only async-signal-safe
    // calls are allowed. It makes two system calls, prctl(2) and getppid(2), both
    // async-signal-safe, and builds its error with `io::Error::from_raw_os_error`, which does
    // not allocate. It takes no lock and touches no state shared with other threads.
    unsafe {
        command.pre_exec(move || {
            set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            // This process may have died before the prctl took effect: then the child was
            // re-parented already and no signal will come. Fail the exec (the child exits).
            if getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_a_bogus_pid_is_not() {
        assert!(start_time(std::process::id()).is_some());
        assert!(start_time(u32::MAX - 1).is_none());
    }

    /// A fresh directory to serve as the workspace root.
    fn scratch_root(name: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("target")).unwrap();
        root
    }

    #[test]
    fn owner_records_read_back() {
        for owner in [
            Owner {
                xtask: (12, 34),
                running: Running::Native { pid: 56 },
                leader_start: Some(78),
            },
            Owner {
                xtask: (12, 34),
                running: Running::Docker,
                leader_start: None,
            },
        ] {
            assert_eq!(
                Owner::from_json(&owner.to_json().to_string()),
                Some(owner.clone())
            );
        }
        assert_eq!(Owner::from_json("{}"), None);
    }

    #[test]
    fn the_localstack_of_a_dead_owner_is_stopped_and_a_live_owners_is_not() {
        use std::os::unix::process::CommandExt;
        let root = scratch_root("orphans");
        // A process group standing in for LocalStack, and an owner that is gone.
        let mut orphan = Command::new("sleep")
            .arg("600")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = orphan.id();
        let mut gone = Command::new("true").spawn().unwrap();
        let gone_pid = gone.id();
        gone.wait().unwrap();
        let record = Owner {
            xtask: (gone_pid, 1),
            running: Running::Native { pid: pgid },
            leader_start: start_time(pgid),
        };
        std::fs::create_dir_all(owners_dir(&root)).unwrap();
        std::fs::write(owner_path(&root, gone_pid), record.to_json().to_string()).unwrap();
        // This process's own record, for a group that runs too: left alone.
        let mut owned = Command::new("sleep")
            .arg("600")
            .process_group(0)
            .spawn()
            .unwrap();
        write_owner(&root, &Running::Native { pid: owned.id() }).unwrap();

        stop_orphans(&root);
        let status = orphan.wait().unwrap();
        assert!(!status.success(), "the orphan was signalled: {status}");
        assert!(!owner_path(&root, gone_pid).exists());
        assert!(
            owned.try_wait().unwrap().is_none(),
            "a live owner's LocalStack runs on"
        );
        assert!(owner_path(&root, std::process::id()).exists());

        remove_owner(&root);
        owned.kill().unwrap();
        owned.wait().unwrap();
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_recorded_pid_now_used_by_another_process_is_not_stopped() {
        // The record's leader start time does not match the process now holding the pid.
        let me = std::process::id();
        let record = Owner {
            xtask: (u32::MAX - 1, 1),
            running: Running::Native { pid: me },
            leader_start: start_time(me).map(|t| t + 1),
        };
        assert!(!record.xtask_runs());
        assert!(!record.localstack_may_run());
    }
}
