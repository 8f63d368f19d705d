//! The SQS flavour on LocalStack: a fresh random task queue, three real receivers each with
//! its own cancel inbox, markers on S3. Run with `cargo xtask localstack-test -- -p stepq-aws`.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::LocalStackEnv;
use stepq_aws::sqs::cancel_channel::{
    SqsFanoutChannel, SqsFanoutOptions, ALIVE_AT_TAG, INBOX_ROLE, ROLE_TAG,
};
use stepq_aws::sqs::{SqsBroker, SqsConfig};
use stepq_aws::S3CancelStore;
use stepq_broker::TaskQueue;
use stepq_cancel::conformance::*;
use stepq_cancel::{CancellableBroker, Canceller, CANCELED_KIND};
use stepq_results::{InMemoryResultBackend, ResultBackend, TaskResult};

const FIVE_SECONDS: Duration = Duration::from_secs(5);

struct Sqs {
    sqs: aws_sdk_sqs::Client,
    task_queue_url: String,
    broker: CancellableBroker<SqsBroker>,
    /// The same fan-out channel the broker uses, for inspecting inboxes.
    channel: SqsFanoutChannel,
    queue: TaskQueue,
    results: Arc<InMemoryResultBackend>,
}

impl Sqs {
    /// A fresh task queue, a cancel channel fanning out under `<queue>-cancels`, markers
    /// under a fresh S3 prefix.
    async fn new() -> Self {
        Self::with_options(SqsFanoutOptions {
            resync_after: None,
            ..SqsFanoutOptions::default()
        })
        .await
    }

