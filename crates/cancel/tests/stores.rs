//! Every `CancelStore` behaves the same: in memory, in a local directory, and on S3
//! (LocalStack).

use stepq_cancel::conformance::{check_corrupt_marker, exercise_cancel_store};
use stepq_cancel::{CancelMarker, CancelStore, InMemoryCancelStore, LocalDirCancelStore};

#[tokio::test]
async fn in_memory_store() {
    let store = InMemoryCancelStore::new();
    assert!(store.lookups_are_free());
    assert_eq!(store.kind(), "memory");
    exercise_cancel_store(&store).await;
    // Clones share the markers.
    assert_eq!(store.clone().list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn local_directory_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalDirCancelStore::new(dir.path());
    assert!(store.lookups_are_free());
    assert_eq!(store.kind(), "local");
    exercise_cancel_store(&store).await;
    assert!(dir.path().join("cancels/task-b.json").exists());
    std::fs::write(store.dir().join("broken.json"), b"{ not a marker").unwrap();
    // Temporary files of interrupted writes and foreign files are never listed.
    std::fs::write(store.dir().join(".abc.tmp"), b"partial").unwrap();
    std::fs::write(store.dir().join("README"), b"notes").unwrap();
    check_corrupt_marker(&store).await;
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
