//! The orchestration loop of one run.
//!
//! One tokio task per run. It submits every admitted ready step at once (one `kick_batch`),
//! keeps one future per in-flight attempt (awaiting its result, bounded by the step timeout),
//! per pending submission and per retry delay in a single `FuturesUnordered`, and reacts to
//! whichever completes first: there is no tick and no blocking sleep. Interrupts and the cancel
//! grace deadline are branches of the same `select!`.
//!
//! Two things save requests per step (see `ExecutorConfig::inline_inputs_per_message` and
//! `fuse_chains`): small outputs that come back inline in a report are put into the messages
//! of the steps that read them, and a linear run of steps (each the only downstream step of
//! the previous one, reading only from it) goes out as one task whose head step is admitted,
//! awaited and released like a single step, while its other steps ("members", phase
//! `Fused`) get their own events, attempts and outcomes from the task's reports.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use stepq_broker::{BrokerError, TaskMessage, TaskQueue};
use stepq_plan::events::now_us;
use stepq_plan::{
    ErrorInfo, Event, EventKind, ExecuteStepArgs, ExecutionPlan, InlineValue, Job, KnownState,
    PlanProgress, StepOutcome, StepReport, StepState, StepStatus,
};
use stepq_results::{ResultBackend, ResultError, TaskResult};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::cancel_hook::CancelHook;
use crate::config::{BackendRetry, ExecutorConfig};
use crate::error::CancelHookError;
use crate::outcome::{RunResult, RunStatus, StepRunState, StepSummary};
use crate::protocol;
use crate::retry::{self, RetryDecision};

/// Where a step is, from the loop's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not handed out by the plan yet (or not in the plan).
    Idle,
    /// Ready, waiting for admission under the limits.
    Admitting,
    /// Its message is being sent.
    Submitting,
    /// Sent; its result is awaited.
    InFlight,
    /// Sent as a later step of another step's (fused) task; its report comes with that
    /// task's result.
    Fused,
    /// Failed, waiting for its retry delay.
    RetryDelay,
    /// Final.
    Done,
}

/// The loop's record of one step.
#[derive(Debug)]
struct StepTrack {
    phase: Phase,
    /// Attempts submitted in this run.
    attempts: u32,
    /// Number of the current (or last) attempt, counting earlier runs.
    attempt: u32,
    /// Task id of the in-flight attempt.
    task_id: Option<String>,
    /// When the current attempt was queued (µs since the epoch).
    queued_us: u64,
    /// The later steps sent in this step's task (fused), in order.
    chain: Vec<usize>,
    /// Its upstream steps no longer need to keep inline values for it (it was sent, or ended
    /// without being sent).
    inputs_consumed: bool,
    summary: StepSummary,
}

/// Why the loop stopped submitting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// `RunHandle::interrupt` or the interrupt token.
    Interrupted,
    /// A step failed for good with `fail_fast` on.
    FailFast,
}

/// Something the loop was waiting for happened.
enum Wake {
    /// A batch of messages was sent (or could not be).
    Submitted {
        /// `(step, attempt)` of each message, in order.
        steps: Vec<(usize, u32)>,
        /// When the batch was handed to the queue.
        queued_us: u64,
        /// The messages as sent, or why sending failed.
        outcome: Result<Vec<TaskMessage>, BrokerError>,
    },
    /// An attempt's result arrived, or waiting for it ended.
    Result {
        step: usize,
        task_id: String,
        outcome: Result<TaskResult, ResultError>,
        /// Deleting the consumed result failed.
        delete_error: Option<ResultError>,
    },
    /// A retry delay elapsed.
    RetryDue { step: usize },
}

/// Everything a run loop needs; built by `Executor::start`.
pub(crate) struct RunLoop {
    pub(crate) run_id: String,
    pub(crate) job: Arc<Job>,
    pub(crate) config: Arc<ExecutorConfig>,
    pub(crate) queue: TaskQueue,
    pub(crate) hook: Arc<dyn CancelHook>,
    pub(crate) run_config: serde_json::Value,
    pub(crate) progress: PlanProgress,
    pub(crate) events: mpsc::Sender<Event>,
    pub(crate) interrupt: CancellationToken,
}

/// The state of a running loop.
struct Runner {
    run_id: String,
    job: Arc<Job>,
    config: Arc<ExecutorConfig>,
    queue: TaskQueue,
    results: Arc<dyn ResultBackend>,
    hook: Arc<dyn CancelHook>,
    run_config: serde_json::Value,
    progress: PlanProgress,
    admission: Admission,
    steps: Vec<StepTrack>,
    waits: FuturesUnordered<BoxFuture<'static, Wake>>,
    cancels: FuturesUnordered<BoxFuture<'static, Result<(), CancelHookError>>>,
    events: Option<mpsc::Sender<Event>>,
    errors: Vec<ErrorInfo>,
    stop: Option<Stop>,
    grace_deadline: Option<Instant>,
    /// A step failed for good while the run was not stopping.
    failed: bool,
    /// Distinct in-plan upstream steps of each step.
    upstream: Vec<Vec<usize>>,
    /// Per step: downstream steps not yet sent (nor ended) that may want its inline values.
    consumers_left: Vec<usize>,
    /// Inline copies of small outputs of succeeded steps, kept while a consumer is unsent.
    inline: HashMap<usize, Vec<InlineValue>>,
}

