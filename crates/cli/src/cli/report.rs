//! `stepq report`: writes a run's timeline as one self-contained HTML file
//! ([`crate::report_html`]) and prints the path and size written.

use std::path::PathBuf;

use clap::Args;
use stepq::app::{App, AppError};
use stepq_worker::CodeLocation;

use super::failure::Failure;
use super::gc::human_bytes;
use crate::report_html::{write_report, ReportError};

/// Arguments of `stepq report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The run id.
    pub run_id: String,
    /// The HTML file to write (default: `RUN_ID.html` in the current directory).
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Runs `stepq report`.
pub(super) async fn write_run_report(
    app: &App,
    location: &CodeLocation,
    args: ReportArgs,
) -> Result<u8, Failure> {
    let path = args
        .output
        .unwrap_or_else(|| PathBuf::from(format!("{}.html", args.run_id)));
    let written = write_report(
        app.runs().as_ref(),
        &args.run_id,
        |job| location.job(job),
        &path,
    )
    .await
    .map_err(|e| match e {
        // An unknown run exits 2, like `stepq status`.
        ReportError::Storage(e) => Failure::from(AppError::from(e)),
        other => Failure::runtime(other),
    })?;
    println!(
        "wrote {} ({}, {} steps)",
        written.path.display(),
        human_bytes(written.bytes),
        written.steps
    );
    Ok(0)
}
