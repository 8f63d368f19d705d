//! The LocalStack environment `cargo xtask localstack-test` provides.
#![allow(dead_code)]

use aws_config::{BehaviorVersion, Region, SdkConfig};

/// Endpoint, region and bucket of the LocalStack the tests run against.
pub(crate) struct LocalStackEnv {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    /// A queue URL of the LocalStack account, to build fresh queue URLs from.
    pub queue_url: String,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: LocalStack tests need STEPQ_TEST_AWS_ENDPOINT, \
             STEPQ_TEST_SQS_QUEUE_URL and STEPQ_TEST_S3_BUCKET; run them with \
             `cargo xtask localstack-test -- -p stepq-cancel`"
        )
    })
}

impl LocalStackEnv {
    /// Reads the environment; panics naming what is missing.
    pub(crate) fn from_env() -> Self {
        LocalStackEnv {
            endpoint: var("STEPQ_TEST_AWS_ENDPOINT"),
            queue_url: var("STEPQ_TEST_SQS_QUEUE_URL"),
            bucket: var("STEPQ_TEST_S3_BUCKET"),
            region: std::env::var("AWS_DEFAULT_REGION").unwrap_or_else(|_| "us-east-1".into()),
        }
    }

    /// AWS settings pointing at LocalStack.
    pub(crate) async fn sdk_config(&self) -> SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .endpoint_url(&self.endpoint)
            .load()
            .await
    }

    /// The URL prefix (`scheme://host/account`) of the LocalStack queues.
    pub(crate) fn queue_url_prefix(&self) -> String {
        self.queue_url
            .trim_end_matches('/')
            .rsplit_once('/')
            .expect("a queue URL has a path")
            .0
            .to_string()
    }
}
