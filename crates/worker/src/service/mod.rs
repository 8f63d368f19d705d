//! The worker as a service: a [`WorkerService`] runs a [`Worker`] with what a worker process
//! needs around it, and [`serve`] runs one until SIGTERM or Ctrl-C.
//!
//! - **Cancellation** (with a [`Canceller`] in its [`ServiceParts`]): a [`CancelListener`]
//!   is started before the worker and its gate installed on the worker's receiver, so a step
//!   cancelled before it starts never runs, a running one is cancelled through its token, and
//!   both report CANCELED ([`step_canceled_result`]). The listener ends with the worker.
//! - **Health** (with a [`HeartbeatStore`]): a [`HealthWriter`] writes the worker's heartbeat
//!   (what it runs) every [`ServiceSettings::health_interval`] from before the worker takes its
//!   first task until after it stopped, then removes it; a killed worker's heartbeat turns
//!   LOST.
//! - **More tasks**: [`WorkerService::register_task_without_slot`] adds handlers that do not
//!   take a step slot — the facade registers the orchestration of launched runs
//!   (`execute_job`, `resume_job`) there, so this crate does not depend on the executor.
//! - **Graceful stop**: [`serve`] starts the queue, stops on SIGTERM or Ctrl-C (in-flight
//!   steps get the worker's grace period), and shuts the queue down (which deletes the
//!   worker's SQS cancel inbox).
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use stepq_broker::{InMemoryBroker, TaskQueue};
//! use stepq_results::{InMemoryOutputStore, InMemoryResultBackend};
//! use stepq_worker::service::{ServiceParts, ServiceSettings, WorkerService};
//! use stepq_worker::{op_output, CodeLocation, WorkerConfig};
//!
//! let location = CodeLocation::builder()
//!     .op("one", op_output("result", |_ctx, _inputs| async { Ok(1_i64) }))
//!     .build()
//!     .unwrap();
//! let queue = TaskQueue::new(Arc::new(InMemoryBroker::new()), Arc::new(InMemoryResultBackend::new()));
//! let parts = ServiceParts::new(queue, Arc::new(InMemoryOutputStore::new()));
//! let settings = ServiceSettings::new(WorkerConfig::named("worker-1"));
//! let service = WorkerService::new(Arc::new(location), parts, settings).unwrap();
//! let stop = tokio_util::sync::CancellationToken::new();
//! stop.cancel(); // stops at once here; `serve(service)` would wait for SIGTERM
//! let stats = service.run(stop).await.unwrap();
//! assert_eq!(stats.steps_succeeded, 0);
//! # });
//! ```

pub mod backends;
#[cfg(feature = "aws")]
pub mod file;
pub mod routing;
pub mod settings;
pub mod signing;

use std::sync::Arc;
use std::time::Duration;

use stepq_broker::{BrokerError, TaskHandler, TaskQueue};
use stepq_cancel::{CancelError, CancelListener, CancelListenerConfig, Canceller};
use stepq_results::OutputStore;
use stepq_runs::HeartbeatStore;
use tokio_util::sync::CancellationToken;

use crate::health::{HealthError, HealthWriter, DEFAULT_HEALTH_INTERVAL};
use crate::{step_canceled_result, CodeLocation, Worker, WorkerConfig, WorkerError, WorkerStats};

pub use backends::{Backends, BackendsError, StateStore};
pub use settings::{default_parallelism, WorkerSettings};
pub use signing::SigningSettings;

