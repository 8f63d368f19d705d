//! The model of a run report, built from the run's event log alone: attempts (queue wait and
//! run time of each try of each step), worker lanes, the critical path and the summary.

use std::collections::HashMap;
use std::time::Duration;

use stepq_plan::{Event, EventKind, Job};

use crate::report::{rows_from_events, StepRow};

/// Worker lanes drawn at the most; the workers past the first `MAX_LANES - 1` (by first
/// start) share one last lane.
pub const MAX_LANES: usize = 50;
/// Rows one lane is split into at the most to draw overlapping attempts (a worker running
/// several steps at once); more overlapping attempts are drawn over each other.
pub const MAX_ROWS_PER_LANE: usize = 6;
/// Steps listed as the slowest in the summary.
pub const SLOWEST: usize = 10;

/// How an attempt ended, or that it has not yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The op succeeded.
    Succeeded,
    /// The attempt failed (and may have been retried).
    Failed,
    /// The attempt was canceled.
    Canceled,
    /// Still running (a run not ended: drawn to now).
    Running,
    /// Still waiting in the queue (a run not ended: drawn to now).
    Queued,
    /// Started, but the log says no more and the run is over (its orchestrator died).
    Unknown,
}

impl Outcome {
    /// The CSS class of a bar of this outcome.
    pub fn class(self) -> &'static str {
        match self {
            Outcome::Succeeded => "ok",
            Outcome::Failed => "fail",
            Outcome::Canceled => "cancel",
            Outcome::Running => "run",
            Outcome::Queued => "queued",
            Outcome::Unknown => "unknown",
        }
    }
}

/// One try of one step: when it was queued, started and ended, where it ran.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// Step key.
    pub step: String,
    /// Attempt number, 1-based.
    pub attempt: u32,
    /// The worker that started it, if one did.
    pub worker: Option<String>,
    /// Queued at (µs since the epoch); `None` for a start the log shows no queueing of.
    pub queued_us: Option<u64>,
    /// Started at.
    pub start_us: Option<u64>,
    /// Its run ended at: for a success, its start plus the op's own wall time; else when its
    /// end was recorded; for an attempt still going, the report's "now".
    pub end_us: u64,
    /// When the log recorded its end (a success is recorded once the orchestrator has the
    /// result, which may be well after the op returned); as `end_us` for one still going.
    pub recorded_us: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// The error of a failed attempt.
    pub error: Option<String>,
    /// Index of the lane it is drawn in.
    pub lane: usize,
    /// Row within the lane.
    pub row: usize,
}

impl Attempt {
    /// Time from queued to started (or to its end, while it still waits).
    pub fn queue_wait(&self) -> Duration {
        let until = self.start_us.unwrap_or(self.end_us);
        micros(self.queued_us.map_or(0, |q| until.saturating_sub(q)))
    }

    /// Time from started to ended.
    pub fn run_time(&self) -> Duration {
        micros(self.start_us.map_or(0, |s| self.end_us.saturating_sub(s)))
    }
}

/// A horizontal band of the chart: one worker (or one step where the log names no worker),
/// or the workers past [`MAX_LANES`] together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lane {
    /// What the lane shows: a worker name, a step key, or `+N more workers`.
    pub name: String,
    /// Rows it needs for its overlapping attempts (1 to [`MAX_ROWS_PER_LANE`]).
    pub rows: usize,
    /// Attempts drawn in it.
    pub attempts: usize,
}

/// The report's summary figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// From the run's first event to its end (or now, for a run still going).
    pub wall_time: Duration,
    /// Steps per status (`SUCCEEDED`, `FAILED`, ...), in the order first met.
    pub by_status: Vec<(String, usize)>,
    /// Attempts made (started), all steps.
    pub attempts: usize,
    /// Retries: attempts past each step's first.
    pub retries: usize,
    /// Queue wait of every attempt, added up.
    pub total_queue_wait: Duration,
    /// The slowest steps (run time of their last attempt), slowest first, at most
    /// [`SLOWEST`].
    pub slowest: Vec<(String, Duration)>,
}

