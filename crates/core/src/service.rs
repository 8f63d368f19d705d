//! [`ServiceError`]: a remote service's failure.

use std::error::Error;
use std::sync::Arc;

use crate::ErrorClass;

/// A remote service failed (S3, SQS ...): which service, its error code, a message, whether
/// retrying may help, and the underlying error (e.g. the AWS SDK's) as [`Error::source`].
///
/// Cloning is cheap and keeps the source (it is shared), so one failure can be reported to
/// several waiters. Displayed as `"{service} error {code}: {message}"`.
#[derive(Debug, Clone)]
pub struct ServiceError {
    /// Service name, e.g. `s3`, `sqs`.
    pub service: &'static str,
    /// The service's error code, e.g. `NoSuchBucket`, `SlowDown`, or a stand-in such as
    /// `Timeout` or `DispatchFailure` when the service gave none.
    pub code: String,
    /// What failed, e.g. the operation name and the service's message.
    pub message: String,
    /// Whether retrying may help.
    pub class: ErrorClass,
    /// The underlying error, if any.
    pub source: Option<Arc<dyn Error + Send + Sync>>,
}

impl ServiceError {
    /// An error of `service` with no source.
    pub fn new(
        service: &'static str,
        code: impl Into<String>,
        message: impl Into<String>,
        class: ErrorClass,
    ) -> Self {
        ServiceError {
            service,
            code: code.into(),
            message: message.into(),
            class,
            source: None,
        }
    }

    /// The same error, keeping `source` as its underlying error.
    #[must_use]
    pub fn with_source(mut self, source: impl Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// Whether retrying may help.
    pub fn class(&self) -> ErrorClass {
        self.class
    }

    /// The error a retry loop reports when it gives up on this one: a temporary error becomes
    /// [`ErrorClass::Persistent`] (see [`ErrorClass::exhausted`]).
    #[must_use]
    pub fn exhausted(mut self) -> Self {
        self.class = self.class.exhausted();
        self
    }
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} error {}: {}", self.service, self.code, self.message)
    }
}

impl Error for ServiceError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Root;

    impl std::fmt::Display for Root {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("connection refused")
        }
    }

    impl Error for Root {}

    #[derive(Debug)]
    struct Sdk(Root);

    impl std::fmt::Display for Sdk {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("dispatch failure")
        }
    }

    impl Error for Sdk {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    fn chain(e: &(dyn Error + 'static)) -> Vec<String> {
        let mut out = vec![e.to_string()];
        let mut next = e.source();
        while let Some(s) = next {
            out.push(s.to_string());
            next = s.source();
        }
        out
    }

    #[test]
    fn displays_service_code_and_message() {
        let e = ServiceError::new(
            "s3",
            "NoSuchBucket",
            "HeadBucket: gone",
            ErrorClass::Permanent,
        );
        assert_eq!(e.to_string(), "s3 error NoSuchBucket: HeadBucket: gone");
        assert!(e.source().is_none());
        assert_eq!(e.class(), ErrorClass::Permanent);
    }

    #[test]
    fn keeps_and_exposes_its_source_chain() {
        let e = ServiceError::new(
            "sqs",
            "DispatchFailure",
            "SendMessage",
            ErrorClass::Temporary,
        )
        .with_source(Sdk(Root));
        assert_eq!(
            chain(&e),
            [
                "sqs error DispatchFailure: SendMessage",
                "dispatch failure",
                "connection refused"
            ]
        );
        // The source is the original value, not a wrapper: it downcasts.
        assert!(e.source().unwrap().downcast_ref::<Sdk>().is_some());
    }

    #[test]
    fn clones_share_the_source() {
        let e = ServiceError::new("s3", "SlowDown", "PutObject", ErrorClass::Temporary)
            .with_source(Root);
        let copy = e.clone();
        assert!(Arc::ptr_eq(
            e.source.as_ref().unwrap(),
            copy.source.as_ref().unwrap()
        ));
        assert_eq!(copy.to_string(), e.to_string());
        assert!(copy.source().unwrap().downcast_ref::<Root>().is_some());
    }

    #[test]
    fn exhausting_marks_temporary_errors_persistent_only() {
        let slow =
            ServiceError::new("s3", "SlowDown", "m", ErrorClass::Temporary).with_source(Root);
        let given_up = slow.exhausted();
        assert_eq!(given_up.class(), ErrorClass::Persistent);
        assert!(given_up.source().is_some(), "giving up keeps the source");
        let denied = ServiceError::new("s3", "AccessDenied", "m", ErrorClass::Permanent);
        assert_eq!(denied.exhausted().class(), ErrorClass::Permanent);
    }
}
