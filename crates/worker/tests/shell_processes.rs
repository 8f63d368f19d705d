//! No process of a shell step is left behind: cancel, timeout, the command's own exit, the
//! op's future being dropped, a worker stopping past its grace and a worker SIGKILLed all take
//! the step's processes down. Processes are observed in `/proc` (Linux only), polled every
//! 10 ms up to a deadline.
#![cfg(target_os = "linux")]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::args;
use common::harness::Harness;
use stepq_worker::shell::{ShellJobs, ShellOp};
use stepq_worker::{CodeLocation, Op, OpContext, StepInputs, WorkerConfig};
use tokio_util::sync::CancellationToken;

/// How long processes may take to go.
const DEADLINE: Duration = Duration::from_secs(5);

/// Shell that writes the group id of the shell running it to `$DIR/pgid` (the fifth field of
/// `/proc/$$/stat`: the command is a member of the step's group, not its leader, which is the
/// supervising shell).
macro_rules! write_pgid {
    () => {
        r#"cut -d " " -f 5 /proc/$$/stat > "$DIR/pgid.tmp"; mv "$DIR/pgid.tmp" "$DIR/pgid""#
    };
}
/// A command with two background children; it writes its group id to `$DIR/pgid` once they
/// run.
const TWO_IN_BACKGROUND: &str = concat!("sleep 60 & sleep 60 & ", write_pgid!(), "; wait");

/// `(state, pgrp)` of a process, from `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    Some((state, fields.next()?.parse().ok()?))
}

/// Whether `pid` runs (exists and is not a zombie: this machine's init may not reap orphans).
fn is_alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(state, _)| !matches!(state, 'Z' | 'X'))
}

/// The live processes of group `pgid`.
fn live_members(pgid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat(pid).is_some_and(|(s, g)| g == pgid && !matches!(s, 'Z' | 'X')))
        .collect()
}

/// Polls `done` until it holds, failing the test after [`DEADLINE`].
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < DEADLINE,
            "not within {DEADLINE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The pid in file `name` of `dir`, once the command wrote it.
async fn pid_in(dir: &Path, name: &str) -> u32 {
    let path = dir.join(name);
    until(&format!("{} is written", path.display()), || path.exists()).await;
    std::fs::read_to_string(&path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The step's group id the command wrote to `dir/pgid`, once the group has its supervisor and
/// command alive (so a test cannot pass by watching a group that never existed).
async fn group_in(dir: &Path) -> u32 {
    let pgid = pid_in(dir, "pgid").await;
    let members = live_members(pgid);
    assert!(members.len() >= 2, "group {pgid}: {members:?}");
    assert!(
        members.contains(&pgid),
        "the supervisor leads group {pgid}: {members:?}"
    );
    pgid
}

/// Waits until group `pgid` has no live process left.
async fn group_gone(pgid: u32) {
    until(&format!("group {pgid} is gone"), || {
        live_members(pgid).is_empty()
    })
    .await;
}

fn script(dir: &Path, script: &str) -> ShellOp {
    ShellOp::new(vec!["sh".into(), "-c".into(), script.into()])
        .with_env("DIR", dir.display().to_string())
}

fn ctx() -> OpContext {
    OpContext::new("run-1", "job", "step")
}

#[tokio::test]
async fn cancel_takes_down_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    // A long grace: only SIGTERM reaching the background children can end this in time.
    let op = script(dir.path(), TWO_IN_BACKGROUND).with_kill_grace(Duration::from_secs(30));
    let token = CancellationToken::new();
    let ctx = ctx().with_cancellation(token.clone());
    let run = tokio::spawn(async move { op.run(&ctx, StepInputs::new()).await });
    let pgid = group_in(dir.path()).await;
    assert!(live_members(pgid).len() >= 3, "{:?}", live_members(pgid));
    let asked = Instant::now();
    token.cancel();
    let e = run.await.unwrap().unwrap_err();
    assert_eq!(e.kind(), "canceled");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(
        live_members(pgid),
        Vec::<u32>::new(),
        "the op returns once they are gone"
    );
}

#[tokio::test]
async fn timeout_takes_down_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let op = script(dir.path(), TWO_IN_BACKGROUND).with_timeout(Duration::from_millis(500));
    let run = tokio::spawn(async move { op.run(&ctx(), StepInputs::new()).await });
    let pgid = group_in(dir.path()).await;
    let e = run.await.unwrap().unwrap_err();
    assert_eq!(e.kind(), "timeout");
    assert_eq!(live_members(pgid), Vec::<u32>::new());
}

