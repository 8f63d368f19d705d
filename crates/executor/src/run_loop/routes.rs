//! Route labels of step tasks: the queue and priority level each step's task is sent with.

use stepq_broker::routing::{PRIORITY_LABEL, QUEUE_LABEL};
use stepq_broker::TaskMessage;
use stepq_plan::Job;

use crate::protocol;

/// The queue and priority labels of each step's task (from its `stepq/queue` and
/// `stepq/priority` tags, and the run's priority), or none when no step is routed.
#[derive(Debug, Default)]
pub(crate) struct StepRoutes {
    /// By step index: (queue, level); empty when every step goes to the default lane.
    routes: Vec<(Option<String>, Option<String>)>,
}

impl StepRoutes {
    /// The routes of `job`'s steps in a run of priority `run_priority`.
    pub(crate) fn of(job: &Job, run_priority: Option<&str>) -> Self {
        let routes: Vec<_> = job
            .steps()
            .iter()
            .map(|step| {
                let queue = step.tags.get(protocol::QUEUE_TAG).cloned();
                let level = step
                    .tags
                    .get(protocol::PRIORITY_TAG)
                    .map(String::as_str)
                    .or(run_priority)
                    .map(str::to_string);
                (queue, level)
            })
            .collect();
        if routes.iter().all(|(q, l)| q.is_none() && l.is_none()) {
            return StepRoutes::default();
        }
        StepRoutes { routes }
    }

    /// `message` (the task of step `step`) with its route labels.
    pub(super) fn label(&self, step: usize, mut message: TaskMessage) -> TaskMessage {
        if let Some((queue, level)) = self.routes.get(step) {
            if let Some(queue) = queue {
                message = message.with_label(QUEUE_LABEL, queue.clone());
            }
            if let Some(level) = level {
                message = message.with_label(PRIORITY_LABEL, level.clone());
            }
        }
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stepq_plan::StepDef;

    #[test]
    fn a_step_tag_wins_over_the_run_priority_and_unrouted_jobs_carry_no_labels() {
        let job = Job::builder("j")
            .step(StepDef::new("a", "op"))
            .step(
                StepDef::new("b", "op")
                    .tag(protocol::QUEUE_TAG, "gpu")
                    .tag(protocol::PRIORITY_TAG, "low"),
            )
            .build()
            .unwrap();
        let routes = StepRoutes::of(&job, Some("high"));
        let a = routes.label(0, TaskMessage::new("t"));
        assert_eq!(
            (a.label(QUEUE_LABEL), a.label(PRIORITY_LABEL)),
            (None, Some("high"))
        );
        let b = routes.label(1, TaskMessage::new("t"));
        assert_eq!(
            (b.label(QUEUE_LABEL), b.label(PRIORITY_LABEL)),
            (Some("gpu"), Some("low"))
        );
        let plain = Job::builder("p")
            .step(StepDef::new("a", "op"))
            .build()
            .unwrap();
        let none = StepRoutes::of(&plain, None);
        assert!(none.label(0, TaskMessage::new("t")).labels.is_empty());
    }
}
