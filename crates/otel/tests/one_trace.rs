//! A run is one OpenTelemetry trace: an executor and a worker in this process, on the
//! in-memory broker, with the `tracing-opentelemetry` layer exporting to an in-memory exporter
//! and stepq's propagator installed. The orchestrator's `run` span takes the run's derived
//! trace id; every worker `task` span is in that trace, a child of the `run` span (through the
//! messages' `traceparent` labels, not through a shared thread).

use std::sync::Arc;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use stepq_broker::{InMemoryBroker, TaskQueue, TraceParent};
use stepq_executor::{Executor, ExecutorConfig, RunRequest, RunStatus};
use stepq_results::{InMemoryOutputStore, InMemoryResultBackend};
use stepq_worker::{CodeLocation, TypedJob, Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_orchestrator_and_worker_spans_form_one_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("stepq-test"));
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
        .expect("the only subscriber of this test binary");
    stepq_otel::install_propagator();

    let mut job = TypedJob::new("pair");
    let one = job.source("one", |_ctx| async { Ok(1_i64) });
    job.map("two", &one, |_ctx, n: i64| async move { Ok(n + 1) });
    let location = Arc::new(CodeLocation::builder().typed_job(job).build().unwrap());
    let queue = TaskQueue::new(
        Arc::new(InMemoryBroker::new()),
        Arc::new(InMemoryResultBackend::new()),
    );
    let outputs = Arc::new(InMemoryOutputStore::new());
    let worker = Worker::new(
        location.clone(),
        queue.clone(),
        outputs.clone(),
        WorkerConfig::named("otel-worker"),
    )
    .unwrap();
    let stop = CancellationToken::new();
    let serving = tokio::spawn(worker.run(stop.clone()));
    // Unfused, so each step is a task of its own, sent by the run span.
    let config = ExecutorConfig {
        fuse_chains: false,
        ..Default::default()
    };
    let executor = Executor::new(queue, outputs, config).unwrap();
    let request = RunRequest::new("otel-run", location.job("pair").unwrap());
    let result = executor.start(request).unwrap().wait().await;
    assert_eq!(result.status, RunStatus::Success, "{result:?}");
    stop.cancel();
    serving.await.unwrap().unwrap();
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let named = |name: &'static str| spans.iter().filter(move |s| s.name == name);
    let run = named("run").next().expect("the run span was exported");
    let trace_id = u128::from_be_bytes(run.span_context.trace_id().to_bytes());
    assert_eq!(
        trace_id,
        TraceParent::for_key("otel-run").trace_id,
        "the run's trace id is derived from its run id"
    );
    let tasks: Vec<_> = named("task").collect();
    assert_eq!(tasks.len(), 2, "one task span per step task: {spans:?}");
    for task in tasks {
        assert_eq!(task.span_context.trace_id(), run.span_context.trace_id());
        assert_eq!(
            task.parent_span_id,
            run.span_context.span_id(),
            "a worker's task span is a child of the run span"
        );
        assert!(task.parent_span_is_remote, "joined through the message");
    }
    let steps = named("step").count();
    assert_eq!(steps, 2, "the step spans are exported too");
}
