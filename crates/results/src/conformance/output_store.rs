//! The [`OutputStore`] suite: outputs are put, found and read back (large ones too),
//! overwritten, deleted per run, and keys with unusable parts are refused.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{no_hang, task_id};
use crate::error::ResultError;
use crate::output::{OutputKey, OutputStore};

/// Makes output stores for the suite. The checks need no second handle on one namespace,
/// so unlike the run store factories there is no `reopen`.
#[async_trait]
pub trait OutputStoreFactory: Send + Sync {
    /// A new, empty store on a fresh, isolated namespace.
    async fn fresh(&self) -> Arc<dyn OutputStore>;
}

#[async_trait]
impl<F, Fut> OutputStoreFactory for F
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Arc<dyn OutputStore>> + Send,
{
    async fn fresh(&self) -> Arc<dyn OutputStore> {
        self().await
    }
}

/// A fresh store.
async fn store(factory: &dyn OutputStoreFactory) -> Arc<dyn OutputStore> {
    factory.fresh().await
}

/// A unique run id.
fn run_id(name: &str) -> String {
    task_id(name)
}

async fn put(store: &dyn OutputStore, key: &OutputKey, value: Bytes) {
    store
        .put(key, value)
        .await
        .unwrap_or_else(|e| panic!("put({key}) failed: {e}"))
}

async fn get_output(store: &dyn OutputStore, key: &OutputKey) -> Bytes {
    store
        .get(key)
        .await
        .unwrap_or_else(|e| panic!("get({key}) failed: {e}"))
}

async fn exists(store: &dyn OutputStore, key: &OutputKey) -> bool {
    store
        .exists(key)
        .await
        .unwrap_or_else(|e| panic!("exists({key}) failed: {e}"))
}

/// `put`, `exists` and `get` agree; keys differing in one part are distinct; an empty value
/// round-trips.
pub async fn check_put_get_exists(factory: &dyn OutputStoreFactory) {
    let s = store(factory).await;
    let run = run_id("put-get");
    let key = OutputKey::new(&run, "step", "out");
    assert!(!exists(&*s, &key).await, "exists before put");
    put(&*s, &key, Bytes::from_static(b"hello")).await;
    assert!(exists(&*s, &key).await, "not found after put");
    assert_eq!(get_output(&*s, &key).await, Bytes::from_static(b"hello"));

    let neighbours = [
        OutputKey::new(&run, "step", "out2"),
        OutputKey::new(&run, "step2", "out"),
        OutputKey::new(run_id("other-run"), "step", "out"),
    ];
    for (i, k) in neighbours.iter().enumerate() {
        assert!(!exists(&*s, k).await, "{k} exists, but only {key} was put");
        put(&*s, k, Bytes::from(vec![i as u8; 3])).await;
    }
    assert_eq!(
        get_output(&*s, &key).await,
        Bytes::from_static(b"hello"),
        "putting other keys changed {key}"
    );
    for (i, k) in neighbours.iter().enumerate() {
        assert_eq!(get_output(&*s, k).await, Bytes::from(vec![i as u8; 3]));
    }

    let empty = OutputKey::new(&run, "step", "empty");
    put(&*s, &empty, Bytes::new()).await;
    assert!(exists(&*s, &empty).await, "an empty output must exist");
    assert!(get_output(&*s, &empty).await.is_empty());
}

/// A second `put` overwrites the first.
pub async fn check_output_overwrite(factory: &dyn OutputStoreFactory) {
    let s = store(factory).await;
    let key = OutputKey::new(run_id("overwrite"), "step", "out");
    put(&*s, &key, Bytes::from_static(b"first, and longer")).await;
    put(&*s, &key, Bytes::from_static(b"second")).await;
    assert_eq!(
        get_output(&*s, &key).await,
        Bytes::from_static(b"second"),
        "the second put did not overwrite the first"
    );
}

/// `get` of a key never put is [`ResultError::OutputNotFound`] naming `run/step/output`.
pub async fn check_missing_output(factory: &dyn OutputStoreFactory) {
    let s = store(factory).await;
    let key = OutputKey::new(run_id("missing"), "step", "out");
    match s.get(&key).await {
        Err(ResultError::OutputNotFound { key: named }) => {
            assert_eq!(named, key.to_string(), "OutputNotFound names another key")
        }
        other => panic!("get of a missing output: expected OutputNotFound, got {other:?}"),
    }
}

/// A 1 MiB value round-trips byte for byte.
pub async fn check_large_output(factory: &dyn OutputStoreFactory) {
    let s = store(factory).await;
    let key = OutputKey::new(run_id("large"), "step", "out");
    let value: Bytes = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect::<Vec<u8>>()
        .into();
    no_hang("put of 1 MiB", put(&*s, &key, value.clone())).await;
    let back = no_hang("get of 1 MiB", get_output(&*s, &key)).await;
    assert_eq!(back.len(), value.len(), "1 MiB output came back resized");
    assert!(back == value, "1 MiB output came back changed");
}

