//! `xtask bench-run` (feature `bench`, run by `cargo xtask bench --localstack`): the measuring
//! side, against a running LocalStack.
//!
//! 1. Broker alone: one [`Receiver`] (one worker) drains no-op tasks sent through an
//!    [`SqsBroker`] in batches, results kept in memory: tasks per second, AWS requests per task.
//! 2. Steps end to end: two workers (two `stepq worker start --config` processes, or two
//!    in-process workers with their own AWS clients) and in-process orchestrators running
//!    `chain_10` (10 no-op steps in a line) and `fanout_join_50` (1 -> 50 -> 1, 52 steps):
//!    wall time per run and per step, AWS requests per step by operation. Orchestrators, each
//!    adding one saving to the one before: results stored in S3 and announced on a reply
//!    queue, one step per task, inputs read from S3 (the setup before issue #4's request
//!    work); reply-only results; small inputs inline in the messages; and the executor
//!    `stepq::make_app` builds from the workers' config (all of those plus fused chains),
//!    which is what `stepq run` uses. Then `stepq run` itself, as processes (with the run
//!    store's records and event log, and each run's reply queue set-up), when the workers are
//!    processes too.
//!
//! With `--faults`, the fault benchmark instead (`faults.rs`): recovery after a SIGKILLed
//! worker, prefetch on idle workers, idle request rate.
//!
//! Requests are counted from LocalStack's request log: the lines between the start of a
//! scenario and its end (plus a short settle, so the last acks are in).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use stepq::aws::sqs::{reply, SqsBroker, SqsConfig};
use stepq::aws::{S3OutputStore, S3ResultBackend};
use stepq::broker::{Receiver, ReceiverConfig, TaskMessage, TaskQueue};
use stepq::executor::{Executor, ExecutorConfig};
use stepq::results::{InMemoryResultBackend, ResultBackend};
use stepq::{make_app, App, Job, RunRequest, RunStatus, StepqConfig};
use tokio_util::sync::CancellationToken;

use crate::bench::BenchArgs;
use crate::localstack;
use crate::requests::count_requests;
use crate::resources::{ensure_bucket, s3_client, sdk_config, REGION};

mod faults;
mod peer;
mod report;
mod workers;

use report::{render, secs, total, BrokerFigures, Requests, StepFigures};
use workers::Workers;

/// The bucket of every benchmark (each run under its own prefix).
const BUCKET: &str = "stepq-bench";
/// Longest a single run may take before the benchmark gives up.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);
/// Wait after a scenario before its request window closes, so the last acks are logged.
const SETTLE: Duration = Duration::from_millis(500);
/// Workers of the step scenarios.
const WORKERS: usize = 2;
/// Concurrency values of the broker-alone measurement: the receiver's default on this
/// machine (the cores) and a full receive batch.
const BROKER_CONCURRENCY: [usize; 2] = [0, 10];

/// The arguments of `bench-run`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BenchRunArgs {
    /// The benchmark options.
    #[command(flatten)]
    pub(crate) bench: BenchArgs,
    /// LocalStack's endpoint.
    #[arg(long)]
    pub(crate) endpoint: String,
    /// The `stepq` binary the workers run; without it, in-process workers.
    #[arg(long)]
    pub(crate) stepq_bin: Option<PathBuf>,
    /// With `--peer taskiq`: the python that has taskiq and taskiq-aio-sqs.
    #[arg(long)]
    pub(crate) taskiq_python: Option<PathBuf>,
}

/// The request log's current length: where a window starts.
fn log_offset(log: &Path) -> Result<u64> {
    Ok(std::fs::metadata(log)
        .with_context(|| format!("reading {}", log.display()))?
        .len())
}

/// Requests logged since `offset`.
fn requests_since(log: &Path, offset: u64) -> Result<Requests> {
    let bytes = std::fs::read(log).with_context(|| format!("reading {}", log.display()))?;
    ensure!(
        bytes.len() as u64 >= offset,
        "{} shrank during the measurement (another LocalStack started?)",
        log.display()
    );
    Ok(count_requests(&String::from_utf8_lossy(
        &bytes[offset as usize..],
    )))
}

