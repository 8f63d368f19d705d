//! [`WorkerMetrics`]: a worker's Prometheus metrics (prometheus-client), fed as a
//! [`WorkerObserver`] and encoded in the OpenMetrics text format for `/metrics`.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `stepq_worker_tasks_received_total` | counter | `task` |
//! | `stepq_worker_tasks_redelivered_total` | counter | `task` (delivered before: its worker died, or it was handed back) |
//! | `stepq_worker_tasks_finished_total` | counter | `task`, `outcome` (`succeeded`, `failed`, `canceled`, `released`) |
//! | `stepq_worker_tasks_running` | gauge | — |
//! | `stepq_worker_task_queue_wait_seconds` | histogram | `task` (sent → first delivered) |
//! | `stepq_worker_task_run_seconds` | histogram | `task` |
//! | `stepq_worker_step_queue_wait_seconds` | histogram | `job` |
//! | `stepq_worker_steps_finished_total` | counter | `job`, `outcome` |
//! | `stepq_worker_step_run_seconds` | histogram | `job` |
//! | `stepq_worker_visibility_extensions_total` | counter | `outcome` (`ok`, `error`) |
//! | `stepq_worker_broker_errors_total` | counter | `class` (`temporary`, `permanent`, `persistent`) |
//! | `stepq_worker_messages_dead_lettered_total` | counter | — |
//! | `stepq_worker_ready` | gauge | — (1 when the readiness check of the last `/readyz` or `/metrics` request found the worker ready) |

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use stepq_broker::{BrokerError, TaskMessage};

use crate::observe::{ReceiverObserver, TaskEnd, WorkerObserver};

/// Labels of per-task-name metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    task: String,
}

/// Labels of per-task-name metrics with an outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskOutcomeLabels {
    task: String,
    outcome: &'static str,
}

/// Labels of per-job metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job: String,
}

/// Labels of per-job metrics with an outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobOutcomeLabels {
    job: String,
    outcome: &'static str,
}

/// Labels of metrics split by outcome only.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Labels of metrics split by error class.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: &'static str,
}

/// Seconds, 1 ms to about 9 minutes, doubling.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// An empty family of [`seconds_histogram`]s.
fn histograms<L: Clone + std::hash::Hash + Eq>() -> Histograms<L> {
    Family::new_with_constructor(seconds_histogram as fn() -> Histogram)
}

/// A worker's metrics (see the [module docs](self)); install it on the worker with
/// [`Worker::set_observer`](crate::Worker::set_observer).
pub struct WorkerMetrics {
    registry: Registry,
    received: Family<TaskLabels, Counter>,
    redelivered: Family<TaskLabels, Counter>,
    finished: Family<TaskOutcomeLabels, Counter>,
    running: Gauge,
    queue_wait: Histograms<TaskLabels>,
    run_time: Histograms<TaskLabels>,
    step_queue_wait: Histograms<JobLabels>,
    steps_finished: Family<JobOutcomeLabels, Counter>,
    step_run_time: Histograms<JobLabels>,
    extensions: Family<OutcomeLabels, Counter>,
    broker_errors: Family<ClassLabels, Counter>,
    dead_lettered: Counter,
    ready: Gauge,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for WorkerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerMetrics").finish_non_exhaustive()
    }
}

