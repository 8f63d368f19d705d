//! The `stepq` binary as a test runs it: in the test's own directory, without the caller's
//! environment overrides.

use std::path::Path;
use std::process::{Child, Command, Output};

/// Variables that would override a test's config (or its log output) in a `stepq` process.
pub(crate) const ENV_OVERRIDES: [&str; 8] = [
    "STEPQ_CONFIG",
    "STEPQ_SQS_QUEUE_URL",
    "STEPQ_SQS_ENDPOINT_URL",
    "STEPQ_S3_BUCKET_NAME",
    "STEPQ_S3_ENDPOINT_URL",
    "STEPQ_WORKER_HEALTH_INTERVAL_SECONDS",
    "STEPQ_WORKER_HTTP",
    "RUST_LOG",
];

/// The `stepq` binary in `dir` (whose `.stepq/` is the test's state), without
/// [`ENV_OVERRIDES`].
pub(crate) fn stepq(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stepq"));
    cmd.current_dir(dir);
    for var in ENV_OVERRIDES {
        cmd.env_remove(var);
    }
    cmd
}

/// `stepq --config stepq.toml` in `dir`, without [`ENV_OVERRIDES`].
pub(crate) fn stepq_configured(dir: &Path) -> Command {
    let mut cmd = stepq(dir);
    cmd.arg("--config").arg("stepq.toml");
    cmd
}

/// Runs `stepq ARGS` in `dir` to the end.
pub(crate) fn run(dir: &Path, args: &[&str]) -> Output {
    stepq(dir).args(args).output().expect("stepq starts")
}

/// Runs `stepq --config stepq.toml ARGS` in `dir` to the end.
pub(crate) fn run_configured(dir: &Path, args: &[&str]) -> Output {
    stepq_configured(dir)
        .args(args)
        .output()
        .expect("stepq starts")
}

/// The stdout of a command.
pub(crate) fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The stderr of a command.
pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Stdout and stderr of a command, for assertion messages.
pub(crate) fn text(out: &Output) -> String {
    format!("{}\n--- stderr ---\n{}", stdout(out), stderr(out))
}

/// The words of the summary-table row of `step` in a `stepq run` output.
pub(crate) fn row<'a>(stdout: &'a str, step: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .find(|l| l.starts_with(&format!("{step} ")))
        .unwrap_or_else(|| panic!("no row for {step}: {stdout}"))
        .split_whitespace()
        .collect()
}

/// How many `step_success` events each step has in run `run_id`'s log (`stepq logs --json`).
pub(crate) fn recorded_successes(
    dir: &Path,
    run_id: &str,
) -> std::collections::BTreeMap<String, usize> {
    let logs = run_configured(dir, &["logs", run_id, "--json"]);
    assert_eq!(logs.status.code(), Some(0), "{}", text(&logs));
    let mut successes = std::collections::BTreeMap::new();
    for line in String::from_utf8_lossy(&logs.stdout).lines() {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        if event["kind"] == "step_success" {
            *successes
                .entry(event["step_key"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    successes
}

/// A `stepq` process SIGKILLed (and reaped) when dropped, so a failed test leaves none behind.
pub(crate) struct KilledOnDrop(pub Option<Child>);

impl KilledOnDrop {
    /// The process, while it is held.
    pub(crate) fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("the process was taken")
    }
}

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
