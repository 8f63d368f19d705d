//! Fairness on a FIFO queue, for real on LocalStack (issue #11): a message group per run
//! split into `groups_per_run` groups caps the share of the fleet one run can hold. A
//! 300-step backfill on 3 workers of 3 slots with `groups_per_run = 2` never holds more than
//! two receives' worth of slots, and a 3-step run started meanwhile runs at once; with
//! `groups_per_run = 100` the backfill takes every slot.
//!
//! Ignored by plain `cargo test`; `cargo xtask localstack-test` runs it.

use std::path::Path;
use std::time::Duration;

use crate::common::cli::{run_configured, text};
use crate::common::localstack::{config_dir_with, localstack, TestQueue, WorkerProcess};
use crate::common::marks::{mark_command, read_marks};
use crate::localstack_routing::{
    concurrency, intervals, spawn_run, status_json, wait_until, worker,
};

const BACKFILL: usize = 300;
const WORKERS: usize = 3;
const SLOTS: usize = 3;

fn write_jobs(dir: &Path) {
    let (start, end) = (mark_command("start"), mark_command("end"));
    let mut jobs = String::from("[jobs.backfill]\n\n");
    for i in 0..BACKFILL {
        jobs.push_str(&format!(
            "[[jobs.backfill.steps]]\nkey = \"b{i:03}\"\nargv = [\"sh\", \"-c\", \"{start}; sleep 0.1; {end}\"]\n\n"
        ));
    }
    jobs.push_str("[jobs.small]\n\n");
    for i in 0..3 {
        jobs.push_str(&format!(
            "[[jobs.small.steps]]\nkey = \"small{i}\"\nargv = [\"sh\", \"-c\", \"{start}; {end}\"]\n\n"
        ));
    }
    std::fs::write(dir.join("jobs.toml"), jobs).unwrap();
}

/// One scenario: (most backfill steps at once, the small run's longest step queue wait).
async fn scenario(groups_per_run: u32) -> (usize, Duration) {
    let ls = localstack();
    let queue = TestQueue::named(&ls, "stepq-fair", true).await;
    let more = format!("\n[executor]\nmax_in_flight = {BACKFILL}\n");
    let dir = config_dir_with(&ls, &queue, "cli-tests", &more);
    let dir = dir.path();
    // The FIFO settings go inside the [sqs] table's config_source.
    let config = std::fs::read_to_string(dir.join("stepq.toml")).unwrap().replace(
        "visibility_timeout = 6 }",
        &format!("visibility_timeout = 6, groups_per_run = {groups_per_run}, use_task_id_for_deduplication = true }}"),
    );
    std::fs::write(dir.join("stepq.toml"), config).unwrap();
    write_jobs(dir);
    let workers: Vec<WorkerProcess> = (0..WORKERS)
        .map(|i| worker(dir, &format!("fair-{i}"), "default", &SLOTS.to_string()))
        .collect();
    let marks = dir.join("marks");
    let backfill_id = format!(
        "backfill-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut backfill = spawn_run(dir, "backfill", &backfill_id);
    wait_until("the backfill to get going", || {
        read_marks(&marks).len() >= 20
    });
    let small_id = format!("small-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let small = run_configured(
        dir,
        &[
            "--jobs-file",
            "jobs.toml",
            "run",
            "small",
            "--workers",
            "0",
            "--run-id",
            &small_id,
        ],
    );
    assert_eq!(small.status.code(), Some(0), "{}", text(&small));
    let status = status_json(dir, &small_id);
    let wait = status["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| Duration::from_micros(s["queue_wait_us"].as_u64().unwrap()))
        .max()
        .unwrap();
    assert!(
        backfill.child().wait().unwrap().success(),
        "the backfill failed"
    );
    let backfill_marks: Vec<_> = read_marks(&marks)
        .into_iter()
        .filter(|m| !m.step.starts_with("small"))
        .collect();
    let spans = intervals(&backfill_marks, None);
    let (most, _) = concurrency(&spans, 0.0, usize::MAX, "");
    for w in workers {
        assert_eq!(w.stop(), Some(0));
    }
    queue.delete().await;
    (most, wait)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "localstack"]
async fn localstack_fairness_groups_per_run_cap_a_backfills_share() {
    let (capped, capped_wait) = scenario(2).await;
    let (open, open_wait) = scenario(100).await;
    println!(
        "FIFO fairness ({BACKFILL}-step backfill, {WORKERS} workers x {SLOTS} slots): \
         groups_per_run = 2: backfill at most {capped} steps at once, the 3-step run's longest \
         queue wait {capped_wait:?}; groups_per_run = 100: at most {open} at once, wait {open_wait:?}"
    );
    // Two groups in flight at most, each one receive of at most a worker's slots.
    assert!(
        capped <= 2 * SLOTS,
        "with 2 groups per run the backfill held {capped} slots at once"
    );
    assert!(
        open > capped,
        "more groups did not let the backfill use more of the fleet"
    );
}
