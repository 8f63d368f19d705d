//! The [`RunStore::delete_run`] cases of the run store suite: what a delete removes, that
//! only a run still in the expected terminal status is deleted, and that a delete racing a
//! resume has one winner.

use std::sync::Arc;

use serde_json::json;
use stepq_plan::{Event, EventKind};
use tokio::sync::Barrier;

use super::run_store::{bounded, RunStoreFactory};
use crate::{EventCursor, RunRecord, RunStatus, RunStore, StatusChange, StorageError};

fn record(run_id: &str, created_at: u64) -> RunRecord {
    let mut record = RunRecord::new(run_id, "etl", json!({"delete": run_id}));
    record.created_at = created_at;
    record
}

fn note(run_id: &str, n: usize) -> Event {
    Event::run(
        run_id,
        EventKind::EngineEvent {
            message: format!("note {n}"),
        },
    )
}

/// Creates `run_id`, appends `batches` batches and moves it along `path`.
async fn make_run<S: RunStore + ?Sized>(
    store: &S,
    run_id: &str,
    created_at: u64,
    batches: usize,
    path: &[RunStatus],
) {
    store
        .create_run(&record(run_id, created_at))
        .await
        .expect("create_run");
    for n in 0..batches {
        store
            .append_events(run_id, &[note(run_id, n), note(run_id, n + 100)])
            .await
            .expect("append_events");
    }
    for status in path {
        store
            .update_status(run_id, *status)
            .await
            .unwrap_or_else(|e| panic!("move {run_id} to {status}: {e}"));
    }
}

fn is_not_found(result: &Result<impl std::fmt::Debug, StorageError>) -> bool {
    matches!(result, Err(StorageError::RunNotFound { .. }))
}

/// `delete_run` removes a terminal run's record and event log (and says what it removed),
/// leaves the other runs alone, is seen by another handle, and frees the id: deleting again
/// is `RunNotFound`, and a run created under the same id starts with an empty log.
pub async fn check_delete_run_removes_the_record_and_its_log<F: RunStoreFactory>(factory: &F) {
    use RunStatus::*;
    let store = factory.fresh().await;
    make_run(&store, "d-ok", 1_000, 3, &[Starting, Started, Success]).await;
    make_run(&store, "d-fail", 2_000, 1, &[Starting, Started, Failure]).await;
    make_run(&store, "d-keep", 3_000, 2, &[Starting, Started, Success]).await;
    let deleted = bounded("delete_run", store.delete_run("d-ok", Success))
        .await
        .expect("delete a SUCCESS run");
    assert_eq!(deleted.record.run_id, "d-ok");
    assert_eq!(deleted.record.status, Success, "the record as deleted");
    assert_eq!(deleted.event_batches, 3, "every batch of its log");
    if let Some(bytes) = deleted.bytes {
        assert!(bytes > 0, "a store that counts bytes removed some");
    }
    assert!(is_not_found(&store.get_run("d-ok").await), "record gone");
    assert!(
        is_not_found(&store.read_events("d-ok", EventCursor::START).await),
        "log gone"
    );
    assert!(
        is_not_found(&store.delete_run("d-ok", Success).await),
        "deleting again finds nothing"
    );
    let other = factory.reopen(&store).await;
    assert!(
        is_not_found(&other.get_run("d-ok").await),
        "another handle sees it gone"
    );
    let listed: Vec<String> = other
        .list_runs(usize::MAX)
        .await
        .expect("list_runs")
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    assert_eq!(listed, ["d-keep", "d-fail"], "the others are kept");
    let (events, _) = read(&other, "d-keep").await;
    assert_eq!(events.len(), 4, "another run's log is untouched");
    let failed = other
        .delete_run("d-fail", Failure)
        .await
        .expect("delete a FAILURE run through another handle");
    assert_eq!(failed.event_batches, 1);
    assert!(is_not_found(&store.get_run("d-fail").await));
    // The id is free again: a new run under it starts afresh.
    store
        .create_run(&record("d-ok", 4_000))
        .await
        .expect("re-create a deleted id");
    assert_eq!(store.get_run("d-ok").await.expect("get").status, Queued);
    let (events, _) = read(&store, "d-ok").await;
    assert!(events.is_empty(), "the new run's log is empty: {events:?}");
    store
        .append_events("d-ok", &[note("d-ok", 7)])
        .await
        .expect("append to the new run");
    let (events, _) = read(&other, "d-ok").await;
    assert_eq!(events, vec![note_like(&events[0], "d-ok", 7)]);
}

/// The event a reader got is `note(run_id, n)` (timestamps are the writer's).
fn note_like(got: &Event, run_id: &str, n: usize) -> Event {
    Event {
        timestamp_us: got.timestamp_us,
        ..note(run_id, n)
    }
}

async fn read<S: RunStore + ?Sized>(store: &S, run_id: &str) -> (Vec<Event>, EventCursor) {
    let page = store
        .read_events(run_id, EventCursor::START)
        .await
        .expect("read_events");
    (page.events, page.next)
}

