//! Running one attempt of a step from start to report: the `StepStart` event, looking the
//! job, step and op up, loading inputs, running the op, checking and storing its outputs, and
//! the closing event and [`StepReport`] (with inline copies of small outputs).

use std::time::{Duration, Instant};

use bytes::Bytes;
use stepq_plan::{Event, EventKind, InlineValue, RetryMode, StepDef, StepReport, StepStatus};
use stepq_results::OutputStore;
use tokio_util::sync::CancellationToken;

use super::{
    ExecutedStep, InlineOptions, StepAttempt, Stop, UNKNOWN_JOB, UNKNOWN_OP, UNKNOWN_STEP,
};
use crate::context::OpContext;
use crate::io::list_or_none;
use crate::location::CodeLocation;

impl StepAttempt<'_> {
    /// Runs the attempt and reports how it ended.
    pub(super) async fn run(
        self,
        location: &CodeLocation,
        outputs: &dyn OutputStore,
        cancel: &CancellationToken,
        options: InlineOptions,
    ) -> ExecutedStep {
        let start = Event::step(
            &self.args.run_id,
            self.step_key,
            EventKind::StepStart {
                attempt: self.attempt,
                worker: self.worker_name.to_string(),
            },
        );
        if let Some(progress) = self.progress {
            progress.started(&start);
        }
        self.sink.push(start);
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
}
