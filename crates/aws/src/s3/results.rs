//! [`S3ResultBackend`]: task results as JSON objects in a bucket.

use std::time::Duration;

use crate::timeouts;
use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use stepq_results::backend::ResultBackend;
use stepq_results::error::ResultError;
use stepq_results::local::check_segment;
use stepq_results::result::TaskResult;

use super::{
    check_bucket, get_object_bytes, join_key, normalize_base, object_exists, s3_client, s3_error,
};

/// How result objects are named under `<base>/results/`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultKeys {
    /// `<base>/results/<task_id>.json` (the default).
    #[default]
    Stepq,
    /// `<base>/results/<task_id>`: where taskiq-aio-sqs's `S3Backend(base_path =
    /// "<base>/results")` reads and writes, for a fleet that mixes stepq and Python TaskIQ
    /// producers or workers on one queue.
    Taskiq,
}

/// Task results stored as JSON objects at `<base>/results/<task_id>.json` in an S3 bucket
/// (or `<base>/results/<task_id>` with [`ResultKeys::Taskiq`]).
///
/// `wait_result` polls with capped exponential backoff (see
/// [`stepq_results::backend::poll_until_ready`]); orchestrators that want fewer requests are notified
/// through their own channel and read the result once.
#[derive(Clone, Debug)]
pub struct S3ResultBackend {
    client: aws_sdk_s3::Client,
    bucket: String,
    base: String,
    keys: ResultKeys,
}

impl S3ResultBackend {
    /// A backend on `bucket` under `base_path`, with a client built from `sdk`.
    pub fn new(sdk: &aws_config::SdkConfig, bucket: impl Into<String>, base_path: &str) -> Self {
        Self::from_client(s3_client(sdk), bucket, base_path)
    }

    /// A backend using an existing S3 client.
    pub fn from_client(
        client: aws_sdk_s3::Client,
        bucket: impl Into<String>,
        base_path: &str,
    ) -> Self {
        S3ResultBackend {
            client,
            bucket: bucket.into(),
            base: normalize_base(base_path),
            keys: ResultKeys::default(),
        }
    }

    /// The same backend naming its objects by `keys`.
    pub fn with_result_keys(mut self, keys: ResultKeys) -> Self {
        self.keys = keys;
        self
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The object key of a task's result.
    pub fn result_key(&self, task_id: &str) -> Result<String, ResultError> {
        check_segment(task_id)?;
        let name = match self.keys {
            ResultKeys::Stepq => format!("results/{task_id}.json"),
            ResultKeys::Taskiq => format!("results/{task_id}"),
        };
        Ok(join_key(&self.base, &name))
    }
}

#[async_trait]
impl ResultBackend for S3ResultBackend {
    async fn startup(&self) -> Result<(), ResultError> {
        check_bucket(&self.client, &self.bucket).await
    }

    async fn set_result(&self, task_id: &str, result: &TaskResult) -> Result<(), ResultError> {
        let key = self.result_key(task_id)?;
        let body = result.to_json();
        let transfer = timeouts::s3_transfer(body.len());
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/json")
            .body(ByteStream::from(body))
            .customize()
            .config_override(transfer)
            .send()
            .await
            .map_err(|e| s3_error("PutObject", e))?;
        Ok(())
    }

    async fn is_result_ready(&self, task_id: &str) -> Result<bool, ResultError> {
        let key = self.result_key(task_id)?;
        object_exists(&self.client, &self.bucket, &key).await
    }

    async fn get_result(&self, task_id: &str, with_logs: bool) -> Result<TaskResult, ResultError> {
        let key = self.result_key(task_id)?;
        let bytes = get_object_bytes(&self.client, &self.bucket, &key)
            .await?
            .ok_or_else(|| ResultError::NotFound {
                task_id: task_id.to_string(),
            })?;
        let mut result = TaskResult::from_json(&bytes).map_err(|e| ResultError::Corrupt {
            task_id: task_id.to_string(),
            message: e.to_string(),
        })?;
        if !with_logs {
            result.log = None;
        }
        Ok(result)
    }

    async fn wait_result(
        &self,
        task_id: &str,
        timeout: Option<Duration>,
    ) -> Result<TaskResult, ResultError> {
        self.result_key(task_id)?;
        stepq_results::backend::poll_until_ready(self, task_id, timeout).await
    }

    async fn delete_result(&self, task_id: &str) -> Result<(), ResultError> {
        let key = self.result_key(task_id)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| s3_error("DeleteObject", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::test_support::offline_sdk;
    use crate::s3::S3OutputStore;
    use stepq_results::OutputKey;

    #[test]
    fn result_keys_sit_under_the_base_path() {
        let sdk = offline_sdk(None);
        let b = S3ResultBackend::new(&sdk, "bucket", "/runs/a/");
        assert_eq!(b.result_key("t1").unwrap(), "runs/a/results/t1.json");
        let taskiq = b.clone().with_result_keys(ResultKeys::Taskiq);
        assert_eq!(taskiq.result_key("t1").unwrap(), "runs/a/results/t1");
        let root = S3ResultBackend::new(&sdk, "bucket", "");
        assert_eq!(root.result_key("t1").unwrap(), "results/t1.json");
    }

    #[test]
    fn unusable_ids_are_rejected_before_any_request() {
        let sdk = offline_sdk(None);
        let b = S3ResultBackend::new(&sdk, "bucket", "base");
        for bad in ["", "..", "a/b"] {
            assert!(
                matches!(b.result_key(bad), Err(ResultError::InvalidKey { .. })),
                "{bad:?} accepted"
            );
        }
        let s = S3OutputStore::new(&sdk, "bucket", "base");
        assert!(matches!(
            s.output_key(&OutputKey::new("run", "a/b", "out")),
            Err(ResultError::InvalidKey { .. })
        ));
        assert!(matches!(
            s.run_prefix(""),
            Err(ResultError::InvalidKey { .. })
        ));
    }

    #[tokio::test]
    async fn an_invalid_task_id_fails_every_operation_with_invalid_key() {
        let sdk = offline_sdk(Some("http://127.0.0.1:1"));
        let b = S3ResultBackend::new(&sdk, "bucket", "base");
        let r = TaskResult::ok(serde_json::json!(1), 0.0);
        assert!(matches!(
            b.set_result("a/b", &r).await,
            Err(ResultError::InvalidKey { .. })
        ));
        assert!(matches!(
            b.get_result("..", true).await,
            Err(ResultError::InvalidKey { .. })
        ));
        assert!(matches!(
            b.wait_result("", Some(Duration::from_millis(1))).await,
            Err(ResultError::InvalidKey { .. })
        ));
    }
}
