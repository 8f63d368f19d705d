//! `cargo xtask deploy-check`: what can be checked of the worker image without a Docker engine
//! (issue #13), run first by `cargo xtask test`.
//!
//! - **The declared MSRV is true of the lock file**: no package of `Cargo.lock` (the whole
//!   resolved tree, as `cargo metadata --locked` reports it) declares a `rust-version` newer
//!   than the workspace's, and every workspace member inherits the workspace's. (Our own code
//!   is held to it by clippy's `incompatible_msrv` lint, which reads `rust-version`; this
//!   machine has one toolchain, 1.95, so a build *on* 1.94.1 is not run here.)
//! - **The Dockerfile builds what the workspace builds**: its `RUST_VERSION` argument is the
//!   workspace's `rust-version`; its `WORKER_PACKAGE` / `WORKER_BIN` defaults name a binary
//!   target of a workspace member; it builds with `--locked`, runs as a non-root `USER`, and
//!   has a `HEALTHCHECK` on `/healthz`.
//! - **docker-compose.yml builds the worker from that Dockerfile** (no inline copy).
//!
//! Not checked (no engine here): that the image builds and runs; hadolint is not packaged
//! for Debian or reachable on this machine's registries.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// A `major.minor.patch` version, missing parts 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Version(u64, u64, u64);

impl Version {
    fn parse(text: &str) -> Result<Self> {
        let mut parts = text.trim().split('.').map(|p| {
            p.parse::<u64>()
                .with_context(|| format!("`{text}` is not a version"))
        });
        let mut next = || parts.next().transpose().map(Option::unwrap_or_default);
        Ok(Version(next()?, next()?, next()?))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// Runs every check; fails naming each problem found.
pub(crate) async fn deploy_check(root: &Path) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = tokio::process::Command::new(cargo)
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--locked"])
        .output()
        .await
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata --locked failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: Value = serde_json::from_slice(&output.stdout).context("cargo metadata")?;
    let mut problems = Vec::new();
    let declared = workspace_rust_version(&root.join("Cargo.toml"))?;
    problems.extend(msrv_problems(&metadata, declared)?);
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).context("Dockerfile")?;
    problems.extend(dockerfile_problems(
        &dockerfile,
        declared,
        &bin_targets(&metadata),
    ));
    let compose =
        std::fs::read_to_string(root.join("docker-compose.yml")).context("docker-compose.yml")?;
    if !compose.contains("dockerfile: Dockerfile") || compose.contains("dockerfile_inline") {
        problems.push(
            "docker-compose.yml: the worker service must build from `dockerfile: Dockerfile`, \
             not an inline copy"
                .into(),
        );
    }
    if !problems.is_empty() {
        bail!("deploy check failed:\n  - {}", problems.join("\n  - "));
    }
    println!(
        "deploy check: rust-version {declared} holds for every locked package; the Dockerfile \
         builds on rust:{declared} with --locked, as a non-root user, with a /healthz healthcheck"
    );
    Ok(())
}

/// `[workspace.package] rust-version` of the root manifest.
fn workspace_rust_version(manifest: &Path) -> Result<Version> {
    let text = std::fs::read_to_string(manifest).context("the workspace Cargo.toml")?;
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("rust-version"))
        .context("the workspace Cargo.toml declares no rust-version")?;
    let value = line.split('=').nth(1).unwrap_or_default();
    Version::parse(value.trim().trim_matches('"'))
}

/// The package ids of the workspace members.
fn members(metadata: &Value) -> Vec<&str> {
    metadata["workspace_members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// Packages declaring a newer rust-version than `declared`, and workspace members declaring
/// none or another one.
fn msrv_problems(metadata: &Value, declared: Version) -> Result<Vec<String>> {
    let members = members(metadata);
    if members.is_empty() {
        bail!("cargo metadata lists no workspace members");
    }
    let mut problems = Vec::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        let name = package["name"].as_str().unwrap_or("?");
        let version = package["version"].as_str().unwrap_or("?");
        let is_member = package["id"]
            .as_str()
            .is_some_and(|id| members.contains(&id));
        match package["rust_version"].as_str() {
            None if is_member => problems.push(format!(
                "workspace member {name} declares no rust-version (add `rust-version.workspace = true`)"
            )),
            None => {}
            Some(text) => {
                let theirs = Version::parse(text)?;
                if theirs > declared {
                    problems.push(format!(
                        "{name} {version} (in Cargo.lock) declares rust-version {theirs}, newer \
                         than the workspace's {declared}: raise rust-version (and the \
                         Dockerfile's RUST_VERSION) or pin an older {name}"
                    ));
                } else if is_member && theirs != declared {
                    problems.push(format!(
                        "workspace member {name} declares rust-version {theirs}, not the workspace's {declared}"
                    ));
                }
            }
        }
    }
    Ok(problems)
}

/// Binary targets of the workspace members: package name -> binary names.
fn bin_targets(metadata: &Value) -> HashMap<String, Vec<String>> {
    let members = members(metadata);
    let mut bins = HashMap::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        if !package["id"]
            .as_str()
            .is_some_and(|id| members.contains(&id))
        {
            continue;
        }
        let names = package["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| {
                t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "bin"))
            })
            .filter_map(|t| t["name"].as_str().map(str::to_string))
            .collect();
        bins.insert(package["name"].as_str().unwrap_or("?").to_string(), names);
    }
    bins
}

