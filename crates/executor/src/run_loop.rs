//! The orchestration loop of one run: an async driver around the I/O-free [`Scheduler`].
//!
//! One tokio task per run. The [`scheduler`] owns every decision (what to submit, fuse,
//! inline, retry, cancel, which events to emit, how the run ended); this module owns the I/O:
//! the queue, the result backend, the cancel hook, the event channel and the timers. It feeds
//! the scheduler what happened and carries out its decisions in order.
//!
//! The driver submits every admitted ready step at once (one `kick_batch`), keeps one future
//! per in-flight attempt (awaiting its result, bounded by the step timeout), per pending
//! submission and per retry delay in a single `FuturesUnordered`, and reacts to whichever
//! completes first: there is no tick and no blocking sleep. Interrupts and the cancel grace
//! deadline are branches of the same `select!`.
//!
//! Two things save requests per step (see `ExecutorConfig::inline_inputs_per_message` and
//! `fuse_chains`): small outputs that come back inline in a report are put into the messages
//! of the steps that read them, and a linear run of steps (each the only downstream step of
//! the previous one, reading only from it) goes out as one task whose head step is admitted,
//! awaited and released like a single step, while its other steps ("members", phase
//! `Fused`) get their own events, attempts and outcomes from the task's reports.
//!
//! With `ExecutorConfig::step_progress` (default on), each message asks its worker for
//! progress entries (`stepq_protocol::progress_key`): while a task's result is awaited, its
//! entries are awaited one after the other (each read, handed to the scheduler, deleted),
//! so a step's start and a fused task's finished steps are recorded when they happen. The
//! result ends the task's progress wait (entries not read yet are deleted).

mod scheduler;

mod progress;
mod routes;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use stepq_broker::{BrokerError, TaskMessage, TaskQueue, TraceParent, TRACEPARENT_LABEL};
use stepq_plan::events::now_us;
use stepq_plan::{ErrorInfo, Event, EventKind, Job, PlanProgress};
use stepq_results::{ResultBackend, ResultError, TaskResult};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cancel_hook::CancelHook;
use crate::config::{BackendRetry, ExecutorConfig};
use crate::error::CancelHookError;
use crate::outcome::RunResult;
use crate::protocol;

use progress::{wait_for_progress, ProgressWake};
pub(crate) use routes::StepRoutes;
use scheduler::{Answer, Decision, Scheduler, StepTask};

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
        /// The task's head step.
        step: usize,
        /// The task.
        task_id: String,
        /// The result, or why there is none.
        outcome: Result<TaskResult, ResultError>,
        /// Deleting the consumed result failed.
        delete_error: Option<ResultError>,
    },
    /// A retry delay elapsed.
    RetryDue {
        /// The step to retry.
        step: usize,
    },
}

/// Everything a run loop needs; built by `Executor::start`.
pub(crate) struct RunLoop {
    pub(crate) run_id: String,
    pub(crate) job: Arc<Job>,
    pub(crate) routes: StepRoutes,
    pub(crate) config: Arc<ExecutorConfig>,
    pub(crate) queue: TaskQueue,
    pub(crate) hook: Arc<dyn CancelHook>,
    pub(crate) run_config: serde_json::Value,
    pub(crate) progress: PlanProgress,
    pub(crate) events: mpsc::Sender<Event>,
    pub(crate) interrupt: CancellationToken,
}

/// The I/O side of a running loop: it feeds the scheduler and carries out its decisions.
struct Runner {
    /// Run id, for logs.
    run_id: String,
    /// The run's trace (derived from its id), for step tasks sent outside any known span.
    trace: TraceParent,
    /// Each step's queue and priority labels.
    routes: StepRoutes,
    /// The executor's config: backend retries, the cancel grace period.
    config: Arc<ExecutorConfig>,
    /// Where step tasks are sent.
    queue: TaskQueue,
    /// Where their results are awaited.
    results: Arc<dyn ResultBackend>,
    /// Cancels tasks.
    hook: Arc<dyn CancelHook>,
    /// The run's state and decisions.
    scheduler: Scheduler,
    /// Pending submissions, result waits and retry delays.
    waits: FuturesUnordered<BoxFuture<'static, Wake>>,
    /// Cancel requests on their way.
    cancels: FuturesUnordered<BoxFuture<'static, Result<(), CancelHookError>>>,
    /// Waits for the next progress entry of each awaited task (and clean-ups of entries not
    /// read).
    progress: FuturesUnordered<BoxFuture<'static, ProgressWake>>,
    /// Ends the progress wait of a task, by task id, once its result arrived.
    progress_stops: HashMap<String, CancellationToken>,
    /// The event stream, until its consumer goes away.
    events: Option<mpsc::Sender<Event>>,
    /// When the cancel grace period ends, once the run is stopping.
    grace_deadline: Option<Instant>,
}

