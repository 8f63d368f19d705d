//! The SQLite store's own write throughput: committed step results per second with 1, 8 and
//! 64 concurrent writers (each writer stores results one after another, as a worker slot
//! does; results are written behind, so each iteration ends with a flush that waits for
//! their commit, inside the timing).
//!
//! `cargo bench -p stepq-sqlite --bench throughput` (criterion prints results/s as
//! throughput; the summary line adds results per commit, which shows the group commit).
//! The database is in a temporary directory under `target/stepq-bench` (or
//! `$STEPQ_BENCH_DIR`), on the filesystem a project's `.stepq/` would be.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use stepq_results::{ResultBackend, TaskResult};
use stepq_sqlite::SqliteStore;

/// Results stored per iteration, split over the writers.
const RESULTS_PER_ITERATION: usize = 1_024;

fn state_parent() -> PathBuf {
    if let Some(dir) = std::env::var_os("STEPQ_BENCH_DIR") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("stepq-bench")
}

fn throughput(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let parent = state_parent();
    std::fs::create_dir_all(&parent).expect("the benchmark directory");
    let dir = tempfile::Builder::new()
        .prefix("stepq-sqlite-")
        .tempdir_in(&parent)
        .expect("a temporary directory");
    let store = SqliteStore::open(dir.path()).expect("open the database");
    let results = Arc::new(store.results());
    let result = TaskResult::ok(serde_json::json!({"value": 42}), 0.001);
    let mut group = c.benchmark_group("sqlite_results");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    let mut summaries = Vec::new();
    let mut next = 0u64;
    for writers in [1usize, 8, 64] {
        group.throughput(Throughput::Elements(RESULTS_PER_ITERATION as u64));
        let before = store.write_stats();
        group.bench_with_input(
            BenchmarkId::new("writers", writers),
            &writers,
            |b, &writers| {
                b.to_async(&rt).iter_custom(|iters| {
                    let (results, result) = (results.clone(), result.clone());
                    let base = next;
                    next += iters * RESULTS_PER_ITERATION as u64;
                    async move {
                        let per_writer = RESULTS_PER_ITERATION / writers;
                        let started = Instant::now();
                        for iter in 0..iters {
                            let tasks: Vec<_> = (0..writers)
                                .map(|w| {
                                    let (results, result) = (results.clone(), result.clone());
                                    let first = base
                                        + iter * RESULTS_PER_ITERATION as u64
                                        + (w * per_writer) as u64;
                                    tokio::spawn(async move {
                                        for i in 0..per_writer as u64 {
                                            results
                                                .set_result(&format!("task-{}", first + i), &result)
                                                .await
                                                .expect("store a result");
                                        }
                                    })
                                })
                                .collect();
                            for task in tasks {
                                task.await.expect("writer task");
                            }
                        }
                        started.elapsed()
                    }
                });
            },
        );
        let after = store.write_stats();
        let writes = after.writes - before.writes;
        let batches = (after.batches - before.batches).max(1);
        summaries.push(format!(
            "summary sqlite_results/writers/{writers}: {writes} results in {batches} commits \
             ({:.1} results per commit)",
            writes as f64 / batches as f64
        ));
    }
    group.finish();
    summaries.push(format!(
        "summary sqlite_results: database {} bytes for {next} results",
        store.file_size()
    ));
    for line in summaries {
        println!("{line}");
    }
}

criterion_group!(benches, throughput);
criterion_main!(benches);
