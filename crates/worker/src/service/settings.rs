//! [`WorkerSettings`]: the `[worker]` section of `stepq.toml`, the file form of what a worker
//! service's operator sets. Its defaults are [`WorkerConfig::default`]'s and
//! [`DEFAULT_HEALTH_INTERVAL`], and it is checked by [`WorkerConfig::validate`], so each
//! setting has one default and one check.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ServiceSettings;
use crate::health::DEFAULT_HEALTH_INTERVAL;
use crate::{WorkerConfig, WorkerError};

/// `[worker]`: worker processes (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// Steps a worker runs at once; unset: the number of cores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// On shutdown, how long in-flight steps may finish before they are cancelled, in seconds.
    pub grace_period_seconds: f64,
    /// How often a worker writes its health heartbeat (what it runs, under `workers/`), in
    /// seconds (> 0). `stepq worker list` calls a worker lost once its last heartbeat is
    /// three of these old, so every process sharing the store should agree on it. Not the SQS
    /// visibility heartbeat, which follows the queue's visibility timeout.
    pub health_interval_seconds: f64,
    /// Deliveries of one message without its task finishing (its worker died or was stopped
    /// each time) after which the message is dead-lettered instead of run again (at least 1;
    /// 0 turns the cap off). Default 10.
    pub max_receive_count: u32,
    /// Address (`host:port`) of the worker's HTTP listener: `/healthz`, `/readyz` and
    /// `/metrics` (Prometheus); unset (the default): no listener. Needs the `http` feature of
    /// `stepq-worker` (on in the `stepq` and `stepq-worker` binaries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// The queues a worker consumes (`default` and names of `[queues.NAME]`; `stepq worker
    /// start --queues`). Unset: a worker process consumes the default queue only, and the
    /// in-process workers of `stepq run` every queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queues: Option<Vec<String>>,
    /// Fleet-wide tag limits: at most `limit` steps tagged `key = value` running at once
    /// across every worker sharing the run store (all runs), e.g.
    /// `[{ key = "db", value = "warehouse", limit = 4 }]`. Every worker must list the same.
    pub fleet_limits: Vec<FleetLimitSetting>,
    /// How long a fleet-wide slot stays held without renewal (renewed every third of it):
    /// a dead worker's slots are free again after at most this long (>= 1).
    pub fleet_lease_seconds: f64,
}

/// One `worker.fleet_limits` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetLimitSetting {
    /// The tag key.
    pub key: String,
    /// The tag value.
    pub value: String,
    /// Steps at once (at least 1).
    pub limit: usize,
}

impl Default for WorkerSettings {
    /// [`WorkerConfig::default`]'s grace period, concurrency = cores, the default health
    /// interval.
    fn default() -> Self {
        WorkerSettings {
            concurrency: None,
            grace_period_seconds: WorkerConfig::default().grace_period.as_secs_f64(),
            health_interval_seconds: DEFAULT_HEALTH_INTERVAL.as_secs_f64(),
            max_receive_count: stepq_broker::DEFAULT_MAX_RECEIVE_COUNT,
            http: None,
            queues: None,
            fleet_limits: Vec::new(),
            fleet_lease_seconds: crate::fleet::DEFAULT_LEASE.as_secs_f64(),
        }
    }
}

