//! What is particular to the SQLite store: bad files get errors naming them, group commit
//! batches concurrent writes, large outputs live beside the database and a torn one is
//! reported, waiters are woken by notification.

use std::sync::Arc;
use std::time::Duration;

use stepq_results::{OutputKey, OutputStore, ResultBackend, ResultError, TaskResult};
use stepq_runs::{RunRecord, RunStore, StorageError};

use super::*;

fn record(run_id: &str) -> RunRecord {
    RunRecord::new(run_id, "job", serde_json::Value::Null)
}

#[test]
fn a_file_that_is_not_a_database_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(DATABASE_FILE), vec![b'x'; 4096]).unwrap();
    let e = SqliteStore::open(dir.path()).unwrap_err();
    assert_eq!(e.kind, SqliteErrorKind::Corrupt, "{e}");
    let text = e.to_string();
    assert!(
        text.contains("stepq.db") && text.contains("move it away"),
        "{text}"
    );
    // Nothing was overwritten.
    assert_eq!(
        std::fs::read(dir.path().join(DATABASE_FILE)).unwrap(),
        vec![b'x'; 4096]
    );
}

#[test]
fn another_programs_database_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let conn = rusqlite::Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
    conn.execute_batch("CREATE TABLE songs (title TEXT); INSERT INTO songs VALUES ('x');")
        .unwrap();
    drop(conn);
    let e = SqliteStore::open(dir.path()).unwrap_err();
    assert_eq!(e.kind, SqliteErrorKind::Foreign, "{e}");
    assert!(e.to_string().contains("another program"), "{e}");
    let conn = rusqlite::Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM songs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1, "the foreign data is untouched");
}

#[test]
fn a_newer_schema_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteStore::open(dir.path()).unwrap());
    let conn = rusqlite::Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
    conn.execute_batch("PRAGMA user_version = 99").unwrap();
    drop(conn);
    let e = SqliteStore::open(dir.path()).unwrap_err();
    assert!(e.to_string().contains("newer stepq"), "{e}");
}

#[tokio::test]
async fn a_read_only_state_dir_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("ro");
    std::fs::create_dir(&state).unwrap();
    let mut perms = std::fs::metadata(&state).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o500);
    std::fs::set_permissions(&state, perms).unwrap();
    if std::fs::write(state.join("probe"), b"").is_ok() {
        return; // running as root: permissions do not bind, nothing to check
    }
    let e = SqliteStore::open(&state).unwrap_err();
    assert!(e.to_string().contains("stepq.db"), "{e}");
    assert!(
        matches!(
            e.kind,
            SqliteErrorKind::CannotOpen | SqliteErrorKind::ReadOnly
        ),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_transactions_and_all_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let results = Arc::new(store.results());
    let writes: Vec<_> = (0..500)
        .map(|i| {
            let results = results.clone();
            tokio::spawn(async move {
                results
                    .set_result(&format!("t{i}"), &TaskResult::ok(i.into(), 0.0))
                    .await
            })
        })
        .collect();
    for w in writes {
        w.await.unwrap().unwrap();
    }
    store.flush().await.unwrap();
    let stats = store.write_stats();
    assert_eq!(stats.writes, 501, "500 results and the flush");
    assert!(
        stats.batches < 500,
        "500 concurrent writes took {} transactions: no group commit",
        stats.batches
    );
    let reopened = SqliteStore::open(dir.path()).unwrap().results();
    for i in [0, 250, 499] {
        let r = reopened.get_result(&format!("t{i}"), false).await.unwrap();
        assert_eq!(r.return_value, serde_json::json!(i));
    }
}

