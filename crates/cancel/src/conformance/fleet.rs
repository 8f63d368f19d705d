//! A fleet of real receivers with cancel listeners ([`RunningWorker`], [`Tasks`],
//! [`register_tasks`]), for the end-to-end cancellation tests: a cancel reaches the worker
//! running the task, and no other, on every channel (broadcast in memory, SQS inboxes on
//! LocalStack). The functions panic on a broken promise, like assertions in a test.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stepq_broker::{
    BrokerError, Receiver, ReceiverConfig, ReceiverStats, TaskContext, TaskMessage, TaskQueue,
};
use stepq_results::TaskError;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    CancelListener, CancelListenerConfig, Canceller, ListenerHandle, ListenerStats, CANCELED_KIND,
};

/// Bound on waiting for anything, so a broken component fails the test instead of hanging.
pub const WAIT: Duration = Duration::from_secs(30);

/// A task started on a worker: (worker name, task id).
pub type Started = (String, String);

/// Tasks every test worker runs.
///
/// - `long`: reports its start, then waits up to 60 s for its token; cancelled, it fails
///   with kind `Canceled` and a message naming the worker.
/// - `stubborn`: reports its start, then sleeps 60 s ignoring its token; sets `dropped` when
///   its future is dropped.
/// - `probe`: sets `ran` and returns `"ran"`.
pub struct Tasks {
    /// Where `long` and `stubborn` report their start.
    pub started: mpsc::UnboundedSender<Started>,
    /// Set once any `probe` ran.
    pub ran: Arc<AtomicBool>,
    /// Set once a `stubborn` task's future was dropped (aborted).
    pub dropped: Arc<AtomicBool>,
}

struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Registers the [`Tasks`] on `receiver`, reporting starts as worker `worker`.
pub fn register_tasks(receiver: &mut Receiver, worker: &str, tasks: &Tasks) {
    let (tx, name) = (tasks.started.clone(), worker.to_string());
    receiver.register(
        "long",
        Arc::new(move |ctx: TaskContext| {
            let (tx, name) = (tx.clone(), name.clone());
            Box::pin(async move {
                let _ = tx.send((name.clone(), ctx.message.task_id.clone()));
                tokio::select! {
                    _ = ctx.cancel.cancelled() => Err(TaskError {
                        kind: CANCELED_KIND,
                        message: format!("cancelled on {name}"),
                    }),
                    _ = tokio::time::sleep(Duration::from_secs(60)) => Ok(serde_json::json!("completed")),
                }
            })
        }),
    );
    let (tx, name, dropped) = (
        tasks.started.clone(),
        worker.to_string(),
        tasks.dropped.clone(),
    );
    receiver.register(
        "stubborn",
        Arc::new(move |ctx: TaskContext| {
            let (tx, name, flag) = (tx.clone(), name.clone(), DropFlag(dropped.clone()));
            Box::pin(async move {
                let _flag = flag;
                let _ = tx.send((name, ctx.message.task_id.clone()));
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(serde_json::json!("completed"))
            })
        }),
    );
    let ran = tasks.ran.clone();
    receiver.register(
        "probe",
        Arc::new(move |_ctx: TaskContext| {
            let ran = ran.clone();
            Box::pin(async move {
                ran.store(true, Ordering::SeqCst);
                Ok(serde_json::json!("ran"))
            })
        }),
    );
}

/// One running worker: a receiver with a cancel listener and gate.
pub struct RunningWorker {
    /// The worker name (its cancel subscriber name too).
    pub name: String,
    /// Stops the receiver and the listener.
    pub stop: CancellationToken,
    /// The running receiver.
    pub receiver: JoinHandle<Result<ReceiverStats, BrokerError>>,
    /// The running cancel listener.
    pub listener: ListenerHandle,
}

impl RunningWorker {
    /// Starts a worker: the listener first (so stored cancels are applied before any task is
    /// taken), then the receiver.
    pub async fn start(
        queue: &TaskQueue,
        canceller: &Canceller,
        name: &str,
        concurrency: usize,
        grace: Duration,
        tasks: &Tasks,
    ) -> Self {
        let mut receiver = Receiver::new(queue.clone()).with_config(ReceiverConfig {
            concurrency,
            grace_period: Duration::from_secs(5),
            heartbeat_extension: Duration::from_secs(30),
            heartbeat_interval: Some(Duration::from_secs(10)),
            worker_name: name.into(),
            ..ReceiverConfig::default()
        });
        register_tasks(&mut receiver, name, tasks);
        let listener = CancelListener::new(
            canceller.clone(),
            receiver.cancel_handle(),
            CancelListenerConfig::named(name).with_cancel_grace(grace),
        )
        .unwrap();
        receiver.set_gate(listener.gate());
        let stop = CancellationToken::new();
        let listener = listener.start(stop.clone()).await.unwrap();
        let receiver = tokio::spawn(receiver.run(stop.clone()));
        RunningWorker {
            name: name.into(),
            stop,
            receiver,
            listener,
        }
    }

    /// Stops the worker and waits for both halves (bounded by [`WAIT`]).
    pub async fn stop(self) -> (ReceiverStats, ListenerStats) {
        self.stop.cancel();
        let stats = tokio::time::timeout(WAIT, self.receiver)
            .await
            .expect("the receiver stops")
            .unwrap()
            .unwrap();
        (stats, self.listener.join().await)
    }
}

/// Fresh [`Tasks`] and the receiving end of their start reports.
pub fn tasks() -> (Tasks, mpsc::UnboundedReceiver<Started>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Tasks {
            started: tx,
            ran: Arc::new(AtomicBool::new(false)),
            dropped: Arc::new(AtomicBool::new(false)),
        },
        rx,
    )
}

/// Receives `n` start reports: task id -> worker.
pub async fn await_starts(
    started: &mut mpsc::UnboundedReceiver<Started>,
    n: usize,
) -> HashMap<String, String> {
    let mut by_task = HashMap::new();
    while by_task.len() < n {
        let (worker, task) = tokio::time::timeout(WAIT, started.recv())
            .await
            .expect("tasks start")
            .expect("workers are alive");
        by_task.insert(task, worker);
    }
    by_task
}

/// A message for task `name` with a chosen id.
pub fn message(name: &str, task_id: &str) -> TaskMessage {
    let mut m = TaskMessage::new(name);
    m.task_id = task_id.into();
    m
}

/// Log lines captured from `tracing` (for tests that assert a problem was reported).
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// Captures every event of the current thread (and of tasks a current-thread runtime runs
    /// on it) until the guard drops.
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
