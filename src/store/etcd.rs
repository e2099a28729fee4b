//! [`EtcdStore`]: the [`Store`] contract on an etcd v3 cluster (cargo feature `etcd`).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    TxnOpResponse, TxnResponse, WatchOptions,
};
use futures::stream;
use tokio::time::Instant;

use super::{
    KeyValue, LeaseId, Op, Revision, Store, StoreError, WatchEvent, WatchStream, check_ops,
};

/// How many keys one range request of [`Store::list`] reads (the rest follows in more requests
/// at the same revision, so a listing is one consistent snapshot).
const LIST_PAGE: i64 = 1000;

/// How an [`EtcdStore`] connects and behaves.
///
/// ```
/// use std::time::Duration;
/// use wharf::store::EtcdOptions;
/// let options = EtcdOptions::default()
///     .with_namespace("cluster-a/")
///     .with_request_timeout(Duration::from_secs(5));
/// assert_eq!(options.namespace, "cluster-a/");
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EtcdOptions {
    /// Prepended to every key in etcd, so that several wharf clusters (or tests) share one etcd
    /// without seeing each other's keys; callers never see it. Empty by default. Revisions stay
    /// etcd's, shared by every namespace.
    pub namespace: String,
    /// How long connecting to an endpoint may take. 5 s by default.
    pub connect_timeout: Duration,
    /// How long one request may take; past it the operation fails with a backend error (a write
    /// that timed out may still have been applied). 10 s by default.
    pub request_timeout: Duration,
    /// How long a watch keeps trying to come back after losing its connection before its stream
    /// ends with a backend error. 60 s by default.
    pub watch_retry_for: Duration,
    /// HTTP/2 keep-alive pings on open streams: interval and timeout, so that a watch notices a
    /// dead connection. 10 s and 5 s by default.
    pub keep_alive: Option<(Duration, Duration)>,
    /// User name and password, for a cluster with authentication on.
    pub user: Option<(String, String)>,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            namespace: String::new(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            watch_retry_for: Duration::from_secs(60),
            keep_alive: Some((Duration::from_secs(10), Duration::from_secs(5))),
            user: None,
        }
    }
}

impl EtcdOptions {
    /// Sets [`namespace`](Self::namespace).
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sets [`request_timeout`](Self::request_timeout).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`watch_retry_for`](Self::watch_retry_for).
    pub fn with_watch_retry_for(mut self, duration: Duration) -> Self {
        self.watch_retry_for = duration;
        self
    }

    /// Sets [`user`](Self::user).
    pub fn with_user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((name.into(), password.into()));
        self
    }
}

