//! The task envelope, in TaskIQ's message shape, encoded as JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::BrokerError;

/// Label of a message whose sender does not wait on a notification for its result (a
/// long-lived task launched and left, e.g. a run's orchestration): middleware that gives
/// messages a reply address (the SQS reply queue) leaves it without one, and its result is
/// stored durably for whoever looks it up later.
pub const NO_REPLY_LABEL: &str = "no_reply";

/// A task message: `{task_id, task_name, labels, labels_types, args, kwargs}` as TaskIQ has it,
/// so Python TaskIQ producers and consumers can share a queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskMessage {
    /// Unique id of this task (a UUID v4 in hyphenated hex).
    pub task_id: String,
    /// Name of the registered task to run.
    pub task_name: String,
    /// Labels (free metadata; e.g. `run_id`, `step_key`).
    #[serde(default)]
    pub labels: BTreeMap<String, serde_json::Value>,
    /// TaskIQ's label type codes (0 = str, 1 = int, 2 = str-bool ...), kept as received.
    #[serde(default)]
    pub labels_types: BTreeMap<String, i64>,
    /// Positional arguments.
    #[serde(default)]
    pub args: Vec<serde_json::Value>,
    /// Keyword arguments.
    #[serde(default)]
    pub kwargs: serde_json::Map<String, serde_json::Value>,
}

impl TaskMessage {
    /// A message for `task_name` with a fresh task id and no arguments.
    pub fn new(task_name: impl Into<String>) -> Self {
        TaskMessage {
            task_id: uuid::Uuid::new_v4().to_string(),
            task_name: task_name.into(),
            labels: BTreeMap::new(),
            labels_types: BTreeMap::new(),
            args: Vec::new(),
            kwargs: serde_json::Map::new(),
        }
    }

    /// Sets a string label (TaskIQ label type 0).
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        self.labels_types.insert(key.clone(), 0);
        self.labels
            .insert(key, serde_json::Value::String(value.into()));
        self
    }

    /// A string label's value.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).and_then(|v| v.as_str())
    }

    /// Encodes as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("TaskMessage always serializes")
    }

    /// Decodes JSON bytes; anything else is [`BrokerError::Malformed`] naming the problem.
    pub fn from_json(bytes: &[u8]) -> Result<Self, BrokerError> {
        let msg: TaskMessage =
            serde_json::from_slice(bytes).map_err(|e| BrokerError::Malformed {
                reason: format!("not a task message: {e}"),
            })?;
        if msg.task_id.is_empty() {
            return Err(BrokerError::Malformed {
                reason: "empty task_id".into(),
            });
        }
        if msg.task_name.is_empty() {
            return Err(BrokerError::Malformed {
                reason: format!("empty task_name in task {}", msg.task_id),
            });
        }
        Ok(msg)
    }

    /// Best-effort task id of a body that may not decode fully, so a failed result can still
    /// be stored for it.
    pub fn salvage_task_id(bytes: &[u8]) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        v.get("task_id")?
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }
}
