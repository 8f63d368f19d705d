//! The in-memory flavour end to end: real receivers on one `InMemoryBroker`, each with a
//! `CancelListener` and its gate, cancelled through a `CancellableBroker`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stepq_broker::{Broker, InMemoryBroker, TaskQueue, WORKER_NAME_LABEL};
use stepq_cancel::conformance::*;
use stepq_cancel::{
    BroadcastChannel, CancelListener, CancelListenerConfig, CancellableBroker, Canceller,
    InMemoryCancelStore, LocalDirCancelStore, CANCELED_KIND,
};
use stepq_results::{InMemoryResultBackend, ResultBackend, TaskResult};

/// Cancels must end their task this fast.
const FIVE_SECONDS: Duration = Duration::from_secs(5);

struct Setup {
    inner: InMemoryBroker,
    broker: CancellableBroker<InMemoryBroker>,
    queue: TaskQueue,
    results: Arc<InMemoryResultBackend>,
}

fn setup() -> Setup {
    let inner = InMemoryBroker::new();
    let broker = CancellableBroker::in_memory(inner.clone(), Arc::new(InMemoryCancelStore::new()));
    let results = Arc::new(InMemoryResultBackend::new());
    let queue = TaskQueue::new(Arc::new(broker.clone()), results.clone());
    Setup {
        inner,
        broker,
        queue,
        results,
    }
}

fn assert_all_acked(broker: &InMemoryBroker) {
    assert_eq!(
        (broker.pending(), broker.in_flight()),
        (0, 0),
        "every message was acked, none will be redelivered"
    );
}

fn canceled(result: &TaskResult) -> &str {
    assert!(result.is_err, "{result:?}");
    let error = result.error.as_ref().unwrap();
    assert_eq!(error.kind, CANCELED_KIND, "{result:?}");
    &error.message
}

