//! The fault benchmark's workers: `stepq worker start` processes that can be SIGKILLed and
//! restarted, each incarnation under its own name with its own log and marks file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::analysis::{self, executions, parse_marks, Kill};
use super::{now, FAULT_WORKERS, WORKER_START};
use crate::bench_run::workers::{stepq_command, stop_processes};

/// Worker processes that can be killed and restarted, each incarnation with its own name,
/// log and marks file.
pub(super) struct Fleet {
    bin: PathBuf,
    config_path: PathBuf,
    jobs_path: PathBuf,
    work: PathBuf,
    prefix: &'static str,
    concurrency: Option<usize>,
    /// One per slot: the process and its log.
    children: Vec<(tokio::process::Child, PathBuf)>,
    names: Vec<String>,
    started: usize,
}

impl Fleet {
    pub(super) async fn start(
        bin: &Path,
        config_path: &Path,
        jobs_path: &Path,
        work: &Path,
        prefix: &'static str,
        concurrency: Option<usize>,
    ) -> Result<Self> {
        std::fs::create_dir_all(work.join("marks"))?;
        let mut fleet = Fleet {
            bin: bin.to_path_buf(),
            config_path: config_path.to_path_buf(),
            jobs_path: jobs_path.to_path_buf(),
            work: work.to_path_buf(),
            prefix,
            concurrency,
            children: Vec::new(),
            names: Vec::new(),
            started: 0,
        };
        for _ in 0..FAULT_WORKERS {
            let (child, name) = fleet.spawn()?;
            fleet.children.push(child);
            fleet.names.push(name);
        }
        tokio::time::sleep(WORKER_START).await;
        Ok(fleet)
    }

    /// Starts a worker process under a fresh name.
    fn spawn(&mut self) -> Result<((tokio::process::Child, PathBuf), String)> {
        let name = format!("{}-w{}", self.prefix, self.started);
        self.started += 1;
        let log = self.work.join(format!("{name}.log"));
        let mut command = stepq_command(&self.bin, &self.config_path, &log)?;
        command
            .arg("--jobs-file")
            .arg(&self.jobs_path)
            .args(["worker", "start", "--name", &name])
            .env("BENCH_WORKER", &name)
            .env("BENCH_MARKS", self.work.join(format!("marks/{name}.marks")));
        if let Some(n) = self.concurrency {
            command.arg(format!("--concurrency={n}"));
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        Ok(((child, log), name))
    }

    /// SIGKILLs the worker in `slot` and starts a fresh one in its place.
    pub(super) async fn kill_and_restart(&mut self, slot: usize) -> Result<Kill> {
        let at = now();
        let (child, _) = &mut self.children[slot];
        child.start_kill().context("SIGKILLing a worker")?;
        child.wait().await.context("waiting for a killed worker")?;
        let kill = Kill {
            worker: self.names[slot].clone(),
            at,
        };
        let (child, name) = self.spawn()?;
        self.children[slot] = child;
        self.names[slot] = name;
        Ok(kill)
    }

    /// Every mark written so far, by every incarnation.
    pub(super) fn marks(&self) -> Result<Vec<analysis::Mark>> {
        let mut marks = Vec::new();
        for entry in std::fs::read_dir(self.work.join("marks"))? {
            let text = std::fs::read_to_string(entry?.path())?;
            marks.extend(parse_marks(&text));
        }
        Ok(marks)
    }

    /// Slots whose worker runs a step of `run_id` now.
    pub(super) fn busy_slots(&self, run_id: &str) -> Result<Vec<usize>> {
        let execs = executions(&self.marks()?, run_id);
        Ok((0..self.names.len())
            .filter(|&slot| {
                execs
                    .iter()
                    .any(|e| e.worker == self.names[slot] && e.end.is_none())
            })
            .collect())
    }

    pub(super) async fn stop(&mut self) {
        stop_processes(&mut self.children).await;
    }

    pub(super) fn log_tails(&self) -> String {
        let mut text = String::from("worker logs:");
        for (_, path) in &self.children {
            let log = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(20)..].join("\n");
            text.push_str(&format!("\n--- {}\n{tail}", path.display()));
        }
        text
    }
}
