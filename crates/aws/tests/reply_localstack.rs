//! Result notification through a reply queue, against LocalStack: a worker's result wakes the
//! orchestrator without any S3 read, large results are read once, lost notifications are
//! found by the fallback poll, and the reply queue goes away at shutdown.
//!
//! Every test makes its own randomly named task queue and S3 prefix. Run with
//! `cargo xtask localstack-test` (it starts LocalStack and sets the environment).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use stepq_aws::sqs::reply::{
    self, prune_stale_reply_queues, reply_queue_prefix, FallbackPoll, NotifyingResultBackend,
    ReplyQueue, ALIVE_AT_TAG, REPLY_ROLE, ROLE_TAG,
};
use stepq_aws::sqs::{SqsBroker, SqsConfig, REPLY_TO_LABEL};
use stepq_aws::S3ResultBackend;
use stepq_broker::{Receiver, ReceiverConfig, TaskMessage, TaskQueue, NO_REPLY_LABEL};
use stepq_results::{InMemoryResultBackend, ResultBackend, ResultError, TaskResult};
use tokio_util::sync::CancellationToken;

/// Longest wait for something that must happen.
const MUST_ARRIVE: Duration = Duration::from_secs(20);

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: LocalStack tests need a running LocalStack; run them with \
             `cargo xtask localstack-test`"
        )
    })
}

async fn sdk() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(env("STEPQ_TEST_AWS_ENDPOINT"))
        .load()
        .await
}

async fn sqs_client() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&sdk().await)
}

/// A fresh, randomly named standard queue; returns its URL.
async fn fresh_queue() -> String {
    let name = format!(
        "stepq-rtest-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    sqs_client()
        .await
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateQueue {name}: {e:?}"))
        .queue_url
        .expect("queue url")
}

/// A broker (with its own SQS client) on `queue_url`.
async fn broker(queue_url: &str) -> SqsBroker {
    let mut c = SqsConfig::new(queue_url);
    c.endpoint_url = Some(env("STEPQ_TEST_AWS_ENDPOINT"));
    c.config_source.wait_time_seconds = 1;
    let broker = SqsBroker::connect(c).await.expect("connect");
    stepq_broker::Broker::startup(&broker)
        .await
        .expect("startup");
    broker
}

/// An S3 result backend under a fresh prefix of the test bucket.
async fn s3_results(prefix: &str) -> S3ResultBackend {
    S3ResultBackend::new(&sdk().await, env("STEPQ_TEST_S3_BUCKET"), prefix)
}

fn fresh_prefix() -> String {
    format!("reply-test-{}", uuid::Uuid::new_v4().simple())
}

/// The S3 result backend, counting its reads: `get_result` is a GetObject, `is_result_ready`
/// a HeadObject, `wait_result` polls with GetObject.
struct Counting {
    inner: S3ResultBackend,
    gets: AtomicUsize,
    heads: AtomicUsize,
    waits: AtomicUsize,
    puts: AtomicUsize,
    deletes: AtomicUsize,
}

impl Counting {
    fn new(inner: S3ResultBackend) -> Self {
        Counting {
            inner,
            gets: AtomicUsize::new(0),
            heads: AtomicUsize::new(0),
            waits: AtomicUsize::new(0),
            puts: AtomicUsize::new(0),
            deletes: AtomicUsize::new(0),
        }
    }

    /// (PutObject, DeleteObject).
    fn writes(&self) -> (usize, usize) {
        (
            self.puts.load(Ordering::SeqCst),
            self.deletes.load(Ordering::SeqCst),
        )
    }

    /// (GetObject, HeadObject, polling waits).
    fn reads(&self) -> (usize, usize, usize) {
        (
            self.gets.load(Ordering::SeqCst),
            self.heads.load(Ordering::SeqCst),
            self.waits.load(Ordering::SeqCst),
        )
    }
}

#[async_trait]
impl ResultBackend for Counting {
    async fn startup(&self) -> Result<(), ResultError> {
        self.inner.startup().await
    }
    async fn set_result(&self, id: &str, r: &TaskResult) -> Result<(), ResultError> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.inner.set_result(id, r).await
    }
    async fn is_result_ready(&self, id: &str) -> Result<bool, ResultError> {
        self.heads.fetch_add(1, Ordering::SeqCst);
        self.inner.is_result_ready(id).await
    }
    async fn get_result(&self, id: &str, logs: bool) -> Result<TaskResult, ResultError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get_result(id, logs).await
    }
    async fn wait_result(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<TaskResult, ResultError> {
        self.waits.fetch_add(1, Ordering::SeqCst);
        self.inner.wait_result(id, timeout).await
    }
    async fn delete_result(&self, id: &str) -> Result<(), ResultError> {
        self.deletes.fetch_add(1, Ordering::SeqCst);
        self.inner.delete_result(id).await
    }
}

