//! The S3 result backend and output store against LocalStack: the conformance suites (one test
//! per check, a fresh random base path per backend) and S3-specific error paths.
//!
//! Run with `cargo xtask localstack-test` (it starts LocalStack and sets the environment).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use stepq_aws::s3::{s3_client, S3OutputStore, S3ResultBackend};
use stepq_results::conformance::{OutputStoreFactory, ResultBackendFactory};
use stepq_results::{
    ErrorClass, OutputKey, OutputStore, ResultBackend, ResultError, ServiceError, TaskResult,
};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: LocalStack tests need a running LocalStack; run them with \
             `cargo xtask localstack-test`"
        )
    })
}

fn bucket() -> String {
    env("STEPQ_TEST_S3_BUCKET")
}

async fn sdk() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(env("STEPQ_TEST_AWS_ENDPOINT"))
        .load()
        .await
}

fn random_base() -> String {
    format!("stepq-test/{}", uuid::Uuid::new_v4().simple())
}

struct S3Results;

#[async_trait]
impl ResultBackendFactory for S3Results {
    async fn fresh(&self) -> Arc<dyn ResultBackend> {
        Arc::new(S3ResultBackend::new(&sdk().await, bucket(), &random_base()))
    }
}

struct S3Outputs;

#[async_trait]
impl OutputStoreFactory for S3Outputs {
    async fn fresh(&self) -> Arc<dyn OutputStore> {
        Arc::new(S3OutputStore::new(&sdk().await, bucket(), &random_base()))
    }
}

stepq_results::result_backend_conformance_tests!(
    #[ignore = "localstack"]
    result_backend_conformance,
    S3Results
);

stepq_results::output_store_conformance_tests!(
    #[ignore = "localstack"]
    output_store_conformance,
    S3Outputs
);

#[tokio::test]
#[ignore = "localstack"]
async fn results_land_under_the_base_path() {
    let sdk = sdk().await;
    let base = random_base();
    let backend = S3ResultBackend::new(&sdk, bucket(), &base);
    backend
        .set_result("t1", &TaskResult::ok(serde_json::json!(1), 0.5))
        .await
        .unwrap();
    let object = s3_client(&sdk)
        .get_object()
        .bucket(bucket())
        .key(format!("{base}/results/t1.json"))
        .send()
        .await
        .expect("the result object is at <base>/results/<task_id>.json");
    let bytes = object.body.collect().await.unwrap().into_bytes();
    let stored: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(stored["is_err"], false);
    assert_eq!(stored["return_value"], 1);

    let store = S3OutputStore::new(&sdk, bucket(), &base);
    store
        .put(
            &OutputKey::new("run", "step", "out"),
            Bytes::from_static(b"v"),
        )
        .await
        .unwrap();
    s3_client(&sdk)
        .head_object()
        .bucket(bucket())
        .key(format!("{base}/outputs/run/step/out"))
        .send()
        .await
        .expect("the output is at <base>/outputs/<run>/<step>/<output>");
}

#[tokio::test]
#[ignore = "localstack"]
async fn a_result_that_does_not_decode_is_corrupt() {
    let sdk = sdk().await;
    let base = random_base();
    s3_client(&sdk)
        .put_object()
        .bucket(bucket())
        .key(format!("{base}/results/broken.json"))
        .body(b"{not json".to_vec().into())
        .send()
        .await
        .unwrap();
    let backend = S3ResultBackend::new(&sdk, bucket(), &base);
    assert!(backend.is_result_ready("broken").await.unwrap());
    match backend.get_result("broken", true).await {
        Err(ResultError::Corrupt { task_id, .. }) => assert_eq!(task_id, "broken"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
#[ignore = "localstack"]
async fn a_missing_bucket_is_a_permanent_error_with_the_code() {
    let sdk = sdk().await;
    let missing = format!("stepq-missing-{}", uuid::Uuid::new_v4().simple());
    let backend = S3ResultBackend::new(&sdk, &missing, "base");
    let expect_no_such_bucket = |what: &str, r: Result<(), ResultError>| match r {
        Err(ResultError::Service(ServiceError {
            service,
            code,
            class,
            ..
        })) => {
            assert_eq!(service, "s3", "{what}");
            assert_eq!(code, "NoSuchBucket", "{what}");
            assert_eq!(class, ErrorClass::Permanent, "{what}");
        }
        other => panic!("{what}: expected NoSuchBucket, got {other:?}"),
    };
    expect_no_such_bucket("startup", backend.startup().await);
    expect_no_such_bucket(
        "set_result",
        backend
            .set_result("t", &TaskResult::ok(serde_json::json!(null), 0.0))
            .await,
    );
    expect_no_such_bucket("get_result", backend.get_result("t", true).await.map(drop));
    let store = S3OutputStore::new(&sdk, &missing, "base");
    expect_no_such_bucket("check", store.check().await);
    expect_no_such_bucket(
        "put",
        store
            .put(&OutputKey::new("r", "s", "o"), Bytes::from_static(b"x"))
            .await,
    );
    expect_no_such_bucket("delete_run", store.delete_run("r").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "localstack"]
async fn delete_run_removes_more_than_one_listing_page() {
    use futures::StreamExt;
    const OUTPUTS: usize = 1005;
    let store = Arc::new(S3OutputStore::new(&sdk().await, bucket(), &random_base()));
    let puts = futures::stream::iter(0..OUTPUTS)
        .map(|i| {
            let store = Arc::clone(&store);
            async move {
                store
                    .put(
                        &OutputKey::new("big-run", format!("step{i}"), "out"),
                        Bytes::from(i.to_string()),
                    )
                    .await
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    for p in puts {
        p.expect("put");
    }
    store.delete_run("big-run").await.expect("delete_run");
    for i in [0, 999, 1000, OUTPUTS - 1] {
        assert!(
            !store
                .exists(&OutputKey::new("big-run", format!("step{i}"), "out"))
                .await
                .unwrap(),
            "step{i} survived delete_run"
        );
    }
}
