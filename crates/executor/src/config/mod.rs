//! Executor settings: limits, retries, timeouts, and their validation; [`settings`] is
//! their file form (`[executor]` in `stepq.toml`).

pub mod settings;

use std::time::Duration;

use stepq_plan::{Backoff, RetryMode, RetryPolicy};

use crate::error::ExecutorError;

pub use settings::{ExecutorSettings, RetryModeSetting, TagLimitSetting};

/// At most `limit` steps whose tag `key` equals `value` are in flight at once (per run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagLimit {
    /// Tag key, e.g. `db`.
    pub key: String,
    /// Tag value, e.g. `warehouse`.
    pub value: String,
    /// Steps with this tag allowed in flight at once (at least 1).
    pub limit: usize,
}

impl TagLimit {
    /// At most `limit` steps tagged `key=value` in flight.
    pub fn new(key: impl Into<String>, value: impl Into<String>, limit: usize) -> Self {
        TagLimit {
            key: key.into(),
            value: value.into(),
            limit,
        }
    }
}

/// How often, and how patiently, a temporary backend error (network, throttling) is tried
/// again before it counts against the step.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendRetry {
    /// Temporary errors tolerated in a row; one more fails the step attempt.
    pub retries: u32,
    /// Delay between tries.
    pub backoff: Backoff,
}

impl Default for BackendRetry {
    /// 5 tries again, exponential backoff from 100 ms to 5 s with jitter.
    fn default() -> Self {
        BackendRetry {
            retries: 5,
            backoff: Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5)),
        }
    }
}

/// Settings of an [`Executor`](crate::Executor), shared by every run it starts.
///
/// The defaults suit the embedded default and small fleets: up to 1,024 steps of a run in
/// flight, no tag limits, retries as each step's policy says, no step timeout, no fail-fast,
/// 10 s of grace for in-flight steps on interrupt.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutorConfig {
    /// Steps of one run in flight at once (queued or running), at least 1. Default 1,024:
    /// enough to keep a large fleet busy while bounding the queue depth and memory one run can
    /// take; raise it for fleets with more worker slots than that.
    pub max_in_flight: usize,
    /// Per-tag-value limits, on top of `max_in_flight`.
    pub tag_limits: Vec<TagLimit>,
    /// How failed steps are retried.
    pub retry_mode: RetryMode,
    /// Retry policy of steps that declare none; `None` (default) makes a plain failure of such
    /// a step final.
    pub default_retry: Option<RetryPolicy>,
    /// Bounds retries an op asks for (a failure with `retry_requested`) on a step that has no
    /// policy and when `default_retry` is `None`: max attempts, and the backoff used when the
    /// op gives no delay. Default: 3 attempts, exponential backoff from 1 s to 60 s.
    pub requested_retry: RetryPolicy,
    /// Longest wait for the result of one step attempt; an attempt without a result by then
    /// fails with kind `timeout` (and is retried per its policy). `None` (default) waits
    /// without a per-step bound: a lost worker is then noticed through the broker's redelivery
    /// of its message (visibility timeout / heartbeats).
    pub step_timeout: Option<Duration>,
    /// On the first step failure that is final, cancel everything in flight and end the run
    /// FAILURE (default `false`: independent branches go on).
    pub fail_fast: bool,
    /// On interrupt or fail-fast, how long in-flight steps get to report before they are
    /// recorded as canceled. Default 10 s.
    pub cancel_grace: Duration,
    /// Waiting for task results: temporary result-backend errors are waited out this way; one
    /// more fails the attempt with kind `result_backend`. (The wait itself is bounded by
    /// `step_timeout`, and is a notification where the backend supports one.)
    pub result_wait: BackendRetry,
    /// Sending step tasks: temporary broker errors are re-tried this way; one more fails the
    /// attempt with kind `submit`.
    pub submit_retry: BackendRetry,
    /// Capacity of a run's event stream (at least 1). A slow consumer holds the loop back
    /// (memory stays flat); a dropped one is detected and no longer fed. Default 1,024.
    pub event_buffer: usize,
    /// Small outputs that come back inline in a step's report are handed to its downstream
    /// steps inside their messages (`ExecuteStepArgs::inline_inputs`), up to this many bytes
    /// of values per message; the rest are read from the output store, which holds every
    /// output either way. A value is kept in memory only until the last step that reads it
    /// has been sent. 0 turns it off. Default 64 KiB.
    pub inline_inputs_per_message: usize,
    /// Send a linear run of steps as one task: a ready step with exactly one downstream step
    /// in the plan, which reads only from it, has the same tags and the same retry policy, is
    /// sent together with it (and so on, up to `max_fused_steps`). The worker runs them in
    /// order, handing outputs on in memory (and storing them). Events, attempts, retries and
    /// cancellation stay per step; a fused task counts once against `max_in_flight` and the
    /// tag limits, and its `step_timeout` is the per-step timeout times its steps. Default
    /// `true`.
    pub fuse_chains: bool,
    /// Most steps one fused task carries (at least 1; 1 is the same as `fuse_chains = false`).
    /// Default 16.
    pub max_fused_steps: usize,
    /// Ask workers for progress entries (`stepq_protocol::PROGRESS_LABEL`): one stored in the
    /// result backend right before each step of a task starts, so the run's events record a
    /// step's `StepStart` when it starts and, in a fused task, each step's `StepSuccess` when
    /// it ends (a resume after an orchestrator crash then knows them). One more result
    /// written, read and deleted per step. Default `true`.
    pub step_progress: bool,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            max_in_flight: 1024,
            tag_limits: Vec::new(),
            retry_mode: RetryMode::Enabled,
            default_retry: None,
            requested_retry: RetryPolicy::new(
                3,
                Backoff::exponential(Duration::from_secs(1), Duration::from_secs(60)),
            ),
            step_timeout: None,
            fail_fast: false,
            cancel_grace: Duration::from_secs(10),
            result_wait: BackendRetry::default(),
            submit_retry: BackendRetry::default(),
            event_buffer: 1024,
            inline_inputs_per_message: 64 * 1024,
            fuse_chains: true,
            max_fused_steps: 16,
            step_progress: true,
        }
    }
}