async fn create_queue(sqs: &aws_sdk_sqs::Client, name: &str) -> Result<String> {
    sqs.create_queue()
        .queue_name(name)
        .send()
        .await
        .with_context(|| format!("CreateQueue {name}"))?
        .queue_url
        .context("CreateQueue returned no URL")
}

async fn delete_queue(sqs: &aws_sdk_sqs::Client, url: &str) {
    if let Err(e) = sqs.delete_queue().queue_url(url).send().await {
        eprintln!("warning: could not delete {url}: {e}");
    }
}

/// Writes `WORK/stepq.toml` for LocalStack: the task queue, S3 under `bench-ID` in
/// [`BUCKET`], and `worker.concurrency` if given (else every other setting at its default).
fn write_config(
    work: &Path,
    endpoint: &str,
    task_queue: &str,
    id: &str,
    concurrency: Option<usize>,
) -> Result<(PathBuf, StepqConfig)> {
    let config_path = work.join("stepq.toml");
    let mut config_text = format!(
        "[sqs]\nqueue_url = \"{task_queue}\"\nendpoint_url = \"{endpoint}\"\n\
         region_name = \"{REGION}\"\n\n[s3]\nbucket = \"{BUCKET}\"\nbase_path = \"bench-{id}\"\n\
         endpoint_url = \"{endpoint}\"\n",
    );
    if let Some(concurrency) = concurrency {
        config_text.push_str(&format!("\n[worker]\nconcurrency = {concurrency}\n"));
    }
    std::fs::write(&config_path, &config_text)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let config = StepqConfig::from_toml_str(&config_text, &config_path)?;
    Ok((config_path, config))
}

fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// `bench-run`.
pub(crate) async fn bench_run(root: &Path, args: &BenchRunArgs) -> Result<u8> {
    args.bench.validate()?;
    let log = localstack::log_path(root);
    log_offset(&log).context(
        "request counts need LocalStack's live request log: run LocalStack natively \
         (a Docker Compose LocalStack writes its log only when it stops)",
    )?;
    let sdk = sdk_config(&args.endpoint).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let s3 = s3_client(&sdk);
    ensure_bucket(&s3, BUCKET).await?;
    if args.bench.faults {
        return faults::bench_faults(root, args, &sqs, &log).await;
    }
    if args.bench.peer.is_some() {
        return peer::bench_peer(root, args, &sdk, &sqs, &log).await;
    }
    let id = short_id();
    let work = root.join(format!("target/stepq-bench/localstack-{id}"));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    println!(
        "== broker alone: {} no-op tasks, one worker",
        args.bench.broker_tasks
    );
    let mut broker = Vec::new();
    for concurrency in BROKER_CONCURRENCY {
        let concurrency = if concurrency == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            concurrency
        };
        let figures = broker_alone(
            &sdk,
            &sqs,
            &args.endpoint,
            &log,
            args.bench.broker_tasks,
            concurrency,
            ResultsIn::Memory,
        )
        .await?;
        println!(
            "   concurrency {concurrency}: {:.0} tasks/s, {:.2} requests/task",
            figures.tasks as f64 / figures.wall.as_secs_f64(),
            total(&figures.requests) as f64 / figures.tasks as f64
        );
        broker.push(figures);
    }

    let task_queue = create_queue(&sqs, &format!("stepq-bench-{id}")).await?;
    let (config_path, config) = write_config(
        &work,
        &args.endpoint,
        &task_queue,
        &id,
        Some(args.bench.worker_concurrency),
    )?;

    let mut workers =
        Workers::start(args.stepq_bin.as_deref(), &config_path, &config, &work).await?;
    let outcome = async {
        let app = make_app(&config).await?;
        app.startup().await?;
        let unfused = ExecutorConfig {
            fuse_chains: false,
            ..app.executor_config()
        };
        let no_inline = ExecutorConfig {
            inline_inputs_per_message: 0,
            ..unfused.clone()
        };
        let orchestrators = [
            (
                ORCHESTRATOR_BEFORE,
                custom_executor(
                    &config,
                    &args.endpoint,
                    Notification::Durable,
                    no_inline.clone(),
                )
                .await?,
            ),
            (
                ORCHESTRATOR_REPLY_ONLY,
                custom_executor(&config, &args.endpoint, Notification::ReplyOnly, no_inline)
                    .await?,
            ),
            (
                ORCHESTRATOR_INLINE,
                custom_executor(&config, &args.endpoint, Notification::ReplyOnly, unfused).await?,
            ),
            (ORCHESTRATOR_APP, app.executor(None)?),
        ];
        let jobs = [
            Arc::new(stepq_cli::demo::chain_job(10)),
            Arc::new(stepq_cli::demo::fanout_join_job(50)),
        ];
        let mut figures = Vec::new();
        for (orchestrator, executor) in &orchestrators {
            println!("== orchestrator: {orchestrator}; warm-up: one run of each job");
            for job in &jobs {
                let wall = run_job(executor, job)
                    .await
                    .with_context(|| workers.log_tails())?;
                println!("   {}: {}", job.name(), secs(wall));
            }
            for job in &jobs {
                println!(
                    "== {} ({} steps), {} runs",
                    job.name(),
                    job.steps().len(),
                    args.bench.reps
                );
                let f = measure(orchestrator, &log, job, args.bench.reps, || {
                    run_job(executor, job)
                })
                .await
                .with_context(|| workers.log_tails())?;
                f.print_summary();
                figures.push(f);
            }
        }
        for (_, executor) in &orchestrators[..orchestrators.len() - 1] {
            if let Err(e) = executor.queue().shutdown().await {
                eprintln!("warning: an orchestrator's queue did not shut down cleanly: {e}");
            }
        }
        shutdown_app(&app).await;
        if let Some(bin) = args.stepq_bin.as_deref() {
            for job in &jobs {
                println!(
                    "== {ORCHESTRATOR_CLI}: {} ({} steps), one warm-up and {} runs",
                    job.name(),
                    job.steps().len(),
                    args.bench.reps
                );
                let f = measure_cli(bin, &config_path, &work, &log, job, args.bench.reps)
                    .await
                    .with_context(|| workers.log_tails())?;
                f.print_summary();
                figures.push(f);
            }
        }
        anyhow::Ok(figures)
    }
    .await;
    workers.stop().await;
    delete_queue(&sqs, &task_queue).await;
    let steps = outcome?;

    let report = render(args, &steps, &broker, workers.describe());
    let path = work.join("report.md");
    std::fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
    println!("\n{report}\n(also written to {})", path.display());
    Ok(0)
}

