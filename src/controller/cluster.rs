//! Cluster mode: networks shared by several hosts through a shared store (overlay).
//!
//! A controller opened with a [`ClusterConfig`] shares a [`Store`] (etcd in production, one
//! `MemoryStore` for hosts in one process) with the other hosts of its cluster. Through it:
//!
//! - **Cluster networks** are defined once, by any host: their record, their name and their
//!   VNI are created in one atomic batch (`cluster/v1/networks/<id>`, `cluster/v1/names/<name>`,
//!   `cluster/v1/vni/<vni>`, all create-if-absent, VNIs from 4096 up), and their subnets come
//!   from a cluster-scope [`Ipam`] on the same store (serial allocation, safe across hosts).
//!   Every host learns them from the store: when a local container connects by name, and in
//!   the background for listing and inspection.
//! - **Endpoints** of cluster networks are published as `cluster/v1/endpoints/<net>/<ep>`
//!   ([`ClusterEndpoint`]: name, aliases, addresses, MAC, node, underlay address), written on
//!   connect and deleted on disconnect.
//! - **A watcher** (a task started by [`Controller::open`], holding only a weak reference to
//!   the controller and stopped when it is dropped) watches `cluster/v1/`, keeps a mirror of
//!   every network and endpoint record, and for each network that has local endpoints programs
//!   the other hosts' endpoints into the driver ([`Driver::peer_add`] /
//!   [`Driver::peer_remove`]: FDB and neighbour entries) and into the embedded DNS (each remote
//!   endpoint as a sandbox `remote:<endpoint id>`).
//!
//! Watch semantics: watch first, then list, and apply a watch event only if it is newer than
//! what the mirror holds for its key (so events racing the listing are harmless). When the
//! watch is lost (`WatchLagged`, an error, or the stream ending) the watcher watches and lists
//! again, replaces the mirror, and reconciles every local network against the *kernel's*
//! entries (not what it believes it programmed), so nothing is missed or left stale. A host
//! whose first container joins a network reconciles that network from the kernel too; between
//! resyncs, changes are applied as differences from what was programmed.
//!
//! Serialisation: one async lock per cluster network on this host orders its joins, leaves
//! (which create and delete its data plane) and peer programming.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::model::{NetworkRecord, NetworkSpec, Status};
use super::{Controller, Error, Inner, ObjectKind, Result, names, records, split_ipam};
use crate::dns::EndpointDns;
use crate::driver::{
    DriverKind, DriverOptions, FIRST_VNI, MAX_VNI, NetworkInfo, PeerEntry, SubnetInfo,
};
use crate::ipam::{Ipam, IpamOptions, SubnetRequest};
use crate::store::{
    KeyValue, LeaseId, LeaseKeeper, Op, Revision, Store, StoreError, WatchEvent, WatchStream,
};
use crate::sys::rtnl::MacAddr;

/// Everything under this prefix is cluster state.
pub const KEY_CLUSTER: &str = "cluster/v1/";
const KEY_C_NETWORKS: &str = "cluster/v1/networks/";
const KEY_C_NAMES: &str = "cluster/v1/names/";
const KEY_C_VNI: &str = "cluster/v1/vni/";
pub(crate) const KEY_C_ENDPOINTS: &str = "cluster/v1/endpoints/";
/// Host membership: `cluster/v1/nodes/<node>` ([`NodeRecord`]), on the node's lease.
pub(crate) const KEY_C_NODES: &str = "cluster/v1/nodes/";

/// How many VNIs a network creation tries before giving up (others may be taking them).
const VNI_ATTEMPTS: usize = 64;

/// How long the watcher waits before watching again after the store failed.
const RETRY_DELAY: Duration = Duration::from_millis(200);

/// The default time to live of a host's membership lease.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// How a controller joins a cluster.
///
/// ```
/// use std::sync::Arc;
/// use wharf::controller::{ClusterConfig, ControllerConfig};
/// use wharf::store::MemoryStore;
/// let store = Arc::new(MemoryStore::new());
/// let config = ControllerConfig::new("/var/lib/wharf")
///     .cluster(ClusterConfig::new(store, "worker-1", "198.18.0.2".parse().unwrap()));
/// assert_eq!(config.cluster.unwrap().node, "worker-1");
/// ```
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The store every host of the cluster shares.
    pub store: Arc<dyn Store>,
    /// This host's name in the cluster (unique).
    pub node: String,
    /// This host's underlay address: the source of its VXLAN tunnels, which the other hosts
    /// send to. It must be an address of the host's namespace.
    pub advertise_addr: IpAddr,
    /// Options of the cluster-scope IPAM; every host must use the same. Default:
    /// [`IpamOptions::cluster`] with the identifier `wharf`.
    pub ipam: Option<IpamOptions>,
    /// The time to live of this host's membership lease (default [`DEFAULT_LEASE_TTL`]): the
    /// records of this host's endpoints are attached to it, so they vanish this long after the
    /// host stops refreshing it (it died, or lost the store), and the other hosts remove its
    /// entries and names. etcd rounds it up to whole seconds and to its minimum (2 s by default).
    pub lease_ttl: Duration,
}

impl ClusterConfig {
    /// A cluster member named `node`, reachable at `advertise_addr`, sharing `store`.
    pub fn new(store: Arc<dyn Store>, node: impl Into<String>, advertise_addr: IpAddr) -> Self {
        Self {
            store,
            node: node.into(),
            advertise_addr,
            ipam: None,
            lease_ttl: DEFAULT_LEASE_TTL,
        }
    }

    /// Sets the time to live of the host's membership lease (see [`ClusterConfig::lease_ttl`]).
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }
}

/// A live host of the cluster (`cluster/v1/nodes/<node>`), written on the host's membership
/// lease: it vanishes with the host. Services are placed over these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NodeRecord {
    /// The node's name.
    pub node: String,
    /// Its underlay address.
    pub addr: IpAddr,
}

/// An endpoint of a cluster network as the other hosts see it
/// (`cluster/v1/endpoints/<network id>/<endpoint id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterEndpoint {
    /// The endpoint's id.
    pub id: String,
    /// The network's id.
    pub network_id: String,
    /// The container's (sandbox's) name, resolvable on the network.
    pub name: String,
    /// Network-scoped aliases.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Its IPv4 address.
    pub ipv4: Option<Ipv4Addr>,
    /// Its IPv6 address.
    pub ipv6: Option<Ipv6Addr>,
    /// Its MAC address.
    pub mac: MacAddr,
    /// The node it is on.
    pub node: String,
    /// The underlay address of that node (its VXLAN tunnel end point).
    pub vtep: IpAddr,
}

impl ClusterEndpoint {
    /// The data-plane entries another host needs to reach this endpoint.
    pub fn entries(&self) -> Vec<PeerEntry> {
        let mut out = vec![PeerEntry::Fdb {
            mac: self.mac,
            vtep: self.vtep,
        }];
        for ip in self
            .ipv4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.ipv6.map(IpAddr::V6))
        {
            out.push(PeerEntry::Neighbour { ip, mac: self.mac });
        }
        out
    }

    /// How the embedded DNS of other hosts knows it: a sandbox `remote:<endpoint id>`.
    fn dns(&self) -> EndpointDns {
        EndpointDns {
            network_id: self.network_id.clone(),
            sandbox_id: remote_sandbox_id(&self.id),
            name: self.name.clone(),
            aliases: self.aliases.clone(),
            ipv4: self.ipv4,
            ipv6: self.ipv6,
        }
    }
}

