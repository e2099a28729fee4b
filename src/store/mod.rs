//! Where wharf's state lives: a small key-value contract, two local implementations and etcd.
//!
//! Why it exists: IPAM allocations, and later the controller's own records (what it created, so
//! that a crash can be recovered), must survive a restart, and cluster-scoped state must be shared
//! by several hosts. Both needs are met by one narrow contract, [`Store`], shaped like etcd's:
//! string keys, opaque byte values, a store-wide [`Revision`] counter, atomic multi-key
//! [`Op`] batches with create-if-absent and compare-and-swap, prefix listing and prefix watches.
//! The same callers run on one host's disk and on an etcd cluster.
//!
//! Implementations here:
//! - [`EmbeddedStore`]: the default, on local disk, crash-safe (a [`redb`] database: copy-on-write
//!   B-trees, every committed batch is fsynced before `apply` returns). One key per object, so a
//!   change costs the same whether the store holds ten keys or a hundred thousand.
//! - [`MemoryStore`]: purely in memory, for unit tests and for several controllers in one process.
//! - `EtcdStore` (cargo feature `etcd`): an etcd v3 cluster, for state shared by several hosts.
//!
//! Leases: [`Store::grant_lease`] hands out a [`LeaseId`] with a time to live; keys written with
//! [`Op::PutWithLease`] or [`Op::CreateWithLease`] are deleted (with a [`WatchEvent::Delete`])
//! when the lease expires because nobody called [`Store::keep_alive`] in time, or at once when it
//! is revoked. A [`LeaseKeeper`] refreshes a lease in the background until it is dropped. This is
//! how a host announces itself to a cluster: its records vanish after it dies. See
//! [`Store::grant_lease`] for what differs between backends.
//!
//! What it deliberately does not do: interpret keys or values (callers own their layout and
//! encoding, conventionally `component/v1/...` keys and JSON values), or history (a watch starts
//! at "now": watch first, then list, then apply a watch event to a listed key only if its
//! revision is newer than the listed one; events arrive in order, so the view converges). It
//! knows nothing about networks, IPAM or the kernel.

#![warn(missing_docs)]

mod embedded;
#[cfg(feature = "etcd")]
mod etcd;
mod lease;
mod memory;
mod watch;

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;

pub use embedded::EmbeddedStore;
#[cfg(feature = "etcd")]
pub use etcd::{EtcdOptions, EtcdStore};
pub use lease::LeaseKeeper;
pub use memory::MemoryStore;

/// A store-wide, strictly increasing change counter.
///
/// Every successful [`Store::apply`] that changes something gets the next revision; every key
/// remembers the revision of its last change ([`KeyValue::revision`]), which is what
/// [`Op::Swap`] and [`Op::DeleteIf`] compare against.
pub type Revision = u64;

/// A lease handed out by [`Store::grant_lease`]: keys attached to it live as long as it does.
///
/// The number is the backend's own (etcd's lease id on etcd); it means nothing to another store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub i64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// One stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value, as the caller encoded it.
    pub value: Vec<u8>,
    /// The revision of the last change to this key.
    pub revision: Revision,
}

/// One change inside an atomic [`Store::apply`] batch.
///
/// A batch either applies completely, at one new revision, or not at all: the first op whose
/// condition fails makes `apply` return that op's error and nothing is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create `key`; fails with [`StoreError::AlreadyExists`] if it exists.
    Create {
        /// The key to create.
        key: String,
        /// Its value.
        value: Vec<u8>,
    },
    /// Create or overwrite `key` unconditionally.
    ///
    /// Like every write without a lease, this detaches `key` from a lease it had (etcd's rule):
    /// the key then lives until it is deleted.
    Put {
        /// The key to write.
        key: String,
        /// Its value.
        value: Vec<u8>,
    },
    /// [`Op::Create`] with the key attached to `lease`: it is deleted when the lease ends.
    /// Fails with [`StoreError::LeaseNotFound`] if the lease expired or was revoked.
    CreateWithLease {
        /// The key to create.
        key: String,
        /// Its value.
        value: Vec<u8>,
        /// The lease that owns the key.
        lease: LeaseId,
    },
    /// [`Op::Put`] with the key attached to `lease`: it is deleted when the lease ends.
    /// Fails with [`StoreError::LeaseNotFound`] if the lease expired or was revoked.
    PutWithLease {
        /// The key to write.
        key: String,
        /// Its value.
        value: Vec<u8>,
        /// The lease that owns the key.
        lease: LeaseId,
    },
    /// Overwrite `key` only if its current revision is `expected`; fails with
    /// [`StoreError::Conflict`] otherwise (including when the key is absent).
    Swap {
        /// The key to overwrite.
        key: String,
        /// The revision the caller last saw.
        expected: Revision,
        /// The new value.
        value: Vec<u8>,
    },
    /// Delete `key`; fails with [`StoreError::NotFound`] if it is absent.
    Delete {
        /// The key to delete.
        key: String,
    },
    /// Delete `key` only if its current revision is `expected`; fails with
    /// [`StoreError::Conflict`] otherwise.
    DeleteIf {
        /// The key to delete.
        key: String,
        /// The revision the caller last saw.
        expected: Revision,
    },
}

