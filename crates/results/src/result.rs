//! `TaskResult`, as TaskIQ has it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use stepq_core::FailureKind;

/// The error of a failed task, as stored in its result.
///
/// In JSON it is both stepq's `{kind, message}` and TaskIQ's serialized exception
/// (`taskiq.serialization.ExceptionRepr`: `exc_type`, `exc_module`, `exc_message`), so a
/// Python TaskIQ producer reading a stepq result raises an exception of that name with the
/// message, and stepq reads a Python task's exception (kind `module.Type`, e.g.
/// `builtins.ValueError`; message its arguments). See [`TaskError`]'s `Serialize` impl.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    /// What kind of failure, e.g. [`FailureKind::UnknownTask`], or the exception name a
    /// TaskIQ peer stored ([`FailureKind::Other`]); a plain string in the JSON.
    pub kind: FailureKind,
    /// Message.
    pub message: String,
}

/// Module name a stepq-made error carries as a TaskIQ exception: no Python module has it, so
/// TaskIQ makes an exception class of the kind's name for it.
pub const TASKIQ_ERROR_MODULE: &str = "stepq";

impl TaskError {
    /// TaskIQ's `(exc_module, exc_type)` for this error's kind: a kind `module.Type` (how a
    /// Python error reads back) splits at its last dot; any other kind is a type of module
    /// [`TASKIQ_ERROR_MODULE`].
    pub fn taskiq_exception(&self) -> (&str, &str) {
        let kind = self.kind.as_str();
        match kind.rsplit_once('.') {
            Some((module, name))
                if !module.is_empty() && !name.is_empty() && !kind.contains("::") =>
            {
                (module, name)
            }
            _ => (TASKIQ_ERROR_MODULE, kind),
        }
    }
}

impl Serialize for TaskError {
    /// `{"kind", "message", "exc_type", "exc_module", "exc_message"}`: stepq's fields first
    /// (what older stepq versions read), then TaskIQ's (Python ignores the others).
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let (module, name) = self.taskiq_exception();
        let mut out = serializer.serialize_struct("TaskError", 5)?;
        out.serialize_field("kind", &self.kind)?;
        out.serialize_field("message", &self.message)?;
        out.serialize_field("exc_type", name)?;
        out.serialize_field("exc_module", module)?;
        out.serialize_field("exc_message", &[&self.message])?;
        out.end()
    }
}

/// Either shape of a stored error.
#[derive(Deserialize)]
struct StoredError {
    kind: Option<FailureKind>,
    message: Option<String>,
    exc_type: Option<String>,
    exc_module: Option<String>,
    #[serde(default)]
    exc_message: Vec<serde_json::Value>,
}

impl<'de> Deserialize<'de> for TaskError {
    /// Reads stepq's `{kind, message}` or a TaskIQ exception (`exc_type`, `exc_module`,
    /// `exc_message`): kind `module.Type` (just `Type` for module `stepq` or none), message
    /// the exception's arguments (a single string as it is, others as JSON, joined by `, `).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let stored = StoredError::deserialize(deserializer)?;
        if let Some(kind) = stored.kind {
            return Ok(TaskError {
                kind,
                message: stored.message.unwrap_or_default(),
            });
        }
        let Some(name) = stored.exc_type else {
            return Err(serde::de::Error::custom(
                "an error needs `kind` (stepq) or `exc_type` (TaskIQ)",
            ));
        };
        let kind = match stored.exc_module.as_deref() {
            None | Some("") | Some(TASKIQ_ERROR_MODULE) => name,
            Some(module) => format!("{module}.{name}"),
        };
        let message = match stored.exc_message.as_slice() {
            [serde_json::Value::String(one)] => one.clone(),
            args => args
                .iter()
                .map(|a| match a {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(", "),
        };
        Ok(TaskError {
            kind: FailureKind::from(kind),
            message,
        })
    }
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

    /// The same result as stepq writes it now: both shapes of the error.
    fn written(kind: &str, module: &str, name: &str) -> String {
        format!(
            r#"{{"is_err":true,"return_value":null,"execution_time":0.5,"labels":{{}},"error":{{"kind":"{kind}","message":"boom","exc_type":"{name}","exc_module":"{module}","exc_message":["boom"]}},"log":null}}"#
        )
    }

    #[test]
    fn stored_results_decode_and_encode_with_taskiqs_exception_fields() {
        for (kind, module, name) in [
            ("Panic", "stepq", "Panic"),
            ("UnknownTask", "stepq", "UnknownTask"),
            ("Canceled", "stepq", "Canceled"),
            ("op_error", "stepq", "op_error"),
            ("builtins.ValueError", "builtins", "ValueError"),
            ("my_crate::Error", "stepq", "my_crate::Error"),
        ] {
            let result = TaskResult::from_json(stored(kind).as_bytes()).unwrap();
            assert_eq!(result.error.as_ref().unwrap().kind.as_str(), kind);
            let json = written(kind, module, name);
            assert_eq!(String::from_utf8(result.to_json()).unwrap(), json);
            assert_eq!(TaskResult::from_json(json.as_bytes()).unwrap(), result);
        }
    }

    /// A failed result as taskiq 0.13 + taskiq-aio-sqs's S3Backend stores it (orjson of
    /// `TaskiqResult.model_dump(mode="json")` for `raise ValueError("boom", 3)`).
    #[test]
    fn a_taskiq_exception_reads_as_module_dot_type() {
        let json = br#"{"is_err":true,"log":null,"return_value":null,"execution_time":0.01,"labels":{"k":"v"},"error":{"exc_type":"ValueError","exc_message":["boom",3],"exc_module":"builtins","exc_cause":null,"exc_context":null,"exc_suppress_context":false}}"#;
        let result = TaskResult::from_json(json).unwrap();
        let error = result.error.unwrap();
        assert_eq!(error.kind.as_str(), "builtins.ValueError");
        assert_eq!(error.message, "boom, 3");
        assert_eq!(error.taskiq_exception(), ("builtins", "ValueError"));
        let no_module = br#"{"exc_type":"Boom","exc_message":["x"],"exc_module":null}"#;
        let e: TaskError = serde_json::from_slice(no_module).unwrap();
        assert_eq!((e.kind.as_str(), e.message.as_str()), ("Boom", "x"));
        let neither = serde_json::from_slice::<TaskError>(br#"{"message":"x"}"#);
        assert!(neither.unwrap_err().to_string().contains("exc_type"));
    }

    #[test]
    fn old_spellings_decode_to_the_known_kind() {
        let result = TaskResult::from_json(stored("panic").as_bytes()).unwrap();
        let kind = &result.error.as_ref().unwrap().kind;
        assert!(matches!(kind, FailureKind::Panic), "{kind:?}");
        assert_eq!(
            String::from_utf8(result.to_json()).unwrap(),
            written("Panic", "stepq", "Panic")
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