/// The default of `ARG name=default` in `dockerfile`.
fn arg_default<'a>(dockerfile: &'a str, name: &str) -> Option<&'a str> {
    dockerfile.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("ARG ")?;
        let (arg, default) = rest.split_once('=')?;
        (arg.trim() == name).then(|| default.trim().trim_matches('"'))
    })
}

/// What is wrong with `dockerfile` against the workspace.
fn dockerfile_problems(
    dockerfile: &str,
    declared: Version,
    bins: &HashMap<String, Vec<String>>,
) -> Vec<String> {
    let mut problems = Vec::new();
    match arg_default(dockerfile, "RUST_VERSION").map(Version::parse) {
        Some(Ok(v)) if v == declared => {}
        Some(Ok(v)) => problems.push(format!(
            "Dockerfile: RUST_VERSION {v} is not the workspace's rust-version {declared}"
        )),
        _ => problems.push("Dockerfile: no `ARG RUST_VERSION=<version>` default".into()),
    }
    if !dockerfile.contains("FROM rust:${RUST_VERSION}") {
        problems.push("Dockerfile: the build stage is not `FROM rust:${RUST_VERSION}-...`".into());
    }
    match (
        arg_default(dockerfile, "WORKER_PACKAGE"),
        arg_default(dockerfile, "WORKER_BIN"),
    ) {
        (Some(package), Some(bin)) => match bins.get(package) {
            Some(names) if names.iter().any(|n| n == bin) => {}
            Some(names) => problems.push(format!(
                "Dockerfile: package {package} has no binary {bin} (it has: {})",
                names.join(", ")
            )),
            None => problems.push(format!(
                "Dockerfile: WORKER_PACKAGE {package} is not a workspace member"
            )),
        },
        _ => problems.push("Dockerfile: no WORKER_PACKAGE / WORKER_BIN defaults".into()),
    }
    let build_line = dockerfile
        .lines()
        .find(|l| l.contains("cargo build"))
        .unwrap_or_default();
    if !build_line.contains("--locked") {
        problems.push("Dockerfile: `cargo build` without --locked".into());
    }
    match dockerfile
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("USER "))
    {
        Some(user) if !matches!(user.trim(), "root" | "0" | "0:0") => {}
        _ => problems.push("Dockerfile: the final stage does not run as a non-root USER".into()),
    }
    if !dockerfile
        .lines()
        .any(|l| l.trim_start().starts_with("HEALTHCHECK") && l.contains("/healthz"))
    {
        problems.push("Dockerfile: no HEALTHCHECK on /healthz".into());
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "ARG RUST_VERSION=1.94.1\nFROM rust:${RUST_VERSION}-bookworm AS build\n\
        ARG WORKER_PACKAGE=stepq-cli\nARG WORKER_BIN=stepq\n\
        RUN cargo build --release --locked -p x\nFROM debian\nUSER stepq\n\
        HEALTHCHECK CMD [\"curl\", \"-fsS\", \"http://127.0.0.1:9464/healthz\"]\n";

    fn bins() -> HashMap<String, Vec<String>> {
        HashMap::from([("stepq-cli".to_string(), vec!["stepq".to_string()])])
    }

    #[test]
    fn versions_compare_by_number_not_by_text() {
        assert!(Version::parse("1.94.1").unwrap() > Version::parse("1.85").unwrap());
        assert!(Version::parse("1.100").unwrap() > Version::parse("1.94.1").unwrap());
        assert_eq!(Version::parse("1.94").unwrap(), Version(1, 94, 0));
        assert!(Version::parse("one").is_err());
    }

    #[test]
    fn a_dependency_newer_than_the_declared_msrv_is_named() {
        let metadata = serde_json::json!({
            "workspace_members": ["ours"],
            "packages": [
                {"id": "ours", "name": "stepq", "version": "0.1.0", "rust_version": "1.85"},
                {"id": "dep", "name": "aws-sdk-s3", "version": "1.157.0", "rust_version": "1.94.1"},
                {"id": "old", "name": "serde", "version": "1.0.0", "rust_version": "1.60"},
            ]
        });
        let problems = msrv_problems(&metadata, Version(1, 85, 0)).unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("aws-sdk-s3 1.157.0"), "{problems:?}");
        let problems = msrv_problems(&metadata, Version(1, 94, 1)).unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("member stepq declares rust-version 1.85.0"));
    }

    #[test]
    fn a_good_dockerfile_passes_and_each_fault_is_named() {
        assert!(dockerfile_problems(GOOD, Version(1, 94, 1), &bins()).is_empty());
        let cases = [
            (
                "RUST_VERSION=1.94.1",
                "RUST_VERSION=1.85",
                "RUST_VERSION 1.85.0",
            ),
            (
                "WORKER_BIN=stepq",
                "WORKER_BIN=other",
                "has no binary other",
            ),
            ("--locked ", "", "without --locked"),
            ("USER stepq", "USER root", "non-root"),
        ];
        for (from, to, expected) in cases {
            let bad = GOOD.replace(from, to);
            let problems = dockerfile_problems(&bad, Version(1, 94, 1), &bins());
            assert!(
                problems.iter().any(|p| p.contains(expected)),
                "{expected}: {problems:?}"
            );
        }
    }
}
