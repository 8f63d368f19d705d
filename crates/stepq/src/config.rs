//! `stepq.toml`: the configuration of an app (broker, backends, executor and worker settings).
//!
//! Every section and key is optional; an empty file (or no file) gives the embedded default:
//! an in-memory broker and local-directory backends under `.stepq/`. Setting `sqs.queue_url`
//! (and `s3.bucket`) switches to SQS + S3 unless `task_always_eager = true`.
//!
//! ```toml
//! task_always_eager = false     # true forces the embedded default
//! enable_cancellation = true
//! state_dir = ".stepq"          # local runs, outputs and results (embedded default)
//!
//! [sqs]
//! queue_url = "https://sqs.us-east-1.amazonaws.com/123456789012/stepq"
//! region_name = "us-east-1"
//!
//! [s3]
//! bucket = "my-stepq-bucket"
//! base_path = "stepq"
//!
//! [executor]
//! max_in_flight = 64
//! retry_mode = "enabled"        # enabled | disabled | deferred
//! step_timeout_seconds = 3600
//! fail_fast = false
//! cancel_grace_seconds = 10     # on interrupt, how long in-flight steps get to report
//! tag_concurrency_limits = [{ key = "db", value = "warehouse", limit = 2 }]
//!
//! [worker]
//! concurrency = 8
//! grace_period_seconds = 30
//! health_interval_seconds = 10  # worker health heartbeat; lost after 3 missed
//! ```
//!
//! Environment variables override the file: `STEPQ_SQS_QUEUE_URL`, `STEPQ_SQS_ENDPOINT_URL`,
//! `STEPQ_S3_BUCKET_NAME`, `STEPQ_S3_ENDPOINT_URL`, `AWS_DEFAULT_REGION` and
//! `STEPQ_WORKER_HEALTH_INTERVAL_SECONDS`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use stepq_aws::sqs::{SqsConfig, SqsConfigSource};

/// Environment variable overriding `sqs.queue_url`.
pub const ENV_SQS_QUEUE_URL: &str = "STEPQ_SQS_QUEUE_URL";
/// Environment variable overriding `sqs.endpoint_url`.
pub const ENV_SQS_ENDPOINT_URL: &str = "STEPQ_SQS_ENDPOINT_URL";
/// Environment variable overriding `s3.bucket`.
pub const ENV_S3_BUCKET_NAME: &str = "STEPQ_S3_BUCKET_NAME";
/// Environment variable overriding `s3.endpoint_url`.
pub const ENV_S3_ENDPOINT_URL: &str = "STEPQ_S3_ENDPOINT_URL";
/// Environment variable overriding `sqs.region_name` (and the S3 region).
pub const ENV_AWS_DEFAULT_REGION: &str = "AWS_DEFAULT_REGION";
/// Environment variable overriding `worker.health_interval_seconds`.
pub const ENV_WORKER_HEALTH_INTERVAL_SECONDS: &str = "STEPQ_WORKER_HEALTH_INTERVAL_SECONDS";

/// Why a configuration could not be loaded or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("invalid config file `{path}`: {message}")]
    Parse {
        /// The file (or `<string>`).
        path: PathBuf,
        /// The parser's message; it names the key and the line.
        message: String,
    },
    /// A value is out of range or unusable; `key` is its dotted path, e.g. `worker.concurrency`.
    #[error("invalid config value `{key}`: {reason}")]
    Invalid {
        /// Dotted key path.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// Building a component from the config failed (e.g. the SQS client).
    #[error("cannot build {component} from the config: {message}")]
    Build {
        /// Which component.
        component: &'static str,
        /// What went wrong.
        message: String,
    },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StepqConfig {
    /// Force the embedded default (in-memory broker, local backends) even with a queue URL.
    pub task_always_eager: bool,
    /// Whether interrupting (or `stepq cancel`ing) a run cancels its in-flight steps on the
    /// workers: the broker is wrapped in the cancellation extension's `CancellableBroker`
    /// (markers under `<state_dir>/cancels/` or `<s3.base_path>/cancels/` in the bucket) and
    /// every worker runs a cancel listener. Default true.
    pub enable_cancellation: bool,
    /// Directory of local state (runs, outputs, results) for the embedded default.
    pub state_dir: PathBuf,
    /// The SQS broker.
    pub sqs: SqsSection,
    /// The S3 result backend, output store and run store.
    pub s3: S3Section,
    /// The orchestration loop.
    pub executor: ExecutorSection,
    /// Workers.
    pub worker: WorkerSection,
}

impl Default for StepqConfig {
    fn default() -> Self {
        StepqConfig {
            task_always_eager: false,
            enable_cancellation: true,
            state_dir: PathBuf::from(".stepq"),
            sqs: SqsSection::default(),
            s3: S3Section::default(),
            executor: ExecutorSection::default(),
            worker: WorkerSection::default(),
        }
    }
}

/// `[sqs]`: where tasks are sent when running distributed. The same fields as the broker's
/// [`SqsConfig`], except that `queue_url` may be unset (the embedded default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqsSection {
    /// Queue URL; a URL ending `.fifo` is a FIFO queue. Unset means the embedded default.
    pub queue_url: Option<String>,
    /// AWS region; unset uses the AWS config chain.
    pub region_name: Option<String>,
    /// Endpoint override for SQS (e.g. LocalStack).
    pub endpoint_url: Option<String>,
    /// Broker options (long polling, batch size, FIFO fairness, visibility, extended payloads).
    pub config_source: SqsConfigSource,
}

