//! The local run store ([`LocalDirRunStore`]): run records as numbered revisions published
//! by compare-and-set, and event logs as numbered batches, under `<root>/runs/<run_id>/`.

use std::collections::HashMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use stepq_plan::Event;

use super::files::{max_seq, run_blocking, TempFile};
use crate::error::{check_id, StorageError};
use crate::memory::ChangeCounter;
use crate::record::{RunRecord, RunStatus, StatusChange};
use crate::store::{
    check_batch, check_deletable, newest_first, rescan_due, seq_name, DeletedRun, EventCursor,
    EventPage, RunStore, MAX_BATCHES_PER_READ, MAX_CAS_ATTEMPTS,
};

/// Most sequence numbers an event writer tries before giving up with
/// [`StorageError::Contention`] (each failed try means another writer's batch landed).
const MAX_SEQ_CONFLICTS: u32 = 100_000;

/// Runs and event logs in a local directory. Safe for concurrent writers in one process or
/// many processes sharing the directory. Waiters in the same process as the writer (through
/// this handle or a clone) are woken at once; writes by other processes are seen by polling
/// with capped backoff (at most [`MAX_POLL_DELAY`](crate::MAX_POLL_DELAY) between polls).
#[derive(Clone)]
pub struct LocalDirRunStore {
    inner: Arc<LocalInner>,
}

struct LocalInner {
    root: PathBuf,
    /// Next event sequence number to try, per run (a hint; conflicts are resolved on disk).
    next_seq: Mutex<HashMap<String, u64>>,
    changes: ChangeCounter,
}

impl LocalDirRunStore {
    /// A store rooted at `root` (e.g. `.stepq`); directories are created on first write.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalDirRunStore {
            inner: Arc::new(LocalInner {
                root: root.into(),
                next_seq: Mutex::new(HashMap::new()),
                changes: ChangeCounter::default(),
            }),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&LocalInner) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let inner = self.inner.clone();
        run_blocking(&self.inner.root, move || f(&inner)).await
    }
}

impl LocalInner {
    fn run_dir(&self, run_id: &str) -> PathBuf {
        self.root.join("runs").join(run_id)
    }

    fn record_path(&self, run_id: &str, rev: u64) -> PathBuf {
        self.run_dir(run_id)
            .join("record")
            .join(format!("{}.json", seq_name(rev)))
    }

    fn batch_path(&self, run_id: &str, seq: u64) -> PathBuf {
        self.run_dir(run_id)
            .join("events")
            .join(format!("{}.bin", seq_name(seq)))
    }

    fn tmp_dir(&self, run_id: &str) -> PathBuf {
        self.run_dir(run_id).join("tmp")
    }

