//! `stepq gc` and `[retention]`, run as a user would: demo runs made by the `stepq` binary on
//! the embedded default, unfinished runs made through the app, then `stepq gc` with each
//! option, checked against `stepq runs --json` and the report.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use stepq_executor::storage::{RunRecord, RunStatus};

use crate::common::app::app_in;
use crate::common::cli::{run, run_configured, stdout, text};

const DAY_US: u64 = 24 * 3_600 * 1_000_000;

/// Runs `stepq ARGS` in `dir`, expects exit 0, and parses stdout as one JSON document.
fn json_of(dir: &Path, args: &[&str]) -> Value {
    let out = run(dir, args);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
    serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("{args:?}: not one JSON document ({e}): {}", text(&out)))
}

/// The ids of every run `stepq runs --json` lists, newest first.
fn listed(dir: &Path) -> Vec<String> {
    ids(&json_of(dir, &["runs", "--json", "--limit", "1000"])["runs"])
}

fn ids(runs: &Value) -> Vec<String> {
    runs.as_array()
        .expect("an array of runs")
        .iter()
        .map(|r| r["run_id"].as_str().expect("run_id").to_string())
        .collect()
}

/// `stepq gc --json ARGS`.
fn gc(dir: &Path, args: &[&str]) -> Value {
    let mut all = vec!["gc", "--json"];
    all.extend_from_slice(args);
    json_of(dir, &all)
}

fn run_job(dir: &Path, job: &str, run_id: &str, code: i32) {
    let out = run(dir, &["run", job, "--run-id", run_id, "--workers", "2"]);
    assert_eq!(out.status.code(), Some(code), "{job}: {}", text(&out));
}

/// Creates, through the app, runs 30 days old that never finished: QUEUED, STARTED (its
/// orchestrator somewhere) and CANCELING.
fn unfinished_runs(dir: &Path) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let app = app_in(dir).await;
            let runs = app.runs();
            for (run_id, path) in [
                ("old-queued", &[][..]),
                (
                    "old-started",
                    &[RunStatus::Starting, RunStatus::Started][..],
                ),
                (
                    "old-canceling",
                    &[
                        RunStatus::Starting,
                        RunStatus::Started,
                        RunStatus::Canceling,
                    ][..],
                ),
            ] {
                let mut record = RunRecord::new(run_id, "diamond", Value::Null);
                record.created_at = stepq_plan::events::now_us() - 30 * DAY_US;
                runs.create_run(&record).await.unwrap();
                for status in path {
                    runs.update_status(run_id, *status).await.unwrap();
                }
            }
        });
}

const UNFINISHED: [&str; 3] = ["old-canceling", "old-started", "old-queued"];

