//! Worker health for people: every worker service writes a heartbeat (see
//! [`stepq_worker::health`]) every `worker.health_interval_seconds` to the app's heartbeat
//! store (`<state_dir>/workers/ID.json`, or `<s3.base_path>/workers/ID.json` in the bucket);
//! `stepq worker list` shows them as live or lost ([`render_workers`]), and `stepq status`
//! says which worker holds each in-flight step of a run, and when that worker is lost
//! ([`place_in_flight`]).

use std::time::Duration;

use stepq::app::App;
use stepq::config::Mode;
use stepq_runs::{StorageError, WorkerHealth, WorkerState, LOST_AFTER_INTERVALS};

use crate::report::{format_timestamp, StepRow};

/// Running steps listed per worker in `stepq worker list` before "+N more".
const STEPS_LISTED: usize = 3;

/// Every worker with a heartbeat in the app's store, live or lost now (by the configured
/// health interval), by worker id.
pub async fn worker_states(app: &App) -> Result<Vec<WorkerState>, StorageError> {
    app.heartbeats()
        .list_workers(stepq_plan::events::now_us(), app.config().health_interval())
        .await
}

/// A short duration: `250ms`, `5s`, `2.5s`, `4m05s`, `2h03m`, `365d00h`.
fn short_duration(d: Duration) -> String {
    let ms = d.as_millis();
    let secs = d.as_secs();
    if ms < 1_000 {
        format!("{ms}ms")
    } else if secs < 60 {
        if d.subsec_millis() == 0 {
            format!("{secs}s")
        } else {
            format!("{:.1}s", d.as_secs_f64())
        }
    } else if secs < 3_600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else if secs < 86_400 {
        format!("{}h{:02}m", secs / 3_600, (secs % 3_600) / 60)
    } else {
        format!("{}d{:02}h", secs / 86_400, (secs % 86_400) / 3_600)
    }
}

/// `3 × 10s`: how long a worker may be silent before it counts as lost.
fn lost_after(interval: Duration) -> String {
    format!("{LOST_AFTER_INTERVALS} × {}", short_duration(interval))
}

/// `TIMESTAMP (5s ago)`.
fn when(us: u64, now_us: u64) -> String {
    let ago = Duration::from_micros(now_us.saturating_sub(us));
    format!("{} ({} ago)", format_timestamp(us), short_duration(ago))
}

/// The worker table of `stepq worker list`: one row per worker (lost ones marked `LOST`),
/// then, if any is lost, a line saying what that means.
pub fn render_workers(states: &[WorkerState], now_us: u64, interval: Duration) -> String {
    if states.is_empty() {
        return "no workers have a heartbeat\n".to_string();
    }
    let rows: Vec<[String; 9]> = states
        .iter()
        .map(|w| {
            let h = &w.heartbeat;
            let mut steps: Vec<String> = h
                .running_tasks
                .iter()
                .take(STEPS_LISTED)
                .map(|t| match (&t.run_id, &t.step_key) {
                    (Some(run), Some(step)) if t.steps().len() > 1 => {
                        format!("{run}/{step} (+{} fused)", t.steps().len() - 1)
                    }
                    (Some(run), Some(step)) => format!("{run}/{step}"),
                    (Some(run), None) => format!("{run} ({})", t.task_name),
                    _ => t.task_name.clone(),
                })
                .collect();
            if h.running_tasks.len() > STEPS_LISTED {
                steps.push(format!("+{} more", h.running_tasks.len() - STEPS_LISTED));
            }
            [
                h.worker_id.clone(),
                h.host.clone(),
                h.pid.to_string(),
                match w.health {
                    WorkerHealth::Live => "live".to_string(),
                    WorkerHealth::Lost => "LOST".to_string(),
                },
                h.tasks_running.to_string(),
                h.tasks_done.to_string(),
                when(h.last_seen, now_us),
                format_timestamp(h.started_at),
                steps.join(", "),
            ]
        })
        .collect();
    let mut out = crate::cli::simple_table(
        [
            "WORKER",
            "HOST",
            "PID",
            "HEALTH",
            "RUNNING",
            "DONE",
            "LAST SEEN",
            "STARTED",
            "RUNNING STEPS",
        ],
        &rows,
    );
    let lost = states
        .iter()
        .filter(|w| w.health == WorkerHealth::Lost)
        .count();
    if lost > 0 {
        out.push_str(&format!(
            "\n{lost} of {} workers LOST: no heartbeat for over {} (worker.health_interval_seconds); \
             the steps they held are delivered again when their visibility timeout lapses\n",
            states.len(),
            lost_after(interval),
        ));
    }
    out
}