#[tokio::test]
async fn a_command_ignoring_sigterm_is_killed_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let grace = Duration::from_millis(300);
    // `sleep` inherits the ignored SIGTERM.
    let op = script(
        dir.path(),
        concat!(r#"trap "" TERM; "#, write_pgid!(), "; sleep 60"),
    )
    .with_kill_grace(grace);
    let token = CancellationToken::new();
    let ctx = ctx().with_cancellation(token.clone());
    let run = tokio::spawn(async move { op.run(&ctx, StepInputs::new()).await });
    let pgid = group_in(dir.path()).await;
    let asked = Instant::now();
    token.cancel();
    let e = run.await.unwrap().unwrap_err();
    assert_eq!(e.kind(), "canceled");
    assert!(
        asked.elapsed() >= grace,
        "SIGTERM was ignored, so only SIGKILL ended it"
    );
    assert_eq!(live_members(pgid), Vec::<u32>::new());
}

#[tokio::test]
async fn a_background_child_ignoring_sigterm_outlives_its_leader_only_for_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let grace = Duration::from_millis(300);
    // The leader dies of SIGTERM; its background child ignores it.
    let op = script(
        dir.path(),
        concat!(
            r#"(trap "" TERM; exec sleep 60) & echo $! > "$DIR/bg"; "#,
            write_pgid!(),
            "; wait"
        ),
    )
    .with_timeout(Duration::from_millis(300))
    .with_kill_grace(grace);
    let run = tokio::spawn(async move { op.run(&ctx(), StepInputs::new()).await });
    let pgid = group_in(dir.path()).await;
    let background = pid_in(dir.path(), "bg").await;
    assert!(is_alive(background));
    let e = run.await.unwrap().unwrap_err();
    assert_eq!(e.kind(), "timeout");
    assert!(!is_alive(background));
    assert_eq!(live_members(pgid), Vec::<u32>::new());
}

#[tokio::test]
async fn what_a_finished_command_leaves_running_is_taken_down() {
    let dir = tempfile::tempdir().unwrap();
    // The background `sleep` holds standard output open: reading it to the end would wait a
    // minute if the group were left alone.
    let op = script(dir.path(), r#"sleep 60 & echo $! > "$DIR/bg"; echo done"#)
        .with_kill_grace(Duration::from_secs(30));
    let started = Instant::now();
    let out = op.run(&ctx(), StepInputs::new()).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let stdout: String = stepq_worker::decode_value(out.get_raw("stdout").unwrap()).unwrap();
    assert_eq!(stdout, "done\n");
    let background = pid_in(dir.path(), "bg").await;
    assert!(!is_alive(background));
}

#[tokio::test]
async fn dropping_the_op_takes_down_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let op = script(dir.path(), TWO_IN_BACKGROUND);
    let run = tokio::spawn(async move { op.run(&ctx(), StepInputs::new()).await });
    let pgid = group_in(dir.path()).await;
    assert!(!live_members(pgid).is_empty());
    run.abort();
    assert!(run.await.unwrap_err().is_cancelled());
    group_gone(pgid).await;
}

#[tokio::test]
async fn dropping_the_op_kills_what_ignores_sigterm_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let op = script(
        dir.path(),
        concat!(r#"trap "" TERM; "#, write_pgid!(), "; sleep 60"),
    )
    .with_kill_grace(Duration::from_millis(200));
    let run = tokio::spawn(async move { op.run(&ctx(), StepInputs::new()).await });
    let pgid = group_in(dir.path()).await;
    run.abort();
    let _ = run.await;
    group_gone(pgid).await;
}

