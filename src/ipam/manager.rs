//! [`Ipam`]: subnets for networks and addresses for endpoints, in memory with write-through to
//! a [`Store`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use super::allocator::{
    AllocError, AllocationMode, BROADCAST_ADDRESS, NETWORK_ADDRESS, SubnetAllocator,
};
use super::net::{canonical, contains_net, has_host_bits, overlaps};
use super::pool::{
    CLUSTER_DEFAULT_POOLS, LOCAL_DEFAULT_POOLS, Occupied, PoolSpec, first_free_subnet, ula_pool,
};
use super::{Family, IpamConfig, IpamError};
use crate::store::{KeyValue, MAX_BATCH_OPS, Op, Revision, Store, StoreError};

/// Whether a network lives on this host only or is shared by a cluster of hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// Networks of one host (bridge, macvlan...).
    Local,
    /// Networks shared by several hosts through a shared store (overlay).
    Cluster,
}

impl Scope {
    /// The key segment of the scope: `local` or `cluster`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Local => "local",
            Scope::Cluster => "cluster",
        }
    }
}

/// How an [`Ipam`] behaves: its scope, address pools and allocation mode.
///
/// ```
/// use wharf::ipam::{IpamOptions, PoolSpec, Scope};
/// let opts = IpamOptions::local(b"machine-id-bytes")
///     .with_pools(vec![PoolSpec::new("10.200.0.0/16".parse().unwrap(), 24).unwrap()]);
/// assert_eq!(opts.scope, Scope::Local);
/// assert_eq!(opts.pools[0].to_owned().base.to_string(), "10.200.0.0/16");
/// // The IPv6 default (a ULA /48 from the host id) is kept: only IPv4 pools were given.
/// assert!(opts.pools.iter().any(|p| p.base.is_ipv6()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamOptions {
    /// The scope; it is also part of every store key.
    pub scope: Scope,
    /// Address pools of both families, in the order they are used.
    pub pools: Vec<PoolSpec>,
    /// How the next address is chosen.
    pub mode: AllocationMode,
}

impl IpamOptions {
    /// Local networks: Docker's local default pools, a ULA /48 derived from `host_id` (a stable
    /// host identifier such as the contents of `/etc/machine-id`), lowest-free allocation.
    pub fn local(host_id: &[u8]) -> Self {
        let mut pools = LOCAL_DEFAULT_POOLS.to_vec();
        pools.push(ula_pool(host_id));
        IpamOptions {
            scope: Scope::Local,
            pools,
            mode: AllocationMode::Lowest,
        }
    }

    /// Cluster networks: 10.0.0.0/8 cut into /24s, a ULA /48 derived from `cluster_id` (an
    /// identifier every host of the cluster shares), serial allocation.
    pub fn cluster(cluster_id: &[u8]) -> Self {
        let mut pools = CLUSTER_DEFAULT_POOLS.to_vec();
        pools.push(ula_pool(cluster_id));
        IpamOptions {
            scope: Scope::Cluster,
            pools,
            mode: AllocationMode::Serial,
        }
    }

    /// Replaces the pools of each family that `pools` contains (like Docker's
    /// `default-address-pools`); the other family keeps its pools.
    pub fn with_pools(mut self, pools: Vec<PoolSpec>) -> Self {
        let families: HashSet<Family> = pools.iter().map(PoolSpec::family).collect();
        self.pools.retain(|p| !families.contains(&p.family()));
        let mut new = pools;
        new.append(&mut self.pools);
        self.pools = new;
        self
    }

    /// Sets the allocation mode.
    pub fn with_mode(mut self, mode: AllocationMode) -> Self {
        self.mode = mode;
        self
    }
}

/// A request for a network's subnet.
///
/// ```
/// use wharf::ipam::{Family, IpamConfig, SubnetRequest};
/// let host_routes = vec!["172.18.0.0/16".parse().unwrap()];
/// let req = SubnetRequest::new("3f2a9c", "alpine-net").avoiding(host_routes);
/// assert_eq!(req.family, Family::V4);
/// let v6 = SubnetRequest::new("3f2a9c", "alpine-net").ipv6();
/// let given = SubnetRequest::new("77ab01", "db-net")
///     .with_config(IpamConfig::new().parse_subnet("10.9.0.0/24")?);
/// # Ok::<(), wharf::ipam::IpamError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetRequest {
    /// The network's id: part of store keys, so non-empty and without `/`.
    pub network_id: String,
    /// The network's name, used in error messages.
    pub network_name: String,
    /// The family to take from the pools when `config.subnet` is `None`.
    pub family: Family,
    /// What the user asked for.
    pub config: IpamConfig,
    /// Prefixes a pool subnet must not overlap: the host's routes (destination prefixes; a
    /// default route, of length 0, is ignored) and anything else the caller keeps clear of.
    /// A user-given subnet is not checked against these (Docker does not either).
    pub avoid: Vec<IpNetwork>,
}

impl SubnetRequest {
    /// An IPv4 request with everything defaulted.
    pub fn new(network_id: impl Into<String>, network_name: impl Into<String>) -> Self {
        SubnetRequest {
            network_id: network_id.into(),
            network_name: network_name.into(),
            family: Family::V4,
            config: IpamConfig::default(),
            avoid: Vec::new(),
        }
    }

    /// Asks for an IPv6 subnet when none is given.
    pub fn ipv6(mut self) -> Self {
        self.family = Family::V6;
        self
    }

    /// Uses the user's configuration.
    pub fn with_config(mut self, config: IpamConfig) -> Self {
        self.config = config;
        self
    }

    /// Keeps pool subnets clear of these prefixes (the host's routes).
    pub fn avoiding(mut self, prefixes: Vec<IpNetwork>) -> Self {
        self.avoid = prefixes;
        self
    }