/// The [`Store`] on an etcd v3 cluster: wharf's state shared by several hosts.
///
/// How the contract maps onto etcd:
/// - Keys are the caller's keys behind [`EtcdOptions::namespace`]; values are stored as given.
/// - Revisions are etcd's: [`apply`](Store::apply) returns the store revision of its
///   transaction and [`KeyValue::revision`] is the key's `mod_revision`. They are shared by
///   everything in the etcd cluster, so they grow by more than one between two of this store's
///   writes when others write too, and a fresh cluster starts at 1, not 0.
/// - [`apply`](Store::apply) is one etcd transaction: `create_revision == 0` guards
///   [`Op::Create`], `version > 0` guards [`Op::Delete`], `mod_revision == expected` guards
///   [`Op::Swap`] and [`Op::DeleteIf`]. etcd takes one write per key in a transaction, so ops on
///   the same key are merged first (only the first op on a key is checked against the store,
///   the later ones against the batch itself, which is what the contract says): watchers then
///   see only the last write to such a key, and a batch whose writes cancel out (create then
///   delete) may commit without a new revision. A failed transaction reads the batch's keys in
///   the same transaction to return the typed error of the first op that fails. etcd refuses
///   batches of more than 128 keys (its `--max-txn-ops`): see [`super::MAX_BATCH_OPS`].
/// - Watches: [`watch`](Store::watch) starts after the store revision current when it is
///   called, and returns once etcd confirmed the watch. When the connection drops (etcd
///   restarted, a network cut, a member lost its leader), the stream reconnects by itself and
///   resumes right after the last revision it delivered, so nothing is missed or repeated. It
///   yields [`StoreError::WatchLagged`] and ends if etcd no longer has that history (it was
///   compacted meanwhile, or the cluster was replaced; `missed` then counts revisions, not
///   events, as an estimate), and a backend error if it cannot reach etcd for
///   [`EtcdOptions::watch_retry_for`]. It also ends when the store is dropped. Each watch is one
///   gRPC stream of its own.
/// - Leases are etcd's leases (see [`Store::grant_lease`]): ttls in whole seconds, expiry done
///   by etcd, so a host's leased keys vanish even if it dies without a word.
///
/// The store is cheap to clone; clones share one connection.
///
/// ```no_run
/// use wharf::store::{EtcdOptions, EtcdStore, Store};
/// # async fn demo() -> Result<(), wharf::store::StoreError> {
/// let endpoints = vec!["http://10.0.0.1:2379".to_string()];
/// let store = EtcdStore::connect(&endpoints, EtcdOptions::default().with_namespace("wharf/")).await?;
/// store.put("controller/v1/networks/abc", br#"{"name":"overlay-net"}"#.to_vec()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// The endpoints, for error messages.
    endpoints: String,
    options: EtcdOptions,
    /// Dropped with the store: ends its watch streams.
    _closed: tokio::sync::watch::Sender<()>,
    closed: tokio::sync::watch::Receiver<()>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.inner.endpoints)
            .field("namespace", &self.inner.options.namespace)
            .finish()
    }
}

impl EtcdStore {
    /// Connects to the etcd cluster at `endpoints` (URLs such as `http://10.0.0.1:2379`) and
    /// checks that it answers.
    pub async fn connect(endpoints: &[String], options: EtcdOptions) -> Result<Self, StoreError> {
        let joined = format!("[{}]", endpoints.join(", "));
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            // Fail fast on a member cut off from its cluster, and make watches on such a member
            // cancel (they then resume on another one) instead of going silent.
            .with_require_leader(true)
            // etcd answers pings without an open stream with GOAWAY: ping only on streams.
            .with_keep_alive_while_idle(false);
        if let Some((interval, timeout)) = options.keep_alive {
            connect = connect.with_keep_alive(interval, timeout);
        }
        if let Some((name, password)) = &options.user {
            connect = connect.with_user(name.clone(), password.clone());
        }
        let client = tokio::time::timeout(
            options.connect_timeout,
            Client::connect(endpoints, Some(connect)),
        )
        .await
        .map_err(|e| StoreError::backend(format!("connecting to etcd at {joined}"), e))?
        .map_err(|e| StoreError::backend(format!("connecting to etcd at {joined}"), e))?;
        let (tx, rx) = tokio::sync::watch::channel(());
        let store = EtcdStore {
            inner: Arc::new(Inner {
                client,
                endpoints: joined,
                options,
                _closed: tx,
                closed: rx,
            }),
        };
        store.current_revision().await?;
        Ok(store)
    }

    /// The namespace this store's keys live under.
    pub fn namespace(&self) -> &str {
        &self.inner.options.namespace
    }

