//! Fleet-wide concurrency limits per tag: at most `limit` steps tagged `key = value` run at
//! once across every worker sharing a [`LeaseStore`] (the run store's database or bucket),
//! whatever run they belong to.
//!
//! Before a worker runs a step task whose steps carry a limited tag, it takes one slot of
//! that limit (all the task's limits, in name order, so two workers never wait on each other
//! crosswise); while no slot is free the task waits, its message kept hidden by the
//! worker's visibility heartbeat, retrying with a backoff up to [`MAX_WAIT_BETWEEN_TRIES`]
//! (the stores are remote; there is nothing to wait on but time). It renews its slots every
//! third of the lease time while the steps run and gives them back when they end. A worker
//! that dies (SIGKILL) stops renewing: its slots are free again one lease time after its last
//! renewal at most, so a lost worker never leaks a slot. A step's `StepStart` comes after its
//! slot is taken and its end before the slot is given back, so the step intervals of the
//! event log never overlap more than `limit` deep.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::collections::BTreeMap;
//! use std::sync::Arc;
//! use std::time::Duration;
//! use stepq_runs::InMemoryLeaseStore;
//! use stepq_worker::fleet::{FleetLimit, FleetLimiter};
//!
//! let limiter = FleetLimiter::new(
//!     Arc::new(InMemoryLeaseStore::new()),
//!     vec![FleetLimit::new("db", "warehouse", 1)],
//!     Duration::from_secs(30),
//! )
//! .unwrap();
//! let tags = BTreeMap::from([("db".to_string(), "warehouse".to_string())]);
//! let stop = tokio_util::sync::CancellationToken::new();
//! let held = limiter.acquire(&tags, "worker-1/task-a", &stop).await.unwrap();
//! assert_eq!(limiter.held(&FleetLimit::new("db", "warehouse", 1)).await.unwrap(), 1);
//! held.release().await;
//! # });
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stepq_core::SharedFailureLog;
use stepq_runs::{Lease, LeaseStore, StorageError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::WorkerError;

/// Longest pause between two tries to take a slot.
pub const MAX_WAIT_BETWEEN_TRIES: Duration = Duration::from_secs(1);
/// First pause after a try that found every slot held.
const FIRST_WAIT: Duration = Duration::from_millis(50);
/// The default lease time.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// One fleet-wide limit: at most `limit` steps tagged `key = value` at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetLimit {
    /// The tag key.
    pub key: String,
    /// The tag value.
    pub value: String,
    /// Steps at once, at least 1.
    pub limit: usize,
}

impl FleetLimit {
    /// At most `limit` steps tagged `key = value` at once.
    pub fn new(key: impl Into<String>, value: impl Into<String>, limit: usize) -> Self {
        FleetLimit {
            key: key.into(),
            value: value.into(),
            limit,
        }
    }

    /// The lease name: `key=value`, with `%` and `/` escaped (a path segment).
    pub fn lease_name(&self) -> String {
        let escape = |s: &str| s.replace('%', "%25").replace('/', "%2F");
        format!("{}={}", escape(&self.key), escape(&self.value))
    }

    fn applies_to(&self, tags: &BTreeMap<String, String>) -> bool {
        tags.get(&self.key) == Some(&self.value)
    }
}

/// Takes, renews and gives back fleet-wide slots (see the [module docs](self)).
pub struct FleetLimiter {
    store: Arc<dyn LeaseStore>,
    /// In lease-name order.
    limits: Vec<FleetLimit>,
    lease: Duration,
    failures: SharedFailureLog,
}

impl std::fmt::Debug for FleetLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetLimiter")
            .field("limits", &self.limits)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

fn config_error(reason: String) -> WorkerError {
    WorkerError::Config {
        field: "fleet_limits",
        reason,
    }
}

impl FleetLimiter {
    /// A limiter of `limits` on `store`, leases of `lease`; a limit of 0, a limit listed
    /// twice or a lease under a second is refused naming it.
    pub fn new(
        store: Arc<dyn LeaseStore>,
        mut limits: Vec<FleetLimit>,
        lease: Duration,
    ) -> Result<Self, WorkerError> {
        for (i, l) in limits.iter().enumerate() {
            if l.limit == 0 {
                return Err(config_error(format!(
                    "the limit of tag `{} = \"{}\"` is 0: no step with that tag could ever run \
                     (the least is 1)",
                    l.key, l.value
                )));
            }
            if l.key.is_empty() {
                return Err(config_error("a limit with an empty tag key".into()));
            }
            if limits[..i]
                .iter()
                .any(|o| o.key == l.key && o.value == l.value)
            {
                return Err(config_error(format!(
                    "tag `{} = \"{}\"` is limited twice",
                    l.key, l.value
                )));
            }
        }
        if lease < Duration::from_secs(1) {
            return Err(WorkerError::Config {
                field: "fleet_lease_seconds",
                reason: format!("must be at least 1 second, got {lease:?}"),
            });
        }
        limits.sort_by_key(FleetLimit::lease_name);
        Ok(FleetLimiter {
            store,
            limits,
            lease,
            failures: SharedFailureLog::new("taking or renewing fleet-wide slots"),
        })
    }