impl RunLoop {
    /// Runs the plan to its end and returns the run's result.
    pub(crate) async fn run(self) -> RunResult {
        let RunLoop {
            run_id,
            job,
            config,
            queue,
            hook,
            run_config,
            progress,
            events,
            interrupt,
        } = self;
        let admission = Admission::new(&job, config.max_in_flight, &config.tag_limits);
        let steps = job
            .steps()
            .iter()
            .map(|_| StepTrack {
                phase: Phase::Idle,
                attempts: 0,
                attempt: 0,
                task_id: None,
                queued_us: 0,
                chain: Vec::new(),
                inputs_consumed: false,
                summary: StepSummary::new(StepRunState::NotRun),
            })
            .collect();
        let upstream = upstream_indices(progress.plan());
        let consumers_left = (0..job.steps().len())
            .map(|i| progress.plan().downstream_indices(i).len())
            .collect();
        let runner = Runner {
            run_id,
            job,
            config,
            results: queue.results().clone(),
            queue,
            hook,
            run_config,
            progress,
            admission,
            steps,
            waits: FuturesUnordered::new(),
            cancels: FuturesUnordered::new(),
            events: Some(events),
            errors: Vec::new(),
            stop: None,
            grace_deadline: None,
            failed: false,
            upstream,
            consumers_left,
            inline: HashMap::new(),
        };
        runner.drive(interrupt).await
    }
}

impl Runner {
    async fn drive(mut self, interrupt: CancellationToken) -> RunResult {
        self.emit(Event::run(&self.run_id, EventKind::RunStarting))
            .await;
        self.emit(Event::run(&self.run_id, EventKind::RunStarted))
            .await;
        self.flush_skipped().await;
        self.admit_ready();
        self.submit();
        while !self.progress.is_complete() {
            if self.waits.is_empty() {
                self.stalled().await;
                break;
            }
            let grace = self.grace_deadline;
            tokio::select! {
                _ = interrupt.cancelled(), if self.stop.is_none() => {
                    self.begin_stop(Stop::Interrupted).await;
                }
                _ = sleep_until(grace), if grace.is_some() => {
                    self.end_grace().await;
                    break;
                }
                Some(wake) = self.waits.next() => {
                    self.on_wake(wake).await;
                    // Take every other wake that is ready too, so one batch covers them all.
                    while let Some(Some(wake)) = self.waits.next().now_or_never() {
                        self.on_wake(wake).await;
                    }
                    if self.stop.is_none() {
                        self.admit_ready();
                        self.submit();
                    }
                }
                Some(result) = self.cancels.next() => {
                    self.on_cancel_result(result).await;
                }
            }
        }
        self.finish().await
    }

    // ---- submission ------------------------------------------------------------------------

    /// Moves steps the plan made ready into admission.
    fn admit_ready(&mut self) {
        for key in self.progress.take_ready() {
            let step = self.index(&key);
            if self.steps[step].phase == Phase::Fused {
                // Already sent in its upstream step's task; its report is being read.
                continue;
            }
            self.steps[step].phase = Phase::Admitting;
            self.admission.push(step);
        }
    }

    /// Sends every admitted step as one batch, in the background.
    fn submit(&mut self) {
        let batch = self.admission.take_admitted();
        if batch.is_empty() {
            return;
        }
        let mut messages = Vec::with_capacity(batch.len());
        let mut steps = Vec::with_capacity(batch.len());
        for step in batch {
            let key = self.job.steps()[step].key.clone();
            let attempt = self.progress.record_attempt(&key);
            let track = &mut self.steps[step];
            track.phase = Phase::Submitting;
            track.attempt = attempt;
            track.attempts += 1;
            let mut known_state = self.known_state_for(step);
            let inline_inputs = self.inline_inputs_for(step);
            self.mark_consumed(step);
            let chain = self.fusable_chain(step);
            let mut step_keys = vec![key];
            for &member in &chain {
                let member_key = self.job.steps()[member].key.clone();
                // Recorded when its report shows it started; until then, the number it gets.
                let planned = self.progress.known_state().attempts_of(&member_key) + 1;
                known_state.attempts.insert(member_key.clone(), planned);
                self.steps[member].phase = Phase::Fused;
                self.steps[member].attempt = planned;
                step_keys.push(member_key);
            }
            self.steps[step].chain = chain;
            let args = ExecuteStepArgs {
                run_id: self.run_id.clone(),
                job_name: self.job.name().to_string(),
                known_state,
                step_keys,
                retry_mode: self.config.retry_mode,
                attempt,
                run_config: self.run_config.clone(),
                inline_inputs,
            };
            // Packing plan values into an envelope cannot fail for these types; should it
            // ever, the batch future reports it as a submission failure of this step.
            match protocol::step_message(&args) {
                Ok(message) => {
                    messages.push(message);
                    steps.push((step, attempt));
                }
                Err(e) => {
                    let reason = e.to_string();
                    self.waits.push(
                        async move {
                            Wake::Submitted {
                                steps: vec![(step, attempt)],
                                queued_us: now_us(),
                                outcome: Err(BrokerError::Codec {
                                    task_name: protocol::EXECUTE_PLAN.to_string(),
                                    reason,
                                }),
                            }
                        }
                        .boxed(),
                    );
                }
            }
        }
        if messages.is_empty() {
            return;
        }
        let queue = self.queue.clone();
        let retry = self.config.submit_retry.clone();
        self.waits.push(
            async move {
                let queued_us = now_us();
                let outcome = kick_with_retries(&queue, messages, &retry).await;
                Wake::Submitted {
                    steps,
                    queued_us,
                    outcome,
                }
            }
            .boxed(),
        );
    }

