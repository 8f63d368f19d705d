//! What the embedded-default benchmarks share: the benchmark jobs (a fan-out and a chain of
//! no-op steps), their code location, and a stack to run them on: an in-memory broker with
//! in-memory or local-directory backends, and either real [`Worker`]s or a stand-in receiver
//! that answers every step at once (to isolate the orchestration cost).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stepq_broker::{InMemoryBroker, Receiver, ReceiverConfig, TaskContext, TaskQueue};
use stepq_executor::{protocol, Executor, ExecutorConfig, RunRequest, RunResult, RunStatus};
use stepq_plan::events::now_us;
use stepq_plan::{Event, EventKind, Job, StepDef, StepReport, StepStatus};
use stepq_results::{
    InMemoryOutputStore, InMemoryResultBackend, LocalDirOutputStore, LocalDirResultBackend,
    OutputStore, ResultBackend, TaskError,
};
use stepq_runs::{LocalDirRunStore, RunRecord, RunStore};
use stepq_worker::{op_map, op_output, CodeLocation, Worker, WorkerConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Op of the first step: emits `()` as output `result`.
pub(crate) const ROOT_OP: &str = "noop_root";
/// Op of every other step: reads input `in` (a `()`), emits `()` as output `result`.
pub(crate) const NOOP_OP: &str = "noop";
/// Events the recorder writes to the run store in one batch at most (as `stepq run` does).
const MAX_EVENTS_PER_BATCH: usize = 1000;

/// The job's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// One root and `n - 1` steps that each read the root's output.
    FanOut,
    /// `n` steps in a line, each reading the output of the one before.
    Chain,
}

impl Shape {
    /// `fan_out` / `chain`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Shape::FanOut => "fan_out",
            Shape::Chain => "chain",
        }
    }
}

/// A job of `steps` no-op steps (the root included) in the given shape.
pub(crate) fn job(shape: Shape, steps: usize) -> Job {
    assert!(steps >= 1, "a job has at least one step");
    let mut builder =
        Job::builder(format!("{}_{steps}", shape.name())).step(root_step().output("result"));
    for i in 1..steps {
        let upstream = match shape {
            Shape::FanOut => "s0".to_string(),
            Shape::Chain => format!("s{}", i - 1),
        };
        builder = builder.step(
            StepDef::new(format!("s{i}"), NOOP_OP)
                .input("in", upstream, "result")
                .output("result"),
        );
    }
    builder.build().expect("a valid benchmark job")
}

fn root_step() -> StepDef {
    StepDef::new("s0", ROOT_OP)
}

/// The two no-op ops and the given jobs.
pub(crate) fn location(jobs: &[Arc<Job>]) -> Arc<CodeLocation> {
    location_with_logs(jobs, 0)
}

/// Like [`location`], with ops that each log `logs` lines (one `EngineEvent` each, carried in
/// the step report and forwarded by the executor): more events per step, same work.
pub(crate) fn location_with_logs(jobs: &[Arc<Job>], logs: usize) -> Arc<CodeLocation> {
    let log = move |ctx: &stepq_worker::OpContext| {
        for i in 0..logs {
            ctx.info(format!("log line {i} of this step"));
        }
    };
    let mut builder = CodeLocation::builder()
        .op(
            ROOT_OP,
            op_output("result", move |ctx, _in| async move {
                log(&ctx);
                Ok(())
            }),
        )
        .op(
            NOOP_OP,
            op_map("in", "result", move |ctx, (): ()| async move {
                log(&ctx);
                Ok(())
            }),
        );
    for job in jobs {
        builder = builder.job(job.clone());
    }
    Arc::new(builder.build().expect("a valid benchmark code location"))
}

/// Where results, outputs and (for the local directory) the run's event log are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backends {
    /// In-memory result backend and output store; events are read and dropped.
    Memory,
    /// The file-per-record stores (`state_store = "files"`): local-directory result
    /// backend, output store and run store (every event appended to the run's log), in a
    /// temporary directory.
    LocalDir,
    /// The embedded default: one SQLite database (`stepq-sqlite`) holding results, outputs
    /// and the run store (every event appended to the run's log), in a temporary directory.
    Sqlite,
}

impl Backends {
    /// `memory` / `local_dir`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Backends::Memory => "memory",
            Backends::LocalDir => "local_dir",
            Backends::Sqlite => "sqlite",
        }
    }
}

/// Who answers the `execute_plan` tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Workers {
    /// Real [`Worker`]s running the no-op ops: `count` workers of concurrency 1 each, as
    /// `stepq run` starts them.
    Real {
        /// Workers.
        count: usize,
    },
    /// Stand-in receivers (`count`, concurrency 1 each) whose handler reports success at once,
    /// with the events a real worker sends, touching no output store: what is left is the
    /// orchestration (executor, broker, result backend, receiver loop).
    Instant {
        /// Receivers.
        count: usize,
    },
}

/// Result backend, output store, run store (when events are recorded) and the temporary
/// directory holding them.
type BenchStores = (
    Arc<dyn ResultBackend>,
    Arc<dyn OutputStore>,
    Option<Arc<dyn RunStore>>,
    Option<tempfile::TempDir>,
);

