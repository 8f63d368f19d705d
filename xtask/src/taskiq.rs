//! The Python TaskIQ side of the interop tests and the peer benchmark: a venv under
//! `target/taskiq-venv` holding `taskiq` and `taskiq-aio-sqs` at the versions pinned in
//! `xtask/taskiq-requirements.txt` (every package pinned), installed on first use.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The pinned requirements, relative to the workspace root.
const REQUIREMENTS: &str = "xtask/taskiq-requirements.txt";

/// The environment variable that tells the interop tests which python to run.
pub(crate) const PYTHON_ENV: &str = "STEPQ_TEST_TASKIQ_PYTHON";

/// `(package, version)` of the two packages the check asserts, read from the requirements.
fn pinned(requirements: &str) -> Vec<(String, String)> {
    requirements
        .lines()
        .filter_map(|l| l.trim().split_once("=="))
        .filter(|(name, _)| matches!(*name, "taskiq" | "taskiq-aio-sqs"))
        .map(|(n, v)| (n.to_string(), v.trim().to_string()))
        .collect()
}

/// The venv's python with the pinned TaskIQ packages, installing them on first use.
pub(crate) async fn ensure_venv(root: &Path) -> Result<PathBuf> {
    let requirements = root.join(REQUIREMENTS);
    let text = std::fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let pins = pinned(&text);
    if pins.len() != 2 {
        bail!("{REQUIREMENTS} must pin taskiq and taskiq-aio-sqs with `==`");
    }
    let check = format!(
        "import importlib.metadata as m, taskiq, taskiq_aio_sqs; {}",
        pins.iter()
            .map(|(n, v)| format!("assert m.version('{n}') == '{v}'"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    crate::venv::Venv {
        dir: "target/taskiq-venv",
        holds: &format!("taskiq and taskiq-aio-sqs ({REQUIREMENTS})"),
        check,
        pip_args: vec!["-r".into(), requirements.display().to_string()],
    }
    .ensure(root)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_packages_are_found_among_the_pins() {
        let text = "# c\naiobotocore==3.10.0\ntaskiq==0.13.0\ntaskiq-aio-sqs==2.1.1\n";
        assert_eq!(
            pinned(text),
            vec![
                ("taskiq".to_string(), "0.13.0".to_string()),
                ("taskiq-aio-sqs".to_string(), "2.1.1".to_string())
            ]
        );
    }

    #[test]
    fn the_workspace_pins_both() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let text = std::fs::read_to_string(root.join(REQUIREMENTS)).unwrap();
        assert_eq!(pinned(&text).len(), 2);
    }
}
