//! What a run did, step by step, as rows of a table: built from the run's event log, for
//! `stepq run`'s summary and `stepq status` alike.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use stepq_executor::{RunResult, StepRunState};
pub use stepq_plan::events::format_timestamp;
use stepq_plan::{Event, EventKind, Job, StepOutputHandle};
use stepq_results::{OutputKey, OutputStore};

/// One step's line of a run summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRow {
    /// Step key.
    pub step: String,
    /// Status, upper case: `SUCCEEDED`, `FAILED`, `SKIPPED`, `CANCELED`, or, for a run still
    /// going, `QUEUED`, `RUNNING`, `RETRYING`.
    pub status: String,
    /// Attempts made.
    pub attempts: u32,
    /// Worker that ran the last attempt.
    pub worker: Option<String>,
    /// Time the last attempt waited in the queue.
    pub queue_wait: Option<Duration>,
    /// Run time of the last attempt.
    pub duration: Option<Duration>,
    /// Error of a failed step, or why it was skipped.
    pub detail: Option<String>,
}

impl StepRow {
    /// A step sent and not started yet.
    pub fn queued(step: &str) -> Self {
        StepRow::new(step)
    }

    fn new(step: &str) -> Self {
        StepRow {
            step: step.to_string(),
            status: "QUEUED".into(),
            attempts: 0,
            worker: None,
            queue_wait: None,
            duration: None,
            detail: None,
        }
    }
}

/// A run's per-step table, rebuilt from its event log: the one source of the rows `stepq
/// run` prints at the end, `stepq status` prints and `--json` writes, so they agree. Steps
/// come in the order they first appear in the log (the order they were scheduled); a step
/// the log does not name was not part of the run.
///
/// Per step, its last attempt: status (`QUEUED` from its `StepQueued`, `RUNNING` from its
/// `StepStart` — a worker's start notification, recorded when the step starts —, then
/// `SUCCEEDED` / `FAILED` / `RETRYING` / `SKIPPED` / `CANCELED`), the worker and queue wait
/// of its start, its duration (the op's time on success, start to failure on failure, none
/// when canceled), and the error or skip reason. `attempts` is the highest attempt number
/// that started (counting earlier runs of the same run id), or for a step queued and not
/// started yet the attempt queued; a step sent in a fused task that never started counts
/// none.
pub fn rows_from_events(events: &[Event]) -> Vec<StepRow> {
    let mut order: Vec<String> = Vec::new();
    let mut rows: HashMap<String, StepRow> = HashMap::new();
    // (queued at, started at) of each step's current attempt, µs since the epoch.
    let mut times: HashMap<String, (Option<u64>, Option<u64>)> = HashMap::new();
    // Highest attempt that started, per step.
    let mut started: HashMap<String, u32> = HashMap::new();
    for event in events {
        let Some(key) = &event.step_key else { continue };
        let row = rows.entry(key.clone()).or_insert_with(|| {
            order.push(key.clone());
            StepRow::new(key)
        });
        let t = times.entry(key.clone()).or_default();
        match &event.kind {
            EventKind::StepQueued { attempt, .. } => {
                row.attempts = row.attempts.max(*attempt);
                row.status = "QUEUED".into();
                *t = (Some(event.timestamp_us), None);
            }
            EventKind::StepStart { worker, attempt } => {
                let s = started.entry(key.clone()).or_insert(0);
                *s = (*s).max(*attempt);
                row.status = "RUNNING".into();
                row.worker = Some(worker.clone());
                row.duration = None;
                t.1 = Some(event.timestamp_us);
                row.queue_wait =
                    t.0.map(|q| Duration::from_micros(event.timestamp_us.saturating_sub(q)));
            }
            EventKind::StepSuccess { duration } => {
                row.status = "SUCCEEDED".into();
                row.duration = Some(*duration);
                row.detail = None;
            }
            EventKind::StepFailure { error, .. } => {
                row.status = "FAILED".into();
                row.duration =
                    t.1.map(|s| Duration::from_micros(event.timestamp_us.saturating_sub(s)));
                row.detail = Some(error.to_string());
            }
            EventKind::StepRetry { .. } => row.status = "RETRYING".into(),
            EventKind::StepSkipped { reason } => {
                row.status = "SKIPPED".into();
                row.detail = Some(reason.to_string());
            }
            EventKind::StepCanceled => row.status = "CANCELED".into(),
            _ => {}
        }
    }
    order
        .into_iter()
        .filter_map(|k| {
            let mut row = rows.remove(&k)?;
            if row.status != "QUEUED" {
                row.attempts = started.get(&k).copied().unwrap_or(0);
            }
            Some(row)
        })
        .collect()
}