/// A code location with job `bg`, whose one step `wait` runs [`TWO_IN_BACKGROUND`] in `dir`.
fn background_location(dir: &Path) -> CodeLocation {
    let toml = format!(
        "[jobs.bg]\n[[jobs.bg.steps]]\nkey = \"wait\"\nargv = [\"sh\", \"-c\", '{TWO_IN_BACKGROUND}']\nenv = {{ DIR = \"{}\" }}\nkill_grace_seconds = 0.2\n",
        dir.display()
    );
    ShellJobs::parse(&toml, Path::new("jobs.toml"), dir)
        .unwrap()
        .extend(&CodeLocation::default())
        .unwrap()
}

#[tokio::test]
async fn a_worker_stopping_past_its_grace_takes_down_its_steps_processes() {
    let dir = tempfile::tempdir().unwrap();
    let config = WorkerConfig::named("w").with_grace_period(Duration::from_millis(100));
    let h = Harness::start(background_location(dir.path()), config).await;
    h.send(&args("run-1", "bg", &["wait"])).await;
    let pgid = group_in(dir.path()).await;
    assert!(live_members(pgid).len() >= 3);
    h.stop.cancel();
    let stats = h.running.await.unwrap().unwrap();
    assert_eq!(
        stats.tasks.released, 1,
        "the step was given up, not finished"
    );
    group_gone(pgid).await;
}

#[tokio::test]
async fn a_cancelled_step_on_a_worker_takes_down_its_processes() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(background_location(dir.path()), WorkerConfig::named("w")).await;
    let task_id = h.send(&args("run-1", "bg", &["wait"])).await;
    let pgid = group_in(dir.path()).await;
    assert!(h.cancel.cancel(&task_id));
    let reports = h.reports(&task_id).await;
    assert_eq!(reports[0].status, stepq_plan::StepStatus::Canceled);
    group_gone(pgid).await;
    h.stop.cancel();
    h.running.await.unwrap().unwrap();
}

/// Set in the copy of this test binary that plays a worker about to be SIGKILLed.
const KILLED_WORKER_DIR: &str = "STEPQ_TEST_KILLED_WORKER_DIR";

#[test]
fn a_sigkilled_worker_takes_its_command_and_its_children_along() {
    const NAME: &str = "a_sigkilled_worker_takes_its_command_and_its_children_along";
    if let Some(dir) = std::env::var_os(KILLED_WORKER_DIR) {
        run_and_get_killed(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAME])
        .args(["--nocapture", "--test-threads", "1"])
        .env(KILLED_WORKER_DIR, dir.path())
        .status()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "the helper killed itself: {status:?}"
    );
    let read = |name: &str| -> u32 {
        std::fs::read_to_string(dir.path().join(name))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    // The command, a child of it ignoring SIGTERM, and a plain child.
    let pids = [read("pid"), read("stubborn"), read("plain")];
    let start = Instant::now();
    while pids.iter().any(|&p| is_alive(p)) && start.elapsed() < DEADLINE {
        std::thread::sleep(Duration::from_millis(10));
    }
    let alive: Vec<u32> = pids.into_iter().filter(|&p| is_alive(p)).collect();
    for pid in &alive {
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    }
    assert!(
        alive.is_empty(),
        "step processes {alive:?} outlived their SIGKILLed worker"
    );
}

/// The helper's part: starts a step command with two background children (one ignoring
/// SIGTERM), then SIGKILLs itself.
fn run_and_get_killed(dir: &Path) -> ! {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let op = script(
            dir,
            concat!(
                r#"(trap "" TERM; exec sleep 60) & echo $! > "$DIR/stubborn"; "#,
                r#"sleep 60 & echo $! > "$DIR/plain"; "#,
                r#"echo $$ > "$DIR/pid.tmp"; mv "$DIR/pid.tmp" "$DIR/pid"; wait"#
            ),
        );
        let _running = tokio::spawn(async move { op.run(&ctx(), StepInputs::new()).await });
        pid_in(dir, "pid").await;
    });
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    unreachable!("SIGKILL cannot be caught");
}
