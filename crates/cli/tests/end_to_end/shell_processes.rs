//! A shell step's background processes do not outlive the step: `stepq run` of a TOML job on
//! the embedded default, stopped by `stepq cancel` from a second process or by the step's
//! `timeout_seconds`; and on LocalStack, a `stepq worker start` process SIGKILLed while its
//! step runs takes the step's children along (one of them ignoring SIGTERM). Processes are
//! observed in `/proc` (Linux only), polled up to a deadline.
#![cfg(target_os = "linux")]

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::cli::{run, stderr, stdout, stepq};

/// Job `background`: a step that starts a long `sleep` in the background, writes its pid to
/// `bg.pid` and waits; job `background_timeout`: the same with a one-second timeout.
const JOBS: &str = r#"
[jobs.background]
[[jobs.background.steps]]
key = "wait"
argv = ["sh", "-c", 'sleep 60 & echo $! > bg.tmp; mv bg.tmp bg.pid; wait']
working_dir = "."
kill_grace_seconds = 1

[jobs.stubborn]
[[jobs.stubborn.steps]]
key = "wait"
argv = ["sh", "-c", '(trap "" TERM; exec sleep 60) & echo $! > st.tmp; mv st.tmp stubborn.pid; sleep 60 & echo $! > bg.tmp; mv bg.tmp bg.pid; wait']
working_dir = "."

[jobs.background_timeout]
[[jobs.background_timeout.steps]]
key = "wait"
argv = ["sh", "-c", 'sleep 60 & echo $! > bg.tmp; mv bg.tmp bg.pid; wait']
working_dir = "."
timeout_seconds = 1
"#;

/// Whether `pid` runs (exists and is not a zombie: init may not reap orphans here).
fn is_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .next();
    !matches!(state, None | Some("Z") | Some("X"))
}

/// Polls `done` every 10 ms until it holds; false after `limit`.
fn within(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// The background pid the step wrote, once it did.
fn background_pid(dir: &Path, child: &mut Child) -> u32 {
    let file = dir.join("bg.pid");
    let written = within(Duration::from_secs(30), || {
        file.exists() || child.try_wait().unwrap().is_some()
    });
    assert!(
        written && file.exists(),
        "the step did not start: {:?}",
        child.try_wait()
    );
    std::fs::read_to_string(file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Asserts `pid` goes within 5 s (and kills it if not, so a failing test leaves nothing).
fn assert_gone(pid: u32) {
    let gone = within(Duration::from_secs(5), || !is_alive(pid));
    if !gone {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
    assert!(
        gone,
        "the step's background process {pid} outlived the step"
    );
}

#[test]
fn a_canceled_shell_step_leaves_no_background_process() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jobs.toml"), JOBS).unwrap();
    let log = std::fs::File::create(dir.path().join("run.log")).unwrap();
    let mut child = stepq(dir.path())
        .args([
            "--jobs-file",
            "jobs.toml",
            "run",
            "background",
            "--run-id",
            "bg",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = background_pid(dir.path(), &mut child);
    assert!(is_alive(pid));

    let cancel = run(dir.path(), &["cancel", "bg"]);
    assert_eq!(
        cancel.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&cancel),
        stderr(&cancel)
    );
    let ended = within(Duration::from_secs(10), || {
        child.try_wait().unwrap().is_some()
    });
    if !ended {
        let _ = child.kill();
    }
    assert!(ended, "stepq run did not end after the cancel");
    assert_eq!(child.wait().unwrap().code(), Some(130));
    assert_gone(pid);
}

#[test]
fn a_timed_out_shell_step_leaves_no_background_process() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jobs.toml"), JOBS).unwrap();
    let out = run(
        dir.path(),
        &["--jobs-file", "jobs.toml", "run", "background_timeout"],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("timeout"), "{}", stdout(&out));
    let pid: u32 = std::fs::read_to_string(dir.path().join("bg.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_gone(pid);
}

#[tokio::test]
#[ignore = "localstack"]
async fn localstack_a_sigkilled_workers_step_leaves_no_process() {
    use crate::common::cli::stepq_configured;
    use crate::common::localstack::{config_dir, localstack, TestQueue, WorkerProcess};

    let ls = localstack();
    let queue = TestQueue::create(&ls, false).await;
    let dir = config_dir(&ls, &queue);
    std::fs::write(dir.path().join("jobs.toml"), JOBS).unwrap();
    let worker = WorkerProcess::start_with(dir.path(), "w-doomed", &["--jobs-file", "jobs.toml"]);
    let mut orchestrator = stepq_configured(dir.path())
        .args(["--jobs-file", "jobs.toml", "run", "stubborn"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let plain = background_pid(dir.path(), &mut orchestrator);
    let stubborn: u32 = std::fs::read_to_string(dir.path().join("stubborn.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(is_alive(plain) && is_alive(stubborn));
    worker.kill();
    assert_gone(plain);
    assert_gone(stubborn);
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
    queue.delete().await;
}
