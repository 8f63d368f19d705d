//! AWS errors as [`BrokerError`]s: the AWS error code and whether retrying can help.

use crate::s3::{aws_error_info, classify_aws_failure, AwsErrorInfo, AwsFailureKind};
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::BatchResultErrorEntry;

use stepq_broker::error::{BrokerError, ErrorClass};

/// An SDK error of an SQS or S3 operation as a [`BrokerError::Service`].
pub(crate) fn service_error<E>(
    service: &'static str,
    operation: &str,
    err: &SdkError<E>,
) -> BrokerError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    info_error(service, aws_error_info(operation, err))
}

/// A reduced AWS failure of `service` as a [`BrokerError::Service`].
pub(crate) fn info_error(service: &'static str, info: AwsErrorInfo) -> BrokerError {
    BrokerError::Service {
        service,
        code: info.code,
        message: info.message,
        class: info.class,
    }
}

/// An SQS operation's error as a [`BrokerError::Service`] with its AWS error code and whether
/// retrying can help.
pub fn sqs_error<E>(operation: &str, err: &SdkError<E>) -> BrokerError
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
            *slot = Err(entry_error(operation, f));
        }
    }
    outcomes
}

/// `count` copies of one error: the outcome of every entry of a batch call that failed whole.
pub(crate) fn all_failed(err: &BrokerError, count: usize) -> Vec<Result<(), BrokerError>> {
    (0..count).map(|_| Err(clone_error(err))).collect()
}

/// The entries of a batch call, entry `i` built by `build` with id `i`; one that cannot be
/// built fails the whole call as a [`build_error`] of `operation`.
pub(crate) fn numbered_entries<I, T, E: std::fmt::Display>(
    operation: &str,
    items: impl IntoIterator<Item = I>,
    mut build: impl FnMut(String, I) -> Result<T, E>,
) -> Result<Vec<T>, BrokerError> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| build(i.to_string(), item))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| build_error(operation, e))
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

/// The service and the code, message and class of an error: those of a
/// [`BrokerError::Service`], else `sqs`, `Unknown`, the error's text and its class.
pub(crate) fn service_info(e: &BrokerError) -> (&'static str, AwsErrorInfo) {
    match e {
        BrokerError::Service {
            service,
            code,
            message,
            class,
        } => (
            service,
            AwsErrorInfo {
                code: code.clone(),
                message: message.clone(),
                class: *class,
            },
        ),
        other => (
            "sqs",
            AwsErrorInfo {
                code: "Unknown".into(),
                message: other.to_string(),
                class: other.class(),
            },
        ),
    }
}

/// A copy of an error, for reporting one failure to several waiters.
pub(crate) fn clone_error(e: &BrokerError) -> BrokerError {
    let (service, info) = service_info(e);
    info_error(service, info)
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
        let all = all_failed(&build_error("x", "bad"), 2);
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(|o| o.is_err()));
    }

    #[test]
    fn numbered_entries_number_in_order_and_name_a_build_failure() {
        let ids = numbered_entries("Op", ["a", "b"], |id, x| {
            Ok::<_, String>(format!("{id}:{x}"))
        })
        .unwrap();
        assert_eq!(ids, ["0:a", "1:b"]);
        let err = numbered_entries("Op", [1], |_, _| Err::<(), _>("no receipt")).unwrap_err();
        assert!(matches!(&err, BrokerError::Service { code, .. } if code == "ConstructionFailure"));
        assert!(err.to_string().contains("Op: no receipt"), "{err}");
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
