//! SQS broker settings, as dagster-taskiq's executor config has them, and their validation.

use serde::{Deserialize, Serialize};

use stepq_broker::error::BrokerError;

/// Default long-poll wait (seconds): the SQS maximum, so idle workers make few requests.
pub const DEFAULT_WAIT_TIME_SECONDS: u32 = 20;
/// Default messages taken per receive: the SQS maximum.
pub const DEFAULT_MAX_NUMBER_OF_MESSAGES: u32 = 10;
/// Default visibility timeout (seconds): short, so a killed worker's task is re-run within
/// about 6 s (a worker's heartbeats, every 2 s, keep a running task's message hidden; a
/// busy worker's long polls last 1 s, so a killed worker's pending poll cannot take
/// its message when it reappears).
pub const DEFAULT_VISIBILITY_TIMEOUT: u32 = 6;
/// Default size above which a body goes to S3: 256 KiB, the classic SQS limit.
pub const DEFAULT_PAYLOAD_SIZE_THRESHOLD: usize = 256 * 1024;
/// Largest body SQS accepts today (1 MiB); the threshold may not exceed it.
pub const MAX_SQS_MESSAGE_SIZE: usize = 1024 * 1024;
/// Largest visibility timeout SQS accepts (12 hours).
pub const MAX_VISIBILITY_TIMEOUT: u32 = 43_200;

/// Where and how to reach the queue: `queue_url`, `region_name`, `endpoint_url`, and the
/// broker options under `config_source`.
///
/// Deserializes from any serde format (the facade reads it from TOML):
///
/// ```
/// let config: stepq_aws::sqs::SqsConfig = serde_json::from_value(serde_json::json!({
///     "queue_url": "https://sqs.us-east-1.amazonaws.com/123456789012/stepq.fifo",
///     "config_source": { "max_number_of_messages": 5 }
/// })).unwrap();
/// config.validate().unwrap();
/// assert!(config.is_fifo() && config.is_fair_queue());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SqsConfig {
    /// The queue URL; one ending in `.fifo` is a FIFO queue.
    pub queue_url: String,
    /// AWS region; unset means the aws-config chain (`AWS_REGION`, profile ...), else the
    /// region in a standard queue URL's host.
    #[serde(default)]
    pub region_name: Option<String>,
    /// Endpoint override for SQS and S3 (LocalStack, e.g. `http://127.0.0.1:4566`).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Broker options.
    #[serde(default)]
    pub config_source: SqsConfigSource,
    /// The setting that named `config_source.s3_extended_bucket_name`, for error messages
    /// (e.g. `s3.bucket` when the bucket is inherited from it); unset means
    /// `config_source.s3_extended_bucket_name`. Not part of the file form.
    #[serde(skip)]
    pub payload_bucket_setting: Option<String>,
}

/// Broker options (dagster-taskiq's `config_source`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SqsConfigSource {
    /// Long-poll wait of a receive, 0-20 seconds.
    pub wait_time_seconds: u32,
    /// Messages taken per receive, 1-10.
    pub max_number_of_messages: u32,
    /// Whether a FIFO queue is fair (a message group per run, so runs do not block each
    /// other); unset means fair on `.fifo` queues. Ignored, with a warning, on standard queues.
    pub is_fair_queue: Option<bool>,
    /// On FIFO queues, deduplicate by task id instead of by a hash of the body.
    pub use_task_id_for_deduplication: bool,
    /// Delivery delay of every message, 0-900 seconds (standard queues only; a FIFO queue's
    /// delay is a queue attribute).
    pub delay_seconds: u32,
    /// Seconds a received message stays hidden unless acked, nacked or extended, 1-43200.
    pub visibility_timeout: u32,
    /// S3 bucket for bodies over `payload_size_threshold` (extended payloads); unset means
    /// such bodies are refused.
    pub s3_extended_bucket_name: Option<String>,
    /// Bodies larger than this many bytes go to S3, 1 byte - 1 MiB (default 256 KiB).
    pub payload_size_threshold: usize,
    /// Queue for messages that can never succeed (see [`stepq_broker::dead_letter`]); unset
    /// means `<queue>-dlq` (`<name>-dlq.fifo` for a FIFO queue) beside the task queue,
    /// created on the first dead letter.
    pub dead_letter_queue_url: Option<String>,
    /// On a fair FIFO queue, message groups per run (1-1000, default 1): SQS delivers no more
    /// of a group while some of it is in flight, so one run holds at most this many receives'
    /// worth of workers (each at most `max_number_of_messages`), however many steps it has,
    /// and other runs' groups are served meanwhile. 1 runs a run's steps one receive at a
    /// time; raise it to let a run use more of the fleet.
    pub groups_per_run: u32,
}

