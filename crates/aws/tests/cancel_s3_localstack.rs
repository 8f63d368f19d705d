//! The cancel-marker store conformance suite (one test per check) against S3 on LocalStack,
//! and what is particular to S3. Run with `cargo xtask localstack-test -- -p stepq-aws`.

mod common;

use aws_config::SdkConfig;
use stepq_aws::S3CancelStore;
use stepq_cancel::conformance::CancelStoreFactory;
use stepq_cancel::CancelStore;

/// Each fresh store gets a fresh random base path in the test bucket.
struct S3Markers {
    sdk: SdkConfig,
    bucket: String,
}

impl S3Markers {
    async fn connect() -> Self {
        let env = common::LocalStackEnv::from_env();
        S3Markers {
            sdk: env.sdk_config().await,
            bucket: env.bucket,
        }
    }
}

impl CancelStoreFactory for S3Markers {
    type Store = S3CancelStore;
    async fn fresh(&self) -> S3CancelStore {
        let base = format!("cancel-store-test-{}", uuid::Uuid::new_v4().simple());
        S3CancelStore::new(&self.sdk, &self.bucket, &base)
    }
    /// A new store (and S3 client) on the same base path.
    async fn reopen(&self, store: &S3CancelStore) -> S3CancelStore {
        let key = store.marker_key("x").unwrap();
        let base = key
            .strip_suffix("cancels/x.json")
            .expect("<base>/cancels/<id>.json");
        S3CancelStore::new(&self.sdk, store.bucket(), base.trim_end_matches('/'))
    }
    async fn corrupt(&self, store: &S3CancelStore, task_id: &str) {
        stepq_aws::s3::s3_client(&self.sdk)
            .put_object()
            .bucket(store.bucket())
            .key(store.marker_key(task_id).unwrap())
            .body(b"{ not a marker".to_vec().into())
            .send()
            .await
            .unwrap();
    }
}

stepq_cancel::cancel_store_conformance_tests!(
    #[ignore = "localstack"]
    s3_store,
    S3Markers::connect().await
);

#[tokio::test]
#[ignore = "localstack"]
async fn s3_store_lookups_cost_a_request() {
    let factory = S3Markers::connect().await;
    let store = factory.fresh().await;
    assert_eq!(store.kind(), "s3");
    assert!(!store.lookups_are_free());
}

#[tokio::test]
#[ignore = "localstack"]
async fn s3_store_on_a_missing_bucket_is_an_error_with_the_code() {
    let env = common::LocalStackEnv::from_env();
    let sdk = env.sdk_config().await;
    let missing = stepq_aws::S3CancelStore::new(&sdk, "stepq-no-such-bucket-for-cancels", "");
    let err = missing.startup().await.unwrap_err();
    assert!(err.to_string().contains("HeadBucket"), "{err}");
    assert!(!err.is_temporary(), "{err}");
    match &err {
        stepq_cancel::CancelError::Store(stepq_results::ResultError::Service(
            stepq_results::ServiceError { code, message, .. },
        )) => {
            assert_eq!(code, "NoSuchBucket");
            assert!(
                message.contains("stepq-no-such-bucket-for-cancels"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Reading a marker from a missing bucket is an error, not "no marker".
    assert!(missing.get("t").await.is_err());
}
