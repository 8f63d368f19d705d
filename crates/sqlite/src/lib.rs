//! stepq's embedded store: one SQLite database file (`stepq.db` under a state directory)
//! holding run records, event logs, step results, step outputs, cancel markers and worker
//! heartbeats, behind the same traits as every other backend.
//!
//! - **One writer, group commit.** Every write of the process goes to one writer thread; the
//!   writes queued while a transaction commits form the next transaction (optionally after a
//!   short linger, [`SqliteOptions::linger`]). A waited write returns once committed. WAL mode with
//!   `synchronous = NORMAL`: a committed write survives a crash of the process; a crash loses
//!   at most the batch being committed, and never leaves a torn record.
//! - **Readers never wait for the writer** (WAL); other processes may read and write the same
//!   file (`stepq cancel`, `status`, `logs --follow` from another terminal); SQLite's locking
//!   keeps their compare-and-set changes atomic.
//! - **Notification, not polling**: a result or a run's events written by this process wake
//!   its waiters at once (a result is handed over in memory); commits of other processes wake
//!   every waiter within 50 ms (the writer thread watches `PRAGMA data_version`).
//! - **Step results and outputs are written behind**: their write returns once queued (this
//!   process reads them at once); the writer commits in send order, so a committed step
//!   success implies its output is committed. A result's row is held back up to
//!   [`SqliteOptions::result_hold`] (250 ms): the orchestrator reading it deletes it right
//!   after, and then it is never written. A batch of such writes alone waits
//!   up to [`SqliteOptions::write_behind_linger`] (2 ms) for more, so consecutive steps share
//!   a commit, and a write that a later one of the same key supersedes before it runs (a
//!   result or progress entry the orchestrator read and deleted) is skipped. A write someone
//!   waits for (a run's events, a status change) ends the linger. [`SqliteStore::flush`] (and
//!   the result backend's `shutdown`) waits for the queue; dropping the last handle commits it.
//! - **Outputs** up to [`SqliteOptions::inline_output_limit`] live in the database; larger
//!   ones are files under `blobs/` beside it, written (to a temporary name, then renamed)
//!   before the row that names them commits, with their size and digest checked on read.
//!
//! The views ([`SqliteRunStore`], [`SqliteHeartbeatStore`], [`SqliteResultBackend`],
//! [`SqliteOutputStore`], [`SqliteCancelStore`]) share one [`SqliteStore`] and pass the
//! workspace's conformance suites.
//!
//! ```
//! use stepq_results::{OutputKey, OutputStore};
//! use stepq_runs::{RunRecord, RunStore};
//! use stepq_sqlite::SqliteStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = SqliteStore::open(dir.path())?;
//! let runs = store.runs();
//! runs.create_run(&RunRecord::new("run-1", "diamond", serde_json::Value::Null)).await?;
//! assert_eq!(runs.get_run("run-1").await?.job_name, "diamond");
//! let outputs = store.outputs();
//! let key = OutputKey::new("run-1", "a", "result");
//! outputs.put(&key, "42".into()).await?;
//! assert_eq!(&outputs.get(&key).await?[..], b"42");
//! # Ok(())
//! # }
//! ```

mod cancel;
mod db;
mod error;
mod heartbeats;
mod leases;
mod notify;
mod outputs;
mod pending;
mod results;
mod runs;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use cancel::SqliteCancelStore;
pub use db::SqliteOptions;
pub use error::{SqliteError, SqliteErrorKind};
pub use heartbeats::SqliteHeartbeatStore;
pub use leases::SqliteLeaseStore;
pub use outputs::SqliteOutputStore;
pub use results::SqliteResultBackend;
pub use runs::SqliteRunStore;

use notify::Notifier;
use pending::{Pending, PendingKey, PendingValue};
pub use writer::WriteStats;
use writer::Writer;

/// File name of the database under a state directory.
pub const DATABASE_FILE: &str = "stepq.db";

/// Directory (beside the database) of outputs too large to keep in it.
pub const BLOBS_DIR: &str = "blobs";

