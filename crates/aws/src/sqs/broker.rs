//! `SqsBroker`: the [`Broker`] on an SQS queue.

use std::sync::{Arc, Mutex};

use crate::s3::head_bucket;
use crate::timeouts;
use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sqs::types::QueueAttributeName;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::config::SqsConfig;
use super::error::sqs_error;
use super::send::{prepare, send_batch, send_one, SendSettings};
use stepq_broker::broker::{Broker, DeliveryStream, Demand};
use stepq_broker::error::BrokerError;
use stepq_broker::message::TaskMessage;

/// Approximate message counts of a queue, as SQS reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueDepth {
    /// `ApproximateNumberOfMessages`: waiting to be received.
    pub visible: u64,
    /// `ApproximateNumberOfMessagesNotVisible`: received, not yet deleted (in flight).
    pub not_visible: u64,
    /// `ApproximateNumberOfMessagesDelayed`: sent with a delay that has not run out.
    pub delayed: u64,
}

/// State shared by the broker, its listeners and its deliveries.
pub(crate) struct Inner {
    pub sqs: aws_sdk_sqs::Client,
    pub s3: aws_sdk_s3::Client,
    pub config: SqsConfig,
    pub settings: SendSettings,
    /// Background releases of stopped listeners (their last long poll and buffered messages).
    pub drains: Mutex<Vec<JoinHandle<()>>>,
    /// The default dead-letter queue's URL, once it is known to exist.
    pub dead_letter_queue: std::sync::OnceLock<String>,
}

impl Inner {
    /// Keeps a drain task so [`Broker::shutdown`] can wait for it.
    pub(super) fn track_drain(&self, handle: JoinHandle<()>) {
        let mut drains = self.drains.lock().unwrap_or_else(|p| p.into_inner());
        drains.retain(|h| !h.is_finished());
        drains.push(handle);
    }
}

/// A [`Broker`] on an AWS SQS queue (standard or FIFO), with S3 extended payloads.
///
/// - sends one message with SendMessage and several with SendMessageBatch (10 per call);
/// - receives up to `max_number_of_messages` per long poll, and never more than the consumer can
///   start ([`Broker::listen_with_demand`]; a receiver passes its free slots), acks with DeleteMessage(Batch) (acks
///   pending at the same moment share a call), nacks by making the message visible at once, and
///   extends visibility for heartbeats;
/// - on stop, the stream ends at once; the outstanding long poll finishes in the background and
///   whatever it returns, with anything received but not yielded, is made visible again at once.
///   [`Broker::shutdown`] waits for that.
///
/// ```no_run
/// # async fn demo() -> Result<(), stepq_broker::BrokerError> {
/// use stepq_aws::sqs::{SqsBroker, SqsConfig};
/// use stepq_broker::{Broker, TaskMessage};
///
/// let broker = SqsBroker::connect(SqsConfig::new(
///     "https://sqs.us-east-1.amazonaws.com/123456789012/stepq",
/// ))
/// .await?;
/// broker.startup().await?; // checks the queue exists
/// broker.kick(&TaskMessage::new("hello")).await?;
/// println!("{:?}", broker.queue_depth().await?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqsBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsBroker")
            .field("queue_url", &self.inner.config.queue_url)
            .field("fifo", &self.inner.settings.fifo)
            .field("fair", &self.inner.settings.fair)
            .finish()
    }
}

impl SqsBroker {
    /// Validates `config`, loads AWS settings through aws-config's chain (with the config's
    /// region and endpoint overrides) and builds the broker. Makes no request.
    pub async fn connect(config: SqsConfig) -> Result<Self, BrokerError> {
        config.validate()?;
        let sdk = Self::load_sdk_config(&config).await;
        Self::from_sdk_config(config, &sdk)
    }

