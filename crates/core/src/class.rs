//! [`ErrorClass`]: whether retrying may help.

/// Whether retrying an operation may help.
///
/// Every stepq error type has a `class()`. Retry loops retry [`Temporary`](Self::Temporary)
/// errors only, and report one they give up on as [`Persistent`](Self::Persistent)
/// ([`ErrorClass::exhausted`]), so that the layers above do not retry it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Transient (network, throttling, timeouts): retrying may succeed.
    Temporary,
    /// Permanent (not found, bad data, bad configuration): retrying will not help.
    Permanent,
    /// It was temporary, was retried, and still fails: what a retry loop reports when it gives
    /// up. Not retried again; the fault is still in the environment, not in the request.
    Persistent,
}

impl ErrorClass {
    /// The class of a local I/O failure: interrupted, would-block and timed-out operations are
    /// temporary; everything else (not found, permission denied, disk full ...) is permanent.
    pub fn of_io(error: &std::io::Error) -> Self {
        match error.kind() {
            std::io::ErrorKind::Interrupted
            | std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut => ErrorClass::Temporary,
            _ => ErrorClass::Permanent,
        }
    }

    /// Whether retrying may help: true for [`Temporary`](Self::Temporary) only.
    pub const fn is_retryable(self) -> bool {
        matches!(self, ErrorClass::Temporary)
    }

    /// The class a retry loop reports when it gives up: [`Temporary`](Self::Temporary) becomes
    /// [`Persistent`](Self::Persistent); the other classes stay as they are.
    #[must_use]
    pub const fn exhausted(self) -> Self {
        match self {
            ErrorClass::Temporary => ErrorClass::Persistent,
            other => other,
        }
    }

    /// The class in lower case: `temporary`, `permanent` or `persistent`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Temporary => "temporary",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Persistent => "persistent",
        }
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    #[test]
    fn io_failures_that_may_pass_are_temporary() {
        for kind in [
            ErrorKind::Interrupted,
            ErrorKind::WouldBlock,
            ErrorKind::TimedOut,
        ] {
            assert_eq!(ErrorClass::of_io(&Error::from(kind)), ErrorClass::Temporary);
        }
        for kind in [
            ErrorKind::NotFound,
            ErrorKind::PermissionDenied,
            ErrorKind::InvalidData,
        ] {
            assert_eq!(ErrorClass::of_io(&Error::from(kind)), ErrorClass::Permanent);
        }
    }

    #[test]
    fn only_temporary_is_retryable() {
        assert!(ErrorClass::Temporary.is_retryable());
        assert!(!ErrorClass::Permanent.is_retryable());
        assert!(!ErrorClass::Persistent.is_retryable());
    }

    #[test]
    fn giving_up_makes_temporary_persistent_and_keeps_the_others() {
        assert_eq!(ErrorClass::Temporary.exhausted(), ErrorClass::Persistent);
        assert_eq!(ErrorClass::Permanent.exhausted(), ErrorClass::Permanent);
        assert_eq!(ErrorClass::Persistent.exhausted(), ErrorClass::Persistent);
    }

    #[test]
    fn classes_display_in_lower_case() {
        let shown: Vec<String> = [
            ErrorClass::Temporary,
            ErrorClass::Permanent,
            ErrorClass::Persistent,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(shown, ["temporary", "permanent", "persistent"]);
    }
}
