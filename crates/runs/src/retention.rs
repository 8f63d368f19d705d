//! What a retention pass selects and reports: [`GcPolicy`] (which finished runs to collect),
//! [`GcOptions`], and the report types ([`GcReport`], [`CollectedRun`], [`SkippedRun`],
//! [`Reclaimed`]). The collection itself composes every store of a deployment, so it lives
//! where they are composed (the facade's `App::collect_garbage`, `stepq gc`); these types
//! live here so that anyone holding a [`RunStore`](crate::RunStore) can choose runs by the
//! same rules.

use std::time::Duration;

use stepq_plan::{Event, EventKind};

use crate::record::{RunRecord, RunStatus};

/// The task ids of a run's steps, in log order, each once.
pub fn step_task_ids(events: &[Event]) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for event in events {
        if let EventKind::StepQueued { task_id, .. } = &event.kind {
            if !ids.contains(task_id) {
                ids.push(task_id.clone());
            }
        }
    }
    ids
}

/// Which finished runs to collect (see the [facade's retention docs](https://docs.rs/stepq/latest/stepq/retention/)): every condition given must
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
    /// [`RunStore::list_runs`]: crate::RunStore::list_runs
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

#[cfg(test)]
mod tests;
