//! [`S3OutputStore`]: step outputs as objects in a bucket.

use crate::timeouts;
use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use stepq_results::error::ResultError;

use stepq_results::local::check_segment;
use stepq_results::output::{OutputKey, OutputStore};

use super::delete::delete_objects;
use super::{
    check_bucket, get_object_bytes, join_key, normalize_base, object_exists, s3_client, s3_error,
};

/// Step outputs stored as objects at `<base>/outputs/<run_id>/<step_key>/<output_name>`.
#[derive(Clone, Debug)]
pub struct S3OutputStore {
    client: aws_sdk_s3::Client,
    bucket: String,
    base: String,
}

impl S3OutputStore {
    /// A store on `bucket` under `base_path`, with a client built from `sdk`.
    pub fn new(sdk: &aws_config::SdkConfig, bucket: impl Into<String>, base_path: &str) -> Self {
        Self::from_client(s3_client(sdk), bucket, base_path)
    }

    /// A store using an existing S3 client.
    pub fn from_client(
        client: aws_sdk_s3::Client,
        bucket: impl Into<String>,
        base_path: &str,
    ) -> Self {
        S3OutputStore {
            client,
            bucket: bucket.into(),
            base: normalize_base(base_path),
        }
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Checks that the bucket exists (a missing one is a permanent `NoSuchBucket` error).
    pub async fn check(&self) -> Result<(), ResultError> {
        check_bucket(&self.client, &self.bucket).await
    }

    /// The object key of an output.
    pub fn output_key(&self, key: &OutputKey) -> Result<String, ResultError> {
        Ok(join_key(
            &self.base,
            &format!("outputs/{}", key.relative_path()?),
        ))
    }

    /// The key prefix of every output of a run (ends with `/`).
    pub(crate) fn run_prefix(&self, run_id: &str) -> Result<String, ResultError> {
        check_segment(run_id)?;
        Ok(join_key(&self.base, &format!("outputs/{run_id}/")))
    }
}

#[async_trait]
impl OutputStore for S3OutputStore {
    async fn put(&self, key: &OutputKey, value: Bytes) -> Result<(), ResultError> {
        let object_key = self.output_key(key)?;
        let transfer = timeouts::s3_transfer(value.len());
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .body(ByteStream::from(value))
            .customize()
            .config_override(transfer)
            .send()
            .await
            .map_err(|e| s3_error("PutObject", e))?;
        Ok(())
    }

    async fn get(&self, key: &OutputKey) -> Result<Bytes, ResultError> {
        let object_key = self.output_key(key)?;
        get_object_bytes(&self.client, &self.bucket, &object_key)
            .await?
            .ok_or_else(|| ResultError::OutputNotFound {
                key: key.to_string(),
            })
    }

    async fn exists(&self, key: &OutputKey) -> Result<bool, ResultError> {
        let object_key = self.output_key(key)?;
        object_exists(&self.client, &self.bucket, &object_key).await
    }

    async fn delete_run(&self, run_id: &str) -> Result<(), ResultError> {
        let prefix = self.run_prefix(run_id)?;
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&prefix)
            .into_paginator()
            .send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| s3_error("ListObjectsV2", e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
        }
        Ok(delete_objects(&self.client, &self.bucket, &keys).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::test_support::offline_sdk;

    #[test]
    fn output_keys_sit_under_the_base_path() {
        let sdk = offline_sdk(Some("http://127.0.0.1:1"));
        let s = S3OutputStore::new(&sdk, "bucket", "base");
        let key = OutputKey::new("run", "step", "result");
        assert_eq!(s.output_key(&key).unwrap(), "base/outputs/run/step/result");
        assert_eq!(s.run_prefix("run").unwrap(), "base/outputs/run/");
    }
}