#[tokio::test]
async fn a_long_task_is_cancelled_within_five_seconds() {
    let s = setup();
    s.queue.startup().await.unwrap();
    let (tasks, mut started) = tasks();
    let worker = RunningWorker::start(
        &s.queue,
        s.broker.canceller(),
        "w1",
        2,
        Duration::from_secs(30),
        &tasks,
    )
    .await;
    s.queue.kick(message("long", "long-1")).await.unwrap();
    await_starts(&mut started, 1).await;

    let asked = Instant::now();
    s.broker.cancel_task("long-1").await.unwrap();
    let result = s.results.wait_result("long-1", Some(WAIT)).await.unwrap();
    assert!(asked.elapsed() < FIVE_SECONDS, "took {:?}", asked.elapsed());
    assert_eq!(canceled(&result), "cancelled on w1");
    assert_eq!(result.labels[WORKER_NAME_LABEL], "w1");

    let (stats, listener) = worker.stop().await;
    assert_eq!(stats.failed, 1);
    assert_eq!((listener.heard, listener.cancelled_running), (1, 1));
    assert_all_acked(&s.inner);
    s.queue.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_cancels_on_three_workers_all_reach_the_right_worker() {
    let s = setup();
    let (tasks, mut started) = tasks();
    let mut workers = Vec::new();
    for name in ["w1", "w2", "w3"] {
        // 3 x 7 slots for 20 tasks: every worker must run some of them.
        workers.push(
            RunningWorker::start(
                &s.queue,
                s.broker.canceller(),
                name,
                7,
                Duration::from_secs(30),
                &tasks,
            )
            .await,
        );
    }
    let ids: Vec<String> = (0..20).map(|i| format!("task-{i:02}")).collect();
    s.queue
        .kick_batch(ids.iter().map(|id| message("long", id)).collect())
        .await
        .unwrap();
    let runs_on = await_starts(&mut started, 20).await;
    let mut per_worker: HashMap<&str, usize> = HashMap::new();
    for worker in runs_on.values() {
        *per_worker.entry(worker.as_str()).or_default() += 1;
    }
    assert_eq!(
        per_worker.len(),
        3,
        "tasks spread over the fleet: {per_worker:?}"
    );

    for id in &ids {
        let asked = Instant::now();
        s.broker.cancel_task(id).await.unwrap();
        let result = s.results.wait_result(id, Some(WAIT)).await.unwrap();
        assert!(
            asked.elapsed() < FIVE_SECONDS,
            "{id} took {:?}",
            asked.elapsed()
        );
        assert_eq!(
            canceled(&result),
            format!("cancelled on {}", runs_on[id]),
            "{id} was cancelled by the worker running it"
        );
    }

    let mut cancelled_running = 0;
    for worker in workers {
        // A worker not running a task hears its cancel on its own time: wait for the last
        // ones (the running worker answered above, the others may still be on their way).
        for id in &ids {
            tokio::time::timeout(WAIT, worker.listener.cancelled().wait_for(id))
                .await
                .unwrap_or_else(|_| panic!("{} never heard the cancel of {id}", worker.name));
        }
        let known = worker.listener.cancelled().len();
        let name = worker.name.clone();
        let (stats, listener) = worker.stop().await;
        assert_eq!(known, 20, "{name} heard every cancel");
        assert_eq!(listener.heard, 20, "{name}");
        assert_eq!(stats.failed as usize, per_worker[name.as_str()]);
        cancelled_running += listener.cancelled_running;
    }
    assert_eq!(
        cancelled_running, 20,
        "each cancel hit exactly one running task"
    );
    assert_all_acked(&s.inner);
}

#[tokio::test]
async fn a_task_cancelled_before_it_starts_never_runs() {
    let s = setup();
    let (tasks, _started) = tasks();
    let worker = RunningWorker::start(
        &s.queue,
        s.broker.canceller(),
        "w1",
        2,
        Duration::from_secs(30),
        &tasks,
    )
    .await;

    // Cancelled, then sent at once: the gate reads the (free) store, so there is no window.
    s.broker
        .cancel_task_with_reason("early", "changed my mind")
        .await
        .unwrap();
    s.queue.kick(message("probe", "early")).await.unwrap();
    let result = s.results.wait_result("early", Some(WAIT)).await.unwrap();
    assert!(
        canceled(&result).contains("before it started"),
        "{result:?}"
    );
    assert_eq!(result.labels[WORKER_NAME_LABEL], "w1");
    assert!(!tasks.ran.load(Ordering::SeqCst), "the probe never ran");

    // Another task runs as usual afterwards.
    s.queue.kick(message("probe", "later")).await.unwrap();
    let result = s.results.wait_result("later", Some(WAIT)).await.unwrap();
    assert_eq!(result.return_value, "ran");

    let (stats, _) = worker.stop().await;
    assert_eq!((stats.succeeded, stats.failed), (1, 1));
    assert_all_acked(&s.inner);
}

#[tokio::test]
async fn a_cancelled_task_that_has_not_run_yet_is_refused_by_a_worker_that_starts_later() {
    let s = setup();
    let (tasks, _started) = tasks();
    // Queued, then cancelled while no worker runs.
    s.queue.kick(message("probe", "queued")).await.unwrap();
    s.broker.cancel_task("queued").await.unwrap();
    let worker = RunningWorker::start(
        &s.queue,
        s.broker.canceller(),
        "late",
        2,
        Duration::from_secs(30),
        &tasks,
    )
    .await;
    assert!(
        worker.listener.cancelled().contains("queued"),
        "the stored marker was applied before the worker took a task"
    );
    let result = s.results.wait_result("queued", Some(WAIT)).await.unwrap();
    assert!(canceled(&result).contains("before it started"));
    assert!(!tasks.ran.load(Ordering::SeqCst), "the probe never ran");
    worker.stop().await;
    assert_all_acked(&s.inner);
}

#[tokio::test]
async fn cancels_before_start_hold_across_a_fleet_without_store_reads() {
    // Store reads off: the notice alone must keep the task from running.
    let s = setup();
    let (tasks, _started) = tasks();
    let mut workers = Vec::new();
    for name in ["w1", "w2", "w3"] {
        let mut receiver = stepq_broker::Receiver::new(s.queue.clone());
        register_tasks(&mut receiver, name, &tasks);
        let mut config = CancelListenerConfig::named(name);
        config.check_store_before_start = Some(false);
        let listener = CancelListener::new(
            s.broker.canceller().clone(),
            receiver.cancel_handle(),
            config,
        )
        .unwrap();
        receiver.set_gate(listener.gate());
        let stop = tokio_util::sync::CancellationToken::new();
        let handle = listener.start(stop.clone()).await.unwrap();
        let join = tokio::spawn(receiver.run(stop.clone()));
        workers.push((stop, join, handle));
    }
    let ids: Vec<String> = (0..5).map(|i| format!("pre-{i}")).collect();
    for id in &ids {
        s.broker.cancel_task(id).await.unwrap();
    }
    for (_, _, handle) in &workers {
        for id in &ids {
            tokio::time::timeout(WAIT, handle.cancelled().wait_for(id))
                .await
                .expect("every worker hears every cancel");
        }
    }
    s.queue
        .kick_batch(ids.iter().map(|id| message("probe", id)).collect())
        .await
        .unwrap();
    for id in &ids {
        let result = s.results.wait_result(id, Some(WAIT)).await.unwrap();
        assert!(canceled(&result).contains("before it started"));
    }
    assert!(!tasks.ran.load(Ordering::SeqCst), "no probe ran");
    for (stop, join, handle) in workers {
        stop.cancel();
        join.await.unwrap().unwrap();
        handle.join().await;
    }
    assert_all_acked(&s.inner);
}

#[tokio::test]
async fn a_task_ignoring_its_token_is_aborted_after_the_grace_period() {
    let s = setup();
    let (tasks, mut started) = tasks();
    let grace = Duration::from_millis(500);
    let worker = RunningWorker::start(&s.queue, s.broker.canceller(), "w1", 2, grace, &tasks).await;
    s.queue
        .kick(message("stubborn", "stubborn-1"))
        .await
        .unwrap();
    await_starts(&mut started, 1).await;

    let asked = Instant::now();
    s.broker.cancel_task("stubborn-1").await.unwrap();
    let result = s
        .results
        .wait_result("stubborn-1", Some(WAIT))
        .await
        .unwrap();
    let waited = asked.elapsed();
    assert!(
        waited >= grace && waited < FIVE_SECONDS,
        "aborted after {waited:?}"
    );
    assert!(canceled(&result).contains("did not stop within its grace period"));
    assert!(
        tasks.dropped.load(Ordering::SeqCst),
        "its future was dropped"
    );

    let (stats, _) = worker.stop().await;
    assert_eq!(stats.failed, 1);
    assert_eq!(stats.released, 0, "answered, not returned to the queue");
    assert_all_acked(&s.inner);
}

#[tokio::test]
async fn a_malformed_cancel_message_is_reported_and_ignored() {
    let logs = CapturedLogs::default();
    let _guard = logs.install();
    let inner = InMemoryBroker::new();
    let channel = BroadcastChannel::new();
    let canceller = Canceller::new(
        Arc::new(InMemoryCancelStore::new()),
        Arc::new(channel.clone()),
    );
    let broker = CancellableBroker::new(inner.clone(), canceller);
    let results = Arc::new(InMemoryResultBackend::new());
    let queue = TaskQueue::new(Arc::new(broker.clone()), results.clone());
    let (tasks, mut started) = tasks();
    let worker = RunningWorker::start(
        &queue,
        broker.canceller(),
        "w1",
        2,
        Duration::from_secs(30),
        &tasks,
    )
    .await;

    assert_eq!(channel.send_raw("{not json"), 1);
    assert_eq!(
        channel.send_raw(
            r#"{"task_id":"x","task_name":"canceller","kwargs":{"__cancel_task_id__":42}}"#
        ),
        1
    );
    // The listener goes on: a real cancel after the bad ones still lands.
    queue.kick(message("long", "after-bad")).await.unwrap();
    await_starts(&mut started, 1).await;
    broker.cancel_task("after-bad").await.unwrap();
    let result = results.wait_result("after-bad", Some(WAIT)).await.unwrap();
    assert_eq!(canceled(&result), "cancelled on w1");

    let (_, listener) = worker.stop().await;
    assert_eq!(listener.heard, 1, "the malformed messages were not applied");
    let text = logs.text();
    assert!(
        text.contains("ignoring a malformed cancel message"),
        "{text}"
    );
    assert!(text.contains("not a task message"), "{text}");
    assert!(
        text.contains("`__cancel_task_id__` is not a string"),
        "{text}"
    );
    assert_all_acked(&inner);
}

#[tokio::test]
async fn a_cancel_written_by_another_process_to_a_shared_directory_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let inner = InMemoryBroker::new();
    let broker = CancellableBroker::in_memory(
        inner.clone(),
        Arc::new(LocalDirCancelStore::new(dir.path())),
    );
    broker.startup().await.unwrap();
    let results = Arc::new(InMemoryResultBackend::new());
    let queue = TaskQueue::new(Arc::new(broker.clone()), results.clone());
    let (tasks, _started) = tasks();
    let worker = RunningWorker::start(
        &queue,
        broker.canceller(),
        "w1",
        2,
        Duration::from_secs(30),
        &tasks,
    )
    .await;

    // `stepq cancel` in another terminal: same directory, its own (unshared) wake-up channel.
    let elsewhere = Canceller::new(
        Arc::new(LocalDirCancelStore::new(dir.path())),
        Arc::new(BroadcastChannel::new()),
    );
    elsewhere.cancel_task("from-afar").await.unwrap();
    assert!(dir.path().join("cancels/from-afar.json").exists());
    queue.kick(message("probe", "from-afar")).await.unwrap();
    let result = results.wait_result("from-afar", Some(WAIT)).await.unwrap();
    assert!(canceled(&result).contains("before it started"));
    assert!(!tasks.ran.load(Ordering::SeqCst));
    worker.stop().await;
    assert_all_acked(&inner);
}

#[tokio::test]
async fn an_invalid_listener_config_is_refused_naming_the_field() {
    let s = setup();
    let receiver = stepq_broker::Receiver::new(s.queue.clone());
    let err = CancelListener::new(
        s.broker.canceller().clone(),
        receiver.cancel_handle(),
        CancelListenerConfig::named("  "),
    )
    .unwrap_err();
    assert!(
        matches!(err, stepq_cancel::CancelError::Config { field: "name", .. }),
        "{err}"
    );
}
