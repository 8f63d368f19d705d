//! Executing one step: look it up, load its inputs, run its op, check and store its outputs, and
//! report how it ended with the events it produced.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;
use stepq_plan::{
    ErrorInfo, Event, EventKind, ExecuteStepArgs, FailureKind, InlineValue, RetryMode, StepDef,
    StepReport, StepStatus,
};
use stepq_results::{OutputKey, OutputStore, ResultError};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::context::{EventSink, OpContext};
use crate::error::OpError;
use crate::io::{list_or_none, StepInputs, StepOutputs};
use crate::location::CodeLocation;

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
/// Failure kind: the output store failed while storing an output.
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
/// and [`StepStatus::Failure`] carrying its retry request. Output-store failures that may pass
/// (temporary errors) are reported as asking for a retry.
///
/// When `cancel` fires, the op's [`OpContext`] is cancelled and its future dropped; the report
/// ends with `StepCanceled` and [`StepStatus::Canceled`], and nothing is stored.
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

    pub(crate) fn get(&self, step_key: &str, output_name: &str) -> Option<&Bytes> {
        // Two owned strings per lookup; inputs are few.
        self.values
            .get(&(step_key.to_string(), output_name.to_string()))
    }

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
    pub(crate) report: StepReport,
    pub(crate) outputs: Vec<(String, Bytes)>,
}