async fn shutdown_app(app: &App) {
    if let Err(e) = app.shutdown().await {
        eprintln!("warning: the orchestrator's app did not shut down cleanly: {e}");
    }
}

/// Runs `job` once to success; returns its wall time.
async fn run_job(executor: &Executor, job: &Arc<Job>) -> Result<Duration> {
    let run_id = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let started = Instant::now();
    let handle = executor.start(RunRequest::new(run_id.clone(), job.clone()))?;
    let result = tokio::time::timeout(RUN_TIMEOUT, handle.wait())
        .await
        .with_context(|| format!("run {run_id} of {} took over {RUN_TIMEOUT:?}", job.name()))?;
    let wall = started.elapsed();
    if result.status != RunStatus::Success {
        bail!(
            "run {run_id} of {} ended {:?}: {:?}",
            job.name(),
            result.status,
            result.errors
        );
    }
    Ok(wall)
}

/// Results stored in S3, then announced on the reply queue; one step per task; inputs read
/// from S3: `stepq run`'s setup before the request savings of issue #4.
const ORCHESTRATOR_BEFORE: &str = "before: S3 results, one step per task, inputs from S3";
/// Reply-only results (`s3.store_results = false`), one step per task, inputs from S3.
const ORCHESTRATOR_REPLY_ONLY: &str = "reply-only results";
/// Reply-only results and small inputs inline in the messages, one step per task.
const ORCHESTRATOR_INLINE: &str = "reply-only + inline inputs";
/// The executor `stepq::make_app` builds: reply-only, inline inputs, fused chains.
const ORCHESTRATOR_APP: &str = "make_app default (+ fused chains)";
/// `stepq run` as its own process, recording the run in the run store.
const ORCHESTRATOR_CLI: &str = "`stepq run` process (run store, set-up)";

