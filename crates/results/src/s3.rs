//! S3 result backend and output store, plus what the other crates' AWS code shares: the AWS
//! error classification ([`aws_error_info`]), the S3 client ([`s3_client`]) and the small S3
//! calls every S3-backed store makes ([`get_object`], [`head_bucket`], [`join_key`]).
//!
//! Layout under a bucket and a base path (`base` may be empty):
//!
//! - results: `<base>/results/<task_id>.json` (a [`TaskResult`] as JSON),
//! - outputs: `<base>/outputs/<run_id>/<step_key>/<output_name>` (raw bytes).
//!
//! Clients are built from an [`aws_config::SdkConfig`] (credentials and region through the
//! usual chain); when the config carries an endpoint override (LocalStack, MinIO) the client
//! uses path-style addressing, which those emulators need.
//!
//! ```no_run
//! # async fn demo() -> Result<(), stepq_results::ResultError> {
//! use stepq_results::s3::S3ResultBackend;
//! use stepq_results::{ResultBackend, TaskResult};
//!
//! let sdk = aws_config::load_from_env().await;
//! let backend = S3ResultBackend::new(&sdk, "my-bucket", "stepq");
//! backend.startup().await?; // checks that the bucket exists
//! backend.set_result("task-1", &TaskResult::ok(serde_json::json!(1), 0.1)).await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use bytes::Bytes;

use crate::backend::ResultBackend;
use crate::error::{ErrorClass, ResultError};
use crate::local::check_segment;
use crate::output::{OutputKey, OutputStore};
use crate::result::TaskResult;

/// Error codes AWS services use for throttling and transient server trouble: retrying helps.
const TEMPORARY_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "AWS.SimpleQueueService.RequestThrottled",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "ProvisionedThroughputExceededException",
    "SlowDown",
    "PriorRequestNotComplete",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "KmsThrottled",
    "KMS.ThrottlingException",
    "RequestTimeTooSkewed",
    "ConditionalRequestConflict",
];

/// What kind of failure an AWS SDK call ended in, before any response code is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwsFailureKind {
    /// The service answered with an error response.
    Service,
    /// The call timed out.
    Timeout,
    /// The request could not be sent or no response arrived (network, connection refused).
    Dispatch,
    /// The request could not be built (a bad parameter or configuration on our side).
    Construction,
    /// A response arrived but could not be read.
    Response,
}

/// An AWS SDK error reduced to what callers act on: the error code, a message, and whether
/// retrying can help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsErrorInfo {
    /// The AWS error code (e.g. `NoSuchBucket`, `AWS.SimpleQueueService.NonExistentQueue`), or
    /// a stand-in (`Timeout`, `DispatchFailure`, `HTTP503` ...) when the service gave none.
    pub code: String,
    /// The operation name and the service's (or SDK's) message.
    pub message: String,
    /// Temporary (throttling, 5xx, timeouts, network) or permanent.
    pub class: ErrorClass,
}

/// Classifies a failure: throttling codes, HTTP 5xx / 429, timeouts and network failures are
/// [`ErrorClass::Temporary`]; everything else (missing queue or bucket, access denied, bad
/// credentials, bad parameters) is [`ErrorClass::Permanent`].
pub fn classify_aws_failure(
    kind: AwsFailureKind,
    code: Option<&str>,
    status: Option<u16>,
) -> ErrorClass {
    match kind {
        AwsFailureKind::Timeout | AwsFailureKind::Dispatch | AwsFailureKind::Response => {
            ErrorClass::Temporary
        }
        AwsFailureKind::Construction => ErrorClass::Permanent,
        AwsFailureKind::Service => {
            let temporary_code = code.is_some_and(|c| TEMPORARY_CODES.contains(&c));
            let temporary_status = status.is_some_and(|s| s >= 500 || s == 429);
            if temporary_code || temporary_status {
                ErrorClass::Temporary
            } else {
                ErrorClass::Permanent
            }
        }
    }
}