/// Why `stepq.toml` (or a section of it) could not be loaded or used: the one error of
/// every reader of the file (the worker service's [`ServiceFile`](super::file), the facade's
/// `StepqConfig`).
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
    /// The config asks for the distributed setup (SQS + S3), but this build of the `stepq`
    /// crate has no AWS support: it was built without its feature `aws`.
    #[error("`{key}` is set, but this build of stepq has no AWS support (SQS + S3): build the `stepq` crate with its feature `aws` (on by default), or remove `{key}` to run on the embedded default")]
    NoAwsSupport {
        /// What asks for AWS: a dotted key (`sqs.queue_url`, `s3.bucket`) or a section
        /// (`[sqs]`), naming the environment variable when it was set there.
        key: String,
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
    /// A value out of range or unusable under the dotted `key`.
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

#[cfg(feature = "aws")]
impl From<stepq_aws::InvalidSetting> for ConfigError {
    fn from(e: stepq_aws::InvalidSetting) -> Self {
        ConfigError::Invalid {
            key: e.key,
            reason: e.reason,
        }
    }
}

/// Environment variable overriding `worker.health_interval_seconds`.
pub const ENV_WORKER_HEALTH_INTERVAL_SECONDS: &str = "STEPQ_WORKER_HEALTH_INTERVAL_SECONDS";

/// Environment variable overriding `worker.http` (the HTTP listener's address).
pub const ENV_WORKER_HTTP: &str = "STEPQ_WORKER_HTTP";

fn config_error(field: &'static str, reason: String) -> WorkerError {
    WorkerError::Config { field, reason }
}

impl WorkerSettings {
    /// Applies `STEPQ_WORKER_HEALTH_INTERVAL_SECONDS` and `STEPQ_WORKER_HTTP` from `env` (an
    /// empty one counts as unset).
    pub fn apply_env(
        &mut self,
        env: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), WorkerError> {
        if let Some(v) = env.get(ENV_WORKER_HTTP).filter(|v| !v.trim().is_empty()) {
            self.http = Some(v.trim().to_string());
        }
        if let Some(v) = env
            .get(ENV_WORKER_HEALTH_INTERVAL_SECONDS)
            .filter(|v| !v.trim().is_empty())
        {
            self.health_interval_seconds = v.trim().parse().map_err(|_| {
                config_error(
                    "health_interval_seconds",
                    format!(
                        "{ENV_WORKER_HEALTH_INTERVAL_SECONDS}=`{v}` is not a number of seconds"
                    ),
                )
            })?;
        }
        Ok(())
    }

    /// `worker.grace_period_seconds` as a duration.
    pub fn grace_period(&self) -> Result<Duration, WorkerError> {
        Duration::try_from_secs_f64(self.grace_period_seconds).map_err(|_| {
            config_error(
                "grace_period_seconds",
                format!(
                    "must be a number of seconds >= 0, got {}",
                    self.grace_period_seconds
                ),
            )
        })
    }

    /// `worker.health_interval_seconds` as a duration (> 0).
    pub fn health_interval(&self) -> Result<Duration, WorkerError> {
        let h = self.health_interval_seconds;
        match Duration::try_from_secs_f64(h) {
            Ok(d) if !d.is_zero() && h < 1e9 => Ok(d),
            _ => Err(config_error(
                "health_interval_seconds",
                format!("must be a positive number of seconds, got {h}"),
            )),
        }
    }

    /// `worker.http` as a socket address; `None` when unset. Fails naming the setting when it
    /// is not `ip:port`. (A build without the `http` feature refuses it when a worker service
    /// starts, not here: other commands read the same file.)
    pub fn http_address(&self) -> Result<Option<std::net::SocketAddr>, WorkerError> {
        let Some(text) = &self.http else {
            return Ok(None);
        };
        let address = text.trim().parse().map_err(|_| {
            config_error(
                "http",
                format!("`{text}` is not an address such as 127.0.0.1:9464 or 0.0.0.0:9464"),
            )
        })?;
        Ok(Some(address))
    }

    /// `worker.concurrency`, or the number of cores.
    pub fn concurrency(&self) -> usize {
        self.concurrency.unwrap_or_else(default_parallelism)
    }

    /// The worker config of a worker named `name` with these settings, checked by
    /// [`WorkerConfig::validate`].
    pub fn worker_config(&self, name: impl Into<String>) -> Result<WorkerConfig, WorkerError> {
        let mut config = WorkerConfig::named(name)
            .with_concurrency(self.concurrency())
            .with_grace_period(self.grace_period()?);
        config.max_receive_count = (self.max_receive_count > 0).then_some(self.max_receive_count);
        config.validate().map_err(|e| match e {
            WorkerError::Config { field, reason } => WorkerError::Config {
                field: match field {
                    "grace_period" => "grace_period_seconds",
                    other => other,
                },
                reason,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// The service settings of a worker named `name`.
    pub fn service_settings(
        &self,
        name: impl Into<String>,
    ) -> Result<ServiceSettings, WorkerError> {
        let mut settings = ServiceSettings::new(self.worker_config(name)?)
            .with_health_interval(self.health_interval()?);
        settings.http = self.http_address()?;
        settings.fleet_limits = self
            .fleet_limits
            .iter()
            .map(|l| crate::fleet::FleetLimit::new(&l.key, &l.value, l.limit))
            .collect();
        settings.fleet_lease = Duration::try_from_secs_f64(self.fleet_lease_seconds)
            .ok()
            .filter(|d| *d >= Duration::from_secs(1))
            .ok_or_else(|| {
                config_error(
                    "fleet_lease_seconds",
                    format!(
                        "must be a number of seconds >= 1, got {}",
                        self.fleet_lease_seconds
                    ),
                )
            })?;
        // The limits' own checks (a limit of 0, one listed twice), on a throwaway store.
        if !settings.fleet_limits.is_empty() {
            crate::fleet::FleetLimiter::new(
                Arc::new(stepq_runs::InMemoryLeaseStore::new()),
                settings.fleet_limits.clone(),
                settings.fleet_lease,
            )?;
        }
        Ok(settings)
    }

    /// Checks every setting.
    pub fn validate(&self) -> Result<(), WorkerError> {
        self.service_settings("check").map(|_| ())
    }
}

/// The number of cores (at least 1).
pub fn default_parallelism() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(settings: &WorkerSettings) -> &'static str {
        match settings.validate() {
            Err(WorkerError::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_come_from_the_worker_and_round_trip() {
        let settings = WorkerSettings::default();
        let service = settings.service_settings("w").unwrap();
        assert_eq!(
            service.worker.grace_period,
            WorkerConfig::default().grace_period
        );
        assert_eq!(service.worker.concurrency, default_parallelism());
        assert_eq!(service.health_interval, DEFAULT_HEALTH_INTERVAL);
        let back: WorkerSettings = toml::from_str(&toml::to_string(&settings).unwrap()).unwrap();
        assert_eq!(back, settings);
    }

    #[test]
    fn errors_name_the_setting_as_written() {
        let with = |f: fn(&mut WorkerSettings)| {
            let mut s = WorkerSettings::default();
            f(&mut s);
            s
        };
        assert_eq!(field_of(&with(|s| s.concurrency = Some(0))), "concurrency");
        assert_eq!(
            field_of(&with(|s| s.grace_period_seconds = -1.0)),
            "grace_period_seconds"
        );
        assert_eq!(
            field_of(&with(|s| s.health_interval_seconds = 0.0)),
            "health_interval_seconds"
        );
        assert_eq!(
            field_of(&with(|s| s.http = Some("localhost".into()))),
            "http"
        );
        assert!(toml::from_str::<WorkerSettings>("concurency = 2").is_err());
        let set: WorkerSettings =
            toml::from_str("concurrency = 3\ngrace_period_seconds = 1.5").unwrap();
        let config = set.worker_config("w").unwrap();
        assert_eq!(config.concurrency, 3);
        assert_eq!(config.grace_period, Duration::from_millis(1500));
    }
}
