//! The one AWS error table of stepq: an AWS SDK error reduced to its error code, a message
//! and whether retrying can help ([`ErrorClass`]). Every S3 and SQS implementation in this
//! crate wraps [`AwsErrorInfo`] in its layer's error type.

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use stepq_results::{ErrorClass, ResultError};

/// Error codes AWS services use for throttling and transient server trouble: retrying helps.
const TEMPORARY_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "AWS.SimpleQueueService.RequestThrottled",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "ProvisionedThroughputExceededException",
    "SlowDown",
    "PriorRequestNotComplete",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "KmsThrottled",
    "KMS.ThrottlingException",
    "RequestTimeTooSkewed",
    "ConditionalRequestConflict",
];

/// What kind of failure an AWS SDK call ended in, before any response code is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwsFailureKind {
    /// The service answered with an error response.
    Service,
    /// The call timed out.
    Timeout,
    /// The request could not be sent or no response arrived (network, connection refused).
    Dispatch,
    /// The request could not be built (a bad parameter or configuration on our side).
    Construction,
    /// A response arrived but could not be read.
    Response,
}

/// An AWS SDK error reduced to what callers act on: the error code, a message, and whether
/// retrying can help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsErrorInfo {
    /// The AWS error code (e.g. `NoSuchBucket`, `AWS.SimpleQueueService.NonExistentQueue`), or
    /// a stand-in (`Timeout`, `DispatchFailure`, `HTTP503` ...) when the service gave none.
    pub code: String,
    /// The operation name and the service's (or SDK's) message.
    pub message: String,
    /// Temporary (throttling, 5xx, timeouts, network) or permanent.
    pub class: ErrorClass,
}

/// Classifies a failure: throttling codes, HTTP 5xx / 429, timeouts and network failures are
/// [`ErrorClass::Temporary`]; everything else (missing queue or bucket, access denied, bad
/// credentials, bad parameters) is [`ErrorClass::Permanent`].
pub fn classify_aws_failure(
    kind: AwsFailureKind,
    code: Option<&str>,
    status: Option<u16>,
) -> ErrorClass {
    match kind {
        AwsFailureKind::Timeout | AwsFailureKind::Dispatch | AwsFailureKind::Response => {
            ErrorClass::Temporary
        }
        AwsFailureKind::Construction => ErrorClass::Permanent,
        AwsFailureKind::Service => {
            let temporary_code = code.is_some_and(|c| TEMPORARY_CODES.contains(&c));
            let temporary_status = status.is_some_and(|s| s >= 500 || s == 429);
            if temporary_code || temporary_status {
                ErrorClass::Temporary
            } else {
                ErrorClass::Permanent
            }
        }
    }
}

/// Reduces an error of any AWS SDK operation (S3, SQS ...) to an [`AwsErrorInfo`];
/// `operation` (e.g. `GetObject`) is put in front of the message.
pub fn aws_error_info<E>(operation: &str, err: &SdkError<E>) -> AwsErrorInfo
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let (kind, fallback_code) = match err {
        SdkError::ServiceError(_) => (AwsFailureKind::Service, None),
        SdkError::TimeoutError(_) => (AwsFailureKind::Timeout, Some("Timeout")),
        SdkError::DispatchFailure(d) if d.is_user() => {
            (AwsFailureKind::Construction, Some("DispatchFailure"))
        }
        SdkError::DispatchFailure(d) if d.is_timeout() => {
            (AwsFailureKind::Timeout, Some("Timeout"))
        }
        SdkError::DispatchFailure(_) => (AwsFailureKind::Dispatch, Some("DispatchFailure")),
        SdkError::ConstructionFailure(_) => {
            (AwsFailureKind::Construction, Some("ConstructionFailure"))
        }
        SdkError::ResponseError(_) => (AwsFailureKind::Response, Some("ResponseError")),
        _ => (AwsFailureKind::Dispatch, Some("Unknown")),
    };
    let code = err
        .code()
        .map(str::to_string)
        .unwrap_or_else(|| match (fallback_code, status) {
            (Some(c), _) => c.to_string(),
            (None, Some(s)) => format!("HTTP{s}"),
            (None, None) => "Unknown".to_string(),
        });
    let detail = match err.message() {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => DisplayErrorContext(err).to_string(),
    };
    AwsErrorInfo {
        class: classify_aws_failure(kind, Some(&code), status),
        code,
        message: format!("{operation}: {detail}"),
    }
}

impl AwsErrorInfo {
    /// A response body that arrived but could not be read to the end: `ResponseError`,
    /// temporary (the request can simply be made again).
    pub fn body_read(operation: &str, key: &str, err: impl std::fmt::Display) -> Self {
        AwsErrorInfo {
            code: "ResponseError".into(),
            message: format!("{operation} `{key}`: reading the body failed: {err}"),
            class: ErrorClass::Temporary,
        }
    }

    /// As a [`ResultError::Service`] of `service` (e.g. `s3`).
    pub fn into_result_error(self, service: &'static str) -> ResultError {
        ResultError::Service {
            service,
            code: self.code,
            message: self.message,
            class: self.class,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified() {
        use AwsFailureKind::*;
        let cases: &[(AwsFailureKind, Option<&str>, Option<u16>, ErrorClass)] = &[
            (Service, Some("SlowDown"), Some(503), ErrorClass::Temporary),
            (
                Service,
                Some("ThrottlingException"),
                Some(400),
                ErrorClass::Temporary,
            ),
            (
                Service,
                Some("AWS.SimpleQueueService.RequestThrottled"),
                Some(400),
                ErrorClass::Temporary,
            ),
            (
                Service,
                Some("InternalError"),
                Some(500),
                ErrorClass::Temporary,
            ),
            (Service, Some("Whatever"), Some(502), ErrorClass::Temporary),
            (Service, None, Some(429), ErrorClass::Temporary),
            (
                Service,
                Some("NoSuchBucket"),
                Some(404),
                ErrorClass::Permanent,
            ),
            (
                Service,
                Some("AccessDenied"),
                Some(403),
                ErrorClass::Permanent,
            ),
            (
                Service,
                Some("InvalidClientTokenId"),
                Some(403),
                ErrorClass::Permanent,
            ),
            (
                Service,
                Some("AWS.SimpleQueueService.NonExistentQueue"),
                Some(400),
                ErrorClass::Permanent,
            ),
            (Timeout, None, None, ErrorClass::Temporary),
            (Dispatch, None, None, ErrorClass::Temporary),
            (Response, None, Some(200), ErrorClass::Temporary),
            (Construction, None, None, ErrorClass::Permanent),
        ];
        for (kind, code, status, want) in cases {
            assert_eq!(
                classify_aws_failure(*kind, *code, *status),
                *want,
                "{kind:?} {code:?} {status:?}"
            );
        }
    }

    #[test]
    fn sdk_errors_keep_their_code_and_class() {
        use aws_sdk_s3::operation::get_object::GetObjectError;
        let timeout: SdkError<GetObjectError> = SdkError::timeout_error("too slow");
        let info = aws_error_info("GetObject", &timeout);
        assert_eq!(info.code, "Timeout");
        assert_eq!(info.class, ErrorClass::Temporary);
        assert!(info.message.starts_with("GetObject: "), "{}", info.message);

        let built: SdkError<GetObjectError> = SdkError::construction_failure("bad input");
        let info = aws_error_info("GetObject", &built);
        assert_eq!(info.code, "ConstructionFailure");
        assert_eq!(info.class, ErrorClass::Permanent);
    }
}
