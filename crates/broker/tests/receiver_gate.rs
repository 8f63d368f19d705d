//! The receiver's `TaskGate` hook: refusing a task before it starts, and dropping a cancelled
//! task that outlives its cancel grace. Real receiver, in-memory broker and result backend.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use stepq_broker::receiver::{kinds, TaskGate};
use stepq_broker::{
    CancelHandle, InMemoryBroker, Receiver, ReceiverConfig, TaskContext, TaskMessage, TaskQueue,
    TaskWaitError, WORKER_NAME_LABEL,
};
use stepq_results::{InMemoryResultBackend, ResultBackend, TaskResult};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const WAIT: Option<Duration> = Some(Duration::from_secs(20));

fn setup() -> (TaskQueue, InMemoryBroker, Arc<InMemoryResultBackend>) {
    let broker = InMemoryBroker::new();
    let results = Arc::new(InMemoryResultBackend::new());
    let queue = TaskQueue::new(Arc::new(broker.clone()), results.clone());
    (queue, broker, results)
}

fn config() -> ReceiverConfig {
    ReceiverConfig {
        concurrency: 2,
        grace_period: Duration::from_secs(10),
        heartbeat_extension: Duration::from_secs(30),
        heartbeat_interval: Some(Duration::from_secs(10)),
        worker_name: "gate-worker".into(),
        ..ReceiverConfig::default()
    }
}

/// Refuses the ids in `refuse`; records what the cancel handle said was running when asked.
struct TestGate {
    refuse: Vec<String>,
    handle: Mutex<Option<CancelHandle>>,
    running_when_asked: Mutex<Vec<Vec<String>>>,
    grace: Option<Duration>,
}

impl TestGate {
    fn new(refuse: &[&str], grace: Option<Duration>) -> Arc<Self> {
        Arc::new(TestGate {
            refuse: refuse.iter().map(|s| s.to_string()).collect(),
            handle: Mutex::new(None),
            running_when_asked: Mutex::new(Vec::new()),
            grace,
        })
    }
}

#[async_trait]
impl TaskGate for TestGate {
    async fn before_start(&self, message: &TaskMessage) -> Option<TaskResult> {
        if let Some(handle) = self.handle.lock().unwrap().as_ref() {
            self.running_when_asked
                .lock()
                .unwrap()
                .push(handle.running());
        }
        self.refuse
            .contains(&message.task_id)
            .then(|| TaskResult::err("Refused", format!("gate refused {}", message.task_id), 0.0))
    }

    fn cancel_grace(&self) -> Option<Duration> {
        self.grace
    }
}

/// Sets a flag when dropped (the handler's future was dropped or finished).
struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A task `stubborn` that reports its start, then sleeps 60 s ignoring its token, and
/// `polite`, which returns `"stopped"` as soon as its token fires.
fn register(
    receiver: &mut Receiver,
) -> (
    mpsc::UnboundedReceiver<String>,
    Arc<AtomicBool>,
    Arc<AtomicBool>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let ran = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicBool::new(false));
    let (tx2, ran2, dropped2) = (tx.clone(), ran.clone(), dropped.clone());
    receiver.register(
        "stubborn",
        Arc::new(move |ctx: TaskContext| {
            let (tx, ran, flag) = (tx2.clone(), ran2.clone(), DropFlag(dropped2.clone()));
            Box::pin(async move {
                let _flag = flag;
                ran.store(true, Ordering::SeqCst);
                tx.send(ctx.message.task_id.clone()).unwrap();
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(serde_json::json!("finished"))
            })
        }),
    );
    receiver.register(
        "polite",
        Arc::new(move |ctx: TaskContext| {
            let tx = tx.clone();
            Box::pin(async move {
                tx.send(ctx.message.task_id.clone()).unwrap();
                ctx.cancel.cancelled().await;
                Ok(serde_json::json!("stopped"))
            })
        }),
    );
    (rx, ran, dropped)
}

#[tokio::test]
async fn a_refused_task_never_runs_and_its_result_is_saved_and_acked() {
    let (queue, broker, results) = setup();
    let mut receiver = Receiver::new(queue.clone()).with_config(config());
    let (_started, ran, _) = register(&mut receiver);
    receiver.register_fn(
        "double",
        |x: i64| async move { Ok::<_, std::io::Error>(x * 2) },
    );
    let mut refused = TaskMessage::new("stubborn").with_label("run_id", "r1");
    refused.task_id = "refuse-me".into();
    let gate = TestGate::new(&["refuse-me"], None);
    *gate.handle.lock().unwrap() = Some(receiver.cancel_handle());
    receiver.set_gate(gate.clone());
    let stop = CancellationToken::new();
    let running = tokio::spawn(receiver.run(stop.clone()));

    queue.kick(refused).await.unwrap();
    let result = results.wait_result("refuse-me", WAIT).await.unwrap();
    assert!(result.is_err);
    assert_eq!(result.error.unwrap().kind, "Refused");
    assert_eq!(result.labels["run_id"], "r1");
    assert_eq!(result.labels[WORKER_NAME_LABEL], "gate-worker");
    assert!(!ran.load(Ordering::SeqCst), "the handler never ran");

    // A task the gate lets through runs as usual.
    let doubled = queue.task::<i64, i64>("double").kiq(&4).await.unwrap();
    assert_eq!(doubled.wait_result(WAIT).await.unwrap(), 8);

    // The gate was asked after the task registered with the cancel handle.
    let asked = gate.running_when_asked.lock().unwrap().clone();
    assert_eq!(asked[0], vec!["refuse-me".to_string()]);
    assert_eq!(asked[1], vec![doubled.task_id().to_string()]);

    stop.cancel();
    let stats = running.await.unwrap().unwrap();
    assert_eq!((stats.succeeded, stats.failed), (1, 1));
    assert_eq!((broker.pending(), broker.in_flight()), (0, 0), "both acked");
}

