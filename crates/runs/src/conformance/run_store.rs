//! The [`RunStore`] suite: records (create, get, list, the validated lifecycle, one winner
//! of racing compare-and-sets) and event logs (concurrent appends, cursors, waits, follows),
//! and that both survive a new store instance.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use stepq_plan::{Event, EventKind};
use tokio::sync::Barrier;

use super::delete_run::{
    check_delete_run_racing_a_resume_has_one_winner,
    check_delete_run_refuses_non_terminal_and_changed_runs,
    check_delete_run_removes_the_record_and_its_log,
};
use super::run_filter::check_list_runs_matching_filters_newest_first;
use super::CASE_STEP_TIMEOUT;
use crate::{
    follow_events, EventCursor, RunRecord, RunStatus, RunStore, StatusChange, StorageError,
};

/// Makes run stores for the suite.
pub trait RunStoreFactory: Send + Sync {
    /// The store under test.
    type Store: RunStore;

    /// A handle on a new, empty storage space (a fresh directory, prefix, ...).
    fn fresh(&self) -> impl Future<Output = Self::Store> + Send;

    /// Another, independent handle on the same space as `store`: what another process opening
    /// the same directory or bucket prefix would get.
    fn reopen(&self, store: &Self::Store) -> impl Future<Output = Self::Store> + Send;
}

/// Runs every [`RunStore`] case, one after another.
pub async fn run_run_store_suite<F: RunStoreFactory>(factory: &F) {
    crate::__run_store_checks!(__run_checks factory);
}

pub(super) async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(CASE_STEP_TIMEOUT, fut).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: no answer within {CASE_STEP_TIMEOUT:?}"),
    }
}

fn record(run_id: &str, created_at: u64) -> RunRecord {
    let mut record = RunRecord::new(run_id, "etl", json!({"ops": {"load": {"rows": 10}}}))
        .with_tag("owner", "conformance");
    record.created_at = created_at;
    record
}

fn engine_event(run_id: &str, message: impl Into<String>) -> Event {
    Event::run(
        run_id,
        EventKind::EngineEvent {
            message: message.into(),
        },
    )
}

fn message(event: &Event) -> &str {
    match &event.kind {
        EventKind::EngineEvent { message } => message,
        other => panic!("unexpected event kind {other:?}"),
    }
}

/// Reads the whole log from the start, page after page.
async fn read_all<S: RunStore + ?Sized>(store: &S, run_id: &str) -> (Vec<Event>, EventCursor) {
    let mut events = Vec::new();
    let mut cursor = EventCursor::START;
    loop {
        let page = bounded("read_events", store.read_events(run_id, cursor))
            .await
            .expect("read_events");
        if page.events.is_empty() {
            assert_eq!(page.next, cursor, "an empty page keeps the cursor");
            return (events, cursor);
        }
        assert!(page.next > cursor, "a non-empty page advances the cursor");
        events.extend(page.events);
        cursor = page.next;
    }
}

async fn move_to<S: RunStore + ?Sized>(store: &S, run_id: &str, path: &[RunStatus]) {
    for status in path {
        store
            .update_status(run_id, *status)
            .await
            .unwrap_or_else(|e| panic!("move {run_id} to {status}: {e}"));
    }
}

/// Stores, reads back, and lists runs newest first with `limit`.
pub async fn check_create_get_and_list_newest_first<F: RunStoreFactory>(factory: &F) {
    let store = factory.fresh().await;
    assert!(store.list_runs(10).await.expect("list empty").is_empty());
    let a = record("run-a", 1_000);
    let b = record("run-b", 3_000).with_step_selection(vec!["load".into()]);
    let c = record("run-c", 2_000);
    for run in [&a, &b, &c] {
        store.create_run(run).await.expect("create_run");
    }
    assert_eq!(store.get_run("run-b").await.expect("get_run"), b);
    let ids = |runs: Vec<RunRecord>| runs.into_iter().map(|r| r.run_id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_runs(10).await.expect("list")),
        ["run-b", "run-c", "run-a"]
    );
    assert_eq!(
        ids(store.list_runs(2).await.expect("list 2")),
        ["run-b", "run-c"]
    );
    assert!(store.list_runs(0).await.expect("list 0").is_empty());
    // The listing shows current status, not the status at creation.
    move_to(&store, "run-a", &[RunStatus::Starting]).await;
    let listed = store.list_runs(10).await.expect("list");
    assert_eq!(listed[2].status, RunStatus::Starting);
}

