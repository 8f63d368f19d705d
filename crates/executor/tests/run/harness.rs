//! A real in-memory stack (broker, result backend, output store) with a real `Receiver` as the
//! worker, whose `execute_plan` handler answers per a per-test table of behaviours.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use stepq_broker::{
    CancelHandle, InMemoryBroker, Receiver, ReceiverConfig, ReceiverStats, TaskContext,
    TaskOutcome, TaskQueue,
};
use stepq_executor::{
    protocol, CancelHook, CancelHookError, Executor, ExecutorConfig, RunHandle, RunRequest,
    RunResult,
};
use stepq_plan::events::now_us;
use stepq_plan::{ErrorInfo, Event, EventKind, InlineValue, Job, StepReport, StepStatus};
use stepq_results::{
    ErrorClass, InMemoryOutputStore, InMemoryResultBackend, OutputKey, OutputStore, ResultBackend,
    TaskError,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The tag counted separately in [`Load`].
pub(crate) const TAG: (&str, &str) = ("db", "warehouse");

/// How the fake worker answers one step.
#[derive(Debug, Clone)]
pub(crate) enum Behaviour {
    /// Store and emit every declared output (the default).
    Succeed,
    /// Store and emit only these outputs.
    Emit(Vec<&'static str>),
    /// Fail every attempt.
    Fail,
    /// Fail attempts `1..=n`, then succeed.
    FailTimes(u32),
    /// Ask for a retry on attempts `1..=times`, then succeed.
    RequestRetry { after_ms: Option<u64>, times: u32 },
    /// Wait until the task is cancelled, then report CANCELED.
    UntilCancelled,
    /// Never answer (until the harness shuts down).
    NeverAnswer,
    /// Return a value that is not a list of packed reports.
    Malformed,
    /// Return a report for another step.
    WrongStep,
    /// Fail the task itself (as a worker does for an unknown job).
    TaskError,
    /// Answer as a worker's cancellation gate does for a task cancelled before it started.
    CanceledBeforeStart,
    /// As a later step of a multi-step task: the worker stops before it (no report, not
    /// run). As the first step: succeed.
    NotRunInTask,
}

/// Steps running in the worker right now, and the most at once.
#[derive(Debug, Clone, Default)]
pub(crate) struct Load {
    pub running: usize,
    pub max_running: usize,
    pub tagged: usize,
    pub max_tagged: usize,
    pub started: usize,
    pub tagged_started: usize,
}

/// Holds a started step until the load satisfies the predicate.
pub(crate) type Hold = Arc<dyn Fn(&str, &Load) -> bool + Send + Sync>;

/// What the fake worker shares with the test.
pub(crate) struct WorkerState {
    job: Arc<Job>,
    behaviours: HashMap<String, Behaviour>,
    hold: Option<Hold>,
    outputs: Arc<InMemoryOutputStore>,
    shutdown: CancellationToken,
    pub load: watch::Sender<Load>,
    /// `(step, attempt)` of every execution, in start order.
    pub executed: Mutex<Vec<(String, u32)>>,
    /// The step keys of every task received, in order.
    pub tasks: Mutex<Vec<Vec<String>>>,
    /// The first step key and the inline inputs of every task received, in order.
    pub inline_received: Mutex<Vec<(String, Vec<InlineValue>)>>,
}

impl WorkerState {
    /// Waits until `cond` holds for the load (bounded: panics after 10 s).
    pub(crate) async fn wait_load(&self, cond: impl Fn(&Load) -> bool) {
        let mut rx = self.load.subscribe();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|l| cond(l)))
            .await
            .expect("the worker load never reached the expected state")
            .expect("load channel open");
    }

    /// Steps the worker executed.
    pub(crate) fn executed_steps(&self) -> BTreeSet<String> {
        self.executed
            .lock()
            .unwrap()
            .iter()
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// Runs a task's steps in order, as a worker does: stops after the first step that does
    /// not succeed (the rest get no report: not run).
    async fn handle(self: Arc<Self>, ctx: TaskContext) -> TaskOutcome {
        let args = protocol::read_step_args(&ctx.message).map_err(|e| TaskError {
            kind: "BadArgs".into(),
            message: e.to_string(),
        })?;
        self.tasks.lock().unwrap().push(args.step_keys.clone());
        self.inline_received
            .lock()
            .unwrap()
            .push((args.step_keys[0].clone(), args.inline_inputs.clone()));
        let mut reports = Vec::new();
        for (i, key) in args.step_keys.iter().enumerate() {
            if i > 0 && matches!(self.behaviours.get(key), Some(Behaviour::NotRunInTask)) {
                break;
            }
            let outcome = self.handle_step(&ctx, &args, key).await;
            let value = match outcome {
                Ok(value) => value,
                Err(e) if i == 0 => return Err(e),
                Err(_) => break,
            };
            let Ok(mut step_reports) = protocol::read_reports(&value) else {
                if i == 0 {
                    return Ok(value);
                }
                break;
            };
            let succeeded = step_reports
                .iter()
                .all(|r| matches!(r.status, StepStatus::Success { .. }) && &r.step_key == key);
            reports.append(&mut step_reports);
            if !succeeded {
                break;
            }
        }
        Ok(protocol::reports_value(&reports).unwrap())
    }

    async fn handle_step(
        &self,
        ctx: &TaskContext,
        args: &stepq_plan::ExecuteStepArgs,
        key: &str,
    ) -> TaskOutcome {
        let key = key.to_string();
        let attempt = args.attempt_of(&key);
        let tagged = self
            .job
            .step(&key)
            .is_some_and(|s| s.tags.get(TAG.0).map(String::as_str) == Some(TAG.1));
        self.executed.lock().unwrap().push((key.clone(), attempt));
        self.load.send_modify(|l| {
            l.running += 1;
            l.started += 1;
            l.max_running = l.max_running.max(l.running);
            if tagged {
                l.tagged += 1;
                l.tagged_started += 1;
                l.max_tagged = l.max_tagged.max(l.tagged);
            }
        });
        let started_us = now_us();
        if let Some(hold) = &self.hold {
            let mut rx = self.load.subscribe();
            let _ = rx.wait_for(|l| hold(&key, l)).await;
        }
        let outcome = self
            .answer(ctx, &args.run_id, &key, attempt, started_us)
            .await;
        self.load.send_modify(|l| {
            l.running -= 1;
            if tagged {
                l.tagged -= 1;
            }
        });
        outcome
    }

    async fn answer(
        &self,
        ctx: &TaskContext,
        run_id: &str,
        key: &str,
        attempt: u32,
        started_us: u64,
    ) -> TaskOutcome {
        let behaviour = self
            .behaviours
            .get(key)
            .cloned()
            .unwrap_or(Behaviour::Succeed);
        let mut events = vec![Event {
            timestamp_us: started_us,
            run_id: run_id.to_string(),
            step_key: Some(key.to_string()),
            kind: EventKind::StepStart {
                attempt,
                worker: "test-worker".into(),
            },
        }];
        let failure = |message: &str| StepStatus::Failure {
            error: ErrorInfo {
                kind: "op_error".into(),
                message: message.to_string(),
                causes: vec!["root cause".into()],
            },
            retry_requested: None,
        };
        let status = match behaviour {
            Behaviour::Succeed | Behaviour::NotRunInTask => {
                self.emit_outputs(run_id, key, attempt, None, &mut events)
                    .await
            }
            Behaviour::Emit(names) => {
                self.emit_outputs(run_id, key, attempt, Some(&names), &mut events)
                    .await
            }
            Behaviour::Fail => failure("boom"),
            Behaviour::FailTimes(n) if attempt <= n => {
                failure(&format!("boom on attempt {attempt}"))
            }
            Behaviour::FailTimes(_) => {
                self.emit_outputs(run_id, key, attempt, None, &mut events)
                    .await
            }
            Behaviour::RequestRetry { after_ms, times } if attempt <= times => {
                StepStatus::Failure {
                    error: ErrorInfo::new("retry_requested", "not yet"),
                    retry_requested: Some(after_ms),
                }
            }
            Behaviour::RequestRetry { .. } => {
                self.emit_outputs(run_id, key, attempt, None, &mut events)
                    .await
            }
            Behaviour::UntilCancelled => {
                tokio::select! {
                    _ = ctx.cancel.cancelled() => {}
                    _ = self.shutdown.cancelled() => {}
                }
                StepStatus::Canceled
            }
            Behaviour::NeverAnswer => {
                self.shutdown.cancelled().await;
                return Err(TaskError {
                    kind: "Shutdown".into(),
                    message: "harness shut down".into(),
                });
            }
            Behaviour::Malformed => return Ok(serde_json::json!("garbage")),
            Behaviour::WrongStep => {
                let report = StepReport {
                    step_key: "some_other_step".into(),
                    attempt,
                    worker: "test-worker".into(),
                    status: StepStatus::Success { emitted: vec![] },
                    events: vec![],
                    inline_outputs: vec![],
                };
                return Ok(protocol::reports_value(&[report]).unwrap());
            }
            Behaviour::TaskError => {
                return Err(TaskError {
                    kind: "UnknownJob".into(),
                    message: "no such job here".into(),
                })
            }
            Behaviour::CanceledBeforeStart => {
                return Err(TaskError {
                    kind: stepq_broker::receiver::kinds::CANCELED,
                    message: "cancelled before it started".into(),
                })
            }
        };
        let inline_outputs = match &status {
            StepStatus::Success { emitted } => emitted
                .iter()
                .map(|name| InlineValue::new(key, name.clone(), output_value(attempt)))
                .collect(),
            _ => Vec::new(),
        };
        let report = StepReport {
            step_key: key.to_string(),
            attempt,
            worker: "test-worker".into(),
            status,
            events,
            inline_outputs,
        };
        Ok(protocol::reports_value(&[report]).unwrap())
    }

    /// Stores outputs (each the attempt number, as MessagePack) and reports success.
    async fn emit_outputs(
        &self,
        run_id: &str,
        key: &str,
        attempt: u32,
        only: Option<&[&str]>,
        events: &mut Vec<Event>,
    ) -> StepStatus {
        let names: Vec<String> = match only {
            Some(names) => names.iter().map(|s| s.to_string()).collect(),
            None => self
                .job
                .step(key)
                .map(|s| s.outputs.iter().map(|o| o.name.clone()).collect())
                .unwrap_or_default(),
        };
        for name in &names {
            let bytes = output_value(attempt);
            events.push(Event::step(
                run_id,
                key,
                EventKind::StepOutputHandled {
                    output: name.clone(),
                    bytes: bytes.len() as u64,
                },
            ));
            self.outputs
                .put(&OutputKey::new(run_id, key, name), bytes.into())
                .await
                .unwrap();
        }
        events.push(Event::step(
            run_id,
            key,
            EventKind::StepSuccess {
                duration: Duration::from_millis(1),
            },
        ));
        StepStatus::Success { emitted: names }
    }
}

/// What the fake worker stores (and reports inline) as each output: the attempt number.
pub(crate) fn output_value(attempt: u32) -> Vec<u8> {
    rmp_serde::to_vec_named(&(attempt as i64)).unwrap()
}

/// A cancel hook that records task ids and cancels them on the harness's receiver.
pub(crate) struct RecordingHook {
    pub cancel: CancelHandle,
    pub ids: Mutex<Vec<String>>,
    pub fail: bool,
}

#[async_trait]
impl CancelHook for RecordingHook {
    async fn cancel_task(&self, task_id: &str) -> Result<(), CancelHookError> {
        self.ids.lock().unwrap().push(task_id.to_string());
        if self.fail {
            return Err(CancelHookError {
                task_id: task_id.to_string(),
                message: "cancel queue unreachable".into(),
                class: ErrorClass::Temporary,
            });
        }
        self.cancel.cancel(task_id);
        Ok(())
    }
}

/// Builds a [`Harness`].
pub(crate) struct HarnessBuilder {
    job: Arc<Job>,
    behaviours: HashMap<String, Behaviour>,
    hold: Option<Hold>,
    results: Option<Arc<dyn ResultBackend>>,
    queue_fn: Option<Box<dyn FnOnce(TaskQueue) -> TaskQueue>>,
}

impl HarnessBuilder {
    pub(crate) fn behaviour(mut self, step: &str, b: Behaviour) -> Self {
        self.behaviours.insert(step.to_string(), b);
        self
    }

    pub(crate) fn hold(
        mut self,
        hold: impl Fn(&str, &Load) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.hold = Some(Arc::new(hold));
        self
    }

    /// Uses this result backend instead of a plain in-memory one.
    pub(crate) fn results(mut self, results: Arc<dyn ResultBackend>) -> Self {
        self.results = Some(results);
        self
    }

    /// Changes the queue the executor submits to (e.g. adds middleware).
    pub(crate) fn executor_queue(
        mut self,
        f: impl FnOnce(TaskQueue) -> TaskQueue + 'static,
    ) -> Self {
        self.queue_fn = Some(Box::new(f));
        self
    }

    pub(crate) fn start(self) -> Harness {
        let memory_results = Arc::new(InMemoryResultBackend::new());
        let results: Arc<dyn ResultBackend> = self.results.unwrap_or(memory_results.clone());
        let queue = TaskQueue::new(Arc::new(InMemoryBroker::new()), results.clone());
        let outputs = Arc::new(InMemoryOutputStore::new());
        let shutdown = CancellationToken::new();
        let worker = Arc::new(WorkerState {
            job: self.job.clone(),
            behaviours: self.behaviours,
            hold: self.hold,
            outputs: outputs.clone(),
            shutdown: shutdown.clone(),
            load: watch::Sender::new(Load::default()),
            executed: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
            inline_received: Mutex::new(Vec::new()),
        });
        let mut receiver = Receiver::new(queue.clone()).with_config(ReceiverConfig {
            concurrency: 64,
            grace_period: Duration::from_secs(2),
            worker_name: "test-worker".into(),
            ..ReceiverConfig::default()
        });
        let w = worker.clone();
        receiver.register(
            protocol::EXECUTE_PLAN,
            Arc::new(move |ctx: TaskContext| -> BoxFuture<'static, TaskOutcome> {
                Box::pin(w.clone().handle(ctx))
            }),
        );
        let cancel = receiver.cancel_handle();
        let stop = CancellationToken::new();
        let receiver = tokio::spawn(receiver.run(stop.clone()));
        let executor_queue = match self.queue_fn {
            Some(f) => f(queue.clone()),
            None => queue.clone(),
        };
        Harness {
            job: self.job,
            queue: executor_queue,
            results,
            outputs,
            worker,
            cancel,
            stop,
            shutdown,
            receiver,
        }
    }
}

