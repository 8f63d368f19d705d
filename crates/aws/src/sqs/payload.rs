//! Extended payloads: bodies too large for SQS live in S3 and the message carries a pointer,
//! in taskiq-aio-sqs's layout (body `{"s3_bucket": .., "s3_key": ..}`, message attribute
//! `s3_extended_message`), so Python TaskIQ consumers can read them too.

use crate::timeouts;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::error::s3_error;
use crate::s3::body_read_error;
use stepq_broker::error::BrokerError;

/// Name of the message attribute that marks a pointer body.
pub const EXTENDED_MESSAGE_ATTRIBUTE: &str = "s3_extended_message";
/// Key prefix of offloaded bodies in the bucket.
pub const PAYLOAD_KEY_PREFIX: &str = "stepq-payloads/";

/// Where an offloaded body is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Pointer {
    /// Bucket.
    pub s3_bucket: String,
    /// Object key.
    pub s3_key: String,
}

impl S3Pointer {
    /// A fresh pointer for a body of `task_id` in `bucket`: `stepq-payloads/<task_id>.<uuid>.json`
    /// (unique, so a re-sent task never shares an object with an earlier send).
    pub fn for_task(bucket: &str, task_id: &str) -> Self {
        S3Pointer {
            s3_bucket: bucket.to_string(),
            s3_key: format!(
                "{PAYLOAD_KEY_PREFIX}{task_id}.{}.json",
                uuid::Uuid::new_v4().simple()
            ),
        }
    }

    /// The pointer as the message body.
    pub fn to_body(&self) -> String {
        serde_json::to_string(self).expect("a pointer always serializes")
    }

    /// Reads a pointer body.
    pub fn from_body(body: &str) -> Result<Self, BrokerError> {
        serde_json::from_str(body).map_err(|e| BrokerError::Malformed {
            reason: format!(
                "message is marked `{EXTENDED_MESSAGE_ATTRIBUTE}` but its body is not an S3 \
                 pointer {{s3_bucket, s3_key}}: {e}"
            ),
        })
    }

    /// Uploads `body` to this pointer's object.
    pub async fn upload(&self, s3: &aws_sdk_s3::Client, body: Vec<u8>) -> Result<(), BrokerError> {
        let transfer = timeouts::s3_transfer(body.len());
        s3.put_object()
            .bucket(&self.s3_bucket)
            .key(&self.s3_key)
            .content_type("application/json")
            .body(ByteStream::from(body))
            .customize()
            .config_override(transfer)
            .send()
            .await
            .map_err(|e| s3_error("PutObject", e))?;
        Ok(())
    }

    /// Downloads the body.
    pub async fn download(&self, s3: &aws_sdk_s3::Client) -> Result<Bytes, BrokerError> {
        let out = s3
            .get_object()
            .bucket(&self.s3_bucket)
            .key(&self.s3_key)
            .send()
            .await
            .map_err(|e| s3_error("GetObject", e))?;
        timeouts::read_body(out.body, out.content_length)
            .await
            .map_err(|e| body_read_error("s3", "GetObject", &self.s3_key, e).into())
    }

    /// Deletes the object.
    pub async fn delete(&self, s3: &aws_sdk_s3::Client) -> Result<(), BrokerError> {
        s3.delete_object()
            .bucket(&self.s3_bucket)
            .key(&self.s3_key)
            .send()
            .await
            .map_err(|e| s3_error("DeleteObject", e))?;
        Ok(())
    }

    /// Deletes the object, logging (not returning) a failure: for clean-up paths where the
    /// main operation already succeeded or already failed.
    pub async fn delete_logged(&self, s3: &aws_sdk_s3::Client) {
        if let Err(e) = self.delete(s3).await {
            tracing::warn!(
                bucket = %self.s3_bucket,
                key = %self.s3_key,
                error = %e,
                "could not delete an extended payload object; it is left behind"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_body_is_taskiq_aio_sqs_layout() {
        let p = S3Pointer::for_task("bucket", "task-1");
        assert!(
            p.s3_key.starts_with("stepq-payloads/task-1."),
            "{}",
            p.s3_key
        );
        assert!(p.s3_key.ends_with(".json"));
        let body: serde_json::Value = serde_json::from_str(&p.to_body()).unwrap();
        assert_eq!(body["s3_bucket"], "bucket");
        assert_eq!(body["s3_key"], p.s3_key.as_str());
        assert_eq!(S3Pointer::from_body(&p.to_body()).unwrap(), p);
        assert_ne!(S3Pointer::for_task("bucket", "task-1").s3_key, p.s3_key);
    }

    #[test]
    fn a_bad_pointer_body_is_malformed() {
        for bad in ["", "{}", "{\"s3_bucket\": \"b\"}", "[1]"] {
            match S3Pointer::from_body(bad) {
                Err(BrokerError::Malformed { reason }) => {
                    assert!(reason.contains("s3_extended_message"), "{reason}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
