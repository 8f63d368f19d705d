//! The listener itself: an axum router with `/healthz`, `/readyz` and `/metrics`, served on
//! a bound TCP listener until stopped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use stepq_broker::Broker;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::metrics::WorkerMetrics;

/// How long `/readyz` waits for the broker to answer before calling it unreachable.
pub const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long [`HttpListener::stop`] waits for open connections.
const STOP_LIMIT: Duration = Duration::from_secs(2);

/// The content type of the OpenMetrics text format.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The HTTP listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address} (worker.http): {source}")]
pub struct HttpError {
    /// The address asked for.
    pub address: SocketAddr,
    /// Why binding failed (in use, not an address of this host, permission denied).
    #[source]
    pub source: std::io::Error,
}

/// What the endpoints answer from.
struct Endpoints {
    metrics: Arc<WorkerMetrics>,
    broker: Arc<dyn Broker>,
    draining: AtomicBool,
}

/// A running HTTP listener (see [`HttpListener::start`]).
#[derive(Debug)]
pub struct HttpListener {
    address: SocketAddr,
    endpoints: Arc<Endpoints>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints")
            .field("broker", &self.broker.kind())
            .field("draining", &self.draining.load(Ordering::Relaxed))
            .finish()
    }
}

impl HttpListener {
    /// Binds `address` (port 0: any free port; see [`address`](Self::address)) and serves
    /// in the background:
    ///
    /// - `GET /healthz`: 200 `ok` while the process answers.
    /// - `GET /readyz`: 200 `ready` when `broker` answers a probe within
    ///   [`READY_PROBE_TIMEOUT`] and the worker is not draining; else 503 saying which.
    /// - `GET /metrics`: `metrics` in the OpenMetrics text format.
    pub async fn start(
        address: SocketAddr,
        metrics: Arc<WorkerMetrics>,
        broker: Arc<dyn Broker>,
    ) -> Result<Self, HttpError> {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| HttpError { address, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| HttpError { address, source })?;
        let endpoints = Arc::new(Endpoints {
            metrics,
            broker,
            draining: AtomicBool::new(false),
        });
        let app = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_text))
            .with_state(endpoints.clone());
        let stop = CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, address = %bound, "the HTTP listener failed");
            }
        });
        tracing::info!(address = %bound, "HTTP listener: /healthz /readyz /metrics");
        Ok(HttpListener {
            address: bound,
            endpoints,
            stop,
            task,
        })
    }

    /// The address it listens on (the bound port when 0 was asked for).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// From now on `/readyz` answers 503 `draining`: the worker takes no new tasks.
    pub fn set_draining(&self) {
        self.endpoints.draining.store(true, Ordering::Relaxed);
    }

    /// Turns draining (see [`set_draining`](Self::set_draining)) when `stop` fires, unless
    /// the listener stopped first.
    pub fn drain_when(&self, stop: CancellationToken) {
        let (endpoints, stopped) = (self.endpoints.clone(), self.stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => endpoints.draining.store(true, Ordering::Relaxed),
                () = stopped.cancelled() => {}
            }
        });
    }

    /// Stops listening (requests in progress finish first). Dropping the listener stops it
    /// too, without waiting.
    pub async fn stop(mut self) {
        self.stop.cancel();
        // Graceful shutdown waits for open connections; a stalled client must not hold the
        // worker's exit past its platform's grace period.
        match tokio::time::timeout(STOP_LIMIT, &mut self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the HTTP listener ended abnormally"),
            Err(_) => {
                tracing::warn!(limit = ?STOP_LIMIT, "HTTP connections still open; closing them");
                self.task.abort();
            }
        }
    }
}

impl Drop for HttpListener {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(endpoints): State<Arc<Endpoints>>) -> Response {
    let (ready, text) = readiness(&endpoints).await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, text).into_response()
}

/// Whether the worker is ready, and why not: not draining, and the broker answers a probe
/// within [`READY_PROBE_TIMEOUT`]. Recorded in the `ready` gauge.
async fn readiness(endpoints: &Endpoints) -> (bool, String) {
    let (ready, text) = if endpoints.draining.load(Ordering::Relaxed) {
        (
            false,
            "draining: the worker is stopping and takes no new tasks\n".to_string(),
        )
    } else {
        match tokio::time::timeout(READY_PROBE_TIMEOUT, endpoints.broker.probe()).await {
            Ok(Ok(())) => (true, "ready\n".to_string()),
            Ok(Err(e)) => (false, format!("broker unreachable: {e}\n")),
            Err(_) => (
                false,
                format!("broker unreachable: no answer within {READY_PROBE_TIMEOUT:?}\n"),
            ),
        }
    };
    endpoints.metrics.set_ready(ready);
    (ready, text)
}

