//! W3C trace context on task messages: every message carries a [`TRACEPARENT_LABEL`] label
//! (`00-<trace id>-<parent span id>-<flags>`, <https://www.w3.org/TR/trace-context/>), so
//! that what a worker logs for a task joins the trace of whoever sent it.
//!
//! [`TaskQueue::kick`](crate::TaskQueue::kick) gives a message without one a trace of its
//! own. The executor sends a run's step tasks in the run's trace, whose id is derived from the
//! run id ([`TraceParent::for_key`]), so a resumed run stays in the same trace and every
//! worker's log lines of one run share one `trace_id`.
//!
//! A tracing backend that has span contexts of its own (OpenTelemetry: crate `stepq-otel`)
//! installs a [`TracePropagator`]: then the executor sends step tasks from the current span's
//! context ([`current_context`]), and a worker makes its task span a child of the message's
//! ([`adopt`]), so the exported spans form one trace.

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::message::TaskMessage;

/// The label holding a message's W3C `traceparent`.
pub const TRACEPARENT_LABEL: &str = "traceparent";

/// A W3C `traceparent` (version 00): a trace id, the sender's span id, and whether the trace
/// is sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// The trace's 128-bit id (never 0).
    pub trace_id: u128,
    /// The 64-bit id of the span that sent the message (never 0).
    pub span_id: u64,
    /// The `sampled` flag.
    pub sampled: bool,
}

/// Why a `traceparent` value was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid traceparent `{value}`: {reason}")]
pub struct TraceParentError {
    /// The value.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl TraceParent {
    /// The trace named by `key` (a run id): its trace id is derived from `key`, so the same
    /// key always gives the same trace; the span id from `key` too.
    pub fn for_key(key: &str) -> Self {
        let bytes = digest(key);
        let trace_id = u128::from_be_bytes(bytes[..16].try_into().expect("16 bytes")).max(1);
        let span_id = u64::from_be_bytes(bytes[16..24].try_into().expect("8 bytes")).max(1);
        TraceParent {
            trace_id,
            span_id,
            sampled: true,
        }
    }

    /// The same trace, sent from the span named by `key` (a task id): a span id derived from
    /// `key` (by std's SipHash with fixed keys: cheap, and the same for the same key in one
    /// build; span ids need to be unique, not stable across versions).
    pub fn child(self, key: &str) -> Self {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        key.hash(&mut hasher);
        TraceParent {
            span_id: hasher.finish().max(1),
            ..self
        }
    }

