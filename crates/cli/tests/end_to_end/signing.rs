//! `[signing]`: task messages signed by every process and checked by every worker — on the
//! embedded default, and on LocalStack, where a message sent without the key is refused and
//! dead-lettered while signed runs go on.

use std::time::Duration;

use crate::common::cli::{row, run_configured, stepq_configured, text};
use crate::common::localstack::*;

const KEY: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn a_signed_embedded_run_succeeds_and_a_missing_key_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("stepq.toml"),
        "[signing]\nkey_env = \"STEPQ_TEST_SIGNING_KEY\"\n",
    )
    .unwrap();
    let out = stepq_configured(dir.path())
        .env("STEPQ_TEST_SIGNING_KEY", KEY)
        .args(["run", "diamond"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("subtract.result = -1"));

    let out = stepq_configured(dir.path())
        .env_remove("STEPQ_TEST_SIGNING_KEY")
        .args(["run", "diamond"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("signing.key_env"), "{err}");
    assert!(err.contains("STEPQ_TEST_SIGNING_KEY is not set"), "{err}");
}

/// A signed fleet runs `diamond`; a task message sent to the same queue without the key (as
/// anyone with `sqs:SendMessage` could) is not run, gets no result, and is listed by
/// `stepq dlq list` with the reason.
#[tokio::test]
#[ignore = "localstack"]
async fn localstack_a_signed_fleet_refuses_a_forged_task_message() {
    let ls = localstack();
    let queue = TestQueue::create(&ls, false).await;
    let dir = config_dir_with(
        &ls,
        &queue,
        "cli-tests",
        &format!("\n[signing]\nkey = \"{KEY}\"\n"),
    );
    let worker = WorkerProcess::start(dir.path(), "w-signed");
    let out = run_configured(dir.path(), &["run", "diamond", "--run-id", "signed-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(row(&stdout, "subtract")[1], "SUCCEEDED", "{stdout}");

    let forged_id = uuid::Uuid::new_v4().to_string();
    let forged = serde_json::json!({
        "task_id": forged_id,
        "task_name": "execute_job",
        "labels": {"run_id": "forged-run"},
        "labels_types": {"run_id": 0},
        "args": [],
        "kwargs": {},
    });
    queue.send_raw(&forged.to_string()).await;
    let line = worker.wait_for("refused a task message", Duration::from_secs(60));
    assert!(line.contains(&forged_id), "{line}");
    let out = run_configured(dir.path(), &["dlq", "list", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let letters = doc["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{doc}");
    assert_eq!(letters[0]["task_id"], forged_id.as_str(), "{doc}");
    let reason = letters[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("refused by signature check: ") && reason.contains("no signature"),
        "{reason}"
    );
    // Nothing ran for it: no run record of the forged run id.
    let status = run_configured(dir.path(), &["status", "forged-run"]);
    assert_ne!(status.status.code(), Some(0), "{}", text(&status));
    assert_eq!(worker.stop(), Some(0));
    let dlq = format!("{}-dlq", queue.url);
    let _ = queue.client.delete_queue().queue_url(dlq).send().await;
    queue.delete().await;
}
