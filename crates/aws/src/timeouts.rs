//! How long one call to AWS may take, and so the longest any part of stepq waits for AWS.
//!
//! Every client stepq builds comes from [`crate::SqsBroker::load_sdk_config`]: a
//! [`CONNECT_TIMEOUT`], an [`ATTEMPT_TIMEOUT`] per attempt of a short call, and standard
//! retries ([`AWS_MAX_ATTEMPTS`] attempts, jittered exponential backoff capped at
//! [`MAX_BACKOFF`]). Two kinds of call get their own attempt timeout, set per call:
//!
//! - a long poll (ReceiveMessage with a wait) may take its wait plus [`LONG_POLL_MARGIN`], and
//!   is tried [`LONG_POLL_MAX_ATTEMPTS`] times: the loop that polls retries anyway;
//! - an object transfer (PutObject with a body, reading a GetObject body) may take
//!   [`ATTEMPT_TIMEOUT`] plus its size at [`MIN_TRANSFER_RATE`]. (The SDK's own stalled-stream
//!   protection already ends a body that moves under 1 byte/s for 5 s; this bound also ends
//!   one that trickles.)
//!
//! So against an endpoint that accepts connections and never answers, a short call fails after
//! at most [`longest_short_call`] (65 s at these settings), a long poll after
//! [`longest_long_poll`] (61 s for a 20 s wait): never the 45 s x 5 attempts a single timeout
//! for all calls would cost. A server that asks for a delay (`Retry-After`) can stretch each
//! retry's backoff to [`MAX_BACKOFF`]; [`CallBound::worst`] counts that. The test
//! `tests/bounded_waits.rs` holds every kind of call to its bound against a hung endpoint.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;

/// Attempts per short AWS call (the first and up to four retries) for throttling, 5xx,
/// timeouts and network errors.
pub const AWS_MAX_ATTEMPTS: u32 = 5;
/// Attempts per long poll: a failed poll is retried by the loop that polls, with its own
/// backoff and failure log, so the SDK tries once more at most.
pub const LONG_POLL_MAX_ATTEMPTS: u32 = 2;
/// Longest wait for a connection to AWS (part of an attempt).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest single attempt of a short call (everything but long polls and object transfers).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// A long poll's attempt may take this much longer than the wait it asks for.
pub const LONG_POLL_MARGIN: Duration = Duration::from_secs(10);
/// The slowest transfer rate an object transfer is given time for, in bytes per second.
pub const MIN_TRANSFER_RATE: u64 = 1024 * 1024;
/// The SDK's backoff before the first retry is at most 1 s and doubles per retry.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Cap on the backoff before one retry, including a delay a server asks for.
pub const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// The retries of a client or one call: standard mode, `attempts` attempts.
pub fn retry_config(attempts: u32) -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(attempts)
        .with_initial_backoff(FIRST_BACKOFF)
        .with_max_backoff(MAX_BACKOFF)
}

/// The timeouts of every client: [`CONNECT_TIMEOUT`] and the short calls' [`ATTEMPT_TIMEOUT`].
pub fn client_timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .build()
}

/// The attempt timeout of a long poll that waits `wait_time_seconds`.
pub fn long_poll_attempt_timeout(wait_time_seconds: u32) -> Duration {
    Duration::from_secs(wait_time_seconds.into()) + LONG_POLL_MARGIN
}

/// The attempt timeout of sending or reading an object of `bytes` bytes.
pub fn transfer_attempt_timeout(bytes: u64) -> Duration {
    ATTEMPT_TIMEOUT + Duration::from_millis(bytes.saturating_mul(1000) / MIN_TRANSFER_RATE)
}

/// The longest a call takes before it returns an error: its attempts' timeouts and the
/// backoffs between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallBound {
    /// Timeout of one attempt.
    pub attempt: Duration,
    /// Attempts made.
    pub attempts: u32,
}

impl CallBound {
    /// When no server asks for a delay (an endpoint that is down or hung): every attempt
    /// times out and each backoff is at its largest (1 s, 2 s, 4 s, 8 s, ...).
    pub fn unanswered(&self) -> Duration {
        let backoffs = (1..self.attempts)
            .map(|retry| (FIRST_BACKOFF * 2u32.saturating_pow(retry - 1)).min(MAX_BACKOFF))
            .sum::<Duration>();
        self.attempt * self.attempts + backoffs
    }

