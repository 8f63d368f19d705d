//! The receiver end to end on the in-memory broker and result backend: the happy path and every
//! error path.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use stepq_broker::receiver::kinds;
use stepq_broker::{
    Broker, BrokerError, DeliveryStream, InMemoryBroker, Middleware, MiddlewareError, Receiver,
    ReceiverConfig, ReceiverStats, TaskContext, TaskMessage, TaskQueue, TaskWaitError,
    WORKER_NAME_LABEL,
};
use stepq_results::{
    ErrorClass, InMemoryResultBackend, ResultBackend, ResultError, ServiceError, TaskError,
    TaskResult,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

fn config(concurrency: usize) -> ReceiverConfig {
    ReceiverConfig {
        concurrency,
        grace_period: Duration::from_secs(10),
        heartbeat_extension: Duration::from_secs(30),
        heartbeat_interval: Some(Duration::from_secs(10)),
        worker_name: "test-worker".into(),
        ..ReceiverConfig::default()
    }
}

fn memory_queue(visibility: Duration) -> (TaskQueue, InMemoryBroker, Arc<InMemoryResultBackend>) {
    let broker = InMemoryBroker::with_visibility_timeout(visibility);
    let results = Arc::new(InMemoryResultBackend::new());
    let queue = TaskQueue::new(Arc::new(broker.clone()), results.clone());
    (queue, broker, results)
}

/// A running receiver.
struct Worker {
    stop: CancellationToken,
    join: JoinHandle<Result<ReceiverStats, BrokerError>>,
}

impl Worker {
    fn start(receiver: Receiver) -> Self {
        let stop = CancellationToken::new();
        let join = tokio::spawn(receiver.run(stop.clone()));
        Worker { stop, join }
    }

    async fn stop(self) -> ReceiverStats {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.join)
            .await
            .expect("the receiver stops")
            .expect("the receiver does not panic")
            .expect("the receiver returns stats")
    }
}

#[derive(Serialize, Deserialize)]
struct AddArgs {
    a: i64,
    b: i64,
}

fn arithmetic(receiver: &mut Receiver) {
    receiver.register_fn("add", |x: AddArgs| async move {
        Ok::<_, std::io::Error>(x.a + x.b)
    });
    receiver.register_fn(
        "double",
        |x: i64| async move { Ok::<_, std::io::Error>(x * 2) },
    );
}

fn assert_empty(broker: &InMemoryBroker) {
    assert_eq!(
        (broker.pending(), broker.in_flight()),
        (0, 0),
        "every message was acked"
    );
}

#[tokio::test]
async fn runs_typed_tasks_and_stores_labelled_results() {
    let (queue, broker, results) = memory_queue(Duration::from_secs(30));
    let mut receiver = Receiver::new(queue.clone()).with_config(config(2));
    arithmetic(&mut receiver);
    assert_eq!(receiver.task_names(), ["add", "double"]);
    let worker = Worker::start(receiver);

    let add = queue
        .task::<AddArgs, i64>("add")
        .with_label("run_id", "run-1")
        .kiq(&AddArgs { a: 2, b: 3 })
        .await
        .unwrap();
    assert_eq!(add.wait_result(WAIT).await.unwrap(), 5);
    let double = queue.task::<i64, i64>("double").kiq(&21).await.unwrap();
    assert_eq!(double.wait_result(WAIT).await.unwrap(), 42);

    let stored = results.get_result(add.task_id(), true).await.unwrap();
    assert_eq!(stored.labels["run_id"], "run-1");
    assert_eq!(stored.labels[WORKER_NAME_LABEL], "test-worker");
    assert!(stored.execution_time >= 0.0);

    let stats = worker.stop().await;
    assert_eq!((stats.succeeded, stats.failed), (2, 0));
    assert_empty(&broker);
}

#[tokio::test]
async fn malformed_message_without_task_id_is_logged_dead_lettered_and_skipped() {
    let (queue, broker, _) = memory_queue(Duration::from_secs(30));
    let mut receiver = Receiver::new(queue.clone()).with_config(config(1));
    arithmetic(&mut receiver);
    broker.kick_raw(&b"this is not json"[..]);
    let worker = Worker::start(receiver);
    // The receiver keeps going after it.
    let handle = queue.task::<i64, i64>("double").kiq(&1).await.unwrap();
    assert_eq!(handle.wait_result(WAIT).await.unwrap(), 2);
    let stats = worker.stop().await;
    assert_eq!(
        (stats.succeeded, stats.failed, stats.dead_lettered),
        (1, 1, 1)
    );
    assert_empty(&broker);
    let letters = broker.dead_letters().unwrap().list(10).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(&letters[0].body[..], b"this is not json");
    assert!(
        letters[0].reason.starts_with("MalformedMessage: "),
        "{}",
        letters[0].reason
    );
}

