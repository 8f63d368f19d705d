//! Progress entries of a running task (see `stepq_protocol`'s docs): when its message asks
//! for them ([`PROGRESS_LABEL`](stepq_protocol::PROGRESS_LABEL)), the worker stores one
//! [`TaskProgress`] in the result backend right before each step of the task starts — the
//! step's `StepStart` and the reports of the steps that succeeded since the entry before — so
//! the orchestrator records a step's start, and a fused task's finished steps, when they
//! happen instead of when the task ends.
//!
//! Entries are written in order by one background task, so a slow result backend never
//! holds a step up; [`ProgressWriter::finish`] waits for them before the task's result is
//! stored, so every entry of a task is stored before its result. An entry that cannot be
//! stored is logged and its content goes into the next one under the same key (the
//! orchestrator waits for entry `n` until `n` comes); the task's result carries everything
//! either way.

use std::collections::BTreeMap;
use std::sync::Arc;

use stepq_plan::{Event, StepReport, TaskProgress};
use stepq_protocol as protocol;
use stepq_results::{ResultBackend, TaskResult};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What the steps of a task tell the writer.
enum Note {
    /// A step succeeded: its report goes into the next entry.
    Finished(StepReport),
    /// A step starts: an entry goes out now.
    Started(Event),
}

/// Writes one task's progress entries in the background; see the [module docs](self).
pub(crate) struct ProgressWriter {
    notes: mpsc::UnboundedSender<Note>,
    task: JoinHandle<()>,
}

impl ProgressWriter {
    /// A writer of task `task_id`'s entries to `results`, labelled `labels` (those of the
    /// task's result, so a notifying backend sends them where the task's result goes).
    pub(crate) fn start(
        results: Arc<dyn ResultBackend>,
        task_id: String,
        labels: BTreeMap<String, serde_json::Value>,
    ) -> Self {
        let (notes, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut seq = 1;
            let mut finished: Vec<StepReport> = Vec::new();
            while let Some(note) = rx.recv().await {
                let started = match note {
                    Note::Finished(mut report) => {
                        report.inline_outputs.clear();
                        finished.push(report);
                        continue;
                    }
                    Note::Started(event) => event,
                };
                let progress = TaskProgress {
                    finished: finished.clone(),
                    started: Some(started),
                };
                let key = protocol::progress_key(&task_id, seq);
                let stored = match protocol::progress_value(&progress) {
                    Ok(value) => {
                        let mut result = TaskResult::ok(value, 0.0);
                        result.labels = labels.clone();
                        results
                            .set_result(&key, &result)
                            .await
                            .map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e.to_string()),
                };
                match stored {
                    Ok(()) => {
                        finished.clear();
                        seq += 1;
                    }
                    Err(error) => {
                        tracing::warn!(%task_id, seq, %error, "could not store a progress entry; its content goes into the next one");
                    }
                }
            }
        });
        ProgressWriter { notes, task }
    }

    /// Step `report.step_key` succeeded (its outputs are stored).
    pub(crate) fn finished(&self, report: &StepReport) {
        let _ = self.notes.send(Note::Finished(report.clone()));
    }

    /// A step starts: `event` is its `StepStart`.
    pub(crate) fn started(&self, event: &Event) {
        let _ = self.notes.send(Note::Started(event.clone()));
    }

    /// Waits until every entry noted so far is stored (or given up on).
    pub(crate) async fn finish(self) {
        drop(self.notes);
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "the progress writer of a task ended abnormally");
        }
    }
}
