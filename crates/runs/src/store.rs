//! The `RunStore` trait: run records with compare-and-set status, and an append-only event log.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;
use serde::{Deserialize, Serialize};
use stepq_plan::Event;

use crate::error::StorageError;
use crate::filter::RunFilter;
use crate::record::{RunRecord, RunStatus, StatusChange};

/// What [`RunStore::delete_run`] removed.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DeletedRun {
    /// The record as it was when it was deleted (in the expected terminal status).
    pub record: RunRecord,
    /// Event batches removed with it.
    pub event_batches: u64,
    /// Bytes of the stored record and event log removed, where the store can tell (files,
    /// objects); `None` for a database, whose file shrinks only when it is compacted.
    pub bytes: Option<u64>,
}

impl DeletedRun {
    /// What a store removed: `record`, `event_batches` batches, `bytes` if known.
    pub fn new(record: RunRecord, event_batches: u64, bytes: Option<u64>) -> Self {
        DeletedRun {
            record,
            event_batches,
            bytes,
        }
    }
}

/// Fails with [`StorageError::NotDeletable`] unless `expected` is terminal: what every
/// [`RunStore::delete_run`] checks first.
pub fn check_deletable(run_id: &str, expected: RunStatus) -> Result<(), StorageError> {
    if expected.is_terminal() {
        Ok(())
    } else {
        Err(StorageError::NotDeletable {
            run_id: run_id.to_string(),
            expected,
        })
    }
}

/// How many times a store retries a status compare-and-set that lost to other writers before
/// giving up with [`StorageError::Contention`].
pub const MAX_CAS_ATTEMPTS: u32 = 64;

/// Most event batches one [`RunStore::read_events`] call returns; call again with
/// [`EventPage::next`] for more.
pub const MAX_BATCHES_PER_READ: usize = 1000;

/// Longest pause between two polls of a log by [`poll_for_events`].
pub const MAX_POLL_DELAY: Duration = Duration::from_millis(500);

/// A position in a run's event log: the sequence number of the next batch to read.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct EventCursor(pub u64);

impl EventCursor {
    /// The start of the log.
    pub const START: EventCursor = EventCursor(0);

    /// Sequence number of the next batch to read.
    pub fn batch(self) -> u64 {
        self.0
    }
}

impl fmt::Display for EventCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Events read from a log, and where to read next.
#[derive(Debug, Clone, PartialEq)]
pub struct EventPage {
    /// The events, in log order (batches in sequence order, events in batch order).
    pub events: Vec<Event>,
    /// Cursor to pass to the next read.
    pub next: EventCursor,
}