impl Default for SqsConfigSource {
    fn default() -> Self {
        SqsConfigSource {
            wait_time_seconds: DEFAULT_WAIT_TIME_SECONDS,
            max_number_of_messages: DEFAULT_MAX_NUMBER_OF_MESSAGES,
            is_fair_queue: None,
            use_task_id_for_deduplication: false,
            delay_seconds: 0,
            visibility_timeout: DEFAULT_VISIBILITY_TIMEOUT,
            s3_extended_bucket_name: None,
            payload_size_threshold: DEFAULT_PAYLOAD_SIZE_THRESHOLD,
            dead_letter_queue_url: None,
            groups_per_run: 1,
        }
    }
}

/// Decides whether a queue is fair, as dagster-taskiq does: `.fifo` + unset -> fair;
/// plain + unset -> not fair; plain + true -> not fair, with a warning; `.fifo` + false ->
/// not fair; `.fifo` + true -> fair.
pub fn resolve_fair_queue(is_fifo: bool, is_fair_queue: Option<bool>) -> bool {
    match (is_fifo, is_fair_queue) {
        (true, None) => true,
        (true, Some(fair)) => fair,
        (false, Some(true)) => {
            tracing::warn!(
                "config_source.is_fair_queue = true is ignored: fair queues need a FIFO \
                 queue (a queue URL ending in `.fifo`)"
            );
            false
        }
        (false, _) => false,
    }
}

fn config_error(field: &'static str, reason: impl Into<String>) -> BrokerError {
    BrokerError::Config {
        field,
        reason: reason.into(),
    }
}

/// Checks that `url` is an absolute http(s) URL with a host; returns what follows the host.
fn check_url(field: &'static str, url: &str) -> Result<String, BrokerError> {
    if url.trim().is_empty() {
        return Err(config_error(field, "is empty"));
    }
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| config_error(field, format!("`{url}` is not an http(s) URL")))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(config_error(field, format!("`{url}` has no host")));
    }
    if url.contains(char::is_whitespace) {
        return Err(config_error(field, format!("`{url}` contains whitespace")));
    }
    Ok(path.to_string())
}

fn check_range(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), BrokerError> {
    if value < min || value > max {
        return Err(config_error(
            field,
            format!("{value} is out of range {min}-{max}"),
        ));
    }
    Ok(())
}

/// Checks an S3 bucket name: 3-63 characters of lowercase letters, digits, `.` and `-`,
/// starting and ending with a letter or digit.
fn check_bucket_name(field: &'static str, name: &str) -> Result<(), BrokerError> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
    let ok_ends = name
        .chars()
        .next()
        .zip(name.chars().last())
        .is_some_and(|(a, b)| a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric());
    if !(3..=63).contains(&name.len()) || !ok_chars || !ok_ends {
        return Err(config_error(
            field,
            format!(
                "`{name}` is not a valid S3 bucket name (3-63 lowercase letters, digits, \
                 `.` or `-`)"
            ),
        ));
    }
    Ok(())
}

impl SqsConfig {
    /// A config for `queue_url` with every option at its default.
    pub fn new(queue_url: impl Into<String>) -> Self {
        SqsConfig {
            queue_url: queue_url.into(),
            region_name: None,
            endpoint_url: None,
            config_source: SqsConfigSource::default(),
            payload_bucket_setting: None,
        }
    }

