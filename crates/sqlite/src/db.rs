//! Opening the database file: pragmas, the schema, the checks that it is stepq's, and the
//! pool of read connections.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::error::{SqliteError, SqliteErrorKind};

/// `PRAGMA application_id` of a stepq database ("stpq").
pub(crate) const APPLICATION_ID: i32 = 0x7374_7071;

/// `PRAGMA user_version`: the schema version this code writes and reads.
pub(crate) const SCHEMA_VERSION: i32 = 1;

/// Read connections kept open for reuse.
const POOL_SIZE: usize = 8;

/// The schema, version 1. Records and results are JSON (readable with `sqlite3` and
/// `json_extract`); event batches are stepq's packed bytes, as the other stores keep them.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    run_id     TEXT PRIMARY KEY,
    job_name   TEXT NOT NULL,
    status     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    record     BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_created ON runs (created_at DESC, run_id DESC);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, created_at DESC);
CREATE INDEX IF NOT EXISTS runs_by_job ON runs (job_name, created_at DESC);
CREATE TABLE IF NOT EXISTS run_tags (
    run_id TEXT NOT NULL,
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS run_tags_by_pair ON run_tags (key, value);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    batch  BLOB NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS results (
    task_id    TEXT PRIMARY KEY,
    stored_at  INTEGER NOT NULL,
    result     BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS outputs (
    run_id      TEXT NOT NULL,
    step_key    TEXT NOT NULL,
    output_name TEXT NOT NULL,
    size        INTEGER NOT NULL,
    digest      TEXT NOT NULL,
    inline      BLOB,
    PRIMARY KEY (run_id, step_key, output_name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS heartbeats (
    worker_id TEXT PRIMARY KEY,
    heartbeat BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS cancels (
    task_id TEXT PRIMARY KEY,
    marker  BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    name       TEXT NOT NULL,
    slot       INTEGER NOT NULL,
    holder     TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    version    INTEGER NOT NULL,
    PRIMARY KEY (name, slot)
) WITHOUT ROWID;
";

/// How to open a store.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// How long a write waits for another process's write lock before failing.
    pub busy_timeout: Duration,
    /// How long the writer waits for more writes after the first of a batch (zero: commit
    /// what is queued at once; writes that arrive during a commit form the next batch).
    pub linger: Duration,
    /// How long a batch holding only writes that nobody waits for (step results and
    /// outputs, which return before their commit) waits for more: the writes of consecutive
    /// steps then share one commit, and a result the orchestrator has already read and
    /// deleted meanwhile is never written at all. A crash of the process may lose this much
    /// more of them (steps a resume runs again; see the crate docs).
    pub write_behind_linger: Duration,
    /// How long the row of a step result (or progress entry) may be held back from the
    /// database. The orchestrator that reads a result deletes it right after, usually within
    /// this time, and then the row is never written; another process sees a result at most
    /// this much later (it already learns of commits by polling, every 50 ms). A crash within
    /// it loses the result, not the step's success or outputs: those are in the run's events
    /// and the outputs table, which commit in order.
    pub result_hold: Duration,
    /// Outputs up to this size are kept in the database; larger ones as files beside it.
    pub inline_output_limit: usize,
    /// Caps the database file at this many pages (of 4 KiB): a write that would grow it
    /// further fails as on a full disk (a quota for the state directory; `None`: no cap).
    pub max_database_pages: Option<u64>,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            busy_timeout: Duration::from_secs(5),
            linger: Duration::ZERO,
            write_behind_linger: Duration::from_millis(2),
            result_hold: Duration::from_millis(250),
            inline_output_limit: 256 * 1024,
            max_database_pages: None,
        }
    }
}

/// Opens (creating if needed) the database at `path` for writing, sets it up and checks it
/// is a stepq database of a version this code reads.
pub(crate) fn open_writer(path: &Path, options: &SqliteOptions) -> Result<Connection, SqliteError> {
    let conn = Connection::open(path).map_err(|e| SqliteError::sql(path, "opening", e))?;
    configure(&conn, path, options)?;
    let sql = |what: &'static str| move |e| SqliteError::sql(path, what, e);
    switch_to_wal(&conn, path, options.busy_timeout)?;
    // Checked under the write lock, with the schema created in the same transaction, so a
    // process creating the same new database at this moment is seen before or after, never
    // half-way (its tables there but not yet its application id).
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(sql("locking the database to create the schema"))?;
    if let Err(e) = check_identity(&conn, path) {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(e);
    }
    conn.execute_batch(&format!(
        "{SCHEMA} PRAGMA application_id = {APPLICATION_ID}; \
         PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
    ))
    .map_err(sql("creating the schema"))?;
    if let Some(pages) = options.max_database_pages {
        conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
            .map_err(sql("capping the database size"))?;
    }
    Ok(conn)
}

/// Switches the database to WAL mode. Another process creating the same new database at
/// this moment makes SQLite refuse the switch at once (busy, without waiting out the busy
/// timeout, or by leaving the old mode in place), so it is retried, with a short growing
/// pause, until `patience` runs out.
fn switch_to_wal(conn: &Connection, path: &Path, patience: Duration) -> Result<(), SqliteError> {
    let deadline = std::time::Instant::now() + patience;
    let mut pause = Duration::from_millis(2);
    loop {
        let outcome: Result<String, rusqlite::Error> =
            conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0));
        let late = std::time::Instant::now() >= deadline;
        match outcome {
            Ok(mode) if mode.eq_ignore_ascii_case("wal") => return Ok(()),
            Ok(mode) if late => {
                return Err(SqliteError::new(
                    path,
                    SqliteErrorKind::Other,
                    format!("could not switch to WAL mode (journal mode is `{mode}`)"),
                ))
            }
            Err(e) if late || e.sqlite_error_code() != Some(rusqlite::ErrorCode::DatabaseBusy) => {
                return Err(SqliteError::sql(path, "switching to WAL mode", e))
            }
            _ => {}
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Opens a read connection on an existing database.
pub(crate) fn open_reader(path: &Path, options: &SqliteOptions) -> Result<Connection, SqliteError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| SqliteError::sql(path, "opening a read connection", e))?;
    configure(&conn, path, options)?;
    Ok(conn)
}

fn configure(conn: &Connection, path: &Path, options: &SqliteOptions) -> Result<(), SqliteError> {
    conn.busy_timeout(options.busy_timeout)
        .map_err(|e| SqliteError::sql(path, "setting the busy timeout", e))?;
    // WAL with synchronous = NORMAL: a commit is durable against a crash of the process
    // (it is in the OS's cache); a power loss may lose the last commits, never corrupts.
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF;")
        .map_err(|e| SqliteError::sql(path, "setting pragmas", e))?;
    Ok(())
}

/// Fails unless the file is empty (new) or a stepq database of a readable version.
fn check_identity(conn: &Connection, path: &Path) -> Result<(), SqliteError> {
    let read = |pragma: &str| -> Result<i32, SqliteError> {
        conn.query_row(&format!("PRAGMA {pragma}"), [], |row| row.get(0))
            .map_err(|e| SqliteError::sql(path, "reading the file header", e))
    };
    let application_id = read("application_id")?;
    let version = read("user_version")?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))
        .map_err(|e| SqliteError::sql(path, "reading the schema", e))?;
    if application_id == 0 && tables == 0 {
        return Ok(()); // a new file
    }
    if application_id != APPLICATION_ID {
        return Err(SqliteError::new(
            path,
            SqliteErrorKind::Foreign,
            format!(
                "is a SQLite database of another program (application id {application_id:#x}, \
                 {tables} schema objects), not stepq's; move it away or point `state_dir` elsewhere"
            ),
        ));
    }
    if version > SCHEMA_VERSION {
        return Err(SqliteError::new(
            path,
            SqliteErrorKind::Foreign,
            format!(
                "was written by a newer stepq (schema version {version}; this one reads up to \
                 {SCHEMA_VERSION}); upgrade stepq or point `state_dir` elsewhere"
            ),
        ));
    }
    Ok(())
}

/// Read connections, opened on demand and kept for reuse.
#[derive(Debug)]
pub(crate) struct ReadPool {
    path: PathBuf,
    options: SqliteOptions,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    pub(crate) fn new(path: PathBuf, options: SqliteOptions) -> Self {
        ReadPool {
            path,
            options,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `read` on a pooled connection. Reads run on the calling thread: a point read of
    /// a local WAL database takes microseconds, less than handing it to a blocking thread,
    /// and WAL readers never wait for the writer.
    pub(crate) fn read<T, E: From<SqliteError>>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, E>,
    ) -> Result<T, E> {
        let taken = self.idle.lock().expect("read pool lock").pop();
        let conn = match taken {
            Some(conn) => conn,
            None => open_reader(&self.path, &self.options)?,
        };
        let outcome = read(&conn);
        let mut idle = self.idle.lock().expect("read pool lock");
        if idle.len() < POOL_SIZE {
            idle.push(conn);
        }
        outcome
    }
}