/// `[s3]`: where results, outputs and run records are stored when running distributed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Section {
    /// Bucket name; required when running distributed.
    pub bucket: Option<String>,
    /// Key prefix of everything stepq stores (no leading or trailing `/`).
    pub base_path: String,
    /// Endpoint override (e.g. LocalStack).
    pub endpoint_url: Option<String>,
    /// Region; unset uses `sqs.region_name`, then the AWS config chain.
    pub region_name: Option<String>,
    /// Also store every step task's result in S3 (`<base_path>/results/`) when the
    /// orchestrator's reply-queue notification carries it. Default `false`: a result that fits
    /// in the notification (under 200 KiB) travels only there (two requests fewer per step);
    /// SQS keeps it durably, and a worker that cannot send the notification stores the S3
    /// copy instead. Step outputs are always stored in S3, whatever this says.
    pub store_results: bool,
}

impl Default for S3Section {
    fn default() -> Self {
        S3Section {
            bucket: None,
            base_path: "stepq".to_string(),
            endpoint_url: None,
            region_name: None,
            store_results: false,
        }
    }
}

/// How failed steps are retried (`executor.retry_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetryModeSetting {
    /// Retries follow each step's policy.
    #[default]
    Enabled,
    /// The first failure is final.
    Disabled,
    /// Retry-requested failures are left for a later resume.
    Deferred,
}

impl From<RetryModeSetting> for stepq_plan::RetryMode {
    fn from(m: RetryModeSetting) -> Self {
        match m {
            RetryModeSetting::Enabled => stepq_plan::RetryMode::Enabled,
            RetryModeSetting::Disabled => stepq_plan::RetryMode::Disabled,
            RetryModeSetting::Deferred => stepq_plan::RetryMode::Deferred,
        }
    }
}

/// One entry of `executor.tag_concurrency_limits`: at most `limit` steps of a run whose tag
/// `key` equals `value` in flight at once.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagLimitSetting {
    /// Tag key.
    pub key: String,
    /// Tag value.
    pub value: String,
    /// Maximum steps in flight (>= 1).
    pub limit: usize,
}

/// `[executor]`: the orchestration loop.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutorSection {
    /// Maximum steps of one run in flight at once (>= 1).
    pub max_in_flight: usize,
    /// Per-tag limits.
    pub tag_concurrency_limits: Vec<TagLimitSetting>,
    /// Retry mode.
    pub retry_mode: RetryModeSetting,
    /// Longest a step may take from being queued to its result, in seconds; unset: no bound
    /// beyond the broker's redelivery.
    pub step_timeout_seconds: Option<f64>,
    /// Interrupt the run at the first step failure instead of finishing independent branches.
    pub fail_fast: bool,
    /// On interrupt or fail-fast, how long in-flight steps get to report before they are
    /// recorded as canceled, in seconds.
    pub cancel_grace_seconds: f64,
    /// Send a linear run of steps (each the only downstream step of the previous one, reading
    /// only from it, same tags and retry policy) as one task, up to 16 steps: one queue
    /// round trip for the run instead of one per step. Events, attempts and retries stay per
    /// step. Default true.
    pub fuse_chains: bool,
}

