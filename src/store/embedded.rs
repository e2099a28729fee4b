//! [`EmbeddedStore`]: the default [`Store`], a crash-safe database file on local disk.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, Durability, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::lease::{LeaseTable, Reap, spawn_reaper};
use super::watch::WatchHub;
use super::{
    KeyValue, LeaseId, Op, Revision, Store, StoreError, WatchEvent, WatchStream, check_ops,
};

/// Every key: `key -> (revision of its last change, value)`.
const KV: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("kv");
/// The keys attached to a lease: `key -> lease id`. Leases live in memory only, so these keys
/// are deleted when the database is opened.
const LEASED: TableDefinition<&str, i64> = TableDefinition::new("leased");
/// Store-wide metadata; holds the revision counter under [`REVISION_KEY`].
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION_KEY: &str = "revision";

/// The default [`Store`]: one [`redb`] database file on local disk.
///
/// Crash safety comes from redb: copy-on-write B-trees with checksummed commits, so a process
/// killed at any instant reopens at the last committed batch, never a torn one. Every
/// [`apply`](Store::apply) is one write transaction committed with
/// [`Durability::Immediate`] (fsynced before it returns), so a batch that returned `Ok` survives
/// a crash or power loss. One key per object keeps a change O(log n) in a B-tree of high fan-out,
/// effectively constant: the 100,000th write costs what the first did.
///
/// The database runs on tokio's blocking pool; writes are serialized (redb has one writer).
/// The file is locked: open it once per process and share the handle (it is cheap to clone).
///
/// Leases are timers in memory: they expire on time while the store is open, but do not survive
/// reopening it. Keys written with a lease are deleted when the database is opened (in one
/// batch, at a new revision), since the process that owned the lease is gone.
///
/// ```no_run
/// use wharf::store::{EmbeddedStore, Store};
/// # async fn demo() -> Result<(), wharf::store::StoreError> {
/// let store = EmbeddedStore::open("/var/lib/wharf/state.redb").await?;
/// store.put("controller/v1/networks/abc", br#"{"name":"alpine-net"}"#.to_vec()).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    /// Held across commit and publish so watchers see batches in revision order; taken before
    /// `leases`.
    write_lock: Mutex<()>,
    hub: WatchHub,
    leases: Mutex<LeaseTable>,
    /// Wakes the lease expiry task when a lease with an earlier deadline appears.
    wake: Arc<Notify>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish()
    }
}

fn backend<E>(context: &'static str) -> impl FnOnce(E) -> StoreError
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    move |e| StoreError::backend(context, e)
}

impl EmbeddedStore {
    /// Opens the database at `path`, creating it (and its parent directory) if needed.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(path))
            .await
            .map_err(backend("joining the store's open task"))?
    }

    fn open_blocking(path: PathBuf) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::backend(format!("creating directory {}", parent.display()), e)
            })?;
        }
        let db = Database::builder()
            // The v3 format is what redb 3 and later read, so a later upgrade keeps the file.
            .create_with_file_format_v3(true)
            .create(&path)
            .map_err(|e| StoreError::backend(format!("opening {}", path.display()), e))?;
        let mut txn = db
            .begin_write()
            .map_err(backend("starting the table-creation transaction"))?;
        txn.set_durability(Durability::Immediate);
        {
            txn.open_table(KV).map_err(backend("creating table kv"))?;
            txn.open_table(META)
                .map_err(backend("creating table meta"))?;
            // Keys of leases from an earlier run: their owner is gone.
            let mut leased = txn
                .open_table(LEASED)
                .map_err(backend("creating table leased"))?;
            let mut orphans = Vec::new();
            for item in leased.iter().map_err(backend("listing leased keys"))? {
                let (key, _) = item.map_err(backend("listing leased keys"))?;
                orphans.push(key.value().to_owned());
            }
            for key in &orphans {
                leased
                    .remove(key.as_str())
                    .map_err(backend("forgetting a leased key"))?;
            }
            drop(leased);
            delete_in(&txn, &orphans)?;
        }
        txn.commit().map_err(backend("committing table creation"))?;
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                db,
                path,
                write_lock: Mutex::new(()),
                hub: WatchHub::new(),
                leases: Mutex::new(LeaseTable::default()),
                wake: Arc::new(Notify::new()),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Arc<Inner>) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(backend("joining a store task"))?
    }
}

