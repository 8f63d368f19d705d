//! Every `CancelStore` behaves the same: in memory, in a local directory, and on S3
//! (LocalStack).

mod common;

use stepq_cancel::{
    CancelError, CancelMarker, CancelStore, InMemoryCancelStore, LocalDirCancelStore,
};

/// The contract: put / get / list / delete, overwrite, bad ids refused. Leaves one marker,
/// `task-b`, stored.
async fn exercise(store: &dyn CancelStore) {
    store.startup().await.unwrap();
    assert!(store.list().await.unwrap().is_empty(), "starts empty");
    assert_eq!(store.get("missing").await.unwrap(), None);
    store.delete("missing").await.unwrap();

    let a = CancelMarker::new("task-a", Some("user".into())).unwrap();
    let b = CancelMarker::new("task-b", None).unwrap();
    store.put(&a).await.unwrap();
    store.put(&b).await.unwrap();
    assert_eq!(store.get("task-a").await.unwrap(), Some(a.clone()));
    let mut listed = store.list().await.unwrap();
    listed.sort_by(|x, y| x.task_id.cmp(&y.task_id));
    assert_eq!(listed, vec![a.clone(), b.clone()]);

    let again = CancelMarker {
        reason: Some("twice".into()),
        ..a.clone()
    };
    store.put(&again).await.unwrap();
    assert_eq!(store.get("task-a").await.unwrap(), Some(again));

    store.delete("task-a").await.unwrap();
    assert_eq!(store.get("task-a").await.unwrap(), None);
    assert_eq!(store.list().await.unwrap(), vec![b.clone()]);

    for bad in ["", "a/b", ".."] {
        assert!(
            matches!(store.get(bad).await, Err(CancelError::InvalidTaskId { .. })),
            "get {bad:?}"
        );
        assert!(store.delete(bad).await.is_err(), "delete {bad:?}");
        let marker = CancelMarker {
            task_id: bad.into(),
            requested_at_ms: 1,
            reason: None,
        };
        assert!(store.put(&marker).await.is_err(), "put {bad:?}");
    }
}

/// After `broken` was stored as garbage: `get` names it, `list` skips it (keeping `task-b`).
async fn check_corrupt_marker(store: &dyn CancelStore) {
    let listed = store.list().await.unwrap();
    assert_eq!(
        listed.len(),
        1,
        "the unreadable marker is skipped: {listed:?}"
    );
    assert_eq!(listed[0].task_id, "task-b");
    match store.get("broken").await {
        Err(e @ CancelError::Malformed { .. }) => {
            assert!(e.to_string().contains("broken"), "{e}")
        }
        other => panic!("expected a malformed marker error, got {other:?}"),
    }
    store.delete("broken").await.unwrap();
    store.delete("task-b").await.unwrap();
    assert!(store.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn in_memory_store() {
    let store = InMemoryCancelStore::new();
    assert!(store.lookups_are_free());
    assert_eq!(store.kind(), "memory");
    exercise(&store).await;
    // Clones share the markers.
    assert_eq!(store.clone().list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn local_directory_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalDirCancelStore::new(dir.path());
    assert!(store.lookups_are_free());
    assert_eq!(store.kind(), "local");
    exercise(&store).await;
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

#[cfg(feature = "s3")]
#[tokio::test]
#[ignore = "localstack"]
async fn s3_store() {
    let env = common::aws::LocalStackEnv::from_env();
    let sdk = env.sdk_config().await;
    let base = format!("cancel-store-test-{}", uuid::Uuid::new_v4().simple());
    let store = stepq_cancel::S3CancelStore::new(&sdk, &env.bucket, &base);
    assert_eq!(store.kind(), "s3");
    assert!(!store.lookups_are_free());
    exercise(&store).await;
    stepq_results::s3::s3_client(&sdk)
        .put_object()
        .bucket(&env.bucket)
        .key(store.marker_key("broken").unwrap())
        .body(b"{ not a marker".to_vec().into())
        .send()
        .await
        .unwrap();
    check_corrupt_marker(&store).await;

    let missing = stepq_cancel::S3CancelStore::new(&sdk, "stepq-no-such-bucket-for-cancels", "");
    let err = missing.startup().await.unwrap_err();
    assert!(err.to_string().contains("HeadBucket"), "{err}");
    assert!(!err.is_temporary(), "{err}");
    match &err {
        stepq_cancel::CancelError::Store(stepq_results::ResultError::Service {
            code,
            message,
            ..
        }) => {
            assert_eq!(code, "NoSuchBucket");
            assert!(
                message.contains("stepq-no-such-bucket-for-cancels"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Reading a marker from a missing bucket is an error, not "no marker".
    assert!(missing.get("t").await.is_err());
}
