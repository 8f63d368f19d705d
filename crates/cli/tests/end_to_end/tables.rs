//! One table per run: `stepq run`'s summary and `stepq status` are the same rows (both from
//! the run's event log), for a plain run, a fused chain, a failed and retried step and a
//! canceled run; a step shows RUNNING in `stepq status` while it runs; and a fused chain of
//! shell steps whose `stepq run` was SIGKILLed is resumed without re-running the steps that
//! had finished.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::cli::{run, stdout, stepq, text};

/// `chain`: three shell steps in a line (fused) and one on its own; `retried` fails its
/// first attempt; `blocks` runs until the file `go` exists; `long`: a chain of shell steps
/// each logging its run to `calls`, the fourth waiting for `go`.
pub(crate) const JOBS: &str = r#"
[[jobs.chain.steps]]
key = "a"
argv = ["echo", "1"]

[[jobs.chain.steps]]
key = "b"
argv = ["cat"]
inputs = { n = "a.stdout" }

[[jobs.chain.steps]]
key = "c"
argv = ["cat"]
inputs = { n = "b.stdout" }

[[jobs.chain.steps]]
key = "alone"
argv = ["echo", "x"]

[[jobs.retried.steps]]
key = "flaky"
argv = ["sh", "-c", "test -f flaked || { touch flaked; exit 1; }; echo ok"]
retry = { max_attempts = 2, delay_seconds = 0 }

[[jobs.blocks.steps]]
key = "wait"
argv = ["sh", "-c", "while ! test -f go; do sleep 0.02; done; echo done"]

[[jobs.long.steps]]
key = "s0"
argv = ["sh", "-c", "echo s0 >> calls; echo 0"]

[[jobs.long.steps]]
key = "s1"
argv = ["sh", "-c", "echo s1 >> calls; cat"]
inputs = { n = "s0.stdout" }

[[jobs.long.steps]]
key = "s2"
argv = ["sh", "-c", "echo s2 >> calls; cat"]
inputs = { n = "s1.stdout" }

[[jobs.long.steps]]
key = "s3"
argv = ["sh", "-c", "echo s3 >> calls; while ! test -f go; do sleep 0.02; done; cat"]
inputs = { n = "s2.stdout" }

[[jobs.long.steps]]
key = "s4"
argv = ["sh", "-c", "echo s4 >> calls; cat"]
inputs = { n = "s3.stdout" }
"#;

/// `args` after `--jobs-file jobs.toml`.
pub(crate) fn jobs<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["--jobs-file", "jobs.toml"];
    all.extend_from_slice(args);
    all
}

