//! # stepq
//!
//! Run DAG-shaped jobs by sending each step as a task over a queue to a fleet of workers.
//! Define a job once in Rust (or as shell commands in a TOML file), run it on a laptop with
//! nothing installed — an in-memory queue, in-process workers and run state under `.stepq/` —
//! then run the same job across many machines on AWS SQS + S3 by pointing a config file at a
//! queue and a bucket.
//!
//! This facade crate gathers what users need from the layers below it (job model, op API,
//! executor, worker service, the AWS backends) and adds the [configuration](config) and the
//! [app factory](app) that composes them. The `stepq` command line is the `stepq-cli`
//! crate.
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use stepq::{make_app, op_fn, op_map, CodeLocation, Job, RunOptions, RunStatus, StepDef,
//!     StepOutputs, StepqConfig};
//!
//! // Ops: async closures with typed inputs and outputs.
//! let location = CodeLocation::builder()
//!     .op("emit_values", op_fn(|ctx, _inputs| async move {
//!         ctx.info("emitting two values");
//!         StepOutputs::new().with("one", &1_i64)?.with("two", &2_i64)
//!     }))
//!     .op("add_one", op_map("num", "result", |_ctx, n: i64| async move { Ok(n + 1) }))
//!     // A job wires step inputs to upstream outputs; `renamed` is a second step of `add_one`.
//!     .job(
//!         Job::builder("fork")
//!             .step(StepDef::new("emit_values", "emit_values").output("one").output("two"))
//!             .step(StepDef::new("add_one", "add_one").input("num", "emit_values", "one").output("result"))
//!             .step(StepDef::new("renamed", "add_one").input("num", "emit_values", "two").output("result"))
//!             .build()
//!             .unwrap(),
//!     )
//!     .build()
//!     .unwrap();
//!
//! // The embedded default: in-memory queue, local directories for results, outputs and runs.
//! let state = tempfile::tempdir().unwrap();
//! let config = StepqConfig { state_dir: state.path().into(), ..StepqConfig::default() };
//! let app = make_app(&config).await.unwrap();
//! app.startup().await.unwrap();
//!
//! // Two in-process workers run the steps; the run is recorded in the run store.
//! let run = app
//!     .run_with_local_workers(Arc::new(location), "fork", RunOptions::default(), 2)
//!     .await
//!     .unwrap();
//! assert_eq!(run.result.status, RunStatus::Success);
//! let renamed: i64 = run.result.output(app.outputs().as_ref(), "renamed", "result").await.unwrap();
//! assert_eq!(renamed, 3);
//! let record = app.runs().get_run(&run.result.run_id).await.unwrap();
//! assert_eq!(record.status.to_string(), "SUCCESS");
//! # });
//! ```
//!
//! The distributed setup (SQS + S3, the `[sqs]` / `[s3]` config sections) is the feature
//! `aws`, on by default. A user of the embedded default alone can build this crate with
//! `default-features = false` and compile no AWS SDK; that build refuses a config asking for
//! SQS ([`ConfigError::NoAwsSupport`]).
//!
//! A binary built on a code location gets the whole command line — `run`, `launch`, `status`,
//! `logs`, `cancel`, `resume`, `worker start`, `worker list` — from `stepq_cli::main(location)`
//! (crate `stepq-cli`).

#![warn(missing_docs)]

pub mod app;
pub mod config;
pub mod retention;

pub use app::{make_app, App, AppError, FinishedRun, LaunchedRun, LocalWorkers, RunOptions};
pub use config::{ConfigError, Mode, StepqConfig};

pub use stepq_executor::{
    Executor, ExecutorConfig, RunHandle, RunRequest, RunResult, RunStatus, StepRunState,
    StepSummary,
};
pub use stepq_plan::{
    Backoff, Event, EventKind, Job, JobBuilder, KnownState, RetryMode, RetryPolicy, StepDef,
};
pub use stepq_worker::{
    decode_value, encode_value, op_fn, op_map, op_output, CodeLocation, CodeLocationBuilder, Op,
    OpContext, OpError, OpResultExt, ShellJobs, ShellOp, StepInputs, StepOutputs, TomlJobsError,
    Worker, WorkerConfig, WorkerService,
};

/// The lower crates, for what the re-exports above leave out.
pub use {
    stepq_broker as broker, stepq_cancel as cancel, stepq_executor as executor, stepq_plan as plan,
    stepq_protocol as protocol, stepq_results as results, stepq_runs as runs,
    stepq_worker as worker,
};

/// The SQS and S3 implementations (`stepq-aws`; feature `aws`).
#[cfg(feature = "aws")]
pub use stepq_aws as aws;
