//! Run and step events: a plain enum with timestamps.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use stepq_core::FailureKind;

/// An error as events carry it: kind, message and the chain of causes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// What kind of failure, e.g. [`FailureKind::OpError`], [`FailureKind::Timeout`], or an
    /// op's own kind ([`FailureKind::Other`]); a plain string when packed.
    pub kind: FailureKind,
    /// The top-level message.
    pub message: String,
    /// Causes, outermost first.
    pub causes: Vec<String>,
}

impl ErrorInfo {
    /// An error of the given kind with no causes.
    pub fn new(kind: impl Into<FailureKind>, message: impl Into<String>) -> Self {
        ErrorInfo {
            kind: kind.into(),
            message: message.into(),
            causes: Vec::new(),
        }
    }

    /// Builds an `ErrorInfo` from any error, walking its `source()` chain.
    pub fn from_error(
        kind: impl Into<FailureKind>,
        error: &(dyn std::error::Error + 'static),
    ) -> Self {
        let mut causes = Vec::new();
        let mut source = error.source();
        while let Some(s) = source {
            causes.push(s.to_string());
            source = s.source();
        }
        ErrorInfo {
            kind: kind.into(),
            message: error.to_string(),
            causes,
        }
    }
}

impl std::fmt::Display for ErrorInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.kind, self.message)?;
        for c in &self.causes {
            write!(f, ": {c}")?;
        }
        Ok(())
    }
}

/// Why a step was skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SkipReason {
    /// An upstream step failed, was skipped or was canceled.
    UpstreamNotSucceeded {
        /// The upstream step.
        upstream: String,
    },
    /// An optional upstream output this step consumes was not emitted.
    OutputNotEmitted {
        /// The upstream step.
        upstream: String,
        /// The output that was not emitted.
        output: String,
    },
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::UpstreamNotSucceeded { upstream } => {
                write!(f, "upstream step `{upstream}` did not succeed")
            }
            SkipReason::OutputNotEmitted { upstream, output } => {
                write!(f, "output `{output}` of `{upstream}` was not emitted")
            }
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EventKind {
    /// The run is starting (orchestrator picked it up).
    RunStarting,
    /// The run started executing steps.
    RunStarted,
    /// Every selected step succeeded or was skipped for a missing optional output.
    RunSuccess,
    /// At least one step failed.
    RunFailure {
        /// Every failure's error.
        errors: Vec<ErrorInfo>,
    },
    /// The run was canceled.
    RunCanceled,
    /// A step's task was sent to the queue (start of its queue wait).
    StepQueued {
        /// Attempt number, 1-based.
        attempt: u32,
        /// Task id of the message carrying it.
        task_id: String,
    },
    /// A worker started the step (end of its queue wait).
    StepStart {
        /// Attempt number, 1-based.
        attempt: u32,
        /// Name of the worker that runs it.
        worker: String,
    },
    /// An input was loaded from the output store.
    StepInputLoaded {
        /// Input name.
        input: String,
        /// Size in bytes.
        bytes: u64,
    },
    /// An output was stored.
    StepOutputHandled {
        /// Output name.
        output: String,
        /// Size in bytes.
        bytes: u64,
    },
    /// The step succeeded.
    StepSuccess {
        /// Wall time of the op.
        duration: Duration,
    },
    /// The step failed.
    StepFailure {
        /// The error.
        error: ErrorInfo,
        /// Whether the orchestrator will retry it.
        will_retry: bool,
    },
    /// The step was skipped.
    StepSkipped {
        /// Why.
        reason: SkipReason,
    },
    /// The step will be retried.
    StepRetry {
        /// The attempt that will run next.
        attempt: u32,
        /// Delay before it is queued.
        delay: Duration,
    },
    /// The step was canceled.
    StepCanceled,
    /// Free text from the engine.
    EngineEvent {
        /// The message.
        message: String,
    },
}

/// One event of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Microseconds since the Unix epoch.
    pub timestamp_us: u64,
    /// Run id.
    pub run_id: String,
    /// Step key, for step events.
    pub step_key: Option<String>,
    /// What happened.
    pub kind: EventKind,
}

impl Event {
    /// A run-level event stamped now.
    pub fn run(run_id: impl Into<String>, kind: EventKind) -> Self {
        Event {
            timestamp_us: now_us(),
            run_id: run_id.into(),
            step_key: None,
            kind,
        }
    }

    /// A step-level event stamped now.
    pub fn step(run_id: impl Into<String>, step_key: impl Into<String>, kind: EventKind) -> Self {
        Event {
            timestamp_us: now_us(),
            run_id: run_id.into(),
            step_key: Some(step_key.into()),
            kind,
        }
    }

    /// The timestamp as a `SystemTime`.
    pub fn time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.timestamp_us)
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` of microseconds since the Unix epoch.
pub fn format_timestamp(us: u64) -> String {
    let secs = us / 1_000_000;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// The civil date (year, month 1-12, day 1-31) of a number of days since 1970-01-01
/// (Howard Hinnant's algorithm; proleptic Gregorian calendar).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