    /// Checks every field; the error names the first bad one (e.g.
    /// `config_source.wait_time_seconds`).
    pub fn validate(&self) -> Result<(), BrokerError> {
        let path = check_url("queue_url", &self.queue_url)?;
        if self.queue_name().is_empty() || path.trim_matches('/').is_empty() {
            return Err(config_error(
                "queue_url",
                format!("`{}` names no queue", self.queue_url),
            ));
        }
        if let Some(region) = &self.region_name {
            if region.trim().is_empty() {
                return Err(config_error("region_name", "is empty"));
            }
        }
        if let Some(endpoint) = &self.endpoint_url {
            check_url("endpoint_url", endpoint)?;
        }
        let c = &self.config_source;
        if let Some(dlq) = &c.dead_letter_queue_url {
            check_url("config_source.dead_letter_queue_url", dlq)?;
            if dlq.trim_end_matches('/') == self.queue_url.trim_end_matches('/') {
                return Err(config_error(
                    "config_source.dead_letter_queue_url",
                    "is the task queue itself: dead letters would be delivered again",
                ));
            }
            if dlq.ends_with(".fifo") != self.is_fifo() {
                return Err(config_error(
                    "config_source.dead_letter_queue_url",
                    "must be a FIFO queue exactly when the task queue is one",
                ));
            }
        }
        check_range(
            "config_source.wait_time_seconds",
            c.wait_time_seconds.into(),
            0,
            20,
        )?;
        check_range(
            "config_source.max_number_of_messages",
            c.max_number_of_messages.into(),
            1,
            10,
        )?;
        check_range(
            "config_source.groups_per_run",
            c.groups_per_run.into(),
            1,
            1000,
        )?;
        check_range(
            "config_source.delay_seconds",
            c.delay_seconds.into(),
            0,
            900,
        )?;
        if self.is_fifo() && c.delay_seconds > 0 {
            return Err(config_error(
                "config_source.delay_seconds",
                "FIFO queues take no per-message delay; set the queue's DelaySeconds attribute",
            ));
        }
        check_range(
            "config_source.visibility_timeout",
            c.visibility_timeout.into(),
            1,
            MAX_VISIBILITY_TIMEOUT.into(),
        )?;
        check_range(
            "config_source.payload_size_threshold",
            c.payload_size_threshold as u64,
            1,
            MAX_SQS_MESSAGE_SIZE as u64,
        )?;
        if let Some(bucket) = &c.s3_extended_bucket_name {
            check_bucket_name("config_source.s3_extended_bucket_name", bucket)?;
        }
        Ok(())
    }

    /// Whether the queue is FIFO (its URL ends in `.fifo`).
    pub fn is_fifo(&self) -> bool {
        self.queue_name().ends_with(".fifo")
    }

    /// Whether the queue is used as a fair queue (see [`resolve_fair_queue`]).
    pub fn is_fair_queue(&self) -> bool {
        resolve_fair_queue(self.is_fifo(), self.config_source.is_fair_queue)
    }

    /// The queue name: the last path segment of the URL.
    pub fn queue_name(&self) -> &str {
        self.queue_url
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("")
    }

    /// The region in a standard AWS queue URL's host (`sqs.<region>.amazonaws.com`), if any.
    pub fn region_from_url(&self) -> Option<String> {
        let rest = self
            .queue_url
            .strip_prefix("https://")
            .or_else(|| self.queue_url.strip_prefix("http://"))?;
        let host = rest.split('/').next()?;
        let mut parts = host.split('.');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("sqs"), Some(region), Some("amazonaws")) if !region.is_empty() => {
                Some(region.to_string())
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://sqs.us-east-1.amazonaws.com/123456789012/tasks";
    const FIFO_URL: &str = "https://sqs.us-east-1.amazonaws.com/123456789012/tasks.fifo";

    fn field_of(err: BrokerError) -> &'static str {
        match err {
            BrokerError::Config { field, .. } => field,
            other => panic!("expected a config error, got {other}"),
        }
    }

    #[test]
    fn fair_queue_resolution_follows_the_reference_table() {
        let table = [
            (FIFO_URL, None, true),
            (URL, None, false),
            (URL, Some(true), false),
            (URL, Some(false), false),
            (FIFO_URL, Some(false), false),
            (FIFO_URL, Some(true), true),
        ];
        for (url, setting, fair) in table {
            let mut c = SqsConfig::new(url);
            c.config_source.is_fair_queue = setting;
            assert_eq!(
                c.is_fair_queue(),
                fair,
                "{url} with is_fair_queue {setting:?}"
            );
            assert_eq!(c.is_fifo(), url.ends_with(".fifo"));
        }
    }

    #[test]
    fn defaults_are_valid() {
        let c = SqsConfig::new(URL);
        c.validate().unwrap();
        assert_eq!(c.config_source.wait_time_seconds, 20);
        assert_eq!(c.config_source.max_number_of_messages, 10);
        assert_eq!(c.config_source.visibility_timeout, 6);
        assert_eq!(c.config_source.payload_size_threshold, 262_144);
        assert_eq!(c.queue_name(), "tasks");
        assert_eq!(c.region_from_url().as_deref(), Some("us-east-1"));
        SqsConfig::new("http://127.0.0.1:4566/000000000000/q")
            .validate()
            .unwrap();
        assert_eq!(
            SqsConfig::new("http://127.0.0.1:4566/000000000000/q").region_from_url(),
            None
        );
    }

