//! [`S3HeartbeatStore`]: worker heartbeats, one JSON object per worker, in S3.

use async_trait::async_trait;
use aws_sdk_s3::Client;
use futures::{StreamExt, TryStreamExt};
use stepq_results::{ErrorClass, ServiceError};
use stepq_runs::error::{check_id, StorageError};
use stepq_runs::heartbeat::{HeartbeatStore, WorkerHeartbeat};

use super::location::{
    decode_json, encode_json, s3_error, Condition, Location, PutOutcome, FETCH_CONCURRENCY,
};
use super::s3_client;
use crate::s3::S3Object;

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

    /// The key of `worker_id`'s heartbeat.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::runs::tests::offline_client;

    #[test]
    fn keys_live_under_the_normalized_base_path() {
        let heartbeats = S3HeartbeatStore::from_client(offline_client(), "bucket", "x");
        assert_eq!(heartbeats.key("w1"), "x/workers/w1.json");
    }
}
