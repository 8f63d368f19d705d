//! Result notification through a reply queue: the orchestrator learns that a step finished
//! from one message on its own SQS queue instead of polling S3.
//!
//! The reference polls S3 with HEAD every 0.5 s per in-flight step, then GETs the result: at
//! least two requests per step and up to half a second of latency. Here:
//!
//! 1. The orchestrator process owns a [`ReplyQueue`]: a standard SQS queue named
//!    `<task queue>-reply-<16 hex>`, created on the first send (one CreateQueue), with a 30 s
//!    visibility timeout. One background task long-polls it (up to ten messages per call;
//!    20 s when no result is awaited, 5 s while one is), so an idle orchestrator makes three
//!    requests a minute, one waiting on long steps twelve, and a busy one receives up to ten
//!    notifications per request.
//! 2. [`ReplyToMiddleware`] labels every message it sends `reply_to = <queue URL>` and notes
//!    the task id as expecting a reply.
//! 3. On the worker, the [`Receiver`](stepq_broker::Receiver) copies the message labels into the
//!    result, and [`NotifyingResultBackend::set_result`] writes the durable result (S3) first,
//!    then sends `{task_id, result}` to the `reply_to` queue — the result inline (without its
//!    log) when the message stays under [`INLINE_RESULT_LIMIT`], else the task id only.
//!    Notifications saved at the same moment share one SendMessageBatch (no timer).
//! 4. On the orchestrator, [`NotifyingResultBackend::wait_result`] waits for the notification:
//!    an inline result is returned without touching S3; a by-reference one costs one GetObject.
//!    A slow poll of the durable backend ([`FallbackPoll`]: after 2 s, doubling to 30 s)
//!    races it, so a lost notification delays a step, never loses it.
//! 5. A *companion* of a task — a key made of its task id, a `.` and more, such as the
//!    progress entry `<task id>.progress.1` a worker stores as a step starts — is sent and
//!    awaited the same way while the task's own result is still to come (the worker copies
//!    the message's labels onto it), but without the fallback poll: the result carries what
//!    a companion would have said, so a lost one only comes late (and a long step's wait makes
//!    no S3 request); once the result was claimed, later companions are dropped.
//!
//! Reply-only results (opt-in, [`ReplyToMiddleware::with_reply_only`]): the orchestrator also
//! labels its messages [`REPLY_ONLY_LABEL`], and a worker whose result fits inline sends it in
//! the notification only — no PutObject, and no DeleteObject when the orchestrator is done
//! with it: two requests and two round trips fewer per task. SQS keeps the message durably, and
//! the orchestrator keeps the result in memory until it deletes it; a worker that cannot send
//! the notification stores the result durably instead. What is given up: a result whose
//! notification was accepted by a reply queue deleted at that very moment (by hand, while the
//! run goes on) is gone, where the durable copy would still be found. Off by default here;
//! the `stepq` app factory turns it on unless its config sets `s3.store_results = true`.
//!
//! Received notifications are not deleted one by one: the poller deletes them ten at a time
//! (one DeleteMessageBatch per ten steps, off the critical path), and all it holds before a
//! long poll that could outlast their 30 s visibility timeout, so they do not come back during
//! a run. The short visibility is for the answer of a ReceiveMessage lost on the way (a
//! network failure after SQS handed the messages out, as in an outage): its notifications come
//! back 30 s later instead of staying hidden — in reply-only mode they are the results' only
//! copy. A notification that comes back anyway is dropped as a duplicate. The 5 s wait while
//! results are awaited keeps that rare: a long poll whose connection an outage cut may still
//! be served by SQS to its end (LocalStack does), taking the first notifications sent after
//! the outage; a 5 s poll has ended before an outage longer than that is over.
//!
//! Failure handling:
//! - The reply queue cannot be created (no `sqs:CreateQueue` permission, SQS down): messages
//!   are sent without `reply_to` and their results are awaited through the durable backend's
//!   own `wait_result`, as without this module. A run never fails because of it.
//! - A notification cannot be sent, is malformed, or names a task nobody here waits for: it
//!   is logged and counted; the fallback poll finds the result.
//! - The reply queue is deleted under a running orchestrator: every waiter, present and
//!   future, switches to the durable backend's `wait_result`.
//! - The orchestrator process dies without [`ReplyQueue::shutdown`] (SIGKILL, a crash): its
//!   queue is left behind. Queues are tagged `stepq:role = reply-queue` and re-tagged
//!   `stepq:alive-at` every 10 min; the next orchestrator on the same task queue deletes
//!   those silent for an hour ([`prune_stale_reply_queues`], also usable from tooling).
//!
//! Permissions: the orchestrator needs `sqs:CreateQueue`, `sqs:TagQueue`,
//! `sqs:ReceiveMessage`, `sqs:DeleteMessage`, `sqs:DeleteQueue`, `sqs:ListQueues` and
//! `sqs:ListQueueTags` on `<task queue>-reply-*`; workers need `sqs:SendMessage` there.
//!
//! Wiring: [`attach`] gives the orchestrator's middleware, result backend and reply queue;
//! [`notifying`] gives a worker's result backend. Both make no request.
//!
//! Layout: `notify/` is the worker half (the [`NotifyingResultBackend`] decorator and the
//! batching notifier), `wait/` the orchestrator half (the [`ReplyQueue`], its poller, the
//! in-memory dispatch that wakes waiters, the waiting side of the result backend, the
//! [`ReplyToMiddleware`], queue names and pruning), `wire.rs` the message body both read,
//! and this file the wiring.
//!
//! ```no_run
//! # async fn demo() -> Result<(), stepq_broker::BrokerError> {
//! use std::sync::Arc;
//! use stepq_aws::sqs::{reply, SqsBroker, SqsConfig};
//! use stepq_broker::TaskQueue;
//! use stepq_aws::S3ResultBackend;
//!
//! let config = SqsConfig::new("https://sqs.us-east-1.amazonaws.com/123456789012/tasks");
//! let sdk = SqsBroker::load_sdk_config(&config).await;
//! let broker = SqsBroker::from_sdk_config(config, &sdk)?;
//! let wiring = reply::attach(&broker, S3ResultBackend::new(&sdk, "my-bucket", "stepq"));
//! let queue = TaskQueue::new(Arc::new(broker), wiring.results.clone())
//!     .with_middleware(wiring.middleware.clone());
//! queue.startup().await?;
//! let handle = queue.task::<i64, i64>("double").kiq(&21).await?; // creates the reply queue
//! let doubled = handle.wait_result(None).await; // woken by the worker's notification
//! queue.shutdown().await?; // deletes the reply queue
//! # Ok(()) }
//! ```

