//! What a receiver counts: the public [`ReceiverStats`] a stopped receiver returns, and the
//! atomic [`Counters`] its delivery tasks bump while it runs.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts of what a receiver did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// Tasks that ran and succeeded.
    pub succeeded: u64,
    /// Tasks that ran and failed, plus rejected messages.
    pub failed: u64,
    /// Deliveries returned to the queue on shutdown.
    pub released: u64,
    /// Results that could not be saved; their deliveries were nacked so the task runs again.
    pub unsaved: u64,
    /// Errors of observing middleware hooks (`post_execute`, `on_error`, `post_save`,
    /// `shutdown`); each was logged. They do not change a task's outcome.
    pub hook_errors: u64,
    /// Acks that failed after the result was saved (the message will be delivered again).
    pub ack_errors: u64,
    /// Messages moved to the broker's dead-letter place (delivered too often, malformed, or
    /// naming no registered task).
    pub dead_lettered: u64,
}

/// The running counts behind [`ReceiverStats`], shared by every delivery's task.
#[derive(Default)]
pub(super) struct Counters {
    /// See [`ReceiverStats::succeeded`].
    pub(super) succeeded: AtomicU64,
    /// See [`ReceiverStats::failed`].
    pub(super) failed: AtomicU64,
    /// See [`ReceiverStats::released`].
    pub(super) released: AtomicU64,
    /// See [`ReceiverStats::unsaved`].
    pub(super) unsaved: AtomicU64,
    /// See [`ReceiverStats::hook_errors`].
    pub(super) hook_errors: AtomicU64,
    /// See [`ReceiverStats::ack_errors`].
    pub(super) ack_errors: AtomicU64,
    /// See [`ReceiverStats::dead_lettered`].
    pub(super) dead_lettered: AtomicU64,
}

impl Counters {
    /// Adds one to `counter`.
    pub(super) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    pub(super) fn snapshot(&self) -> ReceiverStats {
        ReceiverStats {
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            released: self.released.load(Ordering::Relaxed),
            unsaved: self.unsaved.load(Ordering::Relaxed),
            hook_errors: self.hook_errors.load(Ordering::Relaxed),
            ack_errors: self.ack_errors.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_reports_each_counter_under_its_own_name() {
        let counters = Counters::default();
        let bump =
            |counter: &AtomicU64, times: usize| (0..times).for_each(|_| Counters::bump(counter));
        bump(&counters.succeeded, 1);
        bump(&counters.failed, 2);
        bump(&counters.released, 3);
        bump(&counters.unsaved, 4);
        bump(&counters.hook_errors, 5);
        bump(&counters.ack_errors, 6);
        bump(&counters.dead_lettered, 7);
        let expected = ReceiverStats {
            succeeded: 1,
            failed: 2,
            released: 3,
            unsaved: 4,
            hook_errors: 5,
            ack_errors: 6,
            dead_lettered: 7,
        };
        assert_eq!(counters.snapshot(), expected);
        assert_eq!(Counters::default().snapshot(), ReceiverStats::default());
    }
}
