//! S3 run and heartbeat stores, for runs spread over many machines.
//!
//! Layout under `<base_path>/` in the bucket:
//!
//! ```text
//! runs/<run_id>/run.json          the run record
//! runs/<run_id>/events/<seq>      one event batch each: stepq_plan::pack of Vec<Event>
//! workers/<worker_id>.json        last heartbeat of each worker
//! ```
//!
//! `<seq>` is a 20-digit zero-padded number, so `ListObjectsV2` returns batches in order.
//! Writes are conditional, so concurrent writers never overwrite each other:
//!
//! - creating a run is a `PutObject` with `If-None-Match: *` (412 means the id is taken);
//! - a status change reads `run.json` with its ETag, validates the move and writes it back with
//!   `If-Match: <etag>`; a 412 means another writer got there first, so it re-reads and
//!   re-validates (409 `ConditionalRequestConflict`, a concurrent conditional write in flight,
//!   is retried the same way);
//! - an event batch is a `PutObject` of `events/<seq>` with `If-None-Match: *`; on 412 the
//!   writer takes the next number, on 409 it retries the same one. A batch is only written
//!   after its predecessor exists, so the log has no gaps and every reader sees one order.
//!
//! Both conditions need a store that honours them (AWS S3 since 2024, LocalStack 4, MinIO);
//! one that ignores them silently degrades to last-writer-wins, which the conformance suite
//! detects. Readers of another process's writes poll (see [`poll_for_events`]).
//!
//! [`poll_for_events`]: super::poll_for_events

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::s3::{aws_error, get_object, join_key, S3Object};
use async_trait::async_trait;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use futures::{StreamExt, TryStreamExt};
use stepq_plan::Event;
use stepq_results::{ErrorClass, ServiceError};

use stepq_runs::error::{check_id, StorageError};
use stepq_runs::heartbeat::{HeartbeatStore, WorkerHeartbeat};
use stepq_runs::record::{RunRecord, StatusChange};
use stepq_runs::store::{
    check_batch, newest_first, parse_seq, rescan_due, seq_name, EventCursor, EventPage, RunStore,
    MAX_BATCHES_PER_READ, MAX_CAS_ATTEMPTS,
};

/// Most conflicts an event writer accepts before giving up with [`StorageError::Contention`].
const MAX_SEQ_CONFLICTS: u32 = 10_000;

/// Objects fetched at once when reading a log or listing runs.
const FETCH_CONCURRENCY: usize = 8;

pub use crate::s3::s3_client;

/// Bucket, normalized base path and client shared by the S3 stores.
#[derive(Clone)]
struct Location {
    client: Client,
    bucket: Arc<str>,
    /// No leading or trailing `/`; empty means the bucket root.
    base: Arc<str>,
}

impl Location {
    fn new(client: Client, bucket: impl Into<String>, base_path: &str) -> Self {
        Location {
            client,
            bucket: bucket.into().into(),
            base: base_path.trim_matches('/').into(),
        }
    }

    fn key(&self, rest: &str) -> String {
        join_key(&self.base, rest)
    }

    /// Reads an object's bytes and ETag; `None` if there is no such object.
    async fn get(&self, key: &str) -> Result<Option<S3Object>, StorageError> {
        Ok(get_object(&self.client, &self.bucket, key).await?)
    }

