//! AWS errors as [`BrokerError`]s: the AWS error code and whether retrying can help.

use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::BatchResultErrorEntry;
use stepq_results::s3::{aws_error_info, classify_aws_failure, AwsFailureKind};

use crate::error::{BrokerError, ErrorClass};

/// An SDK error of an SQS or S3 operation as a [`BrokerError::Service`].
pub(crate) fn service_error<E>(
    service: &'static str,
    operation: &str,
    err: &SdkError<E>,
) -> BrokerError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let info = aws_error_info(operation, err);
    BrokerError::Service {
        service,
        code: info.code,
        message: info.message,
        class: info.class,
    }
}

/// An SQS operation's error.
pub(crate) fn sqs_error<E>(operation: &str, err: &SdkError<E>) -> BrokerError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    service_error("sqs", operation, err)
}

/// An S3 operation's error (extended payloads).
pub(crate) fn s3_error<E>(operation: &str, err: &SdkError<E>) -> BrokerError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    service_error("s3", operation, err)
}

/// The class of one failed entry of a batch call: the sender's fault is permanent unless its
/// code says throttling; the service's fault is temporary.
pub(crate) fn entry_class(entry: &BatchResultErrorEntry) -> ErrorClass {
    if entry.sender_fault() {
        classify_aws_failure(AwsFailureKind::Service, Some(entry.code()), None)
    } else {
        ErrorClass::Temporary
    }
}

/// One failed entry of a batch call as an error.
pub(crate) fn entry_error(operation: &str, entry: &BatchResultErrorEntry) -> BrokerError {
    BrokerError::Service {
        service: "sqs",
        code: entry.code().to_string(),
        message: format!(
            "{operation} entry failed: {}",
            entry.message().unwrap_or("no message")
        ),
        class: entry_class(entry),
    }
}

/// A request that could not be built (a bug or bad input on our side).
pub(crate) fn build_error(operation: &str, err: impl std::fmt::Display) -> BrokerError {
    BrokerError::Service {
        service: "sqs",
        code: "ConstructionFailure".into(),
        message: format!("{operation}: {err}"),
        class: ErrorClass::Permanent,
    }
}

/// A copy of an error, for reporting one failure to several waiters.
pub(crate) fn clone_error(e: &BrokerError) -> BrokerError {
    match e {
        BrokerError::Service {
            service,
            code,
            message,
            class,
        } => BrokerError::Service {
            service,
            code: code.clone(),
            message: message.clone(),
            class: *class,
        },
        other => BrokerError::Service {
            service: "sqs",
            code: "Unknown".into(),
            message: other.to_string(),
            class: other.class(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(code: &str, sender_fault: bool) -> BatchResultErrorEntry {
        BatchResultErrorEntry::builder()
            .id("0")
            .code(code)
            .sender_fault(sender_fault)
            .message("boom")
            .build()
            .unwrap()
    }

    #[test]
    fn batch_entry_failures_keep_code_and_class() {
        let e = entry_error("SendMessageBatch", &entry("InvalidMessageContents", true));
        match &e {
            BrokerError::Service {
                service,
                code,
                message,
                class,
            } => {
                assert_eq!(*service, "sqs");
                assert_eq!(code, "InvalidMessageContents");
                assert!(message.contains("boom"), "{message}");
                assert_eq!(*class, ErrorClass::Permanent);
            }
            other => panic!("{other}"),
        }
        assert!(entry_error("x", &entry("InternalError", false)).is_temporary());
        assert!(entry_error("x", &entry("RequestThrottled", true)).is_temporary());
    }

    #[test]
    fn sdk_timeouts_are_temporary_sqs_errors() {
        use aws_sdk_sqs::operation::send_message::SendMessageError;
        let err: SdkError<SendMessageError> = SdkError::timeout_error("slow");
        let e = sqs_error("SendMessage", &err);
        assert!(e.is_temporary());
        assert!(e.to_string().contains("SendMessage"), "{e}");
    }
}