    /// Checks the parts of the request that need no state (a well-formed subnet without host
    /// bits, a gateway, range and auxiliary addresses inside it), so that a caller asking for
    /// several subnets can refuse a bad one before reserving any.
    ///
    /// ```
    /// use wharf::ipam::{IpamConfig, SubnetRequest};
    /// let bad = IpamConfig::new().with_subnet("fd00::5/64".parse().unwrap());
    /// assert!(SubnetRequest::new("n1", "net").ipv6().with_config(bad).validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), IpamError> {
        validate_request(self).map(|_| ())
    }
}

/// A subnet held by a network; also the stored record (`ipam/v1/<scope>/subnets/<cidr>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetLease {
    /// The network's id.
    pub network_id: String,
    /// The network's name.
    pub network_name: String,
    /// The subnet.
    pub subnet: IpNetwork,
    /// Where addresses are allocated, if narrower than the subnet.
    pub ip_range: Option<IpNetwork>,
    /// The gateway (reserved).
    pub gateway: IpAddr,
    /// Auxiliary addresses (reserved), by name.
    pub aux_addresses: BTreeMap<String, IpAddr>,
}

impl SubnetLease {
    /// The allocatable range: the ip-range, or the subnet.
    pub fn range(&self) -> IpNetwork {
        self.ip_range.unwrap_or(self.subnet)
    }

    /// The family.
    pub fn family(&self) -> Family {
        Family::of_net(self.subnet)
    }
}

/// What address an endpoint asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressRequest {
    /// Any free address of this family: the subnets of the network are tried in the order they
    /// were requested.
    Next(Family),
    /// Exactly this address (it must be free and inside the allocatable range).
    Static(IpAddr),
}

/// An address reserved in memory by [`Ipam::reserve`], whose store key the caller writes in a
/// batch of its own ([`Reservation::op`]), together with whatever else must be committed
/// atomically with it (the controller's endpoint record). Settle it with [`Ipam::confirm`]
/// once the batch is applied, or [`Ipam::abandon`] if it is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    network_id: String,
    subnet: IpNetwork,
    ip: IpAddr,
    key: String,
    value: Vec<u8>,
}

impl Reservation {
    /// The reserved address.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The store key of the address.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The op that takes the address in the store: create-if-absent of its key, so a batch
    /// fails with [`StoreError::AlreadyExists`] if another allocator sharing the store took it.
    pub fn op(&self) -> Op {
        Op::Create {
            key: self.key.clone(),
            value: self.value.clone(),
        }
    }
}

/// The value of an address key (`ipam/v1/<scope>/addrs/<network-id>/<ip>`).
#[derive(Debug, Serialize, Deserialize)]
struct AddressRecord {
    subnet: IpNetwork,
    /// Who took it, if the caller said ([`Ipam::allocate_for`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
}

/// An allocated address as the store holds it, with its owner if it was allocated with one
/// ([`Ipam::allocate_for`]); listed by [`Ipam::stored_addresses`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAddress {
    /// The network it belongs to.
    pub network_id: String,
    /// The address.
    pub ip: IpAddr,
    /// The owner given at allocation, if any.
    pub owner: Option<String>,
}

/// The value of the subnet-table key, bumped with compare-and-swap on every subnet creation so
/// that two allocators (threads or processes sharing a store) never pick overlapping subnets.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SubnetTable {
    changes: u64,
}

/// What to do after the store answered an address allocation.
enum Settled {
    Done(Result<IpAddr, IpamError>),
    Retry,
    TakeBack(String),
}

/// How often a subnet request retries when another allocator changed the subnet table first.
const SUBNET_ATTEMPTS: usize = 32;

/// The IPAM allocator of one scope: pools -> subnets -> addresses.
///
/// State is held in memory (the fast path) and written through to a [`Store`]: a change is
/// reserved in memory, persisted, and undone in memory if persisting fails, so nothing leaks and
/// a returned address is always committed. [`Ipam::open`] rebuilds from the store, so an address
/// is never handed out twice across restarts.
///
/// Persistence layout (keys; values are JSON):
/// - `ipam/v1/<scope>/subnets/<cidr>`: a [`SubnetLease`] (gateway and auxiliary addresses are
///   part of it, so a subnet and its reservations are written atomically);
/// - `ipam/v1/<scope>/addrs/<network-id>/<ip>`: one key per allocated address, created with
///   create-if-absent, so two allocators sharing a store (two controllers, or hosts sharing etcd
///   for cluster networks) never hand out the same address;
/// - `ipam/v1/<scope>/subnet-table`: a counter compare-and-swapped with every subnet creation,
///   so concurrent subnet requests never overlap.
///
/// The handle is cheap to clone and safe to use from many tasks.
///
/// ```
/// use std::sync::Arc;
/// use wharf::ipam::{AddressRequest, Family, Ipam, IpamOptions, SubnetRequest};
/// use wharf::store::MemoryStore;
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let ipam = Ipam::open(Arc::new(MemoryStore::new()), IpamOptions::local(b"host-1")).await?;
/// let bridge = ipam.request_subnet(SubnetRequest::new("n1", "bridge")).await?;
/// assert_eq!(bridge.subnet.to_string(), "172.17.0.0/16");
/// assert_eq!(bridge.gateway.to_string(), "172.17.0.1");
/// let ip = ipam.allocate("n1", AddressRequest::Next(Family::V4)).await?;
/// assert_eq!(ip.to_string(), "172.17.0.2");
/// ipam.release("n1", ip).await?;
/// ipam.release_subnet("n1", bridge.subnet).await?;
/// # Ok::<(), wharf::ipam::IpamError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Ipam {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    options: IpamOptions,
    prefix: String,
    state: Mutex<State>,
    /// Serializes this allocator's subnet requests (rare), so that optimistic retries are only
    /// needed against other allocators sharing the store.
    subnet_requests: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    subnets: BTreeMap<IpNetwork, Entry>,
    /// Network id -> its subnets, in request order.
    networks: HashMap<String, Vec<IpNetwork>>,
}

