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
//! Requests are counted from LocalStack's request log: the lines between the start of a
//! scenario and its end (plus a short settle, so the last acks are in).

use std::collections::BTreeMap;
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

use crate::bench::{aws_env, BenchArgs};
use crate::localstack;
use crate::requests::count_requests;
use crate::resources::{ensure_bucket, s3_client, sdk_config, REGION};

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
pub struct BenchRunArgs {
    /// The benchmark options.
    #[command(flatten)]
    pub bench: BenchArgs,
    /// LocalStack's endpoint.
    #[arg(long)]
    pub endpoint: String,
    /// The `stepq` binary the workers run; without it, in-process workers.
    #[arg(long)]
    pub stepq_bin: Option<PathBuf>,
}

/// AWS requests by `service.Operation`.
type Requests = BTreeMap<String, u64>;

/// One step scenario's figures.
struct StepFigures {
    orchestrator: &'static str,
    job: String,
    steps: usize,
    walls: Vec<Duration>,
    requests: Requests,
}

impl StepFigures {
    /// AWS requests per step, over all the measured runs.
    fn requests_per_step(&self) -> f64 {
        total(&self.requests) as f64 / (self.steps * self.walls.len()) as f64
    }

    /// Prints the median wall time per run and per step, and the AWS requests per step.
    fn print_summary(&self) {
        let m = median(&self.walls);
        println!(
            "   median {} ({} per step), {:.2} AWS requests per step",
            secs(m),
            ms(m / self.steps as u32),
            self.requests_per_step()
        );
    }
}

/// One broker-alone measurement.
struct BrokerFigures {
    concurrency: usize,
    tasks: usize,
    wall: Duration,
    requests: Requests,
}

fn total(requests: &Requests) -> u64 {
    requests.values().sum()
}

