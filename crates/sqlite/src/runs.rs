//! [`SqliteRunStore`]: run records (compare-and-set in one transaction) and event logs (one
//! row per batch, numbered from 0).

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use stepq_plan::Event;
use stepq_runs::store::check_batch;
use stepq_runs::{
    check_deletable, check_for_events, check_id, DeletedRun, EventCursor, EventPage, RunFilter,
    RunRecord, RunStatus, RunStore, StatusChange, StorageError, MAX_BATCHES_PER_READ,
};

use crate::error::SqliteError;
use crate::SqliteStore;

/// The run store of a [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteRunStore {
    store: SqliteStore,
}

impl SqliteRunStore {
    pub(crate) fn new(store: SqliteStore) -> Self {
        SqliteRunStore { store }
    }

    /// The database this view reads and writes.
    pub fn store(&self) -> &SqliteStore {
        &self.store
    }
}

fn sql_error<'a>(
    store: &'a SqliteStore,
    what: &'static str,
) -> impl Fn(rusqlite::Error) -> StorageError + 'a {
    move |e| SqliteError::sql(&store.inner.path, what, e).into()
}

fn encode(record: &RunRecord) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(record).map_err(|e| StorageError::Encode {
        what: "a run record",
        message: e.to_string(),
    })
}

fn decode(run_id: &str, bytes: &[u8]) -> Result<RunRecord, StorageError> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::Corrupt {
        location: format!("{DATABASE}: runs/{run_id}"),
        message: e.to_string(),
    })
}

const DATABASE: &str = crate::DATABASE_FILE;

/// The record of `run_id` as the connection sees it.
fn load(conn: &Connection, store: &SqliteStore, run_id: &str) -> Result<RunRecord, StorageError> {
    let bytes: Option<Vec<u8>> = conn
        .prepare_cached("SELECT record FROM runs WHERE run_id = ?1")
        .and_then(|mut s| s.query_row([run_id], |row| row.get(0)).optional())
        .map_err(sql_error(store, "reading a run"))?;
    match bytes {
        Some(bytes) => decode(run_id, &bytes),
        None => Err(StorageError::RunNotFound {
            run_id: run_id.to_string(),
        }),
    }
}

fn exists(conn: &Connection, store: &SqliteStore, run_id: &str) -> Result<bool, StorageError> {
    conn.prepare_cached("SELECT 1 FROM runs WHERE run_id = ?1")
        .and_then(|mut s| s.exists([run_id]))
        .map_err(sql_error(store, "looking a run up"))
}

