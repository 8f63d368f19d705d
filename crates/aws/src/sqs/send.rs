//! Sending: message group and deduplication ids, extended payload offload, and batching into
//! SendMessageBatch calls of at most 10 entries and 256 KiB.

use std::ops::Range;

use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};

use super::broker::Inner;
use super::error::{build_error, entry_class, sqs_error};
use super::payload::{S3Pointer, EXTENDED_MESSAGE_ATTRIBUTE};
use stepq_broker::error::{BrokerError, ServiceError};
use stepq_broker::message::TaskMessage;

/// Entries per SendMessageBatch call (an SQS limit).
pub const MAX_BATCH_ENTRIES: usize = 10;
/// Bytes per SendMessageBatch call, all entries together (the classic SQS limit).
pub const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Extra tries of batch entries that failed through no fault of ours.
const ENTRY_RETRIES: usize = 2;
/// Label whose value groups messages of a fair FIFO queue.
pub const GROUP_LABEL: &str = "run_id";

/// A message ready to send.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    /// The task id, for error reports.
    pub task_id: String,
    /// The SQS body: the task message JSON, or an S3 pointer.
    pub body: String,
    /// MessageGroupId (FIFO).
    pub group_id: Option<String>,
    /// MessageDeduplicationId (FIFO).
    pub dedup_id: Option<String>,
    /// DelaySeconds (standard queues).
    pub delay_seconds: Option<i32>,
    /// Where the real body went, for pointer messages; with the bytes still to upload.
    pub offload: Option<(S3Pointer, Vec<u8>)>,
}

impl Outgoing {
    /// Bytes SQS counts against its size limits: body plus message attributes.
    pub(super) fn size(&self) -> usize {
        let attribute = if self.offload.is_some() {
            EXTENDED_MESSAGE_ATTRIBUTE.len() + "String".len() + "true".len()
        } else {
            0
        };
        self.body.len() + attribute
    }

    fn pointer(&self) -> Option<&S3Pointer> {
        self.offload.as_ref().map(|(p, _)| p)
    }
}

/// How messages are addressed on this queue.
#[derive(Debug, Clone)]
pub(crate) struct SendSettings {
    pub fifo: bool,
    pub fair: bool,
    /// Message groups per run on a fair FIFO queue.
    pub groups_per_run: u32,
    pub dedup_by_task_id: bool,
    pub delay_seconds: u32,
    pub threshold: usize,
    pub bucket: Option<String>,
}

/// Whether `id` is usable as a MessageGroupId / MessageDeduplicationId: 1-128 characters of
/// ASCII letters, digits and punctuation.
pub(crate) fn is_valid_sqs_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.chars().all(|c| c.is_ascii_graphic())
}

/// 128-bit FNV-1a of `bytes`, as 32 hex digits: a stable content hash (the same bytes give the
/// same id in every process and version).
pub(crate) fn content_hash(bytes: &[u8]) -> String {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013b;
    let mut hash = OFFSET;
    for b in bytes {
        hash ^= u128::from(*b);
        hash = hash.wrapping_mul(PRIME);
    }
    format!("{hash:032x}")
}

/// `candidate` if it is a valid SQS id, else a stable hash of it (so any run id or task id
/// maps to a usable, still distinct id).
pub(crate) fn sqs_id(candidate: &str) -> String {
    if is_valid_sqs_id(candidate) {
        candidate.to_string()
    } else {
        format!("h{}", content_hash(candidate.as_bytes()))
    }
}

/// The message group of task `task_id` of run `run` on a fair FIFO queue with `groups`
/// groups per run: the run id itself with one, else `<run>.<k>` with `k` a stable hash of the
/// task id modulo `groups` (each valid as an SQS id, hashed if not).
pub(crate) fn run_group(run: &str, task_id: &str, groups: u32) -> String {
    if groups <= 1 {
        return sqs_id(run);
    }
    let k = u128::from_str_radix(&content_hash(task_id.as_bytes()), 16).unwrap_or(0)
        % u128::from(groups);
    sqs_id(&format!("{run}.{k}"))
}

