//! The worker service of this crate's ops: the queue and bucket of `./stepq.toml` (the file
//! `stepq` reads; `STEPQ_*` overrides apply), health heartbeat, cancellation, graceful stop
//! on SIGTERM / Ctrl-C. `cargo run -p example-worker-service`.
use std::sync::Arc;

use stepq_worker::service::{file::ServiceFile, serve, Backends, WorkerService};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = ServiceFile::load(Some("stepq.toml".as_ref()), &std::env::vars().collect())?;
    // `[queues]`, `[priority]` and `worker.queues` of the file: which lanes this worker serves.
    let routing = file.routing()?;
    let backends =
        Backends::distributed_routed(&file.sqs, &file.s3, file.enable_cancellation, &routing)
            .await?;
    let settings = file.worker.service_settings("example-worker")?;
    let location = Arc::new(example_worker_service::location());
    serve(WorkerService::new(
        location,
        backends.service_parts(true),
        settings,
    )?)
    .await?;
    Ok(())
}