/// The metrics, after a readiness check (so `stepq_worker_ready` is fresh at every scrape,
/// whether or not anything asks `/readyz`).
async fn metrics_text(State(endpoints): State<Arc<Endpoints>>) -> Response {
    readiness(&endpoints).await;
    (
        [(header::CONTENT_TYPE, OPENMETRICS)],
        endpoints.metrics.encode(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::{ReceiverObserver, TaskEnd, WorkerObserver};
    use async_trait::async_trait;
    use stepq_broker::{BrokerError, DeliveryStream, TaskMessage};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A broker whose probe fails while `down` is set.
    struct Switchable {
        down: AtomicBool,
    }

    #[async_trait]
    impl Broker for Switchable {
        async fn kick(&self, _message: &TaskMessage) -> Result<(), BrokerError> {
            Ok(())
        }
        async fn listen(&self, _stop: CancellationToken) -> Result<DeliveryStream, BrokerError> {
            Err(BrokerError::Closed)
        }
        async fn probe(&self) -> Result<(), BrokerError> {
            match self.down.load(Ordering::Relaxed) {
                true => Err(BrokerError::Closed),
                false => Ok(()),
            }
        }
        fn kind(&self) -> &'static str {
            "switchable"
        }
    }

    /// `GET path` over plain HTTP/1.1: the status code and the body.
    async fn get(address: SocketAddr, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        (status, body)
    }

    #[tokio::test]
    async fn health_readiness_and_metrics_answer_what_the_worker_is() {
        let broker = Arc::new(Switchable {
            down: AtomicBool::new(false),
        });
        let metrics = Arc::new(WorkerMetrics::new());
        let any_port = "127.0.0.1:0".parse().unwrap();
        let listener = HttpListener::start(any_port, metrics.clone(), broker.clone())
            .await
            .unwrap();
        let at = listener.address();
        assert_eq!(get(at, "/healthz").await, (200, "ok\n".into()));
        assert_eq!(get(at, "/readyz").await, (200, "ready\n".into()));

        let message = TaskMessage::new("execute_plan");
        metrics.task_started(&message, 1, Some(Duration::from_millis(20)));
        metrics.task_started(&message, 2, None);
        metrics.task_finished(&message, TaskEnd::Succeeded, Duration::from_millis(5));
        metrics.task_finished(&message, TaskEnd::Canceled, Duration::from_millis(5));
        metrics.step_finished("diamond", TaskEnd::Failed, Duration::from_millis(3));
        metrics.broker_error(&BrokerError::Closed);
        let (status, text) = get(at, "/metrics").await;
        assert_eq!(status, 200);
        for line in [
            "stepq_worker_tasks_received_total{task=\"execute_plan\"} 2",
            "stepq_worker_tasks_redelivered_total{task=\"execute_plan\"} 1",
            "stepq_worker_tasks_finished_total{task=\"execute_plan\",outcome=\"succeeded\"} 1",
            "stepq_worker_tasks_finished_total{task=\"execute_plan\",outcome=\"canceled\"} 1",
            "stepq_worker_steps_finished_total{job=\"diamond\",outcome=\"failed\"} 1",
            "stepq_worker_task_queue_wait_seconds_count{task=\"execute_plan\"} 1",
            "stepq_worker_step_run_seconds_count{job=\"diamond\"} 1",
            "stepq_worker_broker_errors_total{class=\"permanent\"} 1",
            "stepq_worker_tasks_running 0",
            "stepq_worker_ready 1",
        ] {
            assert!(text.contains(line), "no `{line}` in:\n{text}");
        }

        broker.down.store(true, Ordering::Relaxed);
        let (status, body) = get(at, "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.starts_with("broker unreachable"), "{body}");
        assert_eq!(get(at, "/healthz").await.0, 200, "alive while unready");
        assert!(metrics.encode().contains("stepq_worker_ready 0"));
        broker.down.store(false, Ordering::Relaxed);
        assert_eq!(get(at, "/readyz").await.0, 200, "ready again");

        let stop = CancellationToken::new();
        listener.drain_when(stop.clone());
        stop.cancel();
        let mut draining = get(at, "/readyz").await;
        for _ in 0..100 {
            if draining.0 == 503 {
                break;
            }
            tokio::task::yield_now().await;
            draining = get(at, "/readyz").await;
        }
        assert_eq!(draining.0, 503);
        assert!(draining.1.starts_with("draining"), "{}", draining.1);
        listener.stop().await;
        assert!(tokio::net::TcpStream::connect(at).await.is_err(), "stopped");
    }

    #[tokio::test]
    async fn an_address_in_use_is_named_in_the_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = taken.local_addr().unwrap();
        let metrics = Arc::new(WorkerMetrics::new());
        let broker = Arc::new(stepq_broker::InMemoryBroker::new());
        let error = HttpListener::start(address, metrics, broker)
            .await
            .unwrap_err();
        assert!(error.to_string().contains(&address.to_string()), "{error}");
        assert!(error.to_string().contains("worker.http"), "{error}");
    }
}
