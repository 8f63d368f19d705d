//! A worker service for your own ops, built on `stepq_worker::service`.
//!
//! `cargo run -p example-worker-service` serves the `double` job's steps on the SQS queue and
//! S3 bucket of `./stepq.toml` (the same file `stepq` reads) until SIGTERM or Ctrl-C.
//! `-- --once` runs the job once on the embedded broker instead: an in-process worker
//! service and an executor in one process, no AWS (what CI runs).
//!
//! The service itself is `main` below (under 30 lines with its ops and job); `once` is the
//! in-process demonstration.

use std::sync::Arc;

use stepq_plan::{Job, StepDef};
use stepq_worker::service::file::ServiceFile;
use stepq_worker::service::{serve, Backends, ServiceSettings, WorkerService};
use stepq_worker::{op_map, op_output, CodeLocation, WorkerConfig};

/// Your ops, and a job wiring them: `double(emit())`.
fn location() -> CodeLocation {
    let job = Job::builder("double")
        .step(StepDef::new("emit", "emit").output("n"))
        .step(
            StepDef::new("double", "double")
                .input("n", "emit", "n")
                .output("n"),
        )
        .build()
        .expect("a valid job");
    CodeLocation::builder()
        .op("emit", op_output("n", |_ctx, _inputs| async { Ok(21_i64) }))
        .op(
            "double",
            op_map("n", "n", |_ctx, n: i64| async move { Ok(n * 2) }),
        )
        .job(job)
        .build()
        .expect("every step has its op")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().any(|a| a == "--once") {
        return once().await;
    }
    let env = std::env::vars().collect();
    let file = ServiceFile::load(Some("stepq.toml".as_ref()), &env)?;
    let backends = Backends::distributed(&file.sqs, &file.s3, file.enable_cancellation).await?;
    let settings = file.worker.service_settings("example-worker")?;
    let service = WorkerService::new(Arc::new(location()), backends.service_parts(true), settings)?;
    serve(service).await?;
    Ok(())
}

/// The same service on the embedded broker, with an executor running the job once.
async fn once() -> Result<(), Box<dyn std::error::Error>> {
    use stepq_executor::{Executor, ExecutorConfig, RunRequest, RunStatus};
    let state = std::env::temp_dir().join(format!("stepq-example-{}", std::process::id()));
    let backends = Backends::embedded(&state, true);
    let settings = ServiceSettings::new(WorkerConfig::named("example-worker"));
    let service = WorkerService::new(Arc::new(location()), backends.service_parts(true), settings)?;
    let stop = tokio_util::sync::CancellationToken::new();
    let serving = tokio::spawn(service.run(stop.clone()));

    let executor = Executor::new(
        backends.queue.clone(),
        backends.outputs.clone(),
        ExecutorConfig::default(),
    )?;
    let job = location().job("double").expect("the job");
    let result = executor
        .start(RunRequest::new("example-run", job))?
        .wait()
        .await;
    let doubled: i64 = executor.output(&result, "double", "n").await?;
    println!(
        "run {} {:?}: double.n = {doubled}",
        result.run_id, result.status
    );

    stop.cancel();
    serving.await??;
    let _ = std::fs::remove_dir_all(&state);
    if result.status != RunStatus::Success || doubled != 42 {
        return Err(format!(
            "expected SUCCESS and 42, got {:?} and {doubled}",
            result.status
        )
        .into());
    }
    Ok(())
}
