//! [`MemoryStore`]: the [`Store`] contract kept purely in memory.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::watch::WatchHub;
use super::{KeyValue, Op, Revision, Store, StoreError, WatchEvent, WatchStream, check_ops};

/// A [`Store`] held in memory: for unit tests, and for several controllers in one process that
/// share state (clone it: clones share the same data).
///
/// Nothing survives the process. Operations never fail except as the contract says
/// (`AlreadyExists`, `NotFound`, `Conflict`).
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
}

#[derive(Debug, Default)]
struct Data {
    revision: Revision,
    entries: BTreeMap<String, (Revision, Vec<u8>)>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn data(&self) -> MutexGuard<'_, Data> {
        // A panic while holding the lock cannot leave `Data` half-changed: batches are checked
        // before anything is written. So a poisoned lock is still consistent.
        self.inner.data.lock().unwrap_or_else(|e| e.into_inner())
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
        let events = {
            let entries = &data.entries;
            check_ops(ops, revision, |k| {
                Ok::<_, std::convert::Infallible>(entries.get(k).map(|(r, _)| *r))
            })?
        };
        let watched = self.inner.hub.has_watchers();
        let mut published = Vec::new();
        for event in events {
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
}