mod notify;
mod wait;
mod wire;

use std::sync::Arc;

use stepq_results::ResultBackend;

pub use notify::{NotifyStats, NotifyingResultBackend};
pub use wait::{
    list_reply_queues, prune_stale_reply_queues, reply_queue_name, reply_queue_prefix,
    FallbackPoll, ReplyQueue, ReplyQueueOptions, ReplyStats, ReplyToMiddleware, ALIVE_AT_TAG,
    OWNER_TAG, REPLY_QUEUE_INFIX, REPLY_ROLE, REPLY_VISIBILITY_TIMEOUT, ROLE_TAG,
};

use super::SqsBroker;

/// Label carrying the URL of the queue a task's result notification goes to.
pub const REPLY_TO_LABEL: &str = "reply_to";

/// Label asking the worker to send a result that fits inline in the notification only,
/// without the durable copy (see [`ReplyToMiddleware::with_reply_only`]).
pub const REPLY_ONLY_LABEL: &str = "reply_only";

/// Largest notification carrying its result inline, in bytes: room under SQS's 256 KiB
/// message limit. Larger results are read from the durable backend (one GetObject).
pub const INLINE_RESULT_LIMIT: usize = 200 * 1024;

/// What an orchestrator adds to its task queue: see [`attach`].
#[derive(Debug)]
pub struct ReplyWiring<B> {
    /// Add with [`TaskQueue::with_middleware`](stepq_broker::TaskQueue::with_middleware): gives
    /// every sent message the reply address (creating the queue on the first send).
    pub middleware: Arc<ReplyToMiddleware>,
    /// Use as the task queue's result backend: waits through the reply queue, stores through
    /// the durable backend, and deletes the reply queue on shutdown.
    pub results: Arc<NotifyingResultBackend<B>>,
    /// The reply queue (for its URL and stats; `results.shutdown()` deletes it).
    pub replies: ReplyQueue,
}

/// Reply-queue wiring for an orchestrator on `broker`'s task queue, storing results in
/// `durable`. Makes no request. The same result backend also notifies, so a process that both
/// sends tasks and runs them (in-process workers) needs nothing else.
pub fn attach<B: ResultBackend>(broker: &SqsBroker, durable: B) -> ReplyWiring<B> {
    let replies = ReplyQueue::for_broker(broker);
    ReplyWiring {
        middleware: Arc::new(ReplyToMiddleware::new(replies.clone())),
        results: Arc::new(
            NotifyingResultBackend::new(durable, broker.sqs_client().clone())
                .with_reply_queue(replies.clone()),
        ),
        replies,
    }
}

/// A worker's result backend: stores results in `durable` and notifies the queue each
/// result's `reply_to` label names, with `broker`'s SQS client. Makes no request.
pub fn notifying<B: ResultBackend>(broker: &SqsBroker, durable: B) -> NotifyingResultBackend<B> {
    NotifyingResultBackend::new(durable, broker.sqs_client().clone())
}
