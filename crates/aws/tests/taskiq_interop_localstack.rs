//! stepq and Python TaskIQ on one SQS queue and one S3 bucket: the real `taskiq` and
//! `taskiq-aio-sqs` packages (pinned in `xtask/taskiq-requirements.txt`), run from
//! `crates/aws/tests/taskiq/` by the venv `cargo xtask localstack-test` installs.
//!
//! - A Python producer (`SQSBroker` with S3 extended payloads, `S3Backend` results) kicks
//!   tasks a stepq `Receiver` runs, and reads their results with `wait_result`.
//! - A stepq producer (`TaskQueue::kiq` + `wait_result`) kicks tasks a `taskiq worker` runs,
//!   and reads their results from the same S3 layout.
//!
//! Both ways: arguments, labels, task ids, errors (a Python exception becomes kind
//! `builtins.ValueError`; a Rust error an exception of the kind's name) and a message over
//! SQS's 1 MiB limit (an extended payload in S3). stepq's side uses `ResultKeys::Taskiq`;
//! Python's `S3Backend(base_path = "<base>/results")`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use common::LocalStackEnv;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use stepq_aws::sqs::{reply, SqsBroker, SqsConfig};
use stepq_aws::{ResultKeys, S3ResultBackend};
use stepq_broker::{Receiver, TaskQueue, TaskWaitError};
use stepq_results::TaskError;
use tokio_util::sync::CancellationToken;

/// Longest a case may take (Python polls S3 for results every 100 ms; stepq with backoff).
const CASE_TIMEOUT: Duration = Duration::from_secs(90);
/// Characters of the oversized argument: over SQS's 1 MiB, so it travels through S3.
const BIG: usize = 1_200_000;

/// The venv's python (`STEPQ_TEST_TASKIQ_PYTHON`), or a panic saying how to get one.
fn python() -> PathBuf {
    let python = std::env::var_os("STEPQ_TEST_TASKIQ_PYTHON").map(PathBuf::from);
    match python {
        Some(p) if p.exists() => p,
        other => panic!(
            "the TaskIQ interop tests need a python with taskiq and taskiq-aio-sqs \
             (STEPQ_TEST_TASKIQ_PYTHON = {other:?}): run them with `cargo xtask \
             localstack-test`, which installs xtask/taskiq-requirements.txt into \
             target/taskiq-venv (it needs python3 with the venv module)"
        ),
    }
}

/// The directory of the Python side (`tasks.py`, `producer.py`).
fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/taskiq")
}

/// A fresh queue and key prefix shared by both sides.
struct Fleet {
    env: LocalStackEnv,
    sdk: aws_config::SdkConfig,
    queue_name: String,
    queue_url: String,
    /// stepq's `s3.base_path`; Python's results live at `<base>/results`.
    base: String,
}

impl Fleet {
    async fn new() -> Self {
        let env = LocalStackEnv::from_env();
        let sdk = env.sdk_config().await;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let queue_name = format!("stepq-taskiq-{id}");
        let queue_url = aws_sdk_sqs::Client::new(&sdk)
            .create_queue()
            .queue_name(&queue_name)
            .attributes(QueueAttributeName::VisibilityTimeout, "30")
            .send()
            .await
            .expect("CreateQueue")
            .queue_url
            .expect("a queue URL");
        Fleet {
            env,
            sdk,
            queue_name,
            queue_url,
            base: format!("taskiq-interop/{id}"),
        }
    }

    /// stepq's SQS broker on the fleet's queue, extended payloads in the bucket.
    fn broker(&self) -> SqsBroker {
        let mut config = SqsConfig::new(&self.queue_url);
        config.endpoint_url = Some(self.env.endpoint.clone());
        config.region_name = Some(self.env.region.clone());
        config.config_source.s3_extended_bucket_name = Some(self.env.bucket.clone());
        config.config_source.wait_time_seconds = 1;
        SqsBroker::from_sdk_config(config, &self.sdk).expect("an SQS broker")
    }

    /// Results where taskiq-aio-sqs's `S3Backend` reads and writes them.
    fn results(&self) -> S3ResultBackend {
        S3ResultBackend::new(&self.sdk, self.env.bucket.clone(), &self.base)
            .with_result_keys(ResultKeys::Taskiq)
    }