/// Step statuses after which no worker holds the step.
fn is_settled(status: &str) -> bool {
    matches!(status, "SUCCEEDED" | "FAILED" | "SKIPPED" | "CANCELED")
}

/// Where the in-flight tasks of run `run_id` are, from the workers' heartbeats: fills the
/// worker of each in-flight step row a live worker runs, marks rows held by a lost worker, and
/// returns a line for each task (its steps, or the orchestration task) that sits on a lost
/// worker. Every step of a fused task (several steps run one after the other in one task) is
/// placed: the first one not yet ended is RUNNING, the ones after it keep their status (they
/// are queued behind it on that worker) and show the worker too. Steps whose rows say they
/// ended are left alone (a stale heartbeat, or the steps of a fused task already done), and
/// so are orchestration tasks of a run that ended (`run_ended`). `visibility` is the broker's
/// visibility timeout, when there is one.
pub fn place_in_flight(
    run_id: &str,
    run_ended: bool,
    rows: &mut [StepRow],
    states: &[WorkerState],
    interval: Duration,
    visibility: Option<Duration>,
) -> Vec<String> {
    let redelivery = match visibility {
        Some(v) => format!(
            "its message is delivered again when the visibility timeout ({}) lapses",
            short_duration(v)
        ),
        None => "its message is delivered again when the visibility timeout lapses".to_string(),
    };
    // Live holders first, so a step redelivered to a live worker is not reported as lost.
    let mut holders: Vec<&WorkerState> = states.iter().collect();
    holders.sort_by_key(|w| w.health != WorkerHealth::Live);
    let mut placed: Vec<String> = Vec::new();
    let mut lines = Vec::new();
    for state in holders {
        let h = &state.heartbeat;
        let lost = state.health == WorkerHealth::Lost;
        for task in h.tasks_of_run(run_id) {
            let steps = task.steps();
            let what = match &steps[..] {
                [_, ..] => {
                    let held = place_steps(&steps, rows, &mut placed, &h.worker_id, lost);
                    match &held[..] {
                        [] => continue,
                        [step] => format!("step {step} sits"),
                        _ => format!("steps {} sit", held.join(", ")),
                    }
                }
                [] if run_ended => continue,
                [] => {
                    if !lost {
                        lines.push(format!(
                            "the run's {} task runs on worker {} (host {}, pid {}) since {}",
                            task.task_name,
                            h.worker_id,
                            h.host,
                            h.pid,
                            format_timestamp(task.since)
                        ));
                        continue;
                    }
                    format!("the run's {} task sits", task.task_name)
                }
            };
            if lost {
                lines.push(format!(
                    "{what} on worker {} (host {}, pid {}), lost since {} (last heartbeat {}); {redelivery}",
                    h.worker_id,
                    h.host,
                    h.pid,
                    format_timestamp(h.lost_at(interval)),
                    format_timestamp(h.last_seen),
                ));
            }
        }
    }
    lines
}

/// Places the steps of one task on worker `worker_id` (see [`place_in_flight`]) and returns
/// the ones it holds: those not ended per their rows and not placed already (on a live worker
/// that took the task over), in order.
fn place_steps<'a>(
    steps: &[&'a str],
    rows: &mut [StepRow],
    placed: &mut Vec<String>,
    worker_id: &str,
    lost: bool,
) -> Vec<&'a str> {
    let mut held = Vec::new();
    for &step in steps {
        let row = rows.iter_mut().find(|r| r.step == step);
        if row.as_ref().is_some_and(|r| is_settled(&r.status)) || placed.iter().any(|p| p == step) {
            continue;
        }
        placed.push(step.to_string());
        if let Some(row) = row {
            if lost {
                row.worker = Some(format!("{worker_id} (LOST)"));
            } else {
                if held.is_empty() {
                    row.status = "RUNNING".into();
                }
                row.worker = Some(worker_id.to_string());
            }
        }
        held.push(step);
    }
    held
}

