//! [`EmbeddedStore`]: the default [`Store`], a crash-safe database file on local disk.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use redb::{Database, Durability, ReadableTable, TableDefinition};

use super::watch::WatchHub;
use super::{KeyValue, Op, Revision, Store, StoreError, WatchStream, check_ops};

/// Every key: `key -> (revision of its last change, value)`.
const KV: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("kv");
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
    /// Held across commit and publish so watchers see batches in revision order.
    write_lock: Mutex<()>,
    hub: WatchHub,
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
        let txn = db
            .begin_write()
            .map_err(backend("starting the table-creation transaction"))?;
        {
            txn.open_table(KV).map_err(backend("creating table kv"))?;
            txn.open_table(META)
                .map_err(backend("creating table meta"))?;
        }
        txn.commit().map_err(backend("committing table creation"))?;
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                db,
                path,
                write_lock: Mutex::new(()),
                hub: WatchHub::new(),
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
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(backend("joining a store task"))?
    }
}

impl Inner {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
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

    fn apply(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        // The lock guards no data of its own: a poisoned one is still usable.
        let _guard = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut txn = self
            .db
            .begin_write()
            .map_err(backend("starting a write transaction"))?;
        txn.set_durability(Durability::Immediate);
        let (revision, events) = {
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
            let events = check_ops(ops, revision, |key| {
                kv.get(key)
                    .map(|found| found.map(|g| g.value().0))
                    .map_err(backend("reading a key"))
            })?;
            for event in &events {
                match event {
                    super::WatchEvent::Put(e) => {
                        kv.insert(e.key.as_str(), (revision, e.value.as_slice()))
                            .map_err(backend("writing a key"))?;
                    }
                    super::WatchEvent::Delete { key, .. } => {
                        kv.remove(key.as_str()).map_err(backend("deleting a key"))?;
                    }
                }
            }
            meta.insert(REVISION_KEY, revision)
                .map_err(backend("writing the revision"))?;
            (revision, events)
        };
        txn.commit().map_err(backend("committing"))?;
        if self.hub.has_watchers() {
            self.hub.publish(events);
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
        self.blocking(move |inner| inner.apply(ops)).await
    }

    async fn watch(&self, prefix: &str) -> Result<WatchStream, StoreError> {
        Ok(self.inner.hub.subscribe(prefix))
    }
}
