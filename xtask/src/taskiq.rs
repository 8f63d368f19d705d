//! The Python TaskIQ side of the interop tests and the peer benchmark: a venv under
//! `target/taskiq-venv` holding `taskiq` and `taskiq-aio-sqs` at the versions pinned in
//! `xtask/taskiq-requirements.txt` (every package pinned), installed on first use.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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
    let venv = root.join("target/taskiq-venv");
    let python = venv.join("bin/python");
    let check = format!(
        "import importlib.metadata as m, taskiq, taskiq_aio_sqs; {}",
        pins.iter()
            .map(|(n, v)| format!("assert m.version('{n}') == '{v}'"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let works = |python: &Path| {
        Command::new(python)
            .args(["-c", &check])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if python.exists() && works(&python) {
        return Ok(python);
    }
    println!("installing taskiq and taskiq-aio-sqs ({REQUIREMENTS}) into target/taskiq-venv");
    if !python.exists() {
        let status = tokio::process::Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status()
            .await
            .context(
                "running python3 -m venv for the TaskIQ interop tests (is python3 with venv \
                 installed? On Debian: apt install python3-venv)",
            )?;
        if !status.success() {
            bail!("python3 -m venv {} failed ({status})", venv.display());
        }
    }
    let status = tokio::process::Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(&requirements)
        .status()
        .await
        .context("running pip install for the TaskIQ packages")?;
    if !status.success() {
        bail!("pip install -r {REQUIREMENTS} failed ({status})");
    }
    if !works(&python) {
        bail!("taskiq was installed into target/taskiq-venv but does not import");
    }
    Ok(python)
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
