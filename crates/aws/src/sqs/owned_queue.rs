//! Queues a process creates for itself — an orchestrator's reply queue, a worker's cancel
//! inbox — and what keeps them from piling up.
//!
//! Each such queue is tagged with its role ([`ROLE_TAG`]) and the Unix time its owner last
//! said it is alive ([`ALIVE_AT_TAG`]); the owner re-tags it with [`tag_alive`] now and then
//! and deletes it when it stops. A process that dies without stopping leaves its queue behind:
//! [`prune_stale`], run by the next process of the same kind, deletes queues of the role whose
//! alive tag is too old.
//!
//! Every call here fails with the SQS [`ServiceError`] (cheap to clone, the SDK error as its
//! source), which converts into a [`BrokerError`](stepq_broker::BrokerError) with `?`.
//!
//! ```
//! use stepq_aws::sqs::owned_queue::{queue_name, sanitize};
//! assert_eq!(queue_name("http://127.0.0.1:4566/000000000000/tasks-reply-0f3c/"), "tasks-reply-0f3c");
//! assert_eq!(sanitize("host.example/42"), "host-example-42");
//! ```

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_sqs::operation::delete_message_batch::DeleteMessageBatchOutput;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, QueueAttributeName};

use super::error::{numbered_entries, sqs_service_error as sqs_error};
use crate::timeouts;
use stepq_broker::error::{ErrorClass, ServiceError};

/// Longest SQS queue name.
pub const MAX_QUEUE_NAME: usize = 80;
/// Tag naming what a queue is (e.g. `reply-queue`, `cancel-inbox`).
pub const ROLE_TAG: &str = "stepq:role";
/// Tag with the Unix time (seconds) the queue's owner last said it is alive.
pub const ALIVE_AT_TAG: &str = "stepq:alive-at";

/// `name` reduced to letters, digits, `-` and `_` (what SQS queue names and tags accept).
pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The last path segment of a queue URL: the queue's name.
pub fn queue_name(url: &str) -> &str {
    url.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether an error says the queue does not exist (any protocol's code for it).
pub fn is_missing_queue(e: &ServiceError) -> bool {
    e.code.contains("NonExistentQueue") || e.code == "QueueDoesNotExist"
}

/// Creates queue `name` (one CreateQueue) with `attributes`, tagged [`ROLE_TAG`]` = role`,
/// [`ALIVE_AT_TAG`]` = now` and `tags`; returns its URL.
pub async fn create(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    role: &str,
    attributes: impl IntoIterator<Item = (QueueAttributeName, String)>,
    tags: impl IntoIterator<Item = (&'static str, String)>,
) -> Result<String, ServiceError> {
    let mut all_tags = HashMap::from([
        (ROLE_TAG.to_string(), role.to_string()),
        (ALIVE_AT_TAG.to_string(), unix_secs().to_string()),
    ]);
    all_tags.extend(tags.into_iter().map(|(k, v)| (k.to_string(), v)));
    let out = sqs
        .create_queue()
        .queue_name(name)
        .set_attributes(Some(attributes.into_iter().collect()))
        .set_tags(Some(all_tags))
        .send()
        .await
        .map_err(|e| sqs_error("CreateQueue", e))?;
    out.queue_url.ok_or_else(|| {
        let message = format!("CreateQueue `{name}` returned no queue URL");
        ServiceError::new("sqs", "MissingQueueUrl", message, ErrorClass::Temporary)
    })
}

/// Re-tags a queue [`ALIVE_AT_TAG`]` = now` (one TagQueue).
pub async fn tag_alive(sqs: &aws_sdk_sqs::Client, url: &str) -> Result<(), ServiceError> {
    let tags = HashMap::from([(ALIVE_AT_TAG.to_string(), unix_secs().to_string())]);
    sqs.tag_queue()
        .queue_url(url)
        .set_tags(Some(tags))
        .send()
        .await
        .map_err(|e| sqs_error("TagQueue", e))?;
    Ok(())
}

/// Deletes a queue (one DeleteQueue); one that is already gone is not an error.
pub async fn delete(sqs: &aws_sdk_sqs::Client, url: &str) -> Result<(), ServiceError> {
    match sqs.delete_queue().queue_url(url).send().await {
        Ok(_) => Ok(()),
        Err(e) => {
            let err = sqs_error("DeleteQueue", e);
            if is_missing_queue(&err) {
                Ok(())
            } else {
                Err(err)
            }
        }
    }
}

/// URLs of every queue whose name starts with `prefix` (ListQueues, all pages).
pub async fn list_with_prefix(
    sqs: &aws_sdk_sqs::Client,
    prefix: &str,
) -> Result<Vec<String>, ServiceError> {
    let mut urls = Vec::new();
    let mut pages = sqs
        .list_queues()
        .queue_name_prefix(prefix)
        .max_results(1000)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| sqs_error("ListQueues", e))?;
        urls.extend(page.queue_urls().iter().cloned());
    }
    urls.retain(|u| queue_name(u).starts_with(prefix));
    Ok(urls)
}

/// One long-poll receive of up to ten messages: `(receipt handle, body)` each.
pub async fn receive(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    wait_time_seconds: u32,
) -> Result<Vec<(String, String)>, ServiceError> {
    let out = sqs
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .wait_time_seconds(wait_time_seconds as i32)
        .customize()
        .config_override(timeouts::sqs_long_poll(wait_time_seconds))
        .send()
        .await
        .map_err(|e| sqs_error("ReceiveMessage", e))?;
    Ok(out
        .messages
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| Some((m.receipt_handle?, m.body.unwrap_or_default())))
        .collect())
}

