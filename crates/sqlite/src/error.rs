//! [`SqliteError`]: what went wrong with the database file, naming the file and what to do,
//! and its conversion into each store trait's error type.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::ErrorCode;
use stepq_cancel::CancelError;
use stepq_results::{ErrorClass, ResultError, ServiceError};
use stepq_runs::StorageError;

thread_local! {
    /// The last error [`SqliteError::sql`] made on this thread. The writer thread reads it
    /// when SQLite rolled a whole transaction back during a job (a full disk, an I/O error):
    /// the job's own error may have been converted into another crate's error type by then,
    /// but the batch's other writers must hear the cause too.
    static LAST_SQL_ERROR: std::cell::RefCell<Option<SqliteError>> = const { std::cell::RefCell::new(None) };
}

/// Takes the last error [`SqliteError::sql`] made on this thread, if any.
pub(crate) fn take_last_sql_error() -> Option<SqliteError> {
    LAST_SQL_ERROR.with(|last| last.borrow_mut().take())
}

/// What kind of failure a [`SqliteError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SqliteErrorKind {
    /// The file is not a SQLite database, or is damaged.
    Corrupt,
    /// The file is a SQLite database of another program (or a newer stepq).
    Foreign,
    /// Another process held the write lock longer than the busy timeout.
    Locked,
    /// The disk (or a quota) is full.
    Full,
    /// The file or its directory is read-only.
    ReadOnly,
    /// The file could not be opened or created (missing directory, permissions ...).
    CannotOpen,
    /// The store was closed (its writer has stopped).
    Closed,
    /// Any other SQLite failure.
    Other,
}

/// A failure of the SQLite store, naming the database file and what to do about it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct SqliteError {
    /// The database file.
    pub path: PathBuf,
    /// What kind of failure.
    pub kind: SqliteErrorKind,
    /// What failed and what to do.
    pub message: String,
    /// SQLite's own error, if any.
    #[source]
    pub source: Option<Arc<rusqlite::Error>>,
}

impl SqliteError {
    /// An error of `kind` about `path` with no SQLite source.
    pub fn new(path: &Path, kind: SqliteErrorKind, message: impl Into<String>) -> Self {
        SqliteError {
            path: path.to_path_buf(),
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Classifies SQLite's error `e`, met while doing `what`, into a message naming `path`.
    pub fn sql(path: &Path, what: &str, e: rusqlite::Error) -> Self {
        let code = e.sqlite_error_code();
        let (kind, advice) = match code {
            Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => (
                SqliteErrorKind::Corrupt,
                "the file is not a stepq database or is damaged; move it away (stepq starts a new one) or restore it from a backup",
            ),
            Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => (
                SqliteErrorKind::Locked,
                "another process held the database's write lock too long; retry, or stop the other stepq process",
            ),
            Some(ErrorCode::DiskFull) => (
                SqliteErrorKind::Full,
                "the disk is full; free space (e.g. `stepq gc`) and retry; nothing committed is lost",
            ),
            Some(ErrorCode::ReadOnly) => (
                SqliteErrorKind::ReadOnly,
                "the database or its directory is read-only; give this user write access or point `state_dir` elsewhere",
            ),
            Some(ErrorCode::CannotOpen) | Some(ErrorCode::PermissionDenied) => (
                SqliteErrorKind::CannotOpen,
                "check that the state directory exists and is writable by this user",
            ),
            _ => (SqliteErrorKind::Other, ""),
        };
        let message = if advice.is_empty() {
            format!("{what}: {e}")
        } else {
            format!("{what}: {e} ({advice})")
        };
        let error = SqliteError {
            path: path.to_path_buf(),
            kind,
            message,
            source: Some(Arc::new(e)),
        };
        LAST_SQL_ERROR.with(|last| *last.borrow_mut() = Some(error.clone()));
        error
    }

    /// Whether retrying may help: a held lock or a full disk may clear; the rest will not.
    pub fn class(&self) -> ErrorClass {
        match self.kind {
            SqliteErrorKind::Locked | SqliteErrorKind::Full => ErrorClass::Temporary,
            _ => ErrorClass::Permanent,
        }
    }

    fn code(&self) -> &'static str {
        match self.kind {
            SqliteErrorKind::Corrupt => "Corrupt",
            SqliteErrorKind::Foreign => "Foreign",
            SqliteErrorKind::Locked => "Locked",
            SqliteErrorKind::Full => "DiskFull",
            SqliteErrorKind::ReadOnly => "ReadOnly",
            SqliteErrorKind::CannotOpen => "CannotOpen",
            SqliteErrorKind::Closed => "Closed",
            SqliteErrorKind::Other => "Error",
        }
    }

    /// The same failure as the workspace's service-error shape (service `sqlite`).
    pub fn to_service_error(&self) -> ServiceError {
        ServiceError::new("sqlite", self.code(), self.to_string(), self.class())
            .with_source(self.clone())
    }
}

impl From<SqliteError> for StorageError {
    fn from(e: SqliteError) -> Self {
        StorageError::Service(e.to_service_error())
    }
}

impl From<SqliteError> for ResultError {
    fn from(e: SqliteError) -> Self {
        ResultError::Service(e.to_service_error())
    }
}

impl From<SqliteError> for CancelError {
    fn from(e: SqliteError) -> Self {
        CancelError::Store(ResultError::from(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_and_classify() {
        let path = Path::new("/tmp/x/stepq.db");
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        let e = SqliteError::sql(path, "committing a batch", busy);
        assert_eq!(e.kind, SqliteErrorKind::Locked);
        assert_eq!(e.class(), ErrorClass::Temporary);
        assert!(e
            .to_string()
            .starts_with("/tmp/x/stepq.db: committing a batch"));
        let storage = StorageError::from(e.clone());
        assert_eq!(storage.class(), ErrorClass::Temporary);
        assert!(storage.to_string().contains("stepq.db"), "{storage}");
        let not_db = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_NOTADB),
            None,
        );
        let e = SqliteError::sql(path, "opening", not_db);
        assert_eq!(e.kind, SqliteErrorKind::Corrupt);
        assert_eq!(ResultError::from(e).class(), ErrorClass::Permanent);
    }
}
