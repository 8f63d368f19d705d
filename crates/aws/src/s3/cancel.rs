//! Cancel markers as S3 objects.

use crate::s3::{get_object, head_bucket, join_key, s3_client};
use async_trait::async_trait;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;

use stepq_cancel::error::CancelError;
use stepq_cancel::marker::{check_task_id, CancelMarker};
use stepq_cancel::store::{CancelStore, CANCELS_DIR};

/// Cancel markers as JSON objects `<base>/cancels/<task_id>.json` in an S3 bucket, usually the
/// result bucket. S3's strong read-after-write and list-after-write consistency means a worker
/// that lists markers after a cancel was written sees it.
///
/// Markers expire after the cancellable broker's TTL (whoever lists them deletes expired ones);
/// a bucket lifecycle rule on the `cancels/` prefix (expire after 1 day) is a good backstop.
#[derive(Debug, Clone)]
pub struct S3CancelStore {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

/// An S3 operation's error as [`CancelError::Store`].
fn s3_error<E>(operation: &str, err: SdkError<E>) -> CancelError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    CancelError::Store(crate::s3::s3_error(operation, err))
}

impl S3CancelStore {
    /// A store on `bucket` under `base_path` (may be empty), with a client built from `sdk`
    /// (path-style addressing when an endpoint override is set, for LocalStack).
    pub fn new(sdk: &aws_config::SdkConfig, bucket: impl Into<String>, base_path: &str) -> Self {
        Self::from_client(s3_client(sdk), bucket, base_path)
    }

    /// A store using an existing S3 client.
    pub fn from_client(
        client: aws_sdk_s3::Client,
        bucket: impl Into<String>,
        base_path: &str,
    ) -> Self {
        S3CancelStore {
            client,
            bucket: bucket.into(),
            prefix: join_key(base_path, &format!("{CANCELS_DIR}/")),
        }
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The object key of a task's marker.
    pub fn marker_key(&self, task_id: &str) -> Result<String, CancelError> {
        check_task_id(task_id)?;
        Ok(format!("{}{task_id}.json", self.prefix))
    }

    async fn read(&self, key: &str) -> Result<Option<CancelMarker>, CancelError> {
        let Some(object) = get_object(&self.client, &self.bucket, key)
            .await
            .map_err(|e| CancelError::Store(e.into()))?
        else {
            return Ok(None);
        };
        CancelMarker::from_json(&object.bytes)
            .map(Some)
            .map_err(|e| CancelError::Malformed {
                reason: format!("object `s3://{}/{key}`: {e}", self.bucket),
            })
    }
}

#[async_trait]
impl CancelStore for S3CancelStore {
    /// Checks that the bucket answers.
    async fn startup(&self) -> Result<(), CancelError> {
        head_bucket(&self.client, &self.bucket, "cancel marker bucket")
            .await
            .map_err(|e| CancelError::Store(e.into()))
    }

    async fn put(&self, marker: &CancelMarker) -> Result<(), CancelError> {
        let key = self.marker_key(&marker.task_id)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/json")
            .body(ByteStream::from(marker.to_json()))
            .send()
            .await
            .map_err(|e| s3_error("PutObject", e))?;
        Ok(())
    }

    async fn get(&self, task_id: &str) -> Result<Option<CancelMarker>, CancelError> {
        let key = self.marker_key(task_id)?;
        self.read(&key).await
    }

    async fn list(&self) -> Result<Vec<CancelMarker>, CancelError> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| s3_error("ListObjectsV2", e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key())
                    .filter(|k| k.ends_with(".json"))
                    .map(str::to_string),
            );
        }
        let mut markers = Vec::with_capacity(keys.len());
        for key in keys {
            match self.read(&key).await {
                Ok(Some(marker)) => markers.push(marker),
                Ok(None) => {}
                Err(e @ CancelError::Malformed { .. }) => {
                    tracing::error!(error = %e, "skipping an unreadable cancel marker")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(markers)
    }

    async fn delete(&self, task_id: &str) -> Result<(), CancelError> {
        let key = self.marker_key(task_id)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| s3_error("DeleteObject", e))?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "s3"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    #[test]
    fn keys_sit_under_the_base_path() {
        let store = S3CancelStore::from_client(client(), "bucket", "/stepq/");
        assert_eq!(store.marker_key("t1").unwrap(), "stepq/cancels/t1.json");
        let root = S3CancelStore::from_client(client(), "bucket", "");
        assert_eq!(root.marker_key("t1").unwrap(), "cancels/t1.json");
        assert!(matches!(
            root.marker_key("../x"),
            Err(CancelError::InvalidTaskId { .. })
        ));
        assert_eq!(root.kind(), "s3");
        assert!(!root.lookups_are_free());
    }
}
