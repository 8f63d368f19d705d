//! `stepq launch`, `stepq resume` and `stepq logs --follow` on LocalStack: runs orchestrated by
//! `stepq worker start` processes, one of which is killed mid-run.
//!
//! Ignored by plain `cargo test`; `cargo xtask localstack-test` runs them with
//! STEPQ_TEST_AWS_ENDPOINT, STEPQ_TEST_S3_BUCKET and AWS credentials set.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use common::cli::{run_configured, stepq_configured, text};
use common::localstack::*;

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
