//! The worker service's HTTP listener for real (issue #13), on LocalStack: a `stepq worker
//! start` process with `[worker] http` set reaches SQS and S3 through a proxy the test owns
//! ([`OutageProxy`]). `/healthz` answers; `/metrics` scraped after a run shows that run's
//! steps and tasks; `/readyz` turns 503 when the proxy goes down (the broker endpoint is
//! unreachable) and 200 again when it comes back, while `/healthz` stays 200.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::cli::{run_configured, text};
use crate::common::http::{free_local_address, http_get};
use crate::common::localstack::*;
use crate::common::outage::{Mode, OutageProxy};

/// How long `/readyz` may take to follow the endpoint (its probe times out after 3 s; the
/// SDK's own retries come first).
const FOLLOW: Duration = Duration::from_secs(60);

/// `GET path` on `address`, which must answer.
fn get(address: SocketAddr, path: &str) -> (u16, String) {
    http_get(address, path).unwrap_or_else(|| panic!("nothing answered GET {path} on {address}"))
}

/// Polls `/readyz` (off the runtime's threads) until it answers `status`, up to [`FOLLOW`].
async fn readyz_becomes(address: SocketAddr, status: u16) -> String {
    let began = Instant::now();
    loop {
        let (got, body) = tokio::task::spawn_blocking(move || get(address, "/readyz"))
            .await
            .unwrap();
        if got == status {
            return body;
        }
        assert!(
            began.elapsed() < FOLLOW,
            "/readyz still answers {got} ({body}) after {FOLLOW:?}, expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The value of the sample `name{labels}` in an OpenMetrics text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "localstack"]
async fn a_worker_serves_health_readiness_and_the_metrics_of_its_run() {
    let ls = localstack();
    let queue = TestQueue::create(&ls, false).await;
    let proxy = OutageProxy::start(&ls.endpoint);
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    proxy.write_config(dir, &ls, &queue, "http");
    let address = free_local_address();
    let mut config = std::fs::read_to_string(dir.join("stepq.toml")).unwrap();
    config.push_str(&format!("\n[worker]\nhttp = \"{address}\"\n"));
    std::fs::write(dir.join("stepq.toml"), config).unwrap();

    let worker = WorkerProcess::start(dir, "http-w1");
    worker.wait_for("HTTP listener", Duration::from_secs(60));
    assert_eq!(get(address, "/healthz"), (200, "ok\n".into()));
    readyz_becomes(address, 200).await;

    let out = tokio::task::spawn_blocking({
        let dir = dir.to_path_buf();
        move || run_configured(&dir, &["run", "diamond"])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (status, metrics) = get(address, "/metrics");
    assert_eq!(status, 200);
    let steps = sample(
        &metrics,
        "stepq_worker_steps_finished_total{job=\"diamond\",outcome=\"succeeded\"}",
    );
    assert_eq!(steps, Some(4.0), "the diamond's 4 steps, in:\n{metrics}");
    let received = sample(
        &metrics,
        "stepq_worker_tasks_received_total{task=\"stepq.execute_plan\"}",
    )
    .unwrap_or_else(|| panic!("no step tasks received in:\n{metrics}"));
    let succeeded = sample(
        &metrics,
        "stepq_worker_tasks_finished_total{task=\"stepq.execute_plan\",outcome=\"succeeded\"}",
    );
    assert!((1.0..=4.0).contains(&received), "{metrics}");
    assert_eq!(
        succeeded,
        Some(received),
        "every task received succeeded:\n{metrics}"
    );
    let waits = sample(
        &metrics,
        "stepq_worker_task_queue_wait_seconds_count{task=\"stepq.execute_plan\"}",
    );
    assert_eq!(
        waits,
        Some(received),
        "SQS's SentTimestamp gives each a queue wait"
    );
    assert_eq!(sample(&metrics, "stepq_worker_tasks_running"), Some(0.0));

    proxy.set(Mode::Down);
    let body = readyz_becomes(address, 503).await;
    assert!(body.starts_with("broker unreachable"), "{body}");
    assert_eq!(get(address, "/healthz").0, 200, "alive while unready");
    proxy.set(Mode::Up);
    readyz_becomes(address, 200).await;
    let (_, metrics) = get(address, "/metrics");
    assert_eq!(
        sample(&metrics, "stepq_worker_ready"),
        Some(1.0),
        "{metrics}"
    );

    assert_eq!(worker.stop(), Some(0));
    queue.delete().await;
}
