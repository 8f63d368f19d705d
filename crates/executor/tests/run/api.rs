//! Bad requests and config, typed outputs, the handle and its stream.

use futures::StreamExt;
use stepq_executor::{
    Executor, ExecutorConfig, ExecutorError, OutputError, RunRequest, RunStatus, TagLimit,
};
use stepq_plan::{EventKind, PlanError};

use crate::harness::{Behaviour, Harness};
use crate::scheduling::diamond;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_is_rejected_naming_the_field() {
    let h = Harness::builder(diamond()).start();
    let err = Executor::new(
        h.queue.clone(),
        h.outputs.clone(),
        ExecutorConfig {
            tag_limits: vec![TagLimit::new("db", "warehouse", 0)],
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            ExecutorError::Config {
                field: "tag_limits",
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.is_temporary());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_cannot_be_planned_are_rejected_at_start() {
    let h = Harness::builder(diamond()).start();
    let ex = h.executor(ExecutorConfig::default());

    let err = ex
        .start(h.request("bad-1").with_steps(["nope"]))
        .unwrap_err();
    assert!(
        matches!(&err, ExecutorError::Plan(PlanError::UnknownStep { step, .. }) if step == "nope"),
        "{err}"
    );
    let err = ex
        .start(h.request("bad-2").with_steps(["subtract"]))
        .unwrap_err();
    assert!(
        matches!(&err, ExecutorError::Plan(PlanError::MissingUpstream { .. })),
        "{err}"
    );
    for run_id in ["", "a/b", ".."] {
        let err = ex
            .start(RunRequest::new(run_id, h.job.clone()))
            .unwrap_err();
        assert!(
            matches!(&err, ExecutorError::InvalidRunId { run_id: r, .. } if r == run_id),
            "{err}"
        );
    }
    assert!(h.worker.executed_steps().is_empty());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_are_read_typed_and_errors_name_the_problem() {
    let h = Harness::builder(diamond())
        .behaviour("renamed", Behaviour::Fail)
        .start();
    let ex = h.executor(ExecutorConfig::default());
    let run = h.run(&ex, h.request("outputs-1")).await;
    assert_eq!(run.result.status, RunStatus::Failure);

    let v: i64 = run
        .result
        .output(h.outputs.as_ref(), "add_one", "result")
        .await
        .unwrap();
    assert_eq!(v, 1);
    // A failed step has no outputs.
    let err = ex
        .output::<i64>(&run.result, "renamed", "result")
        .await
        .unwrap_err();
    assert!(matches!(err, OutputError::NotEmitted { .. }), "{err}");
    assert!(err.to_string().contains("renamed"), "{err}");
    // The wrong type does not decode.
    let err = ex
        .output::<String>(&run.result, "add_one", "result")
        .await
        .unwrap_err();
    assert!(matches!(err, OutputError::Decode { .. }), "{err}");
    // An emitted output the store lost.
    use stepq_results::OutputStore;
    h.outputs.delete_run("outputs-1").await.unwrap();
    let err = ex
        .output::<i64>(&run.result, "add_one", "result")
        .await
        .unwrap_err();
    assert!(matches!(err, OutputError::Store { .. }), "{err}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handle_streams_events_until_the_run_ends() {
    let h = Harness::builder(diamond()).start();
    let ex = h.executor(ExecutorConfig::default());
    let mut handle = ex.start(h.request("stream-1")).unwrap();
    assert_eq!(handle.run_id(), "stream-1");
    let stream = handle.events().unwrap();
    assert!(handle.events().is_none(), "the stream is taken once");
    let events: Vec<_> = stream.collect().await;
    assert_eq!(events.last().unwrap().kind, EventKind::RunSuccess);
    assert!(events.iter().all(|e| e.run_id == "stream-1"));
    // The stream ended with the run: an interrupt now changes nothing.
    handle.interrupt();
    let result = handle.wait().await;
    assert_eq!(result.status, RunStatus::Success);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_already_completed_plan_succeeds_without_submitting() {
    let h = Harness::builder(diamond()).start();
    let ex = h.executor(ExecutorConfig::default());
    let first = h.run(&ex, h.request("done-1")).await;
    let run = h
        .run(
            &ex,
            h.request("done-1")
                .with_known_state(first.result.known_state.clone()),
        )
        .await;
    assert_eq!(run.result.status, RunStatus::Success);
    assert!(run.task_ids().is_empty());
    assert_eq!(
        run.events.iter().map(|e| &e.kind).collect::<Vec<_>>(),
        vec![
            &EventKind::RunStarting,
            &EventKind::RunStarted,
            &EventKind::RunSuccess
        ]
    );
    h.shutdown().await;
}
