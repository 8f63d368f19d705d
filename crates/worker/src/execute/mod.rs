//! Executing one step: look it up, load its inputs, run its op, check and store its outputs, and
//! report how it ended with the events it produced.
//!
//! Files: this one holds the entry points ([`execute_step`], `run_step`), what they are given
//! (inline inputs and options) and the attempt being run; `attempt.rs` runs it from lookup to
//! report, `values.rs` loads its inputs and checks and stores its outputs, `op_task.rs` runs
//! its op on a task of its own (cancellation, panics).

mod attempt;
mod op_task;
mod values;

pub use values::OUTPUT_STORE_RETRY_FOR;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use stepq_plan::{ErrorInfo, Event, EventKind, ExecuteStepArgs, FailureKind, StepReport};
use stepq_results::{OutputStore, ResultError};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::context::EventSink;
use crate::error::OpError;
use crate::location::CodeLocation;
use crate::progress::ProgressWriter;

/// Failure kind: the job is not in the code location.
pub const UNKNOWN_JOB: FailureKind = FailureKind::UnknownJob;
/// Failure kind: the job has no such step.
pub const UNKNOWN_STEP: FailureKind = FailureKind::UnknownStep;
/// Failure kind: the step's op is not registered (cannot happen with a built location).
pub const UNKNOWN_OP: FailureKind = FailureKind::UnknownOp;
/// Failure kind: an input's upstream output is not in the output store.
pub const MISSING_INPUT: FailureKind = FailureKind::MissingInput;
/// Failure kind: the output store failed while loading an input.
pub const INPUT_LOAD_ERROR: FailureKind = FailureKind::InputLoadError;
/// Failure kind: the op did not emit a required output.
pub const MISSING_OUTPUT: FailureKind = FailureKind::MissingOutput;
/// Failure kind: the op emitted an output its step does not declare.
pub const UNKNOWN_OUTPUT: FailureKind = FailureKind::UnknownOutput;
/// Failure kind: the output store failed while storing an output (after retrying a
/// temporary failure for [`OUTPUT_STORE_RETRY_FOR`]).
pub const OUTPUT_STORE_ERROR: FailureKind = FailureKind::OutputStoreError;
/// Failure kind: the op panicked.
pub const PANIC: FailureKind = FailureKind::Panic;

/// Runs step `step_key` of `args` and reports how it ended; never panics, whatever the op does.
///
/// In order: a `StepStart` event; the job, step and op are looked up in `location` (failures
/// `unknown_job` / `unknown_step` name what exists); each input is loaded from `outputs`
/// (`missing_input` if absent, a `StepInputLoaded` event each); the op runs on its own task (a
/// panic becomes failure `panic`); every emitted output must be declared (`unknown_output`) and
/// every required one emitted (`missing_output`); outputs are stored (a `StepOutputHandled` event
/// each) and a `StepSuccess` event closes the report. An op error becomes a `StepFailure` event
/// and [`StepStatus::Failure`](stepq_plan::StepStatus::Failure) carrying its retry request. Output-store failures that may pass
/// (temporary errors) are reported as asking for a retry.
///
/// When `cancel` fires, the op's [`OpContext`](crate::OpContext) is cancelled and its future dropped; the report
/// ends with `StepCanceled` and [`StepStatus::Canceled`](stepq_plan::StepStatus::Canceled), and nothing is stored.
///
/// The last event of a report always matches its status: `StepSuccess`, `StepFailure` or
/// `StepCanceled`. The `will_retry` flag of `StepFailure` is the worker's view (retry mode
/// `Enabled` and either the step's policy allows another attempt or, with no policy, the op asked
/// for a retry); the orchestrator decides and announces retries with `StepRetry`.
///
/// Inputs carried in `args.inline_inputs` are taken from there; the others are read from
/// `outputs`. This function copies no output into the report's `inline_outputs` (a
/// [`Worker`](crate::Worker) does, per [`WorkerConfig::inline_output_limit`](crate::WorkerConfig::inline_output_limit)).
pub async fn execute_step(
    location: &CodeLocation,
    outputs: &dyn OutputStore,
    args: &ExecuteStepArgs,
    step_key: &str,
    worker_name: &str,
    cancel: &CancellationToken,
) -> StepReport {
    let inline = InlineInputs::from_args(args);
    run_step(
        location,
        outputs,
        args,
        step_key,
        worker_name,
        cancel,
        &inline,
        InlineOptions::none(),
        None,
    )
    .await
    .report
}

/// Step output values already in memory, by `(step key, output name)`: the task's inline
/// inputs and, in a multi-step task, the outputs of its earlier steps.
#[derive(Debug, Clone, Default)]
pub(crate) struct InlineInputs {
    values: HashMap<(String, String), Bytes>,
}

