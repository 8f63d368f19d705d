//! Worker health for real, on LocalStack: a `stepq worker start` process heart-beats into S3,
//! `stepq worker list` shows it live and, once it is killed with SIGKILL, lost within three
//! health intervals; `stepq status` names the lost worker its step sits on, and the step's
//! message goes to another worker when its visibility timeout lapses.
//!
//! Ignored by plain `cargo test`; `cargo xtask localstack-test` runs them with
//! STEPQ_TEST_AWS_ENDPOINT, STEPQ_TEST_S3_BUCKET and AWS credentials set. The test uses its
//! own freshly created queue and S3 prefix.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::cli::{run_configured, stdout, stepq_configured, text};
use crate::common::localstack::{config_dir_with, localstack, TestQueue, VISIBILITY_SECONDS};

/// The workers' health interval in this test.
const INTERVAL: Duration = Duration::from_secs(1);
/// Generous bound on anything that should take seconds.
const PATIENCE: Duration = Duration::from_secs(90);

/// stdout of a command that must exit 0.
fn stdout_of(dir: &Path, args: &[&str]) -> String {
    let out = run_configured(dir, args);
    assert_eq!(out.status.code(), Some(0), "stepq {args:?}: {}", text(&out));
    stdout(&out)
}

/// A `stepq` child process (worker or orchestrator), its stderr in `<dir>/<name>.log`;
/// killed on drop.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn start(dir: &Path, name: &str, args: &[&str]) -> Self {
        let log = dir.join(format!("{name}.log"));
        let child = stepq_configured(dir)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("create the log file"))
            .spawn()
            .expect("start stepq");
        Process { child, log }
    }

    fn worker(dir: &Path, name: &str) -> Self {
        Process::start(
            dir,
            name,
            &[
                "worker",
                "start",
                "--name",
                name,
                "--concurrency",
                "1",
                "--log-format",
                "json",
            ],
        )
    }

    /// SIGKILL: no clean shutdown, the heartbeat record stays.
    fn sigkill(mut self) {
        self.child.kill().expect("SIGKILL the process");
        self.child.wait().unwrap();
    }

    /// SIGINT, then waits up to `limit` for the exit code; the process's log on failure.
    fn interrupt(mut self, limit: Duration) -> Result<Option<i32>, String> {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Ok(status.code());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(std::fs::read_to_string(&self.log).unwrap_or_default())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `stepq args` until its stdout satisfies `done` (bounded by [`PATIENCE`]); returns that
/// stdout. Other processes' writes to S3 cannot be awaited: this lists again every 200 ms.
fn wait_for_output(dir: &Path, args: &[&str], what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let out = stdout_of(dir, args);
        if done(&out) {
            return out;
        }
        assert!(Instant::now() < deadline, "{what}: still\n{out}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The line of `worker` in a `stepq worker list` output.
fn worker_line<'a>(listing: &'a str, worker: &str) -> Option<&'a str> {
    listing
        .lines()
        .find(|l| l.split_whitespace().next() == Some(worker))
}

#[tokio::test]
#[ignore = "localstack"]
async fn localstack_a_killed_worker_is_lost_within_three_intervals_and_its_step_moves_on() {
    let ls = localstack();
    let queue = TestQueue::named(&ls, "stepq-health", false).await;
    let more = format!(
        "\n[worker]\nhealth_interval_seconds = {}\n",
        INTERVAL.as_secs_f64()
    );
    let dir = config_dir_with(&ls, &queue, "health-tests", &more);
    let dir = dir.path();

    // A worker, and a run of one ten-minute step (so its message is the only one in the
    // queue once the worker is killed).
    let w1 = Process::worker(dir, "hw1");
    let run_id = format!("health-{}", uuid::Uuid::new_v4().simple());
    let orchestrator = Process::start(
        dir,
        "orchestrator",
        &[
            "run",
            "slow",
            "--steps",
            "slow_0",
            "--run-id",
            &run_id,
            "--run-config",
            r#"{"sleep_ms": 600000}"#,
        ],
    );

    // hw1 is live and runs one of the run's steps.
    let prefix = format!("{run_id}/slow_");
    let listing = wait_for_output(dir, &["worker", "list"], "hw1 runs a step", |out| {
        worker_line(out, "hw1").is_some_and(|l| l.contains(" live ") && l.contains(&prefix))
    });
    assert!(listing.contains(&queue.url), "{listing}");
    let line = worker_line(&listing, "hw1").unwrap();
    let step = line[line.find(&prefix).unwrap() + run_id.len() + 1..]
        .split([',', ' '])
        .next()
        .unwrap()
        .to_string();
    let status = stdout_of(dir, &["status", &run_id]);
    assert!(
        status.lines().any(|l| l.starts_with(&format!("{step} "))
            && l.contains("RUNNING")
            && l.contains("hw1")),
        "{status}"
    );

    // SIGKILL: hw1 turns lost within three intervals (plus the listings' own time).
    let killed = Instant::now();
    w1.sigkill();
    let listing = wait_for_output(dir, &["worker", "list"], "hw1 lost", |out| {
        worker_line(out, "hw1").is_some_and(|l| l.contains(" LOST "))
    });
    let took = killed.elapsed();
    assert!(
        took <= INTERVAL * 3 + Duration::from_secs(5),
        "hw1 was listed lost only {took:?} after SIGKILL\n{listing}"
    );
    assert!(listing.contains("1 of 1 workers LOST"), "{listing}");

    // The run's status says where its step sits.
    let status = stdout_of(dir, &["status", &run_id]);
    let lost_line = status
        .lines()
        .find(|l| l.starts_with(&format!("step {step} sits on worker hw1")))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(lost_line.contains("lost since"), "{lost_line}");
    assert!(
        lost_line.contains(&format!(
            "visibility timeout ({VISIBILITY_SECONDS}s) lapses"
        )),
        "{lost_line}"
    );

    // Another worker gets the step once its visibility timeout lapses; the status follows.
    let w2 = Process::worker(dir, "hw2");
    let status = wait_for_output(dir, &["status", &run_id], "the step moves to hw2", |out| {
        out.lines()
            .any(|l| l.starts_with(&format!("{step} ")) && l.contains("hw2"))
    });
    assert!(
        !status.contains(&format!("step {step} sits on worker hw1")),
        "{status}"
    );
    let listing = stdout_of(dir, &["worker", "list"]);
    assert!(
        worker_line(&listing, "hw2").is_some_and(|l| l.contains(" live ")),
        "{listing}"
    );

    // End the run (its steps are canceled) and stop hw2 cleanly: its record goes away.
    assert_eq!(
        orchestrator.interrupt(PATIENCE),
        Ok(Some(130)),
        "the interrupted run exits 130"
    );
    assert_eq!(w2.interrupt(PATIENCE), Ok(Some(0)), "hw2 stops cleanly");
    let listing = stdout_of(dir, &["worker", "list"]);
    assert!(worker_line(&listing, "hw2").is_none(), "{listing}");
    assert!(worker_line(&listing, "hw1").is_some(), "{listing}");
    queue.delete().await;
}