    /// Compacts etcd's history up to `revision`: watches that would have to resume before it
    /// then fail with [`StoreError::WatchLagged`]. A cluster needs compaction (here or by etcd's
    /// `--auto-compaction-*` flags) so that its history does not grow forever.
    pub async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let rev = to_etcd(revision)?;
        let mut kv = self.inner.client.kv_client();
        self.call(
            format!("compacting to revision {revision}"),
            kv.compact(
                rev,
                Some(etcd_client::CompactionOptions::new().with_physical()),
            ),
        )
        .await?;
        Ok(())
    }

    fn full_key(&self, key: &str) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.inner.options.namespace.len() + key.len());
        full.extend_from_slice(self.inner.options.namespace.as_bytes());
        full.extend_from_slice(key.as_bytes());
        full
    }

    fn user_key(&self, full: &[u8]) -> Result<String, StoreError> {
        user_key(&self.inner.options.namespace, full)
    }

    /// Runs one request with the request timeout, naming the endpoints and `what` on failure.
    async fn call<T>(
        &self,
        what: impl Into<String>,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        call(&self.inner, what.into(), request).await
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let mut kv = self.inner.client.kv_client();
        let resp = self
            .call(
                "reading the revision",
                kv.get(
                    self.full_key("\0"),
                    Some(GetOptions::new().with_count_only()),
                ),
            )
            .await?;
        header_revision(resp.header())
    }

    async fn txn(&self, what: String, txn: Txn) -> Result<TxnResponse, StoreError> {
        let mut kv = self.inner.client.kv_client();
        self.call(what, kv.txn(txn)).await
    }

    /// The mod revisions of `keys` (full keys), read in one transaction, and the store revision.
    async fn read_revisions(
        &self,
        keys: &[Vec<u8>],
    ) -> Result<(HashMap<String, Revision>, Revision), StoreError> {
        let reads: Vec<TxnOp> = keys
            .iter()
            .map(|k| TxnOp::get(k.clone(), Some(GetOptions::new().with_keys_only())))
            .collect();
        let resp = self
            .txn(
                "reading the keys of a failed batch".into(),
                Txn::new().and_then(reads),
            )
            .await?;
        Ok((self.revisions_in(&resp)?, header_revision(resp.header())?))
    }

    /// The mod revisions found by the gets of a transaction's response.
    fn revisions_in(&self, resp: &TxnResponse) -> Result<HashMap<String, Revision>, StoreError> {
        let mut found = HashMap::new();
        for op in resp.op_responses() {
            if let TxnOpResponse::Get(get) = op {
                for kv in get.kvs() {
                    found.insert(self.user_key(kv.key())?, from_etcd(kv.mod_revision()));
                }
            }
        }
        Ok(found)
    }

    /// The error of the first op of `ops` that fails against `revisions` (the keys' current mod
    /// revisions at store revision `current`).
    fn diagnose(
        &self,
        ops: Vec<Op>,
        revisions: &HashMap<String, Revision>,
        current: Revision,
    ) -> Option<StoreError> {
        check_ops(
            ops,
            current + 1,
            |key| Ok::<_, std::convert::Infallible>(revisions.get(key).copied()),
            |_| true,
        )
        .err()
    }

    /// After etcd refused a batch for a missing lease: which one.
    async fn missing_lease(&self, ops: &[Op]) -> StoreError {
        let mut leases: Vec<LeaseId> = Vec::new();
        for op in ops {
            if let Op::PutWithLease { lease, .. } | Op::CreateWithLease { lease, .. } = op {
                if !leases.contains(lease) {
                    leases.push(*lease);
                }
            }
        }
        for lease in &leases {
            if let Ok(false) = self.lease_exists(*lease).await {
                return StoreError::LeaseNotFound { lease: *lease };
            }
        }
        StoreError::LeaseNotFound {
            lease: leases.first().copied().unwrap_or(LeaseId(0)),
        }
    }

    async fn lease_exists(&self, lease: LeaseId) -> Result<bool, StoreError> {
        let mut leases = self.inner.client.lease_client();
        let resp = self
            .call(
                format!("reading lease {lease}"),
                leases.time_to_live(lease.0, None),
            )
            .await?;
        // -1: no such lease; the remaining ttl otherwise (0 for less than a second).
        Ok(resp.ttl() >= 0)
    }
}

