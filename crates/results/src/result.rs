//! `TaskResult`, as TaskIQ has it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The error of a failed task, as stored in its result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    /// Error type name, e.g. `UnknownStep`, `OpError`.
    pub kind: String,
    /// Message.
    pub message: String,
}

/// The result of one task. Serialized as JSON with TaskIQ's field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// Whether the task failed.
    pub is_err: bool,
    /// What the task returned (JSON).
    pub return_value: serde_json::Value,
    /// Seconds the task ran.
    pub execution_time: f64,
    /// Labels of the task message.
    #[serde(default)]
    pub labels: BTreeMap<String, serde_json::Value>,
    /// The error, when `is_err`.
    #[serde(default)]
    pub error: Option<TaskError>,
    /// Captured log, if any; dropped by `get_result(.., with_logs = false)`.
    #[serde(default)]
    pub log: Option<String>,
}

impl TaskResult {
    /// A successful result.
    pub fn ok(return_value: serde_json::Value, execution_time: f64) -> Self {
        TaskResult {
            is_err: false,
            return_value,
            execution_time,
            labels: BTreeMap::new(),
            error: None,
            log: None,
        }
    }

    /// A failed result.
    pub fn err(kind: impl Into<String>, message: impl Into<String>, execution_time: f64) -> Self {
        TaskResult {
            is_err: true,
            return_value: serde_json::Value::Null,
            execution_time,
            labels: BTreeMap::new(),
            error: Some(TaskError {
                kind: kind.into(),
                message: message.into(),
            }),
            log: None,
        }
    }

    /// Encodes as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("TaskResult always serializes")
    }

    /// Decodes JSON bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