fn config_error(field: &'static str, reason: impl Into<String>) -> ExecutorError {
    ExecutorError::Config {
        field,
        reason: reason.into(),
    }
}

fn check_policy(field: &'static str, policy: &RetryPolicy) -> Result<(), ExecutorError> {
    if policy.max_attempts == 0 {
        return Err(config_error(field, "max_attempts must be at least 1"));
    }
    check_backoff(field, &policy.backoff)
}

fn check_backoff(field: &'static str, backoff: &Backoff) -> Result<(), ExecutorError> {
    if !(backoff.multiplier.is_finite() && backoff.multiplier >= 1.0) {
        return Err(config_error(
            field,
            format!(
                "backoff multiplier must be a finite number >= 1, got {}",
                backoff.multiplier
            ),
        ));
    }
    Ok(())
}

impl ExecutorConfig {
    /// Checks every field; the error names the first unusable one.
    pub fn validate(&self) -> Result<(), ExecutorError> {
        if self.max_in_flight == 0 {
            return Err(config_error("max_in_flight", "must be at least 1"));
        }
        for (i, t) in self.tag_limits.iter().enumerate() {
            if t.limit == 0 {
                return Err(config_error(
                    "tag_limits",
                    format!("limit of tag {}={} must be at least 1", t.key, t.value),
                ));
            }
            if self.tag_limits[..i]
                .iter()
                .any(|o| o.key == t.key && o.value == t.value)
            {
                return Err(config_error(
                    "tag_limits",
                    format!("tag {}={} is limited twice", t.key, t.value),
                ));
            }
        }
        if let Some(p) = &self.default_retry {
            check_policy("default_retry", p)?;
        }
        check_policy("requested_retry", &self.requested_retry)?;
        if self.step_timeout == Some(Duration::ZERO) {
            return Err(config_error(
                "step_timeout",
                "must be longer than zero (use None for no timeout)",
            ));
        }
        check_backoff("result_wait.backoff", &self.result_wait.backoff)?;
        check_backoff("submit_retry.backoff", &self.submit_retry.backoff)?;
        if self.event_buffer == 0 {
            return Err(config_error("event_buffer", "must be at least 1"));
        }
        if self.max_fused_steps == 0 {
            return Err(config_error("max_fused_steps", "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(config: ExecutorConfig) -> &'static str {
        match config.validate() {
            Err(ExecutorError::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn default_is_valid() {
        ExecutorConfig::default().validate().unwrap();
    }

    #[test]
    fn zero_max_in_flight_names_the_field() {
        let config = ExecutorConfig {
            max_in_flight: 0,
            ..Default::default()
        };
        assert_eq!(field_of(config), "max_in_flight");
    }

    #[test]
    fn zero_tag_limit_names_the_field_and_tag() {
        let config = ExecutorConfig {
            tag_limits: vec![TagLimit::new("db", "warehouse", 0)],
            ..Default::default()
        };
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("tag_limits"), "{err}");
        assert!(err.to_string().contains("db=warehouse"), "{err}");
    }

    #[test]
    fn duplicate_tag_limit_is_rejected() {
        let config = ExecutorConfig {
            tag_limits: vec![
                TagLimit::new("db", "warehouse", 1),
                TagLimit::new("db", "warehouse", 2),
            ],
            ..Default::default()
        };
        assert_eq!(field_of(config), "tag_limits");
    }

    #[test]
    fn zero_attempt_policies_are_rejected() {
        let config = ExecutorConfig {
            default_retry: Some(RetryPolicy::new(0, Backoff::none())),
            ..Default::default()
        };
        assert_eq!(field_of(config), "default_retry");
        let config = ExecutorConfig {
            requested_retry: RetryPolicy::new(0, Backoff::none()),
            ..Default::default()
        };
        assert_eq!(field_of(config), "requested_retry");
    }

    #[test]
    fn shrinking_backoff_is_rejected() {
        let mut backoff = Backoff::none();
        backoff.multiplier = 0.5;
        let config = ExecutorConfig {
            requested_retry: RetryPolicy::new(2, backoff.clone()),
            ..Default::default()
        };
        assert_eq!(field_of(config), "requested_retry");
        let config = ExecutorConfig {
            result_wait: BackendRetry {
                retries: 1,
                backoff: backoff.clone(),
            },
            ..Default::default()
        };
        assert_eq!(field_of(config), "result_wait.backoff");
        let config = ExecutorConfig {
            submit_retry: BackendRetry {
                retries: 1,
                backoff,
            },
            ..Default::default()
        };
        assert_eq!(field_of(config), "submit_retry.backoff");
    }

    #[test]
    fn zero_step_timeout_and_event_buffer_are_rejected() {
        let config = ExecutorConfig {
            step_timeout: Some(Duration::ZERO),
            ..Default::default()
        };
        assert_eq!(field_of(config), "step_timeout");
        let config = ExecutorConfig {
            event_buffer: 0,
            ..Default::default()
        };
        assert_eq!(field_of(config), "event_buffer");
    }

    #[test]
    fn zero_max_fused_steps_is_rejected() {
        let config = ExecutorConfig {
            max_fused_steps: 0,
            ..Default::default()
        };
        assert_eq!(field_of(config), "max_fused_steps");
    }
}
