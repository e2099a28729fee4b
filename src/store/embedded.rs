//! [`EmbeddedStore`]: the default [`Store`], a crash-safe database file on local disk.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, Durability, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::lease::{LeaseTable, Reap, spawn_reaper};
use super::watch::WatchHub;
use super::{
    Change, KeyValue, LeaseId, Op, Revision, Store, StoreError, WatchEvent, WatchStream, check_ops,
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
/// [`apply`](Store::apply) is committed with [`Durability::Immediate`] (fsynced before it
/// returns), so a batch that returned `Ok` survives a crash or power loss. One key per object
/// keeps a change O(log n) in a B-tree of high fan-out, effectively constant: the 100,000th
/// write costs what the first did.
///
/// **Group commit.** redb has one writer, and the fsync is most of a commit's cost. Batches
/// that callers apply while a commit is in progress wait in a queue; the next commit takes them
/// all, in arrival order, into one write transaction with one fsync. Each batch is still its
/// own: it is checked against the state left by the ones before it, gets its own revision and
/// its own result, and a batch whose condition fails (a key that exists, a stale revision, an
/// ended lease) is skipped without touching the others. If the shared transaction itself fails
/// (an I/O error), each batch of the group is retried in a transaction of its own, so one
/// cannot fail another. A lone batch is committed at once, as before: grouping adds no wait.
/// Relaxed batches ([`Store::apply_relaxed`]) of a group are committed first, without fsync, and
/// answered before the group's durable batches are committed and fsynced.
///
/// The database runs on tokio's blocking pool.
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
    /// Batches waiting for the next group commit.
    queue: Mutex<Queue>,
}

/// The group-commit queue: batches not yet taken by a commit, and whether a committer runs.
#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
    /// A blocking task is draining the queue; new batches only join it.
    committing: bool,
}

/// A batch waiting to be committed, and where its result goes.
struct Pending {
    ops: Vec<Op>,
    /// Its caller waits for the fsync ([`Store::apply`]) rather than only for the commit
    /// ([`Store::apply_relaxed`]).
    durable: bool,
    reply: oneshot::Sender<Result<Revision, StoreError>>,
}

/// Owned by the task that drains the queue. If that task ends without draining it (a panic, a
/// runtime that shuts down before running it), dropping this hands the queue to the next
/// caller and fails the batches still waiting (their callers get an error, nothing of theirs
/// was written), instead of leaving them waiting forever.
struct Committer {
    inner: Arc<Inner>,
    done: bool,
}

impl Drop for Committer {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut queue = self.inner.queue();
        queue.committing = false;
        queue.pending.clear();
    }
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
        if !path.exists() {
            create_whole(&path)?;
        }
        let db = builder()
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
                queue: Mutex::new(Queue::default()),
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

fn builder() -> redb::Builder {
    let mut b = Database::builder();
    // The v3 format is what redb 3 and later read, so a later upgrade keeps the file.
    b.create_with_file_format_v3(true);
    b
}