/// A second `create_run` with a taken id fails and leaves the first record alone.
pub async fn check_duplicate_create_is_rejected<F: RunStoreFactory>(factory: &F) {
    let store = factory.fresh().await;
    let first = record("dup", 1);
    store.create_run(&first).await.expect("create_run");
    let mut second = record("dup", 2);
    second.job_name = "other".into();
    match store.create_run(&second).await {
        Err(StorageError::RunExists { run_id }) => assert_eq!(run_id, "dup"),
        other => panic!("duplicate create: {other:?}"),
    }
    assert_eq!(store.get_run("dup").await.expect("get_run"), first);
}

/// Every operation on an unknown run is `RunNotFound`; unusable ids are `InvalidId`.
pub async fn check_unknown_and_invalid_ids_are_errors<F: RunStoreFactory>(factory: &F) {
    let store = factory.fresh().await;
    let is_not_found = |what: &str, r: Result<(), StorageError>| match r {
        Err(StorageError::RunNotFound { run_id }) => assert_eq!(run_id, "missing", "{what}"),
        other => panic!("{what} on an unknown run: {other:?}"),
    };
    is_not_found("get_run", store.get_run("missing").await.map(drop));
    is_not_found(
        "update_status",
        store
            .update_status("missing", RunStatus::Starting)
            .await
            .map(drop),
    );
    is_not_found(
        "append_events",
        store
            .append_events("missing", &[engine_event("missing", "x")])
            .await,
    );
    is_not_found(
        "append_events (empty)",
        store.append_events("missing", &[]).await,
    );
    is_not_found(
        "read_events",
        store
            .read_events("missing", EventCursor::START)
            .await
            .map(drop),
    );
    is_not_found(
        "wait_events",
        bounded(
            "wait_events",
            store.wait_events("missing", EventCursor::START),
        )
        .await
        .map(drop),
    );
    for bad in ["", "a/b", ".."] {
        match store.create_run(&record(bad, 1)).await {
            Err(StorageError::InvalidId { id, .. }) => assert_eq!(id, bad),
            other => panic!("create_run({bad:?}): {other:?}"),
        }
        match store.get_run(bad).await {
            Err(StorageError::InvalidId { .. }) => {}
            other => panic!("get_run({bad:?}): {other:?}"),
        }
    }
    store
        .create_run(&record("r1", 1))
        .await
        .expect("create_run");
    match store
        .append_events(
            "r1",
            &[engine_event("r1", "ok"), engine_event("r2", "stray")],
        )
        .await
    {
        Err(StorageError::ForeignEvent {
            run_id,
            event_run_id,
        }) => assert_eq!((run_id.as_str(), event_run_id.as_str()), ("r1", "r2")),
        other => panic!("foreign event: {other:?}"),
    }
    let (events, _) = read_all(&store, "r1").await;
    assert!(events.is_empty(), "a rejected batch writes nothing");
}

