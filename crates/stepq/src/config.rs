//! `stepq.toml`: the configuration of an app (broker, backends, executor and worker settings).
//!
//! Every section and key is optional; an empty file (or no file) gives the embedded default:
//! an in-memory broker and one SQLite database of state under `.stepq/`. Setting `sqs.queue_url`
//! (and `s3.bucket`) switches to SQS + S3 unless `task_always_eager = true`.
//!
//! ```toml
//! task_always_eager = false     # true forces the embedded default
//! enable_cancellation = true
//! state_dir = ".stepq"          # local runs, outputs and results (embedded default)
//! state_store = "sqlite"        # sqlite (one database, stepq.db) | files (the old layout)
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
//!
//! [signing]                     # sign task messages; refuse and dead-letter unsigned ones
//! key_env = "STEPQ_SIGNING_KEY" # the variable holding the shared key (or key = "...")
//!
//! [retention]                   # stepq run collects finished runs at its end (embedded)
//! keep_days = 30
//! keep_last = 1000
//! ```
//!
//! Environment variables override the file: `STEPQ_SQS_QUEUE_URL`, `STEPQ_SQS_ENDPOINT_URL`,
//! `STEPQ_S3_BUCKET_NAME`, `STEPQ_S3_ENDPOINT_URL`, `AWS_DEFAULT_REGION` and
//! `STEPQ_WORKER_HEALTH_INTERVAL_SECONDS`.
//!
//! The `[sqs]` and `[s3]` sections (and [`Mode::Distributed`]) need the crate's feature `aws`
//! (default). A build without it has no such fields and refuses a config that uses them — a
//! non-empty `[sqs]` or `[s3]` section, or `STEPQ_SQS_QUEUE_URL` — with
//! [`ConfigError::NoAwsSupport`] rather than running it embedded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
#[cfg(feature = "aws")]
use stepq_aws::settings::known_config_source_keys;
#[cfg(feature = "aws")]
use stepq_aws::sqs::SqsConfig;
#[cfg(feature = "aws")]
use stepq_aws::{S3Settings, SqsSettings};
pub use stepq_executor::config::{RetryModeSetting, TagLimitSetting};
use stepq_executor::{ExecutorConfig, ExecutorError, ExecutorSettings};
pub use stepq_worker::service::routing::{
    LevelOrderSetting, PrioritySettings, QueueSettings, Routing,
};
pub use stepq_worker::service::{default_parallelism, SigningSettings, StateStore, WorkerSettings};
use stepq_worker::WorkerError;

pub use crate::retention::RetentionSettings;

#[cfg(feature = "aws")]
pub use stepq_aws::settings::{
    ENV_AWS_DEFAULT_REGION, ENV_S3_BUCKET_NAME, ENV_S3_ENDPOINT_URL, ENV_SQS_ENDPOINT_URL,
    ENV_SQS_QUEUE_URL,
};
/// Environment variable overriding `sqs.queue_url` (refused by a build without feature `aws`).
#[cfg(not(feature = "aws"))]
pub const ENV_SQS_QUEUE_URL: &str = "STEPQ_SQS_QUEUE_URL";
pub use stepq_worker::service::settings::ENV_WORKER_HEALTH_INTERVAL_SECONDS;

pub use stepq_worker::service::settings::ConfigError;

/// A config error naming the dotted `key`.
fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::invalid(key, reason)
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// How the embedded default keeps its state there: `sqlite` (one database, `stepq.db`;
    /// default) or `files` (one file per record, the layout before the database).
    pub state_store: StateStore,
    /// The SQS broker (`stepq-aws`; feature `aws`).
    #[cfg(feature = "aws")]
    pub sqs: SqsSettings,
    /// The S3 result backend, output, run, heartbeat and cancel-marker stores (`stepq-aws`;
    /// feature `aws`).
    #[cfg(feature = "aws")]
    pub s3: S3Settings,
    /// The orchestration loop (`stepq-executor`).
    pub executor: ExecutorSettings,
    /// Worker services (`stepq-worker`).
    pub worker: WorkerSettings,
    /// `[queues.NAME]`: named queues besides the default one, for steps tagged
    /// `stepq/queue = "NAME"` (`stepq_worker::service::routing`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub queues: BTreeMap<String, QueueSettings>,
    /// `[priority]`: priority levels, one queue each; none when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<PrioritySettings>,
    /// Signed task messages (`stepq_broker::signing`); off unless a key is set.
    pub signing: SigningSettings,
    /// Automatic retention of finished runs, applied by `stepq run` at its end (embedded
    /// default; see [`crate::retention`]). Unset: none.
    pub retention: RetentionSettings,
}

