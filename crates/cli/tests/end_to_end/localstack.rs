//! The distributed setup for real, on LocalStack: `stepq run JOB --config stepq.toml`
//! orchestrates over SQS while separate `stepq worker start` processes do the steps, with
//! results, outputs and run records in S3.
//!
//! Ignored by plain `cargo test`; `cargo xtask localstack-test` runs them with
//! STEPQ_TEST_AWS_ENDPOINT, STEPQ_TEST_S3_BUCKET and AWS credentials set. Each test uses its own
//! freshly created queue and its own S3 prefix, so tests never steal each other's messages.

use std::process::Stdio;
use std::time::Duration;

use crate::common::cli::{row, run_configured, stepq_configured, text};
use crate::common::localstack::*;

/// Runs `diamond` with two worker processes and checks its outputs, the run record in S3 as
/// another process sees it, and that both workers stop cleanly.
async fn diamond_on(fifo: bool) {
    let ls = localstack();
    let queue = TestQueue::create(&ls, fifo).await;
    let dir = config_dir(&ls, &queue);
    let w1 = WorkerProcess::start(dir.path(), "w1");
    let w2 = WorkerProcess::start(dir.path(), "w2");
    let out = run_configured(dir.path(), &["run", "diamond", "--run-id", "diamond-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.contains("subtract.result = -1"), "{stdout}");
    for step in ["emit_values", "add_one", "renamed", "subtract"] {
        let cols = row(&stdout, step);
        assert_eq!(cols[1], "SUCCEEDED", "{step}: {stdout}");
        assert!(
            cols[5] == "w1" || cols[5] == "w2",
            "{step} ran on {}",
            cols[5]
        );
    }
    let status = run_configured(dir.path(), &["status", "diamond-run"]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    assert!(String::from_utf8_lossy(&status.stdout).contains("status:       SUCCESS"));
    assert_eq!(w1.stop(), Some(0));
    assert_eq!(w2.stop(), Some(0));
    queue.delete().await;
}

#[tokio::test]
#[ignore = "localstack"]
async fn localstack_diamond_with_two_worker_processes() {
    diamond_on(false).await;
}

#[tokio::test]
#[ignore = "localstack"]
async fn localstack_diamond_on_a_fifo_queue() {
    diamond_on(true).await;
}

#[tokio::test]
#[ignore = "localstack"]
async fn localstack_fifty_step_fan_out() {
    let ls = localstack();
    let queue = TestQueue::create(&ls, false).await;
    let dir = config_dir(&ls, &queue);
    let _w1 = WorkerProcess::start(dir.path(), "w1");
    let _w2 = WorkerProcess::start(dir.path(), "w2");
    let out = run_configured(dir.path(), &["run", "fanout_join_50"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("52 steps succeeded"), "{stdout}");
    queue.delete().await;
}

#[tokio::test]
#[ignore = "localstack"]
async fn localstack_failure_job_exits_1() {
    let ls = localstack();
    let queue = TestQueue::create(&ls, false).await;
    let dir = config_dir(&ls, &queue);
    let _w1 = WorkerProcess::start(dir.path(), "w1");
    let _w2 = WorkerProcess::start(dir.path(), "w2");
    let out = run_configured(dir.path(), &["run", "failure"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(row(&stdout, "fails")[1], "FAILED", "{stdout}");
    assert_eq!(
        row(&stdout, "should_never_execute")[1],
        "SKIPPED",
        "{stdout}"
    );
    queue.delete().await;
}

#[tokio::test]
#[ignore = "localstack"]
async fn localstack_large_payloads_go_through_s3() {
    let ls = localstack();
    let queue = TestQueue::create(&ls, false).await;
    let dir = config_dir(&ls, &queue);
    // A 300 KiB run config rides in every step message: over the 256 KiB SQS threshold, so
    // each message body is offloaded to the bucket and resolved by the worker.
    let big = serde_json::json!({ "blob": "x".repeat(300 * 1024) });
    let file = dir.path().join("big.json");
    std::fs::write(&file, big.to_string()).unwrap();
    let _w1 = WorkerProcess::start(dir.path(), "w1");
    let _w2 = WorkerProcess::start(dir.path(), "w2");
    let arg = format!("@{}", file.display());
    let out = run_configured(dir.path(), &["run", "diamond", "--run-config", &arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("subtract.result = -1"));
    queue.delete().await;
}

#[tokio::test]
#[ignore = "localstack"]
async fn localstack_a_killed_workers_step_is_finished_by_another() {
    let ls = localstack();
    let queue = TestQueue::create(&ls, false).await;
    let dir = config_dir(&ls, &queue);
    let doomed = WorkerProcess::start(dir.path(), "doomed");
    // Four 3-second steps; the run waits for them as long as it takes.
    let orchestrator = stepq_configured(dir.path())
        .args([
            "run",
            "slow",
            "--run-id",
            "killed-run",
            "--run-config",
            "{\"sleep_ms\": 3000}",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    doomed.wait_for("step started", Duration::from_secs(60));
    doomed.kill();
    // The survivor gets the killed worker's step once its visibility timeout (6 s) lapses.
    let survivor = WorkerProcess::start(dir.path(), "survivor");
    let out = orchestrator.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    for i in 0..4 {
        let cols = row(&stdout, &format!("slow_{i}"));
        assert_eq!(cols[1], "SUCCEEDED", "{stdout}");
        assert_eq!(cols[2], "1", "one attempt, one result: {stdout}");
        assert_eq!(cols[5], "survivor", "{stdout}");
    }
    assert_eq!(survivor.stop(), Some(0));
    queue.delete().await;
}

#[tokio::test]
#[ignore = "localstack"]
async fn localstack_a_malformed_message_does_not_stop_the_worker() {
    let ls = localstack();
    let queue = TestQueue::create(&ls, false).await;
    let dir = config_dir(&ls, &queue);
    let worker = WorkerProcess::start(dir.path(), "w1");
    queue.send_raw("this is not a task message").await;
    let line = worker.wait_for("malformed", Duration::from_secs(60));
    assert!(line.contains("this is not a task message"), "{line}");
    let out = run_configured(dir.path(), &["run", "diamond"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = run_configured(dir.path(), &["worker", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(listing.contains(&queue.url), "{listing}");
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("w1 ") && l.contains("live")),
        "{listing}"
    );
    assert_eq!(worker.stop(), Some(0));
    queue.delete().await;
}

#[tokio::test]
#[ignore = "localstack"]
async fn localstack_stepq_cancel_ends_a_distributed_run_canceled() {
    let ls = localstack();
    let queue = TestQueue::create(&ls, false).await;
    let dir = config_dir(&ls, &queue);
    let w1 = WorkerProcess::start(dir.path(), "w1");
    let w2 = WorkerProcess::start(dir.path(), "w2");
    let mut orchestrator = stepq_configured(dir.path())
        .args([
            "run",
            "slow",
            "--run-id",
            "cancel-run",
            "--run-config",
            "{\"sleep_ms\": 600000}",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    w1.wait_for("step started", Duration::from_secs(60));

    // From another process: the run goes CANCELING, its orchestrator cancels the steps on
    // the workers, and the run ends CANCELED.
    let asked = std::time::Instant::now();
    let out = run_configured(dir.path(), &["cancel", "cancel-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("run cancel-run CANCELED"),
        "{}",
        text(&out)
    );
    let deadline = asked + Duration::from_secs(5);
    let code = loop {
        if let Some(status) = orchestrator.try_wait().unwrap() {
            break status.code();
        }
        if std::time::Instant::now() >= deadline {
            let _ = orchestrator.kill();
            panic!("the orchestrator did not end within 5 s of the cancel");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let out = orchestrator.wait_with_output().unwrap();
    assert_eq!(code, Some(130), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    for i in 0..4 {
        assert_eq!(
            row(&stdout, &format!("slow_{i}"))[1],
            "CANCELED",
            "{stdout}"
        );
    }
    let status = run_configured(dir.path(), &["status", "cancel-run"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("status:       CANCELED"));

    // A finished run cannot be canceled again.
    let again = run_configured(dir.path(), &["cancel", "cancel-run"]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));

    // Stopped workers delete their cancel inboxes.
    assert_eq!(w1.stop(), Some(0));
    assert_eq!(w2.stop(), Some(0));
    let name = queue.url.rsplit('/').next().unwrap().to_string();
    let inboxes = queue
        .client
        .list_queues()
        .queue_name_prefix(format!("{name}-cancels-"))
        .send()
        .await
        .unwrap();
    assert!(
        inboxes.queue_urls().is_empty(),
        "{:?}",
        inboxes.queue_urls()
    );
    queue.delete().await;
}

/// An idle worker stopped by SIGTERM waits for its pending long poll (SQS cannot cancel one)
/// and says so; a second SIGTERM stops it at once, exiting 1.
#[tokio::test]
#[ignore = "localstack"]
async fn localstack_an_idle_worker_stops_at_once_on_a_second_sigterm() {
    let ls = localstack();
    let queue = TestQueue::create(&ls, false).await;
    let dir = config_dir(&ls, &queue);
    let path = dir.path().join("stepq.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    let long_polls = config.replace("wait_time_seconds = 2", "wait_time_seconds = 20");
    assert_ne!(config, long_polls, "the test config sets wait_time_seconds");
    std::fs::write(&path, long_polls).unwrap();
    let mut worker = WorkerProcess::start(dir.path(), "w-idle");
    worker.wait_for("receiver started", Duration::from_secs(60));
    let term = |child: &std::process::Child| {
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM");
    };
    // Its first 20 s long poll is under way by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    term(&worker.child);
    worker.wait_for("waiting for the pending long poll", Duration::from_secs(10));
    let second = std::time::Instant::now();
    term(&worker.child);
    let code = loop {
        if let Some(status) = worker.child.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            second.elapsed() < Duration::from_secs(5),
            "the worker did not stop within 5 s of a second SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(code, Some(1));
    worker.wait_for("stopping at once", Duration::from_secs(5));
    queue.delete().await;
}

/// A malformed message goes to the dead-letter queue (`<queue>-dlq`, created on the first
/// one), where `stepq dlq list` shows it with its reason; `redrive --all` sends it back (the
/// worker dead-letters it again) and `purge --yes` empties the queue.
#[tokio::test]
#[ignore = "localstack"]
async fn localstack_dead_letters_are_listed_redriven_and_purged() {
    let ls = localstack();
    let queue = TestQueue::create(&ls, false).await;
    let dir = config_dir(&ls, &queue);
    let worker = WorkerProcess::start(dir.path(), "w-dlq");
    let listed = |dir: &std::path::Path| -> serde_json::Value {
        let out = run_configured(dir, &["dlq", "list", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let out = run_configured(dir.path(), &["dlq", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no dead letters"));

    queue.send_raw("poison: not a task message").await;
    worker.wait_for("moved to the dead-letter place", Duration::from_secs(60));
    let doc = listed(dir.path());
    let letters = doc["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{doc}");
    assert_eq!(letters[0]["body"], "poison: not a task message");
    assert!(
        letters[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("MalformedMessage: "),
        "{doc}"
    );
    assert_eq!(letters[0]["receive_count"], 1);
    assert!(letters[0]["task_id"].is_null());

    let out = run_configured(dir.path(), &["dlq", "redrive", "--all"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("1 dead letter(s) moved back"),
        "{}",
        text(&out)
    );
    worker.wait_for("moved to the dead-letter place", Duration::from_secs(60));

    let refused = run_configured(dir.path(), &["dlq", "purge"]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    let out = run_configured(dir.path(), &["dlq", "purge", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !listed(dir.path())["dead_letters"]
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "purged letters still listed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(worker.stop(), Some(0));
    let dlq = format!("{}-dlq", queue.url);
    let _ = queue.client.delete_queue().queue_url(dlq).send().await;
    queue.delete().await;
}
