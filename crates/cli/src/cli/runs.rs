//! `stepq runs`: the latest runs of the run store, as a table.

use stepq::app::{App, AppError};

use super::failure::Failure;
use super::status::record_duration;
use super::table::simple_table;
use crate::report::{format_timestamp, human_duration};

pub(super) async fn list_runs(app: &App, limit: usize) -> Result<u8, Failure> {
    let runs = app.runs().list_runs(limit).await.map_err(AppError::from)?;
    let rows: Vec<[String; 5]> = runs
        .iter()
        .map(|r| {
            [
                r.run_id.clone(),
                r.job_name.clone(),
                r.status.to_string(),
                format_timestamp(r.created_at),
                record_duration(r)
                    .map(human_duration)
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print!(
        "{}",
        simple_table(["RUN ID", "JOB", "STATUS", "CREATED", "DURATION"], &rows)
    );
    Ok(0)
}
