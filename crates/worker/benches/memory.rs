//! Memory of embedded-default runs, by run length: a counting global allocator reports the
//! peak of live heap bytes during a run and what is still live after it, for fan-outs and
//! chains of no-op steps, next to the size of the job and of its execution plan (state that is
//! O(steps) by nature). Per-event buffering would show as bytes per step growing with the run,
//! or as bytes left live after the run once its result is dropped.
//!
//! ```text
//! cargo bench -p stepq-worker --bench memory
//! cargo bench -p stepq-worker --bench memory -- --sizes 1000,10000 --backends memory \
//!     --shapes chain --workers instant --visibility-ms 1000
//! ```
//!
//! Options: `--sizes` (steps per job, default `1000,10000,50000` in memory and
//! `1000,10000` on the local directory), `--quick` (1,000 steps, one run), `--shapes`
//! (`fan_out,chain`), `--backends` (`memory,local_dir`), `--workers` (`real`: real workers
//! running the ops, or `instant`: receivers answering at once), `--visibility-ms` (the
//! in-memory broker's visibility timeout, default 30000; when it is under 5 s the harness also
//! waits it out and reports what is live then), `--runs` (runs per configuration, default 2:
//! a second run shows whether anything accumulates across runs), `--logs-per-step` (real ops
//! log this many lines each, one more event per line: default 0; if events were buffered, the
//! peak per step would grow with it).
//!
//! Each configuration runs on a fresh stack (broker, backends, cores workers of concurrency 1).
//! Columns, all in bytes live on the heap relative to the moment before the run started:
//! `job` (the job definition, built before), `plan` (an `ExecutionPlan` plus its progress
//! tracker, as the run loop keeps them), `peak` (highest during the run), `rslt` (after the
//! run, with its `RunResult` still held), `resid` (after the result is dropped and the run's
//! outputs deleted: should be ~0), and `settl` (residual after the visibility timeout passed,
//! with `--visibility-ms` under 5 s); per step (`/st`): peak and residual bytes, wall
//! time and process CPU time (user + system, all threads; 10 ms ticks) in µs. `--no-count`
//! turns the counting off (memory columns show `-`) to time or profile runs without it.

// The counting global allocator wraps `System`; GlobalAlloc is an unsafe trait.
#![allow(unsafe_code)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Backends, Shape, Stack, Workers};
use stepq_broker::InMemoryBroker;
use stepq_executor::ExecutorConfig;
use stepq_plan::{ExecutionPlan, KnownState};

/// The system allocator, counting live bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Off with `--no-count`: the harness then only times runs (e.g. under a profiler), without
/// the counters' shared cache lines.
static COUNTING: AtomicBool = AtomicBool::new(true);

fn grew(by: usize) {
    if COUNTING.load(Ordering::Relaxed) {
        let live = LIVE.fetch_add(by, Ordering::Relaxed) + by;
        PEAK.fetch_max(live, Ordering::Relaxed);
    }
}