/// Steps of a finished run that succeeded and whose outputs no other step of the run
/// consumed (the run's results), in topological order.
pub fn final_steps(job: &Job, result: &RunResult) -> Vec<String> {
    let ran = |key: &str| {
        result
            .step(key)
            .is_some_and(|s| s.state != StepRunState::NotRun)
    };
    let consumed: std::collections::HashSet<&str> = job
        .steps()
        .iter()
        .filter(|s| ran(&s.key))
        .flat_map(|s| s.inputs.iter().map(|i| i.from_step.as_str()))
        .collect();
    job.topological_order()
        .filter(|key| {
            !consumed.contains(key)
                && result
                    .step(key)
                    .is_some_and(|s| s.state == StepRunState::Succeeded)
        })
        .map(str::to_string)
        .collect()
}

/// `step.output = value` lines for the outputs `steps` emitted (values as compact JSON, cut
/// to 120 characters); at most `limit` steps, then a count of the rest.
pub async fn output_lines(
    job: &Job,
    result: &RunResult,
    store: &dyn OutputStore,
    steps: &[String],
    limit: usize,
) -> Vec<String> {
    let mut lines = Vec::new();
    for key in steps.iter().take(limit) {
        let Some(def) = job.step(key) else { continue };
        for output in &def.outputs {
            let handle = StepOutputHandle {
                step_key: key.clone(),
                output_name: output.name.clone(),
            };
            if !result.known_state.has_output(&handle) {
                continue;
            }
            let text = match store
                .get(&OutputKey::new(&result.run_id, key, &output.name))
                .await
            {
                Ok(bytes) => match stepq_worker::decode_value::<serde_json::Value>(&bytes) {
                    Ok(value) => cut(&value.to_string(), 120),
                    Err(_) => format!("<{} bytes>", bytes.len()),
                },
                Err(e) => format!("<unreadable: {e}>"),
            };
            lines.push(format!("{key}.{} = {text}", output.name));
        }
    }
    if steps.len() > limit {
        lines.push(format!("... and {} more steps", steps.len() - limit));
    }
    lines
}

fn cut(text: &str, max: usize) -> String {
    if text.chars().count() > max {
        let head: String = text.chars().take(max).collect();
        format!("{head}...")
    } else {
        text.to_string()
    }
}

/// A duration for people: `850µs`, `12.3ms`, `4.56s`, `3m05s`.
pub fn human_duration(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1_000.0)
    } else if us < 60_000_000 {
        format!("{:.2}s", d.as_secs_f64())
    } else {
        let secs = d.as_secs();
        format!("{}m{:02}s", secs / 60, secs % 60)
    }
}

