//! A run started by the launcher while it is being recorded: its events appended to the run
//! store in batches, its record watched for a cancel request, its final status written.

use std::sync::Arc;
use std::time::Duration;

use stepq_core::{retry_temporary, Backoff, FailureLog};
use stepq_plan::{Event, EventKind};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::handle::{EventStream, RunHandle};
use crate::outcome::{RunResult, RunStatus};
use crate::storage::{RunStatus as StoredStatus, RunStore, StorageError};

/// Most events written to the run store as one batch.
pub const MAX_EVENTS_PER_BATCH: usize = 1000;

/// How long the launcher's event recorder keeps collecting a batch after its first event
/// arrived before appending it to the run store (see [`RunLauncher::with_event_linger`]). A
/// batch is one write (one S3 PutObject), so a fan-out whose steps finish close together is
/// recorded in a few writes instead of one per step; readers of the log (`stepq logs
/// --follow`) see its events up to this much later. A run's last event is never held back.
///
/// [`RunLauncher::with_event_linger`]: super::RunLauncher::with_event_linger
pub const DEFAULT_EVENT_LINGER: Duration = Duration::from_millis(100);

/// Longest pause between two reads of a running run's record while its orchestrator watches
/// for a cancel request (see the [launcher module docs](super)).
pub const CANCEL_WATCH_MAX_DELAY: Duration = Duration::from_millis(500);

/// First pause of that watch.
const CANCEL_WATCH_FIRST_DELAY: Duration = Duration::from_millis(25);

/// How long the recorder keeps retrying one batch of events the run store refuses with a
/// temporary error (an outage) before it gives up on it (and tries later batches once each).
pub const RECORD_RETRY_FOR: Duration = Duration::from_secs(120);

/// Pauses between those retries: from the first, doubling up to the last.
const RECORD_RETRY_FIRST_DELAY: Duration = Duration::from_millis(100);
const RECORD_RETRY_MAX_DELAY: Duration = Duration::from_secs(5);