    fn exists(&self, run_id: &str) -> Result<bool, StorageError> {
        let path = self.record_path(run_id, 0);
        match fs::metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StorageError::io(path, e)),
        }
    }

    fn ensure_exists(&self, run_id: &str) -> Result<(), StorageError> {
        if self.exists(run_id)? {
            Ok(())
        } else {
            Err(not_found(run_id))
        }
    }

    /// The highest record revision, if the run exists.
    fn latest_revision(&self, run_id: &str) -> Result<Option<u64>, StorageError> {
        max_seq(&self.run_dir(run_id).join("record"), ".json")
    }

    fn read_record(&self, run_id: &str, rev: u64) -> Result<RunRecord, StorageError> {
        let path = self.record_path(run_id, rev);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            // Removed by a delete since it was listed.
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(not_found(run_id)),
            Err(e) => return Err(StorageError::io(&path, e)),
        };
        if bytes.is_empty() {
            // The tombstone of a deleted run (see `delete`).
            return Err(not_found(run_id));
        }
        serde_json::from_slice(&bytes).map_err(|e| StorageError::Corrupt {
            location: path.display().to_string(),
            message: e.to_string(),
        })
    }

    fn get(&self, run_id: &str) -> Result<(u64, RunRecord), StorageError> {
        match self.latest_revision(run_id)? {
            Some(rev) => Ok((rev, self.read_record(run_id, rev)?)),
            None => Err(not_found(run_id)),
        }
    }

    fn create(&self, record: &RunRecord) -> Result<(), StorageError> {
        let run_id = &record.run_id;
        let record_dir = self.run_dir(run_id).join("record");
        fs::create_dir_all(&record_dir).map_err(|e| StorageError::io(&record_dir, e))?;
        let bytes = encode_record(record)?;
        let tmp = TempFile::write(&self.tmp_dir(run_id), &bytes)?;
        if tmp.publish(&self.record_path(run_id, 0))? {
            Ok(())
        } else {
            Err(StorageError::RunExists {
                run_id: run_id.clone(),
            })
        }
    }

    fn change(&self, run_id: &str, change: &StatusChange) -> Result<RunRecord, StorageError> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (rev, current) = self.get(run_id)?;
            let next = current.apply(change, stepq_plan::events::now_us())?;
            let published = TempFile::write(&self.tmp_dir(run_id), &encode_record(&next)?)
                .and_then(|tmp| tmp.publish(&self.record_path(run_id, rev + 1)))
                .map_err(|e| vanished(run_id, e))?;
            if published {
                return Ok(next);
            }
        }
        Err(StorageError::Contention {
            run_id: run_id.to_string(),
            attempts: MAX_CAS_ATTEMPTS,
        })
    }

    /// Deletes the run if it is still `expected`: publishes an empty record revision (a
    /// tombstone) after the one read, by the same compare-and-set every status change makes,
    /// then removes the run's directory. The tombstone is the commit point: a change racing
    /// it either published that revision first (the delete re-reads and is refused) or finds
    /// the tombstone and fails with `RunNotFound`. A process killed between the tombstone and
    /// the removal leaves a directory that reads as no run.
    fn delete(&self, run_id: &str, expected: RunStatus) -> Result<DeletedRun, StorageError> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (rev, current) = self.get(run_id)?;
            if current.status != expected {
                return Err(StorageError::UnexpectedStatus {
                    run_id: run_id.to_string(),
                    expected,
                    found: current.status,
                });
            }
            let tombstone = TempFile::write(&self.tmp_dir(run_id), b"")?;
            if !tombstone.publish(&self.record_path(run_id, rev + 1))? {
                continue; // a change landed: re-read and re-check
            }
            drop(tombstone);
            let dir = self.run_dir(run_id);
            let bytes = dir_size(&dir)?;
            let batches = max_seq(&dir.join("events"), ".bin")?.map_or(0, |seq| seq + 1);
            // Move the directory aside in one rename before removing it: a writer racing the
            // delete may create a temp file in the run's directory at any moment, which would
            // make removing it in place fail half-way ("directory not empty"). Once renamed,
            // nothing new lands in the trash; a racing writer finds no run (see `vanished`)
            // and at most re-creates an empty `tmp/`, removed below if still there.
            let trash = self
                .root
                .join("runs")
                .join(format!(".deleted-{}", uuid::Uuid::new_v4()));
            fs::rename(&dir, &trash).map_err(|e| StorageError::io(&dir, e))?;
            fs::remove_dir_all(&trash).map_err(|e| StorageError::io(&trash, e))?;
            let _ = fs::remove_dir(self.tmp_dir(run_id));
            let _ = fs::remove_dir(&dir);
            self.next_seq.lock().expect("next_seq lock").remove(run_id);
            return Ok(DeletedRun::new(current, batches, Some(bytes)));
        }
        Err(StorageError::Contention {
            run_id: run_id.to_string(),
            attempts: MAX_CAS_ATTEMPTS,
        })
    }

    fn append(&self, run_id: &str, events: &[Event]) -> Result<(), StorageError> {
        self.ensure_exists(run_id)?;
        if events.is_empty() {
            return Ok(());
        }
        let bytes = stepq_plan::pack(&events.to_vec()).map_err(|e| StorageError::Encode {
            what: "event batch",
            message: e.to_string(),
        })?;
        let events_dir = self.run_dir(run_id).join("events");
        fs::create_dir_all(&events_dir).map_err(|e| StorageError::io(&events_dir, e))?;
        let tmp = TempFile::write(&self.tmp_dir(run_id), &bytes)?;
        let hint = self
            .next_seq
            .lock()
            .expect("next_seq lock")
            .get(run_id)
            .copied();
        let mut seq = match hint {
            Some(seq) => seq,
            None => next_free(&events_dir)?,
        };
        let mut conflicts = 0u32;
        while !tmp.publish(&self.batch_path(run_id, seq))? {
            conflicts += 1;
            if conflicts >= MAX_SEQ_CONFLICTS {
                return Err(StorageError::Contention {
                    run_id: run_id.to_string(),
                    attempts: conflicts,
                });
            }
            // Other writers are ahead: after a few misses, jump to the end of the log.
            seq = if rescan_due(conflicts) {
                next_free(&events_dir)?.max(seq + 1)
            } else {
                seq + 1
            };
        }
        self.next_seq
            .lock()
            .expect("next_seq lock")
            .insert(run_id.to_string(), seq + 1);
        Ok(())
    }

    fn read(&self, run_id: &str, from: EventCursor) -> Result<EventPage, StorageError> {
        let mut events = Vec::new();
        let mut seq = from.0;
        while seq - from.0 < MAX_BATCHES_PER_READ as u64 {
            let path = self.batch_path(run_id, seq);
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == ErrorKind::NotFound => break,
                Err(e) => return Err(StorageError::io(path, e)),
            };
            let batch: Vec<Event> =
                stepq_plan::unpack(&bytes).map_err(|e| StorageError::Corrupt {
                    location: path.display().to_string(),
                    message: e.to_string(),
                })?;
            events.extend(batch);
            seq += 1;
        }
        if seq == from.0 {
            self.ensure_exists(run_id)?;
        }
        Ok(EventPage {
            events,
            next: EventCursor(seq),
        })
    }

    fn list(&self, limit: usize) -> Result<Vec<RunRecord>, StorageError> {
        let runs_dir = self.root.join("runs");
        let entries = match fs::read_dir(&runs_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StorageError::io(runs_dir, e)),
        };
        // Creation time and id never change: sort on the first revision, then read the
        // current one of the runs kept.
        let mut created = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StorageError::io(&runs_dir, e))?;
            let Some(run_id) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if check_id(&run_id).is_err() || !self.exists(&run_id)? {
                continue;
            }
            match self.read_record(&run_id, 0) {
                Ok(record) => created.push(record),
                Err(StorageError::RunNotFound { .. }) => continue, // deleted meanwhile
                Err(e) => return Err(e),
            }
        }
        let mut runs = Vec::new();
        for first in newest_first(created, limit) {
            match self.get(&first.run_id) {
                Ok((_, record)) => runs.push(record),
                Err(StorageError::RunNotFound { .. }) => {} // deleted (a tombstone)
                Err(e) => return Err(e),
            }
        }
        Ok(runs)
    }
}

