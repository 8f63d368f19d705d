//! Every `CancelStore` behaves the same: the conformance suite (one test per check) in memory
//! and in a local directory (S3 is in `stepq-aws`), and what is particular to each.

use std::path::PathBuf;
use std::sync::Mutex;

use stepq_cancel::conformance::{check_corrupt_marker, CancelStoreFactory};
use stepq_cancel::{CancelMarker, CancelStore, InMemoryCancelStore, LocalDirCancelStore};
use tempfile::TempDir;

struct Memory;

impl CancelStoreFactory for Memory {
    type Store = InMemoryCancelStore;
    async fn fresh(&self) -> InMemoryCancelStore {
        InMemoryCancelStore::new()
    }
    /// Clones share the markers.
    async fn reopen(&self, store: &InMemoryCancelStore) -> InMemoryCancelStore {
        store.clone()
    }
}

/// Each fresh store gets its own temporary directory, kept until the factory is dropped;
/// `reopen` opens a new store on the same directory (as another process would).
#[derive(Default)]
struct LocalDir {
    dirs: Mutex<Vec<TempDir>>,
}

impl LocalDir {
    fn new_root(&self) -> PathBuf {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().to_path_buf();
        self.dirs.lock().unwrap().push(dir);
        root
    }
}

impl CancelStoreFactory for LocalDir {
    type Store = LocalDirCancelStore;
    async fn fresh(&self) -> LocalDirCancelStore {
        LocalDirCancelStore::new(self.new_root())
    }
    async fn reopen(&self, store: &LocalDirCancelStore) -> LocalDirCancelStore {
        LocalDirCancelStore::new(store.dir().parent().expect("the store's root"))
    }
    async fn corrupt(&self, store: &LocalDirCancelStore, task_id: &str) {
        std::fs::write(store.marker_path(task_id).unwrap(), b"{ not a marker").unwrap();
    }
}

// The in-memory store keeps markers decoded, so it cannot hold an unreadable one.
stepq_cancel::cancel_store_conformance_tests!(in_memory, Memory, except[check_corrupt_marker]);
stepq_cancel::cancel_store_conformance_tests!(local_dir, LocalDir::default());

#[tokio::test]
async fn in_memory_store_lookups_are_free() {
    let store = InMemoryCancelStore::new();
    assert!(store.lookups_are_free());
    assert_eq!(store.kind(), "memory");
}

#[tokio::test]
async fn local_directory_store_keeps_one_file_per_marker() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalDirCancelStore::new(dir.path());
    assert!(store.lookups_are_free());
    assert_eq!(store.kind(), "local");
    store.startup().await.unwrap();
    store
        .put(&CancelMarker::new("task-b", None).unwrap())
        .await
        .unwrap();
    assert!(dir.path().join("cancels/task-b.json").exists());
}

/// A local directory whose unreadable marker lies beside the temporary file of an interrupted
/// write and a foreign file.
#[derive(Default)]
struct LitteredLocalDir(LocalDir);

impl CancelStoreFactory for LitteredLocalDir {
    type Store = LocalDirCancelStore;
    async fn fresh(&self) -> LocalDirCancelStore {
        self.0.fresh().await
    }
    async fn reopen(&self, store: &LocalDirCancelStore) -> LocalDirCancelStore {
        self.0.reopen(store).await
    }
    async fn corrupt(&self, store: &LocalDirCancelStore, task_id: &str) {
        self.0.corrupt(store, task_id).await;
        std::fs::write(store.dir().join(".abc.tmp"), b"partial").unwrap();
        std::fs::write(store.dir().join("README"), b"notes").unwrap();
    }
}

/// Temporary files of interrupted writes and foreign files are never listed.
#[tokio::test]
async fn local_directory_store_lists_only_marker_files() {
    check_corrupt_marker(&LitteredLocalDir::default()).await;
}

#[tokio::test]
async fn local_directory_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    // `cancels` is a file, so the directory can be neither created nor read.
    std::fs::write(dir.path().join("cancels"), b"").unwrap();
    let store = LocalDirCancelStore::new(dir.path());
    let err = store.startup().await.unwrap_err();
    assert!(err.to_string().contains("cancels"), "{err}");
    let err = store
        .put(&CancelMarker::new("t", None).unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cancels"), "{err}");
    assert!(!err.is_temporary());
    assert!(store.list().await.is_err());
    assert!(store.get("t").await.is_err());
}
