//! An AWS outage mid-run (issue #17 item 4): two `stepq worker start` processes and `stepq
//! run` reach LocalStack through a proxy the test owns ([`OutageProxy`]); a few seconds into
//! the run the proxy goes down (every connection reset: a stopped endpoint) or hangs (no byte
//! moves: a frozen endpoint) for 10 s and comes back. The run must end SUCCESS with every
//! step's result recorded once, every worker still up, and each process must log the outage a
//! few times (once per period, not once per request).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::cli::{
    recorded_successes, run_configured, stepq_configured, text, KilledOnDrop,
};
use crate::common::localstack::*;
use crate::common::marks::{mark_command, read_marks, MARKS_ENV, WORKER_ENV};
use crate::common::outage::{Mode, OutageProxy};

/// Independent steps, plus a chain of [`CHAIN`] (a fused task).
const FAN: usize = 16;
const CHAIN: usize = 6;
const OUTAGE: Duration = Duration::from_secs(10);
/// The whole run, at most (about 10 s without the outage).
const RUN_BOUND: Duration = Duration::from_secs(180);
/// Warning and error lines one process may write about a 10 s outage: about one per kind of
/// request that met it (receiving tasks, cancels and notifications, storing outputs and
/// results, extending visibility, deleting messages, recording events), and one per running
/// task whose receipt went stale. Measured: 0-9.
const OUTAGE_LINES: usize = 12;
/// How often one warning may repeat in one process during the outage: once per period of its
/// failure log, plus once per running task for a heartbeat whose receipt went stale (the
/// workers run two tasks each).
const SAME_LINE: usize = 2;

/// `outage`: FAN steps of 0.5-1.2 s and a CHAIN-step chain of 0.5 s steps, each writing a
/// start mark.
fn write_jobs(dir: &Path) {
    let mark = mark_command("start");
    let mut jobs = String::from("[jobs.outage]\n\n");
    for i in 0..FAN {
        let seconds = 0.5 + (i % 8) as f64 / 10.0;
        jobs.push_str(&format!(
            "[[jobs.outage.steps]]\nkey = \"f{i:02}\"\nargv = [\"sh\", \"-c\", \"{mark}; sleep {seconds:.1}\"]\n\n"
        ));
    }
    for i in 0..CHAIN {
        jobs.push_str(&format!(
            "[[jobs.outage.steps]]\nkey = \"c{i}\"\nargv = [\"sh\", \"-c\", \"{mark}; sleep 0.5; echo {i}\"]\n"
        ));
        if i > 0 {
            jobs.push_str(&format!("inputs = {{ prev = \"c{}.stdout\" }}\n", i - 1));
        }
        jobs.push('\n');
    }
    std::fs::write(dir.join("jobs.toml"), jobs).unwrap();
}

/// A process whose stderr goes to a file; SIGKILLed on drop.
struct Logged {
    process: KilledOnDrop,
    log: std::path::PathBuf,
}

fn spawn_logged(dir: &Path, name: &str, args: &[&str]) -> Logged {
    let log = dir.join(format!("{name}.log"));
    let child = stepq_configured(dir)
        .args(["--log-format", "json", "--jobs-file", "jobs.toml"])
        .args(args)
        .env(MARKS_ENV, dir.join("marks"))
        .env(WORKER_ENV, name)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .expect("stepq starts");
    Logged {
        process: KilledOnDrop(Some(child)),
        log,
    }
}

/// The message of a JSON log line.
fn message(line: &str) -> String {
    serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v["fields"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| line.to_string())
}

/// The WARN and ERROR lines of a JSON log.
fn problems(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
        .map(str::to_string)
        .collect()
}

/// How many times each step's command started.
fn starts(dir: &Path) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for mark in read_marks(&dir.join("marks")) {
        *seen.entry(mark.step).or_default() += 1;
    }
    seen
}

async fn a_run_survives(mode: Mode) {
    let ls = localstack();
    let queue = TestQueue::create(&ls, false).await;
    let proxy = OutageProxy::start(&ls.endpoint);
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    proxy.write_config(dir, &ls, &queue, "outage");
    write_jobs(dir);
    let workers: Vec<Logged> = (1..=2)
        .map(|i| {
            let name = format!("outage-w{i}");
            spawn_logged(dir, &name, &["worker", "start", "--name", &name])
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let run_id = format!("outage-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut run = spawn_logged(dir, "run", &["run", "outage", "--run-id", &run_id]);
    let began = Instant::now();
    while starts(dir).len() < 3 {
        assert!(began.elapsed() < Duration::from_secs(60), "no step started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.set(mode);
    tokio::time::sleep(OUTAGE).await;
    proxy.set(Mode::Up);
    let came_back = Instant::now();
    let status = loop {
        if let Some(status) = run.process.child().try_wait().unwrap() {
            break status;
        }
        if began.elapsed() > RUN_BOUND {
            let status = run_configured(dir, &["--jobs-file", "jobs.toml", "status", &run_id]);
            let tail = |log: &Path| {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(15)..].join("\n")
            };
            panic!(
                "the run took over {RUN_BOUND:?}\n{}\nrun log:\n{}\nworker logs:\n{}\n{}",
                text(&status),
                tail(&run.log),
                tail(&workers[0].log),
                tail(&workers[1].log)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let after = came_back.elapsed();
    let log = std::fs::read_to_string(&run.log).unwrap_or_default();
    assert!(status.success(), "the run failed: {log}");

    let successes = recorded_successes(dir, &run_id);
    assert_eq!(successes.len(), FAN + CHAIN, "{successes:?}");
    assert!(successes.values().all(|&n| n == 1), "{successes:?}");
    let ran = starts(dir);
    let twice: Vec<_> = ran.iter().filter(|(_, n)| **n > 1).collect();

    let mut lines = vec![("run", problems(&run.log))];
    for (i, worker) in workers.into_iter().enumerate() {
        let mut worker = worker;
        assert!(
            worker.process.child().try_wait().unwrap().is_none(),
            "worker {} exited in the outage: {:?}",
            i + 1,
            problems(&worker.log)
        );
        lines.push(("worker", problems(&worker.log)));
    }
    println!(
        "outage ({mode:?}, {OUTAGE:?}): run ended {:.1} s after the endpoint came back, wall {:.1} s; \
         commands run more than once: {twice:?}; warning/error lines: {:?}",
        after.as_secs_f64(),
        began.elapsed().as_secs_f64(),
        lines.iter().map(|(who, l)| (*who, l.len())).collect::<Vec<_>>()
    );
    for (who, problems) in &lines {
        assert!(
            problems.len() <= OUTAGE_LINES,
            "the {who} logged {} warnings and errors for one outage:\n{}",
            problems.len(),
            problems.join("\n")
        );
        let mut repeats: BTreeMap<String, usize> = BTreeMap::new();
        for line in problems {
            *repeats.entry(message(line)).or_default() += 1;
        }
        assert!(
            repeats.values().all(|&n| n <= SAME_LINE),
            "the {who} logged one warning more than {SAME_LINE} times (per request, not per \
             period): {repeats:#?}"
        );
    }
    queue.delete().await;
}

#[tokio::test]
#[ignore = "localstack"]
async fn localstack_outage_a_run_survives_aws_down_for_ten_seconds() {
    a_run_survives(Mode::Down).await;
}

#[tokio::test]
#[ignore = "localstack"]
async fn localstack_outage_a_run_survives_aws_hung_for_ten_seconds() {
    a_run_survives(Mode::Hung).await;
}
