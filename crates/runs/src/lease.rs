//! Fleet-wide slot leases: the [`LeaseStore`] behind fleet-wide concurrency limits (at most
//! `limit` steps tagged `db = "warehouse"` running across every worker and run). A limit named
//! `name` has `limit` slots; a worker takes one ([`LeaseStore::acquire`]) before it runs such a
//! step, renews it while the step runs and gives it back when it ends. A lease not renewed
//! within its time to live is free again: a SIGKILLed worker's slots return after at most one
//! lease time, so a lost worker never leaks a slot.
//!
//! Expiry is by the writer's clock (microseconds since the epoch), so the machines of a fleet
//! must keep their clocks in step (NTP) within a small part of the lease time.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::time::Duration;
//! use stepq_runs::{InMemoryLeaseStore, LeaseStore};
//!
//! let store = InMemoryLeaseStore::new();
//! let ttl = Duration::from_secs(30);
//! let a = store.acquire("db=warehouse", 1, "worker-1/task-a", ttl).await?.expect("a free slot");
//! assert!(store.acquire("db=warehouse", 1, "worker-2/task-b", ttl).await?.is_none());
//! store.release(&a).await?;
//! assert!(store.acquire("db=warehouse", 1, "worker-2/task-b", ttl).await?.is_some());
//! # Ok::<(), stepq_runs::StorageError>(())
//! # }).unwrap();
//! ```

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::StorageError;

/// A slot held: which limit, which slot, by whom, and the store's token of the holding (an
/// S3 ETag, a row version) that renewals and the release must present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The limit's name (e.g. `db=warehouse`).
    pub name: String,
    /// The slot, `0..limit`.
    pub slot: usize,
    /// Who holds it (worker and task).
    pub holder: String,
    /// The store's token of this holding; a renewal replaces it.
    pub token: String,
    /// When it runs out unless renewed, µs since the epoch.
    pub expires_at_us: u64,
}

/// A slot as stored: its holder and when the holding runs out (0: released).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRecord {
    /// Who holds it; empty once released.
    pub holder: String,
    /// When the holding runs out, µs since the epoch; 0 once released.
    pub expires_at_us: u64,
}

impl SlotRecord {
    /// Whether the slot can be taken at `now_us`.
    pub fn is_free(&self, now_us: u64) -> bool {
        self.expires_at_us <= now_us
    }
}

/// Microseconds since the epoch, now.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// `ttl` from `now_us`, in µs since the epoch.
pub fn expiry(now_us: u64, ttl: Duration) -> u64 {
    now_us.saturating_add(ttl.as_micros().min(u64::MAX as u128) as u64)
}

/// Where fleet-wide slot leases are kept (see the [module docs](self)). Every store's
/// acquire is atomic per slot: two holders never hold one slot at once, whatever the number
/// of processes.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Takes a free slot (never taken, released, or expired) of limit `name` with `limit`
    /// slots for `holder` until `ttl` from now; `None` when all `limit` are held.
    async fn acquire(
        &self,
        name: &str,
        limit: usize,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StorageError>;

    /// Extends `lease` to `ttl` from now (updating its token and expiry); `false` if it was
    /// lost: it ran out and someone else took the slot.
    async fn renew(&self, lease: &mut Lease, ttl: Duration) -> Result<bool, StorageError>;

    /// Gives the slot back at once; a lease already lost is no error.
    async fn release(&self, lease: &Lease) -> Result<(), StorageError>;

    /// How many slots of `name` (of `limit`) are held now.
    async fn held(&self, name: &str, limit: usize) -> Result<usize, StorageError>;
}

/// Checks a limit name and size before a store uses them.
pub fn check_limit(name: &str, limit: usize) -> Result<(), StorageError> {
    crate::check_id(name)?;
    if limit == 0 {
        return Err(StorageError::InvalidId {
            id: name.to_string(),
            reason: "a limit of 0 slots can never be acquired",
        });
    }
    Ok(())
}

/// (name, slot) -> (record, version).
type Slots = HashMap<(String, usize), (SlotRecord, u64)>;

/// Leases in memory: one process's workers. Clones share the slots.
#[derive(Debug, Default, Clone)]
pub struct InMemoryLeaseStore {
    slots: std::sync::Arc<Mutex<Slots>>,
}

impl InMemoryLeaseStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl LeaseStore for InMemoryLeaseStore {
    async fn acquire(
        &self,
        name: &str,
        limit: usize,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StorageError> {
        check_limit(name, limit)?;
        let now = now_us();
        let mut slots = self.lock();
        for slot in 0..limit {
            let entry = slots.entry((name.to_string(), slot)).or_insert((
                SlotRecord {
                    holder: String::new(),
                    expires_at_us: 0,
                },
                0,
            ));
            if entry.0.is_free(now) {
                entry.1 += 1;
                entry.0 = SlotRecord {
                    holder: holder.to_string(),
                    expires_at_us: expiry(now, ttl),
                };
                return Ok(Some(Lease {
                    name: name.to_string(),
                    slot,
                    holder: holder.to_string(),
                    token: entry.1.to_string(),
                    expires_at_us: entry.0.expires_at_us,
                }));
            }
        }
        Ok(None)
    }

    async fn renew(&self, lease: &mut Lease, ttl: Duration) -> Result<bool, StorageError> {
        let mut slots = self.lock();
        let Some(entry) = slots.get_mut(&(lease.name.clone(), lease.slot)) else {
            return Ok(false);
        };
        if entry.1.to_string() != lease.token {
            return Ok(false);
        }
        entry.1 += 1;
        entry.0.expires_at_us = expiry(now_us(), ttl);
        lease.token = entry.1.to_string();
        lease.expires_at_us = entry.0.expires_at_us;
        Ok(true)
    }

    async fn release(&self, lease: &Lease) -> Result<(), StorageError> {
        let mut slots = self.lock();
        if let Some(entry) = slots.get_mut(&(lease.name.clone(), lease.slot)) {
            if entry.1.to_string() == lease.token {
                entry.1 += 1;
                entry.0 = SlotRecord {
                    holder: String::new(),
                    expires_at_us: 0,
                };
            }
        }
        Ok(())
    }

    async fn held(&self, name: &str, limit: usize) -> Result<usize, StorageError> {
        let now = now_us();
        let slots = self.lock();
        Ok((0..limit)
            .filter(|&slot| {
                slots
                    .get(&(name.to_string(), slot))
                    .is_some_and(|(r, _)| !r.is_free(now))
            })
            .count())
    }
}