/// The stack one test runs against.
pub(crate) struct Harness {
    pub job: Arc<Job>,
    pub queue: TaskQueue,
    pub results: Arc<dyn ResultBackend>,
    pub outputs: Arc<InMemoryOutputStore>,
    pub worker: Arc<WorkerState>,
    pub cancel: CancelHandle,
    stop: CancellationToken,
    shutdown: CancellationToken,
    receiver: JoinHandle<Result<ReceiverStats, stepq_broker::BrokerError>>,
}

/// A finished run: its result and every event it emitted, in order.
pub(crate) struct Finished {
    pub result: RunResult,
    pub events: Vec<Event>,
}

impl Finished {
    /// Events of one step.
    pub(crate) fn step_events(&self, step: &str) -> Vec<&EventKind> {
        self.events
            .iter()
            .filter(|e| e.step_key.as_deref() == Some(step))
            .map(|e| &e.kind)
            .collect()
    }

    /// Position of the first event of `step` matching `pred`.
    pub(crate) fn position(&self, step: &str, pred: impl Fn(&EventKind) -> bool) -> usize {
        self.events
            .iter()
            .position(|e| e.step_key.as_deref() == Some(step) && pred(&e.kind))
            .unwrap_or_else(|| panic!("no such event for step {step}"))
    }

