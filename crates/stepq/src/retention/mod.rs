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
use stepq_runs::{RunRecord, RunStatus};

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

/// Which finished runs to collect (see the [module docs](self)): every condition given must
/// hold; none given selects every finished run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcPolicy {
    /// Only runs that ended (or, without an end, were created) longer ago than this.
    pub older_than: Option<Duration>,
    /// Never the `keep_last` newest runs (of any status).
    pub keep_last: Option<usize>,
    /// Only runs in these terminal statuses (empty: every terminal status).
    pub statuses: Vec<RunStatus>,
}

impl GcPolicy {
    /// The runs of `runs` (newest first, as [`RunStore::list_runs`] lists them) this policy
    /// collects at `now_us`, oldest first.
    ///
    /// [`RunStore::list_runs`]: stepq_runs::RunStore::list_runs
    pub fn select(&self, runs: &[RunRecord], now_us: u64) -> Vec<RunRecord> {
        let cutoff = self
            .older_than
            .map(|age| now_us.saturating_sub(u64::try_from(age.as_micros()).unwrap_or(u64::MAX)));
        let mut chosen: Vec<RunRecord> = runs
            .iter()
            .skip(self.keep_last.unwrap_or(0))
            .filter(|r| r.status.is_terminal())
            .filter(|r| self.statuses.is_empty() || self.statuses.contains(&r.status))
            .filter(|r| cutoff.is_none_or(|c| r.ended_at.unwrap_or(r.created_at) < c))
            .cloned()
            .collect();
        chosen.reverse();
        chosen
    }
}

/// How to run a collection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GcOptions {
    /// Which runs.
    pub policy: GcPolicy,
    /// Report what would be collected; delete nothing.
    pub dry_run: bool,
    /// Compact the SQLite database afterwards only if at least this fraction of its pages
    /// is free (`None`: whenever a run was removed). `stepq gc` compacts whenever it removed
    /// something; the automatic retention only past a quarter free, so that removing one run
    /// per `stepq run` does not rewrite the file every time.
    pub compact_above_free: Option<f64>,
}

/// A run collected (or, in a dry run, that would be).
#[derive(Debug, Clone, PartialEq)]
pub struct CollectedRun {
    /// Its record as it was.
    pub record: RunRecord,
    /// Event batches removed with it (in a dry run: events it has).
    pub event_batches: u64,
    /// Task ids of its steps, from its `StepQueued` events.
    pub task_ids: Vec<String>,
    /// Of those, how many results and cancel markers were deleted (0 in a dry run; a task
    /// whose result its orchestrator already consumed counts too: the delete is idempotent).
    pub task_results_deleted: usize,
}

/// A run the policy selected that was not collected, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct SkippedRun {
    /// Run id.
    pub run_id: String,
    /// Why (it changed status since it was listed, an error ...).
    pub reason: String,
}

/// How the bytes a collection freed were measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reclaimed {
    /// Nothing was measured (a dry run, or a store that cannot tell).
    Unknown,
    /// The SQLite database file (with its WAL) before and after compaction; `compacted`
    /// false when it was not compacted (nothing removed, or too little free).
    DatabaseFile {
        /// Bytes before.
        before: u64,
        /// Bytes after.
        after: u64,
        /// Whether `VACUUM` ran.
        compacted: bool,
    },
    /// The state directory of the file layout, before and after.
    StateDir {
        /// Bytes before.
        before: u64,
        /// Bytes after.
        after: u64,
    },
    /// Bytes of the S3 objects of run records and event logs deleted (outputs and results
    /// are deleted too but not counted).
    Objects {
        /// Bytes.
        bytes: u64,
    },
}

impl Reclaimed {
    /// The bytes freed, where known.
    pub fn bytes(&self) -> Option<u64> {
        match *self {
            Reclaimed::Unknown => None,
            Reclaimed::DatabaseFile { before, after, .. }
            | Reclaimed::StateDir { before, after } => Some(before.saturating_sub(after)),
            Reclaimed::Objects { bytes } => Some(bytes),
        }
    }
}

/// What a collection did.
#[derive(Debug, Clone, PartialEq)]
pub struct GcReport {
    /// It deleted nothing.
    pub dry_run: bool,
    /// Runs listed in the store.
    pub runs_seen: usize,
    /// Runs collected (or that would be), oldest first.
    pub collected: Vec<CollectedRun>,
    /// Runs selected but left in place.
    pub skipped: Vec<SkippedRun>,
    /// Bytes freed.
    pub reclaimed: Reclaimed,
    /// What the collection could not do or find, one sentence each.
    pub notes: Vec<String>,
}