#[async_trait]
impl RunStore for LocalDirRunStore {
    async fn create_run(&self, record: &RunRecord) -> Result<(), StorageError> {
        check_id(&record.run_id)?;
        let record = record.clone();
        self.blocking(move |inner| inner.create(&record)).await
    }

    async fn get_run(&self, run_id: &str) -> Result<RunRecord, StorageError> {
        check_id(run_id)?;
        let run_id = run_id.to_string();
        self.blocking(move |inner| inner.get(&run_id).map(|(_, record)| record))
            .await
    }

    async fn list_runs(&self, limit: usize) -> Result<Vec<RunRecord>, StorageError> {
        self.blocking(move |inner| inner.list(limit)).await
    }

    async fn change_status(
        &self,
        run_id: &str,
        change: &StatusChange,
    ) -> Result<RunRecord, StorageError> {
        check_id(run_id)?;
        let (run_id, change) = (run_id.to_string(), change.clone());
        let next = self
            .blocking(move |inner| inner.change(&run_id, &change))
            .await?;
        self.inner.changes.bump();
        Ok(next)
    }

    async fn delete_run(
        &self,
        run_id: &str,
        expected: RunStatus,
    ) -> Result<DeletedRun, StorageError> {
        check_deletable(run_id, expected)?;
        check_id(run_id)?;
        let owned = run_id.to_string();
        let deleted = self
            .blocking(move |inner| inner.delete(&owned, expected))
            .await?;
        self.inner.changes.bump();
        Ok(deleted)
    }

    async fn append_events(&self, run_id: &str, events: &[Event]) -> Result<(), StorageError> {
        check_id(run_id)?;
        check_batch(run_id, events)?;
        let (run_id, events) = (run_id.to_string(), events.to_vec());
        self.blocking(move |inner| {
            inner
                .append(&run_id, &events)
                .map_err(|e| vanished(&run_id, e))
        })
        .await?;
        self.inner.changes.bump();
        Ok(())
    }

    async fn read_events(
        &self,
        run_id: &str,
        from: EventCursor,
    ) -> Result<EventPage, StorageError> {
        check_id(run_id)?;
        let run_id = run_id.to_string();
        self.blocking(move |inner| inner.read(&run_id, from)).await
    }

    async fn wait_events(
        &self,
        run_id: &str,
        from: EventCursor,
    ) -> Result<EventPage, StorageError> {
        check_id(run_id)?;
        // Woken at once by writers in this process; other processes are polled for.
        self.inner
            .changes
            .wait_events(self, run_id, from, true)
            .await
    }
}