    /// Task ids of every StepQueued event.
    pub(crate) fn task_ids(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::StepQueued { task_id, .. } => Some(task_id.clone()),
                _ => None,
            })
            .collect()
    }

    /// The StepRetry events of a step as `(attempt, delay)`.
    pub(crate) fn retries(&self, step: &str) -> Vec<(u32, Duration)> {
        self.step_events(step)
            .into_iter()
            .filter_map(|k| match k {
                EventKind::StepRetry { attempt, delay } => Some((*attempt, *delay)),
                _ => None,
            })
            .collect()
    }

    /// `will_retry` of each StepFailure event of a step.
    pub(crate) fn failures(&self, step: &str) -> Vec<(String, bool)> {
        self.step_events(step)
            .into_iter()
            .filter_map(|k| match k {
                EventKind::StepFailure { error, will_retry } => {
                    Some((error.kind.to_string(), *will_retry))
                }
                _ => None,
            })
            .collect()
    }
}

impl Harness {
    pub(crate) fn builder(job: Job) -> HarnessBuilder {
        HarnessBuilder {
            job: Arc::new(job),
            behaviours: HashMap::new(),
            hold: None,
            results: None,
            queue_fn: None,
        }
    }

    pub(crate) fn executor(&self, config: ExecutorConfig) -> Executor {
        Executor::new(self.queue.clone(), self.outputs.clone(), config).unwrap()
    }