/// Stores runs and their event logs.
///
/// Status changes are compare-and-set: of two writers racing to move a run out of the same
/// status, exactly one wins and the other gets [`StorageError::InvalidTransition`] (or
/// [`StorageError::UnexpectedStatus`]) from the re-validated change. Event batches are
/// append-only; concurrent writers never overwrite each other, and every reader sees the
/// batches in the same order.
#[async_trait]
pub trait RunStore: Send + Sync + 'static {
    /// Stores a new run; [`StorageError::RunExists`] if its id is taken.
    async fn create_run(&self, record: &RunRecord) -> Result<(), StorageError>;

    /// Reads a run; [`StorageError::RunNotFound`] if there is none.
    async fn get_run(&self, run_id: &str) -> Result<RunRecord, StorageError>;

    /// Up to `limit` runs, newest (`created_at`) first; ties newest run id first.
    async fn list_runs(&self, limit: usize) -> Result<Vec<RunRecord>, StorageError>;

    /// The runs `filter` matches, newest (`created_at`) first, ties newest run id first, at
    /// most `filter.limit` of them.
    ///
    /// The default implementation lists every run ([`list_runs`](RunStore::list_runs)) and
    /// filters them in memory ([`RunFilter::select`]); a store that can query (a database)
    /// overrides it.
    async fn list_runs_matching(&self, filter: &RunFilter) -> Result<Vec<RunRecord>, StorageError> {
        if filter.limit == Some(0) {
            return Ok(Vec::new());
        }
        let runs = self.list_runs(usize::MAX).await?;
        Ok(filter.select(runs))
    }

    /// Applies `change` atomically (see [`RunRecord::apply`]) and returns the new record.
    async fn change_status(
        &self,
        run_id: &str,
        change: &StatusChange,
    ) -> Result<RunRecord, StorageError>;

    /// Removes the run's record and its event log, only if the run is still in `expected`,
    /// which must be terminal ([`StorageError::NotDeletable`] otherwise, before anything is
    /// read). A run found in another status is left alone with
    /// [`StorageError::UnexpectedStatus`]; an unknown run is [`StorageError::RunNotFound`].
    ///
    /// The check and the removal are one compare-and-set against status changes: a resume
    /// that moves the run out of `expected` concurrently either lands first (the delete is
    /// refused) or finds the run gone (its change fails with `RunNotFound`), never a run
    /// half-deleted under it. Outputs, results and cancel markers are other stores' (see
    /// `OutputStore::delete_run`, `ResultBackend::delete_result`).
    ///
    /// The default implementation refuses ([`StorageError::Unsupported`]), so a wrapper store
    /// that does not forward it deletes nothing.
    async fn delete_run(
        &self,
        run_id: &str,
        expected: RunStatus,
    ) -> Result<DeletedRun, StorageError> {
        let _ = (run_id, expected);
        Err(StorageError::Unsupported {
            operation: "deleting runs",
        })
    }

    /// Moves the run to `to` if its lifecycle allows it; returns the new record.
    async fn update_status(&self, run_id: &str, to: RunStatus) -> Result<RunRecord, StorageError> {
        self.change_status(run_id, &StatusChange::to(to)).await
    }

    /// Appends `events` as one batch to the run's log; an empty slice appends nothing.
    /// Fails with [`StorageError::RunNotFound`] for an unknown run and
    /// [`StorageError::ForeignEvent`] if an event names another run.
    async fn append_events(&self, run_id: &str, events: &[Event]) -> Result<(), StorageError>;

    /// Reads the batches from `from` on (at most [`MAX_BATCHES_PER_READ`]); an empty page
    /// with `next == from` means nothing new yet.
    async fn read_events(&self, run_id: &str, from: EventCursor)
        -> Result<EventPage, StorageError>;

    /// Waits until the log holds a batch at or after `from` and returns what is there, or
    /// returns an empty page once the run is in a terminal status with nothing left to read.
    ///
    /// Writers append a run's final events before moving it to a terminal status, so an empty
    /// page means the log of that run is complete (until it is resumed). The future is
    /// cancel-safe: drop it (e.g. under `tokio::time::timeout`) to stop waiting. The default
    /// implementation polls ([`poll_for_events`]); in-process stores are woken by notification.
    async fn wait_events(
        &self,
        run_id: &str,
        from: EventCursor,
    ) -> Result<EventPage, StorageError> {
        poll_for_events(self, run_id, from).await
    }
}

/// Polls the log (and the run's status) with capped exponential backoff, 5 ms doubling to
/// [`MAX_POLL_DELAY`], until [`RunStore::wait_events`] may return. For stores that cannot be
/// notified of another process's writes.
pub async fn poll_for_events<S: RunStore + ?Sized>(
    store: &S,
    run_id: &str,
    from: EventCursor,
) -> Result<EventPage, StorageError> {
    let mut delay = Duration::from_millis(5);
    loop {
        if let Some(page) = check_for_events(store, run_id, from).await? {
            return Ok(page);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_POLL_DELAY);
    }
}

/// One check of [`RunStore::wait_events`]' condition: the page if there are new events or the
/// run is terminal, `None` to keep waiting.
pub async fn check_for_events<S: RunStore + ?Sized>(
    store: &S,
    run_id: &str,
    from: EventCursor,
) -> Result<Option<EventPage>, StorageError> {
    let page = store.read_events(run_id, from).await?;
    if !page.events.is_empty() {
        return Ok(Some(page));
    }
    if store.get_run(run_id).await?.status.is_terminal() {
        // Final events are appended before the terminal status: read once more.
        return store.read_events(run_id, from).await.map(Some);
    }
    Ok(None)
}

/// Reads a run's whole event log, page after page (one read per page, no waiting): what
/// `stepq logs` prints and what a resume rebuilds its known state from.
pub async fn read_all_events<S: RunStore + ?Sized>(
    store: &S,
    run_id: &str,
) -> Result<Vec<Event>, StorageError> {
    let mut events = Vec::new();
    let mut cursor = EventCursor::START;
    loop {
        let page = store.read_events(run_id, cursor).await?;
        if page.events.is_empty() {
            return Ok(events);
        }
        events.extend(page.events);
        cursor = page.next;
    }
}

