//! The machinery behind every `*_conformance_tests!` macro of the workspace (this crate's and
//! those of `stepq-broker`, `stepq-runs` and `stepq-cancel`, which re-export it): one
//! `#[tokio::test]` per check, in a module named by the caller, minus the checks the caller
//! skips.
//!
//! A suite names its checks once, in a hidden list macro (`__result_backend_checks!` here),
//! which hands them to a callback: [`__conformance_tests!`](crate::__conformance_tests) for
//! the tests, [`__run_checks!`](crate::__run_checks) for the `run_*_suite` function. So the
//! tests and the function can never disagree about what the suite is.

/// Expands to one test per check (internal: use a suite's `*_conformance_tests!` macro).
///
/// Input: `[path::to::checks] {#[attr]...} module; factory; [skipped, ...] [check, ...]`.
/// A skipped name that is not a check of the suite is a compile error.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    ($path:tt $attrs:tt $module:ident; $factory:expr; [$($skip:ident),*] [$($check:ident),* $(,)?]) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            // Only checks of the suite may be skipped (a typo must not skip nothing).
            #[allow(unused_macros)]
            macro_rules! __known_check {
                $( ($check) => {}; )*
            }
            $( __known_check!($skip); )*

            // Skipped checks first: the first matching rule wins.
            macro_rules! __conformance_case {
                $( ($skip) => {}; )*
                $( ($check) => { $crate::__conformance_test! { $attrs $path $check; $factory } }; )*
            }
            $( __conformance_case!($check); )*
        }
    };
}

/// One test: `{#[attr]...} [path::to::checks] check; factory` (internal).
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_test {
    ({$(#[$attr:meta])*} [$($path:tt)*] $check:ident; $factory:expr) => {
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[$attr])*
        async fn $check() {
            let factory = $factory;
            $($path)*::$check(&factory).await;
        }
    };
}

/// Runs every check in turn on `factory` (internal: the body of the `run_*_suite` functions).
#[doc(hidden)]
#[macro_export]
macro_rules! __run_checks {
    ($factory:ident [$($check:ident),* $(,)?]) => {
        $( $check($factory).await; )*
    };
}
