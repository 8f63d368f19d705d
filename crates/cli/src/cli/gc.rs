//! `stepq gc`: deletes the finished runs a policy selects and reports what went and the
//! space reclaimed; and the automatic `[retention]` of `stepq run`.

use serde::Serialize;
use stepq::app::App;
use stepq::config::Mode;
use stepq::retention::{GcOptions, GcReport, Reclaimed};

use super::failure::Failure;
use super::json::print_document;
use super::table::simple_table;
use super::timestamps::rfc3339;
use super::GcArgs;
use crate::report::format_timestamp;

/// Free fraction of the database past which the automatic retention compacts it.
const AUTO_COMPACT_ABOVE_FREE: f64 = 0.25;

pub(super) async fn collect_runs(app: &App, args: &GcArgs) -> Result<u8, Failure> {
    let options = GcOptions {
        policy: args.policy()?,
        dry_run: args.dry_run,
        compact_above_free: None,
    };
    let report = app.collect_garbage(&options).await?;
    if args.json {
        print_document(&GcDocument::from(&report))?;
    } else {
        print!("{}", render(&report));
    }
    Ok(0)
}

/// `[retention]` after `stepq run` (embedded default only): collects what the settings
/// select; a failure is a warning on stderr, never the run's exit code.
pub(super) async fn apply_retention(app: &App) {
    if app.mode() != Mode::Embedded {
        return;
    }
    let Some(policy) = app.config().retention.policy() else {
        return;
    };
    let options = GcOptions {
        policy,
        dry_run: false,
        compact_above_free: Some(AUTO_COMPACT_ABOVE_FREE),
    };
    match app.collect_garbage(&options).await {
        Ok(report) => {
            if !report.collected.is_empty() {
                tracing::info!(
                    runs = report.collected.len(),
                    bytes = report.reclaimed.bytes(),
                    "retention: collected finished runs"
                );
            }
            for note in &report.notes {
                eprintln!("warning: retention: {note}");
            }
        }
        Err(e) => eprintln!("warning: retention: {e}"),
    }
}

/// `stepq gc --json`.
#[derive(Debug, Serialize)]
struct GcDocument {
    dry_run: bool,
    /// Runs in the store before.
    runs_seen: usize,
    /// Runs deleted (in a dry run: that would be).
    runs_removed: usize,
    runs: Vec<GcRunJson>,
    skipped: Vec<GcSkippedJson>,
    /// Bytes reclaimed; `null` when not measured (a dry run).
    bytes_reclaimed: Option<u64>,
    /// `database_file`, `state_dir`, `objects` (record and event objects only), or `null`.
    measured: Option<&'static str>,
    bytes_before: Option<u64>,
    bytes_after: Option<u64>,
    /// Whether the database was compacted (`VACUUM`).
    compacted: bool,
    notes: Vec<String>,
}

#[derive(Debug, Serialize)]
struct GcRunJson {
    run_id: String,
    job_name: String,
    status: String,
    created_at: String,
    created_at_us: u64,
    ended_at: Option<String>,
    ended_at_us: Option<u64>,
    event_batches: u64,
    /// Task ids of its steps (from its `StepQueued` events).
    task_ids: Vec<String>,
    task_results_deleted: usize,
}

#[derive(Debug, Serialize)]
struct GcSkippedJson {
    run_id: String,
    reason: String,
}

impl From<&GcReport> for GcDocument {
    fn from(report: &GcReport) -> Self {
        let (measured, bytes_before, bytes_after, compacted) = match report.reclaimed {
            Reclaimed::DatabaseFile {
                before,
                after,
                compacted,
            } => (Some("database_file"), Some(before), Some(after), compacted),
            Reclaimed::StateDir { before, after } => {
                (Some("state_dir"), Some(before), Some(after), false)
            }
            Reclaimed::Objects { .. } => (Some("objects"), None, None, false),
            _ => (None, None, None, false),
        };
        GcDocument {
            dry_run: report.dry_run,
            runs_seen: report.runs_seen,
            runs_removed: report.collected.len(),
            runs: report
                .collected
                .iter()
                .map(|c| GcRunJson {
                    run_id: c.record.run_id.clone(),
                    job_name: c.record.job_name.clone(),
                    status: c.record.status.to_string(),
                    created_at: rfc3339(c.record.created_at),
                    created_at_us: c.record.created_at,
                    ended_at: c.record.ended_at.map(rfc3339),
                    ended_at_us: c.record.ended_at,
                    event_batches: c.event_batches,
                    task_ids: c.task_ids.clone(),
                    task_results_deleted: c.task_results_deleted,
                })
                .collect(),
            skipped: report
                .skipped
                .iter()
                .map(|s| GcSkippedJson {
                    run_id: s.run_id.clone(),
                    reason: s.reason.clone(),
                })
                .collect(),
            bytes_reclaimed: report.reclaimed.bytes(),
            measured,
            bytes_before,
            bytes_after,
            compacted,
            notes: report.notes.clone(),
        }
    }
}

/// `1.5 MiB`, `812 B`.
pub(super) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The text report.
fn render(report: &GcReport) -> String {
    let mut out = String::new();
    let verb = if report.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let runs = report.collected.len();
    let tasks: usize = report.collected.iter().map(|c| c.task_ids.len()).sum();
    out.push_str(&format!(
        "{verb} {runs} of {} run(s) ({tasks} step task(s))\n",
        report.runs_seen
    ));
    if runs > 0 {
        let rows: Vec<[String; 4]> = report
            .collected
            .iter()
            .map(|c| {
                [
                    c.record.run_id.clone(),
                    c.record.job_name.clone(),
                    c.record.status.to_string(),
                    c.record
                        .ended_at
                        .map(format_timestamp)
                        .unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        out.push_str(&simple_table(["RUN ID", "JOB", "STATUS", "ENDED"], &rows));
    }
    for skipped in &report.skipped {
        out.push_str(&format!("kept {}: {}\n", skipped.run_id, skipped.reason));
    }
    match report.reclaimed {
        Reclaimed::DatabaseFile {
            before,
            after,
            compacted,
        } => out.push_str(&format!(
            "reclaimed {} (database {} -> {}{})\n",
            human_bytes(before.saturating_sub(after)),
            human_bytes(before),
            human_bytes(after),
            if compacted { ", compacted" } else { "" }
        )),
        Reclaimed::StateDir { before, after } => out.push_str(&format!(
            "reclaimed {} (state directory {} -> {})\n",
            human_bytes(before.saturating_sub(after)),
            human_bytes(before),
            human_bytes(after)
        )),
        Reclaimed::Objects { bytes } => out.push_str(&format!(
            "reclaimed {} of run records and event logs (outputs and results not counted)\n",
            human_bytes(bytes)
        )),
        _ => {}
    }
    for note in &report.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_in_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