fn shrank(by: usize) {
    if COUNTING.load(Ordering::Relaxed) {
        LIVE.fetch_sub(by, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to `System` unchanged; the counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                shrank(layout.size() - new_size);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Starts a new peak window at the current live bytes.
fn reset_peak() -> usize {
    let now = live();
    PEAK.store(now, Ordering::Relaxed);
    now
}

/// Live bytes once the process is quiet: the workers' and the recorder's tasks finish the
/// work they were woken for (acks, deletes) a moment after the run returns.
async fn settled_live() -> usize {
    tokio::time::sleep(Duration::from_millis(200)).await;
    live()
}

struct Options {
    /// Steps per job; `None`: 1,000 / 10,000 / 50,000 in memory, up to 10,000 on the local
    /// directory (a 50,000-step chain there takes minutes per run).
    sizes: Option<Vec<usize>>,
    shapes: Vec<Shape>,
    backends: Vec<Backends>,
    workers: String,
    visibility: Duration,
    runs: usize,
    logs: usize,
}

impl Options {
    fn sizes(&self, backends: Backends) -> Vec<usize> {
        match (&self.sizes, backends) {
            (Some(sizes), _) => sizes.clone(),
            (None, Backends::Memory) => vec![1_000, 10_000, 50_000],
            (None, Backends::LocalDir | Backends::Sqlite) => vec![1_000, 10_000],
        }
    }
}

fn list<T>(value: &str, parse: impl Fn(&str) -> Option<T>) -> Vec<T> {
    value
        .split(',')
        .map(|v| parse(v.trim()).unwrap_or_else(|| panic!("unknown value `{v}`")))
        .collect()
}

fn options() -> Options {
    let mut o = Options {
        sizes: None,
        shapes: vec![Shape::FanOut, Shape::Chain],
        backends: vec![Backends::Memory, Backends::Sqlite, Backends::LocalDir],
        workers: "real".into(),
        visibility: Duration::from_secs(30),
        runs: 2,
        logs: 0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = |args: &mut std::iter::Skip<std::env::Args>| {
            args.next()
                .unwrap_or_else(|| panic!("`{arg}` needs a value"))
        };
        match arg.as_str() {
            "--no-count" => COUNTING.store(false, Ordering::Relaxed),
            // A smoke run, e.g. from `cargo bench -p stepq-worker -- --quick`.
            "--quick" => {
                o.sizes = Some(vec![1_000]);
                o.runs = 1;
            }
            "--sizes" => {
                o.sizes = Some(list(&value(&mut args), |v| v.replace('_', "").parse().ok()))
            }
            "--shapes" => {
                o.shapes = list(&value(&mut args), |v| match v {
                    "fan_out" => Some(Shape::FanOut),
                    "chain" => Some(Shape::Chain),
                    _ => None,
                })
            }
            "--backends" => {
                o.backends = list(&value(&mut args), |v| match v {
                    "memory" => Some(Backends::Memory),
                    "local_dir" => Some(Backends::LocalDir),
                    "sqlite" => Some(Backends::Sqlite),
                    _ => None,
                })
            }
            "--workers" => {
                let workers = value(&mut args);
                assert!(
                    workers == "real" || workers == "instant",
                    "--workers is `real` or `instant`"
                );
                o.workers = workers;
            }
            "--visibility-ms" => {
                o.visibility =
                    Duration::from_millis(value(&mut args).parse().expect("a number of ms"))
            }
            "--runs" => o.runs = value(&mut args).parse().expect("a number of runs"),
            "--logs-per-step" => o.logs = value(&mut args).parse().expect("a number of log lines"),
            // `cargo bench` passes `--bench`.
            "--bench" => {}
            // Options or filters meant for the criterion benchmarks may come along when
            // several benchmarks run: not ours, ignored.
            other => eprintln!("memory: ignoring argument `{other}`"),
        }
    }
    o
}

fn kib(bytes: isize) -> String {
    if COUNTING.load(Ordering::Relaxed) {
        format!("{:.1}", bytes as f64 / 1024.0)
    } else {
        "-".into()
    }
}

fn per_step(bytes: isize, steps: usize) -> String {
    if COUNTING.load(Ordering::Relaxed) {
        (bytes / steps as isize).to_string()
    } else {
        "-".into()
    }
}

fn main() {
    let o = options();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = match o.workers.as_str() {
        "instant" => Workers::Instant { count: cores },
        _ => Workers::Real { count: cores },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!(
        "workers: {} x {cores} (concurrency 1 each); {} log event(s) per step from real ops; broker visibility {:?}; bytes live relative to before the run",
        o.workers, o.logs, o.visibility
    );
    println!(
        "{:<10} {:<8} {:>7} {:>3} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>8} {:>8}",
        "backends",
        "shape",
        "steps",
        "run",
        "events",
        "job KiB",
        "plan KiB",
        "peak KiB",
        "rslt KiB",
        "resid KiB",
        "settl KiB",
        "peak/st",
        "resid/st",
        "wall/st",
        "cpu/st"
    );
    for &backends in &o.backends {
        for &shape in &o.shapes {
            for steps in o.sizes(backends) {
                rt.block_on(measure(&o, backends, shape, steps, workers));
            }
        }
    }
}

async fn measure(o: &Options, backends: Backends, shape: Shape, steps: usize, workers: Workers) {
    let before_job = settled_live().await;
    let job = Arc::new(common::job(shape, steps));
    let job_bytes = live() as isize - before_job as isize;
    let location = common::location_with_logs(std::slice::from_ref(&job), o.logs);
    let stack = Stack::start_on(
        InMemoryBroker::with_visibility_timeout(o.visibility),
        backends,
        workers,
        location,
        ExecutorConfig::default(),
    )
    .await;

    let before_plan = settled_live().await;
    let plan = ExecutionPlan::new(job.clone(), None, &KnownState::default()).expect("a plan");
    let progress = plan.progress();
    let plan_bytes = live() as isize - before_plan as isize;
    drop((plan, progress));

    for run in 1..=o.runs {
        let before = settled_live().await;
        reset_peak();
        let id = common::run_id(job.name());
        let cpu_before = common::process_cpu();
        let started = Instant::now();
        let (result, events) = stack.run(&job, &id).await;
        let wall = started.elapsed();
        let cpu = match (cpu_before, common::process_cpu()) {
            (Some(a), Some(b)) => format!("{:.1}", (b - a).as_secs_f64() * 1e6 / steps as f64),
            _ => "-".into(),
        };
        let after_run = settled_live().await;
        let peak = PEAK.load(Ordering::Relaxed);
        drop(result);
        stack.clean(&id).await;
        let residual = settled_live().await as isize - before as isize;
        let settled = if o.visibility < Duration::from_secs(5) {
            tokio::time::sleep(o.visibility + Duration::from_millis(300)).await;
            kib(settled_live().await as isize - before as isize)
        } else {
            "-".to_string()
        };
        let peak = peak as isize - before as isize;
        println!(
            "{:<10} {:<8} {:>7} {:>3} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>8.1} {:>8}",
            backends.name(),
            shape.name(),
            steps,
            run,
            events,
            kib(job_bytes),
            kib(plan_bytes),
            kib(peak),
            kib(after_run as isize - before as isize),
            kib(residual),
            settled,
            per_step(peak, steps),
            per_step(residual, steps),
            wall.as_secs_f64() * 1e6 / steps as f64,
            cpu
        );
    }
    stack.shutdown().await;
}