impl Default for StepqConfig {
    fn default() -> Self {
        StepqConfig {
            task_always_eager: false,
            enable_cancellation: true,
            state_dir: PathBuf::from(".stepq"),
            state_store: StateStore::default(),
            #[cfg(feature = "aws")]
            sqs: SqsSettings::default(),
            #[cfg(feature = "aws")]
            s3: S3Settings::default(),
            executor: ExecutorSettings::default(),
            worker: WorkerSettings::default(),
            queues: BTreeMap::new(),
            priority: None,
            signing: SigningSettings::default(),
            retention: RetentionSettings::default(),
        }
    }
}

/// Which set of components an app runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// In-memory broker, local-directory backends, in-process workers.
    Embedded,
    /// SQS broker, S3 backends, separate worker processes. Only a build with feature `aws`
    /// selects it.
    Distributed,
}

impl StepqConfig {
    /// Parses TOML text; `origin` names the source in errors. Does not validate.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let parse_error = |message: String| ConfigError::Parse {
            path: origin.to_path_buf(),
            message,
        };
        let toml_error = |e: toml::de::Error| parse_error(e.to_string().trim_end().to_string());
        // The whole file as a table, for the checks the typed sections cannot make themselves.
        let table: toml::Table = toml::from_str(text).map_err(toml_error)?;
        #[cfg(feature = "aws")]
        {
            let config: StepqConfig = toml::from_str(text).map_err(toml_error)?;
            // The broker's option type accepts unknown keys; a typo there must not pass silently.
            check_config_source_keys(&table).map_err(parse_error)?;
            Ok(config)
        }
        #[cfg(not(feature = "aws"))]
        {
            if let Some(key) = aws_key(&table) {
                return Err(ConfigError::NoAwsSupport { key });
            }
            // An empty `[sqs]` / `[s3]` header asks for nothing: it is dropped (this build has
            // no such fields). Without one, the text itself is parsed, for errors with lines.
            let mut table = table;
            let headers = [table.remove("sqs"), table.remove("s3")];
            if headers.iter().any(Option::is_some) {
                table.try_into().map_err(toml_error)
            } else {
                toml::from_str(text).map_err(toml_error)
            }
        }
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
        // Keys named by environment variable are read (and checked) here as well.
        config.signing.signer(env)?;
        Ok(config)
    }

    /// Loads the config with overrides from the process environment.
    pub fn load_with_process_env(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load(path, &std::env::vars().collect())
    }

    /// Applies the environment overrides. An empty variable counts as unset.
    pub fn apply_env(&mut self, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
        #[cfg(feature = "aws")]
        stepq_aws::settings::apply_env(&mut self.sqs, &mut self.s3, env);
        // Only the queue URL selects the distributed setup; the other AWS variables (a region,
        // a bucket) ask for nothing on their own, so they are left alone here.
        #[cfg(not(feature = "aws"))]
        if env
            .get(ENV_SQS_QUEUE_URL)
            .is_some_and(|v| !v.trim().is_empty())
        {
            return Err(ConfigError::NoAwsSupport {
                key: format!("sqs.queue_url (by {ENV_SQS_QUEUE_URL})"),
            });
        }
        self.worker.apply_env(env).map_err(worker_error)
    }

    /// The mode this config selects: embedded when `task_always_eager` or no queue URL
    /// (always, without feature `aws`).
    pub fn mode(&self) -> Mode {
        #[cfg(feature = "aws")]
        if !self.task_always_eager && self.sqs.queue_url.is_some() {
            return Mode::Distributed;
        }
        Mode::Embedded
    }

    /// Checks every value (each section by its own crate's check); the first problem is
    /// returned naming its dotted key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.state_dir.as_os_str().is_empty() {
            return Err(invalid("state_dir", "must not be empty"));
        }
        #[cfg(feature = "aws")]
        {
            self.s3.validate()?;
            self.sqs.validate(&self.s3)?;
        }
        self.executor.validate().map_err(executor_error)?;
        self.worker.validate().map_err(worker_error)?;
        self.retention.validate()?;
        self.routing()?;
        #[cfg(feature = "aws")]
        if self.mode() == Mode::Distributed
            && self.routing()?.is_routed()
            && self.sqs.config_source.dead_letter_queue_url.is_some()
        {
            return Err(invalid(
                "sqs.config_source.dead_letter_queue_url",
                stepq_worker::service::routing::SHARED_DLQ_REFUSED,
            ));
        }
        #[cfg(feature = "aws")]
        if self.mode() == Mode::Distributed && self.s3.bucket.is_none() {
            return Err(invalid(
                "s3.bucket",
                format!(
                    "required when sqs.queue_url is set (results and outputs live in S3); set it or {ENV_S3_BUCKET_NAME}"
                ),
            ));
        }
        Ok(())
    }

    /// The broker's SQS config, when a queue URL is set (see [`SqsSettings::sqs_config`]).
    #[cfg(feature = "aws")]
    pub fn sqs_config(&self) -> Option<SqsConfig> {
        self.sqs.sqs_config(&self.s3)
    }

    /// The executor config of `[executor]` (its other fields at their defaults).
    pub fn executor_config(&self) -> Result<ExecutorConfig, ConfigError> {
        self.executor.to_config().map_err(executor_error)
    }

    /// `executor.step_timeout_seconds` as a duration.
    pub fn step_timeout(&self) -> Option<std::time::Duration> {
        self.executor
            .step_timeout_seconds
            .and_then(|s| std::time::Duration::try_from_secs_f64(s).ok())
    }

    /// `worker.grace_period_seconds` as a duration (zero if invalid; [`validate`](Self::validate)
    /// refuses such a config).
    pub fn grace_period(&self) -> std::time::Duration {
        self.worker.grace_period().unwrap_or_default()
    }

    /// `worker.health_interval_seconds` as a duration: how often workers write their health
    /// heartbeat, and the unit `stepq worker list` counts missed heartbeats in.
    pub fn health_interval(&self) -> std::time::Duration {
        self.worker
            .health_interval()
            .unwrap_or(stepq_worker::health::DEFAULT_HEALTH_INTERVAL)
    }

    /// The routing of `[queues]`, `[priority]` and `worker.queues` (unset: every queue; the
    /// embedded default's in-process workers always consume every queue, since nothing
    /// else can); on SQS every named queue needs its URL.
    pub fn routing(&self) -> Result<Routing, ConfigError> {
        let distributed = self.mode() == Mode::Distributed;
        #[cfg(feature = "aws")]
        let default_url = self.sqs.queue_url.as_deref().filter(|_| distributed);
        #[cfg(not(feature = "aws"))]
        let default_url = None;
        Routing::from_config(
            &self.queues,
            self.priority.as_ref(),
            self.worker.queues.as_deref().filter(|_| distributed),
            default_url,
        )
    }

    /// `worker.concurrency`, or the number of cores.
    pub fn worker_concurrency(&self) -> usize {
        self.worker.concurrency()
    }
}