    /// Writes an object under `condition`.
    async fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        condition: Condition<'_>,
    ) -> Result<PutOutcome, StorageError> {
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
        match request.send().await {
            Ok(_) => Ok(PutOutcome::Written),
            Err(e) if status_of(&e) == Some(412) || e.code() == Some("PreconditionFailed") => {
                Ok(PutOutcome::PreconditionFailed)
            }
            Err(e)
                if status_of(&e) == Some(409) || e.code() == Some("ConditionalRequestConflict") =>
            {
                Ok(PutOutcome::Conflict)
            }
            Err(e) => Err(s3_error("PutObject", e)),
        }
    }

    /// Every key under `prefix` after `start_after`, in key order; with a `delimiter`, the
    /// common prefixes instead. Stops after `limit` keys.
    async fn list(
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

enum Condition<'a> {
    None,
    Absent,
    Matches(&'a str),
}

#[derive(Debug, PartialEq, Eq)]
enum PutOutcome {
    Written,
    /// 412: the condition does not hold (the object exists / changed).
    PreconditionFailed,
    /// 409: a concurrent conditional write to the same key is in flight.
    Conflict,
}

/// Runs and event logs in an S3 bucket under a base path. See the module docs for the layout
/// and how concurrent writers are kept apart.
#[derive(Clone)]
pub struct S3RunStore {
    location: Location,
    /// Next event sequence number to try, per run (a hint; conflicts are resolved by S3).
    next_seq: Arc<Mutex<HashMap<String, u64>>>,
    /// Runs known to exist (runs are never deleted), to skip a request per append.
    known_runs: Arc<Mutex<HashSet<String>>>,
}

impl S3RunStore {
    /// A store on `bucket` under `base_path` (`""` for the bucket root), with a client built
    /// from `sdk` (path-style addressing when an endpoint is overridden).
    pub fn new(
        sdk: &aws_config::SdkConfig,
        bucket: impl Into<String>,
        base_path: impl AsRef<str>,
    ) -> Self {
        Self::from_client(s3_client(sdk), bucket, base_path)
    }

    /// A store using an existing client.
    pub fn from_client(
        client: Client,
        bucket: impl Into<String>,
        base_path: impl AsRef<str>,
    ) -> Self {
        S3RunStore {
            location: Location::new(client, bucket, base_path.as_ref()),
            next_seq: Arc::default(),
            known_runs: Arc::default(),
        }
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.location.bucket
    }

    /// The normalized base path (no leading or trailing `/`).
    pub fn base_path(&self) -> &str {
        &self.location.base
    }

    /// The S3 client.
    pub fn client(&self) -> &Client {
        &self.location.client
    }

    fn record_key(&self, run_id: &str) -> String {
        self.location.key(&format!("runs/{run_id}/run.json"))
    }

    fn events_prefix(&self, run_id: &str) -> String {
        self.location.key(&format!("runs/{run_id}/events/"))
    }

    fn batch_key(&self, run_id: &str, seq: u64) -> String {
        format!("{}{}", self.events_prefix(run_id), seq_name(seq))
    }

    async fn get_with_etag(&self, run_id: &str) -> Result<(RunRecord, String), StorageError> {
        let key = self.record_key(run_id);
        let Some(S3Object { bytes, e_tag: etag }) = self.location.get(&key).await? else {
            return Err(StorageError::RunNotFound {
                run_id: run_id.to_string(),
            });
        };
        self.remember(run_id);
        let record = decode_json(&key, &bytes)?;
        let etag = etag.ok_or_else(|| {
            StorageError::Service(ServiceError::new(
                "s3",
                "MissingETag",
                format!("GetObject {key}: no ETag in the response"),
                ErrorClass::Permanent,
            ))
        })?;
        Ok((record, etag))
    }

    fn remember(&self, run_id: &str) {
        self.known_runs
            .lock()
            .expect("known_runs lock")
            .insert(run_id.to_string());
    }

    async fn ensure_exists(&self, run_id: &str) -> Result<(), StorageError> {
        if self
            .known_runs
            .lock()
            .expect("known_runs lock")
            .contains(run_id)
        {
            return Ok(());
        }
        let key = self.record_key(run_id);
        match self
            .location
            .client
            .head_object()
            .bucket(self.bucket())
            .key(&key)
            .send()
            .await
        {
            Ok(_) => {
                self.remember(run_id);
                Ok(())
            }
            Err(e) if status_of(&e) == Some(404) => Err(StorageError::RunNotFound {
                run_id: run_id.to_string(),
            }),
            Err(e) => Err(s3_error("HeadObject", e)),
        }
    }

    /// The sequence number after the last batch listed after `after` (or from the start).
    async fn next_free(&self, run_id: &str, after: Option<u64>) -> Result<u64, StorageError> {
        let start_after = after.map(|seq| self.batch_key(run_id, seq));
        let keys = self
            .location
            .list(&self.events_prefix(run_id), start_after, None, usize::MAX)
            .await?;
        let last = keys
            .iter()
            .rev()
            .find_map(|k| k.rsplit('/').next().and_then(parse_seq));
        Ok(match (last, after) {
            (Some(seq), _) => seq + 1,
            (None, Some(after)) => after + 1,
            (None, None) => 0,
        })
    }
}

#[async_trait]
impl RunStore for S3RunStore {
    async fn create_run(&self, record: &RunRecord) -> Result<(), StorageError> {
        check_id(&record.run_id)?;
        let body = encode_json("run record", record)?;
        let key = self.record_key(&record.run_id);
        match self
            .location
            .put(&key, body, "application/json", Condition::Absent)
            .await?
        {
            PutOutcome::Written => {
                self.remember(&record.run_id);
                Ok(())
            }
            // A 409 means another create of the same id is in flight: it is taken either way.
            PutOutcome::PreconditionFailed | PutOutcome::Conflict => Err(StorageError::RunExists {
                run_id: record.run_id.clone(),
            }),
        }
    }

    async fn get_run(&self, run_id: &str) -> Result<RunRecord, StorageError> {
        check_id(run_id)?;
        Ok(self.get_with_etag(run_id).await?.0)
    }

    async fn list_runs(&self, limit: usize) -> Result<Vec<RunRecord>, StorageError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let prefix = self.location.key("runs/");
        let run_prefixes = self
            .location
            .list(&prefix, None, Some("/"), usize::MAX)
            .await?;
        let run_ids: Vec<String> = run_prefixes
            .iter()
            .filter_map(|p| p.strip_prefix(&prefix))
            .map(|id| id.trim_end_matches('/').to_string())
            .filter(|id| check_id(id).is_ok())
            .collect();
        let records: Vec<Option<RunRecord>> = futures::stream::iter(run_ids)
            .map(|run_id| async move {
                match self.get_run(&run_id).await {
                    Ok(record) => Ok(Some(record)),
                    Err(StorageError::RunNotFound { .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .buffer_unordered(FETCH_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(newest_first(records.into_iter().flatten().collect(), limit))
    }

    async fn change_status(
        &self,
        run_id: &str,
        change: &StatusChange,
    ) -> Result<RunRecord, StorageError> {
        check_id(run_id)?;
        let key = self.record_key(run_id);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (current, etag) = self.get_with_etag(run_id).await?;
            let next = current.apply(change, stepq_plan::events::now_us())?;
            let body = encode_json("run record", &next)?;
            match self
                .location
                .put(&key, body, "application/json", Condition::Matches(&etag))
                .await?
            {
                PutOutcome::Written => return Ok(next),
                PutOutcome::PreconditionFailed | PutOutcome::Conflict => continue,
            }
        }
        Err(StorageError::Contention {
            run_id: run_id.to_string(),
            attempts: MAX_CAS_ATTEMPTS,
        })
    }

    async fn append_events(&self, run_id: &str, events: &[Event]) -> Result<(), StorageError> {
        check_id(run_id)?;
        check_batch(run_id, events)?;
        self.ensure_exists(run_id).await?;
        if events.is_empty() {
            return Ok(());
        }
        let body = stepq_plan::pack(&events.to_vec()).map_err(|e| StorageError::Encode {
            what: "event batch",
            message: e.to_string(),
        })?;
        let hint = self
            .next_seq
            .lock()
            .expect("next_seq lock")
            .get(run_id)
            .copied();
        let mut seq = match hint {
            Some(seq) => seq,
            None => self.next_free(run_id, None).await?,
        };
        let mut conflicts = 0u32;
        loop {
            let key = self.batch_key(run_id, seq);
            let outcome = self
                .location
                .put(
                    &key,
                    body.clone(),
                    "application/octet-stream",
                    Condition::Absent,
                )
                .await?;
            if outcome == PutOutcome::Written {
                break;
            }
            conflicts += 1;
            if conflicts >= MAX_SEQ_CONFLICTS {
                return Err(StorageError::Contention {
                    run_id: run_id.to_string(),
                    attempts: conflicts,
                });
            }
            match outcome {
                // `seq` exists: move on, jumping to the end after a few misses.
                PutOutcome::PreconditionFailed if rescan_due(conflicts) => {
                    seq = self.next_free(run_id, Some(seq)).await?
                }
                PutOutcome::PreconditionFailed => seq += 1,
                // Another write of `seq` is in flight and may still fail: taking `seq + 1`
                // now could leave a gap, so retry `seq` after a short pause.
                _ => {
                    let pause = Duration::from_millis(5 * u64::from(conflicts.min(20)));
                    tokio::time::sleep(pause).await
                }
            }
        }
        self.next_seq
            .lock()
            .expect("next_seq lock")
            .insert(run_id.to_string(), seq + 1);
        Ok(())
    }

    async fn read_events(
        &self,
        run_id: &str,
        from: EventCursor,
    ) -> Result<EventPage, StorageError> {
        check_id(run_id)?;
        let start_after = from
            .0
            .checked_sub(1)
            .map(|prev| self.batch_key(run_id, prev));
        let keys = self
            .location
            .list(
                &self.events_prefix(run_id),
                start_after,
                None,
                MAX_BATCHES_PER_READ,
            )
            .await?;
        // Keep the run of consecutive numbers starting at `from` (a log has no gaps; this
        // only guards against stray objects).
        let keys: Vec<String> = keys
            .into_iter()
            .zip(from.0..)
            .take_while(|(key, seq)| key.rsplit('/').next().and_then(parse_seq) == Some(*seq))
            .map(|(key, _)| key)
            .collect();
        if keys.is_empty() {
            self.ensure_exists(run_id).await?;
            return Ok(EventPage {
                events: Vec::new(),
                next: from,
            });
        }
        let next = EventCursor(from.0 + keys.len() as u64);
        let batches: Vec<Vec<Event>> = futures::stream::iter(keys)
            .map(|key| async move {
                let Some(S3Object { bytes, .. }) = self.location.get(&key).await? else {
                    return Err(StorageError::Corrupt {
                        location: key,
                        message: "listed event batch disappeared".into(),
                    });
                };
                stepq_plan::unpack::<Vec<Event>>(&bytes).map_err(|e| StorageError::Corrupt {
                    location: key,
                    message: e.to_string(),
                })
            })
            .buffered(FETCH_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(EventPage {
            events: batches.into_iter().flatten().collect(),
            next,
        })
    }
}

/// Worker heartbeats in `<base_path>/workers/<worker_id>.json` in an S3 bucket.
#[derive(Clone)]
pub struct S3HeartbeatStore {
    location: Location,
}

impl S3HeartbeatStore {
    /// A store on `bucket` under `base_path`, with a client built from `sdk`.
    pub fn new(
        sdk: &aws_config::SdkConfig,
        bucket: impl Into<String>,
        base_path: impl AsRef<str>,
    ) -> Self {
        Self::from_client(s3_client(sdk), bucket, base_path)
    }

    /// A store using an existing client.
    pub fn from_client(
        client: Client,
        bucket: impl Into<String>,
        base_path: impl AsRef<str>,
    ) -> Self {
        S3HeartbeatStore {
            location: Location::new(client, bucket, base_path.as_ref()),
        }
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.location.bucket
    }

    /// The normalized base path (no leading or trailing `/`).
    pub fn base_path(&self) -> &str {
        &self.location.base
    }

    fn key(&self, worker_id: &str) -> String {
        self.location.key(&format!("workers/{worker_id}.json"))
    }
}

#[async_trait]
impl HeartbeatStore for S3HeartbeatStore {
    async fn put_heartbeat(&self, heartbeat: &WorkerHeartbeat) -> Result<(), StorageError> {
        check_id(&heartbeat.worker_id)?;
        let body = encode_json("worker heartbeat", heartbeat)?;
        self.location
            .put(
                &self.key(&heartbeat.worker_id),
                body,
                "application/json",
                Condition::None,
            )
            .await
            .and_then(|outcome| match outcome {
                PutOutcome::Written => Ok(()),
                other => Err(StorageError::Service(ServiceError::new(
                    "s3",
                    format!("{other:?}"),
                    "unconditional PutObject refused",
                    ErrorClass::Temporary,
                ))),
            })
    }

    async fn list_heartbeats(&self) -> Result<Vec<WorkerHeartbeat>, StorageError> {
        let keys = self
            .location
            .list(&self.location.key("workers/"), None, None, usize::MAX)
            .await?;
        let heartbeats: Vec<Option<WorkerHeartbeat>> = futures::stream::iter(keys)
            .filter(|key| std::future::ready(key.ends_with(".json")))
            .map(|key| async move {
                match self.location.get(&key).await? {
                    Some(S3Object { bytes, .. }) => decode_json(&key, &bytes).map(Some),
                    // Removed since the listing: the worker stopped.
                    None => Ok(None),
                }
            })
            .buffer_unordered(FETCH_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(heartbeats.into_iter().flatten().collect())
    }

    async fn remove_heartbeat(&self, worker_id: &str) -> Result<(), StorageError> {
        check_id(worker_id)?;
        self.location
            .client
            .delete_object()
            .bucket(&*self.location.bucket)
            .key(self.key(worker_id))
            .send()
            .await
            .map(drop)
            .map_err(|e| s3_error("DeleteObject", e))
    }
}

fn encode_json<T: serde::Serialize>(
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec_pretty(value).map_err(|e| StorageError::Encode {
        what,
        message: e.to_string(),
    })
}

fn decode_json<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StorageError> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::Corrupt {
        location: key.to_string(),
        message: e.to_string(),
    })
}

fn status_of<E>(err: &SdkError<E>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// An S3 operation's error as [`StorageError::Service`] (code, class and source from
/// [`aws_error`]).
fn s3_error<E>(operation: &str, err: SdkError<E>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    aws_error("s3", operation, err).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

    fn offline_client() -> Client {
        // Nothing listens on port 9 of the loopback: every call fails to dispatch.
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .endpoint_url("http://127.0.0.1:9")
            .force_path_style(true)
            .build();
        Client::from_conf(config)
    }

    #[test]
    fn keys_live_under_the_normalized_base_path() {
        let store = S3RunStore::from_client(offline_client(), "bucket", "/stepq/dev/");
        assert_eq!(store.base_path(), "stepq/dev");
        assert_eq!(store.record_key("r1"), "stepq/dev/runs/r1/run.json");
        assert_eq!(
            store.batch_key("r1", 7),
            "stepq/dev/runs/r1/events/00000000000000000007"
        );
        let root = S3RunStore::from_client(offline_client(), "bucket", "");
        assert_eq!(root.record_key("r1"), "runs/r1/run.json");
        let heartbeats = S3HeartbeatStore::from_client(offline_client(), "bucket", "x");
        assert_eq!(heartbeats.key("w1"), "x/workers/w1.json");
    }

    #[tokio::test]
    async fn unreachable_endpoint_is_a_temporary_service_error() {
        let store = S3RunStore::from_client(offline_client(), "bucket", "base");
        match store.get_run("r1").await {
            Err(err @ StorageError::Service(_)) => {
                assert!(err.is_temporary(), "{err}");
                let StorageError::Service(e) = &err else {
                    unreachable!()
                };
                assert_eq!(e.code, "DispatchFailure");
                assert!(e.message.starts_with("GetObject"), "{}", e.message);
                // The SDK's error is kept as the source, with its own causes below it.
                let source = std::error::Error::source(&err).expect("the SDK error");
                assert!(source.source().is_some(), "{source:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn invalid_ids_are_rejected_before_any_request() {
        let store = S3RunStore::from_client(offline_client(), "bucket", "base");
        for bad in ["", "a/b", ".."] {
            assert!(matches!(
                store.get_run(bad).await,
                Err(StorageError::InvalidId { .. })
            ));
        }
    }
}
