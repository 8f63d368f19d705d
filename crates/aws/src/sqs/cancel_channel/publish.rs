//! Publishing a cancel: the `ListQueues(prefix)` fan-out that finds every worker inbox (and
//! the shared cancel queue, if someone created it) and sends the notice to each at once.

use std::sync::Arc;

use futures::StreamExt;
use stepq_broker::{BrokerError, ServiceError};
use stepq_cancel::error::CancelError;

use super::Inner;
use crate::sqs::error::sqs_service_error;
use crate::sqs::owned_queue::{self, is_missing_queue, queue_name};

impl Inner {
    /// URLs of every queue a cancel is sent to: the inboxes and, if it exists, the shared
    /// cancel queue (see [`SqsFanoutChannel::targets`](super::SqsFanoutChannel::targets)).
    pub(super) async fn targets(&self) -> Result<Vec<String>, CancelError> {
        let mut urls = owned_queue::list_with_prefix(&self.client, &self.base)
            .await
            .map_err(BrokerError::from)?;
        let inbox_start = format!("{}-", self.base);
        let fifo_name = format!("{}.fifo", self.base);
        urls.retain(|url| {
            let name = queue_name(url);
            name == self.base || name == fifo_name || name.starts_with(&inbox_start)
        });
        Ok(urls)
    }

    /// Sends one notice to the queue at `url` (a FIFO one with the task as its group).
    async fn send(&self, url: &str, task_id: &str, body: &str) -> Result<(), ServiceError> {
        let mut request = self.client.send_message().queue_url(url).message_body(body);
        if queue_name(url).ends_with(".fifo") {
            request = request
                .message_group_id(task_id)
                .message_deduplication_id(uuid::Uuid::new_v4().to_string());
        }
        request
            .send()
            .await
            .map_err(|e| sqs_service_error("SendMessage", e))?;
        Ok(())
    }

    /// Sends the notice to every inbox at once (at most `send_concurrency` in flight). An
    /// inbox deleted in between is skipped; any other failure is
    /// [`CancelError::PartialWakeUp`] after every inbox was tried.
    pub(super) async fn publish(
        self: &Arc<Self>,
        task_id: &str,
        body: &[u8],
    ) -> Result<usize, CancelError> {
        let body: Arc<str> = String::from_utf8_lossy(body).into();
        let targets = self.targets().await?;
        let total = targets.len();
        let sends = targets.into_iter().map(|url| {
            let inner = Arc::clone(self);
            let (task_id, body) = (task_id.to_string(), Arc::clone(&body));
            async move { inner.send(&url, &task_id, &body).await }
        });
        let results: Vec<Result<(), ServiceError>> = futures::stream::iter(sends)
            .buffer_unordered(self.options.send_concurrency)
            .collect()
            .await;
        let mut reached = 0;
        let mut first = None;
        for result in results {
            match result {
                Ok(()) => reached += 1,
                Err(e) if is_missing_queue(&e) => {}
                Err(e) => {
                    tracing::warn!(task_id, error = %e, "could not wake a worker inbox");
                    first.get_or_insert(e);
                }
            }
        }
        match first {
            None => Ok(reached),
            Some(first) => Err(CancelError::PartialWakeUp {
                task_id: task_id.to_string(),
                reached,
                total,
                first: Box::new(first.into()),
            }),
        }
    }
}
