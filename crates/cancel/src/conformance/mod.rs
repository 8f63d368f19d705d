//! The suites every cancellation backend runs against itself (feature `conformance`), in the
//! shape every suite of the workspace has: a factory per backend kind (`fresh()` and
//! `reopen()`), public `check_*` functions that panic with a message naming the broken
//! promise, one `run_*_suite` function each, and a macro each expanding to one
//! `#[tokio::test]` per check, so a backend gets one named test per contract clause.
//!
//! - The [`CancelStore`](crate::CancelStore) suite: [`CancelStoreFactory`],
//!   [`run_cancel_store_suite`],
//!   [`cancel_store_conformance_tests!`](crate::cancel_store_conformance_tests) (in memory,
//!   local directory, S3).
//! - The [`CancelChannel`](crate::CancelChannel) suite: [`CancelChannelFactory`],
//!   [`run_cancel_channel_suite`],
//!   [`cancel_channel_conformance_tests!`](crate::cancel_channel_conformance_tests)
//!   (broadcast in memory, SQS fan-out on LocalStack).
//! - A fleet of real receivers with cancel listeners ([`RunningWorker`], [`Tasks`],
//!   [`register_tasks`]) for the end-to-end tests: a cancel reaches the worker running the
//!   task, and no other, on every channel.
//!
//! ```
//! use stepq_cancel::conformance::{CancelChannelFactory, CancelStoreFactory};
//! use stepq_cancel::{BroadcastChannel, InMemoryCancelStore};
//!
//! struct Memory;
//! impl CancelStoreFactory for Memory {
//!     type Store = InMemoryCancelStore;
//!     async fn fresh(&self) -> InMemoryCancelStore {
//!         InMemoryCancelStore::new()
//!     }
//!     async fn reopen(&self, store: &InMemoryCancelStore) -> InMemoryCancelStore {
//!         store.clone()
//!     }
//! }
//! // Markers are kept decoded in memory: it cannot hold an unreadable one.
//! stepq_cancel::cancel_store_conformance_tests!(in_memory, Memory, except [check_corrupt_marker]);
//!
//! struct Broadcast;
//! impl CancelChannelFactory for Broadcast {
//!     type Channel = BroadcastChannel;
//!     async fn fresh(&self) -> BroadcastChannel {
//!         BroadcastChannel::with_capacity(4)
//!     }
//!     async fn reopen(&self, channel: &BroadcastChannel) -> BroadcastChannel {
//!         channel.clone()
//!     }
//!     async fn lose_notices(&self, channel: &BroadcastChannel) {
//!         for _ in 0..5 {
//!             channel.send_raw("lost");
//!         }
//!     }
//! }
//! stepq_cancel::cancel_channel_conformance_tests!(broadcast, Broadcast);
//! # fn main() {}
//! ```

mod channel;
mod fleet;
mod store;

pub use channel::{
    check_a_stopped_subscriber_gets_nothing_more, check_kind_is_a_short_stable_name,
    check_publish_reaches_every_current_subscriber, check_resync_where_notices_may_be_lost,
    run_cancel_channel_suite, CancelChannelFactory,
};
pub use fleet::{
    await_starts, message, register_tasks, tasks, CapturedLogs, RunningWorker, Started, Tasks, WAIT,
};
pub use store::{
    check_corrupt_marker, check_delete, check_invalid_task_ids,
    check_markers_survive_a_new_store_instance, check_put_get_list, check_put_overwrites,
    check_starts_empty, run_cancel_store_suite, CancelStoreFactory,
};

/// The checks of the cancel store suite, handed to `$callback` (internal).
#[doc(hidden)]
#[macro_export]
macro_rules! __cancel_store_checks {
    ($callback:ident $($args:tt)*) => {
        $crate::$callback! { $($args)* [
            check_starts_empty,
            check_put_get_list,
            check_put_overwrites,
            check_delete,
            check_invalid_task_ids,
            check_markers_survive_a_new_store_instance,
            check_corrupt_marker,
        ] }
    };
}

/// The checks of the cancel channel suite, handed to `$callback` (internal).
#[doc(hidden)]
#[macro_export]
macro_rules! __cancel_channel_checks {
    ($callback:ident $($args:tt)*) => {
        $crate::$callback! { $($args)* [
            check_publish_reaches_every_current_subscriber,
            check_a_stopped_subscriber_gets_nothing_more,
            check_resync_where_notices_may_be_lost,
            check_kind_is_a_short_stable_name,
        ] }
    };
}

/// One `#[tokio::test]` (multi-threaded runtime) per check of the
/// [`CancelStore`](crate::CancelStore) suite, named after the check, in a module `$module`,
/// each with the [`CancelStoreFactory`] `$factory` (an expression evaluated inside the
/// module, once per test; it may `.await`).
///
/// Attributes before the module name go on every test (`#[ignore = "localstack"]`);
/// `except [check_..., ...]` leaves out checks that cannot apply to the store by design (say
/// why in a comment). The caller's crate needs `tokio` as a dev-dependency. See the
/// [module docs](crate::conformance) for an example.
#[macro_export]
macro_rules! cancel_store_conformance_tests {
    ($(#[$attr:meta])* $module:ident, $factory:expr $(, except [$($skip:ident),* $(,)?])? $(,)?) => {
        $crate::__cancel_store_checks! {
            __conformance_tests [$crate::conformance] {$(#[$attr])*} $module; $factory;
            [$($($skip),*)?]
        }
    };
}

/// One `#[tokio::test]` (multi-threaded runtime) per check of the
/// [`CancelChannel`](crate::CancelChannel) suite, in a module `$module`, each with the
/// [`CancelChannelFactory`] `$factory`; the same shape as
/// [`cancel_store_conformance_tests!`](crate::cancel_store_conformance_tests).
#[macro_export]
macro_rules! cancel_channel_conformance_tests {
    ($(#[$attr:meta])* $module:ident, $factory:expr $(, except [$($skip:ident),* $(,)?])? $(,)?) => {
        $crate::__cancel_channel_checks! {
            __conformance_tests [$crate::conformance] {$(#[$attr])*} $module; $factory;
            [$($($skip),*)?]
        }
    };
}