/// Valid moves update status and times; invalid ones fail naming both states and change
/// nothing; `expecting` guards a claim.
pub async fn check_lifecycle_transitions_are_validated<F: RunStoreFactory>(factory: &F) {
    let store = factory.fresh().await;
    store
        .create_run(&record("r1", 1))
        .await
        .expect("create_run");
    let claimed = store
        .change_status(
            "r1",
            &StatusChange::to(RunStatus::Starting)
                .expecting(RunStatus::Queued)
                .by("worker-1"),
        )
        .await
        .expect("claim");
    assert_eq!(claimed.status, RunStatus::Starting);
    assert_eq!(claimed.orchestrator.as_deref(), Some("worker-1"));
    let started = store
        .update_status("r1", RunStatus::Started)
        .await
        .expect("start");
    assert!(started.started_at.is_some() && started.ended_at.is_none());
    let failed = store
        .update_status("r1", RunStatus::Failure)
        .await
        .expect("fail");
    assert!(failed.ended_at.is_some());
    assert_eq!(store.get_run("r1").await.expect("get_run"), failed);

    // A redelivered launch must not restart a failed run.
    match store
        .change_status(
            "r1",
            &StatusChange::to(RunStatus::Starting).expecting(RunStatus::Queued),
        )
        .await
    {
        Err(StorageError::UnexpectedStatus {
            expected, found, ..
        }) => assert_eq!((expected, found), (RunStatus::Queued, RunStatus::Failure)),
        other => panic!("claim of a failed run: {other:?}"),
    }
    // Resume.
    let resumed = store
        .update_status("r1", RunStatus::Starting)
        .await
        .expect("resume");
    assert_eq!(resumed.ended_at, None);
    move_to(&store, "r1", &[RunStatus::Started, RunStatus::Success]).await;
    for to in RunStatus::ALL {
        match store.update_status("r1", to).await {
            Err(StorageError::InvalidTransition {
                run_id,
                from,
                to: t,
            }) => {
                assert_eq!((run_id.as_str(), from, t), ("r1", RunStatus::Success, to))
            }
            other => panic!("SUCCESS -> {to}: {other:?}"),
        }
    }
    let after = store.get_run("r1").await.expect("get_run");
    assert_eq!(after.status, RunStatus::Success);

    store
        .create_run(&record("r2", 2))
        .await
        .expect("create_run");
    match store.update_status("r2", RunStatus::Success).await {
        Err(StorageError::InvalidTransition { from, to, .. }) => {
            assert_eq!((from, to), (RunStatus::Queued, RunStatus::Success))
        }
        other => panic!("QUEUED -> SUCCESS: {other:?}"),
    }
    move_to(
        &store,
        "r2",
        &[
            RunStatus::Canceling,
            RunStatus::Canceled,
            RunStatus::Starting,
        ],
    )
    .await;
}

/// Two writers (separate handles) race `STARTED -> SUCCESS` against `STARTED -> CANCELED`:
/// exactly one wins, the loser learns the winner's status, and the record shows the winner.
pub async fn check_concurrent_terminal_transitions_have_one_winner<F: RunStoreFactory>(
    factory: &F,
) {
    let first = Arc::new(factory.fresh().await);
    let second = Arc::new(factory.reopen(&first).await);
    for round in 0..10 {
        let run_id = format!("race-{round}");
        first
            .create_run(&record(&run_id, round))
            .await
            .expect("create_run");
        move_to(&*first, &run_id, &[RunStatus::Starting, RunStatus::Started]).await;
        let barrier = Arc::new(Barrier::new(2));
        let racer = |store: Arc<F::Store>, to: RunStatus| {
            let (barrier, run_id) = (barrier.clone(), run_id.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.update_status(&run_id, to).await
            })
        };
        let success = racer(first.clone(), RunStatus::Success);
        let canceled = racer(second.clone(), RunStatus::Canceled);
        let outcomes = [
            (
                RunStatus::Success,
                bounded("race", success).await.expect("join"),
            ),
            (
                RunStatus::Canceled,
                bounded("race", canceled).await.expect("join"),
            ),
        ];
        let winners: Vec<_> = outcomes
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {outcomes:?}");
        let winner = winners[0];
        for (to, outcome) in &outcomes {
            if *to != winner {
                match outcome {
                    Err(StorageError::InvalidTransition { from, .. }) => {
                        assert_eq!(*from, winner, "round {round}")
                    }
                    other => panic!("round {round}: loser got {other:?}"),
                }
            }
        }
        let stored = first.get_run(&run_id).await.expect("get_run");
        assert_eq!(stored.status, winner, "round {round}");
        assert_eq!(
            second.get_run(&run_id).await.expect("get_run").status,
            winner
        );
    }
}

