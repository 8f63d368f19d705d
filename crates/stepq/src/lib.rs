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
//! use stepq::{make_app, CodeLocation, RunOptions, RunStatus, StepqConfig, TypedJob};
//!
//! // A job of async closures; each step's input is the handle of an upstream output, so a
//! // wrong wiring or a type mismatch does not compile.
//! let mut job = TypedJob::new("fork");
//! let (one, two) = job.source2("emit_values", ["one", "two"], |ctx| async move {
//!     ctx.info("emitting two values");
//!     Ok((1_i64, 2_i64))
//! });
//! job.map("add_one", &one, |_ctx, n: i64| async move { Ok(n + 1) });
//! job.map("renamed", &two, |_ctx, n: i64| async move { Ok(n + 1) });
//! let location = CodeLocation::builder().typed_job(job).build().unwrap();
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
    decode_value, encode_value, op_fn, op_map, op_output, op_struct, CodeLocation,
    CodeLocationBuilder, Op, OpContext, OpError, OpResultExt, OpSignature, OutputRef, Port,
    ShellJobs, ShellOp, StepInputs, StepOutputs, TomlJobsError, TypedJob, Worker, WorkerConfig,
    WorkerService,
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