/// Encodes `message` and decides its group, deduplication id, delay and whether its body goes
/// to S3. Too large without a bucket: [`BrokerError::PayloadTooLarge`], before anything is sent.
pub(crate) fn prepare(
    settings: &SendSettings,
    message: &TaskMessage,
) -> Result<Outgoing, BrokerError> {
    let json = message.to_json();
    let (group_id, dedup_id) = if settings.fifo {
        let group = match message.label(GROUP_LABEL) {
            Some(run) if settings.fair && !run.is_empty() => {
                run_group(run, &message.task_id, settings.groups_per_run)
            }
            _ => sqs_id(&message.task_id),
        };
        let dedup = if settings.dedup_by_task_id {
            sqs_id(&message.task_id)
        } else {
            content_hash(&json)
        };
        (Some(group), Some(dedup))
    } else {
        (None, None)
    };
    let delay_seconds = (!settings.fifo && settings.delay_seconds > 0)
        .then(|| i32::try_from(settings.delay_seconds).unwrap_or(900));
    let (body, offload) = if json.len() > settings.threshold {
        let Some(bucket) = &settings.bucket else {
            return Err(BrokerError::PayloadTooLarge {
                size: json.len(),
                limit: settings.threshold,
                hint: "; configure config_source.s3_extended_bucket_name to send large \
                       payloads through S3",
            });
        };
        let pointer = S3Pointer::for_task(bucket, &message.task_id);
        (pointer.to_body(), Some((pointer, json)))
    } else {
        let body = String::from_utf8(json).map_err(|e| BrokerError::Codec {
            task_name: message.task_name.clone(),
            reason: format!("message JSON is not UTF-8: {e}"),
        })?;
        (body, None)
    };
    Ok(Outgoing {
        task_id: message.task_id.clone(),
        body,
        group_id,
        dedup_id,
        delay_seconds,
        offload,
    })
}

/// Splits `sizes` into consecutive runs of at most `max_entries` entries and `max_bytes`
/// bytes each (a single entry larger than `max_bytes` gets a run of its own).
pub(crate) fn plan_batches(
    sizes: &[usize],
    max_entries: usize,
    max_bytes: usize,
) -> Vec<Range<usize>> {
    let mut batches = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, size) in sizes.iter().enumerate() {
        let count = i - start;
        if count > 0 && (count == max_entries || bytes + size > max_bytes) {
            batches.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < sizes.len() {
        batches.push(start..sizes.len());
    }
    batches
}

fn extended_attribute() -> Result<MessageAttributeValue, BrokerError> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value("true")
        .build()
        .map_err(|e| build_error("SendMessage", e).into())
}

