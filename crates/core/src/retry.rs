//! [`retry_temporary`]: an operation retried while it fails with a temporary error, for a
//! bounded time, its failures logged once per period.

use std::fmt::Display;
use std::future::Future;

use crate::{Backoff, ErrorClass, FailureSink};

/// Runs `op` until it succeeds, fails with an error whose
/// class is not [`Temporary`](ErrorClass::Temporary) (returned at once), or `backoff` gives up
/// (the last error is returned). Each failure goes to `failing` (a
/// [`FailureLog`](crate::FailureLog) of its own or a [`SharedFailureLog`](crate::SharedFailureLog)),
/// which logs it once per period; a success after failures is logged there once.
///
/// ```
/// # tokio_test_block_on(async {
/// use std::time::Duration;
/// use stepq_core::{retry_temporary, Backoff, ErrorClass, FailureLog};
///
/// let backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(2), Duration::from_secs(1));
/// let mut failing = FailureLog::new("reading the answer");
/// let mut attempts = 0;
/// let answer: Result<u32, &str> = retry_temporary(backoff, &mut failing, |_| ErrorClass::Temporary, || {
///     attempts += 1;
///     let attempt = attempts;
///     async move { if attempt < 3 { Err("not yet") } else { Ok(42) } }
/// })
/// .await;
/// assert_eq!(answer, Ok(42));
/// # });
/// # fn tokio_test_block_on(f: impl std::future::Future<Output = ()>) {
/// #     tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(f)
/// # }
/// ```
pub async fn retry_temporary<T, E, Fut>(
    mut backoff: Backoff,
    failing: &mut impl FailureSink,
    class: impl Fn(&E) -> ErrorClass,
    mut op: impl FnMut() -> Fut,
) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
    E: Display,
{
    loop {
        match op().await {
            Ok(value) => {
                failing.succeeded();
                return Ok(value);
            }
            Err(e) if !class(&e).is_retryable() => return Err(e),
            Err(e) => {
                failing.failed(&e);
                let Some(delay) = backoff.next_delay() else {
                    return Err(e);
                };
                tokio::time::sleep(delay).await;
            }
        }
    }
}
