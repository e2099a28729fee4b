//! Where wharf's state lives: a small key-value contract and its two local implementations.
//!
//! Why it exists: IPAM allocations, and later the controller's own records (what it created, so
//! that a crash can be recovered), must survive a restart, and cluster-scoped state must be shared
//! by several hosts. Both needs are met by one narrow contract, [`Store`], shaped like etcd's:
//! string keys, opaque byte values, a store-wide [`Revision`] counter, atomic multi-key
//! [`Op`] batches with create-if-absent and compare-and-swap, prefix listing and prefix watches.
//! An etcd backend can implement it later without changing any caller.
//!
//! Implementations here:
//! - [`EmbeddedStore`]: the default, on local disk, crash-safe (a [`redb`] database: copy-on-write
//!   B-trees, every committed batch is fsynced before `apply` returns). One key per object, so a
//!   change costs the same whether the store holds ten keys or a hundred thousand.
//! - [`MemoryStore`]: purely in memory, for unit tests and for several controllers in one process.
//!
//! What it deliberately does not do: interpret keys or values (callers own their layout and
//! encoding, conventionally `component/v1/...` keys and JSON values), leases/TTLs, or history
//! (a watch starts at "now"; list first, then drop watch events whose revision is not newer).
//! It knows nothing about networks, IPAM or the kernel.

#![warn(missing_docs)]

mod embedded;
mod memory;
mod watch;

use std::fmt;
use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;

pub use embedded::EmbeddedStore;
pub use memory::MemoryStore;

/// A store-wide, strictly increasing change counter.
///
/// Every successful [`Store::apply`] that changes something gets the next revision; every key
/// remembers the revision of its last change ([`KeyValue::revision`]), which is what
/// [`Op::Swap`] and [`Op::DeleteIf`] compare against.
pub type Revision = u64;

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
    Put {
        /// The key to write.
        key: String,
        /// Its value.
        value: Vec<u8>,
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
/// list again and re-watch) and ends when the store is dropped.
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

    /// Watches every key starting with `prefix`, from now on.
    async fn watch(&self, prefix: &str) -> Result<WatchStream, StoreError>;

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
}

/// The largest batch wharf's own callers hand to [`Store::apply`] (etcd's default limit).
pub const MAX_BATCH_OPS: usize = 128;

/// Checks a batch against the committed state and returns the changes it makes, in order, as
/// watch events at `revision` (a `Put` carries the new value). Shared by the implementations,
/// which write the returned changes only when this returns `Ok`.
///
/// `lookup` returns a key's committed revision; ops later in the batch see the earlier ones.
pub(crate) fn check_ops<L, E>(
    ops: Vec<Op>,
    revision: Revision,
    mut lookup: L,
) -> Result<Vec<WatchEvent>, StoreError>
where
    L: FnMut(&str) -> Result<Option<Revision>, E>,
    StoreError: From<E>,
{
    let mut staged: std::collections::HashMap<String, Option<Revision>> =
        std::collections::HashMap::new();
    let mut events = Vec::with_capacity(ops.len());
    for op in ops {
        let current = match staged.get(op.key()) {
            Some(rev) => *rev,
            None => lookup(op.key())?,
        };
        let (key, value) = match op {
            Op::Create { key, value } => {
                if current.is_some() {
                    return Err(StoreError::AlreadyExists { key });
                }
                (key, Some(value))
            }
            Op::Put { key, value } => (key, Some(value)),
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
                (key, Some(value))
            }
            Op::Delete { key } => {
                if current.is_none() {
                    return Err(StoreError::NotFound { key });
                }
                (key, None)
            }
            Op::DeleteIf { key, expected } => {
                if current != Some(expected) {
                    return Err(StoreError::Conflict {
                        key,
                        expected,
                        actual: current,
                    });
                }
                (key, None)
            }
        };
        match value {
            Some(value) => {
                staged.insert(key.clone(), Some(revision));
                events.push(WatchEvent::Put(KeyValue {
                    key,
                    value,
                    revision,
                }));
            }
            None => {
                staged.insert(key.clone(), None);
                events.push(WatchEvent::Delete { key, revision });
            }
        }
    }
    Ok(events)
}

impl From<std::convert::Infallible> for StoreError {
    fn from(e: std::convert::Infallible) -> Self {
        match e {}
    }
}
