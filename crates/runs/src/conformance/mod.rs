//! Conformance suites any [`RunStore`] or [`HeartbeatStore`] implementation can run against
//! itself, in the shape every suite of the workspace has: a factory per store kind
//! ([`RunStoreFactory`], [`HeartbeatStoreFactory`]: `fresh()` and `reopen()`), public
//! `check_*` functions that panic on failure, one `run_*_suite` function each
//! ([`run_run_store_suite`], [`run_heartbeat_store_suite`]), and a macro each expanding to
//! one `#[tokio::test]` per check on a multi-threaded runtime, so concurrent checks really
//! race and a failure names the clause
//! ([`run_store_conformance_tests!`](crate::run_store_conformance_tests),
//! [`heartbeat_store_conformance_tests!`](crate::heartbeat_store_conformance_tests)).
//!
//! ```
//! use stepq_runs::conformance::RunStoreFactory;
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
//!
//! stepq_runs::run_store_conformance_tests!(in_memory, Memory);
//! # fn main() {
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! // Or every check in one go:
//! stepq_runs::conformance::run_run_store_suite(&Memory).await;
//! # });
//! # }
//! ```
//!
//! [`RunStore`]: crate::RunStore
//! [`HeartbeatStore`]: crate::HeartbeatStore

mod delete_run;
mod heartbeat_store;
mod lease_store;
mod run_filter;
mod run_store;

use std::time::Duration;

pub use delete_run::{
    check_delete_run_racing_a_resume_has_one_winner,
    check_delete_run_refuses_non_terminal_and_changed_runs,
    check_delete_run_removes_the_record_and_its_log,
};
pub use heartbeat_store::{
    check_heartbeats_classify_live_and_lost, check_heartbeats_put_replace_list_remove,
    check_heartbeats_reject_invalid_ids, check_heartbeats_survive_a_new_store_instance,
    run_heartbeat_store_suite, HeartbeatStoreFactory,
};
pub use lease_store::{
    check_a_released_slot_is_free_again, check_a_renewed_lease_is_kept,
    check_an_expired_lease_is_taken_over, check_concurrent_acquires_never_share_a_slot,
    check_leases_reject_bad_names_and_zero_limits, check_leases_survive_a_new_store_instance,
    check_leases_up_to_the_limit_and_no_more, run_lease_store_suite, LeaseStoreFactory,
};
pub use run_filter::check_list_runs_matching_filters_newest_first;
pub use run_store::{
    check_concurrent_appends_lose_nothing, check_concurrent_terminal_transitions_have_one_winner,
    check_create_get_and_list_newest_first, check_data_survives_a_new_store_instance,
    check_duplicate_create_is_rejected, check_events_read_from_a_cursor,
    check_follow_ends_when_run_is_terminal, check_lifecycle_transitions_are_validated,
    check_unknown_and_invalid_ids_are_errors, check_wait_wakes_on_append, run_run_store_suite,
    RunStoreFactory,
};

/// Longest any single step of a case may take before the case fails (a hang is a failure).
pub const CASE_STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// The checks of the run store suite, handed to `$callback` (internal).
#[doc(hidden)]
#[macro_export]
macro_rules! __run_store_checks {
    ($callback:ident $($args:tt)*) => {
        $crate::$callback! { $($args)* [
            check_create_get_and_list_newest_first,
            check_list_runs_matching_filters_newest_first,
            check_duplicate_create_is_rejected,
            check_unknown_and_invalid_ids_are_errors,
            check_lifecycle_transitions_are_validated,
            check_concurrent_terminal_transitions_have_one_winner,
            check_concurrent_appends_lose_nothing,
            check_events_read_from_a_cursor,
            check_wait_wakes_on_append,
            check_follow_ends_when_run_is_terminal,
            check_data_survives_a_new_store_instance,
            check_delete_run_removes_the_record_and_its_log,
            check_delete_run_refuses_non_terminal_and_changed_runs,
            check_delete_run_racing_a_resume_has_one_winner,
        ] }
    };
}

