//! In-memory broker: in-process, many producers and consumers, SQS-like visibility.

use std::time::Duration;

/// An in-process broker. Unacked deliveries come back after the visibility timeout, a nack
/// makes a delivery visible again at once.
pub struct InMemoryBroker {
    visibility_timeout: Duration,
}

impl InMemoryBroker {
    /// A broker with a 30 s visibility timeout.
    pub fn new() -> Self {
        todo!()
    }
    /// A broker with the given visibility timeout.
    pub fn with_visibility_timeout(visibility_timeout: Duration) -> Self {
        todo!()
    }
    /// Messages waiting to be delivered (visible).
    pub fn pending(&self) -> usize {
        todo!()
    }
    /// Messages delivered but not yet acked.
    pub fn in_flight(&self) -> usize {
        todo!()
    }
}
