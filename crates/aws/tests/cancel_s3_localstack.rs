//! The cancel-marker store conformance suite against S3 on LocalStack.
//! Run with `cargo xtask localstack-test -- -p stepq-aws`.

mod common;

use stepq_cancel::conformance::{check_corrupt_marker, exercise_cancel_store};
use stepq_cancel::CancelStore;

#[tokio::test]
#[ignore = "localstack"]
async fn s3_store() {
    let env = common::LocalStackEnv::from_env();
    let sdk = env.sdk_config().await;
    let base = format!("cancel-store-test-{}", uuid::Uuid::new_v4().simple());
    let store = stepq_aws::S3CancelStore::new(&sdk, &env.bucket, &base);
    assert_eq!(store.kind(), "s3");
    assert!(!store.lookups_are_free());
    exercise_cancel_store(&store).await;
    stepq_aws::s3::s3_client(&sdk)
        .put_object()
        .bucket(&env.bucket)
        .key(store.marker_key("broken").unwrap())
        .body(b"{ not a marker".to_vec().into())
        .send()
        .await
        .unwrap();
    check_corrupt_marker(&store).await;

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