/// The broker's visibility timeout for `stepq status` lines: SQS's when distributed.
pub fn visibility_timeout(app: &App) -> Option<Duration> {
    (app.mode() == Mode::Distributed)
        .then(|| Duration::from_secs(u64::from(app.config().sqs.config_source.visibility_timeout)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stepq_executor::storage::{RunningTask, WorkerHeartbeat};

    const SEC: u64 = 1_000_000;

    fn task(run: &str, step: Option<&str>) -> RunningTask {
        RunningTask {
            task_id: format!("t-{run}-{step:?}"),
            task_name: if step.is_some() {
                "execute_plan".into()
            } else {
                "execute_job".into()
            },
            run_id: Some(run.into()),
            step_key: step.map(str::to_string),
            step_keys: Vec::new(),
            since: 50 * SEC,
        }
    }

    /// A fused task of `run` running `steps` in order.
    fn fused(run: &str, steps: &[&str]) -> RunningTask {
        RunningTask {
            step_keys: steps.iter().map(|s| s.to_string()).collect(),
            ..task(run, Some(steps[0]))
        }
    }

    fn state(id: &str, health: WorkerHealth, tasks: Vec<RunningTask>) -> WorkerState {
        let mut heartbeat = WorkerHeartbeat::new(id, "host-a", 42);
        heartbeat.started_at = 10 * SEC;
        heartbeat.last_seen = 60 * SEC;
        heartbeat.tasks_running = tasks.len() as u64;
        heartbeat.tasks_done = 5;
        heartbeat.running_tasks = tasks;
        WorkerState { heartbeat, health }
    }

    fn row(step: &str, status: &str) -> StepRow {
        StepRow {
            step: step.into(),
            status: status.into(),
            attempts: 1,
            worker: None,
            queue_wait: None,
            duration: None,
            detail: None,
        }
    }

    #[test]
    fn short_durations() {
        let cases = [
            (Duration::from_millis(250), "250ms"),
            (Duration::from_secs(5), "5s"),
            (Duration::from_millis(2_500), "2.5s"),
            (Duration::from_secs(245), "4m05s"),
            (Duration::from_secs(7_380), "2h03m"),
            (Duration::from_secs(90_000), "1d01h"),
        ];
        for (d, text) in cases {
            assert_eq!(short_duration(d), text);
        }
    }

    #[test]
    fn the_worker_table_marks_lost_workers() {
        let states = vec![
            state(
                "w-live",
                WorkerHealth::Live,
                vec![task("r1", Some("a")), fused("r3", &["f", "g", "h"])],
            ),
            state(
                "w-lost",
                WorkerHealth::Lost,
                (0..5).map(|i| task("r2", Some(&format!("s{i}")))).collect(),
            ),
        ];
        let text = render_workers(&states, 65 * SEC, Duration::from_secs(1));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("WORKER"), "{text}");
        assert!(lines[0].contains("LAST SEEN"), "{text}");
        assert!(lines[1].starts_with("w-live"), "{text}");
        assert!(lines[1].contains(" live "), "{text}");
        assert!(lines[1].contains("r1/a, r3/f (+2 fused)"), "{text}");
        assert!(lines[1].contains("(5s ago)"), "{text}");
        assert!(lines[2].starts_with("w-lost"), "{text}");
        assert!(lines[2].contains(" LOST "), "{text}");
        assert!(lines[2].contains("+2 more"), "{text}");
        assert!(text.contains("1 of 2 workers LOST"), "{text}");
        assert!(text.contains("3 × 1s"), "{text}");
        let live_only = render_workers(&states[..1], 65 * SEC, Duration::from_secs(1));
        assert!(!live_only.contains("LOST"), "{live_only}");
        assert_eq!(
            render_workers(&[], 0, Duration::from_secs(1)),
            "no workers have a heartbeat\n"
        );
    }

    #[test]
    fn in_flight_steps_are_placed_on_their_workers() {
        let states = vec![
            state(
                "w-live",
                WorkerHealth::Live,
                vec![
                    task("r1", Some("a")),
                    task("r1", None),
                    task("other", Some("b")),
                ],
            ),
            state(
                "w-lost",
                WorkerHealth::Lost,
                vec![
                    task("r1", Some("b")),
                    task("r1", Some("done")),
                    // Redelivered to the live worker since: not reported as lost.
                    task("r1", Some("a")),
                ],
            ),
        ];
        let mut rows = vec![
            row("a", "QUEUED"),
            row("b", "QUEUED"),
            row("done", "SUCCEEDED"),
            row("c", "QUEUED"),
        ];
        let lines = place_in_flight(
            "r1",
            false,
            &mut rows,
            &states,
            Duration::from_secs(2),
            Some(Duration::from_secs(10)),
        );
        assert_eq!(rows[0].status, "RUNNING");
        assert_eq!(rows[0].worker.as_deref(), Some("w-live"));
        assert_eq!(rows[1].status, "QUEUED");
        assert_eq!(rows[1].worker.as_deref(), Some("w-lost (LOST)"));
        assert_eq!(rows[2].worker, None, "a finished step is left alone");
        assert_eq!(rows[3].worker, None);
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(
            lines[0].starts_with("the run's execute_job task runs on worker w-live"),
            "{lines:#?}"
        );
        let lost = &lines[1];
        assert!(
            lost.starts_with("step b sits on worker w-lost (host host-a, pid 42), lost since"),
            "{lost}"
        );
        // Last heartbeat at 60 s, lost three 2 s intervals later.
        assert!(lost.contains(&format_timestamp(66 * SEC)), "{lost}");
        assert!(lost.contains(&format_timestamp(60 * SEC)), "{lost}");
        assert!(lost.contains("visibility timeout (10s) lapses"), "{lost}");
    }

    #[test]
    fn every_step_of_a_fused_task_is_placed_on_its_live_worker() {
        // s0 ended (reported with an earlier task); s1..s3 run in one task on w-live.
        let states = vec![state(
            "w-live",
            WorkerHealth::Live,
            vec![fused("r1", &["s0", "s1", "s2", "s3"])],
        )];
        let mut rows = vec![
            row("s0", "SUCCEEDED"),
            row("s1", "QUEUED"),
            row("s2", "QUEUED"),
            row("s3", "QUEUED"),
            row("other", "QUEUED"),
        ];
        let lines = place_in_flight(
            "r1",
            false,
            &mut rows,
            &states,
            Duration::from_secs(2),
            None,
        );
        assert!(lines.is_empty(), "{lines:#?}");
        assert_eq!(rows[0].worker, None, "an ended step is left alone");
        assert_eq!(rows[0].status, "SUCCEEDED");
        assert_eq!(rows[1].status, "RUNNING");
        for row in &rows[1..4] {
            assert_eq!(row.worker.as_deref(), Some("w-live"), "{}", row.step);
        }
        assert_eq!(rows[2].status, "QUEUED", "waits behind s1 in the task");
        assert_eq!(rows[3].status, "QUEUED");
        assert_eq!(rows[4].worker, None);
    }

    #[test]
    fn a_fused_task_on_a_lost_worker_names_its_steps() {
        let states = vec![
            state(
                "w-lost",
                WorkerHealth::Lost,
                vec![
                    fused("r1", &["s0", "s1", "s2"]),
                    // Every step ended: nothing to report.
                    fused("r1", &["d0", "d1"]),
                ],
            ),
            // The tail of the chain was sent again and runs on a live worker.
            state("w-live", WorkerHealth::Live, vec![task("r1", Some("s2"))]),
        ];
        let fresh_rows = || {
            vec![
                row("s0", "SUCCEEDED"),
                row("s1", "QUEUED"),
                row("s2", "QUEUED"),
                row("d0", "SUCCEEDED"),
                row("d1", "CANCELED"),
            ]
        };
        let mut rows = fresh_rows();
        let lines = place_in_flight(
            "r1",
            false,
            &mut rows,
            &states,
            Duration::from_secs(2),
            Some(Duration::from_secs(10)),
        );
        assert_eq!(rows[0].worker, None);
        assert_eq!(rows[1].status, "QUEUED");
        assert_eq!(rows[1].worker.as_deref(), Some("w-lost (LOST)"));
        assert_eq!(rows[2].status, "RUNNING");
        assert_eq!(rows[2].worker.as_deref(), Some("w-live"));
        assert_eq!(rows[3].worker, None);
        assert_eq!(rows[4].worker, None);
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(
            lines[0].starts_with("step s1 sits on worker w-lost (host host-a, pid 42), lost since"),
            "{lines:#?}"
        );

        // Without the live worker, the lost one holds both steps left.
        let mut rows = fresh_rows();
        let lines = place_in_flight(
            "r1",
            false,
            &mut rows,
            &states[..1],
            Duration::from_secs(2),
            None,
        );
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(
            lines[0].starts_with("steps s1, s2 sit on worker w-lost"),
            "{lines:#?}"
        );
        for row in &rows[1..3] {
            assert_eq!(row.status, "QUEUED");
            assert_eq!(row.worker.as_deref(), Some("w-lost (LOST)"));
        }
    }

    #[test]
    fn a_lost_orchestrator_is_reported_until_the_run_ended() {
        let states = vec![state("w", WorkerHealth::Lost, vec![task("r1", None)])];
        let lines = place_in_flight("r1", false, &mut [], &states, Duration::from_secs(1), None);
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(
            lines[0].starts_with("the run's execute_job task sits on worker w"),
            "{lines:#?}"
        );
        assert!(
            lines[0].ends_with("visibility timeout lapses"),
            "{lines:#?}"
        );
        assert!(
            place_in_flight("r1", true, &mut [], &states, Duration::from_secs(1), None).is_empty()
        );
        assert!(
            place_in_flight("r2", false, &mut [], &states, Duration::from_secs(1), None).is_empty()
        );
    }
}
