//! The two workers of the step scenarios: `stepq worker start` processes, or worker services
//! in the measuring process.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use stepq::{make_app, App, StepqConfig};
use tokio_util::sync::CancellationToken;

use super::{shutdown_app, WORKERS};
use crate::bench::aws_env;

/// A `stepq --config CONFIG` command (add its subcommand) with the LocalStack environment,
/// warnings only in its log, stdout and stderr to `log_path`, killed when dropped. It stays
/// in the measuring process's group: an interrupt stops it too.
pub(super) fn stepq_command(
    bin: &Path,
    config_path: &Path,
    log_path: &Path,
) -> Result<tokio::process::Command> {
    let log = std::fs::File::create(log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut command = tokio::process::Command::new(bin);
    command
        .arg("--config")
        .arg(config_path)
        .envs(aws_env())
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    Ok(command)
}

/// Stops worker processes: SIGTERM to all, then waits for each (SIGKILL after 40 s).
pub(super) async fn stop_processes(children: &mut [(tokio::process::Child, PathBuf)]) {
    for (child, _) in children.iter() {
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
    for (child, path) in children.iter_mut() {
        match tokio::time::timeout(Duration::from_secs(40), child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => {
                eprintln!("warning: a worker exited {status}; see {}", path.display())
            }
            _ => {
                eprintln!("warning: a worker did not stop; killing it");
                let _ = child.kill().await;
            }
        }
    }
}

/// The two workers of the step scenarios.
pub(super) enum Workers {
    /// `stepq worker start` processes, with their log files.
    Processes(Vec<(tokio::process::Child, PathBuf)>),
    /// In-process workers, each on its own app (own AWS clients).
    InProcess {
        stop: CancellationToken,
        tasks: Vec<tokio::task::JoinHandle<Result<()>>>,
        apps: Vec<App>,
    },
}

impl Workers {
    pub(super) async fn start(
        stepq_bin: Option<&Path>,
        config_path: &Path,
        config: &StepqConfig,
        work: &Path,
    ) -> Result<Self> {
        match stepq_bin {
            Some(bin) => {
                let mut children = Vec::new();
                for i in 0..WORKERS {
                    let log_path = work.join(format!("worker-{i}.log"));
                    let child = stepq_command(bin, config_path, &log_path)?
                        .args(["worker", "start", "--name", &format!("bench-w{i}")])
                        .spawn()
                        .with_context(|| format!("starting {}", bin.display()))?;
                    children.push((child, log_path));
                }
                Ok(Workers::Processes(children))
            }
            None => {
                let stop = CancellationToken::new();
                let location = Arc::new(stepq_cli::demo::location());
                let mut tasks = Vec::new();
                let mut apps = Vec::new();
                for i in 0..WORKERS {
                    let app = make_app(config).await?;
                    app.startup().await?;
                    let worker = app.worker_service(
                        location.clone(),
                        app.worker_config(format!("bench-w{i}")),
                        false,
                    )?;
                    let stop = stop.clone();
                    tasks.push(tokio::spawn(async move {
                        worker.run(stop).await?;
                        Ok(())
                    }));
                    apps.push(app);
                }
                Ok(Workers::InProcess { stop, tasks, apps })
            }
        }
    }

    pub(super) fn describe(&self) -> &'static str {
        match self {
            Workers::Processes(_) => "two `stepq worker start --config` processes (release build)",
            Workers::InProcess { .. } => {
                "two in-process `stepq::WorkerService`s, each with its own AWS clients"
            }
        }
    }

    /// The end of each worker process's log, for error reports.
    pub(super) fn log_tails(&self) -> String {
        let Workers::Processes(children) = self else {
            return "in-process workers".into();
        };
        let mut text = String::from("worker logs:");
        for (_, path) in children {
            let log = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            text.push_str(&format!(
                "\n--- {}\n{}",
                path.display(),
                lines[lines.len().saturating_sub(20)..].join("\n")
            ));
        }
        text
    }

    /// Stops the workers (SIGTERM, then SIGKILL after 40 s).
    pub(super) async fn stop(&mut self) {
        match self {
            Workers::Processes(children) => stop_processes(children).await,
            Workers::InProcess { stop, tasks, apps } => {
                stop.cancel();
                for task in tasks.drain(..) {
                    match task.await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => eprintln!("warning: a worker failed: {e:#}"),
                        Err(e) => eprintln!("warning: a worker task failed: {e}"),
                    }
                }
                for app in apps.iter() {
                    shutdown_app(app).await;
                }
            }
        }
    }
}