    /// AWS settings for `config`: aws-config's default chain (credentials, region, profile),
    /// the config's region and endpoint overrides, standard retries with backoff and the
    /// timeouts of [`crate::timeouts`] (every call to AWS ends within a known time).
    pub async fn load_sdk_config(config: &SqsConfig) -> SdkConfig {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(timeouts::retry_config(timeouts::AWS_MAX_ATTEMPTS))
            .timeout_config(timeouts::client_timeouts());
        if let Some(region) = &config.region_name {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &config.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        loader.load().await
    }

    /// Builds the broker from AWS settings already loaded; `config`'s region and endpoint
    /// override them. Without any region, the region of a standard queue URL is used; failing
    /// that, [`BrokerError::Config`] names `region_name`. Makes no request.
    pub fn from_sdk_config(config: SqsConfig, sdk: &SdkConfig) -> Result<Self, BrokerError> {
        config.validate()?;
        let region = config
            .region_name
            .clone()
            .map(Region::new)
            .or_else(|| sdk.region().cloned())
            .or_else(|| config.region_from_url().map(Region::new))
            .ok_or_else(|| BrokerError::Config {
                field: "region_name",
                reason: "no AWS region: set region_name, AWS_REGION or AWS_DEFAULT_REGION".into(),
            })?;
        let endpoint = config
            .endpoint_url
            .clone()
            .or_else(|| sdk.endpoint_url().map(str::to_string));

        let mut sqs = aws_sdk_sqs::config::Builder::from(sdk).region(region.clone());
        let mut s3 = aws_sdk_s3::config::Builder::from(sdk)
            .region(region)
            .force_path_style(endpoint.is_some());
        if let Some(endpoint) = &endpoint {
            sqs = sqs.endpoint_url(endpoint);
            s3 = s3.endpoint_url(endpoint);
        }
        let fifo = config.is_fifo();
        let settings = SendSettings {
            fifo,
            fair: config.is_fair_queue(),
            groups_per_run: config.config_source.groups_per_run,
            dedup_by_task_id: config.config_source.use_task_id_for_deduplication,
            delay_seconds: config.config_source.delay_seconds,
            threshold: config.config_source.payload_size_threshold,
            bucket: config.config_source.s3_extended_bucket_name.clone(),
        };
        Ok(SqsBroker {
            inner: Arc::new(Inner {
                sqs: aws_sdk_sqs::Client::from_conf(sqs.build()),
                s3: aws_sdk_s3::Client::from_conf(s3.build()),
                config,
                settings,
                drains: Mutex::new(Vec::new()),
                dead_letter_queue: std::sync::OnceLock::new(),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SqsConfig {
        &self.inner.config
    }

    /// Whether the queue is FIFO.
    pub fn is_fifo(&self) -> bool {
        self.inner.settings.fifo
    }

    /// Whether the queue is used as a fair queue (a message group per run).
    pub fn is_fair_queue(&self) -> bool {
        self.inner.settings.fair
    }

    /// The SQS client (for tooling: creating queues in tests, reading attributes).
    pub fn sqs_client(&self) -> &aws_sdk_sqs::Client {
        &self.inner.sqs
    }

    /// The queue's approximate message counts (for `stepq worker list`).
    pub async fn queue_depth(&self) -> Result<QueueDepth, BrokerError> {
        let out = self
            .inner
            .sqs
            .get_queue_attributes()
            .queue_url(&self.inner.config.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| sqs_error("GetQueueAttributes", e))?;
        let count = |name: QueueAttributeName| {
            out.attributes()
                .and_then(|a| a.get(&name))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(QueueDepth {
            visible: count(QueueAttributeName::ApproximateNumberOfMessages),
            not_visible: count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            delayed: count(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        })
    }

    /// Sends a raw body (not necessarily a task message) to the queue, as another producer
    /// could: for tests of malformed input and for tooling.
    pub async fn send_raw(&self, body: &str) -> Result<(), BrokerError> {
        let mut request = self
            .inner
            .sqs
            .send_message()
            .queue_url(&self.inner.config.queue_url)
            .message_body(body);
        if self.inner.settings.fifo {
            let id = uuid::Uuid::new_v4().to_string();
            request = request
                .message_group_id(id.clone())
                .message_deduplication_id(id);
        }
        request
            .send()
            .await
            .map_err(|e| sqs_error("SendMessage", e))?;
        Ok(())
    }
}

#[async_trait]
impl Broker for SqsBroker {
    /// Checks that the queue exists (and the extended payload bucket, when configured).
    async fn startup(&self) -> Result<(), BrokerError> {
        self.inner
            .sqs
            .get_queue_attributes()
            .queue_url(&self.inner.config.queue_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| sqs_error("GetQueueAttributes", e))?;
        if let Some(bucket) = &self.inner.settings.bucket {
            let setting = self
                .inner
                .config
                .payload_bucket_setting
                .as_deref()
                .unwrap_or("config_source.s3_extended_bucket_name");
            let what = format!("the `{setting}` bucket (extended payloads)");
            head_bucket(&self.inner.s3, bucket, &what).await?;
        }
        Ok(())
    }

    /// Waits until stopped listeners have released their last messages.
    async fn shutdown(&self) -> Result<(), BrokerError> {
        loop {
            let drains: Vec<JoinHandle<()>> = {
                let mut guard = self.inner.drains.lock().unwrap_or_else(|p| p.into_inner());
                guard.drain(..).collect()
            };
            if drains.is_empty() {
                return Ok(());
            }
            for drain in drains {
                if let Err(e) = drain.await {
                    tracing::warn!(error = %e, "an SQS listener's release task failed");
                }
            }
        }
    }

    async fn kick(&self, message: &TaskMessage) -> Result<(), BrokerError> {
        let outgoing = prepare(&self.inner.settings, message)?;
        send_one(&self.inner, outgoing).await
    }

    /// Sends with SendMessageBatch (10 per call). Every message is checked before any is sent;
    /// a refused entry is an error naming its task and how many messages were sent.
    async fn kick_batch(&self, messages: &[TaskMessage]) -> Result<(), BrokerError> {
        let mut outgoing = messages
            .iter()
            .map(|m| prepare(&self.inner.settings, m))
            .collect::<Result<Vec<_>, _>>()?;
        match outgoing.len() {
            0 => Ok(()),
            1 => send_one(&self.inner, outgoing.pop().expect("one message")).await,
            _ => send_batch(&self.inner, outgoing).await,
        }
    }

    async fn listen(&self, stop: CancellationToken) -> Result<DeliveryStream, BrokerError> {
        self.listen_with_demand(stop, Demand::unbounded()).await
    }

    /// Receives at most `min(max_number_of_messages, demand)` messages per long poll and hands
    /// buffered messages beyond `demand` back at once (visibility 0).
    async fn listen_with_demand(
        &self,
        stop: CancellationToken,
        demand: Demand,
    ) -> Result<DeliveryStream, BrokerError> {
        Ok(super::listen::listen(Arc::clone(&self.inner), stop, demand))
    }

    /// GetQueueAttributes on the queue: answers when SQS is reachable and the queue exists.
    async fn probe(&self) -> Result<(), BrokerError> {
        self.queue_depth().await.map(|_| ())
    }

    fn kind(&self) -> &'static str {
        "sqs"
    }

    /// The dead-letter queue (see [`dead_letters`](super::dead_letters)).
    fn dead_letters(&self) -> Option<Arc<dyn stepq_broker::dead_letter::DeadLetters>> {
        Some(Arc::new(super::dead_letters::SqsDeadLetters::new(
            Arc::clone(&self.inner),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sdk(region: Option<&str>) -> SdkConfig {
        let mut b = SdkConfig::builder().behavior_version(BehaviorVersion::latest());
        if let Some(r) = region {
            b = b.region(Region::new(r.to_string()));
        }
        b.build()
    }

    #[test]
    fn region_comes_from_config_then_sdk_then_queue_url() {
        let url = "https://sqs.eu-west-2.amazonaws.com/1/q";
        let b = SqsBroker::from_sdk_config(SqsConfig::new(url), &sdk(None)).unwrap();
        assert_eq!(
            b.sqs_client().config().region().map(|r| r.as_ref()),
            Some("eu-west-2")
        );
        let b = SqsBroker::from_sdk_config(SqsConfig::new(url), &sdk(Some("us-west-1"))).unwrap();
        assert_eq!(
            b.sqs_client().config().region().map(|r| r.as_ref()),
            Some("us-west-1")
        );
        let mut c = SqsConfig::new(url);
        c.region_name = Some("ap-south-1".into());
        let b = SqsBroker::from_sdk_config(c, &sdk(Some("us-west-1"))).unwrap();
        assert_eq!(
            b.sqs_client().config().region().map(|r| r.as_ref()),
            Some("ap-south-1")
        );
    }

    #[test]
    fn no_region_anywhere_is_a_config_error() {
        let err = SqsBroker::from_sdk_config(
            SqsConfig::new("http://127.0.0.1:4566/000000000000/q"),
            &sdk(None),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                BrokerError::Config {
                    field: "region_name",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn invalid_config_is_refused_before_any_client_exists() {
        let mut c = SqsConfig::new("http://127.0.0.1:4566/000000000000/q");
        c.config_source.max_number_of_messages = 0;
        let err = SqsBroker::from_sdk_config(c, &sdk(Some("us-east-1"))).unwrap_err();
        assert!(matches!(
            err,
            BrokerError::Config {
                field: "config_source.max_number_of_messages",
                ..
            }
        ));
    }

    #[test]
    fn fifo_and_fairness_follow_the_config() {
        let b = SqsBroker::from_sdk_config(
            SqsConfig::new("http://127.0.0.1:4566/000000000000/q.fifo"),
            &sdk(Some("us-east-1")),
        )
        .unwrap();
        assert!(b.is_fifo() && b.is_fair_queue());
        assert_eq!(b.kind(), "sqs");
    }

    #[tokio::test]
    async fn oversized_kicks_without_a_bucket_fail_before_any_request() {
        // The endpoint is a closed port: reaching it would be a dispatch failure instead.
        let mut c = SqsConfig::new("http://127.0.0.1:9/000000000000/q");
        c.endpoint_url = Some("http://127.0.0.1:9".into());
        let b = SqsBroker::from_sdk_config(c, &sdk(Some("us-east-1"))).unwrap();
        let mut big = TaskMessage::new("t");
        big.args.push(serde_json::json!("x".repeat(300 * 1024)));
        assert!(matches!(
            b.kick(&big).await,
            Err(BrokerError::PayloadTooLarge { .. })
        ));
        let small = TaskMessage::new("t");
        assert!(matches!(
            b.kick_batch(&[small, big]).await,
            Err(BrokerError::PayloadTooLarge { .. })
        ));
    }
}
