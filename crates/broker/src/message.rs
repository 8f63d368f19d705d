//! The task envelope, in TaskIQ's message shape, encoded as JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::BrokerError;

/// Label of a message whose sender does not wait on a notification for its result (a
/// long-lived task launched and left, e.g. a run's orchestration): middleware that gives
/// messages a reply address (the SQS reply queue) leaves it without one, and its result is
/// stored durably for whoever looks it up later.
pub const NO_REPLY_LABEL: &str = "no_reply";

/// TaskIQ's label type code of a string label (`taskiq.labels.LabelType.STR`; the codes are
/// 1 any, 2 int, 3 str, 4 float, 5 bool, 6 bytes). A Python TaskIQ worker parses every label
/// by its code before it runs a task and drops a message with a code it does not know.
pub const LABEL_TYPE_STR: i64 = 3;

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
    /// TaskIQ's label type codes (see [`LABEL_TYPE_STR`]), kept as received; a TaskIQ
    /// producer's `null` reads as none.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub labels_types: BTreeMap<String, i64>,
    /// Positional arguments.
    #[serde(default)]
    pub args: Vec<serde_json::Value>,
    /// Keyword arguments.
    #[serde(default)]
    pub kwargs: serde_json::Map<String, serde_json::Value>,
}

/// Reads a map that TaskIQ may send as `null`.
fn null_as_empty<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, i64>, D::Error> {
    Ok(Option::<BTreeMap<String, i64>>::deserialize(deserializer)?.unwrap_or_default())
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

    /// Sets a string label (TaskIQ label type [`LABEL_TYPE_STR`]).
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        self.labels_types.insert(key.clone(), LABEL_TYPE_STR);
        self.labels
            .insert(key, serde_json::Value::String(value.into()));
        self
    }

    /// A string label's value.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).and_then(|v| v.as_str())
    }

    /// The labels a result of this task carries: all of the message's but its
    /// [`TRACEPARENT_LABEL`](crate::trace::TRACEPARENT_LABEL) (the sender's span, which no
    /// reader of a result needs).
    pub fn result_labels(&self) -> BTreeMap<String, serde_json::Value> {
        self.labels
            .iter()
            .filter(|(name, _)| name.as_str() != crate::trace::TRACEPARENT_LABEL)
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A message as taskiq 0.13's kicker sends it (`taskiq.kicker.AsyncKicker`): every label
    /// a string, with its type code; and one with `labels_types: null`, which TaskIQ allows.
    #[test]
    fn results_carry_every_label_but_the_senders_trace() {
        let message = TaskMessage::new("t").with_label("run_id", "r1").with_label(
            crate::trace::TRACEPARENT_LABEL,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        let labels = message.result_labels();
        assert_eq!(labels.len(), 1, "{labels:?}");
        assert_eq!(labels["run_id"], "r1");
    }

    #[test]
    fn taskiq_messages_decode() {
        let body = br#"{"task_id":"0b9c","task_name":"tasks:add","labels":{"retries":"3","urgent":"True"},"labels_types":{"retries":2,"urgent":5},"args":[],"kwargs":{"a":1,"b":2}}"#;
        let m = TaskMessage::from_json(body).unwrap();
        assert_eq!(m.label("retries"), Some("3"));
        assert_eq!(m.labels_types["urgent"], 5);
        assert_eq!(m.kwargs["b"], 2);
        let body = br#"{"task_id":"0b9c","task_name":"tasks:add","labels":{},"labels_types":null,"args":[1],"kwargs":{}}"#;
        assert!(TaskMessage::from_json(body)
            .unwrap()
            .labels_types
            .is_empty());
    }

    #[test]
    fn string_labels_carry_taskiqs_str_code() {
        let m = TaskMessage::new("t").with_label("run_id", "r1");
        assert_eq!(m.labels_types["run_id"], LABEL_TYPE_STR);
        let json: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
        assert_eq!(json["labels_types"]["run_id"], 3);
    }
}
