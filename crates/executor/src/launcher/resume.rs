//! Resuming a recorded run: the resume rules ([`check_resumable`]), and the request and claim
//! of a resume (the known state rebuilt from the run's event log), in this process
//! ([`RunLauncher::resume`]) or for a `resume_job` task.

use std::sync::Arc;

use futures::StreamExt;
use stepq_plan::{Event, EventKind, Job};

use super::{
    known_state_from_events, read_all_events, unfinished_tasks, LaunchError, RecordedRun,
    RunLauncher,
};
use crate::executor::RunRequest;
use crate::storage::{RunRecord, RunStatus as StoredStatus, StatusChange};

impl RunLauncher {
    /// Resumes run `run_id` of `job` in this process as `orchestrator`: the same rules as
    /// [`RunLauncher::submit_resume`] (FAILURE and CANCELED runs resume; a STARTING or
    /// STARTED run only with `force`, taken over from its orchestrator by compare-and-set;
    /// others are [`LaunchError::NotResumable`]), and the same run as a worker's
    /// `resume_job` task: the known state rebuilt from the run's event log, the step
    /// selection and run config of its record. It is started with [`RunLauncher::start`]
    /// (events recorded, record watched for CANCELING).
    ///
    /// A `job` that is not the run's job is [`LaunchError::UnknownJob`]; a run that changed
    /// meanwhile (another resume won) is [`LaunchError::AlreadyClaimed`].
    pub async fn resume(
        &self,
        run_id: &str,
        orchestrator: &str,
        force: bool,
        job: Arc<Job>,
    ) -> Result<RecordedRun, LaunchError> {
        let record = self.runs.get_run(run_id).await?;
        check_resumable(&record, force)?;
        if job.name() != record.job_name {
            return Err(LaunchError::UnknownJob {
                run_id: run_id.to_string(),
                job: record.job_name,
            });
        }
        let resume = self
            .resume_request(
                &record,
                job,
                record.run_config.clone(),
                orchestrator,
                record.status,
                record.orchestrator.clone(),
            )
            .await?;
        self.start_resume(resume).await
    }

    /// Claims and starts a resume, asking the tasks its log left unfinished to stop first.
    pub(super) async fn start_resume(&self, resume: Resume) -> Result<RecordedRun, LaunchError> {
        self.start_replacing(resume.request, &resume.claim, &resume.stale_tasks)
            .await
    }

    /// The request and claim of a resume of `record` by `orchestrator`: the run's known
    /// state from its event log, its step selection, `run_config`; claimed from status
    /// `from` (and, for a takeover of a STARTING / STARTED run, from orchestrator `held_by`);
    /// the log's [`unfinished_tasks`], which the resume asks to stop.
    pub(super) async fn resume_request(
        &self,
        record: &RunRecord,
        job: Arc<Job>,
        run_config: serde_json::Value,
        orchestrator: &str,
        from: StoredStatus,
        held_by: Option<String>,
    ) -> Result<Resume, LaunchError> {
        let mut claim = StatusChange::to(StoredStatus::Starting)
            .by(orchestrator)
            .expecting(from);
        if from.is_takeover(StoredStatus::Starting) {
            claim = claim.expecting_orchestrator(held_by.unwrap_or_default());
        }
        let events = read_all_events(self.runs.as_ref(), &record.run_id).await?;
        let mut request = RunRequest::new(record.run_id.clone(), job)
            .with_run_config(run_config)
            .with_known_state(known_state_from_events(&events));
        request.step_selection = record.step_selection.clone();
        request.priority = record.tags.get(crate::protocol::PRIORITY_TAG).cloned();
        Ok(Resume {
            request,
            claim,
            stale_tasks: unfinished_tasks(&events),
        })
    }