#[async_trait]
impl RunStore for SqliteRunStore {
    async fn create_run(&self, record: &RunRecord) -> Result<(), StorageError> {
        check_id(&record.run_id)?;
        let bytes = encode(record)?;
        let record = record.clone();
        let store = self.store.clone();
        self.store
            .inner
            .writer
            .write(move |conn| {
                if exists(conn, &store, &record.run_id)? {
                    return Err(StorageError::RunExists {
                        run_id: record.run_id.clone(),
                    });
                }
                conn.prepare_cached(
                    "INSERT INTO runs (run_id, job_name, status, created_at, record) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        record.run_id,
                        record.job_name,
                        record.status.as_str(),
                        record.created_at as i64,
                        bytes
                    ])
                })
                .map_err(sql_error(&store, "storing a run"))?;
                let mut tag = conn
                    .prepare_cached("INSERT INTO run_tags (run_id, key, value) VALUES (?1, ?2, ?3)")
                    .map_err(sql_error(&store, "storing a run's tags"))?;
                for (key, value) in &record.tags {
                    tag.execute(params![record.run_id, key, value])
                        .map_err(sql_error(&store, "storing a run's tags"))?;
                }
                Ok(())
            })
            .await
    }

    async fn get_run(&self, run_id: &str) -> Result<RunRecord, StorageError> {
        check_id(run_id)?;
        self.store
            .inner
            .reads
            .read(|conn| load(conn, &self.store, run_id))
    }

    async fn list_runs(&self, limit: usize) -> Result<Vec<RunRecord>, StorageError> {
        self.list_runs_matching(&RunFilter::new().with_limit(limit))
            .await
    }

    /// One indexed query: statuses, job, creation time and each tag pair are conditions of
    /// the `SELECT`, newest first, limited in SQL.
    async fn list_runs_matching(&self, filter: &RunFilter) -> Result<Vec<RunRecord>, StorageError> {
        let mut sql = String::from("SELECT run_id, record FROM runs WHERE 1 = 1");
        let mut values: Vec<rusqlite::types::Value> = Vec::new();
        if !filter.statuses.is_empty() {
            let marks = vec!["?"; filter.statuses.len()].join(", ");
            sql.push_str(&format!(" AND status IN ({marks})"));
            values.extend(
                filter
                    .statuses
                    .iter()
                    .map(|s| s.as_str().to_string().into()),
            );
        }
        if let Some(job) = &filter.job_name {
            sql.push_str(" AND job_name = ?");
            values.push(job.clone().into());
        }
        if let Some(since) = filter.created_since {
            sql.push_str(" AND created_at >= ?");
            values.push(i64::try_from(since).unwrap_or(i64::MAX).into());
        }
        for (key, value) in &filter.tags {
            sql.push_str(
                " AND EXISTS (SELECT 1 FROM run_tags t \
                 WHERE t.run_id = runs.run_id AND t.key = ? AND t.value = ?)",
            );
            values.push(key.clone().into());
            values.push(value.clone().into());
        }
        sql.push_str(" ORDER BY created_at DESC, run_id DESC LIMIT ?");
        let limit = filter
            .limit
            .map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
        values.push(limit.into());
        self.store.inner.reads.read(|conn| {
            let mut stmt = conn
                .prepare_cached(&sql)
                .map_err(sql_error(&self.store, "listing runs"))?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(values), |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?))
                })
                .map_err(sql_error(&self.store, "listing runs"))?;
            let mut runs = Vec::new();
            for row in rows {
                let (run_id, bytes) = row.map_err(sql_error(&self.store, "listing runs"))?;
                runs.push(decode(&run_id, &bytes)?);
            }
            Ok(runs)
        })
    }

    async fn change_status(
        &self,
        run_id: &str,
        change: &StatusChange,
    ) -> Result<RunRecord, StorageError> {
        check_id(run_id)?;
        let (run_id, change) = (run_id.to_string(), change.clone());
        let store = self.store.clone();
        let key = run_id.clone();
        let record = self
            .store
            .inner
            .writer
            .write(move |conn| -> Result<RunRecord, StorageError> {
                // Read and write in one transaction holding the write lock: atomic against
                // this process's other writes and every other process's.
                let current = load(conn, &store, &run_id)?;
                let next = current.apply(&change, stepq_plan::events::now_us())?;
                let bytes = encode(&next)?;
                conn.prepare_cached("UPDATE runs SET status = ?2, record = ?3 WHERE run_id = ?1")
                    .and_then(|mut s| s.execute(params![run_id, next.status.as_str(), bytes]))
                    .map_err(sql_error(&store, "changing a run's status"))?;
                Ok(next)
            })
            .await?;
        if record.status.is_terminal() {
            // A log waiter returns once the run is terminal.
            self.store.inner.events_added.wake(&key);
        }
        Ok(record)
    }

    /// One write job (a savepoint of the writer's transaction, holding the write lock): reads
    /// the status, and only if it is still `expected` deletes the run's row, its tags and its
    /// event batches, so a concurrent status change is either before it (refused) or after
    /// it (`RunNotFound`). The freed pages stay in the file until it is compacted
    /// ([`compact_database`](crate::compact_database)): `bytes` is `None`.
    async fn delete_run(
        &self,
        run_id: &str,
        expected: RunStatus,
    ) -> Result<DeletedRun, StorageError> {
        check_deletable(run_id, expected)?;
        check_id(run_id)?;
        let store = self.store.clone();
        let owned = run_id.to_string();
        let deleted = self
            .store
            .inner
            .writer
            .write(move |conn| -> Result<DeletedRun, StorageError> {
                let current = load(conn, &store, &owned)?;
                if current.status != expected {
                    return Err(StorageError::UnexpectedStatus {
                        run_id: owned,
                        expected,
                        found: current.status,
                    });
                }
                let delete = |sql: &str| {
                    conn.prepare_cached(sql)
                        .and_then(|mut s| s.execute([&owned]))
                        .map_err(sql_error(&store, "deleting a run"))
                };
                let batches = delete("DELETE FROM events WHERE run_id = ?1")?;
                delete("DELETE FROM run_tags WHERE run_id = ?1")?;
                delete("DELETE FROM runs WHERE run_id = ?1")?;
                Ok(DeletedRun::new(current, batches as u64, None))
            })
            .await?;
        // A log waiter re-checks and finds the run gone.
        self.store.inner.events_added.wake(run_id);
        Ok(deleted)
    }

    async fn append_events(&self, run_id: &str, events: &[Event]) -> Result<(), StorageError> {
        check_id(run_id)?;
        check_batch(run_id, events)?;
        let batch = if events.is_empty() {
            None
        } else {
            Some(
                stepq_plan::pack(&events.to_vec()).map_err(|e| StorageError::Encode {
                    what: "an event batch",
                    message: e.to_string(),
                })?,
            )
        };
        let Some(batch) = batch else {
            // Nothing to append; an unknown run is still an error.
            return self
                .store
                .inner
                .reads
                .read(|conn| match exists(conn, &self.store, run_id)? {
                    true => Ok(()),
                    false => Err(StorageError::RunNotFound {
                        run_id: run_id.to_string(),
                    }),
                });
        };
        let store = self.store.clone();
        let owned = run_id.to_string();
        self.store
            .inner
            .writer
            .write(move |conn| -> Result<(), StorageError> {
                if !exists(conn, &store, &owned)? {
                    return Err(StorageError::RunNotFound { run_id: owned });
                }
                conn.prepare_cached(
                    "INSERT INTO events (run_id, seq, batch) VALUES (?1, \
                     (SELECT COALESCE(MAX(seq) + 1, 0) FROM events WHERE run_id = ?1), ?2)",
                )
                .and_then(|mut s| s.execute(params![owned, batch]))
                .map_err(sql_error(&store, "appending events"))?;
                Ok(())
            })
            .await?;
        self.store.inner.events_added.wake(run_id);
        Ok(())
    }

    async fn read_events(
        &self,
        run_id: &str,
        from: EventCursor,
    ) -> Result<EventPage, StorageError> {
        check_id(run_id)?;
        self.store.inner.reads.read(|conn| {
            if !exists(conn, &self.store, run_id)? {
                return Err(StorageError::RunNotFound {
                    run_id: run_id.to_string(),
                });
            }
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, batch FROM events WHERE run_id = ?1 AND seq >= ?2 \
                     ORDER BY seq LIMIT ?3",
                )
                .map_err(sql_error(&self.store, "reading events"))?;
            let rows = stmt
                .query_map(
                    params![run_id, from.batch() as i64, MAX_BATCHES_PER_READ as i64],
                    |row| Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?)),
                )
                .map_err(sql_error(&self.store, "reading events"))?;
            let mut page = EventPage {
                events: Vec::new(),
                next: from,
            };
            for row in rows {
                let (seq, bytes) = row.map_err(sql_error(&self.store, "reading events"))?;
                let batch: Vec<Event> =
                    stepq_plan::unpack(&bytes).map_err(|e| StorageError::Corrupt {
                        location: format!("{DATABASE}: events/{run_id}/{seq}"),
                        message: e.to_string(),
                    })?;
                page.events.extend(batch);
                page.next = EventCursor(seq as u64 + 1);
            }
            Ok(page)
        })
    }

    async fn wait_events(
        &self,
        run_id: &str,
        from: EventCursor,
    ) -> Result<EventPage, StorageError> {
        check_id(run_id)?;
        self.store
            .inner
            .events_added
            .wait_for(run_id, || check_for_events(self, run_id, from))
            .await
    }
}
