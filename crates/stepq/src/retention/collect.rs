//! [`App::collect_garbage`]: lists the runs, selects by the policy, and collects each selected
//! run record first (compare-and-set), then its outputs, results and cancel markers; then
//! measures (and for SQLite compacts) the space.

use std::path::{Path, PathBuf};

use stepq_runs::{read_all_events, StorageError};
use stepq_worker::service::StateStore;

use super::{step_task_ids, CollectedRun, GcOptions, GcReport, Reclaimed, SkippedRun};
use crate::app::{App, AppError};
use crate::config::Mode;

/// Where the space of this app's state is measured.
enum Space {
    Database(PathBuf),
    StateDir(PathBuf),
    Objects,
}

impl App {
    fn space(&self) -> Space {
        let config = self.config();
        match (self.mode(), config.state_store) {
            (Mode::Distributed, _) => Space::Objects,
            (Mode::Embedded, StateStore::Files) => Space::StateDir(config.state_dir.clone()),
            (Mode::Embedded, _) => {
                Space::Database(config.state_dir.join(stepq_sqlite::DATABASE_FILE))
            }
        }
    }

    /// Collects the finished runs `options.policy` selects (see [`crate::retention`] for
    /// what is eligible and in which order a run's data goes) and reports what it removed
    /// and reclaimed. A run that changed status since it was listed is skipped, not an error;
    /// failing to list the runs is.
    pub async fn collect_garbage(&self, options: &GcOptions) -> Result<GcReport, AppError> {
        let space = self.space();
        let before = match &space {
            Space::Database(path) => file_size(path),
            Space::StateDir(dir) => measure_dir(dir.clone()).await,
            Space::Objects => 0,
        };
        let runs = self.runs().list_runs(usize::MAX).await?;
        let chosen = options.policy.select(&runs, stepq_plan::events::now_us());
        let mut report = GcReport {
            dry_run: options.dry_run,
            runs_seen: runs.len(),
            collected: Vec::new(),
            skipped: Vec::new(),
            reclaimed: Reclaimed::Unknown,
            notes: Vec::new(),
        };
        let mut object_bytes = 0;
        let mut result_errors = Vec::new();
        for record in chosen {
            let run_id = record.run_id.clone();
            let events = match read_all_events(self.runs().as_ref(), &run_id).await {
                Ok(events) => events,
                Err(e) => {
                    report.skipped.push(SkippedRun {
                        run_id,
                        reason: format!("its event log could not be read: {e}"),
                    });
                    continue;
                }
            };
            let task_ids = step_task_ids(&events);
            if options.dry_run {
                report.collected.push(CollectedRun {
                    event_batches: events.len() as u64,
                    record,
                    task_ids,
                    task_results_deleted: 0,
                });
                continue;
            }
            let deleted = match self.runs().delete_run(&run_id, record.status).await {
                Ok(deleted) => deleted,
                Err(e) => {
                    let reason = match e {
                        StorageError::UnexpectedStatus { found, .. } => {
                            format!("it is {found} now, no longer {}", record.status)
                        }
                        StorageError::RunNotFound { .. } => "it is gone already".to_string(),
                        other => format!("deleting it failed: {other}"),
                    };
                    report.skipped.push(SkippedRun { run_id, reason });
                    continue;
                }
            };
            object_bytes += deleted.bytes.unwrap_or(0);
            if let Err(e) = self.outputs().delete_run(&run_id).await {
                report.notes.push(format!(
                    "run {run_id}: its outputs could not be deleted: {e}"
                ));
            }
            let mut task_results_deleted = 0;
            for task_id in &task_ids {
                let result = self.queue().results().delete_result(task_id).await;
                let marker = match self.canceller() {
                    Some(canceller) => canceller.forget(task_id).await.map_err(|e| e.to_string()),
                    None => Ok(()),
                };
                match (result, marker) {
                    (Ok(()), Ok(())) => task_results_deleted += 1,
                    (Err(e), _) => result_errors.push(format!("{task_id}: {e}")),
                    (_, Err(e)) => result_errors.push(format!("{task_id} (cancel marker): {e}")),
                }
            }
            report.collected.push(CollectedRun {
                record: deleted.record,
                event_batches: deleted.event_batches,
                task_ids,
                task_results_deleted,
            });
        }
        if let Some(first) = result_errors.first() {
            report.notes.push(format!(
                "{} task result(s) or cancel marker(s) could not be deleted, first {first}",
                result_errors.len()
            ));
        }
        if self.mode() == Mode::Distributed && !report.collected.is_empty() {
            report.notes.push(
                "the results of the execute_job / resume_job tasks of launched or resumed runs \
                 are not collected: their task ids are in neither the run record nor its events"
                    .to_string(),
            );
        }
        if options.dry_run {
            return Ok(report);
        }
        report.reclaimed = match space {
            Space::Objects => Reclaimed::Objects {
                bytes: object_bytes,
            },
            Space::StateDir(dir) => Reclaimed::StateDir {
                before,
                after: measure_dir(dir).await,
            },
            Space::Database(path) => {
                compact(
                    path,
                    before,
                    !report.collected.is_empty(),
                    options.compact_above_free,
                    &mut report.notes,
                )
                .await
            }
        };
        Ok(report)
    }
}

/// Compacts the database if something was removed (and, with `above_free`, enough of it is
/// free); its size before and after.
async fn compact(
    path: PathBuf,
    before: u64,
    removed: bool,
    above_free: Option<f64>,
    notes: &mut Vec<String>,
) -> Reclaimed {
    let unchanged = |path: &Path| Reclaimed::DatabaseFile {
        before,
        after: file_size(path),
        compacted: false,
    };
    if !removed || !path.exists() {
        return unchanged(&path);
    }
    let task_path = path.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        if let Some(threshold) = above_free {
            if stepq_sqlite::free_fraction(&task_path)? < threshold {
                return Ok(None);
            }
        }
        stepq_sqlite::compact_database(&task_path).map(Some)
    })
    .await;
    match outcome {
        Ok(Ok(Some(_))) => Reclaimed::DatabaseFile {
            before,
            after: file_size(&path),
            compacted: true,
        },
        Ok(Ok(None)) => unchanged(&path),
        Ok(Err(e)) => {
            notes.push(format!("the database could not be compacted: {e}"));
            unchanged(&path)
        }
        Err(e) => {
            notes.push(format!("the database could not be compacted: {e}"));
            unchanged(&path)
        }
    }
}

/// Bytes of the database file and its WAL.
fn file_size(path: &Path) -> u64 {
    let wal = path.with_extension("db-wal");
    [path, wal.as_path()]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// Bytes of every file under `dir` (0 if there is none).
async fn measure_dir(dir: PathBuf) -> u64 {
    fn walk(dir: &Path) -> u64 {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .map(|entry| match entry.file_type() {
                Ok(kind) if kind.is_dir() => walk(&entry.path()),
                Ok(_) => entry.metadata().map(|m| m.len()).unwrap_or(0),
                Err(_) => 0,
            })
            .sum()
    }
    tokio::task::spawn_blocking(move || walk(&dir))
        .await
        .unwrap_or(0)
}
