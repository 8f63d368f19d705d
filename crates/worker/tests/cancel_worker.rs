//! Cancellation of real `Worker`s (stepq-cancel's `CancelListener` and gate on each worker's
//! receiver), on one in-memory broker: ops get their token, a cancelled step reports CANCELED
//! and its message is acked, cancels reach the worker running the step in a fleet, a step
//! cancelled before it starts never runs, and a step that will not stop is aborted.
//!
//! These live here, not in crates/cancel/tests, because stepq-cancel cannot dev-depend on
//! stepq-worker (stepq-worker -> stepq-executor -> stepq-cancel would be a cycle).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::args;
use stepq_broker::{InMemoryBroker, TaskQueue};
use stepq_cancel::{
    CancelListener, CancelListenerConfig, CancellableBroker, InMemoryCancelStore, ListenerHandle,
};
use stepq_plan::{EventKind, Job, StepDef, StepReport, StepStatus};
use stepq_protocol as protocol;
use stepq_results::{InMemoryOutputStore, InMemoryResultBackend, ResultBackend};
use stepq_worker::{
    op_output, step_canceled_result, CodeLocation, OpError, Worker, WorkerConfig, WorkerStats,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);
const FIVE_SECONDS: Duration = Duration::from_secs(5);

/// What the ops report: (worker, run id) when a step starts.
struct Probes {
    started: mpsc::UnboundedSender<(String, String)>,
    probe_ran: Arc<AtomicBool>,
    ignorer_dropped: Arc<AtomicBool>,
}

struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Job `cancel_lab`: `long` sleeps up to 60 s polling its token; `probe` records that it ran;
/// `ignorer` sleeps 60 s ignoring its token; `blocker` blocks its thread for 3 s.
fn location(probes: &Probes) -> CodeLocation {
    let started = probes.started.clone();
    let long = op_output("result", move |ctx, _inputs| {
        let started = started.clone();
        async move {
            let _ = started.send((ctx.worker().to_string(), ctx.run_id().to_string()));
            for _ in 0..600 {
                if ctx.is_cancelled() {
                    return Err(OpError::msg("stopped on request"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(1_i64)
        }
    });
    let ran = probes.probe_ran.clone();
    let probe = op_output("result", move |_ctx, _inputs| {
        let ran = ran.clone();
        async move {
            ran.store(true, Ordering::SeqCst);
            Ok(1_i64)
        }
    });
    let (started, dropped) = (probes.started.clone(), probes.ignorer_dropped.clone());
    let ignorer = op_output("result", move |ctx, _inputs| {
        let (started, flag) = (started.clone(), DropFlag(dropped.clone()));
        async move {
            let _flag = flag;
            let _ = started.send((ctx.worker().to_string(), ctx.run_id().to_string()));
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(1_i64)
        }
    });
    let started = probes.started.clone();
    let blocker = op_output("result", move |ctx, _inputs| {
        let started = started.clone();
        async move {
            let _ = started.send((ctx.worker().to_string(), ctx.run_id().to_string()));
            // Ignores its token and never yields: only dropping the task ends the step.
            std::thread::sleep(Duration::from_secs(3));
            Ok(1_i64)
        }
    });
    let job = Job::builder("cancel_lab")
        .step(StepDef::new("long", "long").output("result"))
        .step(StepDef::new("probe", "probe").output("result"))
        .step(StepDef::new("ignorer", "ignorer").output("result"))
        .step(StepDef::new("blocker", "blocker").output("result"))
        .build()
        .unwrap();
    CodeLocation::builder()
        .op("long", long)
        .op("probe", probe)
        .op("ignorer", ignorer)
        .op("blocker", blocker)
        .job(job)
        .build()
        .unwrap()
}

struct Fleet {
    inner: InMemoryBroker,
    broker: CancellableBroker<InMemoryBroker>,
    queue: TaskQueue,
    results: Arc<InMemoryResultBackend>,
    outputs: Arc<InMemoryOutputStore>,
    location: Arc<CodeLocation>,
    probes: Probes,
    started: mpsc::UnboundedReceiver<(String, String)>,
}

struct RunningWorker {
    stop: CancellationToken,
    join: JoinHandle<Result<WorkerStats, stepq_worker::WorkerError>>,
    listener: ListenerHandle,
}

impl Fleet {
    fn new() -> Self {
        let inner = InMemoryBroker::new();
        let broker =
            CancellableBroker::in_memory(inner.clone(), Arc::new(InMemoryCancelStore::new()));
        let results = Arc::new(InMemoryResultBackend::new());
        let queue = TaskQueue::new(Arc::new(broker.clone()), results.clone());
        let (tx, started) = mpsc::unbounded_channel();
        let probes = Probes {
            started: tx,
            probe_ran: Arc::new(AtomicBool::new(false)),
            ignorer_dropped: Arc::new(AtomicBool::new(false)),
        };
        Fleet {
            inner,
            broker,
            queue,
            results,
            outputs: Arc::new(InMemoryOutputStore::new()),
            location: Arc::new(location(&probes)),
            probes,
            started,
        }
    }

    /// A worker with the cancel listener applied before it takes any task.
    async fn worker(&self, name: &str, concurrency: usize, grace: Duration) -> RunningWorker {
        let config = WorkerConfig::named(name).with_concurrency(concurrency);
        let mut worker = Worker::new(
            self.location.clone(),
            self.queue.clone(),
            self.outputs.clone(),
            config,
        )
        .unwrap();
        let listener = CancelListener::new(
            self.broker.canceller().clone(),
            worker.cancel_handle(),
            CancelListenerConfig::named(name).with_cancel_grace(grace),
        )
        .unwrap()
        .with_canceled_result(step_canceled_result(name.to_string()));
        worker.receiver_mut().set_gate(listener.gate());
        let stop = CancellationToken::new();
        let listener = listener.start(stop.clone()).await.unwrap();
        let join = tokio::spawn(worker.run(stop.clone()));
        RunningWorker {
            stop,
            join,
            listener,
        }
    }

    async fn send(&self, run_id: &str, step: &str) -> String {
        let message = protocol::step_message(&args(run_id, "cancel_lab", &[step])).unwrap();
        self.queue.kick(message).await.unwrap().task_id
    }

    async fn report(&self, task_id: &str) -> StepReport {
        let result = self.results.wait_result(task_id, Some(WAIT)).await.unwrap();
        assert!(!result.is_err, "task failed: {:?}", result.error);
        let mut reports = protocol::read_reports(&result.return_value).unwrap();
        assert_eq!(reports.len(), 1);
        reports.remove(0)
    }

    /// Waits for `n` steps to start: run id -> worker.
    async fn starts(&mut self, n: usize) -> HashMap<String, String> {
        let mut runs = HashMap::new();
        while runs.len() < n {
            let (worker, run) = tokio::time::timeout(WAIT, self.started.recv())
                .await
                .expect("steps start")
                .unwrap();
            runs.insert(run, worker);
        }
        runs
    }

    fn assert_all_acked(&self) {
        assert_eq!((self.inner.pending(), self.inner.in_flight()), (0, 0));
    }
}

impl RunningWorker {
    async fn stop(self) -> WorkerStats {
        self.stop.cancel();
        let stats = self.join.await.unwrap().unwrap();
        self.listener.join().await;
        stats
    }
}

fn assert_canceled(report: &StepReport) {
    assert_eq!(report.status, StepStatus::Canceled, "{report:#?}");
    assert!(
        matches!(
            report.events.last().map(|e| &e.kind),
            Some(EventKind::StepCanceled)
        ),
        "{report:#?}"
    );
}

#[tokio::test]
async fn a_long_step_is_cancelled_within_five_seconds() {
    let mut f = Fleet::new();
    let worker = f.worker("w1", 2, Duration::from_secs(30)).await;
    let task_id = f.send("run-long", "long").await;
    f.starts(1).await;
    let asked = Instant::now();
    f.broker.cancel_task(&task_id).await.unwrap();
    let report = f.report(&task_id).await;
    assert!(asked.elapsed() < FIVE_SECONDS, "took {:?}", asked.elapsed());
    assert_canceled(&report);
    assert_eq!(report.worker, "w1");
    let stats = worker.stop().await;
    assert_eq!(stats.steps_canceled, 1);
    f.assert_all_acked();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_cancels_on_three_workers_reach_the_worker_running_each_step() {
    let mut f = Fleet::new();
    let mut workers = Vec::new();
    for name in ["w1", "w2", "w3"] {
        workers.push(f.worker(name, 7, Duration::from_secs(30)).await);
    }
    let mut task_ids = Vec::new();
    for i in 0..20 {
        let run = format!("run-{i:02}");
        task_ids.push((run.clone(), f.send(&run, "long").await));
    }
    let runs_on = f.starts(20).await;
    let spread: std::collections::HashSet<&String> = runs_on.values().collect();
    assert_eq!(spread.len(), 3, "every worker runs some steps");
    for (run, task_id) in &task_ids {
        let asked = Instant::now();
        f.broker.cancel_task(task_id).await.unwrap();
        let report = f.report(task_id).await;
        assert!(
            asked.elapsed() < FIVE_SECONDS,
            "{run} took {:?}",
            asked.elapsed()
        );
        assert_canceled(&report);
        assert_eq!(
            report.worker, runs_on[run],
            "{run} was cancelled where it ran"
        );
    }
    let mut canceled = 0;
    for worker in workers {
        canceled += worker.stop().await.steps_canceled;
    }
    assert_eq!(canceled, 20);
    f.assert_all_acked();
}

#[tokio::test]
async fn a_step_cancelled_before_it_starts_never_runs_its_op() {
    let f = Fleet::new();
    let worker = f.worker("w1", 2, Duration::from_secs(30)).await;
    let mut message = protocol::step_message(&args("run-pre", "cancel_lab", &["probe"])).unwrap();
    message.task_id = "cancelled-early".into();
    f.broker.cancel_task("cancelled-early").await.unwrap();
    f.queue.kick(message).await.unwrap();
    let report = f.report("cancelled-early").await;
    assert_canceled(&report);
    assert_eq!(report.step_key, "probe");
    assert_eq!(report.worker, "w1");
    assert!(
        !f.probes.probe_ran.load(Ordering::SeqCst),
        "the op never ran"
    );
    let stats = worker.stop().await;
    assert_eq!(stats.tasks.succeeded, 1, "answered with CANCELED reports");
    f.assert_all_acked();
}

#[tokio::test]
async fn an_op_ignoring_its_token_is_aborted() {
    let mut f = Fleet::new();
    let worker = f.worker("w1", 2, Duration::from_millis(500)).await;
    let task_id = f.send("run-ignorer", "ignorer").await;
    f.starts(1).await;
    let asked = Instant::now();
    f.broker.cancel_task(&task_id).await.unwrap();
    let report = f.report(&task_id).await;
    assert!(asked.elapsed() < FIVE_SECONDS, "took {:?}", asked.elapsed());
    assert_canceled(&report);
    assert!(
        f.probes.ignorer_dropped.load(Ordering::SeqCst),
        "the op's future was dropped"
    );
    worker.stop().await;
    f.assert_all_acked();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_op_blocking_its_thread_is_abandoned_after_the_grace_period() {
    let mut f = Fleet::new();
    let grace = Duration::from_millis(500);
    let worker = f.worker("w1", 2, grace).await;
    let task_id = f.send("run-blocker", "blocker").await;
    f.starts(1).await;
    let asked = Instant::now();
    f.broker.cancel_task(&task_id).await.unwrap();
    let report = f.report(&task_id).await;
    let waited = asked.elapsed();
    assert!(
        waited >= grace && waited < Duration::from_millis(2500),
        "answered after {waited:?}, before the op's 3 s block ended"
    );
    assert_canceled(&report);
    worker.stop().await;
    f.assert_all_acked();
}
