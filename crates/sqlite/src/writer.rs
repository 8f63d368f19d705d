//! The group-commit writer: one thread owns the write connection; every write of the process
//! is a job sent to it, and the jobs queued while a transaction commits go into the next one.
//!
//! Each job runs inside its own savepoint, so a job that fails (a duplicate run, a lost
//! compare-and-set) is rolled back alone and the rest of the batch still commits. A job's
//! caller hears back only after the transaction holding it committed, so a write that
//! returned is durable against a crash of the process, and a crash loses at most the batch
//! being committed — never part of a record, since a transaction is all or nothing.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::error::{take_last_sql_error, SqliteError, SqliteErrorKind};
use crate::notify::EXTERNAL_CHECK;

/// Most jobs in one transaction.
const MAX_BATCH: usize = 4096;

/// What the writer thread runs: applies itself to the connection (inside the batch's
/// transaction; `Err` when the transaction could not start) and returns what to do once the
/// batch committed or failed.
/// Besides its completion, a job says whether it was a write-behind write that failed: its
/// caller has returned long ago, so no later write may commit after it (see `commit_batch`).
type Apply = Box<dyn FnOnce(Result<&Connection, &SqliteError>) -> (Completion, bool) + Send>;
type Completion = Box<dyn FnOnce(Result<(), &SqliteError>) + Send>;

/// A queued write, and whether a caller waits for its commit.
struct Job {
    apply: Apply,
    /// Sent by [`Writer::write`] (someone waits): its batch commits after `linger` at most.
    /// A write-behind job ([`Writer::enqueue`]) may wait up to `behind_linger`.
    waited: bool,
    /// Sent by [`Writer::flush`]: every job sent before it runs in its batch, held ones too.
    flush: bool,
    /// A write-behind job that may be held back until then even when its batch commits
    /// earlier ([`Writer::enqueue`] with a hold).
    hold_until: Option<Instant>,
}

/// Sends jobs to the writer thread; dropping every handle stops the thread after the jobs
/// already sent.
#[derive(Debug)]
pub(crate) struct Writer {
    jobs: mpsc::Sender<Job>,
    path: PathBuf,
    stats: Arc<Counters>,
    /// The failure that stopped the writer, if one did (see `commit_batch`).
    failure: Arc<std::sync::Mutex<Option<SqliteError>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Writer {
    /// Lets the thread commit what was queued, and waits for it (unless the last handle is
    /// dropped on the writer thread itself, by a job that held it).
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.jobs, closed));
        self.wake();
        if let Some(handle) = self.thread.take() {
            if handle.thread().id() != thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

/// What the writer has done so far.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    batches: AtomicU64,
    writes: AtomicU64,
}

/// How many writes the store committed, in how many transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteStats {
    /// Transactions committed (or failed).
    pub batches: u64,
    /// Writes applied in them.
    pub writes: u64,
    /// Of those, write-behind writes skipped because a later write of the same key (a
    /// result the orchestrator read and deleted) was queued behind them.
    pub superseded: u64,
}

