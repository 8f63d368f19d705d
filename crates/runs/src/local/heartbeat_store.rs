//! The local heartbeat store ([`LocalDirHeartbeatStore`]): one file per worker under
//! `<root>/workers/`, each replaced atomically.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use super::files::{run_blocking, TempFile};
use crate::error::{check_id, StorageError};
use crate::heartbeat::{HeartbeatStore, WorkerHeartbeat};

/// Worker heartbeats in `<root>/workers/<worker_id>.json`, each replaced atomically (written
/// to a temporary file, then renamed over the old one).
#[derive(Clone)]
pub struct LocalDirHeartbeatStore {
    root: Arc<PathBuf>,
}

impl LocalDirHeartbeatStore {
    /// A store rooted at `root` (e.g. `.stepq`); directories are created on first write.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalDirHeartbeatStore {
            root: Arc::new(root.into()),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn workers_dir(&self) -> PathBuf {
        self.root.join("workers")
    }
}

#[async_trait]
impl HeartbeatStore for LocalDirHeartbeatStore {
    async fn put_heartbeat(&self, heartbeat: &WorkerHeartbeat) -> Result<(), StorageError> {
        check_id(&heartbeat.worker_id)?;
        let bytes = serde_json::to_vec_pretty(heartbeat).map_err(|e| StorageError::Encode {
            what: "worker heartbeat",
            message: e.to_string(),
        })?;
        let dir = self.workers_dir();
        let dest = dir.join(format!("{}.json", heartbeat.worker_id));
        run_blocking(&self.root, move || {
            // Temporary names start with a dot, which no worker id does.
            let tmp = TempFile::write(&dir.join(".tmp"), &bytes)?;
            fs::rename(&tmp.path, &dest).map_err(|e| StorageError::io(&dest, e))
        })
        .await
    }

    async fn list_heartbeats(&self) -> Result<Vec<WorkerHeartbeat>, StorageError> {
        let dir = self.workers_dir();
        run_blocking(&self.root, move || {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(StorageError::io(dir, e)),
            };
            let mut heartbeats = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|e| StorageError::io(&dir, e))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if name.starts_with('.') || !name.ends_with(".json") {
                    continue;
                }
                let path = entry.path();
                let bytes = match fs::read(&path) {
                    Ok(bytes) => bytes,
                    // Removed since the listing: the worker stopped.
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(StorageError::io(path, e)),
                };
                heartbeats.push(serde_json::from_slice(&bytes).map_err(|e| {
                    StorageError::Corrupt {
                        location: path.display().to_string(),
                        message: e.to_string(),
                    }
                })?);
            }
            Ok(heartbeats)
        })
        .await
    }

    async fn remove_heartbeat(&self, worker_id: &str) -> Result<(), StorageError> {
        check_id(worker_id)?;
        let path = self.workers_dir().join(format!("{worker_id}.json"));
        run_blocking(&self.root, move || match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io(path, e)),
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn heartbeat_listing_skips_temp_files_and_reports_corrupt_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirHeartbeatStore::new(dir.path());
        store
            .put_heartbeat(&WorkerHeartbeat::new("w1", "h", 1))
            .await
            .unwrap();
        fs::create_dir_all(dir.path().join("workers/.tmp")).unwrap();
        fs::write(dir.path().join("workers/.tmp/x.tmp"), b"partial").unwrap();
        assert_eq!(store.list_heartbeats().await.unwrap().len(), 1);
        fs::write(dir.path().join("workers/w2.json"), b"nope").unwrap();
        match store.list_heartbeats().await {
            Err(StorageError::Corrupt { location, .. }) => {
                assert!(location.ends_with("w2.json"), "{location}")
            }
            other => panic!("{other:?}"),
        }
    }
}
