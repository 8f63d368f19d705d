//! `--peer taskiq`: stepq's broker alone beside Python TaskIQ's on the same LocalStack, the
//! two doing the same work.
//!
//! - stepq: [`SqsBroker`](stepq::aws::sqs::SqsBroker) + one `Receiver` (at the cores' and at
//!   ten tasks at once), results in memory (as the default broker-alone figures) and stored in
//!   S3 (`S3ResultBackend`, awaited one after the other in send order), tasks sent in
//!   `kick_batch` calls of 100.
//! - TaskIQ: taskiq-aio-sqs's `SQSBroker` (its defaults: one message per receive, 10 s long
//!   polls, no batching) + `S3Backend`, one `taskiq worker` process (`--workers 1`), tasks
//!   kicked one after the other (`serial`) or all at once (`inflight`, `asyncio.gather`),
//!   results awaited in send order with `wait_result` (`xtask/taskiq/bench.py`).
//!
//! Each measurement gets its own queue; requests are the request-log lines between the first
//! kick and the last result (plus the settle). Wall time is from the first kick to the last
//! result.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::report::{throughput_cells, total, Requests};
use super::{
    broker_alone, create_queue, delete_queue, log_offset, requests_since, short_id, BenchRunArgs,
    ResultsIn, BUCKET, RUN_TIMEOUT, SETTLE,
};
use crate::resources::REGION;

/// How long a `taskiq worker` may take to say it listens.
const WORKER_START: Duration = Duration::from_secs(60);

/// One row of the comparison.
struct PeerFigures {
    system: String,
    tasks: usize,
    wall: Duration,
    requests: Requests,
}

/// Runs the comparison and prints it.
pub(super) async fn bench_peer(
    root: &Path,
    args: &BenchRunArgs,
    sdk: &aws_config::SdkConfig,
    sqs: &aws_sdk_sqs::Client,
    log: &Path,
) -> Result<u8> {
    let python = args
        .taskiq_python
        .clone()
        .context("--peer taskiq needs --taskiq-python (cargo xtask bench sets it)")?;
    let tasks = args.bench.peer_tasks;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rows = Vec::new();
    println!("== stepq broker alone: {tasks} no-op tasks, one worker");
    for (results_in, name) in [(ResultsIn::Memory, "memory"), (ResultsIn::S3, "S3")] {
        for concurrency in [cores, 10] {
            let f = broker_alone(
                sdk,
                sqs,
                &args.endpoint,
                log,
                tasks,
                concurrency,
                results_in,
            )
            .await?;
            let row = PeerFigures {
                system: format!("stepq, concurrency {concurrency}, results in {name}"),
                tasks,
                wall: f.wall,
                requests: f.requests,
            };
            print_row(&row);
            rows.push(row);
        }
    }
    println!("== TaskIQ broker alone: {tasks} no-op tasks, one `taskiq worker`");
    for mode in ["serial", "inflight"] {
        let row = taskiq_alone(root, &python, args, sqs, log, tasks, mode).await?;
        print_row(&row);
        rows.push(row);
    }
    println!("\n{}", render(&rows));
    Ok(0)
}

fn print_row(row: &PeerFigures) {
    println!(
        "   {}: {:.0} tasks/s, {:.2} requests/task",
        row.system,
        row.tasks as f64 / row.wall.as_secs_f64(),
        total(&row.requests) as f64 / row.tasks as f64
    );
}

/// The comparison as a Markdown table.
fn render(rows: &[PeerFigures]) -> String {
    let mut out = String::from(
        "| broker alone | wall | tasks/s | AWS requests per task | by operation |\n\
         |---|---:|---:|---:|---|\n",
    );
    for r in rows {
        let cells = throughput_cells(r.tasks, r.wall, &r.requests);
        out.push_str(&format!("| {} | {cells} |\n", r.system));
    }
    out
}

/// The directory of `tasks.py` (the Python tasks, shared with the interop tests).
fn tasks_dir(root: &Path) -> PathBuf {
    root.join("crates/aws/tests/taskiq")
}