/// `delete_run` removes every output of that run and only that run; deleting an unknown run
/// is not an error.
pub async fn check_delete_run(factory: &dyn OutputStoreFactory) {
    let s = store(factory).await;
    let doomed = run_id("doomed");
    let kept = run_id("kept");
    let doomed_keys = [
        OutputKey::new(&doomed, "a", "out"),
        OutputKey::new(&doomed, "a", "other"),
        OutputKey::new(&doomed, "b", "out"),
    ];
    let kept_keys = [
        OutputKey::new(&kept, "a", "out"),
        OutputKey::new(&kept, "b", "out"),
    ];
    for k in doomed_keys.iter().chain(&kept_keys) {
        put(&*s, k, Bytes::from(k.to_string())).await;
    }
    s.delete_run(&doomed).await.expect("delete_run");
    for k in &doomed_keys {
        assert!(!exists(&*s, k).await, "{k} still exists after delete_run");
        assert!(
            matches!(s.get(k).await, Err(ResultError::OutputNotFound { .. })),
            "get({k}) after delete_run must be OutputNotFound"
        );
    }
    for k in &kept_keys {
        match s.get(k).await {
            Ok(value) => assert_eq!(
                value,
                Bytes::from(k.to_string()),
                "delete_run of another run changed {k}"
            ),
            Err(e) => panic!("delete_run of another run removed {k}: {e}"),
        }
    }
    s.delete_run(&doomed)
        .await
        .expect("delete_run of a deleted run must succeed");
    s.delete_run(&run_id("never-written"))
        .await
        .expect("delete_run of an unknown run must succeed");
    // The run can be written again.
    put(&*s, &doomed_keys[0], Bytes::from_static(b"again")).await;
    assert_eq!(
        get_output(&*s, &doomed_keys[0]).await,
        Bytes::from_static(b"again")
    );
}

/// Keys with a part unusable as a path segment (containing `/`, empty, `..`) are
/// [`ResultError::InvalidKey`] for every operation, and store nothing.
pub async fn check_invalid_output_key(factory: &dyn OutputStoreFactory) {
    let s = store(factory).await;
    let run = run_id("invalid");
    let bad_keys = [
        OutputKey::new(&run, "step/evil", "out"),
        OutputKey::new(&run, "step", "a/b"),
        OutputKey::new(format!("{run}/x"), "step", "out"),
        OutputKey::new(&run, "", "out"),
        OutputKey::new(&run, "..", "out"),
    ];
    for key in &bad_keys {
        let invalid = |what: &str, r: Result<(), ResultError>| {
            assert!(
                matches!(r, Err(ResultError::InvalidKey { .. })),
                "{what}({key:?}): expected InvalidKey, got {r:?}"
            )
        };
        invalid("put", s.put(key, Bytes::from_static(b"x")).await);
        invalid("get", s.get(key).await.map(drop));
        invalid("exists", s.exists(key).await.map(drop));
    }
    for bad_run in ["a/b", "", ".."] {
        assert!(
            matches!(
                s.delete_run(bad_run).await,
                Err(ResultError::InvalidKey { .. })
            ),
            "delete_run({bad_run:?}) must be InvalidKey"
        );
    }
    // Nothing was stored under a neighbouring valid key either.
    assert!(!exists(&*s, &OutputKey::new(&run, "step", "out")).await);
}

/// Runs every output store check, one after another.
pub async fn run_output_store_suite(factory: &dyn OutputStoreFactory) {
    crate::__output_store_checks!(__run_checks factory);
}

/// The checks of the output store suite, handed to `$callback` (internal).
#[doc(hidden)]
#[macro_export]
macro_rules! __output_store_checks {
    ($callback:ident $($args:tt)*) => {
        $crate::$callback! { $($args)* [
            check_put_get_exists,
            check_output_overwrite,
            check_missing_output,
            check_large_output,
            check_delete_run,
            check_invalid_output_key,
        ] }
    };
}

/// One `#[tokio::test]` per check of the [`OutputStore`] suite, named after the check, in a
/// module `$module`, each on a fresh store from `$factory` (an [`OutputStoreFactory`]
/// expression, evaluated once per test inside the module). Attributes before the module name
/// go on every test; `except [check_..., ...]` leaves out checks that cannot apply by design.
/// Same shape as [`result_backend_conformance_tests!`](crate::result_backend_conformance_tests).
///
/// ```
/// use std::sync::Arc;
/// use stepq_results::{InMemoryOutputStore, OutputStore};
///
/// stepq_results::output_store_conformance_tests!(in_memory, || async {
///     Arc::new(InMemoryOutputStore::new()) as Arc<dyn OutputStore>
/// });
/// # fn main() {}
/// ```
///
/// [`OutputStore`]: crate::OutputStore
/// [`OutputStoreFactory`]: crate::conformance::OutputStoreFactory
#[macro_export]
macro_rules! output_store_conformance_tests {
    ($(#[$attr:meta])* $module:ident, $factory:expr $(, except [$($skip:ident),* $(,)?])? $(,)?) => {
        $crate::__output_store_checks! {
            __conformance_tests [$crate::conformance] {$(#[$attr])*} $module; $factory;
            [$($($skip),*)?]
        }
    };
}