#[derive(Debug)]
struct Entry {
    lease: SubnetLease,
    alloc: SubnetAllocator,
    /// Addresses whose store write is in progress (allocation or release).
    in_flight: HashSet<IpAddr>,
    /// Set while the subnet is being released: no new allocations.
    releasing: bool,
}

impl State {
    fn insert(&mut self, entry: Entry) {
        let subnet = entry.lease.subnet;
        // Entries the store no longer has (released by another allocator) may overlap.
        let stale: Vec<IpNetwork> = self
            .subnets
            .keys()
            .copied()
            .filter(|s| overlaps(*s, subnet))
            .collect();
        for s in stale {
            self.remove(s);
        }
        self.networks
            .entry(entry.lease.network_id.clone())
            .or_default()
            .push(subnet);
        self.subnets.insert(subnet, entry);
    }

    fn remove(&mut self, subnet: IpNetwork) -> Option<Entry> {
        let entry = self.subnets.remove(&subnet)?;
        if let Some(list) = self.networks.get_mut(&entry.lease.network_id) {
            list.retain(|s| *s != subnet);
            if list.is_empty() {
                self.networks.remove(&entry.lease.network_id);
            }
        }
        Some(entry)
    }

    /// The entry of `network_id` whose subnet contains `ip`.
    fn entry_for(&mut self, network_id: &str, ip: IpAddr) -> Option<&mut Entry> {
        let subnet = *self
            .networks
            .get(network_id)?
            .iter()
            .find(|s| s.contains(ip))?;
        self.subnets.get_mut(&subnet)
    }

    fn network_name(&self, network_id: &str) -> String {
        self.networks
            .get(network_id)
            .and_then(|l| l.first())
            .and_then(|s| self.subnets.get(s))
            .map(|e| e.lease.network_name.clone())
            .unwrap_or_else(|| network_id.to_owned())
    }
}

fn corrupt(key: &str, reason: impl std::fmt::Display) -> IpamError {
    IpamError::CorruptRecord {
        key: key.to_owned(),
        reason: reason.to_string(),
    }
}

fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, IpamError> {
    serde_json::to_vec(value).map_err(|e| corrupt(key, e))
}

fn validate_network_id(id: &str) -> Result<(), IpamError> {
    if id.is_empty() || id.contains('/') {
        return Err(IpamError::InvalidNetworkId { id: id.to_owned() });
    }
    Ok(())
}

/// Builds the in-memory allocator of a lease, checking its reservations.
fn make_entry(lease: SubnetLease, mode: AllocationMode) -> Result<Entry, IpamError> {
    let name = &lease.network_name;
    let mut alloc = SubnetAllocator::new(lease.subnet, lease.ip_range, mode).map_err(|_| {
        IpamError::RangeOutsideSubnet {
            network: name.clone(),
            range: lease.range(),
            subnet: lease.subnet,
        }
    })?;
    let mut reserve = |ip: IpAddr, what: String| -> Result<(), IpamError> {
        match alloc.reserve(ip, &what) {
            Ok(()) => Ok(()),
            Err(AllocError::Reserved(by)) if by != NETWORK_ADDRESS && by != BROADCAST_ADDRESS => {
                Err(IpamError::DuplicateReservation {
                    network: name.clone(),
                    address: ip,
                    first: by,
                    second: what,
                })
            }
            Err(_) => Err(match what.strip_prefix("auxiliary address ") {
                Some(aux) => IpamError::AuxAddressOutsideSubnet {
                    network: name.clone(),
                    name: aux.to_owned(),
                    address: ip,
                    subnet: lease.subnet,
                },
                None => IpamError::GatewayOutsideSubnet {
                    network: name.clone(),
                    gateway: ip,
                    subnet: lease.subnet,
                },
            }),
        }
    };
    for (aux, ip) in &lease.aux_addresses {
        reserve(*ip, format!("auxiliary address {aux}"))?;
    }
    reserve(lease.gateway, "gateway".to_owned())?;
    Ok(Entry {
        lease,
        alloc,
        in_flight: HashSet::new(),
        releasing: false,
    })
}

/// Validates a user configuration and builds the lease for `subnet` (the user's or the pool's).
fn build_lease(
    req: &SubnetRequest,
    subnet: IpNetwork,
    mode: AllocationMode,
) -> Result<Entry, IpamError> {
    let cfg = &req.config;
    // Reserve the auxiliary addresses first, so that the default gateway skips them.
    let mut probe = SubnetLease {
        network_id: req.network_id.clone(),
        network_name: req.network_name.clone(),
        subnet,
        ip_range: cfg.ip_range,
        gateway: cfg.gateway.unwrap_or(subnet.network()),
        aux_addresses: cfg.aux_addresses.clone(),
    };
    if cfg.gateway.is_none() {
        let mut alloc = SubnetAllocator::new(subnet, cfg.ip_range, mode).map_err(|_| {
            IpamError::RangeOutsideSubnet {
                network: req.network_name.clone(),
                range: probe.range(),
                subnet,
            }
        })?;
        for (aux, ip) in &cfg.aux_addresses {
            // A bad auxiliary address is reported by `make_entry` below, precisely.
            let _ = alloc.reserve(*ip, aux);
        }
        probe.gateway = alloc
            .first_usable()
            .ok_or_else(|| IpamError::AddressesExhausted {
                network: req.network_name.clone(),
                range: subnet,
            })?;
    }
    make_entry(probe, mode)
}