    /// The part of the known state a step's worker needs: its upstream steps' emitted outputs
    /// and its own attempt count. Keeps each message O(inputs), not O(run).
    fn known_state_for(&self, step: usize) -> KnownState {
        let known = self.progress.known_state();
        let def = &self.job.steps()[step];
        let mut out = KnownState::default();
        for input in &def.inputs {
            if out.completed.contains_key(&input.from_step) {
                continue;
            }
            if let Some(outputs) = known.completed.get(&input.from_step) {
                out.completed
                    .insert(input.from_step.clone(), outputs.clone());
            }
        }
        if let Some(&n) = known.attempts.get(&def.key) {
            out.attempts.insert(def.key.clone(), n);
        }
        out
    }

    /// The steps to send in `head`'s task after it: each the only in-plan downstream step of
    /// the one before, reading only from it, not sent yet, with the same tags and retry
    /// policy; at most `max_fused_steps` steps in all. Empty when fusing is off.
    fn fusable_chain(&self, head: usize) -> Vec<usize> {
        let mut chain = Vec::new();
        if !self.config.fuse_chains {
            return chain;
        }
        let steps = self.job.steps();
        let mut last = head;
        while chain.len() + 1 < self.config.max_fused_steps {
            let [next] = self.progress.plan().downstream_indices(last)[..] else {
                break;
            };
            let (from, to) = (&steps[last], &steps[next]);
            let fusable = self.steps[next].phase == Phase::Idle
                && matches!(self.progress.state_of(&to.key), Some(StepState::Waiting(_)))
                && !to.inputs.is_empty()
                && to.inputs.iter().all(|i| i.from_step == from.key)
                && to.tags == from.tags
                && to.retry == from.retry;
            if !fusable {
                break;
            }
            chain.push(next);
            last = next;
        }
        chain
    }

    /// The result timeout of a task carrying `fused` steps after its head: the per-step
    /// `step_timeout` times its steps.
    fn task_timeout(&self, fused: usize) -> Option<Duration> {
        self.config.step_timeout.map(|t| t * (1 + fused as u32))
    }

    /// Inline values of `step`'s inputs, within `inline_inputs_per_message` bytes.
    fn inline_inputs_for(&self, step: usize) -> Vec<InlineValue> {
        let mut budget = self.config.inline_inputs_per_message;
        let mut out: Vec<InlineValue> = Vec::new();
        if budget == 0 || self.inline.is_empty() {
            return out;
        }
        for input in &self.job.steps()[step].inputs {
            let Some(values) = self
                .job
                .step_index(&input.from_step)
                .and_then(|u| self.inline.get(&u))
            else {
                continue;
            };
            let Some(value) = values.iter().find(|v| v.output_name == input.from_output) else {
                continue;
            };
            let taken = out
                .iter()
                .any(|v| v.step_key == value.step_key && v.output_name == value.output_name);
            if !taken && value.value.len() <= budget {
                budget -= value.value.len();
                out.push(value.clone());
            }
        }
        out
    }

    /// `step` no longer needs inline values from its upstream steps: drops those no other
    /// unsent step needs.
    fn mark_consumed(&mut self, step: usize) {
        if std::mem::replace(&mut self.steps[step].inputs_consumed, true) {
            return;
        }
        for k in 0..self.upstream[step].len() {
            let u = self.upstream[step][k];
            self.consumers_left[u] = self.consumers_left[u].saturating_sub(1);
            if self.consumers_left[u] == 0 {
                self.inline.remove(&u);
            }
        }
    }

    /// Keeps the inline copies of a succeeded step's outputs while some step may want them.
    fn remember_inline(&mut self, step: usize, values: Vec<InlineValue>) {
        if values.is_empty()
            || self.consumers_left[step] == 0
            || self.config.inline_inputs_per_message == 0
        {
            return;
        }
        let key = &self.job.steps()[step].key;
        let values: Vec<InlineValue> = values.into_iter().filter(|v| &v.step_key == key).collect();
        if !values.is_empty() {
            self.inline.insert(step, values);
        }
    }