/// Why a worker service could not start or stopped on an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The worker could not be built or failed.
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// The cancel listener could not start.
    #[error("cancellation: {0}")]
    Cancel(#[from] CancelError),
    /// The first health heartbeat could not be written.
    #[error(transparent)]
    Health(#[from] HealthError),
    /// The queue could not start.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The HTTP listener (`[worker] http`) could not start.
    #[cfg(feature = "http")]
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    /// A second SIGTERM or Ctrl-C stopped the service at once, without waiting for in-flight
    /// steps or a pending receive (their messages come back after their visibility timeout).
    #[error("stopped at once by a second signal: in-flight steps were ended, and their messages come back after their visibility timeout")]
    Forced,
}

impl ServiceError {
    /// Whether the service could not start (a bad setting, a missing queue or bucket, missing
    /// credentials, a first heartbeat or cancel subscription that failed), as opposed to a
    /// worker that ran and then failed (its broker's delivery stream ended).
    pub fn could_not_start(&self) -> bool {
        !matches!(
            self,
            ServiceError::Worker(WorkerError::Broker(BrokerError::Closed)) | ServiceError::Forced
        )
    }
}

/// What a worker service runs on: a queue and output store, and optionally a heartbeat store
/// (health) and a canceller (cancellation).
#[derive(Clone)]
pub struct ServiceParts {
    /// The task queue (broker + result backend) steps come from and results go to.
    pub queue: TaskQueue,
    /// Where step outputs are read and written.
    pub outputs: Arc<dyn OutputStore>,
    /// Where the worker's health heartbeat is written; `None`: no heartbeat.
    pub heartbeats: Option<Arc<dyn HeartbeatStore>>,
    /// The canceller of the queue's cancellable broker; `None`: no cancel listener.
    pub canceller: Option<Canceller>,
    /// Where fleet-wide slot leases are kept (needed by [`ServiceSettings::fleet_limits`]).
    pub leases: Option<Arc<dyn stepq_runs::LeaseStore>>,
}

impl std::fmt::Debug for ServiceParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceParts")
            .field("broker", &self.queue.broker().kind())
            .field("health", &self.heartbeats.is_some())
            .field("cancellation", &self.canceller.is_some())
            .finish_non_exhaustive()
    }
}

impl ServiceParts {
    /// A queue and an output store; no health heartbeat, no cancellation.
    pub fn new(queue: TaskQueue, outputs: Arc<dyn OutputStore>) -> Self {
        ServiceParts {
            queue,
            outputs,
            heartbeats: None,
            canceller: None,
            leases: None,
        }
    }

    /// Keeps fleet-wide slot leases in `store`.
    pub fn with_leases(mut self, store: Arc<dyn stepq_runs::LeaseStore>) -> Self {
        self.leases = Some(store);
        self
    }

    /// Writes the worker's health heartbeat to `store`.
    pub fn with_heartbeats(mut self, store: Arc<dyn HeartbeatStore>) -> Self {
        self.heartbeats = Some(store);
        self
    }

    /// Listens for cancels through `canceller` (that of the queue's cancellable broker).
    pub fn with_canceller(mut self, canceller: Canceller) -> Self {
        self.canceller = Some(canceller);
        self
    }
}

/// How a worker service runs.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// The worker's own settings (name, concurrency, grace period, visibility heartbeat).
    pub worker: WorkerConfig,
    /// How often the health heartbeat is written.
    pub health_interval: Duration,
    /// How long a cancelled step may ignore its token before it is dropped.
    pub cancel_grace: Duration,
    /// The host name written in the health heartbeat.
    pub host: String,
    /// Where the HTTP listener (`/healthz`, `/readyz`, `/metrics`) listens; `None`: none.
    /// Needs the `http` feature.
    pub http: Option<std::net::SocketAddr>,
    /// The queues the worker consumes, written in its health heartbeat (so `stepq status`
    /// can say a step waits on a queue no live worker consumes); empty: not said (the
    /// default queue).
    pub queues: Vec<String>,
    /// Fleet-wide tag limits (see [`crate::fleet`]); they need [`ServiceParts::leases`].
    pub fleet_limits: Vec<crate::fleet::FleetLimit>,
    /// How long a fleet-wide slot stays held without renewal.
    pub fleet_lease: Duration,
}

impl ServiceSettings {
    /// `worker` with the default health interval and cancel grace, on this host.
    pub fn new(worker: WorkerConfig) -> Self {
        ServiceSettings {
            worker,
            health_interval: DEFAULT_HEALTH_INTERVAL,
            cancel_grace: stepq_cancel::DEFAULT_CANCEL_GRACE,
            host: host_name(),
            http: None,
            queues: Vec::new(),
            fleet_limits: Vec::new(),
            fleet_lease: crate::fleet::DEFAULT_LEASE,
        }
    }