fn median(walls: &[Duration]) -> Duration {
    let mut sorted = walls.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
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

fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// `bench-run`.
pub async fn bench_run(root: &Path, args: &BenchRunArgs) -> Result<u8> {
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
    let config_path = work.join("stepq.toml");
    let config_text = format!(
        "[sqs]\nqueue_url = \"{task_queue}\"\nendpoint_url = \"{endpoint}\"\n\
         region_name = \"{REGION}\"\n\n[s3]\nbucket = \"{BUCKET}\"\nbase_path = \"bench-{id}\"\n\
         endpoint_url = \"{endpoint}\"\n\n[worker]\nconcurrency = {concurrency}\n",
        endpoint = args.endpoint,
        concurrency = args.bench.worker_concurrency,
    );
    std::fs::write(&config_path, &config_text)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let config = StepqConfig::from_toml_str(&config_text, &config_path)?;

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
        let out = std::fs::File::create(&log_path)?;
        let started = Instant::now();
        let mut child = tokio::process::Command::new(bin)
            .arg("--config")
            .arg(config_path)
            .args(["run", job.name(), "--workers", "0"])
            .envs(aws_env())
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
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

/// One worker (a receiver with `concurrency`) drains `tasks` no-op tasks while they are sent
/// in batches of a hundred (ten SendMessageBatch calls each); results stay in memory.
async fn broker_alone(
    sdk: &aws_config::SdkConfig,
    sqs: &aws_sdk_sqs::Client,
    endpoint: &str,
    log: &Path,
    tasks: usize,
    concurrency: usize,
) -> Result<BrokerFigures> {
    let url = create_queue(sqs, &format!("stepq-bench-broker-{}", short_id())).await?;
    let mut config = SqsConfig::new(&url);
    config.endpoint_url = Some(endpoint.to_string());
    config.region_name = Some(REGION.to_string());
    let results = Arc::new(InMemoryResultBackend::new());
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
    let wait = futures::future::join_all(
        ids.iter()
            .map(|id| results.wait_result(id, Some(RUN_TIMEOUT))),
    );
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

/// The two workers of the step scenarios.
enum Workers {
    /// `stepq worker start` processes, with their log files.
    Processes(Vec<(tokio::process::Child, PathBuf)>),
    /// In-process workers, each on its own app (own AWS clients).
    InProcess {
        stop: CancellationToken,
        tasks: Vec<tokio::task::JoinHandle<Result<()>>>,
        apps: Vec<App>,
    },
}

impl Workers {
    async fn start(
        stepq_bin: Option<&Path>,
        config_path: &Path,
        config: &StepqConfig,
        work: &Path,
    ) -> Result<Self> {
        match stepq_bin {
            Some(bin) => {
                let mut children = Vec::new();
                for i in 0..WORKERS {
                    let log_path = work.join(format!("worker-{i}.log"));
                    let log = std::fs::File::create(&log_path)?;
                    let child = tokio::process::Command::new(bin)
                        .arg("--config")
                        .arg(config_path)
                        .args(["worker", "start", "--name", &format!("bench-w{i}")])
                        .envs(aws_env())
                        .env("RUST_LOG", "warn")
                        .stdin(std::process::Stdio::null())
                        .stdout(log.try_clone()?)
                        .stderr(log)
                        // In the measuring process's group: an interrupt stops them too.
                        .kill_on_drop(true)
                        .spawn()
                        .with_context(|| format!("starting {}", bin.display()))?;
                    children.push((child, log_path));
                }
                Ok(Workers::Processes(children))
            }
            None => {
                let stop = CancellationToken::new();
                let location = Arc::new(stepq_cli::demo::location());
                let mut tasks = Vec::new();
                let mut apps = Vec::new();
                for i in 0..WORKERS {
                    let app = make_app(config).await?;
                    app.startup().await?;
                    let worker = app.worker_service(
                        location.clone(),
                        app.worker_config(format!("bench-w{i}")),
                        false,
                    )?;
                    let stop = stop.clone();
                    tasks.push(tokio::spawn(async move {
                        worker.run(stop).await?;
                        Ok(())
                    }));
                    apps.push(app);
                }
                Ok(Workers::InProcess { stop, tasks, apps })
            }
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            Workers::Processes(_) => "two `stepq worker start --config` processes (release build)",
            Workers::InProcess { .. } => {
                "two in-process `stepq::WorkerService`s, each with its own AWS clients"
            }
        }
    }

    /// The end of each worker process's log, for error reports.
    fn log_tails(&self) -> String {
        let Workers::Processes(children) = self else {
            return "in-process workers".into();
        };
        let mut text = String::from("worker logs:");
        for (_, path) in children {
            let log = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            text.push_str(&format!(
                "\n--- {}\n{}",
                path.display(),
                lines[lines.len().saturating_sub(20)..].join("\n")
            ));
        }
        text
    }

    /// Stops the workers (SIGTERM, then SIGKILL after 40 s).
    async fn stop(&mut self) {
        match self {
            Workers::Processes(children) => {
                for (child, _) in children.iter() {
                    if let Some(pid) = child.id() {
                        let _ = std::process::Command::new("kill")
                            .args(["-TERM", &pid.to_string()])
                            .status();
                    }
                }
                for (child, path) in children.iter_mut() {
                    match tokio::time::timeout(Duration::from_secs(40), child.wait()).await {
                        Ok(Ok(status)) if status.success() => {}
                        Ok(Ok(status)) => {
                            eprintln!("warning: a worker exited {status}; see {}", path.display())
                        }
                        _ => {
                            eprintln!("warning: a worker did not stop; killing it");
                            let _ = child.kill().await;
                        }
                    }
                }
            }
            Workers::InProcess { stop, tasks, apps } => {
                stop.cancel();
                for task in tasks.drain(..) {
                    match task.await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => eprintln!("warning: a worker failed: {e:#}"),
                        Err(e) => eprintln!("warning: a worker task failed: {e}"),
                    }
                }
                for app in apps.iter() {
                    shutdown_app(app).await;
                }
            }
        }
    }
}

/// CPU model, cores and memory of this machine.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU".to_string(), |(_, m)| m.trim().to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or("?".to_string(), |kb| format!("{:.0}", kb / 1024.0 / 1024.0));
    format!("{model}, {cores} cores available, {mem_gib} GiB RAM")
}

/// The report, as a Markdown section.
fn render(
    args: &BenchRunArgs,
    steps: &[StepFigures],
    broker: &[BrokerFigures],
    workers: &str,
) -> String {
    let mut out = String::new();
    let push = |out: &mut String, line: String| {
        out.push_str(&line);
        out.push('\n');
    };
    push(&mut out, format!("Machine: {}; LocalStack {} (native). Workers: {workers}, concurrency {} each. Orchestrators in the measuring process (release build), an `Executor` started directly (no run store): `{ORCHESTRATOR_BEFORE}` stores results in S3 before announcing them on the reply queue, sends one step per task and hands no input inline; `{ORCHESTRATOR_REPLY_ONLY}` adds `ReplyToMiddleware::with_reply_only`; `{ORCHESTRATOR_INLINE}` adds inline inputs; `{ORCHESTRATOR_APP}` is the executor `stepq::make_app` builds from the workers' config (adds fused chains). `{ORCHESTRATOR_CLI}` (with worker processes only) is `stepq run JOB --workers 0` run as a process per run: the same executor, plus the run store's records and event log, the cancel watch, the reply queue's creation and deletion, and the process start. Each job: one warm-up run, then {} measured runs.", machine(), localstack::LOCALSTACK_VERSION, args.bench.worker_concurrency, args.bench.reps));
    push(&mut out, String::new());
    push(&mut out, "| orchestrator | job | steps | wall per run (median) | min – max | wall per step (median) | AWS requests per step |".into());
    push(&mut out, "|---|---|---:|---:|---:|---:|---:|".into());
    for f in steps {
        let m = median(&f.walls);
        let min = f.walls.iter().min().copied().unwrap_or_default();
        let max = f.walls.iter().max().copied().unwrap_or_default();
        push(
            &mut out,
            format!(
                "| {} | `{}` | {} | {} | {} – {} | {} | {:.2} |",
                f.orchestrator,
                f.job,
                f.steps,
                secs(m),
                secs(min),
                secs(max),
                ms(m / f.steps as u32),
                f.requests_per_step()
            ),
        );
    }
    push(&mut out, String::new());
    push(&mut out, "AWS requests per step, by operation (all processes: orchestrator, workers, and the workers' heartbeats):".into());
    push(&mut out, String::new());
    let mut header = "| operation |".to_string();
    let mut rule = "|---|".to_string();
    for f in steps {
        header.push_str(&format!(" `{}`, {} |", f.job, f.orchestrator));
        rule.push_str("---:|");
    }
    push(&mut out, header);
    push(&mut out, rule);
    let mut operations: Vec<&String> = steps.iter().flat_map(|f| f.requests.keys()).collect();
    operations.sort();
    operations.dedup();
    for op in operations {
        let mut line = format!("| {op} |");
        for f in steps {
            let n = f.requests.get(op).copied().unwrap_or(0);
            line.push_str(&format!(
                " {:.2} |",
                n as f64 / (f.steps * f.walls.len()) as f64
            ));
        }
        push(&mut out, line);
    }
    push(&mut out, String::new());
    push(&mut out, format!("Broker alone (`SqsBroker` + one `Receiver`, results in memory): {} no-op tasks sent in `kick_batch` calls of 100 while the worker drains them.", args.bench.broker_tasks));
    push(&mut out, String::new());
    push(
        &mut out,
        "| worker concurrency | wall | tasks/s | AWS requests per task | by operation |".into(),
    );
    push(&mut out, "|---:|---:|---:|---:|---|".into());
    for b in broker {
        let per_op: Vec<String> = b
            .requests
            .iter()
            .map(|(op, n)| format!("{op} {:.2}", *n as f64 / b.tasks as f64))
            .collect();
        push(
            &mut out,
            format!(
                "| {} | {} | {:.0} | {:.2} | {} |",
                b.concurrency,
                secs(b.wall),
                b.tasks as f64 / b.wall.as_secs_f64(),
                total(&b.requests) as f64 / b.tasks as f64,
                per_op.join(", ")
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_takes_the_middle_run() {
        let d = Duration::from_millis;
        assert_eq!(median(&[d(30), d(10), d(20)]), d(20));
        assert_eq!(median(&[d(40), d(10), d(30), d(20)]), d(30));
        assert_eq!(median(&[d(5)]), d(5));
    }

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

    #[test]
    fn the_report_has_a_row_per_scenario_and_per_operation() {
        let args = BenchRunArgs {
            bench: BenchArgs {
                localstack: true,
                reps: 2,
                worker_concurrency: 8,
                broker_tasks: 100,
                in_process_workers: false,
                keep: false,
            },
            endpoint: "http://127.0.0.1:4566".into(),
            stepq_bin: None,
        };
        let steps = [StepFigures {
            orchestrator: ORCHESTRATOR_APP,
            job: "chain_10".into(),
            steps: 10,
            walls: vec![Duration::from_millis(200), Duration::from_millis(180)],
            requests: Requests::from([("sqs.SendMessage".into(), 40), ("s3.PutObject".into(), 20)]),
        }];
        let broker = [BrokerFigures {
            concurrency: 10,
            tasks: 100,
            wall: Duration::from_millis(100),
            requests: Requests::from([("sqs.DeleteMessageBatch".into(), 10)]),
        }];
        let report = render(&args, &steps, &broker, "two test workers");
        assert!(
            report.contains("| make_app default (+ fused chains) | `chain_10` | 10 | 0.200 s | 0.180 s – 0.200 s | 20.0 ms | 3.00 |"),
            "{report}"
        );
        assert!(report.contains("| sqs.SendMessage | 2.00 |"), "{report}");
        assert!(report.contains("| s3.PutObject | 1.00 |"), "{report}");
        assert!(
            report.contains("| 10 | 0.100 s | 1000 | 0.10 | sqs.DeleteMessageBatch 0.10 |"),
            "{report}"
        );
        assert!(report.contains("two test workers"));
    }
}
