//! Fuzzing the task envelope decoder (issue #17 item 3): `TaskMessage::from_json`, fed random
//! bytes and mutations of a real message, returns a message or a typed error, never panics;
//! a decoded message encodes again. A proptest harness (256 cases per target in CI, more
//! with `PROPTEST_CASES=N`).

use proptest::prelude::*;
use stepq_broker::TaskMessage;
use stepq_core::fuzz::edited_bytes;

/// A message with every field set.
fn sample() -> Vec<u8> {
    let mut m = TaskMessage::new("stepq.execute_plan")
        .with_label("run_id", "run-ä-1")
        .with_label("step_key", "s");
    m.args = vec![serde_json::json!(1), serde_json::json!("Grüße")];
    m.kwargs.insert(
        "execute_step_args_packed".into(),
        serde_json::json!("c3RlcHE="),
    );
    m.to_json()
}

fn check(bytes: &[u8]) {
    if let Ok(message) = TaskMessage::from_json(bytes) {
        let again = message.to_json();
        assert_eq!(TaskMessage::from_json(&again).unwrap(), message);
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic_the_envelope_decoder(
        bytes in prop::collection::vec(any::<u8>(), 0..2048)
    ) {
        check(&bytes);
    }

    #[test]
    fn mutated_envelopes_never_panic_the_decoder(bytes in edited_bytes(sample())) {
        check(&bytes);
    }

    #[test]
    fn json_of_any_shape_never_panics_the_decoder(text in "[\\[\\]{}\",:0-9a-z_ .-]{0,256}") {
        check(text.as_bytes());
    }
}