/// Checks the parts of a request that need no state.
fn validate_request(req: &SubnetRequest) -> Result<Family, IpamError> {
    validate_network_id(&req.network_id)?;
    let cfg = &req.config;
    let name = &req.network_name;
    let Some(subnet) = cfg.subnet else {
        let what = if cfg.ip_range.is_some() {
            Some("ip-range")
        } else if cfg.gateway.is_some() {
            Some("gateway")
        } else if !cfg.aux_addresses.is_empty() {
            Some("auxiliary address")
        } else {
            None
        };
        if let Some(what) = what {
            return Err(IpamError::MissingSubnet {
                network: name.clone(),
                what,
            });
        }
        return Ok(req.family);
    };
    for (what, net) in [("subnet", Some(subnet)), ("ip-range", cfg.ip_range)] {
        if let Some(net) = net.filter(|n| has_host_bits(*n)) {
            return Err(IpamError::HostBitsSet {
                network: name.clone(),
                what,
                given: net,
                canonical: canonical(net),
            });
        }
    }
    if let Some(range) = cfg.ip_range.filter(|r| !contains_net(subnet, *r)) {
        return Err(IpamError::RangeOutsideSubnet {
            network: name.clone(),
            range,
            subnet,
        });
    }
    Ok(Family::of_net(subnet))
}

impl Ipam {
    /// Opens the allocator of `options.scope` on `store`, rebuilding its state from the store.
    ///
    /// Address keys whose subnet no longer exists (left by a release interrupted by a crash)
    /// are deleted.
    pub async fn open(store: Arc<dyn Store>, options: IpamOptions) -> Result<Self, IpamError> {
        for pool in &options.pools {
            pool.validate()?;
        }
        let prefix = format!("ipam/v1/{}/", options.scope.as_str());
        let ipam = Ipam {
            inner: Arc::new(Inner {
                store,
                options,
                prefix,
                state: Mutex::new(State::default()),
                subnet_requests: tokio::sync::Mutex::new(()),
            }),
        };
        ipam.reload().await?;
        Ok(ipam)
    }

    /// The options this allocator was opened with.
    pub fn options(&self) -> &IpamOptions {
        &self.inner.options
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every change under the lock is a few in-memory steps that cannot panic half-way in a
        // way that breaks the invariants (and the store stays authoritative), so a poisoned lock
        // is still usable.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn subnets_prefix(&self) -> String {
        format!("{}subnets/", self.inner.prefix)
    }

    fn subnet_key(&self, subnet: IpNetwork) -> String {
        format!("{}subnets/{subnet}", self.inner.prefix)
    }

    fn addrs_prefix(&self) -> String {
        format!("{}addrs/", self.inner.prefix)
    }

    fn addr_key(&self, network_id: &str, ip: IpAddr) -> String {
        format!("{}addrs/{network_id}/{ip}", self.inner.prefix)
    }