    /// stepq's side: the broker and the results, started.
    async fn stepq_queue(&self) -> TaskQueue {
        let queue = TaskQueue::new(Arc::new(self.broker()), Arc::new(self.results()));
        queue.startup().await.expect("startup");
        queue
    }

    /// The same over the reply queue, as `stepq worker start` and `stepq run` wire it: the
    /// Python worker sends no notification, so results come through the fallback poll of
    /// the durable backend.
    async fn stepq_reply_queue(&self) -> (TaskQueue, reply::ReplyQueue) {
        let broker = self.broker();
        let wiring = reply::attach(&broker, self.results());
        let queue = TaskQueue::new(Arc::new(broker), wiring.results).with_middleware(Arc::new(
            reply::ReplyToMiddleware::new(wiring.replies.clone()),
        ));
        queue.startup().await.expect("startup");
        (queue, wiring.replies)
    }

    /// `python <args>` in the scripts directory with the fleet's settings.
    fn python(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(python());
        command
            .args(args)
            .current_dir(scripts())
            .env("PYTHONPATH", scripts())
            .env("PYTHONUNBUFFERED", "1")
            .env("STEPQ_TEST_AWS_ENDPOINT", &self.env.endpoint)
            .env("AWS_DEFAULT_REGION", &self.env.region)
            .env("TASKIQ_QUEUE_NAME", &self.queue_name)
            .env("TASKIQ_BUCKET", &self.env.bucket)
            .env("TASKIQ_RESULTS_BASE", format!("{}/results", self.base))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    async fn delete(&self) {
        let _ = aws_sdk_sqs::Client::new(&self.sdk)
            .delete_queue()
            .queue_url(&self.queue_url)
            .send()
            .await;
    }
}

/// A Rust task's error type: its type name is the result's kind.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused: {}", self.0)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Reason {
    reason: String,
}

/// What a task saw of its message (both sides' echo tasks return this).
#[derive(Debug, Deserialize)]
struct Echo {
    task_id: String,
    labels: std::collections::BTreeMap<String, String>,
    len: usize,
    head: String,
}

#[tokio::test]
#[ignore = "needs LocalStack and the TaskIQ venv: cargo xtask localstack-test"]
async fn a_python_producer_kicks_tasks_a_stepq_worker_runs() {
    let fleet = Fleet::new().await;
    let mut receiver = Receiver::new(fleet.stepq_queue().await);
    receiver.register_fn("rs_add", |args: Add| async move {
        Ok::<_, std::convert::Infallible>(args.a + args.b)
    });
    receiver.register_fn("rs_fail", |args: Reason| async move {
        Err::<(), _>(Refused(args.reason))
    });
    receiver.register(
        "rs_echo",
        Arc::new(|ctx: stepq_broker::TaskContext| {
            Box::pin(async move {
                let text = ctx.message.kwargs["text"].as_str().unwrap_or_default();
                let labels: serde_json::Map<String, Value> = ctx
                    .message
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), json!(v.as_str().unwrap_or_default())))
                    .collect();
                Ok::<_, TaskError>(json!({
                    "task_id": ctx.message.task_id,
                    "labels": labels,
                    "len": text.len(),
                    "head": &text[..text.len().min(16)],
                }))
            })
        }),
    );
    let stop = CancellationToken::new();
    let worker = tokio::spawn(receiver.run(stop.clone()));

    let producer = fleet.python(&["producer.py"]).output();
    let output = tokio::time::timeout(CASE_TIMEOUT * 2, producer)
        .await
        .expect("the Python producer finished in time")
        .expect("the Python producer started");
    stop.cancel();
    let stats = worker.await.unwrap().expect("the stepq worker ran");
    fleet.delete().await;
    assert!(
        output.status.success(),
        "producer.py failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let out: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "producer.py printed no JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });

    assert_eq!(out["add"]["is_err"], false, "{out}");
    assert_eq!(out["add"]["return_value"], 42);

    let fail = &out["fail"];
    assert_eq!(fail["is_err"], true, "{fail}");
    assert_eq!(
        fail["error_type"], "taskiq_interop_localstack::Refused",
        "the Rust error's type name is the Python exception's: {fail}"
    );
    assert_eq!(fail["error_message"], "refused: no luck");

    let echo: Echo = serde_json::from_value(out["echo"]["return_value"].clone())
        .unwrap_or_else(|e| panic!("echo: {e}: {out}"));
    assert_eq!(echo.task_id, out["echo"]["task_id"], "the Python task id");
    assert_eq!(echo.labels["team"], "data");
    assert_eq!(echo.labels["attempt"], "2");
    assert_eq!((echo.len, echo.head.as_str()), (BIG, "xxxxxxxxxxxxxxxx"));

    let unknown = &out["unknown"];
    assert_eq!(unknown["is_err"], true, "{unknown}");
    assert_eq!(unknown["error_type"], "UnknownTask", "{unknown}");
    assert!(
        unknown["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("rs_missing")),
        "{unknown}"
    );
    assert!(stats.succeeded >= 2, "{stats:?}");
}

