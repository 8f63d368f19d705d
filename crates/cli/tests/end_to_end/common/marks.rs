//! Marks the shell steps of a fault test write as they start and end (kind, step, worker,
//! time) into the file `$STEPQ_TEST_MARKS`, so the test sees when each command really ran:
//! the event log records an attempt once, however often its message was delivered.

use std::path::Path;

/// The variable naming the marks file, set on every `stepq` process of the test.
pub(crate) const MARKS_ENV: &str = "STEPQ_TEST_MARKS";
/// The variable naming the process that runs a step (a worker's name).
pub(crate) const WORKER_ENV: &str = "STEPQ_TEST_WORKER";

/// The `sh` command that appends a `kind` (`start` / `end`) mark, escaped for a TOML basic
/// string inside `argv = ["sh", "-c", "..."]`.
pub(crate) fn mark_command(kind: &str) -> String {
    format!(
        "printf '{kind} %s %s %s\\\\n' \\\"$STEPQ_STEP_KEY\\\" \\\"${WORKER_ENV}\\\" \
         \\\"$(date +%s.%N)\\\" >> \\\"${MARKS_ENV}\\\""
    )
}

/// A command mark: `start`/`end`, step, worker, time (Unix seconds).
#[derive(Debug, Clone)]
pub(crate) struct Mark {
    pub start: bool,
    pub step: String,
    pub worker: String,
    pub at: f64,
}

/// The marks written so far, in time order.
pub(crate) fn read_marks(path: &Path) -> Vec<Mark> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut marks: Vec<Mark> = text
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let kind = words.next()?;
            Some(Mark {
                start: kind == "start",
                step: words.next()?.to_string(),
                worker: words.next()?.to_string(),
                at: words.next()?.parse().ok()?,
            })
        })
        .collect();
    marks.sort_by(|a, b| a.at.total_cmp(&b.at));
    marks
}