/// How the critical path was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathSource {
    /// From the job's dependency graph (the job of the run record, in the code location).
    JobGraph,
    /// From timing alone: the job was not at hand, so each step's predecessor is the step
    /// that ended last before it was queued.
    Timing,
}

/// Everything a report shows, ready to draw.
#[derive(Debug, Clone)]
pub struct Timeline {
    /// Start of the time axis (the run's first event), µs since the epoch.
    pub start_us: u64,
    /// End of the time axis: the run's end, or now for a run still going.
    pub end_us: u64,
    /// Whether the run is still going (its bars extend to now).
    pub running: bool,
    /// Each step's row ([`rows_from_events`]), in the order scheduled.
    pub steps: Vec<StepRow>,
    /// Every attempt, in the order queued.
    pub attempts: Vec<Attempt>,
    /// The lanes, top to bottom.
    pub lanes: Vec<Lane>,
    /// Step keys of the critical path, first to last.
    pub critical_path: Vec<String>,
    /// How [`critical_path`](Timeline::critical_path) was found.
    pub path_source: PathSource,
    /// Summary figures.
    pub summary: Summary,
}

fn micros(us: u64) -> Duration {
    Duration::from_micros(us)
}

impl Timeline {
    /// Builds the model from a run's events. `job`, when given, supplies the dependency
    /// graph for the critical path; `ended_us` is the run's end (its record's `ended_at`), or
    /// `None` for a run still going, whose open attempts then extend to `now_us`.
    pub fn build(events: &[Event], job: Option<&Job>, ended_us: Option<u64>, now_us: u64) -> Self {
        let first = events
            .iter()
            .map(|e| e.timestamp_us)
            .min()
            .unwrap_or(now_us);
        let last = events.iter().map(|e| e.timestamp_us).max().unwrap_or(first);
        let running = ended_us.is_none();
        let end_us = match ended_us {
            Some(end) => end.max(last),
            None => now_us.max(last),
        };
        let mut attempts = collect_attempts(events, end_us, running);
        let lanes = assign_lanes(&mut attempts);
        let steps = rows_from_events(events);
        let (critical_path, path_source) = critical_path(&steps, &attempts, job);
        let summary = summarize(&steps, &attempts, micros(end_us - first));
        Timeline {
            start_us: first,
            end_us,
            running,
            steps,
            attempts,
            lanes,
            critical_path,
            path_source,
            summary,
        }
    }
}

/// Splits the log into attempts: a `StepQueued` opens one, `StepStart` starts it (or opens
/// one with no queueing seen), success / failure / cancel close it. Attempts still open are
/// drawn to the end: running or queued in a run still going, `Unknown` (or dropped, if never
/// started) in one that is over.
fn collect_attempts(events: &[Event], end_us: u64, running: bool) -> Vec<Attempt> {
    let mut attempts: Vec<Attempt> = Vec::new();
    let mut open: HashMap<&str, usize> = HashMap::new();
    for event in events {
        let Some(key) = event.step_key.as_deref() else {
            continue;
        };
        let at = event.timestamp_us;
        let new = |attempt: u32| Attempt {
            step: key.to_string(),
            attempt,
            worker: None,
            queued_us: None,
            start_us: None,
            end_us,
            recorded_us: end_us,
            outcome: if running {
                Outcome::Queued
            } else {
                Outcome::Unknown
            },
            error: None,
            lane: 0,
            row: 0,
        };
        match &event.kind {
            EventKind::StepQueued { attempt, .. } => {
                open.insert(key, attempts.len());
                attempts.push(Attempt {
                    queued_us: Some(at),
                    ..new(*attempt)
                });
            }
            EventKind::StepStart { attempt, worker } => {
                let index = match open.get(key) {
                    Some(&i) if attempts[i].start_us.is_none() => i,
                    _ => {
                        open.insert(key, attempts.len());
                        attempts.push(new(*attempt));
                        attempts.len() - 1
                    }
                };
                let a = &mut attempts[index];
                a.attempt = *attempt;
                a.start_us = Some(at);
                a.worker = (!worker.is_empty()).then(|| worker.clone());
                if running {
                    a.outcome = Outcome::Running;
                }
            }
            EventKind::StepSuccess { duration } => {
                let ran = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
                if let Some(i) = close(&mut attempts, &mut open, key, at, Outcome::Succeeded, None)
                {
                    if let Some(start) = attempts[i].start_us {
                        attempts[i].end_us = start.saturating_add(ran).min(at);
                    }
                }
            }
            EventKind::StepFailure { error, .. } => {
                let error = Some(error.to_string());
                close(&mut attempts, &mut open, key, at, Outcome::Failed, error);
            }
            EventKind::StepCanceled => {
                close(&mut attempts, &mut open, key, at, Outcome::Canceled, None);
            }
            EventKind::StepSkipped { .. } => {
                // A step queued in a fused task that never started: nothing to draw.
                if let Some(i) = open.remove(key) {
                    if attempts[i].start_us.is_none() {
                        attempts[i].outcome = Outcome::Unknown;
                    }
                }
            }
            _ => {}
        }
    }
    // An attempt never started that did not end either (the run is over, or the step was
    // skipped) was not tried: nothing to draw.
    attempts.retain(|a| a.start_us.is_some() || a.outcome != Outcome::Unknown);
    attempts
}

