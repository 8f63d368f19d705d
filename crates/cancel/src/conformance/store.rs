//! The [`CancelStore`] suite: a fresh store is empty, markers are stored, read back, listed,
//! overwritten and deleted, unusable task ids are refused, another handle on the same space
//! sees the same markers, and an unreadable marker is named by `get` and skipped by `list`.

use std::future::Future;

use crate::{CancelError, CancelMarker, CancelStore};

/// Makes cancel stores for the suite.
pub trait CancelStoreFactory: Send + Sync {
    /// The store under test.
    type Store: CancelStore;

    /// A handle on a new, empty storage space (a fresh directory, bucket prefix, ...).
    fn fresh(&self) -> impl Future<Output = Self::Store> + Send;

    /// Another, independent handle on the same space as `store`: what another process opening
    /// the same directory or bucket prefix would get.
    fn reopen(&self, store: &Self::Store) -> impl Future<Output = Self::Store> + Send;

    /// Stores bytes that are not a marker as the marker of `task_id` in `store` (as a broken
    /// writer or a hand edit would). Only [`check_corrupt_marker`] calls it. The default
    /// panics: a store that cannot hold an unreadable marker (in memory, where markers are
    /// kept decoded) keeps it and skips that check.
    fn corrupt(&self, store: &Self::Store, task_id: &str) -> impl Future<Output = ()> + Send {
        let kind = store.kind();
        let task_id = task_id.to_string();
        async move {
            panic!(
                "{kind}: this factory cannot store an unreadable marker for {task_id}; \
                 skip check_corrupt_marker (`except [check_corrupt_marker]`)"
            )
        }
    }
}

/// A fresh store, started.
async fn started<F: CancelStoreFactory>(factory: &F) -> F::Store {
    let store = factory.fresh().await;
    store
        .startup()
        .await
        .unwrap_or_else(|e| panic!("{}: startup failed: {e}", store.kind()));
    store
}

async fn put<S: CancelStore>(store: &S, marker: &CancelMarker) {
    store
        .put(marker)
        .await
        .unwrap_or_else(|e| panic!("{}: put({}) failed: {e}", store.kind(), marker.task_id));
}

async fn get<S: CancelStore>(store: &S, task_id: &str) -> Option<CancelMarker> {
    store
        .get(task_id)
        .await
        .unwrap_or_else(|e| panic!("{}: get({task_id}) failed: {e}", store.kind()))
}

async fn delete<S: CancelStore>(store: &S, task_id: &str) {
    store
        .delete(task_id)
        .await
        .unwrap_or_else(|e| panic!("{}: delete({task_id}) failed: {e}", store.kind()));
}

/// Every stored marker, sorted by task id.
async fn list<S: CancelStore>(store: &S) -> Vec<CancelMarker> {
    let mut listed = store
        .list()
        .await
        .unwrap_or_else(|e| panic!("{}: list failed: {e}", store.kind()));
    listed.sort_by(|x, y| x.task_id.cmp(&y.task_id));
    listed
}

fn marker(task_id: &str, reason: Option<&str>) -> CancelMarker {
    CancelMarker::new(task_id, reason.map(str::to_string)).expect("a valid task id")
}

/// A fresh store lists nothing, has no marker for an unknown task, and deleting one is not an
/// error.
pub async fn check_starts_empty<F: CancelStoreFactory>(factory: &F) {
    let store = started(factory).await;
    assert!(
        list(&store).await.is_empty(),
        "{}: starts empty",
        store.kind()
    );
    assert_eq!(get(&store, "missing").await, None, "{}", store.kind());
    delete(&store, "missing").await;
}

/// Stored markers are read back unchanged and all listed.
pub async fn check_put_get_list<F: CancelStoreFactory>(factory: &F) {
    let store = started(factory).await;
    let a = marker("task-a", Some("user"));
    let b = marker("task-b", None);
    put(&store, &a).await;
    put(&store, &b).await;
    assert_eq!(
        get(&store, "task-a").await,
        Some(a.clone()),
        "{}",
        store.kind()
    );
    assert_eq!(list(&store).await, vec![a, b], "{}: list", store.kind());
}