/// The checks of the heartbeat store suite, handed to `$callback` (internal).
#[doc(hidden)]
#[macro_export]
macro_rules! __heartbeat_store_checks {
    ($callback:ident $($args:tt)*) => {
        $crate::$callback! { $($args)* [
            check_heartbeats_put_replace_list_remove,
            check_heartbeats_classify_live_and_lost,
            check_heartbeats_reject_invalid_ids,
            check_heartbeats_survive_a_new_store_instance,
        ] }
    };
}

/// One `#[tokio::test]` (multi-threaded runtime) per check of the [`RunStore`] suite, named
/// after the check, in a module `$module`, each with the [`RunStoreFactory`] `$factory` (an
/// expression evaluated inside the module, once per test; it may `.await`).
///
/// Attributes before the module name go on every test (`#[ignore = "localstack"]`);
/// `except [check_..., ...]` leaves out checks that cannot apply to the store by design (say
/// why in a comment). The caller's crate needs `tokio` as a dev-dependency. See the
/// [module docs](crate::conformance) for an example.
///
/// [`RunStore`]: crate::RunStore
/// [`RunStoreFactory`]: crate::conformance::RunStoreFactory
#[macro_export]
macro_rules! run_store_conformance_tests {
    ($(#[$attr:meta])* $module:ident, $factory:expr $(, except [$($skip:ident),* $(,)?])? $(,)?) => {
        $crate::__run_store_checks! {
            __conformance_tests [$crate::conformance] {$(#[$attr])*} $module; $factory;
            [$($($skip),*)?]
        }
    };
}

/// One `#[tokio::test]` (multi-threaded runtime) per check of the [`HeartbeatStore`] suite,
/// in a module `$module`, each with the [`HeartbeatStoreFactory`] `$factory`; the same shape
/// as [`run_store_conformance_tests!`](crate::run_store_conformance_tests).
///
/// [`HeartbeatStore`]: crate::HeartbeatStore
/// [`HeartbeatStoreFactory`]: crate::conformance::HeartbeatStoreFactory
#[macro_export]
macro_rules! heartbeat_store_conformance_tests {
    ($(#[$attr:meta])* $module:ident, $factory:expr $(, except [$($skip:ident),* $(,)?])? $(,)?) => {
        $crate::__heartbeat_store_checks! {
            __conformance_tests [$crate::conformance] {$(#[$attr])*} $module; $factory;
            [$($($skip),*)?]
        }
    };
}

/// The checks of the lease store suite, handed to `$callback` (internal).
#[doc(hidden)]
#[macro_export]
macro_rules! __lease_store_checks {
    ($callback:ident $($args:tt)*) => {
        $crate::$callback! { $($args)* [
            check_leases_up_to_the_limit_and_no_more,
            check_a_released_slot_is_free_again,
            check_an_expired_lease_is_taken_over,
            check_a_renewed_lease_is_kept,
            check_concurrent_acquires_never_share_a_slot,
            check_leases_reject_bad_names_and_zero_limits,
            check_leases_survive_a_new_store_instance,
        ] }
    };
}

/// One `#[tokio::test]` (multi-threaded runtime) per check of the [`LeaseStore`] suite, in
/// a module `$module`, each with the [`LeaseStoreFactory`] `$factory`; the same shape as
/// [`run_store_conformance_tests!`](crate::run_store_conformance_tests).
///
/// [`LeaseStore`]: crate::LeaseStore
/// [`LeaseStoreFactory`]: crate::conformance::LeaseStoreFactory
#[macro_export]
macro_rules! lease_store_conformance_tests {
    ($(#[$attr:meta])* $module:ident, $factory:expr $(, except [$($skip:ident),* $(,)?])? $(,)?) => {
        $crate::__lease_store_checks! {
            __conformance_tests [$crate::conformance] {$(#[$attr])*} $module; $factory;
            [$($($skip),*)?]
        }
    };
}
