//! The smoke resources on LocalStack (a standard queue, a `.fifo` queue, a bucket) and the
//! environment the LocalStack-gated tests read.

use anyhow::{Context, Result};
use aws_sdk_sqs::types::QueueAttributeName;

/// Region of every LocalStack resource.
pub(crate) const REGION: &str = "us-east-1";
/// Name of the standard smoke queue.
const QUEUE: &str = "stepq-smoke";
/// Name of the FIFO smoke queue.
const FIFO_QUEUE: &str = "stepq-smoke.fifo";
/// Name of the smoke bucket.
const BUCKET: &str = "stepq-smoke";

/// Endpoint, queue URLs and bucket for the tests.
pub(crate) struct TestResources {
    endpoint: String,
    queue_url: String,
    fifo_queue_url: String,
    bucket: String,
}

/// AWS settings for LocalStack: its endpoint, static test credentials, us-east-1.
pub(crate) async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "xtask",
        ))
        .load()
        .await
}

/// An S3 client for LocalStack (path-style addressing: no per-bucket DNS names).
pub(crate) fn s3_client(sdk: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(true)
            .build(),
    )
}

/// Creates `bucket`, or finds it already ours.
pub(crate) async fn ensure_bucket(s3: &aws_sdk_s3::Client, bucket: &str) -> Result<()> {
    if let Err(e) = s3.create_bucket().bucket(bucket).send().await {
        let owned = e
            .as_service_error()
            .is_some_and(|s| s.is_bucket_already_owned_by_you());
        if !owned {
            return Err(e).context("CreateBucket");
        }
    }
    Ok(())
}

impl TestResources {
    /// Creates (or finds) the smoke queues and bucket.
    pub(crate) async fn create(endpoint: &str) -> Result<Self> {
        let sdk = sdk_config(endpoint).await;
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let queue_url = sqs
            .create_queue()
            .queue_name(QUEUE)
            .send()
            .await
            .context("CreateQueue (standard)")?
            .queue_url
            .context("CreateQueue returned no URL")?;
        let fifo_queue_url = sqs
            .create_queue()
            .queue_name(FIFO_QUEUE)
            .attributes(QueueAttributeName::FifoQueue, "true")
            .attributes(QueueAttributeName::ContentBasedDeduplication, "false")
            .send()
            .await
            .context("CreateQueue (fifo)")?
            .queue_url
            .context("CreateQueue returned no URL")?;
        ensure_bucket(&s3_client(&sdk), BUCKET).await?;
        Ok(TestResources {
            endpoint: endpoint.to_string(),
            queue_url,
            fifo_queue_url,
            bucket: BUCKET.to_string(),
        })
    }

    /// The environment of the LocalStack-gated tests.
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("STEPQ_TEST_AWS_ENDPOINT", self.endpoint.clone()),
            ("STEPQ_TEST_SQS_QUEUE_URL", self.queue_url.clone()),
            ("STEPQ_TEST_SQS_FIFO_QUEUE_URL", self.fifo_queue_url.clone()),
            ("STEPQ_TEST_S3_BUCKET", self.bucket.clone()),
            ("AWS_DEFAULT_REGION", REGION.to_string()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ACCESS_KEY_ID", "test".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        ]
    }
}