impl Writer {
    /// Starts the writer thread on `conn`; `linger` is how long it waits for more jobs
    /// after the first of a batch that someone waits for (zero: take what is queued and
    /// commit at once), `behind_linger` how long a batch of write-behind jobs only may wait
    /// for more (so that the writes of consecutive steps share a commit, and a write that a
    /// later one of the same key supersedes meanwhile is skipped).
    ///
    /// `on_external_commit` is called (on the writer thread) when another connection — another
    /// process, or another handle on the same file — committed since the last check; the
    /// thread checks after each batch and every [`EXTERNAL_CHECK`] while idle.
    pub(crate) fn start(
        conn: Connection,
        path: PathBuf,
        linger: Duration,
        behind_linger: Duration,
        on_external_commit: Box<dyn Fn() + Send>,
    ) -> Result<Self, SqliteError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let thread_path = path.clone();
        let stats = Arc::new(Counters::default());
        let counters = stats.clone();
        let failure = Arc::new(std::sync::Mutex::new(None));
        let stopped_by = failure.clone();
        let handle = thread::Builder::new()
            .name("stepq-sqlite-writer".into())
            .spawn(move || {
                run(
                    conn,
                    thread_path,
                    queue,
                    Lingers {
                        waited: linger,
                        behind: behind_linger,
                    },
                    &counters,
                    &stopped_by,
                    on_external_commit,
                )
            })
            .map_err(|e| {
                SqliteError::new(
                    &path,
                    SqliteErrorKind::Other,
                    format!("cannot start the writer thread: {e}"),
                )
            })?;
        Ok(Writer {
            jobs,
            path,
            stats,
            failure,
            thread: Some(handle),
        })
    }

    /// The failure of a queued write that stopped the writer, if one did: every later write
    /// fails with it.
    pub(crate) fn failure(&self) -> Option<SqliteError> {
        self.failure.lock().expect("failure lock").clone()
    }

    /// Ends the writer thread's linger, if it is in one (see `collect_batch`).
    fn wake(&self) {
        if let Some(handle) = &self.thread {
            handle.thread().unpark();
        }
    }

    /// Writes and batches so far.
    pub(crate) fn stats(&self) -> WriteStats {
        WriteStats {
            batches: self.stats.batches.load(Ordering::Relaxed),
            writes: self.stats.writes.load(Ordering::Relaxed),
            superseded: 0,
        }
    }

    /// Queues `apply` for a coming batch and returns at once; `settled` runs on the writer
    /// thread once the batch committed (`Ok`) or failed (`Err`, or `apply`'s own error).
    /// `apply` runs without a savepoint of its own: it must be one statement (which SQLite
    /// undoes whole when it fails) or otherwise leave nothing behind when it fails.
    ///
    /// With `hold`, the write may run up to `hold` later than the batch it arrives in, and
    /// after writes sent after it: for a write that a later one of the same key will likely
    /// supersede soon (a step result, which the orchestrator deletes once read), so that it
    /// is never run at all. Nothing may depend on its commit order; a
    /// [`flush`](Writer::flush) or the writer stopping runs it at once.
    pub(crate) fn enqueue(
        &self,
        hold: Option<Duration>,
        apply: impl FnOnce(&Connection) -> Result<(), SqliteError> + Send + 'static,
        settled: impl FnOnce(Result<(), SqliteError>) + Send + 'static,
    ) -> Result<(), SqliteError> {
        let job: Apply = Box::new(
            move |conn: Result<&Connection, &SqliteError>| -> (Completion, bool) {
                let outcome = match conn {
                    Ok(conn) => apply(conn),
                    Err(e) => Err(e.clone()),
                };
                let failed = outcome.is_err();
                let complete: Completion = Box::new(move |committed: Result<(), &SqliteError>| {
                    settled(match committed {
                        Ok(()) => outcome,
                        Err(e) => Err(e.clone()),
                    })
                });
                (complete, failed)
            },
        );
        self.jobs
            .send(Job {
                apply: job,
                waited: false,
                flush: false,
                hold_until: hold.map(|h| Instant::now() + h),
            })
            .map_err(|_| closed(&self.path))
    }

    /// Waits until every job sent before this call committed (or failed).
    pub(crate) async fn flush(&self) -> Result<(), SqliteError> {
        self.send_waited(true, |_| Ok::<(), SqliteError>(())).await
    }

    /// Runs `apply` in the next batch and returns its outcome once the batch committed.
    /// `apply`'s error rolls back its own changes only.
    pub(crate) async fn write<T, E>(
        &self,
        apply: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<SqliteError> + Send + 'static,
    {
        self.send_waited(false, apply).await
    }

    async fn send_waited<T, E>(
        &self,
        flush: bool,
        apply: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<SqliteError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<T, E>>();
        let path = self.path.clone();
        let job: Apply = Box::new(
            move |conn: Result<&Connection, &SqliteError>| -> (Completion, bool) {
                let outcome = match conn {
                    Ok(conn) => in_savepoint(conn, &path, apply),
                    Err(e) => Err(E::from(e.clone())),
                };
                let complete: Completion = Box::new(move |committed: Result<(), &SqliteError>| {
                    let outcome = match committed {
                        Ok(()) => outcome,
                        Err(e) => Err(E::from(e.clone())),
                    };
                    let _ = reply.send(outcome);
                });
                (complete, false)
            },
        );
        let job = Job {
            apply: job,
            waited: true,
            flush,
            hold_until: None,
        };
        if self.jobs.send(job).is_err() {
            return Err(E::from(closed(&self.path)));
        }
        self.wake();
        answer
            .await
            .unwrap_or_else(|_| Err(E::from(closed(&self.path))))
    }
}