    /// Says in the health heartbeat that the worker consumes `queues`.
    pub fn with_queues(mut self, queues: Vec<String>) -> Self {
        self.queues = queues;
        self
    }

    /// Writes the health heartbeat every `interval`.
    pub fn with_health_interval(mut self, interval: Duration) -> Self {
        self.health_interval = interval;
        self
    }

    /// Drops a cancelled step that ignores its token after `grace`.
    pub fn with_cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }
}

/// This machine's host name (`unknown-host` when it cannot be read).
pub fn host_name() -> String {
    hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown-host".into())
}

/// A worker with its cancel listener and health heartbeat (see the [module docs](self)).
pub struct WorkerService {
    worker: Worker,
    parts: ServiceParts,
    settings: ServiceSettings,
}

impl std::fmt::Debug for WorkerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerService")
            .field("name", &self.settings.worker.name)
            .field("parts", &self.parts)
            .finish_non_exhaustive()
    }
}

impl WorkerService {
    /// A service serving the steps of `location` from `parts.queue`.
    pub fn new(
        location: Arc<CodeLocation>,
        parts: ServiceParts,
        settings: ServiceSettings,
    ) -> Result<Self, WorkerError> {
        let mut worker = Worker::new(
            location,
            parts.queue.clone(),
            parts.outputs.clone(),
            settings.worker.clone(),
        )?;
        if !settings.fleet_limits.is_empty() {
            let Some(store) = parts.leases.clone() else {
                return Err(WorkerError::Config {
                    field: "fleet_limits",
                    reason: "fleet-wide limits need a lease store: the SQLite state store \
                             (state_store = \"sqlite\") or S3"
                        .into(),
                });
            };
            let limiter = crate::fleet::FleetLimiter::new(
                store,
                settings.fleet_limits.clone(),
                settings.fleet_lease,
            )?;
            worker.set_fleet_limiter(Arc::new(limiter));
        }
        Ok(WorkerService {
            worker,
            parts,
            settings,
        })
    }

    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.settings.worker.name
    }

    /// The worker it runs.
    pub fn worker(&self) -> &Worker {
        &self.worker
    }

    /// The queue it serves.
    pub fn queue(&self) -> &TaskQueue {
        &self.parts.queue
    }

    /// Installs `observer` on the worker (see [`Worker::set_observer`]), e.g. metrics shared
    /// by several in-process workers.
    pub fn set_observer(&mut self, observer: Arc<dyn crate::WorkerObserver>) {
        self.worker.set_observer(observer);
    }

    /// Registers `handler` for task `name`, run without taking a step slot and listed in the
    /// health heartbeat (see [`Worker::register_task_without_slot`]).
    pub fn register_task_without_slot(&mut self, name: &str, handler: TaskHandler) {
        self.worker.register_task_without_slot(name, handler);
    }

    /// Runs until `stop` fires (then in-flight steps get the grace period): the health
    /// heartbeat first, then the cancel listener, then the worker; they stop in reverse
    /// order. Does not start or shut the queue down (see [`serve`]).
    pub async fn run(self, stop: CancellationToken) -> Result<WorkerStats, ServiceError> {
        let WorkerService {
            mut worker,
            parts,
            settings,
        } = self;
        let name = settings.worker.name.clone();
        #[cfg(feature = "http")]
        let http = match settings.http {
            Some(address) => {
                let metrics = Arc::new(crate::http::WorkerMetrics::new());
                worker.set_observer(metrics.clone());
                let listener = crate::http::HttpListener::start(
                    address,
                    metrics,
                    parts.queue.broker().clone(),
                )
                .await?;
                listener.drain_when(stop.clone());
                Some(listener)
            }
            None => None,
        };
        #[cfg(not(feature = "http"))]
        if settings.http.is_some() {
            return Err(ServiceError::Worker(WorkerError::Config {
                field: "http",
                reason: "this build of stepq-worker has no HTTP listener: enable its feature \
                         `http`, or unset worker.http"
                    .into(),
            }));
        }
        let health = match &parts.heartbeats {
            Some(store) => Some(
                HealthWriter::new(
                    store.clone(),
                    worker.activity().clone(),
                    &name,
                    settings.host.clone(),
                )
                .with_interval(settings.health_interval)
                .with_queues(settings.queues.clone())
                .start()
                .await?,
            ),
            None => None,
        };
        let outcome = match parts.canceller {
            Some(canceller) => {
                let listener = CancelListener::new(
                    canceller,
                    worker.cancel_handle(),
                    CancelListenerConfig::named(&name).with_cancel_grace(settings.cancel_grace),
                )?
                .with_canceled_result(step_canceled_result(name.clone()));
                worker.receiver_mut().set_gate(listener.gate());
                // The listener's own token: a worker stopping on an error ends its listener,
                // and only its listener (in-process workers share `stop`).
                let listen_stop = stop.child_token();
                let listening = listener.start(listen_stop.clone()).await?;
                let outcome = worker.run(stop).await;
                listen_stop.cancel();
                listening.join().await;
                outcome
            }
            None => worker.run(stop).await,
        };
        if let Some(health) = health {
            if let Err(e) = health.stop().await {
                tracing::warn!(error = %e, worker = %name, "cannot remove the worker heartbeat");
            }
        }
        #[cfg(feature = "http")]
        if let Some(http) = http {
            http.stop().await;
        }
        Ok(outcome?)
    }
}

