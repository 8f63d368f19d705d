//! `stepq report`: a run's timeline as one self-contained HTML file (inline style, script
//! and SVG; nothing fetched), built from the run's record and event log through the
//! [`RunStore`] trait alone, so it works on every run store (SQLite, a local directory, S3).
//!
//! It shows one lane per worker with each attempt as a bar (its queue wait lighter, then its
//! run time; failures red with their error on hover and on click; running steps drawn to
//! now), the critical path outlined, a summary (wall time, steps by state, the slowest
//! steps, total queue wait, the skipped, canceled and failed steps) and a table with a row
//! (`data-step="KEY"`) for every step. [`Timeline`] is the model, [`render()`] the page.
//!
//! Large runs stay small and quick: at most [`MAX_LANES`] lanes of at most
//! [`MAX_ROWS_PER_LANE`] rows are drawn, and a 10,000-step run's page is about 3.4 MB.

mod render;
mod timeline;

use std::path::{Path, PathBuf};

use stepq_plan::Job;
use stepq_runs::{RunStore, StorageError};

pub use render::render;
pub use timeline::{
    Attempt, Lane, Outcome, PathSource, Summary, Timeline, MAX_LANES, MAX_ROWS_PER_LANE, SLOWEST,
};

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The run store could not be read (or has no such run).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The file could not be written.
    #[error("cannot write the report to {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What [`write_report`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Steps it shows.
    pub steps: usize,
}

/// The report page of run `run_id`, read from `runs`. `job_of` gives the job definition of a
/// job name (from the code location), when known, for the critical path; a run not ended is
/// drawn up to now.
pub async fn report_page(
    runs: &dyn RunStore,
    run_id: &str,
    job_of: impl Fn(&str) -> Option<std::sync::Arc<Job>>,
) -> Result<(String, usize), ReportError> {
    let record = runs.get_run(run_id).await?;
    let events = stepq_runs::read_all_events(runs, run_id).await?;
    let job = job_of(&record.job_name);
    let ended = if record.status.is_terminal() {
        Some(record.ended_at.unwrap_or(0))
    } else {
        None
    };
    let now = stepq_plan::events::now_us();
    let timeline = Timeline::build(&events, job.as_deref(), ended, now);
    Ok((render(&record, &timeline), timeline.steps.len()))
}

/// Writes the report of run `run_id` to `path` (see [`report_page`]).
pub async fn write_report(
    runs: &dyn RunStore,
    run_id: &str,
    job_of: impl Fn(&str) -> Option<std::sync::Arc<Job>>,
    path: &Path,
) -> Result<Written, ReportError> {
    let (page, steps) = report_page(runs, run_id, job_of).await?;
    let write = |source| ReportError::Write {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(path, page.as_bytes()).map_err(write)?;
    Ok(Written {
        path: path.to_path_buf(),
        bytes: page.len() as u64,
        steps,
    })
}
