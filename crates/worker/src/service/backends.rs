//! [`Backends`]: the queue and stores a worker service (or an orchestrator) runs on, built
//! from settings — the embedded set in a local directory, or (feature `aws`, default) SQS +
//! S3.
//!
//! - [`Backends::embedded`]: an in-memory broker, and the result, output, run, heartbeat and
//!   cancel-marker stores under a state directory: by default one SQLite database
//!   (`stepq-sqlite`, [`StateStore::Sqlite`]), or the older one-file-per-record directories
//!   ([`StateStore::Files`]). Only workers of the same process can serve its queue.
//! - [`Backends::distributed`]: the SQS broker and S3 stores in one bucket under one base
//!   path. Results are stored in S3 and announced on the sending process's reply queue
//!   (`stepq_aws::sqs::reply`): workers notify, an orchestrator waits without polling S3.
//!
//! [`Backends::with_signer`] wraps the broker so task messages are signed and checked
//! (`[signing]`).
//!
//! With cancellation on, the broker is a `CancellableBroker` (markers in the state directory
//! or the bucket; wake-ups over an in-process broadcast or per-worker SQS inboxes) and
//! [`Backends::canceller`] is set.

use std::path::Path;
use std::sync::Arc;

use stepq_broker::signing::{MessageSigner, SignedBroker};
use stepq_broker::{Broker, BrokerError, InMemoryBroker, TaskQueue};
use stepq_cancel::{CancelStore, CancellableBroker, Canceller, LocalDirCancelStore};
use stepq_results::{LocalDirOutputStore, LocalDirResultBackend, OutputStore, ResultBackend};
use stepq_runs::{HeartbeatStore, LeaseStore, LocalDirHeartbeatStore, LocalDirRunStore, RunStore};
use stepq_sqlite::SqliteStore;

use super::routing::Routing;
use super::ServiceParts;

/// Why the backends could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build {component}: {message}")]
pub struct BackendsError {
    /// Which component, e.g. `the SQS broker`.
    pub component: &'static str,
    /// What went wrong.
    pub message: String,
}

impl From<BrokerError> for BackendsError {
    /// A routing error while building lanes.
    fn from(e: BrokerError) -> Self {
        BackendsError {
            component: "the routed broker",
            message: e.to_string(),
        }
    }
}

/// How the embedded default keeps its state under the state directory (`state_store` in
/// `stepq.toml`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum StateStore {
    /// One SQLite database, `stepq.db` (default).
    #[default]
    Sqlite,
    /// One file per record in `runs/`, `results/`, `outputs/`, … (the layout before the
    /// database; slower, kept for state directories written by it).
    Files,
}

/// Result backend, output, run, heartbeat and cancel-marker stores of the embedded set.
type EmbeddedStores = (
    Arc<dyn ResultBackend>,
    Arc<dyn OutputStore>,
    Arc<dyn RunStore>,
    Arc<dyn HeartbeatStore>,
    Arc<dyn CancelStore>,
    Option<Arc<dyn LeaseStore>>,
);

/// The queue and stores of one process (see the [module docs](self)).
#[derive(Clone)]
pub struct Backends {
    /// The task queue (broker + result backend).
    pub queue: TaskQueue,
    /// The step output store.
    pub outputs: Arc<dyn OutputStore>,
    /// The run store.
    pub runs: Arc<dyn RunStore>,
    /// The worker heartbeat store.
    pub heartbeats: Arc<dyn HeartbeatStore>,
    /// The cancellable broker's canceller; `None` with cancellation off.
    pub canceller: Option<Canceller>,
    /// Fleet-wide slot leases (the SQLite database or the bucket); `None` with the
    /// one-file-per-record state store, which has none.
    pub leases: Option<Arc<dyn LeaseStore>>,
    /// The SQS broker itself (for its queue depth and visibility timeout); `None` embedded.
    #[cfg(feature = "aws")]
    pub sqs: Option<stepq_aws::SqsBroker>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends")
            .field("broker", &self.queue.broker().kind())
            .field("cancellation", &self.canceller.is_some())
            .finish_non_exhaustive()
    }
}

impl Backends {
    /// The embedded set under `state_dir`, its stores as `store` says (see the [module
    /// docs](self)). Opens (creating it if needed) the database of [`StateStore::Sqlite`];
    /// fails naming the file when it cannot be used. A state directory of the old file
    /// layout with no database gets a warning saying its runs are not read.
    pub fn embedded(
        state_dir: &Path,
        store: StateStore,
        cancellation: bool,
    ) -> Result<Self, BackendsError> {
        Self::embedded_routed(state_dir, store, cancellation, &Routing::none())
    }

