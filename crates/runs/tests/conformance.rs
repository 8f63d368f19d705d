//! The run store and heartbeat store conformance suites (one test per check), against the
//! in-memory and local-directory implementations.

use std::path::PathBuf;
use std::sync::Mutex;

use stepq_runs::conformance::{self, HeartbeatStoreFactory, LeaseStoreFactory, RunStoreFactory};
use stepq_runs::{
    InMemoryHeartbeatStore, InMemoryLeaseStore, InMemoryRunStore, LocalDirHeartbeatStore,
    LocalDirRunStore,
};
use tempfile::TempDir;

struct Memory;

impl RunStoreFactory for Memory {
    type Store = InMemoryRunStore;
    async fn fresh(&self) -> InMemoryRunStore {
        InMemoryRunStore::new()
    }
    async fn reopen(&self, store: &InMemoryRunStore) -> InMemoryRunStore {
        store.clone()
    }
}

impl HeartbeatStoreFactory for Memory {
    type Store = InMemoryHeartbeatStore;
    async fn fresh(&self) -> InMemoryHeartbeatStore {
        InMemoryHeartbeatStore::new()
    }
    async fn reopen(&self, store: &InMemoryHeartbeatStore) -> InMemoryHeartbeatStore {
        store.clone()
    }
}

impl LeaseStoreFactory for Memory {
    type Store = InMemoryLeaseStore;
    async fn fresh(&self) -> InMemoryLeaseStore {
        InMemoryLeaseStore::new()
    }
    async fn reopen(&self, store: &InMemoryLeaseStore) -> InMemoryLeaseStore {
        store.clone()
    }
}

/// Each fresh store gets its own temporary directory, kept until the factory is dropped;
/// `reopen` opens a new, independent store on the same directory (as another process would).
#[derive(Default)]
struct LocalDir {
    dirs: Mutex<Vec<TempDir>>,
}

impl LocalDir {
    fn new_root(&self) -> PathBuf {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join(".stepq");
        self.dirs.lock().unwrap().push(dir);
        root
    }
}

impl RunStoreFactory for LocalDir {
    type Store = LocalDirRunStore;
    async fn fresh(&self) -> LocalDirRunStore {
        LocalDirRunStore::new(self.new_root())
    }
    async fn reopen(&self, store: &LocalDirRunStore) -> LocalDirRunStore {
        LocalDirRunStore::new(store.root())
    }
}

impl HeartbeatStoreFactory for LocalDir {
    type Store = LocalDirHeartbeatStore;
    async fn fresh(&self) -> LocalDirHeartbeatStore {
        LocalDirHeartbeatStore::new(self.new_root())
    }
    async fn reopen(&self, store: &LocalDirHeartbeatStore) -> LocalDirHeartbeatStore {
        LocalDirHeartbeatStore::new(store.root())
    }
}

stepq_runs::run_store_conformance_tests!(in_memory, Memory);
stepq_runs::heartbeat_store_conformance_tests!(in_memory_heartbeats, Memory);
stepq_runs::lease_store_conformance_tests!(in_memory_leases, Memory);
stepq_runs::run_store_conformance_tests!(local_dir, LocalDir::default());
stepq_runs::heartbeat_store_conformance_tests!(local_dir_heartbeats, LocalDir::default());

/// The aggregate entry points run every case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_suites_pass_on_local_dir() {
    let factory = LocalDir::default();
    conformance::run_run_store_suite(&factory).await;
    conformance::run_heartbeat_store_suite(&factory).await;
}

/// Set in the child processes of [`two_processes_share_one_local_store`]: the root to write to.
const CHILD_ROOT_ENV: &str = "STEPQ_STORAGE_TEST_CHILD_ROOT";
/// Set in the child processes: the writer's name, also the status it races for.
const CHILD_NAME_ENV: &str = "STEPQ_STORAGE_TEST_CHILD_NAME";
const CHILD_BATCHES: usize = 200;

/// Two processes (this test binary, re-run as a child) append to one run's log at the same
/// time and race to finish another run: no event is lost, and exactly one finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_local_store() {
    use stepq_plan::{Event, EventKind};
    use stepq_runs::{EventCursor, RunRecord, RunStatus, RunStore};

    if let (Ok(root), Ok(name)) = (std::env::var(CHILD_ROOT_ENV), std::env::var(CHILD_NAME_ENV)) {
        // Child: append, then race for the run named `race`.
        let store = LocalDirRunStore::new(root);
        for batch in 0..CHILD_BATCHES {
            let event = Event::run(
                "shared",
                EventKind::EngineEvent {
                    message: format!("{name}/{batch}"),
                },
            );
            store.append_events("shared", &[event]).await.unwrap();
        }
        let to: RunStatus = name.parse().unwrap();
        match store.update_status("race", to).await {
            Ok(_) => println!("cas=won"),
            Err(e) => println!("cas=lost: {e}"),
        }
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let store = LocalDirRunStore::new(dir.path());
    for run_id in ["shared", "race"] {
        store
            .create_run(&RunRecord::new(run_id, "job", serde_json::json!({})))
            .await
            .unwrap();
    }
    store
        .update_status("race", RunStatus::Starting)
        .await
        .unwrap();
    store
        .update_status("race", RunStatus::Started)
        .await
        .unwrap();
    let children: Vec<_> = ["SUCCESS", "CANCELED"]
        .into_iter()
        .map(|name| {
            tokio::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "two_processes_share_one_local_store",
                    "--exact",
                    "--nocapture",
                ])
                .env(CHILD_ROOT_ENV, dir.path())
                .env(CHILD_NAME_ENV, name)
                .output()
        })
        .collect();
    let mut winners = 0;
    for output in futures::future::join_all(children).await {
        let output = output.expect("child process");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "child failed: {stdout}");
        winners += stdout.lines().filter(|l| *l == "cas=won").count();
    }
    assert_eq!(winners, 1, "exactly one process finishes the run");

    let page = store
        .read_events("shared", EventCursor::START)
        .await
        .unwrap();
    assert_eq!(page.next, EventCursor(2 * CHILD_BATCHES as u64));
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for event in &page.events {
        let EventKind::EngineEvent { message } = &event.kind else {
            panic!("{event:?}")
        };
        let (name, batch) = message.split_once('/').unwrap();
        let next = seen.entry(name.to_string()).or_default();
        assert_eq!(
            batch.parse::<usize>().unwrap(),
            *next,
            "{name} out of order"
        );
        *next += 1;
    }
    assert_eq!(seen.get("SUCCESS"), Some(&CHILD_BATCHES));
    assert_eq!(seen.get("CANCELED"), Some(&CHILD_BATCHES));
}