    #[test]
    fn bad_queue_urls_are_named() {
        for bad in [
            "",
            "   ",
            "sqs.us-east-1.amazonaws.com/1/q",
            "https://",
            "https:///1/q",
            "https://host",
            "https://host/",
            "ftp://host/1/q",
            "https://host/1/q with space",
        ] {
            let err = SqsConfig::new(bad).validate().expect_err(bad);
            assert_eq!(field_of(err), "queue_url", "{bad:?}");
        }
    }

    #[test]
    fn out_of_range_options_are_named() {
        type Edit = fn(&mut SqsConfig);
        let cases: &[(Edit, &str)] = &[
            (
                |c| c.config_source.wait_time_seconds = 21,
                "config_source.wait_time_seconds",
            ),
            (
                |c| c.config_source.max_number_of_messages = 0,
                "config_source.max_number_of_messages",
            ),
            (
                |c| c.config_source.max_number_of_messages = 11,
                "config_source.max_number_of_messages",
            ),
            (
                |c| c.config_source.delay_seconds = 901,
                "config_source.delay_seconds",
            ),
            (
                |c| c.config_source.visibility_timeout = 0,
                "config_source.visibility_timeout",
            ),
            (
                |c| c.config_source.visibility_timeout = 43_201,
                "config_source.visibility_timeout",
            ),
            (
                |c| c.config_source.payload_size_threshold = 0,
                "config_source.payload_size_threshold",
            ),
            (
                |c| c.config_source.payload_size_threshold = 1024 * 1024 + 1,
                "config_source.payload_size_threshold",
            ),
            (
                |c| c.config_source.s3_extended_bucket_name = Some("ab".into()),
                "config_source.s3_extended_bucket_name",
            ),
            (
                |c| c.config_source.s3_extended_bucket_name = Some("Upper_Case".into()),
                "config_source.s3_extended_bucket_name",
            ),
            (|c| c.region_name = Some(" ".into()), "region_name"),
            (
                |c| c.endpoint_url = Some("localhost:4566".into()),
                "endpoint_url",
            ),
        ];
        for (edit, field) in cases {
            let mut c = SqsConfig::new(URL);
            edit(&mut c);
            let err = c.validate().expect_err(field);
            let text = err.to_string();
            assert_eq!(field_of(err), *field);
            assert!(text.contains(field), "{text}");
        }
    }

    #[test]
    fn range_edges_are_accepted() {
        let mut c = SqsConfig::new(URL);
        c.config_source.wait_time_seconds = 0;
        c.config_source.max_number_of_messages = 1;
        c.config_source.delay_seconds = 900;
        c.config_source.visibility_timeout = 43_200;
        c.config_source.payload_size_threshold = 1024 * 1024;
        c.config_source.s3_extended_bucket_name = Some("my-bucket.v2".into());
        c.validate().unwrap();
    }

    #[test]
    fn fifo_queues_refuse_a_per_message_delay() {
        let mut c = SqsConfig::new(FIFO_URL);
        c.config_source.delay_seconds = 5;
        assert_eq!(
            field_of(c.validate().unwrap_err()),
            "config_source.delay_seconds"
        );
    }

    #[test]
    fn deserializes_with_defaults_for_missing_options() {
        let c: SqsConfig = serde_json::from_value(serde_json::json!({
            "queue_url": "http://127.0.0.1:4566/000000000000/tasks",
            "region_name": "eu-west-1",
            "endpoint_url": "http://127.0.0.1:4566",
            "config_source": {
                "wait_time_seconds": 5,
                "is_fair_queue": true,
                "s3_extended_bucket_name": "payloads"
            }
        }))
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.region_name.as_deref(), Some("eu-west-1"));
        assert_eq!(c.config_source.wait_time_seconds, 5);
        assert_eq!(c.config_source.max_number_of_messages, 10);
        assert_eq!(c.config_source.is_fair_queue, Some(true));
        assert!(!c.is_fair_queue(), "plain queue is never fair");
        assert_eq!(
            c.config_source.s3_extended_bucket_name.as_deref(),
            Some("payloads")
        );
    }
}
