//! The `stepq-worker` binary refuses what it cannot serve, naming the problem, before it
//! connects to anything. (Serving steps on SQS + S3 is covered by the LocalStack suite.)
#![cfg(feature = "aws")]

use std::process::Command;

fn stepq_worker(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stepq-worker"))
        .args(args)
        .current_dir(dir)
        .env_remove("STEPQ_SQS_QUEUE_URL")
        .env_remove("STEPQ_S3_BUCKET_NAME")
        .env_remove("STEPQ_CONFIG")
        .output()
        .expect("stepq-worker starts");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const JOBS: &str = "[jobs.hello]\n[[jobs.hello.steps]]\nkey = \"say\"\nargv = [\"echo\", \"hi\"]\n";

#[test]
fn bad_arguments_exit_2_with_the_usage() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = stepq_worker(dir.path(), &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--jobs-file"), "{err}");
    let (code, err) = stepq_worker(dir.path(), &["--jobs-file", "j.toml", "--bogus"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("unknown argument `--bogus`"), "{err}");
    let (code, err) = stepq_worker(dir.path(), &["--jobs-file", "j.toml", "--concurrency=x"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--concurrency `x`"), "{err}");
}

#[test]
fn the_embedded_default_and_broken_files_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jobs.toml"), JOBS).unwrap();
    let (code, err) = stepq_worker(dir.path(), &["--jobs-file", "jobs.toml"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("sqs.queue_url"), "{err}");

    std::fs::write(
        dir.path().join("stepq.toml"),
        "[sqs]\nqueue_url = \"https://sqs.us-east-1.amazonaws.com/1/q\"\n[s3]\nbucket = \"b-1\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("bad.toml"), "[jobs.x]\n").unwrap();
    let (code, err) = stepq_worker(
        dir.path(),
        &["--config", "stepq.toml", "--jobs-file", "bad.toml"],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("bad.toml"), "{err}");
}

#[test]
fn a_queue_that_cannot_be_reached_at_start_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jobs.toml"), JOBS).unwrap();
    // Nothing listens on port 9 of the loopback: the startup check of the queue fails.
    std::fs::write(
        dir.path().join("stepq.toml"),
        "[sqs]\nqueue_url = \"http://127.0.0.1:9/000000000000/q\"\n\
         endpoint_url = \"http://127.0.0.1:9\"\nregion_name = \"us-east-1\"\n\
         [s3]\nbucket = \"b-1\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_stepq-worker"))
        .args(["--config", "stepq.toml", "--jobs-file", "jobs.toml"])
        .current_dir(dir.path())
        .env_remove("STEPQ_SQS_QUEUE_URL")
        .env_remove("STEPQ_S3_BUCKET_NAME")
        .env_remove("STEPQ_CONFIG")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("stepq-worker starts");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("could not start"), "{err}");
}
