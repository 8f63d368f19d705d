//! Fixtures shared by the worker's integration tests.
#![allow(dead_code)]

pub(crate) mod harness;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stepq_plan::{
    Backoff, EventKind, ExecuteStepArgs, Job, KnownState, RetryMode, RetryPolicy, StepDef,
    StepReport, StepStatus,
};
use stepq_worker::{op_fn, op_map, op_output, CodeLocation, OpError, OpResultExt, StepOutputs};

/// A typed value passed between steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Reading {
    pub sensor: String,
    pub value: i64,
}

/// Job `lab`: every step exercises one behaviour.
pub(crate) fn lab_job() -> Job {
    Job::builder("lab")
        .step(StepDef::new("source", "source").output("reading"))
        .step(
            StepDef::new("double", "double")
                .input("reading", "source", "reading")
                .output("result"),
        )
        .step(StepDef::new("forgets", "forgets").output("result"))
        .step(StepDef::new("extra", "extra").output("result"))
        .step(StepDef::new("fails", "fails").output("result"))
        .step(StepDef::new("flaky", "flaky").output("result"))
        .step(
            StepDef::new("flaky_with_policy", "flaky")
                .output("result")
                .retry(RetryPolicy::new(3, Backoff::none())),
        )
        .step(StepDef::new("panics", "panics").output("result"))
        .step(
            StepDef::new("optional", "optional")
                .output("result")
                .optional_output("maybe"),
        )
        .step(
            StepDef::new("describe", "describe")
                .tag("db", "warehouse")
                .output("result"),
        )
        .build()
        .unwrap()
}

/// Job `serial`: add_one(simple()) = 2.
pub(crate) fn serial_job() -> Job {
    Job::builder("serial")
        .step(StepDef::new("simple", "simple").output("result"))
        .step(
            StepDef::new("add_one", "add_one")
                .input("num", "simple", "result")
                .output("result"),
        )
        .build()
        .unwrap()
}

/// The ops of [`lab_job`] and [`serial_job`].
pub(crate) fn lab_location() -> CodeLocation {
    CodeLocation::builder()
        .op(
            "simple",
            op_output("result", |_ctx, _in| async { Ok(1_i64) }),
        )
        .op(
            "add_one",
            op_map("num", "result", |_ctx, n: i64| async move { Ok(n + 1) }),
        )
        .op(
            "source",
            op_output("reading", |ctx, _in| async move {
                ctx.info("reading the sensor");
                Ok(Reading {
                    sensor: "t1".into(),
                    value: 21,
                })
            }),
        )
        .op(
            "double",
            op_fn(|_ctx, inputs| async move {
                let r: Reading = inputs.get("reading")?;
                StepOutputs::one("result", &(r.value * 2))
            }),
        )
        .op(
            "forgets",
            op_fn(|_ctx, _in| async { Ok(StepOutputs::new()) }),
        )
        .op(
            "extra",
            op_fn(|_ctx, _in| async {
                StepOutputs::new().with("result", &1)?.with("surprise", &2)
            }),
        )
        .op(
            "fails",
            op_fn(|_ctx, _in| async {
                let io: Result<(), _> = Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "permission denied",
                ));
                io.context("opening the warehouse")?;
                Ok(StepOutputs::new())
            }),
        )
        .op(
            "flaky",
            op_fn(|_ctx, _in| async {
                Err(OpError::retry("warehouse busy").retry_after(Duration::from_millis(250)))
            }),
        )
        .op(
            "panics",
            op_fn(|_ctx, _in| async {
                if true {
                    panic!("the op exploded");
                }
                Ok(StepOutputs::new())
            }),
        )
        .op(
            "optional",
            op_output("result", |_ctx, _in| async { Ok("only this") }),
        )
        .op(
            "describe",
            op_output("result", |ctx, _in| async move {
                Ok(format!(
                    "{}/{}/{}/attempt {}/{}/db={}/limit={}",
                    ctx.run_id(),
                    ctx.job_name(),
                    ctx.step_key(),
                    ctx.attempt(),
                    ctx.worker(),
                    ctx.tag("db").unwrap_or("-"),
                    ctx.run_config()["limit"]
                ))
            }),
        )
        .job(lab_job())
        .job(serial_job())
        .build()
        .unwrap()
}

/// Arguments for attempt 1 of `steps` of `job` in `run_id`.
pub(crate) fn args(run_id: &str, job: &str, steps: &[&str]) -> ExecuteStepArgs {
    ExecuteStepArgs {
        run_id: run_id.into(),
        job_name: job.into(),
        step_keys: steps.iter().map(|s| s.to_string()).collect(),
        known_state: KnownState::default(),
        retry_mode: RetryMode::Enabled,
        attempt: 1,
        run_config: serde_json::Value::Null,
        inline_inputs: Vec::new(),
    }
}

/// Short names of a report's event kinds, in order.
pub(crate) fn event_names(report: &StepReport) -> Vec<&'static str> {
    report
        .events
        .iter()
        .map(|e| match &e.kind {
            EventKind::StepStart { .. } => "start",
            EventKind::StepInputLoaded { .. } => "input",
            EventKind::StepOutputHandled { .. } => "output",
            EventKind::StepSuccess { .. } => "success",
            EventKind::StepFailure { .. } => "failure",
            EventKind::StepCanceled => "canceled",
            EventKind::EngineEvent { .. } => "log",
            _ => "other",
        })
        .collect()
}

/// The failure of a report; panics with the report if it did not fail.
pub(crate) fn failure(report: &StepReport) -> (&stepq_plan::ErrorInfo, Option<Option<u64>>) {
    match &report.status {
        StepStatus::Failure {
            error,
            retry_requested,
        } => (error, *retry_requested),
        other => panic!("expected a failure, got {other:?}: {report:#?}"),
    }
}

/// The `will_retry` flag of a report's `StepFailure` event.
pub(crate) fn will_retry(report: &StepReport) -> bool {
    report
        .events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::StepFailure { will_retry, .. } => Some(*will_retry),
            _ => None,
        })
        .expect("a StepFailure event")
}

/// The emitted outputs of a successful report.
pub(crate) fn emitted(report: &StepReport) -> Vec<String> {
    match &report.status {
        StepStatus::Success { emitted } => emitted.clone(),
        other => panic!("expected success, got {other:?}: {report:#?}"),
    }
}

pub(crate) fn location() -> Arc<CodeLocation> {
    Arc::new(lab_location())
}