/// One open database; cheap to clone (the clones share the writer and the read pool).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    blobs: PathBuf,
    options: SqliteOptions,
    writer: Writer,
    reads: db::ReadPool,
    results_ready: Arc<Notifier>,
    events_added: Arc<Notifier>,
    /// Results stored by this process for a waiter of this process, handed over without a
    /// read of the database (taken by the waiter, or dropped by `delete_result`).
    handoff: Mutex<HashMap<String, stepq_results::TaskResult>>,
    /// Result and output writes queued but not yet committed (see `pending.rs`).
    pending: Arc<Pending>,
}

impl SqliteStore {
    /// Opens (creating it and `state_dir` if needed) `state_dir/stepq.db` with default
    /// options.
    pub fn open(state_dir: &Path) -> Result<Self, SqliteError> {
        Self::open_with(state_dir, SqliteOptions::default())
    }

    /// Opens `state_dir/stepq.db` with `options`. Fails, naming the file and what to do, when
    /// it is not a database, is another program's, was written by a newer stepq, or cannot
    /// be created or written.
    pub fn open_with(state_dir: &Path, options: SqliteOptions) -> Result<Self, SqliteError> {
        let path = state_dir.join(DATABASE_FILE);
        std::fs::create_dir_all(state_dir).map_err(|e| {
            SqliteError::new(
                &path,
                SqliteErrorKind::CannotOpen,
                format!("cannot create the state directory: {e}"),
            )
        })?;
        let conn = db::open_writer(&path, &options)?;
        let results_ready = Arc::new(Notifier::default());
        let events_added = Arc::new(Notifier::default());
        let wake = (results_ready.clone(), events_added.clone());
        let writer = Writer::start(
            conn,
            path.clone(),
            options.linger,
            options.write_behind_linger,
            Box::new(move || {
                wake.0.wake_all();
                wake.1.wake_all();
            }),
        )?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                reads: db::ReadPool::new(path.clone(), options.clone()),
                blobs: state_dir.join(BLOBS_DIR),
                path,
                options,
                writer,
                results_ready,
                events_added,
                handoff: Mutex::new(HashMap::new()),
                pending: Arc::new(Pending::default()),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The run store view.
    pub fn runs(&self) -> SqliteRunStore {
        SqliteRunStore::new(self.clone())
    }

    /// The heartbeat store view.
    pub fn heartbeats(&self) -> SqliteHeartbeatStore {
        SqliteHeartbeatStore::new(self.clone())
    }

    /// The result backend view.
    pub fn results(&self) -> SqliteResultBackend {
        SqliteResultBackend::new(self.clone())
    }

    /// The output store view.
    pub fn outputs(&self) -> SqliteOutputStore {
        SqliteOutputStore::new(self.clone())
    }

    /// The cancel-marker store view.
    pub fn cancels(&self) -> SqliteCancelStore {
        SqliteCancelStore::new(self.clone())
    }

    /// The fleet-wide slot lease store view.
    pub fn leases(&self) -> SqliteLeaseStore {
        SqliteLeaseStore::new(self.clone())
    }

    /// Waits until every write made through this handle so far is committed; fails if a
    /// batch of queued result or output writes failed to commit.
    pub async fn flush(&self) -> Result<(), SqliteError> {
        self.inner.writer.flush().await
    }

    /// Queues a result or output write (see `pending.rs`): readers of this process see
    /// `value` at once; the write commits with the next batch.
    fn write_behind(
        &self,
        key: PendingKey,
        value: PendingValue,
        apply: impl FnOnce(&rusqlite::Connection) -> Result<(), SqliteError> + Send + 'static,
    ) -> Result<(), SqliteError> {
        self.write_behind_held(None, key, value, apply)
    }

    /// [`write_behind`](Self::write_behind) of a write the writer may hold back for `hold`
    /// (see `Writer::enqueue`).
    fn write_behind_held(
        &self,
        hold: Option<std::time::Duration>,
        key: PendingKey,
        value: PendingValue,
        apply: impl FnOnce(&rusqlite::Connection) -> Result<(), SqliteError> + Send + 'static,
    ) -> Result<(), SqliteError> {
        if let Some(failure) = self.inner.writer.failure() {
            return Err(failure);
        }
        let pending = self.inner.pending.clone();
        let seq = pending.record(key.clone(), value);
        let settle = pending.clone();
        let (latest, written) = (pending.clone(), key.clone());
        let apply = move |conn: &rusqlite::Connection| match latest.superseded(&written, seq) {
            // A later write of the key is queued behind this one: it decides what is stored.
            true => {
                latest.count_superseded();
                Ok(())
            }
            false => apply(conn),
        };
        // A failure stops the writer, which then reports it (`Writer::failure`).
        self.inner
            .writer
            .enqueue(hold, apply, move |_| settle.settle(&key, seq))
    }

    /// How many writes this handle committed, in how many transactions (group commit puts
    /// the writes of concurrent steps into one).
    pub fn write_stats(&self) -> WriteStats {
        WriteStats {
            superseded: self.inner.pending.superseded_count(),
            ..self.inner.writer.stats()
        }
    }

    /// Size of the database file and its WAL, in bytes.
    pub fn file_size(&self) -> u64 {
        let wal = self.inner.path.with_extension("db-wal");
        [&self.inner.path, &wal]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }
}

/// The size of a database file (with its WAL) before and after [`compact_database`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compaction {
    /// Bytes of `stepq.db` and `stepq.db-wal` before.
    pub bytes_before: u64,
    /// Bytes of both after.
    pub bytes_after: u64,
}