    /// [`Backends::embedded`] with `routing`: with named queues or priority levels, the broker
    /// is a [`RoutedBroker`](stepq_broker::routing::RoutedBroker) of in-memory lanes.
    pub fn embedded_routed(
        state_dir: &Path,
        store: StateStore,
        cancellation: bool,
        routing: &Routing,
    ) -> Result<Self, BackendsError> {
        let (results, outputs, runs, heartbeats, cancels, leases): EmbeddedStores = match store {
            StateStore::Sqlite => {
                if let Some(notice) = stepq_sqlite::old_layout_notice(state_dir) {
                    tracing::warn!("{notice}");
                }
                let db = SqliteStore::open(state_dir).map_err(|e| BackendsError {
                    component: "the embedded store",
                    message: e.to_string(),
                })?;
                (
                    Arc::new(db.results()),
                    Arc::new(db.outputs()),
                    Arc::new(db.runs()),
                    Arc::new(db.heartbeats()),
                    Arc::new(db.cancels()),
                    Some(Arc::new(db.leases())),
                )
            }
            StateStore::Files => (
                Arc::new(LocalDirResultBackend::new(state_dir)),
                Arc::new(LocalDirOutputStore::new(state_dir)),
                Arc::new(LocalDirRunStore::new(state_dir)),
                Arc::new(LocalDirHeartbeatStore::new(state_dir)),
                Arc::new(LocalDirCancelStore::new(state_dir)),
                None,
            ),
        };
        let routed = routing
            .broker(|_, _, _| Ok::<_, BrokerError>(Arc::new(InMemoryBroker::new()) as _))
            .map_err(|e| BackendsError {
                component: "the routed broker",
                message: e.to_string(),
            })?;
        let (queue, canceller) = match (routed, cancellation) {
            (Some(routed), true) => in_memory_cancellable(routed, cancels, results),
            (Some(routed), false) => (TaskQueue::new(Arc::new(routed), results), None),
            (None, true) => in_memory_cancellable(InMemoryBroker::new(), cancels, results),
            (None, false) => (
                TaskQueue::new(Arc::new(InMemoryBroker::new()), results),
                None,
            ),
        };
        Ok(Backends {
            queue,
            outputs,
            runs,
            heartbeats,
            canceller,
            leases,
            #[cfg(feature = "aws")]
            sqs: None,
        })
    }

    /// SQS + S3 as `sqs` and `s3` say (a queue URL and a bucket are required; validate the
    /// settings first). Reply-only results unless `s3.store_results`. Makes no request: a
    /// missing queue or bucket shows at the queue's `startup`.
    #[cfg(feature = "aws")]
    pub async fn distributed(
        sqs: &stepq_aws::SqsSettings,
        s3: &stepq_aws::S3Settings,
        cancellation: bool,
    ) -> Result<Self, BackendsError> {
        Self::distributed_routed(sqs, s3, cancellation, &Routing::none()).await
    }

