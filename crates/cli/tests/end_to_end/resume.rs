//! `stepq resume` orchestrated by this process: on the embedded default (a laptop run that
//! failed, was canceled or whose process died) and through [`App::resume_here`]; and the
//! takeover of a STARTED run whose orchestrator's heartbeat is lost.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::common::app::{app_in, heartbeat_of, orphan_run, FIXABLE_JOBS};
use crate::common::cli::{run, stderr, stdout, text};
use stepq::app::{App, AppError};
use stepq_cli::demo;
use stepq_executor::control::{ControlError, TakeoverRefused};
use stepq_executor::launcher::{known_state_from_events, read_all_events};
use stepq_executor::storage::RunStatus as StoredStatus;
use stepq_executor::LaunchError;
use stepq_results::OutputKey;
use stepq_worker::decode_value;

fn with_jobs<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["--jobs-file", "jobs.toml"];
    all.extend_from_slice(args);
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_resume_reruns_what_did_not_succeed_here() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jobs.toml"), FIXABLE_JOBS).unwrap();
    let out = run(
        dir.path(),
        &with_jobs(&["run", "fixable", "--run-id", "fix-me", "--workers", "2"]),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // Still broken: the resume runs here, fails again, exits 1 like `stepq run`.
    let out = run(
        dir.path(),
        &with_jobs(&["resume", "fix-me", "--workers", "1"]),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout(&out).contains("resuming run fix-me of job `fixable`: 2 steps"),
        "{}",
        text(&out)
    );

    std::fs::write(dir.path().join("fixed"), "").unwrap();
    let out = run(dir.path(), &with_jobs(&["resume", "fix-me"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = stdout(&out);
    assert!(
        shown.contains("resuming run fix-me of job `fixable`: 2 steps"),
        "{shown}"
    );
    assert!(shown.contains("run fix-me SUCCESS"), "{shown}");

    let calls = std::fs::read_to_string(dir.path().join("first_calls")).unwrap();
    assert_eq!(calls.lines().count(), 1, "`first` is not run again");
    let app = app_in(dir.path()).await;
    assert_eq!(
        app.runs().get_run("fix-me").await.unwrap().status,
        StoredStatus::Success
    );
    let events = read_all_events(app.runs().as_ref(), "fix-me")
        .await
        .unwrap();
    let known = known_state_from_events(&events);
    assert_eq!(known.attempts_of("first"), 1);
    assert_eq!(
        known.attempts_of("fixable"),
        3,
        "attempts count on over both resumes"
    );
    assert_eq!(known.attempts_of("last"), 1, "skipped twice, run once");

    // Nothing left to resume: refused like the queued resume (exit 1), nothing runs.
    let out = run(dir.path(), &with_jobs(&["resume", "fix-me"]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("nothing to resume"), "{}", text(&out));
    let out = run(dir.path(), &["resume", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = run(
        dir.path(),
        &with_jobs(&["resume", "fix-me", "--workers", "0"]),
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

/// A heartbeat of worker `id` last written `ago` ago.
async fn heartbeat(app: &App, id: &str, ago: Duration) {
    heartbeat_of(app.heartbeats().as_ref(), id, ago).await;
}

async fn orphan_in(dir: &Path, heartbeat_ago: Option<Duration>) -> App {
    let app = app_in(dir).await;
    orphan_run(&app, "dead-worker").await;
    if let Some(ago) = heartbeat_ago {
        heartbeat(&app, "dead-worker", ago).await;
    }
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_orchestrator_is_lost_is_taken_over_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let app = orphan_in(dir.path(), Some(Duration::from_secs(3_600))).await;
    let out = run(dir.path(), &["resume", "orphan", "--workers", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = stderr(&out);
    assert!(
        said.contains("orchestrator dead-worker is lost (last heartbeat ")
            && said.contains("): taking the run over"),
        "{said}"
    );
    assert!(stdout(&out).contains("resuming run orphan of job `serial`: 1 step ("));
    let record = app.runs().get_run("orphan").await.unwrap();
    assert_eq!(record.status, StoredStatus::Success);
    assert_ne!(record.orchestrator.as_deref(), Some("dead-worker"));
    let events = read_all_events(app.runs().as_ref(), "orphan")
        .await
        .unwrap();
    assert_eq!(known_state_from_events(&events).attempts_of("add_one"), 2);
    let value = app
        .outputs()
        .get(&OutputKey::new("orphan", "add_one", "result"))
        .await
        .unwrap();
    assert_eq!(
        decode_value::<i64>(&value).unwrap(),
        42,
        "`simple`'s output reused"
    );
}

/// The laptop case: `stepq run` killed mid-run on this machine leaves its run STARTED by
/// `stepq@HOST:PID` (no heartbeat); its process is gone, so `stepq resume` takes it over.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_stepq_run_process_is_gone_is_taken_over_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path()).await;
    let mut ended = std::process::Command::new("true").spawn().unwrap();
    let pid = ended.id();
    ended.wait().unwrap();
    let host = stepq_worker::service::host_name();
    let orchestrator = format!("stepq@{host}:{pid}");
    orphan_run(&app, &orchestrator).await;
    let out = run(dir.path(), &["resume", "orphan", "--workers", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stderr(&out).contains(&format!(
            "orchestrator {orchestrator} is gone (no process {pid} runs on this machine)"
        )),
        "{}",
        text(&out)
    );
    let record = app.runs().get_run("orphan").await.unwrap();
    assert_eq!(record.status, StoredStatus::Success);
    let events = read_all_events(app.runs().as_ref(), "orphan")
        .await
        .unwrap();
    assert_eq!(known_state_from_events(&events).attempts_of("add_one"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_or_missing_orchestrator_heartbeat_needs_force() {
    for (heartbeat_ago, says) in [
        (Some(Duration::ZERO), "dead-worker is alive"),
        (None, "dead-worker has no worker heartbeat"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let app = orphan_in(dir.path(), heartbeat_ago).await;
        let out = run(dir.path(), &["resume", "orphan", "--workers", "1"]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let said = stderr(&out);
        assert!(said.contains(says), "{said}");
        assert!(said.contains("stepq resume orphan --force"), "{said}");
        let record = app.runs().get_run("orphan").await.unwrap();
        assert_eq!(record.status, StoredStatus::Started, "nothing was touched");
        assert_eq!(record.orchestrator.as_deref(), Some("dead-worker"));

        let out = run(
            dir.path(),
            &["resume", "orphan", "--force", "--workers", "1"],
        );
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(!stderr(&out).contains("is lost"), "{}", text(&out));
        let record = app.runs().get_run("orphan").await.unwrap();
        assert_eq!(record.status, StoredStatus::Success);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_here_through_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let app = orphan_in(dir.path(), None).await;
    let location = Arc::new(demo::location());
    let local = app.start_local_workers(location.clone(), 1).unwrap();
    let executor = app.executor(Some(local.cancel_hook())).unwrap();

    match app.resume_here(&executor, &location, "orphan", false).await {
        Err(AppError::Control(ControlError::TakeoverRefused {
            status,
            orchestrator,
            reason,
            ..
        })) => {
            assert_eq!(status, StoredStatus::Started);
            assert_eq!(orchestrator.as_deref(), Some("dead-worker"));
            assert_eq!(reason, TakeoverRefused::NoHeartbeat);
        }
        other => panic!("{other:?}"),
    }
    heartbeat(&app, "dead-worker", Duration::ZERO).await;
    assert!(matches!(
        app.check_takeover("orphan", false).await,
        Err(AppError::Control(ControlError::TakeoverRefused {
            reason: TakeoverRefused::Live(_),
            ..
        }))
    ));
    assert!(app.check_takeover("orphan", true).await.unwrap().is_none());

    heartbeat(&app, "dead-worker", Duration::from_secs(3_600)).await;
    let lost = app.check_takeover("orphan", false).await.unwrap().unwrap();
    assert_eq!(lost.orchestrator, "dead-worker");
    let run = app
        .resume_here(&executor, &location, "orphan", false)
        .await
        .unwrap();
    assert_eq!(run.taken_over_from(), Some(&lost));
    assert_eq!(run.step_count(), 1, "only `add_one` runs again");
    let finished = run.wait().await;
    assert_eq!(finished.result.status, stepq_executor::RunStatus::Success);

    // A second takeover of the same run finds nothing to resume.
    match app.resume_here(&executor, &location, "orphan", true).await {
        Err(AppError::Launch(LaunchError::NotResumable { status, .. })) => {
            assert_eq!(status, StoredStatus::Success)
        }
        other => panic!("{other:?}"),
    }
    // A location without the run's job says which jobs it has.
    let empty = stepq_worker::CodeLocation::builder().build().unwrap();
    assert!(matches!(
        app.resume_here(&executor, &empty, "orphan", true).await,
        Err(AppError::UnknownJob { .. })
    ));
    local.shutdown().await.unwrap();
}
