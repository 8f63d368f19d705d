//! [`SqliteCancelStore`]: cancel markers, one row per task.

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};
use stepq_cancel::marker::check_task_id;
use stepq_cancel::{CancelError, CancelMarker, CancelStore};

use crate::error::SqliteError;
use crate::SqliteStore;

/// The cancel-marker store of a [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteCancelStore {
    store: SqliteStore,
}

impl SqliteCancelStore {
    pub(crate) fn new(store: SqliteStore) -> Self {
        SqliteCancelStore { store }
    }

    /// The database this view reads and writes.
    pub fn store(&self) -> &SqliteStore {
        &self.store
    }

    fn sql(&self, what: &'static str) -> impl Fn(rusqlite::Error) -> CancelError + '_ {
        move |e| SqliteError::sql(&self.store.inner.path, what, e).into()
    }
}

#[async_trait]
impl CancelStore for SqliteCancelStore {
    async fn put(&self, marker: &CancelMarker) -> Result<(), CancelError> {
        check_task_id(&marker.task_id)?;
        let (task_id, bytes) = (marker.task_id.clone(), marker.to_json());
        let path = self.store.inner.path.clone();
        self.store
            .inner
            .writer
            .write(move |conn| {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO cancels (task_id, marker) VALUES (?1, ?2)",
                )
                .and_then(|mut s| s.execute(params![task_id, bytes]))
                .map_err(|e| {
                    CancelError::from(SqliteError::sql(&path, "storing a cancel marker", e))
                })?;
                Ok(())
            })
            .await
    }

    async fn get(&self, task_id: &str) -> Result<Option<CancelMarker>, CancelError> {
        check_task_id(task_id)?;
        let bytes: Option<Vec<u8>> = self.store.inner.reads.read(|conn| {
            conn.prepare_cached("SELECT marker FROM cancels WHERE task_id = ?1")
                .and_then(|mut s| s.query_row([task_id], |row| row.get(0)).optional())
                .map_err(self.sql("reading a cancel marker"))
        })?;
        bytes
            .map(|b| {
                CancelMarker::from_json(&b).map_err(|e| CancelError::Malformed {
                    reason: format!(
                        "{}: cancels/{task_id}: {e}",
                        self.store.inner.path.display()
                    ),
                })
            })
            .transpose()
    }

    async fn list(&self) -> Result<Vec<CancelMarker>, CancelError> {
        let rows: Vec<(String, Vec<u8>)> = self.store.inner.reads.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT task_id, marker FROM cancels")
                .map_err(self.sql("listing cancel markers"))?;
            let rows = stmt
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
                .map_err(self.sql("listing cancel markers"))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(self.sql("listing cancel markers"))
        })?;
        let mut markers = Vec::with_capacity(rows.len());
        for (task_id, bytes) in rows {
            match CancelMarker::from_json(&bytes) {
                Ok(marker) => markers.push(marker),
                Err(e) => tracing::error!(
                    database = %self.store.inner.path.display(),
                    task_id,
                    error = %e,
                    "skipping a cancel marker that does not decode"
                ),
            }
        }
        Ok(markers)
    }

    async fn delete(&self, task_id: &str) -> Result<(), CancelError> {
        check_task_id(task_id)?;
        let (owned, path) = (task_id.to_string(), self.store.inner.path.clone());
        self.store
            .inner
            .writer
            .write(move |conn| {
                conn.prepare_cached("DELETE FROM cancels WHERE task_id = ?1")
                    .and_then(|mut s| s.execute([owned]))
                    .map_err(|e| {
                        CancelError::from(SqliteError::sql(&path, "deleting a cancel marker", e))
                    })?;
                Ok(())
            })
            .await
    }

    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn lookups_are_free(&self) -> bool {
        true
    }
}
