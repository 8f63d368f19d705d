//! A real `Worker`'s activity (what its health heartbeat reports): `execute_plan` tasks and
//! tasks of `register_task` handlers are listed while they run and counted once done.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use stepq_broker::{InMemoryBroker, TaskHandler, TaskMessage, TaskQueue};
use stepq_protocol as protocol;
use stepq_results::{InMemoryOutputStore, InMemoryResultBackend, ResultBackend};
use stepq_worker::health::{RUN_ID_LABEL, STEP_KEY_LABEL};
use stepq_worker::{Worker, WorkerConfig};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_workers_activity_lists_running_tasks_and_counts_finished_ones() {
    let results = Arc::new(InMemoryResultBackend::new());
    let queue = TaskQueue::new(Arc::new(InMemoryBroker::new()), results.clone());
    queue.startup().await.unwrap();
    let mut worker = Worker::new(
        location(),
        queue.clone(),
        Arc::new(InMemoryOutputStore::new()),
        WorkerConfig::named("w").with_concurrency(2),
    )
    .unwrap();
    // A custom task that announces its start and waits to be released.
    let started = Arc::new(Semaphore::new(0));
    let release = Arc::new(Semaphore::new(0));
    let handler: TaskHandler = {
        let (started, release) = (started.clone(), release.clone());
        Arc::new(move |_ctx| {
            let (started, release) = (started.clone(), release.clone());
            Box::pin(async move {
                started.add_permits(1);
                release.acquire().await.unwrap().forget();
                Ok(serde_json::Value::Null)
            })
        })
    };
    worker.register_task("orchestrate", handler);
    let activity = worker.activity().clone();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));

    let custom = TaskMessage::new("orchestrate").with_label(RUN_ID_LABEL, "run-9");
    let custom_id = queue.kick(custom).await.unwrap().task_id;
    tokio::time::timeout(WAIT, started.acquire())
        .await
        .unwrap()
        .unwrap()
        .forget();
    let now = activity.running();
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!(now[0].task_id, custom_id);
    assert_eq!(now[0].task_name, "orchestrate");
    assert_eq!(now[0].run_id.as_deref(), Some("run-9"));
    assert_eq!(now[0].step_key, None);
    assert_eq!(activity.tasks_done(), 0);

    // A step task runs beside it and is counted once done.
    let message = protocol::step_message(&args("run-9", "serial", &["simple"])).unwrap();
    assert_eq!(message.label(STEP_KEY_LABEL), Some("simple"));
    let step_id = queue.kick(message).await.unwrap().task_id;
    results.wait_result(&step_id, Some(WAIT)).await.unwrap();
    assert_eq!(activity.tasks_done(), 1);
    assert_eq!(activity.tasks_running(), 1);

    release.add_permits(1);
    results.wait_result(&custom_id, Some(WAIT)).await.unwrap();
    assert_eq!(activity.tasks_done(), 2);
    assert!(activity.running().is_empty());
    stop.cancel();
    running.await.unwrap().unwrap();
}
