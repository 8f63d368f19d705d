//! The wire protocol between orchestrators and workers: task names, and how step arguments and
//! step reports ride inside TaskIQ messages and results.
//!
//! An `execute_plan` message carries `kwargs = {"execute_step_args_packed": "<base64>"}` where
//! the base64 text is [`stepq_plan::pack()`] of an [`ExecuteStepArgs`]; its labels carry `run_id`,
//! `job_name` and `step_key` (the first step) for routing and observability, and a task of
//! more than one step also `step_keys`: all of them, in order, as a JSON array in a string
//! ([`labelled_step_keys`] reads them back). The result's `return_value` is a JSON
//! array of base64 strings, each a packed [`StepReport`] (one per step key of the task).
//!
//! What the executor sends and expects (see [`crate::Executor`]):
//! - Usually one step per task; with `ExecutorConfig::fuse_chains` a linear run of steps
//!   (each reading only from the one before) goes as one task, `step_keys` in order. `attempt`
//!   is the first step's attempt number (1-based, counting attempts of earlier runs of the
//!   same run id); every step's own number is in `known_state.attempts`
//!   ([`ExecuteStepArgs::attempt_of`]).
//! - `known_state` is the slice the first step needs: the emitted outputs of its upstream
//!   steps and the attempt counts, not the whole run's state (keeps each message O(inputs)).
//! - `inline_inputs` may carry some of the first step's inputs (bytes as stored); the worker
//!   reads the others from the output store. A later step of a fused task gets its inputs
//!   from the step before it, in the worker's memory.
//! - The worker runs the steps in order and stops after the first one that does not succeed,
//!   or before one whose input an earlier step did not emit: the result has one report per
//!   step it started, in order; a step without a report was not run. Every output is stored
//!   before a step reports success; small ones are also copied into the report
//!   (`inline_outputs`) for the executor to hand to downstream steps.
//! - A report's `events` are the worker's: `StepStart` (its timestamp ends the queue wait),
//!   `StepInputLoaded`, `StepOutputHandled`, `EngineEvent`, and `StepSuccess` (whose duration
//!   is taken as the op's run time). The outcome goes in the report's `status`. The executor
//!   emits the orchestration events itself (`StepQueued`, `StepSuccess`, `StepFailure` with
//!   `will_retry`, `StepRetry`, `StepSkipped`, `StepCanceled`, run events) and drops any of
//!   those a report carries.
//! - Progress (when the message is labelled [`PROGRESS_LABEL`]): right before each step of
//!   the task starts, the worker stores a [`TaskProgress`] in the result backend under
//!   [`progress_key`]`(task_id, n)`, `n` = 1, 2, … (entry `n` before the task's `n`-th step):
//!   that step's `StepStart` and the reports of the steps that succeeded since entry `n - 1`.
//!   They go out in order, all before the task's result. The executor waits for entry `n`,
//!   records it, deletes it and waits for `n + 1` until the task's result arrives. A worker
//!   that does not know the label writes none (the result still carries everything); an
//!   orchestrator that does not set it gets none.
//! - A worker-side failure to run the task at all (unknown job or step, undecodable args) is a
//!   failed task result (`is_err`); the executor records it as a failure of the step.

use base64::Engine;
use stepq_broker::{TaskMessage, NO_REPLY_LABEL};
use stepq_plan::{
    pack, unpack, ExecuteRunArgs, ExecuteStepArgs, PackError, Packable, ResumeRunArgs, StepReport,
    TaskProgress,
};

/// Task name of a step execution.
pub const EXECUTE_PLAN: &str = "stepq.execute_plan";
/// Task name of a whole-run orchestration on a worker.
pub const EXECUTE_JOB: &str = "stepq.execute_job";
/// Task name of a run resumption on a worker.
pub const RESUME_JOB: &str = "stepq.resume_job";

/// kwargs key of packed step args.
pub const STEP_ARGS_KWARG: &str = "execute_step_args_packed";
/// kwargs key of packed run args.
pub const RUN_ARGS_KWARG: &str = "execute_job_args_packed";
/// kwargs key of packed resume args.
pub const RESUME_ARGS_KWARG: &str = "resume_job_args_packed";

/// Why a protocol payload could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The message lacks the expected kwarg.
    #[error("task `{task_name}` has no `{kwarg}` keyword argument")]
    MissingKwarg {
        /// Task name.
        task_name: String,
        /// Missing key.
        kwarg: &'static str,
    },
    /// A payload is not valid base64 text.
    #[error("`{what}` is not base64 text: {reason}")]
    Base64 {
        /// Which payload.
        what: &'static str,
        /// Decoder message.
        reason: String,
    },
    /// A payload does not unpack.
    #[error(transparent)]
    Pack(#[from] PackError),
    /// A result's return value has the wrong shape.
    #[error("result return value is not a list of packed step reports: {reason}")]
    BadReturnValue {
        /// What is wrong.
        reason: String,
    },
    /// A progress entry's return value has the wrong shape.
    #[error("progress entry is not a packed string: {reason}")]
    BadProgress {
        /// What is wrong.
        reason: String,
    },
}

