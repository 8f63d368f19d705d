//! The cancel marker: the durable record that a task was cancelled, and the notice that wakes
//! workers up (the same content, in the reference's message shape).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use stepq_broker::TaskMessage;

use crate::error::CancelError;

/// Task name of a cancel notice, as dagster-taskiq's `CancellableSQSBroker` sends it.
pub const CANCELLER_TASK_NAME: &str = "canceller";
/// kwargs key holding the id of the task to cancel, as dagster-taskiq has it.
pub const CANCEL_TASK_ID_KWARG: &str = "__cancel_task_id__";
/// Label of a notice holding [`CancelMarker::requested_at_ms`] (decimal text).
pub const REQUESTED_AT_LABEL: &str = "requested_at_ms";
/// Label of a notice holding [`CancelMarker::reason`].
pub const REASON_LABEL: &str = "reason";
/// Longest task id accepted (it becomes a file name and an object key).
pub const MAX_TASK_ID_LEN: usize = 200;

/// That task `task_id` was cancelled, when and why. Stored as a small JSON document
/// (`{"task_id": "...", "requested_at_ms": 1732600000000, "reason": "run interrupted"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelMarker {
    /// The cancelled task.
    pub task_id: String,
    /// When the cancel was requested, in milliseconds since the Unix epoch.
    pub requested_at_ms: u64,
    /// Why, if the requester said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(u64::MAX as u128) as u64)
}

