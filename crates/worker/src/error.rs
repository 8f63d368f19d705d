//! `OpError`: how an op says it failed, why, and whether it wants another attempt.

use std::time::Duration;

use stepq_plan::{ErrorInfo, FailureKind};

/// Kind given to errors an op returns unless it says otherwise ([`FailureKind::OpError`]).
pub const OP_ERROR_KIND: FailureKind = FailureKind::OpError;

/// An op's failure: a kind, a message, the chain of causes, and an optional retry request.
///
/// Any `std::error::Error + Send + Sync + 'static` converts into it (walking its `source()`
/// chain), so `?` works inside ops. Like `anyhow::Error`, `OpError` itself does not implement
/// `std::error::Error`; it implements `Display` (message and causes, `: `-separated) and `Debug`.
///
/// ```
/// use std::time::Duration;
/// use stepq_worker::OpError;
///
/// let e = OpError::retry("warehouse is busy").retry_after(Duration::from_secs(5));
/// assert_eq!(e.retry_requested(), Some(Some(Duration::from_secs(5))));
///
/// let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
/// let e = OpError::from(io).context("reading the input manifest");
/// assert_eq!(e.to_string(), "reading the input manifest: no such file");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct OpError {
    kind: FailureKind,
    message: String,
    causes: Vec<String>,
    retry: Option<Option<Duration>>,
}

impl OpError {
    /// An error of kind [`OP_ERROR_KIND`] with the given message and no causes.
    pub fn msg(message: impl Into<String>) -> Self {
        OpError::new(OP_ERROR_KIND, message)
    }

    /// An error of the given kind: one of stepq's, or the op's own (short and
    /// machine-friendly, e.g. `bad_record`; it is stored as it is).
    pub fn new(kind: impl Into<FailureKind>, message: impl Into<String>) -> Self {
        OpError {
            kind: kind.into(),
            message: message.into(),
            causes: Vec::new(),
            retry: None,
        }
    }

    /// An error that asks for the step to be retried (as soon as the run's policy allows).
    pub fn retry(message: impl Into<String>) -> Self {
        OpError::msg(message).request_retry()
    }

    /// Marks this error as asking for a retry.
    pub fn request_retry(mut self) -> Self {
        if self.retry.is_none() {
            self.retry = Some(None);
        }
        self
    }

