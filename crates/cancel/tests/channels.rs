//! The `CancelChannel` conformance suite (one test per check) against the in-process
//! broadcast channel; the SQS fan-out channel runs it in `stepq-aws`.

use stepq_cancel::conformance::{self, CancelChannelFactory};
use stepq_cancel::BroadcastChannel;

/// Broadcast channels keeping `capacity` notices per lagging subscriber.
struct Broadcast {
    capacity: usize,
}

impl CancelChannelFactory for Broadcast {
    type Channel = BroadcastChannel;
    async fn fresh(&self) -> BroadcastChannel {
        BroadcastChannel::with_capacity(self.capacity)
    }
    /// Clones are handles on the same channel (in-process only, by design).
    async fn reopen(&self, channel: &BroadcastChannel) -> BroadcastChannel {
        channel.clone()
    }
    /// One notice more than a subscriber that reads nothing can keep: it falls behind.
    async fn lose_notices(&self, channel: &BroadcastChannel) {
        for i in 0..=self.capacity {
            channel.send_raw(format!("lost-{i}"));
        }
    }
}

stepq_cancel::cancel_channel_conformance_tests!(broadcast, Broadcast { capacity: 8 });

/// The aggregate entry point runs every check, on a single-threaded runtime too.
#[tokio::test]
async fn whole_suite_passes_on_a_single_threaded_runtime() {
    conformance::run_cancel_channel_suite(&Broadcast { capacity: 8 }).await;
}

/// The suite must catch a broken channel: one that says its notices reached nobody.
mod catches_a_broken_channel {
    use async_trait::async_trait;
    use stepq_cancel::{CancelChannel, CancelError, ChannelStream};
    use tokio_util::sync::CancellationToken;

    use super::*;

    /// A broadcast channel whose publish reports no subscriber reached.
    #[derive(Clone, Default)]
    struct Uncounted(BroadcastChannel);

    #[async_trait]
    impl CancelChannel for Uncounted {
        async fn publish(&self, task_id: &str, body: &[u8]) -> Result<usize, CancelError> {
            self.0.publish(task_id, body).await.map(|_| 0)
        }
        async fn subscribe(
            &self,
            subscriber: &str,
            stop: CancellationToken,
        ) -> Result<ChannelStream, CancelError> {
            self.0.subscribe(subscriber, stop).await
        }
        fn kind(&self) -> &'static str {
            "uncounted"
        }
    }

    struct UncountedFactory;

    impl CancelChannelFactory for UncountedFactory {
        type Channel = Uncounted;
        async fn fresh(&self) -> Uncounted {
            Uncounted::default()
        }
        async fn reopen(&self, channel: &Uncounted) -> Uncounted {
            channel.clone()
        }
        async fn lose_notices(&self, _channel: &Uncounted) {}
    }

    #[tokio::test]
    #[should_panic(expected = "a publish reaches both subscribers")]
    async fn a_wrong_reach_count_fails_the_publish_check() {
        conformance::check_publish_reaches_every_current_subscriber(&UncountedFactory).await;
    }
}
