//! `stepq runs`: the latest runs of the run store that match the filter options, as a table
//! or as JSON.

use stepq::app::{App, AppError};

use super::failure::Failure;
use super::json::{print_document, RunJson, RunsDocument};
use super::status::record_duration;
use super::table::simple_table;
use super::RunsArgs;
use crate::report::{format_timestamp, human_duration};

pub(super) async fn list_runs(app: &App, args: &RunsArgs) -> Result<u8, Failure> {
    let filter = args.filter(stepq_plan::events::now_us());
    let runs = app
        .runs()
        .list_runs_matching(&filter)
        .await
        .map_err(AppError::from)?;
    if args.json {
        print_document(&RunsDocument {
            runs: runs.iter().map(RunJson::from).collect(),
        })?;
        return Ok(0);
    }
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
