//! [`SqliteOutputStore`]: step outputs in the database up to a size limit, larger ones as
//! files under `blobs/` whose size and digest the database holds.
//!
//! A large output's file is written under a temporary name and renamed into place before the
//! row naming it commits, without an fsync: a crash of the process keeps it (it is in the OS's
//! cache); a power loss may tear it, which the size and digest check on read reports as
//! corrupt instead of handing out half an output.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{params, OptionalExtension};
use stepq_results::{OutputKey, OutputStore, ResultError};

use crate::error::SqliteError;
use crate::{PendingKey, PendingValue, SqliteStore};

/// The output store of a [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteOutputStore {
    store: SqliteStore,
}

impl SqliteOutputStore {
    pub(crate) fn new(store: SqliteStore) -> Self {
        SqliteOutputStore { store }
    }

    /// The database this view reads and writes.
    pub fn store(&self) -> &SqliteStore {
        &self.store
    }

    fn sql(&self, what: &'static str) -> impl Fn(rusqlite::Error) -> ResultError + '_ {
        move |e| SqliteError::sql(&self.store.inner.path, what, e).into()
    }
}

fn pending_key(key: &OutputKey) -> PendingKey {
    PendingKey::Output(
        key.run_id.clone(),
        key.step_key.clone(),
        key.output_name.clone(),
    )
}

fn io_error(path: &Path, source: std::io::Error) -> ResultError {
    ResultError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ResultError> {
    let dir = path.parent().expect("blob paths have a parent");
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("output");
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io_error(path, e)
        })
}

#[async_trait]
impl OutputStore for SqliteOutputStore {
    async fn put(&self, key: &OutputKey, value: Bytes) -> Result<(), ResultError> {
        let relative = key.relative_path()?;
        let inline = value.len() <= self.store.inner.options.inline_output_limit;
        let digest = if inline {
            String::new()
        } else {
            let file: PathBuf = self.store.inner.blobs.join(&relative);
            let bytes = value.clone();
            let digest = crate::digest(&value);
            tokio::task::spawn_blocking(move || write_file(&file, &bytes))
                .await
                .map_err(|e| {
                    io_error(Path::new("<blob write task>"), std::io::Error::other(e))
                })??;
            digest
        };
        let pending_key = PendingKey::Output(
            key.run_id.clone(),
            key.step_key.clone(),
            key.output_name.clone(),
        );
        let (key, path, row) = (key.clone(), self.store.inner.path.clone(), value.clone());
        self.store
            .write_behind(pending_key, PendingValue::Put(value), move |conn| {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO outputs \
                 (run_id, step_key, output_name, size, digest, inline) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        key.run_id,
                        key.step_key,
                        key.output_name,
                        row.len() as i64,
                        digest,
                        inline.then_some(&row[..]),
                    ])
                })
                .map_err(|e| SqliteError::sql(&path, "storing an output", e))?;
                Ok(())
            })?;
        Ok(())
    }

    async fn get(&self, key: &OutputKey) -> Result<Bytes, ResultError> {
        let relative = key.relative_path()?;
        match self.store.inner.pending.lookup(&pending_key(key)) {
            Some(PendingValue::Put(bytes)) => return Ok(bytes),
            Some(PendingValue::Deleted) => {
                return Err(ResultError::OutputNotFound {
                    key: key.to_string(),
                })
            }
            None => {}
        }
        type Row = (i64, String, Option<Vec<u8>>);
        let row: Option<Row> = self.store.inner.reads.read(|conn| {
            conn.prepare_cached(
                "SELECT size, digest, inline FROM outputs \
                 WHERE run_id = ?1 AND step_key = ?2 AND output_name = ?3",
            )
            .and_then(|mut s| {
                s.query_row(params![key.run_id, key.step_key, key.output_name], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .optional()
            })
            .map_err(self.sql("reading an output"))
        })?;
        let Some((size, digest, inline)) = row else {
            return Err(ResultError::OutputNotFound {
                key: key.to_string(),
            });
        };
        if let Some(bytes) = inline {
            return Ok(Bytes::from(bytes));
        }
        let file = self.store.inner.blobs.join(&relative);
        let bytes = tokio::fs::read(&file)
            .await
            .map_err(|e| io_error(&file, e))?;
        if bytes.len() as i64 != size || crate::digest(&bytes) != digest {
            return Err(ResultError::Corrupt {
                task_id: key.to_string(),
                message: format!(
                    "output file {} holds {} bytes with digest {}, the database recorded {size} \
                     bytes with digest {digest} (torn by a crash?); re-run the step",
                    file.display(),
                    bytes.len(),
                    crate::digest(&bytes)
                ),
            });
        }
        Ok(Bytes::from(bytes))
    }

    async fn exists(&self, key: &OutputKey) -> Result<bool, ResultError> {
        key.relative_path()?;
        match self.store.inner.pending.lookup(&pending_key(key)) {
            Some(PendingValue::Put(_)) => return Ok(true),
            Some(PendingValue::Deleted) => return Ok(false),
            None => {}
        }
        self.store.inner.reads.read(|conn| {
            conn.prepare_cached(
                "SELECT 1 FROM outputs WHERE run_id = ?1 AND step_key = ?2 AND output_name = ?3",
            )
            .and_then(|mut s| s.exists(params![key.run_id, key.step_key, key.output_name]))
            .map_err(self.sql("looking an output up"))
        })
    }

    async fn delete_run(&self, run_id: &str) -> Result<(), ResultError> {
        stepq_results::local::check_segment(run_id)?;
        let (owned, path) = (run_id.to_string(), self.store.inner.path.clone());
        self.store
            .inner
            .writer
            .write(move |conn| -> Result<(), ResultError> {
                conn.prepare_cached("DELETE FROM outputs WHERE run_id = ?1")
                    .and_then(|mut s| s.execute([owned]))
                    .map_err(|e| {
                        ResultError::from(SqliteError::sql(&path, "deleting outputs", e))
                    })?;
                Ok(())
            })
            .await?;
        let dir = self.store.inner.blobs.join(run_id);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(&dir, e)),
        }
    }
}