    /// A hook recording ids and cancelling them on this harness's receiver.
    pub(crate) fn recording_hook(&self, fail: bool) -> Arc<RecordingHook> {
        Arc::new(RecordingHook {
            cancel: self.cancel.clone(),
            ids: Mutex::new(Vec::new()),
            fail,
        })
    }

    pub(crate) fn request(&self, run_id: &str) -> RunRequest {
        RunRequest::new(run_id, self.job.clone())
    }

    /// Runs the request to its end, collecting events (bounded: panics after 20 s).
    pub(crate) async fn run(&self, executor: &Executor, request: RunRequest) -> Finished {
        let handle = executor.start(request).unwrap();
        collect(handle).await
    }

    /// Stops the worker.
    pub(crate) async fn shutdown(self) {
        self.shutdown.cancel();
        self.stop.cancel();
        self.receiver.await.unwrap().unwrap();
    }
}

/// Reads a run's events while awaiting its result (bounded: panics after 20 s).
pub(crate) async fn collect(mut handle: RunHandle) -> Finished {
    let mut stream = handle.events().expect("events not taken yet");
    let reader = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Some(e) = stream.recv().await {
            events.push(e);
        }
        events
    });
    let result = tokio::time::timeout(Duration::from_secs(20), handle.wait())
        .await
        .expect("the run did not end within 20 s");
    let events = reader.await.unwrap();
    Finished { result, events }
}
