//! `compact_database` after `delete_run`: the file shrinks, what is left still reads, and
//! an open store keeps working on the compacted file.

use stepq_plan::{Event, EventKind};
use stepq_runs::{read_all_events, RunRecord, RunStatus, RunStore};
use stepq_sqlite::{compact_database, SqliteStore};

async fn finished_run(runs: &impl RunStore, run_id: &str) {
    runs.create_run(&RunRecord::new(run_id, "job", serde_json::json!({})))
        .await
        .unwrap();
    for n in 0..20 {
        let message = format!("{run_id} {n} {}", "x".repeat(2_000));
        runs.append_events(
            run_id,
            &[Event::run(run_id, EventKind::EngineEvent { message })],
        )
        .await
        .unwrap();
    }
    for status in [RunStatus::Starting, RunStatus::Started, RunStatus::Success] {
        runs.update_status(run_id, status).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn compaction_after_deletes_shrinks_the_file_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let runs = store.runs();
    for i in 0..30 {
        finished_run(&runs, &format!("r{i}")).await;
    }
    let untouched = compact_database(store.path()).unwrap();
    for i in 1..30 {
        runs.delete_run(&format!("r{i}"), RunStatus::Success)
            .await
            .unwrap();
    }
    let compacted = compact_database(store.path()).unwrap();
    assert!(
        compacted.reclaimed() > 500_000,
        "29 runs of ~40 KB of events each: {compacted:?}"
    );
    assert!(
        compacted.bytes_after < untouched.bytes_after / 4,
        "{untouched:?} {compacted:?}"
    );
    assert_eq!(read_all_events(&runs, "r0").await.unwrap().len(), 20);
    // The open store still writes and reads.
    finished_run(&runs, "after").await;
    assert_eq!(runs.list_runs(10).await.unwrap().len(), 2);
    // Compacting again only empties the WAL those writes grew.
    let again = compact_database(store.path()).unwrap();
    assert!(again.bytes_after < untouched.bytes_after / 4, "{again:?}");
    assert_eq!(runs.list_runs(10).await.unwrap().len(), 2);
}
