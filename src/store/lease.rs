//! Leases: the table the local stores keep in memory, the task that expires them, and
//! [`LeaseKeeper`], which keeps a lease of any [`Store`] alive in the background.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Change, LeaseId, Store, StoreError};

/// Lease ids of the local stores: unique in the process, so a stale id never names the lease of
/// another store (or of the same store after a reopen).
static NEXT_LOCAL_LEASE: AtomicI64 = AtomicI64::new(1);

/// The leases of a local store and which keys each one owns.
///
/// A key belongs to at most one lease: the one of its last write (a write without a lease
/// detaches it), and a deleted key belongs to none.
#[derive(Debug, Default)]
pub(crate) struct LeaseTable {
    leases: HashMap<LeaseId, LocalLease>,
    owner: HashMap<String, LeaseId>,
    /// True while an expiry task runs for this table.
    reaper_running: bool,
}

#[derive(Debug)]
struct LocalLease {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

impl LeaseTable {
    /// A new lease ending `ttl` from `now`.
    pub(crate) fn grant(&mut self, ttl: Duration, now: Instant) -> LeaseId {
        let id = LeaseId(NEXT_LOCAL_LEASE.fetch_add(1, Ordering::Relaxed));
        self.leases.insert(
            id,
            LocalLease {
                ttl,
                deadline: now + ttl,
                keys: BTreeSet::new(),
            },
        );
        id
    }

    /// True if `id` exists and has not reached its deadline.
    pub(crate) fn alive(&self, id: LeaseId, now: Instant) -> bool {
        self.leases.get(&id).is_some_and(|l| l.deadline > now)
    }

    /// Restarts the ttl of a live lease.
    pub(crate) fn keep_alive(&mut self, id: LeaseId, now: Instant) -> Result<Duration, StoreError> {
        match self.leases.get_mut(&id) {
            Some(lease) if lease.deadline > now => {
                lease.deadline = now + lease.ttl;
                Ok(lease.ttl)
            }
            _ => Err(StoreError::LeaseNotFound { lease: id }),
        }
    }

    /// Removes a live lease and returns the keys it owned.
    pub(crate) fn revoke(&mut self, id: LeaseId, now: Instant) -> Result<Vec<String>, StoreError> {
        if !self.alive(id, now) {
            return Err(StoreError::LeaseNotFound { lease: id });
        }
        Ok(self.remove(id))
    }

    fn remove(&mut self, id: LeaseId) -> Vec<String> {
        let keys: Vec<String> = self
            .leases
            .remove(&id)
            .map(|l| l.keys.into_iter().collect())
            .unwrap_or_default();
        for key in &keys {
            self.owner.remove(key);
        }
        keys
    }

    /// True if some lease reached its deadline.
    pub(crate) fn has_due(&self, now: Instant) -> bool {
        self.leases.values().any(|l| l.deadline <= now)
    }

    /// Removes every lease that reached its deadline, with the keys each one owned.
    pub(crate) fn take_expired(&mut self, now: Instant) -> Vec<(LeaseId, Vec<String>)> {
        let mut due: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        due.sort();
        due.into_iter().map(|id| (id, self.remove(id))).collect()
    }

    /// The earliest deadline, or `None` (and the expiry task marked as stopped) if no lease is
    /// left.
    pub(crate) fn next_deadline_or_stop(&mut self) -> Option<Instant> {
        let next = self.leases.values().map(|l| l.deadline).min();
        if next.is_none() {
            self.reaper_running = false;
        }
        next
    }

    /// Records which lease owns each key a committed batch wrote or deleted.
    pub(crate) fn record(&mut self, changes: &[Change]) {
        for change in changes {
            let key = change.event.key();
            if let Some(old) = self.owner.remove(key) {
                if let Some(lease) = self.leases.get_mut(&old) {
                    lease.keys.remove(key);
                }
            }
            if let Some(id) = change.lease {
                if let Some(lease) = self.leases.get_mut(&id) {
                    lease.keys.insert(key.to_owned());
                    self.owner.insert(key.to_owned(), id);
                }
            }
        }
    }

    /// Marks the expiry task as running; returns true if the caller must start it (else it
    /// should wake the running one, whose next deadline may have moved).
    pub(crate) fn claim_reaper(&mut self) -> bool {
        !std::mem::replace(&mut self.reaper_running, true)
    }
}

/// A store whose leases a background task expires.
pub(crate) trait Reap: Send + Sync + 'static {
    /// Deletes the keys of leases that reached their deadline and returns the next deadline, or
    /// `None` once no lease is left (the task then ends; the next grant starts another one).
    /// May block (it runs on tokio's blocking pool).
    fn reap(&self) -> Option<Instant>;
}

/// Starts the task that expires the leases of `store` on time. It holds the store weakly and
/// ends when the store is dropped or has no lease left.
pub(crate) fn spawn_reaper<T: Reap>(store: &Arc<T>, wake: Arc<Notify>) -> Result<(), StoreError> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|e| StoreError::backend("starting the lease expiry task", e))?;
    let weak: Weak<T> = Arc::downgrade(store);
    runtime.spawn(async move {
        loop {
            let Some(store) = weak.upgrade() else { return };
            let next = match tokio::task::spawn_blocking(move || store.reap()).await {
                Ok(Some(next)) => next,
                Ok(None) | Err(_) => return,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = wake.notified() => {}
            }
        }
    });
    Ok(())
}

/// Keeps a lease alive in the background by calling [`Store::keep_alive`] three times per ttl;
/// stops (and lets the lease expire) when dropped.
///
/// The keeper retries through backend errors (an etcd outage: etcd extends every lease when it
/// comes back) and reports the lease lost only when the store says it no longer exists.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use wharf::store::{LeaseKeeper, MemoryStore, Store};
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store = Arc::new(MemoryStore::new());
/// let ttl = Duration::from_secs(2);
/// let lease = store.grant_lease(ttl).await?;
/// store.put_with_lease("hosts/a", b"10.0.0.1".to_vec(), lease).await?;
/// let keeper = LeaseKeeper::spawn(store.clone(), lease, ttl);
/// // ... while `keeper` lives, hosts/a stays; drop it and the key goes after the ttl.
/// assert!(!keeper.is_lost());
/// # Ok::<(), wharf::store::StoreError>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct LeaseKeeper {
    lease: LeaseId,
    task: JoinHandle<()>,
    lost: watch::Receiver<bool>,
}

impl LeaseKeeper {
    /// Starts refreshing `lease` of `store`, granted with `ttl`, every `ttl / 3`. Must be called
    /// inside a tokio runtime.
    pub fn spawn(store: Arc<dyn Store>, lease: LeaseId, ttl: Duration) -> Self {
        let period = (ttl / 3).max(Duration::from_millis(10));
        let (tx, lost) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                match store.keep_alive(lease).await {
                    Ok(_) => {}
                    Err(StoreError::LeaseNotFound { .. }) => {
                        tracing::warn!(%lease, "store lease lost: it expired or was revoked");
                        let _ = tx.send(true);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(%lease, error = %e, "could not refresh a store lease; retrying");
                    }
                }
            }
        });
        LeaseKeeper { lease, task, lost }
    }

    /// The lease kept alive.
    pub fn lease(&self) -> LeaseId {
        self.lease
    }

    /// True once the store said the lease no longer exists; its keys are gone.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow() || self.task.is_finished()
    }

    /// Resolves when the lease is lost (see [`is_lost`](Self::is_lost)): whoever relies on the
    /// lease's keys must grant a new lease and write them again.
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        // An error means the task ended, which it does only once the lease is lost.
        let _ = lost.wait_for(|lost| *lost).await;
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}
