//! S3 result backend and output store, plus what the other crates' AWS code shares: the AWS
//! error classification ([`aws_error`]), the S3 client ([`s3_client`]) and the small S3
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
//! use stepq_aws::S3ResultBackend;
//! use stepq_results::{ResultBackend, TaskResult};
//!
//! let sdk = aws_config::load_from_env().await;
//! let backend = S3ResultBackend::new(&sdk, "my-bucket", "stepq");
//! backend.startup().await?; // checks that the bucket exists
//! backend.set_result("task-1", &TaskResult::ok(serde_json::json!(1), 0.1)).await?;
//! # Ok(()) }
//! ```

pub mod cancel;
mod delete;
mod outputs;
mod results;
pub mod runs;

use crate::timeouts;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use bytes::Bytes;
use stepq_results::error::{ErrorClass, ResultError, ServiceError};

pub use crate::error::{aws_error, body_read_error, classify_aws_failure, AwsFailureKind};
pub use cancel::S3CancelStore;
pub use outputs::S3OutputStore;
pub use results::{ResultKeys, S3ResultBackend};
pub use runs::{S3HeartbeatStore, S3LeaseStore, S3RunStore};

/// An error of an S3 operation as a [`ResultError::Service`] with its AWS error code, whether
/// retrying can help, and the SDK error as the source (see [`aws_error`]).
pub fn s3_error<E>(operation: &str, err: SdkError<E>) -> ResultError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    aws_error("s3", operation, err).into()
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
/// body that breaks off (see [`body_read_error`]), come as an `s3` [`ServiceError`] for the
/// caller to wrap in its own error type.
pub async fn get_object(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<Option<S3Object>, ServiceError> {
    let out = match client.get_object().bucket(bucket).key(key).send().await {
        Ok(out) => out,
        Err(e) if is_no_such_key(&e) => return Ok(None),
        Err(e) => return Err(aws_error("s3", "GetObject", e)),
    };
    let e_tag = out.e_tag().map(str::to_string);
    let bytes = timeouts::read_body(out.body, out.content_length)
        .await
        .map_err(|e| body_read_error("s3", "GetObject", key, e))?;
    Ok(Some(S3Object { bytes, e_tag }))
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
/// use stepq_aws::s3::join_key;
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
) -> Result<(), ServiceError> {
    match client.head_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(()),
        Err(e) => {
            let missing = e.raw_response().map(|r| r.status().as_u16()) == Some(404);
            let mut err = aws_error("s3", "HeadBucket", e);
            if missing {
                err.code = "NoSuchBucket".to_string();
                err.message = format!("HeadBucket: {what} `{bucket}` does not exist");
                err.class = ErrorClass::Permanent;
            }
            Err(err)
        }
    }
}

/// Checks that a bucket answers; a missing one is a permanent `NoSuchBucket` error.
async fn check_bucket(client: &aws_sdk_s3::Client, bucket: &str) -> Result<(), ResultError> {
    Ok(head_bucket(client, bucket, "bucket").await?)
}

/// Reads a whole object's bytes; `Ok(None)` when it does not exist.
async fn get_object_bytes(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<Option<Bytes>, ResultError> {
    Ok(get_object(client, bucket, key).await?.map(|o| o.bytes))
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
        Err(e) => Err(s3_error("HeadObject", e)),
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    pub(crate) fn offline_sdk(endpoint: Option<&str>) -> aws_config::SdkConfig {
        let mut b = aws_config::SdkConfig::builder()
            .region(aws_config::Region::new("us-east-1"))
            .behavior_version(aws_config::BehaviorVersion::latest());
        if let Some(e) = endpoint {
            b = b.endpoint_url(e);
        }
        b.build()
    }
}
