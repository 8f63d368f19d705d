//! Retention: which finished runs to collect ([`GcPolicy`]), collecting them
//! ([`App::collect_garbage`](crate::App::collect_garbage), `stepq gc`), and the optional
//! automatic policy of `stepq.toml` ([`RetentionSettings`], `[retention]`).
//!
//! **What is eligible.** Only runs in a terminal status (SUCCESS, FAILURE, CANCELED), and of
//! those only the ones the policy selects: not among the `keep_last` newest runs (counting
//! every run, whatever its status), older than `older_than` (age from the run's end,
//! `ended_at`; its creation if it has none), and in one of `statuses` if any are given. A
//! run that is QUEUED, STARTING, STARTED or CANCELING is never collected, however old.
//!
//! **What a collected run loses, in this order.** 1. Its record and event log, by
//! [`RunStore::delete_run`] expecting the terminal status it was listed in: a compare-and-set
//! (one transaction in SQLite, a tombstone revision or object otherwise), so a resume that
//! starts meanwhile either wins (the run is skipped, nothing of it deleted) or finds the run
//! gone. 2. Then its outputs ([`OutputStore::delete_run`]), 3. the results of its step tasks
//! and 4. their cancel markers, the task ids read from the run's `StepQueued` events before
//! the delete. The record goes first because it is the one a resume checks: deleting outputs
//! first could take the inputs of a resume that won the race. A process killed after step 1
//! leaves outputs and results nobody reads (space, not runs, is lost).
//!
//! **What cannot be found.** The `execute_job` / `resume_job` task of a run submitted to a
//! worker (`stepq launch`, `stepq resume` on a distributed setup) has a task id that neither
//! the record nor the events hold: its result is not collected, and the report says so.
//!
//! [`RunStore::delete_run`]: stepq_runs::RunStore::delete_run
//! [`OutputStore::delete_run`]: stepq_results::OutputStore::delete_run

mod collect;

use std::time::Duration;

use serde::{Deserialize, Serialize};
pub use stepq_runs::retention::{
    step_task_ids, CollectedRun, GcOptions, GcPolicy, GcReport, Reclaimed, SkippedRun,
};

use crate::config::ConfigError;

/// `[retention]` of `stepq.toml`: the automatic policy `stepq run` applies when its run has
/// ended (embedded default only). Both unset (the default): nothing is collected
/// automatically.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    /// Collect finished runs that ended more than this many days ago.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_days: Option<u32>,
    /// Always keep this many of the newest runs (of any status), whatever their age; with no
    /// `keep_days`, collect the finished runs older than those.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<usize>,
}

impl RetentionSettings {
    /// Whether any automatic retention is set.
    pub fn is_enabled(&self) -> bool {
        self.keep_days.is_some() || self.keep_last.is_some()
    }

    /// Checks the values; the problem names `retention.<key>`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.keep_days == Some(0) {
            return Err(ConfigError::invalid(
                "retention.keep_days",
                "must be at least 1 (unset it to keep runs of any age)",
            ));
        }
        Ok(())
    }

    /// The policy these settings ask for, `None` when none is set.
    pub fn policy(&self) -> Option<GcPolicy> {
        self.is_enabled().then(|| GcPolicy {
            older_than: self
                .keep_days
                .map(|d| Duration::from_secs(u64::from(d) * 86_400)),
            keep_last: self.keep_last,
            statuses: Vec::new(),
        })
    }
}
