//! The `--json` shapes of `stepq runs`, `status`, `logs`, `jobs` and `worker list`: serde
//! structs with stable snake_case field names, documented in `docs/operations.md`
//! ("Machine-readable output"). Times are RFC 3339 text (UTC, microseconds) plus the same
//! time as an integer of microseconds since the Unix epoch (`*_us`); durations are integer
//! microseconds (`*_us`); run statuses are the upper-case names (`SUCCESS`). An absent
//! optional value is `null`, so every key is always there.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use stepq_plan::{ErrorInfo, Event, EventKind, SkipReason};
use stepq_runs::{RunRecord, RunningTask, WorkerHealth, WorkerState};

use super::failure::Failure;
use super::timestamps::rfc3339;
use crate::report::StepRow;

/// Prints `document` as one (pretty) JSON document on stdout.
pub(super) fn print_document(document: &impl Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(document)
        .map_err(|e| Failure::runtime(format!("cannot write JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

/// Prints `line` as one compact JSON line on stdout (JSON lines).
pub(super) fn print_line(line: &impl Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string(line)
        .map_err(|e| Failure::runtime(format!("cannot write JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// `stepq runs --json`.
#[derive(Debug, Serialize)]
pub(super) struct RunsDocument {
    /// The runs, newest first.
    pub(super) runs: Vec<RunJson>,
}

/// A run record.
#[derive(Debug, Serialize)]
pub(super) struct RunJson {
    pub(super) run_id: String,
    pub(super) job_name: String,
    /// Upper-case status (`QUEUED` ... `CANCELED`).
    pub(super) status: String,
    pub(super) tags: BTreeMap<String, String>,
    /// Selected step keys; `null` runs every step.
    pub(super) step_selection: Option<Vec<String>>,
    pub(super) run_config: serde_json::Value,
    pub(super) config_digest: String,
    pub(super) created_at: String,
    pub(super) created_at_us: u64,
    pub(super) started_at: Option<String>,
    pub(super) started_at_us: Option<u64>,
    pub(super) ended_at: Option<String>,
    pub(super) ended_at_us: Option<u64>,
    /// Start to end, once both are known.
    pub(super) duration_us: Option<u64>,
    pub(super) orchestrator: Option<String>,
}

impl From<&RunRecord> for RunJson {
    fn from(r: &RunRecord) -> Self {
        RunJson {
            run_id: r.run_id.clone(),
            job_name: r.job_name.clone(),
            status: r.status.to_string(),
            tags: r.tags.clone(),
            step_selection: r.step_selection.clone(),
            run_config: r.run_config.clone(),
            config_digest: r.config_digest.clone(),
            created_at: rfc3339(r.created_at),
            created_at_us: r.created_at,
            started_at: r.started_at.map(rfc3339),
            started_at_us: r.started_at,
            ended_at: r.ended_at.map(rfc3339),
            ended_at_us: r.ended_at,
            duration_us: super::status::record_duration(r).map(micros),
            orchestrator: r.orchestrator.clone(),
        }
    }
}

/// `stepq status RUN_ID --json`.
#[derive(Debug, Serialize)]
pub(super) struct StatusDocument {
    pub(super) run: RunJson,
    /// The steps, in the order they first appear in the event log.
    pub(super) steps: Vec<StepJson>,
    /// What the workers' heartbeats say about the run's in-flight tasks (a task on a lost
    /// worker, the orchestration task's worker), one sentence each.
    pub(super) notes: Vec<String>,
}

/// A step of `stepq status`.
#[derive(Debug, Serialize)]
pub(super) struct StepJson {
    pub(super) step: String,
    /// `SUCCEEDED`, `FAILED`, `SKIPPED`, `CANCELED`, or for a run still going `QUEUED`,
    /// `RUNNING`, `RETRYING`.
    pub(super) status: String,
    pub(super) attempts: u32,
    pub(super) worker: Option<String>,
    pub(super) queue_wait_us: Option<u64>,
    pub(super) duration_us: Option<u64>,
    /// The error of a failed step, or why it was skipped.
    pub(super) detail: Option<String>,
}

impl From<&StepRow> for StepJson {
    fn from(row: &StepRow) -> Self {
        StepJson {
            step: row.step.clone(),
            status: row.status.clone(),
            attempts: row.attempts,
            worker: row.worker.clone(),
            queue_wait_us: row.queue_wait.map(micros),
            duration_us: row.duration.map(micros),
            detail: row.detail.clone(),
        }
    }
}

/// One line of `stepq logs --json`: an event, its kind's fields flattened into it.
#[derive(Debug, Serialize)]
pub(super) struct EventJson {
    pub(super) run_id: String,
    /// `null` for run-level events.
    pub(super) step_key: Option<String>,
    pub(super) timestamp: String,
    pub(super) timestamp_us: u64,
    /// The text line `stepq logs` prints for it (without the time).
    pub(super) message: String,
    #[serde(flatten)]
    pub(super) kind: KindJson,
}

impl From<&Event> for EventJson {
    fn from(event: &Event) -> Self {
        EventJson {
            run_id: event.run_id.clone(),
            step_key: event.step_key.clone(),
            timestamp: rfc3339(event.timestamp_us),
            timestamp_us: event.timestamp_us,
            message: crate::progress::describe_event(event),
            kind: KindJson::from(&event.kind),
        }
    }
}

/// The event kinds: `kind` is the snake_case name, the other fields are the kind's own.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum KindJson {
    RunStarting,
    RunStarted,
    RunSuccess,
    RunFailure {
        errors: Vec<ErrorJson>,
    },
    RunCanceled,
    StepQueued {
        attempt: u32,
        task_id: String,
    },
    StepStart {
        attempt: u32,
        worker: String,
    },
    StepInputLoaded {
        input: String,
        bytes: u64,
    },
    StepOutputHandled {
        output: String,
        bytes: u64,
    },
    StepSuccess {
        duration_us: u64,
    },
    StepFailure {
        error: ErrorJson,
        will_retry: bool,
    },
    StepSkipped {
        /// `upstream_not_succeeded` or `output_not_emitted`.
        reason: &'static str,
        upstream: String,
        /// The output not emitted (`output_not_emitted` only).
        output: Option<String>,
    },
    StepRetry {
        attempt: u32,
        delay_us: u64,
    },
    StepCanceled,
    EngineEvent,
}

impl From<&EventKind> for KindJson {
    fn from(kind: &EventKind) -> Self {
        match kind {
            EventKind::RunStarting => KindJson::RunStarting,
            EventKind::RunStarted => KindJson::RunStarted,
            EventKind::RunSuccess => KindJson::RunSuccess,
            EventKind::RunFailure { errors } => KindJson::RunFailure {
                errors: errors.iter().map(ErrorJson::from).collect(),
            },
            EventKind::RunCanceled => KindJson::RunCanceled,
            EventKind::StepQueued { attempt, task_id } => KindJson::StepQueued {
                attempt: *attempt,
                task_id: task_id.clone(),
            },
            EventKind::StepStart { attempt, worker } => KindJson::StepStart {
                attempt: *attempt,
                worker: worker.clone(),
            },
            EventKind::StepInputLoaded { input, bytes } => KindJson::StepInputLoaded {
                input: input.clone(),
                bytes: *bytes,
            },
            EventKind::StepOutputHandled { output, bytes } => KindJson::StepOutputHandled {
                output: output.clone(),
                bytes: *bytes,
            },
            EventKind::StepSuccess { duration } => KindJson::StepSuccess {
                duration_us: micros(*duration),
            },
            EventKind::StepFailure { error, will_retry } => KindJson::StepFailure {
                error: error.into(),
                will_retry: *will_retry,
            },
            EventKind::StepSkipped { reason } => match reason {
                SkipReason::UpstreamNotSucceeded { upstream } => KindJson::StepSkipped {
                    reason: "upstream_not_succeeded",
                    upstream: upstream.clone(),
                    output: None,
                },
                SkipReason::OutputNotEmitted { upstream, output } => KindJson::StepSkipped {
                    reason: "output_not_emitted",
                    upstream: upstream.clone(),
                    output: Some(output.clone()),
                },
            },
            EventKind::StepRetry { attempt, delay } => KindJson::StepRetry {
                attempt: *attempt,
                delay_us: micros(*delay),
            },
            EventKind::StepCanceled => KindJson::StepCanceled,
            // Its text is the event's `message`.
            EventKind::EngineEvent { .. } => KindJson::EngineEvent,
        }
    }
}

/// An error as events carry it.
#[derive(Debug, Serialize)]
pub(super) struct ErrorJson {
    /// The failure kind, e.g. `op_error`, `command_failed`, `timeout`.
    pub(super) kind: String,
    pub(super) message: String,
    /// Causes, outermost first.
    pub(super) causes: Vec<String>,
}

impl From<&ErrorInfo> for ErrorJson {
    fn from(e: &ErrorInfo) -> Self {
        ErrorJson {
            kind: e.kind.to_string(),
            message: e.message.clone(),
            causes: e.causes.clone(),
        }
    }
}

/// `stepq jobs --json`.
#[derive(Debug, Serialize)]
pub(super) struct JobsDocument {
    pub(super) jobs: Vec<JobJson>,
}

/// A job of the code location or of a jobs file.
#[derive(Debug, Serialize)]
pub(super) struct JobJson {
    pub(super) name: String,
    /// Step keys, in the job's topological order.
    pub(super) steps: Vec<String>,
    /// `code_location` or `jobs_file`.
    pub(super) source: &'static str,
    /// The jobs file (`jobs_file` only).
    pub(super) path: Option<String>,
    pub(super) description: Option<String>,
}

/// `stepq worker list --json`.
#[derive(Debug, Serialize)]
pub(super) struct WorkersDocument {
    /// `embedded` or `distributed`.
    pub(super) mode: &'static str,
    /// The task queue's depth (`null` on the embedded default: each `stepq run` has its own
    /// in-memory queue).
    pub(super) queue: Option<QueueJson>,
    /// The heartbeat interval a worker's silence is measured in (lost after three).
    pub(super) health_interval_us: u64,
    /// Every worker with a heartbeat, by worker id.
    pub(super) workers: Vec<WorkerJson>,
}

/// The task queue's depth.
#[derive(Debug, Serialize)]
pub(super) struct QueueJson {
    pub(super) url: String,
    pub(super) visible: u64,
    pub(super) not_visible: u64,
    pub(super) delayed: u64,
}

/// A worker's last heartbeat and its health.
#[derive(Debug, Serialize)]
pub(super) struct WorkerJson {
    pub(super) worker_id: String,
    pub(super) host: String,
    pub(super) pid: u32,
    /// `LIVE` or `LOST`.
    pub(super) health: &'static str,
    pub(super) tasks_running: u64,
    pub(super) tasks_done: u64,
    pub(super) started_at: String,
    pub(super) started_at_us: u64,
    pub(super) last_seen: String,
    pub(super) last_seen_us: u64,
    /// When it counts (or counted) as lost without a new heartbeat.
    pub(super) lost_at: String,
    pub(super) lost_at_us: u64,
    pub(super) running_tasks: Vec<TaskJson>,
}

impl WorkerJson {
    pub(super) fn new(state: &WorkerState, interval: Duration) -> Self {
        let h = &state.heartbeat;
        let lost_at = h.lost_at(interval);
        WorkerJson {
            worker_id: h.worker_id.clone(),
            host: h.host.clone(),
            pid: h.pid,
            health: match state.health {
                WorkerHealth::Live => "LIVE",
                WorkerHealth::Lost => "LOST",
            },
            tasks_running: h.tasks_running,
            tasks_done: h.tasks_done,
            started_at: rfc3339(h.started_at),
            started_at_us: h.started_at,
            last_seen: rfc3339(h.last_seen),
            last_seen_us: h.last_seen,
            lost_at: rfc3339(lost_at),
            lost_at_us: lost_at,
            running_tasks: h.running_tasks.iter().map(TaskJson::from).collect(),
        }
    }
}

/// A task a worker runs.
#[derive(Debug, Serialize)]
pub(super) struct TaskJson {
    pub(super) task_id: String,
    pub(super) task_name: String,
    pub(super) run_id: Option<String>,
    /// Every step it runs, in order (one for a step task, several for a fused chain, none for
    /// an orchestration task).
    pub(super) steps: Vec<String>,
    pub(super) since: String,
    pub(super) since_us: u64,
}

impl From<&RunningTask> for TaskJson {
    fn from(t: &RunningTask) -> Self {
        TaskJson {
            task_id: t.task_id.clone(),
            task_name: t.task_name.clone(),
            run_id: t.run_id.clone(),
            steps: t.steps().into_iter().map(str::to_string).collect(),
            since: rfc3339(t.since),
            since_us: t.since,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use stepq_runs::{RunStatus, WorkerHeartbeat};

    #[test]
    fn a_run_has_every_key_with_times_as_text_and_microseconds() {
        let mut record = RunRecord::new("r1", "etl", json!({"k": 1})).with_tag("owner", "me");
        record.created_at = 1_700_000_000_000_000;
        record.started_at = Some(1_700_000_001_000_000);
        record.ended_at = Some(1_700_000_003_500_000);
        record.status = RunStatus::Failure;
        let value = serde_json::to_value(RunJson::from(&record)).unwrap();
        assert_eq!(value["status"], "FAILURE");
        assert_eq!(value["created_at"], "2023-11-14T22:13:20.000000Z");
        assert_eq!(value["created_at_us"], 1_700_000_000_000_000_u64);
        assert_eq!(value["started_at"], "2023-11-14T22:13:21.000000Z");
        assert_eq!(value["duration_us"], 2_500_000);
        assert_eq!(value["tags"], json!({"owner": "me"}));
        assert_eq!(value["orchestrator"], json!(null));
        assert_eq!(value["step_selection"], json!(null));
        assert_eq!(value["run_config"], json!({"k": 1}));
    }

    #[test]
    fn events_flatten_their_kind_with_snake_case_names() {
        let mut event = Event::step(
            "r1",
            "load",
            EventKind::StepFailure {
                error: ErrorInfo::new("op_error", "boom"),
                will_retry: true,
            },
        );
        event.timestamp_us = 1_000_001;
        let value = serde_json::to_value(EventJson::from(&event)).unwrap();
        assert_eq!(
            value,
            json!({
                "run_id": "r1",
                "step_key": "load",
                "timestamp": "1970-01-01T00:00:01.000001Z",
                "timestamp_us": 1_000_001,
                "message": "load failed, will retry: [op_error] boom",
                "kind": "step_failure",
                "error": {"kind": "op_error", "message": "boom", "causes": []},
                "will_retry": true,
            })
        );
        let success = Event::step(
            "r1",
            "load",
            EventKind::StepSuccess {
                duration: Duration::from_millis(3),
            },
        );
        let value = serde_json::to_value(EventJson::from(&success)).unwrap();
        assert_eq!(value["kind"], "step_success");
        assert_eq!(value["duration_us"], 3_000);
        let run = serde_json::to_value(EventJson::from(&Event::run("r1", EventKind::RunStarted)))
            .unwrap();
        assert_eq!(run["kind"], "run_started");
        assert_eq!(run["step_key"], json!(null));
        let skipped = Event::step(
            "r1",
            "b",
            EventKind::StepSkipped {
                reason: SkipReason::UpstreamNotSucceeded {
                    upstream: "a".into(),
                },
            },
        );
        let value = serde_json::to_value(EventJson::from(&skipped)).unwrap();
        assert_eq!(value["reason"], "upstream_not_succeeded");
        assert_eq!(value["upstream"], "a");
        assert_eq!(value["output"], json!(null));
    }

    #[test]
    fn workers_show_health_in_upper_case_and_their_tasks_steps() {
        let mut heartbeat = WorkerHeartbeat::new("w1", "host", 7);
        heartbeat.running_tasks.push(RunningTask {
            task_id: "t1".into(),
            task_name: "execute_plan".into(),
            run_id: Some("r1".into()),
            step_key: Some("a".into()),
            step_keys: vec!["a".into(), "b".into()],
            since: 5,
        });
        let state = WorkerState {
            heartbeat,
            health: WorkerHealth::Lost,
        };
        let value = serde_json::to_value(WorkerJson::new(&state, Duration::from_secs(1))).unwrap();
        assert_eq!(value["health"], "LOST");
        assert_eq!(value["running_tasks"][0]["steps"], json!(["a", "b"]));
        assert_eq!(value["running_tasks"][0]["since_us"], 5);
        assert_eq!(
            value["lost_at_us"].as_u64().unwrap() - value["last_seen_us"].as_u64().unwrap(),
            3_000_000
        );
    }
}