/// Watches run `run_id`'s record until the run ends, and cancels `interrupt` once the record
/// is CANCELING (see the [launcher module docs](super) for why this reads the record rather
/// than waiting for a notification). A failed read is retried at the next turn, and logged
/// once per period while reads keep failing ([`FailureLog`]).
async fn watch_for_cancel(runs: Arc<dyn RunStore>, run_id: String, interrupt: CancellationToken) {
    let mut delay = CANCEL_WATCH_FIRST_DELAY;
    let mut failing = FailureLog::new(format!(
        "reading the status of run {run_id} (watching for a cancel)"
    ));
    loop {
        tokio::select! {
            _ = interrupt.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        let read = runs.get_run(&run_id).await;
        if read.is_ok() {
            failing.succeeded();
        }
        match read {
            Ok(record) if record.status == StoredStatus::Canceling => {
                tracing::info!(%run_id, "the run is being canceled: interrupting it");
                interrupt.cancel();
                return;
            }
            Ok(record) if record.status.is_terminal() => return,
            Ok(_) => {}
            Err(e) => {
                failing.failed(&e);
            }
        }
        delay = (delay * 2).min(CANCEL_WATCH_MAX_DELAY);
    }
}

/// Reads the executor's events, forwards each to `forward` as it arrives (while someone reads
/// it), and appends them to the run store in batches: a batch opens with the first event to
/// arrive and is appended once it holds [`MAX_EVENTS_PER_BATCH`] events, once `linger` has
/// passed since it opened ([`DEFAULT_EVENT_LINGER`]), once a run-terminal event
/// (`RunSuccess`, `RunFailure`, `RunCanceled`) is in it, or once the stream ends. A batch the
/// store refuses with a temporary error is retried for up to [`RECORD_RETRY_FOR`] (the run
/// is held back meanwhile once the stream's buffer is full), the failure logged once per
/// period; one it still refuses is given up and the later batches are each tried once.
/// Returns the first storage error, after draining the stream so the run is never held back.
async fn record_events(
    runs: Arc<dyn RunStore>,
    run_id: String,
    mut stream: EventStream,
    forward: mpsc::Sender<Event>,
    linger: Duration,
) -> Result<(), StorageError> {
    let mut first_error = None;
    let mut failing = FailureLog::new(format!("recording the events of run {run_id}"));
    let mut forwarding = true;
    let mut batch = Vec::new();
    let mut next = stream.recv().await;
    while let Some(first) = next.take() {
        let deadline = tokio::time::Instant::now() + linger;
        let mut event = Some(first);
        while let Some(arrived) = event.take() {
            let ends_run = ends_run(&arrived);
            if forwarding && forward.send(arrived.clone()).await.is_err() {
                forwarding = false;
            }
            batch.push(arrived);
            if ends_run || batch.len() >= MAX_EVENTS_PER_BATCH {
                break;
            }
            event = tokio::select! {
                // Events already there go into this batch even once the linger is over.
                biased;
                arrived = stream.recv() => arrived,
                _ = tokio::time::sleep_until(deadline) => None,
            };
        }
        let retry_for = if first_error.is_none() {
            RECORD_RETRY_FOR
        } else {
            Duration::ZERO
        };
        if let Err(e) = append_retrying(&*runs, &run_id, &batch, retry_for, &mut failing).await {
            tracing::error!(%run_id, error = %e, events = batch.len(), "cannot record run events: giving them up");
            first_error.get_or_insert(e);
        }
        batch.clear();
        next = stream.recv().await;
    }
    first_error.map_or(Ok(()), Err)
}

/// Appends `batch`, retrying a temporary failure for up to `retry_for` with growing pauses;
/// any other is returned at once.
async fn append_retrying(
    runs: &dyn RunStore,
    run_id: &str,
    batch: &[Event],
    retry_for: Duration,
    failing: &mut FailureLog,
) -> Result<(), StorageError> {
    let backoff = Backoff::new(RECORD_RETRY_FIRST_DELAY, RECORD_RETRY_MAX_DELAY, retry_for);
    retry_temporary(backoff, failing, StorageError::class, || {
        runs.append_events(run_id, batch)
    })
    .await
}

/// Sets the run's status to `status`, retrying a temporary failure like
/// [`append_retrying`]. A run found already in `status` is done: an earlier attempt landed
/// and only its answer was lost (the S3 store's compare-and-set then re-reads the record and
/// finds its own change).
async fn update_status_retrying(
    runs: &dyn RunStore,
    run_id: &str,
    status: StoredStatus,
    failing: &mut FailureLog,
) -> Result<(), StorageError> {
    let backoff = Backoff::new(
        RECORD_RETRY_FIRST_DELAY,
        RECORD_RETRY_MAX_DELAY,
        RECORD_RETRY_FOR,
    );
    retry_temporary(backoff, failing, StorageError::class, || async {
        match runs.update_status(run_id, status).await {
            Ok(_) => Ok(()),
            Err(StorageError::InvalidTransition { from, .. }) if from == status => Ok(()),
            Err(e) => Err(e),
        }
    })
    .await
}

/// Whether `event` is a run's last: its batch is appended without waiting for the linger.
fn ends_run(event: &Event) -> bool {
    matches!(
        event.kind,
        EventKind::RunSuccess | EventKind::RunFailure { .. } | EventKind::RunCanceled
    )
}

/// A run started by [`RunLauncher::start`](super::RunLauncher::start): its events (also
/// written to the run store), an interrupt, and its end.
pub struct RecordedRun {
    run_id: String,
    handle: RunHandle,
    events: Option<mpsc::Receiver<Event>>,
    recorder: JoinHandle<Result<(), StorageError>>,
    watcher: JoinHandle<()>,
    runs: Arc<dyn RunStore>,
}

impl std::fmt::Debug for RecordedRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordedRun")
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
}

/// A recorded run that ended: its result, and whether it was fully recorded.
#[derive(Debug)]
pub struct RecordedOutcome {
    /// The run's result.
    pub result: RunResult,
    /// `Err` if the run store missed some of the run (its events or its final status).
    pub recorded: Result<(), StorageError>,
}