/// Creates an empty database at `path` as one step: a process killed while redb writes a new
/// file's first pages leaves a file no later open can read, so the file is made under another
/// name, synced, and renamed into place (a leftover of an earlier attempt is replaced).
fn create_whole(path: &Path) -> Result<(), StoreError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    let io = |what: &str| {
        let what = format!("{what} {}", tmp.display());
        move |e| StoreError::backend(what, e)
    };
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("removing the leftover")(e)),
    }
    let created = builder().create(&tmp);
    drop(created.map_err(|e| StoreError::backend(format!("creating {}", tmp.display()), e))?);
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io("syncing"))?;
    std::fs::rename(&tmp, path).map_err(io("moving into place"))?;
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing the directory of"))?;
    }
    Ok(())
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

    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Pushing and taking are single calls that cannot panic halfway.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
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

    /// Commits the queue until it is empty: each round takes every batch waiting and commits
    /// them together. The committer lets go of the database before it answers the last
    /// round, so a caller that drops the store on its answer closes the file (a new
    /// [`EmbeddedStore::open`] of it can follow at once).
    fn drain(mut committer: Committer) {
        loop {
            let (durable, relaxed): (Vec<Pending>, Vec<Pending>) =
                std::mem::take(&mut committer.inner.queue().pending)
                    .into_iter()
                    .partition(|p| p.durable);
            // Relaxed batches are committed without fsync and answered before the durable
            // ones are fsynced, so their callers never wait for another caller's fsync (the
            // durable commit then persists them too). They were all waiting at once, so
            // committing one kind before the other is an order they could have arrived in.
            let (group, durability) = match (durable.is_empty(), relaxed.is_empty()) {
                (true, _) => (relaxed, Durability::None),
                (false, true) => (durable, Durability::Immediate),
                (false, false) => {
                    let (ops, replies): (Vec<_>, Vec<_>) =
                        relaxed.into_iter().map(|p| (p.ops, p.reply)).unzip();
                    let results = committer.inner.apply_group(ops, Durability::None);
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(result);
                    }
                    (durable, Durability::Immediate)
                }
            };
            let (ops, replies): (Vec<_>, Vec<_>) =
                group.into_iter().map(|p| (p.ops, p.reply)).unzip();
            let results = committer.inner.apply_group(ops, durability);
            let last = {
                let mut queue = committer.inner.queue();
                let last = queue.pending.is_empty();
                if last {
                    queue.committing = false;
                }
                last
            };
            let answer = move || {
                for (reply, result) in replies.into_iter().zip(results) {
                    // A caller that stopped waiting has nothing to learn.
                    let _ = reply.send(result);
                }
            };
            if last {
                committer.done = true;
                drop(committer);
                answer();
                return;
            }
            answer();
        }
    }

    /// Applies `batches` in order, each at its own revision, in as few transactions as
    /// possible (one, unless the shared transaction fails); one result per batch.
    fn apply_group(
        &self,
        batches: Vec<Vec<Op>>,
        durability: Durability,
    ) -> Vec<Result<Revision, StoreError>> {
        let _guard = self.write_guard();
        let now = Instant::now();
        let mut leases = self.leases();
        if let Err(e) = self.expire(&mut leases, now) {
            // Nothing of the group was tried: every caller learns why.
            return batches
                .iter()
                .map(|_| {
                    Err(StoreError::backend(
                        "expiring leases before a write",
                        e.to_string(),
                    ))
                })
                .collect();
        }
        if batches.len() == 1 {
            return batches
                .into_iter()
                .map(|ops| {
                    self.commit(vec![ops], &mut leases, now, durability)
                        .and_then(|mut r| r.remove(0))
                })
                .collect();
        }
        // Kept for the fallback: cloning a few small batches costs far less than their fsync.
        let copies = batches.clone();
        match self.commit(batches, &mut leases, now, durability) {
            Ok(results) => results,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "a group commit failed; committing its batches one by one");
                copies
                    .into_iter()
                    .map(|ops| {
                        self.commit(vec![ops], &mut leases, now, durability)
                            .and_then(|mut r| r.remove(0))
                    })
                    .collect()
            }
        }
    }

    /// One write transaction (one fsync) applying `batches` in order. The outer error is the
    /// transaction's own failure (nothing of it was written); inside, one result per batch: a
    /// batch whose condition fails is skipped, the others still commit. The caller holds the
    /// write lock.
    fn commit(
        &self,
        batches: Vec<Vec<Op>>,
        leases: &mut LeaseTable,
        now: Instant,
        durability: Durability,
    ) -> Result<Vec<Result<Revision, StoreError>>, StoreError> {
        let mut txn = self
            .db
            .begin_write()
            .map_err(backend("starting a write transaction"))?;
        txn.set_durability(durability);
        let mut results = Vec::with_capacity(batches.len());
        let mut committed: Vec<Vec<Change>> = Vec::new();
        {
            let mut meta = txn
                .open_table(META)
                .map_err(backend("opening table meta"))?;
            let first = meta
                .get(REVISION_KEY)
                .map_err(backend("reading the revision"))?
                .map(|g| g.value())
                .unwrap_or(0);
            let mut kv = txn.open_table(KV).map_err(backend("opening table kv"))?;
            let mut leased = txn
                .open_table(LEASED)
                .map_err(backend("opening table leased"))?;
            let mut current = first;
            for ops in batches {
                if ops.is_empty() {
                    results.push(Ok(current));
                    continue;
                }
                let revision = current + 1;
                // Reads inside the transaction see the batches before this one.
                let checked = check_ops(
                    ops,
                    revision,
                    |key| {
                        kv.get(key)
                            .map(|found| found.map(|g| g.value().0))
                            .map_err(backend("reading a key"))
                    },
                    |lease| leases.alive(lease, now),
                );
                let changes = match checked {
                    Ok(changes) => changes,
                    Err(e @ StoreError::Backend { .. }) => return Err(e),
                    Err(condition) => {
                        results.push(Err(condition));
                        continue;
                    }
                };
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
                current = revision;
                results.push(Ok(revision));
                committed.push(changes);
            }
            if current == first {
                // Nothing to write: no commit, no fsync.
                drop((meta, kv, leased));
                txn.abort()
                    .map_err(backend("ending a read-only write transaction"))?;
                return Ok(results);
            }
            meta.insert(REVISION_KEY, current)
                .map_err(backend("writing the revision"))?;
        }
        txn.commit().map_err(backend("committing"))?;
        for changes in &committed {
            leases.record(changes);
        }
        if self.hub.has_watchers() {
            self.hub
                .publish(committed.into_iter().flatten().map(|c| c.event).collect());
        }
        Ok(results)
    }
}

impl EmbeddedStore {
    /// Queues a batch for the group committer and waits for its result.
    async fn enqueue(&self, ops: Vec<Op>, durable: bool) -> Result<Revision, StoreError> {
        let (reply, answer) = oneshot::channel();
        let lead = {
            let mut queue = self.inner.queue();
            queue.pending.push(Pending {
                ops,
                durable,
                reply,
            });
            !std::mem::replace(&mut queue.committing, true)
        };
        if lead {
            // The first batch into an idle queue starts the committer; the others ride along.
            let committer = Committer {
                inner: Arc::clone(&self.inner),
                done: false,
            };
            tokio::task::spawn_blocking(move || Inner::drain(committer));
        }
        answer.await.map_err(|_| {
            StoreError::backend(
                "waiting for the store's commit",
                "the committing task ended without an answer",
            )
        })?
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
        self.enqueue(ops, true).await
    }

    /// A redb commit without fsync ([`Durability::None`]) unless it shares its group with a
    /// durable batch; the next durable commit persists it.
    async fn apply_relaxed(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        self.enqueue(ops, false).await
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