/// How a custom orchestrator learns of results.
enum Notification {
    /// Reply queue; results stored in S3 first.
    Durable,
    /// Reply queue, and workers send results that fit in the notification only.
    ReplyOnly,
}

/// An executor with `executor_config` on the bare SQS broker and S3 backends, learning of
/// results through a reply queue, with results stored in S3 first or reply-only.
async fn custom_executor(
    config: &StepqConfig,
    endpoint: &str,
    notification: Notification,
    executor_config: ExecutorConfig,
) -> Result<Executor> {
    let sqs_config = config.sqs_config().context("a distributed config")?;
    let sdk = SqsBroker::load_sdk_config(&sqs_config).await;
    let broker = SqsBroker::from_sdk_config(sqs_config, &sdk)?;
    let s3_sdk = sdk.to_builder().endpoint_url(endpoint).build();
    let base = &config.s3.base_path;
    let durable = S3ResultBackend::new(&s3_sdk, BUCKET, base);
    let reply_only = matches!(notification, Notification::ReplyOnly);
    let wiring = reply::attach(&broker, durable);
    let queue = TaskQueue::new(Arc::new(broker), wiring.results).with_middleware(Arc::new(
        reply::ReplyToMiddleware::new(wiring.replies).with_reply_only(reply_only),
    ));
    queue.startup().await?;
    let outputs = Arc::new(S3OutputStore::new(&s3_sdk, BUCKET, base));
    Ok(Executor::new(queue, outputs, executor_config)?)
}

/// One warm-up and `reps` runs of `stepq run JOB --workers 0` as processes (each recording
/// its run in the run store, with its own reply queue), and the requests made meanwhile.
async fn measure_cli(
    bin: &Path,
    config_path: &Path,
    work: &Path,
    log: &Path,
    job: &Arc<Job>,
    reps: usize,
) -> Result<StepFigures> {
    let run_once = || async {
        let log_path = work.join(format!("stepq-run-{}.log", job.name()));
        let started = Instant::now();
        let mut child = workers::stepq_command(bin, config_path, &log_path)?
            .args(["run", job.name(), "--workers", "0"])
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let status = tokio::time::timeout(RUN_TIMEOUT, child.wait())
            .await
            .with_context(|| format!("`stepq run {}` took over {RUN_TIMEOUT:?}", job.name()))??;
        let wall = started.elapsed();
        if !status.success() {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("`stepq run {}` exited {status}:\n{text}", job.name());
        }
        anyhow::Ok(wall)
    };
    run_once().await?;
    measure(ORCHESTRATOR_CLI, log, job, reps, run_once).await
}

/// `reps` runs of `job` (each by `run_once`, which gives its wall time), and the requests
/// made meanwhile.
async fn measure<F, Fut>(
    orchestrator: &'static str,
    log: &Path,
    job: &Arc<Job>,
    reps: usize,
    mut run_once: F,
) -> Result<StepFigures>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Duration>>,
{
    let offset = log_offset(log)?;
    let mut walls = Vec::with_capacity(reps);
    for _ in 0..reps {
        walls.push(run_once().await?);
    }
    tokio::time::sleep(SETTLE).await;
    Ok(StepFigures {
        orchestrator,
        job: job.name().to_string(),
        steps: job.steps().len(),
        walls,
        requests: requests_since(log, offset)?,
    })
}

/// Where the broker-alone measurement keeps results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResultsIn {
    /// An `InMemoryResultBackend` shared by producer and worker; all results awaited at once.
    Memory,
    /// `S3ResultBackend` (one object per task, as TaskIQ's S3Backend); results awaited one
    /// after the other in send order, as the TaskIQ peer does.
    S3,
}

