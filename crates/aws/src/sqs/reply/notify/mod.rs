//! The worker half of result notification: what sends notifications.
//!
//! - [`backend`]: [`NotifyingResultBackend`], the decorator over a durable result backend that
//!   notifies the `reply_to` queue after storing a result (or, reply-only, instead of storing
//!   it, falling back to the durable store when the send fails), with its stats; it is also
//!   the orchestrator's result backend, whose waiting lives in the wait half.
//! - [`batcher`]: the notifier, sharing one SendMessageBatch among notifications due at the
//!   same moment.

pub(super) mod backend;
mod batcher;

pub use backend::{NotifyStats, NotifyingResultBackend};