/// A second `put` for the same task overwrites the first.
pub async fn check_put_overwrites<F: CancelStoreFactory>(factory: &F) {
    let store = started(factory).await;
    let a = marker("task-a", Some("user"));
    put(&store, &a).await;
    let again = CancelMarker {
        reason: Some("twice".into()),
        ..a
    };
    put(&store, &again).await;
    assert_eq!(
        get(&store, "task-a").await,
        Some(again.clone()),
        "{}: the second put did not overwrite the first",
        store.kind()
    );
    assert_eq!(list(&store).await, vec![again], "{}: list", store.kind());
}

/// `delete` removes that task's marker and no other.
pub async fn check_delete<F: CancelStoreFactory>(factory: &F) {
    let store = started(factory).await;
    let a = marker("task-a", Some("user"));
    let b = marker("task-b", None);
    put(&store, &a).await;
    put(&store, &b).await;
    delete(&store, "task-a").await;
    assert_eq!(get(&store, "task-a").await, None, "{}", store.kind());
    assert_eq!(list(&store).await, vec![b], "{}: list", store.kind());
}

/// Task ids unusable as a file name or key (empty, containing `/`, `..`) are refused by
/// `get` ([`CancelError::InvalidTaskId`]), `delete` and `put`.
pub async fn check_invalid_task_ids<F: CancelStoreFactory>(factory: &F) {
    let store = started(factory).await;
    let kind = store.kind();
    for bad in ["", "a/b", ".."] {
        assert!(
            matches!(store.get(bad).await, Err(CancelError::InvalidTaskId { .. })),
            "{kind}: get {bad:?}"
        );
        assert!(store.delete(bad).await.is_err(), "{kind}: delete {bad:?}");
        let marker = CancelMarker {
            task_id: bad.into(),
            requested_at_ms: 1,
            reason: None,
        };
        assert!(store.put(&marker).await.is_err(), "{kind}: put {bad:?}");
    }
    assert!(list(&store).await.is_empty(), "{kind}: nothing was stored");
}

/// A marker stored through one handle is read, listed and deleted through another on the
/// same space (as by another process).
pub async fn check_markers_survive_a_new_store_instance<F: CancelStoreFactory>(factory: &F) {
    let store = started(factory).await;
    let a = marker("task-a", Some("user"));
    put(&store, &a).await;
    let reopened = factory.reopen(&store).await;
    let kind = reopened.kind();
    assert_eq!(get(&reopened, "task-a").await, Some(a.clone()), "{kind}");
    assert_eq!(list(&reopened).await, vec![a], "{kind}: list");
    delete(&reopened, "task-a").await;
    assert_eq!(
        get(&store, "task-a").await,
        None,
        "{kind}: a delete through another handle is seen"
    );
}

/// An unreadable marker (stored by [`CancelStoreFactory::corrupt`]): `get` is
/// [`CancelError::Malformed`] naming it, `list` skips it and keeps the others, `delete`
/// removes it.
pub async fn check_corrupt_marker<F: CancelStoreFactory>(factory: &F) {
    let store = started(factory).await;
    let kind = store.kind();
    put(&store, &marker("task-b", None)).await;
    factory.corrupt(&store, "broken").await;
    let listed = list(&store).await;
    assert_eq!(
        listed.len(),
        1,
        "{kind}: the unreadable marker is skipped: {listed:?}"
    );
    assert_eq!(listed[0].task_id, "task-b", "{kind}");
    match store.get("broken").await {
        Err(e @ CancelError::Malformed { .. }) => {
            assert!(e.to_string().contains("broken"), "{kind}: {e}")
        }
        other => panic!("{kind}: expected a malformed marker error, got {other:?}"),
    }
    delete(&store, "broken").await;
    delete(&store, "task-b").await;
    assert!(list(&store).await.is_empty(), "{kind}: all deleted");
}

/// Runs every [`CancelStore`] check, one after another.
pub async fn run_cancel_store_suite<F: CancelStoreFactory>(factory: &F) {
    crate::__cancel_store_checks!(__run_checks factory);
}