#[tokio::test]
async fn malformed_message_with_a_task_id_gets_a_failed_result() {
    let (queue, broker, results) = memory_queue(Duration::from_secs(30));
    let receiver = Receiver::new(queue.clone()).with_config(config(1));
    broker.kick_raw(&br#"{"task_id": "abc", "task_name": ""}"#[..]);
    let worker = Worker::start(receiver);
    let result = results.wait_result("abc", WAIT).await.unwrap();
    assert!(result.is_err);
    let error = result.error.unwrap();
    assert_eq!(error.kind, kinds::MALFORMED_MESSAGE);
    assert!(
        error.message.contains("empty task_name"),
        "{}",
        error.message
    );
    let stats = worker.stop().await;
    assert_eq!((stats.failed, stats.dead_lettered), (1, 1));
    assert_empty(&broker);
    let letters = broker.dead_letters().unwrap().list(10).await.unwrap();
    assert!(letters[0].reason.contains("empty task_name"), "{letters:?}");
}

#[tokio::test]
async fn a_message_delivered_too_often_is_dead_lettered_with_a_failed_result() {
    let (queue, broker, results) = memory_queue(Duration::from_secs(30));
    let handle = queue.task::<i64, i64>("double").kiq(&21).await.unwrap();
    // Two deliveries that never finished (their worker died): taken and handed back.
    let stop = CancellationToken::new();
    let mut stream = broker.listen(stop.clone()).await.unwrap();
    for _ in 0..2 {
        let d = stream.next().await.unwrap().unwrap();
        d.nack().await.unwrap();
    }
    stop.cancel();
    drop(stream);
    let capped = |receiver: Receiver| {
        receiver.with_config(ReceiverConfig {
            max_receive_count: Some(2),
            ..config(1)
        })
    };
    let mut receiver = capped(Receiver::new(queue.clone()));
    arithmetic(&mut receiver);
    let worker = Worker::start(receiver);
    let stored = results.wait_result(handle.task_id(), WAIT).await.unwrap();
    let error = stored.error.expect("a failed result");
    assert_eq!(error.kind, kinds::DEAD_LETTERED);
    assert!(
        error
            .message
            .starts_with("dead-lettered after 3 deliveries")
            && error.message.contains("max_receive_count (2)"),
        "{}",
        error.message
    );
    assert_eq!(stored.labels[WORKER_NAME_LABEL], "test-worker");
    let stats = worker.stop().await;
    assert_eq!(
        (stats.succeeded, stats.failed, stats.dead_lettered),
        (0, 1, 1)
    );
    assert_empty(&broker);
    let letters = broker.dead_letters().unwrap();
    let listed = letters.list(10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].receive_count, 3);
    assert_eq!(listed[0].message().unwrap().task_id, handle.task_id());

    // Redriven once the cause is fixed, it runs (its receive count starts again).
    results.delete_result(handle.task_id()).await.unwrap();
    assert_eq!(letters.redrive(None).await.unwrap(), 1);
    assert!(letters.list(10).await.unwrap().is_empty());
    let mut receiver = capped(Receiver::new(queue.clone()));
    arithmetic(&mut receiver);
    let worker = Worker::start(receiver);
    assert_eq!(handle.wait_result(WAIT).await.unwrap(), 42);
    assert_eq!(worker.stop().await.succeeded, 1);
    assert_empty(&broker);
}

#[tokio::test]
async fn unknown_task_gets_a_failed_result_listing_the_known_tasks() {
    let (queue, broker, _) = memory_queue(Duration::from_secs(30));
    let mut receiver = Receiver::new(queue.clone()).with_config(config(1));
    arithmetic(&mut receiver);
    let worker = Worker::start(receiver);
    let handle = queue.task::<i64, i64>("triple").kiq(&1).await.unwrap();
    match handle.wait_result(WAIT).await {
        Err(TaskWaitError::TaskFailed { kind, message, .. }) => {
            assert_eq!(kind, kinds::UNKNOWN_TASK);
            assert!(message.contains("`triple`"), "{message}");
            assert!(message.contains("known tasks: add, double"), "{message}");
        }
        other => panic!("expected TaskFailed, got {other:?}"),
    }
    let stats = worker.stop().await;
    assert_eq!(stats.failed, 1);
    assert_empty(&broker);
}