    async fn with_options(options: SqsFanoutOptions) -> Self {
        let env = LocalStackEnv::from_env();
        let sdk = env.sdk_config().await;
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let name = format!(
            "stepq-cancel-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let task_queue_url = sqs
            .create_queue()
            .queue_name(&name)
            .send()
            .await
            .expect("LocalStack creates the task queue")
            .queue_url
            .unwrap();
        let mut config = SqsConfig::new(&task_queue_url);
        config.endpoint_url = Some(env.endpoint.clone());
        config.region_name = Some(env.region.clone());
        // One message per receive, so no worker holds tasks it has no slot for.
        config.config_source.max_number_of_messages = 1;
        config.config_source.wait_time_seconds = 1;
        let inner = SqsBroker::from_sdk_config(config, &sdk).unwrap();
        let store = Arc::new(S3CancelStore::new(&sdk, &env.bucket, &name));
        let cancel_url =
            stepq_aws::sqs::cancel_channel::derive_cancel_queue_url(&task_queue_url).unwrap();
        let channel =
            SqsFanoutChannel::new(inner.sqs_client().clone(), &cancel_url, options).unwrap();
        let broker =
            CancellableBroker::new(inner, Canceller::new(store, Arc::new(channel.clone())));
        let results = Arc::new(InMemoryResultBackend::new());
        let queue = TaskQueue::new(Arc::new(broker.clone()), results.clone());
        queue
            .startup()
            .await
            .expect("queue, bucket and channel start");
        Sqs {
            sqs,
            task_queue_url,
            broker,
            channel,
            queue,
            results,
        }
    }

    async fn worker(
        &self,
        name: &str,
        concurrency: usize,
        grace: Duration,
        tasks: &Tasks,
    ) -> RunningWorker {
        RunningWorker::start(
            &self.queue,
            self.broker.canceller(),
            name,
            concurrency,
            grace,
            tasks,
        )
        .await
    }

    /// Shuts the queue down (deleting the inboxes) and deletes the task queue.
    async fn finish(self) {
        self.queue.shutdown().await.unwrap();
        assert!(
            self.channel.targets().await.unwrap().is_empty(),
            "every inbox was deleted on shutdown"
        );
        self.sqs
            .delete_queue()
            .queue_url(&self.task_queue_url)
            .send()
            .await
            .unwrap();
    }
}

fn canceled(result: &TaskResult) -> &str {
    assert!(result.is_err, "{result:?}");
    let error = result.error.as_ref().unwrap();
    assert_eq!(error.kind, CANCELED_KIND, "{result:?}");
    &error.message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "localstack"]
async fn sqs_a_long_task_is_cancelled_within_five_seconds() {
    let s = Sqs::new().await;
    let (tasks, mut started) = tasks();
    let worker = s.worker("w1", 2, Duration::from_secs(30), &tasks).await;
    assert_eq!(
        s.channel.targets().await.unwrap().len(),
        1,
        "the worker's inbox"
    );
    s.queue.kick(message("long", "long-1")).await.unwrap();
    await_starts(&mut started, 1).await;

    let asked = Instant::now();
    s.broker.cancel_task("long-1").await.unwrap();
    let result = s.results.wait_result("long-1", Some(WAIT)).await.unwrap();
    assert!(asked.elapsed() < FIVE_SECONDS, "took {:?}", asked.elapsed());
    assert_eq!(canceled(&result), "cancelled on w1");
    worker.stop().await;
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "localstack"]
async fn sqs_twenty_cancels_on_three_workers_all_reach_the_right_worker() {
    let s = Sqs::new().await;
    let (tasks, mut started) = tasks();
    let mut workers = Vec::new();
    for name in ["w1", "w2", "w3"] {
        workers.push(s.worker(name, 8, Duration::from_secs(30), &tasks).await);
    }
    assert_eq!(
        s.channel.targets().await.unwrap().len(),
        3,
        "one inbox per worker"
    );
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
    assert!(
        per_worker.len() >= 2,
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
        assert_eq!(canceled(&result), format!("cancelled on {}", runs_on[id]));
    }
    let mut cancelled_running = 0;
    for worker in workers {
        for id in &ids {
            tokio::time::timeout(WAIT, worker.listener.cancelled().wait_for(id))
                .await
                .expect("every worker hears every cancel");
        }
        let (_, listener) = worker.stop().await;
        cancelled_running += listener.cancelled_running;
    }
    assert_eq!(cancelled_running, 20);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "localstack"]
async fn sqs_a_task_cancelled_before_it_starts_never_runs() {
    let s = Sqs::new().await;
    let (tasks, _started) = tasks();
    let mut workers = Vec::new();
    for name in ["w1", "w2", "w3"] {
        workers.push(s.worker(name, 2, Duration::from_secs(30), &tasks).await);
    }
    let ids: Vec<String> = (0..5).map(|i| format!("pre-{i}")).collect();
    for id in &ids {
        s.broker.cancel_task(id).await.unwrap();
    }
    for worker in &workers {
        for id in &ids {
            tokio::time::timeout(WAIT, worker.listener.cancelled().wait_for(id))
                .await
                .expect("every worker hears every cancel");
        }
    }
    // A worker starting now finds the markers on S3.
    let late = s.worker("late", 2, Duration::from_secs(30), &tasks).await;
    for id in &ids {
        assert!(
            late.listener.cancelled().contains(id),
            "{id} read from the store"
        );
    }
    workers.push(late);
    s.queue
        .kick_batch(ids.iter().map(|id| message("probe", id)).collect())
        .await
        .unwrap();
    for id in &ids {
        let result = s.results.wait_result(id, Some(WAIT)).await.unwrap();
        assert!(canceled(&result).contains("before it started"));
    }
    assert!(!tasks.ran.load(Ordering::SeqCst), "no probe ran");
    for worker in workers {
        worker.stop().await;
    }
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "localstack"]
async fn sqs_a_task_ignoring_its_token_is_aborted_after_the_grace_period() {
    let s = Sqs::new().await;
    let (tasks, mut started) = tasks();
    let grace = Duration::from_millis(500);
    let worker = s.worker("w1", 2, grace, &tasks).await;
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
    assert!(canceled(&result).contains("grace period"));
    assert!(tasks.dropped.load(Ordering::SeqCst));
    let (stats, _) = worker.stop().await;
    assert_eq!((stats.failed, stats.released), (1, 0));
    // Acked: nothing is left on the task queue.
    let depth = s.broker.inner().queue_depth().await.unwrap();
    assert_eq!((depth.visible, depth.not_visible), (0, 0));
    s.finish().await;
}

#[tokio::test]
#[ignore = "localstack"]
async fn sqs_a_malformed_cancel_message_is_reported_and_ignored() {
    let logs = CapturedLogs::default();
    let _guard = logs.install();
    let s = Sqs::new().await;
    let (tasks, mut started) = tasks();
    let worker = s.worker("w1", 2, Duration::from_secs(30), &tasks).await;
    for inbox in s.channel.targets().await.unwrap() {
        s.sqs
            .send_message()
            .queue_url(&inbox)
            .message_body("this is not a cancel")
            .send()
            .await
            .unwrap();
    }
    s.queue.kick(message("long", "after-bad")).await.unwrap();
    await_starts(&mut started, 1).await;
    s.broker.cancel_task("after-bad").await.unwrap();
    let result = s
        .results
        .wait_result("after-bad", Some(WAIT))
        .await
        .unwrap();
    assert_eq!(canceled(&result), "cancelled on w1");
    let (_, listener) = worker.stop().await;
    assert_eq!(listener.heard, 1);
    let text = logs.text();
    assert!(
        text.contains("ignoring a malformed cancel message"),
        "{text}"
    );
    assert!(text.contains("this is not a cancel"), "{text}");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "localstack"]
async fn sqs_stale_inboxes_are_pruned_and_the_shared_queue_still_hears_cancels() {
    let s = Sqs::new().await;
    let prefix = s.channel.inbox_prefix().to_string();
    // An inbox of a worker that died an hour ago, and a reference-style shared cancel queue.
    let ghost = s
        .sqs
        .create_queue()
        .queue_name(format!("{prefix}-ghost-deadbeef"))
        .tags(ROLE_TAG, INBOX_ROLE)
        .tags(ALIVE_AT_TAG, "1000")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let shared = s
        .sqs
        .create_queue()
        .queue_name(&prefix)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let (tasks, _started) = tasks();
    let worker = s.worker("w1", 1, Duration::from_secs(30), &tasks).await;

    // Pruning runs in the background of the new subscription; give it a bounded while.
    let deadline = Instant::now() + WAIT;
    while s.channel.targets().await.unwrap().contains(&ghost) {
        assert!(Instant::now() < deadline, "the stale inbox was not pruned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let targets = s.channel.targets().await.unwrap();
    assert_eq!(
        targets.len(),
        2,
        "the live inbox and the shared queue: {targets:?}"
    );

    s.broker.cancel_task("for-the-reference").await.unwrap();
    let got = s
        .sqs
        .receive_message()
        .queue_url(&shared)
        .wait_time_seconds(5)
        .send()
        .await
        .unwrap();
    let body = got.messages()[0].body().unwrap();
    let notice: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(notice["task_name"], "canceller");
    assert_eq!(notice["kwargs"]["__cancel_task_id__"], "for-the-reference");

    worker.stop().await;
    s.sqs
        .delete_queue()
        .queue_url(&shared)
        .send()
        .await
        .unwrap();
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "localstack"]
async fn sqs_a_worker_whose_inbox_disappears_gets_a_new_one_and_rereads_the_markers() {
    let s = Sqs::with_options(SqsFanoutOptions {
        resync_after: None,
        wait_time_seconds: 1,
        ..SqsFanoutOptions::default()
    })
    .await;
    let (tasks, _started) = tasks();
    let worker = s.worker("w1", 1, Duration::from_secs(30), &tasks).await;
    let inbox = s.channel.targets().await.unwrap().pop().unwrap();
    // Past the window in which a new queue that does not answer is waited for.
    tokio::time::sleep(Duration::from_secs(11)).await;
    s.sqs.delete_queue().queue_url(&inbox).send().await.unwrap();
    // Sent while the worker has no inbox: only the marker records it.
    s.broker.cancel_task("during-the-gap").await.unwrap();
    tokio::time::timeout(WAIT, worker.listener.cancelled().wait_for("during-the-gap"))
        .await
        .expect("the worker re-read the markers after recreating its inbox");
    let targets = s.channel.targets().await.unwrap();
    assert_eq!(targets.len(), 1, "{targets:?}");
    assert_ne!(targets[0], inbox, "a new inbox");
    // And it hears live cancels on the new inbox.
    s.broker.cancel_task("after-the-gap").await.unwrap();
    tokio::time::timeout(WAIT, worker.listener.cancelled().wait_for("after-the-gap"))
        .await
        .expect("the new inbox receives cancels");
    worker.stop().await;
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "localstack"]
async fn sqs_markers_stored_without_a_notice_are_found_after_the_settle_window() {
    let s = Sqs::with_options(SqsFanoutOptions {
        resync_after: Some(Duration::from_secs(2)),
        wait_time_seconds: 1,
        ..SqsFanoutOptions::default()
    })
    .await;
    let (tasks, _started) = tasks();
    let worker = s.worker("w1", 1, Duration::from_secs(30), &tasks).await;
    // As if the cancel's ListQueues had not shown the brand-new inbox yet.
    s.broker
        .canceller()
        .store()
        .put(&stepq_cancel::CancelMarker::new("unannounced", None).unwrap())
        .await
        .unwrap();
    tokio::time::timeout(WAIT, worker.listener.cancelled().wait_for("unannounced"))
        .await
        .expect("the settle-window re-read finds the marker");
    worker.stop().await;
    s.finish().await;
}

#[tokio::test]
#[ignore = "localstack"]
async fn sqs_a_cancel_that_reaches_only_some_inboxes_is_a_partial_wake_up() {
    let s = Sqs::new().await;
    let (tasks, _started) = tasks();
    let worker = s.worker("w1", 1, Duration::from_secs(30), &tasks).await;
    // An inbox refusing bodies over 1 KiB.
    let tiny = s
        .sqs
        .create_queue()
        .queue_name(format!("{}-tiny-0000", s.channel.inbox_prefix()))
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::MaximumMessageSize,
            "1024",
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let reason = "x".repeat(2000);
    let err = s
        .broker
        .cancel_task_with_reason("big-reason", &reason)
        .await
        .unwrap_err();
    match &err {
        stepq_cancel::CancelError::PartialWakeUp { reached, total, .. } => {
            assert_eq!((*reached, *total), (1, 2), "{err}")
        }
        other => panic!("expected a partial wake-up, got {other}"),
    }
    // The marker is stored and the live worker heard it.
    assert!(s
        .broker
        .canceller()
        .is_cancelled("big-reason")
        .await
        .unwrap());
    tokio::time::timeout(WAIT, worker.listener.cancelled().wait_for("big-reason"))
        .await
        .unwrap();
    worker.stop().await;
    s.sqs.delete_queue().queue_url(&tiny).send().await.unwrap();
    s.finish().await;
}