impl Default for ExecutorSection {
    fn default() -> Self {
        ExecutorSection {
            max_in_flight: 1000,
            tag_concurrency_limits: Vec::new(),
            retry_mode: RetryModeSetting::Enabled,
            step_timeout_seconds: None,
            fail_fast: false,
            cancel_grace_seconds: 10.0,
            fuse_chains: true,
        }
    }
}

/// `[worker]`: worker processes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSection {
    /// Steps a worker runs at once; unset: the number of cores.
    pub concurrency: Option<usize>,
    /// On shutdown, how long in-flight steps may finish before they are cancelled, in seconds.
    pub grace_period_seconds: f64,
    /// How often a worker writes its health heartbeat (what it runs, under `workers/`), in
    /// seconds (> 0, default 10). `stepq worker list` calls a worker lost once its last
    /// heartbeat is three of these old, so every process sharing the store should agree on
    /// it. Not the SQS visibility heartbeat, which follows `sqs.config_source.visibility_timeout`.
    pub health_interval_seconds: f64,
}

impl Default for WorkerSection {
    fn default() -> Self {
        WorkerSection {
            concurrency: None,
            grace_period_seconds: 30.0,
            health_interval_seconds: stepq_worker::health::DEFAULT_HEALTH_INTERVAL.as_secs_f64(),
        }
    }
}

/// Which set of components an app runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// In-memory broker, local-directory backends, in-process workers.
    Embedded,
    /// SQS broker, S3 backends, separate worker processes.
    Distributed,
}

