//! Local-directory result backend and output store (the embedded default keeps runs on disk).
//!
//! Layout under the root directory:
//!
//! ```text
//! <root>/results/<task_id>.json              one TaskResult as JSON
//! <root>/outputs/<run>/<step>/<output>       one step output, raw bytes
//! ```
//!
//! Every file is written to a temporary file in the same directory, flushed to disk, then
//! renamed over its final name, so a reader (in this process or another) sees either the old
//! content or the new, never a partial file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::backend::ResultBackend;
use crate::error::ResultError;
use crate::memory::Waiters;
use crate::output::{OutputKey, OutputStore};
use crate::result::TaskResult;

/// Longest file name most filesystems accept, in bytes.
const MAX_FILE_NAME: usize = 255;

/// First delay of the file poll that catches results written by other processes.
const POLL_INITIAL: Duration = Duration::from_millis(5);

/// Longest delay of the file poll.
const POLL_MAX: Duration = Duration::from_millis(250);

/// Checks that `part` is usable as one path segment / object key segment.
pub fn check_segment(part: &str) -> Result<(), ResultError> {
    let reason = if part.is_empty() {
        Some("empty")
    } else if part == "." || part == ".." {
        Some("is a relative path component")
    } else if part.contains('/') || part.contains('\\') {
        Some("contains a path separator")
    } else if part.chars().any(|c| c.is_control()) {
        Some("contains a control character")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ResultError::InvalidKey {
            key: part.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Checks `part` with [`check_segment`] and that `part` plus `suffix` fits in a file name.
fn check_file_name(part: &str, suffix: &str) -> Result<(), ResultError> {
    check_segment(part)?;
    if part.len() + suffix.len() > MAX_FILE_NAME {
        return Err(ResultError::InvalidKey {
            key: part.to_string(),
            reason: "too long for a file name",
        });
    }
    Ok(())
}

fn io_error(path: &Path, source: std::io::Error) -> ResultError {
    ResultError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory (created with
/// its parents if missing), flushed to disk, then renamed over `path`.
async fn write_atomic(path: PathBuf, bytes: Bytes) -> Result<(), ResultError> {
    tokio::task::spawn_blocking(move || write_atomic_blocking(&path, &bytes))
        .await
        .map_err(|e| ResultError::Io {
            path: "<blocking write task>".to_string(),
            source: std::io::Error::other(e),
        })?
}

fn write_atomic_blocking(path: &Path, bytes: &[u8]) -> Result<(), ResultError> {
    let dir = path.parent().expect("stored paths have a parent directory");
    // Temporary names end in `.tmp`, so they never collide with a result (`*.json`), and start
    // with a dot and a fresh uuid, so concurrent writers never share one.
    let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
    let mut file = match std::fs::File::create_new(&tmp) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
            std::fs::File::create_new(&tmp).map_err(|e| io_error(&tmp, e))?
        }
        Err(e) => return Err(io_error(&tmp, e)),
    };
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_data())
        .map_err(|e| io_error(&tmp, e))
        .and_then(|()| {
            drop(file);
            std::fs::rename(&tmp, path).map_err(|e| io_error(path, e))
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Reads a whole file; `None` if it does not exist.
async fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, ResultError> {
    match tokio::fs::read(path).await {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path, e)),
    }
}

/// Whether a file exists.
async fn file_exists(path: &Path) -> Result<bool, ResultError> {
    tokio::fs::try_exists(path)
        .await
        .map_err(|e| io_error(path, e))
}

fn strip_log(mut r: TaskResult, with_logs: bool) -> TaskResult {
    if !with_logs {
        r.log = None;
    }
    r
}

/// Task results as JSON files under `<root>/results/<task_id>.json`.
///
/// Waiters in the same process are woken as soon as a result is stored; results stored by
/// another process (a worker sharing the directory) are found by polling the file with capped
/// exponential backoff (5 ms doubling to 250 ms).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use stepq_results::{LocalDirResultBackend, ResultBackend, TaskResult};
///
/// let dir = tempfile::tempdir().unwrap();
/// let backend = LocalDirResultBackend::new(dir.path());
/// backend.startup().await.unwrap();
/// backend.set_result("task-1", &TaskResult::ok(serde_json::json!("done"), 0.5)).await.unwrap();
/// assert!(dir.path().join("results/task-1.json").exists());
/// let result = backend.get_result("task-1", true).await.unwrap();
/// assert_eq!(result.return_value, serde_json::json!("done"));
/// # });
/// ```
pub struct LocalDirResultBackend {
    root: PathBuf,
    results_dir: PathBuf,
    waiters: Waiters,
}

impl LocalDirResultBackend {
    /// A backend keeping results under `<root>/results`. Nothing is touched until
    /// [`ResultBackend::startup`] or the first write.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        LocalDirResultBackend {
            results_dir: root.join("results"),
            root,
            waiters: Waiters::default(),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file a task's result is stored in; rejects ids unusable as a file name.
    pub fn result_path(&self, task_id: &str) -> Result<PathBuf, ResultError> {
        check_file_name(task_id, ".json")?;
        Ok(self.results_dir.join(format!("{task_id}.json")))
    }

    /// Reads and decodes a result file; a missing file is [`ResultError::NotFound`].
    async fn read(&self, task_id: &str, path: &Path) -> Result<TaskResult, ResultError> {
        let bytes = read_if_exists(path)
            .await?
            .ok_or_else(|| ResultError::NotFound {
                task_id: task_id.to_string(),
            })?;
        TaskResult::from_json(&bytes).map_err(|e| ResultError::Corrupt {
            task_id: task_id.to_string(),
            message: format!("file `{}`: {e}", path.display()),
        })
    }

    /// Polls the file with capped exponential backoff until it holds a result.
    async fn poll_file(&self, task_id: &str, path: &Path) -> Result<TaskResult, ResultError> {
        let mut delay = POLL_INITIAL;
        loop {
            match self.read(task_id, path).await {
                Err(ResultError::NotFound { .. }) => {}
                other => return other,
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(POLL_MAX);
        }
    }

    /// Number of task ids with registered waiters or results in memory (for tests).
    #[cfg(test)]
    fn waiter_slots(&self) -> usize {
        self.waiters.len()
    }
}

#[async_trait]
impl ResultBackend for LocalDirResultBackend {
    async fn startup(&self) -> Result<(), ResultError> {
        tokio::fs::create_dir_all(&self.results_dir)
            .await
            .map_err(|e| io_error(&self.results_dir, e))
    }

    async fn set_result(&self, task_id: &str, result: &TaskResult) -> Result<(), ResultError> {
        let path = self.result_path(task_id)?;
        write_atomic(path, Bytes::from(result.to_json())).await?;
        self.waiters.publish(task_id, result, false);
        Ok(())
    }

    async fn is_result_ready(&self, task_id: &str) -> Result<bool, ResultError> {
        file_exists(&self.result_path(task_id)?).await
    }

    async fn get_result(&self, task_id: &str, with_logs: bool) -> Result<TaskResult, ResultError> {
        let path = self.result_path(task_id)?;
        self.read(task_id, &path)
            .await
            .map(|r| strip_log(r, with_logs))
    }

    async fn wait_result(
        &self,
        task_id: &str,
        timeout: Option<Duration>,
    ) -> Result<TaskResult, ResultError> {
        let path = self.result_path(task_id)?;
        // Register before the first read, so an in-process write in between is not missed.
        let notified = self.waiters.register(task_id);
        let wait = async {
            let notified = async {
                match notified.await {
                    Ok(result) => result,
                    // Never happens while `self` lives; leave it to the poll.
                    Err(_) => std::future::pending().await,
                }
            };
            tokio::select! {
                result = notified => Ok(result),
                result = self.poll_file(task_id, &path) => result,
            }
        };
        let outcome = match timeout {
            Some(t) => match tokio::time::timeout(t, wait).await {
                Ok(outcome) => outcome,
                Err(_) => Err(ResultError::Timeout {
                    task_id: task_id.to_string(),
                    waited: t,
                }),
            },
            None => wait.await,
        };
        // Our receiver is gone now; drop the slot unless other waiters still use it.
        self.waiters.forget_closed(task_id);
        outcome.map(|r| strip_log(r, false))
    }

    async fn delete_result(&self, task_id: &str) -> Result<(), ResultError> {
        let path = self.result_path(task_id)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(&path, e)),
        }
    }
}

/// Step outputs as files under `<root>/outputs/<run>/<step>/<output>`.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use bytes::Bytes;
/// use stepq_results::{LocalDirOutputStore, OutputKey, OutputStore};
///
/// let dir = tempfile::tempdir().unwrap();
/// let store = LocalDirOutputStore::new(dir.path());
/// let key = OutputKey::new("run-1", "extract", "rows");
/// store.put(&key, Bytes::from_static(b"[1,2,3]")).await.unwrap();
/// assert!(dir.path().join("outputs/run-1/extract/rows").exists());
/// assert_eq!(store.get(&key).await.unwrap(), Bytes::from_static(b"[1,2,3]"));
/// store.delete_run("run-1").await.unwrap();
/// assert!(!store.exists(&key).await.unwrap());
/// # });
/// ```
pub struct LocalDirOutputStore {
    root: PathBuf,
    outputs_dir: PathBuf,
}

impl LocalDirOutputStore {
    /// A store keeping outputs under `<root>/outputs`; directories are created on first write.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        LocalDirOutputStore {
            outputs_dir: root.join("outputs"),
            root,
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file an output is stored in; rejects keys unusable as paths.
    pub fn output_path(&self, key: &OutputKey) -> Result<PathBuf, ResultError> {
        let relative = key.relative_path()?;
        for part in [&key.run_id, &key.step_key, &key.output_name] {
            check_file_name(part, "")?;
        }
        Ok(self.outputs_dir.join(relative))
    }
}

#[async_trait]
impl OutputStore for LocalDirOutputStore {
    async fn put(&self, key: &OutputKey, value: Bytes) -> Result<(), ResultError> {
        write_atomic(self.output_path(key)?, value).await
    }

    async fn get(&self, key: &OutputKey) -> Result<Bytes, ResultError> {
        read_if_exists(&self.output_path(key)?)
            .await?
            .map(Bytes::from)
            .ok_or_else(|| ResultError::OutputNotFound {
                key: key.to_string(),
            })
    }

    async fn exists(&self, key: &OutputKey) -> Result<bool, ResultError> {
        file_exists(&self.output_path(key)?).await
    }

    async fn delete_run(&self, run_id: &str) -> Result<(), ResultError> {
        check_segment(run_id)?;
        let dir = self.outputs_dir.join(run_id);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(&dir, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn sample(n: u64) -> TaskResult {
        let mut r = TaskResult::ok(serde_json::json!({ "n": n }), 0.25);
        r.log = Some("x".repeat(64 * 1024));
        r
    }

    #[test]
    fn segments_are_checked() {
        for (bad, reason) in [
            ("", "empty"),
            (".", "is a relative path component"),
            ("..", "is a relative path component"),
            ("a/b", "contains a path separator"),
            ("a\\b", "contains a path separator"),
            ("a\nb", "contains a control character"),
        ] {
            match check_segment(bad) {
                Err(ResultError::InvalidKey { key, reason: r }) => {
                    assert_eq!(key, bad);
                    assert_eq!(r, reason);
                }
                other => panic!("{bad:?}: expected InvalidKey, got {other:?}"),
            }
        }
        for good in ["a", "task-1", "...", ".hidden", "ünïcode", "a.json"] {
            check_segment(good).unwrap();
        }
    }

    #[tokio::test]
    async fn results_are_json_files_in_the_results_dir() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalDirResultBackend::new(dir.path());
        assert_eq!(backend.root(), dir.path());
        // No startup: the first write creates the directory.
        backend.set_result("t1", &sample(1)).await.unwrap();
        let path = dir.path().join("results/t1.json");
        assert_eq!(backend.result_path("t1").unwrap(), path);
        let on_disk: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(on_disk["is_err"], serde_json::json!(false));
        assert_eq!(on_disk["return_value"], serde_json::json!({"n": 1}));
        assert_eq!(on_disk["execution_time"], serde_json::json!(0.25));
        // Only the result file is left behind: no temporary files.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("results"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["t1.json"]);
    }

    #[tokio::test]
    async fn startup_creates_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("deep/nested/.stepq");
        let backend = LocalDirResultBackend::new(&root);
        backend.startup().await.unwrap();
        assert!(root.join("results").is_dir());
        backend.startup().await.unwrap();
    }

    #[tokio::test]
    async fn startup_fails_on_an_unusable_root() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"not a dir").unwrap();
        let backend = LocalDirResultBackend::new(&file);
        match backend.startup().await {
            Err(e @ ResultError::Io { .. }) => {
                assert!(e.to_string().contains("a-file"), "{e}");
                assert!(!e.is_temporary());
            }
            other => panic!("expected Io, got {other:?}"),
        }
        assert!(matches!(
            backend.set_result("t", &sample(0)).await,
            Err(ResultError::Io { .. })
        ));
    }

    #[tokio::test]
    async fn corrupt_file_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalDirResultBackend::new(dir.path());
        backend.startup().await.unwrap();
        let path = dir.path().join("results/bad.json");
        std::fs::write(&path, b"{\"is_err\": tru").unwrap();
        let err = backend.get_result("bad", true).await.unwrap_err();
        match &err {
            ResultError::Corrupt { task_id, message } => {
                assert_eq!(task_id, "bad");
                assert!(message.contains(&path.display().to_string()), "{message}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert!(!err.is_temporary());
        // A waiter gets the same error rather than waiting forever.
        let waited = backend
            .wait_result("bad", Some(Duration::from_secs(10)))
            .await
            .unwrap_err();
        assert!(matches!(waited, ResultError::Corrupt { .. }), "{waited:?}");
        assert!(backend.is_result_ready("bad").await.unwrap());
    }

    #[tokio::test]
    async fn invalid_task_ids_are_rejected_everywhere() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalDirResultBackend::new(dir.path());
        let too_long = "x".repeat(MAX_FILE_NAME);
        for bad in ["../escape", "a/b", "..", "", too_long.as_str()] {
            let invalid = |r: Result<(), ResultError>| match r {
                Err(ResultError::InvalidKey { key, .. }) => assert_eq!(key, bad),
                other => panic!("{bad:?}: expected InvalidKey, got {other:?}"),
            };
            invalid(backend.set_result(bad, &sample(0)).await);
            invalid(backend.get_result(bad, true).await.map(drop));
            invalid(backend.is_result_ready(bad).await.map(drop));
            invalid(backend.wait_result(bad, None).await.map(drop));
            invalid(backend.delete_result(bad).await);
        }
        assert!(!dir.path().join("escape.json").exists());
        // The longest id that fits is fine.
        let longest = "y".repeat(MAX_FILE_NAME - ".json".len());
        backend.set_result(&longest, &sample(0)).await.unwrap();
        assert!(backend.is_result_ready(&longest).await.unwrap());
    }

    #[tokio::test]
    async fn waiters_leave_no_state_behind() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Arc::new(LocalDirResultBackend::new(dir.path()));
        // Answered by notification.
        let waiter = {
            let b = backend.clone();
            tokio::spawn(async move { b.wait_result("n", None).await })
        };
        while backend.waiter_slots() == 0 {
            tokio::task::yield_now().await;
        }
        backend.set_result("n", &sample(1)).await.unwrap();
        assert_eq!(waiter.await.unwrap().unwrap().return_value["n"], 1);
        assert_eq!(backend.waiter_slots(), 0);
        // Answered by the file (written before the wait).
        backend.wait_result("n", None).await.unwrap();
        assert_eq!(backend.waiter_slots(), 0);
        // Timed out.
        let err = backend
            .wait_result("never", Some(Duration::from_millis(20)))
            .await
            .unwrap_err();
        assert!(matches!(err, ResultError::Timeout { .. }));
        assert_eq!(backend.waiter_slots(), 0);
        // Writes with nobody waiting keep nothing in memory.
        for i in 0..20 {
            backend
                .set_result(&format!("t{i}"), &sample(i))
                .await
                .unwrap();
        }
        assert_eq!(backend.waiter_slots(), 0);
    }

    #[tokio::test]
    async fn readers_never_see_a_partial_result() {
        let dir = tempfile::tempdir().unwrap();
        let writer = Arc::new(LocalDirResultBackend::new(dir.path()));
        // A second instance on the same directory reads, as another process would.
        let reader = LocalDirResultBackend::new(dir.path());
        writer.set_result("hot", &sample(0)).await.unwrap();
        let writes = {
            let w = writer.clone();
            tokio::spawn(async move {
                for n in 1..=100 {
                    w.set_result("hot", &sample(n)).await.unwrap();
                }
            })
        };
        let mut reads = 0;
        while !writes.is_finished() || reads < 100 {
            let r = reader.get_result("hot", true).await.unwrap();
            assert_eq!(r.log.as_ref().map(String::len), Some(64 * 1024));
            reads += 1;
        }
        writes.await.unwrap();
        assert_eq!(
            reader.get_result("hot", false).await.unwrap().return_value["n"],
            100
        );
        let leftovers = std::fs::read_dir(dir.path().join("results"))
            .unwrap()
            .count();
        assert_eq!(leftovers, 1, "temporary files were left behind");
    }

    #[tokio::test]
    async fn outputs_live_under_run_step_output() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirOutputStore::new(dir.path());
        assert_eq!(store.root(), dir.path());
        let key = OutputKey::new("r", "s", "o");
        store.put(&key, Bytes::from_static(b"v")).await.unwrap();
        let path = dir.path().join("outputs/r/s/o");
        assert_eq!(store.output_path(&key).unwrap(), path);
        assert_eq!(std::fs::read(&path).unwrap(), b"v");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["o"], "temporary files were left behind");
        let too_long = OutputKey::new("r", "s", "o".repeat(MAX_FILE_NAME + 1));
        assert!(matches!(
            store.put(&too_long, Bytes::new()).await,
            Err(ResultError::InvalidKey { .. })
        ));
    }

    #[tokio::test]
    async fn unreadable_output_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirOutputStore::new(dir.path());
        // A directory where the output file should be.
        std::fs::create_dir_all(dir.path().join("outputs/r/s/o")).unwrap();
        let err = store.get(&OutputKey::new("r", "s", "o")).await.unwrap_err();
        assert!(matches!(err, ResultError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("outputs/r/s/o"), "{err}");
    }
}