#[tokio::test]
async fn handler_errors_and_bad_arguments_are_failed_results() {
    let (queue, broker, _) = memory_queue(Duration::from_secs(30));
    let mut receiver = Receiver::new(queue.clone()).with_config(config(2));
    arithmetic(&mut receiver);
    receiver.register_fn("fail", |reason: String| async move {
        Err::<(), _>(std::io::Error::other(reason))
    });
    let worker = Worker::start(receiver);

    let failing = queue
        .task::<String, ()>("fail")
        .kiq(&"disk full".into())
        .await
        .unwrap();
    match failing.wait_result(WAIT).await {
        Err(TaskWaitError::TaskFailed { kind, message, .. }) => {
            assert_eq!(kind, std::any::type_name::<std::io::Error>());
            assert_eq!(message, "disk full");
        }
        other => panic!("expected TaskFailed, got {other:?}"),
    }
    let bad_args = queue
        .task::<&str, i64>("double")
        .kiq(&"seven")
        .await
        .unwrap();
    match bad_args.wait_result(WAIT).await {
        Err(TaskWaitError::TaskFailed { kind, message, .. }) => {
            assert_eq!(kind, kinds::INVALID_ARGUMENTS);
            assert!(message.contains("task `double`"), "{message}");
        }
        other => panic!("expected TaskFailed, got {other:?}"),
    }
    let stats = worker.stop().await;
    assert_eq!((stats.succeeded, stats.failed), (0, 2));
    assert_empty(&broker);
}

#[tokio::test]
async fn several_positional_arguments_decode_as_a_tuple() {
    let (queue, _, _) = memory_queue(Duration::from_secs(30));
    let mut receiver = Receiver::new(queue.clone()).with_config(config(1));
    receiver.register_fn("sum", |(a, b): (i64, i64)| async move {
        Ok::<_, std::io::Error>(a + b)
    });
    let worker = Worker::start(receiver);
    let mut message = TaskMessage::new("sum");
    message.args = vec![serde_json::json!(1), serde_json::json!(2)];
    let sent = queue.kick(message).await.unwrap();
    let handle = stepq_broker::TaskHandle::<i64>::new(queue.clone(), sent.task_id, sent.task_name);
    assert_eq!(handle.wait_result(WAIT).await.unwrap(), 3);

    let mut both = TaskMessage::new("sum");
    both.args = vec![serde_json::json!(1), serde_json::json!(2)];
    both.kwargs.insert("c".into(), serde_json::json!(3));
    let sent = queue.kick(both).await.unwrap();
    let handle = stepq_broker::TaskHandle::<i64>::new(queue.clone(), sent.task_id, sent.task_name);
    assert!(matches!(
        handle.wait_result(WAIT).await,
        Err(TaskWaitError::TaskFailed { kind, .. }) if kind == kinds::INVALID_ARGUMENTS
    ));
    worker.stop().await;
}

#[tokio::test]
async fn a_panicking_handler_fails_its_task_and_the_receiver_keeps_going() {
    let (queue, broker, _) = memory_queue(Duration::from_secs(30));
    let mut receiver = Receiver::new(queue.clone()).with_config(config(1));
    arithmetic(&mut receiver);
    receiver.register_fn("explode", |_: ()| async move {
        if true {
            panic!("kaboom");
        }
        Ok::<(), std::io::Error>(())
    });
    let worker = Worker::start(receiver);
    let handle = queue.task::<(), ()>("explode").kiq(&()).await.unwrap();
    match handle.wait_result(WAIT).await {
        Err(TaskWaitError::TaskFailed { kind, message, .. }) => {
            assert_eq!(kind, kinds::PANIC);
            assert!(message.contains("kaboom"), "{message}");
        }
        other => panic!("expected TaskFailed, got {other:?}"),
    }
    let next = queue.task::<i64, i64>("double").kiq(&4).await.unwrap();
    assert_eq!(next.wait_result(WAIT).await.unwrap(), 8);
    let stats = worker.stop().await;
    assert_eq!((stats.succeeded, stats.failed), (1, 1));
    assert_empty(&broker);
}

