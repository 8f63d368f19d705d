//! The fan-out channel's settings, [`SqsFanoutOptions`], with their defaults and their check.

use std::time::Duration;

use stepq_cancel::error::CancelError;

/// Settings of the SQS fan-out channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqsFanoutOptions {
    /// Long-poll wait of an inbox receive, 1-20 seconds (default 20: an idle worker makes
    /// three requests a minute, and a notice is still received the moment it arrives).
    pub wait_time_seconds: u32,
    /// How long an inbox keeps an unreceived notice (default 1 h; the marker outlives it).
    pub inbox_retention: Duration,
    /// After subscribing, re-read the markers once this much later (default 60 s), since a
    /// brand-new inbox may take a moment to show in ListQueues and a cancel sent meanwhile
    /// would miss it. `None` skips the re-read.
    pub resync_after: Option<Duration>,
    /// How often a worker re-tags its inbox as alive (default 10 min).
    pub inbox_heartbeat: Duration,
    /// Inboxes not re-tagged for this long are deleted by the next worker that subscribes
    /// (default 1 h; must exceed `inbox_heartbeat`).
    pub stale_inbox_after: Duration,
    /// Inboxes sent to at once by a cancel (default 16).
    pub send_concurrency: usize,
}

impl Default for SqsFanoutOptions {
    fn default() -> Self {
        SqsFanoutOptions {
            wait_time_seconds: 20,
            inbox_retention: Duration::from_secs(3600),
            resync_after: Some(Duration::from_secs(60)),
            inbox_heartbeat: Duration::from_secs(600),
            stale_inbox_after: Duration::from_secs(3600),
            send_concurrency: 16,
        }
    }
}

impl SqsFanoutOptions {
    /// Checks the settings; the error names the bad field.
    pub fn validate(&self) -> Result<(), CancelError> {
        let bad = |field: &'static str, reason: String| Err(CancelError::Config { field, reason });
        if !(1..=20).contains(&self.wait_time_seconds) {
            return bad(
                "wait_time_seconds",
                format!("{} is out of range 1-20", self.wait_time_seconds),
            );
        }
        let retention = self.inbox_retention.as_secs();
        if !(60..=1_209_600).contains(&retention) {
            return bad(
                "inbox_retention",
                format!("{retention} s is out of SQS's range 60 s - 14 days"),
            );
        }
        if self.inbox_heartbeat.is_zero() {
            return bad("inbox_heartbeat", "must be positive".into());
        }
        if self.stale_inbox_after <= self.inbox_heartbeat {
            return bad(
                "stale_inbox_after",
                format!(
                    "{:?} must exceed inbox_heartbeat ({:?}), or live inboxes look stale",
                    self.stale_inbox_after, self.inbox_heartbeat
                ),
            );
        }
        if self.send_concurrency == 0 {
            return bad("send_concurrency", "must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqs::cancel_channel::tests::client;
    use crate::sqs::cancel_channel::SqsFanoutChannel;

    #[test]
    fn bad_settings_are_named() {
        let url = "http://127.0.0.1:4566/000000000000/q-cancels";
        type Edit = fn(&mut SqsFanoutOptions);
        let cases: &[(Edit, &str)] = &[
            (|o| o.wait_time_seconds = 0, "wait_time_seconds"),
            (|o| o.wait_time_seconds = 21, "wait_time_seconds"),
            (
                |o| o.inbox_retention = Duration::from_secs(59),
                "inbox_retention",
            ),
            (|o| o.inbox_heartbeat = Duration::ZERO, "inbox_heartbeat"),
            (
                |o| o.stale_inbox_after = o.inbox_heartbeat,
                "stale_inbox_after",
            ),
            (|o| o.send_concurrency = 0, "send_concurrency"),
        ];
        for (edit, field) in cases {
            let mut o = SqsFanoutOptions::default();
            edit(&mut o);
            match SqsFanoutChannel::new(client(), url, o) {
                Err(CancelError::Config { field: f, .. }) => assert_eq!(f, *field),
                other => panic!("{field}: expected a config error, got {other:?}"),
            }
        }
        let long = format!("http://h/1/{}", "q".repeat(70));
        assert!(matches!(
            SqsFanoutChannel::new(client(), &long, SqsFanoutOptions::default()),
            Err(CancelError::Config {
                field: "cancel_queue_url",
                ..
            })
        ));
        assert!(matches!(
            SqsFanoutChannel::new(client(), "not-a-url", SqsFanoutOptions::default()),
            Err(CancelError::Config {
                field: "cancel_queue_url",
                ..
            })
        ));
    }
}
