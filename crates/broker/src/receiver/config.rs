//! Receiver settings: [`ReceiverConfig`], its defaults and validation, and the default worker
//! name (`hostname-pid`), which the SQS broker also uses to tag the queues it owns.

use std::time::Duration;

use super::Receiver;
use crate::error::BrokerError;

/// Receiver settings.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// Tasks run at once (default: number of cores).
    pub concurrency: usize,
    /// On stop, how long in-flight tasks may run before they are cancelled and nacked.
    pub grace_period: Duration,
    /// While a task runs, its message's visibility is extended by this much ...
    pub heartbeat_extension: Duration,
    /// ... every this often. `None` disables heartbeats.
    pub heartbeat_interval: Option<Duration>,
    /// Name written into logs and results.
    pub worker_name: String,
    /// A message delivered more often than this without its task finishing (its worker died
    /// or was stopped each time) is not run again: it gets a failed result of kind
    /// `DeadLettered` and moves to the broker's dead-letter place (see
    /// [`dead_letter`](crate::dead_letter)). Graceful hand-backs (a worker stopping, excess
    /// prefetch, a result that could not be saved) count as deliveries on SQS. `None`:
    /// delivered forever. Default [`DEFAULT_MAX_RECEIVE_COUNT`](crate::DEFAULT_MAX_RECEIVE_COUNT)
    /// (10).
    pub max_receive_count: Option<u32>,
}

impl Default for ReceiverConfig {
    /// Concurrency = available cores, 30 s grace, heartbeats fitted to the SQS broker's
    /// default 6 s visibility timeout (every 2 s, each extending visibility by 6 s: a message
    /// is extended well before its first timeout lapses, and a killed worker's message is
    /// delivered again within 6 s of its last heartbeat), worker name `hostname-pid`.
    fn default() -> Self {
        ReceiverConfig {
            concurrency: std::thread::available_parallelism().map_or(1, |n| n.get()),
            grace_period: Duration::from_secs(30),
            heartbeat_extension: Duration::from_secs(6),
            heartbeat_interval: Some(Duration::from_secs(2)),
            worker_name: default_worker_name(),
            max_receive_count: Some(crate::DEFAULT_MAX_RECEIVE_COUNT),
        }
    }
}

impl ReceiverConfig {
    /// Checks the settings; an invalid one is [`BrokerError::Config`] naming the field.
    pub fn validate(&self) -> Result<(), BrokerError> {
        if self.concurrency == 0 {
            return Err(BrokerError::Config {
                field: "concurrency",
                reason: "must be at least 1".into(),
            });
        }
        if let Some(every) = self.heartbeat_interval {
            if every.is_zero() {
                return Err(BrokerError::Config {
                    field: "heartbeat_interval",
                    reason: "must be positive (use None to disable heartbeats)".into(),
                });
            }
            if self.heartbeat_extension <= every {
                return Err(BrokerError::Config {
                    field: "heartbeat_extension",
                    reason: format!(
                        "{:?} must exceed heartbeat_interval ({every:?}), or the message becomes \
                         visible again between heartbeats",
                        self.heartbeat_extension
                    ),
                });
            }
        }
        Ok(())
    }
}

/// `hostname-pid`: this process's default worker name (also the owner tag of its SQS queues),
/// the host name taken from `$HOSTNAME` or `/etc/hostname`.
pub fn default_worker_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!("{host}-{}", std::process::id())
}

impl Receiver {
    /// Replaces the config.
    pub fn with_config(mut self, config: ReceiverConfig) -> Self {
        self.config = config;
        self
    }
    /// The config.
    pub fn config(&self) -> &ReceiverConfig {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid config with heartbeats every `every`, each extending visibility by `by`.
    fn heartbeats(every: Option<Duration>, by: Duration) -> ReceiverConfig {
        ReceiverConfig {
            concurrency: 1,
            heartbeat_interval: every,
            heartbeat_extension: by,
            ..ReceiverConfig::default()
        }
    }

    #[test]
    fn an_extension_only_just_above_the_interval_is_valid() {
        let every = Duration::from_secs(1);
        heartbeats(Some(every), every + Duration::from_nanos(1))
            .validate()
            .unwrap();
        match heartbeats(Some(every), every).validate() {
            Err(BrokerError::Config { field, .. }) => assert_eq!(field, "heartbeat_extension"),
            other => panic!("expected a heartbeat_extension error, got {other:?}"),
        }
    }

    #[test]
    fn without_heartbeats_the_extension_is_not_checked() {
        heartbeats(None, Duration::ZERO).validate().unwrap();
    }

    #[test]
    fn the_default_worker_name_is_a_host_name_then_the_process_id() {
        let name = default_worker_name();
        let host = name
            .strip_suffix(&format!("-{}", std::process::id()))
            .unwrap_or_else(|| panic!("{name:?} does not end in the process id"));
        assert!(!host.is_empty(), "{name:?}");
        assert_eq!(host, host.trim(), "{name:?}");
    }
}
