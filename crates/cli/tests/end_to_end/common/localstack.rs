//! LocalStack for the tests of the `stepq` binary: a queue per test, a config directory
//! pointing at it and `stepq worker start` processes.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;

use super::cli::stepq_configured;

/// The visibility timeout of the tests' queues (in their `stepq.toml`), in seconds.
pub(crate) const VISIBILITY_SECONDS: u32 = 6;

/// Where LocalStack is, from the environment `cargo xtask localstack-test` sets.
pub(crate) struct LocalStack {
    /// Endpoint URL.
    pub endpoint: String,
    /// The test bucket.
    pub bucket: String,
    /// Region.
    pub region: String,
}

/// The LocalStack settings; panics naming the missing variable when they are not set.
pub(crate) fn localstack() -> LocalStack {
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
pub(crate) async fn sqs_client(ls: &LocalStack) -> aws_sdk_sqs::Client {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&ls.endpoint)
        .region(aws_config::Region::new(ls.region.clone()))
        .load()
        .await;
    aws_sdk_sqs::Client::new(&sdk)
}

/// A queue of its own for one test, deleted when the test ends.
pub(crate) struct TestQueue {
    /// The queue's URL.
    pub url: String,
    /// The SQS client that made it.
    pub client: aws_sdk_sqs::Client,
}

impl TestQueue {
    /// A fresh queue named `stepq-cli-<id>` (a FIFO queue when `fifo`).
    pub(crate) async fn create(ls: &LocalStack, fifo: bool) -> Self {
        Self::named(ls, "stepq-cli", fifo).await
    }

    /// A fresh queue named `<name>-<id>` (a FIFO queue when `fifo`).
    pub(crate) async fn named(ls: &LocalStack, name: &str, fifo: bool) -> Self {
        let client = sqs_client(ls).await;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut request = client.create_queue();
        if fifo {
            request = request
                .queue_name(format!("{name}-{}.fifo", &id[..12]))
                .attributes(QueueAttributeName::FifoQueue, "true");
        } else {
            request = request.queue_name(format!("{name}-{}", &id[..12]));
        }
        let out = request.send().await.expect("create the test queue");
        TestQueue {
            url: out.queue_url().expect("a queue URL").to_string(),
            client,
        }
    }

    /// Sends `body` as it is, not as a task message.
    pub(crate) async fn send_raw(&self, body: &str) {
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .expect("send a raw message");
    }

    /// Deletes the queue.
    pub(crate) async fn delete(self) {
        let _ = self.client.delete_queue().queue_url(&self.url).send().await;
    }
}

/// A working directory with a `stepq.toml` pointing at the test's queue and S3 prefix.
pub(crate) fn config_dir(ls: &LocalStack, queue: &TestQueue) -> tempfile::TempDir {
    config_dir_with(ls, queue, "cli-tests", "")
}

/// Like [`config_dir`], the S3 prefix under `prefix_root/`, with `more` TOML appended.
pub(crate) fn config_dir_with(
    ls: &LocalStack,
    queue: &TestQueue,
    prefix_root: &str,
    more: &str,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{prefix_root}/{}", uuid::Uuid::new_v4().simple());
    std::fs::write(
        dir.path().join("stepq.toml"),
        format!(
            r#"
[sqs]
queue_url = "{queue}"
endpoint_url = "{endpoint}"
region_name = "{region}"
config_source = {{ wait_time_seconds = 2, visibility_timeout = {VISIBILITY_SECONDS} }}

[s3]
bucket = "{bucket}"
base_path = "{prefix}"
endpoint_url = "{endpoint}"
{more}"#,
            queue = queue.url,
            endpoint = ls.endpoint,
            region = ls.region,
            bucket = ls.bucket,
        ),
    )
    .unwrap();
    dir
}

/// `stepq.toml` in `dir` at the default SQS settings (not shortened like [`config_dir`]'s):
/// only the queue URL, the endpoint (LocalStack's, or a proxy in front of it), the region and
/// a fresh S3 prefix under `prefix_root/`.
pub(crate) fn write_default_config(
    dir: &Path,
    ls: &LocalStack,
    queue_url: &str,
    endpoint: &str,
    prefix_root: &str,
) {
    let prefix = format!("{prefix_root}/{}", uuid::Uuid::new_v4().simple());
    let config = format!(
        "[sqs]\nqueue_url = \"{queue_url}\"\nendpoint_url = \"{endpoint}\"\nregion_name = \"{}\"\n\n\
         [s3]\nbucket = \"{}\"\nbase_path = \"{prefix}\"\nendpoint_url = \"{endpoint}\"\n",
        ls.region, ls.bucket
    );
    std::fs::write(dir.join("stepq.toml"), config).unwrap();
}

/// A `stepq worker start` process; its log lines arrive on `lines`. Killed on drop.
pub(crate) struct WorkerProcess {
    /// The process.
    pub child: Child,
    /// Its stderr, line by line.
    pub lines: mpsc::Receiver<String>,
}

impl WorkerProcess {
    /// Starts `stepq worker start --name NAME` in `dir`.
    pub(crate) fn start(dir: &Path, name: &str) -> Self {
        Self::start_with(dir, name, &[])
    }

    /// Like [`start`](WorkerProcess::start), with more `worker start` arguments.
    pub(crate) fn start_with(dir: &Path, name: &str, extra: &[&str]) -> Self {
        Self::start_with_env(dir, name, extra, &[])
    }

    /// Like [`start_with`](WorkerProcess::start_with), with environment variables set.
    pub(crate) fn start_with_env(
        dir: &Path,
        name: &str,
        extra: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Self {
        let mut command = stepq_configured(dir);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
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
    pub(crate) fn wait_for(&self, text: &str, limit: Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!(
                    "no log line with `{text}` within {limit:?}; the last lines:\n{}",
                    seen[seen.len().saturating_sub(5)..].join("\n")
                ),
            }
        }
    }

    /// Stops the worker with SIGTERM and returns its exit code.
    pub(crate) fn stop(mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap().code()
    }

    /// Kills the worker (SIGKILL) and reaps it.
    pub(crate) fn kill(mut self) {
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