/// Runs `service` as a process's worker: starts its queue (checking that the queue and bucket
/// exist), runs until SIGTERM or Ctrl-C, lets in-flight steps finish within the grace period,
/// and shuts the queue down — which, on SQS, waits for a pending long poll to end (SQS cannot
/// cancel one, and a message it brings is then made visible again at once instead of staying
/// hidden for its visibility timeout): up to `wait_time_seconds` for an idle worker.
///
/// A second SIGTERM or Ctrl-C stops at once: in-flight steps are ended (their process groups
/// signalled as when cancelled) and [`ServiceError::Forced`] is returned; their messages, and
/// any a pending receive brings, come back after their visibility timeout.
pub async fn serve(service: WorkerService) -> Result<WorkerStats, ServiceError> {
    let queue = service.queue().clone();
    queue.startup().await?;
    let stop = CancellationToken::new();
    let force = CancellationToken::new();
    let signals = tokio::spawn({
        let (stop, force) = (stop.clone(), force.clone());
        async move {
            shutdown_signal().await;
            tracing::info!(
                "stopping: finishing in-flight steps within the grace period (a second SIGTERM \
                 or Ctrl-C stops at once)"
            );
            stop.cancel();
            shutdown_signal().await;
            tracing::warn!(
                "stopping at once: in-flight steps are ended; their messages come back after \
                 their visibility timeout"
            );
            force.cancel();
        }
    });
    let outcome = tokio::select! {
        outcome = service.run(stop) => outcome,
        _ = force.cancelled() => Err(ServiceError::Forced),
    };
    if !force.is_cancelled() {
        tokio::select! {
            shut = queue.shutdown() => if let Err(e) = shut {
                tracing::warn!(error = %e, "cannot shut the broker down cleanly");
            },
            _ = force.cancelled() => {}
        }
    }
    signals.abort();
    match outcome {
        Ok(_) if force.is_cancelled() => Err(ServiceError::Forced),
        other => other,
    }
}

/// Resolves when SIGTERM or Ctrl-C arrives.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_broker_stream_ending_at_run_time_is_a_failure_after_start() {
        let missing = ServiceError::Broker(BrokerError::Config {
            field: "queue_url",
            reason: "no such queue".into(),
        });
        assert!(missing.could_not_start());
        let ended = ServiceError::Worker(WorkerError::Broker(BrokerError::Closed));
        assert!(!ended.could_not_start());
    }
}
