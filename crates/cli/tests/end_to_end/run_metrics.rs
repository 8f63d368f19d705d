//! `stepq run --http ADDR` on the embedded default: while the run goes on, its in-process
//! workers' metrics are served; a scrape mid-run shows the finished first step and the
//! running second one, and the listener is gone once the run ended.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::cli::{stepq, KilledOnDrop};
use crate::common::http::{free_local_address, http_get};

const JOBS: &str = r#"
[jobs.scraped]

[[jobs.scraped.steps]]
key = "quick"
argv = ["sh", "-c", "echo done"]

[[jobs.scraped.steps]]
key = "slow"
argv = ["sh", "-c", "sleep 4"]
inputs = { after = "quick.stdout" }
"#;

/// The body of `GET /metrics` on `address`, if it answers 200.
fn scrape(address: SocketAddr) -> Option<String> {
    http_get(address, "/metrics")
        .filter(|(status, _)| *status == 200)
        .map(|(_, body)| body)
}

#[test]
fn a_runs_workers_are_scraped_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jobs.toml"), JOBS).unwrap();
    let address = free_local_address();
    let mut run = KilledOnDrop(Some(
        stepq(dir.path())
            .args(["--jobs-file", "jobs.toml", "run", "scraped", "--http"])
            .arg(address.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("stepq starts"),
    ));
    let finished = "stepq_worker_steps_finished_total{job=\"scraped\",outcome=\"succeeded\"} 1";
    let began = Instant::now();
    let metrics = loop {
        if let Some(text) = scrape(address).filter(|t| t.contains(finished)) {
            break text;
        }
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "no scrape showed the first step finished"
        );
        assert!(
            run.child().try_wait().unwrap().is_none(),
            "the run ended before a scrape showed its first step"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        metrics.contains("stepq_worker_tasks_running 1"),
        "the slow step runs: {metrics}"
    );
    // The two-step chain is fused into one task: received, not finished yet.
    assert!(
        metrics.contains("stepq_worker_tasks_received_total{task=\"stepq.execute_plan\"} 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("stepq_worker_tasks_finished_total{"),
        "{metrics}"
    );
    let status = run.child().wait().unwrap();
    assert!(status.success(), "the run succeeds");
    assert!(scrape(address).is_none(), "the listener ends with the run");
}