impl RunLoop {
    /// Runs the plan to its end and returns the run's result.
    pub(crate) async fn run(self) -> RunResult {
        let RunLoop {
            run_id,
            job,
            routes,
            config,
            queue,
            hook,
            run_config,
            progress,
            events,
            interrupt,
        } = self;
        let scheduler = Scheduler::new(run_id.clone(), job, config.clone(), run_config, progress);
        let runner = Runner {
            trace: TraceParent::for_key(&run_id),
            routes,
            run_id,
            config,
            results: queue.results().clone(),
            queue,
            hook,
            scheduler,
            waits: FuturesUnordered::new(),
            cancels: FuturesUnordered::new(),
            progress: FuturesUnordered::new(),
            progress_stops: HashMap::new(),
            events: Some(events),
            grace_deadline: None,
        };
        runner.drive(interrupt).await
    }
}

impl Runner {
    /// Feeds the scheduler until the run is over, then finishes it.
    async fn drive(mut self, interrupt: CancellationToken) -> RunResult {
        let start = self.scheduler.start();
        self.carry_out(start).await;
        self.submit();
        while !self.scheduler.is_finished() {
            if self.waits.is_empty() {
                let stalled = self.scheduler.stalled();
                self.carry_out(stalled).await;
                break;
            }
            let grace = self.grace_deadline;
            tokio::select! {
                _ = interrupt.cancelled(), if !self.scheduler.is_stopping() => {
                    let stop = self.scheduler.interrupt();
                    self.carry_out(stop).await;
                }
                _ = sleep_until(grace), if grace.is_some() => {
                    let end = self.scheduler.end_grace();
                    self.carry_out(end).await;
                    break;
                }
                Some(wake) = self.waits.next() => {
                    self.on_wake(wake).await;
                    // Take every other wake that is ready too, so one batch covers them all.
                    while let Some(Some(wake)) = self.waits.next().now_or_never() {
                        self.on_wake(wake).await;
                    }
                    // Nothing while the run is stopping.
                    self.submit();
                }
                Some(result) = self.cancels.next() => {
                    self.on_cancel_result(result).await;
                }
                Some(wake) = self.progress.next() => {
                    self.on_progress(wake).await;
                }
            }
        }
        self.finish().await
    }

    /// Carries out the scheduler's decisions, in order.
    async fn carry_out(&mut self, decisions: Vec<Decision>) {
        for decision in decisions {
            match decision {
                Decision::Emit(event) => self.emit(event).await,
                Decision::AwaitResult {
                    step,
                    task_id,
                    timeout,
                    steps,
                } => {
                    if self.config.step_progress {
                        let stop = CancellationToken::new();
                        self.progress_stops.insert(task_id.clone(), stop.clone());
                        self.progress.push(wait_for_progress(
                            self.results.clone(),
                            step,
                            task_id.clone(),
                            1,
                            u32::try_from(steps).unwrap_or(u32::MAX),
                            stop,
                        ));
                    }
                    self.waits.push(wait_for_result(
                        self.results.clone(),
                        step,
                        task_id,
                        timeout,
                        self.config.result_wait.clone(),
                    ))
                }
                Decision::RetryAfter { step, delay } => self.waits.push(
                    tokio::time::sleep(delay)
                        .map(move |()| Wake::RetryDue { step })
                        .boxed(),
                ),
                Decision::Cancel { task_id } => self.request_cancel(task_id),
                Decision::StartGrace => {
                    self.grace_deadline = Some(Instant::now() + self.config.cancel_grace);
                }
            }
        }
    }

