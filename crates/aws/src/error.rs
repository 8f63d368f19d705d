//! The one AWS error table of stepq: an AWS SDK error as a [`ServiceError`] — its error code,
//! a message, whether retrying can help ([`ErrorClass`]), and the SDK error itself as the
//! source. Every S3 and SQS implementation in this crate wraps it in its layer's error type.

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use stepq_results::{ErrorClass, ServiceError};

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

/// Error code of a call that could not be signed because no credentials were found.
pub const NO_CREDENTIALS_CODE: &str = "NoCredentials";

/// What a user must do when no credentials provider of aws-config's chain found any.
const NO_CREDENTIALS_HELP: &str =
    "no credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, \
     AWS_PROFILE, or run on an instance role";

/// The credentials-provider failure in `err`'s source chain, if the call failed for want of
/// credentials (the SDK reports it as a dispatch failure carrying the whole provider chain).
fn credentials_failure<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a CredentialsError> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<CredentialsError>() {
            return Some(found);
        }
        next = e.source();
    }
    None
}

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

/// An error of any AWS SDK operation (S3, SQS ...) of `service` (e.g. `s3`) as a
/// [`ServiceError`]: the AWS error code (or a stand-in such as `Timeout`, `DispatchFailure`,
/// `HTTP503` when the service gave none), `operation` (e.g. `GetObject`) in front of the
/// message, the class ([`classify_aws_failure`]), and `err` itself as the source.
pub fn aws_error<E>(service: &'static str, operation: &str, err: SdkError<E>) -> ServiceError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if let Some(credentials) = credentials_failure(&err) {
        // The provider's own short text; the long chain (IMDS ...) stays in the source.
        let message = format!("{operation}: {NO_CREDENTIALS_HELP} ({credentials})");
        return ServiceError::new(service, NO_CREDENTIALS_CODE, message, ErrorClass::Permanent)
            .with_source(err);
    }
    let status = err.raw_response().map(|r| r.status().as_u16());
    let (kind, fallback_code) = match &err {
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
        _ => DisplayErrorContext(&err).to_string(),
    };
    let class = classify_aws_failure(kind, Some(&code), status);
    ServiceError::new(service, code, format!("{operation}: {detail}"), class).with_source(err)
}

/// A response body of `service` that arrived but could not be read to the end:
/// `ResponseError`, temporary (the request can simply be made again), with the read error as
/// the source.
pub fn body_read_error(
    service: &'static str,
    operation: &str,
    key: &str,
    err: impl std::error::Error + Send + Sync + 'static,
) -> ServiceError {
    ServiceError::new(
        service,
        "ResponseError",
        format!("{operation} `{key}`: reading the body failed: {err}"),
        ErrorClass::Temporary,
    )
    .with_source(err)
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
        let e = aws_error("s3", "GetObject", timeout);
        assert_eq!(e.service, "s3");
        assert_eq!(e.code, "Timeout");
        assert_eq!(e.class, ErrorClass::Temporary);
        assert!(e.message.starts_with("GetObject: "), "{}", e.message);

        let built: SdkError<GetObjectError> = SdkError::construction_failure("bad input");
        let e = aws_error("s3", "GetObject", built);
        assert_eq!(e.code, "ConstructionFailure");
        assert_eq!(e.class, ErrorClass::Permanent);
    }

    #[test]
    fn missing_credentials_get_a_short_message_and_keep_the_source() {
        use aws_sdk_sqs::error::ConnectorError;
        use aws_sdk_sqs::operation::receive_message::ReceiveMessageError;
        use std::error::Error as _;
        let imds = std::io::Error::other("failed to load IMDS session token: dispatch failure");
        let chain = CredentialsError::provider_error(imds);
        let sdk: SdkError<ReceiveMessageError> =
            SdkError::dispatch_failure(ConnectorError::other(Box::new(chain), None));
        let e = aws_error("sqs", "ReceiveMessage", sdk);
        assert_eq!(e.code, NO_CREDENTIALS_CODE);
        assert_eq!(e.class, ErrorClass::Permanent);
        assert!(
            e.message
                .starts_with("ReceiveMessage: no credentials found: set AWS_ACCESS_KEY_ID"),
            "{}",
            e.message
        );
        assert!(e
            .message
            .contains("AWS_PROFILE, or run on an instance role"));
        assert!(
            !e.message.contains("IMDS"),
            "the long chain stays out: {}",
            e.message
        );
        let source = e.source().expect("the SDK error is kept");
        assert!(credentials_failure(source).is_some());

        // A plain network failure is not mistaken for one.
        let refused: SdkError<ReceiveMessageError> = SdkError::dispatch_failure(
            ConnectorError::io(Box::new(std::io::Error::other("connection refused"))),
        );
        assert_eq!(
            aws_error("sqs", "ReceiveMessage", refused).code,
            "DispatchFailure"
        );
    }

    #[test]
    fn sdk_errors_are_kept_as_the_source() {
        use aws_sdk_sqs::operation::send_message::SendMessageError;
        use std::error::Error as _;
        let timeout: SdkError<SendMessageError> = SdkError::timeout_error("too slow");
        let e = aws_error("sqs", "SendMessage", timeout);
        let source = e.source().expect("the SDK error");
        let sdk = source
            .downcast_ref::<SdkError<SendMessageError>>()
            .expect("the SDK error itself, not a copy of its text");
        assert!(matches!(sdk, SdkError::TimeoutError(_)), "{sdk:?}");
        // The chain goes on into the SDK error's own causes.
        assert_eq!(
            source.source().map(ToString::to_string).as_deref(),
            Some("too slow")
        );
        // A copy (for several waiters) shares it.
        assert!(e.clone().source().is_some());

        let read = body_read_error("s3", "GetObject", "k", std::io::Error::other("reset"));
        assert_eq!(read.code, "ResponseError");
        assert_eq!(read.class, ErrorClass::Temporary);
        assert_eq!(
            read.source().map(ToString::to_string).as_deref(),
            Some("reset")
        );
    }
}
