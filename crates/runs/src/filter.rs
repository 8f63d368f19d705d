//! `RunFilter`: which runs a listing keeps (statuses, job, tags, creation time) and how many.

use crate::record::{RunRecord, RunStatus};
use crate::store::newest_first;

/// Which runs [`RunStore::list_runs_matching`](crate::RunStore::list_runs_matching) returns:
/// every condition set must hold (an unset one keeps every run), newest (`created_at`) first,
/// at most `limit` of them.
///
/// ```
/// use stepq_runs::{RunFilter, RunRecord, RunStatus};
///
/// let filter = RunFilter::new()
///     .with_status(RunStatus::Failure)
///     .with_status(RunStatus::Canceled)
///     .with_job("etl")
///     .with_tag("owner", "data")
///     .created_since(1_700_000_000_000_000)
///     .with_limit(20);
/// let mut run = RunRecord::new("r1", "etl", serde_json::json!({})).with_tag("owner", "data");
/// run.created_at = 1_700_000_000_000_001;
/// assert!(!filter.matches(&run), "QUEUED is not one of the statuses");
/// run.status = RunStatus::Failure;
/// assert!(filter.matches(&run));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunFilter {
    /// Keep runs in any of these statuses; empty keeps every status.
    pub statuses: Vec<RunStatus>,
    /// Keep runs of this job only.
    pub job_name: Option<String>,
    /// Keep runs that carry every one of these tags (key and value equal).
    pub tags: Vec<(String, String)>,
    /// Keep runs created at or after this time (microseconds since the Unix epoch).
    pub created_since: Option<u64>,
    /// Keep at most this many runs (the newest); `None` keeps all.
    pub limit: Option<usize>,
}

impl RunFilter {
    /// A filter that keeps every run.
    pub fn new() -> Self {
        RunFilter::default()
    }

    /// Also keeps runs in `status` (a run matches if it is in any of the statuses given).
    pub fn with_status(mut self, status: RunStatus) -> Self {
        if !self.statuses.contains(&status) {
            self.statuses.push(status);
        }
        self
    }

    /// Also keeps runs in any of `statuses`.
    pub fn with_statuses(self, statuses: impl IntoIterator<Item = RunStatus>) -> Self {
        statuses.into_iter().fold(self, RunFilter::with_status)
    }

    /// Keeps runs of job `job_name` only.
    pub fn with_job(mut self, job_name: impl Into<String>) -> Self {
        self.job_name = Some(job_name.into());
        self
    }

