//! Whether and when a failed step attempt is retried.

use std::time::Duration;

use stepq_plan::{RetryMode, RetryPolicy};

use crate::config::ExecutorConfig;

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RetryDecision {
    /// Queue attempt `next_attempt` after `delay`.
    Retry {
        /// The attempt that runs next.
        next_attempt: u32,
        /// Delay before it is queued.
        delay: Duration,
    },
    /// The failure is final.
    Final,
    /// A retry is due but the run defers it: the step ends failed, a later resume reruns it.
    Deferred,
}

/// Decides the retry of attempt `attempt` (1-based, counting earlier runs) of a step with
/// `step_policy`, which failed with an op retry request `retry_requested` (`Some(after_ms)`).
///
/// The policy is the step's, else the config's `default_retry`; a step with neither retries
/// only when its op asks, bounded by `requested_retry`. An op-given delay wins over backoff.
pub(crate) fn decide(
    config: &ExecutorConfig,
    step_policy: Option<&RetryPolicy>,
    attempt: u32,
    retry_requested: Option<Option<u64>>,
) -> RetryDecision {
    if config.retry_mode == RetryMode::Disabled {
        return RetryDecision::Final;
    }
    let policy = match step_policy.or(config.default_retry.as_ref()) {
        Some(p) => p,
        None if retry_requested.is_some() => &config.requested_retry,
        None => return RetryDecision::Final,
    };
    if attempt >= policy.max_attempts {
        return RetryDecision::Final;
    }
    if config.retry_mode == RetryMode::Deferred {
        return RetryDecision::Deferred;
    }
    let next_attempt = attempt + 1;
    let delay = match retry_requested.flatten() {
        Some(ms) => Duration::from_millis(ms),
        None => policy.backoff.delay_before(next_attempt),
    };
    RetryDecision::Retry {
        next_attempt,
        delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stepq_plan::Backoff;

    fn fixed(ms: u64) -> Backoff {
        Backoff {
            initial: Duration::from_millis(ms),
            multiplier: 2.0,
            max: Duration::from_secs(10),
            jitter: false,
        }
    }

    fn config(mode: RetryMode) -> ExecutorConfig {
        ExecutorConfig {
            retry_mode: mode,
            requested_retry: RetryPolicy::new(2, fixed(7)),
            ..Default::default()
        }
    }

    #[test]
    fn no_policy_and_no_request_is_final() {
        assert_eq!(
            decide(&config(RetryMode::Enabled), None, 1, None),
            RetryDecision::Final
        );
    }

    #[test]
    fn step_policy_retries_with_backoff_until_max_attempts() {
        let policy = RetryPolicy::new(3, fixed(10));
        let c = config(RetryMode::Enabled);
        assert_eq!(
            decide(&c, Some(&policy), 1, None),
            RetryDecision::Retry {
                next_attempt: 2,
                delay: Duration::from_millis(10)
            }
        );
        assert_eq!(
            decide(&c, Some(&policy), 2, None),
            RetryDecision::Retry {
                next_attempt: 3,
                delay: Duration::from_millis(20)
            }
        );
        assert_eq!(decide(&c, Some(&policy), 3, None), RetryDecision::Final);
    }

    #[test]
    fn default_policy_applies_to_steps_without_one() {
        let c = ExecutorConfig {
            default_retry: Some(RetryPolicy::new(2, Backoff::none())),
            ..config(RetryMode::Enabled)
        };
        assert_eq!(
            decide(&c, None, 1, None),
            RetryDecision::Retry {
                next_attempt: 2,
                delay: Duration::ZERO
            }
        );
        assert_eq!(decide(&c, None, 2, None), RetryDecision::Final);
    }

    #[test]
    fn op_request_retries_without_policy_and_honours_its_delay() {
        let c = config(RetryMode::Enabled);
        assert_eq!(
            decide(&c, None, 1, Some(Some(250))),
            RetryDecision::Retry {
                next_attempt: 2,
                delay: Duration::from_millis(250)
            }
        );
        assert_eq!(
            decide(&c, None, 1, Some(None)),
            RetryDecision::Retry {
                next_attempt: 2,
                delay: Duration::from_millis(7)
            }
        );
        assert_eq!(decide(&c, None, 2, Some(None)), RetryDecision::Final);
    }

    #[test]
    fn disabled_mode_never_retries() {
        let policy = RetryPolicy::new(5, Backoff::none());
        let c = config(RetryMode::Disabled);
        assert_eq!(decide(&c, Some(&policy), 1, None), RetryDecision::Final);
        assert_eq!(decide(&c, None, 1, Some(None)), RetryDecision::Final);
    }

    #[test]
    fn deferred_mode_defers_what_would_retry() {
        let policy = RetryPolicy::new(5, Backoff::none());
        let c = config(RetryMode::Deferred);
        assert_eq!(decide(&c, Some(&policy), 1, None), RetryDecision::Deferred);
        assert_eq!(decide(&c, None, 1, Some(None)), RetryDecision::Deferred);
        assert_eq!(decide(&c, None, 1, None), RetryDecision::Final);
        assert_eq!(decide(&c, Some(&policy), 5, None), RetryDecision::Final);
    }
}
