//! [`MemoryStore`]: the [`Store`] contract kept purely in memory.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::lease::{LeaseTable, Reap, spawn_reaper};
use super::watch::WatchHub;
use super::{
    Change, KeyValue, LeaseId, Op, Revision, Store, StoreError, WatchEvent, WatchStream, check_ops,
};

/// A [`Store`] held in memory: for unit tests, and for several controllers in one process that
/// share state (clone it: clones share the same data).
///
/// Nothing survives the process. Operations never fail except as the contract says
/// (`AlreadyExists`, `NotFound`, `Conflict`, `LeaseNotFound`).
///
/// Leases really expire: a background task deletes the keys of a lease when its ttl runs out
/// (and every operation first expires the leases that are due, so nobody reads a key whose
/// lease ended).
///
/// ```
/// use wharf::store::{MemoryStore, Store};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let a = MemoryStore::new();
/// let b = a.clone(); // same data
/// a.put("k", b"v".to_vec()).await.unwrap();
/// assert!(b.get("k").await.unwrap().is_some());
/// # });
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    data: Mutex<Data>,
    hub: WatchHub,
    /// Wakes the lease expiry task when a lease with an earlier deadline appears.
    wake: Arc<Notify>,
}

#[derive(Debug, Default)]
struct Data {
    revision: Revision,
    entries: BTreeMap<String, (Revision, Vec<u8>)>,
    leases: LeaseTable,
}

impl Inner {
    fn data(&self) -> MutexGuard<'_, Data> {
        // A panic while holding the lock cannot leave `Data` half-changed: batches are checked
        // before anything is written. So a poisoned lock is still consistent.
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deletes the keys of leases that reached their deadline, one batch per lease.
    fn expire(&self, data: &mut Data, now: Instant) {
        if !data.leases.has_due(now) {
            return;
        }
        for (_, keys) in data.leases.take_expired(now) {
            self.delete_keys(data, keys);
        }
    }

    /// Deletes `keys` (those that exist) in one batch at a new revision.
    fn delete_keys(&self, data: &mut Data, keys: Vec<String>) {
        let present: Vec<String> = keys
            .into_iter()
            .filter(|k| data.entries.contains_key(k))
            .collect();
        if present.is_empty() {
            return;
        }
        data.revision += 1;
        let revision = data.revision;
        let mut events = Vec::with_capacity(present.len());
        for key in present {
            data.entries.remove(&key);
            events.push(WatchEvent::Delete { key, revision });
        }
        self.hub.publish(events);
    }
}

impl Reap for Inner {
    fn reap(&self) -> Option<Instant> {
        let mut data = self.data();
        self.expire(&mut data, Instant::now());
        data.leases.next_deadline_or_stop()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The data, with due leases expired.
    fn data(&self) -> MutexGuard<'_, Data> {
        let mut data = self.inner.data();
        self.inner.expire(&mut data, Instant::now());
        data
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.data().entries.get(key).map(|(rev, v)| KeyValue {
            key: key.to_owned(),
            value: v.clone(),
            revision: *rev,
        }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let data = self.data();
        Ok(data
            .entries
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (rev, v))| KeyValue {
                key: k.clone(),
                value: v.clone(),
                revision: *rev,
            })
            .collect())
    }

    async fn apply(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        let mut data = self.data();
        if ops.is_empty() {
            return Ok(data.revision);
        }
        let revision = data.revision + 1;
        let now = Instant::now();
        let changes = {
            let entries = &data.entries;
            let leases = &data.leases;
            check_ops(
                ops,
                revision,
                |k| Ok::<_, std::convert::Infallible>(entries.get(k).map(|(r, _)| *r)),
                |lease| leases.alive(lease, now),
            )?
        };
        data.leases.record(&changes);
        let watched = self.inner.hub.has_watchers();
        let mut published = Vec::new();
        for Change { event, .. } in changes {
            match event {
                WatchEvent::Put(kv) => {
                    if watched {
                        published.push(WatchEvent::Put(kv.clone()));
                    }
                    data.entries.insert(kv.key, (revision, kv.value));
                }
                WatchEvent::Delete { key, revision } => {
                    data.entries.remove(&key);
                    if watched {
                        published.push(WatchEvent::Delete { key, revision });
                    }
                }
            }
        }
        data.revision = revision;
        // Still under the lock: watchers see batches in revision order.
        self.inner.hub.publish(published);
        Ok(revision)
    }

    async fn watch(&self, prefix: &str) -> Result<WatchStream, StoreError> {
        Ok(self.inner.hub.subscribe(prefix))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let mut data = self.data();
        let start = data.leases.claim_reaper();
        let lease = data.leases.grant(ttl, Instant::now());
        if start {
            if let Err(e) = spawn_reaper(&self.inner, Arc::clone(&self.inner.wake)) {
                data.leases.revoke(lease, Instant::now()).ok();
                data.leases.next_deadline_or_stop();
                return Err(e);
            }
        } else {
            self.inner.wake.notify_one();
        }
        Ok(lease)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        self.data().leases.keep_alive(lease, Instant::now())
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut data = self.data();
        let keys = data.leases.revoke(lease, Instant::now())?;
        self.inner.delete_keys(&mut data, keys);
        Ok(())
    }
}