    /// Asks for a retry no sooner than `delay` from now (implies [`OpError::request_retry`]).
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry = Some(Some(delay));
        self
    }

    /// Replaces the kind.
    pub fn with_kind(mut self, kind: impl Into<FailureKind>) -> Self {
        self.kind = kind.into();
        self
    }

    /// Appends a cause at the inner end of the chain.
    pub fn with_cause(mut self, cause: impl Into<String>) -> Self {
        self.causes.push(cause.into());
        self
    }

    /// Wraps the error in a higher-level message: the current message becomes the first cause.
    pub fn context(mut self, message: impl Into<String>) -> Self {
        let inner = std::mem::replace(&mut self.message, message.into());
        self.causes.insert(0, inner);
        self
    }

    /// The kind, as spelled on the wire.
    pub fn kind(&self) -> &str {
        self.kind.as_str()
    }

    /// The top-level message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The causes, outermost first.
    pub fn causes(&self) -> &[String] {
        &self.causes
    }

    /// `None` if no retry was asked for; `Some(None)` for a retry as soon as allowed;
    /// `Some(Some(d))` for a retry no sooner than `d`.
    pub fn retry_requested(&self) -> Option<Option<Duration>> {
        self.retry
    }

    /// The error as events and step reports carry it.
    pub fn to_error_info(&self) -> ErrorInfo {
        ErrorInfo {
            kind: self.kind.clone(),
            message: self.message.clone(),
            causes: self.causes.clone(),
        }
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for OpError {
    fn from(error: E) -> Self {
        let info = ErrorInfo::from_error(OP_ERROR_KIND, &error);
        OpError {
            kind: info.kind,
            message: info.message,
            causes: info.causes,
            retry: None,
        }
    }
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        for cause in &self.causes {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("OpError");
        d.field("kind", &self.kind)
            .field("message", &self.message)
            .field("causes", &self.causes);
        if let Some(retry) = &self.retry {
            d.field("retry_after", retry);
        }
        d.finish()
    }
}

/// Adds context to any error on its way into an [`OpError`], like `anyhow::Context`.
///
/// ```
/// use stepq_worker::{OpError, OpResultExt};
///
/// fn parse(text: &str) -> Result<i64, OpError> {
///     text.trim().parse::<i64>().context("parsing the row count")
/// }
/// let e = parse("twelve").unwrap_err();
/// assert_eq!(e.message(), "parsing the row count");
/// assert_eq!(e.causes(), ["invalid digit found in string"]);
/// ```
pub trait OpResultExt<T> {
    /// Converts the error into an [`OpError`] and wraps it in `message`.
    fn context(self, message: impl Into<String>) -> Result<T, OpError>;

    /// Like [`OpResultExt::context`], building the message only on error.
    fn with_context<M: Into<String>>(self, message: impl FnOnce() -> M) -> Result<T, OpError>;
}

impl<T, E: Into<OpError>> OpResultExt<T> for Result<T, E> {
    fn context(self, message: impl Into<String>) -> Result<T, OpError> {
        self.map_err(|e| e.into().context(message))
    }

    fn with_context<M: Into<String>>(self, message: impl FnOnce() -> M) -> Result<T, OpError> {
        self.map_err(|e| e.into().context(message()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer failure")]
    struct Outer {
        #[source]
        inner: Middle,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("middle failure")]
    struct Middle {
        #[source]
        inner: std::io::Error,
    }

    fn nested() -> Outer {
        Outer {
            inner: Middle {
                inner: std::io::Error::other("disk on fire"),
            },
        }
    }

    #[test]
    fn from_error_walks_the_source_chain() {
        let e = OpError::from(nested());
        assert_eq!(e.kind(), OP_ERROR_KIND);
        assert_eq!(e.message(), "outer failure");
        assert_eq!(e.causes(), ["middle failure", "disk on fire"]);
        assert_eq!(e.retry_requested(), None);
        assert_eq!(e.to_string(), "outer failure: middle failure: disk on fire");
    }

    #[test]
    fn question_mark_converts_errors() {
        fn op() -> Result<(), OpError> {
            Err(nested())?;
            Ok(())
        }
        assert_eq!(op().unwrap_err().causes().len(), 2);
    }

    #[test]
    fn context_pushes_the_message_down_the_chain() {
        let e = OpError::msg("inner").with_cause("root").context("outer");
        assert_eq!(e.message(), "outer");
        assert_eq!(e.causes(), ["inner", "root"]);
        let e: Result<(), _> = Err(nested());
        let e = e.with_context(|| "loading").unwrap_err();
        assert_eq!(
            e.causes(),
            ["outer failure", "middle failure", "disk on fire"]
        );
    }

    #[test]
    fn retry_requests() {
        assert_eq!(OpError::retry("busy").retry_requested(), Some(None));
        let d = Duration::from_millis(1500);
        assert_eq!(
            OpError::msg("busy").retry_after(d).retry_requested(),
            Some(Some(d))
        );
        // request_retry keeps an existing delay.
        assert_eq!(
            OpError::msg("busy")
                .retry_after(d)
                .request_retry()
                .retry_requested(),
            Some(Some(d))
        );
    }

    #[test]
    fn error_info_and_debug() {
        let e = OpError::new("bad_record", "row 3 is malformed")
            .with_cause("missing column `id`")
            .request_retry();
        assert_eq!(
            e.to_error_info(),
            ErrorInfo {
                kind: "bad_record".into(),
                message: "row 3 is malformed".into(),
                causes: vec!["missing column `id`".into()],
            }
        );
        let debug = format!("{e:?}");
        assert!(debug.contains("bad_record") && debug.contains("retry_after"));
        assert_eq!(e.with_kind("other").kind(), "other");
    }
}