    /// The members of `head`'s task go back to not sent (the default when a task ends); the
    /// ones a report shows started are then taken up again by `on_members`.
    fn release_chain(&mut self, head: usize) -> Vec<usize> {
        let chain = std::mem::take(&mut self.steps[head].chain);
        for &m in &chain {
            if self.steps[m].phase == Phase::Fused {
                self.steps[m].phase = Phase::Idle;
            }
        }
        chain
    }

    // ---- wakes -----------------------------------------------------------------------------

    async fn on_wake(&mut self, wake: Wake) {
        match wake {
            Wake::Submitted {
                steps,
                queued_us,
                outcome,
            } => self.on_submitted(steps, queued_us, outcome).await,
            Wake::Result {
                step,
                task_id,
                outcome,
                delete_error,
            } => self.on_result(step, task_id, outcome, delete_error).await,
            Wake::RetryDue { step } => {
                if self.steps[step].phase == Phase::RetryDelay {
                    self.steps[step].phase = Phase::Admitting;
                    self.admission.push(step);
                }
            }
        }
    }

    async fn on_submitted(
        &mut self,
        steps: Vec<(usize, u32)>,
        queued_us: u64,
        outcome: Result<Vec<TaskMessage>, BrokerError>,
    ) {
        match outcome {
            Ok(sent) => {
                for ((step, attempt), message) in steps.into_iter().zip(sent) {
                    let task_id = message.task_id;
                    if self.steps[step].phase != Phase::Submitting {
                        // Recorded as canceled when the grace period ended; nothing to await.
                        continue;
                    }
                    let track = &mut self.steps[step];
                    track.phase = Phase::InFlight;
                    track.task_id = Some(task_id.clone());
                    track.queued_us = queued_us;
                    let mut queued = vec![(step, attempt)];
                    for &m in &self.steps[step].chain {
                        if self.steps[m].phase == Phase::Fused {
                            queued.push((m, self.steps[m].attempt));
                        }
                    }
                    for (s, attempt) in queued {
                        self.steps[s].queued_us = queued_us;
                        let key = self.job.steps()[s].key.clone();
                        self.emit(Event {
                            timestamp_us: queued_us,
                            run_id: self.run_id.clone(),
                            step_key: Some(key),
                            kind: EventKind::StepQueued {
                                attempt,
                                task_id: task_id.clone(),
                            },
                        })
                        .await;
                    }
                    self.waits.push(wait_for_result(
                        self.results.clone(),
                        step,
                        task_id.clone(),
                        self.task_timeout(self.steps[step].chain.len()),
                        self.config.result_wait.clone(),
                    ));
                    if self.stop.is_some() {
                        self.request_cancel(task_id);
                    }
                }
            }
            Err(e) => {
                let error = ErrorInfo::from_error("submit", &e);
                for (step, _) in steps {
                    if self.steps[step].phase != Phase::Submitting {
                        continue;
                    }
                    self.release_chain(step);
                    self.admission.release(step);
                    self.attempt_failed(step, error.clone(), None).await;
                }
            }
        }
    }

