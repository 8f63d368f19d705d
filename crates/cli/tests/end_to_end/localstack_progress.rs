//! Progress entries on SQS + S3 (issue #16): a step a `stepq worker start` process runs shows
//! RUNNING with that worker in `stepq status` while it runs, and a fused chain whose
//! orchestrator was SIGKILLed mid-chain is resumed re-running only the step in flight — the
//! entries travel the reply queue like results.
//!
//! Ignored by plain `cargo test`; `cargo xtask localstack-test` runs them with
//! STEPQ_TEST_AWS_ENDPOINT, STEPQ_TEST_S3_BUCKET and AWS credentials set.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::common::cli::{run_configured, stdout, stepq_configured, text, KilledOnDrop};
use crate::common::localstack::*;
use crate::tables::{jobs, sorted_calls, table, wait_for_status_with, JOBS};

/// `stepq run JOB` of `jobs.toml` on the configured queue, in the background.
fn spawn_run(dir: &Path, job: &str, run_id: &str) -> Child {
    stepq_configured(dir)
        .args(jobs(&["run", job, "--run-id", run_id]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("stepq starts")
}

/// Waits (a minute at most) until `stepq status RUN_ID` shows `step` as `status`; returns
/// that row's words.
fn wait_for_row(dir: &Path, run_id: &str, step: &str, status: &str) -> Vec<String> {
    let rows = wait_for_status_with(|args| run_configured(dir, args), run_id, step, status);
    rows.iter()
        .map(|r| r.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .find(|words| words.first().map(String::as_str) == Some(step))
        .expect("the row waited for")
}

#[tokio::test]
#[ignore = "localstack"]
async fn localstack_a_running_step_shows_running_on_its_worker() {
    let ls = localstack();
    let queue = TestQueue::create(&ls, false).await;
    let dir = config_dir(&ls, &queue);
    std::fs::write(dir.path().join("jobs.toml"), JOBS).unwrap();
    let worker = WorkerProcess::start_with(dir.path(), "w-prog", &["--jobs-file", "jobs.toml"]);
    let mut child = KilledOnDrop(Some(spawn_run(dir.path(), "blocks", "running")));
    let words = wait_for_row(dir.path(), "running", "wait", "RUNNING");
    assert_eq!(
        words.last().map(String::as_str),
        Some("w-prog"),
        "{words:?}"
    );
    std::fs::write(dir.path().join("go"), "").unwrap();
    let out = child.0.take().unwrap().wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(worker.stop(), Some(0));
    queue.delete().await;
}

#[tokio::test]
#[ignore = "localstack"]
async fn localstack_a_killed_fused_chain_resumes_rerunning_only_the_step_in_flight() {
    let ls = localstack();
    let queue = TestQueue::create(&ls, false).await;
    let dir = config_dir(&ls, &queue);
    std::fs::write(dir.path().join("jobs.toml"), JOBS).unwrap();
    let worker = WorkerProcess::start_with(dir.path(), "w-chain", &["--jobs-file", "jobs.toml"]);
    let orchestrator = KilledOnDrop(Some(spawn_run(dir.path(), "long", "killed")));
    // s0-s2 finished inside the fused task, s3 waits for `go`: recorded as they happened.
    wait_for_row(dir.path(), "killed", "s3", "RUNNING");
    drop(orchestrator); // SIGKILL
    let out = run_configured(dir.path(), &jobs(&["status", "killed"]));
    let rows = table(&stdout(&out));
    for step in ["s0", "s1", "s2"] {
        assert!(
            rows.iter()
                .any(|r| r.starts_with(&format!("{step} ")) && r.contains("SUCCEEDED")),
            "{step} recorded as succeeded: {rows:?}"
        );
    }

    // The resume stops the dead orchestrator's task on the worker before queueing its own.
    let mut resume = KilledOnDrop(Some(
        stepq_configured(dir.path())
            .args(jobs(&["resume", "killed", "--here", "--force"]))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    worker.wait_for("step canceled", Duration::from_secs(60));
    std::fs::write(dir.path().join("go"), "").unwrap();
    let out = resume.0.take().unwrap().wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let calls = sorted_calls(dir.path());
    assert_eq!(
        calls,
        ["s0", "s1", "s2", "s3", "s3", "s4"],
        "{}",
        text(&out)
    );
    assert_eq!(worker.stop(), Some(0));
    queue.delete().await;
}