    /// The network id and address of an address key.
    fn parse_addr_key<'k>(&self, key: &'k str) -> Result<(&'k str, IpAddr), IpamError> {
        let rest = key.strip_prefix(&self.addrs_prefix()).unwrap_or_default();
        let (network_id, ip) = rest
            .split_once('/')
            .ok_or_else(|| corrupt(key, "malformed address key"))?;
        let ip: IpAddr = ip.parse().map_err(|_| corrupt(key, "malformed address"))?;
        Ok((network_id, ip))
    }

    fn table_key(&self) -> String {
        format!("{}subnet-table", self.inner.prefix)
    }

    fn decode_leases(&self, kvs: &[KeyValue]) -> Result<Vec<SubnetLease>, IpamError> {
        kvs.iter()
            .map(|kv| serde_json::from_slice(&kv.value).map_err(|e| corrupt(&kv.key, e)))
            .collect()
    }

    /// Re-reads the whole state from the store (done by [`open`](Self::open); call it to pick up
    /// changes made by other allocators sharing the store).
    ///
    /// Allocations in flight during a reload stay safe: an address the rebuilt state misses is
    /// still protected by its key in the store.
    pub async fn reload(&self) -> Result<(), IpamError> {
        let store = &self.inner.store;
        // Addresses first: an address key listed here whose subnet is absent from the later
        // subnet listing is an orphan (subnets are created before, and deleted after, their
        // addresses).
        let addrs = store.list(&self.addrs_prefix()).await?;
        let subnet_kvs = store.list(&self.subnets_prefix()).await?;
        let mut state = State::default();
        for lease in self.decode_leases(&subnet_kvs)? {
            state.insert(make_entry(lease, self.inner.options.mode)?);
        }
        let mut orphans = Vec::new();
        for kv in addrs {
            let (network_id, ip) = self.parse_addr_key(&kv.key)?;
            match state.entry_for(network_id, ip) {
                Some(entry) => {
                    if !entry.alloc.restore(ip).unwrap_or(false) {
                        tracing::warn!(key = %kv.key, "stored address is reserved or duplicate");
                    }
                }
                None => orphans.push(Op::DeleteIf {
                    key: kv.key,
                    expected: kv.revision,
                }),
            }
        }
        {
            let mut current = self.state();
            // Keep the markers of operations in progress: a subnet being released stays so, and
            // an address whose store write is pending stays taken until that write settles.
            for (subnet, old) in &current.subnets {
                if let Some(new) = state
                    .subnets
                    .get_mut(subnet)
                    .filter(|e| e.lease.network_id == old.lease.network_id)
                {
                    new.releasing = old.releasing;
                    for ip in &old.in_flight {
                        let _ = new.alloc.restore(*ip);
                        new.in_flight.insert(*ip);
                    }
                }
            }
            *current = state;
        }
        if !orphans.is_empty() {
            tracing::warn!(count = orphans.len(), "deleting orphaned IPAM address keys");
            for chunk in orphans.chunks(MAX_BATCH_OPS) {
                // Best effort: a conflict means someone else changed or removed them.
                if let Err(e) = store.apply(chunk.to_vec()).await {
                    tracing::warn!(error = %e, "could not delete orphaned IPAM address keys");
                }
            }
        }
        Ok(())
    }

    /// Loads the state again if `network_id` is unknown here (created by another allocator).
    async fn ensure_loaded(&self, network_id: &str) -> Result<(), IpamError> {
        validate_network_id(network_id)?;
        if !self.state().networks.contains_key(network_id) {
            self.reload().await?;
        }
        Ok(())
    }

    /// Allocates a subnet for a network: the user's (validated, no overlap with any network)
    /// or, if none is given, the first pool subnet of the family that overlaps no network and no
    /// prefix in `req.avoid`. Reserves the gateway (given, or the first usable address) and the
    /// auxiliary addresses. On error nothing is reserved.
    pub async fn request_subnet(&self, req: SubnetRequest) -> Result<SubnetLease, IpamError> {
        let family = validate_request(&req)?;
        let mode = self.inner.options.mode;
        // Validate the user's gateway/range/aux before touching the store.
        if let Some(subnet) = req.config.subnet {
            build_lease(&req, subnet, mode)?;
        }
        let _serial = self.inner.subnet_requests.lock().await;
        let store = &self.inner.store;
        let table_key = self.table_key();
        for _ in 0..SUBNET_ATTEMPTS {
            let table = store.get(&table_key).await?;
            let leases = self.decode_leases(&store.list(&self.subnets_prefix()).await?)?;
            let subnet = match req.config.subnet {
                Some(subnet) => {
                    if let Some(other) = leases.iter().find(|l| overlaps(l.subnet, subnet)) {
                        return Err(IpamError::SubnetOverlap {
                            network: req.network_name.clone(),
                            subnet,
                            other_network: other.network_name.clone(),
                            other_subnet: other.subnet,
                        });
                    }
                    subnet
                }
                None => {
                    // A default route (length 0) would overlap everything: it is not a
                    // reason to skip a subnet.
                    let occupied = Occupied::new(
                        family,
                        leases
                            .iter()
                            .map(|l| l.subnet)
                            .chain(req.avoid.iter().copied().filter(|r| r.prefix() > 0)),
                    );
                    first_free_subnet(&self.inner.options.pools, family, &occupied).ok_or_else(
                        || IpamError::PoolsExhausted {
                            network: req.network_name.clone(),
                            family: family.name(),
                        },
                    )?
                }
            };
            let entry = build_lease(&req, subnet, mode)?;
            let subnet_key = self.subnet_key(subnet);
            let (table_op, changes) = match &table {
                None => (None, 1),
                Some(kv) => {
                    let t: SubnetTable =
                        serde_json::from_slice(&kv.value).map_err(|e| corrupt(&kv.key, e))?;
                    (Some(kv.revision), t.changes + 1)
                }
            };
            let table_value = encode(&table_key, &SubnetTable { changes })?;
            let ops = vec![
                match table_op {
                    None => Op::Create {
                        key: table_key.clone(),
                        value: table_value,
                    },
                    Some(expected) => Op::Swap {
                        key: table_key.clone(),
                        expected,
                        value: table_value,
                    },
                },
                Op::Create {
                    key: subnet_key.clone(),
                    value: encode(&subnet_key, &entry.lease)?,
                },
            ];
            match store.apply(ops).await {
                Ok(_) => {
                    let lease = entry.lease.clone();
                    self.state().insert(entry);
                    tracing::debug!(network = %lease.network_name, subnet = %lease.subnet, "subnet allocated");
                    return Ok(lease);
                }
                Err(StoreError::Conflict { .. } | StoreError::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(IpamError::Contention {
            network: req.network_name,
        })
    }

    /// Releases a network's subnet and every address allocated in it; the subnet returns to its
    /// pool. Addresses are deleted before the subnet record, so a crash half-way leaves a subnet
    /// that can be released again, never an address without its subnet.
    pub async fn release_subnet(
        &self,
        network_id: &str,
        subnet: IpNetwork,
    ) -> Result<(), IpamError> {
        self.ensure_loaded(network_id).await?;
        let name = {
            let mut state = self.state();
            let name = state.network_name(network_id);
            let entry = state
                .subnets
                .get_mut(&subnet)
                .filter(|e| e.lease.network_id == network_id)
                .ok_or_else(|| IpamError::UnknownNetwork {
                    network: name.clone(),
                    what: format!("subnet {subnet}"),
                })?;
            if entry.releasing {
                return Err(IpamError::SubnetReleasing {
                    network: name,
                    subnet,
                });
            }
            entry.releasing = true;
            name
        };
        let result = self.delete_subnet_keys(network_id, subnet).await;
        let mut state = self.state();
        match result {
            Ok(()) => {
                state.remove(subnet);
                tracing::debug!(network = %name, %subnet, "subnet released");
                Ok(())
            }
            Err(e) => {
                if let Some(entry) = state.subnets.get_mut(&subnet) {
                    entry.releasing = false;
                }
                Err(e)
            }
        }
    }

    async fn delete_subnet_keys(
        &self,
        network_id: &str,
        subnet: IpNetwork,
    ) -> Result<(), IpamError> {
        let store = &self.inner.store;
        let prefix = format!("{}addrs/{network_id}/", self.inner.prefix);
        loop {
            let keys: Vec<Op> = store
                .list(&prefix)
                .await?
                .into_iter()
                .filter(|kv| {
                    kv.key[prefix.len()..]
                        .parse::<IpAddr>()
                        .is_ok_and(|ip| subnet.contains(ip))
                })
                .map(|kv| Op::Delete { key: kv.key })
                .collect();
            if keys.is_empty() {
                break;
            }
            for chunk in keys.chunks(MAX_BATCH_OPS) {
                match store.apply(chunk.to_vec()).await {
                    // Someone released one of them meanwhile: list again.
                    Ok(_) | Err(StoreError::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        match store.delete(&self.subnet_key(subnet)).await {
            Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Allocates an address for an endpoint of a network.
    ///
    /// Never returns the network, broadcast, gateway or an auxiliary address, nor an address
    /// that is allocated (here or by another allocator sharing the store). A [`Static`] address
    /// must be free and inside the allocatable range.
    ///
    /// [`Static`]: AddressRequest::Static
    pub async fn allocate(
        &self,
        network_id: &str,
        request: AddressRequest,
    ) -> Result<IpAddr, IpamError> {
        self.allocate_owned(network_id, request, None).await
    }

    /// [`allocate`](Self::allocate), recording `owner` (an opaque name, e.g. a host and an
    /// endpoint) in the address key, so that the address can later be released only by its
    /// owner ([`release_owned`](Self::release_owned)) and found by it
    /// ([`stored_addresses`](Self::stored_addresses)) after a crash lost track of it.
    pub async fn allocate_for(
        &self,
        network_id: &str,
        request: AddressRequest,
        owner: &str,
    ) -> Result<IpAddr, IpamError> {
        self.allocate_owned(network_id, request, Some(owner)).await
    }

    async fn allocate_owned(
        &self,
        network_id: &str,
        request: AddressRequest,
        owner: Option<&str>,
    ) -> Result<IpAddr, IpamError> {
        self.ensure_loaded(network_id).await?;
        let mut reloaded = false;
        loop {
            let picked = self.pick(network_id, request);
            let (ip, subnet) = match picked {
                Ok(p) => p,
                // Cluster networks: another host may have released addresses we still count.
                Err(IpamError::AddressesExhausted { .. })
                    if !reloaded && self.inner.options.scope == Scope::Cluster =>
                {
                    reloaded = true;
                    self.reload().await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let key = self.addr_key(network_id, ip);
            let record = AddressRecord {
                subnet,
                owner: owner.map(str::to_owned),
            };
            let value = encode(&key, &record)?;
            let result = self.inner.store.create(&key, value).await;
            let outcome = self.settle_allocation(network_id, subnet, ip, result);
            match outcome {
                Settled::Done(r) => return r,
                Settled::Retry => {
                    if let AddressRequest::Static(_) = request {
                        return Err(IpamError::AddressInUse {
                            network: self.state().network_name(network_id),
                            address: ip,
                        });
                    }
                }
                Settled::TakeBack(network) => {
                    if let Err(e) = self.inner.store.delete(&key).await {
                        tracing::warn!(%key, error = %e, "could not delete an address of a released subnet");
                    }
                    return Err(IpamError::SubnetReleasing { network, subnet });
                }
            }
        }
    }

    /// Reserves an address like [`allocate`](Self::allocate) but only in memory: the caller
    /// commits [`Reservation::op`] in its own batch, then calls [`confirm`](Self::confirm) (or
    /// [`abandon`](Self::abandon) if the batch failed). Until then the address is taken here and
    /// no other call hands it out. This lets an endpoint's address and its record be one atomic,
    /// single-fsync commit.
    pub async fn reserve(
        &self,
        network_id: &str,
        request: AddressRequest,
    ) -> Result<Reservation, IpamError> {
        self.ensure_loaded(network_id).await?;
        let (ip, subnet) = self.pick(network_id, request)?;
        let key = self.addr_key(network_id, ip);
        let value = match encode(
            &key,
            &AddressRecord {
                subnet,
                owner: None,
            },
        ) {
            Ok(v) => v,
            Err(e) => {
                self.abandon_in_memory(network_id, subnet, ip, false);
                return Err(e);
            }
        };
        Ok(Reservation {
            network_id: network_id.to_owned(),
            subnet,
            ip,
            key,
            value,
        })
    }

    /// The caller's batch with [`Reservation::op`] was applied: the address is allocated.
    /// Fails with [`IpamError::SubnetReleasing`] if the subnet was released meanwhile (the
    /// caller then deletes the key again and gives up).
    pub fn confirm(&self, r: &Reservation) -> Result<(), IpamError> {
        let mut state = self.state();
        let entry = state
            .subnets
            .get_mut(&r.subnet)
            .filter(|e| e.lease.network_id == r.network_id);
        match entry {
            Some(entry) if !entry.releasing => {
                entry.in_flight.remove(&r.ip);
                Ok(())
            }
            Some(entry) => {
                entry.in_flight.remove(&r.ip);
                Err(IpamError::SubnetReleasing {
                    network: entry.lease.network_name.clone(),
                    subnet: r.subnet,
                })
            }
            None => Err(IpamError::SubnetReleasing {
                network: r.network_id.clone(),
                subnet: r.subnet,
            }),
        }
    }

    /// The caller's batch with [`Reservation::op`] was not applied: the address is free again,
    /// unless `taken_elsewhere` (the batch failed because the key exists: another allocator
    /// sharing the store holds it, so it stays marked here).
    pub fn abandon(&self, r: &Reservation, taken_elsewhere: bool) {
        self.abandon_in_memory(&r.network_id, r.subnet, r.ip, taken_elsewhere);
    }

    fn abandon_in_memory(&self, network_id: &str, subnet: IpNetwork, ip: IpAddr, keep: bool) {
        let mut state = self.state();
        if let Some(entry) = state
            .subnets
            .get_mut(&subnet)
            .filter(|e| e.lease.network_id == network_id)
        {
            entry.in_flight.remove(&ip);
            if !keep {
                let _ = entry.alloc.release(ip);
            }
        }
    }

    /// The op that frees an allocated address in the store, for a caller that deletes it in a
    /// batch of its own (with its endpoint record); call [`forget`](Self::forget) after the
    /// batch was applied.
    pub fn release_op(&self, network_id: &str, ip: IpAddr) -> Op {
        Op::Delete {
            key: self.addr_key(network_id, ip),
        }
    }

    /// The caller's batch with [`release_op`](Self::release_op) was applied: the address is
    /// free in memory too.
    pub fn forget(&self, network_id: &str, ip: IpAddr) {
        let mut state = self.state();
        if let Some(entry) = state.entry_for(network_id, ip) {
            if entry.alloc.reservation(ip).is_none() && !entry.in_flight.contains(&ip) {
                let _ = entry.alloc.release(ip);
            }
        }
    }

    /// Updates memory after the store answered an allocation.
    fn settle_allocation(
        &self,
        network_id: &str,
        subnet: IpNetwork,
        ip: IpAddr,
        result: Result<u64, StoreError>,
    ) -> Settled {
        let mut state = self.state();
        let entry = state
            .subnets
            .get_mut(&subnet)
            .filter(|e| e.lease.network_id == network_id);
        let Some(entry) = entry else {
            return match result {
                Ok(_) => Settled::TakeBack(network_id.to_owned()),
                Err(StoreError::AlreadyExists { .. }) => Settled::Retry,
                Err(e) => Settled::Done(Err(e.into())),
            };
        };
        entry.in_flight.remove(&ip);
        match result {
            Ok(_) if !entry.releasing => Settled::Done(Ok(ip)),
            // The subnet was released meanwhile: take the key back.
            Ok(_) => Settled::TakeBack(entry.lease.network_name.clone()),
            // Taken by another allocator sharing the store: keep it marked, try again.
            Err(StoreError::AlreadyExists { .. }) => Settled::Retry,
            Err(e) => {
                // Undo the in-memory reservation so nothing leaks.
                let _ = entry.alloc.release(ip);
                Settled::Done(Err(e.into()))
            }
        }
    }

    /// Reserves an address in memory; returns it with its subnet.
    fn pick(
        &self,
        network_id: &str,
        request: AddressRequest,
    ) -> Result<(IpAddr, IpNetwork), IpamError> {
        let mut state = self.state();
        let name = state.network_name(network_id);
        let subnets: Vec<IpNetwork> = state.networks.get(network_id).cloned().unwrap_or_default();
        match request {
            AddressRequest::Next(family) => {
                let mut last_range = None;
                for subnet in subnets.iter().filter(|s| Family::of_net(**s) == family) {
                    let Some(entry) = state.subnets.get_mut(subnet) else {
                        continue;
                    };
                    if entry.releasing {
                        continue;
                    }
                    last_range = Some(entry.lease.range());
                    if let Ok(ip) = entry.alloc.allocate() {
                        entry.in_flight.insert(ip);
                        return Ok((ip, *subnet));
                    }
                }
                Err(match last_range {
                    Some(range) => IpamError::AddressesExhausted {
                        network: name,
                        range,
                    },
                    None => IpamError::UnknownNetwork {
                        network: name,
                        what: format!("{family} subnet"),
                    },
                })
            }
            AddressRequest::Static(ip) => {
                let family = Family::of(ip);
                let Some(first) = subnets
                    .iter()
                    .copied()
                    .find(|s| Family::of_net(*s) == family)
                else {
                    return Err(IpamError::UnknownNetwork {
                        network: name,
                        what: format!("{family} subnet"),
                    });
                };
                let Some(entry) = state.entry_for(network_id, ip) else {
                    let range = state
                        .subnets
                        .get(&first)
                        .map(|e| e.lease.range())
                        .unwrap_or(first);
                    return Err(IpamError::AddressOutsideRange {
                        network: name,
                        address: ip,
                        range,
                    });
                };
                if entry.releasing {
                    return Err(IpamError::SubnetReleasing {
                        network: name,
                        subnet: entry.lease.subnet,
                    });
                }
                match entry.alloc.allocate_static(ip) {
                    Ok(()) => {
                        entry.in_flight.insert(ip);
                        Ok((ip, entry.lease.subnet))
                    }
                    Err(AllocError::InUse) => Err(IpamError::AddressInUse {
                        network: name,
                        address: ip,
                    }),
                    Err(AllocError::Reserved(reason)) => Err(IpamError::AddressReserved {
                        network: name,
                        address: ip,
                        reason,
                    }),
                    Err(_) => Err(IpamError::AddressOutsideRange {
                        network: name,
                        address: ip,
                        range: entry.lease.range(),
                    }),
                }
            }
        }
    }

    /// Releases an address: it becomes available again (at once for local networks, after the
    /// others for serial allocation).
    pub async fn release(&self, network_id: &str, ip: IpAddr) -> Result<(), IpamError> {
        self.ensure_loaded(network_id).await?;
        let subnet = {
            let mut state = self.state();
            let name = state.network_name(network_id);
            let not_allocated = || IpamError::AddressNotAllocated {
                network: name.clone(),
                address: ip,
            };
            let Some(entry) = state.entry_for(network_id, ip) else {
                return Err(not_allocated());
            };
            if let Some(reason) = entry.alloc.reservation(ip) {
                return Err(IpamError::AddressReserved {
                    network: name.clone(),
                    address: ip,
                    reason: reason.to_owned(),
                });
            }
            if !entry.in_flight.insert(ip) {
                return Err(not_allocated());
            }
            entry.lease.subnet
        };
        let result = self
            .inner
            .store
            .delete(&self.addr_key(network_id, ip))
            .await;
        let mut state = self.state();
        let name = state.network_name(network_id);
        let entry = state
            .subnets
            .get_mut(&subnet)
            .filter(|e| e.lease.network_id == network_id);
        if let Some(entry) = entry {
            entry.in_flight.remove(&ip);
            if matches!(result, Ok(_) | Err(StoreError::NotFound { .. })) {
                // Not allocated in memory is fine: another allocator may have allocated it.
                let _ = entry.alloc.release(ip);
            }
        }
        match result {
            Ok(_) => Ok(()),
            Err(StoreError::NotFound { .. }) => Err(IpamError::AddressNotAllocated {
                network: name,
                address: ip,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Releases an address another allocator (another host) took, if the allocation is older
    /// than `older_than`, the store revision of the record that used it: the sweep of a dead
    /// host's addresses. The key is deleted with a compare-and-swap on the revision read, so
    /// when several hosts sweep the same address exactly one releases it, and an allocation
    /// made after `older_than` (the address was released and taken again) is never touched.
    /// `Ok(true)`: this call released it; `Ok(false)`: nothing to release (any more).
    pub async fn release_if_older(
        &self,
        network_id: &str,
        ip: IpAddr,
        older_than: Revision,
    ) -> Result<bool, IpamError> {
        self.ensure_loaded(network_id).await?;
        let key = self.addr_key(network_id, ip);
        let Some(kv) = self.inner.store.get(&key).await? else {
            return Ok(false);
        };
        if kv.revision >= older_than || !self.delete_if_unchanged(key, kv.revision).await? {
            return Ok(false);
        }
        if let Some(entry) = self.state().entry_for(network_id, ip) {
            // Not allocated in this allocator's memory is fine: another host allocated it.
            let _ = entry.alloc.release(ip);
        }
        Ok(true)
    }

    /// Releases an address if `owner` still holds it (it was allocated with
    /// [`allocate_for`](Self::allocate_for) and that owner): a release that may repeat one
    /// done before a crash never frees the address for someone who took it since. The key is
    /// deleted with a compare-and-swap on the revision read. An address allocated without an
    /// owner is released as [`release`](Self::release) would. `Ok(true)`: this call released
    /// it; `Ok(false)`: it is not allocated, or not to `owner`.
    pub async fn release_owned(
        &self,
        network_id: &str,
        ip: IpAddr,
        owner: &str,
    ) -> Result<bool, IpamError> {
        self.ensure_loaded(network_id).await?;
        let key = self.addr_key(network_id, ip);
        let Some(kv) = self.inner.store.get(&key).await? else {
            return Ok(false);
        };
        let record: AddressRecord =
            serde_json::from_slice(&kv.value).map_err(|e| corrupt(&key, e))?;
        if record.owner.as_deref().is_some_and(|o| o != owner)
            || !self.delete_if_unchanged(key, kv.revision).await?
        {
            return Ok(false);
        }
        if let Some(entry) = self.state().entry_for(network_id, ip) {
            if !entry.in_flight.contains(&ip) {
                let _ = entry.alloc.release(ip);
            }
        }
        Ok(true)
    }

    /// Every address allocated in this scope, as the store holds it now (read from the store,
    /// not from memory), with its owner: what a crash-recovering caller lists to find the
    /// addresses it allocated and no longer uses.
    pub async fn stored_addresses(&self) -> Result<Vec<StoredAddress>, IpamError> {
        let mut out = Vec::new();
        for kv in self.inner.store.list(&self.addrs_prefix()).await? {
            let (network_id, ip) = self.parse_addr_key(&kv.key)?;
            let record: AddressRecord =
                serde_json::from_slice(&kv.value).map_err(|e| corrupt(&kv.key, e))?;
            out.push(StoredAddress {
                network_id: network_id.to_owned(),
                ip,
                owner: record.owner,
            });
        }
        Ok(out)
    }

    /// Deletes an address key if it is still at `revision`; `Ok(false)` if it changed or went.
    async fn delete_if_unchanged(
        &self,
        key: String,
        revision: Revision,
    ) -> Result<bool, IpamError> {
        let op = Op::DeleteIf {
            key,
            expected: revision,
        };
        match self.inner.store.apply(vec![op]).await {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The subnets of a network, in request order.
    pub fn subnets(&self, network_id: &str) -> Vec<SubnetLease> {
        let state = self.state();
        state
            .networks
            .get(network_id)
            .map(|list| {
                list.iter()
                    .filter_map(|s| state.subnets.get(s).map(|e| e.lease.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every subnet held in this scope (as known here), in address order.
    pub fn all_subnets(&self) -> Vec<SubnetLease> {
        self.state()
            .subnets
            .values()
            .map(|e| e.lease.clone())
            .collect()
    }

    /// True if `ip` is allocated to an endpoint of the network (as known here).
    pub fn is_allocated(&self, network_id: &str, ip: IpAddr) -> bool {
        self.state()
            .entry_for(network_id, ip)
            .is_some_and(|e| e.alloc.is_allocated(ip))
    }

    /// The addresses allocated in a network (as known here), in address order per subnet.
    pub fn allocated(&self, network_id: &str) -> Vec<IpAddr> {
        let state = self.state();
        state
            .networks
            .get(network_id)
            .into_iter()
            .flatten()
            .filter_map(|s| state.subnets.get(s))
            .flat_map(|e| e.alloc.allocated_addresses().collect::<Vec<_>>())
            .collect()
    }
}