/// The broker, backends, executor and workers of one benchmark.
pub(crate) struct Stack {
    /// The executor runs are started on.
    pub executor: Executor,
    outputs: Arc<dyn OutputStore>,
    runs: Option<Arc<dyn RunStore>>,
    dir: Option<tempfile::TempDir>,
    /// The database of [`Backends::Sqlite`].
    pub sqlite: Option<stepq_sqlite::SqliteStore>,
    stop: CancellationToken,
    workers: Vec<JoinHandle<()>>,
}

/// The directory temporary state goes in: `STEPQ_BENCH_DIR`, else the target directory (on
/// the same filesystem a project's `.stepq/` would be; `/tmp` may be a RAM disk elsewhere).
pub(crate) fn state_parent() -> PathBuf {
    if let Some(dir) = std::env::var_os("STEPQ_BENCH_DIR") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("stepq-bench")
}

impl Stack {
    /// Starts the workers (on the current tokio runtime) and builds the executor, on an
    /// in-memory broker with the default (30 s) visibility timeout.
    pub(crate) async fn start(
        backends: Backends,
        workers: Workers,
        location: Arc<CodeLocation>,
        config: ExecutorConfig,
    ) -> Stack {
        Self::start_on(InMemoryBroker::new(), backends, workers, location, config).await
    }

    /// Like [`Stack::start`], on `broker`.
    pub(crate) async fn start_on(
        broker: InMemoryBroker,
        backends: Backends,
        workers: Workers,
        location: Arc<CodeLocation>,
        config: ExecutorConfig,
    ) -> Stack {
        let temp_dir = || {
            let parent = state_parent();
            std::fs::create_dir_all(&parent).expect("create the benchmark state directory");
            tempfile::Builder::new()
                .prefix("stepq-")
                .tempdir_in(&parent)
                .expect("a temporary state directory")
        };
        let mut sqlite = None;
        let (results, outputs, runs, dir): BenchStores = match backends {
            Backends::Memory => (
                Arc::new(InMemoryResultBackend::new()),
                Arc::new(InMemoryOutputStore::new()),
                None,
                None,
            ),
            Backends::LocalDir => {
                let dir = temp_dir();
                let root = dir.path().to_path_buf();
                (
                    Arc::new(LocalDirResultBackend::new(&root)),
                    Arc::new(LocalDirOutputStore::new(&root)),
                    Some(Arc::new(LocalDirRunStore::new(&root))),
                    Some(dir),
                )
            }
            Backends::Sqlite => {
                let dir = temp_dir();
                let db = stepq_sqlite::SqliteStore::open(dir.path()).expect("open the database");
                sqlite = Some(db.clone());
                (
                    Arc::new(db.results()),
                    Arc::new(db.outputs()),
                    Some(Arc::new(db.runs())),
                    Some(dir),
                )
            }
        };
        let queue = TaskQueue::new(Arc::new(broker), results);
        queue.startup().await.expect("queue startup");
        let stop = CancellationToken::new();
        let mut handles = Vec::new();
        match workers {
            Workers::Real { count } => {
                for i in 0..count {
                    let config = WorkerConfig::named(format!("bench-{i}")).with_concurrency(1);
                    let worker =
                        Worker::new(location.clone(), queue.clone(), outputs.clone(), config)
                            .expect("a valid worker");
                    let stop = stop.clone();
                    handles.push(tokio::spawn(async move {
                        worker.run(stop).await.expect("worker ran");
                    }));
                }
            }
            Workers::Instant { count } => {
                for i in 0..count {
                    let receiver = instant_receiver(queue.clone(), format!("instant-{i}"));
                    let stop = stop.clone();
                    handles.push(tokio::spawn(async move {
                        receiver.run(stop).await.expect("receiver ran");
                    }));
                }
            }
        }
        let executor = Executor::new(queue, outputs.clone(), config).expect("a valid executor");
        Stack {
            executor,
            outputs,
            runs,
            dir,
            sqlite,
            stop,
            workers: handles,
        }
    }

    /// Runs `job` under `run_id` to the end (reading every event, and appending it to the run
    /// store on the local directory) and returns its result and the number of events.
    ///
    /// # Panics
    ///
    /// If the run does not succeed.
    pub(crate) async fn run(&self, job: &Arc<Job>, run_id: &str) -> (RunResult, u64) {
        if let Some(runs) = &self.runs {
            runs.create_run(&RunRecord::new(run_id, job.name(), serde_json::Value::Null))
                .await
                .expect("create the run record");
        }
        let mut handle = self
            .executor
            .start(RunRequest::new(run_id, job.clone()))
            .expect("the run starts");
        let mut events = handle.events().expect("the event stream");
        let runs = self.runs.clone();
        let run = run_id.to_string();
        let recorder = tokio::spawn(async move {
            let mut count = 0u64;
            let mut batch = Vec::new();
            while let Some(event) = events.recv().await {
                batch.push(event);
                while batch.len() < MAX_EVENTS_PER_BATCH {
                    match futures::FutureExt::now_or_never(events.recv()) {
                        Some(Some(event)) => batch.push(event),
                        _ => break,
                    }
                }
                count += batch.len() as u64;
                if let Some(runs) = &runs {
                    runs.append_events(&run, &batch)
                        .await
                        .expect("append events to the run store");
                }
                batch.clear();
            }
            count
        });
        let result = handle.wait().await;
        let events = recorder.await.expect("the event recorder");
        assert_eq!(
            result.status,
            RunStatus::Success,
            "benchmark run {run_id} failed: {:?}",
            result.errors
        );
        (result, events)
    }

