//! `stepq jobs`: the jobs of the code location and of the jobs files, as a table.

use stepq_worker::shell::ShellJobs;
use stepq_worker::CodeLocation;

use super::table::simple_table;

pub(super) fn print_jobs(base: &CodeLocation, files: &[ShellJobs]) {
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
}