fn closed(path: &std::path::Path) -> SqliteError {
    SqliteError::new(
        path,
        SqliteErrorKind::Closed,
        "the store's writer has stopped",
    )
}

/// Runs `apply` inside a savepoint, rolling back to it when `apply` fails.
fn in_savepoint<T, E: From<SqliteError>>(
    conn: &Connection,
    path: &std::path::Path,
    apply: impl FnOnce(&Connection) -> Result<T, E>,
) -> Result<T, E> {
    run_cached(conn, "SAVEPOINT job")
        .map_err(|e| SqliteError::sql(path, "starting a savepoint", e))?;
    let outcome = apply(conn);
    if conn.is_autocommit() {
        // SQLite rolled the transaction back (see `commit_batch`): no savepoint is left.
        return outcome;
    }
    let ended = match outcome.is_ok() {
        true => run_cached(conn, "RELEASE job"),
        false => run_cached(conn, "ROLLBACK TO job").and_then(|()| run_cached(conn, "RELEASE job")),
    };
    ended.map_err(|e| SqliteError::sql(path, "ending a savepoint", e))?;
    outcome
}

/// Runs one statement without parameters, prepared once per connection (the writer runs
/// these several times per job; parsing them each time showed in profiles).
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// How long the writer waits for more jobs after the first of a batch.
#[derive(Debug, Clone, Copy)]
struct Lingers {
    /// When a job of the batch is waited for.
    waited: Duration,
    /// When every job of the batch is write-behind.
    behind: Duration,
}

impl Lingers {
    fn of(&self, job: &Job) -> Duration {
        if job.waited {
            self.waited
        } else {
            self.behind
        }
    }
}

/// The writer thread: take a batch, run it in one transaction, commit, answer.
fn run(
    conn: Connection,
    path: PathBuf,
    queue: mpsc::Receiver<Job>,
    lingers: Lingers,
    counters: &Counters,
    stopped_by: &std::sync::Mutex<Option<SqliteError>>,
    on_external_commit: Box<dyn Fn() + Send>,
) {
    let mut batch: Vec<Job> = Vec::new();
    // Jobs held back (see `Writer::enqueue`), oldest first: their due times are in
    // send order.
    let mut held: VecDeque<Job> = VecDeque::new();
    let mut seen = ExternalCommits::new(&conn);
    loop {
        let due = held.front().and_then(|job| job.hold_until);
        let wait = due.map_or(EXTERNAL_CHECK, |due| {
            due.saturating_duration_since(Instant::now())
                .min(EXTERNAL_CHECK)
        });
        let mut stopping = false;
        match queue.recv_timeout(wait) {
            Ok(first) => collect_batch(&queue, first, lingers, &mut batch),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if seen.changed(&conn) {
                    on_external_commit();
                }
                if due.is_none_or(|due| due > Instant::now()) {
                    continue;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) if held.is_empty() => break,
            Err(mpsc::RecvTimeoutError::Disconnected) => stopping = true,
        }
        release_held(&mut batch, &mut held, stopping);
        if batch.is_empty() {
            continue;
        }
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters
            .writes
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        commit_batch(&conn, &path, &mut batch, stopped_by);
        if seen.changed(&conn) {
            on_external_commit();
        }
    }
    tracing::debug!(path = %path.display(), "sqlite writer stopped");
}

/// Moves the jobs of `batch` that may still be held into `held`, and the held jobs now due
/// (all of them on a flush or when `stopping`) into `batch`, ahead of the rest.
fn release_held(batch: &mut Vec<Job>, held: &mut VecDeque<Job>, stopping: bool) {
    let now = Instant::now();
    let everything = stopping || batch.iter().any(|job| job.flush);
    let mut run = Vec::with_capacity(batch.len());
    while held
        .front()
        .is_some_and(|job| everything || job.hold_until.is_none_or(|due| due <= now))
    {
        run.extend(held.pop_front());
    }
    for job in batch.drain(..) {
        match job.hold_until {
            Some(due) if !everything && due > now => held.push_back(job),
            _ => run.push(job),
        }
    }
    *batch = run;
}