impl InlineInputs {
    /// The values the orchestrator put in the task's message.
    pub(crate) fn from_args(args: &ExecuteStepArgs) -> Self {
        InlineInputs {
            values: args
                .inline_inputs
                .iter()
                .map(|v| {
                    (
                        (v.step_key.clone(), v.output_name.clone()),
                        Bytes::copy_from_slice(&v.value),
                    )
                })
                .collect(),
        }
    }

    /// The value of `step_key`'s output `output_name`, if in memory.
    pub(crate) fn get(&self, step_key: &str, output_name: &str) -> Option<&Bytes> {
        // Two owned strings per lookup; inputs are few.
        self.values
            .get(&(step_key.to_string(), output_name.to_string()))
    }

    /// Keeps `value` as `step_key`'s output `output_name`.
    pub(crate) fn insert(&mut self, step_key: &str, output_name: &str, value: Bytes) {
        self.values
            .insert((step_key.to_string(), output_name.to_string()), value);
    }
}

/// Which of a successful step's outputs are copied into its report
/// ([`StepReport::inline_outputs`]), for the orchestrator to hand to downstream steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InlineOptions {
    /// Largest output copied, in bytes (0: none).
    pub(crate) max_output_bytes: usize,
    /// Largest total of copied outputs per report, in bytes.
    pub(crate) max_report_bytes: usize,
}

impl InlineOptions {
    /// Copies nothing.
    pub(crate) const fn none() -> Self {
        InlineOptions {
            max_output_bytes: 0,
            max_report_bytes: 0,
        }
    }

    /// Copies outputs up to `max_output_bytes` each, at most eight such outputs' worth per
    /// report.
    pub(crate) const fn up_to(max_output_bytes: usize) -> Self {
        InlineOptions {
            max_output_bytes,
            max_report_bytes: max_output_bytes.saturating_mul(8),
        }
    }
}

/// What one step's run produced: its report and the outputs it stored (on success).
pub(crate) struct ExecutedStep {
    /// How the step ended, with its events.
    pub(crate) report: StepReport,
    /// The outputs it stored, in emission order (empty unless it succeeded).
    pub(crate) outputs: Vec<(String, Bytes)>,
}

/// [`execute_step`] with inputs taken from `inline` first, outputs copied into the report per
/// `options`, the stored outputs handed back (for the next step of a multi-step task), and
/// the step's start told to `progress` as it happens.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_step(
    location: &CodeLocation,
    outputs: &dyn OutputStore,
    args: &ExecuteStepArgs,
    step_key: &str,
    worker_name: &str,
    cancel: &CancellationToken,
    inline: &InlineInputs,
    options: InlineOptions,
    progress: Option<&ProgressWriter>,
) -> ExecutedStep {
    let attempt_number = args.attempt_of(step_key);
    let span = tracing::info_span!(
        "step",
        run_id = %args.run_id,
        job = %args.job_name,
        step_key,
        attempt = attempt_number,
    );
    let sink = Arc::new(EventSink::default());
    let attempt = StepAttempt {
        args,
        step_key,
        attempt: attempt_number,
        worker_name,
        sink,
        inline,
        progress,
    };
    attempt
        .run(location, outputs, cancel, options)
        .instrument(span)
        .await
}

/// One attempt of one step, accumulating its events.
struct StepAttempt<'a> {
    args: &'a ExecuteStepArgs,
    step_key: &'a str,
    /// This step's attempt number.
    attempt: u32,
    worker_name: &'a str,
    sink: Arc<EventSink>,
    inline: &'a InlineInputs,
    /// Told when the step starts, if the task's progress is reported.
    progress: Option<&'a ProgressWriter>,
}

/// Why an attempt stopped before the end.
enum Stop {
    Failed {
        error: ErrorInfo,
        retry_requested: Option<Option<u64>>,
    },
    Canceled,
}

impl Stop {
    fn failed(kind: FailureKind, message: String) -> Self {
        Stop::Failed {
            error: ErrorInfo::new(kind, message),
            retry_requested: None,
        }
    }

    fn store(kind: FailureKind, message: String, error: &ResultError) -> Self {
        let mut info = ErrorInfo::from_error(kind, error);
        info.causes
            .insert(0, std::mem::replace(&mut info.message, message));
        Stop::Failed {
            error: info,
            retry_requested: error.is_temporary().then_some(None),
        }
    }

    fn from_op(error: OpError) -> Self {
        Stop::Failed {
            retry_requested: error
                .retry_requested()
                .map(|delay| delay.map(|d| d.as_millis().min(u64::MAX as u128) as u64)),
            error: error.to_error_info(),
        }
    }
}

impl StepAttempt<'_> {
    /// Records `kind` as an event of this step.
    fn event(&self, kind: EventKind) {
        self.sink
            .push(Event::step(&self.args.run_id, self.step_key, kind));
    }
}
