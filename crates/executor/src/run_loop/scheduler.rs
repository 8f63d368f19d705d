//! The I/O-free scheduler of one run: all the state of the run loop, none of its I/O.
//!
//! It owns the plan's progress, each step's phase and attempts, admission under the run's
//! limits, chain fusion, the inline values kept for steps not sent yet, the run's errors and
//! the stopping state. It never sends, waits or reads a clock other than event timestamps:
//! the driver (the parent module) tells it what happened (a batch was sent or could not be,
//! a result arrived or waiting for it ended, a retry delay elapsed, an interrupt, the end of
//! the cancel grace period) and carries out what it answers, in order: [`Decision`]s (events
//! to emit, results to await, retry delays to start, tasks to cancel, the grace period to
//! start) and, from [`Scheduler::next_batch`], the [`StepTask`]s to send.
//!
//! Submodules, each adding to [`Scheduler`]:
//! - [`tasks`]: what goes into a task (known state, fused chain, inline inputs, timeout) and
//!   what happens when a batch was sent.
//! - [`inline`]: the inline values of succeeded steps and which unsent steps still read them.
//! - [`reports`]: results and step reports: success, retries, failures, fused members.
//! - [`progress`]: a task's progress entries: a step's start, and a fused task's successes,
//!   recorded before its result.
//! - [`stopping`]: interrupt, fail fast, the cancel grace period, a stalled loop, and how the
//!   run ended.

mod inline;
mod progress;
mod reports;
mod stopping;
mod tasks;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use stepq_plan::{ErrorInfo, Event, EventKind, ExecuteStepArgs, Job, PlanProgress};
use stepq_results::TaskResult;

use crate::admission::Admission;
use crate::config::ExecutorConfig;
use crate::outcome::{StepRunState, StepSummary};

use inline::InlineValues;
use progress::EarlyProgress;

/// Something the driver must do. A call's decisions are carried out in the order given.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    /// Send this event to the run's event stream.
    Emit(Event),
    /// Await the result of task `task_id` of `step` for at most `timeout`, then hand it to
    /// [`Scheduler::on_result`].
    AwaitResult {
        /// The task's head step.
        step: usize,
        /// The task.
        task_id: String,
        /// How long to wait; `None` waits as long as it takes.
        timeout: Option<Duration>,
        /// Steps the task carries: at most this many progress entries come for it.
        steps: usize,
    },
    /// Wait `delay`, then call [`Scheduler::on_retry_due`] for `step`.
    RetryAfter {
        /// The step to retry.
        step: usize,
        /// How long to wait.
        delay: Duration,
    },
    /// Ask the cancel hook to cancel task `task_id`.
    Cancel {
        /// The task.
        task_id: String,
    },
    /// Start the cancel grace period (`ExecutorConfig::cancel_grace`): when it ends before
    /// the run does, call [`Scheduler::end_grace`].
    StartGrace,
}

/// One task to send: a step, with the steps fused after it, as `execute_plan` arguments.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StepTask {
    /// The head step (job index), admitted, awaited and released like a single step.
    pub(crate) step: usize,
    /// The head step's attempt number, counting earlier runs.
    pub(crate) attempt: u32,
    /// The message's arguments: `step_keys` names the head step, then its fused members in
    /// order; `inline_inputs` carries the head step's inline inputs.
    pub(crate) args: ExecuteStepArgs,
}

/// How waiting for a task's result ended.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    /// The result arrived.
    Result(TaskResult),
    /// No result within the task's timeout.
    TimedOut,
    /// The result backend failed (after its retries).
    Failed(ErrorInfo),
}

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
    /// Where it is.
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
    /// What the run result will say about it.
    summary: StepSummary,
    /// What the current attempt's task told before its result.
    early: EarlyProgress,
}

/// Why the run stopped submitting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// `RunHandle::interrupt` or the interrupt token.
    Interrupted,
    /// A step failed for good with `fail_fast` on.
    FailFast,
}

/// The pure state of one run; see the module docs.
#[derive(Debug)]
pub(crate) struct Scheduler {
    /// Run id, for events and the tasks' arguments.
    run_id: String,
    /// The job.
    job: Arc<Job>,
    /// The executor's config.
    config: Arc<ExecutorConfig>,
    /// Free-form run config handed to every task.
    run_config: serde_json::Value,
    /// The plan's progress: readiness, final states and the known state.
    progress: PlanProgress,
    /// Ready steps waiting under the limits.
    admission: Admission,
    /// One record per step of the job, by job index.
    steps: Vec<StepTrack>,
    /// Inline values kept for steps not sent yet.
    inline: InlineValues,
    /// Final step failures, in order.
    errors: Vec<ErrorInfo>,
    /// Set once the run stops submitting.
    stop: Option<Stop>,
    /// A step failed for good while the run was not stopping.
    failed: bool,
    /// Decisions of the call under way, handed out when it returns.
    out: Vec<Decision>,
}

impl Scheduler {
    /// The scheduler of run `run_id` of `job` (the job `progress` plans), nothing sent yet.
    pub(crate) fn new(
        run_id: String,
        job: Arc<Job>,
        config: Arc<ExecutorConfig>,
        run_config: serde_json::Value,
        progress: PlanProgress,
    ) -> Self {
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
                summary: StepSummary::new(StepRunState::NotRun),
                early: EarlyProgress::default(),
            })
            .collect();
        let inline = InlineValues::new(progress.plan(), config.inline_inputs_per_message);
        Scheduler {
            run_id,
            job,
            config,
            run_config,
            progress,
            admission,
            steps,
            inline,
            errors: Vec::new(),
            stop: None,
            failed: false,
            out: Vec::new(),
        }
    }

    /// The run starts: its start events, and the steps the plan skips from the start. The
    /// first batch comes from [`next_batch`](Self::next_batch).
    pub(crate) fn start(&mut self) -> Vec<Decision> {
        self.emit(Event::run(&self.run_id, EventKind::RunStarting));
        self.emit(Event::run(&self.run_id, EventKind::RunStarted));
        self.flush_skipped();
        self.decisions()
    }

    /// The retry delay of `step` elapsed: it waits for admission again (unless it ended
    /// meanwhile, as stopping the run cancels it). Its task comes from
    /// [`next_batch`](Self::next_batch).
    pub(crate) fn on_retry_due(&mut self, step: usize) {
        if self.steps[step].phase == Phase::RetryDelay {
            self.steps[step].phase = Phase::Admitting;
            self.admission.push(step);
        }
    }

    /// Every in-plan step reached a final state: the run is over (see
    /// [`finish`](Self::finish)).
    pub(crate) fn is_finished(&self) -> bool {
        self.progress.is_complete()
    }

    /// The run stopped submitting (interrupt or fail fast).
    pub(crate) fn is_stopping(&self) -> bool {
        self.stop.is_some()
    }

    // ---- helpers ---------------------------------------------------------------------------

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

    /// Job index of step `key`.
    fn index(&self, key: &str) -> usize {
        self.job
            .step_index(key)
            .expect("the plan only names steps of its job")
    }

    /// Key of step `step`.
    fn key(&self, step: usize) -> String {
        self.job.steps()[step].key.clone()
    }

    /// Queues an event for the driver to emit.
    fn emit(&mut self, event: Event) {
        self.out.push(Decision::Emit(event));
    }

    /// Queues a decision.
    fn decide(&mut self, decision: Decision) {
        self.out.push(decision);
    }

    /// Hands out the decisions of the call under way.
    fn decisions(&mut self) -> Vec<Decision> {
        std::mem::take(&mut self.out)
    }
}