/// An orchestrator's task queue with reply-queue wiring over a counting S3 backend.
struct Orchestrator {
    queue: TaskQueue,
    results: Arc<NotifyingResultBackend<Counting>>,
    replies: ReplyQueue,
}

async fn orchestrator(queue_url: &str, prefix: &str, fallback: FallbackPoll) -> Orchestrator {
    orchestrator_with(queue_url, prefix, fallback, false).await
}

async fn orchestrator_with(
    queue_url: &str,
    prefix: &str,
    fallback: FallbackPoll,
    reply_only: bool,
) -> Orchestrator {
    let broker = broker(queue_url).await;
    let durable = Counting::new(s3_results(prefix).await);
    let replies = ReplyQueue::for_broker(&broker);
    let results = Arc::new(
        NotifyingResultBackend::new(durable, broker.sqs_client().clone())
            .with_reply_queue(replies.clone())
            .with_fallback_poll(fallback),
    );
    let queue = TaskQueue::new(Arc::new(broker), results.clone()).with_middleware(Arc::new(
        reply::ReplyToMiddleware::new(replies.clone()).with_reply_only(reply_only),
    ));
    queue.startup().await.expect("orchestrator startup");
    Orchestrator {
        queue,
        results,
        replies,
    }
}

/// A message sent by the orchestrator, as the worker's result carries its labels.
fn result_for(sent: &TaskMessage, value: serde_json::Value) -> TaskResult {
    let mut r = TaskResult::ok(value, 0.01);
    r.labels = sent.labels.clone();
    r
}

/// A worker's receiver on `queue_url` with task `double` registered; its results go to S3
/// under `prefix` (counted) and are announced on reply queues.
async fn counting_worker(
    queue_url: &str,
    prefix: &str,
) -> (Receiver, Arc<NotifyingResultBackend<Counting>>) {
    let worker_broker = broker(queue_url).await;
    let worker_results = Arc::new(reply::notifying(
        &worker_broker,
        Counting::new(s3_results(prefix).await),
    ));
    let worker_queue = TaskQueue::new(Arc::new(worker_broker), worker_results.clone());
    let mut receiver = Receiver::new(worker_queue);
    receiver.register_fn(
        "double",
        |x: i64| async move { Ok::<_, std::io::Error>(x * 2) },
    );
    (receiver, worker_results)
}

/// Whether the queue at `url` is gone.
async fn queue_is_gone(url: &str) -> bool {
    match sqs_client()
        .await
        .get_queue_attributes()
        .queue_url(url)
        .send()
        .await
    {
        Ok(_) => false,
        Err(e) => {
            let text = format!("{e:?}");
            assert!(
                text.contains("NonExistentQueue") || text.contains("QueueDoesNotExist"),
                "{text}"
            );
            true
        }
    }
}

