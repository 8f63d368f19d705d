//! `TaskResult`, as TaskIQ has it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use stepq_core::FailureKind;

/// The error of a failed task, as stored in its result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    /// What kind of failure, e.g. [`FailureKind::UnknownTask`], or the exception name a
    /// TaskIQ peer stored ([`FailureKind::Other`]); a plain string in the JSON.
    pub kind: FailureKind,
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
    pub fn err(
        kind: impl Into<FailureKind>,
        message: impl Into<String>,
        execution_time: f64,
    ) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed result as stored before `kind` was typed (and as TaskIQ peers write it).
    fn stored(kind: &str) -> String {
        format!(
            r#"{{"is_err":true,"return_value":null,"execution_time":0.5,"labels":{{}},"error":{{"kind":"{kind}","message":"boom"}},"log":null}}"#
        )
    }

    #[test]
    fn stored_results_decode_and_encode_byte_for_byte() {
        for kind in ["Panic", "UnknownTask", "Canceled", "ValueError", "op_error"] {
            let json = stored(kind);
            let result = TaskResult::from_json(json.as_bytes()).unwrap();
            assert_eq!(result.error.as_ref().unwrap().kind.as_str(), kind);
            assert_eq!(String::from_utf8(result.to_json()).unwrap(), json);
        }
    }

    #[test]
    fn old_spellings_decode_to_the_known_kind() {
        let result = TaskResult::from_json(stored("panic").as_bytes()).unwrap();
        let kind = &result.error.as_ref().unwrap().kind;
        assert!(matches!(kind, FailureKind::Panic), "{kind:?}");
        assert_eq!(
            String::from_utf8(result.to_json()).unwrap(),
            stored("Panic")
        );
    }

    #[test]
    fn err_takes_a_kind_or_a_string() {
        let typed = TaskResult::err(FailureKind::UnknownTask, "no such task", 0.0);
        let named = TaskResult::err("UnknownTask", "no such task", 0.0);
        assert_eq!(typed, named);
        let python = TaskResult::err(String::from("builtins.KeyError"), "k", 0.0);
        assert_eq!(
            python.error.unwrap().kind,
            FailureKind::Other("builtins.KeyError".into())
        );
    }
}
