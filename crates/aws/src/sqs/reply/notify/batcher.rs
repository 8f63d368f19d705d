//! The worker half: the notifier that sends result notifications to reply queues, batching
//! those that are due at the same moment (like the SQS ack batcher: whatever is queued when a
//! call can start shares it, up to ten per SendMessageBatch; no timer ever holds a
//! notification back).

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use tokio::sync::{mpsc, oneshot};

use crate::sqs::error::{
    all_failed, entry_outcomes, numbered_entries, sqs_error, sqs_service_error,
};
use crate::sqs::send::{plan_batches, MAX_BATCH_BYTES, MAX_BATCH_ENTRIES};
use stepq_broker::error::BrokerError;

/// A notification waiting for the batcher.
struct Request {
    url: String,
    body: String,
    reply: oneshot::Sender<Result<(), BrokerError>>,
}

/// Counts of SQS calls made by a notifier.
#[derive(Default)]
pub(crate) struct CallCounters {
    /// SendMessage and SendMessageBatch calls.
    pub calls: AtomicU64,
}

/// Sends notifications, batching concurrent ones.
pub(crate) struct Notifier {
    sqs: aws_sdk_sqs::Client,
    batcher: OnceLock<mpsc::UnboundedSender<Request>>,
    counters: Arc<CallCounters>,
}

impl Notifier {
    pub(super) fn new(sqs: aws_sdk_sqs::Client) -> Self {
        Notifier {
            sqs,
            batcher: OnceLock::new(),
            counters: Arc::new(CallCounters::default()),
        }
    }

    /// SQS calls made so far.
    pub(super) fn calls(&self) -> u64 {
        self.counters.calls.load(Ordering::Relaxed)
    }

    /// Sends `body` to the queue at `url`, sharing a call with notifications sent at the same
    /// moment. The batcher starts on first use, on the caller's runtime.
    pub(super) async fn send(&self, url: String, body: String) -> Result<(), BrokerError> {
        let batcher = self.batcher.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run_batcher(
                self.sqs.clone(),
                rx,
                Arc::clone(&self.counters),
            ));
            tx
        });
        let (reply, answer) = oneshot::channel();
        match batcher.send(Request { url, body, reply }) {
            Ok(()) => match answer.await {
                Ok(result) => result,
                Err(_) => Err(BrokerError::Closed),
            },
            // The batcher's runtime is gone: send directly.
            Err(mpsc::error::SendError(request)) => {
                send_one(&self.sqs, &self.counters, &request.url, &request.body).await
            }
        }
    }
}

/// Takes whatever is queued (up to ten), groups it by queue and sends each group in as few
/// calls as SQS allows. Ends when the notifier is dropped.
async fn run_batcher(
    sqs: aws_sdk_sqs::Client,
    mut requests: mpsc::UnboundedReceiver<Request>,
    counters: Arc<CallCounters>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH_ENTRIES);
    while requests.recv_many(&mut batch, MAX_BATCH_ENTRIES).await > 0 {
        let mut groups: Vec<(String, Vec<Request>)> = Vec::new();
        for request in batch.drain(..) {
            match groups.iter_mut().find(|(url, _)| *url == request.url) {
                Some((_, group)) => group.push(request),
                None => groups.push((request.url.clone(), vec![request])),
            }
        }
        let sends = groups
            .into_iter()
            .map(|(url, group)| send_group(&sqs, &counters, url, group));
        futures::future::join_all(sends).await;
    }
}

async fn send_group(
    sqs: &aws_sdk_sqs::Client,
    counters: &CallCounters,
    url: String,
    group: Vec<Request>,
) {
    let sizes: Vec<usize> = group.iter().map(|r| r.body.len()).collect();
    let ranges: Vec<Range<usize>> = plan_batches(&sizes, MAX_BATCH_ENTRIES, MAX_BATCH_BYTES);
    let mut group: Vec<Option<Request>> = group.into_iter().map(Some).collect();
    for range in ranges {
        let chunk: Vec<Request> = group[range].iter_mut().filter_map(Option::take).collect();
        if let [only] = chunk.as_slice() {
            let result = send_one(sqs, counters, &url, &only.body).await;
            let only = chunk.into_iter().next().expect("one request");
            let _ = only.reply.send(result);
            continue;
        }
        let results = send_batch(sqs, counters, &url, &chunk).await;
        for (request, result) in chunk.into_iter().zip(results) {
            let _ = request.reply.send(result);
        }
    }
}

async fn send_one(
    sqs: &aws_sdk_sqs::Client,
    counters: &CallCounters,
    url: &str,
    body: &str,
) -> Result<(), BrokerError> {
    counters.calls.fetch_add(1, Ordering::Relaxed);
    sqs.send_message()
        .queue_url(url)
        .message_body(body)
        .send()
        .await
        .map_err(|e| sqs_error("SendMessage", e))?;
    Ok(())
}

/// One SendMessageBatch call; the outcome of each entry, in order.
async fn send_batch(
    sqs: &aws_sdk_sqs::Client,
    counters: &CallCounters,
    url: &str,
    chunk: &[Request],
) -> Vec<Result<(), BrokerError>> {
    let entries = numbered_entries("SendMessageBatch", chunk, |id, r| {
        SendMessageBatchRequestEntry::builder()
            .id(id)
            .message_body(&r.body)
            .build()
    });
    let entries = match entries {
        Ok(entries) => entries,
        Err(err) => return all_failed(&err, chunk.len()),
    };
    counters.calls.fetch_add(1, Ordering::Relaxed);
    match sqs
        .send_message_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .send()
        .await
    {
        Ok(out) => entry_outcomes("SendMessageBatch", chunk.len(), out.failed()),
        Err(e) => all_failed(&sqs_service_error("SendMessageBatch", e), chunk.len()),
    }
}
