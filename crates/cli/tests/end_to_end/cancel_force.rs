//! `stepq cancel RUN_ID --force`: a run stuck CANCELING because its orchestrator died ends
//! CANCELED; without `--force` it stays CANCELING, and `--force` touches no run in another
//! status. The binary runs in its own directory against the `.stepq/` run store the test
//! prepares.

use crate::common::app::app_in;
use crate::common::cli::{run, text};
use stepq::app::App;
use stepq_executor::launcher::read_all_events;
use stepq_executor::storage::{RunRecord, RunStatus, StatusChange};
use stepq_plan::EventKind;

const DEAD_ORCHESTRATOR: &str = "w-dead@nowhere:1";

/// Stores run `run_id` and moves it through `path` (the first step by the dead orchestrator).
async fn run_in(app: &App, run_id: &str, path: &[RunStatus]) {
    let runs = app.runs();
    runs.create_run(&RunRecord::new(run_id, "slow", serde_json::Value::Null))
        .await
        .unwrap();
    for (i, status) in path.iter().enumerate() {
        let mut change = StatusChange::to(*status);
        if i == 0 {
            change = change.by(DEAD_ORCHESTRATOR);
        }
        runs.change_status(run_id, &change).await.unwrap();
    }
}

async fn status_of(app: &App, run_id: &str) -> RunStatus {
    app.runs().get_run(run_id).await.unwrap().status
}

#[tokio::test]
async fn force_ends_a_run_stuck_canceling_and_plain_cancel_leaves_it() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path()).await;
    let stuck = [
        RunStatus::Starting,
        RunStatus::Started,
        RunStatus::Canceling,
    ];
    run_in(&app, "r1", &stuck).await;

    // Without --force: the request is already recorded, nobody ends the run.
    let out = run(dir.path(), &["cancel", "r1", "--wait", "0"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("CANCELING"), "{}", text(&out));
    let out = run(dir.path(), &["cancel", "r1", "--wait", "0.2"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("stepq cancel r1 --force"),
        "{}",
        text(&out)
    );
    assert_eq!(status_of(&app, "r1").await, RunStatus::Canceling);

    let out = run(dir.path(), &["cancel", "r1", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("run r1 CANCELED"), "{}", text(&out));
    let record = app.runs().get_run("r1").await.unwrap();
    assert_eq!(record.status, RunStatus::Canceled);
    assert!(record.ended_at.is_some());
    let events = read_all_events(app.runs().as_ref(), "r1").await.unwrap();
    let [forced, canceled] = events.as_slice() else {
        panic!("{events:?}")
    };
    let EventKind::EngineEvent { message } = &forced.kind else {
        panic!("{forced:?}")
    };
    assert!(
        message.contains("force-canceled") && message.contains(DEAD_ORCHESTRATOR),
        "{message}"
    );
    assert_eq!(canceled.kind, EventKind::RunCanceled);

    // Again: the run already ended.
    let out = run(dir.path(), &["cancel", "r1", "--force"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("already ended CANCELED"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn force_touches_no_run_that_is_not_canceling() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path()).await;
    run_in(&app, "running", &[RunStatus::Starting, RunStatus::Started]).await;
    run_in(&app, "queued", &[]).await;

    for (run_id, status) in [
        ("running", RunStatus::Started),
        ("queued", RunStatus::Queued),
    ] {
        let out = run(dir.path(), &["cancel", run_id, "--force"]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains(&format!("is {status}, not CANCELING")),
            "{}",
            text(&out)
        );
        assert_eq!(status_of(&app, run_id).await, status);
        assert!(read_all_events(app.runs().as_ref(), run_id)
            .await
            .unwrap()
            .is_empty());
    }

    let out = run(dir.path(), &["cancel", "nope", "--force"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[tokio::test]
async fn cancel_ends_a_run_whose_orchestrator_is_lost_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path()).await;
    run_in(&app, "r3", &[RunStatus::Starting, RunStatus::Started]).await;
    // The orchestrator's last heartbeat is an hour old: it is LOST.
    let mut beat = stepq_executor::storage::WorkerHeartbeat::new(DEAD_ORCHESTRATOR, "nowhere", 1);
    beat.last_seen -= 3_600_000_000;
    app.heartbeats().put_heartbeat(&beat).await.unwrap();

    let out = run(dir.path(), &["cancel", "r3", "--wait", "0"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "orchestrator {DEAD_ORCHESTRATOR} is lost (last heartbeat "
        )) && text(&out).contains("ending the run without it"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("run r3 CANCELED"), "{}", text(&out));
    assert_eq!(status_of(&app, "r3").await, RunStatus::Canceled);
}