    /// The limits, in lease-name order.
    pub fn limits(&self) -> &[FleetLimit] {
        &self.limits
    }

    /// How many slots of `limit` are held now.
    pub async fn held(&self, limit: &FleetLimit) -> Result<usize, StorageError> {
        self.store.held(&limit.lease_name(), limit.limit).await
    }

    /// Takes a slot of every limit `tags` fall under, for `holder`, waiting while none is
    /// free; returns what it holds (nothing when no limit applies), or what it took so far,
    /// given back, once `cancel` fires.
    pub async fn acquire(
        &self,
        tags: &BTreeMap<String, String>,
        holder: &str,
        cancel: &CancellationToken,
    ) -> Option<HeldSlots> {
        let mut leases = Vec::new();
        for limit in self.limits.iter().filter(|l| l.applies_to(tags)) {
            match self.take(limit, holder, cancel).await {
                Some(lease) => leases.push(lease),
                None => {
                    HeldSlots::start(self, leases).release().await;
                    return None;
                }
            }
        }
        Some(HeldSlots::start(self, leases))
    }

    /// One slot of `limit`, or `None` if `cancel` fires first.
    async fn take(
        &self,
        limit: &FleetLimit,
        holder: &str,
        cancel: &CancellationToken,
    ) -> Option<Lease> {
        let name = limit.lease_name();
        let mut wait = FIRST_WAIT;
        let mut said = false;
        loop {
            match self
                .store
                .acquire(&name, limit.limit, holder, self.lease)
                .await
            {
                Ok(Some(lease)) => {
                    self.failures.succeeded();
                    if said {
                        tracing::info!(limit = %name, holder, "took a fleet-wide slot");
                    }
                    return Some(lease);
                }
                Ok(None) => {
                    self.failures.succeeded();
                    if !said {
                        tracing::info!(
                            limit = %name,
                            slots = limit.limit,
                            holder,
                            "every fleet-wide slot is held; waiting for one"
                        );
                        said = true;
                    }
                }
                Err(e) => {
                    self.failures.failed(&e);
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = tokio::time::sleep(jittered(wait, holder)) => {}
            }
            wait = (wait * 2).min(MAX_WAIT_BETWEEN_TRIES);
        }
    }
}

/// The slots step task `args` needs from `fleet` (those of its first step's tags: a fused
/// task's steps share their tags), taken for `holder`; `None` without a limiter, for a job or
/// step the location lacks, or once `cancel` fires.
pub(crate) async fn slots_for_task(
    fleet: Option<&FleetLimiter>,
    location: &crate::CodeLocation,
    args: &stepq_plan::ExecuteStepArgs,
    holder: &str,
    cancel: &CancellationToken,
) -> Option<HeldSlots> {
    let fleet = fleet?;
    let job = location.job(&args.job_name)?;
    let step = job.step(args.step_keys.first()?)?;
    fleet.acquire(&step.tags, holder, cancel).await
}

/// `wait` less up to a quarter, by `holder` and the clock, so waiting workers spread out.
fn jittered(wait: Duration, holder: &str) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    holder.hash(&mut h);
    std::time::SystemTime::now().hash(&mut h);
    let quarter = wait.as_micros() as u64 / 4;
    wait - Duration::from_micros(h.finish() % quarter.max(1))
}

/// Slots held for one task: renewed in the background until [`release`](Self::release).
pub struct HeldSlots {
    store: Arc<dyn LeaseStore>,
    leases: Arc<Mutex<Vec<Lease>>>,
    stop: CancellationToken,
    renewer: Option<JoinHandle<()>>,
}

impl HeldSlots {
    fn start(limiter: &FleetLimiter, leases: Vec<Lease>) -> Self {
        let leases = Arc::new(Mutex::new(leases));
        let stop = CancellationToken::new();
        let renewer = (!leases.lock().unwrap_or_else(|p| p.into_inner()).is_empty()).then(|| {
            tokio::spawn(renew_until_stopped(
                limiter.store.clone(),
                leases.clone(),
                limiter.lease,
                limiter.failures.clone(),
                stop.clone(),
            ))
        });
        HeldSlots {
            store: limiter.store.clone(),
            leases,
            stop,
            renewer,
        }
    }