impl StepqConfig {
    /// Parses TOML text; `origin` names the source in errors. Does not validate.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let parse_error = |message: String| ConfigError::Parse {
            path: origin.to_path_buf(),
            message,
        };
        let config: StepqConfig =
            toml::from_str(text).map_err(|e| parse_error(e.to_string().trim_end().to_string()))?;
        // The broker's option type accepts unknown keys; a typo there must not pass silently.
        let table: toml::Table =
            toml::from_str(text).map_err(|e| parse_error(e.to_string().trim_end().to_string()))?;
        if let Some(given) = table
            .get("sqs")
            .and_then(|s| s.get("config_source"))
            .and_then(|c| c.as_table())
        {
            let known = toml::Table::try_from(&config.sqs.config_source)
                .map_err(|e| parse_error(e.to_string()))?;
            if let Some(unknown) = given.keys().find(|k| !known.contains_key(*k)) {
                let expected = known_config_source_keys();
                return Err(parse_error(format!(
                    "unknown field `sqs.config_source.{unknown}`, expected one of {}",
                    expected.join(", ")
                )));
            }
        }
        Ok(config)
    }

    /// Reads a TOML file. Does not validate.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text, path)
    }

    /// Loads the config: the file (or the defaults), then overrides from `env`, then
    /// validation. Pass `std::env::vars().collect()` for the process environment.
    pub fn load(path: Option<&Path>, env: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(p) => Self::from_file(p)?,
            None => Self::default(),
        };
        config.apply_env(env)?;
        config.validate()?;
        Ok(config)
    }

    /// Loads the config with overrides from the process environment.
    pub fn load_with_process_env(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load(path, &std::env::vars().collect())
    }

    /// Applies the environment overrides. An empty variable counts as unset.
    pub fn apply_env(&mut self, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
        let get = |name: &str| env.get(name).filter(|v| !v.trim().is_empty()).cloned();
        if let Some(v) = get(ENV_SQS_QUEUE_URL) {
            self.sqs.queue_url = Some(v);
        }
        if let Some(v) = get(ENV_SQS_ENDPOINT_URL) {
            self.sqs.endpoint_url = Some(v);
        }
        if let Some(v) = get(ENV_S3_BUCKET_NAME) {
            self.s3.bucket = Some(v);
        }
        if let Some(v) = get(ENV_S3_ENDPOINT_URL) {
            self.s3.endpoint_url = Some(v);
        }
        if let Some(v) = get(ENV_AWS_DEFAULT_REGION) {
            self.sqs.region_name = Some(v);
        }
        if let Some(v) = get(ENV_WORKER_HEALTH_INTERVAL_SECONDS) {
            self.worker.health_interval_seconds = v.trim().parse().map_err(|_| {
                ConfigError::invalid(
                    "worker.health_interval_seconds",
                    format!(
                        "{ENV_WORKER_HEALTH_INTERVAL_SECONDS}=`{v}` is not a number of seconds"
                    ),
                )
            })?;
        }
        Ok(())
    }

    /// The mode this config selects: embedded when `task_always_eager` or no queue URL.
    pub fn mode(&self) -> Mode {
        if self.task_always_eager || self.sqs.queue_url.is_none() {
            Mode::Embedded
        } else {
            Mode::Distributed
        }
    }

    /// Checks every value; the first problem is returned naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.state_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("state_dir", "must not be empty"));
        }
        self.validate_s3()?;
        self.validate_sqs()?;
        self.validate_executor()?;
        self.validate_worker()?;
        if self.mode() == Mode::Distributed && self.s3.bucket.is_none() {
            return Err(ConfigError::invalid(
                "s3.bucket",
                format!(
                    "required when sqs.queue_url is set (results and outputs live in S3); set it or {ENV_S3_BUCKET_NAME}"
                ),
            ));
        }
        Ok(())
    }

    fn validate_sqs(&self) -> Result<(), ConfigError> {
        if let Some(region) = &self.sqs.region_name {
            check_region("sqs.region_name", region)?;
        }
        // The broker checks its own fields; without a queue URL, a stand-in checks the rest.
        let mut sqs = self.sqs_config_unchecked();
        if self.sqs.queue_url.is_none() {
            sqs.queue_url = "https://sqs.us-east-1.amazonaws.com/000000000000/unset".into();
        }
        sqs.validate().map_err(|e| match e {
            stepq_broker::BrokerError::Config { field, reason } => {
                ConfigError::invalid(format!("sqs.{field}"), reason)
            }
            other => ConfigError::invalid("sqs", other.to_string()),
        })
    }

    fn sqs_config_unchecked(&self) -> SqsConfig {
        let mut config_source = self.sqs.config_source.clone();
        if config_source.s3_extended_bucket_name.is_none() {
            config_source.s3_extended_bucket_name = self.s3.bucket.clone();
        }
        SqsConfig {
            queue_url: self.sqs.queue_url.clone().unwrap_or_default(),
            region_name: self.sqs.region_name.clone(),
            endpoint_url: self.sqs.endpoint_url.clone(),
            config_source,
        }
    }

    /// The broker's SQS config, when a queue URL is set. Bodies too large for SQS go to
    /// `s3.bucket` unless `sqs.config_source.s3_extended_bucket_name` names another bucket.
    pub fn sqs_config(&self) -> Option<SqsConfig> {
        self.sqs.queue_url.as_ref()?;
        Some(self.sqs_config_unchecked())
    }

    fn validate_s3(&self) -> Result<(), ConfigError> {
        if let Some(bucket) = &self.s3.bucket {
            check_bucket(bucket)?;
        }
        let base = &self.s3.base_path;
        if base.starts_with('/') || base.ends_with('/') {
            return Err(ConfigError::invalid(
                "s3.base_path",
                format!("`{base}` must not start or end with `/`"),
            ));
        }
        if base.split('/').any(|seg| seg == "..") {
            return Err(ConfigError::invalid(
                "s3.base_path",
                format!("`{base}` must not contain `..`"),
            ));
        }
        if let Some(url) = &self.s3.endpoint_url {
            check_url("s3.endpoint_url", url)?;
        }
        if let Some(region) = &self.s3.region_name {
            check_region("s3.region_name", region)?;
        }
        Ok(())
    }

    fn validate_executor(&self) -> Result<(), ConfigError> {
        let ex = &self.executor;
        if ex.max_in_flight == 0 {
            return Err(ConfigError::invalid(
                "executor.max_in_flight",
                "must be at least 1",
            ));
        }
        if let Some(t) = ex.step_timeout_seconds {
            check_positive_seconds("executor.step_timeout_seconds", t)?;
        }
        let g = ex.cancel_grace_seconds;
        if !(g.is_finite() && (0.0..1e9).contains(&g)) {
            return Err(ConfigError::invalid(
                "executor.cancel_grace_seconds",
                format!("must be a number of seconds >= 0, got {g}"),
            ));
        }
        for (i, limit) in ex.tag_concurrency_limits.iter().enumerate() {
            let key = format!("executor.tag_concurrency_limits[{i}]");
            if limit.key.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{key}.key"),
                    "must not be empty",
                ));
            }
            if limit.limit == 0 {
                return Err(ConfigError::invalid(
                    format!("{key}.limit"),
                    "must be at least 1",
                ));
            }
            if ex.tag_concurrency_limits[..i]
                .iter()
                .any(|o| o.key == limit.key && o.value == limit.value)
            {
                return Err(ConfigError::invalid(
                    key,
                    format!("tag {}={} is limited twice", limit.key, limit.value),
                ));
            }
        }
        Ok(())
    }

    fn validate_worker(&self) -> Result<(), ConfigError> {
        if self.worker.concurrency == Some(0) {
            return Err(ConfigError::invalid(
                "worker.concurrency",
                "must be at least 1",
            ));
        }
        let g = self.worker.grace_period_seconds;
        if !(g.is_finite() && (0.0..1e9).contains(&g)) {
            return Err(ConfigError::invalid(
                "worker.grace_period_seconds",
                format!("must be a number of seconds >= 0, got {g}"),
            ));
        }
        let h = self.worker.health_interval_seconds;
        if !(h.is_finite() && h > 0.0 && h < 1e9) {
            return Err(ConfigError::invalid(
                "worker.health_interval_seconds",
                format!("must be a positive number of seconds, got {h}"),
            ));
        }
        Ok(())
    }

    /// `executor.step_timeout_seconds` as a duration.
    pub fn step_timeout(&self) -> Option<std::time::Duration> {
        self.executor
            .step_timeout_seconds
            .map(std::time::Duration::from_secs_f64)
    }

    /// `worker.grace_period_seconds` as a duration.
    pub fn grace_period(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.worker.grace_period_seconds)
    }

    /// `worker.health_interval_seconds` as a duration: how often workers write their health
    /// heartbeat, and the unit `stepq worker list` counts missed heartbeats in.
    pub fn health_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.worker.health_interval_seconds)
    }

    /// `worker.concurrency`, or the number of cores.
    pub fn worker_concurrency(&self) -> usize {
        self.worker.concurrency.unwrap_or_else(default_parallelism)
    }
}

