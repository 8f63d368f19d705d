//! Python venvs under `target/` that xtask installs on first use (LocalStack's, TaskIQ's).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// A venv: where it lives, what it holds, and the Python check that it holds it.
pub(crate) struct Venv<'a> {
    /// The venv's directory, relative to the workspace root (e.g. `target/localstack-venv`).
    pub(crate) dir: &'a str,
    /// What it holds, for messages (e.g. `LocalStack 4.13.1`).
    pub(crate) holds: &'a str,
    /// Python code that succeeds only when the right packages import.
    pub(crate) check: String,
    /// What follows `pip install`: requirements, or `-r` and a requirements file.
    pub(crate) pip_args: Vec<String>,
}

impl Venv<'_> {
    /// The venv's python, after creating the venv and installing into it unless the check
    /// already passes.
    pub(crate) async fn ensure(&self, root: &Path) -> Result<PathBuf> {
        let venv = root.join(self.dir);
        let python = venv.join("bin/python");
        let works = |python: &Path| {
            Command::new(python)
                .args(["-c", &self.check])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if python.exists() && works(&python) {
            return Ok(python);
        }
        println!(
            "installing {} into {} (first run only)",
            self.holds, self.dir
        );
        if !python.exists() {
            let status = tokio::process::Command::new("python3")
                .arg("-m")
                .arg("venv")
                .arg(&venv)
                .status()
                .await
                .context(
                    "running python3 -m venv (is python3 with venv installed? On Debian: \
                     apt install python3-venv)",
                )?;
            if !status.success() {
                bail!("python3 -m venv {} failed ({status})", venv.display());
            }
        }
        let status = tokio::process::Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(&self.pip_args)
            .status()
            .await
            .with_context(|| format!("running pip install of {}", self.holds))?;
        if !status.success() {
            bail!("pip install of {} failed ({status})", self.holds);
        }
        if !works(&python) {
            bail!(
                "{} was installed into {} but does not import",
                self.holds,
                self.dir
            );
        }
        Ok(python)
    }
}