#[tokio::test]
async fn a_cancelled_task_that_ignores_its_token_is_dropped_after_the_grace() {
    let (queue, broker, results) = setup();
    let mut receiver = Receiver::new(queue.clone())
        .with_config(config())
        .with_gate(TestGate::new(&[], Some(Duration::from_millis(300))));
    let (mut started, _, dropped) = register(&mut receiver);
    let cancel = receiver.cancel_handle();
    let stop = CancellationToken::new();
    let running = tokio::spawn(receiver.run(stop.clone()));

    let handle = queue.task::<(), String>("stubborn").kiq(&()).await.unwrap();
    let id = started.recv().await.unwrap();
    let asked = tokio::time::Instant::now();
    assert!(cancel.cancel(&id));
    match handle.wait_result(WAIT).await {
        Err(TaskWaitError::TaskFailed { kind, message, .. }) => {
            assert_eq!(kind, kinds::CANCELED);
            assert!(message.contains("grace period"), "{message}");
        }
        other => panic!("expected a canceled task, got {other:?}"),
    }
    assert!(
        asked.elapsed() >= Duration::from_millis(300),
        "the grace was given"
    );
    assert!(dropped.load(Ordering::SeqCst), "the handler was dropped");
    let stored = results.get_result(&id, false).await.unwrap();
    assert!(stored.execution_time >= 0.3, "{}", stored.execution_time);

    stop.cancel();
    let stats = running.await.unwrap().unwrap();
    assert_eq!(stats.failed, 1);
    assert_eq!(
        (broker.pending(), broker.in_flight()),
        (0, 0),
        "acked, not redelivered"
    );
    assert!(cancel.running().is_empty());
}

#[tokio::test]
async fn a_cancelled_task_that_stops_within_the_grace_keeps_its_own_result() {
    let (queue, broker, _) = setup();
    let mut receiver = Receiver::new(queue.clone())
        .with_config(config())
        .with_gate(TestGate::new(&[], Some(Duration::from_secs(30))));
    let (mut started, _, _) = register(&mut receiver);
    let cancel = receiver.cancel_handle();
    let stop = CancellationToken::new();
    let running = tokio::spawn(receiver.run(stop.clone()));

    let handle = queue.task::<(), String>("polite").kiq(&()).await.unwrap();
    let id = started.recv().await.unwrap();
    assert!(cancel.cancel(&id));
    assert_eq!(handle.wait_result(WAIT).await.unwrap(), "stopped");
    stop.cancel();
    running.await.unwrap().unwrap();
    assert_eq!((broker.pending(), broker.in_flight()), (0, 0));
}

#[tokio::test]
async fn without_a_cancel_grace_a_cancelled_handler_runs_to_its_end() {
    let (queue, _, _) = setup();
    let mut receiver = Receiver::new(queue.clone()).with_config(config());
    let (tx, mut started) = mpsc::unbounded_channel();
    receiver.register(
        "slowish",
        Arc::new(move |ctx: TaskContext| {
            let tx = tx.clone();
            Box::pin(async move {
                tx.send(ctx.message.task_id.clone()).unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok(serde_json::json!(ctx.cancel.is_cancelled()))
            })
        }),
    );
    receiver.set_gate(TestGate::new(&[], None));
    let cancel = receiver.cancel_handle();
    let stop = CancellationToken::new();
    let running = tokio::spawn(receiver.run(stop.clone()));
    let handle = queue.task::<(), bool>("slowish").kiq(&()).await.unwrap();
    let id = started.recv().await.unwrap();
    assert!(cancel.cancel(&id));
    assert!(
        handle.wait_result(WAIT).await.unwrap(),
        "it saw its token fire and finished on its own"
    );
    stop.cancel();
    running.await.unwrap().unwrap();
}

#[test]
fn the_default_aborted_result_is_a_canceled_failure() {
    struct Defaults;
    #[async_trait]
    impl TaskGate for Defaults {
        async fn before_start(&self, _: &TaskMessage) -> Option<TaskResult> {
            None
        }
    }
    let message = TaskMessage::new("t");
    assert_eq!(Defaults.cancel_grace(), None);
    let result = Defaults.aborted_result(&message);
    assert!(result.is_err);
    let error = result.error.unwrap();
    assert_eq!(error.kind, kinds::CANCELED);
    assert!(
        error.message.contains(&message.task_id),
        "{}",
        error.message
    );
}