/// Uploads the offloaded bodies of `batch`; on failure deletes the ones already uploaded.
async fn upload_offloads(inner: &Inner, batch: &mut [Outgoing]) -> Result<(), BrokerError> {
    let uploads = batch
        .iter_mut()
        .filter_map(|o| o.offload.as_mut())
        .map(|(pointer, bytes)| {
            let bytes = std::mem::take(bytes);
            let pointer = pointer.clone();
            async move {
                let result = pointer.upload(&inner.s3, bytes).await;
                (pointer, result)
            }
        });
    let results = futures::future::join_all(uploads).await;
    if results.iter().all(|(_, result)| result.is_ok()) {
        return Ok(());
    }
    let mut first_error = None;
    for (pointer, result) in results {
        match result {
            Ok(()) => pointer.delete_logged(&inner.s3).await,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.expect("an upload failed"))
}

/// Deletes the S3 objects of messages that were not sent.
async fn discard_offloads(inner: &Inner, unsent: &[&Outgoing]) {
    for pointer in unsent.iter().filter_map(|o| o.pointer()) {
        pointer.delete_logged(&inner.s3).await;
    }
}

/// Sends one message with SendMessage.
pub(crate) async fn send_one(inner: &Inner, mut outgoing: Outgoing) -> Result<(), BrokerError> {
    upload_offloads(inner, std::slice::from_mut(&mut outgoing)).await?;
    let mut request = inner
        .sqs
        .send_message()
        .queue_url(&inner.config.queue_url)
        .message_body(&outgoing.body)
        .set_message_group_id(outgoing.group_id.clone())
        .set_message_deduplication_id(outgoing.dedup_id.clone())
        .set_delay_seconds(outgoing.delay_seconds);
    if outgoing.offload.is_some() {
        request = request.message_attributes(EXTENDED_MESSAGE_ATTRIBUTE, extended_attribute()?);
    }
    if let Err(e) = request.send().await {
        discard_offloads(inner, &[&outgoing]).await;
        return Err(sqs_error("SendMessage", e));
    }
    Ok(())
}

fn batch_entry(id: usize, o: &Outgoing) -> Result<SendMessageBatchRequestEntry, BrokerError> {
    let mut entry = SendMessageBatchRequestEntry::builder()
        .id(id.to_string())
        .message_body(&o.body)
        .set_message_group_id(o.group_id.clone())
        .set_message_deduplication_id(o.dedup_id.clone())
        .set_delay_seconds(o.delay_seconds);
    if o.offload.is_some() {
        entry = entry.message_attributes(EXTENDED_MESSAGE_ATTRIBUTE, extended_attribute()?);
    }
    entry
        .build()
        .map_err(|e| build_error("SendMessageBatch", e).into())
}

/// Sends messages with SendMessageBatch, in batches of at most 10 entries and
/// `max(256 KiB, threshold)` bytes. Entries that failed through the service's fault are tried
/// again (twice); anything still unsent is an error naming the tasks and how many were sent.
pub(crate) async fn send_batch(
    inner: &Inner,
    mut outgoing: Vec<Outgoing>,
) -> Result<(), BrokerError> {
    let total = outgoing.len();
    let sizes: Vec<usize> = outgoing.iter().map(Outgoing::size).collect();
    let max_bytes = MAX_BATCH_BYTES.max(inner.settings.threshold);
    let batches = plan_batches(&sizes, MAX_BATCH_ENTRIES, max_bytes);
    let mut sent = 0;
    for (n, range) in batches.iter().enumerate() {
        let batch = &mut outgoing[range.clone()];
        if let Err(e) = upload_offloads(inner, batch).await {
            return Err(partial_failure(e, sent, total));
        }
        let mut pending: Vec<usize> = (0..batch.len()).collect();
        let mut failures = Vec::new();
        for attempt in 0..=ENTRY_RETRIES {
            let entries = pending
                .iter()
                .map(|&i| batch_entry(i, &batch[i]))
                .collect::<Result<Vec<_>, _>>()?;
            let output = match inner
                .sqs
                .send_message_batch()
                .queue_url(&inner.config.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
            {
                Ok(output) => output,
                Err(e) => {
                    let unsent: Vec<&Outgoing> = pending.iter().map(|&i| &batch[i]).collect();
                    discard_offloads(inner, &unsent).await;
                    let err = sqs_error("SendMessageBatch", e);
                    return Err(partial_failure(err, sent, total));
                }
            };
            sent += output.successful().len();
            failures.clear();
            let mut retry = Vec::new();
            for f in output.failed() {
                let Some(index) = f.id().parse::<usize>().ok().filter(|i| *i < batch.len()) else {
                    continue;
                };
                if entry_class(f).is_retryable() && attempt < ENTRY_RETRIES {
                    retry.push(index);
                } else {
                    failures.push((index, f.clone()));
                }
            }
            if !retry.is_empty() {
                tracing::debug!(
                    count = retry.len(),
                    "SendMessageBatch: trying entries that failed on the service side again"
                );
            }
            pending = retry;
            if pending.is_empty() {
                break;
            }
        }
        if !failures.is_empty() {
            let unsent: Vec<&Outgoing> = failures.iter().map(|(i, _)| &batch[*i]).collect();
            discard_offloads(inner, &unsent).await;
            let (first_index, first) = &failures[0];
            let tasks: Vec<&str> = failures
                .iter()
                .map(|(i, _)| batch[*i].task_id.as_str())
                .collect();
            let remaining = batches.len() - n - 1;
            let message = format!(
                "SendMessageBatch: {} message(s) were refused (tasks {}), first (task {}): \
                 {}; {sent} of {total} messages were sent{}",
                failures.len(),
                tasks.join(", "),
                batch[*first_index].task_id,
                first.message().unwrap_or("no message"),
                if remaining > 0 {
                    format!(", {remaining} later batch(es) were not tried")
                } else {
                    String::new()
                }
            );
            // A refusal of the service's fault was tried again before it got here.
            let class = entry_class(first).exhausted();
            return Err(ServiceError::new("sqs", first.code(), message, class).into());
        }
    }
    Ok(())
}

/// Adds "n of m were sent" to an error that stopped a batch send.
fn partial_failure(mut err: BrokerError, sent: usize, total: usize) -> BrokerError {
    if let BrokerError::Service(e) = &mut err {
        e.message = format!(
            "{}; {sent} of {total} messages were sent before it",
            e.message
        );
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(fifo: bool, fair: bool) -> SendSettings {
        SendSettings {
            fifo,
            fair,
            groups_per_run: 1,
            dedup_by_task_id: false,
            delay_seconds: 0,
            threshold: 256 * 1024,
            bucket: None,
        }
    }

    #[test]
    fn batches_are_cut_at_ten_entries_and_at_the_byte_limit() {
        assert_eq!(
            plan_batches(&[1; 25], 10, 1000),
            vec![0..10, 10..20, 20..25]
        );
        assert_eq!(plan_batches(&[], 10, 1000), Vec::<Range<usize>>::new());
        assert_eq!(
            plan_batches(&[400, 400, 400, 100], 10, 1000),
            vec![0..2, 2..4]
        );
        assert_eq!(
            plan_batches(&[1000, 1, 1000], 10, 1000),
            vec![0..1, 1..2, 2..3]
        );
        assert_eq!(plan_batches(&[2000, 1], 10, 1000), vec![0..1, 1..2]);
    }

    #[test]
    fn standard_queues_send_no_group_or_dedup_id() {
        let m = TaskMessage::new("t").with_label("run_id", "r1");
        let o = prepare(&settings(false, false), &m).unwrap();
        assert_eq!(
            (o.group_id, o.dedup_id, o.delay_seconds),
            (None, None, None)
        );
        assert_eq!(TaskMessage::from_json(o.body.as_bytes()).unwrap(), m);
    }

    #[test]
    fn standard_queues_carry_the_configured_delay() {
        let mut s = settings(false, false);
        s.delay_seconds = 30;
        let o = prepare(&s, &TaskMessage::new("t")).unwrap();
        assert_eq!(o.delay_seconds, Some(30));
    }

    #[test]
    fn fair_fifo_groups_by_run_and_plain_fifo_by_task() {
        let m = TaskMessage::new("t").with_label("run_id", "run-1");
        let fair = prepare(&settings(true, true), &m).unwrap();
        assert_eq!(fair.group_id.as_deref(), Some("run-1"));
        let plain = prepare(&settings(true, false), &m).unwrap();
        assert_eq!(plain.group_id.as_deref(), Some(m.task_id.as_str()));
        let unlabelled = TaskMessage::new("t");
        let o = prepare(&settings(true, true), &unlabelled).unwrap();
        assert_eq!(o.group_id.as_deref(), Some(unlabelled.task_id.as_str()));
    }

    #[test]
    fn a_run_spreads_over_its_groups_per_run() {
        let groups: std::collections::BTreeSet<String> = (0..200)
            .map(|i| run_group("run-1", &format!("task-{i}"), 4))
            .collect();
        assert_eq!(
            groups,
            ["run-1.0", "run-1.1", "run-1.2", "run-1.3"]
                .map(String::from)
                .into()
        );
        assert_eq!(
            run_group("run-1", "task-7", 4),
            run_group("run-1", "task-7", 4)
        );
        assert_eq!(run_group("run-1", "task-7", 1), "run-1");
    }

    #[test]
    fn unusable_run_ids_map_to_stable_valid_group_ids() {
        let m = TaskMessage::new("t").with_label("run_id", "run-ä-1");
        let a = prepare(&settings(true, true), &m)
            .unwrap()
            .group_id
            .unwrap();
        let b = prepare(&settings(true, true), &m)
            .unwrap()
            .group_id
            .unwrap();
        assert!(is_valid_sqs_id(&a), "{a}");
        assert_eq!(a, b);
        assert_ne!(a, sqs_id("run-a-1"));
        assert!(is_valid_sqs_id(&sqs_id(&"x".repeat(200))));
        assert!(!is_valid_sqs_id(""));
        assert!(!is_valid_sqs_id("a b"));
    }

    #[test]
    fn fifo_dedup_is_the_task_id_or_a_content_hash() {
        let m = TaskMessage::new("t");
        let mut s = settings(true, true);
        let by_hash = prepare(&s, &m).unwrap().dedup_id.unwrap();
        assert_eq!(by_hash, content_hash(&m.to_json()));
        assert_eq!(by_hash.len(), 32);
        let other = prepare(&s, &TaskMessage::new("t"))
            .unwrap()
            .dedup_id
            .unwrap();
        assert_ne!(by_hash, other, "different tasks must not dedupe each other");
        s.dedup_by_task_id = true;
        assert_eq!(prepare(&s, &m).unwrap().dedup_id.unwrap(), m.task_id);
    }

    #[test]
    fn content_hash_is_fnv1a_128() {
        assert_eq!(content_hash(b""), "6c62272e07bb014262b821756295c58d");
        assert_eq!(content_hash(b"a"), "d228cb696f1a8caf78912b704e4a8964");
    }

    #[test]
    fn oversized_bodies_without_a_bucket_are_refused_before_sending() {
        let mut m = TaskMessage::new("t");
        m.args.push(serde_json::json!("x".repeat(300 * 1024)));
        match prepare(&settings(false, false), &m) {
            Err(BrokerError::PayloadTooLarge { size, limit, hint }) => {
                assert!(size > 300 * 1024);
                assert_eq!(limit, 256 * 1024);
                assert!(hint.contains("s3_extended_bucket_name"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn oversized_bodies_with_a_bucket_become_pointers() {
        let mut m = TaskMessage::new("t");
        m.args.push(serde_json::json!("x".repeat(300 * 1024)));
        let mut s = settings(false, false);
        s.bucket = Some("payloads".into());
        let o = prepare(&s, &m).unwrap();
        let (pointer, bytes) = o.offload.as_ref().unwrap();
        assert_eq!(pointer.s3_bucket, "payloads");
        assert_eq!(S3Pointer::from_body(&o.body).unwrap(), *pointer);
        assert_eq!(TaskMessage::from_json(bytes).unwrap(), m);
        assert!(o.size() < 1024);
    }

    #[test]
    fn a_body_exactly_at_the_threshold_stays_inline() {
        let m = TaskMessage::new("t");
        let mut s = settings(false, false);
        s.threshold = m.to_json().len();
        assert!(prepare(&s, &m).unwrap().offload.is_none());
        s.threshold -= 1;
        assert!(matches!(
            prepare(&s, &m),
            Err(BrokerError::PayloadTooLarge { .. })
        ));
    }
}