fn b64() -> &'static base64::engine::GeneralPurpose {
    &base64::engine::general_purpose::STANDARD
}

/// Packs `value` as base64 text.
pub fn pack_b64<T: Packable>(value: &T) -> Result<String, PackError> {
    Ok(b64().encode(pack(value)?))
}

/// Unpacks base64 text.
pub fn unpack_b64<T: Packable>(what: &'static str, text: &str) -> Result<T, ProtocolError> {
    let bytes = b64().decode(text).map_err(|e| ProtocolError::Base64 {
        what,
        reason: e.to_string(),
    })?;
    Ok(unpack(&bytes)?)
}

fn message_with<T: Packable>(
    task_name: &str,
    kwarg: &str,
    value: &T,
) -> Result<TaskMessage, PackError> {
    let mut msg = TaskMessage::new(task_name);
    msg.kwargs.insert(
        kwarg.to_string(),
        serde_json::Value::String(pack_b64(value)?),
    );
    Ok(msg)
}

fn read_kwarg<T: Packable>(msg: &TaskMessage, kwarg: &'static str) -> Result<T, ProtocolError> {
    let text = msg
        .kwargs
        .get(kwarg)
        .and_then(|v| v.as_str())
        .ok_or_else(|| ProtocolError::MissingKwarg {
            task_name: msg.task_name.clone(),
            kwarg,
        })?;
    unpack_b64(kwarg, text)
}

/// Label of an `execute_plan` message naming its first step.
pub const STEP_KEY_LABEL: &str = "step_key";
/// Label of an `execute_plan` message of more than one step (a fused chain): all its step
/// keys, in order, as a JSON array of strings encoded in the label's string (a step key may
/// contain any character).
pub const STEP_KEYS_LABEL: &str = "step_keys";

/// Step tag naming the queue a step is sent to (`stepq_broker::routing::QUEUE_LABEL` on its
/// message); absent: the default queue. Steps of one fused task share their tags, so a
/// chain never crosses queues.
pub const QUEUE_TAG: &str = "stepq/queue";
/// Step tag (and run tag, for every step of the run that has none) naming a step's priority
/// level (`stepq_broker::routing::PRIORITY_LABEL` on its message).
pub const PRIORITY_TAG: &str = "stepq/priority";

/// Label of an `execute_plan` message asking its worker for progress entries (see the
/// [crate docs](crate)); its value is the number of steps of the task.
pub const PROGRESS_LABEL: &str = "progress";

/// Key in the result backend of progress entry `seq` (1-based) of task `task_id`.
pub fn progress_key(task_id: &str, seq: u32) -> String {
    format!("{task_id}.progress.{seq}")
}

/// Encodes a progress entry as a result return value: one packed string.
pub fn progress_value(progress: &TaskProgress) -> Result<serde_json::Value, PackError> {
    pack_b64(progress).map(serde_json::Value::String)
}

/// Decodes a progress entry from a result return value.
pub fn read_progress(value: &serde_json::Value) -> Result<TaskProgress, ProtocolError> {
    let text = value.as_str().ok_or_else(|| ProtocolError::BadProgress {
        reason: format!("got {}", json_kind(value)),
    })?;
    unpack_b64("progress entry", text)
}

/// Builds an `execute_plan` message for `args`, labelled with run, job and first step key, and
/// with all its step keys ([`STEP_KEYS_LABEL`]) when it has more than one.
pub fn step_message(args: &ExecuteStepArgs) -> Result<TaskMessage, PackError> {
    let mut msg = message_with(EXECUTE_PLAN, STEP_ARGS_KWARG, args)?
        .with_label("run_id", args.run_id.clone())
        .with_label("job_name", args.job_name.clone());
    if let Some(step) = args.step_keys.first() {
        msg = msg.with_label(STEP_KEY_LABEL, step.clone());
    }
    if args.step_keys.len() > 1 {
        let keys = serde_json::to_string(&args.step_keys).expect("strings serialize");
        msg = msg.with_label(STEP_KEYS_LABEL, keys);
    }
    Ok(msg)
}

/// The step keys a message's labels name, in order: those of its [`STEP_KEYS_LABEL`] if it
/// reads as a JSON array of strings, else its [`STEP_KEY_LABEL`] alone, else none. For
/// observability (heartbeats, `stepq status`); the packed args are what a worker runs.
pub fn labelled_step_keys(msg: &TaskMessage) -> Vec<String> {
    if let Some(keys) = msg
        .label(STEP_KEYS_LABEL)
        .and_then(|text| serde_json::from_str::<Vec<String>>(text).ok())
    {
        return keys;
    }
    msg.label(STEP_KEY_LABEL)
        .map(|key| vec![key.to_string()])
        .unwrap_or_default()
}

/// Reads the step args of an `execute_plan` message.
pub fn read_step_args(msg: &TaskMessage) -> Result<ExecuteStepArgs, ProtocolError> {
    read_kwarg(msg, STEP_ARGS_KWARG)
}

