//! Linux only: a shell step's command runs under a supervisor process that takes the step's
//! whole process group down when its worker dies, even SIGKILLed.
//!
//! The kernel's parent-death signal (`PR_SET_PDEATHSIG`) reaches only the worker's direct
//! child, and SIGKILL cannot be acted upon, so with the command as that child a SIGKILLed
//! worker took the command along but left the command's own children (`sh -c 'sleep 60 &
//! wait'`) running. So the child the worker spawns forks once more, before `exec`:
//!
//! - The **command** (the new process) goes on to `exec` as usual, with its signal
//!   dispositions as std leaves them (nothing ignored), SIGKILL as its own parent-death signal,
//!   and its exec errors reported to the worker's `spawn` as before.
//! - The **supervisor** (the worker's child, leader of the step's group) never `exec`s: it
//!   closes every file descriptor (so the worker's `spawn` and the step's pipes see no extra
//!   holder), ignores the signals meant for the command (SIGTERM, SIGINT, SIGQUIT, SIGHUP and
//!   the like, which cancel and timeout send to the whole group), waits for the command and
//!   ends as it did: its exit code, or the same signal re-raised (core dumps off). Its
//!   parent-death signal is SIGUSR1, whose handler sends SIGKILL to the whole group once the
//!   worker is really gone (a SIGUSR1 from anyone else is ignored).
//!
//! Everything else about the group (SIGTERM, grace, SIGKILL on cancel, timeout and drop;
//! leftovers taken down when the command exits) is unchanged: the supervisor is one more
//! member, which SIGKILL ends. What users see differently: the command is not the group's
//! leader (`$$` of a shell command is not the group id, so `kill -- -$$` finds no group, and a
//! direct `setsid()` succeeds and leaves the group).
//!
//! Only async-signal-safe system calls run between `fork` and `exec` (and in the supervisor,
//! which is a fork of a multi-threaded process): `prctl`, `getpid`, `getppid`, `clone` (the
//! raw system call, so no `pthread_atfork` handlers run), `sigaction`, `sigprocmask`,
//! `sigemptyset` / `sigaddset`, `close_range` / `close`, `waitpid`, `setrlimit`, `kill`,
//! `_exit`; no allocation, no lock.
//! That is why this module allows `unsafe` (the crate denies it elsewhere): each block says
//! what it relies on.
#![allow(unsafe_code)]

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::libc;
use tokio::process::Command;

/// The signals the supervisor ignores: those meant for the command, which cancel and timeout
/// send to the whole group.
const IGNORED: [libc::c_int; 10] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGHUP,
    libc::SIGPIPE,
    libc::SIGALRM,
    libc::SIGUSR2,
    libc::SIGTSTP,
    libc::SIGTTIN,
    libc::SIGTTOU,
];

/// The worker's pid, for the supervisor's SIGUSR1 handler (set in the supervisor only).
static WORKER: AtomicI32 = AtomicI32::new(0);

/// The supervisor's SIGUSR1 handler: if the worker is gone (the signal is its parent-death
/// signal), SIGKILL to the whole group.
extern "C" fn on_worker_death(_: libc::c_int) {
    // SAFETY: getppid(2) and kill(2) are async-signal-safe and take no pointer.
    unsafe {
        if libc::getppid() != WORKER.load(Ordering::Relaxed) {
            libc::kill(0, libc::SIGKILL);
        }
    }
}

/// The last OS error, without allocating.
fn last_error() -> io::Error {
    // SAFETY: reads this thread's errno.
    io::Error::from_raw_os_error(unsafe { *libc::__errno_location() })
}

/// Makes this process get `signal` when its parent (`parent`) dies; an error if the parent is
/// gone already (the signal would never come). Async-signal-safe: prctl(2), getppid(2).
fn die_with_parent(signal: libc::c_int, parent: libc::pid_t) -> io::Result<()> {
    // SAFETY: two system calls without pointers.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) != 0 {
            return Err(last_error());
        }
        if libc::getppid() != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// Makes `cmd` start under a supervisor (see the [module docs](self)). `cmd` must lead a new
/// process group (`process_group(0)`).
pub(super) fn supervise(cmd: &mut Command) {
    let worker = std::process::id() as libc::pid_t;
    // SAFETY: the hook runs in the child std forked, before `exec`, where only
    // async-signal-safe calls are allowed: it makes only the system calls listed in the
    // module docs, takes no lock, allocates nothing (errors are built from raw OS codes), and
    // touches no state shared with the parent's other threads. The supervisor branch never
    // returns from it (it ends with `_exit`), so std's code after the hook runs only in the
    // command.
    unsafe {
        cmd.pre_exec(move || {
            // Held (blocked) from before the fork until the supervisor's dispositions are in
            // place: a signal that comes first (a cancel's SIGTERM to the group, a SIGUSR1)
            // then finds them, instead of the default action ending the supervisor. The
            // command restores the mask before it goes on to exec.
            let mut held: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut held);
            for sig in IGNORED {
                libc::sigaddset(&mut held, sig);
            }
            libc::sigaddset(&mut held, libc::SIGUSR1);
            let mut before: libc::sigset_t = std::mem::zeroed();
            if libc::sigprocmask(libc::SIG_BLOCK, &held, &mut before) != 0 {
                return Err(last_error());
            }
            die_with_parent(libc::SIGUSR1, worker)?;
            let supervisor = libc::getpid();
            // A plain fork without the atfork handlers glibc's fork() would run.
            let command = libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_long, 0, 0, 0, 0);
            if command < 0 {
                return Err(last_error());
            }
            if command == 0 {
                // The command: the signal mask it had, dies with its supervisor, then goes on
                // to exec.
                libc::sigprocmask(libc::SIG_SETMASK, &before, std::ptr::null_mut());
                return die_with_parent(libc::SIGKILL, supervisor);
            }
            run_supervisor(worker, command as libc::pid_t, &before)
        });
    }
}

