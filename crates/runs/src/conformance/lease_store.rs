//! The [`LeaseStore`] suite: slots up to the limit and no more, release frees, expiry frees
//! and voids the old holder's renewal, renewal keeps, concurrent acquires never share a
//! slot, limits are independent, bad names are refused, leases survive a new store instance.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::{LeaseStore, StorageError};

/// Makes lease stores for the suite.
pub trait LeaseStoreFactory: Send + Sync {
    /// The store under test.
    type Store: LeaseStore + 'static;

    /// A handle on a new, empty storage space.
    fn fresh(&self) -> impl Future<Output = Self::Store> + Send;

    /// Another, independent handle on the same space as `store`.
    fn reopen(&self, store: &Self::Store) -> impl Future<Output = Self::Store> + Send;
}

/// Runs every [`LeaseStore`] check, one after another.
pub async fn run_lease_store_suite<F: LeaseStoreFactory>(factory: &F) {
    crate::__lease_store_checks!(__run_checks factory);
}

const LONG: Duration = Duration::from_secs(60);

/// `limit` acquires take `limit` different slots; the next finds none.
pub async fn check_leases_up_to_the_limit_and_no_more<F: LeaseStoreFactory>(factory: &F) {
    let store = factory.fresh().await;
    let mut slots = BTreeSet::new();
    for i in 0..3 {
        let lease = store
            .acquire("db=warehouse", 3, &format!("w/{i}"), LONG)
            .await
            .expect("acquire")
            .unwrap_or_else(|| panic!("acquire {i} of 3 found no free slot"));
        assert_eq!(lease.holder, format!("w/{i}"));
        slots.insert(lease.slot);
    }
    assert_eq!(slots, BTreeSet::from([0, 1, 2]), "three different slots");
    assert!(
        store
            .acquire("db=warehouse", 3, "w/3", LONG)
            .await
            .expect("acquire")
            .is_none(),
        "a fourth acquire of a limit of 3 took a slot"
    );
    assert_eq!(store.held("db=warehouse", 3).await.expect("held"), 3);
    // Another limit is not affected.
    assert!(store
        .acquire("gpu=a100", 1, "w/4", LONG)
        .await
        .expect("acquire")
        .is_some());
}

/// A released slot is free at once; a second release is no error.
pub async fn check_a_released_slot_is_free_again<F: LeaseStoreFactory>(factory: &F) {
    let store = factory.fresh().await;
    let lease = store
        .acquire("l", 1, "a", LONG)
        .await
        .expect("acquire")
        .unwrap();
    store.release(&lease).await.expect("release");
    store
        .release(&lease)
        .await
        .expect("a second release is no error");
    assert_eq!(store.held("l", 1).await.expect("held"), 0);
    let again = store.acquire("l", 1, "b", LONG).await.expect("acquire");
    assert!(again.is_some(), "the released slot was not free");
}

/// A lease not renewed in time is taken over; the old holder's renewal then fails and its
/// release leaves the new holder alone.
pub async fn check_an_expired_lease_is_taken_over<F: LeaseStoreFactory>(factory: &F) {
    let store = factory.fresh().await;
    let ttl = Duration::from_millis(300);
    let mut old = store
        .acquire("l", 1, "old", ttl)
        .await
        .expect("acquire")
        .unwrap();
    assert!(store
        .acquire("l", 1, "new", LONG)
        .await
        .expect("acquire")
        .is_none());
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let new = store
        .acquire("l", 1, "new", LONG)
        .await
        .expect("acquire")
        .expect("an expired lease's slot is free");
    assert!(
        !store.renew(&mut old, LONG).await.expect("renew"),
        "the expired holder renewed a slot someone else took"
    );
    store
        .release(&old)
        .await
        .expect("a lost lease's release is no error");
    assert_eq!(
        store.held("l", 1).await.expect("held"),
        1,
        "the new holder lost its slot"
    );
    assert!(store
        .acquire("l", 1, "third", LONG)
        .await
        .expect("acquire")
        .is_none());
    store.release(&new).await.expect("release");
}

/// A renewed lease outlives its first time to live.
pub async fn check_a_renewed_lease_is_kept<F: LeaseStoreFactory>(factory: &F) {
    let store = factory.fresh().await;
    let ttl = Duration::from_millis(600);
    let mut lease = store
        .acquire("l", 1, "a", ttl)
        .await
        .expect("acquire")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = lease.expires_at_us;
    assert!(
        store.renew(&mut lease, ttl).await.expect("renew"),
        "renewal failed"
    );
    assert!(
        lease.expires_at_us > before,
        "renewal did not move the expiry"
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(
        store
            .acquire("l", 1, "b", LONG)
            .await
            .expect("acquire")
            .is_none(),
        "a renewed lease was taken over"
    );
    assert!(
        store.renew(&mut lease, ttl).await.expect("renew"),
        "a second renewal failed"
    );
}

/// Acquires racing from many tasks take each slot once.
pub async fn check_concurrent_acquires_never_share_a_slot<F: LeaseStoreFactory>(factory: &F) {
    let store = Arc::new(factory.fresh().await);
    let mut tasks = Vec::new();
    for i in 0..12 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.acquire("race", 3, &format!("t{i}"), LONG).await
        }));
    }
    let mut won = Vec::new();
    for task in tasks {
        if let Some(lease) = task.await.expect("task").expect("acquire") {
            won.push(lease.slot);
        }
    }
    won.sort_unstable();
    assert_eq!(won, [0, 1, 2], "12 racing acquires of 3 slots took {won:?}");
}

/// Unusable limit names and a limit of 0 are refused.
pub async fn check_leases_reject_bad_names_and_zero_limits<F: LeaseStoreFactory>(factory: &F) {
    let store = factory.fresh().await;
    for bad in ["", "a/b", ".."] {
        match store.acquire(bad, 1, "h", LONG).await {
            Err(StorageError::InvalidId { .. }) => {}
            other => panic!("acquire({bad:?}): {other:?}"),
        }
    }
    match store.acquire("l", 0, "h", LONG).await {
        Err(StorageError::InvalidId { .. }) => {}
        other => panic!("acquire with limit 0: {other:?}"),
    }
}

/// Leases taken through one handle are held for another.
pub async fn check_leases_survive_a_new_store_instance<F: LeaseStoreFactory>(factory: &F) {
    let store = factory.fresh().await;
    let lease = store
        .acquire("l", 1, "a", LONG)
        .await
        .expect("acquire")
        .unwrap();
    let reopened = factory.reopen(&store).await;
    assert!(reopened
        .acquire("l", 1, "b", LONG)
        .await
        .expect("acquire")
        .is_none());
    assert_eq!(reopened.held("l", 1).await.expect("held"), 1);
    store.release(&lease).await.expect("release");
    assert!(reopened
        .acquire("l", 1, "b", LONG)
        .await
        .expect("acquire")
        .is_some());
}
