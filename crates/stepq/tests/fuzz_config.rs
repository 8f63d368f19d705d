//! Fuzzing the config reader (issue #17 item 3): `stepq.toml` text — random, and the
//! documented example with its characters edited — is read as a config or refused with a
//! `ConfigError`, never a panic; a config that is read validates or is refused, never a
//! panic either. A proptest harness (256 cases per target in CI, more with `PROPTEST_CASES=N`).

use std::path::Path;

use proptest::prelude::*;
use stepq::StepqConfig;
use stepq_core::fuzz::edited_text;

/// The example file of docs/configuration.md.
fn example() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let begin = "<!-- example:begin -->\n```toml\n";
    let start = doc.find(begin).unwrap() + begin.len();
    let stop = start + doc[start..].find("```").unwrap();
    doc[start..stop].to_string()
}

fn check(text: &str) {
    if let Ok(config) = StepqConfig::from_toml_str(text, Path::new("stepq.toml")) {
        let _ = config.validate();
        let _ = config.executor_config();
    }
}

proptest! {
    #[test]
    fn random_text_never_panics_the_config_reader(text in "\\PC{0,512}") {
        check(&text);
    }

    #[test]
    fn edited_examples_never_panic_the_config_reader(
        text in edited_text(&example()),
    ) {
        check(&text);
    }
}