/// The number of cores (at least 1).
pub fn default_parallelism() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Every key of the broker's options, for error messages.
fn known_config_source_keys() -> Vec<String> {
    let all = SqsConfigSource {
        is_fair_queue: Some(true),
        s3_extended_bucket_name: Some(String::new()),
        ..SqsConfigSource::default()
    };
    toml::Table::try_from(&all)
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default()
}

fn check_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(rest)
            if !rest.is_empty() && !rest.starts_with('/') && !url.contains(char::is_whitespace) =>
        {
            Ok(())
        }
        _ => Err(ConfigError::invalid(
            key,
            format!("`{url}` is not an http(s) URL"),
        )),
    }
}

fn check_region(key: &str, region: &str) -> Result<(), ConfigError> {
    let ok = !region.is_empty()
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("`{region}` is not an AWS region name (e.g. us-east-1)"),
        ))
    }
}

fn check_bucket(bucket: &str) -> Result<(), ConfigError> {
    let len_ok = (3..=63).contains(&bucket.len());
    let chars_ok = bucket
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    let ends_ok = bucket
        .chars()
        .next()
        .zip(bucket.chars().last())
        .is_some_and(|(a, b)| a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric());
    if len_ok && chars_ok && ends_ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            "s3.bucket",
            format!("`{bucket}` is not a valid S3 bucket name (3-63 lowercase letters, digits, `-`, `.`)"),
        ))
    }
}