/// The entries of a DeleteMessageBatch for `receipts`, with their index as id.
pub fn delete_entries<'a>(
    receipts: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<DeleteMessageBatchRequestEntry>, ServiceError> {
    numbered_entries("DeleteMessageBatch", receipts, |id, r| {
        DeleteMessageBatchRequestEntry::builder()
            .id(id)
            .receipt_handle(r)
            .build()
    })
}

/// Deletes up to ten received messages in one DeleteMessageBatch; entry `i` of the output
/// stands for `receipts[i]`.
pub async fn delete_messages(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    receipts: &[String],
) -> Result<DeleteMessageBatchOutput, ServiceError> {
    let entries = delete_entries(receipts.iter().map(String::as_str))?;
    sqs.delete_message_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .send()
        .await
        .map_err(|e| sqs_error("DeleteMessageBatch", e))
}

/// Deletes the queues among `urls` (other than `keep`) tagged [`ROLE_TAG`]` = role` whose
/// [`ALIVE_AT_TAG`] is older than `stale_after`: those of owners that ended without deleting
/// them. Queues without the tags (not made by stepq, or a shared queue) are left alone; a
/// queue whose tags cannot be read is skipped. Returns how many were deleted; each deletion
/// and each failure is logged.
pub async fn prune_stale(
    sqs: &aws_sdk_sqs::Client,
    urls: impl IntoIterator<Item = String>,
    role: &str,
    stale_after: Duration,
    keep: Option<&str>,
) -> usize {
    let now = unix_secs();
    let mut deleted = 0;
    for url in urls {
        if Some(url.as_str()) == keep {
            continue;
        }
        let tags = match sqs.list_queue_tags().queue_url(&url).send().await {
            Ok(out) => out.tags.unwrap_or_default(),
            Err(e) => {
                tracing::debug!(%url, error = %sqs_error("ListQueueTags", e), "skipping a queue");
                continue;
            }
        };
        if tags.get(ROLE_TAG).map(String::as_str) != Some(role) {
            continue;
        }
        let Some(alive_at) = tags.get(ALIVE_AT_TAG).and_then(|t| t.parse::<u64>().ok()) else {
            continue;
        };
        let silent = now.saturating_sub(alive_at);
        if silent <= stale_after.as_secs() {
            continue;
        }
        match delete(sqs, &url).await {
            Ok(()) => {
                deleted += 1;
                tracing::info!(%url, role, silent_for_s = silent, ?tags, "deleted a stale queue whose owner stopped without deleting it");
            }
            Err(e) => tracing::warn!(%url, role, error = %e, "could not delete a stale queue"),
        }
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_errors() {
        assert_eq!(sanitize("we!rd name"), "we-rd-name");
        assert_eq!(queue_name("http://h/1/q.fifo"), "q.fifo");
        assert_eq!(queue_name("q"), "q");
        assert!(unix_secs() > 1_700_000_000);
        let e = |code: &str| ServiceError::new("sqs", code, "", ErrorClass::Permanent);
        assert!(is_missing_queue(&e(
            "AWS.SimpleQueueService.NonExistentQueue"
        )));
        assert!(is_missing_queue(&e("QueueDoesNotExist")));
        assert!(!is_missing_queue(&e("AccessDenied")));
    }

    #[test]
    fn delete_entries_are_numbered_in_order() {
        let entries = delete_entries(["r0", "r1"]).unwrap();
        let ids: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| (e.id(), e.receipt_handle()))
            .collect();
        assert_eq!(ids, [("0", "r0"), ("1", "r1")]);
        assert!(delete_entries([]).unwrap().is_empty());
    }
}