/// Checks that a task id is usable as a file name and an object key segment.
pub fn check_task_id(task_id: &str) -> Result<(), CancelError> {
    let reason = if task_id.is_empty() {
        Some("empty")
    } else if task_id == "." || task_id == ".." {
        Some("is a relative path component")
    } else if task_id.contains('/') || task_id.contains('\\') {
        Some("contains a path separator")
    } else if task_id.chars().any(char::is_control) {
        Some("contains a control character")
    } else if task_id.starts_with('.') {
        Some("starts with a dot")
    } else if task_id.len() > MAX_TASK_ID_LEN {
        Some("longer than 200 bytes")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(CancelError::InvalidTaskId {
            task_id: task_id.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

impl CancelMarker {
    /// A marker for `task_id`, requested now; the id is checked.
    pub fn new(task_id: &str, reason: Option<String>) -> Result<Self, CancelError> {
        check_task_id(task_id)?;
        Ok(CancelMarker {
            task_id: task_id.to_string(),
            requested_at_ms: now_ms(),
            reason,
        })
    }

    /// Whether the marker is older than `ttl` at `now_ms`.
    pub fn is_expired(&self, ttl: Duration, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.requested_at_ms) > ttl.as_millis().min(u64::MAX as u128) as u64
    }

    /// Encodes as JSON bytes (the stored form).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a cancel marker always serializes")
    }

    /// Decodes the stored form; anything else is [`CancelError::Malformed`] naming the problem.
    pub fn from_json(bytes: &[u8]) -> Result<Self, CancelError> {
        let marker: CancelMarker =
            serde_json::from_slice(bytes).map_err(|e| CancelError::Malformed {
                reason: format!("not a cancel marker: {e}"),
            })?;
        check_task_id(&marker.task_id).map_err(|e| CancelError::Malformed {
            reason: format!("cancel marker names a bad task id: {e}"),
        })?;
        Ok(marker)
    }

    /// The wake-up notice: a TaskIQ message named [`CANCELLER_TASK_NAME`] whose kwargs carry
    /// [`CANCEL_TASK_ID_KWARG`], as dagster-taskiq sends it (so its receivers understand it),
    /// with the time and reason as labels.
    pub fn to_notice(&self) -> Vec<u8> {
        let mut message = TaskMessage::new(CANCELLER_TASK_NAME)
            .with_label(REQUESTED_AT_LABEL, self.requested_at_ms.to_string());
        if let Some(reason) = &self.reason {
            message = message.with_label(REASON_LABEL, reason.clone());
        }
        message.kwargs.insert(
            CANCEL_TASK_ID_KWARG.to_string(),
            serde_json::Value::String(self.task_id.clone()),
        );
        message.to_json()
    }

    /// Reads a wake-up notice; a body that is not one is [`CancelError::Malformed`] naming
    /// the problem. A notice without a (readable) time counts as requested now.
    pub fn from_notice(body: &[u8]) -> Result<Self, CancelError> {
        let message = TaskMessage::from_json(body).map_err(|e| CancelError::Malformed {
            reason: e.to_string(),
        })?;
        if message.task_name != CANCELLER_TASK_NAME {
            return Err(CancelError::Malformed {
                reason: format!(
                    "task name is `{}`, expected `{CANCELLER_TASK_NAME}`",
                    message.task_name
                ),
            });
        }
        let task_id = match message.kwargs.get(CANCEL_TASK_ID_KWARG) {
            Some(serde_json::Value::String(id)) => id.clone(),
            Some(other) => {
                return Err(CancelError::Malformed {
                    reason: format!("`{CANCEL_TASK_ID_KWARG}` is not a string but {other}"),
                })
            }
            None => {
                return Err(CancelError::Malformed {
                    reason: format!("no `{CANCEL_TASK_ID_KWARG}` keyword argument"),
                })
            }
        };
        check_task_id(&task_id).map_err(|e| CancelError::Malformed {
            reason: e.to_string(),
        })?;
        let requested_at_ms = message
            .label(REQUESTED_AT_LABEL)
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(now_ms);
        Ok(CancelMarker {
            task_id,
            requested_at_ms,
            reason: message.label(REASON_LABEL).map(str::to_string),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_as_small_json() {
        let m = CancelMarker::new("task-1", Some("run interrupted".into())).unwrap();
        let json = String::from_utf8(m.to_json()).unwrap();
        assert!(json.contains("\"task_id\":\"task-1\""), "{json}");
        assert!(json.contains("requested_at_ms"), "{json}");
        assert_eq!(CancelMarker::from_json(json.as_bytes()).unwrap(), m);
        let bare = CancelMarker::from_json(br#"{"task_id":"t","requested_at_ms":5}"#).unwrap();
        assert_eq!(bare.reason, None);
    }

    #[test]
    fn notices_round_trip_in_the_reference_shape() {
        let m = CancelMarker::new("task-2", Some("fail fast".into())).unwrap();
        let body = m.to_notice();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["task_name"], "canceller");
        assert_eq!(v["kwargs"]["__cancel_task_id__"], "task-2");
        assert_eq!(CancelMarker::from_notice(&body).unwrap(), m);
    }

    #[test]
    fn a_reference_notice_without_labels_counts_as_requested_now() {
        let body = br#"{"task_id":"n1","task_name":"canceller","labels":{},"labels_types":{},"args":[],"kwargs":{"__cancel_task_id__":"abc"}}"#;
        let before = now_ms();
        let m = CancelMarker::from_notice(body).unwrap();
        assert_eq!(m.task_id, "abc");
        assert!(m.requested_at_ms >= before);
        assert_eq!(m.reason, None);
    }

    #[test]
    fn malformed_notices_name_the_problem() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "not a task message"),
            (
                br#"{"task_id":"n","task_name":"other","kwargs":{}}"#,
                "`other`",
            ),
            (
                br#"{"task_id":"n","task_name":"canceller","kwargs":{}}"#,
                "no `__cancel_task_id__`",
            ),
            (
                br#"{"task_id":"n","task_name":"canceller","kwargs":{"__cancel_task_id__":7}}"#,
                "not a string",
            ),
            (
                br#"{"task_id":"n","task_name":"canceller","kwargs":{"__cancel_task_id__":"a/b"}}"#,
                "path separator",
            ),
        ];
        for (body, needle) in cases {
            let err = CancelMarker::from_notice(body).unwrap_err();
            assert!(matches!(err, CancelError::Malformed { .. }), "{err}");
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        }
        let err = CancelMarker::from_json(b"{}").unwrap_err();
        assert!(err.to_string().contains("not a cancel marker"), "{err}");
        let err = CancelMarker::from_json(br#"{"task_id":"..","requested_at_ms":1}"#).unwrap_err();
        assert!(err.to_string().contains("bad task id"), "{err}");
    }

    #[test]
    fn task_ids_are_checked() {
        for bad in ["", ".", "..", "a/b", "a\\b", "a\nb", ".hidden"] {
            assert!(check_task_id(bad).is_err(), "{bad:?}");
        }
        assert!(check_task_id(&"x".repeat(201)).is_err());
        check_task_id(&"x".repeat(200)).unwrap();
        check_task_id("2f1c9a54-7d2e-4c61-9b1e-8f7d7f0f4a11").unwrap();
    }

    #[test]
    fn expiry_is_by_age() {
        let m = CancelMarker {
            task_id: "t".into(),
            requested_at_ms: 1_000,
            reason: None,
        };
        assert!(!m.is_expired(Duration::from_secs(1), 2_000));
        assert!(m.is_expired(Duration::from_secs(1), 2_001));
        assert!(
            !m.is_expired(Duration::from_secs(1), 0),
            "clock skew is not expiry"
        );
    }
}