/// `python <args>` with the settings `tasks.py` reads, for the queue `queue_name`.
fn python_command(
    root: &Path,
    python: &Path,
    args: &BenchRunArgs,
    queue_name: &str,
    base: &str,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(python);
    command
        .current_dir(root.join("xtask/taskiq"))
        .env("PYTHONPATH", tasks_dir(root))
        .env("PYTHONUNBUFFERED", "1")
        .env("STEPQ_TEST_AWS_ENDPOINT", &args.endpoint)
        .env("AWS_DEFAULT_REGION", REGION)
        .env("TASKIQ_QUEUE_NAME", queue_name)
        .env("TASKIQ_BUCKET", BUCKET)
        .env("TASKIQ_RESULTS_BASE", format!("{base}/results"))
        // taskiq-aio-sqs's SQSBroker defaults.
        .env("TASKIQ_WAIT_TIME_SECONDS", "10")
        .env("TASKIQ_MAX_MESSAGES", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// A `taskiq worker` process group, stopped when dropped.
struct TaskiqWorker(tokio::process::Child);

impl Drop for TaskiqWorker {
    fn drop(&mut self) {
        if let Some(pid) = self.0.id() {
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

/// Starts a `taskiq worker` on `queue_name` and waits until it logs that it listens.
async fn start_worker(
    root: &Path,
    python: &Path,
    args: &BenchRunArgs,
    queue_name: &str,
    base: &str,
) -> Result<TaskiqWorker> {
    let mut command = python_command(root, python, args, queue_name, base);
    command
        .args(["-m", "taskiq", "worker", "tasks:broker", "--workers", "1"])
        .args(["--log-level", "INFO"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = command.spawn().context("starting `taskiq worker`")?;
    let stderr = child.stderr.take().context("the worker's stderr")?;
    let worker = TaskiqWorker(child);
    let mut lines = BufReader::new(stderr).lines();
    let listening = async {
        while let Some(line) = lines.next_line().await? {
            if line.contains("Listening started") {
                return Ok(true);
            }
        }
        anyhow::Ok(false)
    };
    match tokio::time::timeout(WORKER_START, listening).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => bail!("`taskiq worker` exited before it listened"),
        Ok(Err(e)) => return Err(e.context("reading the worker's log")),
        Err(_) => bail!("`taskiq worker` did not listen within {WORKER_START:?}"),
    }
    // Keep draining its log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(worker)
}

/// One TaskIQ measurement on a fresh queue.
async fn taskiq_alone(
    root: &Path,
    python: &Path,
    args: &BenchRunArgs,
    sqs: &aws_sdk_sqs::Client,
    log: &Path,
    tasks: usize,
    mode: &str,
) -> Result<PeerFigures> {
    let queue_name = format!("stepq-bench-taskiq-{}", short_id());
    let url = create_queue(sqs, &queue_name).await?;
    let base = format!("bench-taskiq-{}", short_id());
    let worker = start_worker(root, python, args, &queue_name, &base).await?;
    let offset = log_offset(log)?;
    let run = python_command(root, python, args, &queue_name, &base)
        .arg("bench.py")
        .arg(tasks.to_string())
        .arg(mode)
        .output();
    let output = tokio::time::timeout(RUN_TIMEOUT * 2, run)
        .await
        .context("the TaskIQ producer did not finish in time")?
        .context("starting the TaskIQ producer")?;
    tokio::time::sleep(SETTLE).await;
    let requests = requests_since(log, offset)?;
    drop(worker);
    delete_queue(sqs, &url).await;
    if !output.status.success() {
        bail!(
            "the TaskIQ producer failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "bench.py printed {:?}",
            String::from_utf8_lossy(&output.stdout)
        )
    })?;
    let wall = printed["wall_s"]
        .as_f64()
        .context("bench.py printed no wall_s")?;
    Ok(PeerFigures {
        system: format!("TaskIQ (taskiq-aio-sqs defaults), kicks {mode}, results in S3"),
        tasks,
        wall: Duration::from_secs_f64(wall),
        requests,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_row_per_measurement() {
        let row = |system: &str| PeerFigures {
            system: system.into(),
            tasks: 100,
            wall: Duration::from_secs(2),
            requests: Requests::from([
                ("sqs.SendMessage".into(), 100),
                ("s3.PutObject".into(), 100),
            ]),
        };
        let table = render(&[row("stepq"), row("TaskIQ")]);
        assert_eq!(table.lines().count(), 4);
        assert!(
            table.contains(
                "| stepq | 2.000 s | 50 | 2.00 | s3.PutObject 1.00, sqs.SendMessage 1.00 |"
            ),
            "{table}"
        );
    }
}
