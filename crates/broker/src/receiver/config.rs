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
}

impl Default for ReceiverConfig {
    /// Concurrency = available cores, 30 s grace, heartbeats fitted to SQS's default 10 s
    /// visibility timeout (every 10/3 s, each extending visibility by 10 s: a message is
    /// extended well before its first timeout lapses, and a killed worker's message is
    /// delivered again within 10 s), worker name `hostname-pid`.
    fn default() -> Self {
        ReceiverConfig {
            concurrency: std::thread::available_parallelism().map_or(1, |n| n.get()),
            grace_period: Duration::from_secs(30),
            heartbeat_extension: Duration::from_secs(10),
            heartbeat_interval: Some(Duration::from_secs(10) / 3),
            worker_name: default_worker_name(),
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
pub(crate) fn default_worker_name() -> String {
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