    /// [`Backends::distributed`] with `routing`: with named queues or priority levels, the
    /// broker is a [`RoutedBroker`](stepq_broker::routing::RoutedBroker) of one SQS broker
    /// per queue and level (see [`super::routing`] for the queue names), built from one loaded AWS
    /// config.
    #[cfg(feature = "aws")]
    pub async fn distributed_routed(
        sqs: &stepq_aws::SqsSettings,
        s3: &stepq_aws::S3Settings,
        cancellation: bool,
        routing: &Routing,
    ) -> Result<Self, BackendsError> {
        use stepq_aws::sqs::reply;
        use stepq_aws::{
            S3CancelStore, S3HeartbeatStore, S3OutputStore, S3ResultBackend, S3RunStore, SqsBroker,
        };
        let error = |component, e: &dyn std::fmt::Display| BackendsError {
            component,
            message: e.to_string(),
        };
        let sqs_config = sqs
            .sqs_config(s3)
            .ok_or_else(|| error("the SQS broker", &"no queue URL"))?;
        let sdk = SqsBroker::load_sdk_config(&sqs_config).await;
        let broker = SqsBroker::from_sdk_config(sqs_config.clone(), &sdk)
            .map_err(|e| error("the SQS broker", &e))?;
        let routed = routing.broker(
            |queue, level, default_level| -> Result<Arc<dyn Broker>, BackendsError> {
                let base = if queue == stepq_broker::routing::DEFAULT_QUEUE {
                    sqs_config.queue_url.clone()
                } else {
                    routing
                        .queue_url(queue)
                        .ok_or_else(|| {
                            error(
                                "the routed broker",
                                &format!("queues.{queue}.url is required on SQS"),
                            )
                        })?
                        .to_string()
                };
                let url = if default_level {
                    base
                } else {
                    stepq_aws::sqs::sibling_queue_url(&base, level)
                };
                if queue == stepq_broker::routing::DEFAULT_QUEUE && default_level {
                    return Ok(Arc::new(broker.clone()) as Arc<dyn Broker>);
                }
                let mut config = sqs_config.clone();
                config.queue_url = url;
                let lane = SqsBroker::from_sdk_config(config, &sdk)
                    .map_err(|e| error("the routed broker", &e))?;
                Ok(Arc::new(lane) as Arc<dyn Broker>)
            },
        )?;
        let s3_sdk = s3.sdk_config(sqs, &sdk);
        let bucket = s3
            .bucket
            .clone()
            .ok_or_else(|| error("the S3 backends", &"no bucket"))?;
        let base = s3.base_path.as_str();
        // Results are stored in S3 and announced on the sending process's reply queue
        // (created on its first send, deleted by `shutdown`).
        let durable =
            S3ResultBackend::new(&s3_sdk, bucket.clone(), base).with_result_keys(s3.result_keys);
        let reply = reply::attach(&broker, durable);
        let results: Arc<dyn ResultBackend> = reply.results;
        let (queue, canceller) = if cancellation {
            let store = Arc::new(S3CancelStore::new(&s3_sdk, bucket.clone(), base));
            let cancel_error = |e: stepq_cancel::CancelError| error("the SQS cancel channel", &e);
            let (queue, canceller): (Arc<dyn Broker>, _) = match routed {
                Some(routed) => {
                    let b = stepq_aws::cancellable_over_sqs(
                        routed,
                        &broker,
                        store,
                        None,
                        Default::default(),
                    )
                    .map_err(cancel_error)?;
                    let canceller = b.canceller().clone();
                    (Arc::new(b), canceller)
                }
                None => {
                    let b = stepq_aws::cancellable_sqs_broker(broker.clone(), store, None)
                        .map_err(cancel_error)?;
                    let canceller = b.canceller().clone();
                    (Arc::new(b), canceller)
                }
            };
            (TaskQueue::new(queue, results), Some(canceller))
        } else {
            let queue: Arc<dyn Broker> = match routed {
                Some(routed) => Arc::new(routed),
                None => Arc::new(broker.clone()),
            };
            (TaskQueue::new(queue, results), None)
        };
        // Reply-only results unless `s3.store_results`: a result that fits in the
        // notification is not also written to (and deleted from) S3.
        let middleware = Arc::new(
            reply::ReplyToMiddleware::new(reply.replies.clone()).with_reply_only(!s3.store_results),
        );
        Ok(Backends {
            queue: queue.with_middleware(middleware),
            outputs: Arc::new(S3OutputStore::new(&s3_sdk, bucket.clone(), base)),
            runs: Arc::new(S3RunStore::new(&s3_sdk, bucket.clone(), base)),
            heartbeats: Arc::new(S3HeartbeatStore::new(&s3_sdk, bucket.clone(), base)),
            leases: Some(Arc::new(stepq_aws::S3LeaseStore::new(
                &s3_sdk, bucket, base,
            ))),
            canceller,
            sqs: Some(broker),
        })
    }

    /// These backends with every task message signed and every delivery checked by
    /// `signer` (see [`stepq_broker::signing`]); unchanged with `None`.
    pub fn with_signer(mut self, signer: Option<MessageSigner>) -> Self {
        if let Some(signer) = signer {
            self.queue = self
                .queue
                .map_broker(|broker| Arc::new(SignedBroker::new(broker, signer)));
        }
        self
    }

    /// What a worker service needs of these: the queue, the output store, the canceller and,
    /// with `health`, the heartbeat store.
    pub fn service_parts(&self, health: bool) -> ServiceParts {
        let mut parts = ServiceParts::new(self.queue.clone(), self.outputs.clone());
        if health {
            parts = parts.with_heartbeats(self.heartbeats.clone());
        }
        if let Some(canceller) = self.canceller.clone() {
            parts = parts.with_canceller(canceller);
        }
        if let Some(leases) = self.leases.clone() {
            parts = parts.with_leases(leases);
        }
        parts
    }
}

/// A cancellable in-memory-style broker (in-process wake-ups) over `broker`, and its queue.
fn in_memory_cancellable<B: Broker>(
    broker: B,
    cancels: Arc<dyn CancelStore>,
    results: Arc<dyn ResultBackend>,
) -> (TaskQueue, Option<Canceller>) {
    let broker = CancellableBroker::in_memory(broker, cancels);
    let canceller = broker.canceller().clone();
    (TaskQueue::new(Arc::new(broker), results), Some(canceller))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_set_follows_the_cancellation_switch() {
        let dir = tempfile::tempdir().unwrap();
        let on = Backends::embedded(dir.path(), StateStore::Sqlite, true).unwrap();
        assert!(on.canceller.is_some());
        assert_eq!(on.queue.broker().kind(), "memory");
        assert!(on.service_parts(true).heartbeats.is_some());
        let off = Backends::embedded(dir.path(), StateStore::Files, false).unwrap();
        assert!(off.canceller.is_none());
        assert!(off.service_parts(false).heartbeats.is_none());
        assert!(off.service_parts(false).canceller.is_none());
    }
}
