//! How a shell step's command is started: on Linux, under a supervising `/bin/sh` that takes
//! the step's whole process group down when its worker dies, even SIGKILLed.
//!
//! The kernel's parent-death signal (`PR_SET_PDEATHSIG`) reaches only the worker's direct
//! child, and SIGKILL cannot be acted upon, so with the command as that child a SIGKILLed
//! worker took the command along but left the command's own children (`sh -c 'sleep 60 &
//! wait'`) running. So the direct child is a small shell, leader of the step's process group,
//! whose parent-death signal is SIGUSR1 and which traps it by sending SIGKILL to its whole
//! group; it runs the command in the background of that group (standard input passed on),
//! waits for it and ends as the command did: with its exit code, or killed by the same signal
//! when a terminating signal killed it. Everything else about the group (SIGTERM, grace,
//! SIGKILL on cancel, timeout and drop; leftovers taken down when the command exits) is as
//! before, since the supervisor is a member of it that dies on SIGTERM.
//!
//! Without `/bin/sh` (a distroless image) the command is started directly, as on other
//! systems, with SIGKILL as its parent-death signal; a warning says once that its children
//! are then not covered. The program is looked up in `PATH` before the shell is started, so a
//! missing program is still a spawn error naming it rather than a `not found` exit of 127.

use std::ffi::OsStr;
#[cfg(target_os = "linux")]
use std::ffi::OsString;
use std::io;
use std::path::Path;
#[cfg(target_os = "linux")]
use std::path::PathBuf;

use tokio::process::Command;

/// The supervising shell (run as `sh -c SCRIPT stepq-step PROGRAM ARGS...`).
///
/// The trap comes first: a SIGUSR1 before it ends the shell before the command started. A
/// command killed by a terminating signal whose default does not stop the shell (SIGSTOP,
/// SIGTSTP ... are not listed) is re-raised on the shell, core dumps off, so the worker sees
/// the signal; a command exiting with such a status by itself is reported as killed by it.
pub(super) const SCRIPT: &str = r#"trap 'kill -s KILL 0' USR1
exec 3<&0
"$@" <&3 3<&- &
wait "$!"
s=$?
case $s in
129|130|131|132|133|134|135|136|137|139|140|141|142|143)
  trap - USR1; ulimit -c 0 2>/dev/null; kill -$((s - 128)) $$ ;;
esac
exit "$s"
"#;

/// The shell that supervises.
const SHELL: &str = "/bin/sh";

/// A step command ready for its options (arguments, environment, pipes) to be set on it.
pub(super) struct StepCommand {
    /// The command to spawn: the supervisor, or the program itself.
    pub(super) command: Command,
    /// Whether [`command`](Self::command) is the supervising shell (its parent-death signal
    /// is then SIGUSR1, which it traps; else SIGKILL).
    pub(super) supervised: bool,
}

/// The command that runs `program` with `args`: supervised on Linux when `/bin/sh` exists.
/// `path` is the command's own `PATH` if it sets one, `dir` its working directory.
pub(super) fn step_command(
    program: &str,
    args: &[String],
    path: Option<&OsStr>,
    dir: Option<&Path>,
) -> io::Result<StepCommand> {
    #[cfg(target_os = "linux")]
    if Path::new(SHELL).is_file() {
        find_program(program, path, dir)?;
        let mut command = Command::new(SHELL);
        command
            .arg("-c")
            .arg(SCRIPT)
            .arg("stepq-step")
            .arg(program)
            .args(args);
        return Ok(StepCommand {
            command,
            supervised: true,
        });
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (path, dir);
    #[cfg(target_os = "linux")]
    {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(
                "no {SHELL}: shell steps run unsupervised, so the children of a step's \
                 command outlive a SIGKILLed worker (see docs/cancellation.md)"
            )
        });
    }
    let mut command = Command::new(program);
    command.args(args);
    Ok(StepCommand {
        command,
        supervised: false,
    })
}

#[cfg(target_os = "linux")]
/// Checks that `program` is an executable file, as `exec` would find it: a path with a `/`
/// (relative to `dir`), else the first match in `path` (else this process's `PATH`).
fn find_program(program: &str, path: Option<&OsStr>, dir: Option<&Path>) -> io::Result<()> {
    let here = dir.unwrap_or(Path::new("."));
    if program.contains('/') {
        return check_executable(&here.join(program));
    }
    let search: OsString = path
        .map(OsString::from)
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut found_unexecutable = None;
    for entry in std::env::split_paths(&search) {
        let candidate = if entry.as_os_str().is_empty() {
            here.join(program)
        } else {
            entry.join(program)
        };
        match check_executable(&candidate) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                found_unexecutable.get_or_insert(e);
            }
            Err(_) => {}
        }
    }
    Err(found_unexecutable.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no executable `{program}` in PATH"),
        )
    }))
}

#[cfg(target_os = "linux")]
/// `Ok` if `file` is a regular file with an execute bit.
fn check_executable(file: &PathBuf) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(file)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", file.display())))?;
    if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is not an executable file", file.display()),
        ))
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_as_exec_would() {
        assert!(find_program("sh", None, None).is_ok());
        assert!(find_program("/bin/sh", None, None).is_ok());
        let missing = find_program("no-such-program-here", None, None).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        assert!(
            missing.to_string().contains("no-such-program-here"),
            "{missing}"
        );
        // The command's own PATH is the one searched.
        let nowhere = find_program("sh", Some(OsStr::new("/nonexistent")), None).unwrap_err();
        assert_eq!(nowhere.kind(), io::ErrorKind::NotFound);
        // A relative path is taken from the working directory.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("data.txt"), "x").unwrap();
        let e = find_program("./data.txt", None, Some(dir.path())).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        assert!(find_program("./absent", None, Some(dir.path())).is_err());
    }

    #[tokio::test]
    async fn the_supervisor_passes_input_exit_codes_and_signals_on() {
        use std::os::unix::process::ExitStatusExt;
        use std::process::Stdio;
        use tokio::io::AsyncWriteExt;

        let run = |script: &str, input: &'static str| {
            let script = script.to_string();
            async move {
                let mut step = step_command("sh", &["-c".into(), script], None, None).unwrap();
                assert!(step.supervised);
                let mut child = step
                    .command
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap();
                let mut stdin = child.stdin.take().unwrap();
                stdin.write_all(input.as_bytes()).await.unwrap();
                drop(stdin);
                child.wait_with_output().await.unwrap()
            }
        };
        let out = run("read x; echo \"got $x\"", "hello\n").await;
        assert_eq!(String::from_utf8_lossy(&out.stdout), "got hello\n");
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(run("exit 3", "").await.status.code(), Some(3));
        let killed = run("kill -TERM $$", "").await;
        assert_eq!(killed.status.signal(), Some(15), "{:?}", killed.status);
        // A status that only looks like a stop signal's is passed on as an exit code.
        assert_eq!(run("exit 147", "").await.status.code(), Some(147));
    }
}