    /// Asks `tasks`, left unfinished in run `run_id`'s log by the attempt a resume replaces,
    /// to stop through the executor's cancel hook (what an interrupt of their own
    /// orchestrator would have done: a cancel marker and a wake-up of the workers), a few at a
    /// time, and appends an `EngineEvent` saying how many were asked. A cancel that fails is
    /// logged and named in the event; the resume goes on either way.
    pub(super) async fn stop_stale_tasks(&self, run_id: &str, tasks: &[String]) {
        let hook = self.executor.cancel_hook().clone();
        let message = if hook.reaches_workers() {
            let results: Vec<_> = futures::stream::iter(tasks.to_vec())
                .map(|task_id| {
                    let hook = hook.clone();
                    async move { hook.cancel_task(&task_id).await }
                })
                .buffered(STALE_CANCELS_AT_ONCE)
                .collect()
                .await;
            let failed: Vec<_> = results.into_iter().filter_map(Result::err).collect();
            for e in &failed {
                tracing::warn!(%run_id, task_id = %e.task_id, error = %e.message, "cannot ask a task of the replaced attempt to stop");
            }
            let asked = tasks.len() - failed.len();
            let mut message = format!(
                "resume: asked {asked} {} of the attempt it replaces to stop ({})",
                tasks_word(asked),
                listed(
                    tasks
                        .iter()
                        .filter(|t| !failed.iter().any(|e| &e.task_id == *t))
                )
            );
            if !failed.is_empty() {
                message.push_str(&format!(
                    "; {} could not be asked and may still run: {}",
                    failed.len(),
                    listed(
                        failed
                            .iter()
                            .map(|e| format!("{}: {}", e.task_id, e.message))
                    )
                ));
            }
            message
        } else {
            format!(
                "resume: {} {} of the attempt it replaces may still run on their workers, cancellation is off ({})",
                tasks.len(),
                tasks_word(tasks.len()),
                listed(tasks.iter())
            )
        };
        tracing::info!(%run_id, "{message}");
        let event = Event::run(run_id, EventKind::EngineEvent { message });
        if let Err(e) = self.runs.append_events(run_id, &[event]).await {
            tracing::warn!(%run_id, error = %e, "cannot record the stop of the replaced attempt's tasks");
        }
    }
}

/// What a resume claims and runs: its request, its claim, and the tasks of the attempt it
/// replaces to stop once the claim is won.
pub(super) struct Resume {
    pub(super) request: RunRequest,
    pub(super) claim: StatusChange,
    pub(super) stale_tasks: Vec<String>,
}

/// How many cancels of a replaced attempt's tasks are on their way at once.
const STALE_CANCELS_AT_ONCE: usize = 16;

/// Most task ids an engine event lists.
const LISTED_TASKS: usize = 10;

fn tasks_word(n: usize) -> &'static str {
    if n == 1 {
        "task"
    } else {
        "tasks"
    }
}

/// Up to [`LISTED_TASKS`] items, comma-separated, then how many more.
fn listed(items: impl Iterator<Item = impl std::fmt::Display>) -> String {
    let items: Vec<String> = items.map(|i| i.to_string()).collect();
    let mut text = items
        .iter()
        .take(LISTED_TASKS)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > LISTED_TASKS {
        text.push_str(&format!(" and {} more", items.len() - LISTED_TASKS));
    }
    text
}

