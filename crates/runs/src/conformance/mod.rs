//! Conformance suites any [`RunStore`] or [`HeartbeatStore`] implementation can run against
//! itself. Each case is a public async function that panics on failure; run them on a
//! multi-threaded tokio runtime so concurrent cases really race.
//!
//! ```no_run
//! # async fn demo() {
//! use stepq_runs::conformance::{run_run_store_suite, RunStoreFactory};
//! use stepq_runs::InMemoryRunStore;
//!
//! struct Memory;
//! impl RunStoreFactory for Memory {
//!     type Store = InMemoryRunStore;
//!     async fn fresh(&self) -> InMemoryRunStore {
//!         InMemoryRunStore::new()
//!     }
//!     async fn reopen(&self, store: &InMemoryRunStore) -> InMemoryRunStore {
//!         store.clone()
//!     }
//! }
//! run_run_store_suite(&Memory).await;
//! # }
//! ```
//!
//! [`RunStore`]: crate::RunStore
//! [`HeartbeatStore`]: crate::HeartbeatStore

mod heartbeat_store;
mod run_store;

use std::time::Duration;

pub use heartbeat_store::{
    heartbeats_classify_live_and_lost, heartbeats_put_replace_list_remove,
    heartbeats_reject_invalid_ids, heartbeats_survive_a_new_store_instance,
    run_heartbeat_store_suite, HeartbeatStoreFactory,
};
pub use run_store::{
    concurrent_appends_lose_nothing, concurrent_terminal_transitions_have_one_winner,
    create_get_and_list_newest_first, data_survives_a_new_store_instance,
    duplicate_create_is_rejected, events_read_from_a_cursor, follow_ends_when_run_is_terminal,
    lifecycle_transitions_are_validated, run_run_store_suite, unknown_and_invalid_ids_are_errors,
    wait_wakes_on_append, RunStoreFactory,
};

/// Longest any single step of a case may take before the case fails (a hang is a failure).
pub const CASE_STEP_TIMEOUT: Duration = Duration::from_secs(60);