/// Runs one request with the request timeout, naming the endpoints and `what` on failure.
async fn call<T>(
    inner: &Inner,
    what: String,
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(inner.options.request_timeout, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(StoreError::backend(
            format!("etcd at {}: {what}", inner.endpoints),
            e,
        )),
        Err(elapsed) => Err(StoreError::backend(
            format!(
                "etcd at {}: {what}: no answer within {:?}",
                inner.endpoints, inner.options.request_timeout
            ),
            elapsed,
        )),
    }
}

fn user_key(namespace: &str, full: &[u8]) -> Result<String, StoreError> {
    let key = std::str::from_utf8(full).map_err(|e| {
        StoreError::backend(
            format!("etcd key {:?} is not UTF-8", String::from_utf8_lossy(full)),
            e,
        )
    })?;
    key.strip_prefix(namespace)
        .map(str::to_owned)
        .ok_or_else(|| {
            StoreError::backend(
                format!("etcd key {key:?} is outside namespace {namespace:?}"),
                "unexpected key",
            )
        })
}

/// The end of the key range of every key starting with `prefix` (etcd's rule: the prefix with
/// its last byte below 0xff incremented; `\0` for "to the end").
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The key and range end of every key starting with `prefix`.
fn prefix_range(prefix: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        (vec![0], vec![0])
    } else {
        let end = prefix_end(&prefix);
        (prefix, end)
    }
}

fn from_etcd(revision: i64) -> Revision {
    Revision::try_from(revision).unwrap_or(0)
}

fn to_etcd(revision: Revision) -> Result<i64, StoreError> {
    i64::try_from(revision)
        .map_err(|e| StoreError::backend(format!("revision {revision} is out of etcd's range"), e))
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision, StoreError> {
    header
        .map(|h| from_etcd(h.revision()))
        .ok_or_else(|| StoreError::backend("etcd answered without a header", "missing header"))
}

fn lease_not_found(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            status.message().contains("requested lease not found")
        }
        etcd_client::Error::LeaseKeepAliveError(message) => message.contains("lease not found"),
        _ => false,
    }
}

/// The final write of one key of a batch.
enum Write {
    Put(Vec<u8>, Option<LeaseId>),
    Delete,
}

/// A batch as one etcd transaction: a guard per key (from the first op on it), the last write
/// per key, and the first op that cannot succeed whatever the store holds (a later op on a key
/// that fails against the batch itself, or a guard on revision 0).
struct Plan {
    compares: Vec<Compare>,
    keys: Vec<Vec<u8>>,
    writes: Vec<(Vec<u8>, Write)>,
    impossible: Option<usize>,
}

/// The error of an op that cannot succeed, when reading the store does not tell a better one.
fn impossible_op(op: &Op) -> StoreError {
    match op {
        Op::Create { key, .. } | Op::CreateWithLease { key, .. } => {
            StoreError::AlreadyExists { key: key.clone() }
        }
        Op::Delete { key } => StoreError::NotFound { key: key.clone() },
        Op::Swap { key, expected, .. } | Op::DeleteIf { key, expected } => StoreError::Conflict {
            key: key.clone(),
            expected: *expected,
            actual: None,
        },
        Op::Put { key, .. } | Op::PutWithLease { key, .. } => StoreError::Conflict {
            key: key.clone(),
            expected: 0,
            actual: None,
        },
    }
}