/// Reduces an error of any AWS SDK operation (S3, SQS ...) to an [`AwsErrorInfo`];
/// `operation` (e.g. `GetObject`) is put in front of the message.
pub fn aws_error_info<E>(operation: &str, err: &SdkError<E>) -> AwsErrorInfo
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let (kind, fallback_code) = match err {
        SdkError::ServiceError(_) => (AwsFailureKind::Service, None),
        SdkError::TimeoutError(_) => (AwsFailureKind::Timeout, Some("Timeout")),
        SdkError::DispatchFailure(d) if d.is_user() => {
            (AwsFailureKind::Construction, Some("DispatchFailure"))
        }
        SdkError::DispatchFailure(d) if d.is_timeout() => {
            (AwsFailureKind::Timeout, Some("Timeout"))
        }
        SdkError::DispatchFailure(_) => (AwsFailureKind::Dispatch, Some("DispatchFailure")),
        SdkError::ConstructionFailure(_) => {
            (AwsFailureKind::Construction, Some("ConstructionFailure"))
        }
        SdkError::ResponseError(_) => (AwsFailureKind::Response, Some("ResponseError")),
        _ => (AwsFailureKind::Dispatch, Some("Unknown")),
    };
    let code = err
        .code()
        .map(str::to_string)
        .unwrap_or_else(|| match (fallback_code, status) {
            (Some(c), _) => c.to_string(),
            (None, Some(s)) => format!("HTTP{s}"),
            (None, None) => "Unknown".to_string(),
        });
    let detail = match err.message() {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => DisplayErrorContext(err).to_string(),
    };
    AwsErrorInfo {
        class: classify_aws_failure(kind, Some(&code), status),
        code,
        message: format!("{operation}: {detail}"),
    }
}

impl AwsErrorInfo {
    /// A response body that arrived but could not be read to the end: `ResponseError`,
    /// temporary (the request can simply be made again).
    pub fn body_read(operation: &str, key: &str, err: impl std::fmt::Display) -> Self {
        AwsErrorInfo {
            code: "ResponseError".into(),
            message: format!("{operation} `{key}`: reading the body failed: {err}"),
            class: ErrorClass::Temporary,
        }
    }

    /// As a [`ResultError::Service`] of `service` (e.g. `s3`).
    pub fn into_result_error(self, service: &'static str) -> ResultError {
        ResultError::Service {
            service,
            code: self.code,
            message: self.message,
            class: self.class,
        }
    }
}

/// An error of an S3 operation as a [`ResultError::Service`] with its AWS error code and
/// whether retrying can help (see [`aws_error_info`]).
pub fn s3_error<E>(operation: &str, err: &SdkError<E>) -> ResultError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    aws_error_info(operation, err).into_result_error("s3")
}

/// A whole object read by [`get_object`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Object {
    /// The object's content.
    pub bytes: Bytes,
    /// Its ETag, for a conditional write after the read (`If-Match`).
    pub e_tag: Option<String>,
}