impl RecordedRun {
    /// Starts recording the just-started run `handle` (status STARTED in `runs`): appends its
    /// events to the run's log in batches collected for up to `linger`, forwards each to
    /// [`RecordedRun::events`] as it arrives, and watches its record for a cancel request.
    pub(super) fn record(
        runs: Arc<dyn RunStore>,
        run_id: String,
        mut handle: RunHandle,
        linger: Duration,
    ) -> Self {
        let watcher = tokio::spawn(watch_for_cancel(
            runs.clone(),
            run_id.clone(),
            handle.interrupt_token(),
        ));
        let stream = handle.events().expect("a new run's event stream is there");
        let (forward_tx, forward_rx) = mpsc::channel(MAX_EVENTS_PER_BATCH);
        let recorder = tokio::spawn(record_events(
            runs.clone(),
            run_id.clone(),
            stream,
            forward_tx,
            linger,
        ));
        RecordedRun {
            run_id,
            handle,
            events: Some(forward_rx),
            recorder,
            watcher,
            runs,
        }
    }

    /// The run id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// How many steps this run runs (for a resume, only what runs again).
    pub fn step_count(&self) -> usize {
        self.handle.step_count()
    }

    /// Takes the event stream (`None` if taken). Read it to the end or drop it.
    pub fn events(&mut self) -> Option<mpsc::Receiver<Event>> {
        self.events.take()
    }

    /// A token that interrupts the run when cancelled.
    pub fn interrupt_token(&self) -> CancellationToken {
        self.handle.interrupt_token()
    }

    /// Interrupts the run (see [`RunHandle::interrupt`]).
    pub fn interrupt(&self) {
        self.handle.interrupt();
    }

    /// Waits for the run to end, for its events to be recorded, and records its final status
    /// (CANCELED for a run asked to cancel, even one that ended otherwise meanwhile: a
    /// CANCELING run can only become CANCELED).
    pub async fn wait(mut self) -> RecordedOutcome {
        drop(self.events.take());
        let result = self.handle.wait().await;
        self.watcher.abort();
        let mut recorded = match self.recorder.await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(StorageError::Io {
                path: format!("events of run {}", self.run_id),
                source: std::io::Error::other(format!("the event recorder stopped: {e}")),
            }),
        };
        let status = match result.status {
            RunStatus::Success => StoredStatus::Success,
            RunStatus::Failure => StoredStatus::Failure,
            RunStatus::Canceled => StoredStatus::Canceled,
        };
        let mut failing =
            FailureLog::new(format!("recording the final status of run {}", self.run_id));
        let mut update =
            update_status_retrying(&*self.runs, &self.run_id, status, &mut failing).await;
        if let Err(StorageError::InvalidTransition {
            from: StoredStatus::Canceling,
            ..
        }) = update
        {
            update = update_status_retrying(
                &*self.runs,
                &self.run_id,
                StoredStatus::Canceled,
                &mut failing,
            )
            .await;
        }
        if let Err(e) = update {
            tracing::error!(run_id = %self.run_id, error = %e, "cannot record the run's status");
            if recorded.is_ok() {
                recorded = Err(e);
            }
        }
        RecordedOutcome { result, recorded }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{EventCursor, EventPage, InMemoryRunStore, RunRecord, StatusChange};
    use async_trait::async_trait;
    use std::sync::Mutex;

    /// An in-memory run store that remembers the size of every appended batch (attempts
    /// included), and refuses the next `refuse_appends` appends with a temporary error.
    #[derive(Default)]
    struct CountingStore {
        inner: InMemoryRunStore,
        batches: Mutex<Vec<usize>>,
        refuse_appends: Mutex<usize>,
    }