    /// Parses a `traceparent` value. Versions other than 00 are read by their first four
    /// fields, as the specification asks.
    pub fn parse(value: &str) -> Result<Self, TraceParentError> {
        let fail = |reason| TraceParentError {
            value: value.to_string(),
            reason,
        };
        let mut parts = value.trim().split('-');
        let (Some(version), Some(trace), Some(span), Some(flags)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(fail("expected version-traceid-spanid-flags"));
        };
        let hex = |text: &str, len: usize| {
            (text.len() == len
                && text
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
            .then_some(())
        };
        hex(version, 2).ok_or_else(|| fail("the version is not 2 lower-case hex digits"))?;
        if version == "ff" || (version == "00" && parts.next().is_some()) {
            return Err(fail(
                "version 00 has exactly four fields, and ff is invalid",
            ));
        }
        hex(trace, 32).ok_or_else(|| fail("the trace id is not 32 lower-case hex digits"))?;
        hex(span, 16).ok_or_else(|| fail("the span id is not 16 lower-case hex digits"))?;
        hex(flags, 2).ok_or_else(|| fail("the flags are not 2 lower-case hex digits"))?;
        let trace_id = u128::from_str_radix(trace, 16).expect("checked hex");
        let span_id = u64::from_str_radix(span, 16).expect("checked hex");
        if trace_id == 0 || span_id == 0 {
            return Err(fail("an all-zero trace or span id is invalid"));
        }
        let flags = u8::from_str_radix(flags, 16).expect("checked hex");
        Ok(TraceParent {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The trace id as 32 hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The span id as 16 hex digits.
    pub fn span_id_hex(&self) -> String {
        format!("{:016x}", self.span_id)
    }

    /// The trace context `message` carries, if its label holds a valid one.
    pub fn of(message: &TaskMessage) -> Option<Self> {
        message
            .label(TRACEPARENT_LABEL)
            .and_then(|value| Self::parse(value).ok())
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }
}

/// Bridges stepq's trace context to a tracing backend with span contexts of its own
/// (OpenTelemetry); installed once per process with [`install_propagator`].
pub trait TracePropagator: Send + Sync + 'static {
    /// The trace context of the current span, if it has a valid one.
    fn current(&self) -> Option<TraceParent>;
    /// Makes `span` (not yet entered) a child of `parent`, a remote span.
    fn adopt(&self, span: &tracing::Span, parent: TraceParent);
}

static PROPAGATOR: OnceLock<Box<dyn TracePropagator>> = OnceLock::new();

/// Installs `propagator` for this process; false (and nothing changes) if one was installed
/// before.
pub fn install_propagator(propagator: impl TracePropagator) -> bool {
    PROPAGATOR.set(Box::new(propagator)).is_ok()
}

/// The current span's trace context, from the installed [`TracePropagator`]; `None` without
/// one (or outside a span it knows).
pub fn current_context() -> Option<TraceParent> {
    PROPAGATOR.get().and_then(|p| p.current())
}

/// Makes `span` a child of `parent` through the installed [`TracePropagator`]; without one,
/// nothing (the ids are in the span's fields anyway).
pub fn adopt(span: &tracing::Span, parent: TraceParent) {
    if let Some(p) = PROPAGATOR.get() {
        p.adopt(span, parent);
    }
}

/// `message` with a `traceparent` label: kept if it has a valid one, else the current span's
/// context ([`current_context`]) or a trace of its own (derived from its task id).
pub(crate) fn ensure_traceparent(message: TaskMessage) -> TaskMessage {
    if TraceParent::of(&message).is_some() {
        return message;
    }
    let trace = current_context()
        .unwrap_or_else(|| TraceParent::for_key(&message.task_id))
        .to_string();
    message.with_label(TRACEPARENT_LABEL, trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specifications_example_round_trips() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(value).unwrap();
        assert_eq!(parsed.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parsed.span_id_hex(), "00f067aa0ba902b7");
        assert!(parsed.sampled);
        assert_eq!(parsed.to_string(), value);
    }

    #[test]
    fn malformed_values_are_refused_with_the_reason() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            let error = TraceParent::parse(bad).unwrap_err();
            assert_eq!(error.value, bad);
        }
        // A later version may add fields.
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x").is_ok()
        );
    }

    #[test]
    fn a_run_key_gives_one_trace_and_each_task_its_own_span() {
        let run = TraceParent::for_key("run-1");
        assert_eq!(run, TraceParent::for_key("run-1"));
        let (a, b) = (run.child("task-a"), run.child("task-b"));
        assert_eq!((a.trace_id, b.trace_id), (run.trace_id, run.trace_id));
        assert_ne!(a.span_id, b.span_id);
        assert_ne!(TraceParent::for_key("run-2").trace_id, run.trace_id);
        assert_eq!(TraceParent::parse(&a.to_string()).unwrap(), a);
    }

    #[test]
    fn a_message_keeps_its_valid_trace_and_gets_one_otherwise() {
        let message = TaskMessage::new("t");
        let traced = ensure_traceparent(message.clone());
        let trace = TraceParent::of(&traced).expect("a traceparent");
        assert_eq!(ensure_traceparent(traced.clone()).labels, traced.labels);
        let broken = message.with_label(TRACEPARENT_LABEL, "garbage");
        assert_ne!(TraceParent::of(&ensure_traceparent(broken)), None);
        assert_ne!(trace.trace_id, 0);
    }
}