/// Renders rows as an aligned text table (step, status, attempts, duration, queue wait,
/// worker), with each failure's error or skip reason on an indented line below its step.
pub fn render_table(rows: &[StepRow]) -> String {
    let header = [
        "STEP",
        "STATUS",
        "ATTEMPTS",
        "DURATION",
        "QUEUE WAIT",
        "WORKER",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.step.clone(),
                r.status.clone(),
                r.attempts.to_string(),
                r.duration.map(human_duration).unwrap_or_else(|| "-".into()),
                r.queue_wait
                    .map(human_duration)
                    .unwrap_or_else(|| "-".into()),
                r.worker.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cols: &[String]| {
        let mut text = String::new();
        for (i, (col, w)) in cols.iter().zip(widths).enumerate() {
            if i + 1 == cols.len() {
                text.push_str(col);
            } else {
                let pad = w - col.chars().count();
                let _ = write!(text, "{col}{}  ", " ".repeat(pad));
            }
        }
        format!("{}\n", text.trim_end())
    };
    let mut out = line(&header.map(String::from));
    for (row, cols) in rows.iter().zip(&cells) {
        out.push_str(&line(cols));
        if let Some(detail) = &row.detail {
            let _ = writeln!(out, "    {}", one_line(detail));
        }
    }
    out
}

/// The text with line breaks folded into ` | ` and cut to 300 characters.
fn one_line(text: &str) -> String {
    let folded: String = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ");
    cut(&folded, 300)
}

/// A step event of run `r` at `us` (tests of the reports built from events).
#[cfg(test)]
pub(crate) fn event_at(us: u64, step: &str, kind: EventKind) -> Event {
    let mut e = Event::step("r", step, kind);
    e.timestamp_us = us;
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use stepq_plan::{ErrorInfo, SkipReason};

    use super::event_at as at;

    #[test]
    fn timestamps_are_utc_dates() {
        assert_eq!(format_timestamp(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            format_timestamp(1_700_000_000_123_456),
            "2023-11-14 22:13:20 UTC"
        );
        assert_eq!(
            format_timestamp(951_782_400_000_000),
            "2000-02-29 00:00:00 UTC"
        );
    }

    #[test]
    fn rows_follow_each_steps_last_attempt() {
        let events = vec![
            Event::run("r", EventKind::RunStarted),
            at(
                100,
                "a",
                EventKind::StepQueued {
                    attempt: 1,
                    task_id: "t1".into(),
                },
            ),
            at(
                400,
                "a",
                EventKind::StepStart {
                    attempt: 1,
                    worker: "w1".into(),
                },
            ),
            at(
                900,
                "a",
                EventKind::StepFailure {
                    error: ErrorInfo::new("op_error", "boom"),
                    will_retry: true,
                },
            ),
            at(
                950,
                "a",
                EventKind::StepRetry {
                    attempt: 2,
                    delay: Duration::ZERO,
                },
            ),
            at(
                1000,
                "a",
                EventKind::StepQueued {
                    attempt: 2,
                    task_id: "t2".into(),
                },
            ),
            at(
                1200,
                "a",
                EventKind::StepStart {
                    attempt: 2,
                    worker: "w2".into(),
                },
            ),
            at(
                1300,
                "a",
                EventKind::StepSuccess {
                    duration: Duration::from_micros(90),
                },
            ),
            at(
                1400,
                "b",
                EventKind::StepSkipped {
                    reason: SkipReason::UpstreamNotSucceeded {
                        upstream: "x".into(),
                    },
                },
            ),
            at(
                1500,
                "c",
                EventKind::StepQueued {
                    attempt: 1,
                    task_id: "t3".into(),
                },
            ),
            at(
                1600,
                "c",
                EventKind::StepStart {
                    attempt: 1,
                    worker: "w1".into(),
                },
            ),
            at(
                2600,
                "c",
                EventKind::StepFailure {
                    error: ErrorInfo::new("op_error", "bad"),
                    will_retry: false,
                },
            ),
            at(2700, "d", EventKind::StepCanceled),
        ];
        let rows = rows_from_events(&events);
        assert_eq!(
            rows.iter().map(|r| r.step.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c", "d"]
        );
        let a = &rows[0];
        assert_eq!(a.status, "SUCCEEDED");
        assert_eq!(a.attempts, 2);
        assert_eq!(a.worker.as_deref(), Some("w2"));
        assert_eq!(a.queue_wait, Some(Duration::from_micros(200)));
        assert_eq!(a.duration, Some(Duration::from_micros(90)));
        assert_eq!(a.detail, None);
        assert_eq!(rows[1].status, "SKIPPED");
        assert!(rows[1].detail.as_deref().unwrap().contains("`x`"));
        assert_eq!(rows[2].status, "FAILED");
        assert_eq!(rows[2].duration, Some(Duration::from_micros(1000)));
        assert!(rows[2].detail.as_deref().unwrap().contains("bad"));
        assert_eq!(rows[3].status, "CANCELED");
    }

    #[test]
    fn a_step_queued_in_a_fused_task_and_never_started_counts_no_attempt() {
        let queued = |us, attempt| {
            at(
                us,
                "m",
                EventKind::StepQueued {
                    attempt,
                    task_id: "t1".into(),
                },
            )
        };
        let skipped = at(
            300,
            "m",
            EventKind::StepSkipped {
                reason: SkipReason::UpstreamNotSucceeded {
                    upstream: "h".into(),
                },
            },
        );
        let rows = rows_from_events(&[queued(100, 1), skipped]);
        assert_eq!((rows[0].status.as_str(), rows[0].attempts), ("SKIPPED", 0));
        let rows = rows_from_events(&[queued(100, 1)]);
        assert_eq!((rows[0].status.as_str(), rows[0].attempts), ("QUEUED", 1));
        let start = at(
            200,
            "m",
            EventKind::StepStart {
                attempt: 1,
                worker: "w".into(),
            },
        );
        let rows = rows_from_events(&[queued(100, 1), start]);
        assert_eq!(rows[0].status, "RUNNING");
        assert_eq!(rows[0].worker.as_deref(), Some("w"));
        assert_eq!(rows[0].queue_wait, Some(Duration::from_micros(100)));
    }

    #[test]
    fn table_is_aligned_with_details_below() {
        let rows = vec![
            StepRow {
                step: "emit_values".into(),
                status: "SUCCEEDED".into(),
                attempts: 1,
                worker: Some("local-0".into()),
                queue_wait: Some(Duration::from_micros(250)),
                duration: Some(Duration::from_millis(3)),
                detail: None,
            },
            StepRow {
                step: "x".into(),
                status: "FAILED".into(),
                attempts: 3,
                worker: None,
                queue_wait: None,
                duration: None,
                detail: Some("[op_error] boom\nsecond line".into()),
            },
        ];
        let table = render_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].starts_with("STEP         STATUS"), "{table}");
        assert!(lines[1].starts_with("emit_values  SUCCEEDED  1"), "{table}");
        assert!(
            lines[1].contains("3.0ms") && lines[1].contains("250µs"),
            "{table}"
        );
        assert!(lines[2].starts_with("x            FAILED     3"), "{table}");
        assert_eq!(lines[3], "    [op_error] boom | second line");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(Duration::from_micros(850)), "850µs");
        assert_eq!(human_duration(Duration::from_micros(12_345)), "12.3ms");
        assert_eq!(human_duration(Duration::from_millis(4_560)), "4.56s");
        assert_eq!(human_duration(Duration::from_secs(185)), "3m05s");
    }

    #[test]
    fn long_details_are_cut() {
        let long = "y".repeat(1000);
        assert_eq!(one_line(&long).chars().count(), 303);
    }
}