const SLOW: FallbackPoll = FallbackPoll {
    first: Duration::from_secs(60),
    max: Duration::from_secs(60),
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "localstack"]
async fn a_workers_result_wakes_the_orchestrator_without_reading_s3() {
    let queue_url = fresh_queue().await;
    let prefix = fresh_prefix();
    let orch = orchestrator(&queue_url, &prefix, SLOW).await;

    // A worker process: its own broker and client, results to the same S3 prefix.
    let worker_broker = broker(&queue_url).await;
    let worker_results = reply::notifying(&worker_broker, s3_results(&prefix).await);
    let worker_queue = TaskQueue::new(Arc::new(worker_broker), Arc::new(worker_results));
    let mut receiver = Receiver::new(worker_queue).with_config(ReceiverConfig {
        concurrency: 2,
        ..ReceiverConfig::default()
    });
    receiver.register_fn(
        "double",
        |x: i64| async move { Ok::<_, std::io::Error>(x * 2) },
    );
    let stop = CancellationToken::new();
    let worker = tokio::spawn(receiver.run(stop.clone()));

    let handle = orch
        .queue
        .task::<i64, i64>("double")
        .kiq(&21)
        .await
        .unwrap();
    let url = orch
        .replies
        .url()
        .expect("the first send created the reply queue")
        .to_string();
    assert!(
        url.rsplit('/')
            .next()
            .unwrap()
            .starts_with(&reply_queue_prefix(&queue_url)),
        "{url}"
    );
    assert_eq!(handle.wait_result(Some(MUST_ARRIVE)).await.unwrap(), 42);
    assert_eq!(
        orch.results.durable().reads(),
        (0, 0, 0),
        "no GetObject, HeadObject or polling"
    );
    assert_eq!(orch.results.stats().answered_inline, 1);
    // The receive loop counts a notification just after it woke the waiter, so the count
    // may lag the wake-up by a moment.
    let counted = tokio::time::Instant::now() + Duration::from_secs(5);
    while orch.replies.stats().notifications == 0 && tokio::time::Instant::now() < counted {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(orch.replies.stats().notifications, 1);

    // The durable copy is there, with the reply address among its labels.
    let stored = s3_results(&prefix)
        .await
        .get_result(handle.task_id(), false)
        .await
        .unwrap();
    assert_eq!(stored.return_value, serde_json::json!(42));
    assert_eq!(
        stored.labels.get(REPLY_TO_LABEL).and_then(|v| v.as_str()),
        Some(url.as_str())
    );

    stop.cancel();
    let stats = worker.await.unwrap().unwrap();
    assert_eq!(stats.succeeded, 1);
    orch.queue.shutdown().await.unwrap();
    assert!(
        queue_is_gone(&url).await,
        "shutdown deletes the reply queue"
    );
    assert!(orch.replies.url().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "localstack"]
async fn a_large_result_is_read_from_s3_once() {
    let queue_url = fresh_queue().await;
    let prefix = fresh_prefix();
    let orch = orchestrator(&queue_url, &prefix, SLOW).await;
    let worker_broker = broker(&queue_url).await;
    let worker = reply::notifying(&worker_broker, s3_results(&prefix).await);

    let sent = orch.queue.kick(TaskMessage::new("big")).await.unwrap();
    let big = serde_json::json!("x".repeat(300 * 1024));
    worker
        .set_result(&sent.task_id, &result_for(&sent, big.clone()))
        .await
        .unwrap();
    assert_eq!(worker.stats().sent_by_reference, 1);
    let got = orch
        .results
        .wait_result(&sent.task_id, Some(MUST_ARRIVE))
        .await
        .unwrap();
    assert_eq!(got.return_value, big);
    assert_eq!(orch.results.durable().reads(), (1, 0, 0), "one GetObject");
    assert_eq!(orch.results.stats().read_after_notice, 1);
    orch.queue.shutdown().await.unwrap();
}

#[tokio::test]
#[ignore = "localstack"]
async fn results_saved_together_share_a_send_and_a_receive() {
    let queue_url = fresh_queue().await;
    let orch = orchestrator(&queue_url, &fresh_prefix(), SLOW).await;
    // The worker's durable copy stays in memory: this test is about the notifications.
    let worker_broker = broker(&queue_url).await;
    let worker = reply::notifying(&worker_broker, InMemoryResultBackend::new());

    let messages: Vec<TaskMessage> = (0..15).map(|_| TaskMessage::new("t")).collect();
    let sent = orch.queue.kick_batch(messages).await.unwrap();
    // One runtime thread: all fifteen are queued before the batcher runs.
    let results: Vec<TaskResult> = sent
        .iter()
        .enumerate()
        .map(|(i, m)| result_for(m, serde_json::json!(i)))
        .collect();
    let saves = sent
        .iter()
        .zip(&results)
        .map(|(m, r)| worker.set_result(&m.task_id, r));
    for r in futures::future::join_all(saves).await {
        r.unwrap();
    }
    let stats = worker.stats();
    assert_eq!((stats.sent_inline, stats.send_calls), (15, 2), "{stats:?}");
    for (i, m) in sent.iter().enumerate() {
        let r = orch
            .results
            .wait_result(&m.task_id, Some(MUST_ARRIVE))
            .await
            .unwrap();
        assert_eq!(r.return_value, serde_json::json!(i));
    }
    assert_eq!(orch.results.durable().reads(), (0, 0, 0));
    let replies = orch.replies.stats();
    assert_eq!(replies.notifications, 15);
    assert!(replies.receive_calls <= 15, "{replies:?}");
    orch.queue.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "localstack"]
async fn a_lost_notification_is_found_by_the_fallback_poll() {
    let queue_url = fresh_queue().await;
    let prefix = fresh_prefix();
    let fast = FallbackPoll {
        first: Duration::from_millis(200),
        max: Duration::from_secs(1),
    };
    let orch = orchestrator(&queue_url, &prefix, fast).await;
    let sent = orch.queue.kick(TaskMessage::new("t")).await.unwrap();
    assert!(sent.label(REPLY_TO_LABEL).is_some());

    // Stored without a notification (say the worker crashed right after the PutObject).
    s3_results(&prefix)
        .await
        .set_result(
            &sent.task_id,
            &result_for(&sent, serde_json::json!("found")),
        )
        .await
        .unwrap();
    let got = orch
        .results
        .wait_result(&sent.task_id, Some(MUST_ARRIVE))
        .await
        .unwrap();
    assert_eq!(got.return_value, serde_json::json!("found"));
    assert_eq!(orch.results.stats().answered_by_fallback, 1);
    orch.queue.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "localstack"]
async fn a_notification_to_a_deleted_queue_is_counted_and_the_result_kept() {
    let gone = fresh_queue().await;
    sqs_client()
        .await
        .delete_queue()
        .queue_url(&gone)
        .send()
        .await
        .unwrap();
    let prefix = fresh_prefix();
    let worker_broker = broker(&fresh_queue().await).await;
    let worker = reply::notifying(&worker_broker, s3_results(&prefix).await);
    let sent = TaskMessage::new("t").with_label(REPLY_TO_LABEL, gone.clone());
    worker
        .set_result(&sent.task_id, &result_for(&sent, serde_json::json!(1)))
        .await
        .unwrap();
    assert_eq!(worker.stats().send_failures, 1);
    assert!(s3_results(&prefix)
        .await
        .is_result_ready(&sent.task_id)
        .await
        .unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "localstack"]
async fn shutdown_deletes_the_queue_and_pending_waits_read_s3() {
    let queue_url = fresh_queue().await;
    let prefix = fresh_prefix();
    let orch = orchestrator(&queue_url, &prefix, SLOW).await;
    let sent = orch.queue.kick(TaskMessage::new("t")).await.unwrap();
    let url = orch.replies.url().unwrap().to_string();
    assert!(!queue_is_gone(&url).await);

    let waiter = {
        let results = orch.results.clone();
        let id = sent.task_id.clone();
        tokio::spawn(async move { results.wait_result(&id, Some(MUST_ARRIVE)).await })
    };
    orch.queue.shutdown().await.unwrap();
    assert!(queue_is_gone(&url).await);
    s3_results(&prefix)
        .await
        .set_result(
            &sent.task_id,
            &result_for(&sent, serde_json::json!("after")),
        )
        .await
        .unwrap();
    let got = waiter.await.unwrap().unwrap();
    assert_eq!(got.return_value, serde_json::json!("after"));
    // A message sent after shutdown carries no reply address.
    let later = orch.queue.kick(TaskMessage::new("t")).await.unwrap();
    assert_eq!(later.label(REPLY_TO_LABEL), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "localstack"]
async fn malformed_messages_on_the_reply_queue_are_dropped() {
    let queue_url = fresh_queue().await;
    let prefix = fresh_prefix();
    let orch = orchestrator(&queue_url, &prefix, SLOW).await;
    let sent = orch.queue.kick(TaskMessage::new("t")).await.unwrap();
    let url = orch.replies.url().unwrap().to_string();
    let sqs = sqs_client().await;
    for body in [
        "garbage",
        r#"{"task_id": ""}"#,
        r#"{"task_id": "nobody-expects-me"}"#,
    ] {
        sqs.send_message()
            .queue_url(&url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
    let worker_broker = broker(&queue_url).await;
    let worker = reply::notifying(&worker_broker, s3_results(&prefix).await);
    worker
        .set_result(&sent.task_id, &result_for(&sent, serde_json::json!("ok")))
        .await
        .unwrap();
    let got = orch
        .results
        .wait_result(&sent.task_id, Some(MUST_ARRIVE))
        .await
        .unwrap();
    assert_eq!(got.return_value, serde_json::json!("ok"));
    let deadline = tokio::time::Instant::now() + MUST_ARRIVE;
    loop {
        let stats = orch.replies.stats();
        if stats.malformed == 2 && stats.unexpected == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{stats:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    orch.queue.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "localstack"]
async fn a_reply_queue_deleted_under_the_orchestrator_hands_waits_to_s3() {
    let queue_url = fresh_queue().await;
    let prefix = fresh_prefix();
    let orch = orchestrator(&queue_url, &prefix, SLOW).await;
    let sent = orch.queue.kick(TaskMessage::new("t")).await.unwrap();
    let url = orch.replies.url().unwrap().to_string();
    sqs_client()
        .await
        .delete_queue()
        .queue_url(&url)
        .send()
        .await
        .unwrap();
    s3_results(&prefix)
        .await
        .set_result(&sent.task_id, &result_for(&sent, serde_json::json!("s3")))
        .await
        .unwrap();
    // The fallback poll would wait 60 s: only the switch to S3 can answer in time (the
    // poller gives a new queue 10 s to appear before it believes it is gone).
    let got = orch
        .results
        .wait_result(&sent.task_id, Some(Duration::from_secs(40)))
        .await
        .unwrap();
    assert_eq!(got.return_value, serde_json::json!("s3"));
    assert!(orch.replies.stats().lost);
    assert_eq!(orch.results.stats().durable_waits, 1);
    orch.queue.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "localstack"]
async fn stale_reply_queues_are_pruned() {
    let task_queue = format!("prune-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let prefix = reply_queue_prefix(&task_queue);
    let sqs = sqs_client().await;
    let create = |name: String, tags: Vec<(&'static str, String)>| {
        let sqs = sqs.clone();
        async move {
            let mut request = sqs.create_queue().queue_name(name);
            for (k, v) in tags {
                request = request.tags(k, v);
            }
            request.send().await.unwrap().queue_url.unwrap()
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let stale = create(
        format!("{prefix}stale"),
        vec![(ROLE_TAG, REPLY_ROLE.into()), (ALIVE_AT_TAG, "1000".into())],
    )
    .await;
    let alive = create(
        format!("{prefix}alive"),
        vec![
            (ROLE_TAG, REPLY_ROLE.into()),
            (ALIVE_AT_TAG, now.to_string()),
        ],
    )
    .await;
    let foreign = create(format!("{prefix}foreign"), vec![]).await;

    let deleted = prune_stale_reply_queues(&sqs, &prefix, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    assert!(queue_is_gone(&stale).await);
    assert!(!queue_is_gone(&alive).await);
    assert!(!queue_is_gone(&foreign).await);
    assert_eq!(
        reply::list_reply_queues(&sqs, &prefix).await.unwrap().len(),
        2
    );

    // Starting a reply queue prunes in the background too (and keeps its own).
    let replies = ReplyQueue::with_options(
        sqs.clone(),
        &task_queue,
        reply::ReplyQueueOptions {
            stale_after: Duration::from_secs(1),
            alive_heartbeat: Duration::from_millis(500),
            ..Default::default()
        },
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let own = replies.start().await.unwrap();
    let deadline = tokio::time::Instant::now() + MUST_ARRIVE;
    while !queue_is_gone(&alive).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the aged queue was not pruned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!queue_is_gone(&own).await);
    assert!(!queue_is_gone(&foreign).await);
    replies.shutdown().await.unwrap();
    assert!(queue_is_gone(&own).await);
    sqs.delete_queue().queue_url(&foreign).send().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "localstack"]
async fn reply_only_results_make_no_s3_request_at_all() {
    let queue_url = fresh_queue().await;
    let prefix = fresh_prefix();
    let orch = orchestrator_with(&queue_url, &prefix, SLOW, true).await;
    let (mut receiver, worker_results) = counting_worker(&queue_url, &prefix).await;
    receiver.register_fn("big", |_: serde_json::Value| async move {
        Ok::<_, std::io::Error>("y".repeat(300 * 1024))
    });
    let stop = CancellationToken::new();
    let worker = tokio::spawn(receiver.run(stop.clone()));

    let handle = orch.queue.task::<i64, i64>("double").kiq(&4).await.unwrap();
    assert_eq!(handle.wait_result(Some(MUST_ARRIVE)).await.unwrap(), 8);
    orch.results.delete_result(handle.task_id()).await.unwrap();
    assert_eq!(
        worker_results.durable().writes(),
        (0, 0),
        "no PutObject on the worker"
    );
    assert_eq!(orch.results.durable().reads(), (0, 0, 0));
    assert_eq!(
        orch.results.durable().writes(),
        (0, 0),
        "no DeleteObject either"
    );
    assert!(!s3_results(&prefix)
        .await
        .is_result_ready(handle.task_id())
        .await
        .unwrap());

    // Too large to go inline: stored durably and read once, as without reply-only.
    let big = orch
        .queue
        .task::<serde_json::Value, String>("big")
        .kiq(&serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(
        big.wait_result(Some(MUST_ARRIVE)).await.unwrap().len(),
        300 * 1024
    );
    assert_eq!(worker_results.durable().writes(), (1, 0));
    assert_eq!(orch.results.durable().reads(), (1, 0, 0));
    orch.results.delete_result(big.task_id()).await.unwrap();
    assert_eq!(orch.results.durable().writes(), (0, 1));

    stop.cancel();
    worker.await.unwrap().unwrap();
    // Counted once the send returned, which may be after the orchestrator already had the
    // reply: read once the worker has stopped. The large result did not go reply-only.
    assert_eq!(worker_results.stats().sent_reply_only, 1);
    orch.queue.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "localstack"]
async fn a_no_reply_task_makes_no_reply_queue_and_its_result_is_stored() {
    let queue_url = fresh_queue().await;
    let prefix = fresh_prefix();
    let fast = FallbackPoll {
        first: Duration::from_millis(20),
        max: Duration::from_millis(100),
    };
    let orch = orchestrator_with(&queue_url, &prefix, fast, true).await;
    let (receiver, worker_results) = counting_worker(&queue_url, &prefix).await;
    let stop = CancellationToken::new();
    let worker = tokio::spawn(receiver.run(stop.clone()));

    let mut message = TaskMessage::new("double").with_label(NO_REPLY_LABEL, "true");
    message.args = vec![serde_json::json!(5)];
    let sent = orch.queue.kick(message).await.unwrap();
    assert!(
        !sent.labels.contains_key(REPLY_TO_LABEL),
        "{:?}",
        sent.labels
    );
    assert!(
        orch.replies.url().is_none(),
        "no reply queue is created for a task nobody waits on"
    );
    let handle = stepq_broker::TaskHandle::<i64>::new(
        orch.queue.clone(),
        sent.task_id.clone(),
        sent.task_name.clone(),
    );
    assert_eq!(handle.wait_result(Some(MUST_ARRIVE)).await.unwrap(), 10);
    assert_eq!(
        worker_results.durable().writes(),
        (1, 0),
        "the result is stored durably"
    );
    assert_eq!(worker_results.stats().sent_reply_only, 0);

    stop.cancel();
    worker.await.unwrap().unwrap();
    orch.queue.shutdown().await.unwrap();
}

/// A companion of a task (a key made of its id, a `.` and more: a progress entry) travels the
/// reply queue like its result, while that result is still to come: kept when it arrives
/// before its waiter, woken when it arrives after, no S3 request for either with reply-only
/// results; once the task's own result was claimed, a later companion is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "localstack"]
async fn companions_of_a_task_travel_the_reply_queue_while_its_result_is_to_come() {
    let queue_url = fresh_queue().await;
    let prefix = fresh_prefix();
    let orch = orchestrator_with(&queue_url, &prefix, SLOW, true).await;
    let worker_broker = broker(&queue_url).await;
    let worker_results = reply::notifying(&worker_broker, Counting::new(s3_results(&prefix).await));

    let mut message = TaskMessage::new("double");
    message.args = vec![serde_json::json!(5)];
    let sent = orch.queue.kick(message).await.unwrap();
    let first = format!("{}.progress.1", sent.task_id);
    let second = format!("{}.progress.2", sent.task_id);

    // Notified before anyone waits: kept.
    worker_results
        .set_result(&first, &result_for(&sent, serde_json::json!("one")))
        .await
        .unwrap();
    let got = orch
        .results
        .wait_result(&first, Some(MUST_ARRIVE))
        .await
        .unwrap();
    assert_eq!(got.return_value, serde_json::json!("one"));
    orch.results.delete_result(&first).await.unwrap();

    // Waited for first: woken by the notification.
    let waiting = {
        let results = orch.results.clone();
        let key = second.clone();
        tokio::spawn(async move { results.wait_result(&key, Some(MUST_ARRIVE)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    worker_results
        .set_result(&second, &result_for(&sent, serde_json::json!("two")))
        .await
        .unwrap();
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(got.return_value, serde_json::json!("two"));
    orch.results.delete_result(&second).await.unwrap();

    // The task's own result, then a late companion: dropped by the dispatch.
    worker_results
        .set_result(&sent.task_id, &result_for(&sent, serde_json::json!(10)))
        .await
        .unwrap();
    let got = orch
        .results
        .wait_result(&sent.task_id, Some(MUST_ARRIVE))
        .await
        .unwrap();
    assert_eq!(got.return_value, serde_json::json!(10));
    orch.results.delete_result(&sent.task_id).await.unwrap();
    let late = format!("{}.progress.3", sent.task_id);
    worker_results
        .set_result(&late, &result_for(&sent, serde_json::json!("late")))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + MUST_ARRIVE;
    while orch.replies.stats().unexpected == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            orch.replies.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let stats = orch.results.stats();
    assert_eq!(
        (stats.fallback_reads, stats.durable_waits),
        (0, 0),
        "{stats:?}"
    );
    assert_eq!(stats.answered_inline, 3, "{stats:?}");
    assert_eq!(orch.replies.stats().notifications, 3);
    assert_eq!(worker_results.durable().writes(), (0, 0), "no PutObject");
    assert_eq!(orch.results.durable().reads(), (0, 0, 0), "no S3 read");
    assert_eq!(orch.results.durable().writes(), (0, 0), "no DeleteObject");
    orch.queue.shutdown().await.unwrap();
}
