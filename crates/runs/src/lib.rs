//! # stepq-runs
//!
//! Run storage: run records with a validated, compare-and-set status lifecycle, an append-only
//! event log per run, and worker heartbeats.
//!
//! Two implementations of each store here: in memory ([`InMemoryRunStore`]), in a local directory
//! (the embedded default, [`LocalDirRunStore`]); the S3 ones (`S3RunStore`, for many machines)
//! are in the `stepq-aws` crate. Concurrent writers never lose an event and never both
//! win a status change.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use stepq_runs::{
//!     EventCursor, InMemoryRunStore, RunRecord, RunStatus, RunStore, StorageError,
//! };
//! use stepq_plan::{Event, EventKind};
//!
//! let store = InMemoryRunStore::new();
//! store.create_run(&RunRecord::new("run-1", "etl", serde_json::json!({}))).await?;
//! store.update_status("run-1", RunStatus::Starting).await?;
//! store.update_status("run-1", RunStatus::Started).await?;
//! store.append_events("run-1", &[Event::run("run-1", EventKind::RunStarted)]).await?;
//!
//! let page = store.read_events("run-1", EventCursor::START).await?;
//! assert_eq!(page.events.len(), 1);
//! // A finished run cannot be finished again differently.
//! store.update_status("run-1", RunStatus::Success).await?;
//! assert!(matches!(
//!     store.update_status("run-1", RunStatus::Canceled).await,
//!     Err(StorageError::InvalidTransition { .. })
//! ));
//! # Ok::<(), StorageError>(())
//! # }).unwrap();
//! ```

#![warn(missing_docs)]

pub mod error;
pub mod filter;
pub mod heartbeat;
pub mod lease;
pub mod local;
pub mod memory;
pub mod record;
pub mod retention;
pub mod store;

#[cfg(feature = "conformance")]
pub mod conformance;
// The test-generating machinery the suites' macros expand to (shared with stepq-results).
#[cfg(feature = "conformance")]
#[doc(hidden)]
pub use stepq_results::{__conformance_tests, __run_checks};

pub use error::{check_id, StorageError};
pub use filter::RunFilter;
pub use heartbeat::{
    classify_workers, HeartbeatStore, RunningTask, WorkerHealth, WorkerHeartbeat, WorkerState,
    LOST_AFTER_INTERVALS,
};
pub use lease::{InMemoryLeaseStore, Lease, LeaseStore};
pub use local::{LocalDirHeartbeatStore, LocalDirRunStore};
pub use memory::{InMemoryHeartbeatStore, InMemoryRunStore};
pub use record::{config_digest, ParseRunStatusError, RunRecord, RunStatus, StatusChange};
pub use store::{
    check_deletable, check_for_events, follow_events, poll_for_events, read_all_events, DeletedRun,
    EventCursor, EventPage, RunStore, MAX_BATCHES_PER_READ, MAX_CAS_ATTEMPTS, MAX_POLL_DELAY,
};