fn close(
    attempts: &mut [Attempt],
    open: &mut HashMap<&str, usize>,
    key: &str,
    at: u64,
    outcome: Outcome,
    error: Option<String>,
) -> Option<usize> {
    let i = open.remove(key)?;
    let a = &mut attempts[i];
    a.end_us = at;
    a.recorded_us = at;
    a.outcome = outcome;
    a.error = error;
    Some(i)
}

/// One lane per worker, in order of first start (one per step when no attempt names a
/// worker); past [`MAX_LANES`] the rest share the last lane. Within a lane, attempts whose
/// run times overlap go on separate rows, first fit, at most [`MAX_ROWS_PER_LANE`].
fn assign_lanes(attempts: &mut [Attempt]) -> Vec<Lane> {
    let by_worker = attempts.iter().any(|a| a.worker.is_some());
    let name_of = |a: &Attempt| match (&a.worker, by_worker) {
        (Some(w), true) => w.clone(),
        (None, true) => "(not started)".to_string(),
        (_, false) => a.step.clone(),
    };
    let mut order: Vec<usize> = (0..attempts.len()).collect();
    order.sort_by_key(|&i| (run_start(&attempts[i]), i));
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut names: Vec<String> = Vec::new();
    for &i in &order {
        let name = name_of(&attempts[i]);
        let next = index.len();
        let lane = *index.entry(name.clone()).or_insert_with(|| {
            names.push(name);
            next
        });
        attempts[i].lane = lane.min(MAX_LANES - 1);
    }
    if names.len() > MAX_LANES {
        let rest = names.len() - (MAX_LANES - 1);
        names.truncate(MAX_LANES - 1);
        names.push(format!(
            "+{rest} more {}",
            if by_worker { "workers" } else { "steps" }
        ));
    }
    // Rows: the end time of the last attempt placed on each row of each lane.
    let mut row_ends: Vec<Vec<u64>> = vec![Vec::new(); names.len()];
    let mut counts = vec![0; names.len()];
    for &i in &order {
        let a = &mut attempts[i];
        let ends = &mut row_ends[a.lane];
        counts[a.lane] += 1;
        let begin = run_start(a);
        let row = match ends.iter().position(|&e| e <= begin) {
            Some(r) => r,
            None if ends.len() < MAX_ROWS_PER_LANE => {
                ends.push(0);
                ends.len() - 1
            }
            None => (0..ends.len()).min_by_key(|&r| ends[r]).unwrap_or(0),
        };
        ends[row] = a.end_us.max(begin);
        a.row = row;
    }
    names
        .into_iter()
        .zip(row_ends)
        .zip(counts)
        .map(|((name, ends), attempts)| Lane {
            name,
            rows: ends.len().max(1),
            attempts,
        })
        .collect()
}