/// [`execute_step`] with inputs taken from `inline` first, outputs copied into the report per
/// `options`, and the stored outputs handed back (for the next step of a multi-step task).
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
    fn event(&self, kind: EventKind) {
        self.sink
            .push(Event::step(&self.args.run_id, self.step_key, kind));
    }

    async fn run(
        self,
        location: &CodeLocation,
        outputs: &dyn OutputStore,
        cancel: &CancellationToken,
        options: InlineOptions,
    ) -> ExecutedStep {
        self.event(EventKind::StepStart {
            attempt: self.attempt,
            worker: self.worker_name.to_string(),
        });
        tracing::info!(worker = self.worker_name, "step started");
        let mut step_def = None;
        let outcome = self.attempt(location, outputs, cancel, &mut step_def).await;
        let mut stored = Vec::new();
        let mut inline_outputs = Vec::new();
        let status = match outcome {
            Ok((values, duration)) => {
                self.event(EventKind::StepSuccess { duration });
                tracing::info!(?duration, "step succeeded");
                let emitted = values.iter().map(|(name, _)| name.clone()).collect();
                inline_outputs = self.inline_copies(&values, options);
                stored = values;
                StepStatus::Success { emitted }
            }
            Err(Stop::Canceled) => {
                self.event(EventKind::StepCanceled);
                tracing::info!("step canceled");
                StepStatus::Canceled
            }
            Err(Stop::Failed {
                error,
                retry_requested,
            }) => {
                let will_retry = self.will_retry(step_def.as_ref(), retry_requested.is_some());
                tracing::warn!(error = %error, will_retry, "step failed");
                self.event(EventKind::StepFailure {
                    error: error.clone(),
                    will_retry,
                });
                StepStatus::Failure {
                    error,
                    retry_requested,
                }
            }
        };
        ExecutedStep {
            report: StepReport {
                step_key: self.step_key.to_string(),
                attempt: self.attempt,
                worker: self.worker_name.to_string(),
                status,
                events: self.sink.take(),
                inline_outputs,
            },
            outputs: stored,
        }
    }

    /// Copies of the stored outputs small enough to ride in the report, in emission order,
    /// within the report's budget.
    fn inline_copies(
        &self,
        values: &[(String, Bytes)],
        options: InlineOptions,
    ) -> Vec<InlineValue> {
        let mut budget = options.max_report_bytes;
        let mut out = Vec::new();
        for (name, bytes) in values {
            if bytes.len() <= options.max_output_bytes && bytes.len() <= budget {
                budget -= bytes.len();
                out.push(InlineValue::new(
                    self.step_key,
                    name.clone(),
                    bytes.to_vec(),
                ));
            }
        }
        out
    }

    fn will_retry(&self, step: Option<&StepDef>, retry_requested: bool) -> bool {
        if self.args.retry_mode != RetryMode::Enabled {
            return false;
        }
        match step.and_then(|s| s.retry.as_ref()) {
            Some(policy) => self.attempt < policy.max_attempts,
            None => retry_requested,
        }
    }

    /// Everything between `StepStart` and the closing event; returns the stored outputs and
    /// the op's wall time.
    async fn attempt(
        &self,
        location: &CodeLocation,
        outputs: &dyn OutputStore,
        cancel: &CancellationToken,
        step_def: &mut Option<StepDef>,
    ) -> Result<(Vec<(String, Bytes)>, Duration), Stop> {
        let args = self.args;
        let job = location.job(&args.job_name).ok_or_else(|| {
            Stop::failed(
                UNKNOWN_JOB,
                format!(
                    "the code location has no job `{}`; its jobs are: {}",
                    args.job_name,
                    list_or_none(&location.job_names().collect::<Vec<_>>())
                ),
            )
        })?;
        let step = job.step(self.step_key).ok_or_else(|| {
            let keys: Vec<&str> = job.steps().iter().map(|s| s.key.as_str()).collect();
            Stop::failed(
                UNKNOWN_STEP,
                format!(
                    "job `{}` has no step `{}`; its steps are: {}",
                    args.job_name,
                    self.step_key,
                    list_or_none(&keys)
                ),
            )
        })?;
        *step_def = Some(step.clone());
        let op = location.op(&step.op).ok_or_else(|| {
            Stop::failed(
                UNKNOWN_OP,
                format!(
                    "step `{}` runs op `{}`, which the code location does not register",
                    self.step_key, step.op
                ),
            )
        })?;
        if cancel.is_cancelled() {
            return Err(Stop::Canceled);
        }

        let inputs = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(Stop::Canceled),
            inputs = self.load_inputs(step, outputs) => inputs?,
        };

        let ctx = OpContext::new(&args.run_id, &args.job_name, self.step_key)
            .with_attempt(self.attempt)
            .with_worker(self.worker_name)
            .with_tags(step.tags.clone())
            .with_run_config(args.run_config.clone())
            .with_cancellation(cancel.child_token())
            .with_sink(self.sink.clone());
        let started = Instant::now();
        let emitted = self.run_op(op, ctx, inputs, cancel, &step.op).await?;
        let duration = started.elapsed();

        self.check_outputs(step, &emitted)?;
        let names = self.store_outputs(outputs, emitted).await?;
        Ok((names, duration))
    }

    async fn load_inputs(
        &self,
        step: &StepDef,
        outputs: &dyn OutputStore,
    ) -> Result<StepInputs, Stop> {
        // Inline values first; the rest from the store, concurrently.
        let loaded = join_all(step.inputs.iter().map(|i| async move {
            match self.inline.get(&i.from_step, &i.from_output) {
                Some(bytes) => Ok(bytes.clone()),
                None => {
                    let key = OutputKey::new(&self.args.run_id, &i.from_step, &i.from_output);
                    outputs.get(&key).await
                }
            }
        }))
        .await;
        let mut inputs = StepInputs::new();
        for (input, result) in step.inputs.iter().zip(loaded) {
            match result {
                Ok(bytes) => {
                    self.event(EventKind::StepInputLoaded {
                        input: input.name.clone(),
                        bytes: bytes.len() as u64,
                    });
                    inputs.insert(input.name.clone(), bytes);
                }
                Err(ResultError::OutputNotFound { .. }) => {
                    return Err(Stop::failed(
                        MISSING_INPUT,
                        format!(
                            "input `{}` of step `{}` needs output `{}` of step `{}` in run `{}`, \
                             which is not in the output store",
                            input.name,
                            self.step_key,
                            input.from_output,
                            input.from_step,
                            self.args.run_id
                        ),
                    ))
                }
                Err(e) => {
                    return Err(Stop::store(
                        INPUT_LOAD_ERROR,
                        format!(
                            "loading input `{}` of step `{}` (output `{}` of step `{}`) failed",
                            input.name, self.step_key, input.from_output, input.from_step
                        ),
                        &e,
                    ))
                }
            }
        }
        Ok(inputs)
    }

    async fn run_op(
        &self,
        op: Arc<dyn crate::op::Op>,
        ctx: OpContext,
        inputs: StepInputs,
        cancel: &CancellationToken,
        op_name: &str,
    ) -> Result<StepOutputs, Stop> {
        // Aborted if this future is dropped (e.g. a receiver giving up after its grace period),
        // so an op never outlives its step.
        let mut task = AbortOnDrop(tokio::spawn(
            async move { op.run(&ctx, inputs).await }.instrument(tracing::Span::current()),
        ));
        let joined = tokio::select! {
            biased;
            joined = &mut task.0 => joined,
            _ = cancel.cancelled() => {
                task.0.abort();
                // Wait until the op's future is dropped, so nothing of it outlives the step.
                let _ = (&mut task.0).await;
                return Err(Stop::Canceled);
            }
        };
        match joined {
            Ok(Ok(outputs)) => Ok(outputs),
            // The op gave up because its token fired (it raced the cancel branch above).
            Ok(Err(_)) if cancel.is_cancelled() => Err(Stop::Canceled),
            Ok(Err(error)) => Err(Stop::from_op(error)),
            Err(join_error) if join_error.is_panic() => {
                let payload = join_error.into_panic();
                let what = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a non-string payload".to_string());
                Err(Stop::failed(
                    PANIC,
                    format!(
                        "op `{op_name}` of step `{}` panicked: {what}",
                        self.step_key
                    ),
                ))
            }
            Err(join_error) => Err(Stop::failed(
                PANIC,
                format!(
                    "op `{op_name}` of step `{}` was aborted: {join_error}",
                    self.step_key
                ),
            )),
        }
    }

    fn check_outputs(&self, step: &StepDef, emitted: &StepOutputs) -> Result<(), Stop> {
        let undeclared: Vec<&str> = emitted
            .names()
            .filter(|n| step.output_def(n).is_none())
            .collect();
        if !undeclared.is_empty() {
            let declared: Vec<&str> = step.outputs.iter().map(|o| o.name.as_str()).collect();
            return Err(Stop::failed(
                UNKNOWN_OUTPUT,
                format!(
                    "op `{}` of step `{}` emitted undeclared output(s) {}; the step declares: {}",
                    step.op,
                    self.step_key,
                    quoted(&undeclared),
                    list_or_none(&declared)
                ),
            ));
        }
        let missing: Vec<&str> = step
            .outputs
            .iter()
            .filter(|o| o.required && emitted.get_raw(&o.name).is_none())
            .map(|o| o.name.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(Stop::failed(
                MISSING_OUTPUT,
                format!(
                    "op `{}` of step `{}` did not emit required output(s) {}",
                    step.op,
                    self.step_key,
                    quoted(&missing)
                ),
            ));
        }
        Ok(())
    }

    async fn store_outputs(
        &self,
        store: &dyn OutputStore,
        emitted: StepOutputs,
    ) -> Result<Vec<(String, Bytes)>, Stop> {
        let items: Vec<(OutputKey, Bytes)> = emitted
            .into_iter()
            .map(|(name, bytes)| {
                (
                    OutputKey::new(&self.args.run_id, self.step_key, name),
                    bytes,
                )
            })
            .collect();
        let stored = join_all(items.iter().map(|(k, v)| store.put(k, v.clone()))).await;
        let mut names = Vec::with_capacity(items.len());
        let mut first_error = None;
        for ((key, bytes), result) in items.into_iter().zip(stored) {
            match result {
                Ok(()) => {
                    self.event(EventKind::StepOutputHandled {
                        output: key.output_name.clone(),
                        bytes: bytes.len() as u64,
                    });
                    names.push((key.output_name, bytes));
                }
                Err(e) if first_error.is_none() => first_error = Some((key, e)),
                Err(_) => {}
            }
        }
        match first_error {
            None => Ok(names),
            Some((key, e)) => Err(Stop::store(
                OUTPUT_STORE_ERROR,
                format!(
                    "storing output `{}` of step `{}` failed",
                    key.output_name, self.step_key
                ),
                &e,
            )),
        }
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
