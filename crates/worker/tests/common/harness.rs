//! A real `Worker` running on an in-memory broker and result backend, for tests that send it
//! `execute_plan` messages built with the wire protocol.

use std::sync::Arc;
use std::time::Duration;

use stepq_broker::{CancelHandle, InMemoryBroker, TaskQueue};
use stepq_plan::{ExecuteStepArgs, StepReport};
use stepq_protocol as protocol;
use stepq_results::{
    InMemoryOutputStore, InMemoryResultBackend, OutputStore, ResultBackend, TaskResult,
};
use stepq_worker::{CodeLocation, Worker, WorkerConfig, WorkerError, WorkerStats};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Generous bound on waiting for a result, so a broken worker fails the test instead of hanging.
pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// A running worker and the components around it; outputs go to an `O`.
pub(crate) struct Harness<O = InMemoryOutputStore> {
    /// The broker the worker consumes.
    pub broker: Arc<InMemoryBroker>,
    /// The task queue over that broker and [`results`](Harness::results).
    pub queue: TaskQueue,
    /// Where the worker's task results go.
    pub results: Arc<InMemoryResultBackend>,
    /// Where the steps' outputs go.
    pub outputs: Arc<O>,
    /// Stops the worker.
    pub stop: CancellationToken,
    /// Cancels the worker's tasks.
    pub cancel: CancelHandle,
    /// The worker's loop.
    pub running: JoinHandle<Result<WorkerStats, WorkerError>>,
}

impl Harness {
    /// A worker for `location` with an in-memory output store.
    pub(crate) async fn start(location: CodeLocation, config: WorkerConfig) -> Self {
        Harness::start_with(location, Arc::new(InMemoryOutputStore::new()), config).await
    }
}

impl<O: OutputStore + 'static> Harness<O> {
    /// A worker for `location` storing outputs in `outputs`.
    pub(crate) async fn start_with(
        location: CodeLocation,
        outputs: Arc<O>,
        config: WorkerConfig,
    ) -> Self {
        let broker = Arc::new(InMemoryBroker::new());
        let results = Arc::new(InMemoryResultBackend::new());
        let queue = TaskQueue::new(broker.clone(), results.clone());
        queue.startup().await.unwrap();
        let worker = Worker::new(Arc::new(location), queue.clone(), outputs.clone(), config)
            .expect("valid worker config");
        let cancel = worker.cancel_handle();
        let stop = CancellationToken::new();
        let running = tokio::spawn(worker.run(stop.clone()));
        Harness {
            broker,
            queue,
            results,
            outputs,
            stop,
            cancel,
            running,
        }
    }

    /// Sends an `execute_plan` task; returns its task id.
    pub(crate) async fn send(&self, args: &ExecuteStepArgs) -> String {
        let message = protocol::step_message(args).unwrap();
        self.queue.kick(message).await.unwrap().task_id
    }

    /// The result of task `task_id`, waiting up to [`WAIT`] for it.
    pub(crate) async fn result(&self, task_id: &str) -> TaskResult {
        self.results.wait_result(task_id, Some(WAIT)).await.unwrap()
    }

    /// The step reports of task `task_id`, which must have succeeded.
    pub(crate) async fn reports(&self, task_id: &str) -> Vec<StepReport> {
        let result = self.result(task_id).await;
        assert!(!result.is_err, "task failed: {:?}", result.error);
        protocol::read_reports(&result.return_value).unwrap()
    }

    /// Stops the worker; returns its stats.
    pub(crate) async fn stop(self) -> WorkerStats {
        self.stop.cancel();
        self.running.await.unwrap().unwrap()
    }
}
