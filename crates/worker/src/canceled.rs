//! The result a worker stores for a task cancelled before or while it ran.

use stepq_broker::TaskMessage;
use stepq_cancel::{generic_canceled_result, CanceledWhen};
use stepq_plan::{Event, EventKind, StepReport, StepStatus};
use stepq_protocol as protocol;
use stepq_results::TaskResult;

/// Builds the result of a cancelled task for `stepq_cancel::CancelListener::with_canceled_result`:
/// an `execute_plan` task gets one CANCELED [`StepReport`] per step key, so the orchestrator
/// records canceled steps (a failed task would count as a failed attempt and could be
/// retried); any other task gets the generic cancelled result.
pub fn step_canceled_result(
    worker: String,
) -> impl Fn(&TaskMessage, CanceledWhen) -> TaskResult + Send + Sync + 'static {
    move |message, when| {
        if message.task_name != protocol::EXECUTE_PLAN {
            return generic_canceled_result(message, when);
        }
        let Ok(args) = protocol::read_step_args(message) else {
            return generic_canceled_result(message, when);
        };
        let reports: Vec<StepReport> = args
            .step_keys
            .iter()
            .map(|key| StepReport {
                step_key: key.clone(),
                attempt: args.attempt_of(key),
                worker: worker.clone(),
                status: StepStatus::Canceled,
                events: vec![Event::step(&args.run_id, key, EventKind::StepCanceled)],
                inline_outputs: Vec::new(),
            })
            .collect();
        match protocol::reports_value(&reports) {
            Ok(value) => TaskResult::ok(value, 0.0),
            Err(_) => generic_canceled_result(message, when),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stepq_plan::{ExecuteStepArgs, KnownState, RetryMode};

    fn args() -> ExecuteStepArgs {
        ExecuteStepArgs {
            run_id: "run-1".into(),
            job_name: "job".into(),
            step_keys: vec!["a".into(), "b".into()],
            known_state: KnownState::default(),
            retry_mode: RetryMode::Enabled,
            attempt: 2,
            run_config: serde_json::Value::Null,
            inline_inputs: Vec::new(),
        }
    }

    #[test]
    fn execute_plan_tasks_get_one_canceled_report_per_step() {
        let message = protocol::step_message(&args()).unwrap();
        let result = step_canceled_result("w1".into())(&message, CanceledWhen::BeforeStart);
        assert!(!result.is_err);
        let reports = protocol::read_reports(&result.return_value).unwrap();
        assert_eq!(reports.len(), 2);
        for (report, key) in reports.iter().zip(["a", "b"]) {
            assert_eq!(report.step_key, key);
            assert_eq!(report.attempt, 2);
            assert_eq!(report.worker, "w1");
            assert_eq!(report.status, StepStatus::Canceled);
        }
    }

    #[test]
    fn other_tasks_get_the_generic_result() {
        let message = TaskMessage::new("other.task");
        let result = step_canceled_result("w1".into())(&message, CanceledWhen::BeforeStart);
        assert_eq!(
            result,
            generic_canceled_result(&message, CanceledWhen::BeforeStart)
        );
    }
}
