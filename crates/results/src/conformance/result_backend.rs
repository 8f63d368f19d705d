//! The [`ResultBackend`] suite: results round-trip (with or without their log), become
//! ready, are overwritten, awaited (stored before or after the wait, timeouts, many waiters),
//! deleted, and unusable task ids are refused.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{no_hang, task_id};
use crate::backend::ResultBackend;
use crate::error::ResultError;
use crate::result::{TaskError, TaskResult};

/// Makes result backends for the suite. The checks need no second handle on one namespace,
/// so unlike the run store factories there is no `reopen`.
#[async_trait]
pub trait ResultBackendFactory: Send + Sync {
    /// A new, empty backend on a fresh, isolated namespace (a new directory, bucket
    /// prefix, ...).
    async fn fresh(&self) -> Arc<dyn ResultBackend>;
}

#[async_trait]
impl<F, Fut> ResultBackendFactory for F
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Arc<dyn ResultBackend>> + Send,
{
    async fn fresh(&self) -> Arc<dyn ResultBackend> {
        self().await
    }
}

/// A fresh backend, started.
async fn started(factory: &dyn ResultBackendFactory) -> Arc<dyn ResultBackend> {
    let backend = factory.fresh().await;
    backend
        .startup()
        .await
        .unwrap_or_else(|e| panic!("startup failed: {e}"));
    backend
}

/// A result with every field set: labels, error, log and a nested return value.
pub fn sample_result(n: u64) -> TaskResult {
    let mut labels = BTreeMap::new();
    labels.insert("run_id".to_string(), serde_json::json!("run-1"));
    labels.insert("attempt".to_string(), serde_json::json!(n));
    labels.insert(
        "flags".to_string(),
        serde_json::json!({"a": [1, 2.5, null]}),
    );
    TaskResult {
        is_err: n % 2 == 1,
        return_value: serde_json::json!({"n": n, "text": "ünïcode ✓", "list": [true, false]}),
        execution_time: 1.5 + n as f64,
        labels,
        error: Some(TaskError {
            kind: "OpError".into(),
            message: format!("failure number {n}"),
        }),
        log: Some(format!("line one of {n}\nline two\n")),
    }
}

fn without_log(mut r: TaskResult) -> TaskResult {
    r.log = None;
    r
}

async fn get(backend: &dyn ResultBackend, id: &str, with_logs: bool) -> TaskResult {
    backend
        .get_result(id, with_logs)
        .await
        .unwrap_or_else(|e| panic!("get_result({id}) failed: {e}"))
}

async fn set(backend: &dyn ResultBackend, id: &str, result: &TaskResult) {
    backend
        .set_result(id, result)
        .await
        .unwrap_or_else(|e| panic!("set_result({id}) failed: {e}"))
}

async fn ready(backend: &dyn ResultBackend, id: &str) -> bool {
    backend
        .is_result_ready(id)
        .await
        .unwrap_or_else(|e| panic!("is_result_ready({id}) failed: {e}"))
}

/// `set_result` then `get_result(.., true)` returns every field unchanged, for a failed and a
/// successful result.
pub async fn check_round_trip(factory: &dyn ResultBackendFactory) {
    let backend = started(factory).await;
    for n in [0, 1] {
        let id = task_id("round-trip");
        let result = sample_result(n);
        set(&*backend, &id, &result).await;
        assert_eq!(
            get(&*backend, &id, true).await,
            result,
            "round trip changed the result"
        );
    }
    let minimal = TaskResult::ok(serde_json::Value::Null, 0.0);
    let id = task_id("minimal");
    set(&*backend, &id, &minimal).await;
    assert_eq!(get(&*backend, &id, true).await, minimal, "minimal result");
}

/// `get_result(.., false)` drops the log and nothing else.
pub async fn check_get_without_logs(factory: &dyn ResultBackendFactory) {
    let backend = started(factory).await;
    let id = task_id("no-logs");
    let result = sample_result(2);
    set(&*backend, &id, &result).await;
    assert_eq!(
        get(&*backend, &id, false).await,
        without_log(result.clone()),
        "with_logs = false must drop the log only"
    );
    assert_eq!(
        get(&*backend, &id, true).await.log,
        result.log,
        "reading without logs must not delete the stored log"
    );
}

/// `is_result_ready` is false before `set_result` and true after.
pub async fn check_ready_transitions(factory: &dyn ResultBackendFactory) {
    let backend = started(factory).await;
    let id = task_id("ready");
    assert!(
        !ready(&*backend, &id).await,
        "ready before any result was set"
    );
    set(&*backend, &id, &sample_result(0)).await;
    assert!(ready(&*backend, &id).await, "not ready after set_result");
}

/// `get_result` of an id never set is [`ResultError::NotFound`] naming the id.
pub async fn check_missing_is_not_found(factory: &dyn ResultBackendFactory) {
    let backend = started(factory).await;
    let id = task_id("missing");
    match backend.get_result(&id, true).await {
        Err(ResultError::NotFound { task_id }) => {
            assert_eq!(task_id, id, "NotFound names another task")
        }
        other => panic!("get_result of a missing id: expected NotFound, got {other:?}"),
    }
}

