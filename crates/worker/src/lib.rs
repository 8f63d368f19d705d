//! # stepq-worker
//!
//! The code side of stepq: jobs of typed steps ([`TypedJob`]: async closures wired by
//! output handles the compiler checks), the [`Op`] API (ops as async closures with typed inputs and outputs,
//! an [`OpContext`] with a logger and a cancellation signal, [`OpError`] with causes and retry
//! requests), the [`CodeLocation`] that names a worker's ops and jobs, [`execute_step`] which
//! runs one step against an output store, and the [`Worker`] runtime that serves
//! `execute_plan` tasks from a queue.
//!
//! Values travel between steps as MessagePack ([`encode_value`] / [`decode_value`]).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use stepq_plan::{ExecuteStepArgs, KnownState, RetryMode, StepStatus};
//! use stepq_results::{InMemoryOutputStore, OutputKey, OutputStore};
//! use stepq_worker::{decode_value, execute_step, CodeLocation, TypedJob};
//! use tokio_util::sync::CancellationToken;
//!
//! // A job wiring two async closures: add_one(simple()). The second reads the first's
//! // output through its handle, an `OutputRef<i64>`: the compiler checks the types.
//! let mut job = TypedJob::new("serial");
//! let one = job.source("simple", |ctx| async move {
//!     ctx.info("returning one");
//!     Ok(1_i64)
//! });
//! job.map("add_one", &one, |_ctx, n: i64| async move { Ok(n + 1) });
//! let location = CodeLocation::builder().typed_job(job).build().unwrap();
//!
//! // Run both steps in order, as workers would when the orchestrator sends them.
//! let store = InMemoryOutputStore::new();
//! let cancel = CancellationToken::new();
//! for step in ["simple", "add_one"] {
//!     let args = ExecuteStepArgs {
//!         run_id: "run-1".into(),
//!         job_name: "serial".into(),
//!         step_keys: vec![step.into()],
//!         known_state: KnownState::default(),
//!         retry_mode: RetryMode::Enabled,
//!         attempt: 1,
//!         run_config: serde_json::Value::Null,
//!         inline_inputs: Vec::new(),
//!     };
//!     let report = execute_step(&location, &store, &args, step, "doc-worker", &cancel).await;
//!     assert_eq!(report.status, StepStatus::Success { emitted: vec!["result".into()] });
//! }
//! let stored = store.get(&OutputKey::new("run-1", "add_one", "result")).await.unwrap();
//! assert_eq!(decode_value::<i64>(&stored).unwrap(), 2);
//! # });
//! ```
//!
//! To serve steps from a queue, wrap the location in a [`Worker`]:
//! `Worker::new(Arc::new(location), queue, outputs, WorkerConfig::default())?.run(stop).await`.
//! A [`HealthWriter`] on the worker's [`activity`](Worker::activity) writes its health
//! heartbeat (what it runs, for `stepq worker list` and `stepq status`); see [`health`].

#![warn(missing_docs)]

pub mod canceled;
pub mod context;
pub mod error;
pub mod execute;
pub mod fleet;
pub mod health;
#[cfg(feature = "http")]
pub mod http;
pub mod io;
pub mod location;
pub mod observe;
pub mod op;
mod progress;
pub mod service;
pub mod shell;
pub mod signature;
pub mod typed;
pub mod worker;

pub use canceled::step_canceled_result;
pub use context::OpContext;
pub use error::{OpError, OpResultExt, OP_ERROR_KIND};
pub use execute::execute_step;
pub use health::{HealthError, HealthHandle, HealthWriter, WorkerActivity};
pub use io::{decode_value, encode_value, StepInputs, StepOutputs};
pub use location::{CodeLocation, CodeLocationBuilder, LocationError, LocationErrors};
pub use observe::WorkerObserver;
pub use op::{op_fn, op_map, op_output, Op};
pub use service::{serve, ServiceError, ServiceParts, ServiceSettings, WorkerService};
pub use shell::{ShellJobs, ShellOp, TomlJobsError};
pub use signature::{OpSignature, Port};
pub use typed::{op_struct, OutputRef, TypedJob};
pub use worker::{
    Worker, WorkerConfig, WorkerError, WorkerStats, DEFAULT_INLINE_OUTPUT_LIMIT,
    DEFAULT_VISIBILITY_TIMEOUT,
};