/// Where an attempt's run begins: its start, else (not started) its queueing. Rows are
/// packed by run time: queue waits are drawn behind the bars, as thin lines.
fn run_start(a: &Attempt) -> u64 {
    a.start_us.or(a.queued_us).unwrap_or(a.end_us)
}

/// When an attempt became ready: its queueing, else its start.
fn lane_start(a: &Attempt) -> u64 {
    a.queued_us.or(a.start_us).unwrap_or(a.end_us)
}

/// The chain of steps that decided when the run ended, first to last. From its last step to
/// end, it walks back to the upstream step (per the job graph) that ended last; without the
/// job, to the step that ended last before this one was first queued.
fn critical_path(
    steps: &[StepRow],
    attempts: &[Attempt],
    job: Option<&Job>,
) -> (Vec<String>, PathSource) {
    // Per step: first queued (or started) and last end.
    let mut span: HashMap<&str, (u64, u64)> = HashMap::new();
    for a in attempts {
        let s = span.entry(a.step.as_str()).or_insert((u64::MAX, 0));
        s.0 = s.0.min(lane_start(a));
        s.1 = s.1.max(a.recorded_us);
    }
    let source = if job.is_some() {
        PathSource::JobGraph
    } else {
        PathSource::Timing
    };
    let Some(mut current) = steps
        .iter()
        .filter_map(|r| span.get(r.step.as_str()).map(|s| (s.1, r.step.as_str())))
        .max_by_key(|(end, _)| *end)
        .map(|(_, key)| key)
    else {
        return (Vec::new(), source);
    };
    // Without the job: steps by end time, to find the last end before a queueing.
    let mut by_end: Vec<(u64, &str)> = span.iter().map(|(k, s)| (s.1, *k)).collect();
    by_end.sort_unstable();
    let mut path = vec![current.to_string()];
    loop {
        let ready = span[current].0;
        let previous = match job {
            Some(job) => job
                .step(current)
                .into_iter()
                .flat_map(|def| def.inputs.iter().map(|i| i.from_step.as_str()))
                .filter_map(|up| span.get_key_value(up).map(|(k, s)| (s.1, *k)))
                .max(),
            None => {
                let n = by_end.partition_point(|(end, _)| *end <= ready);
                by_end[..n]
                    .iter()
                    .rev()
                    .find(|(_, k)| *k != current)
                    .copied()
            }
        };
        match previous {
            Some((_, key)) if !path.iter().any(|p| p == key) => {
                path.push(key.to_string());
                current = key;
            }
            _ => break,
        }
    }
    path.reverse();
    (path, source)
}

fn summarize(steps: &[StepRow], attempts: &[Attempt], wall_time: Duration) -> Summary {
    let mut by_status: Vec<(String, usize)> = Vec::new();
    for row in steps {
        match by_status.iter_mut().find(|(s, _)| *s == row.status) {
            Some((_, n)) => *n += 1,
            None => by_status.push((row.status.clone(), 1)),
        }
    }
    let started = attempts.iter().filter(|a| a.start_us.is_some()).count();
    let tried: std::collections::HashSet<&str> = attempts
        .iter()
        .filter(|a| a.start_us.is_some())
        .map(|a| a.step.as_str())
        .collect();
    let mut slowest: Vec<(String, Duration)> = steps
        .iter()
        .filter_map(|r| Some((r.step.clone(), r.duration?)))
        .collect();
    // Steps still running count with their time so far.
    for a in attempts.iter().filter(|a| a.outcome == Outcome::Running) {
        slowest.push((a.step.clone(), a.run_time()));
    }
    slowest.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    slowest.truncate(SLOWEST);
    Summary {
        wall_time,
        by_status,
        attempts: started,
        retries: started.saturating_sub(tried.len()),
        total_queue_wait: attempts.iter().map(Attempt::queue_wait).sum(),
        slowest,
    }
}

#[cfg(test)]
#[path = "timeline_tests.rs"]
mod tests;
