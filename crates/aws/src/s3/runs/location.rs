//! What the S3 run and heartbeat stores share: [`Location`] (client, bucket, normalized base
//! path) with its object get, conditional put and listing, and the JSON and error helpers.

use std::sync::Arc;

use crate::s3::delete::delete_objects;
use crate::s3::{aws_error, get_object, join_key, S3Object};
use crate::timeouts;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use stepq_runs::error::StorageError;

/// Objects fetched at once when reading a log or listing runs.
pub(super) const FETCH_CONCURRENCY: usize = 8;

/// Bucket, normalized base path and client shared by the S3 stores.
#[derive(Clone)]
pub(super) struct Location {
    /// The S3 client.
    pub(super) client: Client,
    /// The bucket.
    pub(super) bucket: Arc<str>,
    /// No leading or trailing `/`; empty means the bucket root.
    pub(super) base: Arc<str>,
}

impl Location {
    /// A location on `bucket` under `base_path` (its slashes trimmed).
    pub(super) fn new(client: Client, bucket: impl Into<String>, base_path: &str) -> Self {
        Location {
            client,
            bucket: bucket.into().into(),
            base: base_path.trim_matches('/').into(),
        }
    }

    /// The key of `rest` under the base path.
    pub(super) fn key(&self, rest: &str) -> String {
        join_key(&self.base, rest)
    }

    /// Reads an object's bytes and ETag; `None` if there is no such object.
    pub(super) async fn get(&self, key: &str) -> Result<Option<S3Object>, StorageError> {
        Ok(get_object(&self.client, &self.bucket, key).await?)
    }

    /// Writes an object under `condition`.
    pub(super) async fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        condition: Condition<'_>,
    ) -> Result<PutOutcome, StorageError> {
        Ok(
            match self.put_tagged(key, body, content_type, condition).await? {
                Ok(_) => PutOutcome::Written,
                Err(refused) => refused,
            },
        )
    }

    /// [`put`](Self::put), with the written object's ETag (empty if S3 sends none), or why the
    /// condition refused the write.
    pub(super) async fn put_tagged(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        condition: Condition<'_>,
    ) -> Result<Result<String, PutOutcome>, StorageError> {
        let transfer = timeouts::s3_transfer(body.len());
        let mut request = self
            .client
            .put_object()
            .bucket(&*self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body));
        request = match condition {
            Condition::None => request,
            Condition::Absent => request.if_none_match("*"),
            Condition::Matches(etag) => request.if_match(etag),
        };
        match request.customize().config_override(transfer).send().await {
            Ok(out) => Ok(Ok(out.e_tag().unwrap_or_default().to_string())),
            Err(e) if status_of(&e) == Some(412) || e.code() == Some("PreconditionFailed") => {
                Ok(Err(PutOutcome::PreconditionFailed))
            }
            Err(e)
                if status_of(&e) == Some(409) || e.code() == Some("ConditionalRequestConflict") =>
            {
                Ok(Err(PutOutcome::Conflict))
            }
            Err(e) => Err(s3_error("PutObject", e)),
        }
    }

    /// Creates the object at `key` (`If-None-Match: *`). A 412 whose existing object holds
    /// exactly `body` counts as written: it is this very write, landed by an attempt whose
    /// answer was lost (a network failure after S3 stored it; the SDK then retried), and
    /// taking it for another writer's would write the same bytes twice (a duplicate event
    /// batch) or report a run id taken by its own creation.
    pub(super) async fn put_new(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<PutOutcome, StorageError> {
        let outcome = self
            .put(key, body.clone(), content_type, Condition::Absent)
            .await?;
        if outcome != PutOutcome::PreconditionFailed {
            return Ok(outcome);
        }
        match self.get(key).await? {
            Some(existing) if existing.bytes.as_ref() == body.as_slice() => {
                tracing::debug!(key, "an earlier attempt of this write had landed");
                Ok(PutOutcome::Written)
            }
            _ => Ok(PutOutcome::PreconditionFailed),
        }
    }

    /// Every key under `prefix` after `start_after`, in key order; with a `delimiter`, the
    /// common prefixes instead. Stops after `limit` keys.
    pub(super) async fn list(
        &self,
        prefix: &str,
        start_after: Option<String>,
        delimiter: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        let mut found = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let output = self
                .client
                .list_objects_v2()
                .bucket(&*self.bucket)
                .prefix(prefix)
                .set_start_after(start_after.clone())
                .set_delimiter(delimiter.map(str::to_string))
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| s3_error("ListObjectsV2", e))?;
            if delimiter.is_some() {
                found.extend(
                    output
                        .common_prefixes()
                        .iter()
                        .filter_map(|p| p.prefix().map(str::to_string)),
                );
            } else {
                found.extend(
                    output
                        .contents()
                        .iter()
                        .filter_map(|o| o.key().map(str::to_string)),
                );
            }
            if found.len() >= limit {
                found.truncate(limit);
                return Ok(found);
            }
            match output.next_continuation_token() {
                Some(next) if output.is_truncated() == Some(true) => token = Some(next.into()),
                _ => return Ok(found),
            }
        }
    }
}

impl Location {
    /// Every object under `prefix` with its size in bytes, in key order.
    pub(super) async fn list_sized(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, u64)>, StorageError> {
        let mut found = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let output = self
                .client
                .list_objects_v2()
                .bucket(&*self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| s3_error("ListObjectsV2", e))?;
            found.extend(output.contents().iter().filter_map(|o| {
                let size = o.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0);
                o.key().map(|k| (k.to_string(), size))
            }));
            match output.next_continuation_token() {
                Some(next) if output.is_truncated() == Some(true) => token = Some(next.into()),
                _ => return Ok(found),
            }
        }
    }

    /// Deletes `keys` (`DeleteObjects`, 1000 a request); a key that fails is an error naming
    /// it.
    pub(super) async fn delete_keys(&self, keys: Vec<String>) -> Result<(), StorageError> {
        Ok(delete_objects(&self.client, &self.bucket, &keys).await?)
    }
}

/// The condition of a conditional `PutObject`.
pub(super) enum Condition<'a> {
    /// Unconditional.
    None,
    /// Only if there is no such object (`If-None-Match: *`).
    Absent,
    /// Only if the object's ETag is this one (`If-Match`).
    Matches(&'a str),
}

/// What a conditional `PutObject` did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PutOutcome {
    /// The object was written.
    Written,
    /// 412: the condition does not hold (the object exists / changed).
    PreconditionFailed,
    /// 409: a concurrent conditional write to the same key is in flight.
    Conflict,
}

/// `value` as pretty JSON; `what` names it in the error.
pub(super) fn encode_json<T: serde::Serialize>(
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec_pretty(value).map_err(|e| StorageError::Encode {
        what,
        message: e.to_string(),
    })
}

/// The JSON object at `key`, decoded.
pub(super) fn decode_json<T: serde::de::DeserializeOwned>(
    key: &str,
    bytes: &[u8],
) -> Result<T, StorageError> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::Corrupt {
        location: key.to_string(),
        message: e.to_string(),
    })
}

/// The HTTP status of an SDK error, if there was a response.
pub(super) fn status_of<E>(err: &SdkError<E>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// An S3 operation's error as [`StorageError::Service`] (code, class and source from
/// [`aws_error`]).
pub(super) fn s3_error<E>(operation: &str, err: SdkError<E>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    aws_error("s3", operation, err).into()
}
