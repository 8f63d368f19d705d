//! Events, error info and known state helpers.

use std::time::{Duration, UNIX_EPOCH};

use stepq_plan::events::now_us;
use stepq_plan::{
    ErrorInfo, Event, EventKind, FailureKind, KnownState, SkipReason, StepOutputHandle,
};

#[derive(Debug)]
struct Layer(&'static str, Option<Box<Layer>>);

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Layer {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.1.as_deref().map(|l| l as _)
    }
}

#[test]
fn error_info_walks_the_source_chain() {
    let err = Layer(
        "load failed",
        Some(Box::new(Layer(
            "connection reset",
            Some(Box::new(Layer("broken pipe", None))),
        ))),
    );
    let info = ErrorInfo::from_error("op_error", &err);
    assert_eq!(info.kind, "op_error");
    assert_eq!(info.message, "load failed");
    assert_eq!(info.causes, ["connection reset", "broken pipe"]);
    assert_eq!(
        info.to_string(),
        "[op_error] load failed: connection reset: broken pipe"
    );
    let plain = ErrorInfo::new("timeout", "too slow");
    assert!(plain.causes.is_empty());
    assert_eq!(plain.to_string(), "[timeout] too slow");
}

#[test]
fn error_kinds_pack_as_their_spelling_and_old_spellings_still_unpack() {
    let failure = |kind: FailureKind| {
        let mut event = Event::step(
            "run-1",
            "s",
            EventKind::StepFailure {
                error: ErrorInfo::new(kind, "boom"),
                will_retry: false,
            },
        );
        event.timestamp_us = 1;
        stepq_plan::pack(&event).unwrap()
    };
    // What an older writer packed: the bare string, whatever it was.
    let written_as = |kind: &str| failure(FailureKind::Other(kind.into()));
    let kind_of = |bytes: &[u8]| match stepq_plan::unpack::<Event>(bytes).unwrap().kind {
        EventKind::StepFailure { error, .. } => error.kind,
        other => panic!("{other:?}"),
    };
    // Known kinds and unknown ones (an op's own) pack as the same string as before.
    for kind in [
        "op_error",
        "timeout",
        "missing_input",
        "bad_record",
        "ValueError",
    ] {
        assert_eq!(failure(FailureKind::from(kind)), written_as(kind), "{kind}");
        assert_eq!(kind_of(&written_as(kind)).as_str(), kind);
    }
    // Reports and event logs written with an old spelling read as the kind it spelled.
    assert!(matches!(kind_of(&written_as("panic")), FailureKind::Panic));
    assert!(matches!(
        kind_of(&written_as("run_not_started")),
        FailureKind::RunNotStarted
    ));
}

#[test]
fn skip_reasons_display() {
    assert_eq!(
        SkipReason::UpstreamNotSucceeded {
            upstream: "a".into()
        }
        .to_string(),
        "upstream step `a` did not succeed"
    );
    assert_eq!(
        SkipReason::OutputNotEmitted {
            upstream: "a".into(),
            output: "o".into()
        }
        .to_string(),
        "output `o` of `a` was not emitted"
    );
}

#[test]
fn events_are_stamped_now() {
    let before = now_us();
    let run = Event::run("r", EventKind::RunStarted);
    let step = Event::step("r", "s", EventKind::StepCanceled);
    let after = now_us();
    assert!(before <= run.timestamp_us && run.timestamp_us <= step.timestamp_us);
    assert!(step.timestamp_us <= after);
    assert_eq!(run.step_key, None);
    assert_eq!(step.step_key.as_deref(), Some("s"));
    assert_eq!(run.run_id, "r");
    let fixed = Event {
        timestamp_us: 1_500_000,
        ..run
    };
    assert_eq!(fixed.time(), UNIX_EPOCH + Duration::from_micros(1_500_000));
}

#[test]
fn known_state_records_and_answers() {
    let mut k = KnownState::default();
    assert!(!k.is_completed("a"));
    assert_eq!(k.attempts_of("a"), 0);
    assert_eq!(k.record_attempt("a"), 1);
    assert_eq!(k.record_attempt("a"), 2);
    k.record_success("a", ["x".to_string()]);
    assert!(k.is_completed("a"));
    let handle = |s: &str, o: &str| StepOutputHandle {
        step_key: s.into(),
        output_name: o.into(),
    };
    assert!(k.has_output(&handle("a", "x")));
    assert!(!k.has_output(&handle("a", "y")));
    assert!(!k.has_output(&handle("b", "x")));
    // A later success (a redelivered step) replaces the emitted set.
    k.record_success("a", ["y".to_string()]);
    assert!(k.has_output(&handle("a", "y")) && !k.has_output(&handle("a", "x")));
    assert_eq!(k.attempts_of("a"), 2);
}
