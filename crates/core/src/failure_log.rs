//! [`FailureLog`]: one operation's repeated failures logged once per period, not once per
//! attempt, and its recovery logged once; [`SharedFailureLog`]: the same for an operation
//! many tasks of a process do at once (storing step outputs, extending visibility), so an
//! outage is logged once per process, not once per task.

use std::borrow::Cow;
use std::fmt::Display;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Where a retry loop reports its failures and its success: a [`FailureLog`] of its own or a
/// [`SharedFailureLog`] of the process.
pub trait FailureSink {
    /// Notes a failure (see [`FailureLog::failed`]); returns whether it was logged.
    fn failed(&mut self, error: &dyn Display) -> bool;
    /// Notes a success (see [`FailureLog::succeeded`]).
    fn succeeded(&mut self);
}

/// How often a failure that goes on is logged again, by default.
pub const DEFAULT_REPEAT_EVERY: Duration = Duration::from_secs(30);

/// The log of one operation that keeps failing (an AWS endpoint down, a store unreachable):
/// the first failure is logged as a warning, later ones at most once per period (with how
/// many there were and for how long), and the first success after them once as "works
/// again". Everything in between is logged at debug level only.
///
/// ```
/// use stepq_core::FailureLog;
///
/// let mut log = FailureLog::new("reading the run's status");
/// log.failed(&"connection refused"); // WARN reading the run's status fails: connection refused
/// log.failed(&"connection refused"); // debug only
/// assert_eq!(log.failures(), 2);
/// log.succeeded(); // INFO reading the run's status works again after 0.0 s (2 failures)
/// assert_eq!(log.failures(), 0);
/// ```
#[derive(Debug, Clone)]
pub struct FailureLog {
    what: Cow<'static, str>,
    repeat_every: Duration,
    since: Option<Instant>,
    logged_at: Option<Instant>,
    failures: u64,
}

impl FailureLog {
    /// A log for `what` (a phrase such as "receiving task messages"), repeating every
    /// [`DEFAULT_REPEAT_EVERY`].
    pub fn new(what: impl Into<Cow<'static, str>>) -> Self {
        Self::repeating_every(what, DEFAULT_REPEAT_EVERY)
    }

    /// A log for `what` that repeats a failure that goes on every `period`.
    pub fn repeating_every(what: impl Into<Cow<'static, str>>, period: Duration) -> Self {
        FailureLog {
            what: what.into(),
            repeat_every: period,
            since: None,
            logged_at: None,
            failures: 0,
        }
    }

    /// Notes a failure; logs it if it is the first since the last success or the period
    /// passed since it was last logged. Returns whether it was logged.
    pub fn failed(&mut self, error: &dyn Display) -> bool {
        let now = Instant::now();
        self.failures += 1;
        let since = *self.since.get_or_insert(now);
        let due = self
            .logged_at
            .is_none_or(|at| now.duration_since(at) >= self.repeat_every);
        if due {
            self.logged_at = Some(now);
            if self.failures == 1 {
                tracing::warn!(error = %error, "{} fails", self.what);
            } else {
                tracing::warn!(
                    error = %error,
                    failures = self.failures,
                    "{} still fails after {:.1} s",
                    self.what,
                    now.duration_since(since).as_secs_f64()
                );
            }
        } else {
            tracing::debug!(error = %error, failures = self.failures, "{} fails", self.what);
        }
        due
    }

    /// Notes a success; logs the recovery if failures came before it.
    pub fn succeeded(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                failures = self.failures,
                "{} works again after {:.1} s ({} failures)",
                self.what,
                since.elapsed().as_secs_f64(),
                self.failures
            );
        }
        self.failures = 0;
        self.logged_at = None;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u64 {
        self.failures
    }
}

impl FailureSink for FailureLog {
    fn failed(&mut self, error: &dyn Display) -> bool {
        FailureLog::failed(self, error)
    }

    fn succeeded(&mut self) {
        FailureLog::succeeded(self)
    }
}

/// A [`FailureLog`] that many concurrent operations of one kind share (clones share it): the
/// first failure of any of them is logged, later ones once per period, and the first success
/// of any after them once as "works again". Ten steps failing to store their outputs during
/// one outage write one warning, not ten.
///
/// ```
/// use stepq_core::SharedFailureLog;
///
/// let log = SharedFailureLog::new("storing step outputs");
/// let (a, b) = (log.clone(), log.clone());
/// assert!(a.failed(&"connection refused")); // WARN storing step outputs fails: ...
/// assert!(!b.failed(&"connection refused")); // debug only: the same outage
/// b.succeeded(); // INFO storing step outputs works again after 0.0 s (2 failures)
/// a.succeeded(); // nothing: already recovered
/// assert_eq!(log.failures(), 0);
/// ```
#[derive(Debug, Clone)]
pub struct SharedFailureLog(Arc<Mutex<FailureLog>>);

impl SharedFailureLog {
    /// A shared log for `what`, repeating every [`DEFAULT_REPEAT_EVERY`].
    pub fn new(what: impl Into<Cow<'static, str>>) -> Self {
        SharedFailureLog(Arc::new(Mutex::new(FailureLog::new(what))))
    }

    /// Notes a failure of any of the sharers; returns whether it was logged.
    pub fn failed(&self, error: &dyn Display) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .failed(error)
    }

    /// Notes a success of any of the sharers; logs the recovery once.
    pub fn succeeded(&self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .succeeded()
    }

    /// Failures since the last success of any sharer.
    pub fn failures(&self) -> u64 {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .failures()
    }
}

impl FailureSink for SharedFailureLog {
    fn failed(&mut self, error: &dyn Display) -> bool {
        SharedFailureLog::failed(self, error)
    }

    fn succeeded(&mut self) {
        SharedFailureLog::succeeded(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_log_logs_one_outage_once_for_all_sharers() {
        let log = SharedFailureLog::new("x");
        let sharers: Vec<_> = (0..4).map(|_| log.clone()).collect();
        let logged: Vec<bool> = sharers.iter().map(|s| s.failed(&"e")).collect();
        assert_eq!(logged, [true, false, false, false]);
        assert_eq!(log.failures(), 4);
        sharers[2].succeeded();
        assert_eq!(log.failures(), 0);
        // The next outage is logged at once, by whichever sharer meets it.
        assert!(sharers[3].failed(&"e"));
    }

    #[test]
    fn a_failure_is_logged_first_then_once_per_period() {
        let mut log = FailureLog::repeating_every("x", Duration::from_millis(50));
        assert!(log.failed(&"e"));
        assert!(!log.failed(&"e"));
        assert!(!log.failed(&"e"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(log.failed(&"e"));
        assert_eq!(log.failures(), 4);
        log.succeeded();
        assert_eq!(log.failures(), 0);
        // A new outage is logged at once.
        assert!(log.failed(&"e"));
    }
}
