//! The process-level calls of the command line, and the workspace's only `unsafe` code: the
//! SIGPIPE disposition and the `kill(pid, 0)` liveness probe.

// The two libc calls below have no safe wrapper in std; each says why it is sound.
#![allow(unsafe_code)]

/// Restores SIGPIPE's default disposition, so `stepq logs RUN | head` ends quietly instead of
/// failing on a closed pipe. Call it first thing in `main`, before any other thread exists.
pub fn restore_default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called at the start of `main`, before any other thread exists; SIG_DFL is a
    // valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Whether a process `pid` runs on this machine (Unix: `kill(pid, 0)` does not say ESRCH;
/// elsewhere: assumed to run, so nothing is taken over without `--force`). The run-control
/// probe the CLI installs (see `stepq_executor::control::RunControl::with_process_probe`).
pub fn process_runs(pid: u32) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_reaped_child_does_not_run_and_this_process_does() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!process_runs(pid));
        assert!(process_runs(std::process::id()));
    }
}
