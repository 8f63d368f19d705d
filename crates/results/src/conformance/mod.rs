//! Conformance suites every [`ResultBackend`] and [`OutputStore`] implementation runs against
//! itself (feature `conformance`).
//!
//! A factory hands out a fresh, isolated backend per check; each check panics with a message
//! naming what broke. Run everything with [`run_result_backend_suite`] /
//! [`run_output_store_suite`], or single checks by name.
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use stepq_results::conformance::{run_result_backend_suite, run_output_store_suite};
//! use stepq_results::{InMemoryOutputStore, InMemoryResultBackend, OutputStore, ResultBackend};
//!
//! run_result_backend_suite(&|| async {
//!     Arc::new(InMemoryResultBackend::new()) as Arc<dyn ResultBackend>
//! })
//! .await;
//! run_output_store_suite(&|| async { Arc::new(InMemoryOutputStore::new()) as Arc<dyn OutputStore> })
//!     .await;
//! # });
//! ```
//!
//! [`ResultBackend`]: crate::ResultBackend
//! [`OutputStore`]: crate::OutputStore

mod output_store;
mod result_backend;

use std::future::Future;
use std::time::Duration;

pub use output_store::{
    check_delete_run, check_invalid_output_key, check_large_output, check_missing_output,
    check_output_overwrite, check_put_get_exists, run_output_store_suite, OutputStoreFactory,
};
pub use result_backend::{
    check_delete, check_get_without_logs, check_invalid_task_id, check_many_waiters,
    check_missing_is_not_found, check_overwrite, check_ready_transitions, check_round_trip,
    check_wait_for_earlier_result, check_wait_for_later_result, check_wait_timeout,
    run_result_backend_suite, sample_result, ResultBackendFactory,
};

/// How long any single check may take before it is declared hung.
const HANG_LIMIT: Duration = Duration::from_secs(30);

/// Runs `fut`, panicking with `what` if it takes longer than [`HANG_LIMIT`].
async fn no_hang<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(HANG_LIMIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not finish within {HANG_LIMIT:?} (hung)"),
    }
}

/// A unique task id, so checks never collide even on a shared namespace.
fn task_id(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}
