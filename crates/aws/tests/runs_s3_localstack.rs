//! The run store, heartbeat store and lease store conformance suites (one test per check) against S3 on
//! LocalStack, and what is particular to S3.
//!
//! Run with `cargo xtask localstack-test`, or by hand with `-- --ignored` and the env
//! `STEPQ_TEST_AWS_ENDPOINT`, `STEPQ_TEST_S3_BUCKET`, `AWS_DEFAULT_REGION`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`. Each store gets a fresh random base path.

use aws_config::{BehaviorVersion, SdkConfig};
use stepq_aws::s3::s3_client;
use stepq_aws::{S3HeartbeatStore, S3LeaseStore, S3RunStore};
use stepq_runs::conformance::{HeartbeatStoreFactory, LeaseStoreFactory, RunStoreFactory};
use stepq_runs::{RunRecord, RunStatus, RunStore, StorageError};

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run LocalStack tests with `cargo xtask localstack-test`")
    })
}

struct LocalStack {
    sdk: SdkConfig,
    bucket: String,
}

impl LocalStack {
    async fn connect() -> LocalStack {
        let endpoint = required_env("STEPQ_TEST_AWS_ENDPOINT");
        let bucket = required_env("STEPQ_TEST_S3_BUCKET");
        let region = std::env::var("AWS_DEFAULT_REGION").unwrap_or_else(|_| "us-east-1".into());
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(aws_config::Region::new(region))
            .load()
            .await;
        // The xtask creates the bucket; creating it here too keeps a hand-run working.
        let client = s3_client(&sdk);
        if client.head_bucket().bucket(&bucket).send().await.is_err() {
            client
                .create_bucket()
                .bucket(&bucket)
                .send()
                .await
                .unwrap_or_else(|e| panic!("create bucket {bucket}: {e:?}"));
        }
        LocalStack { sdk, bucket }
    }

    fn base_path() -> String {
        format!("stepq-test/storage-{}", uuid::Uuid::new_v4())
    }
}

impl RunStoreFactory for LocalStack {
    type Store = S3RunStore;
    async fn fresh(&self) -> S3RunStore {
        S3RunStore::new(&self.sdk, &self.bucket, Self::base_path())
    }
    async fn reopen(&self, store: &S3RunStore) -> S3RunStore {
        S3RunStore::new(&self.sdk, store.bucket(), store.base_path())
    }
}

struct Heartbeats(LocalStack);

impl HeartbeatStoreFactory for Heartbeats {
    type Store = S3HeartbeatStore;
    async fn fresh(&self) -> S3HeartbeatStore {
        S3HeartbeatStore::new(&self.0.sdk, &self.0.bucket, LocalStack::base_path())
    }
    async fn reopen(&self, store: &S3HeartbeatStore) -> S3HeartbeatStore {
        S3HeartbeatStore::new(&self.0.sdk, store.bucket(), store.base_path())
    }
}

struct Leases(LocalStack);

impl LeaseStoreFactory for Leases {
    type Store = S3LeaseStore;
    async fn fresh(&self) -> S3LeaseStore {
        S3LeaseStore::new(&self.0.sdk, &self.0.bucket, LocalStack::base_path())
    }
    async fn reopen(&self, store: &S3LeaseStore) -> S3LeaseStore {
        S3LeaseStore::new(&self.0.sdk, store.bucket(), store.base_path())
    }
}

stepq_runs::lease_store_conformance_tests!(
    #[ignore = "localstack"]
    lease_store_conformance,
    Leases(LocalStack::connect().await)
);

stepq_runs::run_store_conformance_tests!(
    #[ignore = "localstack"]
    run_store_conformance,
    LocalStack::connect().await
);