    async fn on_result(
        &mut self,
        step: usize,
        task_id: String,
        outcome: Result<TaskResult, ResultError>,
        delete_error: Option<ResultError>,
    ) {
        let track = &mut self.steps[step];
        if track.phase != Phase::InFlight || track.task_id.as_deref() != Some(&task_id) {
            return;
        }
        track.task_id = None;
        self.admission.release(step);
        let chain = self.release_chain(step);
        let key = self.job.steps()[step].key.clone();
        if let Some(e) = delete_error {
            tracing::warn!(run_id = %self.run_id, step = %key, %task_id, error = %e, "could not delete a consumed task result");
            self.emit(Event::step(
                &self.run_id,
                &key,
                EventKind::EngineEvent {
                    message: format!("could not delete the result of task {task_id}: {e}"),
                },
            ))
            .await;
        }
        let attempt = self.steps[step].attempt;
        let result = match outcome {
            Ok(result) => result,
            Err(ResultError::Timeout { .. }) => {
                let steps = 1 + chain.len() as u32;
                let timeout = self.task_timeout(chain.len()).unwrap_or_default();
                let task = if steps > 1 {
                    format!(
                        "task {task_id}, fused with the {} step(s) after it",
                        steps - 1
                    )
                } else {
                    format!("task {task_id}")
                };
                let error = ErrorInfo::new(
                    "timeout",
                    format!(
                        "no result for attempt {attempt} of step `{key}` ({task}) within {timeout:?}"
                    ),
                );
                self.request_cancel(task_id);
                self.attempt_failed(step, error, None).await;
                return;
            }
            Err(e) => {
                let error = ErrorInfo::from_error("result_backend", &e);
                self.attempt_failed(step, error, None).await;
                return;
            }
        };
        let task_time = Duration::try_from_secs_f64(result.execution_time).ok();
        if result.is_err {
            self.steps[step].summary.duration = task_time;
            let canceled = result
                .error
                .as_ref()
                .is_some_and(|e| e.kind == stepq_broker::receiver::kinds::CANCELED);
            if canceled {
                // A worker's cancellation gate answered the task without running it.
                self.cancel_step(step).await;
                return;
            }
            let error = match result.error {
                Some(e) => ErrorInfo::new(
                    e.kind,
                    format!("worker could not run the step: {}", e.message),
                ),
                None => ErrorInfo::new(
                    "task_error",
                    "worker reported a failed task without an error",
                ),
            };
            self.attempt_failed(step, error, None).await;
            return;
        }
        let mut reports = match protocol::read_reports(&result.return_value) {
            Err(e) => {
                self.steps[step].summary.duration = task_time;
                let error = ErrorInfo::from_error("bad_report", &e);
                self.attempt_failed(step, error, None).await;
                return;
            }
            Ok(reports) => reports,
        };
        let Some(at) = reports.iter().position(|r| r.step_key == key) else {
            self.steps[step].summary.duration = task_time;
            let error = ErrorInfo::new(
                "bad_report",
                format!("the result of task {task_id} has no report for step `{key}`"),
            );
            self.attempt_failed(step, error, None).await;
            return;
        };
        let report = reports.swap_remove(at);
        // A fused task's own time is not one step's: each step has its op time.
        let task_time = task_time.filter(|_| chain.is_empty());
        self.on_report(step, report, task_time).await;
        if !chain.is_empty() {
            self.on_members(step, &task_id, chain, reports).await;
        }
    }

    /// Takes up the reports of the later steps of `head`'s fused task, in order, while the
    /// step before succeeded. A step without a report did not start (the worker stopped
    /// earlier): it stays not sent, and the plan schedules (or skips) it as usual.
    async fn on_members(
        &mut self,
        head: usize,
        task_id: &str,
        chain: Vec<usize>,
        mut reports: Vec<StepReport>,
    ) {
        let queued_us = self.steps[head].queued_us;
        let mut prev = head;
        for m in chain {
            let prev_key = &self.job.steps()[prev].key;
            if self.progress.state_of(prev_key) != Some(&StepState::Succeeded) {
                break;
            }
            let key = self.job.steps()[m].key.clone();
            let Some(at) = reports.iter().position(|r| r.step_key == key) else {
                break;
            };
            let report = reports.swap_remove(at);
            if self.steps[m].phase != Phase::Idle {
                // Ended meanwhile: stopping the run (interrupt, fail fast) cancels the steps
                // of a fused task that have not reported yet, as it cancels every step not
                // started. One that reports success ran after all: its success is recorded
                // (the run has not ended: this task was the step before it, in flight);
                // any other outcome leaves it canceled, and the steps after it too.
                let succeeded = matches!(report.status, StepStatus::Success { .. });
                if !succeeded || !self.progress.reopen_canceled(&key) {
                    break;
                }
                self.emit(Event::step(
                    &self.run_id,
                    &key,
                    EventKind::EngineEvent {
                        message: format!(
                            "step `{key}` of fused task {task_id} succeeded on worker {} after the run began to stop; recorded as succeeded, not canceled",
                            report.worker
                        ),
                    },
                ))
                .await;
                self.take_up_member(m, queued_us, report).await;
                prev = m;
                continue;
            }
            // Its upstream succeeded, so the plan made it ready: hand it out as in flight
            // without admitting it again (it ran in its head's slot).
            self.steps[m].phase = Phase::Fused;
            self.admit_ready();
            if self.progress.state_of(&key) != Some(&StepState::InFlight) {
                self.steps[m].phase = Phase::Idle;
                break;
            }
            self.take_up_member(m, queued_us, report).await;
            prev = m;
        }
    }

    /// Records the attempt of fused step `m` (in flight in the plan) that `report` reports,
    /// queued with its task at `queued_us`, and takes up the report.
    async fn take_up_member(&mut self, m: usize, queued_us: u64, report: StepReport) {
        let key = self.job.steps()[m].key.clone();
        let attempt = self.progress.record_attempt(&key);
        let track = &mut self.steps[m];
        track.phase = Phase::InFlight;
        track.attempt = attempt;
        track.attempts += 1;
        track.queued_us = queued_us;
        self.mark_consumed(m);
        self.on_report(m, report, None).await;
    }

