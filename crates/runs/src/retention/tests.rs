//! Unit tests of the retention policy.

use super::*;

#[test]
fn task_ids_come_from_step_queued_events_once_each_in_order() {
    let queued = |step: &str, attempt, task: &str| {
        Event::step(
            "r",
            step,
            EventKind::StepQueued {
                attempt,
                task_id: task.into(),
            },
        )
    };
    let events = vec![
        Event::run("r", EventKind::RunStarted),
        queued("a", 1, "t-a1"),
        queued("b", 1, "t-b1"),
        // A fused step shares its task; a retry gets a new one.
        queued("c", 1, "t-b1"),
        queued("a", 2, "t-a2"),
        Event::run("r", EventKind::RunSuccess),
    ];
    assert_eq!(step_task_ids(&events), ["t-a1", "t-b1", "t-a2"]);
    assert!(step_task_ids(&[]).is_empty());
}

const DAY_US: u64 = 86_400 * 1_000_000;

/// A run created at day `created`, in `status`, ended at day `ended` if given.
fn run(id: &str, status: RunStatus, created: u64, ended: Option<u64>) -> RunRecord {
    let mut record = RunRecord::new(id, "job", serde_json::json!({}));
    record.status = status;
    record.created_at = created * DAY_US;
    record.ended_at = ended.map(|d| d * DAY_US);
    record
}

fn ids(runs: &[RunRecord]) -> Vec<&str> {
    runs.iter().map(|r| r.run_id.as_str()).collect()
}

/// Newest first, as `list_runs` returns them.
fn listed() -> Vec<RunRecord> {
    use RunStatus::*;
    vec![
        run("r6", Started, 9, None),
        run("r5", Success, 8, Some(8)),
        run("r4", Failure, 6, Some(7)),
        run("r3", Canceling, 3, None),
        run("r2", Canceled, 2, Some(2)),
        run("r1", Success, 1, None),
    ]
}

#[test]
fn no_condition_selects_every_finished_run_oldest_first() {
    let chosen = GcPolicy::default().select(&listed(), 10 * DAY_US);
    assert_eq!(ids(&chosen), ["r1", "r2", "r4", "r5"]);
}

#[test]
fn keep_last_counts_every_run_whatever_its_status() {
    let policy = GcPolicy {
        keep_last: Some(3),
        ..GcPolicy::default()
    };
    // r6 (running), r5 and r4 are the three newest; r3 is CANCELING, never collected.
    assert_eq!(ids(&policy.select(&listed(), 10 * DAY_US)), ["r1", "r2"]);
}

#[test]
fn age_counts_from_the_end_or_else_the_creation() {
    let policy = GcPolicy {
        older_than: Some(Duration::from_secs(3 * 86_400)),
        ..GcPolicy::default()
    };
    // At day 10 the cutoff is day 7: r4 ended at day 7 exactly (not older), r1 has no end
    // and was created at day 1.
    assert_eq!(ids(&policy.select(&listed(), 10 * DAY_US)), ["r1", "r2"]);
    // Long before anything ended, nothing is old enough.
    assert!(policy.select(&listed(), DAY_US).is_empty());
}

#[test]
fn statuses_narrow_the_choice_and_never_reach_a_live_run() {
    let policy = GcPolicy {
        statuses: vec![RunStatus::Success, RunStatus::Started],
        ..GcPolicy::default()
    };
    assert_eq!(ids(&policy.select(&listed(), 10 * DAY_US)), ["r1", "r5"]);
}

#[test]
fn conditions_combine() {
    let policy = GcPolicy {
        older_than: Some(Duration::from_secs(86_400)),
        keep_last: Some(1),
        statuses: vec![RunStatus::Success],
    };
    // r6 is kept as the newest, r5 ended at the cutoff (day 8), r4 and r2 did not succeed.
    assert_eq!(ids(&policy.select(&listed(), 9 * DAY_US)), ["r1"]);
}

#[test]
fn reclaimed_bytes_are_known_where_measured() {
    assert_eq!(Reclaimed::Unknown.bytes(), None);
    let file = Reclaimed::DatabaseFile {
        before: 10,
        after: 4,
        compacted: true,
    };
    assert_eq!(file.bytes(), Some(6));
    assert_eq!(
        Reclaimed::StateDir {
            before: 3,
            after: 9
        }
        .bytes(),
        Some(0)
    );
    assert_eq!(Reclaimed::Objects { bytes: 7 }.bytes(), Some(7));
}