impl Op {
    /// The key this op touches.
    pub fn key(&self) -> &str {
        match self {
            Op::Create { key, .. }
            | Op::Put { key, .. }
            | Op::CreateWithLease { key, .. }
            | Op::PutWithLease { key, .. }
            | Op::Swap { key, .. }
            | Op::Delete { key }
            | Op::DeleteIf { key, .. } => key,
        }
    }
}

/// A change seen by a watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// `key` was created or overwritten.
    Put(KeyValue),
    /// `key` was deleted at `revision`.
    Delete {
        /// The deleted key.
        key: String,
        /// The revision of the batch that deleted it.
        revision: Revision,
    },
}

impl WatchEvent {
    /// The key the event is about.
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }

    /// The revision of the change.
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put(kv) => kv.revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }
}

/// The stream returned by [`Store::watch`]: events in revision order.
///
/// It yields `Err(StoreError::WatchLagged)` if the watcher fell too far behind (the caller should
/// list again and re-watch) and ends when the store is dropped. The etcd store also ends it with
/// a `Backend` error when etcd stays unreachable (after trying to resume for a while). After an
/// error the stream ends: watch again.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, StoreError>> + Send>>;

/// Errors from a [`Store`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// [`Op::Create`] on a key that exists.
    #[error("store key {key:?} already exists")]
    AlreadyExists {
        /// The key.
        key: String,
    },
    /// [`Op::Delete`] on a key that does not exist.
    #[error("store key {key:?} does not exist")]
    NotFound {
        /// The key.
        key: String,
    },
    /// A compare-and-swap/delete saw another revision than expected.
    #[error("store key {key:?} changed: expected revision {expected}, found {actual:?}")]
    Conflict {
        /// The key.
        key: String,
        /// The revision the caller expected.
        expected: Revision,
        /// The revision found (`None`: the key is absent).
        actual: Option<Revision>,
    },
    /// A watcher fell behind and missed events.
    #[error("store watch fell behind and missed {missed} events; list again and re-watch")]
    WatchLagged {
        /// How many events were lost.
        missed: u64,
    },
    /// The lease does not exist (it expired, was revoked, or the store was reopened).
    #[error("store lease {lease} does not exist (expired or revoked)")]
    LeaseNotFound {
        /// The lease.
        lease: LeaseId,
    },
    /// The store does not implement this operation.
    #[error("this store does not support {operation}")]
    Unsupported {
        /// What was asked.
        operation: &'static str,
    },
    /// The backend failed (I/O, corruption, a lost connection...).
    #[error("store backend: {context}")]
    Backend {
        /// What the store was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    /// Wraps a backend error with what the store was doing.
    pub fn backend(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StoreError::Backend {
            context: context.into(),
            source: source.into(),
        }
    }
}