fn remote_sandbox_id(endpoint_id: &str) -> String {
    format!("remote:{endpoint_id}")
}

/// What a key under [`KEY_CLUSTER`] is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClusterKey {
    Network(String),
    Endpoint { network: String, endpoint: String },
    Other,
}

pub(crate) fn parse_key(key: &str) -> ClusterKey {
    if let Some(id) = key.strip_prefix(KEY_C_NETWORKS) {
        if !id.is_empty() && !id.contains('/') {
            return ClusterKey::Network(id.to_owned());
        }
    }
    if let Some(rest) = key.strip_prefix(KEY_C_ENDPOINTS) {
        if let Some((net, ep)) = rest.split_once('/') {
            if !net.is_empty() && !ep.is_empty() && !ep.contains('/') {
                return ClusterKey::Endpoint {
                    network: net.to_owned(),
                    endpoint: ep.to_owned(),
                };
            }
        }
    }
    ClusterKey::Other
}

fn endpoint_key(network_id: &str, endpoint_id: &str) -> String {
    format!("{KEY_C_ENDPOINTS}{network_id}/{endpoint_id}")
}

/// The entries a host must hold for `endpoints` (the remote ones of a network).
///
/// The kernel holds one destination per MAC and one MAC per IP; if two records claim the same
/// (a transient state: an address released on one host and taken on another before the first
/// record's deletion arrived), the newer record (higher revision) wins.
pub(crate) fn desired_entries<'a>(
    endpoints: impl IntoIterator<Item = &'a (Revision, ClusterEndpoint)>,
) -> BTreeSet<PeerEntry> {
    let mut by_mac: HashMap<MacAddr, (Revision, IpAddr)> = HashMap::new();
    let mut by_ip: HashMap<IpAddr, (Revision, MacAddr)> = HashMap::new();
    for (rev, ep) in endpoints {
        for e in ep.entries() {
            match e {
                PeerEntry::Fdb { mac, vtep } => {
                    let slot = by_mac.entry(mac).or_insert((*rev, vtep));
                    if *rev > slot.0 {
                        *slot = (*rev, vtep);
                    }
                }
                PeerEntry::Neighbour { ip, mac } => {
                    let slot = by_ip.entry(ip).or_insert((*rev, mac));
                    if *rev > slot.0 {
                        *slot = (*rev, mac);
                    }
                }
            }
        }
    }
    by_mac
        .into_iter()
        .map(|(mac, (_, vtep))| PeerEntry::Fdb { mac, vtep })
        .chain(
            by_ip
                .into_iter()
                .map(|(ip, (_, mac))| PeerEntry::Neighbour { ip, mac }),
        )
        .collect()
}

/// What to change to turn the `actual` entries into the `desired` ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PeerPlan {
    /// Entries to delete (applied first: a neighbour entry is deleted by IP, an FDB entry by
    /// MAC and destination, so a replacement must come after).
    pub remove: Vec<PeerEntry>,
    /// Entries to add.
    pub add: Vec<PeerEntry>,
}

impl PeerPlan {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty()
    }
}

pub(crate) fn plan(actual: &BTreeSet<PeerEntry>, desired: &BTreeSet<PeerEntry>) -> PeerPlan {
    PeerPlan {
        remove: actual.difference(desired).copied().collect(),
        add: desired.difference(actual).copied().collect(),
    }
}

/// The watcher's copy of the cluster's network and endpoint records, with their revisions.
#[derive(Debug, Default)]
pub(crate) struct Mirror {
    pub networks: BTreeMap<String, (Revision, NetworkRecord)>,
    /// Network id -> endpoint id -> record.
    pub endpoints: BTreeMap<String, BTreeMap<String, (Revision, ClusterEndpoint)>>,
    /// The revision of the last change seen per key, deletions included, so that an event
    /// older than the listing it raced with is ignored.
    seen: HashMap<String, Revision>,
    /// Endpoint records that went away (with the revision they were last written at), for
    /// the sweep of a dead host's addresses; taken by [`Mirror::take_removed`].
    removed: Vec<(Revision, ClusterEndpoint)>,
}

/// What a change to the mirror affects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Touched {
    Network(String),
    Endpoints(String),
}

impl Mirror {
    /// Rebuilds the mirror from a listing; returns every network whose records changed.
    pub fn replace(&mut self, listing: &[KeyValue]) -> Vec<Touched> {
        let old_networks = std::mem::take(&mut self.networks);
        let old_endpoints = std::mem::take(&mut self.endpoints);
        self.seen.clear();
        for kv in listing {
            self.put(kv);
        }
        for (net, eps) in &old_endpoints {
            for (id, old) in eps {
                if !self.endpoints.get(net).is_some_and(|m| m.contains_key(id)) {
                    self.removed.push(old.clone());
                }
            }
        }
        let mut touched = Vec::new();
        let net_ids: BTreeSet<&String> = old_networks.keys().chain(self.networks.keys()).collect();
        for id in net_ids {
            let before = old_networks.get(id).map(|(_, r)| r);
            let after = self.networks.get(id).map(|(_, r)| r);
            if before != after {
                touched.push(Touched::Network(id.clone()));
            }
        }
        let ep_nets: BTreeSet<&String> =
            old_endpoints.keys().chain(self.endpoints.keys()).collect();
        for id in ep_nets {
            let strip = |m: Option<&BTreeMap<String, (Revision, ClusterEndpoint)>>| {
                m.map(|m| m.values().map(|(_, e)| e.clone()).collect::<Vec<_>>())
                    .unwrap_or_default()
            };
            if strip(old_endpoints.get(id)) != strip(self.endpoints.get(id)) {
                touched.push(Touched::Endpoints(id.clone()));
            }
        }
        touched
    }