/// FAILURE and CANCELED runs resume; a STARTING or STARTED run only with `force` (its
/// orchestrator died); others are [`LaunchError::NotResumable`].
pub(super) fn check_resumable(record: &RunRecord, force: bool) -> Result<(), LaunchError> {
    let resumable = match record.status {
        StoredStatus::Failure | StoredStatus::Canceled => true,
        StoredStatus::Starting | StoredStatus::Started => force,
        _ => false,
    };
    if resumable {
        Ok(())
    } else {
        Err(LaunchError::NotResumable {
            run_id: record.run_id.clone(),
            status: record.status,
            orchestrator: record.orchestrator.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use stepq_broker::TaskQueue;
    use stepq_plan::{Event, EventKind};

    use crate::executor::Executor;
    use crate::storage::{read_all_events, InMemoryRunStore, RunStore, StorageError};

    fn launcher_on(store: &Arc<InMemoryRunStore>) -> RunLauncher {
        let queue = TaskQueue::new(
            Arc::new(stepq_broker::InMemoryBroker::new()),
            Arc::new(stepq_results::InMemoryResultBackend::new()),
        );
        let outputs = Arc::new(stepq_results::InMemoryOutputStore::new());
        let executor =
            Executor::new(queue, outputs, crate::config::ExecutorConfig::default()).unwrap();
        RunLauncher::new(executor, store.clone())
    }

    /// Run `run_id` of the one-step job `j`, whose step `a` succeeded in its log, in `status`
    /// (held by `dead` when STARTED).
    async fn recorded(store: &InMemoryRunStore, run_id: &str, status: StoredStatus) {
        store
            .create_run(&RunRecord::new(run_id, "j", serde_json::json!({ "k": 1 })))
            .await
            .unwrap();
        let step = |kind| Event::step(run_id, "a", kind);
        let log = [
            step(EventKind::StepQueued {
                attempt: 1,
                task_id: "t1".into(),
            }),
            step(EventKind::StepOutputHandled {
                output: "result".into(),
                bytes: 1,
            }),
            step(EventKind::StepSuccess {
                duration: Duration::ZERO,
            }),
        ];
        store.append_events(run_id, &log).await.unwrap();
        match status {
            StoredStatus::Started => {
                let claim = StatusChange::to(StoredStatus::Starting).by("dead");
                store.change_status(run_id, &claim).await.unwrap();
                store
                    .update_status(run_id, StoredStatus::Started)
                    .await
                    .unwrap();
            }
            StoredStatus::Queued => {}
            other => {
                store.update_status(run_id, other).await.unwrap();
            }
        }
    }

    #[tokio::test]
    async fn resume_follows_the_resume_rules_and_claims_from_the_current_holder() {
        let store = Arc::new(InMemoryRunStore::new());
        let launcher = launcher_on(&store);
        let job = Arc::new(
            Job::builder("j")
                .step(stepq_plan::StepDef::new("a", "op").output("result"))
                .build()
                .unwrap(),
        );
        recorded(&store, "canceled", StoredStatus::Canceled).await;
        recorded(&store, "started", StoredStatus::Started).await;
        recorded(&store, "queued", StoredStatus::Queued).await;

        for (run_id, force) in [("started", false), ("queued", true)] {
            match launcher.resume(run_id, "me", force, job.clone()).await {
                Err(LaunchError::NotResumable { run_id: r, .. }) => assert_eq!(r, run_id),
                other => panic!("{run_id}: {other:?}"),
            }
        }
        let other_job = Arc::new(
            Job::builder("other")
                .step(stepq_plan::StepDef::new("a", "op"))
                .build()
                .unwrap(),
        );
        match launcher.resume("canceled", "me", false, other_job).await {
            Err(LaunchError::UnknownJob { job, .. }) => assert_eq!(job, "j"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            launcher.resume("nope", "me", true, job.clone()).await,
            Err(LaunchError::Storage(StorageError::RunNotFound { .. }))
        ));
        assert_eq!(
            store.get_run("started").await.unwrap().status,
            StoredStatus::Started,
            "refusals touch nothing"
        );

        // `a` succeeded in the log: nothing runs again (no worker needed), the run ends
        // SUCCESS, claimed by `me` (a takeover from `dead` with force).
        for run_id in ["canceled", "started"] {
            let run = launcher
                .resume(run_id, "me", true, job.clone())
                .await
                .unwrap();
            assert_eq!(run.step_count(), 0, "{run_id}");
            let done = run.wait().await;
            assert_eq!(done.result.status, crate::RunStatus::Success, "{run_id}");
            let record = store.get_run(run_id).await.unwrap();
            assert_eq!(record.status, StoredStatus::Success, "{run_id}");
            assert_eq!(record.orchestrator.as_deref(), Some("me"), "{run_id}");
        }
    }

    /// A cancel hook recording each task id with the broker's pending messages at the time.
    struct Recording {
        broker: Arc<stepq_broker::InMemoryBroker>,
        calls: std::sync::Mutex<Vec<(String, usize)>>,
    }

    #[async_trait::async_trait]
    impl crate::CancelHook for Recording {
        async fn cancel_task(&self, task_id: &str) -> Result<(), crate::CancelHookError> {
            let pending = self.broker.pending();
            self.calls
                .lock()
                .unwrap()
                .push((task_id.to_string(), pending));
            Ok(())
        }
    }

    fn engine_messages(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::EngineEvent { message } => Some(message.clone()),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_takeover_asks_the_replaced_attempts_tasks_to_stop_before_queueing() {
        let store = Arc::new(InMemoryRunStore::new());
        let broker = Arc::new(stepq_broker::InMemoryBroker::new());
        let queue = TaskQueue::new(
            broker.clone(),
            Arc::new(stepq_results::InMemoryResultBackend::new()),
        );
        let outputs = Arc::new(stepq_results::InMemoryOutputStore::new());
        let hook = Arc::new(Recording {
            broker: broker.clone(),
            calls: Default::default(),
        });
        // Nobody answers the interrupt's cancel: the run ends once the grace is over.
        let config = crate::config::ExecutorConfig {
            cancel_grace: Duration::from_millis(10),
            ..Default::default()
        };
        let executor = Executor::new(queue, outputs, config)
            .unwrap()
            .with_cancel_hook(hook.clone());
        let launcher = RunLauncher::new(executor, store.clone());
        // `a` succeeded; `b` was queued as task `t-b` by the dead orchestrator, no outcome.
        recorded(&store, "r", StoredStatus::Started).await;
        let queued_b = Event::step(
            "r",
            "b",
            EventKind::StepQueued {
                attempt: 1,
                task_id: "t-b".into(),
            },
        );
        store.append_events("r", &[queued_b]).await.unwrap();
        let job = Arc::new(
            Job::builder("j")
                .step(stepq_plan::StepDef::new("a", "op").output("result"))
                .step(stepq_plan::StepDef::new("b", "op"))
                .build()
                .unwrap(),
        );

        let mut run = launcher.resume("r", "me", true, job).await.unwrap();
        assert_eq!(run.step_count(), 1);
        // Nobody serves the queue: wait until `b`'s new attempt is sent, then stop the run.
        let mut events = run.events().unwrap();
        let new_task = loop {
            let event = events.recv().await.expect("b is queued again");
            if let EventKind::StepQueued { attempt, task_id } = event.kind {
                assert_eq!(attempt, 2);
                break task_id;
            }
        };
        assert_ne!(new_task, "t-b");
        run.interrupt();
        drop(events);
        run.wait().await;

        let calls = hook.calls.lock().unwrap().clone();
        assert_eq!(
            calls.first(),
            Some(&("t-b".to_string(), 0)),
            "the old task is asked to stop before anything is queued: {calls:?}"
        );
        let log = read_all_events(store.as_ref(), "r").await.unwrap();
        let said = engine_messages(&log);
        assert!(
            said.iter()
                .any(|m| m == "resume: asked 1 task of the attempt it replaces to stop (t-b)"),
            "{said:?}"
        );
        let engine_at = log
            .iter()
            .position(|e| matches!(&e.kind, EventKind::EngineEvent { message } if message.contains("t-b")))
            .unwrap();
        let requeued_at = log
            .iter()
            .position(|e| matches!(&e.kind, EventKind::StepQueued { attempt: 2, .. }))
            .unwrap();
        assert!(engine_at < requeued_at, "{log:?}");
    }

    #[tokio::test]
    async fn without_cancellation_the_log_says_old_tasks_may_still_run() {
        let store = Arc::new(InMemoryRunStore::new());
        let launcher = launcher_on(&store);
        recorded(&store, "r", StoredStatus::Canceled).await;
        let queued = |step: &str, task: &str| {
            Event::step(
                "r",
                step,
                EventKind::StepQueued {
                    attempt: 1,
                    task_id: task.into(),
                },
            )
        };
        store
            .append_events("r", &[queued("b", "t-b"), queued("c", "t-c")])
            .await
            .unwrap();
        let job = Arc::new(
            Job::builder("j")
                .step(stepq_plan::StepDef::new("a", "op").output("result"))
                .build()
                .unwrap(),
        );
        // `b` and `c` are no steps of the job any more: nothing runs, but their tasks may.
        let run = launcher.resume("r", "me", false, job).await.unwrap();
        assert_eq!(run.wait().await.result.status, crate::RunStatus::Success);
        let log = read_all_events(store.as_ref(), "r").await.unwrap();
        assert!(
            engine_messages(&log).contains(
                &"resume: 2 tasks of the attempt it replaces may still run on their workers, cancellation is off (t-b, t-c)".to_string()
            ),
            "{log:?}"
        );
    }
}