    /// Forwards a report's events and feeds its outcome into the plan.
    async fn on_report(
        &mut self,
        step: usize,
        mut report: StepReport,
        task_time: Option<Duration>,
    ) {
        let key = self.job.steps()[step].key.clone();
        let inline_outputs = std::mem::take(&mut report.inline_outputs);
        let mut op_time = None;
        for event in report.events {
            match &event.kind {
                EventKind::StepStart { .. } => {
                    let queued = self.steps[step].queued_us;
                    self.steps[step].summary.queue_wait = Some(Duration::from_micros(
                        event.timestamp_us.saturating_sub(queued),
                    ));
                    self.emit(event).await;
                }
                EventKind::StepSuccess { duration } => op_time = Some(*duration),
                EventKind::StepInputLoaded { .. }
                | EventKind::StepOutputHandled { .. }
                | EventKind::EngineEvent { .. } => self.emit(event).await,
                other => {
                    tracing::debug!(run_id = %self.run_id, step = %key, kind = ?other, "dropping an orchestrator-owned event kind from a step report");
                }
            }
        }
        self.steps[step].summary.worker = Some(report.worker);
        match report.status {
            StepStatus::Success { emitted } => {
                let missing: Vec<&str> = self.job.steps()[step]
                    .outputs
                    .iter()
                    .filter(|o| o.required && !emitted.contains(&o.name))
                    .map(|o| o.name.as_str())
                    .collect();
                if !missing.is_empty() {
                    let error = ErrorInfo::new(
                        "missing_output",
                        format!(
                            "step `{key}` reported success without its required output(s) {}",
                            missing.join(", ")
                        ),
                    );
                    self.steps[step].summary.duration = op_time.or(task_time);
                    self.attempt_failed(step, error, None).await;
                    return;
                }
                let duration = op_time.or(task_time).unwrap_or_default();
                let track = &mut self.steps[step];
                track.summary.duration = Some(duration);
                track.summary.error = None;
                track.phase = Phase::Done;
                self.emit(Event::step(
                    &self.run_id,
                    &key,
                    EventKind::StepSuccess { duration },
                ))
                .await;
                self.remember_inline(step, inline_outputs);
                self.progress
                    .complete(&key, StepOutcome::Success { emitted });
                self.flush_skipped().await;
            }
            StepStatus::Failure {
                error,
                retry_requested,
            } => {
                self.steps[step].summary.duration = task_time;
                self.attempt_failed(step, error, retry_requested).await;
            }
            StepStatus::Canceled => {
                self.steps[step].summary.duration = task_time;
                self.cancel_step(step).await;
            }
        }
    }

    /// An attempt failed: retry it, or record the step as failed.
    async fn attempt_failed(
        &mut self,
        step: usize,
        error: ErrorInfo,
        retry_requested: Option<Option<u64>>,
    ) {
        let def = &self.job.steps()[step];
        let key = def.key.clone();
        let attempt = self.steps[step].attempt;
        let decision = if self.stop.is_some() {
            RetryDecision::Final
        } else {
            retry::decide(&self.config, def.retry.as_ref(), attempt, retry_requested)
        };
        tracing::debug!(run_id = %self.run_id, step = %key, attempt, error = %error, ?decision, "step attempt failed");
        self.steps[step].summary.error = Some(error.clone());
        if let RetryDecision::Retry {
            next_attempt,
            delay,
        } = decision
        {
            self.emit(Event::step(
                &self.run_id,
                &key,
                EventKind::StepFailure {
                    error,
                    will_retry: true,
                },
            ))
            .await;
            self.emit(Event::step(
                &self.run_id,
                &key,
                EventKind::StepRetry {
                    attempt: next_attempt,
                    delay,
                },
            ))
            .await;
            if delay.is_zero() {
                self.steps[step].phase = Phase::Admitting;
                self.admission.push(step);
            } else {
                self.steps[step].phase = Phase::RetryDelay;
                self.waits.push(
                    tokio::time::sleep(delay)
                        .map(move |()| Wake::RetryDue { step })
                        .boxed(),
                );
            }
            return;
        }
        self.emit(Event::step(
            &self.run_id,
            &key,
            EventKind::StepFailure {
                error: error.clone(),
                will_retry: false,
            },
        ))
        .await;
        if decision == RetryDecision::Deferred {
            self.steps[step].summary.retry_deferred = true;
            self.emit(Event::step(
                &self.run_id,
                &key,
                EventKind::EngineEvent {
                    message: format!(
                        "retry of step `{key}` deferred (retry mode deferred): a resume of this run reruns it"
                    ),
                },
            ))
            .await;
        }
        self.errors.push(ErrorInfo {
            kind: error.kind,
            message: format!("step `{key}`: {}", error.message),
            causes: error.causes,
        });
        self.steps[step].phase = Phase::Done;
        self.progress.complete(&key, StepOutcome::Failure);
        self.flush_skipped().await;
        if self.stop.is_none() {
            self.failed = true;
            if self.config.fail_fast {
                self.begin_stop(Stop::FailFast).await;
            }
        }
    }

    /// Records a step that started (handed out by the plan) as canceled.
    async fn cancel_step(&mut self, step: usize) {
        let key = self.job.steps()[step].key.clone();
        self.steps[step].phase = Phase::Done;
        self.mark_consumed(step);
        self.emit(Event::step(&self.run_id, &key, EventKind::StepCanceled))
            .await;
        self.progress.complete(&key, StepOutcome::Canceled);
        self.flush_skipped().await;
    }