/// Reads a whole object; `Ok(None)` when the bucket has no such key. Failures, including a
/// body that breaks off (see [`AwsErrorInfo::body_read`]), come as an [`AwsErrorInfo`] for the
/// caller to wrap in its own error type.
pub async fn get_object(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<Option<S3Object>, AwsErrorInfo> {
    let out = match client.get_object().bucket(bucket).key(key).send().await {
        Ok(out) => out,
        Err(e) if is_no_such_key(&e) => return Ok(None),
        Err(e) => return Err(aws_error_info("GetObject", &e)),
    };
    let e_tag = out.e_tag().map(str::to_string);
    let data = out
        .body
        .collect()
        .await
        .map_err(|e| AwsErrorInfo::body_read("GetObject", key, e))?;
    Ok(Some(S3Object {
        bytes: data.into_bytes(),
        e_tag,
    }))
}

/// Whether a GetObject failed because the key does not exist (`NoSuchKey`, or a bare 404).
fn is_no_such_key(err: &SdkError<aws_sdk_s3::operation::get_object::GetObjectError>) -> bool {
    err.as_service_error().is_some_and(|s| s.is_no_such_key())
        || (err.code().is_none() && err.raw_response().map(|r| r.status().as_u16()) == Some(404))
}

/// Builds an S3 client from `sdk`, with path-style addressing when an endpoint override is set
/// (LocalStack and other emulators need it).
pub fn s3_client(sdk: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(sdk.endpoint_url().is_some())
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Normalizes a base path: no leading or trailing `/`; empty means the bucket root.
fn normalize_base(base_path: &str) -> String {
    base_path.trim_matches('/').to_string()
}

/// The object key of `rest` under a base path (leading and trailing `/` of `base_path` are
/// ignored; an empty one means the bucket root).
///
/// ```
/// use stepq_results::s3::join_key;
/// assert_eq!(join_key("/stepq/dev/", "runs/r1"), "stepq/dev/runs/r1");
/// assert_eq!(join_key("", "runs/r1"), "runs/r1");
/// ```
pub fn join_key(base_path: &str, rest: &str) -> String {
    match base_path.trim_matches('/') {
        "" => rest.to_string(),
        base => format!("{base}/{rest}"),
    }
}

/// Checks that a bucket exists and answers (one HeadBucket). A missing bucket is a permanent
/// `NoSuchBucket` whose message calls it `what` (e.g. `bucket`, `extended payload bucket`).
pub async fn head_bucket(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    what: &str,
) -> Result<(), AwsErrorInfo> {
    match client.head_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(()),
        Err(e) => {
            let mut info = aws_error_info("HeadBucket", &e);
            if e.raw_response().map(|r| r.status().as_u16()) == Some(404) {
                info.code = "NoSuchBucket".to_string();
                info.message = format!("HeadBucket: {what} `{bucket}` does not exist");
                info.class = ErrorClass::Permanent;
            }
            Err(info)
        }
    }
}

/// Checks that a bucket answers; a missing one is a permanent `NoSuchBucket` error.
async fn check_bucket(client: &aws_sdk_s3::Client, bucket: &str) -> Result<(), ResultError> {
    head_bucket(client, bucket, "bucket")
        .await
        .map_err(|info| info.into_result_error("s3"))
}

/// Reads a whole object's bytes; `Ok(None)` when it does not exist.
async fn get_object_bytes(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<Option<Bytes>, ResultError> {
    match get_object(client, bucket, key).await {
        Ok(object) => Ok(object.map(|o| o.bytes)),
        Err(info) => Err(info.into_result_error("s3")),
    }
}

/// Whether an object exists (HEAD).
async fn object_exists(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<bool, ResultError> {
    match client.head_object().bucket(bucket).key(key).send().await {
        Ok(_) => Ok(true),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
        Err(e) => Err(s3_error("HeadObject", &e)),
    }
}

/// Task results stored as JSON objects at `<base>/results/<task_id>.json` in an S3 bucket.
///
/// `wait_result` polls with capped exponential backoff (see
/// [`crate::backend::poll_until_ready`]); orchestrators that want fewer requests are notified
/// through their own channel and read the result once.
#[derive(Clone, Debug)]
pub struct S3ResultBackend {
    client: aws_sdk_s3::Client,
    bucket: String,
    base: String,
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
        }
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The object key of a task's result.
    pub fn result_key(&self, task_id: &str) -> Result<String, ResultError> {
        check_segment(task_id)?;
        Ok(join_key(&self.base, &format!("results/{task_id}.json")))
    }
}

#[async_trait]
impl ResultBackend for S3ResultBackend {
    async fn startup(&self) -> Result<(), ResultError> {
        check_bucket(&self.client, &self.bucket).await
    }

    async fn set_result(&self, task_id: &str, result: &TaskResult) -> Result<(), ResultError> {
        let key = self.result_key(task_id)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/json")
            .body(ByteStream::from(result.to_json()))
            .send()
            .await
            .map_err(|e| s3_error("PutObject", &e))?;
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
        crate::backend::poll_until_ready(self, task_id, timeout).await
    }

    async fn delete_result(&self, task_id: &str) -> Result<(), ResultError> {
        let key = self.result_key(task_id)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| s3_error("DeleteObject", &e))?;
        Ok(())
    }
}

/// Step outputs stored as objects at `<base>/outputs/<run_id>/<step_key>/<output_name>`.
#[derive(Clone, Debug)]
pub struct S3OutputStore {
    client: aws_sdk_s3::Client,
    bucket: String,
    base: String,
}

/// DeleteObjects accepts at most this many keys per call.
const DELETE_OBJECTS_LIMIT: usize = 1000;

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
    fn run_prefix(&self, run_id: &str) -> Result<String, ResultError> {
        check_segment(run_id)?;
        Ok(join_key(&self.base, &format!("outputs/{run_id}/")))
    }

    /// Deletes up to [`DELETE_OBJECTS_LIMIT`] keys; any per-key failure is an error naming it.
    async fn delete_keys(&self, keys: Vec<String>) -> Result<(), ResultError> {
        let count = keys.len();
        let objects = keys
            .into_iter()
            .map(|k| ObjectIdentifier::builder().key(k).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ResultError::Service {
                service: "s3",
                code: "ConstructionFailure".into(),
                message: format!("DeleteObjects: {e}"),
                class: ErrorClass::Permanent,
            })?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|e| ResultError::Service {
                service: "s3",
                code: "ConstructionFailure".into(),
                message: format!("DeleteObjects: {e}"),
                class: ErrorClass::Permanent,
            })?;
        let out = self
            .client
            .delete_objects()
            .bucket(&self.bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| s3_error("DeleteObjects", &e))?;
        if let Some(first) = out.errors().first() {
            let code = first.code().unwrap_or("Unknown").to_string();
            let class = classify_aws_failure(AwsFailureKind::Service, Some(&code), None);
            return Err(ResultError::Service {
                service: "s3",
                message: format!(
                    "DeleteObjects: {} of {count} keys failed, first `{}`: {}",
                    out.errors().len(),
                    first.key().unwrap_or("?"),
                    first.message().unwrap_or("")
                ),
                code,
                class,
            });
        }
        Ok(())
    }
}

