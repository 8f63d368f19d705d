//! [`Backoff`]: the pauses of a bounded retry loop.

use std::time::Duration;

use tokio::time::Instant;

/// Pauses between retries of one operation: from `first`, doubling up to `max`, until the
/// next pause would end more than `give_up_after` after the backoff began (on tokio's clock,
/// so a paused test clock bounds it too).
///
/// ```
/// use std::time::Duration;
/// use stepq_core::Backoff;
///
/// let mut backoff = Backoff::new(
///     Duration::from_millis(100),
///     Duration::from_millis(400),
///     Duration::from_secs(60),
/// );
/// assert_eq!(backoff.next_delay(), Some(Duration::from_millis(100)));
/// assert_eq!(backoff.next_delay(), Some(Duration::from_millis(200)));
/// assert_eq!(backoff.next_delay(), Some(Duration::from_millis(400)));
/// assert_eq!(backoff.next_delay(), Some(Duration::from_millis(400)));
/// // No retry at all:
/// assert_eq!(Backoff::new(Duration::from_millis(1), Duration::from_millis(1), Duration::ZERO).next_delay(), None);
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
    give_up_after: Duration,
    started: Instant,
}

impl Backoff {
    /// A backoff starting now.
    pub fn new(first: Duration, max: Duration, give_up_after: Duration) -> Self {
        Backoff {
            next: first,
            max,
            give_up_after,
            started: Instant::now(),
        }
    }

    /// The pause before the next retry, or `None` once retrying is to stop.
    pub fn next_delay(&mut self) -> Option<Duration> {
        let delay = self.next;
        if self.started.elapsed() + delay > self.give_up_after {
            return None;
        }
        self.next = (self.next * 2).min(self.max);
        Some(delay)
    }
}