/// Streams a run's events from `from` on, waiting for new ones ([`RunStore::wait_events`]),
/// and ends once the run is terminal and its log is drained (the `logs --follow` loop).
/// After an error the stream yields it and ends.
pub fn follow_events<'a, S: RunStore + ?Sized>(
    store: &'a S,
    run_id: &'a str,
    from: EventCursor,
) -> impl Stream<Item = Result<Event, StorageError>> + Send + 'a {
    struct State {
        cursor: EventCursor,
        buffered: VecDeque<Event>,
        done: bool,
    }
    let state = State {
        cursor: from,
        buffered: VecDeque::new(),
        done: false,
    };
    futures::stream::unfold(state, move |mut state| async move {
        loop {
            if let Some(event) = state.buffered.pop_front() {
                return Some((Ok(event), state));
            }
            if state.done {
                return None;
            }
            match store.wait_events(run_id, state.cursor).await {
                Ok(page) if page.events.is_empty() => return None,
                Ok(page) => {
                    state.buffered.extend(page.events);
                    state.cursor = page.next;
                }
                Err(e) => {
                    state.done = true;
                    return Some((Err(e), state));
                }
            }
        }
    })
}

/// Checks that every event of a batch belongs to `run_id`.
pub fn check_batch(run_id: &str, events: &[Event]) -> Result<(), StorageError> {
    match events.iter().find(|e| e.run_id != run_id) {
        Some(e) => Err(StorageError::ForeignEvent {
            run_id: run_id.to_string(),
            event_run_id: e.run_id.clone(),
        }),
        None => Ok(()),
    }
}

/// Whether an event writer that lost `conflicts` sequence numbers in a row should re-list the
/// log and jump to its end rather than try the next number (every 8th miss).
pub fn rescan_due(conflicts: u32) -> bool {
    conflicts.checked_rem(8) == Some(0)
}

/// Zero-padded decimal name of a sequence number, so names sort in sequence order.
pub fn seq_name(seq: u64) -> String {
    format!("{seq:020}")
}

/// Parses a [`seq_name`].
pub fn parse_seq(name: &str) -> Option<u64> {
    (name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

/// Sorts records newest first (created_at, then run id) and keeps `limit`.
pub fn newest_first(mut runs: Vec<RunRecord>, limit: usize) -> Vec<RunRecord> {
    runs.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| b.run_id.cmp(&a.run_id))
    });
    runs.truncate(limit);
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_names_sort_in_sequence_order_and_parse_back() {
        let names: Vec<_> = [0u64, 9, 10, 99, 100, u64::MAX]
            .iter()
            .map(|s| seq_name(*s))
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        for (name, seq) in names.iter().zip([0u64, 9, 10, 99, 100, u64::MAX]) {
            assert_eq!(parse_seq(name), Some(seq));
        }
        assert_eq!(parse_seq("12"), None);
        assert_eq!(parse_seq("0000000000000000000x"), None);
        assert_eq!(parse_seq("99999999999999999999"), None, "overflows u64");
    }

    #[tokio::test]
    async fn stores_work_as_trait_objects_with_follow_and_poll() {
        use crate::{InMemoryRunStore, RunRecord};
        use futures::StreamExt;
        use std::sync::Arc;

        let store: Arc<dyn RunStore> = Arc::new(InMemoryRunStore::new());
        store
            .create_run(&RunRecord::new("r1", "job", serde_json::json!({})))
            .await
            .unwrap();
        for status in [RunStatus::Starting, RunStatus::Started] {
            store.update_status("r1", status).await.unwrap();
        }
        let event = Event::run("r1", stepq_plan::EventKind::RunSuccess);
        store
            .append_events("r1", std::slice::from_ref(&event))
            .await
            .unwrap();
        store.update_status("r1", RunStatus::Success).await.unwrap();
        // The generic polling path, as a store without notification would use it.
        let page = poll_for_events(&*store, "r1", EventCursor::START)
            .await
            .unwrap();
        assert_eq!(page.events, vec![event.clone()]);
        let drained = poll_for_events(&*store, "r1", page.next).await.unwrap();
        assert!(
            drained.events.is_empty(),
            "terminal and drained: returns empty"
        );
        let followed: Vec<_> = follow_events(&*store, "r1", EventCursor::START)
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(followed, vec![event]);
    }

    #[test]
    fn rescans_every_eighth_miss() {
        let due: Vec<u32> = (1..=24).filter(|c| rescan_due(*c)).collect();
        assert_eq!(due, vec![8, 16, 24]);
    }

    #[test]
    fn foreign_events_are_rejected_naming_both_runs() {
        let events = vec![
            Event::run("r1", stepq_plan::EventKind::RunStarted),
            Event::run("r2", stepq_plan::EventKind::RunStarted),
        ];
        match check_batch("r1", &events) {
            Err(StorageError::ForeignEvent {
                run_id,
                event_run_id,
            }) => assert_eq!((run_id.as_str(), event_run_id.as_str()), ("r1", "r2")),
            other => panic!("{other:?}"),
        }
        check_batch("r1", &events[..1]).unwrap();
    }
}
