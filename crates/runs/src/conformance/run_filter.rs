//! The [`RunStore::list_runs_matching`] case of the run store suite: statuses, job, tags,
//! creation time and limit, combined, on runs whose status moved since they were created.

use serde_json::json;

use super::run_store::RunStoreFactory;
use crate::{RunFilter, RunRecord, RunStatus, RunStore};

/// A run of `job` created at `created_at` with `tags`.
fn tagged(run_id: &str, job: &str, created_at: u64, tags: &[(&str, &str)]) -> RunRecord {
    let mut record = tags.iter().fold(
        RunRecord::new(run_id, job, json!({"filter": run_id})),
        |record, (key, value)| record.with_tag(*key, *value),
    );
    record.created_at = created_at;
    record
}

/// `list_runs_matching` keeps the runs each condition (statuses as alternatives, job, every
/// tag, created at or after a time) matches on their current record, newest first, up to the
/// limit; the empty filter lists every run like `list_runs`.
pub async fn check_list_runs_matching_filters_newest_first<F: RunStoreFactory>(factory: &F) {
    use RunStatus::*;
    let store = factory.fresh().await;
    assert!(
        store
            .list_runs_matching(&RunFilter::new())
            .await
            .expect("filter an empty store")
            .is_empty(),
        "an empty store matches nothing"
    );
    let runs: [(RunRecord, &[RunStatus]); 5] = [
        (
            tagged("f-a", "etl", 1_000, &[("owner", "alice"), ("env", "prod")]),
            &[Starting, Started, Success],
        ),
        (
            tagged("f-b", "etl", 2_000, &[("owner", "bob")]),
            &[Starting, Started, Failure],
        ),
        (
            tagged("f-c", "load", 3_000, &[("owner", "alice"), ("env", "dev")]),
            &[Canceled],
        ),
        (
            tagged("f-d", "load", 4_000, &[("owner", "alice"), ("env", "prod")]),
            &[],
        ),
        (tagged("f-e", "etl", 5_000, &[]), &[Starting, Started]),
    ];
    for (record, path) in &runs {
        store.create_run(record).await.expect("create_run");
        for status in *path {
            store
                .update_status(&record.run_id, *status)
                .await
                .unwrap_or_else(|e| panic!("move {} to {status}: {e}", record.run_id));
        }
    }
    let matching = |filter: RunFilter| {
        let store = &store;
        async move {
            let found = store
                .list_runs_matching(&filter)
                .await
                .unwrap_or_else(|e| panic!("list_runs_matching({filter:?}): {e}"));
            for run in &found {
                assert_eq!(
                    store.get_run(&run.run_id).await.expect("get_run"),
                    *run,
                    "a match is the current record"
                );
            }
            found.into_iter().map(|r| r.run_id).collect::<Vec<_>>()
        }
    };
    let all = store.list_runs(usize::MAX).await.expect("list_runs");
    assert_eq!(
        store
            .list_runs_matching(&RunFilter::new())
            .await
            .expect("filter"),
        all,
        "the empty filter lists what list_runs lists"
    );
    assert_eq!(
        matching(RunFilter::new()).await,
        ["f-e", "f-d", "f-c", "f-b", "f-a"]
    );
    assert_eq!(
        matching(RunFilter::new().with_status(Failure)).await,
        ["f-b"]
    );
    assert_eq!(
        matching(RunFilter::new().with_statuses([Failure, Canceled])).await,
        ["f-c", "f-b"],
        "statuses are alternatives, matched on the current status"
    );
    assert_eq!(
        matching(RunFilter::new().with_status(Queued)).await,
        ["f-d"]
    );
    assert!(matching(RunFilter::new().with_status(Canceling))
        .await
        .is_empty());
    assert_eq!(
        matching(RunFilter::new().with_job("etl")).await,
        ["f-e", "f-b", "f-a"]
    );
    assert!(matching(RunFilter::new().with_job("missing"))
        .await
        .is_empty());
    assert_eq!(
        matching(RunFilter::new().with_tag("owner", "alice")).await,
        ["f-d", "f-c", "f-a"]
    );
    assert_eq!(
        matching(
            RunFilter::new()
                .with_tag("owner", "alice")
                .with_tag("env", "prod")
        )
        .await,
        ["f-d", "f-a"],
        "every tag must match"
    );
    assert!(matching(
        RunFilter::new()
            .with_tag("owner", "alice")
            .with_tag("owner", "bob")
    )
    .await
    .is_empty());
    assert_eq!(
        matching(RunFilter::new().created_since(3_000)).await,
        ["f-e", "f-d", "f-c"],
        "created_since is inclusive"
    );
    assert_eq!(
        matching(RunFilter::new().with_limit(2)).await,
        ["f-e", "f-d"]
    );
    assert!(matching(RunFilter::new().with_limit(0)).await.is_empty());
    assert_eq!(
        matching(RunFilter::new().with_job("etl").with_limit(1)).await,
        ["f-e"],
        "the limit applies after the filter"
    );
    assert_eq!(
        matching(
            RunFilter::new()
                .with_statuses([Success, Failure, Canceled])
                .created_since(2_000)
                .with_limit(1)
        )
        .await,
        ["f-c"]
    );
    assert_eq!(
        matching(
            RunFilter::new()
                .with_job("etl")
                .with_tag("owner", "alice")
                .with_status(Success)
                .created_since(1_000)
        )
        .await,
        ["f-a"]
    );
    // A status change shows in the next listing.
    store
        .update_status("f-d", Canceled)
        .await
        .expect("cancel f-d");
    assert_eq!(
        matching(RunFilter::new().with_status(Canceled)).await,
        ["f-d", "f-c"]
    );
    assert!(matching(RunFilter::new().with_status(Queued))
        .await
        .is_empty());
}