impl Plan {
    fn new(store: &EtcdStore, ops: &[Op]) -> Self {
        let mut plan = Plan {
            compares: Vec::new(),
            keys: Vec::new(),
            writes: Vec::new(),
            impossible: None,
        };
        // Key -> (index in `writes`, whether the key exists after the ops so far).
        let mut seen: HashMap<&str, (usize, bool)> = HashMap::new();
        for (at, op) in ops.iter().enumerate() {
            let write = match op {
                Op::Create { value, .. } | Op::Put { value, .. } | Op::Swap { value, .. } => {
                    Write::Put(value.clone(), None)
                }
                Op::CreateWithLease { value, lease, .. }
                | Op::PutWithLease { value, lease, .. } => Write::Put(value.clone(), Some(*lease)),
                Op::Delete { .. } | Op::DeleteIf { .. } => Write::Delete,
            };
            let exists_after = matches!(write, Write::Put(..));
            match seen.get_mut(op.key()) {
                Some((index, exists)) => {
                    let fails = match op {
                        Op::Create { .. } | Op::CreateWithLease { .. } => *exists,
                        Op::Delete { .. } => !*exists,
                        // The key's revision is now the batch's own, which the caller cannot
                        // have seen.
                        Op::Swap { .. } | Op::DeleteIf { .. } => true,
                        Op::Put { .. } | Op::PutWithLease { .. } => false,
                    };
                    if fails && plan.impossible.is_none() {
                        plan.impossible = Some(at);
                    }
                    *exists = exists_after;
                    plan.writes[*index].1 = write;
                }
                None => {
                    let full = store.full_key(op.key());
                    match op {
                        Op::Create { .. } | Op::CreateWithLease { .. } => plan
                            .compares
                            .push(Compare::create_revision(full.clone(), CompareOp::Equal, 0)),
                        Op::Delete { .. } => plan.compares.push(Compare::version(
                            full.clone(),
                            CompareOp::Greater,
                            0,
                        )),
                        Op::Swap { expected, .. } | Op::DeleteIf { expected, .. } => {
                            match i64::try_from(*expected) {
                                // Revision 0 is never a key's: the compare would match an
                                // absent key.
                                Ok(expected) if expected > 0 => plan.compares.push(
                                    Compare::mod_revision(full.clone(), CompareOp::Equal, expected),
                                ),
                                _ => {
                                    plan.impossible.get_or_insert(at);
                                }
                            }
                        }
                        Op::Put { .. } | Op::PutWithLease { .. } => {}
                    }
                    seen.insert(op.key(), (plan.writes.len(), exists_after));
                    plan.keys.push(full.clone());
                    plan.writes.push((full, write));
                }
            }
        }
        plan
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut kv = self.inner.client.kv_client();
        let resp = self
            .call(
                format!("reading key {key:?}"),
                kv.get(self.full_key(key), None),
            )
            .await?;
        Ok(resp.kvs().first().map(|found| KeyValue {
            key: key.to_owned(),
            value: found.value().to_vec(),
            revision: from_etcd(found.mod_revision()),
        }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let (start, end) = prefix_range(self.full_key(prefix));
        let mut kv = self.inner.client.kv_client();
        let mut out = Vec::new();
        let mut from = start;
        let mut at = 0;
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE);
            if at > 0 {
                options = options.with_revision(at);
            }
            let resp = self
                .call(
                    format!("listing prefix {prefix:?}"),
                    kv.get(from.clone(), Some(options)),
                )
                .await?;
            if at == 0 {
                at = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            for found in resp.kvs() {
                out.push(KeyValue {
                    key: self.user_key(found.key())?,
                    value: found.value().to_vec(),
                    revision: from_etcd(found.mod_revision()),
                });
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(out),
            }
        }
    }

    async fn apply(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        if ops.is_empty() {
            return self.current_revision().await;
        }
        let plan = Plan::new(self, &ops);
        let first_key = ops[0].key().to_owned();
        let what = if ops.len() == 1 {
            format!("writing key {first_key:?}")
        } else {
            format!(
                "writing a batch of {} ops from key {first_key:?}",
                ops.len()
            )
        };
        if let Some(index) = plan.impossible {
            let (revisions, current) = self.read_revisions(&plan.keys).await?;
            let fallback = impossible_op(&ops[index]);
            return Err(self.diagnose(ops, &revisions, current).unwrap_or(fallback));
        }
        let reads: Vec<TxnOp> = plan
            .keys
            .iter()
            .map(|k| TxnOp::get(k.clone(), Some(GetOptions::new().with_keys_only())))
            .collect();
        let writes: Vec<TxnOp> = plan
            .writes
            .into_iter()
            .map(|(key, write)| match write {
                Write::Put(value, lease) => TxnOp::put(
                    key,
                    value,
                    lease.map(|lease| PutOptions::new().with_lease(lease.0)),
                ),
                Write::Delete => TxnOp::delete(key, None),
            })
            .collect();
        let has_compares = !plan.compares.is_empty();
        let mut txn = Txn::new().when(plan.compares).and_then(writes);
        if has_compares {
            txn = txn.or_else(reads);
        }
        let mut kv = self.inner.client.kv_client();
        let resp = match tokio::time::timeout(self.inner.options.request_timeout, kv.txn(txn)).await
        {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) if lease_not_found(&e) => return Err(self.missing_lease(&ops).await),
            Ok(Err(e)) => {
                return Err(StoreError::backend(
                    format!("etcd at {}: {what}", self.inner.endpoints),
                    e,
                ));
            }
            Err(elapsed) => {
                return Err(StoreError::backend(
                    format!(
                        "etcd at {}: {what}: no answer within {:?} (it may have been applied)",
                        self.inner.endpoints, self.inner.options.request_timeout
                    ),
                    elapsed,
                ));
            }
        };
        let revision = header_revision(resp.header())?;
        if resp.succeeded() {
            return Ok(revision);
        }
        let revisions = self.revisions_in(&resp)?;
        Err(self.diagnose(ops, &revisions, revision).unwrap_or_else(|| {
            StoreError::backend(
                format!("etcd at {}: {what}", self.inner.endpoints),
                "the transaction's guard failed but no op fails against the keys it read",
            )
        }))
    }

