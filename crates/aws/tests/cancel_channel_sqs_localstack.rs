//! The `CancelChannel` conformance suite (one test per check) against the SQS fan-out channel
//! on LocalStack: every channel fans out under a fresh, randomly named cancel queue, so checks
//! never see each other's inboxes. Run with `cargo xtask localstack-test -- -p stepq-aws`.

mod common;

use std::time::Duration;

use common::LocalStackEnv;
use stepq_aws::{SqsFanoutChannel, SqsFanoutOptions};
use stepq_cancel::conformance::CancelChannelFactory;

/// Fan-out channels on LocalStack.
struct SqsChannels {
    env: LocalStackEnv,
    sqs: aws_sdk_sqs::Client,
}

impl SqsChannels {
    async fn connect() -> Self {
        let env = LocalStackEnv::from_env();
        let sqs = aws_sdk_sqs::Client::new(&env.sdk_config().await);
        SqsChannels { env, sqs }
    }
}

impl CancelChannelFactory for SqsChannels {
    type Channel = SqsFanoutChannel;

    /// A channel whose inboxes are named after a fresh cancel queue name (the queue itself
    /// need not exist). No settle-window resync (it would only add resyncs, which the checks
    /// tolerate), and 1 s receives so a deleted inbox is noticed quickly.
    async fn fresh(&self) -> SqsFanoutChannel {
        let name = format!(
            "stepq-cc-{}-cancels",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let url = format!("{}/{name}", self.env.queue_url_prefix());
        let options = SqsFanoutOptions {
            resync_after: None,
            wait_time_seconds: 1,
            ..SqsFanoutOptions::default()
        };
        SqsFanoutChannel::new(self.sqs.clone(), &url, options).unwrap()
    }

    /// What another process would open: a channel on the same cancel queue URL.
    async fn reopen(&self, channel: &SqsFanoutChannel) -> SqsFanoutChannel {
        SqsFanoutChannel::new(
            self.sqs.clone(),
            channel.cancel_queue_url(),
            channel.options().clone(),
        )
        .unwrap()
    }

    /// Deletes every inbox under its worker: notices sent until the worker notices go nowhere.
    async fn lose_notices(&self, channel: &SqsFanoutChannel) {
        // Past the window in which a new inbox that does not answer is waited for (10 s), so
        // the subscription takes the deletion for what it is and recreates its inbox.
        tokio::time::sleep(Duration::from_secs(11)).await;
        let inboxes = channel.targets().await.unwrap();
        assert!(!inboxes.is_empty(), "the subscriber has an inbox");
        for inbox in inboxes {
            self.sqs
                .delete_queue()
                .queue_url(&inbox)
                .send()
                .await
                .unwrap();
        }
    }
}

stepq_cancel::cancel_channel_conformance_tests!(
    #[ignore = "localstack"]
    sqs_fanout,
    SqsChannels::connect().await
);
