//! Fuzzing the TOML jobs reader (issue #17 item 3): a jobs file's text — random, and a real
//! jobs file with characters edited — gives jobs or a `TomlJobsError`, never a panic, and a
//! jobs file that is read builds into a code location or is refused the same way. A proptest
//! harness (256 cases per target in CI, more with `PROPTEST_CASES=N`).

use std::path::Path;

use proptest::prelude::*;
use stepq_core::fuzz::edited_text;
use stepq_worker::shell::ShellJobs;
use stepq_worker::CodeLocation;

const JOBS: &str = r#"
[[jobs.etl.steps]]
key = "extract"
argv = ["sh", "-c", "echo 1"]
timeout_seconds = 5

[[jobs.etl.steps]]
key = "load"
argv = ["cat"]
inputs = { n = "extract.stdout" }
stdin = "n"
retry = { max_attempts = 2, delay_seconds = 0.5 }
tags = { db = "warehouse" }
"#;

fn check(text: &str) {
    if let Ok(jobs) = ShellJobs::parse(text, Path::new("jobs.toml"), Path::new(".")) {
        let _ = jobs.extend(&CodeLocation::builder().build().unwrap());
    }
}

proptest! {
    #[test]
    fn random_text_never_panics_the_jobs_reader(text in "\\PC{0,512}") {
        check(&text);
    }

    #[test]
    fn edited_jobs_files_never_panic_the_reader(
        text in edited_text(JOBS),
    ) {
        check(&text);
    }
}

#[test]
fn the_sample_jobs_file_is_read() {
    let jobs = ShellJobs::parse(JOBS, Path::new("jobs.toml"), Path::new(".")).unwrap();
    jobs.extend(&CodeLocation::builder().build().unwrap())
        .unwrap();
}
