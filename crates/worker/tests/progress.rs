//! Progress reported while a task runs, end to end on the in-memory stack (a real worker and
//! a real executor with recorded runs): a step's `StepStart` is in the run's log while it
//! runs, a fused chain's finished steps are recorded as each one ends, and a resume after the
//! orchestrator died mid-chain runs only the step that was in flight and the ones after it.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::harness::{Harness, WAIT};
use stepq_executor::launcher::{read_all_events, RunLauncher};
use stepq_executor::storage::{InMemoryRunStore, RunRecord, RunStatus, RunStore, StatusChange};
use stepq_executor::{Executor, ExecutorConfig, RunRequest};
use stepq_plan::{Event, EventKind, Job, StepDef};
use stepq_worker::{op_map, op_output, CodeLocation, WorkerConfig};
use tokio::sync::Notify;

/// Steps of the chain job.
const STEPS: usize = 6;
/// The step that blocks (on its first execution only, in the crash test).
const BLOCKER: usize = 3;

/// What the ops share with the test: executions per step, the blocker's gate.
#[derive(Default)]
struct Ops {
    runs: [AtomicUsize; STEPS],
    /// Set when the blocker started.
    blocker_started: Notify,
    /// Lets the blocker finish (in the RUNNING test).
    release: Notify,
    /// The blocker's first execution never ends (in the crash test).
    first_blocks_forever: AtomicBool,
}

/// `c0 -> c1 -> ... -> c5`: `c0` emits 0, each next one adds one.
fn chain_job() -> Job {
    Job::builder("chain")
        .step(StepDef::new("c0", "first").output("result"))
        .steps((1..STEPS).map(|i| {
            StepDef::new(format!("c{i}"), "next")
                .input("num", format!("c{}", i - 1), "result")
                .output("result")
        }))
        .build()
        .unwrap()
}

fn index(key: &str) -> usize {
    key[1..].parse().unwrap()
}

fn location(ops: &Arc<Ops>) -> CodeLocation {
    let first = ops.clone();
    let next = ops.clone();
    CodeLocation::builder()
        .op(
            "first",
            op_output("result", move |_ctx, _in| {
                first.runs[0].fetch_add(1, Ordering::SeqCst);
                async { Ok(0_i64) }
            }),
        )
        .op(
            "next",
            op_map("num", "result", move |ctx, n: i64| {
                let ops = next.clone();
                async move {
                    let i = index(ctx.step_key());
                    let before = ops.runs[i].fetch_add(1, Ordering::SeqCst);
                    if i == BLOCKER {
                        ops.blocker_started.notify_one();
                        if ops.first_blocks_forever.load(Ordering::SeqCst) {
                            if before == 0 {
                                std::future::pending::<()>().await;
                            }
                        } else {
                            ops.release.notified().await;
                        }
                    }
                    Ok(n + 1)
                }
            }),
        )
        .job(chain_job())
        .build()
        .unwrap()
}

async fn worker(ops: &Arc<Ops>) -> Harness {
    let config = WorkerConfig::named("w-1")
        .with_concurrency(2)
        .with_grace_period(Duration::from_millis(100));
    Harness::start(location(ops), config).await
}

fn launcher(h: &Harness, store: &Arc<InMemoryRunStore>, fuse_chains: bool) -> RunLauncher {
    let config = ExecutorConfig {
        fuse_chains,
        ..Default::default()
    };
    let executor = Executor::new(h.queue.clone(), h.outputs.clone(), config).unwrap();
    RunLauncher::new(executor, store.clone()).with_event_linger(Duration::ZERO)
}

/// Records run `run_id` of the chain job (QUEUED) and its request.
async fn recorded(store: &InMemoryRunStore, run_id: &str) -> RunRequest {
    store
        .create_run(&RunRecord::new(run_id, "chain", serde_json::Value::Null))
        .await
        .unwrap();
    RunRequest::new(run_id, Arc::new(chain_job()))
}

fn claim(by: &str) -> StatusChange {
    StatusChange::to(RunStatus::Starting).by(by)
}

