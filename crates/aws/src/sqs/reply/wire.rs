//! Shared by both halves: the notification a worker sends to a reply queue and the
//! orchestrator's poller reads: `{"task_id": ..., "result": {...}}`, the result inline
//! (without its log) when the body stays under the inline limit and holds only characters SQS
//! accepts, else just `{"task_id": ...}` (the orchestrator then reads the result from the
//! durable backend). `"stored": false` marks a result that has no durable copy (sent with
//! [`REPLY_ONLY_LABEL`](super::REPLY_ONLY_LABEL)).

use serde::{Deserialize, Serialize};
use stepq_results::TaskResult;

/// The body of a reply-queue message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Notification {
    /// The task whose result is stored.
    pub task_id: String,
    /// The result itself, when it fit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<TaskResult>,
    /// Whether the result is also in the durable backend.
    #[serde(default = "stored_default", skip_serializing_if = "is_stored")]
    pub stored: bool,
}

fn stored_default() -> bool {
    true
}

fn is_stored(stored: &bool) -> bool {
    *stored
}

/// Whether SQS accepts `c` in a message body (XML 1.0 characters: tab, line feed, carriage
/// return, U+0020-U+D7FF, U+E000-U+FFFD, U+10000 and above).
fn sqs_allows(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}')
        || c >= '\u{10000}'
}

/// The body of a notification carrying `result` inline (without its log), if it is at most
/// `limit` bytes and SQS accepts every character of it.
fn inline_body(task_id: &str, result: &TaskResult, limit: usize, stored: bool) -> Option<String> {
    let mut inline = result.clone();
    inline.log = None;
    let body = serde_json::to_string(&Notification {
        task_id: task_id.to_string(),
        result: Some(inline),
        stored,
    })
    .expect("a notification always serializes");
    (body.len() <= limit && body.chars().all(sqs_allows)).then_some(body)
}

/// The notification body for a durably stored `result`, and whether the result is inline
/// (see [`inline_body`]); else it names the task only.
pub(crate) fn encode(task_id: &str, result: &TaskResult, limit: usize) -> (String, bool) {
    if let Some(body) = inline_body(task_id, result, limit, true) {
        return (body, true);
    }
    let body = serde_json::to_string(&Notification {
        task_id: task_id.to_string(),
        result: None,
        stored: true,
    })
    .expect("a notification always serializes");
    (body, false)
}

/// The notification body for a result that is not stored durably: only if it fits inline.
pub(crate) fn encode_unstored(task_id: &str, result: &TaskResult, limit: usize) -> Option<String> {
    inline_body(task_id, result, limit, false)
}

/// Decodes a reply-queue message body; the error says what is wrong with it.
pub(crate) fn decode(body: &str) -> Result<Notification, String> {
    let n: Notification =
        serde_json::from_str(body).map_err(|e| format!("not a stepq result notification: {e}"))?;
    if n.task_id.is_empty() {
        return Err("a result notification with an empty task_id".into());
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result() -> TaskResult {
        let mut r = TaskResult::ok(serde_json::json!({"answer": 42}), 0.25);
        r.labels
            .insert("run_id".into(), serde_json::Value::String("r1".into()));
        r.log = Some("a long log".into());
        r
    }

    #[test]
    fn small_results_travel_inline_without_their_log() {
        let (body, inline) = encode("t1", &result(), 200 * 1024);
        assert!(inline);
        let n = decode(&body).unwrap();
        assert_eq!(n.task_id, "t1");
        let mut expected = result();
        expected.log = None;
        assert_eq!(n.result, Some(expected));
        let failed = TaskResult::err("OpError", "boom", 1.0);
        let (body, inline) = encode("t2", &failed, 200 * 1024);
        assert!(inline);
        assert_eq!(decode(&body).unwrap().result, Some(failed));
    }

    #[test]
    fn results_over_the_limit_travel_by_reference() {
        let (body, inline) = encode("t1", &result(), 20);
        assert!(!inline);
        assert_eq!(body, r#"{"task_id":"t1"}"#);
        assert_eq!(
            decode(&body).unwrap(),
            Notification {
                task_id: "t1".into(),
                result: None,
                stored: true,
            }
        );
    }

    #[test]
    fn unstored_results_are_marked_and_only_sent_inline() {
        let body = encode_unstored("t1", &result(), 200 * 1024).unwrap();
        assert!(body.contains(r#""stored":false"#), "{body}");
        let n = decode(&body).unwrap();
        assert!(!n.stored);
        assert!(n.result.is_some());
        assert_eq!(encode_unstored("t1", &result(), 20), None);
        // Older senders do not write the field: stored.
        assert!(decode(r#"{"task_id": "t"}"#).unwrap().stored);
    }

    #[test]
    fn characters_sqs_refuses_send_the_result_by_reference() {
        // serde_json escapes control characters but not U+FFFF, which SQS refuses.
        let r = TaskResult::ok(serde_json::json!("bad \u{FFFF} char"), 0.0);
        let (body, inline) = encode("t1", &r, 200 * 1024);
        assert!(!inline, "{body}");
        let r = TaskResult::ok(serde_json::json!("tab\tnul\u{0} emoji 🦀 ok"), 0.0);
        assert!(encode("t1", &r, 200 * 1024).1);
    }

    #[test]
    fn malformed_bodies_are_named() {
        assert!(decode("garbage")
            .unwrap_err()
            .contains("not a stepq result notification"));
        assert!(decode(r#"{"result": null}"#).is_err());
        assert!(decode(r#"{"task_id": ""}"#)
            .unwrap_err()
            .contains("empty task_id"));
        assert!(decode(r#"{"task_id": "t", "result": 5}"#).is_err());
    }
}
