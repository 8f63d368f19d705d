//! Helpers of the LocalStack tests of the `stepq` binary: a queue per test, a config
//! directory pointing at it, `stepq` commands and `stepq worker start` processes.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;

/// Where LocalStack is, from the environment `cargo xtask localstack-test` sets.
pub struct LocalStack {
    /// Endpoint URL.
    pub endpoint: String,
    /// The test bucket.
    pub bucket: String,
    /// Region.
    pub region: String,
}

/// The LocalStack settings; panics naming the missing variable when they are not set.
pub fn localstack() -> LocalStack {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: run the LocalStack tests with `cargo xtask localstack-test`")
        })
    };
    LocalStack {
        endpoint: var("STEPQ_TEST_AWS_ENDPOINT"),
        bucket: var("STEPQ_TEST_S3_BUCKET"),
        region: std::env::var("AWS_DEFAULT_REGION").unwrap_or_else(|_| "us-east-1".into()),
    }
}

/// An SQS client on LocalStack.
pub async fn sqs_client(ls: &LocalStack) -> aws_sdk_sqs::Client {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&ls.endpoint)
        .region(aws_config::Region::new(ls.region.clone()))
        .load()
        .await;
    aws_sdk_sqs::Client::new(&sdk)
}

/// A queue of its own for one test, deleted when the test ends.
pub struct TestQueue {
    pub url: String,
    pub client: aws_sdk_sqs::Client,
}

impl TestQueue {
    pub async fn create(ls: &LocalStack, fifo: bool) -> Self {
        let client = sqs_client(ls).await;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut request = client.create_queue();
        if fifo {
            request = request
                .queue_name(format!("stepq-cli-{}.fifo", &id[..12]))
                .attributes(QueueAttributeName::FifoQueue, "true");
        } else {
            request = request.queue_name(format!("stepq-cli-{}", &id[..12]));
        }
        let out = request.send().await.expect("create the test queue");
        TestQueue {
            url: out.queue_url().expect("a queue URL").to_string(),
            client,
        }
    }

    pub async fn send_raw(&self, body: &str) {
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .expect("send a raw message");
    }

    pub async fn delete(self) {
        let _ = self.client.delete_queue().queue_url(&self.url).send().await;
    }
}

/// A working directory with a `stepq.toml` pointing at the test's queue and S3 prefix.
pub fn config_dir(ls: &LocalStack, queue: &TestQueue) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("cli-tests/{}", uuid::Uuid::new_v4().simple());
    std::fs::write(
        dir.path().join("stepq.toml"),
        format!(
            r#"
[sqs]
queue_url = "{queue}"
endpoint_url = "{endpoint}"
region_name = "{region}"
config_source = {{ wait_time_seconds = 2, visibility_timeout = 6 }}

[s3]
bucket = "{bucket}"
base_path = "{prefix}"
endpoint_url = "{endpoint}"
"#,
            queue = queue.url,
            endpoint = ls.endpoint,
            region = ls.region,
            bucket = ls.bucket,
        ),
    )
    .unwrap();
    dir
}

/// `stepq --config stepq.toml` in `dir`, without environment overrides.
pub fn stepq(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stepq"));
    cmd.current_dir(dir).arg("--config").arg("stepq.toml");
    for var in [
        "STEPQ_CONFIG",
        "STEPQ_SQS_QUEUE_URL",
        "STEPQ_SQS_ENDPOINT_URL",
        "STEPQ_S3_BUCKET_NAME",
        "STEPQ_S3_ENDPOINT_URL",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// A `stepq worker start` process; its log lines arrive on `lines`. Killed on drop.
pub struct WorkerProcess {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
}

impl WorkerProcess {
    pub fn start(dir: &Path, name: &str) -> Self {
        Self::start_with(dir, name, &[])
    }

    /// Like [`start`](WorkerProcess::start), with more `worker start` arguments.
    pub fn start_with(dir: &Path, name: &str, extra: &[&str]) -> Self {
        let mut child = stepq(dir)
            .args(["worker", "start", "--name", name, "--log-format", "json"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a worker");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        WorkerProcess { child, lines }
    }

    /// Waits (up to `limit`) for a log line containing `text`; returns it.
    pub fn wait_for(&self, text: &str, limit: Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line with `{text}` within {limit:?}"),
            }
        }
    }

    /// Stops the worker with SIGTERM and returns its exit code.
    pub fn stop(mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap().code()
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `stepq ARGS` in `dir` to the end.
pub fn run(dir: &Path, args: &[&str]) -> Output {
    stepq(dir).args(args).output().expect("stepq runs")
}

/// Stdout and stderr of a command, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The words of the summary-table row of `step`.
pub fn row<'a>(stdout: &'a str, step: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .find(|l| l.starts_with(&format!("{step} ")))
        .unwrap_or_else(|| panic!("no row for {step}: {stdout}"))
        .split_whitespace()
        .collect()
}