    async fn watch(&self, prefix: &str) -> Result<WatchStream, StoreError> {
        let start = self.current_revision().await? + 1;
        let (key, end) = prefix_range(self.full_key(prefix));
        let mut state = WatchState {
            client: self.inner.client.clone(),
            endpoints: self.inner.endpoints.clone(),
            namespace: self.inner.options.namespace.clone(),
            request_timeout: self.inner.options.request_timeout,
            retry_for: self.inner.options.watch_retry_for,
            prefix: prefix.to_owned(),
            key,
            end,
            next: to_etcd(start)?,
            cluster: None,
            stream: None,
            pending: VecDeque::new(),
            closed: self.inner.closed.clone(),
            done: false,
        };
        // Established before returning: every later change is delivered.
        match state.open().await {
            Opened::Ok => {}
            Opened::Lagged(e) | Opened::Failed(e) => return Err(e),
        }
        // The stream holds a clone of the client, not the store: dropping the store ends it.
        Ok(Box::pin(stream::unfold(state, |mut state| async move {
            let item = state.next_item().await?;
            Some((item, state))
        })))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let secs = i64::try_from(secs.max(1)).unwrap_or(i64::MAX);
        let mut leases = self.inner.client.lease_client();
        let resp = self
            .call(
                format!("granting a lease of {secs} s"),
                leases.grant(secs, None),
            )
            .await?;
        if !resp.error().is_empty() {
            return Err(StoreError::backend(
                format!(
                    "etcd at {}: granting a lease of {secs} s",
                    self.inner.endpoints
                ),
                resp.error().to_owned(),
            ));
        }
        Ok(LeaseId(resp.id()))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        let mut leases = self.inner.client.lease_client();
        let refresh = async {
            let (keeper, _stream) = leases.keep_alive(lease.0).await?;
            // The first answer, read by `keep_alive`, already refreshed the lease; the keeper
            // only has to stay open until then.
            let _ = keeper.id();
            let ttl = leases.time_to_live(lease.0, None).await?;
            Ok::<_, etcd_client::Error>(ttl)
        };
        match tokio::time::timeout(self.inner.options.request_timeout, refresh).await {
            // The remaining ttl is in whole seconds, 0 for less than one; -1 means no lease.
            Ok(Ok(ttl)) if ttl.granted_ttl() > 0 && ttl.ttl() >= 0 => Ok(Duration::from_secs(
                u64::try_from(ttl.granted_ttl()).unwrap_or(0),
            )),
            Ok(Ok(_)) => Err(StoreError::LeaseNotFound { lease }),
            Ok(Err(e)) if lease_not_found(&e) => Err(StoreError::LeaseNotFound { lease }),
            Ok(Err(e)) => Err(StoreError::backend(
                format!("etcd at {}: refreshing lease {lease}", self.inner.endpoints),
                e,
            )),
            Err(elapsed) => Err(StoreError::backend(
                format!(
                    "etcd at {}: refreshing lease {lease}: no answer within {:?}",
                    self.inner.endpoints, self.inner.options.request_timeout
                ),
                elapsed,
            )),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut leases = self.inner.client.lease_client();
        match tokio::time::timeout(self.inner.options.request_timeout, leases.revoke(lease.0)).await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if lease_not_found(&e) => Err(StoreError::LeaseNotFound { lease }),
            Ok(Err(e)) => Err(StoreError::backend(
                format!("etcd at {}: revoking lease {lease}", self.inner.endpoints),
                e,
            )),
            Err(elapsed) => Err(StoreError::backend(
                format!(
                    "etcd at {}: revoking lease {lease}: no answer within {:?}",
                    self.inner.endpoints, self.inner.options.request_timeout
                ),
                elapsed,
            )),
        }
    }
}

