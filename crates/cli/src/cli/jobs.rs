//! `stepq jobs`: the jobs of the code location and of the jobs files, as a table or as JSON.

use stepq_plan::Job;
use stepq_worker::shell::ShellJobs;
use stepq_worker::CodeLocation;

use super::failure::Failure;
use super::json::{print_document, JobJson, JobsDocument};
use super::table::simple_table;

fn step_keys(job: &Job) -> Vec<String> {
    job.topological_order().map(str::to_string).collect()
}

pub(super) fn print_jobs(
    base: &CodeLocation,
    files: &[ShellJobs],
    json: bool,
) -> Result<u8, Failure> {
    if json {
        let mut jobs: Vec<JobJson> = base
            .jobs()
            .map(|job| JobJson {
                name: job.name().to_string(),
                steps: step_keys(job),
                source: "code_location",
                path: None,
                description: None,
            })
            .collect();
        for file in files {
            jobs.extend(file.jobs().iter().map(|job| JobJson {
                name: job.job.name().to_string(),
                steps: step_keys(&job.job),
                source: "jobs_file",
                path: Some(file.path().display().to_string()),
                description: job.description.clone(),
            }));
        }
        print_document(&JobsDocument { jobs })?;
        return Ok(0);
    }
    let mut rows: Vec<[String; 4]> = base
        .jobs()
        .map(|job| {
            [
                job.name().to_string(),
                job.steps().len().to_string(),
                "code location".to_string(),
                String::new(),
            ]
        })
        .collect();
    for file in files {
        for job in file.jobs() {
            rows.push([
                job.job.name().to_string(),
                job.job.steps().len().to_string(),
                file.path().display().to_string(),
                job.description.clone().unwrap_or_default(),
            ]);
        }
    }
    print!(
        "{}",
        simple_table(["JOB", "STEPS", "SOURCE", "DESCRIPTION"], &rows)
    );
    Ok(0)
}
