//! The conformance suites against the in-memory and local-directory implementations (one test
//! per check), and the local backend across instances sharing a directory (as separate
//! processes would).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use stepq_results::conformance::{
    run_output_store_suite, run_result_backend_suite, sample_result, OutputStoreFactory,
    ResultBackendFactory,
};
use stepq_results::{output_store_conformance_tests, result_backend_conformance_tests};
use stepq_results::{
    InMemoryOutputStore, InMemoryResultBackend, LocalDirOutputStore, LocalDirResultBackend,
    OutputStore, ResultBackend, ResultError,
};

/// Hands out a fresh sub-directory of one temporary directory per call.
struct LocalDirs {
    dir: tempfile::TempDir,
    next: AtomicUsize,
}

impl LocalDirs {
    fn new() -> Self {
        LocalDirs {
            dir: tempfile::tempdir().expect("temp dir"),
            next: AtomicUsize::new(0),
        }
    }

    fn fresh(&self) -> std::path::PathBuf {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.dir.path().join(format!("ns-{n}"))
    }
}

#[async_trait]
impl ResultBackendFactory for LocalDirs {
    async fn fresh(&self) -> Arc<dyn ResultBackend> {
        Arc::new(LocalDirResultBackend::new(self.fresh()))
    }
}

#[async_trait]
impl OutputStoreFactory for LocalDirs {
    async fn fresh(&self) -> Arc<dyn OutputStore> {
        Arc::new(LocalDirOutputStore::new(self.fresh()))
    }
}

result_backend_conformance_tests!(in_memory_result_backend, || async {
    Arc::new(InMemoryResultBackend::new()) as Arc<dyn ResultBackend>
});

output_store_conformance_tests!(in_memory_output_store, || async {
    Arc::new(InMemoryOutputStore::new()) as Arc<dyn OutputStore>
});

result_backend_conformance_tests!(local_dir_result_backend, LocalDirs::new());

output_store_conformance_tests!(local_dir_output_store, LocalDirs::new());

/// The aggregate entry points run every check, on a single-threaded runtime too.
#[tokio::test(flavor = "current_thread")]
async fn suites_also_pass_on_a_single_threaded_runtime() {
    run_result_backend_suite(&|| async {
        Arc::new(InMemoryResultBackend::new()) as Arc<dyn ResultBackend>
    })
    .await;
    let dirs = LocalDirs::new();
    run_result_backend_suite(&dirs).await;
    run_output_store_suite(&dirs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_dir_waiter_sees_a_result_written_by_another_instance() {
    let dir = tempfile::tempdir().unwrap();
    let reader = Arc::new(LocalDirResultBackend::new(dir.path()));
    let writer = LocalDirResultBackend::new(dir.path());
    reader.startup().await.unwrap();
    writer.startup().await.unwrap();

    let waiter = {
        let reader = reader.clone();
        tokio::spawn(async move {
            reader
                .wait_result("cross", Some(Duration::from_secs(20)))
                .await
        })
    };
    // Let the waiter find nothing and back off a few times first.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !waiter.is_finished(),
        "wait_result returned before the write"
    );
    writer.set_result("cross", &sample_result(3)).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("waiter hung")
        .unwrap()
        .unwrap();
    let mut expected = sample_result(3);
    expected.log = None;
    assert_eq!(waited, expected);

    // And the other way round, with the result already there.
    reader.set_result("back", &sample_result(4)).await.unwrap();
    let got = writer
        .wait_result("back", Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(got.return_value, sample_result(4).return_value);
    // Deletion by one instance is seen by the other.
    writer.delete_result("back").await.unwrap();
    assert!(matches!(
        reader.get_result("back", true).await,
        Err(ResultError::NotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_dir_outputs_are_shared_between_instances() {
    let dir = tempfile::tempdir().unwrap();
    let a = LocalDirOutputStore::new(dir.path());
    let b = LocalDirOutputStore::new(dir.path());
    let key = stepq_results::OutputKey::new("run", "step", "out");
    a.put(&key, bytes::Bytes::from_static(b"shared"))
        .await
        .unwrap();
    assert_eq!(
        b.get(&key).await.unwrap(),
        bytes::Bytes::from_static(b"shared")
    );
    b.delete_run("run").await.unwrap();
    assert!(!a.exists(&key).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_dir_wait_without_timeout_sees_another_instance() {
    let dir = tempfile::tempdir().unwrap();
    let reader = Arc::new(LocalDirResultBackend::new(dir.path()));
    let writer = LocalDirResultBackend::new(dir.path());
    let waiter = {
        let reader = reader.clone();
        tokio::spawn(async move { reader.wait_result("unbounded", None).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    writer
        .set_result("unbounded", &sample_result(1))
        .await
        .unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("unbounded waiter hung")
        .unwrap()
        .unwrap();
    assert_eq!(waited.return_value, sample_result(1).return_value);
}

// ---- the suites catch broken implementations ------------------------------------------------

/// Wraps the in-memory backend but forgets to drop logs.
struct KeepsLogs(InMemoryResultBackend);

#[async_trait]
impl ResultBackend for KeepsLogs {
    async fn set_result(
        &self,
        task_id: &str,
        result: &stepq_results::TaskResult,
    ) -> Result<(), ResultError> {
        self.0.set_result(task_id, result).await
    }
    async fn is_result_ready(&self, task_id: &str) -> Result<bool, ResultError> {
        self.0.is_result_ready(task_id).await
    }
    async fn get_result(
        &self,
        task_id: &str,
        _with_logs: bool,
    ) -> Result<stepq_results::TaskResult, ResultError> {
        self.0.get_result(task_id, true).await
    }
    async fn delete_result(&self, task_id: &str) -> Result<(), ResultError> {
        self.0.delete_result(task_id).await
    }
}

#[tokio::test]
#[should_panic(expected = "with_logs = false must drop the log only")]
async fn result_suite_catches_a_backend_that_keeps_logs() {
    run_result_backend_suite(&|| async {
        Arc::new(KeepsLogs(InMemoryResultBackend::new())) as Arc<dyn ResultBackend>
    })
    .await;
}

/// Wraps the in-memory store but deletes every run on `delete_run`.
struct DeletesEverything(
    InMemoryOutputStore,
    std::sync::Mutex<Vec<stepq_results::OutputKey>>,
);

#[async_trait]
impl OutputStore for DeletesEverything {
    async fn put(
        &self,
        key: &stepq_results::OutputKey,
        value: bytes::Bytes,
    ) -> Result<(), ResultError> {
        self.1.lock().unwrap().push(key.clone());
        self.0.put(key, value).await
    }
    async fn get(&self, key: &stepq_results::OutputKey) -> Result<bytes::Bytes, ResultError> {
        self.0.get(key).await
    }
    async fn exists(&self, key: &stepq_results::OutputKey) -> Result<bool, ResultError> {
        self.0.exists(key).await
    }
    async fn delete_run(&self, run_id: &str) -> Result<(), ResultError> {
        let runs: Vec<String> = self
            .1
            .lock()
            .unwrap()
            .iter()
            .map(|k| k.run_id.clone())
            .collect();
        for run in runs {
            self.0.delete_run(&run).await?;
        }
        self.0.delete_run(run_id).await
    }
}

#[tokio::test]
#[should_panic(expected = "delete_run of another run removed")]
async fn output_suite_catches_a_store_that_deletes_other_runs() {
    run_output_store_suite(&|| async {
        Arc::new(DeletesEverything(
            InMemoryOutputStore::new(),
            Default::default(),
        )) as Arc<dyn OutputStore>
    })
    .await;
}
