//! Fuzzing the packed decoders (issue #17 item 3): `unpack` of every packable type, fed
//! random bytes and mutations of the committed golden encodings, returns a value or a typed
//! error, never panics, and never allocates without bound. A proptest harness, so it runs in
//! CI: 256 cases per target by default, more with `PROPTEST_CASES=N`.

use std::path::PathBuf;

use proptest::prelude::*;
use stepq_core::fuzz::edited_bytes;
use stepq_plan::{
    unpack, Event, ExecuteRunArgs, ExecuteStepArgs, KnownState, Packable, ResumeRunArgs,
    StepReport, TaskProgress,
};

/// Every golden encoding under `tests/golden/`.
fn goldens() -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect()
}

/// Tries every decoder on `bytes`; only a panic fails.
fn decode_all(bytes: &[u8]) {
    fn one<T: Packable>(bytes: &[u8]) {
        let _ = unpack::<T>(bytes);
    }
    one::<ExecuteStepArgs>(bytes);
    one::<ExecuteRunArgs>(bytes);
    one::<ResumeRunArgs>(bytes);
    one::<StepReport>(bytes);
    one::<TaskProgress>(bytes);
    one::<Event>(bytes);
    one::<Vec<Event>>(bytes);
    one::<KnownState>(bytes);
}

/// A golden encoding with byte edits (see `stepq_core::fuzz`).
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let goldens = goldens();
    (0..goldens.len()).prop_flat_map(move |which| edited_bytes(goldens[which].clone()))
}

proptest! {
    #[test]
    fn random_bytes_never_panic_a_decoder(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        decode_all(&bytes);
    }

    #[test]
    fn mutated_encodings_never_panic_a_decoder(bytes in mutated()) {
        decode_all(&bytes);
    }
}

#[test]
fn every_golden_encoding_still_decodes_as_something() {
    // The mutations start from real encodings: if none decoded, the target would be shallow.
    let decoded = goldens()
        .iter()
        .filter(|b| {
            unpack::<Event>(b).is_ok()
                || unpack::<StepReport>(b).is_ok()
                || unpack::<ExecuteStepArgs>(b).is_ok()
                || unpack::<TaskProgress>(b).is_ok()
        })
        .count();
    assert!(decoded >= 20, "{decoded}");
}
