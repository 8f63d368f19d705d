//! Embedded-default benchmark: how long a run of no-op steps takes on the in-memory broker, per
//! step, and how much of that is orchestration.
//!
//! `cargo bench -p stepq-worker --bench embedded` (add `-- --quick` for a smoke run, or a
//! filter such as `-- orchestration`). Groups, each with a 10,000-step fan-out and a
//! 1,000-step chain (throughput is in steps, so criterion prints steps/s):
//!
//! - `orchestration`: executor + in-memory broker + in-memory result backend + receivers that
//!   answer each step at once: the orchestration cost per step, without any op or output I/O.
//! - `embedded_memory`: real workers running the no-op ops, in-memory results and outputs.
//! - `embedded_sqlite`: the embedded default as `stepq run` sets it up: real workers, and
//!   results, outputs and every event in one SQLite database (`stepq-sqlite`, in a temporary
//!   directory under `target/stepq-bench`, or `$STEPQ_BENCH_DIR`); the summary line adds the
//!   database's size per step.
//! - `embedded_local_dir`: the same on the file-per-record stores (`state_store = "files"`).
//!
//! Workers: as many as cores, one step at a time each (as `stepq run`). Every iteration is a
//! fresh run id; its outputs and event log are deleted afterwards, outside the timing. After
//! each group a `summary` line per benchmark gives the mean wall time and the process CPU
//! time (user + system, all threads, from `/proc/self/stat`) per step over all its runs: the
//! CPU figure holds up better than wall time on a machine busy with other work.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backends, RunTimes, Shape, Stack, Workers};
use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use stepq_executor::ExecutorConfig;

/// Steps of the fan-out (the root included).
const FAN_OUT_STEPS: usize = 10_000;
/// Steps of the chain.
const CHAIN_STEPS: usize = 1_000;

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn group(c: &mut Criterion, name: &str, backends: Backends, workers: Workers, time: Duration) {
    let rt = runtime();
    let jobs = [
        (
            Shape::FanOut,
            Arc::new(common::job(Shape::FanOut, FAN_OUT_STEPS)),
        ),
        (
            Shape::Chain,
            Arc::new(common::job(Shape::Chain, CHAIN_STEPS)),
        ),
    ];
    let location = common::location(&jobs.iter().map(|(_, j)| j.clone()).collect::<Vec<_>>());
    let stack = rt.block_on(Stack::start(
        backends,
        workers,
        location,
        ExecutorConfig::default(),
    ));
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(time);
    let mut summaries = Vec::new();
    let mut steps_run = 0u64;
    for (shape, job) in &jobs {
        let steps = job.steps().len();
        let totals = Mutex::new(RunTimes::default());
        group.throughput(Throughput::Elements(steps as u64));
        group.bench_with_input(BenchmarkId::new(shape.name(), steps), job, |b, job| {
            b.to_async(&rt).iter_custom(|iters| {
                let (stack, totals) = (&stack, &totals);
                async move {
                    let times = common::timed_runs(stack, job, iters).await;
                    totals.lock().expect("totals lock").add(times);
                    times.wall
                }
            });
        });
        let totals = totals.into_inner().expect("totals lock");
        steps_run += totals.runs * steps as u64;
        summaries.push(summary(
            &format!("{name}/{}/{steps}", shape.name()),
            steps,
            totals,
        ));
    }
    group.finish();
    if let Some(db) = &stack.sqlite {
        // Run records, event logs and results stay; outputs are deleted after each run.
        let bytes = db.file_size();
        summaries.push(format!(
            "summary {name}: database {bytes} bytes after {steps_run} steps: {:.0} bytes/step \
             (records, events, results; outputs deleted per run); {} writes in {} commits, \
             {} of them superseded (not run)",
            bytes as f64 / steps_run.max(1) as f64,
            db.write_stats().writes,
            db.write_stats().batches,
            db.write_stats().superseded,
        ));
    }
    rt.block_on(stack.shutdown());
    for line in summaries {
        println!("{line}");
    }
}

/// One line per benchmark: mean wall and process CPU time per step over every run it made
/// (warm-up included), next to criterion's estimates (which are per run).
fn summary(id: &str, steps: usize, t: RunTimes) -> String {
    if t.runs == 0 {
        return format!("{id}: no runs");
    }
    let per_step = |d: Duration| d.as_secs_f64() * 1e6 / (t.runs as f64 * steps as f64);
    let cpu = t
        .cpu
        .map_or("unknown".into(), |c| format!("{:.1} µs", per_step(c)));
    format!(
        "summary {id}: {} runs; per step: wall {:.1} µs (mean), process CPU {cpu} (all threads)",
        t.runs,
        per_step(t.wall)
    )
}

fn orchestration(c: &mut Criterion) {
    let workers = Workers::Instant { count: cores() };
    group(
        c,
        "orchestration",
        Backends::Memory,
        workers,
        Duration::from_secs(5),
    );
}

fn embedded_memory(c: &mut Criterion) {
    let workers = Workers::Real { count: cores() };
    group(
        c,
        "embedded_memory",
        Backends::Memory,
        workers,
        Duration::from_secs(5),
    );
}

fn embedded_local_dir(c: &mut Criterion) {
    let workers = Workers::Real { count: cores() };
    group(
        c,
        "embedded_local_dir",
        Backends::LocalDir,
        workers,
        Duration::from_secs(30),
    );
}

fn embedded_sqlite(c: &mut Criterion) {
    let workers = Workers::Real { count: cores() };
    group(
        c,
        "embedded_sqlite",
        Backends::Sqlite,
        workers,
        Duration::from_secs(10),
    );
}

criterion_group!(
    benches,
    orchestration,
    embedded_memory,
    embedded_sqlite,
    embedded_local_dir
);
criterion_main!(benches);