    async fn flush_skipped(&mut self) {
        for (key, reason) in self.progress.take_skipped() {
            let step = self.index(&key);
            self.mark_consumed(step);
            let track = &mut self.steps[step];
            track.phase = Phase::Done;
            track.summary.skip_reason = Some(reason.clone());
            self.emit(Event::step(
                &self.run_id,
                &key,
                EventKind::StepSkipped { reason },
            ))
            .await;
        }
    }

    // ---- stopping --------------------------------------------------------------------------

    /// Stops submitting, cancels what has not started and asks in-flight steps to cancel.
    async fn begin_stop(&mut self, reason: Stop) {
        self.stop = Some(reason);
        self.grace_deadline = Some(Instant::now() + self.config.cancel_grace);
        let in_flight = self
            .steps
            .iter()
            .filter(|t| matches!(t.phase, Phase::Submitting | Phase::InFlight))
            .count();
        let message = match reason {
            Stop::Interrupted => format!(
                "run interrupted: canceling steps not started, asking {in_flight} in-flight step(s) to cancel"
            ),
            Stop::FailFast => format!(
                "fail fast: a step failed; canceling steps not started, asking {in_flight} in-flight step(s) to cancel"
            ),
        };
        tracing::info!(run_id = %self.run_id, "{message}");
        self.emit(Event::run(&self.run_id, EventKind::EngineEvent { message }))
            .await;
        for key in self.progress.cancel_pending() {
            let step = self.index(&key);
            self.steps[step].phase = Phase::Done;
            self.mark_consumed(step);
            self.emit(Event::step(&self.run_id, &key, EventKind::StepCanceled))
                .await;
        }
        for step in self.admission.drain_waiting() {
            self.cancel_step(step).await;
        }
        for step in 0..self.steps.len() {
            match self.steps[step].phase {
                Phase::RetryDelay => self.cancel_step(step).await,
                Phase::InFlight => {
                    if let Some(task_id) = self.steps[step].task_id.clone() {
                        self.request_cancel(task_id);
                    }
                }
                _ => {}
            }
        }
    }

    /// The grace period ended: steps still in flight are recorded as canceled.
    async fn end_grace(&mut self) {
        let left: Vec<usize> = (0..self.steps.len())
            .filter(|&s| matches!(self.steps[s].phase, Phase::Submitting | Phase::InFlight))
            .collect();
        let message = format!(
            "{} in-flight step(s) did not report within the {:?} cancel grace period; recorded as canceled",
            left.len(),
            self.config.cancel_grace
        );
        tracing::warn!(run_id = %self.run_id, "{message}");
        self.emit(Event::run(&self.run_id, EventKind::EngineEvent { message }))
            .await;
        for step in left {
            self.cancel_step(step).await;
        }
    }

    /// Asks the cancel hook to cancel a task, in the background.
    fn request_cancel(&mut self, task_id: String) {
        let hook = self.hook.clone();
        self.cancels
            .push(async move { hook.cancel_task(&task_id).await }.boxed());
    }

    async fn on_cancel_result(&mut self, result: Result<(), CancelHookError>) {
        if let Err(e) = result {
            tracing::warn!(run_id = %self.run_id, error = %e, "cancel hook failed");
            self.emit(Event::run(
                &self.run_id,
                EventKind::EngineEvent {
                    message: e.to_string(),
                },
            ))
            .await;
        }
    }

    /// Nothing is in flight but the plan is unfinished: a bug. End the run FAILURE instead of
    /// hanging.
    async fn stalled(&mut self) {
        let unfinished: Vec<String> = self
            .progress
            .states()
            .filter(|(_, s)| !s.is_final())
            .map(|(k, _)| k.to_string())
            .collect();
        let error = ErrorInfo::new(
            "internal",
            format!(
                "run loop has nothing in flight but steps {} are unfinished",
                unfinished.join(", ")
            ),
        );
        tracing::error!(run_id = %self.run_id, %error, "run loop stalled");
        self.errors.push(error);
        self.failed = true;
        for key in self.progress.cancel_pending() {
            let step = self.index(&key);
            self.steps[step].phase = Phase::Done;
        }
        for step in 0..self.steps.len() {
            if self.progress.state_of(&self.job.steps()[step].key) == Some(&StepState::InFlight) {
                self.cancel_step(step).await;
            }
        }
    }

    // ---- the end ---------------------------------------------------------------------------