/// The broker's option type accepts unknown keys: an unknown key of `sqs.config_source` is
/// named here.
#[cfg(feature = "aws")]
fn check_config_source_keys(table: &toml::Table) -> Result<(), String> {
    let Some(given) = table
        .get("sqs")
        .and_then(|s| s.get("config_source"))
        .and_then(|c| c.as_table())
    else {
        return Ok(());
    };
    let expected = known_config_source_keys();
    match given.keys().find(|k| !expected.contains(*k)) {
        Some(unknown) => Err(format!(
            "unknown field `sqs.config_source.{unknown}`, expected one of {}",
            expected.join(", ")
        )),
        None => Ok(()),
    }
}

/// The first key of a non-empty `[sqs]` or `[s3]` section (e.g. `sqs.queue_url`), or the
/// section when it is not a table: what a build without feature `aws` refuses.
#[cfg(not(feature = "aws"))]
fn aws_key(table: &toml::Table) -> Option<String> {
    ["sqs", "s3"].into_iter().find_map(|section| {
        let value = table.get(section)?;
        match value.as_table() {
            // `queue_url` first: it is what selects the distributed setup.
            Some(keys) => keys
                .keys()
                .find(|k| *k == "queue_url")
                .or_else(|| keys.keys().next())
                .map(|k| format!("{section}.{k}")),
            None => Some(section.to_string()),
        }
    })
}

/// An `[executor]` error as a config error naming `executor.<key>`.
fn executor_error(e: ExecutorError) -> ConfigError {
    match e {
        ExecutorError::Config { field, reason } => invalid(format!("executor.{field}"), reason),
        other => invalid("executor", other.to_string()),
    }
}

/// A `[worker]` error as a config error naming `worker.<key>`.
pub(crate) fn worker_error(e: WorkerError) -> ConfigError {
    match e {
        WorkerError::Config { field, reason } => invalid(format!("worker.{field}"), reason),
        other => invalid("worker", other.to_string()),
    }
}

#[cfg(test)]
mod tests;