/// A path of the run that disappeared under a write means a delete removed the run.
fn vanished(run_id: &str, error: StorageError) -> StorageError {
    match &error {
        StorageError::Io { source, .. } if source.kind() == ErrorKind::NotFound => {
            not_found(run_id)
        }
        _ => error,
    }
}

fn not_found(run_id: &str) -> StorageError {
    StorageError::RunNotFound {
        run_id: run_id.to_string(),
    }
}

fn encode_record(record: &RunRecord) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec_pretty(record).map_err(|e| StorageError::Encode {
        what: "run record",
        message: e.to_string(),
    })
}

/// Total size of the files under `dir`, recursively.
fn dir_size(dir: &Path) -> Result<u64, StorageError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(StorageError::io(dir, e)),
    };
    let mut total = 0;
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io(dir, e))?;
        let kind = entry.file_type().map_err(|e| StorageError::io(dir, e))?;
        if kind.is_dir() {
            total += dir_size(&entry.path())?;
        } else if let Ok(meta) = entry.metadata() {
            total += meta.len();
        }
    }
    Ok(total)
}

/// The sequence number after the last batch in `events_dir`.
fn next_free(events_dir: &Path) -> Result<u64, StorageError> {
    Ok(max_seq(events_dir, ".bin")?.map_or(0, |seq| seq + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RunStatus;
    use stepq_plan::EventKind;

    fn run(id: &str) -> RunRecord {
        RunRecord::new(id, "job", serde_json::json!({}))
    }

    #[tokio::test]
    async fn corrupt_batch_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirRunStore::new(dir.path());
        store.create_run(&run("r1")).await.unwrap();
        store
            .append_events("r1", &[Event::run("r1", EventKind::RunStarted)])
            .await
            .unwrap();
        let path = store.inner.batch_path("r1", 0);
        fs::write(&path, b"not a batch").unwrap();
        match store.read_events("r1", EventCursor::START).await {
            Err(StorageError::Corrupt { location, .. }) => {
                assert!(location.ends_with("00000000000000000000.bin"), "{location}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn corrupt_record_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirRunStore::new(dir.path());
        store.create_run(&run("r1")).await.unwrap();
        fs::write(store.inner.record_path("r1", 0), b"{").unwrap();
        match store.get_run("r1").await {
            Err(StorageError::Corrupt { location, .. }) => {
                assert!(location.contains("record"), "{location}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn status_changes_keep_every_revision_and_leave_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirRunStore::new(dir.path());
        store.create_run(&run("r1")).await.unwrap();
        store
            .update_status("r1", RunStatus::Starting)
            .await
            .unwrap();
        store.update_status("r1", RunStatus::Started).await.unwrap();
        assert_eq!(store.inner.latest_revision("r1").unwrap(), Some(2));
        assert_eq!(
            store.inner.read_record("r1", 1).unwrap().status,
            RunStatus::Starting
        );
        store
            .append_events("r1", &[Event::run("r1", EventKind::RunStarted)])
            .await
            .unwrap();
        let leftovers = fs::read_dir(store.inner.tmp_dir("r1")).unwrap().count();
        assert_eq!(leftovers, 0);
    }

    #[tokio::test]
    async fn stale_sequence_hint_is_corrected_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let a = LocalDirRunStore::new(dir.path());
        let b = LocalDirRunStore::new(dir.path());
        a.create_run(&run("r1")).await.unwrap();
        let event = |n: &str| {
            Event::run(
                "r1",
                EventKind::EngineEvent {
                    message: n.to_string(),
                },
            )
        };
        a.append_events("r1", &[event("a0")]).await.unwrap();
        for i in 0..20 {
            b.append_events("r1", &[event(&format!("b{i}"))])
                .await
                .unwrap();
        }
        // `a` still believes batch 1 is next; it must land after b's 20 batches.
        a.append_events("r1", &[event("a1")]).await.unwrap();
        let page = a.read_events("r1", EventCursor::START).await.unwrap();
        assert_eq!(page.next, EventCursor(22));
        assert_eq!(page.events.len(), 22);
        assert_eq!(page.events[21].kind, event("a1").kind);
    }

    #[tokio::test]
    async fn unwritable_root_is_an_io_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        fs::write(&file, b"").unwrap();
        let store = LocalDirRunStore::new(&file);
        match store.create_run(&run("r1")).await {
            Err(StorageError::Io { path, .. }) => assert!(path.contains("not-a-dir"), "{path}"),
            other => panic!("{other:?}"),
        }
    }
}