/// Fails the hooks named in `fail`.
struct FailingHooks {
    fail: &'static [&'static str],
}

impl FailingHooks {
    fn check(&self, hook: &'static str) -> Result<(), MiddlewareError> {
        if self.fail.contains(&hook) {
            return Err(MiddlewareError {
                middleware: "failing".into(),
                hook,
                message: format!("{hook} refused"),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Middleware for FailingHooks {
    fn name(&self) -> &str {
        "failing"
    }
    async fn pre_execute(&self, m: TaskMessage) -> Result<TaskMessage, MiddlewareError> {
        self.check("pre_execute").map(|()| m)
    }
    async fn post_execute(&self, _m: &TaskMessage, _r: &TaskResult) -> Result<(), MiddlewareError> {
        self.check("post_execute")
    }
    async fn post_save(&self, _m: &TaskMessage, _r: &TaskResult) -> Result<(), MiddlewareError> {
        self.check("post_save")
    }
}

#[tokio::test]
async fn pre_execute_error_fails_the_task_without_running_it() {
    let (queue, broker, _) = memory_queue(Duration::from_secs(30));
    let queue = queue.with_middleware(Arc::new(FailingHooks {
        fail: &["pre_execute"],
    }));
    let ran = Arc::new(AtomicU32::new(0));
    let mut receiver = Receiver::new(queue.clone()).with_config(config(1));
    let counter = ran.clone();
    receiver.register_fn("count", move |_: ()| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, std::io::Error>(()) }
    });
    let worker = Worker::start(receiver);
    let handle = queue.task::<(), ()>("count").kiq(&()).await.unwrap();
    match handle.wait_result(WAIT).await {
        Err(TaskWaitError::TaskFailed { kind, message, .. }) => {
            assert_eq!(kind, kinds::MIDDLEWARE_ERROR);
            assert!(message.contains("pre_execute refused"), "{message}");
        }
        other => panic!("expected TaskFailed, got {other:?}"),
    }
    let stats = worker.stop().await;
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert_eq!(stats.failed, 1);
    assert_empty(&broker);
}

/// A post_save (or post_execute) error is logged and counted; the result is saved, so the
/// message is acked all the same (running the task again would not undo the hook's failure).
#[tokio::test]
async fn observing_hook_errors_are_counted_and_the_saved_result_is_acked() {
    let (queue, broker, _) = memory_queue(Duration::from_secs(30));
    let queue = queue.with_middleware(Arc::new(FailingHooks {
        fail: &["post_execute", "post_save"],
    }));
    let mut receiver = Receiver::new(queue.clone()).with_config(config(1));
    arithmetic(&mut receiver);
    let worker = Worker::start(receiver);
    let handle = queue.task::<i64, i64>("double").kiq(&5).await.unwrap();
    assert_eq!(handle.wait_result(WAIT).await.unwrap(), 10);
    let stats = worker.stop().await;
    assert_eq!(
        stats.hook_errors, 2,
        "post_execute and post_save errors reported"
    );
    assert_eq!((stats.succeeded, stats.unsaved), (1, 0));
    assert_empty(&broker);
}

/// Wraps the in-memory backend; the first `failures` set_result calls fail with `class`.
struct FlakyBackend {
    inner: InMemoryResultBackend,
    failures: AtomicU32,
    class: ErrorClass,
}

impl FlakyBackend {
    fn new(failures: u32, class: ErrorClass) -> Self {
        FlakyBackend {
            inner: InMemoryResultBackend::new(),
            failures: AtomicU32::new(failures),
            class,
        }
    }
}

#[async_trait]
impl ResultBackend for FlakyBackend {
    async fn set_result(&self, task_id: &str, result: &TaskResult) -> Result<(), ResultError> {
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(ResultError::Service(ServiceError::new(
                "flaky",
                "Unavailable",
                "cannot store right now",
                self.class,
            )));
        }
        self.inner.set_result(task_id, result).await
    }
    async fn is_result_ready(&self, task_id: &str) -> Result<bool, ResultError> {
        self.inner.is_result_ready(task_id).await
    }
    async fn get_result(&self, task_id: &str, with_logs: bool) -> Result<TaskResult, ResultError> {
        self.inner.get_result(task_id, with_logs).await
    }
    async fn wait_result(
        &self,
        task_id: &str,
        timeout: Option<Duration>,
    ) -> Result<TaskResult, ResultError> {
        self.inner.wait_result(task_id, timeout).await
    }
    async fn delete_result(&self, task_id: &str) -> Result<(), ResultError> {
        self.inner.delete_result(task_id).await
    }
}

/// Registers `record`, which records the receive count of every run.
fn recording(receiver: &mut Receiver) -> Arc<Mutex<Vec<u32>>> {
    let runs = Arc::new(Mutex::new(Vec::new()));
    let seen = runs.clone();
    receiver.register(
        "record",
        Arc::new(move |ctx: TaskContext| {
            seen.lock().unwrap().push(ctx.receive_count);
            Box::pin(async { Ok(serde_json::json!("done")) })
        }),
    );
    runs
}

#[tokio::test]
async fn a_result_that_cannot_be_saved_is_nacked_and_the_task_runs_again() {
    let broker = InMemoryBroker::new();
    let results = Arc::new(FlakyBackend::new(1, ErrorClass::Permanent));
    let queue = TaskQueue::new(Arc::new(broker.clone()), results.clone());
    let mut receiver = Receiver::new(queue.clone()).with_config(config(1));
    let runs = recording(&mut receiver);
    let worker = Worker::start(receiver);
    let handle = queue.task::<(), String>("record").kiq(&()).await.unwrap();
    assert_eq!(handle.wait_result(WAIT).await.unwrap(), "done");
    let stats = worker.stop().await;
    assert_eq!(
        *runs.lock().unwrap(),
        [1, 2],
        "ran again after the nack (not after 30 s)"
    );
    assert_eq!((stats.unsaved, stats.succeeded), (1, 1));
    assert_empty(&broker);
}

#[tokio::test]
async fn a_temporary_save_error_is_retried_without_running_the_task_again() {
    let broker = InMemoryBroker::new();
    let results = Arc::new(FlakyBackend::new(1, ErrorClass::Temporary));
    let queue = TaskQueue::new(Arc::new(broker.clone()), results.clone());
    let mut receiver = Receiver::new(queue.clone()).with_config(config(1));
    let runs = recording(&mut receiver);
    let worker = Worker::start(receiver);
    let handle = queue.task::<(), String>("record").kiq(&()).await.unwrap();
    assert_eq!(handle.wait_result(WAIT).await.unwrap(), "done");
    let stats = worker.stop().await;
    assert_eq!(*runs.lock().unwrap(), [1]);
    assert_eq!((stats.unsaved, stats.succeeded), (0, 1));
    assert_empty(&broker);
}

#[tokio::test]
async fn a_rejected_message_whose_result_cannot_be_saved_is_nacked() {
    let broker = InMemoryBroker::new();
    let results = Arc::new(FlakyBackend::new(1, ErrorClass::Permanent));
    let queue = TaskQueue::new(Arc::new(broker.clone()), results.clone());
    let worker = Worker::start(Receiver::new(queue.clone()).with_config(config(1)));
    let handle = queue.task::<(), ()>("nobody").kiq(&()).await.unwrap();
    assert!(matches!(
        handle.wait_result(WAIT).await,
        Err(TaskWaitError::TaskFailed { kind, .. }) if kind == kinds::UNKNOWN_TASK
    ));
    let stats = worker.stop().await;
    assert_eq!((stats.unsaved, stats.failed), (1, 1));
    assert_empty(&broker);
}

/// Registers `gated`: signals `started`, then waits for `gate` (or forever) and reports
/// whether its cancel token fired.
fn gated(
    receiver: &mut Receiver,
) -> (
    tokio::sync::mpsc::UnboundedReceiver<String>,
    Arc<tokio::sync::Notify>,
    Arc<Mutex<Vec<CancellationToken>>>,
) {
    let (started_tx, started_rx) = tokio::sync::mpsc::unbounded_channel();
    let gate = Arc::new(tokio::sync::Notify::new());
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let (g, t) = (gate.clone(), tokens.clone());
    receiver.register(
        "gated",
        Arc::new(move |ctx: TaskContext| {
            let (started, gate, tokens) = (started_tx.clone(), g.clone(), t.clone());
            Box::pin(async move {
                tokens.lock().unwrap().push(ctx.cancel.clone());
                let _ = started.send(ctx.message.task_id.clone());
                tokio::select! {
                    _ = gate.notified() => Ok(serde_json::json!("opened")),
                    _ = ctx.cancel.cancelled() => Err(TaskError {
                        kind: "Cancelled".into(),
                        message: "cancelled by request".into(),
                    }),
                }
            })
        }),
    );
    (started_rx, gate, tokens)
}

#[tokio::test]
async fn on_stop_a_task_that_finishes_within_the_grace_period_is_saved() {
    let (queue, broker, results) = memory_queue(Duration::from_secs(30));
    let mut receiver = Receiver::new(queue.clone()).with_config(config(1));
    let (mut started, gate, _) = gated(&mut receiver);
    let worker = Worker::start(receiver);
    let handle = queue.task::<(), String>("gated").kiq(&()).await.unwrap();
    started.recv().await.unwrap();
    let Worker { stop, join } = worker;
    stop.cancel();
    // The receiver is now waiting for the running task.
    tokio::task::yield_now().await;
    assert!(!join.is_finished());
    gate.notify_one();
    let stats = join.await.unwrap().unwrap();
    assert_eq!((stats.succeeded, stats.released), (1, 0));
    assert_eq!(
        results
            .wait_result(handle.task_id(), WAIT)
            .await
            .unwrap()
            .return_value,
        "opened"
    );
    assert_empty(&broker);
}

#[tokio::test]
async fn on_stop_a_task_past_the_grace_period_is_cancelled_and_nacked() {
    let (queue, broker, results) = memory_queue(Duration::from_secs(30));
    let mut receiver = Receiver::new(queue.clone()).with_config(ReceiverConfig {
        grace_period: Duration::from_millis(200),
        ..config(1)
    });
    let (mut started, _gate, tokens) = gated(&mut receiver);
    let worker = Worker::start(receiver);
    let running = queue.task::<(), String>("gated").kiq(&()).await.unwrap();
    started.recv().await.unwrap();
    // Waits for a free slot; must not be taken once stop fired.
    queue.task::<(), String>("gated").kiq(&()).await.unwrap();
    let stats = worker.stop().await;
    assert_eq!((stats.succeeded, stats.failed, stats.released), (0, 0, 1));
    assert!(
        tokens.lock().unwrap()[0].is_cancelled(),
        "the task's token was cancelled"
    );
    assert_eq!(
        (broker.pending(), broker.in_flight()),
        (2, 0),
        "the released message is visible again at once, the waiting one untouched"
    );
    assert!(!results.is_result_ready(running.task_id()).await.unwrap());
}

#[tokio::test]
async fn cancel_handle_cancels_a_running_task() {
    let (queue, broker, _) = memory_queue(Duration::from_secs(30));
    let mut receiver = Receiver::new(queue.clone()).with_config(config(2));
    let (mut started, _gate, _) = gated(&mut receiver);
    let cancel = receiver.cancel_handle();
    let worker = Worker::start(receiver);
    let handle = queue.task::<(), String>("gated").kiq(&()).await.unwrap();
    let id = started.recv().await.unwrap();
    assert_eq!(id, handle.task_id());
    assert_eq!(cancel.running(), vec![id.clone()]);
    assert!(!cancel.cancel("not-running"));
    assert!(cancel.cancel(&id));
    match handle.wait_result(WAIT).await {
        Err(TaskWaitError::TaskFailed { kind, .. }) => assert_eq!(kind, "Cancelled"),
        other => panic!("expected a cancelled task, got {other:?}"),
    }
    let stats = worker.stop().await;
    assert!(cancel.running().is_empty());
    assert!(!cancel.cancel(&id), "a finished task is no longer running");
    assert_eq!(stats.failed, 1);
    assert_empty(&broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_runs_more_tasks_than_the_concurrency_limit() {
    let (queue, broker, _) = memory_queue(Duration::from_secs(30));
    let mut receiver = Receiver::new(queue.clone()).with_config(config(3));
    let current = Arc::new(AtomicUsize::new(0));
    let max = Arc::new(AtomicUsize::new(0));
    let (c, m) = (current.clone(), max.clone());
    receiver.register_fn("busy", move |_: ()| {
        let (current, max) = (c.clone(), m.clone());
        async move {
            let now = current.fetch_add(1, Ordering::SeqCst) + 1;
            max.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(30)).await;
            current.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(())
        }
    });
    let worker = Worker::start(receiver);
    let task = queue.task::<(), ()>("busy");
    let mut handles = Vec::new();
    for _ in 0..12 {
        handles.push(task.kiq(&()).await.unwrap());
    }
    for h in handles {
        h.wait_result(WAIT).await.unwrap();
    }
    let stats = worker.stop().await;
    assert_eq!(stats.succeeded, 12);
    assert_eq!(
        max.load(Ordering::SeqCst),
        3,
        "tasks ran at once (must reach, never exceed, the limit of 3)"
    );
    assert_empty(&broker);
}

/// Registers `coordinate` (without a slot when `slotless`): it kicks a `double` task on the
/// same queue and waits for its result, as a run's orchestration waits for its steps.
fn coordinating(receiver: &mut Receiver, queue: &TaskQueue, slotless: bool) {
    let queue = queue.clone();
    let handler: stepq_broker::TaskHandler = Arc::new(move |_ctx: TaskContext| {
        let queue = queue.clone();
        Box::pin(async move {
            let inner = queue
                .task::<i64, i64>("double")
                .kiq(&21)
                .await
                .map_err(|e| TaskError {
                    kind: "Kick".into(),
                    message: e.to_string(),
                })?;
            let doubled = inner
                .wait_result(Some(Duration::from_secs(2)))
                .await
                .map_err(|e| TaskError {
                    kind: "Wait".into(),
                    message: e.to_string(),
                })?;
            Ok(serde_json::json!(doubled))
        })
    });
    if slotless {
        receiver.register_without_slot("coordinate", handler);
    } else {
        receiver.register("coordinate", handler);
    }
}

#[tokio::test]
async fn a_slotless_task_lets_a_receiver_of_concurrency_one_run_what_it_waits_for() {
    let (queue, broker, _) = memory_queue(Duration::from_secs(30));
    let mut receiver = Receiver::new(queue.clone()).with_config(config(1));
    arithmetic(&mut receiver);
    coordinating(&mut receiver, &queue, true);
    let worker = Worker::start(receiver);
    let handle = queue.task::<(), i64>("coordinate").kiq(&()).await.unwrap();
    assert_eq!(handle.wait_result(WAIT).await.unwrap(), 42);
    let stats = worker.stop().await;
    assert_eq!(stats.succeeded, 2);
    assert_empty(&broker);
}

#[tokio::test]
async fn a_task_holding_the_only_slot_cannot_run_what_it_waits_for() {
    // The same as above with a slot held: the inner task never starts, the wait times out.
    // This is what `register_without_slot` is for.
    let (queue, _broker, _) = memory_queue(Duration::from_secs(30));
    let mut receiver = Receiver::new(queue.clone()).with_config(config(1));
    arithmetic(&mut receiver);
    coordinating(&mut receiver, &queue, false);
    let worker = Worker::start(receiver);
    let handle = queue.task::<(), i64>("coordinate").kiq(&()).await.unwrap();
    match handle.wait_result(WAIT).await {
        Err(TaskWaitError::TaskFailed { kind, .. }) => assert_eq!(kind, "Wait"),
        other => panic!("expected the coordinator to give up waiting, got {other:?}"),
    }
    let stats = worker.stop().await;
    assert_eq!(stats.failed, 1);
}

/// Runs one task of 1.5 s on a broker with a 500 ms visibility timeout; returns how often it
/// started.
async fn long_task_runs(heartbeat_interval: Option<Duration>) -> Vec<u32> {
    let (queue, broker, _) = memory_queue(Duration::from_millis(500));
    let mut receiver = Receiver::new(queue.clone()).with_config(ReceiverConfig {
        heartbeat_interval,
        heartbeat_extension: Duration::from_millis(500),
        ..config(2)
    });
    let runs = Arc::new(Mutex::new(Vec::new()));
    let seen = runs.clone();
    receiver.register(
        "long",
        Arc::new(move |ctx: TaskContext| {
            seen.lock().unwrap().push(ctx.receive_count);
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                Ok(serde_json::Value::Null)
            })
        }),
    );
    let worker = Worker::start(receiver);
    let handle = queue.task::<(), ()>("long").kiq(&()).await.unwrap();
    handle.wait_result(WAIT).await.unwrap();
    worker.stop().await;
    assert_empty(&broker);
    let runs = runs.lock().unwrap().clone();
    runs
}

#[tokio::test]
async fn heartbeats_keep_a_long_task_from_being_redelivered() {
    let runs = long_task_runs(Some(Duration::from_millis(100))).await;
    assert_eq!(runs, [1], "the task was delivered again while it ran");
}

#[tokio::test]
async fn without_heartbeats_a_long_task_is_redelivered() {
    // The control for the test above: the visibility timeout really is shorter than the task.
    let runs = long_task_runs(None).await;
    assert!(runs.len() >= 2 && runs[1] == 2, "{runs:?}");
}

#[tokio::test]
async fn invalid_config_is_refused_naming_the_field() {
    let (queue, _, _) = memory_queue(Duration::from_secs(30));
    let cases = [
        (
            ReceiverConfig {
                concurrency: 0,
                ..config(1)
            },
            "concurrency",
        ),
        (
            ReceiverConfig {
                heartbeat_interval: Some(Duration::ZERO),
                ..config(1)
            },
            "heartbeat_interval",
        ),
        (
            ReceiverConfig {
                heartbeat_interval: Some(Duration::from_secs(30)),
                heartbeat_extension: Duration::from_secs(30),
                ..config(1)
            },
            "heartbeat_extension",
        ),
    ];
    for (config, field) in cases {
        let receiver = Receiver::new(queue.clone()).with_config(config);
        match receiver.run(CancellationToken::new()).await {
            Err(BrokerError::Config { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected a config error on `{field}`, got {other:?}"),
        }
    }
}

#[test]
fn default_config() {
    let c = ReceiverConfig::default();
    assert!(c.concurrency >= 1);
    assert_eq!(c.grace_period, Duration::from_secs(30));
    // Fitted to the SQS broker's default 6 s visibility timeout: the first extension comes
    // well before it lapses, and a killed worker's message is visible again within 6 s of
    // its last extension.
    assert_eq!(c.heartbeat_extension, Duration::from_secs(6));
    let every = c.heartbeat_interval.expect("heartbeats are on by default");
    assert!(every * 2 < c.heartbeat_extension, "{every:?}");
    assert!(
        c.worker_name.ends_with(&format!("-{}", std::process::id())),
        "{}",
        c.worker_name
    );
    c.validate().unwrap();
}

/// A broker whose stream first yields `errors` errors, then ends or delegates.
struct Troubled {
    inner: Option<InMemoryBroker>,
    errors: usize,
}

#[async_trait]
impl Broker for Troubled {
    async fn kick(&self, message: &TaskMessage) -> Result<(), BrokerError> {
        self.inner.as_ref().expect("sendable").kick(message).await
    }
    async fn listen(&self, stop: CancellationToken) -> Result<DeliveryStream, BrokerError> {
        let errors = futures::stream::iter((0..self.errors).map(|_| {
            Err(BrokerError::Service(ServiceError::new(
                "troubled",
                "Throttled",
                "slow down",
                ErrorClass::Temporary,
            )))
        }));
        Ok(match &self.inner {
            Some(inner) => errors.chain(inner.listen(stop).await?).boxed(),
            None => errors.boxed(),
        })
    }
    fn kind(&self) -> &'static str {
        "troubled"
    }
}

#[tokio::test]
async fn the_receiver_survives_stream_errors() {
    let inner = InMemoryBroker::new();
    let broker = Troubled {
        inner: Some(inner.clone()),
        errors: 3,
    };
    let queue = TaskQueue::new(Arc::new(broker), Arc::new(InMemoryResultBackend::new()));
    let mut receiver = Receiver::new(queue.clone()).with_config(config(1));
    arithmetic(&mut receiver);
    let worker = Worker::start(receiver);
    let handle = queue.task::<i64, i64>("double").kiq(&3).await.unwrap();
    assert_eq!(handle.wait_result(WAIT).await.unwrap(), 6);
    assert_eq!(worker.stop().await.succeeded, 1);
    assert_empty(&inner);
}

#[tokio::test]
async fn a_stream_that_ends_before_stop_is_reported_as_closed() {
    let broker = Troubled {
        inner: None,
        errors: 0,
    };
    let queue = TaskQueue::new(Arc::new(broker), Arc::new(InMemoryResultBackend::new()));
    let receiver = Receiver::new(queue).with_config(config(1));
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        receiver.run(CancellationToken::new()),
    )
    .await
    .expect("run returns when the stream ends");
    assert!(matches!(outcome, Err(BrokerError::Closed)), "{outcome:?}");
}
