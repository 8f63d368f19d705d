//! `stepq launch`, `stepq resume` and `stepq logs --follow` on LocalStack: runs orchestrated by
//! `stepq worker start` processes, one of which is killed mid-run (and taken over without
//! `--force` once its heartbeat is lost); and `stepq resume --here`.
//!
//! Ignored by plain `cargo test`; `cargo xtask localstack-test` runs them with
//! STEPQ_TEST_AWS_ENDPOINT, STEPQ_TEST_S3_BUCKET and AWS credentials set.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use crate::common::app::FIXABLE_JOBS;
use crate::common::cli::{run_configured, stepq_configured, text};
use crate::common::localstack::*;

/// `(step, attempt)` of every `... queued, attempt N` line of `stepq logs`.
fn queued_attempts(log: &str) -> Vec<(String, u32)> {
    log.lines()
        .filter_map(|line| {
            let (head, attempt) = line.split_once(" queued, attempt ")?;
            let step = head.rsplit(' ').next()?.to_string();
            let n = attempt.split_whitespace().next()?.parse().ok()?;
            Some((step, n))
        })
        .collect()
}

/// Steps with a `... succeeded in` line.
fn succeeded(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|line| {
            let (head, _) = line.split_once(" succeeded in ")?;
            Some(head.rsplit(' ').next()?.to_string())
        })
        .collect()
}

