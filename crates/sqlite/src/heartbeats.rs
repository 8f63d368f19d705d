//! [`SqliteHeartbeatStore`]: the latest heartbeat of each worker, one row per worker.

use async_trait::async_trait;
use rusqlite::params;
use stepq_runs::{check_id, HeartbeatStore, StorageError, WorkerHeartbeat};

use crate::error::SqliteError;
use crate::SqliteStore;

/// The heartbeat store of a [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteHeartbeatStore {
    store: SqliteStore,
}

impl SqliteHeartbeatStore {
    pub(crate) fn new(store: SqliteStore) -> Self {
        SqliteHeartbeatStore { store }
    }

    /// The database this view reads and writes.
    pub fn store(&self) -> &SqliteStore {
        &self.store
    }
}

#[async_trait]
impl HeartbeatStore for SqliteHeartbeatStore {
    async fn put_heartbeat(&self, heartbeat: &WorkerHeartbeat) -> Result<(), StorageError> {
        check_id(&heartbeat.worker_id)?;
        let bytes = serde_json::to_vec(heartbeat).map_err(|e| StorageError::Encode {
            what: "a heartbeat",
            message: e.to_string(),
        })?;
        let (worker_id, path) = (heartbeat.worker_id.clone(), self.store.inner.path.clone());
        self.store
            .inner
            .writer
            .write(move |conn| {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO heartbeats (worker_id, heartbeat) VALUES (?1, ?2)",
                )
                .and_then(|mut s| s.execute(params![worker_id, bytes]))
                .map_err(|e| {
                    StorageError::from(SqliteError::sql(&path, "storing a heartbeat", e))
                })?;
                Ok(())
            })
            .await
    }

    async fn list_heartbeats(&self) -> Result<Vec<WorkerHeartbeat>, StorageError> {
        let path = &self.store.inner.path;
        let sql = |e| StorageError::from(SqliteError::sql(path, "listing heartbeats", e));
        let rows: Vec<(String, Vec<u8>)> = self.store.inner.reads.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT worker_id, heartbeat FROM heartbeats ORDER BY worker_id")
                .map_err(sql)?;
            let rows = stmt
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
                .map_err(sql)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql)
        })?;
        let mut heartbeats = Vec::with_capacity(rows.len());
        for (worker_id, bytes) in rows {
            match serde_json::from_slice(&bytes) {
                Ok(heartbeat) => heartbeats.push(heartbeat),
                Err(e) => {
                    return Err(StorageError::Corrupt {
                        location: format!("{}: heartbeats/{worker_id}", crate::DATABASE_FILE),
                        message: e.to_string(),
                    })
                }
            }
        }
        Ok(heartbeats)
    }

    async fn remove_heartbeat(&self, worker_id: &str) -> Result<(), StorageError> {
        check_id(worker_id)?;
        let (worker_id, path) = (worker_id.to_string(), self.store.inner.path.clone());
        self.store
            .inner
            .writer
            .write(move |conn| {
                conn.prepare_cached("DELETE FROM heartbeats WHERE worker_id = ?1")
                    .and_then(|mut s| s.execute([worker_id]))
                    .map_err(|e| {
                        StorageError::from(SqliteError::sql(&path, "removing a heartbeat", e))
                    })?;
                Ok(())
            })
            .await
    }
}