/// A small key-value store with atomic batches, compare-and-swap and prefix watches.
///
/// The contract every implementation keeps:
/// - [`apply`](Store::apply) is atomic and, once it returns `Ok`, durable to the degree the
///   implementation promises (the [`EmbeddedStore`] fsyncs); all its ops share one new revision.
/// - Revisions only grow; a key's revision is that of its last change.
/// - Watch events arrive in revision order, after the change is committed.
///
/// Implementations may limit the size of a batch (etcd does, 128 ops by default); callers that
/// delete many keys split the work into batches of at most [`MAX_BATCH_OPS`].
///
/// # Example
/// ```
/// use wharf::store::{MemoryStore, Store, StoreError};
/// # tokio_test_run(async {
/// let store = MemoryStore::new();
/// let rev = store.create("demo/v1/a", b"1".to_vec()).await?;
/// assert!(matches!(
///     store.create("demo/v1/a", b"2".to_vec()).await,
///     Err(StoreError::AlreadyExists { .. })
/// ));
/// store.compare_and_swap("demo/v1/a", rev, b"3".to_vec()).await?;
/// assert_eq!(store.get("demo/v1/a").await?.unwrap().value, b"3");
/// assert_eq!(store.list("demo/v1/").await?.len(), 1);
/// # Ok::<(), StoreError>(())
/// # });
/// # fn tokio_test_run<F: std::future::Future<Output = Result<(), StoreError>>>(f: F) {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f).unwrap()
/// # }
/// ```
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Lists every key starting with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError>;

    /// Applies `ops` atomically and returns the new revision (the current one if `ops` is empty).
    async fn apply(&self, ops: Vec<Op>) -> Result<Revision, StoreError>;

    /// [`apply`](Store::apply), except that it may return before the batch is durable: it is
    /// applied (visible to every read and watch) at once, but a crash or power loss may lose it,
    /// together with the relaxed batches after it. It is never torn, and it is never lost once a
    /// later [`apply`](Store::apply) returned: stores keep batches in order, so a durable batch
    /// makes every earlier one durable.
    ///
    /// For writes whose loss a caller can recover from (the controller's "this operation
    /// completed" marks: after a crash it finds the operation's kernel objects and rolls it
    /// forward). [`EmbeddedStore`] then skips the fsync; the default is [`apply`](Store::apply).
    async fn apply_relaxed(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        self.apply(ops).await
    }

    /// Watches every key starting with `prefix`, from now on.
    ///
    /// Every change committed after this returns is delivered. The local stores end the stream
    /// with [`StoreError::WatchLagged`] when the reader falls far behind; the etcd store also
    /// does when it cannot resume after a lost connection (see `EtcdStore`).
    async fn watch(&self, prefix: &str) -> Result<WatchStream, StoreError>;

    /// Grants a lease that ends `ttl` after the last [`keep_alive`](Store::keep_alive) (or
    /// after the grant), unless it is revoked first. Keys attached to it
    /// ([`Op::PutWithLease`], [`Op::CreateWithLease`]) are then deleted in one batch, which
    /// watchers see as [`WatchEvent::Delete`]s.
    ///
    /// Backends differ in the details:
    /// - etcd: the ttl is rounded up to whole seconds and raised to the server's minimum
    ///   (1.5 x its election timeout, 2 s by default); a lease survives etcd restarts, and a
    ///   restarted or newly elected leader extends every lease by its ttl; expiry is checked
    ///   about every 500 ms.
    /// - [`MemoryStore`]: exact durations; leases live as long as the store.
    /// - [`EmbeddedStore`]: like memory; leases do not survive reopening the store: keys attached
    ///   to a lease are deleted when the database is opened, since their owner is gone.
    ///
    /// The default implementation fails with [`StoreError::Unsupported`]; the stores in this
    /// module all implement leases.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let _ = ttl;
        Err(StoreError::Unsupported {
            operation: "leases",
        })
    }

    /// Restarts the lease's ttl and returns it; fails with [`StoreError::LeaseNotFound`] if the
    /// lease already ended. See [`LeaseKeeper`] to do this in the background.
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        let _ = lease;
        Err(StoreError::Unsupported {
            operation: "leases",
        })
    }

    /// Ends the lease now, deleting its keys; fails with [`StoreError::LeaseNotFound`] if it
    /// already ended.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        let _ = lease;
        Err(StoreError::Unsupported {
            operation: "leases",
        })
    }

    /// Creates or overwrites `key`.
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        self.apply(vec![Op::Put {
            key: key.to_owned(),
            value,
        }])
        .await
    }

    /// Creates `key` if it is absent, else fails with [`StoreError::AlreadyExists`].
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        self.apply(vec![Op::Create {
            key: key.to_owned(),
            value,
        }])
        .await
    }

    /// Overwrites `key` if its revision is still `expected`, else fails with
    /// [`StoreError::Conflict`].
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Revision,
        value: Vec<u8>,
    ) -> Result<Revision, StoreError> {
        self.apply(vec![Op::Swap {
            key: key.to_owned(),
            expected,
            value,
        }])
        .await
    }

    /// Deletes `key`, failing with [`StoreError::NotFound`] if it is absent.
    async fn delete(&self, key: &str) -> Result<Revision, StoreError> {
        self.apply(vec![Op::Delete {
            key: key.to_owned(),
        }])
        .await
    }

    /// Creates or overwrites `key`, attached to `lease`.
    async fn put_with_lease(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: LeaseId,
    ) -> Result<Revision, StoreError> {
        self.apply(vec![Op::PutWithLease {
            key: key.to_owned(),
            value,
            lease,
        }])
        .await
    }
}