    /// How many slots are held.
    pub fn len(&self) -> usize {
        self.leases.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no slot is held (no limit applied).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops renewing and gives every slot back (a failure is logged: the slot then frees
    /// itself when its lease runs out).
    pub async fn release(mut self) {
        self.stop.cancel();
        if let Some(renewer) = self.renewer.take() {
            let _ = renewer.await;
        }
        let leases = std::mem::take(&mut *self.leases.lock().unwrap_or_else(|p| p.into_inner()));
        for lease in leases.iter().rev() {
            if let Err(e) = self.store.release(lease).await {
                tracing::warn!(
                    limit = %lease.name,
                    error = %e,
                    "could not give a fleet-wide slot back; it frees itself when its lease runs out"
                );
            }
        }
    }
}

impl Drop for HeldSlots {
    fn drop(&mut self) {
        // Not released (a panic): stop renewing; the leases run out on their own.
        self.stop.cancel();
    }
}

/// Renews `leases` every third of `lease` until `stop`.
async fn renew_until_stopped(
    store: Arc<dyn LeaseStore>,
    leases: Arc<Mutex<Vec<Lease>>>,
    lease: Duration,
    failures: SharedFailureLog,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(lease / 3) => {}
        }
        let mut current = leases.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for held in current.iter_mut() {
            match store.renew(held, lease).await {
                Ok(true) => failures.succeeded(),
                Ok(false) => tracing::warn!(
                    limit = %held.name,
                    holder = %held.holder,
                    "a fleet-wide slot ran out before it was renewed and was taken: the limit \
                     may be exceeded until this step ends"
                ),
                Err(e) => {
                    failures.failed(&e);
                }
            }
        }
        *leases.lock().unwrap_or_else(|p| p.into_inner()) = current;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stepq_runs::InMemoryLeaseStore;

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn bad_limits_are_refused_naming_the_tag() {
        let store = Arc::new(InMemoryLeaseStore::new());
        let err = FleetLimiter::new(
            store.clone(),
            vec![FleetLimit::new("db", "warehouse", 0)],
            DEFAULT_LEASE,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("`db = \"warehouse\"` is 0"),
            "{err}"
        );
        let twice = vec![FleetLimit::new("db", "w", 1), FleetLimit::new("db", "w", 2)];
        assert!(FleetLimiter::new(store.clone(), twice, DEFAULT_LEASE).is_err());
        assert!(FleetLimiter::new(store, vec![], Duration::from_millis(10)).is_err());
        assert_eq!(FleetLimit::new("a/b", "c%", 1).lease_name(), "a%2Fb=c%25");
    }

    #[tokio::test]
    async fn a_task_waits_for_a_slot_and_takes_it_once_released() {
        let store = Arc::new(InMemoryLeaseStore::new());
        let limiter = Arc::new(
            FleetLimiter::new(store, vec![FleetLimit::new("db", "w", 1)], DEFAULT_LEASE).unwrap(),
        );
        let stop = CancellationToken::new();
        let limited = tags(&[("db", "w")]);
        let first = limiter.acquire(&limited, "a", &stop).await.unwrap();
        assert_eq!(first.len(), 1);
        // An unlimited task takes nothing and does not wait.
        let free = limiter
            .acquire(&tags(&[("db", "other")]), "b", &stop)
            .await
            .unwrap();
        assert!(free.is_empty());
        let waiter = {
            let (limiter, limited, stop) = (limiter.clone(), limited.clone(), stop.clone());
            tokio::spawn(
                async move { limiter.acquire(&limited, "c", &stop).await.map(|h| h.len()) },
            )
        };
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!waiter.is_finished(), "the second task did not wait");
        first.release().await;
        assert_eq!(waiter.await.unwrap(), Some(1));
    }

    #[tokio::test]
    async fn a_cancelled_wait_gives_back_what_it_took() {
        let store = Arc::new(InMemoryLeaseStore::new());
        let limits = vec![FleetLimit::new("a", "1", 1), FleetLimit::new("b", "1", 1)];
        let limiter = FleetLimiter::new(store, limits, DEFAULT_LEASE).unwrap();
        let stop = CancellationToken::new();
        let b_only = limiter
            .acquire(&tags(&[("b", "1")]), "x", &stop)
            .await
            .unwrap();
        let cancel = CancellationToken::new();
        let both = tags(&[("a", "1"), ("b", "1")]);
        let waiting = limiter.acquire(&both, "y", &cancel);
        let cancel_soon = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            cancel.cancel();
        };
        let (got, ()) = tokio::join!(waiting, cancel_soon);
        assert!(got.is_none());
        // `a` was taken while waiting for `b`, then given back.
        assert_eq!(
            limiter.held(&FleetLimit::new("a", "1", 1)).await.unwrap(),
            0
        );
        b_only.release().await;
    }

    #[tokio::test]
    async fn held_slots_are_renewed_past_their_lease() {
        let store = Arc::new(InMemoryLeaseStore::new());
        let limit = FleetLimit::new("db", "w", 1);
        let limiter =
            FleetLimiter::new(store, vec![limit.clone()], Duration::from_secs(1)).unwrap();
        let stop = CancellationToken::new();
        let held = limiter
            .acquire(&tags(&[("db", "w")]), "a", &stop)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1600)).await;
        assert_eq!(
            limiter.held(&limit).await.unwrap(),
            1,
            "the lease was not renewed"
        );
        held.release().await;
        assert_eq!(limiter.held(&limit).await.unwrap(), 0);
    }
}
