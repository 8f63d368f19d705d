//! Conformance suites every [`ResultBackend`] and [`OutputStore`] implementation runs against
//! itself (feature `conformance`).
//!
//! Every suite of the workspace has the same shape: a factory trait handing out a fresh,
//! isolated store per check ([`ResultBackendFactory`], [`OutputStoreFactory`]), public
//! `check_*` functions that panic with a message naming what broke, one `run_*_suite`
//! function running them all ([`run_result_backend_suite`], [`run_output_store_suite`]), and
//! a macro expanding to one `#[tokio::test]` per check, so a backend gets one named test per
//! contract clause ([`result_backend_conformance_tests!`](crate::result_backend_conformance_tests),
//! [`output_store_conformance_tests!`](crate::output_store_conformance_tests)).
//!
//! ```
//! use std::sync::Arc;
//! use stepq_results::{InMemoryOutputStore, InMemoryResultBackend, OutputStore, ResultBackend};
//!
//! stepq_results::result_backend_conformance_tests!(memory_results, || async {
//!     Arc::new(InMemoryResultBackend::new()) as Arc<dyn ResultBackend>
//! });
//! // Gated tests take attributes; `except [...]` skips checks that cannot apply by design.
//! stepq_results::output_store_conformance_tests!(
//!     #[ignore = "slow"]
//!     memory_outputs,
//!     || async { Arc::new(InMemoryOutputStore::new()) as Arc<dyn OutputStore> },
//!     except [check_large_output]
//! );
//!
//! # fn main() {
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! // Or everything in one go:
//! stepq_results::conformance::run_result_backend_suite(&|| async {
//!     Arc::new(InMemoryResultBackend::new()) as Arc<dyn ResultBackend>
//! })
//! .await;
//! # });
//! # }
//! ```
//!
//! [`ResultBackend`]: crate::ResultBackend
//! [`OutputStore`]: crate::OutputStore

mod macros;
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