impl WorkerMetrics {
    /// No task seen yet. One set of metrics may observe several workers of a process (the
    /// in-process workers of `stepq run --http`): it counts them together.
    pub fn new() -> Self {
        let mut metrics = WorkerMetrics {
            registry: Registry::with_prefix("stepq_worker"),
            received: Family::default(),
            redelivered: Family::default(),
            finished: Family::default(),
            running: Gauge::default(),
            queue_wait: histograms(),
            run_time: histograms(),
            step_queue_wait: histograms(),
            steps_finished: Family::default(),
            step_run_time: histograms(),
            extensions: Family::default(),
            broker_errors: Family::default(),
            dead_lettered: Counter::default(),
            ready: Gauge::default(),
        };
        let r = &mut metrics.registry;
        r.register(
            "tasks_received",
            "Tasks whose handler started",
            metrics.received.clone(),
        );
        r.register(
            "tasks_redelivered",
            "Tasks started on a second or later delivery of their message",
            metrics.redelivered.clone(),
        );
        r.register(
            "tasks_finished",
            "Tasks that ended, by outcome",
            metrics.finished.clone(),
        );
        r.register(
            "tasks_running",
            "Tasks running now",
            metrics.running.clone(),
        );
        r.register(
            "task_queue_wait_seconds",
            "Time from a task's message being sent to its delivery",
            metrics.queue_wait.clone(),
        );
        r.register(
            "task_run_seconds",
            "Time a task's handler ran",
            metrics.run_time.clone(),
        );
        r.register(
            "step_queue_wait_seconds",
            "Time a step task of a job waited on the queue",
            metrics.step_queue_wait.clone(),
        );
        r.register(
            "steps_finished",
            "Steps that ended, by job and outcome",
            metrics.steps_finished.clone(),
        );
        r.register(
            "step_run_seconds",
            "Time a step of a job ran",
            metrics.step_run_time.clone(),
        );
        r.register(
            "visibility_extensions",
            "Visibility extensions (heartbeats) of running tasks' messages, by outcome",
            metrics.extensions.clone(),
        );
        r.register(
            "broker_errors",
            "Failed receives from the broker, by error class",
            metrics.broker_errors.clone(),
        );
        r.register(
            "messages_dead_lettered",
            "Messages moved to the dead-letter place",
            metrics.dead_lettered.clone(),
        );
        r.register(
            "ready",
            "1 when the last readiness check found the worker ready",
            metrics.ready.clone(),
        );
        metrics
    }

    /// Records whether the last readiness check found the worker ready.
    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Every metric in the OpenMetrics text format (what Prometheus scrapes).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("encoding into a String does not fail");
        text
    }
}

fn task(message: &TaskMessage) -> TaskLabels {
    TaskLabels {
        task: message.task_name.clone(),
    }
}

impl ReceiverObserver for WorkerMetrics {
    fn task_started(
        &self,
        message: &TaskMessage,
        receive_count: u32,
        queue_wait: Option<Duration>,
    ) {
        let labels = task(message);
        self.received.get_or_create(&labels).inc();
        self.running.inc();
        if receive_count > 1 {
            self.redelivered.get_or_create(&labels).inc();
        }
        // A redelivery's wait since the first send includes its earlier attempts: only first
        // deliveries are observed.
        if let (Some(wait), 1) = (queue_wait, receive_count) {
            self.queue_wait
                .get_or_create(&labels)
                .observe(wait.as_secs_f64());
        }
    }

    fn task_finished(&self, message: &TaskMessage, end: TaskEnd, run_time: Duration) {
        // Every way out of a started task reports here once (the receiver's contract).
        self.running.dec();
        let labels = task(message);
        self.finished
            .get_or_create(&TaskOutcomeLabels {
                task: labels.task.clone(),
                outcome: end.name(),
            })
            .inc();
        self.run_time
            .get_or_create(&labels)
            .observe(run_time.as_secs_f64());
    }

    fn visibility_extended(&self, _message: &TaskMessage, outcome: Result<(), &BrokerError>) {
        let outcome = if outcome.is_ok() { "ok" } else { "error" };
        self.extensions
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    fn broker_error(&self, error: &BrokerError) {
        let class = match error.class() {
            stepq_core::ErrorClass::Temporary => "temporary",
            stepq_core::ErrorClass::Permanent => "permanent",
            stepq_core::ErrorClass::Persistent => "persistent",
        };
        self.broker_errors
            .get_or_create(&ClassLabels { class })
            .inc();
    }

    fn dead_lettered(&self, _reason: &str) {
        self.dead_lettered.inc();
    }
}

impl WorkerObserver for WorkerMetrics {
    fn step_task_started(&self, job: &str, queue_wait: Option<Duration>) {
        if let Some(wait) = queue_wait {
            self.step_queue_wait
                .get_or_create(&JobLabels {
                    job: job.to_string(),
                })
                .observe(wait.as_secs_f64());
        }
    }

    fn step_finished(&self, job: &str, end: TaskEnd, run_time: Duration) {
        self.steps_finished
            .get_or_create(&JobOutcomeLabels {
                job: job.to_string(),
                outcome: end.name(),
            })
            .inc();
        self.step_run_time
            .get_or_create(&JobLabels {
                job: job.to_string(),
            })
            .observe(run_time.as_secs_f64());
    }
}