impl Compaction {
    /// Bytes the file shrank by (0 if it grew).
    pub fn reclaimed(&self) -> u64 {
        self.bytes_before.saturating_sub(self.bytes_after)
    }
}

/// Compacts the database file at `path` (`state_dir/stepq.db`): `VACUUM`, which rewrites it
/// without the pages deleted rows freed, then `PRAGMA wal_checkpoint(TRUNCATE)`, which
/// copies the rewrite into the file and empties the WAL. On its own connection, so it can run
/// beside an open [`SqliteStore`] of this or another process (it waits up to the default busy
/// timeout for their writes). Blocking: it reads and writes the whole file once, and needs
/// free disk space of about the database's size while it runs.
pub fn compact_database(path: &Path) -> Result<Compaction, SqliteError> {
    let size = || {
        let wal = path.with_extension("db-wal");
        [path, wal.as_path()]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum::<u64>()
    };
    let bytes_before = size();
    let conn = db::open_reader(path, &SqliteOptions::default())?;
    conn.execute_batch("VACUUM")
        .map_err(|e| SqliteError::sql(path, "compacting (VACUUM)", e))?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(|e| SqliteError::sql(path, "checkpointing the WAL", e))?;
    drop(conn);
    Ok(Compaction {
        bytes_before,
        bytes_after: size(),
    })
}

/// The fraction of the database file's pages that are free (deleted rows' pages not yet
/// returned by [`compact_database`]): `freelist_count / page_count`, 0 for an empty file.
pub fn free_fraction(path: &Path) -> Result<f64, SqliteError> {
    let conn = db::open_reader(path, &SqliteOptions::default())?;
    let pragma = |name: &str| -> Result<i64, SqliteError> {
        conn.query_row(&format!("PRAGMA {name}"), [], |row| row.get(0))
            .map_err(|e| SqliteError::sql(path, "reading the page counts", e))
    };
    let (free, pages) = (pragma("freelist_count")?, pragma("page_count")?);
    Ok(if pages == 0 {
        0.0
    } else {
        free as f64 / pages as f64
    })
}

/// If `state_dir` holds the file layout of the local-directory stores (`runs/`, `results/`,
/// `outputs/` … directories), a notice saying those runs are not read by the SQLite store and
/// what to do; `None` otherwise.
pub fn old_layout_notice(state_dir: &Path) -> Option<String> {
    let old: Vec<&str> = ["runs", "results", "outputs", "heartbeats", "cancels"]
        .into_iter()
        .filter(|d| state_dir.join(d).is_dir())
        .collect();
    if old.is_empty() {
        return None;
    }
    Some(format!(
        "{} holds runs in the old file layout ({}/); the embedded store is now the database {} \
         and does not read them. They stay where they are: delete those directories to \
         reclaim the space, or set `state_store = \"files\"` in stepq.toml to keep using them",
        state_dir.display(),
        old.join("/, "),
        state_dir.join(DATABASE_FILE).display(),
    ))
}

/// The FNV-1a 64-bit digest of `bytes` as 16 hex digits (detects a torn output file; not a
/// cryptographic hash).
fn digest(bytes: &[u8]) -> String {
    format!("{:016x}", stepq_runs::record::fnv1a64(bytes))
}

#[cfg(test)]
mod tests;
