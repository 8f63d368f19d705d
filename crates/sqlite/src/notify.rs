//! Wake-ups: a waiter for a key (a task's result, a run's log) registers before it reads the
//! database, and the write that changes the key wakes it after its commit, so a waiter in the
//! writing process never polls. Commits of other processes (or other handles on the file)
//! wake every waiter: the writer thread sees them within [`EXTERNAL_CHECK`] through
//! `PRAGMA data_version` (see `writer.rs`). A slow safety poll ([`SAFETY_POLL`]) bounds the
//! wait should a wake-up ever be missed.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// How often the idle writer thread checks for commits of other connections.
pub(crate) const EXTERNAL_CHECK: Duration = Duration::from_millis(50);
/// How often a waiter re-checks on its own, whatever the wake-ups say.
pub(crate) const SAFETY_POLL: Duration = Duration::from_secs(5);

/// Wake-ups by key.
#[derive(Debug, Default)]
pub(crate) struct Notifier {
    waiting: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Notifier {
    /// Wakes everyone waiting on `key`.
    pub(crate) fn wake(&self, key: &str) {
        if let Some(notify) = self.waiting.lock().expect("notifier lock").get(key) {
            notify.notify_waiters();
        }
    }

    /// Wakes every waiter (another connection committed: any key may have changed).
    pub(crate) fn wake_all(&self) {
        for notify in self.waiting.lock().expect("notifier lock").values() {
            notify.notify_waiters();
        }
    }

    /// Whether anyone waits on `key`.
    pub(crate) fn is_waited_on(&self, key: &str) -> bool {
        self.waiting
            .lock()
            .expect("notifier lock")
            .contains_key(key)
    }

    /// Calls `check` until it returns `Some`, waiting between calls for a wake-up on `key`
    /// (or every [`SAFETY_POLL`]).
    pub(crate) async fn wait_for<T, E, F, Fut>(&self, key: &str, mut check: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        let notify = self
            .waiting
            .lock()
            .expect("notifier lock")
            .entry(key.to_string())
            .or_default()
            .clone();
        let _registration = Registration {
            notifier: self,
            key,
            notify: &notify,
        };
        loop {
            let woken = notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if let Some(found) = check().await? {
                return Ok(found);
            }
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep(SAFETY_POLL) => {}
            }
        }
    }
}

/// Removes a key's entry when its last waiter goes.
struct Registration<'a> {
    notifier: &'a Notifier,
    key: &'a str,
    notify: &'a Arc<Notify>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut waiting = self.notifier.waiting.lock().expect("notifier lock");
        // Two holders left: the map's and ours.
        if Arc::strong_count(self.notify) <= 2 {
            waiting.remove(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_wake_ends_the_wait_without_a_poll() {
        let notifier = Arc::new(Notifier::default());
        let ready = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (notifier, ready) = (notifier.clone(), ready.clone());
            tokio::spawn(async move {
                notifier
                    .wait_for("k", || {
                        let ready = ready.clone();
                        async move { Ok::<_, ()>(ready.load(Ordering::SeqCst).then_some(7)) }
                    })
                    .await
            })
        };
        while !notifier.waiting.lock().unwrap().contains_key("k") {
            tokio::task::yield_now().await;
        }
        ready.store(true, Ordering::SeqCst);
        notifier.wake("k");
        let started = tokio::time::Instant::now();
        assert_eq!(waiter.await.unwrap(), Ok(7));
        // The clock is paused: it moves only if the waiter falls back to its poll timer.
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "woken by the poll, not the wake"
        );
        assert!(notifier.waiting.lock().unwrap().is_empty(), "entry removed");
    }
}
