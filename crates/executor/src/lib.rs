//! # stepq-executor
//!
//! The orchestration loop: an [`Executor`] turns a [`RunRequest`] into a run that submits
//! every ready step of the job as an `execute_plan` task (all ready steps at once, within the
//! run's limits), awaits the results of all in-flight steps concurrently, forwards their events,
//! unblocks dependents as each result arrives, retries failed steps per their policy, and ends
//! with a [`RunResult`]. The [`protocol`] module is the wire format shared with workers.
//!
//! - Limits: [`ExecutorConfig::max_in_flight`] and per-tag-value [`TagLimit`]s.
//! - Retries: [`stepq_plan::RetryMode`] disabled / enabled / deferred, per-step
//!   [`stepq_plan::RetryPolicy`] or the config's default, op-requested retries.
//! - Bounded waits: [`ExecutorConfig::step_timeout`] per attempt; lost workers are otherwise
//!   noticed through the broker's redelivery.
//! - Interrupt ([`RunHandle::interrupt`]) and fail-fast cancel in-flight tasks through a
//!   [`CancelHook`].
//! - Recorded runs ([`launcher`]): a [`RunLauncher`] claims a run in the run [`storage`],
//!   records its events and status, and watches for cancel requests; runs can be submitted as
//!   `execute_job` / `resume_job` tasks for a worker to orchestrate, and resumed from their
//!   event log ([`known_state_from_events`]).
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use stepq_broker::{InMemoryBroker, Receiver, TaskContext, TaskQueue};
//! use stepq_executor::{protocol, Executor, ExecutorConfig, RunRequest, RunStatus};
//! use stepq_plan::{Job, StepDef, StepReport, StepStatus};
//! use stepq_results::{InMemoryOutputStore, InMemoryResultBackend, OutputKey, OutputStore};
//!
//! let queue = TaskQueue::new(Arc::new(InMemoryBroker::new()), Arc::new(InMemoryResultBackend::new()));
//! let outputs = Arc::new(InMemoryOutputStore::new());
//!
//! // A stand-in worker: each step stores output `result` = 1 and reports success.
//! let mut worker = Receiver::new(queue.clone());
//! let store = outputs.clone();
//! worker.register(protocol::EXECUTE_PLAN, Arc::new(move |ctx: TaskContext| {
//!     let store = store.clone();
//!     Box::pin(async move {
//!         let args = protocol::read_step_args(&ctx.message).expect("step args");
//!         let mut reports = Vec::new();
//!         for key in &args.step_keys {
//!             let value = rmp_serde::to_vec_named(&1_i64).unwrap();
//!             store.put(&OutputKey::new(&args.run_id, key, "result"), value.into()).await.unwrap();
//!             let emitted = vec!["result".to_string()];
//!             reports.push(StepReport { step_key: key.clone(), attempt: args.attempt_of(key),
//!                 worker: "doc".into(), status: StepStatus::Success { emitted }, events: vec![],
//!                 inline_outputs: vec![] });
//!         }
//!         Ok(protocol::reports_value(&reports).unwrap())
//!     })
//! }));
//! let stop = tokio_util::sync::CancellationToken::new();
//! let worker = tokio::spawn(worker.run(stop.clone()));
//!
//! let job = Job::builder("serial")
//!     .step(StepDef::new("simple", "simple").output("result"))
//!     .step(StepDef::new("add_one", "add_one").input("num", "simple", "result").output("result"))
//!     .build()
//!     .unwrap();
//! let executor = Executor::new(queue, outputs, ExecutorConfig::default()).unwrap();
//! let run = executor.start(RunRequest::new("run-1", Arc::new(job))).unwrap();
//! let result = run.wait().await;
//! assert_eq!(result.status, RunStatus::Success);
//! assert_eq!(executor.output::<i64>(&result, "add_one", "result").await.unwrap(), 1);
//!
//! stop.cancel();
//! worker.await.unwrap().unwrap();
//! # });
//! ```

#![warn(missing_docs)]

mod admission;
pub mod cancel_hook;
pub mod config;
pub mod control;
pub mod error;
pub mod executor;
pub mod handle;
pub mod launcher;
pub mod outcome;
/// The wire protocol shared with workers (the `stepq-protocol` crate).
pub use stepq_protocol as protocol;
/// Run storage and heartbeats (the `stepq-runs` crate).
pub use stepq_runs as storage;
mod retry;
mod run_loop;

pub use cancel_hook::{CancelHook, NoopCancelHook};
pub use config::{BackendRetry, ExecutorConfig, ExecutorSettings, TagLimit};
pub use error::{CancelHookError, ExecutorError, OutputError};
pub use executor::{check_run_id, Executor, RunRequest};
pub use handle::{EventStream, RunHandle};
pub use launcher::{
    known_state_from_events, LaunchError, RecordedOutcome, RecordedRun, RunLauncher,
    RunTaskOutcome, SubmittedRun,
};
pub use outcome::{RunResult, RunStatus, StepRunState, StepSummary};
