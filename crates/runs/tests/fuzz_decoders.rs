//! Fuzzing the run record decoder (issue #17 item 3): a `RunRecord` read from JSON (as every
//! run store does, the local directory, S3 and SQLite alike), fed random bytes and mutations
//! of a real record, is a record or an error, never a panic. Event logs are packed
//! `EventBatch`es, fuzzed with the other packed decoders in stepq-plan. A proptest harness
//! (256 cases per target in CI, more with `PROPTEST_CASES=N`).

use proptest::prelude::*;
use stepq_core::fuzz::edited_bytes;
use stepq_runs::RunRecord;

fn sample() -> Vec<u8> {
    let record = RunRecord::new("run-1", "diamond", serde_json::json!({"sleep_ms": 5}))
        .with_tag("team", "data");
    serde_json::to_vec(&record).unwrap()
}

fn check(bytes: &[u8]) {
    if let Ok(record) = serde_json::from_slice::<RunRecord>(bytes) {
        let again = serde_json::to_vec(&record).unwrap();
        assert_eq!(serde_json::from_slice::<RunRecord>(&again).unwrap(), record);
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic_the_record_decoder(
        bytes in prop::collection::vec(any::<u8>(), 0..2048)
    ) {
        check(&bytes);
    }

    #[test]
    fn mutated_records_never_panic_the_decoder(bytes in edited_bytes(sample())) {
        check(&bytes);
    }
}
