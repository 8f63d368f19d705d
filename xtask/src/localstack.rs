//! Starting, health-checking and stopping LocalStack: with Docker Compose when an engine
//! answers, else natively from a venv under `target/localstack-venv`.
//!
//! Whatever is started is stopped on every way out: [`LocalStack::stop`], `Drop` (errors and
//! panics), and the signal watcher (Ctrl-C, SIGTERM), which also stops a running `cargo test`.
//! `keep()` instead records it in `target/localstack.state` for `localstack-down` (and for
//! reuse by the next `localstack-test`).
//!
//! An xtask that cannot clean up (SIGKILLed, e.g. by a CI timeout) is covered twice:
//!
//! - A native LocalStack that is not to be kept gets a parent-death signal (SIGKILL when the
//!   xtask dies, `PR_SET_PDEATHSIG`). It covers the LocalStack process itself, not processes it
//!   started (`fork` clears the setting); those stay in its process group.
//! - While it runs, every LocalStack an xtask started has an owner record,
//!   `target/localstack-owners/<xtask pid>.json` (the xtask's pid and start time, the
//!   LocalStack's process group and its leader's start time, or `docker`), removed once it is
//!   stopped or kept. The next `localstack-test`, `localstack-up`, `localstack-down` or bench
//!   stops the LocalStack of every record whose xtask is gone (its process group SIGTERMed,
//!   SIGKILLed after [`STOP_TIMEOUT`]) and says so on stderr.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

mod owners;

use owners::{
    die_with_this_process, group_alive, remove_owner, stop_group, stop_orphans, write_owner,
};

/// The LocalStack release the tests (and the reference benchmarks) use.
pub(crate) const LOCALSTACK_VERSION: &str = "4.13.1";
/// pip requirements of a native install (pins known to work with LocalStack 4.13.1).
const PIP_REQUIREMENTS: &[&str] = &[
    "localstack-core[runtime]==4.13.1",
    "cbor2<5.7",
    "cryptography==43.0.3",
    "pyopenssl==24.2.1",
    "service_identity==24.1.0",
];
/// How long LocalStack may take to report SQS and S3 available.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a stopping LocalStack may take before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// The port Docker Compose publishes LocalStack on.
const DOCKER_PORT: u16 = 4566;

/// How a LocalStack we started runs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Running {
    /// A native process, leader of its own process group.
    Native { pid: u32 },
    /// The `localstack` service of the workspace's docker-compose.yml.
    Docker,
}

/// The LocalStack this process started and must stop, with the workspace root.
static ACTIVE: Mutex<Option<(Running, PathBuf)>> = Mutex::new(None);
/// Process group of a running `cargo test`, stopped on interrupt (0 = none).
static CHILD_GROUP: AtomicU32 = AtomicU32::new(0);

/// Registration of a child process group to stop on interrupt, for as long as it lives.
pub(crate) struct ChildGroup;

impl ChildGroup {
    /// Registers `pgid`.
    pub(crate) fn register(pgid: u32) -> Self {
        CHILD_GROUP.store(pgid, Ordering::SeqCst);
        ChildGroup
    }
}

impl Drop for ChildGroup {
    fn drop(&mut self) {
        CHILD_GROUP.store(0, Ordering::SeqCst);
    }
}

