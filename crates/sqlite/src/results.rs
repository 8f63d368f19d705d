//! [`SqliteResultBackend`]: task results, one row per task, waiters in this process woken by
//! the commit that stores their result.

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};
use stepq_results::local::check_segment;
use stepq_results::{ResultBackend, ResultError, TaskResult};

use crate::error::SqliteError;
use crate::{PendingKey, PendingValue, SqliteStore};

/// The result backend of a [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteResultBackend {
    store: SqliteStore,
}

impl SqliteResultBackend {
    pub(crate) fn new(store: SqliteStore) -> Self {
        SqliteResultBackend { store }
    }

    /// The database this view reads and writes.
    pub fn store(&self) -> &SqliteStore {
        &self.store
    }

    fn read_result(&self, task_id: &str) -> Result<Option<Vec<u8>>, ResultError> {
        match self
            .store
            .inner
            .pending
            .lookup(&PendingKey::Result(task_id.to_string()))
        {
            Some(PendingValue::Put(bytes)) => return Ok(Some(bytes.to_vec())),
            Some(PendingValue::Deleted) => return Ok(None),
            None => {}
        }
        let path = &self.store.inner.path;
        self.store.inner.reads.read(|conn| {
            conn.prepare_cached("SELECT result FROM results WHERE task_id = ?1")
                .and_then(|mut s| s.query_row([task_id], |row| row.get(0)).optional())
                .map_err(|e| ResultError::from(SqliteError::sql(path, "reading a result", e)))
        })
    }

    fn decoded(
        &self,
        task_id: &str,
        bytes: &[u8],
        with_logs: bool,
    ) -> Result<TaskResult, ResultError> {
        let mut result = TaskResult::from_json(bytes).map_err(|e| ResultError::Corrupt {
            task_id: task_id.to_string(),
            message: format!("{}: results/{task_id}: {e}", crate::DATABASE_FILE),
        })?;
        if !with_logs {
            result.log = None;
        }
        Ok(result)
    }
}

#[async_trait]
impl ResultBackend for SqliteResultBackend {
    async fn set_result(&self, task_id: &str, result: &TaskResult) -> Result<(), ResultError> {
        check_segment(task_id)?;
        let bytes = bytes::Bytes::from(result.to_json());
        let (owned, path, row) = (
            task_id.to_string(),
            self.store.inner.path.clone(),
            bytes.clone(),
        );
        let notifier = &self.store.inner.results_ready;
        let handed_over = notifier.is_waited_on(task_id);
        // The orchestrator reading a result deletes it right after: hold its row back, so
        // that it is then never written (see `pending.rs`).
        self.store.write_behind_held(
            Some(self.store.inner.options.result_hold),
            PendingKey::Result(task_id.to_string()),
            PendingValue::Put(bytes),
            move |conn| {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO results (task_id, stored_at, result) VALUES (?1, ?2, ?3)",
                )
                .and_then(|mut s| {
                    s.execute(params![owned, stepq_plan::events::now_us() as i64, &row[..]])
                })
                .map_err(|e| SqliteError::sql(&path, "storing a result", e))?;
                Ok(())
            },
        )?;
        if handed_over {
            let mut handed = result.clone();
            handed.log = None;
            self.store
                .inner
                .handoff
                .lock()
                .expect("handoff lock")
                .insert(task_id.to_string(), handed);
        }
        notifier.wake(task_id);
        Ok(())
    }

    async fn is_result_ready(&self, task_id: &str) -> Result<bool, ResultError> {
        check_segment(task_id)?;
        match self
            .store
            .inner
            .pending
            .lookup(&PendingKey::Result(task_id.to_string()))
        {
            Some(PendingValue::Put(_)) => return Ok(true),
            Some(PendingValue::Deleted) => return Ok(false),
            None => {}
        }
        let path = &self.store.inner.path;
        self.store.inner.reads.read(|conn| {
            conn.prepare_cached("SELECT 1 FROM results WHERE task_id = ?1")
                .and_then(|mut s| s.exists([task_id]))
                .map_err(|e| ResultError::from(SqliteError::sql(path, "looking a result up", e)))
        })
    }

    async fn get_result(&self, task_id: &str, with_logs: bool) -> Result<TaskResult, ResultError> {
        check_segment(task_id)?;
        match self.read_result(task_id)? {
            Some(bytes) => self.decoded(task_id, &bytes, with_logs),
            None => Err(ResultError::NotFound {
                task_id: task_id.to_string(),
            }),
        }
    }

    async fn wait_result(
        &self,
        task_id: &str,
        timeout: Option<Duration>,
    ) -> Result<TaskResult, ResultError> {
        check_segment(task_id)?;
        let wait = self.store.inner.results_ready.wait_for(task_id, || async {
            let handed = (self.store.inner.handoff.lock().expect("handoff lock")).remove(task_id);
            if let Some(result) = handed {
                return Ok(Some(result));
            }
            match self.read_result(task_id)? {
                Some(bytes) => self.decoded(task_id, &bytes, false).map(Some),
                None => Ok(None),
            }
        });
        match timeout {
            None => wait.await,
            Some(limit) => tokio::time::timeout(limit, wait).await.unwrap_or_else(|_| {
                Err(ResultError::Timeout {
                    task_id: task_id.to_string(),
                    waited: limit,
                })
            }),
        }
    }

    async fn shutdown(&self) -> Result<(), ResultError> {
        Ok(self.store.flush().await?)
    }

    async fn delete_result(&self, task_id: &str) -> Result<(), ResultError> {
        check_segment(task_id)?;
        (self.store.inner.handoff.lock().expect("handoff lock")).remove(task_id);
        let (owned, path) = (task_id.to_string(), self.store.inner.path.clone());
        self.store.write_behind(
            PendingKey::Result(task_id.to_string()),
            PendingValue::Deleted,
            move |conn| {
                conn.prepare_cached("DELETE FROM results WHERE task_id = ?1")
                    .and_then(|mut s| s.execute([owned]))
                    .map_err(|e| SqliteError::sql(&path, "deleting a result", e))?;
                Ok(())
            },
        )?;
        Ok(())
    }
}
