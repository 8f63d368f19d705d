//! Fuzzing the stored-result decoder (issue #17 item 3): `TaskResult::from_json`, fed random
//! bytes and mutations of a real result, returns a result or an error, never panics; a
//! decoded result encodes and decodes again to itself. A proptest harness (256 cases per
//! target in CI, more with `PROPTEST_CASES=N`).

use proptest::prelude::*;
use stepq_core::fuzz::edited_bytes;
use stepq_results::{FailureKind, TaskResult};

fn samples() -> Vec<Vec<u8>> {
    let mut ok = TaskResult::ok(serde_json::json!({"a": [1, 2.5, "x"]}), 0.25);
    ok.labels
        .insert("reply_to".into(), serde_json::json!("http://q"));
    let failed = TaskResult::err(FailureKind::UnknownTask, "no such task", 0.0);
    [ok, failed]
        .iter()
        .map(|r| serde_json::to_vec(r).unwrap())
        .collect()
}

fn check(bytes: &[u8]) {
    if let Ok(result) = TaskResult::from_json(bytes) {
        let again = serde_json::to_vec(&result).unwrap();
        let back = TaskResult::from_json(&again).unwrap();
        assert_eq!(serde_json::to_vec(&back).unwrap(), again);
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic_the_result_decoder(
        bytes in prop::collection::vec(any::<u8>(), 0..2048)
    ) {
        check(&bytes);
    }

    #[test]
    fn mutated_results_never_panic_the_decoder(
        bytes in (0..2usize).prop_flat_map(|which| edited_bytes(samples()[which].clone()))
    ) {
        check(&bytes);
    }
}