/// The supervisor's life: see the [module docs](self). Its signals arrive blocked; `mask` is
/// the mask to restore once its dispositions are set. Never returns.
///
/// # Safety
/// Only in the supervisor, the child std forked, before anything else runs there.
unsafe fn run_supervisor(worker: libc::pid_t, command: libc::pid_t, mask: &libc::sigset_t) -> ! {
    WORKER.store(worker, Ordering::Relaxed);
    for sig in IGNORED {
        libc::signal(sig, libc::SIG_IGN);
    }
    let mut action: libc::sigaction = std::mem::zeroed();
    action.sa_sigaction = on_worker_death as *const () as libc::sighandler_t;
    libc::sigemptyset(&mut action.sa_mask);
    libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut());
    // What came while held is delivered now, to the dispositions above.
    libc::sigprocmask(libc::SIG_SETMASK, mask, std::ptr::null_mut());
    if libc::getppid() != worker {
        libc::kill(0, libc::SIGKILL);
    }
    // Nothing held open: std's exec-error pipe (the worker's spawn reads it to its end) and
    // the step's standard streams are the command's alone.
    if libc::syscall(libc::SYS_close_range, 0, libc::c_uint::MAX, 0) != 0 {
        for fd in 0..1024 {
            libc::close(fd);
        }
    }
    let mut status: libc::c_int = 0;
    loop {
        let waited = libc::waitpid(command, &mut status, 0);
        if waited == command {
            break;
        }
        if waited < 0 && *libc::__errno_location() != libc::EINTR {
            libc::_exit(127);
        }
    }
    if libc::WIFEXITED(status) {
        libc::_exit(libc::WEXITSTATUS(status));
    }
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::kill(libc::getpid(), sig);
        libc::_exit(128 + sig);
    }
    libc::_exit(127)
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;

    use tokio::io::AsyncWriteExt;

    use super::*;

    async fn run(script: &str, input: &'static str) -> std::process::Output {
        let mut command = Command::new("sh");
        command.arg("-c").arg(script).process_group(0);
        supervise(&mut command);
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).await.unwrap();
        drop(stdin);
        child.wait_with_output().await.unwrap()
    }

    #[tokio::test]
    async fn the_supervisor_passes_input_exit_codes_and_signals_on() {
        let out = run("read x; echo \"got $x\"", "hello\n").await;
        assert_eq!(String::from_utf8_lossy(&out.stdout), "got hello\n");
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(run("exit 3", "").await.status.code(), Some(3));
        assert_eq!(run("exit 143", "").await.status.code(), Some(143));
        let killed = run("kill -TERM $$", "").await;
        assert_eq!(killed.status.signal(), Some(15), "{:?}", killed.status);
        let segv = run("kill -SEGV $$", "").await;
        assert_eq!(segv.status.signal(), Some(11), "{:?}", segv.status);
        assert!(
            segv.stderr.is_empty(),
            "no supervisor noise: {:?}",
            segv.stderr
        );
    }

    #[tokio::test]
    async fn the_command_keeps_default_signal_dispositions() {
        // SigIgn of the command: none of the signals the supervisor ignores (a shell's
        // background job would ignore SIGINT and SIGQUIT).
        let out = run("grep SigIgn /proc/$$/status", "").await;
        let text = String::from_utf8_lossy(&out.stdout);
        let mask = u64::from_str_radix(text.trim().trim_start_matches("SigIgn:").trim(), 16)
            .unwrap_or_else(|e| panic!("{text}: {e}"));
        for sig in [
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGUSR1,
        ] {
            assert_eq!(mask & (1 << (sig - 1)), 0, "signal {sig} ignored: {text}");
        }
        let interrupted = run("kill -INT $$; sleep 5", "").await;
        assert_eq!(
            interrupted.status.signal(),
            Some(2),
            "{:?}",
            interrupted.status
        );
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error() {
        let mut command = Command::new("no-such-program-here");
        command.process_group(0);
        supervise(&mut command);
        let e = command.spawn().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    }

    #[tokio::test]
    async fn a_sigusr1_from_anyone_but_the_kernel_is_ignored() {
        // The supervisor is the group's leader: $PPID of the command.
        let out = run("kill -USR1 $PPID; sleep 0.2; echo alive", "").await;
        assert_eq!(String::from_utf8_lossy(&out.stdout), "alive\n");
        assert_eq!(out.status.code(), Some(0));
    }
}