/// One worker (a receiver with `concurrency`) drains `tasks` no-op tasks while they are sent
/// in batches of a hundred (ten SendMessageBatch calls each); results are kept `results_in`.
async fn broker_alone(
    sdk: &aws_config::SdkConfig,
    sqs: &aws_sdk_sqs::Client,
    endpoint: &str,
    log: &Path,
    tasks: usize,
    concurrency: usize,
    results_in: ResultsIn,
) -> Result<BrokerFigures> {
    let url = create_queue(sqs, &format!("stepq-bench-broker-{}", short_id())).await?;
    let mut config = SqsConfig::new(&url);
    config.endpoint_url = Some(endpoint.to_string());
    config.region_name = Some(REGION.to_string());
    let results: Arc<dyn ResultBackend> = match results_in {
        ResultsIn::Memory => Arc::new(InMemoryResultBackend::new()),
        ResultsIn::S3 => Arc::new(S3ResultBackend::new(
            sdk,
            BUCKET,
            &format!("bench-broker-{}", short_id()),
        )),
    };
    // Producer and worker each with their own clients, as two processes would have.
    let producer = TaskQueue::new(
        Arc::new(SqsBroker::from_sdk_config(config.clone(), sdk)?),
        results.clone(),
    );
    let consumer = TaskQueue::new(
        Arc::new(SqsBroker::from_sdk_config(config, sdk)?),
        results.clone(),
    );
    consumer.startup().await?;
    let mut receiver = Receiver::new(consumer).with_config(ReceiverConfig {
        concurrency,
        worker_name: "bench-worker".into(),
        ..ReceiverConfig::default()
    });
    receiver.register_fn("noop", |_: serde_json::Value| async {
        Ok::<_, std::convert::Infallible>(())
    });
    let messages: Vec<TaskMessage> = (0..tasks).map(|_| TaskMessage::new("noop")).collect();
    let ids: Vec<String> = messages.iter().map(|m| m.task_id.clone()).collect();

    let offset = log_offset(log)?;
    let stop = CancellationToken::new();
    let started = Instant::now();
    let worker = tokio::spawn(receiver.run(stop.clone()));
    let send = async {
        for chunk in messages.chunks(100) {
            producer.kick_batch(chunk.to_vec()).await?;
        }
        anyhow::Ok(())
    };
    let wait = async {
        match results_in {
            ResultsIn::Memory => {
                futures::future::join_all(
                    ids.iter()
                        .map(|id| results.wait_result(id, Some(RUN_TIMEOUT))),
                )
                .await
            }
            ResultsIn::S3 => {
                let mut done = Vec::with_capacity(ids.len());
                for id in &ids {
                    done.push(results.wait_result(id, Some(RUN_TIMEOUT)).await);
                }
                done
            }
        }
    };
    let (sent, done) = tokio::join!(send, wait);
    let wall = started.elapsed();
    stop.cancel();
    let stats = worker.await.context("the worker task failed")??;
    sent?;
    for r in done {
        r.context("a no-op task's result")?;
    }
    ensure!(
        stats.succeeded as usize >= tasks,
        "the worker ran {} of {tasks} tasks",
        stats.succeeded
    );
    tokio::time::sleep(SETTLE).await;
    let requests = requests_since(log, offset)?;
    delete_queue(sqs, &url).await;
    Ok(BrokerFigures {
        concurrency,
        tasks,
        wall,
        requests,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_from_the_offset_and_a_shrunk_log_is_refused() {
        let path = std::env::temp_dir().join(format!("stepq-bench-log-{}", short_id()));
        let line = |op: &str| {
            format!("2026-01-01T00:00:00.000  INFO --- [et.reactor-0] localstack.request.aws     : AWS {op} => 200\n")
        };
        std::fs::write(&path, line("sqs.SendMessage")).unwrap();
        let offset = log_offset(&path).unwrap();
        let mut more = std::fs::read_to_string(&path).unwrap();
        more.push_str(&line("sqs.ReceiveMessage"));
        more.push_str(&line("s3.PutObject"));
        more.push_str(&line("sqs.ReceiveMessage"));
        std::fs::write(&path, &more).unwrap();
        let counts = requests_since(&path, offset).unwrap();
        assert_eq!(counts.get("sqs.ReceiveMessage"), Some(&2));
        assert_eq!(counts.get("s3.PutObject"), Some(&1));
        assert_eq!(counts.get("sqs.SendMessage"), None, "before the window");
        assert_eq!(total(&counts), 3);
        std::fs::write(&path, "").unwrap();
        let err = requests_since(&path, offset).unwrap_err();
        assert!(err.to_string().contains("shrank"), "{err}");
        std::fs::remove_file(&path).unwrap();
        assert!(log_offset(&path).is_err(), "a missing log is an error");
    }
}
