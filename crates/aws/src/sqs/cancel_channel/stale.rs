//! Stale inbox cleanup: a worker that died without stopping leaves its inbox behind; a
//! worker subscribing deletes the inboxes whose `stepq:alive-at` tag is older than
//! [`SqsFanoutOptions::stale_inbox_after`](super::SqsFanoutOptions::stale_inbox_after).

use super::{Inner, INBOX_ROLE};
use crate::sqs::owned_queue;

impl Inner {
    /// Deletes inboxes (other than `own`) whose alive tag is older than the stale limit.
    pub(super) async fn prune_stale_inboxes(&self, own: &str) {
        let urls = match self.targets().await {
            Ok(urls) => urls,
            Err(e) => {
                tracing::warn!(error = %e, "could not list cancel inboxes to prune stale ones");
                return;
            }
        };
        let stale_after = self.options.stale_inbox_after;
        owned_queue::prune_stale(&self.client, urls, INBOX_ROLE, stale_after, Some(own)).await;
    }
}
