//! The [`HeartbeatStore`] suite: heartbeats replace, list and remove, live and lost workers
//! are told apart, bad worker ids are refused, and heartbeats survive a new store instance.

use std::future::Future;
use std::time::Duration;

use crate::{HeartbeatStore, RunningTask, StorageError, WorkerHealth, WorkerHeartbeat};

/// Makes heartbeat stores for the suite.
pub trait HeartbeatStoreFactory: Send + Sync {
    /// The store under test.
    type Store: HeartbeatStore;

    /// A handle on a new, empty storage space.
    fn fresh(&self) -> impl Future<Output = Self::Store> + Send;

    /// Another, independent handle on the same space as `store`.
    fn reopen(&self, store: &Self::Store) -> impl Future<Output = Self::Store> + Send;
}

/// Runs every [`HeartbeatStore`] case, one after another.
pub async fn run_heartbeat_store_suite<F: HeartbeatStoreFactory>(factory: &F) {
    crate::__heartbeat_store_checks!(__run_checks factory);
}

fn heartbeat(worker_id: &str, last_seen: u64) -> WorkerHeartbeat {
    WorkerHeartbeat {
        worker_id: worker_id.to_string(),
        host: "host-1".into(),
        pid: 4242,
        started_at: 1_000,
        last_seen,
        tasks_running: 1,
        tasks_done: 7,
        running_tasks: vec![RunningTask {
            task_id: "task-1".into(),
            task_name: "execute_plan".into(),
            run_id: Some("run-1".into()),
            step_key: Some("step-a".into()),
            step_keys: vec!["step-a".into(), "step \"b\"".into()],
            since: 900,
        }],
        queues: vec!["default".into(), "gpu".into()],
    }
}

fn sorted(mut heartbeats: Vec<WorkerHeartbeat>) -> Vec<WorkerHeartbeat> {
    heartbeats.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
    heartbeats
}

/// Heartbeats round-trip, a newer one replaces the older, and removal forgets the worker.
pub async fn check_heartbeats_put_replace_list_remove<F: HeartbeatStoreFactory>(factory: &F) {
    let store = factory.fresh().await;
    assert!(store.list_heartbeats().await.expect("list").is_empty());
    store
        .put_heartbeat(&heartbeat("w1", 10))
        .await
        .expect("put");
    store
        .put_heartbeat(&heartbeat("w2", 20))
        .await
        .expect("put");
    let newer = WorkerHeartbeat {
        tasks_done: 8,
        ..heartbeat("w1", 30)
    };
    store.put_heartbeat(&newer).await.expect("put");
    assert_eq!(
        sorted(store.list_heartbeats().await.expect("list")),
        vec![newer.clone(), heartbeat("w2", 20)]
    );
    store.remove_heartbeat("w2").await.expect("remove");
    store
        .remove_heartbeat("never-seen")
        .await
        .expect("remove unknown");
    assert_eq!(store.list_heartbeats().await.expect("list"), vec![newer]);
}

/// `list_workers` calls a worker lost once its heartbeat is over three intervals old.
pub async fn check_heartbeats_classify_live_and_lost<F: HeartbeatStoreFactory>(factory: &F) {
    let store = factory.fresh().await;
    let interval = Duration::from_secs(2);
    let now = 100_000_000;
    store
        .put_heartbeat(&heartbeat("fresh", now - 1_000_000))
        .await
        .expect("put");
    store
        .put_heartbeat(&heartbeat("edge", now - 6_000_000))
        .await
        .expect("put");
    store
        .put_heartbeat(&heartbeat("gone", now - 6_000_001))
        .await
        .expect("put");
    let states = store
        .list_workers(now, interval)
        .await
        .expect("list_workers");
    let got: Vec<_> = states
        .iter()
        .map(|s| (s.heartbeat.worker_id.as_str(), s.health))
        .collect();
    assert_eq!(
        got,
        vec![
            ("edge", WorkerHealth::Live),
            ("fresh", WorkerHealth::Live),
            ("gone", WorkerHealth::Lost)
        ]
    );
}

/// Unusable worker ids are rejected and nothing is written.
pub async fn check_heartbeats_reject_invalid_ids<F: HeartbeatStoreFactory>(factory: &F) {
    let store = factory.fresh().await;
    for bad in ["", "a/b", ".."] {
        match store.put_heartbeat(&heartbeat(bad, 1)).await {
            Err(StorageError::InvalidId { id, .. }) => assert_eq!(id, bad),
            other => panic!("put_heartbeat({bad:?}): {other:?}"),
        }
        match store.remove_heartbeat(bad).await {
            Err(StorageError::InvalidId { .. }) => {}
            other => panic!("remove_heartbeat({bad:?}): {other:?}"),
        }
    }
    assert!(store.list_heartbeats().await.expect("list").is_empty());
}

/// Heartbeats written through one handle are listed through another.
pub async fn check_heartbeats_survive_a_new_store_instance<F: HeartbeatStoreFactory>(factory: &F) {
    let store = factory.fresh().await;
    store
        .put_heartbeat(&heartbeat("w1", 10))
        .await
        .expect("put");
    let reopened = factory.reopen(&store).await;
    drop(store);
    assert_eq!(
        reopened.list_heartbeats().await.expect("list"),
        vec![heartbeat("w1", 10)]
    );
}
