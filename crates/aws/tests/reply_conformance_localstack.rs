//! The result backend conformance suite (one test per check) over the reply-queue decorator on
//! LocalStack, S3 underneath:
//!
//! - `through_the_reply_queue`: the orchestrator's wiring from `reply::attach` (waits through
//!   its reply queue, reads and deletes through S3) with a worker's `reply::notifying` backend
//!   storing the results and sending the notifications, as in a real run.
//! - `worker_side`: a worker's `NotifyingResultBackend` alone (no reply queue): results that
//!   carry no reply address are stored and read as by the durable backend.
//!
//! Run with `cargo xtask localstack-test -- -p stepq-aws`.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::LocalStackEnv;
use stepq_aws::sqs::reply::{self, NotifyingResultBackend, ReplyToMiddleware};
use stepq_aws::sqs::{SqsBroker, SqsConfig, REPLY_TO_LABEL};
use stepq_aws::S3ResultBackend;
use stepq_broker::{Middleware, TaskMessage};
use stepq_results::conformance::ResultBackendFactory;
use stepq_results::{ResultBackend, ResultError, TaskResult};

/// A fresh, random S3 prefix of the test bucket.
fn fresh_prefix() -> String {
    format!("reply-conformance-{}", uuid::Uuid::new_v4().simple())
}

/// The orchestrator and worker halves of the decorator on one task queue and S3 prefix, seen
/// as one [`ResultBackend`] by the suite. It stands in for what the broker and the receiver do
/// between them: a task id is "sent" once, on first use, through the [`ReplyToMiddleware`]
/// (which notes that a reply is expected); the worker's result carries the message's reply
/// address, as the receiver copies message labels into results; and that label, which the
/// suite's results never had, is taken off again on the way back.
struct ThroughReplyQueue {
    middleware: Arc<ReplyToMiddleware>,
    orchestrator: Arc<NotifyingResultBackend<S3ResultBackend>>,
    worker: NotifyingResultBackend<S3ResultBackend>,
    /// Task ids already sent; held while sending, so a result is never saved for a task whose
    /// message is still on its way.
    sent: tokio::sync::Mutex<HashSet<String>>,
}

impl ThroughReplyQueue {
    /// Fresh wiring: a randomly named task queue (never created: the reply queue only takes
    /// its name from it, and the worker's half only needs the SQS client) and S3 prefix.
    async fn fresh() -> Self {
        let env = LocalStackEnv::from_env();
        let sdk = env.sdk_config().await;
        let name = format!(
            "stepq-rconf-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let mut config = SqsConfig::new(format!("{}/{name}", env.queue_url_prefix()));
        config.endpoint_url = Some(env.endpoint.clone());
        config.region_name = Some(env.region.clone());
        let broker = SqsBroker::from_sdk_config(config, &sdk).unwrap();
        let prefix = fresh_prefix();
        let wiring = reply::attach(&broker, S3ResultBackend::new(&sdk, &env.bucket, &prefix));
        let worker = reply::notifying(&broker, S3ResultBackend::new(&sdk, &env.bucket, &prefix));
        ThroughReplyQueue {
            middleware: wiring.middleware,
            orchestrator: wiring.results,
            worker,
            sent: tokio::sync::Mutex::new(HashSet::new()),
        }
    }

    /// Sends `task_id` through the middleware if it was not sent yet (creating the reply queue
    /// on the first send); the reply address.
    async fn send(&self, task_id: &str) -> String {
        let mut sent = self.sent.lock().await;
        if sent.insert(task_id.to_string()) {
            let mut message = TaskMessage::new("conformance");
            message.task_id = task_id.to_string();
            self.middleware.pre_send(message).await.unwrap();
        }
        self.middleware
            .reply_queue()
            .url()
            .expect("the reply queue was created by the first send")
            .to_string()
    }
}

/// Takes the reply address off a result read back.
fn unlabelled(result: Result<TaskResult, ResultError>) -> Result<TaskResult, ResultError> {
    result.map(|mut r| {
        r.labels.remove(REPLY_TO_LABEL);
        r
    })
}

#[async_trait]
impl ResultBackend for ThroughReplyQueue {
    async fn startup(&self) -> Result<(), ResultError> {
        self.orchestrator.startup().await?;
        self.worker.startup().await
    }

    async fn shutdown(&self) -> Result<(), ResultError> {
        self.worker.shutdown().await?;
        self.orchestrator.shutdown().await
    }

    /// The worker stores the result (with the message's reply address) and notifies.
    async fn set_result(&self, task_id: &str, result: &TaskResult) -> Result<(), ResultError> {
        let url = self.send(task_id).await;
        let mut labelled = result.clone();
        labelled
            .labels
            .insert(REPLY_TO_LABEL.to_string(), serde_json::json!(url));
        self.worker.set_result(task_id, &labelled).await
    }

    async fn is_result_ready(&self, task_id: &str) -> Result<bool, ResultError> {
        self.orchestrator.is_result_ready(task_id).await
    }

    async fn get_result(&self, task_id: &str, with_logs: bool) -> Result<TaskResult, ResultError> {
        unlabelled(self.orchestrator.get_result(task_id, with_logs).await)
    }

    /// The orchestrator waits for a task it sent (a wait comes after the send, as in a run).
    async fn wait_result(
        &self,
        task_id: &str,
        timeout: Option<Duration>,
    ) -> Result<TaskResult, ResultError> {
        self.send(task_id).await;
        unlabelled(self.orchestrator.wait_result(task_id, timeout).await)
    }

    async fn delete_result(&self, task_id: &str) -> Result<(), ResultError> {
        self.orchestrator.delete_result(task_id).await
    }
}

/// Fresh reply-queue wiring per check.
struct Notified;

#[async_trait]
impl ResultBackendFactory for Notified {
    async fn fresh(&self) -> Arc<dyn ResultBackend> {
        Arc::new(ThroughReplyQueue::fresh().await)
    }
}

stepq_results::result_backend_conformance_tests!(
    #[ignore = "localstack"]
    through_the_reply_queue,
    Notified,
    // Cannot apply by design: a result overwritten while the notification of the first one is still
    // unclaimed may be answered from either notification (a waiter takes the first to arrive,
    // and SQS standard queues keep no order), so `wait_result` after an overwrite returns *a*
    // stored result of the task, not necessarily the last. `get_result` after an overwrite
    // reads S3 and is covered by the other checks.
    except[check_overwrite]
);

/// A worker's decorator alone, over S3 under a fresh prefix.
struct WorkerSide;

#[async_trait]
impl ResultBackendFactory for WorkerSide {
    async fn fresh(&self) -> Arc<dyn ResultBackend> {
        let env = LocalStackEnv::from_env();
        let sdk = env.sdk_config().await;
        let durable = S3ResultBackend::new(&sdk, &env.bucket, &fresh_prefix());
        Arc::new(NotifyingResultBackend::new(
            durable,
            aws_sdk_sqs::Client::new(&sdk),
        ))
    }
}

stepq_results::result_backend_conformance_tests!(
    #[ignore = "localstack"]
    worker_side,
    WorkerSide
);