/// Deletes those of `keys` that exist, at a new revision (none if no key exists), inside `txn`;
/// returns the delete events. Leaves table `leased` alone.
fn delete_in(txn: &WriteTransaction, keys: &[String]) -> Result<Vec<WatchEvent>, StoreError> {
    let mut kv = txn.open_table(KV).map_err(backend("opening table kv"))?;
    let mut meta = txn
        .open_table(META)
        .map_err(backend("opening table meta"))?;
    let revision = meta
        .get(REVISION_KEY)
        .map_err(backend("reading the revision"))?
        .map(|g| g.value())
        .unwrap_or(0)
        + 1;
    let mut events = Vec::new();
    for key in keys {
        let removed = kv
            .remove(key.as_str())
            .map_err(backend("deleting a key"))?
            .is_some();
        if removed {
            events.push(WatchEvent::Delete {
                key: key.clone(),
                revision,
            });
        }
    }
    if !events.is_empty() {
        meta.insert(REVISION_KEY, revision)
            .map_err(backend("writing the revision"))?;
    }
    Ok(events)
}

impl Inner {
    fn write_guard(&self) -> MutexGuard<'_, ()> {
        // The lock guards no data of its own: a poisoned one is still usable.
        self.write_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn leases(&self) -> MutexGuard<'_, LeaseTable> {
        // Every change to the table is a single call that cannot panic halfway.
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deletes the keys of leases that reached their deadline, one batch per lease. The caller
    /// holds the write lock.
    fn expire(&self, leases: &mut LeaseTable, now: Instant) -> Result<(), StoreError> {
        if !leases.has_due(now) {
            return Ok(());
        }
        for (_, keys) in leases.take_expired(now) {
            self.delete_leased(keys)?;
        }
        Ok(())
    }

