//! CI runs the example's service once on the embedded broker: the same `WorkerService` on
//! `Backends::embedded`, with an executor in this process running the job through the queue.

use std::sync::Arc;

use stepq_executor::{Executor, ExecutorConfig, RunRequest, RunStatus};
use stepq_worker::service::{Backends, ServiceSettings, StateStore, WorkerService};
use stepq_worker::WorkerConfig;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_worker_service_runs_its_job_once() {
    let state = tempfile::tempdir().unwrap();
    let backends = Backends::embedded(state.path(), StateStore::Sqlite, true).unwrap();
    let settings = ServiceSettings::new(WorkerConfig::named("example-worker"));
    let location = Arc::new(example_worker_service::location());
    let service =
        WorkerService::new(location.clone(), backends.service_parts(true), settings).unwrap();
    let stop = CancellationToken::new();
    let serving = tokio::spawn(service.run(stop.clone()));

    let executor = Executor::new(
        backends.queue.clone(),
        backends.outputs.clone(),
        ExecutorConfig::default(),
    )
    .unwrap();
    let job = location.job("double").unwrap();
    let result = executor
        .start(RunRequest::new("example-run", job))
        .unwrap()
        .wait()
        .await;
    assert_eq!(result.status, RunStatus::Success, "{result:?}");
    let doubled: i64 = executor.output(&result, "double", "n").await.unwrap();
    assert_eq!(doubled, 42);
    // The service wrote its health heartbeat while it ran, and removes it when it stops.
    let workers = backends
        .heartbeats
        .list_workers(u64::MAX / 2, std::time::Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(workers.len(), 1, "{workers:?}");
    stop.cancel();
    let stats = serving.await.unwrap().unwrap();
    assert_eq!(stats.steps_succeeded, 2);
}