/// `delete_run` refuses a non-terminal expected status before looking (`NotDeletable`), and
/// a run found in another status than expected (`UnexpectedStatus`, naming both): a run
/// that is queued, running, being canceled or resumed is never deleted, whatever is asked.
pub async fn check_delete_run_refuses_non_terminal_and_changed_runs<F: RunStoreFactory>(
    factory: &F,
) {
    use RunStatus::*;
    let store = factory.fresh().await;
    make_run(&store, "n-queued", 1, 0, &[]).await;
    make_run(&store, "n-started", 2, 1, &[Starting, Started]).await;
    make_run(&store, "n-canceling", 3, 1, &[Starting, Started, Canceling]).await;
    make_run(&store, "n-done", 4, 1, &[Starting, Started, Failure]).await;
    for (run_id, status) in [
        ("n-queued", Queued),
        ("n-started", Started),
        ("n-started", Starting),
        ("n-canceling", Canceling),
    ] {
        match store.delete_run(run_id, status).await {
            Err(StorageError::NotDeletable { expected, .. }) => assert_eq!(expected, status),
            other => panic!("delete {run_id} expecting {status}: {other:?}"),
        }
    }
    for (run_id, expected, found) in [
        ("n-queued", Success, Queued),
        ("n-started", Failure, Started),
        ("n-canceling", Canceled, Canceling),
        ("n-done", Success, Failure),
    ] {
        match store.delete_run(run_id, expected).await {
            Err(StorageError::UnexpectedStatus {
                expected: e,
                found: f,
                ..
            }) => assert_eq!((e, f), (expected, found), "{run_id}"),
            other => panic!("delete {run_id} expecting {expected}: {other:?}"),
        }
    }
    // Read FAILURE, then resumed (FAILURE -> STARTING) before the delete: not deleted.
    let seen = store.get_run("n-done").await.expect("get_run");
    assert_eq!(seen.status, Failure);
    store
        .change_status("n-done", &StatusChange::to(Starting).expecting(Failure))
        .await
        .expect("resume n-done");
    match store.delete_run("n-done", seen.status).await {
        Err(StorageError::UnexpectedStatus { found, .. }) => assert_eq!(found, Starting),
        other => panic!("delete of a resumed run: {other:?}"),
    }
    assert!(
        is_not_found(&store.delete_run("missing", Success).await),
        "an unknown run is RunNotFound"
    );
    let listed = store.list_runs(usize::MAX).await.expect("list_runs");
    assert_eq!(listed.len(), 4, "nothing was deleted: {listed:?}");
    for run in &listed {
        let (events, _) = read(&store, &run.run_id).await;
        assert_eq!(events.len(), if run.run_id == "n-queued" { 0 } else { 2 });
    }
}

/// A delete (expecting FAILURE) and a resume (FAILURE -> STARTING) of the same run race from
/// two handles: exactly one wins. Either the run is gone and the resume got `RunNotFound`,
/// or the run is STARTING with its whole log and the delete got `UnexpectedStatus`.
pub async fn check_delete_run_racing_a_resume_has_one_winner<F: RunStoreFactory>(factory: &F) {
    use RunStatus::*;
    let first = Arc::new(factory.fresh().await);
    let second = Arc::new(factory.reopen(&first).await);
    let (mut deletes, mut resumes) = (0, 0);
    for round in 0..10u64 {
        let run_id = format!("race-del-{round}");
        make_run(&*first, &run_id, round, 2, &[Starting, Started, Failure]).await;
        let barrier = Arc::new(Barrier::new(2));
        let delete = {
            let (store, barrier, run_id) = (first.clone(), barrier.clone(), run_id.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.delete_run(&run_id, Failure).await
            })
        };
        let resume = {
            let (store, barrier, run_id) = (second.clone(), barrier.clone(), run_id.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .change_status(&run_id, &StatusChange::to(Starting).expecting(Failure))
                    .await
            })
        };
        let deleted = bounded("delete", delete).await.expect("join");
        let resumed = bounded("resume", resume).await.expect("join");
        match (&deleted, &resumed) {
            (Ok(d), Err(StorageError::RunNotFound { .. })) => {
                deletes += 1;
                assert_eq!(d.event_batches, 2, "round {round}");
                assert!(is_not_found(&first.get_run(&run_id).await), "round {round}");
                assert!(
                    is_not_found(&second.get_run(&run_id).await),
                    "round {round}"
                );
            }
            (Err(StorageError::UnexpectedStatus { found, .. }), Ok(r)) => {
                resumes += 1;
                assert_eq!((*found, r.status), (Starting, Starting), "round {round}");
                let stored = second.get_run(&run_id).await.expect("get_run");
                assert_eq!(stored.status, Starting, "round {round}");
                let (events, _) = read(&*first, &run_id).await;
                assert_eq!(events.len(), 4, "round {round}: the log is whole");
                // The resumed run can carry on.
                first
                    .append_events(&run_id, &[note(&run_id, 9)])
                    .await
                    .expect("append after resume");
                first
                    .update_status(&run_id, Started)
                    .await
                    .expect("resumed run starts");
            }
            other => panic!("round {round}: not one winner: {other:?}"),
        }
    }
    assert_eq!(deletes + resumes, 10);
}