/// Builds an `execute_job` message. Labelled [`NO_REPLY_LABEL`]: a launched run is left to
/// its worker, so no reply queue is made for it and its result is stored durably.
pub fn run_message(args: &ExecuteRunArgs) -> Result<TaskMessage, PackError> {
    Ok(message_with(EXECUTE_JOB, RUN_ARGS_KWARG, args)?
        .with_label(NO_REPLY_LABEL, "true")
        .with_label("run_id", args.run_id.clone())
        .with_label("job_name", args.job_name.clone()))
}

/// Reads the args of an `execute_job` message.
pub fn read_run_args(msg: &TaskMessage) -> Result<ExecuteRunArgs, ProtocolError> {
    read_kwarg(msg, RUN_ARGS_KWARG)
}

/// Builds a `resume_job` message, labelled [`NO_REPLY_LABEL`] like [`run_message`]'s.
pub fn resume_message(args: &ResumeRunArgs) -> Result<TaskMessage, PackError> {
    Ok(message_with(RESUME_JOB, RESUME_ARGS_KWARG, args)?
        .with_label(NO_REPLY_LABEL, "true")
        .with_label("run_id", args.run_id.clone())
        .with_label("job_name", args.job_name.clone()))
}

/// Reads the args of a `resume_job` message.
pub fn read_resume_args(msg: &TaskMessage) -> Result<ResumeRunArgs, ProtocolError> {
    read_kwarg(msg, RESUME_ARGS_KWARG)
}

/// Encodes step reports as a result return value.
pub fn reports_value(reports: &[StepReport]) -> Result<serde_json::Value, PackError> {
    reports
        .iter()
        .map(|r| pack_b64(r).map(serde_json::Value::String))
        .collect::<Result<Vec<_>, _>>()
        .map(serde_json::Value::Array)
}

/// Decodes step reports from a result return value.
pub fn read_reports(value: &serde_json::Value) -> Result<Vec<StepReport>, ProtocolError> {
    let items = value
        .as_array()
        .ok_or_else(|| ProtocolError::BadReturnValue {
            reason: format!("expected an array, got {}", json_kind(value)),
        })?;
    items
        .iter()
        .map(|item| {
            let text = item.as_str().ok_or_else(|| ProtocolError::BadReturnValue {
                reason: format!("expected a string item, got {}", json_kind(item)),
            })?;
            unpack_b64("step report", text)
        })
        .collect()
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stepq_plan::KnownState;

    fn args(step_keys: &[&str]) -> ExecuteStepArgs {
        ExecuteStepArgs {
            run_id: "r1".into(),
            job_name: "j".into(),
            known_state: KnownState::default(),
            step_keys: step_keys.iter().map(|k| k.to_string()).collect(),
            retry_mode: Default::default(),
            attempt: 1,
            run_config: serde_json::Value::Null,
            inline_inputs: Vec::new(),
        }
    }

    #[test]
    fn progress_entries_round_trip_under_their_own_keys() {
        let progress = TaskProgress {
            finished: Vec::new(),
            started: None,
        };
        let value = progress_value(&progress).unwrap();
        assert_eq!(read_progress(&value).unwrap(), progress);
        assert!(read_progress(&serde_json::json!([1])).is_err());
        assert_eq!(progress_key("t-1", 2), "t-1.progress.2");
        assert_ne!(progress_key("t-1", 1), progress_key("t-1", 2));
    }

    #[test]
    fn a_one_step_message_names_its_step_only() {
        let msg = step_message(&args(&["only"])).unwrap();
        assert_eq!(msg.label("run_id"), Some("r1"));
        assert_eq!(msg.label(STEP_KEY_LABEL), Some("only"));
        assert_eq!(msg.label(STEP_KEYS_LABEL), None);
        assert_eq!(labelled_step_keys(&msg), ["only"]);
        assert_eq!(read_step_args(&msg).unwrap().step_keys, ["only"]);
    }

    #[test]
    fn a_fused_message_names_all_its_steps_whatever_their_characters() {
        let keys = ["a", "b, \"quoted\" [x]", "c\\d\n\u{e9}"];
        let msg = step_message(&args(&keys)).unwrap();
        assert_eq!(msg.label(STEP_KEY_LABEL), Some("a"));
        assert_eq!(labelled_step_keys(&msg), keys);
        // Still a string label for TaskIQ (its STR type code), and through JSON and back.
        assert_eq!(
            msg.labels_types.get(STEP_KEYS_LABEL),
            Some(&stepq_broker::LABEL_TYPE_STR)
        );
        let back = TaskMessage::from_json(&msg.to_json()).unwrap();
        assert_eq!(labelled_step_keys(&back), keys);
    }

    #[test]
    fn unreadable_step_keys_labels_fall_back_to_the_first_step() {
        let msg = TaskMessage::new(EXECUTE_PLAN)
            .with_label(STEP_KEY_LABEL, "a")
            .with_label(STEP_KEYS_LABEL, "not json");
        assert_eq!(labelled_step_keys(&msg), ["a"]);
        let msg = TaskMessage::new(EXECUTE_PLAN).with_label(STEP_KEYS_LABEL, "[1, 2]");
        assert!(labelled_step_keys(&msg).is_empty());
        assert!(labelled_step_keys(&TaskMessage::new(EXECUTE_PLAN)).is_empty());
    }
}