    /// Keeps runs tagged `key` = `value` only; every tag given must match.
    pub fn with_tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.push((key.into(), value.into()));
        self
    }

    /// Keeps runs created at or after `us` (microseconds since the Unix epoch).
    pub fn created_since(mut self, us: u64) -> Self {
        self.created_since = Some(us);
        self
    }

    /// Keeps at most `limit` runs, the newest.
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Whether `run` meets every condition of the filter (the limit aside).
    pub fn matches(&self, run: &RunRecord) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&run.status))
            && self
                .job_name
                .as_ref()
                .is_none_or(|job| *job == run.job_name)
            && self
                .tags
                .iter()
                .all(|(key, value)| run.tags.get(key) == Some(value))
            && self
                .created_since
                .is_none_or(|since| run.created_at >= since)
    }

    /// The runs of `runs` that match, newest first (`created_at`, then run id), at most
    /// `limit` of them: the in-memory evaluation the default
    /// [`list_runs_matching`](crate::RunStore::list_runs_matching) uses.
    pub fn select(&self, runs: Vec<RunRecord>) -> Vec<RunRecord> {
        let kept = runs.into_iter().filter(|run| self.matches(run)).collect();
        newest_first(kept, self.limit.unwrap_or(usize::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(id: &str, job: &str, status: RunStatus, created_at: u64) -> RunRecord {
        let mut run = RunRecord::new(id, job, json!({}));
        run.status = status;
        run.created_at = created_at;
        run
    }

    #[test]
    fn an_empty_filter_matches_every_run() {
        let filter = RunFilter::new();
        for status in RunStatus::ALL {
            assert!(filter.matches(&run("r", "j", status, 0)));
        }
    }

    #[test]
    fn statuses_are_alternatives() {
        let filter = RunFilter::new().with_statuses([RunStatus::Failure, RunStatus::Canceled]);
        let kept: Vec<_> = RunStatus::ALL
            .into_iter()
            .filter(|s| filter.matches(&run("r", "j", *s, 0)))
            .collect();
        assert_eq!(kept, [RunStatus::Failure, RunStatus::Canceled]);
        assert_eq!(
            filter
                .clone()
                .with_status(RunStatus::Failure)
                .statuses
                .len(),
            2,
            "a status given twice is kept once"
        );
    }

    #[test]
    fn job_must_be_equal() {
        let filter = RunFilter::new().with_job("etl");
        assert!(filter.matches(&run("r", "etl", RunStatus::Queued, 0)));
        assert!(!filter.matches(&run("r", "etl2", RunStatus::Queued, 0)));
        assert!(!filter.matches(&run("r", "ETL", RunStatus::Queued, 0)));
    }

    #[test]
    fn every_tag_must_match() {
        let tagged = run("r", "j", RunStatus::Queued, 0)
            .with_tag("owner", "me")
            .with_tag("env", "prod");
        assert!(RunFilter::new().with_tag("owner", "me").matches(&tagged));
        let both = RunFilter::new()
            .with_tag("owner", "me")
            .with_tag("env", "prod");
        assert!(both.matches(&tagged));
        assert!(!both.matches(&run("r", "j", RunStatus::Queued, 0).with_tag("owner", "me")));
        assert!(!RunFilter::new().with_tag("owner", "you").matches(&tagged));
        assert!(!RunFilter::new().with_tag("team", "me").matches(&tagged));
        let contradictory = RunFilter::new()
            .with_tag("owner", "me")
            .with_tag("owner", "you");
        assert!(
            !contradictory.matches(&tagged),
            "one key cannot have two values"
        );
        assert!(!RunFilter::new().with_tag("owner", "").matches(&run(
            "r",
            "j",
            RunStatus::Queued,
            0
        )));
    }

    #[test]
    fn created_since_is_inclusive() {
        let filter = RunFilter::new().created_since(100);
        assert!(!filter.matches(&run("r", "j", RunStatus::Queued, 99)));
        assert!(filter.matches(&run("r", "j", RunStatus::Queued, 100)));
        assert!(filter.matches(&run("r", "j", RunStatus::Queued, 101)));
    }

    #[test]
    fn conditions_combine_and_the_limit_does_not_affect_matches() {
        let filter = RunFilter::new()
            .with_status(RunStatus::Success)
            .with_job("etl")
            .with_tag("owner", "me")
            .created_since(10)
            .with_limit(0);
        let good = run("r", "etl", RunStatus::Success, 10).with_tag("owner", "me");
        assert!(filter.matches(&good));
        let mut wrong_status = good.clone();
        wrong_status.status = RunStatus::Failure;
        assert!(!filter.matches(&wrong_status));
        let mut too_old = good.clone();
        too_old.created_at = 9;
        assert!(!filter.matches(&too_old));
    }

    #[test]
    fn select_keeps_the_newest_matching_runs_up_to_the_limit() {
        let runs = vec![
            run("a", "etl", RunStatus::Success, 1),
            run("b", "load", RunStatus::Success, 2),
            run("c", "etl", RunStatus::Failure, 3),
            run("d", "etl", RunStatus::Success, 4),
            run("e", "etl", RunStatus::Success, 4),
        ];
        let ids = |runs: Vec<RunRecord>| runs.into_iter().map(|r| r.run_id).collect::<Vec<_>>();
        assert_eq!(
            ids(RunFilter::new().select(runs.clone())),
            ["e", "d", "c", "b", "a"],
            "ties: newest run id first"
        );
        let etl = RunFilter::new().with_job("etl");
        assert_eq!(ids(etl.clone().select(runs.clone())), ["e", "d", "c", "a"]);
        assert_eq!(
            ids(etl.clone().with_limit(2).select(runs.clone())),
            ["e", "d"]
        );
        assert!(etl.with_limit(0).select(runs).is_empty());
    }
}