/// Two writers (separate handles) append 200 batches each at the same time: every batch is
/// read back once, each batch whole and in each writer's order, and every reader sees the
/// same order.
pub async fn check_concurrent_appends_lose_nothing<F: RunStoreFactory>(factory: &F) {
    const BATCHES: usize = 200;
    let first = Arc::new(factory.fresh().await);
    let second = Arc::new(factory.reopen(&first).await);
    first
        .create_run(&record("shared", 1))
        .await
        .expect("create_run");
    let barrier = Arc::new(Barrier::new(2));
    let writer = |store: Arc<F::Store>, name: &'static str| {
        let barrier = barrier.clone();
        tokio::spawn(async move {
            barrier.wait().await;
            for batch in 0..BATCHES {
                let events: Vec<_> = (0..batch % 3 + 1)
                    .map(|i| engine_event("shared", format!("{name}/{batch}/{i}")))
                    .collect();
                store
                    .append_events("shared", &events)
                    .await
                    .unwrap_or_else(|e| panic!("{name} batch {batch}: {e}"));
            }
        })
    };
    let a = writer(first.clone(), "a");
    let b = writer(second.clone(), "b");
    bounded("writer a", a).await.expect("writer a");
    bounded("writer b", b).await.expect("writer b");

    let reader = factory.reopen(&first).await;
    let (events, cursor) = read_all(&reader, "shared").await;
    assert_eq!(
        cursor,
        EventCursor(2 * BATCHES as u64),
        "one batch per append"
    );
    let per_writer: usize = (0..BATCHES).map(|b| b % 3 + 1).sum();
    assert_eq!(events.len(), 2 * per_writer, "no event lost or duplicated");
    // Split into batches and check each writer's batches are whole and in order.
    let mut next_batch: BTreeMap<&str, usize> = BTreeMap::new();
    let mut i = 0;
    while i < events.len() {
        let parts: Vec<&str> = message(&events[i]).split('/').collect();
        let (name, batch) = (parts[0], parts[1].parse::<usize>().expect("batch number"));
        let expected = next_batch.entry(name).or_insert(0);
        assert_eq!(batch, *expected, "writer {name}'s batches out of order");
        *expected += 1;
        for j in 0..batch % 3 + 1 {
            assert_eq!(
                message(&events[i + j]),
                format!("{name}/{batch}/{j}"),
                "batch {name}/{batch} is not whole"
            );
        }
        i += batch % 3 + 1;
    }
    assert_eq!(next_batch.get("a"), Some(&BATCHES));
    assert_eq!(next_batch.get("b"), Some(&BATCHES));
    for view in [&*first, &*second] {
        assert_eq!(
            read_all(view, "shared").await.0,
            events,
            "same order for all"
        );
    }
}

/// Reads start at a cursor, return batches in order, and an empty append writes nothing.
pub async fn check_events_read_from_a_cursor<F: RunStoreFactory>(factory: &F) {
    let store = factory.fresh().await;
    store
        .create_run(&record("r1", 1))
        .await
        .expect("create_run");
    let empty = store
        .read_events("r1", EventCursor::START)
        .await
        .expect("read empty log");
    assert!(empty.events.is_empty());
    assert_eq!(empty.next, EventCursor::START);
    let batches = [
        vec![engine_event("r1", "0")],
        vec![engine_event("r1", "1a"), engine_event("r1", "1b")],
        vec![Event::step(
            "r1",
            "load",
            EventKind::StepSuccess {
                duration: Duration::from_millis(12),
            },
        )],
    ];
    for batch in &batches {
        store.append_events("r1", batch).await.expect("append");
    }
    store.append_events("r1", &[]).await.expect("empty append");
    let all = store
        .read_events("r1", EventCursor::START)
        .await
        .expect("read");
    assert_eq!(all.events, batches.concat(), "events round-trip unchanged");
    assert_eq!(all.next, EventCursor(3), "the empty append added no batch");
    let tail = store.read_events("r1", EventCursor(1)).await.expect("read");
    assert_eq!(tail.events, batches[1..].concat());
    assert_eq!(tail.next, EventCursor(3));
    let none = store.read_events("r1", all.next).await.expect("read");
    assert!(none.events.is_empty());
    assert_eq!(none.next, all.next);
}