/// What opening (or reopening) an etcd watch gave.
enum Opened {
    Ok,
    /// etcd no longer has the history to resume from.
    Lagged(StoreError),
    /// It could not be opened (worth retrying).
    Failed(StoreError),
}

/// One [`Store::watch`] of an [`EtcdStore`]: its etcd watch and where to resume it.
struct WatchState {
    client: Client,
    endpoints: String,
    namespace: String,
    request_timeout: Duration,
    retry_for: Duration,
    prefix: String,
    key: Vec<u8>,
    end: Vec<u8>,
    /// The first revision not delivered yet: where a reopened watch starts.
    next: i64,
    /// The cluster the watch was first opened on.
    cluster: Option<u64>,
    stream: Option<etcd_client::WatchStream>,
    pending: VecDeque<WatchEvent>,
    closed: tokio::sync::watch::Receiver<()>,
    done: bool,
}

impl WatchState {
    fn what(&self) -> String {
        format!(
            "etcd at {}: watching prefix {:?}",
            self.endpoints, self.prefix
        )
    }

    /// Opens the etcd watch at `next` and waits for etcd to confirm it.
    async fn open(&mut self) -> Opened {
        self.stream = None;
        let mut client = self.client.watch_client();
        let options = WatchOptions::new()
            .with_range(self.end.clone())
            .with_start_revision(self.next);
        let key = self.key.clone();
        let request_timeout = self.request_timeout;
        let opened = async {
            let mut stream = client.watch(key, Some(options)).await?;
            let first = stream.message().await?;
            Ok::<_, etcd_client::Error>((stream, first))
        };
        let (stream, first) = match tokio::time::timeout(request_timeout, opened).await {
            Ok(Ok((stream, Some(first)))) => (stream, first),
            Ok(Ok((_, None))) => {
                return Opened::Failed(StoreError::backend(
                    self.what(),
                    "the watch stream ended before etcd confirmed it",
                ));
            }
            Ok(Err(e)) => return Opened::Failed(StoreError::backend(self.what(), e)),
            Err(elapsed) => return Opened::Failed(StoreError::backend(self.what(), elapsed)),
        };
        if first.compact_revision() > 0 {
            return Opened::Lagged(StoreError::WatchLagged {
                missed: u64::try_from(first.compact_revision() - self.next)
                    .unwrap_or(0)
                    .max(1),
            });
        }
        if first.canceled() {
            return Opened::Failed(StoreError::backend(
                self.what(),
                format!("etcd canceled the watch: {}", first.cancel_reason()),
            ));
        }
        if let Some(header) = first.header() {
            // Another cluster, or the same one restored from an older backup: the history this
            // watch would resume from is not there.
            let replaced = self.cluster.is_some_and(|c| c != header.cluster_id());
            let rewound = header.revision() < self.next - 1;
            if replaced || rewound {
                return Opened::Lagged(StoreError::WatchLagged {
                    missed: u64::try_from(self.next - 1 - header.revision())
                        .unwrap_or(0)
                        .max(1),
                });
            }
            self.cluster = Some(header.cluster_id());
        }
        self.stream = Some(stream);
        self.take_events(&first);
        Opened::Ok
    }

