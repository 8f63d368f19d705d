//! # stepq-results
//!
//! Task results (TaskIQ's `TaskiqResult` shape), the [`ResultBackend`] trait with in-memory and
//! local-directory implementations (S3 ones are in `stepq-aws`), and the [`OutputStore`] that carries step outputs
//! from the machine that wrote them to the machine that reads them.
//!
//! ```
//! # tokio_test_block(async {
//! use stepq_results::{InMemoryResultBackend, ResultBackend, TaskResult};
//! use std::time::Duration;
//!
//! let backend = InMemoryResultBackend::new();
//! backend.set_result("task-1", &TaskResult::ok(serde_json::json!(42), 0.01)).await.unwrap();
//! let result = backend.wait_result("task-1", Some(Duration::from_secs(1))).await.unwrap();
//! assert_eq!(result.return_value, serde_json::json!(42));
//! # });
//! # fn tokio_test_block<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
//! # }
//! ```

#![warn(missing_docs)]

pub mod backend;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod error;
pub mod local;
pub mod memory;
pub mod output;
pub mod result;

pub use backend::ResultBackend;
pub use error::{ErrorClass, ResultError, ServiceError};
pub use local::{LocalDirOutputStore, LocalDirResultBackend};
pub use memory::{InMemoryOutputStore, InMemoryResultBackend};
pub use output::{OutputKey, OutputStore};
pub use result::{TaskError, TaskResult};
pub use stepq_core::FailureKind;
