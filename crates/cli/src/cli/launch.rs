//! `stepq launch` and `stepq resume`: runs submitted as tasks for a worker to orchestrate
//! (a resume orchestrated here goes to [`follow::resume_here`]).

use std::sync::Arc;

use stepq::app::{find_job, App, AppError, RunOptions};
use stepq::config::Mode;
use stepq_plan::{ExecutionPlan, KnownState};
use stepq_worker::CodeLocation;

use super::args::{parse_run_config, parse_tags};
use super::failure::Failure;
use super::follow;
use super::{LaunchArgs, ResumeArgs};

pub(super) async fn launch_run(
    app: &App,
    location: &CodeLocation,
    args: LaunchArgs,
) -> Result<u8, Failure> {
    let job = find_job(location, &args.job)?;
    let options = RunOptions {
        run_id: args.run_id,
        step_selection: args.steps,
        run_config: parse_run_config(args.run_config.as_deref())?,
        tags: with_priority(parse_tags(&args.tags)?, args.priority),
    };
    ExecutionPlan::new(
        job.clone(),
        options.step_selection.as_deref(),
        &KnownState::default(),
    )
    .map_err(Failure::usage)?;
    if app.mode() == Mode::Embedded {
        return Err(AppError::NotDistributed {
            what: "`stepq launch` (a worker must pick the run up; use `stepq run` on the embedded default)",
        }
        .into());
    }
    app.startup().await?;
    let submitted = app.submit_run(location, job.name(), options).await;
    let _ = app.shutdown().await;
    let submitted = submitted?;
    println!("{}", submitted.run_id);
    eprintln!(
        "run {} of job `{}` queued: `stepq logs {} --follow` follows it",
        submitted.run_id,
        job.name(),
        submitted.run_id
    );
    Ok(0)
}

/// Run tags with the run's priority level (`--priority`) as the tag `stepq/priority`.
pub(super) fn with_priority(
    mut tags: std::collections::BTreeMap<String, String>,
    priority: Option<String>,
) -> std::collections::BTreeMap<String, String> {
    if let Some(level) = priority {
        tags.insert(stepq_executor::protocol::PRIORITY_TAG.to_string(), level);
    }
    tags
}

pub(super) async fn resume_run(
    app: &App,
    location: Arc<CodeLocation>,
    args: ResumeArgs,
) -> Result<u8, Failure> {
    if app.mode() == Mode::Embedded || args.here {
        return follow::resume_here(app, location, args).await;
    }
    let lost = app.check_takeover(&args.run_id, args.force).await?;
    if let Some(lost) = &lost {
        eprintln!("{lost}");
    }
    app.startup().await?;
    let submitted = app
        .submit_resume(&args.run_id, args.force || lost.is_some())
        .await;
    let _ = app.shutdown().await;
    let submitted = submitted?;
    println!("{}", submitted.run_id);
    eprintln!(
        "run {} queued for resume: `stepq logs {} --follow` follows it",
        submitted.run_id, submitted.run_id
    );
    Ok(0)
}