/// The step table in a command's output: from its `STEP` header to the next blank line.
pub(crate) fn table(out: &str) -> Vec<String> {
    out.lines()
        .skip_while(|l| !l.starts_with("STEP "))
        .take_while(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// `stepq status RUN_ID`'s table.
fn status_table(dir: &Path, run_id: &str) -> Vec<String> {
    let out = run(dir, &jobs(&["status", run_id]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    table(&stdout(&out))
}

/// Waits until `stepq status RUN_ID` shows a row for `step` with `status`; fails at once,
/// with its stderr, if the run's process `child` exits first.
fn wait_for_status(
    dir: &Path,
    child: &mut Child,
    run_id: &str,
    step: &str,
    status: &str,
) -> Vec<String> {
    let child = std::cell::RefCell::new(child);
    let check_alive = || {
        let mut child = child.borrow_mut();
        if let Some(exit) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            panic!("the run exited ({exit}) before {step} was {status}:\n{stderr}");
        }
    };
    wait_for_status_with(
        |args| {
            check_alive();
            run(dir, args)
        },
        run_id,
        step,
        status,
    )
}

/// Waits (a minute at most) until `stepq status RUN_ID` of the jobs file, run by `stepq`,
/// shows a row for `step` with `status`; returns the table.
pub(crate) fn wait_for_status_with(
    stepq: impl Fn(&[&str]) -> std::process::Output,
    run_id: &str,
    step: &str,
    status: &str,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = stepq(&jobs(&["status", run_id]));
        let rows = table(&stdout(&out));
        if rows.iter().any(|r| {
            let words: Vec<&str> = r.split_whitespace().collect();
            words.first() == Some(&step) && words.get(1) == Some(&status)
        }) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "{step} never {status}: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The steps of job `long` that ran, in `dir/calls`, sorted.
pub(crate) fn sorted_calls(dir: &Path) -> Vec<String> {
    let calls = std::fs::read_to_string(dir.join("calls")).unwrap();
    let mut calls: Vec<String> = calls.lines().map(str::to_string).collect();
    calls.sort();
    calls
}

fn spawn_run(dir: &Path, job: &str, run_id: &str) -> Child {
    stepq(dir)
        .args(jobs(&["run", job, "--run-id", run_id, "--workers", "2"]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("stepq starts")
}

fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill")
        .args([name, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {name}");
}

#[test]
fn run_and_status_show_the_same_table() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jobs.toml"), JOBS).unwrap();
    for (job, run_id, code) in [("chain", "plain", 0), ("retried", "retry", 0)] {
        let out = run(dir.path(), &jobs(&["run", job, "--run-id", run_id]));
        assert_eq!(out.status.code(), Some(code), "{}", text(&out));
        let shown = table(&stdout(&out));
        assert!(shown.len() > 1, "{}", text(&out));
        assert_eq!(shown, status_table(dir.path(), run_id), "{run_id}");
    }
    let retried = status_table(dir.path(), "retry");
    let flaky: Vec<&str> = retried[1].split_whitespace().collect();
    assert_eq!(&flaky[..3], ["flaky", "SUCCEEDED", "2"], "{retried:?}");

    // Canceled while its step runs (SIGINT, as Ctrl-C).
    let mut child = spawn_run(dir.path(), "blocks", "canceled");
    wait_for_status(dir.path(), &mut child, "canceled", "wait", "RUNNING");
    signal(&child, "-INT");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    let shown = table(&stdout(&out));
    assert!(
        shown.iter().any(|r| r.contains("CANCELED")),
        "{}",
        text(&out)
    );
    assert_eq!(shown, status_table(dir.path(), "canceled"));
}

#[test]
fn a_running_step_shows_running_with_its_worker() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jobs.toml"), JOBS).unwrap();
    let mut child = spawn_run(dir.path(), "blocks", "running");
    let rows = wait_for_status(dir.path(), &mut child, "running", "wait", "RUNNING");
    let words: Vec<&str> = rows[1].split_whitespace().collect();
    assert_ne!(words.last(), Some(&"-"), "a worker is named: {rows:?}");
    std::fs::write(dir.path().join("go"), "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn a_killed_run_of_a_fused_chain_resumes_without_rerunning_finished_steps() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jobs.toml"), JOBS).unwrap();
    let mut child = spawn_run(dir.path(), "long", "killed");
    wait_for_status(dir.path(), &mut child, "killed", "s3", "RUNNING");
    signal(&child, "-KILL");
    let _ = child.wait_with_output().unwrap();
    let rows = status_table(dir.path(), "killed");
    for step in ["s0", "s1", "s2"] {
        assert!(
            rows.iter()
                .any(|r| r.starts_with(&format!("{step} ")) && r.contains("SUCCEEDED")),
            "{step} recorded as succeeded: {rows:?}"
        );
    }

    std::fs::write(dir.path().join("go"), "").unwrap();
    let out = run(dir.path(), &jobs(&["resume", "killed", "--force"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let calls = sorted_calls(dir.path());
    // Only the step in flight when the run was killed runs again.
    assert_eq!(
        calls,
        ["s0", "s1", "s2", "s3", "s3", "s4"],
        "{}",
        text(&out)
    );
}
