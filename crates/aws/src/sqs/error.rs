//! AWS errors as [`BrokerError`]s: the AWS error code, whether retrying can help, and the SDK
//! error as the source ([`ServiceError`]).

use crate::s3::{aws_error, classify_aws_failure, AwsFailureKind};
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::BatchResultErrorEntry;

use stepq_broker::error::{BrokerError, ErrorClass, ServiceError};

/// An SQS operation's error as a [`BrokerError::Service`] with its AWS error code, whether
/// retrying can help, and the SDK error as the source.
pub fn sqs_error<E>(operation: &str, err: SdkError<E>) -> BrokerError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    sqs_service_error(operation, err).into()
}

/// An SQS operation's error as the [`ServiceError`] itself (see [`sqs_error`]).
pub(crate) fn sqs_service_error<E>(operation: &str, err: SdkError<E>) -> ServiceError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    aws_error("sqs", operation, err)
}

/// An S3 operation's error (extended payloads).
pub(crate) fn s3_error<E>(operation: &str, err: SdkError<E>) -> BrokerError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    aws_error("s3", operation, err).into()
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
pub(crate) fn entry_error(operation: &str, entry: &BatchResultErrorEntry) -> ServiceError {
    let message = format!(
        "{operation} entry failed: {}",
        entry.message().unwrap_or("no message")
    );
    ServiceError::new("sqs", entry.code(), message, entry_class(entry))
}

/// The outcome of each of the `count` entries of a batch call, in order: `Ok` unless `failed`
/// names its id (entry `i` has id `i`, as [`numbered_entries`] gives them).
pub(crate) fn entry_outcomes(
    operation: &str,
    count: usize,
    failed: &[BatchResultErrorEntry],
) -> Vec<Result<(), BrokerError>> {
    let mut outcomes: Vec<Result<(), BrokerError>> = (0..count).map(|_| Ok(())).collect();
    for f in failed {
        if let Some(slot) = f
            .id()
            .parse::<usize>()
            .ok()
            .and_then(|i| outcomes.get_mut(i))
        {
            *slot = Err(entry_error(operation, f).into());
        }
    }
    outcomes
}

/// `count` copies of one error: the outcome of every entry of a batch call that failed whole.
pub(crate) fn all_failed(err: &ServiceError, count: usize) -> Vec<Result<(), BrokerError>> {
    (0..count).map(|_| Err(err.clone().into())).collect()
}

/// The entries of a batch call, entry `i` built by `build` with id `i`; one that cannot be
/// built fails the whole call as a [`build_error`] of `operation`.
pub(crate) fn numbered_entries<I, T, E>(
    operation: &str,
    items: impl IntoIterator<Item = I>,
    mut build: impl FnMut(String, I) -> Result<T, E>,
) -> Result<Vec<T>, ServiceError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| build(i.to_string(), item))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| build_error(operation, e))
}

/// A request that could not be built (a bug or bad input on our side), with the builder's
/// error as the source.
pub(crate) fn build_error(
    operation: &str,
    err: impl std::error::Error + Send + Sync + 'static,
) -> ServiceError {
    let message = format!("{operation}: {err}");
    ServiceError::new("sqs", "ConstructionFailure", message, ErrorClass::Permanent).with_source(err)
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
        assert_eq!(e.service, "sqs");
        assert_eq!(e.code, "InvalidMessageContents");
        assert!(e.message.contains("boom"), "{}", e.message);
        assert_eq!(e.class, ErrorClass::Permanent);
        assert_eq!(
            entry_error("x", &entry("InternalError", false)).class,
            ErrorClass::Temporary
        );
        assert_eq!(
            entry_error("x", &entry("RequestThrottled", true)).class,
            ErrorClass::Temporary
        );
    }

    #[test]
    fn batch_outcomes_follow_the_failed_ids() {
        let outcomes = entry_outcomes(
            "DeleteMessageBatch",
            3,
            &[entry("InternalError", false), {
                let mut e = entry("ReceiptHandleIsInvalid", true);
                e.id = "2".into();
                e
            }],
        );
        assert!(outcomes[0].as_ref().unwrap_err().is_temporary());
        assert!(outcomes[1].is_ok());
        assert!(!outcomes[2].as_ref().unwrap_err().is_temporary());
        // An id that names no entry is ignored.
        let mut stray = entry("InternalError", false);
        stray.id = "9".into();
        assert!(entry_outcomes("x", 1, &[stray])[0].is_ok());
        let all = all_failed(&build_error("x", std::fmt::Error), 2);
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(|o| o.is_err()));
    }

    #[test]
    fn numbered_entries_number_in_order_and_name_a_build_failure() {
        let ids = numbered_entries("Op", ["a", "b"], |id, x| {
            Ok::<_, std::io::Error>(format!("{id}:{x}"))
        })
        .unwrap();
        assert_eq!(ids, ["0:a", "1:b"]);
        let err = numbered_entries("Op", [1], |_, _| {
            Err::<(), _>(std::io::Error::other("no receipt"))
        })
        .unwrap_err();
        assert_eq!(err.code, "ConstructionFailure");
        assert!(err.to_string().contains("Op: no receipt"), "{err}");
        // The builder's error is kept as the source.
        let source = std::error::Error::source(&err).expect("the build error");
        assert_eq!(source.to_string(), "no receipt");
    }

    #[test]
    fn sdk_timeouts_are_temporary_sqs_errors() {
        use aws_sdk_sqs::operation::send_message::SendMessageError;
        let err: SdkError<SendMessageError> = SdkError::timeout_error("slow");
        let e = sqs_error("SendMessage", err);
        assert!(e.is_temporary());
        assert!(e.to_string().contains("SendMessage"), "{e}");
    }
}
