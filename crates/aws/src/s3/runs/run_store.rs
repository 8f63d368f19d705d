//! [`S3RunStore`]: run records (created with `If-None-Match`, changed by compare-and-set on
//! their ETag) and append-only event logs (one conditional object per batch), in S3.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use futures::{StreamExt, TryStreamExt};
use stepq_plan::Event;
use stepq_results::{ErrorClass, ServiceError};

use super::location::{
    decode_json, encode_json, s3_error, status_of, Condition, Location, PutOutcome,
    FETCH_CONCURRENCY,
};
use super::s3_client;
use crate::s3::S3Object;
use stepq_runs::error::{check_id, StorageError};
use stepq_runs::record::{RunRecord, RunStatus, StatusChange};
use stepq_runs::store::{
    check_batch, check_deletable, newest_first, parse_seq, rescan_due, seq_name, DeletedRun,
    EventCursor, EventPage, RunStore, MAX_BATCHES_PER_READ, MAX_CAS_ATTEMPTS,
};

/// What `run.json` holds between a delete's commit point and the removal of its objects: no
/// record decodes from it, every read of it is `RunNotFound`.
const TOMBSTONE: &[u8] = b"{\"stepq_deleted_run\":true}";

/// Most conflicts an event writer accepts before giving up with [`StorageError::Contention`].
const MAX_SEQ_CONFLICTS: u32 = 10_000;

/// Runs and event logs in an S3 bucket under a base path. See the module docs for the layout
/// and how concurrent writers are kept apart.
#[derive(Clone)]
pub struct S3RunStore {
    location: Location,
    /// Next event sequence number to try, per run (a hint; conflicts are resolved by S3).
    next_seq: Arc<Mutex<HashMap<String, u64>>>,
    /// Runs known to exist (forgotten when this handle deletes one), to skip a request per
    /// append.
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
        if bytes[..] == *TOMBSTONE {
            return Err(StorageError::RunNotFound {
                run_id: run_id.to_string(),
            });
        }
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
            .put_new(&key, body, "application/json")
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

    /// Overwrites `run.json` with a tombstone by the same `If-Match` compare-and-set a status
    /// change makes (the commit point: a change racing it either wrote first, and the delete
    /// re-reads and is refused, or re-reads the tombstone and fails with `RunNotFound`), then
    /// deletes the event batches, then `run.json` last. A process killed in between leaves
    /// objects under `runs/<run_id>/` that read as no run.
    async fn delete_run(
        &self,
        run_id: &str,
        expected: RunStatus,
    ) -> Result<DeletedRun, StorageError> {
        check_deletable(run_id, expected)?;
        check_id(run_id)?;
        let key = self.record_key(run_id);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (current, etag) = self.get_with_etag(run_id).await?;
            if current.status != expected {
                return Err(StorageError::UnexpectedStatus {
                    run_id: run_id.to_string(),
                    expected,
                    found: current.status,
                });
            }
            let record_bytes = encode_json("run record", &current)?.len() as u64;
            match self
                .location
                .put(
                    &key,
                    TOMBSTONE.to_vec(),
                    "application/json",
                    Condition::Matches(&etag),
                )
                .await?
            {
                PutOutcome::Written => {}
                PutOutcome::PreconditionFailed | PutOutcome::Conflict => continue,
            }
            self.known_runs
                .lock()
                .expect("known_runs lock")
                .remove(run_id);
            self.next_seq.lock().expect("next_seq lock").remove(run_id);
            let batches = self
                .location
                .list_sized(&self.events_prefix(run_id))
                .await?;
            let batch_bytes: u64 = batches.iter().map(|(_, size)| size).sum();
            let count = batches.len() as u64;
            self.location
                .delete_keys(batches.into_iter().map(|(k, _)| k).collect())
                .await?;
            self.location.delete_keys(vec![key]).await?;
            return Ok(DeletedRun::new(
                current,
                count,
                Some(record_bytes + batch_bytes),
            ));
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
                .put_new(&key, body.clone(), "application/octet-stream")
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::runs::tests::offline_client;

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