#[tokio::test]
async fn a_result_deleted_within_the_write_behind_linger_is_never_written() {
    let dir = tempfile::tempdir().unwrap();
    // Long enough that the put and the delete below are queued in the same batch.
    let options = SqliteOptions {
        write_behind_linger: Duration::from_millis(300),
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open_with(dir.path(), options).unwrap();
    let results = store.results();
    let value = TaskResult::ok(serde_json::json!("v"), 0.0);
    results
        .set_result("read-then-deleted", &value)
        .await
        .unwrap();
    results.set_result("kept", &value).await.unwrap();
    // Seen at once in this process, before any commit.
    let read = results
        .get_result("read-then-deleted", false)
        .await
        .unwrap();
    assert_eq!(read.return_value, value.return_value);
    results.delete_result("read-then-deleted").await.unwrap();
    store.flush().await.unwrap();
    let stats = store.write_stats();
    assert_eq!(stats.superseded, 1, "{stats:?}");
    assert_eq!(stats.batches, 1, "one commit for all four: {stats:?}");
    let reopened = SqliteStore::open(dir.path()).unwrap().results();
    assert!(reopened.get_result("kept", false).await.is_ok());
    assert!(matches!(
        reopened.get_result("read-then-deleted", false).await,
        Err(ResultError::NotFound { .. })
    ));
}

/// Stores `value` as `task`'s result while a waiter of this process waits for it, and
/// returns what the waiter got (handed over in memory).
async fn hand_over(store: &SqliteStore, task: &'static str, value: &TaskResult) -> TaskResult {
    let results = store.results();
    let waiter = {
        let results = results.clone();
        tokio::spawn(async move { results.wait_result(task, None).await })
    };
    while !store.inner.results_ready.is_waited_on(task) {
        tokio::task::yield_now().await;
    }
    results.set_result(task, value).await.unwrap();
    waiter.await.unwrap().unwrap()
}

#[tokio::test]
async fn a_result_is_held_back_and_deleted_unwritten_or_committed_later() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        write_behind_linger: Duration::ZERO,
        result_hold: Duration::from_millis(300),
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open_with(dir.path(), options).unwrap();
    let (results, runs) = (store.results(), store.runs());
    let value = TaskResult::ok(serde_json::json!("v"), 0.0);
    for task in ["consumed", "kept"] {
        let got = hand_over(&store, task, &value).await;
        assert_eq!(got.return_value, value.return_value);
    }
    results.delete_result("consumed").await.unwrap();
    // A waited write commits at once, and does not take the held results with it.
    runs.create_run(&record("r1")).await.unwrap();
    let other = SqliteStore::open(dir.path()).unwrap().results();
    assert!(matches!(
        other.get_result("kept", false).await,
        Err(ResultError::NotFound { .. })
    ));
    // Once its hold is over, the result nobody deleted is committed; the other never was.
    let kept = other
        .wait_result("kept", Some(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(kept.return_value, value.return_value);
    assert_eq!(store.write_stats().superseded, 1);
    assert!(matches!(
        other.get_result("consumed", false).await,
        Err(ResultError::NotFound { .. })
    ));
}

#[tokio::test]
async fn a_flush_commits_held_results() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        result_hold: Duration::from_secs(3600),
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open_with(dir.path(), options).unwrap();
    let results = store.results();
    results
        .set_result("t", &TaskResult::ok(serde_json::json!(1), 0.0))
        .await
        .unwrap();
    store.flush().await.unwrap();
    let other = SqliteStore::open(dir.path()).unwrap().results();
    assert!(other.get_result("t", false).await.is_ok());
    // Dropping the last handle commits what is still held too.
    results
        .set_result("u", &TaskResult::ok(serde_json::json!(2), 0.0))
        .await
        .unwrap();
    drop(results);
    drop(store);
    assert!(other.get_result("u", false).await.is_ok());
}

#[tokio::test]
async fn a_full_database_names_the_file_refuses_writes_and_loses_nothing_committed() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    store.runs().create_run(&record("before")).await.unwrap();
    store.flush().await.unwrap();
    let pages: u64 = store
        .inner
        .reads
        .read(|conn| {
            conn.query_row("PRAGMA page_count", [], |row| row.get(0))
                .map_err(|e| SqliteError::sql(store.path(), "page count", e))
        })
        .unwrap();
    drop(store);
    // Room for a few more pages only: the results below need many.
    let options = SqliteOptions {
        max_database_pages: Some(pages + 4),
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open_with(dir.path(), options).unwrap();
    let results = store.results();
    let big = TaskResult::ok(serde_json::json!("x".repeat(64 * 1024)), 0.0);
    for i in 0..64 {
        if results.set_result(&format!("t{i}"), &big).await.is_err() {
            break;
        }
    }
    let full = store.flush().await.expect_err("the database is full");
    assert_eq!(full.kind, SqliteErrorKind::Full, "{full}");
    let text = full.to_string();
    assert!(text.contains("stepq.db"), "names the file: {text}");
    assert!(text.contains("disk is full"), "says what happened: {text}");
    assert!(full.class().is_retryable(), "{full}");
    // Later writes are refused with the same error, waited ones too.
    assert!(results.set_result("late", &big).await.is_err());
    assert!(store.runs().create_run(&record("after")).await.is_err());
    drop((results, store));
    // What was committed before is all there.
    let reopened = SqliteStore::open(dir.path()).unwrap();
    let runs = reopened.runs();
    assert_eq!(runs.get_run("before").await.unwrap().run_id, "before");
    assert!(matches!(
        runs.get_run("after").await,
        Err(StorageError::RunNotFound { .. })
    ));
    reopened
        .results()
        .set_result("room again", &big)
        .await
        .unwrap();
    reopened.flush().await.unwrap();
}

#[tokio::test]
async fn a_failed_write_rolls_back_alone() {
    let dir = tempfile::tempdir().unwrap();
    // A linger long enough that the three writes below land in one transaction.
    let options = SqliteOptions {
        linger: Duration::from_millis(200),
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open_with(dir.path(), options).unwrap();
    let runs = store.runs();
    runs.create_run(&record("r1")).await.unwrap();
    let before = store.write_stats();
    let (r2, r1, r3) = (record("r2"), record("r1"), record("r3"));
    let (a, b, c) = tokio::join!(
        runs.create_run(&r2),
        runs.create_run(&r1),
        runs.create_run(&r3),
    );
    assert_eq!(store.write_stats().batches - before.batches, 1, "one batch");
    a.unwrap();
    assert!(matches!(b, Err(StorageError::RunExists { .. })), "{b:?}");
    c.unwrap();
    let ids: Vec<String> = runs
        .list_runs(10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
}

#[tokio::test]
async fn large_outputs_are_files_and_a_torn_one_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        inline_output_limit: 8,
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open_with(dir.path(), options).unwrap();
    let outputs = store.outputs();
    let small = OutputKey::new("r", "a", "small");
    let large = OutputKey::new("r", "a", "large");
    outputs.put(&small, "tiny".into()).await.unwrap();
    outputs
        .put(&large, "a value longer than eight bytes".into())
        .await
        .unwrap();
    let file = dir.path().join(BLOBS_DIR).join("r/a/large");
    assert!(
        file.is_file(),
        "the large output is a file beside the database"
    );
    assert!(!dir.path().join(BLOBS_DIR).join("r/a/small").exists());
    assert_eq!(&outputs.get(&small).await.unwrap()[..], b"tiny");
    store.flush().await.unwrap(); // committed: reads now go to the database and the file
    std::fs::write(&file, b"a value longer").unwrap(); // torn: half of it
    match outputs.get(&large).await {
        Err(ResultError::Corrupt { message, .. }) => {
            assert!(
                message.contains("r/a/large") && message.contains("re-run"),
                "{message}"
            )
        }
        other => panic!("a torn output must not be read: {other:?}"),
    }
    outputs.delete_run("r").await.unwrap();
    assert!(!outputs.exists(&small).await.unwrap());
    assert!(!file.exists(), "delete_run removes the files too");
}

#[tokio::test(start_paused = true)]
async fn a_result_waiter_is_woken_by_the_write_not_a_poll() {
    let dir = tempfile::tempdir().unwrap();
    let results = Arc::new(SqliteStore::open(dir.path()).unwrap().results());
    let waiter = {
        let results = results.clone();
        tokio::spawn(async move { results.wait_result("t1", None).await })
    };
    // The clock is paused and moves only when every task is idle (then it jumps to the next
    // timer: the waiter's poll). A spinning task keeps the runtime busy while the writer
    // thread commits, so the clock stays put unless the waiter really waits for its poll.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinner = {
        let done = done.clone();
        tokio::spawn(async move {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::task::yield_now().await;
            }
        })
    };
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let started = tokio::time::Instant::now();
    results
        .set_result("t1", &TaskResult::ok(1.into(), 0.0))
        .await
        .unwrap();
    for _ in 0..1000 {
        if waiter.is_finished() {
            break;
        }
        tokio::task::yield_now().await;
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    spinner.await.unwrap();
    assert!(waiter.is_finished(), "the write did not wake the waiter");
    let got = waiter.await.unwrap().unwrap();
    assert_eq!(got.return_value, serde_json::json!(1));
    assert_eq!(started.elapsed(), Duration::ZERO, "woken by a poll");
}

#[tokio::test]
async fn a_result_wait_times_out_naming_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let results = SqliteStore::open(dir.path()).unwrap().results();
    match results
        .wait_result("never", Some(Duration::from_millis(20)))
        .await
    {
        Err(ResultError::Timeout { task_id, .. }) => assert_eq!(task_id, "never"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_old_file_layout_gets_a_notice() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(old_layout_notice(dir.path()), None);
    std::fs::create_dir(dir.path().join("runs")).unwrap();
    std::fs::create_dir(dir.path().join("results")).unwrap();
    let notice = old_layout_notice(dir.path()).unwrap();
    assert!(
        notice.contains("runs/, results/") && notice.contains("stepq.db"),
        "{notice}"
    );
    drop(SqliteStore::open(dir.path()).unwrap());
    assert!(
        old_layout_notice(dir.path()).is_some(),
        "until they are gone"
    );
    std::fs::remove_dir(dir.path().join("runs")).unwrap();
    std::fs::remove_dir(dir.path().join("results")).unwrap();
    assert_eq!(old_layout_notice(dir.path()), None);
}

#[tokio::test]
async fn a_written_behind_output_is_read_at_once_and_committed_before_a_later_waited_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let (outputs, runs) = (store.outputs(), store.runs());
    runs.create_run(&record("r")).await.unwrap();
    let key = OutputKey::new("r", "a", "result");
    outputs.put(&key, "42".into()).await.unwrap();
    assert_eq!(&outputs.get(&key).await.unwrap()[..], b"42", "read at once");
    // A write that waits for its commit, sent after the output: once it returns, the output
    // is committed too (the writer commits in send order).
    let event = stepq_plan::Event::run("r", stepq_plan::EventKind::RunStarted);
    runs.append_events("r", &[event]).await.unwrap();
    let other = SqliteStore::open(dir.path()).unwrap().outputs();
    assert_eq!(
        &other.get(&key).await.unwrap()[..],
        b"42",
        "committed in order"
    );
    outputs.delete_run("r").await.unwrap();
    assert!(!other.exists(&key).await.unwrap());
}

/// Processes opening a state directory at the same moment (a `stepq run` creating the
/// database while `stepq status` polls it) all get it: none sees the file between its
/// creation and its switch to WAL, or half-way through its schema, as an error.
#[test]
fn stores_opening_a_new_database_at_once_all_succeed() {
    for _ in 0..50 {
        let dir = tempfile::tempdir().unwrap();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(6));
        let opens: Vec<_> = (0..6)
            .map(|_| {
                let (path, barrier) = (dir.path().to_path_buf(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    SqliteStore::open(&path).map(|_| ())
                })
            })
            .collect();
        for open in opens {
            open.join()
                .unwrap()
                .expect("a concurrent open of a new database");
        }
    }
}
