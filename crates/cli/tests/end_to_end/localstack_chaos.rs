//! Chaos on LocalStack (issue #17 item 5): three `stepq worker start` processes at the
//! default SQS settings, a 60-step run, and every 5 s a random worker that runs a step is
//! SIGKILLed and restarted under a fresh name. The run must end SUCCESS with every step's
//! result recorded exactly once, no killed command may outlive its worker, and a killed
//! step must run again within a bound; the re-run delays are printed (`--nocapture`).
//! `cargo xtask bench --localstack --faults` measures the same at length
//! (docs/benchmarks.md); this is its bounded check in `cargo xtask localstack-test`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::cli::{recorded_successes, stepq_configured, text, KilledOnDrop};
use crate::common::localstack::*;
use crate::common::marks::{mark_command, read_marks, Mark, MARKS_ENV, WORKER_ENV};

const STEPS: usize = 60;
const KILL_EVERY: Duration = Duration::from_secs(5);
/// A killed step's next start, at most: two visibility timeouts (6 s by default) and
/// LocalStack's 1 s re-queue ticks, with room for a slow machine.
const RERUN_BOUND: f64 = 20.0;
/// The whole run, at most (about 16 s without kills, 25-30 s with them).
const RUN_BOUND: Duration = Duration::from_secs(240);

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// 60 independent steps of 1.0-2.0 s, each writing a `start` and an `end` mark.
fn write_jobs(dir: &Path) {
    let mut jobs = String::from("[jobs.chaos_60]\n\n");
    for i in 0..STEPS {
        let seconds = 1.0 + (i % 11) as f64 / 10.0;
        jobs.push_str(&format!(
            "[[jobs.chaos_60.steps]]\nkey = \"s{i:02}\"\nargv = [\"sh\", \"-c\", \"{}; sleep {seconds:.1}; {}\"]\n\n",
            mark_command("start"),
            mark_command("end")
        ));
    }
    std::fs::write(dir.join("jobs.toml"), jobs).unwrap();
}

/// One worker process, SIGKILLed on drop.
struct Worker {
    name: String,
    process: KilledOnDrop,
}

fn start_worker(dir: &Path, marks: &Path, name: String) -> Worker {
    let child = stepq_configured(dir)
        .args([
            "--jobs-file",
            "jobs.toml",
            "worker",
            "start",
            "--name",
            &name,
        ])
        .env(WORKER_ENV, &name)
        .env(MARKS_ENV, marks)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a worker");
    Worker {
        name,
        process: KilledOnDrop(Some(child)),
    }
}

/// Steps whose command started on `worker` and has not ended (per the marks so far).
fn running_on(marks: &[Mark], worker: &str) -> Vec<String> {
    let mut open: BTreeMap<&str, i32> = BTreeMap::new();
    for m in marks.iter().filter(|m| m.worker == worker) {
        *open.entry(&m.step).or_default() += if m.start { 1 } else { -1 };
    }
    open.into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, _)| s.to_string())
        .collect()
}

#[tokio::test]
#[ignore = "localstack"]
async fn localstack_chaos_a_run_survives_a_worker_killed_every_five_seconds() {
    let ls = localstack();
    let queue = TestQueue::create(&ls, false).await;
    let dir = tempfile::tempdir().unwrap();
    write_default_config(dir.path(), &ls, &queue.url, &ls.endpoint, "chaos");
    write_jobs(dir.path());
    let marks_path: PathBuf = dir.path().join("marks");
    let mut started = 0;
    let mut fresh = |dir: &Path| {
        started += 1;
        start_worker(dir, &marks_path, format!("chaos-w{started}"))
    };
    let mut workers: Vec<Worker> = (0..3).map(|_| fresh(dir.path())).collect();
    // Give the workers a moment to start polling.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let run_id = format!("chaos-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut run = stepq_configured(dir.path())
        .args([
            "--jobs-file",
            "jobs.toml",
            "run",
            "chaos_60",
            "--run-id",
            &run_id,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("stepq starts");
    let began = Instant::now();
    // (time, worker, steps it was running)
    let mut kills: Vec<(f64, String, Vec<String>)> = Vec::new();
    let mut seed = began.elapsed().subsec_nanos() as usize;
    let status = loop {
        tokio::time::sleep(KILL_EVERY).await;
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        assert!(
            began.elapsed() < RUN_BOUND,
            "the run took over {RUN_BOUND:?}"
        );
        let seen = read_marks(&marks_path);
        let busy: Vec<usize> = (0..workers.len())
            .filter(|&i| !running_on(&seen, &workers[i].name).is_empty())
            .collect();
        if busy.is_empty() {
            continue;
        }
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let victim = busy[(seed >> 33) % busy.len()];
        let Worker { name, process } = workers.swap_remove(victim);
        let at = now();
        drop(process); // SIGKILL, reaped
        let hit = running_on(&read_marks(&marks_path), &name);
        kills.push((at, name, hit));
        workers.push(fresh(dir.path()));
    };
    let wall = began.elapsed();
    let out = run.wait_with_output().unwrap();
    assert!(status.success(), "{}", text(&out));
    assert!(!kills.is_empty(), "no worker was killed");

    // Every step's result is recorded exactly once.
    let successes = recorded_successes(dir.path(), &run_id);
    assert_eq!(successes.len(), STEPS, "{successes:?}");
    assert!(successes.values().all(|&n| n == 1), "{successes:?}");

    // Killed commands died with their worker, and ran again within the bound.
    let seen = read_marks(&marks_path);
    let mut delays = Vec::new();
    for (at, worker, hit) in &kills {
        for step in hit {
            let outlived = seen
                .iter()
                .any(|m| !m.start && &m.worker == worker && &m.step == step && m.at > *at);
            assert!(!outlived, "{step} ran on after {worker} was killed");
            let next = seen
                .iter()
                .find(|m| m.start && &m.step == step && m.at > *at)
                .unwrap_or_else(|| panic!("{step} never ran again after {worker} was killed"));
            delays.push(next.at - at);
        }
    }
    delays.sort_by(f64::total_cmp);
    println!(
        "chaos: {} kills, {} killed steps, re-run delay min/median/max {:.1}/{:.1}/{:.1} s, wall {:.1} s",
        kills.len(),
        delays.len(),
        delays.first().copied().unwrap_or(0.0),
        delays.get(delays.len() / 2).copied().unwrap_or(0.0),
        delays.last().copied().unwrap_or(0.0),
        wall.as_secs_f64()
    );
    assert!(
        delays.iter().all(|&d| d <= RERUN_BOUND),
        "re-run delays over {RERUN_BOUND} s: {delays:?}"
    );
    drop(workers);
    queue.delete().await;
}