    /// Sends the scheduler's next batch as one `kick_batch`, in the background.
    fn submit(&mut self) {
        let batch = self.scheduler.next_batch();
        if batch.is_empty() {
            return;
        }
        let mut messages = Vec::with_capacity(batch.len());
        let mut steps = Vec::with_capacity(batch.len());
        for StepTask {
            step,
            attempt,
            args,
        } in batch
        {
            // Packing plan values into an envelope cannot fail for these types; should it
            // ever, a future reports it as a submission failure of this step.
            match protocol::step_message(&args) {
                Ok(mut message) => {
                    // The run's trace (derived from its id), sent from the run's span when
                    // a tracing backend knows it, else from a span named by the task.
                    let trace = stepq_broker::trace::current_context()
                        .unwrap_or_else(|| self.trace.child(&message.task_id));
                    message = message.with_label(TRACEPARENT_LABEL, trace.to_string());
                    message = self.routes.label(step, message);
                    if self.config.step_progress {
                        message = message
                            .with_label(protocol::PROGRESS_LABEL, args.step_keys.len().to_string());
                    }
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

    /// Hands what happened to the scheduler and carries out its decisions.
    async fn on_wake(&mut self, wake: Wake) {
        let decisions = match wake {
            Wake::Submitted {
                steps,
                queued_us,
                outcome,
            } => {
                let outcome = outcome
                    .map(|sent| sent.into_iter().map(|m| m.task_id).collect())
                    .map_err(|e| ErrorInfo::from_error("submit", &e));
                self.scheduler.on_submitted(steps, queued_us, outcome)
            }
            Wake::Result {
                step,
                task_id,
                outcome,
                delete_error,
            } => {
                if let Some(stop) = self.progress_stops.remove(&task_id) {
                    stop.cancel();
                }
                let answer = match outcome {
                    Ok(result) => Answer::Result(result),
                    Err(ResultError::Timeout { .. }) => Answer::TimedOut,
                    Err(e) => Answer::Failed(ErrorInfo::from_error("result_backend", &e)),
                };
                let delete_error = delete_error.map(|e| e.to_string());
                self.scheduler
                    .on_result(step, task_id, answer, delete_error)
            }
            Wake::RetryDue { step } => {
                self.scheduler.on_retry_due(step);
                return;
            }
        };
        self.carry_out(decisions).await;
    }

    /// Asks the cancel hook to cancel a task, in the background.
    fn request_cancel(&mut self, task_id: String) {
        let hook = self.hook.clone();
        self.cancels
            .push(async move { hook.cancel_task(&task_id).await }.boxed());
    }

    /// Reports a failed cancel request as an engine event.
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

    /// Hands a task's progress entry to the scheduler and waits for the next one while the
    /// task is awaited; once it is not, deletes the entries not read.
    async fn on_progress(&mut self, wake: ProgressWake) {
        let ProgressWake {
            step,
            task_id,
            seq,
            steps,
            stop,
            outcome,
        } = wake;
        match outcome {
            None => return,
            Some(Err(e)) => {
                tracing::warn!(run_id = %self.run_id, %task_id, seq, error = %e, "waiting for a progress entry failed; the task's result will tell");
                return;
            }
            Some(Ok(result)) => match protocol::read_progress(&result.return_value) {
                Ok(progress) => {
                    let decisions = self.scheduler.on_progress(step, &task_id, progress);
                    self.carry_out(decisions).await;
                }
                Err(e) => {
                    tracing::warn!(run_id = %self.run_id, %task_id, seq, error = %e, "a progress entry does not decode; skipping it");
                }
            },
        }
        if seq >= steps {
            return;
        }
        if !self.scheduler.awaits(step, &task_id) {
            // The result came first: what is left is only deleted.
            stop.cancel();
        }
        self.progress.push(wait_for_progress(
            self.results.clone(),
            step,
            task_id,
            seq + 1,
            steps,
            stop,
        ));
    }

    /// Lets cancel requests still on their way finish (within the grace period), then emits
    /// the run's final event and returns its result.
    async fn finish(mut self) -> RunResult {
        for stop in self.progress_stops.values() {
            stop.cancel();
        }
        if !self.progress.is_empty() {
            let mut progress = std::mem::take(&mut self.progress);
            let _ = tokio::time::timeout(self.config.cancel_grace, async {
                while progress.next().await.is_some() {}
            })
            .await;
        }
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
        let Runner {
            run_id,
            scheduler,
            mut events,
            ..
        } = self;
        let (event, result) = scheduler.finish();
        emit_to(&mut events, &run_id, event).await;
        result
    }

    /// Sends an event to the stream; stops feeding a stream whose consumer went away.
    async fn emit(&mut self, event: Event) {
        emit_to(&mut self.events, &self.run_id, event).await;
    }
}

/// Sends an event to `events`; drops a stream whose consumer went away.
async fn emit_to(events: &mut Option<mpsc::Sender<Event>>, run_id: &str, event: Event) {
    tracing::trace!(run_id = %run_id, step = ?event.step_key, kind = ?event.kind, "event");
    if let Some(tx) = events {
        if tx.send(event).await.is_err() {
            tracing::debug!(run_id = %run_id, "event stream dropped; no longer feeding it");
            *events = None;
        }
    }
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