    /// Whatever the server does: every backoff at [`MAX_BACKOFF`].
    pub fn worst(&self) -> Duration {
        self.attempt * self.attempts + MAX_BACKOFF * self.attempts.saturating_sub(1)
    }
}

/// The bound of a short call.
pub fn longest_short_call() -> CallBound {
    CallBound {
        attempt: ATTEMPT_TIMEOUT,
        attempts: AWS_MAX_ATTEMPTS,
    }
}

/// The bound of a long poll that waits `wait_time_seconds`.
pub fn longest_long_poll(wait_time_seconds: u32) -> CallBound {
    CallBound {
        attempt: long_poll_attempt_timeout(wait_time_seconds),
        attempts: LONG_POLL_MAX_ATTEMPTS,
    }
}

/// The bound of sending an object of `bytes` bytes (reading one is a short call for its
/// headers, then [`transfer_attempt_timeout`] for its body).
pub fn longest_transfer(bytes: u64) -> CallBound {
    CallBound {
        attempt: transfer_attempt_timeout(bytes),
        attempts: AWS_MAX_ATTEMPTS,
    }
}

/// Per-call SQS settings of a long poll waiting `wait_time_seconds` (pass to
/// `.customize().config_override(..)`); the client's connect timeout still applies.
pub(crate) fn sqs_long_poll(wait_time_seconds: u32) -> aws_sdk_sqs::config::Builder {
    aws_sdk_sqs::config::Builder::default()
        .retry_config(retry_config(LONG_POLL_MAX_ATTEMPTS))
        .timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(long_poll_attempt_timeout(wait_time_seconds))
                .build(),
        )
}

/// Per-call S3 settings of a PutObject of `bytes` bytes.
pub(crate) fn s3_transfer(bytes: usize) -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::config::Builder::default().timeout_config(
        TimeoutConfig::builder()
            .operation_attempt_timeout(transfer_attempt_timeout(bytes as u64))
            .build(),
    )
}

/// Reads a GetObject body of `content_length` bytes (as S3 announced it), within
/// [`transfer_attempt_timeout`]. A body that stops arriving is an error like one that
/// breaks off.
pub(crate) async fn read_body(
    body: aws_sdk_s3::primitives::ByteStream,
    content_length: Option<i64>,
) -> Result<bytes::Bytes, BodyReadError> {
    let bytes = content_length
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0);
    let limit = transfer_attempt_timeout(bytes);
    match tokio::time::timeout(limit, body.collect()).await {
        Ok(Ok(data)) => Ok(data.into_bytes()),
        Ok(Err(e)) => Err(BodyReadError::Broken(e)),
        Err(_) => Err(BodyReadError::Stalled(limit)),
    }
}

/// Why a GetObject body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyReadError {
    /// The connection failed while the body was read.
    #[error(transparent)]
    Broken(aws_sdk_s3::primitives::ByteStreamError),
    /// The body did not arrive in time.
    #[error("the body did not arrive within {0:?}")]
    Stalled(Duration),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_call_against_a_hung_endpoint_ends_within_65_s() {
        // 5 attempts of 10 s, backoffs of at most 1 + 2 + 4 + 8 s.
        assert_eq!(longest_short_call().unanswered(), Duration::from_secs(65));
        assert_eq!(longest_short_call().worst(), Duration::from_secs(82));
    }

    #[test]
    fn a_long_poll_gets_its_wait_and_a_margin_twice() {
        assert_eq!(longest_long_poll(20).attempt, Duration::from_secs(30));
        assert_eq!(longest_long_poll(20).unanswered(), Duration::from_secs(61));
        assert_eq!(longest_long_poll(1).unanswered(), Duration::from_secs(23));
    }

    #[test]
    fn a_transfer_gets_time_for_its_size() {
        assert_eq!(transfer_attempt_timeout(0), ATTEMPT_TIMEOUT);
        assert_eq!(
            transfer_attempt_timeout(100 * MIN_TRANSFER_RATE),
            Duration::from_secs(110)
        );
    }

    #[test]
    fn backoffs_stop_growing_at_the_cap() {
        let many = CallBound {
            attempt: Duration::ZERO,
            attempts: 7,
        };
        // 1 + 2 + 4 + 8 + 8 + 8
        assert_eq!(many.unanswered(), Duration::from_secs(31));
        assert_eq!(many.worst(), Duration::from_secs(48));
    }
}