    impl CountingStore {
        fn batches(&self) -> Vec<usize> {
            self.batches.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl RunStore for CountingStore {
        async fn create_run(&self, record: &RunRecord) -> Result<(), StorageError> {
            self.inner.create_run(record).await
        }
        async fn get_run(&self, run_id: &str) -> Result<RunRecord, StorageError> {
            self.inner.get_run(run_id).await
        }
        async fn list_runs(&self, limit: usize) -> Result<Vec<RunRecord>, StorageError> {
            self.inner.list_runs(limit).await
        }
        async fn change_status(
            &self,
            run_id: &str,
            change: &StatusChange,
        ) -> Result<RunRecord, StorageError> {
            self.inner.change_status(run_id, change).await
        }
        async fn append_events(&self, run_id: &str, events: &[Event]) -> Result<(), StorageError> {
            self.batches.lock().unwrap().push(events.len());
            {
                let mut refuse = self.refuse_appends.lock().unwrap();
                if *refuse > 0 {
                    *refuse -= 1;
                    return Err(stepq_core::ServiceError::new(
                        "s3",
                        "DispatchFailure",
                        "connection refused",
                        stepq_core::ErrorClass::Temporary,
                    )
                    .into());
                }
            }
            self.inner.append_events(run_id, events).await
        }
        async fn read_events(
            &self,
            run_id: &str,
            from: EventCursor,
        ) -> Result<EventPage, StorageError> {
            self.inner.read_events(run_id, from).await
        }
        async fn wait_events(
            &self,
            run_id: &str,
            from: EventCursor,
        ) -> Result<EventPage, StorageError> {
            self.inner.wait_events(run_id, from).await
        }
    }

    /// Longer than any test runs: a batch appended in a test was not waiting for its linger.
    const FOREVER: Duration = Duration::from_secs(3600);

    struct Recorder {
        store: Arc<CountingStore>,
        events: mpsc::Sender<Event>,
        forwarded: mpsc::Receiver<Event>,
        recorder: JoinHandle<Result<(), StorageError>>,
    }

    async fn recorder(linger: Duration) -> Recorder {
        let store = Arc::new(CountingStore::default());
        store
            .create_run(&RunRecord::new("r1", "j", serde_json::Value::Null))
            .await
            .unwrap();
        let (events, rx) = mpsc::channel(4 * MAX_EVENTS_PER_BATCH);
        let (forward, forwarded) = mpsc::channel(4 * MAX_EVENTS_PER_BATCH);
        let recorder = tokio::spawn(record_events(
            store.clone(),
            "r1".into(),
            EventStream::new(rx),
            forward,
            linger,
        ));
        Recorder {
            store,
            events,
            forwarded,
            recorder,
        }
    }

    fn queued(n: u32) -> Event {
        Event::step(
            "r1",
            format!("s{n}"),
            EventKind::StepQueued {
                attempt: 1,
                task_id: format!("t{n}"),
            },
        )
    }

    /// The steps `events` are about, in order.
    fn steps(events: &[Event]) -> Vec<&str> {
        events
            .iter()
            .filter_map(|e| e.step_key.as_deref())
            .collect()
    }

    /// Waits (for as long as it takes) until the store holds a batch from `from` on.
    async fn next_batch(store: &CountingStore, from: EventCursor) -> EventPage {
        let page =
            tokio::time::timeout(Duration::from_secs(30), store.inner.wait_events("r1", from))
                .await
                .expect("a batch is appended without waiting for the linger")
                .unwrap();
        assert!(!page.events.is_empty());
        page
    }

    #[tokio::test]
    async fn events_arriving_within_the_linger_are_one_batch_and_forwarded_at_once() {
        let mut r = recorder(FOREVER).await;
        for n in 0..20 {
            let event = queued(n);
            r.events.send(event.clone()).await.unwrap();
            // Forwarded as it arrives, while its batch still waits.
            assert_eq!(r.forwarded.recv().await, Some(event));
            assert!(r.store.batches().is_empty(), "{:?}", r.store.batches());
        }
        // The run's stream ends: the batch is appended at once.
        drop(r.events);
        r.recorder.await.unwrap().unwrap();
        assert_eq!(r.store.batches(), [20]);
        let page = next_batch(&r.store, EventCursor::START).await;
        assert_eq!(
            steps(&page.events),
            steps(&(0..20).map(queued).collect::<Vec<_>>())
        );
    }

    /// (On a paused clock: the retries' pauses pass at once.)
    #[tokio::test(start_paused = true)]
    async fn a_batch_refused_during_an_outage_is_retried_until_it_is_recorded_once() {
        let r = recorder(Duration::ZERO).await;
        *r.store.refuse_appends.lock().unwrap() = 5;
        for n in 0..3 {
            r.events.send(queued(n)).await.unwrap();
        }
        drop(r.events);
        r.recorder.await.unwrap().unwrap();
        let page = r
            .store
            .inner
            .read_events("r1", EventCursor::START)
            .await
            .unwrap();
        assert_eq!(steps(&page.events), ["s0", "s1", "s2"]);
        // Five refused attempts, then every batch once.
        let attempts = r.store.batches().len();
        assert!(attempts > 5, "{:?}", r.store.batches());
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_refused_for_longer_than_the_retry_bound_is_given_up_and_reported() {
        let r = recorder(Duration::ZERO).await;
        *r.store.refuse_appends.lock().unwrap() = usize::MAX;
        r.events.send(queued(0)).await.unwrap();
        drop(r.events);
        let started = tokio::time::Instant::now();
        let error = r.recorder.await.unwrap().unwrap_err();
        assert!(error.to_string().contains("connection refused"), "{error}");
        let waited = started.elapsed();
        assert!(
            waited <= RECORD_RETRY_FOR && waited >= RECORD_RETRY_FOR - RECORD_RETRY_MAX_DELAY,
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn a_run_terminal_event_is_appended_without_waiting_for_the_linger() {
        for last in [
            EventKind::RunSuccess,
            EventKind::RunFailure { errors: Vec::new() },
            EventKind::RunCanceled,
        ] {
            let r = recorder(FOREVER).await;
            r.events.send(queued(0)).await.unwrap();
            r.events.send(Event::run("r1", last.clone())).await.unwrap();
            // The stream stays open: only the terminal event flushes the batch.
            let page = next_batch(&r.store, EventCursor::START).await;
            assert_eq!(page.events.last().unwrap().kind, last);
            assert_eq!(r.store.batches(), [2], "{last:?}");
            r.recorder.abort();
        }
    }

    #[tokio::test]
    async fn a_batch_is_appended_once_its_linger_passed_or_it_is_full() {
        // Linger over: appended with the stream still open.
        let r = recorder(Duration::from_millis(10)).await;
        r.events.send(queued(0)).await.unwrap();
        let page = next_batch(&r.store, EventCursor::START).await;
        assert_eq!(steps(&page.events), ["s0"]);
        r.recorder.abort();

        // Full: appended at once; what follows opens the next batch.
        let r = recorder(FOREVER).await;
        for n in 0..MAX_EVENTS_PER_BATCH as u32 + 1 {
            r.events.send(queued(n)).await.unwrap();
        }
        let page = next_batch(&r.store, EventCursor::START).await;
        assert_eq!(page.events.len(), MAX_EVENTS_PER_BATCH);
        assert_eq!(r.store.batches(), [MAX_EVENTS_PER_BATCH]);
        drop(r.events);
        r.recorder.await.unwrap().unwrap();
        assert_eq!(r.store.batches(), [MAX_EVENTS_PER_BATCH, 1]);
    }

    #[tokio::test]
    async fn a_failed_append_is_reported_after_the_stream_is_drained() {
        let store: Arc<dyn RunStore> = Arc::new(InMemoryRunStore::new());
        let (events, rx) = mpsc::channel(8);
        let (forward, mut forwarded) = mpsc::channel(8);
        // No such run: every append fails.
        let recorder = tokio::spawn(record_events(
            store,
            "r1".into(),
            EventStream::new(rx),
            forward,
            FOREVER,
        ));
        events.send(queued(0)).await.unwrap();
        events
            .send(Event::run("r1", EventKind::RunSuccess))
            .await
            .unwrap();
        drop(events);
        assert!(matches!(
            recorder.await.unwrap(),
            Err(StorageError::RunNotFound { .. })
        ));
        assert_eq!(forwarded.recv().await.map(|e| e.kind), Some(queued(0).kind));
        assert_eq!(
            forwarded.recv().await.map(|e| e.kind),
            Some(EventKind::RunSuccess)
        );
    }
}