#[tokio::test]
#[ignore = "localstack"]
async fn localstack_launch_kill_the_orchestrator_then_resume() {
    let ls = localstack();
    let queue = TestQueue::create(&ls, false).await;
    let dir = config_dir(&ls, &queue);
    // One step at a time each: two of the four 4-second steps finish while the others wait.
    let mut workers: BTreeMap<String, WorkerProcess> = ["w1", "w2"]
        .into_iter()
        .map(|n| {
            let w = WorkerProcess::start_with(dir.path(), n, &["--concurrency", "1"]);
            (n.to_string(), w)
        })
        .collect();

    let out = run_configured(
        dir.path(),
        &[
            "launch",
            "slow",
            "--run-id",
            "launched-run",
            "--run-config",
            "{\"sleep_ms\": 4000}",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "launched-run");

    // Follow the log from another process until the first step succeeded.
    let mut follow = stepq_configured(dir.path())
        .args(["logs", "launched-run", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains(" succeeded in ")) {
        seen.push(
            lines
                .recv_timeout(Duration::from_secs(60))
                .expect("`logs --follow` shows a step succeed"),
        );
    }

    // SIGKILL the worker orchestrating the run.
    let status = run_configured(dir.path(), &["status", "launched-run"]);
    let status_text = String::from_utf8_lossy(&status.stdout).into_owned();
    let orchestrator = status_text
        .lines()
        .find_map(|l| l.strip_prefix("orchestrator:"))
        .unwrap_or_else(|| panic!("no orchestrator: {status_text}"))
        .trim()
        .to_string();
    workers
        .remove(&orchestrator)
        .unwrap_or_else(|| panic!("the orchestrator `{orchestrator}` is not a test worker"))
        .kill();
    let before = run_configured(dir.path(), &["logs", "launched-run"]);
    let done_before = succeeded(&String::from_utf8_lossy(&before.stdout));
    assert!(!done_before.is_empty());
    assert!(follow.try_wait().unwrap().is_none(), "the run is not over");

    // Still STARTED by the dead worker: resume needs --force.
    let refused = run_configured(dir.path(), &["resume", "launched-run"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains("--force"), "{}", text(&refused));
    let resumed = run_configured(dir.path(), &["resume", "launched-run", "--force"]);
    assert_eq!(resumed.status.code(), Some(0), "{}", text(&resumed));

    // `logs --follow` ends with the run.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while follow.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "`logs --follow` did not end with the run"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rest: Vec<String> = lines.try_iter().collect();
    assert_eq!(
        rest.last().map(String::as_str),
        Some("run launched-run SUCCESS"),
        "{rest:?}"
    );

    // Steps that succeeded before the kill ran once; every other one ran again as attempt 2.
    let log =
        String::from_utf8_lossy(&run_configured(dir.path(), &["logs", "launched-run"]).stdout)
            .into_owned();
    let queued = queued_attempts(&log);
    let done = succeeded(&log);
    for i in 0..4 {
        let step = format!("slow_{i}");
        let attempts: Vec<u32> = queued
            .iter()
            .filter(|(s, _)| *s == step)
            .map(|(_, n)| *n)
            .collect();
        assert!(done.contains(&step), "{step} never succeeded:\n{log}");
        if done_before.contains(&step) {
            assert_eq!(attempts, [1], "{step} was run again:\n{log}");
        } else {
            assert_eq!(attempts, [1, 2], "{step}:\n{log}");
        }
    }
    let status = run_configured(dir.path(), &["status", "launched-run"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("status:       SUCCESS"));
    for (_, worker) in workers {
        assert_eq!(worker.stop(), Some(0));
    }
    queue.delete().await;
}

#[tokio::test]
#[ignore = "localstack"]
async fn localstack_resume_here_orchestrates_from_this_process() {
    let ls = localstack();
    let queue = TestQueue::create(&ls, false).await;
    let dir = config_dir(&ls, &queue);
    std::fs::write(dir.path().join("jobs.toml"), FIXABLE_JOBS).unwrap();
    let worker = WorkerProcess::start_with(dir.path(), "w1", &["--jobs-file", "jobs.toml"]);
    let with_jobs = |args: &[&str]| {
        let mut all = vec!["--jobs-file", "jobs.toml"];
        all.extend_from_slice(args);
        run_configured(dir.path(), &all)
    };

    let out = with_jobs(&["run", "fixable", "--run-id", "here-run"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    std::fs::write(dir.path().join("fixed"), "").unwrap();

    // Orchestrated by this process, steps on the SQS worker, shown like `stepq run`.
    let out = with_jobs(&["resume", "here-run", "--here"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        shown.contains(
            "resuming run here-run of job `fixable`: 2 steps (SQS, 0 in-process workers)"
        ),
        "{shown}"
    );
    assert!(shown.contains("run here-run SUCCESS"), "{shown}");
    let calls = std::fs::read_to_string(dir.path().join("first_calls")).unwrap();
    assert_eq!(calls.lines().count(), 1, "`first` is not run again");
    let log = String::from_utf8_lossy(&run_configured(dir.path(), &["logs", "here-run"]).stdout)
        .into_owned();
    let queued = queued_attempts(&log);
    let fixable: Vec<u32> = queued
        .iter()
        .filter(|(s, _)| s == "fixable")
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(fixable, [1, 2], "{log}");

    // Nothing left: refused (exit 1) without queueing or running anything.
    let out = with_jobs(&["resume", "here-run", "--here"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("nothing to resume"), "{}", text(&out));
    assert_eq!(worker.stop(), Some(0));
    queue.delete().await;
}

/// Runs `stepq --config stepq.toml ARGS` in `dir` every 200 ms until its stdout satisfies
/// `done` (at most a minute); returns that stdout.
fn wait_for_stdout(
    dir: &std::path::Path,
    args: &[&str],
    what: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = String::from_utf8_lossy(&run_configured(dir, args).stdout).into_owned();
        if done(&out) {
            return out;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: still\n{out}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test]
#[ignore = "localstack"]
async fn localstack_a_run_whose_orchestrator_is_lost_resumes_without_force() {
    let ls = localstack();
    let queue = TestQueue::create(&ls, false).await;
    let dir = config_dir_with(
        &ls,
        &queue,
        "cli-tests",
        "\n[worker]\nhealth_interval_seconds = 1\n",
    );
    let mut workers: BTreeMap<String, WorkerProcess> = ["w1", "w2"]
        .into_iter()
        .map(|n| {
            let w = WorkerProcess::start_with(dir.path(), n, &["--concurrency", "1"]);
            (n.to_string(), w)
        })
        .collect();
    let out = run_configured(
        dir.path(),
        &[
            "launch",
            "slow",
            "--run-id",
            "lost-run",
            "--run-config",
            "{\"sleep_ms\": 2000}",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let status = wait_for_stdout(dir.path(), &["status", "lost-run"], "the run starts", |s| {
        s.contains("status:       STARTED") && s.contains("orchestrator:")
    });
    let orchestrator = status
        .lines()
        .find_map(|l| l.strip_prefix("orchestrator:"))
        .unwrap()
        .trim()
        .to_string();
    workers
        .remove(&orchestrator)
        .unwrap_or_else(|| panic!("the orchestrator `{orchestrator}` is not a test worker"))
        .kill();
    wait_for_stdout(
        dir.path(),
        &["worker", "list"],
        "the orchestrator is lost",
        |s| {
            s.lines().any(|l| {
                l.split_whitespace().next() == Some(orchestrator.as_str()) && l.contains(" LOST ")
            })
        },
    );

    // No --force: the heartbeat shows the orchestrator lost.
    let out = run_configured(dir.path(), &["resume", "lost-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        said.contains(&format!(
            "orchestrator {orchestrator} is lost (last heartbeat "
        )) && said.contains("taking the run over"),
        "{said}"
    );
    let status = wait_for_stdout(dir.path(), &["status", "lost-run"], "the run ends", |s| {
        s.contains("status:       SUCCESS") || s.contains("status:       FAILURE")
    });
    assert!(status.contains("status:       SUCCESS"), "{status}");
    assert!(
        !status.contains(&format!("orchestrator: {orchestrator}")),
        "{status}"
    );
    for (_, worker) in workers {
        assert_eq!(worker.stop(), Some(0));
    }
    queue.delete().await;
}
