//! The example binary run as a user runs it: on the embedded default (no config), and — by
//! changing only the config file — on SQS + S3 with a `worker start` process (LocalStack,
//! run by `cargo xtask localstack-test`).

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_example-pipeline");
const REPORT: &str = "region,total_cents\neast,25300\nnorth,21150\nsouth,21170\nwest,20999\n";

fn run(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the example binary starts");
    assert!(
        out.status.success(),
        "{args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The steps of run `run_id` as `(step, status, attempts)`.
fn steps(dir: &Path, config: &[&str], run_id: &str) -> Vec<(String, String, u64)> {
    let args: Vec<&str> = config
        .iter()
        .copied()
        .chain(["status", run_id, "--json"])
        .collect();
    let status: serde_json::Value = serde_json::from_slice(&run(dir, &args).stdout).unwrap();
    status["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
                s["attempts"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn the_etl_job_fans_out_and_joins_into_a_report_on_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), &["run", "etl", "--run-id", "etl-1"]);
    let report = std::fs::read_to_string(dir.path().join("report.csv")).unwrap();
    assert_eq!(report, REPORT);
    let states = steps(dir.path(), &[], "etl-1");
    assert_eq!(states.len(), 6);
    assert!(
        states.iter().all(|(_, s, _)| s == "SUCCEEDED"),
        "{states:?}"
    );

    // Another CSV through the run config; a malformed one fails `read_csv` naming the line.
    std::fs::write(
        dir.path().join("mine.csv"),
        "region,product,amount_cents\nnorth,a,5\n",
    )
    .unwrap();
    run(
        dir.path(),
        &[
            "run",
            "etl",
            "--run-config",
            r#"{"csv": "mine.csv", "report": "mine.out"}"#,
        ],
    );
    let mine = std::fs::read_to_string(dir.path().join("mine.out")).unwrap();
    assert_eq!(mine, "region,total_cents\nnorth,5\n");
    std::fs::write(
        dir.path().join("bad.csv"),
        "region,product,amount_cents\nnorth,a\n",
    )
    .unwrap();
    let bad = Command::new(BIN)
        .args(["run", "etl", "--run-config", r#"{"csv": "bad.csv"}"#])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let text =
        String::from_utf8_lossy(&bad.stdout).to_string() + &String::from_utf8_lossy(&bad.stderr);
    assert!(text.contains("line 2: expected 3 fields"), "{text}");
}

#[test]
fn the_flaky_step_is_retried_and_the_optional_output_decides_the_alert() {
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), &["run", "flaky_report", "--run-id", "quiet"]);
    let quiet = steps(dir.path(), &[], "quiet");
    assert!(
        quiet.contains(&("fetch".into(), "SUCCEEDED".into(), 3)),
        "{quiet:?}"
    );
    assert!(
        quiet.contains(&("alert".into(), "SKIPPED".into(), 0)),
        "{quiet:?}"
    );

    let args = [
        "run",
        "flaky_report",
        "--run-id",
        "loud",
        "--run-config",
        r#"{"threshold": 50}"#,
    ];
    run(dir.path(), &args);
    let loud = steps(dir.path(), &[], "loud");
    assert!(
        loud.contains(&("alert".into(), "SUCCEEDED".into(), 1)),
        "{loud:?}"
    );
}

/// A worker process, killed on drop.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
#[ignore = "localstack"]
async fn localstack_the_same_jobs_run_on_sqs_and_s3_by_changing_only_the_config_file() {
    let endpoint =
        std::env::var("STEPQ_TEST_AWS_ENDPOINT").expect("run by cargo xtask localstack-test");
    let bucket = std::env::var("STEPQ_TEST_S3_BUCKET").expect("run by cargo xtask localstack-test");
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&endpoint)
        .load()
        .await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let name = format!(
        "example-pipeline-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let queue_url = sqs
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();

    // The shipped template, pointed at this LocalStack, queue and bucket: nothing else.
    let template = include_str!("../stepq.localstack.toml");
    let config = template
        .replace(
            "http://localhost:4566/000000000000/example-pipeline",
            &queue_url,
        )
        .replace("http://localhost:4566", endpoint.trim_end_matches('/'))
        .replace(
            "bucket = \"example-pipeline\"",
            &format!("bucket = \"{bucket}\""),
        )
        .replace(
            "base_path = \"example-pipeline\"",
            &format!("base_path = \"{name}\""),
        );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("stepq.toml"), config).unwrap();
    let with = ["--config", "stepq.toml"];
    let _worker = Worker(
        Command::new(BIN)
            .args(with)
            .args(["worker", "start", "--name", "example-worker"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut args = with.to_vec();
    args.extend(["run", "etl", "--run-id", "etl-sqs"]);
    run(dir.path(), &args);
    let states = steps(dir.path(), &with, "etl-sqs");
    assert!(
        states.iter().all(|(_, s, _)| s == "SUCCEEDED"),
        "{states:?}"
    );
    // `join` ran in the worker process, whose working directory is the same one here.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("report.csv")).unwrap(),
        REPORT
    );

    let mut args = with.to_vec();
    args.extend(["run", "flaky_report", "--run-id", "flaky-sqs"]);
    run(dir.path(), &args);
    let flaky = steps(dir.path(), &with, "flaky-sqs");
    assert!(
        flaky.contains(&("fetch".into(), "SUCCEEDED".into(), 3)),
        "{flaky:?}"
    );
    assert!(
        flaky.contains(&("alert".into(), "SKIPPED".into(), 0)),
        "{flaky:?}"
    );
    // Every step ran on the worker process.
    let args: Vec<&str> = with
        .iter()
        .copied()
        .chain(["status", "etl-sqs", "--json"])
        .collect();
    let status: serde_json::Value = serde_json::from_slice(&run(dir.path(), &args).stdout).unwrap();
    for step in status["steps"].as_array().unwrap() {
        assert_eq!(step["worker"], "example-worker", "{step}");
    }
    let _ = sqs.delete_queue().queue_url(&queue_url).send().await;
}