/// Fills `batch`, starting with `first`, until the first job's linger is up or sooner when a
/// job someone waits for arrives (its own linger from then), or the batch is full.
///
/// While lingering the thread sleeps (parks) instead of waiting on the queue: a write-behind
/// job is sent without waking it (one wake-up per batch, not per job), and [`Writer::write`]
/// unparks it so that a waited-for write never waits for a write-behind linger.
fn collect_batch(queue: &mpsc::Receiver<Job>, first: Job, lingers: Lingers, batch: &mut Vec<Job>) {
    let mut deadline = Instant::now() + lingers.of(&first);
    batch.push(first);
    loop {
        loop {
            match queue.try_recv() {
                Ok(job) => {
                    if job.waited {
                        deadline = deadline.min(Instant::now() + lingers.waited);
                    }
                    batch.push(job);
                    if batch.len() >= MAX_BATCH {
                        return;
                    }
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        thread::park_timeout(left);
    }
}

/// `PRAGMA data_version` of the writer's connection: it changes when any *other* connection
/// commits (its own commits leave it as it is).
struct ExternalCommits {
    version: Option<i64>,
}

impl ExternalCommits {
    fn new(conn: &Connection) -> Self {
        ExternalCommits {
            version: data_version(conn),
        }
    }

    /// Whether another connection committed since the last call.
    fn changed(&mut self, conn: &Connection) -> bool {
        let now = data_version(conn);
        let changed = now.is_some() && now != self.version;
        self.version = now;
        changed
    }
}

fn data_version(conn: &Connection) -> Option<i64> {
    conn.prepare_cached("PRAGMA data_version")
        .and_then(|mut s| s.query_row([], |row| row.get(0)))
        .ok()
}

/// Runs `batch` in one transaction and completes its jobs. `failure` is the failure of a
/// write-behind write, set here when one fails: once set, no job runs any more (each fails
/// with it), since a later write committing — a step's success among a run's events — could
/// claim what the lost write held.
fn commit_batch(
    conn: &Connection,
    path: &std::path::Path,
    batch: &mut Vec<Job>,
    failure: &std::sync::Mutex<Option<SqliteError>>,
) {
    let mut failed = failure.lock().expect("failure lock").clone();
    if let Some(e) = failed {
        for job in batch.drain(..) {
            (job.apply)(Err(&e)).0(Err(&e));
        }
        return;
    }
    // Recorded before any caller hears of the failure, so that its next write sees it.
    let stop = |e: &SqliteError| {
        tracing::error!(error = %e, "a queued write (a step result or output) was not committed; the store refuses every later write");
        *failure.lock().expect("failure lock") = Some(e.clone());
    };
    let any_behind = batch.iter().any(|job| !job.waited);
    if let Err(e) = run_cached(conn, "BEGIN IMMEDIATE") {
        let e = SqliteError::sql(path, "starting a write transaction", e);
        if any_behind {
            stop(&e);
        }
        for job in batch.drain(..) {
            (job.apply)(Err(&e)).0(Err(&e));
        }
        return;
    }
    // On some failures (a full disk, an I/O error) SQLite rolls the whole transaction back
    // by itself: then no later job may run (outside a transaction, each statement would
    // commit alone while its caller hears of a failure), and every job of the batch fails
    // with the cause.
    let mut ended: Option<SqliteError> = None;
    let mut completions: Vec<Completion> = Vec::with_capacity(batch.len());
    for job in batch.drain(..) {
        match ended.as_ref().or(failed.as_ref()) {
            Some(e) => completions.push((job.apply)(Err(e)).0),
            None => {
                let _ = take_last_sql_error();
                let (complete, behind_failed) = (job.apply)(Ok(conn));
                completions.push(complete);
                if behind_failed && !conn.is_autocommit() {
                    failed = Some(take_last_sql_error().unwrap_or_else(|| {
                        SqliteError::new(path, SqliteErrorKind::Other, "a queued write failed")
                    }));
                }
                if conn.is_autocommit() {
                    ended = Some(take_last_sql_error().unwrap_or_else(|| {
                        SqliteError::new(
                            path,
                            SqliteErrorKind::Other,
                            "the write transaction ended during a write",
                        )
                    }));
                }
            }
        }
    }
    let committed = match ended {
        Some(e) => Err(e),
        None => run_cached(conn, "COMMIT")
            .map_err(|e| SqliteError::sql(path, "committing a batch of writes", e)),
    };
    if committed.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    if let (Err(e), true) = (&committed, any_behind) {
        failed.get_or_insert_with(|| e.clone());
    }
    if let Some(e) = &failed {
        stop(e);
    }
    for complete in completions {
        complete(committed.as_ref().map(|_| ()));
    }
}