stepq_runs::heartbeat_store_conformance_tests!(
    #[ignore = "localstack"]
    heartbeat_store_conformance,
    Heartbeats(LocalStack::connect().await)
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "localstack"]
async fn missing_bucket_is_a_permanent_error_with_its_aws_code() {
    let localstack = LocalStack::connect().await;
    let store = S3RunStore::new(
        &localstack.sdk,
        format!("stepq-missing-{}", uuid::Uuid::new_v4()),
        "base",
    );
    match store
        .create_run(&RunRecord::new("r1", "job", serde_json::json!({})))
        .await
    {
        Err(err @ StorageError::Service(_)) => {
            assert!(!err.is_temporary(), "{err}");
            assert!(err.to_string().contains("NoSuchBucket"), "{err}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "localstack"]
async fn corrupt_record_object_is_an_error_naming_the_key() {
    let localstack = LocalStack::connect().await;
    let store = localstack.fresh().await;
    store
        .create_run(&RunRecord::new("r1", "job", serde_json::json!({})))
        .await
        .unwrap();
    let key = format!("{}/runs/r1/run.json", store.base_path());
    store
        .client()
        .put_object()
        .bucket(store.bucket())
        .key(&key)
        .body(b"{not json".to_vec().into())
        .send()
        .await
        .unwrap();
    match store.update_status("r1", RunStatus::Starting).await {
        Err(StorageError::Corrupt { location, .. }) => assert_eq!(location, key),
        other => panic!("{other:?}"),
    }
}

/// The store's guarantees rest on S3 honouring `If-None-Match: *` and `If-Match` on
/// `PutObject`; an emulator that ignored them would silently degrade to last-writer-wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "localstack"]
async fn s3_honours_conditional_puts() {
    let localstack = LocalStack::connect().await;
    let client = s3_client(&localstack.sdk);
    let key = format!("{}/conditional", LocalStack::base_path());
    let put = |body: &'static [u8]| {
        client
            .put_object()
            .bucket(&localstack.bucket)
            .key(&key)
            .body(body.to_vec().into())
    };
    let first = put(b"1")
        .if_none_match("*")
        .send()
        .await
        .expect("first put");
    let etag = first.e_tag().expect("etag").to_string();
    let status = |r: Result<_, aws_sdk_s3::error::SdkError<_>>| {
        r.map(drop)
            .map_err(|e| e.raw_response().map(|r| r.status().as_u16()))
    };
    assert_eq!(
        status(put(b"2").if_none_match("*").send().await),
        Err(Some(412)),
        "If-None-Match: * on an existing key"
    );
    assert_eq!(
        status(put(b"3").if_match("\"not-the-etag\"").send().await),
        Err(Some(412)),
        "If-Match with a stale ETag"
    );
    assert_eq!(status(put(b"4").if_match(&etag).send().await), Ok(()));
    assert_eq!(
        status(put(b"5").if_match(&etag).send().await),
        Err(Some(412)),
        "the ETag changed with the last write"
    );
}

/// A write whose first attempt landed but whose answer was lost (the SDK retries it and gets
/// 412) is this same write, not another writer's: an event batch is not appended twice and a
/// run's creation does not report its own id as taken. Different bytes at the key are still
/// another writer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "localstack"]
async fn a_write_whose_answer_was_lost_is_not_made_twice() {
    use stepq_plan::{Event, EventKind};
    use stepq_runs::EventCursor;

    let localstack = LocalStack::connect().await;
    let store = localstack.fresh().await;
    let put_raw = |key: String, body: Vec<u8>| {
        store
            .client()
            .put_object()
            .bucket(store.bucket())
            .key(key)
            .body(body.into())
            .send()
    };
    let record = RunRecord::new("landed", "job", serde_json::json!({}));
    let record_key = format!("{}/runs/landed/run.json", store.base_path());
    put_raw(record_key, serde_json::to_vec_pretty(&record).unwrap())
        .await
        .unwrap();
    store.create_run(&record).await.expect("its own creation");
    let other = RunRecord::new("landed", "another-job", serde_json::json!({}));
    assert!(matches!(
        store.create_run(&other).await,
        Err(StorageError::RunExists { .. })
    ));

    let note = |n: usize| {
        Event::run(
            "landed",
            EventKind::EngineEvent {
                message: format!("note {n}"),
            },
        )
    };
    store.append_events("landed", &[note(0)]).await.unwrap();
    // Batch 1 lands, its answer is lost; then another writer takes seq 2.
    let batch_1 = vec![note(1), note(2)];
    let events = |seq: u64| format!("{}/runs/landed/events/{seq:020}", store.base_path());
    put_raw(events(1), stepq_plan::pack(&batch_1).unwrap())
        .await
        .unwrap();
    put_raw(events(2), stepq_plan::pack(&vec![note(9)]).unwrap())
        .await
        .unwrap();
    store.append_events("landed", &batch_1).await.unwrap();
    store.append_events("landed", &[note(3)]).await.unwrap();

    let page = store
        .read_events("landed", EventCursor::START)
        .await
        .unwrap();
    let messages: Vec<String> = page
        .events
        .iter()
        .map(|e| match &e.kind {
            EventKind::EngineEvent { message } => message.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(messages, ["note 0", "note 1", "note 2", "note 9", "note 3"]);
}