    async fn finish(mut self) -> RunResult {
        // Let cancel requests still on their way finish, within the grace period.
        if !self.cancels.is_empty() {
            let grace = self.config.cancel_grace;
            let mut cancels = std::mem::take(&mut self.cancels);
            let mut failures = Vec::new();
            let _ = tokio::time::timeout(grace, async {
                while let Some(result) = cancels.next().await {
                    failures.push(result);
                }
            })
            .await;
            for result in failures {
                self.on_cancel_result(result).await;
            }
        }
        let status = if self.failed || self.stop == Some(Stop::FailFast) {
            RunStatus::Failure
        } else if self.stop == Some(Stop::Interrupted)
            || self
                .progress
                .states()
                .any(|(_, state)| *state == StepState::Canceled)
        {
            // Interrupted, or a step was canceled (someone cancelled its task).
            RunStatus::Canceled
        } else {
            RunStatus::Success
        };
        let kind = match status {
            RunStatus::Success => EventKind::RunSuccess,
            RunStatus::Failure => EventKind::RunFailure {
                errors: self.errors.clone(),
            },
            RunStatus::Canceled => EventKind::RunCanceled,
        };
        tracing::info!(run_id = %self.run_id, %status, "run ended");
        self.emit(Event::run(&self.run_id, kind)).await;
        let mut steps = std::collections::BTreeMap::new();
        for (def, track) in self.job.steps().iter().zip(self.steps) {
            let mut summary = track.summary;
            summary.attempts = track.attempts;
            summary.state = match self.progress.state_of(&def.key) {
                Some(StepState::Succeeded) => StepRunState::Succeeded,
                Some(StepState::Failed) => StepRunState::Failed,
                Some(StepState::Skipped) => StepRunState::Skipped,
                Some(StepState::NotInPlan) | None => StepRunState::NotRun,
                Some(_) => StepRunState::Canceled,
            };
            steps.insert(def.key.clone(), summary);
        }
        RunResult {
            run_id: self.run_id,
            status,
            steps,
            errors: self.errors,
            known_state: self.progress.known_state().clone(),
        }
    }

    // ---- helpers ---------------------------------------------------------------------------

    fn index(&self, key: &str) -> usize {
        self.job
            .step_index(key)
            .expect("the plan only names steps of its job")
    }

    /// Sends an event to the stream; stops feeding a stream whose consumer went away.
    async fn emit(&mut self, event: Event) {
        tracing::trace!(run_id = %self.run_id, step = ?event.step_key, kind = ?event.kind, "event");
        if let Some(tx) = &self.events {
            if tx.send(event).await.is_err() {
                tracing::debug!(run_id = %self.run_id, "event stream dropped; no longer feeding it");
                self.events = None;
            }
        }
    }
}

/// Distinct in-plan upstream steps of each step of the plan's job (job-order indices): the
/// plan's downstream edges turned around.
fn upstream_indices(plan: &ExecutionPlan) -> Vec<Vec<usize>> {
    let mut upstream = vec![Vec::new(); plan.job().steps().len()];
    for u in 0..upstream.len() {
        for &d in plan.downstream_indices(u) {
            upstream[d].push(u);
        }
    }
    upstream
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Sends a batch, re-trying temporary broker errors with backoff; one still failing after
/// that is returned as persistent.
async fn kick_with_retries(
    queue: &TaskQueue,
    messages: Vec<TaskMessage>,
    retry: &BackendRetry,
) -> Result<Vec<TaskMessage>, BrokerError> {
    let mut tries = 0;
    loop {
        match queue.kick_batch(messages.clone()).await {
            Err(e) if e.is_temporary() && tries < retry.retries => {
                tries += 1;
                tracing::warn!(error = %e, tries, "sending step tasks failed; trying again");
                tokio::time::sleep(retry.backoff.delay_before(tries + 1)).await;
            }
            Err(e) if tries > 0 => return Err(e.exhausted()),
            other => return other,
        }
    }
}

/// Awaits one attempt's result within `timeout`, re-trying temporary backend errors (one still
/// failing after that is returned as persistent), then deletes the consumed result.
fn wait_for_result(
    results: Arc<dyn ResultBackend>,
    step: usize,
    task_id: String,
    timeout: Option<Duration>,
    retry: BackendRetry,
) -> BoxFuture<'static, Wake> {
    async move {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut tries = 0;
        let outcome = loop {
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            match results.wait_result(&task_id, remaining).await {
                Err(e)
                    if !matches!(e, ResultError::Timeout { .. })
                        && e.is_temporary()
                        && tries < retry.retries =>
                {
                    tries += 1;
                    tracing::warn!(%task_id, error = %e, tries, "waiting for a task result failed; trying again");
                    let mut delay = retry.backoff.delay_before(tries + 1);
                    if let Some(d) = deadline {
                        delay = delay.min(d.saturating_duration_since(Instant::now()));
                    }
                    tokio::time::sleep(delay).await;
                }
                Err(e) if tries > 0 => break Err(e.exhausted()),
                other => break other,
            }
        };
        let delete_error = match &outcome {
            Ok(_) => results.delete_result(&task_id).await.err(),
            Err(_) => None,
        };
        Wake::Result {
            step,
            task_id,
            outcome,
            delete_error,
        }
    }
    .boxed()
}