/// Sends `signal` (e.g. `TERM`) to every process of group `pgid`.
pub(crate) fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([format!("-{signal}"), "--".into(), format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// On Ctrl-C or SIGTERM: stops a running `cargo test` and the LocalStack we started, then
/// exits with 130.
pub(crate) fn watch_signals() {
    tokio::spawn(async {
        let signal = interrupted().await;
        eprintln!("xtask: {signal}: stopping");
        let child = CHILD_GROUP.load(Ordering::SeqCst);
        if child != 0 {
            signal_group(child, "TERM");
        }
        let active = ACTIVE.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((running, root)) = active {
            stop_running(&running, &root);
            let _ = std::fs::remove_file(state_path(&root));
            remove_owner(&root);
        }
        std::process::exit(130);
    });
}

/// Waits for Ctrl-C or SIGTERM; returns the signal's name.
async fn interrupted() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

fn state_path(root: &Path) -> PathBuf {
    root.join("target/localstack.state")
}

/// The request log: one line per AWS request (`AWS sqs.SendMessage => 200`).
pub(crate) fn log_path(root: &Path) -> PathBuf {
    root.join("target/localstack.log")
}

fn compose_file(root: &Path) -> PathBuf {
    root.join("docker-compose.yml")
}

/// A LocalStack endpoint, started by us (stopped on drop) or reused.
pub(crate) struct LocalStack {
    /// E.g. `http://127.0.0.1:4566`.
    pub endpoint: String,
    root: PathBuf,
    owned: bool,
}

impl LocalStack {
    /// Reuses a healthy LocalStack recorded in `target/localstack.state`, else starts one
    /// (Docker when `docker info` succeeds, else natively) and waits until SQS and S3 are up.
    /// A LocalStack left by an xtask that died is stopped first ([`stop_orphans`]). Unless
    /// it is to be kept (`keep`: it must outlive this process), a native one dies with this
    /// process even if that is SIGKILLed.
    pub(crate) async fn start_or_reuse(root: &Path, keep: bool) -> Result<Self> {
        stop_orphans(root);
        if let Some((running, endpoint)) = read_state(root) {
            if health(&endpoint).is_ok() {
                println!("reusing the LocalStack at {endpoint} (from target/localstack.state)");
                return Ok(LocalStack {
                    endpoint,
                    root: root.to_path_buf(),
                    owned: false,
                });
            }
            println!("the recorded LocalStack at {endpoint} does not answer; replacing it");
            stop_running(&running, root);
            let _ = std::fs::remove_file(state_path(root));
        }
        std::fs::create_dir_all(root.join("target"))?;
        if docker_available().await {
            Self::start_docker(root).await
        } else {
            Self::start_native(root, !keep).await
        }
    }

    /// Makes `running` the LocalStack this process stops on every way out, and records this
    /// process as its owner (see the [module docs](self)); a record that cannot be written is
    /// said on stderr, the LocalStack is still stopped on every way out this process sees.
    fn register(root: &Path, running: Running, endpoint: String) -> Self {
        if let Err(e) = write_owner(root, &running) {
            eprintln!("xtask: cannot record this process as LocalStack's owner: {e:#}");
        }
        *ACTIVE.lock().unwrap_or_else(|p| p.into_inner()) = Some((running, root.to_path_buf()));
        LocalStack {
            endpoint,
            root: root.to_path_buf(),
            owned: true,
        }
    }

    async fn start_docker(root: &Path) -> Result<Self> {
        println!("starting LocalStack {LOCALSTACK_VERSION} with Docker Compose");
        let status = tokio::process::Command::new("docker")
            .arg("compose")
            .arg("-f")
            .arg(compose_file(root))
            .args(["up", "-d", "localstack"])
            .status()
            .await
            .context("running `docker compose up -d localstack`")?;
        if !status.success() {
            bail!("`docker compose up -d localstack` failed ({status})");
        }
        let ls = Self::register(
            root,
            Running::Docker,
            format!("http://127.0.0.1:{DOCKER_PORT}"),
        );
        wait_healthy(&ls.endpoint, || Ok(()), root).await?;
        Ok(ls)
    }

    /// Starts LocalStack from the venv, leader of its own process group; with `tied`, it gets
    /// SIGKILL when this process dies ([`die_with_this_process`]).
    async fn start_native(root: &Path, tied: bool) -> Result<Self> {
        let python = ensure_venv(root).await?;
        let port = free_port()?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let log = File::create(log_path(root)).context("creating target/localstack.log")?;
        println!("starting LocalStack {LOCALSTACK_VERSION} natively at {endpoint} (log: target/localstack.log)");
        let mut command = Command::new(&python);
        if tied {
            die_with_this_process(&mut command);
        }
        let mut child = {
            use std::os::unix::process::CommandExt;
            command
                .args(["-m", "localstack.runtime.main"])
                .current_dir(root.join("target"))
                .env("GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
                .env("LOCALSTACK_HOST", format!("127.0.0.1:{port}"))
                .env("SERVICES", "sqs,s3")
                .env("SQS_ENDPOINT_STRATEGY", "path")
                .env("DISABLE_EVENTS", "1")
                .env("DNS_ADDRESS", "0")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .process_group(0)
                .spawn()
                .context("starting LocalStack")?
        };
        let ls = Self::register(root, Running::Native { pid: child.id() }, endpoint);
        wait_healthy(
            &ls.endpoint,
            || match child.try_wait() {
                Ok(Some(status)) => bail!("LocalStack exited during start-up ({status})"),
                _ => Ok(()),
            },
            root,
        )
        .await?;
        Ok(ls)
    }

    /// Leaves LocalStack running and records it in `target/localstack.state`.
    pub(crate) fn keep(&mut self) -> Result<()> {
        if !self.owned {
            return Ok(());
        }
        let active = ACTIVE.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((running, _)) = active {
            let state = match running {
                Running::Native { pid } => serde_json::json!({
                    "backend": "native", "pid": pid, "endpoint": self.endpoint,
                }),
                Running::Docker => serde_json::json!({
                    "backend": "docker", "endpoint": self.endpoint,
                }),
            };
            std::fs::write(state_path(&self.root), state.to_string())
                .context("writing target/localstack.state")?;
            // The state file holds it now: it is nobody's orphan once this process ends.
            remove_owner(&self.root);
        }
        self.owned = false;
        Ok(())
    }

    /// Ends a command's use of LocalStack: [`keep`](Self::keep)s it (and says how to stop it)
    /// when `keep`, else [`stop`](Self::stop)s it.
    pub(crate) fn keep_or_stop(&mut self, keep: bool) -> Result<()> {
        if keep {
            self.keep()?;
            println!(
                "LocalStack left running at {}; stop it with `cargo xtask localstack-down`",
                self.endpoint
            );
        } else {
            self.stop();
        }
        Ok(())
    }

    /// Stops LocalStack if we started it (a reused one is left alone).
    pub(crate) fn stop(&mut self) {
        if !self.owned {
            return;
        }
        self.owned = false;
        let active = ACTIVE.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((running, root)) = active {
            stop_running(&running, &root);
            remove_owner(&root);
        }
    }

    /// Stops the LocalStack recorded in `target/localstack.state`; false if none is recorded.
    /// LocalStacks left by xtasks that died are stopped too ([`stop_orphans`]).
    pub(crate) fn stop_recorded(root: &Path) -> Result<bool> {
        stop_orphans(root);
        let Some((running, _)) = read_state(root) else {
            return Ok(false);
        };
        stop_running(&running, root);
        std::fs::remove_file(state_path(root)).context("removing target/localstack.state")?;
        Ok(true)
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        self.stop();
    }
}

fn read_state(root: &Path) -> Option<(Running, String)> {
    let text = std::fs::read_to_string(state_path(root)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let endpoint = v.get("endpoint")?.as_str()?.to_string();
    let running = match v.get("backend")?.as_str()? {
        "native" => Running::Native {
            pid: u32::try_from(v.get("pid")?.as_u64()?).ok()?,
        },
        "docker" => Running::Docker,
        _ => return None,
    };
    Some((running, endpoint))
}

fn stop_running(running: &Running, root: &Path) {
    match running {
        Running::Native { pid } => {
            if !group_alive(*pid) {
                return;
            }
            println!("stopping LocalStack (process group {pid})");
            stop_group(*pid);
        }
        Running::Docker => {
            println!("stopping LocalStack (docker compose)");
            let compose = compose_file(root);
            if let Ok(log) = File::create(log_path(root)) {
                let _ = Command::new("docker")
                    .arg("compose")
                    .arg("-f")
                    .arg(&compose)
                    .args(["logs", "--no-color", "--no-log-prefix", "localstack"])
                    .stdout(log)
                    .stderr(Stdio::null())
                    .status();
            }
            let _ = Command::new("docker")
                .arg("compose")
                .arg("-f")
                .arg(&compose)
                .args(["rm", "--stop", "--force", "localstack"])
                .status();
        }
    }
}

/// Whether a Docker engine answers (`docker info`) and Compose v2 is installed.
async fn docker_available() -> bool {
    let succeeds = |args: &'static [&'static str]| async move {
        let probe = tokio::process::Command::new("docker")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .status();
        matches!(
            tokio::time::timeout(Duration::from_secs(20), probe).await,
            Ok(Ok(status)) if status.success()
        )
    };
    succeeds(&["info"]).await && succeeds(&["compose", "version"]).await
}

/// A free loopback port (bound and released; LocalStack binds it right after).
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The venv's python with LocalStack installed, installing it on first use (takes a few
/// minutes).
async fn ensure_venv(root: &Path) -> Result<PathBuf> {
    crate::venv::Venv {
        dir: "target/localstack-venv",
        holds: &format!("LocalStack {LOCALSTACK_VERSION}"),
        check: format!(
            "import importlib.metadata as m, localstack.runtime.main; \
             assert m.version('localstack-core') == '{LOCALSTACK_VERSION}'"
        ),
        pip_args: PIP_REQUIREMENTS.iter().map(|r| r.to_string()).collect(),
    }
    .ensure(root)
    .await
}

/// Asks `GET /_localstack/health`; Ok when SQS and S3 are available.
pub(crate) fn health(endpoint: &str) -> Result<(), String> {
    let authority = endpoint
        .strip_prefix("http://")
        .ok_or_else(|| format!("`{endpoint}` is not an http:// endpoint"))?
        .trim_end_matches('/');
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority} resolves to nothing"))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET /_localstack/health HTTP/1.0\r\nHost: {authority}\r\nAccept: application/json\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or("no HTTP response")?;
    if !head.starts_with("HTTP/1.") || head.split_whitespace().nth(1) != Some("200") {
        return Err(format!(
            "health answered `{}`",
            head.lines().next().unwrap_or("")
        ));
    }
    services_available(body)
}

/// Checks a health document: `services.sqs` and `services.s3` are `available` or `running`.
fn services_available(body: &str) -> Result<(), String> {
    let doc: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("health is not JSON: {e}"))?;
    for service in ["sqs", "s3"] {
        let state = doc
            .pointer(&format!("/services/{service}"))
            .and_then(|s| s.as_str())
            .unwrap_or("missing");
        if state != "available" && state != "running" {
            return Err(format!("{service} is {state}"));
        }
    }
    Ok(())
}

fn log_tail(root: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log_path(root)).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls health every 250 ms until SQS and S3 are up, the process dies (`alive` fails), or
/// [`HEALTH_TIMEOUT`] passes.
async fn wait_healthy(
    endpoint: &str,
    mut alive: impl FnMut() -> Result<()>,
    root: &Path,
) -> Result<()> {
    let started = Instant::now();
    loop {
        let last = match health(endpoint) {
            Ok(()) => {
                println!(
                    "LocalStack is up at {endpoint} after {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            Err(e) => e,
        };
        if let Err(e) = alive() {
            bail!("{e}; last log lines:\n{}", log_tail(root, 30));
        }
        if started.elapsed() > HEALTH_TIMEOUT {
            bail!(
                "LocalStack at {endpoint} not healthy within {HEALTH_TIMEOUT:?} ({last}); \
                 last log lines:\n{}",
                log_tail(root, 30)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_needs_sqs_and_s3() {
        assert!(services_available(
            r#"{"services": {"sqs": "available", "s3": "running", "kms": "disabled"}}"#
        )
        .is_ok());
        assert_eq!(
            services_available(r#"{"services": {"sqs": "available", "s3": "disabled"}}"#),
            Err("s3 is disabled".into())
        );
        assert_eq!(
            services_available(r#"{"services": {}}"#),
            Err("sqs is missing".into())
        );
        assert!(services_available("not json").is_err());
    }

    #[test]
    fn a_closed_port_is_unhealthy() {
        let port = free_port().unwrap();
        assert!(health(&format!("http://127.0.0.1:{port}")).is_err());
        assert!(health("https://example.invalid").is_err());
    }
}
