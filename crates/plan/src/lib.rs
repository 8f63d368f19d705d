//! # stepq-plan
//!
//! The lowest layer of stepq: the job/step model, execution plans, the arguments that travel with
//! tasks, the events a run emits, and the versioned rmp-serde packing of all of them.
//!
//! ```
//! use stepq_plan::{Job, StepDef, ExecutionPlan, KnownState};
//!
//! let job = Job::builder("serial")
//!     .step(StepDef::new("simple", "simple").output("result"))
//!     .step(StepDef::new("add_one", "add_one").input("num", "simple", "result").output("result"))
//!     .build()
//!     .unwrap();
//! let plan = ExecutionPlan::new(job.into(), None, &KnownState::default()).unwrap();
//! let mut progress = plan.progress();
//! assert_eq!(progress.take_ready(), vec!["simple".to_string()]);
//! ```

#![warn(missing_docs)]

pub mod args;
pub mod events;
pub mod job;
pub mod pack;
pub mod plan;
pub mod state;

pub use args::{
    ExecuteRunArgs, ExecuteStepArgs, InlineValue, ResumeRunArgs, RetryMode, StepReport, StepStatus,
    TaskProgress,
};
pub use events::{ErrorInfo, Event, EventKind, SkipReason};
pub use job::{
    Backoff, InputDef, Job, JobBuilder, JobError, JobErrors, OutputDef, RetryPolicy, StepDef,
};
pub use pack::{pack, unpack, PackError, Packable, PACK_VERSION};
pub use plan::{ExecutionPlan, PlanError, PlanProgress, StepOutcome, StepState};
pub use state::{KnownState, StepOutputHandle};
pub use stepq_core::FailureKind;
