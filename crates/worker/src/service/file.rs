//! [`ServiceFile`]: what the `stepq-worker` binary reads of `stepq.toml` — the same file the
//! `stepq` command line reads, with the same sections and checks (the `[executor]` section is
//! accepted and left to orchestrators).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use stepq_aws::{S3Settings, SqsSettings};

use super::settings::ConfigError;
use super::WorkerSettings;

/// The sections of `stepq.toml` a worker service reads (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceFile {
    /// Forces the embedded default, which a worker process cannot serve.
    pub task_always_eager: bool,
    /// Whether the worker runs a cancel listener (default true).
    pub enable_cancellation: bool,
    /// Local state directory (embedded default only).
    pub state_dir: PathBuf,
    /// How the embedded default keeps its state (embedded default only).
    pub state_store: super::StateStore,
    /// `[sqs]`.
    pub sqs: SqsSettings,
    /// `[s3]`.
    pub s3: S3Settings,
    /// `[worker]`.
    pub worker: WorkerSettings,
    /// `[queues.NAME]`: named queues besides the default one.
    pub queues: BTreeMap<String, super::routing::QueueSettings>,
    /// `[priority]`: priority levels (none when absent).
    pub priority: Option<super::routing::PrioritySettings>,
    /// `[signing]`: signed task messages (off when absent).
    pub signing: super::SigningSettings,
    /// `[executor]`: read by orchestrators, not by workers.
    pub executor: Option<toml::Table>,
    /// `[retention]`: read by `stepq run` (the facade's `RetentionSettings`), not by workers.
    pub retention: Option<toml::Table>,
}

impl Default for ServiceFile {
    fn default() -> Self {
        ServiceFile {
            task_always_eager: false,
            enable_cancellation: true,
            state_dir: PathBuf::from(".stepq"),
            state_store: super::StateStore::default(),
            sqs: SqsSettings::default(),
            s3: S3Settings::default(),
            worker: WorkerSettings::default(),
            queues: BTreeMap::new(),
            priority: None,
            signing: super::SigningSettings::default(),
            executor: None,
            retention: None,
        }
    }
}

impl ServiceFile {
    /// Reads `path` (or the defaults), applies the environment overrides in `env`
    /// (`STEPQ_SQS_QUEUE_URL`, `STEPQ_S3_BUCKET_NAME`, …) and checks every section,
    /// `[signing]`'s keys in `env` included.
    pub fn load(path: Option<&Path>, env: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let mut file = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.to_path_buf(),
                    message: e.to_string().trim_end().to_string(),
                })?
            }
            None => ServiceFile::default(),
        };
        stepq_aws::settings::apply_env(&mut file.sqs, &mut file.s3, env);
        file.worker.apply_env(env).map_err(worker_invalid)?;
        file.validate()?;
        // Keys named by environment variable are read (and checked) here as well.
        file.signing.signer(env)?;
        Ok(file)
    }

    /// Checks every section, and that the file names a queue and a bucket: a worker process
    /// serves a shared queue, which the embedded default does not have.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.s3.validate()?;
        self.sqs.validate(&self.s3)?;
        self.worker.validate().map_err(worker_invalid)?;
        if self.task_always_eager || self.sqs.queue_url.is_none() {
            return Err(ConfigError::Invalid {
                key: "sqs.queue_url".into(),
                reason: "a worker process needs a distributed config: set `sqs.queue_url` (or STEPQ_SQS_QUEUE_URL) and `s3.bucket`, and not `task_always_eager`".into(),
            });
        }
        if self.s3.bucket.is_none() {
            return Err(ConfigError::Invalid {
                key: "s3.bucket".into(),
                reason: "required when sqs.queue_url is set (results and outputs live in S3)"
                    .into(),
            });
        }
        self.routing().map(|_| ())
    }

    /// The routing of `[queues]`, `[priority]` and `worker.queues`; a worker process
    /// consumes the default queue only unless `worker.queues` says otherwise.
    pub fn routing(&self) -> Result<super::routing::Routing, ConfigError> {
        let default = [stepq_broker::routing::DEFAULT_QUEUE.to_string()];
        let consume = self.worker.queues.as_deref().unwrap_or(&default);
        let routing = super::routing::Routing::from_config(
            &self.queues,
            self.priority.as_ref(),
            Some(consume),
            self.sqs.queue_url.as_deref(),
        )?;
        if routing.is_routed() && self.sqs.config_source.dead_letter_queue_url.is_some() {
            return Err(ConfigError::invalid(
                "sqs.config_source.dead_letter_queue_url",
                super::routing::SHARED_DLQ_REFUSED,
            ));
        }
        Ok(routing)
    }
}

fn worker_invalid(e: crate::WorkerError) -> ConfigError {
    match e {
        crate::WorkerError::Config { field, reason } => ConfigError::Invalid {
            key: format!("worker.{field}"),
            reason,
        },
        other => ConfigError::Invalid {
            key: "worker".into(),
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<ServiceFile, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stepq.toml");
        std::fs::write(&path, text).unwrap();
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ServiceFile::load(Some(&path), &env)
    }

    #[test]
    fn a_distributed_file_loads_and_its_executor_section_is_left_alone() {
        let file = load(
            "[sqs]\nqueue_url = \"https://sqs.us-east-1.amazonaws.com/1/q\"\n[s3]\nbucket = \"b-1\"\n[executor]\nmax_in_flight = 3\n[retention]\nkeep_days = 7\n[worker]\nconcurrency = 2\n",
            &[],
        )
        .unwrap();
        assert_eq!(file.worker.concurrency, Some(2));
        assert!(file.enable_cancellation);
    }

    #[test]
    fn the_embedded_default_unknown_keys_and_bad_values_are_refused_by_name() {
        let err = load("", &[]).unwrap_err().to_string();
        assert!(err.contains("sqs.queue_url"), "{err}");
        let err = load("[workr]\n", &[]).unwrap_err().to_string();
        assert!(err.contains("workr"), "{err}");
        let env = [
            (
                "STEPQ_SQS_QUEUE_URL",
                "https://sqs.us-east-1.amazonaws.com/1/q",
            ),
            ("STEPQ_S3_BUCKET_NAME", "b-1"),
        ];
        load("", &env).unwrap();
        let err = load("[worker]\nhealth_interval_seconds = 0\n", &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("worker.health_interval_seconds"), "{err}");
        let err = load("[s3]\nregion_name = \"Moon 1\"\n", &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("s3.region_name"), "{err}");
    }
}