/// A second `set_result` (a redelivered step) overwrites the first.
pub async fn check_overwrite(factory: &dyn ResultBackendFactory) {
    let backend = started(factory).await;
    let id = task_id("overwrite");
    set(&*backend, &id, &sample_result(3)).await;
    set(&*backend, &id, &sample_result(4)).await;
    assert_eq!(
        get(&*backend, &id, true).await,
        sample_result(4),
        "the second set_result did not overwrite the first"
    );
    let waited = no_hang(
        "wait_result after overwrite",
        backend.wait_result(&id, Some(Duration::from_secs(10))),
    )
    .await
    .expect("wait_result after overwrite");
    assert_eq!(waited, without_log(sample_result(4)));
}

/// `wait_result` returns a result stored before the wait began, without its log.
pub async fn check_wait_for_earlier_result(factory: &dyn ResultBackendFactory) {
    let backend = started(factory).await;
    let id = task_id("wait-earlier");
    set(&*backend, &id, &sample_result(5)).await;
    let waited = no_hang(
        "wait_result for a stored result",
        backend.wait_result(&id, Some(Duration::from_secs(10))),
    )
    .await
    .expect("wait_result for a stored result");
    assert_eq!(
        waited,
        without_log(sample_result(5)),
        "wait_result must return the result without its log"
    );
    let unbounded = no_hang("wait_result(None)", backend.wait_result(&id, None))
        .await
        .expect("wait_result(None) for a stored result");
    assert_eq!(unbounded, without_log(sample_result(5)));
}

/// `wait_result` returns a result stored (by another task) after the wait began.
pub async fn check_wait_for_later_result(factory: &dyn ResultBackendFactory) {
    let backend = started(factory).await;
    for timeout in [Some(Duration::from_secs(20)), None] {
        let id = task_id("wait-later");
        let waiter = {
            let backend = backend.clone();
            let id = id.clone();
            tokio::spawn(async move { backend.wait_result(&id, timeout).await })
        };
        // Give the waiter time to start waiting; the check below proves it had not finished.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiter.is_finished(),
            "wait_result returned before any result was set"
        );
        let setter = {
            let backend = backend.clone();
            let id = id.clone();
            tokio::spawn(async move { set(&*backend, &id, &sample_result(6)).await })
        };
        let waited = no_hang("wait_result for a later result", waiter)
            .await
            .expect("waiter task panicked")
            .expect("wait_result for a later result");
        setter.await.expect("setter task panicked");
        assert_eq!(waited, without_log(sample_result(6)));
    }
}

/// `wait_result` with a short timeout on an id never set fails with
/// [`ResultError::Timeout`] (a temporary error), promptly.
pub async fn check_wait_timeout(factory: &dyn ResultBackendFactory) {
    let backend = started(factory).await;
    let id = task_id("wait-timeout");
    let outcome = no_hang(
        "wait_result with a 100 ms timeout",
        backend.wait_result(&id, Some(Duration::from_millis(100))),
    )
    .await;
    match outcome {
        Err(e @ ResultError::Timeout { .. }) => {
            assert!(e.is_temporary(), "Timeout must be a temporary error");
            let ResultError::Timeout { task_id, waited } = e else {
                unreachable!()
            };
            assert_eq!(task_id, id, "Timeout names another task");
            assert!(
                waited >= Duration::from_millis(100),
                "Timeout reports waiting {waited:?}, less than the 100 ms asked"
            );
        }
        other => panic!("wait_result on a missing id: expected Timeout, got {other:?}"),
    }
    // The backend still works after a timed-out wait.
    set(&*backend, &id, &sample_result(7)).await;
    let waited = no_hang(
        "wait_result after a timeout",
        backend.wait_result(&id, Some(Duration::from_secs(10))),
    )
    .await
    .expect("wait_result after an earlier timeout");
    assert_eq!(waited, without_log(sample_result(7)));
}

/// 50 concurrent waiters on distinct ids are each answered with their own result.
pub async fn check_many_waiters(factory: &dyn ResultBackendFactory) {
    const WAITERS: u64 = 50;
    let backend = started(factory).await;
    let ids: Vec<String> = (0..WAITERS)
        .map(|i| task_id(&format!("many-{i}")))
        .collect();
    let waiters: Vec<_> = ids
        .iter()
        .map(|id| {
            let backend = backend.clone();
            let id = id.clone();
            tokio::spawn(async move {
                backend
                    .wait_result(&id, Some(Duration::from_secs(20)))
                    .await
            })
        })
        .collect();
    let setter = {
        let backend = backend.clone();
        let ids = ids.clone();
        tokio::spawn(async move {
            // In reverse, so the answer order differs from the wait order.
            for (i, id) in ids.iter().enumerate().rev() {
                set(&*backend, id, &sample_result(i as u64)).await;
            }
        })
    };
    for (i, waiter) in waiters.into_iter().enumerate() {
        let waited = no_hang("one of 50 concurrent waiters", waiter)
            .await
            .expect("waiter task panicked")
            .unwrap_or_else(|e| panic!("waiter {i} failed: {e}"));
        assert_eq!(
            waited,
            without_log(sample_result(i as u64)),
            "waiter {i} got another task's result"
        );
    }
    setter.await.expect("setter task panicked");
}

