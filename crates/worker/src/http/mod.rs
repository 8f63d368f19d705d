//! The worker service's HTTP listener (feature `http`; off unless `[worker] http` is set):
//! `/healthz` (live), `/readyz` (broker reachable, not draining) and `/metrics`
//! (Prometheus / OpenMetrics text: tasks, steps, queue wait and run time histograms,
//! visibility extensions, broker errors; see [`metrics`]).
//!
//! A [`WorkerService`](crate::WorkerService) with [`ServiceSettings::http`](crate::ServiceSettings::http)
//! set starts one before its worker and stops it after; `/readyz` turns 503 as soon as the
//! service starts draining (SIGTERM).
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use stepq_broker::InMemoryBroker;
//! use stepq_worker::http::{HttpListener, WorkerMetrics};
//!
//! let metrics = Arc::new(WorkerMetrics::new());
//! let address = "127.0.0.1:0".parse().unwrap(); // any free port
//! let broker = Arc::new(InMemoryBroker::new());
//! let listener = HttpListener::start(address, metrics.clone(), broker).await.unwrap();
//! assert_ne!(listener.address().port(), 0);
//! assert!(metrics.encode().contains("stepq_worker_tasks_running 0"));
//! listener.stop().await;
//! # });
//! ```

pub mod metrics;
mod server;

pub use metrics::WorkerMetrics;
pub use server::{HttpError, HttpListener, READY_PROBE_TIMEOUT};
