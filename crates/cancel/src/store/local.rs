//! Cancel markers as files under a local directory (the embedded default's `.stepq/`).

use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use stepq_results::ResultError;

use super::{CancelStore, CANCELS_DIR};
use crate::error::CancelError;
use crate::marker::{check_task_id, CancelMarker};

/// Cancel markers as JSON files `<root>/cancels/<task_id>.json`, written atomically (a
/// temporary file renamed over the final name), so processes sharing the directory (a
/// `stepq cancel` in another terminal, workers) see whole markers only.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use stepq_cancel::{CancelMarker, CancelStore, LocalDirCancelStore};
///
/// let dir = tempfile::tempdir().unwrap();
/// let store = LocalDirCancelStore::new(dir.path());
/// store.put(&CancelMarker::new("task-1", None).unwrap()).await.unwrap();
/// assert!(dir.path().join("cancels/task-1.json").exists());
/// assert_eq!(store.list().await.unwrap().len(), 1);
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct LocalDirCancelStore {
    dir: PathBuf,
}

fn io_error(path: &Path, source: std::io::Error) -> CancelError {
    CancelError::Store(ResultError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn blocking_failed(e: tokio::task::JoinError) -> CancelError {
    io_error(Path::new("<blocking task>"), std::io::Error::other(e))
}

impl LocalDirCancelStore {
    /// A store keeping markers under `<root>/cancels`. Nothing is touched until
    /// [`CancelStore::startup`] or the first write.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalDirCancelStore {
            dir: root.into().join(CANCELS_DIR),
        }
    }

    /// The directory holding the markers.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of a task's marker; rejects ids unusable as a file name.
    pub fn marker_path(&self, task_id: &str) -> Result<PathBuf, CancelError> {
        check_task_id(task_id)?;
        Ok(self.dir.join(format!("{task_id}.json")))
    }
}

fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), CancelError> {
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    // Temporary names start with a dot and end in `.tmp`: never a marker name.
    let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
    let written = std::fs::File::create_new(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_data()
        })
        .map_err(|e| io_error(&tmp, e))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| io_error(path, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn read_marker(path: &Path) -> Result<Option<CancelMarker>, CancelError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            CancelMarker::from_json(&bytes)
                .map(Some)
                .map_err(|e| CancelError::Malformed {
                    reason: format!("file `{}`: {e}", path.display()),
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path, e)),
    }
}

fn list_markers(dir: &Path) -> Result<Vec<CancelMarker>, CancelError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(dir, e)),
    };
    let mut markers = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        match read_marker(&entry.path()) {
            Ok(Some(marker)) => markers.push(marker),
            // Deleted between the listing and the read.
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "skipping an unreadable cancel marker"),
        }
    }
    Ok(markers)
}

#[async_trait]
impl CancelStore for LocalDirCancelStore {
    async fn startup(&self) -> Result<(), CancelError> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| io_error(&self.dir, e))
    }

    async fn put(&self, marker: &CancelMarker) -> Result<(), CancelError> {
        let path = self.marker_path(&marker.task_id)?;
        let dir = self.dir.clone();
        let bytes = marker.to_json();
        tokio::task::spawn_blocking(move || write_atomic(&dir, &path, &bytes))
            .await
            .map_err(blocking_failed)?
    }

    async fn get(&self, task_id: &str) -> Result<Option<CancelMarker>, CancelError> {
        let path = self.marker_path(task_id)?;
        tokio::task::spawn_blocking(move || read_marker(&path))
            .await
            .map_err(blocking_failed)?
    }

    async fn list(&self) -> Result<Vec<CancelMarker>, CancelError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || list_markers(&dir))
            .await
            .map_err(blocking_failed)?
    }

    async fn delete(&self, task_id: &str) -> Result<(), CancelError> {
        let path = self.marker_path(task_id)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(&path, e)),
        }
    }

    fn kind(&self) -> &'static str {
        "local"
    }

    fn lookups_are_free(&self) -> bool {
        true
    }
}