    /// Queues the events of a response and moves `next` past them.
    fn take_events(&mut self, resp: &etcd_client::WatchResponse) {
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let Ok(key) = user_key(&self.namespace, kv.key()) else {
                continue;
            };
            let revision = from_etcd(kv.mod_revision());
            self.next = self.next.max(kv.mod_revision() + 1);
            self.pending.push_back(match event.event_type() {
                EventType::Put => WatchEvent::Put(KeyValue {
                    key,
                    value: kv.value().to_vec(),
                    revision,
                }),
                EventType::Delete => WatchEvent::Delete { key, revision },
            });
        }
    }

    /// Reopens a lost watch, retrying with backoff for `watch_retry_for`.
    async fn reopen(&mut self) -> Result<(), StoreError> {
        let give_up = Instant::now() + self.retry_for;
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.open().await {
                Opened::Ok => return Ok(()),
                Opened::Lagged(e) => return Err(e),
                Opened::Failed(e) => {
                    if Instant::now() + backoff > give_up {
                        tracing::warn!(prefix = %self.prefix, error = %e, "etcd watch lost for good");
                        return Err(e);
                    }
                    tracing::debug!(prefix = %self.prefix, error = %e, "etcd watch lost; retrying");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// The next item of the stream, or `None` once it ended.
    async fn next_item(&mut self) -> Option<Result<WatchEvent, StoreError>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            if self.stream.is_none() {
                let mut closed = self.closed.clone();
                let reopened = tokio::select! {
                    _ = closed.changed() => return None,
                    reopened = self.reopen() => reopened,
                };
                if let Err(e) = reopened {
                    self.done = true;
                    return Some(Err(e));
                }
                continue;
            }
            let mut closed = self.closed.clone();
            let message = {
                let Some(stream) = self.stream.as_mut() else {
                    continue;
                };
                tokio::select! {
                    _ = closed.changed() => return None,
                    message = stream.message() => message,
                }
            };
            match message {
                Ok(Some(resp)) => {
                    if resp.compact_revision() > 0 {
                        self.done = true;
                        return Some(Err(StoreError::WatchLagged {
                            missed: u64::try_from(resp.compact_revision() - self.next)
                                .unwrap_or(0)
                                .max(1),
                        }));
                    }
                    if resp.canceled() {
                        tracing::debug!(prefix = %self.prefix, reason = resp.cancel_reason(), "etcd canceled a watch; reopening");
                        self.stream = None;
                        continue;
                    }
                    self.take_events(&resp);
                }
                Ok(None) | Err(_) => {
                    tracing::debug!(prefix = %self.prefix, "etcd watch stream lost; reopening");
                    self.stream = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges() {
        assert_eq!(prefix_end(b"a/b"), b"a/c");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_range(Vec::new()), (vec![0], vec![0]));
    }

    #[test]
    fn keys_leave_their_namespace() {
        assert_eq!(user_key("ns/", b"ns/a/b").unwrap(), "a/b");
        assert!(user_key("ns/", b"other/a").is_err());
    }
}
