//! The facade built without its feature `aws` (`cargo test -p stepq --no-default-features`,
//! run by `cargo xtask test`): the embedded default runs a job, and a config asking for SQS is
//! refused by name instead of silently running embedded.
#![cfg(not(feature = "aws"))]

use std::collections::BTreeMap;
use std::sync::Arc;

use stepq::config::ENV_SQS_QUEUE_URL;
use stepq::{
    make_app, op_fn, op_map, CodeLocation, ConfigError, Job, Mode, RunOptions, RunStatus, StepDef,
    StepOutputs, StepqConfig,
};

/// The crate-level doc example's code location: a fork of `emit_values` into two `add_one`s.
fn fork_location() -> CodeLocation {
    CodeLocation::builder()
        .op(
            "emit_values",
            op_fn(|_ctx, _inputs| async move {
                StepOutputs::new().with("one", &1_i64)?.with("two", &2_i64)
            }),
        )
        .op(
            "add_one",
            op_map("num", "result", |_ctx, n: i64| async move { Ok(n + 1) }),
        )
        .job(
            Job::builder("fork")
                .step(
                    StepDef::new("emit_values", "emit_values")
                        .output("one")
                        .output("two"),
                )
                .step(
                    StepDef::new("add_one", "add_one")
                        .input("num", "emit_values", "one")
                        .output("result"),
                )
                .step(
                    StepDef::new("renamed", "add_one")
                        .input("num", "emit_values", "two")
                        .output("result"),
                )
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_runs_the_fork_job() {
    let state = tempfile::tempdir().unwrap();
    let config = StepqConfig {
        state_dir: state.path().into(),
        ..StepqConfig::default()
    };
    let app = make_app(&config).await.unwrap();
    assert_eq!(app.mode(), Mode::Embedded);
    assert_eq!(app.queue().broker().kind(), "memory");
    app.startup().await.unwrap();
    let run = app
        .run_with_local_workers(Arc::new(fork_location()), "fork", RunOptions::default(), 2)
        .await
        .unwrap();
    assert_eq!(run.result.status, RunStatus::Success);
    let added: i64 = run
        .result
        .output(app.outputs().as_ref(), "add_one", "result")
        .await
        .unwrap();
    let renamed: i64 = run
        .result
        .output(app.outputs().as_ref(), "renamed", "result")
        .await
        .unwrap();
    assert_eq!((added, renamed), (2, 3));
    let record = app.runs().get_run(&run.result.run_id).await.unwrap();
    assert_eq!(record.status.to_string(), "SUCCESS");
    app.shutdown().await.unwrap();
}

#[test]
fn a_distributed_config_is_refused_naming_the_feature() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stepq.toml");
    std::fs::write(
        &path,
        "[sqs]\nqueue_url = \"https://sqs.us-east-1.amazonaws.com/123456789012/stepq\"\n\
         [s3]\nbucket = \"my-stepq-bucket\"\n",
    )
    .unwrap();
    let err = StepqConfig::load(Some(&path), &BTreeMap::new()).unwrap_err();
    assert!(
        matches!(&err, ConfigError::NoAwsSupport { key } if key == "sqs.queue_url"),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("no AWS support"), "{msg}");
    assert!(msg.contains("feature `aws`"), "{msg}");

    // The same by the environment alone.
    let env = BTreeMap::from([(
        ENV_SQS_QUEUE_URL.to_string(),
        "https://sqs.us-east-1.amazonaws.com/123456789012/stepq".to_string(),
    )]);
    let err = StepqConfig::load(None, &env).unwrap_err();
    assert!(matches!(&err, ConfigError::NoAwsSupport { .. }), "{err:?}");
    assert!(err.to_string().contains(ENV_SQS_QUEUE_URL), "{err}");
}