/// A waiter started before an append returns that event, whether the writer is the same
/// handle or another one; on a terminal run with nothing new it returns an empty page.
pub async fn check_wait_wakes_on_append<F: RunStoreFactory>(factory: &F) {
    let store = factory.fresh().await;
    let other = factory.reopen(&store).await;
    store
        .create_run(&record("r1", 1))
        .await
        .expect("create_run");
    move_to(&store, "r1", &[RunStatus::Starting, RunStatus::Started]).await;
    for (round, writer) in [(0u64, &store), (1, &other)] {
        let wait = store.wait_events("r1", EventCursor(round));
        tokio::pin!(wait);
        assert!(
            futures::poll!(&mut wait).is_pending(),
            "round {round}: nothing to return yet"
        );
        let event = engine_event("r1", format!("after wait {round}"));
        writer
            .append_events("r1", std::slice::from_ref(&event))
            .await
            .expect("append");
        let page = bounded("wait_events", wait).await.expect("wait_events");
        assert_eq!(page.events, vec![event], "round {round}");
        assert_eq!(page.next, EventCursor(round + 1));
    }
    move_to(&store, "r1", &[RunStatus::Success]).await;
    let page = bounded(
        "wait on a finished run",
        store.wait_events("r1", EventCursor(2)),
    )
    .await
    .expect("wait_events");
    assert!(page.events.is_empty());
    assert_eq!(page.next, EventCursor(2));
}

/// `follow_events` streams everything, including events appended while following, and ends
/// once the run is terminal.
pub async fn check_follow_ends_when_run_is_terminal<F: RunStoreFactory>(factory: &F) {
    let store = Arc::new(factory.fresh().await);
    store
        .create_run(&record("r1", 1))
        .await
        .expect("create_run");
    move_to(&*store, "r1", &[RunStatus::Starting, RunStatus::Started]).await;
    store
        .append_events("r1", &[engine_event("r1", "before")])
        .await
        .expect("append");
    let follower = {
        let store = store.clone();
        tokio::spawn(async move {
            follow_events(&*store, "r1", EventCursor::START)
                .map(|e| e.expect("follow").kind)
                .collect::<Vec<_>>()
                .await
        })
    };
    store
        .append_events("r1", &[engine_event("r1", "during")])
        .await
        .expect("append");
    store
        .append_events("r1", &[Event::run("r1", EventKind::RunSuccess)])
        .await
        .expect("append");
    move_to(&*store, "r1", &[RunStatus::Success]).await;
    let kinds = bounded("follow", follower).await.expect("join follower");
    assert_eq!(
        kinds,
        vec![
            engine_event("r1", "before").kind,
            engine_event("r1", "during").kind,
            EventKind::RunSuccess
        ]
    );
    let missing: Vec<_> = follow_events(&*store, "missing", EventCursor::START)
        .collect()
        .await;
    assert!(
        matches!(missing.as_slice(), [Err(StorageError::RunNotFound { .. })]),
        "{missing:?}"
    );
}

/// Records and events written through one handle are all there through a new one, which
/// keeps appending after them.
pub async fn check_data_survives_a_new_store_instance<F: RunStoreFactory>(factory: &F) {
    let store = factory.fresh().await;
    store
        .create_run(&record("r1", 1))
        .await
        .expect("create_run");
    move_to(&store, "r1", &[RunStatus::Starting, RunStatus::Started]).await;
    for i in 0..3 {
        store
            .append_events("r1", &[engine_event("r1", format!("first/{i}"))])
            .await
            .expect("append");
    }
    let before = store.get_run("r1").await.expect("get_run");
    let reopened = factory.reopen(&store).await;
    drop(store);
    assert_eq!(reopened.get_run("r1").await.expect("get_run"), before);
    assert_eq!(reopened.list_runs(10).await.expect("list"), vec![before]);
    reopened
        .append_events("r1", &[engine_event("r1", "second")])
        .await
        .expect("append");
    let (events, cursor) = read_all(&reopened, "r1").await;
    let messages: Vec<_> = events.iter().map(message).collect();
    assert_eq!(messages, ["first/0", "first/1", "first/2", "second"]);
    assert_eq!(cursor, EventCursor(4));
}