/// Re-reads the run's log until `done` says it holds what is awaited (the run store cannot
/// notify); fails the test after [`WAIT`].
async fn log_until(
    store: &InMemoryRunStore,
    run_id: &str,
    what: &str,
    done: impl Fn(&[Event]) -> bool,
) -> Vec<Event> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let events = read_all_events(store, run_id).await.unwrap();
        if done(&events) {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the log never showed {what}: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn is(event: &Event, key: &str, kind: fn(&EventKind) -> bool) -> bool {
    event.step_key.as_deref() == Some(key) && kind(&event.kind)
}

fn start(kind: &EventKind) -> bool {
    matches!(kind, EventKind::StepStart { .. })
}

fn success(kind: &EventKind) -> bool {
    matches!(kind, EventKind::StepSuccess { .. })
}

fn count(events: &[Event], key: &str, kind: fn(&EventKind) -> bool) -> usize {
    events.iter().filter(|e| is(e, key, kind)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_step_is_running_in_the_log_and_finished_chain_steps_are_recorded() {
    for fuse_chains in [true, false] {
        let ops = Arc::new(Ops::default());
        let h = worker(&ops).await;
        let store = Arc::new(InMemoryRunStore::new());
        let launcher = launcher(&h, &store, fuse_chains);
        let run_id = format!("running-{fuse_chains}");
        let run = launcher
            .start(recorded(&store, &run_id).await, &claim("orch"))
            .await
            .unwrap();
        tokio::time::timeout(WAIT, ops.blocker_started.notified())
            .await
            .expect("the blocker starts");

        let blocker = format!("c{BLOCKER}");
        let log = log_until(&store, &run_id, "the blocker's start", |events| {
            events.iter().any(|e| is(e, &blocker, start))
        })
        .await;
        // It runs: started on its worker, not ended; the steps before it are recorded
        // as succeeded although (fused) their task has not ended.
        assert_eq!(count(&log, &blocker, success), 0, "{log:#?}");
        let started = log.iter().find(|e| is(e, &blocker, start)).unwrap();
        assert!(
            matches!(&started.kind, EventKind::StepStart { worker, attempt: 1 } if worker == "w-1"),
            "{started:?}"
        );
        for i in 0..BLOCKER {
            assert_eq!(count(&log, &format!("c{i}"), success), 1, "c{i}: {log:#?}");
        }

        ops.release.notify_one();
        let outcome = tokio::time::timeout(WAIT, run.wait()).await.unwrap();
        assert!(outcome.result.status.is_success(), "{:?}", outcome.result);
        let log = read_all_events(store.as_ref(), &run_id).await.unwrap();
        for i in 0..STEPS {
            let key = format!("c{i}");
            // Recorded once each, though the task's result carries them again.
            assert_eq!(count(&log, &key, start), 1, "{key}: {log:#?}");
            assert_eq!(count(&log, &key, success), 1, "{key}: {log:#?}");
            let at = |kind| log.iter().position(|e| is(e, &key, kind)).unwrap();
            assert!(at(start) < at(success), "{key}");
        }
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_after_the_orchestrator_died_mid_chain_reruns_only_the_step_in_flight() {
    for fuse_chains in [true, false] {
        let ops = Arc::new(Ops::default());
        ops.first_blocks_forever.store(true, Ordering::SeqCst);
        let h = worker(&ops).await;
        let store = Arc::new(InMemoryRunStore::new());
        let run_id = format!("crash-{fuse_chains}");
        let request = recorded(&store, &run_id).await;

        // The orchestrator runs on a runtime of its own, shut down mid-chain: everything it
        // spawned stops where it is, as in a killed process.
        let orchestrator = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let first = launcher(&h, &store, fuse_chains);
        orchestrator.spawn(async move {
            let run = first.start(request, &claim("orch-1")).await.unwrap();
            run.wait().await
        });
        tokio::time::timeout(WAIT, ops.blocker_started.notified())
            .await
            .expect("the blocker starts");
        log_until(&store, &run_id, "the steps before the blocker", |events| {
            (0..BLOCKER).all(|i| count(events, &format!("c{i}"), success) == 1)
        })
        .await;
        orchestrator.shutdown_background();

        let record = store.get_run(&run_id).await.unwrap();
        assert_eq!(
            record.status,
            RunStatus::Started,
            "the dead run still holds it"
        );
        let second = launcher(&h, &store, fuse_chains);
        let resumed = second
            .resume(&run_id, "orch-2", true, Arc::new(chain_job()))
            .await
            .unwrap();
        let outcome = tokio::time::timeout(WAIT, resumed.wait()).await.unwrap();
        assert!(outcome.result.status.is_success(), "{:?}", outcome.result);

        let runs: Vec<usize> = ops.runs.iter().map(|n| n.load(Ordering::SeqCst)).collect();
        let mut expected = vec![1; STEPS];
        expected[BLOCKER] = 2;
        assert_eq!(
            runs, expected,
            "fuse_chains = {fuse_chains}: executions per step (only the step in flight runs twice)"
        );
        let value: i64 = second
            .executor()
            .output(&outcome.result, &format!("c{}", STEPS - 1), "result")
            .await
            .unwrap();
        assert_eq!(value, STEPS as i64 - 1);
        h.stop().await;
    }
}
