//! [`ExecutorSettings`]: the `[executor]` section of `stepq.toml`, the file form of the
//! [`ExecutorConfig`] fields people set. Its defaults are [`ExecutorConfig::default`]'s and it
//! is checked by [`ExecutorConfig::validate`], so each setting has one default and one check.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use stepq_plan::RetryMode;

use super::{ExecutorConfig, TagLimit};
use crate::error::ExecutorError;

/// How failed steps are retried, as written in a file (`enabled | disabled | deferred`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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

impl From<RetryModeSetting> for RetryMode {
    fn from(m: RetryModeSetting) -> Self {
        match m {
            RetryModeSetting::Enabled => RetryMode::Enabled,
            RetryModeSetting::Disabled => RetryMode::Disabled,
            RetryModeSetting::Deferred => RetryMode::Deferred,
        }
    }
}

impl From<RetryMode> for RetryModeSetting {
    fn from(m: RetryMode) -> Self {
        match m {
            RetryMode::Enabled => RetryModeSetting::Enabled,
            RetryMode::Disabled => RetryModeSetting::Disabled,
            RetryMode::Deferred => RetryModeSetting::Deferred,
        }
    }
}

/// One entry of `tag_concurrency_limits`: at most `limit` steps of a run whose tag `key`
/// equals `value` in flight at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagLimitSetting {
    /// Tag key.
    pub key: String,
    /// Tag value.
    pub value: String,
    /// Maximum steps in flight (>= 1).
    pub limit: usize,
}

/// `[executor]`: the orchestration loop's settings (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutorSettings {
    /// Maximum steps of one run in flight at once (>= 1).
    pub max_in_flight: usize,
    /// Per-tag limits.
    pub tag_concurrency_limits: Vec<TagLimitSetting>,
    /// Retry mode.
    pub retry_mode: RetryModeSetting,
    /// Longest a step may take from being queued to its result, in seconds; unset: no bound
    /// beyond the broker's redelivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_timeout_seconds: Option<f64>,
    /// Interrupt the run at the first step failure instead of finishing independent branches.
    pub fail_fast: bool,
    /// On interrupt or fail-fast, how long in-flight steps get to report before they are
    /// recorded as canceled, in seconds.
    pub cancel_grace_seconds: f64,
    /// Send a linear run of steps (each the only downstream step of the previous one, reading
    /// only from it, same tags and retry policy) as one task, up to 16 steps: one queue
    /// round trip for the run instead of one per step. Events, attempts and retries stay per
    /// step.
    pub fuse_chains: bool,
    /// Workers report each step's start (and a fused chain's finished steps) when it
    /// happens, through the result backend, so `stepq status` shows RUNNING and a resume
    /// after an orchestrator crash knows the finished steps. One more result per step.
    /// Unset: [`ExecutorConfig::default`]'s (on).
    pub step_progress: Option<bool>,
}

impl Default for ExecutorSettings {
    /// [`ExecutorConfig::default`]'s values.
    fn default() -> Self {
        let config = ExecutorConfig::default();
        ExecutorSettings {
            max_in_flight: config.max_in_flight,
            tag_concurrency_limits: Vec::new(),
            retry_mode: config.retry_mode.into(),
            step_timeout_seconds: config.step_timeout.map(|d| d.as_secs_f64()),
            fail_fast: config.fail_fast,
            cancel_grace_seconds: config.cancel_grace.as_secs_f64(),
            fuse_chains: config.fuse_chains,
            step_progress: None,
        }
    }
}