/// The largest batch wharf's own callers hand to [`Store::apply`] (etcd's default limit).
pub const MAX_BATCH_OPS: usize = 128;

/// One change of a checked batch: what watchers see, and the lease the key is attached to
/// afterwards (`None` for deletes and for writes without a lease).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) event: WatchEvent,
    pub(crate) lease: Option<LeaseId>,
}

/// Checks a batch against the committed state and returns the changes it makes, in order, as
/// watch events at `revision` (a `Put` carries the new value). Shared by the implementations,
/// which write the returned changes only when this returns `Ok`.
///
/// `lookup` returns a key's committed revision; ops later in the batch see the earlier ones.
/// `lease_alive` says whether a lease named by an op still exists.
pub(crate) fn check_ops<L, E>(
    ops: Vec<Op>,
    revision: Revision,
    mut lookup: L,
    lease_alive: impl Fn(LeaseId) -> bool,
) -> Result<Vec<Change>, StoreError>
where
    L: FnMut(&str) -> Result<Option<Revision>, E>,
    StoreError: From<E>,
{
    let mut staged: std::collections::HashMap<String, Option<Revision>> =
        std::collections::HashMap::new();
    let mut changes = Vec::with_capacity(ops.len());
    for op in ops {
        let current = match staged.get(op.key()) {
            Some(rev) => *rev,
            None => lookup(op.key())?,
        };
        let (key, value, lease) = match op {
            Op::Create { key, value } => {
                if current.is_some() {
                    return Err(StoreError::AlreadyExists { key });
                }
                (key, Some(value), None)
            }
            Op::CreateWithLease { key, value, lease } => {
                if current.is_some() {
                    return Err(StoreError::AlreadyExists { key });
                }
                if !lease_alive(lease) {
                    return Err(StoreError::LeaseNotFound { lease });
                }
                (key, Some(value), Some(lease))
            }
            Op::Put { key, value } => (key, Some(value), None),
            Op::PutWithLease { key, value, lease } => {
                if !lease_alive(lease) {
                    return Err(StoreError::LeaseNotFound { lease });
                }
                (key, Some(value), Some(lease))
            }
            Op::Swap {
                key,
                expected,
                value,
            } => {
                if current != Some(expected) {
                    return Err(StoreError::Conflict {
                        key,
                        expected,
                        actual: current,
                    });
                }
                (key, Some(value), None)
            }
            Op::Delete { key } => {
                if current.is_none() {
                    return Err(StoreError::NotFound { key });
                }
                (key, None, None)
            }
            Op::DeleteIf { key, expected } => {
                if current != Some(expected) {
                    return Err(StoreError::Conflict {
                        key,
                        expected,
                        actual: current,
                    });
                }
                (key, None, None)
            }
        };
        match value {
            Some(value) => {
                staged.insert(key.clone(), Some(revision));
                changes.push(Change {
                    event: WatchEvent::Put(KeyValue {
                        key,
                        value,
                        revision,
                    }),
                    lease,
                });
            }
            None => {
                staged.insert(key.clone(), None);
                changes.push(Change {
                    event: WatchEvent::Delete { key, revision },
                    lease: None,
                });
            }
        }
    }
    Ok(changes)
}

impl From<std::convert::Infallible> for StoreError {
    fn from(e: std::convert::Infallible) -> Self {
        match e {}
    }
}