fn check_positive_seconds(key: &str, secs: f64) -> Result<(), ConfigError> {
    if secs.is_finite() && secs > 0.0 {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("must be a positive number of seconds, got {secs}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<StepqConfig, ConfigError> {
        let c = StepqConfig::from_toml_str(text, Path::new("stepq.toml"))?;
        c.validate()?;
        Ok(c)
    }

    fn invalid_key(text: &str) -> String {
        match parse(text) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid value, got {other:?}"),
        }
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_file_is_the_embedded_default() {
        let c = parse("").unwrap();
        assert_eq!(c, StepqConfig::default());
        assert_eq!(c.mode(), Mode::Embedded);
        assert!(c.enable_cancellation);
        assert_eq!(c.state_dir, PathBuf::from(".stepq"));
    }

    #[test]
    fn full_file_parses() {
        let c = parse(
            r#"
            enable_cancellation = false
            state_dir = "/var/lib/stepq"
            [sqs]
            queue_url = "https://sqs.us-east-1.amazonaws.com/1/q.fifo"
            region_name = "us-east-1"
            [s3]
            bucket = "my-bucket"
            base_path = "runs/stepq"
            [executor]
            max_in_flight = 4
            retry_mode = "deferred"
            step_timeout_seconds = 90
            fail_fast = true
            fuse_chains = false
            tag_concurrency_limits = [{ key = "db", value = "warehouse", limit = 2 }, { key = "gpu", value = "a100", limit = 1 }]
            [worker]
            concurrency = 3
            grace_period_seconds = 2.5
            "#,
        )
        .unwrap();
        assert_eq!(c.mode(), Mode::Distributed);
        assert!(!c.enable_cancellation);
        assert_eq!(c.executor.max_in_flight, 4);
        assert_eq!(c.executor.retry_mode, RetryModeSetting::Deferred);
        assert_eq!(c.step_timeout(), Some(std::time::Duration::from_secs(90)));
        assert!(c.executor.fail_fast);
        assert!(!c.executor.fuse_chains);
        assert!(ExecutorSection::default().fuse_chains);
        assert_eq!(c.executor.tag_concurrency_limits.len(), 2);
        assert_eq!(c.executor.tag_concurrency_limits[1].value, "a100");
        assert_eq!(c.worker_concurrency(), 3);
        assert_eq!(c.grace_period(), std::time::Duration::from_millis(2500));
    }

    #[test]
    fn results_are_reply_only_unless_store_results() {
        assert!(!parse("").unwrap().s3.store_results);
        let c = parse("[s3]\nstore_results = true").unwrap();
        assert!(c.s3.store_results);
        let err = parse("[s3]\nstore_result = true").unwrap_err();
        assert!(err.to_string().contains("store_result"), "{err}");
    }

    #[test]
    fn task_always_eager_forces_embedded() {
        let c = parse(
            r#"
            task_always_eager = true
            [sqs]
            queue_url = "https://sqs.us-east-1.amazonaws.com/1/q"
            "#,
        )
        .unwrap();
        assert_eq!(c.mode(), Mode::Embedded);
    }

    #[test]
    fn unknown_top_level_key_is_named() {
        let err = parse("task_always_eagre = true").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
        assert!(msg.contains("task_always_eagre"), "{msg}");
        assert!(msg.contains("stepq.toml"), "{msg}");
    }

    #[test]
    fn unknown_nested_key_is_named() {
        let msg = parse("[executor]\nmax_in_flght = 3")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("max_in_flght"), "{msg}");
        let msg = parse("[worker]\nthreads = 3").unwrap_err().to_string();
        assert!(msg.contains("threads"), "{msg}");
        let msg = parse("[s3]\nbuckett = \"x\"").unwrap_err().to_string();
        assert!(msg.contains("buckett"), "{msg}");
    }

    #[test]
    fn wrong_types_and_bad_enum_values_are_parse_errors() {
        let msg = parse("[executor]\nmax_in_flight = \"many\"")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("max_in_flight"), "{msg}");
        let msg = parse("[executor]\nretry_mode = \"sometimes\"")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("sometimes"), "{msg}");
        let msg = parse("[worker]\nconcurrency = -1").unwrap_err().to_string();
        assert!(msg.contains("concurrency"), "{msg}");
    }

    #[test]
    fn not_toml_is_a_parse_error() {
        assert!(matches!(
            parse("this is = = not toml"),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn out_of_range_values_name_their_key() {
        assert_eq!(
            invalid_key("[executor]\nmax_in_flight = 0"),
            "executor.max_in_flight"
        );
        assert_eq!(
            invalid_key("[executor]\nstep_timeout_seconds = 0"),
            "executor.step_timeout_seconds"
        );
        assert_eq!(
            invalid_key(
                "[executor]\ntag_concurrency_limits = [{ key = \"db\", value = \"w\", limit = 0 }]"
            ),
            "executor.tag_concurrency_limits[0].limit"
        );
        assert_eq!(
            invalid_key(
                "[executor]\ntag_concurrency_limits = [{ key = \"\", value = \"w\", limit = 1 }]"
            ),
            "executor.tag_concurrency_limits[0].key"
        );
        assert_eq!(
            invalid_key("[executor]\ntag_concurrency_limits = [{ key = \"db\", value = \"w\", limit = 1 }, { key = \"db\", value = \"w\", limit = 2 }]"),
            "executor.tag_concurrency_limits[1]"
        );
        assert_eq!(
            invalid_key("[worker]\nconcurrency = 0"),
            "worker.concurrency"
        );
        assert_eq!(
            invalid_key("[worker]\ngrace_period_seconds = -1"),
            "worker.grace_period_seconds"
        );
        assert_eq!(invalid_key("state_dir = \"\""), "state_dir");
    }

    #[test]
    fn bad_urls_regions_and_buckets_name_their_key() {
        assert_eq!(
            invalid_key("[sqs]\nqueue_url = \"\"\n[s3]\nbucket = \"b-1\""),
            "sqs.queue_url"
        );
        assert_eq!(
            invalid_key("[sqs]\nqueue_url = \"my-queue\"\n[s3]\nbucket = \"b-1\""),
            "sqs.queue_url"
        );
        assert_eq!(
            invalid_key("[sqs]\nendpoint_url = \"localhost:4566\""),
            "sqs.endpoint_url"
        );
        assert_eq!(
            invalid_key("[sqs]\nregion_name = \"US East\""),
            "sqs.region_name"
        );
        assert_eq!(invalid_key("[s3]\nbucket = \"Bad_Bucket\""), "s3.bucket");
        assert_eq!(invalid_key("[s3]\nbase_path = \"/abs\""), "s3.base_path");
        assert_eq!(invalid_key("[s3]\nbase_path = \"a/../b\""), "s3.base_path");
        assert_eq!(
            invalid_key("[s3]\nendpoint_url = \"ftp://x\""),
            "s3.endpoint_url"
        );
    }

    #[test]
    fn sqs_options_are_the_brokers() {
        let c = parse(
            r#"
            [sqs]
            queue_url = "http://127.0.0.1:4566/000000000000/q.fifo"
            endpoint_url = "http://127.0.0.1:4566"
            config_source = { wait_time_seconds = 5, max_number_of_messages = 3, visibility_timeout = 15 }
            [s3]
            bucket = "stepq-bucket"
            "#,
        )
        .unwrap();
        let sqs = c.sqs_config().unwrap();
        assert!(sqs.is_fifo());
        assert_eq!(sqs.config_source.wait_time_seconds, 5);
        assert_eq!(sqs.config_source.max_number_of_messages, 3);
        assert_eq!(sqs.config_source.visibility_timeout, 15);
        assert_eq!(
            sqs.config_source.s3_extended_bucket_name.as_deref(),
            Some("stepq-bucket"),
            "large bodies default to the s3 bucket"
        );
        assert_eq!(StepqConfig::default().sqs_config(), None);
    }

    #[test]
    fn out_of_range_sqs_options_name_their_key() {
        assert_eq!(
            invalid_key("[sqs]\nconfig_source = { wait_time_seconds = 21 }"),
            "sqs.config_source.wait_time_seconds"
        );
        assert_eq!(
            invalid_key("[sqs]\nconfig_source = { max_number_of_messages = 0 }"),
            "sqs.config_source.max_number_of_messages"
        );
        assert_eq!(
            invalid_key("[sqs]\nconfig_source = { delay_seconds = 901 }"),
            "sqs.config_source.delay_seconds"
        );
    }

    #[test]
    fn unknown_sqs_option_is_named() {
        let msg = parse("[sqs]\nconfig_source = { wait_time_secs = 3 }")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("sqs.config_source.wait_time_secs"), "{msg}");
        assert!(msg.contains("wait_time_seconds"), "{msg}");
        let msg = parse("[sqs]\nqueue = \"x\"").unwrap_err().to_string();
        assert!(msg.contains("queue"), "{msg}");
    }

    #[test]
    fn distributed_without_bucket_is_an_error() {
        assert_eq!(
            invalid_key("[sqs]\nqueue_url = \"https://sqs.us-east-1.amazonaws.com/1/q\""),
            "s3.bucket"
        );
    }

    #[test]
    fn env_overrides_the_file() {
        let mut c = StepqConfig::from_toml_str(
            "[sqs]\nqueue_url = \"https://file/q\"\n[s3]\nbucket = \"file-bucket\"",
            Path::new("f"),
        )
        .unwrap();
        c.apply_env(&env(&[
            (
                ENV_SQS_QUEUE_URL,
                "http://127.0.0.1:4566/000000000000/env-q",
            ),
            (ENV_SQS_ENDPOINT_URL, "http://127.0.0.1:4566"),
            (ENV_S3_BUCKET_NAME, "env-bucket"),
            (ENV_S3_ENDPOINT_URL, "http://127.0.0.1:4566"),
            (ENV_AWS_DEFAULT_REGION, "eu-west-1"),
            ("UNRELATED", "x"),
        ]))
        .unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.sqs.queue_url.as_deref(),
            Some("http://127.0.0.1:4566/000000000000/env-q")
        );
        assert_eq!(c.sqs.endpoint_url.as_deref(), Some("http://127.0.0.1:4566"));
        assert_eq!(c.s3.bucket.as_deref(), Some("env-bucket"));
        assert_eq!(c.s3.endpoint_url.as_deref(), Some("http://127.0.0.1:4566"));
        assert_eq!(c.sqs.region_name.as_deref(), Some("eu-west-1"));
        assert_eq!(c.mode(), Mode::Distributed);
    }

    #[test]
    fn empty_env_values_do_not_override() {
        let mut c = StepqConfig::default();
        c.apply_env(&env(&[(ENV_SQS_QUEUE_URL, ""), (ENV_S3_BUCKET_NAME, "  ")]))
            .unwrap();
        assert_eq!(c.sqs.queue_url, None);
        assert_eq!(c.s3.bucket, None);
        assert_eq!(c.mode(), Mode::Embedded);
    }

    #[test]
    fn env_values_are_validated() {
        let err = StepqConfig::load(None, &env(&[(ENV_SQS_QUEUE_URL, "not a url")])).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { key, .. } if key == "sqs.queue_url"),
            "{err:?}"
        );
    }

    #[test]
    fn env_alone_selects_distributed() {
        let c = StepqConfig::load(
            None,
            &env(&[
                (ENV_SQS_QUEUE_URL, "http://127.0.0.1:4566/000000000000/q"),
                (ENV_S3_BUCKET_NAME, "bucket"),
            ]),
        )
        .unwrap();
        assert_eq!(c.mode(), Mode::Distributed);
    }

    #[test]
    fn missing_file_is_a_read_error_naming_it() {
        let err = StepqConfig::load(Some(Path::new("/nonexistent/stepq.toml")), &BTreeMap::new())
            .unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/stepq.toml"));
    }

    #[test]
    fn health_interval_is_read_validated_and_overridable() {
        assert_eq!(
            StepqConfig::default().health_interval(),
            std::time::Duration::from_secs(10)
        );
        let c = parse("[worker]\nhealth_interval_seconds = 0.25").unwrap();
        assert_eq!(c.health_interval(), std::time::Duration::from_millis(250));
        for bad in ["0", "-1", "nan", "inf"] {
            assert_eq!(
                invalid_key(&format!("[worker]\nhealth_interval_seconds = {bad}")),
                "worker.health_interval_seconds",
                "{bad}"
            );
        }
        let c =
            StepqConfig::load(None, &env(&[(ENV_WORKER_HEALTH_INTERVAL_SECONDS, "2.5")])).unwrap();
        assert_eq!(c.health_interval(), std::time::Duration::from_millis(2500));
        for bad in ["soon", "0"] {
            let err = StepqConfig::load(None, &env(&[(ENV_WORKER_HEALTH_INTERVAL_SECONDS, bad)]))
                .unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid { key, .. } if key == "worker.health_interval_seconds"),
                "{bad}: {err:?}"
            );
        }
        let msg = StepqConfig::load(None, &env(&[(ENV_WORKER_HEALTH_INTERVAL_SECONDS, "soon")]))
            .unwrap_err()
            .to_string();
        assert!(msg.contains(ENV_WORKER_HEALTH_INTERVAL_SECONDS), "{msg}");
    }

    #[test]
    fn file_is_loaded_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stepq.toml");
        std::fs::write(&path, "[worker]\nconcurrency = 5\n").unwrap();
        let c = StepqConfig::load(Some(&path), &BTreeMap::new()).unwrap();
        assert_eq!(c.worker_concurrency(), 5);
    }
}