/// A `taskiq worker` process group, stopped (SIGTERM, then SIGKILL) when dropped.
struct PythonWorker {
    child: tokio::process::Child,
}

impl Drop for PythonWorker {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            // The worker forks its worker processes into its own process group.
            for signal in ["-TERM", "-KILL"] {
                let _ = std::process::Command::new("kill")
                    .args([signal, "--", &format!("-{pid}")])
                    .stderr(Stdio::null())
                    .status();
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }
}

#[tokio::test]
#[ignore = "needs LocalStack and the TaskIQ venv: cargo xtask localstack-test"]
async fn a_stepq_producer_kicks_tasks_a_python_worker_runs() {
    let fleet = Fleet::new().await;
    let mut command = fleet.python(&[
        "-m",
        "taskiq",
        "worker",
        "tasks:broker",
        "--workers",
        "1",
        "--log-level",
        "WARNING",
    ]);
    command.process_group(0).stdout(Stdio::null());
    let worker = PythonWorker {
        child: command.spawn().expect("taskiq worker started"),
    };
    let queue = fleet.stepq_queue().await;

    let add = queue
        .task::<Add, i64>("py_add")
        .kiq(&Add { a: 2, b: 3 })
        .await
        .unwrap();
    let fail = queue
        .task::<Reason, Value>("py_fail")
        .kiq(&Reason {
            reason: "boom".into(),
        })
        .await
        .unwrap();
    let echo = queue
        .task::<Value, Echo>("py_echo")
        .with_label("team", "data")
        .kiq(&json!({ "text": "z".repeat(BIG) }))
        .await
        .unwrap();
    let big = queue
        .task::<Value, String>("py_big")
        .kiq(&json!({ "size": 1_500_000 }))
        .await
        .unwrap();

    let sum = add.wait_result(Some(CASE_TIMEOUT)).await;
    let failed = fail.wait_result(Some(CASE_TIMEOUT)).await;
    let echoed = echo.wait_result(Some(CASE_TIMEOUT)).await;
    let returned = big.wait_result(Some(CASE_TIMEOUT)).await;
    let (replying, replies) = fleet.stepq_reply_queue().await;
    let through_reply_stack = replying
        .task::<Add, i64>("py_add")
        .kiq(&Add { a: 20, b: 22 })
        .await
        .unwrap()
        .wait_result(Some(CASE_TIMEOUT))
        .await;
    replies.shutdown().await.expect("the reply queue deleted");
    drop(worker); // before its queue goes
    fleet.delete().await;

    assert_eq!(sum.expect("py_add"), 5);
    match failed {
        Err(TaskWaitError::TaskFailed { kind, message, .. }) => {
            assert_eq!(kind.as_str(), "builtins.ValueError");
            assert_eq!(message, "boom");
        }
        other => panic!("py_fail: expected the Python exception, got {other:?}"),
    }
    let echoed = echoed.expect("py_echo");
    assert_eq!(echoed.task_id, echo.task_id(), "stepq's task id");
    assert_eq!(echoed.labels["team"], "data");
    assert_eq!(
        (echoed.len, echoed.head.as_str()),
        (BIG, "zzzzzzzzzzzzzzzz")
    );
    assert_eq!(returned.expect("py_big").len(), 1_500_000);
    assert_eq!(through_reply_stack.expect("py_add via the reply stack"), 42);
}
