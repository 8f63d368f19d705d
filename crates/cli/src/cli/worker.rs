//! `stepq worker start` (a worker service until SIGTERM or Ctrl-C) and `stepq worker list`
//! (the task queue's depth and the workers' heartbeats).

use std::sync::Arc;

use stepq::app::{App, AppError};
use stepq::config::Mode;
use stepq_worker::service::host_name;
use stepq_worker::CodeLocation;

use super::failure::Failure;
use super::json::{print_document, QueueJson, WorkerJson, WorkersDocument};
use super::table::simple_table;
use super::WorkerStartArgs;

pub(super) async fn start_worker(
    app: &App,
    location: Arc<CodeLocation>,
    args: WorkerStartArgs,
) -> Result<u8, Failure> {
    if app.mode() == Mode::Embedded {
        return Err(AppError::NotDistributed {
            what: "`stepq worker start`",
        }
        .into());
    }
    let name = args
        .name
        .unwrap_or_else(|| format!("worker-{}-{}", host_name(), std::process::id()));
    let mut config = app.worker_config(name.clone());
    if let Some(n) = args.concurrency {
        config = config.with_concurrency(n);
    }
    let service = app
        .worker_service(location, config, true)
        .map_err(Failure::usage)?;
    // Health heartbeats until the worker has stopped (its grace period included); the queue's
    // shutdown also ends the cancel subscription (deleting the worker's SQS inbox).
    // A worker that could not start (missing queue or bucket, no credentials) exits 2.
    match stepq_worker::service::serve(service).await {
        Ok(_) => Ok(0),
        Err(e) if e.could_not_start() => Err(Failure::usage(e)),
        Err(e) => Err(Failure::runtime(e)),
    }
}

pub(super) async fn list_workers(app: &App, json: bool) -> Result<u8, Failure> {
    if json {
        return list_workers_json(app).await;
    }
    if app.mode() == Mode::Embedded {
        println!("task queue: in memory, inside each `stepq run` process (embedded default)");
    } else {
        let depth = app.queue_depth().await?;
        let url = app.config().sqs.queue_url.clone().unwrap_or_default();
        print!(
            "{}",
            simple_table(
                ["QUEUE", "URL", "VISIBLE", "NOT VISIBLE", "DELAYED"],
                &[[
                    "task".to_string(),
                    url,
                    depth.visible.to_string(),
                    depth.not_visible.to_string(),
                    depth.delayed.to_string(),
                ]],
            )
        );
    }
    let workers = crate::health::worker_states(app)
        .await
        .map_err(AppError::from)?;
    println!();
    print!(
        "{}",
        crate::health::render_workers(
            &workers,
            stepq_plan::events::now_us(),
            app.config().health_interval()
        )
    );
    Ok(0)
}

/// `stepq worker list --json`: the queue (distributed) and the workers as one document.
async fn list_workers_json(app: &App) -> Result<u8, Failure> {
    let (mode, queue) = match app.mode() {
        Mode::Embedded => ("embedded", None),
        Mode::Distributed => {
            let depth = app.queue_depth().await?;
            let queue = QueueJson {
                url: app.config().sqs.queue_url.clone().unwrap_or_default(),
                visible: depth.visible,
                not_visible: depth.not_visible,
                delayed: depth.delayed,
            };
            ("distributed", Some(queue))
        }
    };
    let workers = crate::health::worker_states(app)
        .await
        .map_err(AppError::from)?;
    let interval = app.config().health_interval();
    print_document(&WorkersDocument {
        mode,
        queue,
        health_interval_us: u64::try_from(interval.as_micros()).unwrap_or(u64::MAX),
        workers: workers
            .iter()
            .map(|w| WorkerJson::new(w, interval))
            .collect(),
    })?;
    Ok(0)
}
