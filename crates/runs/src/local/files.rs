//! File helpers shared by the local run and heartbeat stores: blocking I/O off the async
//! threads, whole files written to a temporary name then published, and the highest sequence
//! number among a directory's file names.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use crate::error::StorageError;
use crate::store::parse_seq;

/// Runs blocking file I/O off the async threads; a panic in it is resumed here.
pub(super) async fn run_blocking<T: Send + 'static>(
    root: &Path,
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(StorageError::io(root, std::io::Error::other(e))),
    }
}

/// The highest `<seq><suffix>` name in `dir`, `None` if there is none or no directory.
pub(super) fn max_seq(dir: &Path, suffix: &str) -> Result<Option<u64>, StorageError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io(dir, e)),
    };
    let mut max = None;
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io(dir, e))?;
        let name = entry.file_name();
        let seq = name
            .to_str()
            .and_then(|n| n.strip_suffix(suffix))
            .and_then(parse_seq);
        max = max.max(seq);
    }
    Ok(max)
}

/// A fully written file in a temporary directory, removed on drop.
pub(super) struct TempFile {
    pub(super) path: PathBuf,
}

impl TempFile {
    pub(super) fn write(dir: &Path, bytes: &[u8]) -> Result<TempFile, StorageError> {
        fs::create_dir_all(dir).map_err(|e| StorageError::io(dir, e))?;
        let path = dir.join(format!("{}.tmp", uuid::Uuid::new_v4()));
        let temp = TempFile { path };
        let mut file =
            fs::File::create_new(&temp.path).map_err(|e| StorageError::io(&temp.path, e))?;
        file.write_all(bytes)
            .map_err(|e| StorageError::io(&temp.path, e))?;
        Ok(temp)
    }

    /// Links the file under `dest` unless that name is taken; `false` if it was.
    pub(super) fn publish(&self, dest: &Path) -> Result<bool, StorageError> {
        match fs::hard_link(&self.path, dest) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(StorageError::io(dest, e)),
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}