    /// Removes what a run left behind (its outputs, its run-store directory), so every
    /// iteration starts from the same state.
    pub(crate) async fn clean(&self, run_id: &str) {
        self.outputs
            .delete_run(run_id)
            .await
            .expect("delete the run's outputs");
        if let Some(dir) = &self.dir {
            let run_dir = dir.path().join("runs").join(run_id);
            match tokio::fs::remove_dir_all(&run_dir).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("remove {}: {e}", run_dir.display()),
            }
        }
    }

    /// Stops the workers and waits for them.
    pub(crate) async fn shutdown(self) {
        self.stop.cancel();
        for handle in self.workers {
            handle.await.expect("worker task");
        }
        self.executor
            .queue()
            .shutdown()
            .await
            .expect("queue shutdown");
    }
}

/// A receiver whose `execute_plan` handler reports every step a success at once, with the
/// events a real worker sends (start, one input loaded per input, output handled, success).
fn instant_receiver(queue: TaskQueue, name: String) -> Receiver {
    let mut receiver = Receiver::new(queue).with_config(ReceiverConfig {
        concurrency: 1,
        worker_name: name.clone(),
        ..ReceiverConfig::default()
    });
    let name: Arc<str> = name.into();
    receiver.register(
        protocol::EXECUTE_PLAN,
        Arc::new(move |ctx: TaskContext| {
            let name = name.clone();
            Box::pin(async move {
                let args = protocol::read_step_args(&ctx.message).map_err(|e| TaskError {
                    kind: "InvalidStepArgs".into(),
                    message: e.to_string(),
                })?;
                let reports: Vec<StepReport> = args
                    .step_keys
                    .iter()
                    .map(|key| {
                        let event = |kind| Event {
                            timestamp_us: now_us(),
                            run_id: args.run_id.clone(),
                            step_key: Some(key.clone()),
                            kind,
                        };
                        let mut events = vec![event(EventKind::StepStart {
                            attempt: args.attempt,
                            worker: name.to_string(),
                        })];
                        if key != "s0" {
                            events.push(event(EventKind::StepInputLoaded {
                                input: "in".into(),
                                bytes: 1,
                            }));
                        }
                        events.push(event(EventKind::StepOutputHandled {
                            output: "result".into(),
                            bytes: 1,
                        }));
                        events.push(event(EventKind::StepSuccess {
                            duration: Duration::ZERO,
                        }));
                        StepReport {
                            step_key: key.clone(),
                            attempt: args.attempt,
                            worker: name.to_string(),
                            status: StepStatus::Success {
                                emitted: vec!["result".into()],
                            },
                            events,
                            inline_outputs: Vec::new(),
                        }
                    })
                    .collect();
                protocol::reports_value(&reports).map_err(|e| TaskError {
                    kind: "ReportEncodeError".into(),
                    message: e.to_string(),
                })
            })
        }),
    );
    receiver
}

/// A run id unique within this process.
pub(crate) fn run_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Wall and process CPU time of some runs.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RunTimes {
    /// Runs.
    pub runs: u64,
    /// Wall time of the runs.
    pub wall: Duration,
    /// CPU time the process used during the runs (all threads), when known.
    pub cpu: Option<Duration>,
}

impl RunTimes {
    /// Adds `other`'s runs.
    pub(crate) fn add(&mut self, other: RunTimes) {
        self.cpu = match (self.runs, self.cpu, other.cpu) {
            (0, _, cpu) => cpu,
            (_, Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
        self.runs += other.runs;
        self.wall += other.wall;
    }
}

/// Runs `job` `iters` times on `stack`; times the runs only (cleaning up after each run is
/// not timed).
pub(crate) async fn timed_runs(stack: &Stack, job: &Arc<Job>, iters: u64) -> RunTimes {
    let mut times = RunTimes::default();
    for _ in 0..iters {
        let id = run_id(job.name());
        let cpu_before = process_cpu();
        let started = Instant::now();
        let (result, _events) = stack.run(job, &id).await;
        let wall = started.elapsed();
        let cpu = cpu_before
            .zip(process_cpu())
            .map(|(a, b)| b.saturating_sub(a));
        times.add(RunTimes { runs: 1, wall, cpu });
        drop(result);
        stack.clean(&id).await;
    }
    times
}

/// CPU time this process used so far (user + system, every thread, exited ones included),
/// from `/proc/self/stat`, in Linux's 10 ms clock ticks (USER_HZ); `None` where there is no
/// such file.
pub(crate) fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // After the parenthesised command name come fields 3 (state) ...; utime and stime are
    // fields 14 and 15.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}