#[async_trait]
impl OutputStore for S3OutputStore {
    async fn put(&self, key: &OutputKey, value: Bytes) -> Result<(), ResultError> {
        let object_key = self.output_key(key)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .body(ByteStream::from(value))
            .send()
            .await
            .map_err(|e| s3_error("PutObject", &e))?;
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
            let page = page.map_err(|e| s3_error("ListObjectsV2", &e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
        }
        for chunk in keys.chunks(DELETE_OBJECTS_LIMIT) {
            self.delete_keys(chunk.to_vec()).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offline_sdk(endpoint: Option<&str>) -> aws_config::SdkConfig {
        let mut b = aws_config::SdkConfig::builder()
            .region(aws_config::Region::new("us-east-1"))
            .behavior_version(aws_config::BehaviorVersion::latest());
        if let Some(e) = endpoint {
            b = b.endpoint_url(e);
        }
        b.build()
    }

    #[test]
    fn result_keys_sit_under_the_base_path() {
        let sdk = offline_sdk(None);
        let b = S3ResultBackend::new(&sdk, "bucket", "/runs/a/");
        assert_eq!(b.result_key("t1").unwrap(), "runs/a/results/t1.json");
        let root = S3ResultBackend::new(&sdk, "bucket", "");
        assert_eq!(root.result_key("t1").unwrap(), "results/t1.json");
    }

    #[test]
    fn output_keys_sit_under_the_base_path() {
        let sdk = offline_sdk(Some("http://127.0.0.1:1"));
        let s = S3OutputStore::new(&sdk, "bucket", "base");
        let key = OutputKey::new("run", "step", "result");
        assert_eq!(s.output_key(&key).unwrap(), "base/outputs/run/step/result");
        assert_eq!(s.run_prefix("run").unwrap(), "base/outputs/run/");
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

    #[test]
    fn failures_are_classified() {
        use AwsFailureKind::*;
        let cases: &[(AwsFailureKind, Option<&str>, Option<u16>, ErrorClass)] = &[
            (Service, Some("SlowDown"), Some(503), ErrorClass::Temporary),
            (
                Service,
                Some("ThrottlingException"),
                Some(400),
                ErrorClass::Temporary,
            ),
            (
                Service,
                Some("AWS.SimpleQueueService.RequestThrottled"),
                Some(400),
                ErrorClass::Temporary,
            ),
            (
                Service,
                Some("InternalError"),
                Some(500),
                ErrorClass::Temporary,
            ),
            (Service, Some("Whatever"), Some(502), ErrorClass::Temporary),
            (Service, None, Some(429), ErrorClass::Temporary),
            (
                Service,
                Some("NoSuchBucket"),
                Some(404),
                ErrorClass::Permanent,
            ),
            (
                Service,
                Some("AccessDenied"),
                Some(403),
                ErrorClass::Permanent,
            ),
            (
                Service,
                Some("InvalidClientTokenId"),
                Some(403),
                ErrorClass::Permanent,
            ),
            (
                Service,
                Some("AWS.SimpleQueueService.NonExistentQueue"),
                Some(400),
                ErrorClass::Permanent,
            ),
            (Timeout, None, None, ErrorClass::Temporary),
            (Dispatch, None, None, ErrorClass::Temporary),
            (Response, None, Some(200), ErrorClass::Temporary),
            (Construction, None, None, ErrorClass::Permanent),
        ];
        for (kind, code, status, want) in cases {
            assert_eq!(
                classify_aws_failure(*kind, *code, *status),
                *want,
                "{kind:?} {code:?} {status:?}"
            );
        }
    }

    #[test]
    fn sdk_errors_keep_their_code_and_class() {
        use aws_sdk_s3::operation::get_object::GetObjectError;
        let timeout: SdkError<GetObjectError> = SdkError::timeout_error("too slow");
        let info = aws_error_info("GetObject", &timeout);
        assert_eq!(info.code, "Timeout");
        assert_eq!(info.class, ErrorClass::Temporary);
        assert!(info.message.starts_with("GetObject: "), "{}", info.message);

        let built: SdkError<GetObjectError> = SdkError::construction_failure("bad input");
        let info = aws_error_info("GetObject", &built);
        assert_eq!(info.code, "ConstructionFailure");
        assert_eq!(info.class, ErrorClass::Permanent);
    }
}
