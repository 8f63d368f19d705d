//! Where cancel markers live: the durable half of a cancel.
//!
//! A marker is written once per cancel (`cancels/<task_id>.json`) and read by workers when they
//! start listening (and, where lookups are free, before each task starts). Nothing touches the
//! store on the normal path of a task that is never cancelled.

mod local;
mod memory;

use async_trait::async_trait;

use crate::error::CancelError;
use crate::marker::CancelMarker;

pub use local::LocalDirCancelStore;
pub use memory::InMemoryCancelStore;

/// Directory / key prefix of the markers under a store's root.
pub const CANCELS_DIR: &str = "cancels";

/// Stores cancel markers by task id.
#[async_trait]
pub trait CancelStore: Send + Sync + 'static {
    /// Prepares the store (creates the directory, checks the bucket).
    async fn startup(&self) -> Result<(), CancelError> {
        Ok(())
    }

    /// Stores (or overwrites) the marker of `marker.task_id`.
    async fn put(&self, marker: &CancelMarker) -> Result<(), CancelError>;

    /// The marker of a task, if one is stored. A stored one that does not decode is
    /// [`CancelError::Malformed`].
    async fn get(&self, task_id: &str) -> Result<Option<CancelMarker>, CancelError>;

    /// Every stored marker, in no particular order. One that does not decode is reported
    /// with `tracing::error!` (naming it and the problem) and skipped, so one bad file does
    /// not hide the others.
    async fn list(&self) -> Result<Vec<CancelMarker>, CancelError>;

    /// Deletes the marker of a task, if stored.
    async fn delete(&self, task_id: &str) -> Result<(), CancelError>;

    /// Short name for logs, e.g. `memory`, `local`, `s3`.
    fn kind(&self) -> &'static str;

    /// Whether [`get`](CancelStore::get) costs no request (memory, local disk), so a worker
    /// may consult the store before every task start at no cost.
    fn lookups_are_free(&self) -> bool {
        false
    }
}