#[test]
fn gc_collects_by_age_status_and_keep_last_and_never_an_unfinished_run() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    run_job(dir, "diamond", "d1", 0);
    run_job(dir, "failure", "f1", 1);
    unfinished_runs(dir);
    std::thread::sleep(Duration::from_millis(3_100));
    run_job(dir, "diamond", "d2", 0);
    run_job(dir, "failure", "f2", 1);
    let everything = listed(dir);
    assert_eq!(everything.len(), 7, "{everything:?}");

    // Without a condition, or with an unfinished status, gc refuses to guess.
    for args in [
        &["gc"][..],
        &["gc", "--status", "started"],
        &["gc", "--older-than", "5x"],
    ] {
        let out = run(dir, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
    }
    assert_eq!(listed(dir), everything);

    // A dry run reports the runs that ended over 2 s ago, oldest first, and deletes nothing.
    let dry = gc(dir, &["--older-than", "2s", "--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["runs_seen"], 7);
    assert_eq!(dry["runs_removed"], 2);
    assert_eq!(ids(&dry["runs"]), ["d1", "f1"]);
    assert_eq!(
        dry["bytes_reclaimed"],
        Value::Null,
        "a dry run measures nothing"
    );
    let d1 = &dry["runs"][0];
    assert_eq!(d1["status"], "SUCCESS");
    assert_eq!(
        d1["task_ids"].as_array().unwrap().len(),
        4,
        "diamond: 4 steps"
    );
    assert_eq!(d1["task_results_deleted"], 0);
    assert_eq!(listed(dir), everything, "the dry run deleted nothing");
    let out = run(dir, &["gc", "--older-than", "2s", "--dry-run"]);
    assert!(
        stdout(&out).starts_with("would remove 2 of 7 run(s)"),
        "{}",
        text(&out)
    );

    // Age and status together: only the old failure goes, with its steps' data.
    let failed = gc(dir, &["--older-than", "2s", "--status", "failure,canceled"]);
    assert_eq!(failed["dry_run"], false);
    assert_eq!(ids(&failed["runs"]), ["f1"]);
    let f1 = &failed["runs"][0];
    assert_eq!(f1["status"], "FAILURE");
    assert!(f1["event_batches"].as_u64().unwrap() > 0, "{f1}");
    assert_eq!(
        f1["task_results_deleted"].as_u64(),
        Some(f1["task_ids"].as_array().unwrap().len() as u64)
    );
    assert_eq!(failed["skipped"], serde_json::json!([]));
    assert_eq!(failed["measured"], "database_file");
    assert_eq!(
        listed(dir),
        [
            "f2",
            "d2",
            "d1",
            "old-canceling",
            "old-started",
            "old-queued"
        ]
    );
    let gone = run(dir, &["status", "f1"]);
    assert_eq!(gone.status.code(), Some(2), "{}", text(&gone));
    let gone = run(dir, &["logs", "f1"]);
    assert_ne!(gone.status.code(), Some(0), "{}", text(&gone));

    // Keep the two newest, whatever their age: d1 goes, the unfinished runs stay.
    let kept = gc(dir, &["--keep-last", "2"]);
    assert_eq!(ids(&kept["runs"]), ["d1"]);
    assert_eq!(
        listed(dir),
        ["f2", "d2", "old-canceling", "old-started", "old-queued"]
    );

    // Every finished run: what is left are the unfinished ones, 30 days old as they are.
    let all = gc(dir, &["--older-than", "0s"]);
    assert_eq!(ids(&all["runs"]), ["d2", "f2"]);
    assert_eq!(
        all["skipped"],
        serde_json::json!([]),
        "unfinished runs are not even tried"
    );
    assert_eq!(all["runs_seen"], 5);
    assert_eq!(listed(dir), UNFINISHED);
    let again = gc(dir, &["--older-than", "0s"]);
    assert_eq!(again["runs_removed"], 0, "{again}");
    assert_eq!(
        again["compacted"], false,
        "nothing removed, nothing compacted"
    );
    assert_eq!(listed(dir), UNFINISHED);
    // The run store still works for what is left.
    let out = run(dir, &["status", "old-started", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn gc_of_every_run_compacts_the_database_and_reports_the_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    for n in 0..4 {
        run_job(dir, "diamond", &format!("d{n}"), 0);
    }
    run_job(dir, "failure", "f", 1);
    let db = dir.join(".stepq").join("stepq.db");
    let report = gc(dir, &["--older-than", "0s"]);
    assert_eq!(report["runs_removed"], 5, "{report}");
    assert_eq!(report["measured"], "database_file");
    assert_eq!(report["compacted"], true);
    let (before, after) = (
        report["bytes_before"].as_u64().unwrap(),
        report["bytes_after"].as_u64().unwrap(),
    );
    let reclaimed = report["bytes_reclaimed"].as_u64().unwrap();
    assert!(reclaimed > 0, "{report}");
    assert_eq!(reclaimed, before - after);
    let on_disk = std::fs::metadata(&db).unwrap().len();
    assert!(
        on_disk <= after,
        "the file is as small as reported: {on_disk} > {after}"
    );
    assert!(listed(dir).is_empty());
    let out = run(dir, &["gc", "--older-than", "0s"]);
    assert!(
        stdout(&out).starts_with("removed 0 of 0 run(s)"),
        "{}",
        text(&out)
    );
}

#[test]
fn gc_on_the_file_layout_removes_the_run_directories_and_counts_their_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    std::fs::write(dir.join("stepq.toml"), "state_store = \"files\"\n").unwrap();
    let run_here = |args: &[&str]| run_configured(dir, args);
    for (job, id, code) in [("diamond", "d1", 0), ("failure", "f1", 1)] {
        let out = run_here(&["run", job, "--run-id", id, "--workers", "2"]);
        assert_eq!(out.status.code(), Some(code), "{}", text(&out));
    }
    let runs_dir = dir.join(".stepq").join("runs");
    assert!(runs_dir.join("d1").is_dir());
    let out = run_here(&["gc", "--json", "--status", "success"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(ids(&report["runs"]), ["d1"]);
    assert_eq!(report["measured"], "state_dir");
    assert!(report["bytes_reclaimed"].as_u64().unwrap() > 0, "{report}");
    assert!(!runs_dir.join("d1").exists(), "the run's directory is gone");
    assert!(runs_dir.join("f1").is_dir(), "the failure is kept");
    let outputs = dir.join(".stepq").join("outputs").join("d1");
    assert!(!outputs.exists(), "its outputs are gone");
    let out = run_here(&["runs", "--json"]);
    let left: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(ids(&left["runs"]), ["f1"]);
}

#[test]
fn retention_in_stepq_toml_collects_at_the_end_of_stepq_run() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    std::fs::write(dir.join("stepq.toml"), "[retention]\nkeep_last = 2\n").unwrap();
    unfinished_runs(dir);
    for n in 0..4 {
        let id = format!("r{n}");
        let out = run_configured(dir, &["run", "diamond", "--run-id", &id, "--workers", "2"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    // The two newest stay (the unfinished runs are older, but are never collected).
    assert_eq!(
        listed(dir),
        ["r3", "r2", "old-canceling", "old-started", "old-queued"]
    );
    // A bad value is refused by name.
    std::fs::write(dir.join("stepq.toml"), "[retention]\nkeep_days = 0\n").unwrap();
    let out = run_configured(dir, &["runs"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("retention.keep_days"), "{}", text(&out));
}