/// `delete_result` removes a result; deleting a missing one is not an error.
pub async fn check_delete(factory: &dyn ResultBackendFactory) {
    let backend = started(factory).await;
    let id = task_id("delete");
    let other = task_id("keep");
    set(&*backend, &id, &sample_result(8)).await;
    set(&*backend, &other, &sample_result(9)).await;
    backend
        .delete_result(&id)
        .await
        .expect("delete_result of a stored result");
    assert!(!ready(&*backend, &id).await, "ready after delete_result");
    assert!(
        matches!(
            backend.get_result(&id, true).await,
            Err(ResultError::NotFound { .. })
        ),
        "get_result after delete_result must be NotFound"
    );
    assert!(
        ready(&*backend, &other).await,
        "delete_result removed another task's result"
    );
    backend
        .delete_result(&id)
        .await
        .expect("delete_result of a missing result must succeed");
    backend
        .delete_result(&task_id("never-set"))
        .await
        .expect("delete_result of a never-set result must succeed");
    // A deleted id can be set again.
    set(&*backend, &id, &sample_result(10)).await;
    assert_eq!(get(&*backend, &id, true).await, sample_result(10));
}

/// Task ids unusable as a key (containing `/`, empty, `..`) are [`ResultError::InvalidKey`].
pub async fn check_invalid_task_id(factory: &dyn ResultBackendFactory) {
    let backend = started(factory).await;
    for bad in ["a/b", "", ".."] {
        let invalid = |what: &str, r: Result<(), ResultError>| match r {
            Err(ResultError::InvalidKey { key, .. }) => {
                assert_eq!(key, bad, "{what}: InvalidKey names another key")
            }
            other => panic!("{what}({bad:?}): expected InvalidKey, got {other:?}"),
        };
        invalid(
            "set_result",
            backend.set_result(bad, &sample_result(0)).await,
        );
        invalid("get_result", backend.get_result(bad, true).await.map(drop));
        invalid(
            "is_result_ready",
            backend.is_result_ready(bad).await.map(drop),
        );
        invalid(
            "wait_result",
            no_hang(
                "wait_result on an invalid id",
                backend.wait_result(bad, Some(Duration::from_secs(5))),
            )
            .await
            .map(drop),
        );
    }
}

/// Runs every result backend check, one after another.
pub async fn run_result_backend_suite(factory: &dyn ResultBackendFactory) {
    crate::__result_backend_checks!(__run_checks factory);
}

/// The checks of the result backend suite, handed to `$callback` (internal).
#[doc(hidden)]
#[macro_export]
macro_rules! __result_backend_checks {
    ($callback:ident $($args:tt)*) => {
        $crate::$callback! { $($args)* [
            check_round_trip,
            check_get_without_logs,
            check_ready_transitions,
            check_missing_is_not_found,
            check_overwrite,
            check_wait_for_earlier_result,
            check_wait_for_later_result,
            check_wait_timeout,
            check_many_waiters,
            check_delete,
            check_invalid_task_id,
        ] }
    };
}

/// One `#[tokio::test]` per check of the [`ResultBackend`] suite, named after the check, in a
/// module `$module`, each on a fresh backend from `$factory` (an expression evaluated inside
/// the module, once per test: a [`ResultBackendFactory`], e.g. a closure returning
/// `Arc<dyn ResultBackend>`).
///
/// Attributes before the module name go on every test (`#[ignore = "localstack"]`);
/// `except [check_..., ...]` leaves out checks that cannot apply to the backend by design
/// (say why in a comment). The caller's crate needs `tokio` (with the `macros` and
/// `rt-multi-thread` features) as a dev-dependency.
///
/// ```
/// use std::sync::Arc;
/// use stepq_results::{InMemoryResultBackend, ResultBackend};
///
/// stepq_results::result_backend_conformance_tests!(in_memory, || async {
///     Arc::new(InMemoryResultBackend::new()) as Arc<dyn ResultBackend>
/// });
/// // A failure names the clause: `in_memory::check_wait_timeout`, ...
/// # fn main() {}
/// ```
///
/// [`ResultBackend`]: crate::ResultBackend
/// [`ResultBackendFactory`]: crate::conformance::ResultBackendFactory
#[macro_export]
macro_rules! result_backend_conformance_tests {
    ($(#[$attr:meta])* $module:ident, $factory:expr $(, except [$($skip:ident),* $(,)?])? $(,)?) => {
        $crate::__result_backend_checks! {
            __conformance_tests [$crate::conformance] {$(#[$attr])*} $module; $factory;
            [$($($skip),*)?]
        }
    };
}