    fn put(&mut self, kv: &KeyValue) -> Option<Touched> {
        let touched = match parse_key(&kv.key) {
            ClusterKey::Network(id) => {
                let record: NetworkRecord = match serde_json::from_slice(&kv.value) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(key = %kv.key, error = %e, "unreadable cluster network record");
                        return None;
                    }
                };
                self.networks.insert(id.clone(), (kv.revision, record));
                Touched::Network(id)
            }
            ClusterKey::Endpoint { network, endpoint } => {
                let record: ClusterEndpoint = match serde_json::from_slice(&kv.value) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(key = %kv.key, error = %e, "unreadable cluster endpoint record");
                        return None;
                    }
                };
                self.endpoints
                    .entry(network.clone())
                    .or_default()
                    .insert(endpoint, (kv.revision, record));
                Touched::Endpoints(network)
            }
            ClusterKey::Other => return None,
        };
        self.seen.insert(kv.key.clone(), kv.revision);
        Some(touched)
    }

    /// Applies a watch event unless the mirror already reflects something as new.
    pub fn apply(&mut self, event: &WatchEvent) -> Option<Touched> {
        if self
            .seen
            .get(event.key())
            .is_some_and(|seen| *seen >= event.revision())
        {
            return None;
        }
        match event {
            WatchEvent::Put(kv) => self.put(kv),
            WatchEvent::Delete { key, revision } => {
                self.seen.insert(key.clone(), *revision);
                match parse_key(key) {
                    ClusterKey::Network(id) => {
                        self.networks.remove(&id).map(|_| Touched::Network(id))
                    }
                    ClusterKey::Endpoint { network, endpoint } => {
                        let eps = self.endpoints.get_mut(&network)?;
                        let gone = eps.remove(&endpoint)?;
                        self.removed.push(gone);
                        if eps.is_empty() {
                            self.endpoints.remove(&network);
                        }
                        Some(Touched::Endpoints(network))
                    }
                    ClusterKey::Other => None,
                }
            }
        }
    }

    /// The endpoint records removed since the last call.
    pub fn take_removed(&mut self) -> Vec<(Revision, ClusterEndpoint)> {
        std::mem::take(&mut self.removed)
    }

    /// The endpoints of `network` on other nodes than `node`.
    pub fn remote_endpoints(&self, network: &str, node: &str) -> Vec<(Revision, ClusterEndpoint)> {
        self.endpoints
            .get(network)
            .map(|eps| {
                eps.values()
                    .filter(|(_, e)| e.node != node)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The state of one cluster network on this host, behind its lock.
#[derive(Debug, Default)]
pub(crate) struct NetState {
    /// Whether the network has local endpoints (so a data plane to program).
    active: bool,
    /// The entries programmed in the kernel, if known; `None`: read them from the kernel.
    programmed: Option<BTreeSet<PeerEntry>>,
    /// Remote endpoints registered with the embedded DNS, by endpoint id.
    dns: BTreeMap<String, EndpointDns>,
}

/// A network's lock, held across a connect or disconnect.
pub(crate) type NetGuard = tokio::sync::OwnedMutexGuard<NetState>;

/// The cluster side of a controller.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub config: ClusterConfig,
    pub ipam: Ipam,
    mirror: Mutex<Mirror>,
    nets: Mutex<HashMap<String, Arc<tokio::sync::Mutex<NetState>>>>,
    /// Dropped with the controller: the watcher stops.
    shutdown: tokio::sync::watch::Sender<()>,
    /// Set when programming a network failed: the watcher retries from the kernel.
    retry: std::sync::atomic::AtomicBool,
    /// Services: the watcher's copy of their records and the reconciler's wake-up.
    pub services: super::service::Services,
    /// This host's routing mesh, as last programmed.
    pub mesh: tokio::sync::Mutex<super::mesh::MeshState>,
    /// This host's membership lease and its keeper (`None` before the first grant, or when the
    /// store has no leases); dropped with the controller, so the lease then expires.
    membership: tokio::sync::Mutex<Option<Membership>>,
}

/// A granted membership lease, kept alive in the background.
#[derive(Debug)]
struct Membership {
    lease: LeaseId,
    keeper: LeaseKeeper,
}

impl Cluster {
    pub async fn open(config: ClusterConfig) -> Result<Self> {
        let options = config
            .ipam
            .clone()
            .unwrap_or_else(|| IpamOptions::cluster(b"wharf"));
        let ipam = Ipam::open(config.store.clone(), options).await?;
        let (shutdown, _) = tokio::sync::watch::channel(());
        Ok(Self {
            config,
            ipam,
            mirror: Mutex::new(Mirror::default()),
            nets: Mutex::new(HashMap::new()),
            shutdown,
            retry: std::sync::atomic::AtomicBool::new(false),
            services: super::service::Services::default(),
            mesh: tokio::sync::Mutex::new(super::mesh::MeshState::default()),
            membership: tokio::sync::Mutex::new(None),
        })
    }

    pub(crate) fn mirror(&self) -> std::sync::MutexGuard<'_, Mirror> {
        self.mirror.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn net(&self, id: &str) -> Arc<tokio::sync::Mutex<NetState>> {
        self.nets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    /// Takes the lock of a cluster network on this host.
    pub async fn lock(&self, network_id: &str) -> NetGuard {
        self.net(network_id).lock_owned().await
    }

    fn store(&self) -> &dyn Store {
        self.config.store.as_ref()
    }

    /// The live membership lease, granted (and its keeper started) if there is none or the
    /// last one was lost. `Ok(None)`: the store has no leases; records are then written
    /// without one (and outlive a dead host).
    async fn lease(&self) -> Result<Option<LeaseId>> {
        let mut m = self.membership.lock().await;
        if let Some(m) = m.as_ref().filter(|m| !m.keeper.is_lost()) {
            return Ok(Some(m.lease));
        }
        let ttl = self.config.lease_ttl;
        match self.store().grant_lease(ttl).await {
            Ok(lease) => {
                let keeper = LeaseKeeper::spawn(self.config.store.clone(), lease, ttl);
                tracing::debug!(node = %self.config.node, %lease, "cluster membership lease granted");
                *m = Some(Membership { lease, keeper });
                Ok(Some(lease))
            }
            Err(StoreError::Unsupported { .. }) => {
                tracing::warn!(node = %self.config.node, "the cluster store has no leases: a dead host's endpoints will not be removed");
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// True if the membership lease was granted and then lost.
    async fn lease_lost(&self) -> bool {
        self.membership
            .lock()
            .await
            .as_ref()
            .is_some_and(|m| m.keeper.is_lost())
    }
}

/// The cluster's view of the peers of a network, for inspect: `(node, underlay address)`.
pub(crate) fn peers_of(mirror: &Mirror, network: &str) -> BTreeSet<(String, IpAddr)> {
    mirror
        .endpoints
        .get(network)
        .map(|eps| {
            eps.values()
                .map(|(_, e)| (e.node.clone(), e.vtep))
                .collect()
        })
        .unwrap_or_default()
}

impl Controller {
    pub(crate) fn cluster(&self) -> Option<&Cluster> {
        self.inner.cluster.as_ref()
    }

    fn require_cluster(&self, name: &str) -> Result<&Cluster> {
        self.cluster().ok_or_else(|| Error::InvalidRequest {
            kind: ObjectKind::Network,
            name: name.to_owned(),
            reason:
                "overlay networks need a controller in cluster mode (ControllerConfig::cluster)"
                    .into(),
        })
    }

    /// The IPAM that owns a network's addresses: the cluster's for cluster networks.
    pub(crate) fn ipam_for(&self, info: &NetworkInfo) -> &Ipam {
        match self.cluster() {
            Some(c) if info.options.kind().is_cluster_scoped() => &c.ipam,
            _ => &self.inner.ipam,
        }
    }

    // ---- networks ------------------------------------------------------------------------

    /// Creates a cluster network (called with the network lock held).
    /// `predefined`: wharf's own `ingress`, which users cannot delete.
    pub(crate) async fn create_cluster_network(
        &self,
        spec: NetworkSpec,
        predefined: bool,
    ) -> Result<String> {
        let cluster = self.require_cluster(&spec.name)?;
        let DriverOptions::Overlay(mut opts) = spec.driver.clone() else {
            return Err(Error::InvalidRequest {
                kind: ObjectKind::Network,
                name: spec.name,
                reason: "not a cluster driver".into(),
            });
        };
        if self.records().network_by_name(&spec.name).is_some() {
            return Err(Error::AlreadyExists {
                kind: ObjectKind::Network,
                name: spec.name,
            });
        }
        let driver = self.driver(DriverKind::Overlay)?;
        let (v4_cfg, v6_cfg) = split_ipam(&spec)?;
        let id = names::new_id();
        let mut info = NetworkInfo {
            id: id.clone(),
            name: spec.name.clone(),
            internal: spec.internal,
            enable_ipv6: spec.enable_ipv6,
            options: DriverOptions::Overlay(opts.clone()),
            subnets: Vec::new(),
        };
        driver.validate(&info)?;

        // Subnets from the cluster's IPAM (no host routes to avoid: the overlay lives in
        // namespaces of its own on every host).
        let lease = cluster
            .ipam
            .request_subnet(
                SubnetRequest::new(&id, &spec.name).with_config(v4_cfg.unwrap_or_default()),
            )
            .await?;
        info.subnets.push(SubnetInfo {
            subnet: lease.subnet,
            gateway: Some(lease.gateway),
        });
        if spec.enable_ipv6 {
            let req = SubnetRequest::new(&id, &spec.name)
                .ipv6()
                .with_config(v6_cfg.unwrap_or_default());
            match cluster.ipam.request_subnet(req).await {
                Ok(lease) => info.subnets.push(SubnetInfo {
                    subnet: lease.subnet,
                    gateway: Some(lease.gateway),
                }),
                Err(e) => {
                    self.release_subnets(&info).await;
                    return Err(e.into());
                }
            }
        }

        // Name, VNI and record in one batch; another VNI if someone took this one.
        let created = humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
        let given_vni = opts.vni;
        let mut candidates: Box<dyn Iterator<Item = u32> + Send> = match given_vni {
            Some(v) => Box::new(std::iter::once(v)),
            None => {
                let taken: BTreeSet<u32> = match cluster.store().list(KEY_C_VNI).await {
                    Ok(kvs) => kvs
                        .iter()
                        .filter_map(|kv| kv.key.strip_prefix(KEY_C_VNI)?.parse().ok())
                        .collect(),
                    Err(e) => {
                        self.release_subnets(&info).await;
                        return Err(e.into());
                    }
                };
                Box::new(
                    (FIRST_VNI..=MAX_VNI)
                        .filter(move |v| !taken.contains(v))
                        .take(VNI_ATTEMPTS),
                )
            }
        };
        let record = loop {
            let Some(vni) = candidates.next() else {
                self.release_subnets(&info).await;
                return Err(Error::InvalidRequest {
                    kind: ObjectKind::Network,
                    name: spec.name.clone(),
                    reason: match given_vni {
                        Some(v) => format!("vni {v} is taken by another network"),
                        None => "no free VNI found".into(),
                    },
                });
            };
            opts.vni = Some(vni);
            info.options = DriverOptions::Overlay(opts.clone());
            let record = NetworkRecord {
                info: info.clone(),
                status: Status::Active,
                created: created.clone(),
                attachable: spec.attachable,
                labels: spec.labels.clone(),
                predefined,
            };
            let ops = vec![
                Op::Create {
                    key: format!("{KEY_C_NAMES}{}", spec.name),
                    value: id.clone().into_bytes(),
                },
                Op::Create {
                    key: format!("{KEY_C_VNI}{vni}"),
                    value: id.clone().into_bytes(),
                },
                Op::Create {
                    key: format!("{KEY_C_NETWORKS}{id}"),
                    value: records::encode(&record)?,
                },
            ];
            match cluster.store().apply(ops).await {
                Ok(_) => break record,
                Err(StoreError::AlreadyExists { key }) if key.starts_with(KEY_C_VNI) => continue,
                Err(StoreError::AlreadyExists { key }) if key.starts_with(KEY_C_NAMES) => {
                    self.release_subnets(&info).await;
                    return Err(Error::AlreadyExists {
                        kind: ObjectKind::Network,
                        name: spec.name.clone(),
                    });
                }
                Err(e) => {
                    self.release_subnets(&info).await;
                    return Err(e.into());
                }
            }
        };
        if let Err(e) = driver.create_network(&info).await {
            self.undo_cluster_network(&record).await;
            self.release_subnets(&info).await;
            return Err(e.into());
        }
        self.learn_network(record);
        tracing::info!(network = %info.name, id = %id, vni = ?opts.vni, "cluster network created");
        Ok(id)
    }

    /// Deletes a cluster network's keys (best effort, used for rollback and deletion).
    async fn undo_cluster_network(&self, record: &NetworkRecord) {
        let Some(cluster) = self.cluster() else {
            return;
        };
        let info = &record.info;
        let mut keys = vec![
            format!("{KEY_C_NETWORKS}{}", info.id),
            format!("{KEY_C_NAMES}{}", info.name),
        ];
        if let DriverOptions::Overlay(o) = &info.options {
            if let Some(vni) = o.vni {
                keys.push(format!("{KEY_C_VNI}{vni}"));
            }
        }
        let mut ops = Vec::new();
        for key in keys {
            match cluster.store().get(&key).await {
                // Names and VNIs are deleted only if they still point to this network.
                Ok(Some(kv))
                    if kv.key.starts_with(KEY_C_NETWORKS) || kv.value == info.id.as_bytes() =>
                {
                    ops.push(Op::DeleteIf {
                        key,
                        expected: kv.revision,
                    })
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(key = %key, error = %e, "reading a cluster key"),
            }
        }
        if let Err(e) = cluster.store().apply(ops).await {
            tracing::warn!(network = %info.name, error = %e, "deleting a cluster network's keys");
        }
    }

    /// Deletes a cluster network (called with the network lock held): refused while any host
    /// has endpoints on it.
    pub(crate) async fn delete_cluster_network(&self, record: NetworkRecord) -> Result<()> {
        let cluster = self.require_cluster(&record.info.name)?;
        let info = &record.info;
        self.refuse_if_service_network(&info.id, &info.name)?;
        let mut in_use: Vec<String> = cluster
            .store()
            .list(&format!("{KEY_C_ENDPOINTS}{}/", info.id))
            .await?
            .iter()
            .filter_map(|kv| serde_json::from_slice::<ClusterEndpoint>(&kv.value).ok())
            .map(|e| format!("{}@{}", e.name, e.node))
            .collect();
        in_use.sort();
        if !in_use.is_empty() {
            return Err(Error::NetworkInUse {
                network: info.name.clone(),
                sandboxes: in_use,
            });
        }
        let _guard = cluster.lock(&info.id).await;
        self.driver(DriverKind::Overlay)?
            .delete_network(info)
            .await?;
        self.undo_cluster_network(&record).await;
        self.release_subnets(info).await;
        self.forget_network(&info.id);
        tracing::info!(network = %info.name, "cluster network deleted");
        Ok(())
    }

    /// Adds (or updates) a cluster network in the records and the DNS.
    fn learn_network(&self, record: NetworkRecord) {
        {
            let mut records = self.records_mut();
            if let Some(local) = records.network_by_name(&record.info.name) {
                if local.info.id != record.info.id {
                    tracing::warn!(network = %record.info.name, "a local network has the name of a cluster network; the cluster network is ignored here");
                    return;
                }
            }
            if records.networks.get(&record.info.id) == Some(&record) {
                return;
            }
            records
                .networks
                .insert(record.info.id.clone(), record.clone());
        }
        self.register_network_dns(&record);
    }

    /// Removes a cluster network from the records, unless local endpoints still use it.
    fn forget_network(&self, id: &str) {
        {
            let mut records = self.records_mut();
            if records.endpoints_on(id).next().is_some() {
                return;
            }
            records.networks.remove(id);
        }
        self.inner.resolver.remove_network(id);
        if let Some(c) = self.cluster() {
            c.nets.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        }
    }

    /// Finds a cluster network this host does not know yet, in the store (by name, id or
    /// unique id prefix), and learns it. `Ok(false)` if there is none.
    pub(crate) async fn learn_from_store(&self, name_or_id: &str) -> Result<bool> {
        let Some(cluster) = self.cluster() else {
            return Ok(false);
        };
        let kvs = cluster.store().list(KEY_C_NETWORKS).await?;
        let records: Vec<NetworkRecord> = kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect();
        let by_name_or_id = records
            .iter()
            .find(|r| r.info.name == name_or_id || r.info.id == name_or_id);
        let found = match by_name_or_id {
            Some(r) => Some(r.clone()),
            None if !name_or_id.is_empty() => {
                let prefixed: Vec<&NetworkRecord> = records
                    .iter()
                    .filter(|r| r.info.id.starts_with(name_or_id))
                    .collect();
                match prefixed.as_slice() {
                    [one] => Some((*one).clone()),
                    _ => None,
                }
            }
            None => None,
        };
        match found {
            Some(r) => {
                self.learn_network(r);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    // ---- endpoints -----------------------------------------------------------------------

    /// Publishes a local endpoint of a cluster network for the other hosts.
    pub(crate) async fn publish_endpoint(&self, ep: &ClusterEndpoint) -> Result<()> {
        let key = endpoint_key(&ep.network_id, &ep.id);
        let value = records::encode(ep)?;
        self.put_on_lease(key, value, &ep.id).await
    }

    /// Writes `key` on the membership lease (plainly if the store has no leases); once more
    /// with a new lease if the current one expired meanwhile. `what` names it for errors.
    async fn put_on_lease(&self, key: String, value: Vec<u8>, what: &str) -> Result<()> {
        let Some(cluster) = self.cluster() else {
            return Ok(());
        };
        // Once more with a new lease if the one just read expired meanwhile.
        for _ in 0..2 {
            let op = match cluster.lease().await? {
                Some(lease) => Op::PutWithLease {
                    key: key.clone(),
                    value: value.clone(),
                    lease,
                },
                None => Op::Put {
                    key: key.clone(),
                    value: value.clone(),
                },
            };
            match cluster.store().apply(vec![op]).await {
                Ok(_) => return Ok(()),
                Err(StoreError::LeaseNotFound { lease }) => {
                    tracing::warn!(key = %what, %lease, "membership lease gone while publishing; granting another");
                    let mut m = cluster.membership.lock().await;
                    if m.as_ref().is_some_and(|m| m.lease == lease) {
                        *m = None;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::InvalidRequest {
            kind: ObjectKind::Endpoint,
            name: what.to_owned(),
            reason: "the membership lease expired twice while publishing the record".into(),
        })
    }

    /// Writes the records of every local endpoint of a cluster network again, attached to the
    /// current membership lease: at open (a restarted controller re-attaches its endpoints,
    /// whose records may have expired or still belong to the previous lease) and after the
    /// lease was lost (the host was paused or cut from the store longer than the ttl).
    ///
    /// Each network's endpoints are read and written under its lock, so a concurrent
    /// disconnect's withdrawal is never undone by a stale rewrite.
    pub(crate) async fn republish_endpoints(&self) -> Result<()> {
        let Some(cluster) = self.cluster() else {
            return Ok(());
        };
        self.publish_node().await?;
        let networks: BTreeSet<String> = {
            let records = self.records();
            records
                .endpoints()
                .values()
                .filter(|e| {
                    records
                        .networks
                        .get(&e.network_id)
                        .is_some_and(|n| n.info.options.kind().is_cluster_scoped())
                })
                .map(|e| e.network_id.clone())
                .collect()
        };
        let mut count = 0;
        for network_id in networks {
            let _guard = cluster.lock(&network_id).await;
            let local: Vec<ClusterEndpoint> = {
                let records = self.records();
                records
                    .endpoints_on(&network_id)
                    .filter(|e| e.status == Status::Active)
                    .filter_map(|e| {
                        let sb = records.sandboxes().get(&e.sandbox_id)?;
                        self.cluster_endpoint(&e.network_id, &e.info, &sb.name, &e.aliases)
                    })
                    .collect()
            };
            for ep in &local {
                self.publish_endpoint(ep).await?;
            }
            count += local.len();
        }
        if count > 0 {
            tracing::info!(
                endpoints = count,
                "cluster endpoint records attached to the membership lease"
            );
        }
        Ok(())
    }

    /// Writes this host's membership record on its lease (at open and after a lost lease).
    async fn publish_node(&self) -> Result<()> {
        let Some(cluster) = self.cluster() else {
            return Ok(());
        };
        let key = format!("{KEY_C_NODES}{}", cluster.config.node);
        let value = records::encode(&NodeRecord {
            node: cluster.config.node.clone(),
            addr: cluster.config.advertise_addr,
        })?;
        self.put_on_lease(key, value, &cluster.config.node).await
    }

    /// Withdraws a local endpoint of a cluster network.
    pub(crate) async fn withdraw_endpoint(
        &self,
        network_id: &str,
        endpoint_id: &str,
    ) -> Result<()> {
        let Some(cluster) = self.cluster() else {
            return Ok(());
        };
        match cluster
            .store()
            .delete(&endpoint_key(network_id, endpoint_id))
            .await
        {
            Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The owner name under which this host allocates a cluster address for an endpoint
    /// (`<node>/<endpoint id>`, see [`Ipam::allocate_for`]): after a crash, recovery finds by it
    /// the addresses it took and releases them only while they are still its own.
    pub(crate) fn address_owner(&self, endpoint_id: &str) -> String {
        let node = self.cluster().map_or("", |c| c.config.node.as_str());
        format!("{node}/{endpoint_id}")
    }

    /// Releases cluster addresses of a local endpoint if they are still its own (an address a
    /// crash-interrupted operation released already, and someone else took since, is left
    /// alone). Best effort: failures are logged.
    pub(crate) async fn release_owned_addresses(
        &self,
        network_id: &str,
        endpoint_id: &str,
        addrs: &[IpAddr],
    ) {
        let Some(cluster) = self.cluster() else {
            return;
        };
        let owner = self.address_owner(endpoint_id);
        for ip in addrs {
            match cluster.ipam.release_owned(network_id, *ip, &owner).await {
                Ok(true) => {
                    tracing::debug!(%ip, endpoint = %endpoint_id, "cluster address released")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(%ip, endpoint = %endpoint_id, error = %e, "releasing a cluster address")
                }
            }
        }
    }

    /// At open, after the recovery of the local endpoints: withdraws the records this node
    /// published for endpoints it has no record of, and releases the cluster addresses it
    /// allocated for them (a crash between the allocation or the publication and the local
    /// record, or between the record's deletion and the release). Nothing another node owns is
    /// touched.
    pub(crate) async fn remove_cluster_orphans(&self) -> Result<()> {
        let Some(cluster) = self.cluster() else {
            return Ok(());
        };
        let node = cluster.config.node.as_str();
        let held: BTreeSet<String> = self.records().endpoints().keys().cloned().collect();
        for kv in cluster.store().list(KEY_C_ENDPOINTS).await? {
            let Ok(ep) = serde_json::from_slice::<ClusterEndpoint>(&kv.value) else {
                continue;
            };
            if ep.node == node && !held.contains(&ep.id) {
                tracing::info!(endpoint = %ep.id, name = %ep.name, "withdrawing a cluster endpoint record no local endpoint holds");
                self.withdraw_endpoint(&ep.network_id, &ep.id).await?;
            }
        }
        for a in cluster.ipam.stored_addresses().await? {
            let Some(owner) = a.owner.as_deref() else {
                continue;
            };
            let Some((owner_node, endpoint)) = owner.rsplit_once('/') else {
                continue;
            };
            if owner_node == node && !held.contains(endpoint) {
                tracing::info!(ip = %a.ip, endpoint = %endpoint, "releasing a cluster address no local endpoint holds");
                self.release_owned_addresses(&a.network_id, endpoint, &[a.ip])
                    .await;
            }
        }
        Ok(())
    }

    /// After an endpoint was joined again by recovery or reconcile (lock held): the network is
    /// active here and its peer entries are programmed from what the kernel holds (the rejoin
    /// may have made the data plane anew).
    pub(crate) async fn cluster_rejoined(&self, guard: &mut NetGuard, network_id: &str) {
        guard.active = true;
        guard.programmed = None;
        self.reconcile_locked(guard, network_id, true).await;
    }

    /// The record other hosts get for a local endpoint.
    pub(crate) fn cluster_endpoint(
        &self,
        network_id: &str,
        ep: &crate::driver::EndpointInfo,
        name: &str,
        aliases: &[String],
    ) -> Option<ClusterEndpoint> {
        let c = self.cluster()?;
        Some(ClusterEndpoint {
            id: ep.id.clone(),
            network_id: network_id.to_owned(),
            name: name.to_owned(),
            aliases: aliases.to_vec(),
            ipv4: ep.ipv4.map(|n| n.ip()),
            ipv6: ep.ipv6.map(|n| n.ip()),
            mac: ep.mac,
            node: c.config.node.clone(),
            vtep: c.config.advertise_addr,
        })
    }

    /// After a local endpoint joined (lock held): the first one activates the network here,
    /// which programs every remote endpoint the mirror knows, read against the kernel.
    pub(crate) async fn cluster_joined(&self, guard: &mut NetGuard, network_id: &str) {
        if !guard.active {
            guard.active = true;
            guard.programmed = None;
        }
        self.reconcile_locked(guard, network_id, false).await;
    }

    /// After a local endpoint left (lock held): with no local endpoint left, the network's
    /// remote entries are forgotten (the driver removed its data plane) and so are their names.
    pub(crate) fn cluster_left(&self, guard: &mut NetGuard, network_id: &str) {
        let still_used = self.records().endpoints_on(network_id).next().is_some();
        if still_used {
            return;
        }
        guard.active = false;
        guard.programmed = None;
        for ep in std::mem::take(&mut guard.dns).values() {
            self.inner
                .resolver
                .remove_endpoint(network_id, &ep.sandbox_id);
        }
    }

    /// Brings a network's kernel entries and DNS records in line with the mirror.
    async fn reconcile_peers(&self, network_id: &str, from_kernel: bool) {
        let Some(cluster) = self.cluster() else {
            return;
        };
        let mut guard = cluster.lock(network_id).await;
        self.reconcile_locked(&mut guard, network_id, from_kernel)
            .await;
    }

    async fn reconcile_locked(&self, st: &mut NetState, network_id: &str, from_kernel: bool) {
        let Some(cluster) = self.cluster() else {
            return;
        };
        if !st.active {
            return;
        }
        let Some(info) = self
            .records()
            .networks
            .get(network_id)
            .map(|n| n.info.clone())
        else {
            return;
        };
        let remote = cluster
            .mirror()
            .remote_endpoints(network_id, &cluster.config.node);
        let desired = desired_entries(&remote);
        let Ok(driver) = self.driver(info.options.kind()) else {
            return;
        };

        // Data plane.
        let actual = match (&st.programmed, from_kernel) {
            (Some(p), false) => Some(p.clone()),
            _ => match driver.peer_entries(&info).await {
                Ok(entries) => entries.map(|e| e.into_iter().collect::<BTreeSet<_>>()),
                Err(e) => {
                    tracing::warn!(network = %info.name, error = %e, "reading the overlay's entries; will retry");
                    cluster
                        .retry
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    None
                }
            },
        };
        match actual {
            // No data plane here (yet, or any more): nothing to program.
            None => st.programmed = None,
            Some(actual) => {
                let p = plan(&actual, &desired);
                let mut done = Ok(());
                if !p.is_empty() {
                    tracing::debug!(network = %info.name, remove = p.remove.len(), add = p.add.len(), "programming overlay peers");
                    done = driver.peer_remove(&info, &p.remove).await;
                    if done.is_ok() {
                        done = driver.peer_add(&info, &p.add).await;
                    }
                }
                match done {
                    Ok(()) => st.programmed = Some(desired),
                    Err(e) => {
                        tracing::warn!(network = %info.name, error = %e, "programming overlay peers; will retry from the kernel");
                        st.programmed = None;
                        cluster
                            .retry
                            .store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            }
        }

        // Names.
        let wanted: BTreeMap<String, EndpointDns> = remote
            .iter()
            .map(|(_, e)| (e.id.clone(), e.dns()))
            .collect();
        for (id, old) in &st.dns {
            if !wanted.contains_key(id) {
                self.inner
                    .resolver
                    .remove_endpoint(network_id, &old.sandbox_id);
            }
        }
        for (id, dns) in &wanted {
            if st.dns.get(id) != Some(dns) {
                if let Err(e) = self.inner.resolver.upsert_endpoint(dns.clone()) {
                    tracing::warn!(network = %info.name, endpoint = %id, error = %e, "registering a remote endpoint with DNS");
                }
            }
        }
        st.dns = wanted;
    }

    // ---- the watcher ---------------------------------------------------------------------

    /// At open: marks the cluster networks with local endpoints active, loads the cluster's
    /// records and programs them, and starts the watcher.
    pub(crate) async fn start_cluster(&self) -> Result<()> {
        let Some(cluster) = self.cluster() else {
            return Ok(());
        };
        let local: BTreeSet<String> = self
            .records()
            .endpoints()
            .values()
            .map(|e| e.network_id.clone())
            .collect();
        let stream = self.resync(Some(&local)).await?;
        // The cluster networks are known now: what a crash interrupted on them is finished or
        // undone (the first pass, `recover_journal`, could not).
        self.recover_cluster_journal().await?;
        // A restarted controller re-attaches its endpoints to a lease of its own (the
        // previous controller's lease expires, or has already taken the records with it); an
        // endpoint whose record a crash lost, or that recovery rolled forward, gets it here.
        self.republish_endpoints().await?;
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(watch_loop(
            weak.clone(),
            stream,
            cluster.shutdown.subscribe(),
        ));
        tokio::spawn(lease_loop(
            weak.clone(),
            cluster.config.lease_ttl,
            cluster.shutdown.subscribe(),
        ));
        tokio::spawn(super::service::service_loop(
            weak,
            cluster.services.wake.clone(),
            cluster.shutdown.subscribe(),
        ));
        Ok(())
    }

    /// Watches, lists, replaces the mirror and reconciles every active network from the
    /// kernel. `activate`: networks to mark active first (at open: those with local endpoints).
    async fn resync(&self, activate: Option<&BTreeSet<String>>) -> Result<WatchStream> {
        let Some(cluster) = self.cluster() else {
            return Err(Error::InvalidRequest {
                kind: ObjectKind::Network,
                name: String::new(),
                reason: "not in cluster mode".into(),
            });
        };
        // Watch first, then list: nothing committed in between is missed.
        let stream = cluster.store().watch(KEY_CLUSTER).await?;
        let mut listing = cluster.store().list(KEY_C_NETWORKS).await?;
        listing.extend(cluster.store().list(KEY_C_ENDPOINTS).await?);
        let services = cluster.store().list(super::service::KEY_C_SERVICES).await?;
        let (touched, networks, removed) = {
            let mut mirror = cluster.mirror();
            let touched = mirror.replace(&listing);
            let networks: Vec<NetworkRecord> =
                mirror.networks.values().map(|(_, r)| r.clone()).collect();
            (touched, networks, mirror.take_removed())
        };
        self.sweep(removed);
        for t in &touched {
            if let Touched::Network(id) = t {
                if !networks.iter().any(|n| &n.info.id == id) {
                    self.forget_network(id);
                }
            }
        }
        for n in networks {
            self.learn_network(n);
        }
        if let Some(ids) = activate {
            for id in ids {
                let is_cluster = self
                    .records()
                    .networks
                    .get(id)
                    .is_some_and(|n| n.info.options.kind().is_cluster_scoped());
                if is_cluster {
                    let mut guard = cluster.lock(id).await;
                    guard.active = true;
                    guard.programmed = None;
                }
            }
        }
        let ids: Vec<String> = cluster
            .nets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        for id in ids {
            self.reconcile_peers(&id, true).await;
        }
        // Services last: their tasks join the networks just learnt.
        cluster.services.replace(&services);
        tracing::debug!(node = %cluster.config.node, "cluster state synchronised");
        Ok(stream)
    }

    async fn on_event(&self, event: WatchEvent) {
        let Some(cluster) = self.cluster() else {
            return;
        };
        if event.key().starts_with(super::service::KEY_C_SERVICES) {
            cluster.services.apply(&event);
            return;
        }
        let (touched, record, removed) = {
            let mut mirror = cluster.mirror();
            let touched = mirror.apply(&event);
            let record = match &touched {
                Some(Touched::Network(id)) => mirror.networks.get(id).map(|(_, r)| r.clone()),
                _ => None,
            };
            (touched, record, mirror.take_removed())
        };
        self.sweep(removed);
        match (touched, record) {
            (Some(Touched::Network(_)), Some(record)) => self.learn_network(record),
            (Some(Touched::Network(id)), None) => self.forget_network(&id),
            (Some(Touched::Endpoints(net)), _) => {
                // The routing mesh balances over the replicas' ingress endpoints.
                let ingress = self
                    .records()
                    .networks
                    .get(&net)
                    .is_some_and(super::is_ingress);
                if ingress {
                    cluster.services.wake.notify_one();
                }
                let known = cluster
                    .nets
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains_key(&net);
                if known {
                    self.reconcile_peers(&net, false).await;
                }
            }
            (None, _) => {}
        }
    }

    /// Releases the cluster addresses of endpoint records that went away with their host (its
    /// membership record is gone too: its lease expired), in the background. Every surviving
    /// host tries; [`Ipam::release_if_older`] lets exactly one succeed per address and never
    /// touches an allocation newer than the record. Records withdrawn by a live host are its
    /// own to release (it does, on disconnect).
    fn sweep(&self, removed: Vec<(Revision, ClusterEndpoint)>) {
        let Some(cluster) = self.cluster() else {
            return;
        };
        let removed: Vec<(Revision, ClusterEndpoint)> = removed
            .into_iter()
            .filter(|(_, e)| e.node != cluster.config.node)
            .collect();
        if removed.is_empty() {
            return;
        }
        let controller = self.clone();
        tokio::spawn(async move {
            let Some(cluster) = controller.cluster() else {
                return;
            };
            let mut alive: HashMap<String, bool> = HashMap::new();
            for (revision, ep) in removed {
                let live = match alive.get(&ep.node) {
                    Some(l) => *l,
                    None => {
                        let key = format!("{KEY_C_NODES}{}", ep.node);
                        let l = match cluster.store().get(&key).await {
                            Ok(kv) => kv.is_some(),
                            Err(e) => {
                                tracing::warn!(node = %ep.node, error = %e, "reading a membership record; not sweeping");
                                true
                            }
                        };
                        alive.insert(ep.node.clone(), l);
                        l
                    }
                };
                if live {
                    continue;
                }
                let addrs = ep
                    .ipv4
                    .map(IpAddr::V4)
                    .into_iter()
                    .chain(ep.ipv6.map(IpAddr::V6));
                for ip in addrs {
                    match cluster
                        .ipam
                        .release_if_older(&ep.network_id, ip, revision)
                        .await
                    {
                        Ok(true) => {
                            tracing::info!(node = %ep.node, endpoint = %ep.name, %ip, "released the address of a dead host's endpoint")
                        }
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(node = %ep.node, %ip, error = %e, "sweeping a dead host's address")
                        }
                    }
                }
            }
        });
    }

    /// Reconciles every known network from the kernel again, after a failure.
    async fn retry_failed(&self) {
        let Some(cluster) = self.cluster() else {
            return;
        };
        if !cluster
            .retry
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let ids: Vec<String> = cluster
            .nets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        for id in ids {
            self.reconcile_peers(&id, true).await;
        }
    }

    fn retry_pending(&self) -> bool {
        self.cluster()
            .is_some_and(|c| c.retry.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// The nodes with endpoints on a cluster network and their underlay addresses.
    pub(crate) fn cluster_peers(&self, network_id: &str) -> BTreeSet<(String, IpAddr)> {
        match self.cluster() {
            Some(c) => peers_of(&c.mirror(), network_id),
            None => BTreeSet::new(),
        }
    }
}

/// Watches the membership lease: when it is lost (it expired while the host was paused or cut
/// from the store), grants another and writes the local endpoints' records again. Holds the
/// controller only while doing so, and stops when the controller is dropped.
async fn lease_loop(
    weak: Weak<Inner>,
    ttl: Duration,
    mut shutdown: tokio::sync::watch::Receiver<()>,
) {
    let period = (ttl / 3).max(Duration::from_millis(50));
    // Set from a loss until every record is written again.
    let mut pending = false;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let Some(inner) = weak.upgrade() else { return };
        let controller = Controller { inner };
        let Some(cluster) = controller.cluster() else {
            return;
        };
        if cluster.lease_lost().await {
            tracing::warn!(node = %cluster.config.node, "cluster membership lease lost; publishing this host's endpoints again");
            pending = true;
        }
        if !pending {
            continue;
        }
        match controller.republish_endpoints().await {
            Ok(()) => pending = false,
            Err(e) => {
                tracing::warn!(error = %e, "republishing endpoints after a lost lease; will retry")
            }
        }
    }
}

/// The watcher: applies events; on a lost watch, resynchronises; after a failure to program
/// the kernel, retries from the kernel every [`RETRY_DELAY`]. Holds the controller only while
/// handling something, and stops when the controller is dropped.
async fn watch_loop(
    weak: Weak<Inner>,
    mut stream: WatchStream,
    mut shutdown: tokio::sync::watch::Receiver<()>,
) {
    loop {
        let retry = weak
            .upgrade()
            .is_some_and(|inner| Controller { inner }.retry_pending());
        let next = tokio::select! {
            _ = shutdown.changed() => return,
            next = stream.next() => Some(next),
            _ = tokio::time::sleep(RETRY_DELAY), if retry => None,
        };
        let Some(inner) = weak.upgrade() else { return };
        let controller = Controller { inner };
        let Some(next) = next else {
            controller.retry_failed().await;
            continue;
        };
        match next {
            Some(Ok(event)) => {
                controller.on_event(event).await;
                continue;
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cluster watch lost; resynchronising");
            }
            None => tracing::warn!("cluster watch ended; resynchronising"),
        }
        drop(controller);
        // Watch and list again until it works.
        loop {
            let Some(inner) = weak.upgrade() else { return };
            let controller = Controller { inner };
            match controller.resync(None).await {
                Ok(s) => {
                    stream = s;
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "cluster resync failed; retrying"),
            }
            drop(controller);
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(RETRY_DELAY) => {}
            }
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    fn ep(id: &str, node: &str, ip: [u8; 4], vtep: [u8; 4]) -> ClusterEndpoint {
        let ip = Ipv4Addr::from(ip);
        ClusterEndpoint {
            id: id.into(),
            network_id: "n1".into(),
            name: format!("c-{id}"),
            aliases: vec![],
            ipv4: Some(ip),
            ipv6: None,
            mac: crate::driver::mac_for_ipv4(ip),
            node: node.into(),
            vtep: IpAddr::V4(Ipv4Addr::from(vtep)),
        }
    }

    fn kv(key: String, value: &impl Serialize, revision: Revision) -> KeyValue {
        KeyValue {
            key,
            value: serde_json::to_vec(value).unwrap(),
            revision,
        }
    }

    fn put(e: &ClusterEndpoint, revision: Revision) -> WatchEvent {
        WatchEvent::Put(kv(endpoint_key(&e.network_id, &e.id), e, revision))
    }

    fn del(e: &ClusterEndpoint, revision: Revision) -> WatchEvent {
        WatchEvent::Delete {
            key: endpoint_key(&e.network_id, &e.id),
            revision,
        }
    }

    #[test]
    fn keys() {
        assert_eq!(
            parse_key("cluster/v1/networks/abc"),
            ClusterKey::Network("abc".into())
        );
        assert_eq!(
            parse_key("cluster/v1/endpoints/n/e"),
            ClusterKey::Endpoint {
                network: "n".into(),
                endpoint: "e".into()
            }
        );
        for other in [
            "cluster/v1/vni/4096",
            "cluster/v1/names/x",
            "cluster/v1/endpoints/n",
            "cluster/v1/endpoints/n/e/x",
            "cluster/v1/networks/",
        ] {
            assert_eq!(parse_key(other), ClusterKey::Other, "{other}");
        }
    }

    #[test]
    fn entries_of_an_endpoint() {
        let e = ep("a", "w1", [10, 0, 0, 2], [198, 18, 0, 2]);
        assert_eq!(
            e.entries(),
            vec![
                PeerEntry::Fdb {
                    mac: e.mac,
                    vtep: e.vtep
                },
                PeerEntry::Neighbour {
                    ip: "10.0.0.2".parse().unwrap(),
                    mac: e.mac
                },
            ]
        );
    }

    #[test]
    fn plan_removes_stale_and_adds_missing() {
        let a = ep("a", "w1", [10, 0, 0, 2], [198, 18, 0, 2]);
        let b = ep("b", "w2", [10, 0, 0, 3], [198, 18, 0, 3]);
        let c = ep("c", "w2", [10, 0, 0, 4], [198, 18, 0, 3]);
        let actual = desired_entries(&[(1, a.clone()), (2, b.clone())]);
        let desired = desired_entries(&[(2, b.clone()), (3, c.clone())]);
        let p = plan(&actual, &desired);
        let mut remove = a.entries();
        remove.sort();
        let mut add = c.entries();
        add.sort();
        assert_eq!(p, PeerPlan { remove, add });
        assert!(plan(&desired, &desired).is_empty());
    }

    #[test]
    fn a_moved_endpoint_changes_destination() {
        // Same IP and MAC, now on another host: the FDB entry is replaced, the neighbour kept.
        let old = ep("a", "w1", [10, 0, 0, 2], [198, 18, 0, 2]);
        let new = ep("b", "w2", [10, 0, 0, 2], [198, 18, 0, 3]);
        let p = plan(
            &desired_entries(&[(1, old.clone())]),
            &desired_entries(&[(2, new.clone())]),
        );
        assert_eq!(
            p.remove,
            vec![PeerEntry::Fdb {
                mac: old.mac,
                vtep: old.vtep
            }]
        );
        assert_eq!(
            p.add,
            vec![PeerEntry::Fdb {
                mac: new.mac,
                vtep: new.vtep
            }]
        );
    }

    #[test]
    fn conflicting_records_newest_wins() {
        let old = ep("a", "w1", [10, 0, 0, 2], [198, 18, 0, 2]);
        let new = ep("b", "w2", [10, 0, 0, 2], [198, 18, 0, 3]);
        for order in [
            vec![(1, old.clone()), (5, new.clone())],
            vec![(5, new.clone()), (1, old.clone())],
        ] {
            let d = desired_entries(&order);
            assert_eq!(d.len(), 2, "{d:?}");
            assert!(d.contains(&PeerEntry::Fdb {
                mac: new.mac,
                vtep: new.vtep
            }));
        }
    }

    #[test]
    fn mirror_ignores_events_older_than_its_listing() {
        let a = ep("a", "w1", [10, 0, 0, 2], [198, 18, 0, 2]);
        let b = ep("b", "w1", [10, 0, 0, 3], [198, 18, 0, 2]);
        let mut m = Mirror::default();
        // The listing (at revision 7) already has a and not b (b was put at 5, deleted at 6).
        let touched = m.replace(&[kv(endpoint_key("n1", "a"), &a, 4)]);
        assert_eq!(touched, vec![Touched::Endpoints("n1".into())]);
        // Events that raced the listing: a's put (4), b's put (5) and delete (6).
        assert_eq!(m.apply(&put(&a, 4)), None);
        assert_eq!(m.apply(&put(&b, 5)), Some(Touched::Endpoints("n1".into())));
        assert_eq!(m.apply(&del(&b, 6)), Some(Touched::Endpoints("n1".into())));
        // A replayed put older than the delete does not resurrect it.
        assert_eq!(m.apply(&put(&b, 5)), None);
        assert_eq!(m.remote_endpoints("n1", "me"), vec![(4, a.clone())]);
        // Own endpoints are not remote.
        assert!(m.remote_endpoints("n1", "w1").is_empty());
        // Deleting an unknown key changes nothing.
        assert_eq!(m.apply(&del(&b, 9)), None);
    }

    #[test]
    fn resync_reports_what_changed_while_the_watch_was_lost() {
        let a = ep("a", "w1", [10, 0, 0, 2], [198, 18, 0, 2]);
        let b = ep("b", "w2", [10, 0, 0, 3], [198, 18, 0, 3]);
        let mut m = Mirror::default();
        m.replace(&[kv(endpoint_key("n1", "a"), &a, 1)]);
        // While lost: a left, b joined on another network.
        let mut b2 = b.clone();
        b2.network_id = "n2".into();
        let touched = m.replace(&[kv(endpoint_key("n2", "b"), &b2, 3)]);
        assert_eq!(
            touched,
            vec![
                Touched::Endpoints("n1".into()),
                Touched::Endpoints("n2".into())
            ]
        );
        assert!(m.remote_endpoints("n1", "me").is_empty());
        // Nothing changed: nothing reported.
        assert!(m.replace(&[kv(endpoint_key("n2", "b"), &b2, 3)]).is_empty());
    }

    #[test]
    fn peers_are_nodes() {
        let mut m = Mirror::default();
        let a = ep("a", "w1", [10, 0, 0, 2], [198, 18, 0, 2]);
        let b = ep("b", "w1", [10, 0, 0, 3], [198, 18, 0, 2]);
        m.apply(&put(&a, 1));
        m.apply(&put(&b, 2));
        let peers = peers_of(&m, "n1");
        assert_eq!(
            peers.into_iter().collect::<Vec<_>>(),
            vec![("w1".to_owned(), a.vtep)]
        );
    }
}