    /// Deletes the keys of an ended lease in one batch. The caller holds the write lock.
    fn delete_leased(&self, keys: Vec<String>) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut txn = self
            .db
            .begin_write()
            .map_err(backend("starting a write transaction"))?;
        txn.set_durability(Durability::Immediate);
        {
            let mut leased = txn
                .open_table(LEASED)
                .map_err(backend("opening table leased"))?;
            for key in &keys {
                leased
                    .remove(key.as_str())
                    .map_err(backend("forgetting a leased key"))?;
            }
        }
        let events = delete_in(&txn, &keys)?;
        txn.commit().map_err(backend("committing"))?;
        self.hub.publish(events);
        Ok(())
    }

    /// Expires due leases before a read, so that nobody reads a key whose lease ended.
    fn expire_before_read(&self) -> Result<(), StoreError> {
        let now = Instant::now();
        if !self.leases().has_due(now) {
            return Ok(());
        }
        let _guard = self.write_guard();
        self.expire(&mut self.leases(), now)
    }

    fn grant(self: &Arc<Self>, ttl: Duration) -> Result<LeaseId, StoreError> {
        let mut leases = self.leases();
        let start = leases.claim_reaper();
        let lease = leases.grant(ttl, Instant::now());
        if start {
            if let Err(e) = spawn_reaper(self, Arc::clone(&self.wake)) {
                leases.revoke(lease, Instant::now()).ok();
                leases.next_deadline_or_stop();
                return Err(e);
            }
        } else {
            self.wake.notify_one();
        }
        Ok(lease)
    }

    fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        let _guard = self.write_guard();
        let now = Instant::now();
        let mut leases = self.leases();
        self.expire(&mut leases, now)?;
        leases.keep_alive(lease, now)
    }

    fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        let _guard = self.write_guard();
        let now = Instant::now();
        let mut leases = self.leases();
        self.expire(&mut leases, now)?;
        let keys = leases.revoke(lease, now)?;
        self.delete_leased(keys)
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.expire_before_read()?;
        let txn = self
            .db
            .begin_read()
            .map_err(backend("starting a read transaction"))?;
        let table = txn.open_table(KV).map_err(backend("opening table kv"))?;
        let found = table.get(key).map_err(backend("reading a key"))?;
        Ok(found.map(|guard| {
            let (revision, value) = guard.value();
            KeyValue {
                key: key.to_owned(),
                value: value.to_vec(),
                revision,
            }
        }))
    }

    fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        self.expire_before_read()?;
        let txn = self
            .db
            .begin_read()
            .map_err(backend("starting a read transaction"))?;
        let table = txn.open_table(KV).map_err(backend("opening table kv"))?;
        let mut out = Vec::new();
        for item in table.range(prefix..).map_err(backend("listing keys"))? {
            let (k, v) = item.map_err(backend("listing keys"))?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            let (revision, value) = v.value();
            out.push(KeyValue {
                key: key.to_owned(),
                value: value.to_vec(),
                revision,
            });
        }
        Ok(out)
    }

    fn apply(&self, ops: Vec<Op>, durability: Durability) -> Result<Revision, StoreError> {
        let _guard = self.write_guard();
        let now = Instant::now();
        let mut leases = self.leases();
        self.expire(&mut leases, now)?;
        let mut txn = self
            .db
            .begin_write()
            .map_err(backend("starting a write transaction"))?;
        txn.set_durability(durability);
        let (revision, changes) = {
            let mut meta = txn
                .open_table(META)
                .map_err(backend("opening table meta"))?;
            let current = meta
                .get(REVISION_KEY)
                .map_err(backend("reading the revision"))?
                .map(|g| g.value())
                .unwrap_or(0);
            if ops.is_empty() {
                return Ok(current);
            }
            let revision = current + 1;
            let mut kv = txn.open_table(KV).map_err(backend("opening table kv"))?;
            let mut leased = txn
                .open_table(LEASED)
                .map_err(backend("opening table leased"))?;
            let changes = check_ops(
                ops,
                revision,
                |key| {
                    kv.get(key)
                        .map(|found| found.map(|g| g.value().0))
                        .map_err(backend("reading a key"))
                },
                |lease| leases.alive(lease, now),
            )?;
            for change in &changes {
                let key = change.event.key();
                match &change.event {
                    WatchEvent::Put(e) => {
                        kv.insert(key, (revision, e.value.as_slice()))
                            .map_err(backend("writing a key"))?;
                    }
                    WatchEvent::Delete { .. } => {
                        kv.remove(key).map_err(backend("deleting a key"))?;
                    }
                }
                match change.lease {
                    Some(lease) => {
                        leased
                            .insert(key, lease.0)
                            .map_err(backend("recording a leased key"))?;
                    }
                    None => {
                        leased
                            .remove(key)
                            .map_err(backend("forgetting a leased key"))?;
                    }
                }
            }
            meta.insert(REVISION_KEY, revision)
                .map_err(backend("writing the revision"))?;
            (revision, changes)
        };
        txn.commit().map_err(backend("committing"))?;
        leases.record(&changes);
        drop(leases);
        if self.hub.has_watchers() {
            self.hub
                .publish(changes.into_iter().map(|c| c.event).collect());
        }
        Ok(revision)
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_owned();
        self.blocking(move |inner| inner.get(&key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let prefix = prefix.to_owned();
        self.blocking(move |inner| inner.list(&prefix)).await
    }

    async fn apply(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        self.blocking(move |inner| inner.apply(ops, Durability::Immediate))
            .await
    }

    /// A redb commit without fsync ([`Durability::None`]): the next durable commit persists it.
    async fn apply_relaxed(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        self.blocking(move |inner| inner.apply(ops, Durability::None))
            .await
    }

    async fn watch(&self, prefix: &str) -> Result<WatchStream, StoreError> {
        Ok(self.inner.hub.subscribe(prefix))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.blocking(move |inner| inner.grant(ttl)).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        self.blocking(move |inner| inner.keep_alive(lease)).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.blocking(move |inner| inner.revoke(lease)).await
    }
}

impl Reap for Inner {
    fn reap(&self) -> Option<Instant> {
        let _guard = self.write_guard();
        let mut leases = self.leases();
        if let Err(e) = self.expire(&mut leases, Instant::now()) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not delete the keys of an expired lease; retrying");
            return Some(Instant::now() + Duration::from_secs(1));
        }
        leases.next_deadline_or_stop()
    }
}