/// The file's name of an [`ExecutorConfig`] field, for errors that name the key people wrote.
fn setting_name(field: &'static str) -> &'static str {
    match field {
        "tag_limits" => "tag_concurrency_limits",
        "step_timeout" => "step_timeout_seconds",
        "cancel_grace" => "cancel_grace_seconds",
        other => other,
    }
}

/// A number of seconds as a duration; `field` names it in the error.
fn seconds(field: &'static str, secs: f64) -> Result<Duration, ExecutorError> {
    Duration::try_from_secs_f64(secs).map_err(|_| ExecutorError::Config {
        field,
        reason: format!("must be a number of seconds >= 0, got {secs}"),
    })
}

impl ExecutorSettings {
    /// `base` with these settings applied, checked by [`ExecutorConfig::validate`]. Errors
    /// name the setting as written in the file (e.g. `step_timeout_seconds`).
    pub fn apply_to(&self, base: ExecutorConfig) -> Result<ExecutorConfig, ExecutorError> {
        let step_timeout = self
            .step_timeout_seconds
            .map(|s| seconds("step_timeout_seconds", s))
            .transpose()?;
        let config = ExecutorConfig {
            max_in_flight: self.max_in_flight,
            tag_limits: self
                .tag_concurrency_limits
                .iter()
                .map(|t| TagLimit::new(t.key.clone(), t.value.clone(), t.limit))
                .collect(),
            retry_mode: self.retry_mode.into(),
            step_timeout,
            fail_fast: self.fail_fast,
            cancel_grace: seconds("cancel_grace_seconds", self.cancel_grace_seconds)?,
            fuse_chains: self.fuse_chains,
            step_progress: self.step_progress.unwrap_or(base.step_progress),
            ..base
        };
        if let Some(t) = self
            .tag_concurrency_limits
            .iter()
            .find(|t| t.key.is_empty())
        {
            return Err(ExecutorError::Config {
                field: "tag_concurrency_limits",
                reason: format!("a tag key must not be empty (value `{}`)", t.value),
            });
        }
        config.validate().map_err(|e| match e {
            ExecutorError::Config { field, reason } => ExecutorError::Config {
                field: setting_name(field),
                reason,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// The settings as an [`ExecutorConfig`] (its other fields at their defaults).
    pub fn to_config(&self) -> Result<ExecutorConfig, ExecutorError> {
        self.apply_to(ExecutorConfig::default())
    }

    /// Checks every setting (see [`apply_to`](ExecutorSettings::apply_to)).
    pub fn validate(&self) -> Result<(), ExecutorError> {
        self.to_config().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(settings: &ExecutorSettings) -> &'static str {
        match settings.validate() {
            Err(ExecutorError::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_the_configs_and_round_trip() {
        let settings = ExecutorSettings::default();
        assert_eq!(settings.to_config().unwrap(), ExecutorConfig::default());
        assert_eq!(settings.max_in_flight, 1024);
        let text = toml::to_string(&settings).unwrap();
        let back: ExecutorSettings = toml::from_str(&text).unwrap();
        assert_eq!(back, settings);
    }

    #[test]
    fn file_values_reach_the_config() {
        let settings: ExecutorSettings = toml::from_str(
            r#"
            max_in_flight = 64
            retry_mode = "deferred"
            step_timeout_seconds = 2.5
            cancel_grace_seconds = 0
            fuse_chains = false
            tag_concurrency_limits = [{ key = "db", value = "warehouse", limit = 2 }]
            "#,
        )
        .unwrap();
        let config = settings.to_config().unwrap();
        assert_eq!(config.max_in_flight, 64);
        assert_eq!(config.retry_mode, RetryMode::Deferred);
        assert_eq!(config.step_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(config.cancel_grace, Duration::ZERO);
        assert!(!config.fuse_chains);
        assert_eq!(config.tag_limits, vec![TagLimit::new("db", "warehouse", 2)]);
    }

    #[test]
    fn errors_name_the_setting_as_written() {
        fn bad(f: impl FnOnce(&mut ExecutorSettings)) -> &'static str {
            let mut s = ExecutorSettings::default();
            f(&mut s);
            field_of(&s)
        }
        assert_eq!(bad(|s| s.max_in_flight = 0), "max_in_flight");
        assert_eq!(
            bad(|s| s.step_timeout_seconds = Some(0.0)),
            "step_timeout_seconds"
        );
        assert_eq!(
            bad(|s| s.step_timeout_seconds = Some(-1.0)),
            "step_timeout_seconds"
        );
        assert_eq!(
            bad(|s| s.cancel_grace_seconds = f64::NAN),
            "cancel_grace_seconds"
        );
        fn limit(key: &str, limit: usize) -> TagLimitSetting {
            TagLimitSetting {
                key: key.into(),
                value: "v".into(),
                limit,
            }
        }
        assert_eq!(
            bad(|s| s.tag_concurrency_limits = vec![limit("db", 0)]),
            "tag_concurrency_limits"
        );
        assert_eq!(
            bad(|s| s.tag_concurrency_limits = vec![limit("", 1)]),
            "tag_concurrency_limits"
        );
        assert!(toml::from_str::<ExecutorSettings>("max_inflight = 3").is_err());
    }
}
