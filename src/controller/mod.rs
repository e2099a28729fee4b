//! The controller: the public entry point that ties IPAM, drivers, DNS and the store together.
//!
//! A runtime opens one [`Controller`] per host with a state directory, then creates networks,
//! sandboxes (container network namespaces) and endpoints (a sandbox's attachment to a network).
//! Every call is async and typed, validates its input before changing anything, and either
//! completes or undoes what it did.
//!
//! ```no_run
//! # async fn demo() -> Result<(), wharf::controller::Error> {
//! use wharf::controller::{Controller, ControllerConfig, EndpointSpec, NetworkSpec, SandboxSpec};
//! let wharf = Controller::open(ControllerConfig::new("/var/lib/wharf")).await?;
//! wharf.create_network(NetworkSpec::new("alpine-net")).await?;
//! wharf.create_sandbox(SandboxSpec::new("alpine1")).await?;
//! let ep = wharf.connect("alpine1", "alpine-net", EndpointSpec::default()).await?;
//! println!("alpine1 is {:?} on {}", ep.ipv4, ep.ifname);
//! println!("{}", serde_json::to_string_pretty(&wharf.inspect_network("alpine-net")?).unwrap());
//! wharf.delete_sandbox("alpine1").await?;
//! wharf.delete_network("alpine-net").await?;
//! # Ok(()) }
//! ```
//!
//! Submodules: [`inspect`] (the JSON shape of `docker network inspect`), [`files`]
//! (`resolv.conf` and `hosts` of a sandbox). Cluster mode (overlay networks shared by several
//! hosts through a shared store) is configured with [`ClusterConfig`]; on it run services
//! ([`Controller::create_service`] with a [`ServiceSpec`]: replicas placed over the hosts) and
//! the routing mesh that publishes their ports on every host ([`Controller::routing_mesh`]).

mod cluster;
pub mod diagnose;
mod error;
pub mod files;
pub mod inspect;
mod journal;
mod mesh;
mod model;
mod names;
mod ports;
mod reconcile;
mod records;
mod service;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::dns::resolvconf::ResolvConf;
use crate::dns::{
    EndpointDns, Listener, NetworkDns, NetworkKey, Resolver, ResolverConfig, SandboxDns,
    upstreams_on_port_53,
};
use crate::driver::bridge::BridgeDriver;
use crate::driver::host::HostDriver;
use crate::driver::macvlan::MacvlanDriver;
use crate::driver::null::NullDriver;
use crate::driver::overlay::OverlayDriver;
use crate::driver::{
    BridgeOptions, Driver, DriverKind, DriverOptions, EndpointInfo, NetworkInfo, SandboxContext,
    SubnetInfo, mac_for_ipv4,
};
use crate::ipam::{AddressRequest, Family, Ipam, IpamConfig, IpamOptions, SubnetRequest};
use crate::store::{EmbeddedStore, Store};
use crate::sys::NetNs;
use crate::sys::rtnl::{Handle, IpVersion, Route};

pub use cluster::{ClusterConfig, ClusterEndpoint, DEFAULT_LEASE_TTL};
pub use diagnose::{Diagnosis, Finding};
pub use error::{Error, ObjectKind, Result};
pub use files::SandboxFiles;
pub use inspect::NetworkInspect;
pub use mesh::{INGRESS_SANDBOX, MeshPort};
pub use model::{
    EndpointDetails, EndpointSpec, NetworkSpec, SandboxInfo, SandboxNamespace, SandboxSpec,
};
pub use service::{
    LocalTask, MAX_REPLICAS, MAX_SERVICE_NAME_LEN, ServiceInspect, ServiceNetworkInspect,
    ServicePort, ServiceSpec, TaskInspect,
};

use model::{EndpointRecord, NetworkRecord, SandboxRecord, StoredNamespace};
use records::Records;

/// Where a controller keeps its state and which host it manages.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// The state directory (created 0700 if missing).
    pub state_dir: PathBuf,
    /// The namespace that plays the host (default: the process's own).
    pub host: Option<NetNs>,
    /// Prepended to a sandbox's name to name the namespace wharf creates for it (default empty:
    /// `/run/netns/<sandbox name>`).
    pub netns_prefix: String,
    /// Where a named sandbox's `resolv.conf` and `hosts` go, in `<dir>/<netns name>/`, so that
    /// `ip netns exec` uses them (default `/etc/netns`).
    pub sandbox_files_dir: PathBuf,
    /// The host's `resolv.conf` (default: `/etc/netns/<host>/resolv.conf` when the host is a
    /// named namespace that has one, else `/etc/resolv.conf`).
    pub host_resolv_conf: Option<PathBuf>,
    /// The host's `hosts` file, given to host-network sandboxes (default `/etc/hosts`).
    pub host_hosts: Option<PathBuf>,
    /// IPAM options (pools, host identifier). Default: Docker's pools, the host id from
    /// `/etc/machine-id`.
    pub ipam: Option<IpamOptions>,
    /// Cluster mode: the shared store, this node's name and underlay address. Needed for
    /// overlay networks. Default: none (a single host).
    pub cluster: Option<ClusterConfig>,
    /// Watch the host namespace for deletions of wharf's nftables tables (or their chains,
    /// rules, sets) and of its bridges, and run [`Controller::reconcile`] when one happens
    /// (opt-in; default off). Each of wharf's own detaches also wakes the watch, which then
    /// only checks names.
    pub watch_kernel: bool,
}

impl ControllerConfig {
    /// Defaults with the given state directory.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            host: None,
            netns_prefix: String::new(),
            sandbox_files_dir: PathBuf::from("/etc/netns"),
            host_resolv_conf: None,
            host_hosts: None,
            ipam: None,
            cluster: None,
            watch_kernel: false,
        }
    }

    /// Restores wharf's firewall and bridges by itself when they are deleted from outside
    /// (see [`ControllerConfig::watch_kernel`]).
    pub fn watch_kernel(mut self) -> Self {
        self.watch_kernel = true;
        self
    }

    /// Joins a cluster (overlay networks).
    pub fn cluster(mut self, cluster: ClusterConfig) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// Uses `host` as the host namespace.
    pub fn host(mut self, host: NetNs) -> Self {
        self.host = Some(host);
        self
    }

    /// Sets the prefix of the namespaces wharf creates for sandboxes.
    pub fn netns_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.netns_prefix = prefix.into();
        self
    }
}

/// The in-memory side of a sandbox: its namespace and a netlink handle inside it, both absent
/// when the namespace is gone.
#[derive(Debug, Clone)]
struct Live {
    ns: Option<NetNs>,
    handle: Option<Handle>,
}

/// wharf's public entry point. Cheap to clone; safe to use from many tasks.
#[derive(Debug, Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ControllerConfig,
    host: NetNs,
    host_handle: Handle,
    store: Arc<dyn Store>,
    ipam: Ipam,
    drivers: HashMap<DriverKind, Arc<dyn Driver>>,
    records: Mutex<Records>,
    live: Mutex<HashMap<String, Live>>,
    /// The embedded DNS server of every sandbox on a user-defined network.
    resolver: Resolver,
    /// Each such sandbox's listener at 127.0.0.11:53, by sandbox id.
    listeners: Mutex<HashMap<String, Listener>>,
    /// Serialises network creation and deletion (name uniqueness, subnet choice).
    network_lock: tokio::sync::Mutex<()>,
    /// One lock per sandbox: its connects and disconnects are ordered (interface names, the
    /// default route); different sandboxes proceed in parallel.
    sandbox_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Cluster mode: the shared store's networks and endpoints, and the watcher's state.
    cluster: Option<cluster::Cluster>,
    /// Serialises connects that publish ports, from the check that a host port is free to the
    /// record that takes it.
    ports_lock: tokio::sync::Mutex<()>,
    /// Held shared by every connect and disconnect for its kernel work and records, and
    /// exclusively by [`Controller::reconcile`] while the drivers restore networks from a
    /// snapshot of the records (so it never restores what a disconnect just removed).
    kernel_gate: tokio::sync::RwLock<()>,
}

const KEY_NETWORKS: &str = "wharf/v1/networks/";
const KEY_SANDBOXES: &str = "wharf/v1/sandboxes/";
const KEY_ENDPOINTS: &str = "wharf/v1/endpoints/";

impl Controller {
    /// Opens (or creates) the controller state in `config.state_dir`. On first start it creates
    /// the networks `bridge` (device `wharf0`, 172.17.0.0/16 unless a host route overlaps it),
    /// `host` and `none`; on later starts it loads everything that was there.
    pub async fn open(config: ControllerConfig) -> Result<Self> {
        let host = match &config.host {
            Some(ns) => ns.clone(),
            None => NetNs::current()?,
        };
        let host_handle = Handle::in_netns(&host).await?;
        let mut drivers = default_drivers(&host_handle);
        if let Some(c) = &config.cluster {
            drivers.insert(
                DriverKind::Overlay,
                Arc::new(OverlayDriver::new(
                    host_handle.clone(),
                    config.netns_prefix.clone(),
                    c.advertise_addr,
                )),
            );
        }
        Self::open_with(config, host, host_handle, drivers).await
    }

    async fn open_with(
        config: ControllerConfig,
        host: NetNs,
        host_handle: Handle,
        drivers: HashMap<DriverKind, Arc<dyn Driver>>,
    ) -> Result<Self> {
        make_private_dir(&config.state_dir)?;
        let db = config.state_dir.join("state.redb");
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&db).await?);
        // The state names every container and address on the host: root's eyes only.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).map_err(
                |source| Error::Io {
                    what: format!("restricting {}", db.display()),
                    source,
                },
            )?;
        }
        let ipam_options = match &config.ipam {
            Some(o) => o.clone(),
            None => IpamOptions::local(&host_id()),
        };
        let ipam = Ipam::open(store.clone(), ipam_options).await?;
        let records = Records::load(store.as_ref()).await?;
        let cluster = match &config.cluster {
            Some(c) => Some(cluster::Cluster::open(c.clone()).await?),
            None => None,
        };
        let host_rc = ResolvConf::parse(
            &std::fs::read_to_string(host_resolv_conf(&config, &host)).unwrap_or_default(),
        );
        // Forwarding leaves from the host's namespace, so its loopback servers work as they are.
        let resolver = Resolver::new(ResolverConfig::new(
            host.clone(),
            upstreams_on_port_53(&host_rc.nameservers),
        ))
        .await
        .map_err(|e| Error::Dns(Box::new(e)))?;
        let controller = Self {
            inner: Arc::new(Inner {
                config,
                host,
                host_handle,
                store,
                ipam,
                drivers,
                records: Mutex::new(records),
                live: Mutex::new(HashMap::new()),
                resolver,
                listeners: Mutex::new(HashMap::new()),
                network_lock: tokio::sync::Mutex::new(()),
                sandbox_locks: Mutex::new(HashMap::new()),
                cluster,
                ports_lock: tokio::sync::Mutex::new(()),
                kernel_gate: tokio::sync::RwLock::new(()),
            }),
        };
        controller.restore_drivers();
        controller.reopen_sandboxes().await;
        // What a crash interrupted is finished or undone before anything else looks at it.
        controller.recover_journal().await?;
        controller.ensure_predefined().await?;
        if let Err(e) = controller.reconcile_kernel(true).await {
            tracing::warn!(error = %e, "reconciling the kernel with the records at open");
        }
        if controller.inner.config.watch_kernel {
            controller.start_kernel_watch().await?;
        }
        controller.start_cluster().await?;
        controller.restore_dns().await;
        Ok(controller)
    }

    /// The namespace this controller treats as the host.
    pub fn host(&self) -> &NetNs {
        &self.inner.host
    }

    // ---- networks ------------------------------------------------------------------------

    /// Creates a network (`docker network create`).
    pub async fn create_network(&self, spec: NetworkSpec) -> Result<NetworkInspect> {
        if spec.name == GWBRIDGE_NETWORK || spec.name == INGRESS_NETWORK {
            return Err(Error::InvalidRequest {
                kind: ObjectKind::Network,
                reason: if spec.name == GWBRIDGE_NETWORK {
                    "the name is reserved for the overlay egress bridge".into()
                } else {
                    "the name is reserved for the routing mesh's network".into()
                },
                name: spec.name,
            });
        }
        let _guard = self.inner.network_lock.lock().await;
        let id = self.create_network_locked(spec, false).await?;
        self.inspect_network(&id)
    }

    async fn create_network_locked(&self, spec: NetworkSpec, predefined: bool) -> Result<String> {
        names::validate_network_name(&spec.name)?;
        if self.records().network_by_name(&spec.name).is_some() {
            return Err(Error::AlreadyExists {
                kind: ObjectKind::Network,
                name: spec.name,
            });
        }
        let kind = spec.driver.kind();
        if kind.is_cluster_scoped() {
            return self.create_cluster_network(spec, predefined).await;
        }
        let driver = self.driver(kind)?;
        let invalid = |reason: String| Error::InvalidRequest {
            kind: ObjectKind::Network,
            name: spec.name.clone(),
            reason,
        };
        if matches!(kind, DriverKind::Host | DriverKind::Null) {
            if !predefined {
                return Err(invalid(format!(
                    "only one instance of the {kind} network is allowed, and it exists"
                )));
            }
            if !spec.ipam.is_empty() || spec.enable_ipv6 {
                return Err(invalid(format!("the {kind} driver takes no addresses")));
            }
        }
        if let DriverOptions::Bridge(BridgeOptions {
            default_bridge: true,
            ..
        }) = spec.driver
        {
            if !predefined {
                return Err(invalid(
                    "default_bridge is reserved for the `bridge` network".into(),
                ));
            }
        }
        let (v4_cfg, v6_cfg) = split_ipam(&spec)?;
        let id = names::new_id();
        let mut info = NetworkInfo {
            id: id.clone(),
            name: spec.name.clone(),
            internal: spec.internal,
            enable_ipv6: spec.enable_ipv6,
            options: spec.driver.clone(),
            subnets: Vec::new(),
        };
        driver.validate(&info)?;
        driver.prepare_network(&mut info).await?;

        // Addresses: reserved first, released on any later failure. Both requests are checked
        // before either reserves anything.
        if kind.needs_addresses() {
            let avoid = self.host_prefixes().await?;
            let v4_req = SubnetRequest::new(&id, &spec.name)
                .with_config(v4_cfg.unwrap_or_default())
                .avoiding(avoid.clone());
            let v6_req = spec.enable_ipv6.then(|| {
                SubnetRequest::new(&id, &spec.name)
                    .ipv6()
                    .with_config(v6_cfg.unwrap_or_default())
                    .avoiding(avoid)
            });
            v4_req.validate()?;
            if let Some(req) = &v6_req {
                req.validate()?;
            }
            let lease = self.inner.ipam.request_subnet(v4_req).await?;
            info.subnets.push(SubnetInfo {
                subnet: lease.subnet,
                gateway: Some(lease.gateway),
            });
            if let Some(req) = v6_req {
                match self.inner.ipam.request_subnet(req).await {
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
        }

        // The intent (durable), the kernel work, the completion (relaxed). A crash before the
        // intent leaves subnets without a network, which recovery releases.
        let mut record = NetworkRecord {
            info: info.clone(),
            status: model::Status::Pending,
            created: humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string(),
            attachable: spec.attachable,
            labels: spec.labels,
            predefined,
        };
        if let Err(e) = self.journal_put(KEY_NETWORKS, &id, &record, true).await {
            self.release_subnets(&info).await;
            return Err(e);
        }
        let created = match driver.create_network(&info).await {
            Ok(()) => {
                record.status = model::Status::Active;
                self.journal_put(KEY_NETWORKS, &id, &record, false).await
            }
            Err(e) => Err(e.into()),
        };
        if let Err(e) = created {
            let _ = driver.delete_network(&info).await;
            self.release_subnets(&info).await;
            if let Err(undo) = self.journal_delete(KEY_NETWORKS, &id, false).await {
                tracing::warn!(network = %info.name, error = %undo, "undoing a network's intent; recovery will");
            }
            return Err(e);
        }
        self.register_network_dns(&record);
        self.records_mut().networks.insert(id.clone(), record);
        tracing::info!(network = %info.name, id = %id, "network created");
        Ok(id)
    }

    /// Deletes a network (`docker network rm`); refused while endpoints remain.
    pub async fn delete_network(&self, name_or_id: &str) -> Result<()> {
        let _guard = self.inner.network_lock.lock().await;
        let record = self.records().network(name_or_id)?.clone();
        let info = &record.info;
        if record.predefined {
            return Err(Error::Predefined {
                network: info.name.clone(),
            });
        }
        let sandboxes = self.records().sandboxes_on(&info.id);
        if !sandboxes.is_empty() {
            return Err(Error::NetworkInUse {
                network: info.name.clone(),
                sandboxes,
            });
        }
        if info.options.kind().is_cluster_scoped() {
            return self.delete_cluster_network(record).await;
        }
        let driver = self.driver(info.options.kind())?;
        let mut removing = record.clone();
        removing.status = model::Status::Removing;
        self.journal_put(KEY_NETWORKS, &info.id, &removing, false)
            .await?;
        if let Err(e) = driver.delete_network(info).await {
            if let Err(undo) = self
                .journal_put(KEY_NETWORKS, &info.id, &record, false)
                .await
            {
                tracing::warn!(network = %info.name, error = %undo, "marking a network active again");
            }
            return Err(e.into());
        }
        self.release_subnets(info).await;
        self.journal_delete(KEY_NETWORKS, &info.id, true).await?;
        self.records_mut().networks.remove(&info.id);
        self.inner.resolver.remove_network(&info.id);
        tracing::info!(network = %info.name, "network deleted");
        Ok(())
    }

    /// All networks, in name order (`docker network ls`).
    pub fn list_networks(&self) -> Vec<NetworkInspect> {
        let ids: Vec<String> = {
            let records = self.records();
            let mut nets: Vec<_> = records.networks.values().collect();
            nets.sort_by(|a, b| a.info.name.cmp(&b.info.name));
            nets.into_iter().map(|n| n.info.id.clone()).collect()
        };
        ids.iter()
            .filter_map(|id| self.inspect_network(id).ok())
            .collect()
    }

    /// One network in the shape of `docker network inspect`, found by name, id or unique id
    /// prefix.
    pub fn inspect_network(&self, name_or_id: &str) -> Result<NetworkInspect> {
        let mut inspect = {
            let records = self.records();
            let record = records.network(name_or_id)?;
            let leases = self.ipam_for(&record.info).subnets(&record.info.id);
            records::inspect(record, &leases, &records)
        };
        if inspect.scope == "swarm" {
            inspect.peers = self
                .cluster_peers(&inspect.id)
                .into_iter()
                .map(|(name, ip)| inspect::PeerInspect {
                    name,
                    ip: ip.to_string(),
                })
                .collect();
        }
        Ok(inspect)
    }

    // ---- sandboxes -----------------------------------------------------------------------

    /// Creates a sandbox: a container's network namespace (new, given by path, or the host's).
    pub async fn create_sandbox(&self, spec: SandboxSpec) -> Result<SandboxInfo> {
        names::validate_sandbox_name(&spec.name)?;
        if let Some(h) = &spec.hostname {
            names::validate_hostname(h)?;
        }
        let lock = self.sandbox_lock(&spec.name);
        let _guard = lock.lock().await;
        if self.records().sandbox_by_name(&spec.name).is_some() {
            return Err(Error::AlreadyExists {
                kind: ObjectKind::Sandbox,
                name: spec.name,
            });
        }
        let id = names::new_id();
        let stored = match &spec.namespace {
            SandboxNamespace::New => {
                let netns = format!("{}{}", self.inner.config.netns_prefix, spec.name);
                crate::sys::netns::validate_name(&netns)?;
                StoredNamespace::Owned(netns)
            }
            SandboxNamespace::Path(p) => StoredNamespace::Path(p.clone()),
            SandboxNamespace::Host => StoredNamespace::Host,
        };
        // A namespace that exists already is opened (and checked) before anything is written.
        let existing = match &stored {
            StoredNamespace::Owned(_) => None,
            StoredNamespace::Path(p) => Some(NetNs::open_path(p)?),
            StoredNamespace::Host => Some(self.inner.host.clone()),
        };
        let mut record = SandboxRecord {
            id: id.clone(),
            status: model::Status::Pending,
            name: spec.name.clone(),
            hostname: spec.hostname.clone().unwrap_or_else(|| spec.name.clone()),
            namespace: stored,
            gateway_v4: None,
            gateway_v6: None,
        };
        // The intent, durable: a namespace wharf makes is never left without a record.
        self.journal_put(KEY_SANDBOXES, &id, &record, true).await?;
        let forget = async || {
            if let Err(e) = self.journal_delete(KEY_SANDBOXES, &id, false).await {
                tracing::warn!(sandbox = %spec.name, error = %e, "undoing a sandbox's intent; recovery will");
            }
        };
        let opened = match (existing, &record.namespace) {
            (Some(ns), _) => Ok((ns, false)),
            (None, StoredNamespace::Owned(netns)) => {
                NetNs::create(netns).await.map(|ns| (ns, true))
            }
            (None, _) => Ok((self.inner.host.clone(), false)),
        };
        let (ns, created) = match opened {
            Ok(o) => o,
            Err(e) => {
                forget().await;
                return Err(e.into());
            }
        };
        let namespace = record.namespace.clone();
        let undo_ns = async |ns: &StoredNamespace| {
            if let (true, StoredNamespace::Owned(name)) = (created, ns) {
                let _ = NetNs::delete(name);
            }
            forget().await;
        };
        let handle = if namespace == StoredNamespace::Host {
            self.inner.host_handle.clone()
        } else {
            match Handle::in_netns(&ns).await {
                Ok(h) => h,
                Err(e) => {
                    undo_ns(&namespace).await;
                    return Err(e.into());
                }
            }
        };
        if let StoredNamespace::Path(_) = &namespace {
            // A namespace the runtime made may still have its loopback down; the embedded DNS
            // server and the container's own services need it.
            let lo = async {
                let lo = handle.link().get("lo").await?;
                handle.link().set_up(lo.index).await
            };
            if let Err(e) = lo.await {
                undo_ns(&namespace).await;
                return Err(e.into());
            }
        }
        record.status = model::Status::Active;
        if let Err(e) = self.journal_put(KEY_SANDBOXES, &id, &record, false).await {
            undo_ns(&record.namespace).await;
            return Err(e);
        }
        self.records_mut().insert_sandbox(record.clone());
        self.live_mut().insert(
            id.clone(),
            Live {
                ns: Some(ns),
                handle: Some(handle),
            },
        );
        if let Err(e) = self.write_files(&id) {
            let _ = self.delete_sandbox_locked(&id).await;
            return Err(e);
        }
        tracing::info!(sandbox = %spec.name, id = %id, "sandbox created");
        self.sandbox(&id)
    }

    /// Deletes a sandbox: disconnects it from every network (also when its namespace is already
    /// gone), deletes the namespace if wharf created it, and removes its files.
    pub async fn delete_sandbox(&self, name_or_id: &str) -> Result<()> {
        let (id, name) = {
            let records = self.records();
            let sb = records.sandbox(name_or_id)?;
            (sb.id.clone(), sb.name.clone())
        };
        let lock = self.sandbox_lock(&name);
        let _guard = lock.lock().await;
        self.delete_sandbox_locked(&id).await?;
        self.inner
            .sandbox_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name);
        Ok(())
    }

    async fn delete_sandbox_locked(&self, id: &str) -> Result<()> {
        // The intent, durable: a crash from here on ends with the sandbox gone.
        // The in-memory record says so too: the disconnects below write the sandbox's record
        // (its default-route owners) from it.
        let record = self.records().sandboxes().get(id).cloned();
        if let Some(record) = &record {
            let mut removing = record.clone();
            removing.status = model::Status::Removing;
            self.journal_put(KEY_SANDBOXES, id, &removing, true).await?;
            self.records_mut().insert_sandbox(removing);
        }
        let kept = async || {
            let current = self.records().sandboxes().get(id).cloned();
            if let Some(mut current) = current {
                current.status = model::Status::Active;
                if let Err(e) = self.journal_put(KEY_SANDBOXES, id, &current, false).await {
                    tracing::warn!(sandbox = %current.name, error = %e, "marking a sandbox active again");
                }
                self.records_mut().insert_sandbox(current);
            }
        };
        let endpoints: Vec<EndpointRecord> = self
            .records()
            .endpoints_of(id)
            .into_iter()
            .cloned()
            .collect();
        let mut first_error = None;
        for ep in endpoints.iter().rev() {
            if let Err(e) = self.disconnect_locked(&ep.info.id).await {
                tracing::warn!(endpoint = %ep.info.id, error = %e, "disconnect during sandbox delete");
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            kept().await;
            return Err(e);
        }
        let record = self.records().sandboxes().get(id).cloned();
        let Some(record) = record else {
            return Ok(());
        };
        self.live_mut().remove(id);
        self.inner.resolver.remove_sandbox(id);
        let listener = self.listeners().remove(id);
        if let Some(listener) = listener {
            listener.stop().await;
        }
        if let StoredNamespace::Owned(netns) = &record.namespace {
            match NetNs::delete(netns) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    kept().await;
                    return Err(e.into());
                }
            }
            let dir = self.inner.config.sandbox_files_dir.join(netns);
            // On the blocking pool, like the writes: see `write_files_off_runtime`.
            let removed = {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            };
            if let Err(e) = removed {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(dir = %dir.display(), error = %e, "removing sandbox files");
                }
            }
        }
        self.journal_delete(KEY_SANDBOXES, id, true).await?;
        self.records_mut().remove_sandbox(id);
        tracing::info!(sandbox = %record.name, "sandbox deleted");
        Ok(())
    }

    /// All sandboxes, in name order.
    pub fn list_sandboxes(&self) -> Vec<SandboxInfo> {
        let ids: Vec<String> = {
            let records = self.records();
            let mut sbs: Vec<_> = records.sandboxes().values().collect();
            sbs.sort_by(|a, b| a.name.cmp(&b.name));
            sbs.into_iter().map(|s| s.id.clone()).collect()
        };
        ids.iter().filter_map(|id| self.sandbox(id).ok()).collect()
    }

    /// One sandbox by name or id.
    pub fn sandbox(&self, name_or_id: &str) -> Result<SandboxInfo> {
        let records = self.records();
        let sb = records.sandbox(name_or_id)?;
        // The egress bridge's endpoint is wharf's, not the user's: hidden, as Docker hides
        // docker_gwbridge from a container's networks.
        let endpoints = records
            .endpoints_of(&sb.id)
            .iter()
            .filter(|ep| {
                !records
                    .networks
                    .get(&ep.network_id)
                    .is_some_and(is_gwbridge)
            })
            .map(|ep| records.details(ep))
            .collect();
        let (netns_path, netns_name) = match &sb.namespace {
            StoredNamespace::Owned(n) => (
                Path::new(crate::sys::netns::NETNS_RUN_DIR).join(n),
                Some(n.clone()),
            ),
            StoredNamespace::Path(p) => (p.clone(), None),
            StoredNamespace::Host => (self.inner.host.path().to_owned(), None),
        };
        Ok(SandboxInfo {
            id: sb.id.clone(),
            name: sb.name.clone(),
            netns_path,
            netns_name,
            endpoints,
            files: self.render_files(sb, &records),
        })
    }

    /// The network namespace of a sandbox, for running processes in it.
    pub fn sandbox_netns(&self, name_or_id: &str) -> Result<NetNs> {
        let id = self.records().sandbox(name_or_id)?.id.clone();
        self.live()
            .get(&id)
            .and_then(|l| l.ns.clone())
            .ok_or(Error::NotFound {
                kind: ObjectKind::Sandbox,
                name: format!("{name_or_id} (its namespace is gone)"),
            })
    }

    // ---- endpoints -----------------------------------------------------------------------

    /// Connects a sandbox to a network (`docker network connect`) and returns the endpoint.
    pub async fn connect(
        &self,
        sandbox: &str,
        network: &str,
        spec: EndpointSpec,
    ) -> Result<EndpointDetails> {
        self.connect_as(sandbox, network, spec, Joiner::Standalone)
            .await
    }

    /// [`Controller::connect`] for a standalone sandbox or a service's task.
    async fn connect_as(
        &self,
        sandbox: &str,
        network: &str,
        spec: EndpointSpec,
        joiner: Joiner,
    ) -> Result<EndpointDetails> {
        let sb_name = self.records().sandbox(sandbox)?.name.clone();
        // A cluster network created on another host is learnt when a container here joins it.
        let unknown = matches!(self.records().network(network), Err(Error::NotFound { .. }));
        if unknown {
            self.learn_from_store(network).await?;
        }
        self.refuse_gwbridge(&sb_name, network)?;
        let lock = self.sandbox_lock(&sb_name);
        let _guard = lock.lock().await;
        let details = self
            .connect_locked_as(sandbox, network, spec, joiner)
            .await?;
        // A non-internal overlay gives no way out: the sandbox gets an endpoint on the
        // host's egress bridge as well (or the whole connect is undone).
        if let Err(e) = self.attach_gwbridge(&details).await {
            if let Err(undo) = self.disconnect_locked(&details.id).await {
                tracing::warn!(endpoint = %details.id, error = %undo, "undoing a connect whose egress bridge failed");
            }
            return Err(e);
        }
        Ok(details)
    }

    /// Refuses direct use of the egress bridge: its endpoints follow the overlays.
    fn refuse_gwbridge(&self, sandbox: &str, network: &str) -> Result<()> {
        if self.records().network(network).is_ok_and(is_gwbridge) {
            return Err(Error::InvalidRequest {
                kind: ObjectKind::Endpoint,
                name: format!("{sandbox} on {network}"),
                reason: format!(
                    "{GWBRIDGE_NETWORK} is managed by wharf: a sandbox joins it with its first \
                     non-internal overlay and leaves it with its last"
                ),
            });
        }
        Ok(())
    }

    /// True if the sandbox has an endpoint on a non-internal cluster network.
    fn needs_gwbridge(&self, sandbox_id: &str) -> bool {
        let records = self.records();
        records.endpoints_of(sandbox_id).iter().any(|e| {
            records
                .networks
                .get(&e.network_id)
                .is_some_and(|n| n.info.options.kind().is_cluster_scoped() && !n.info.internal)
        })
    }

    /// The sandbox's endpoint on the egress bridge, if any.
    fn gwbridge_endpoint(&self, sandbox_id: &str) -> Option<String> {
        let records = self.records();
        records
            .endpoints_of(sandbox_id)
            .iter()
            .find(|e| records.networks.get(&e.network_id).is_some_and(is_gwbridge))
            .map(|e| e.info.id.clone())
    }

    /// After a connect (sandbox lock held): a sandbox that joined a non-internal overlay and
    /// has no endpoint on [`GWBRIDGE_NETWORK`] gets one (the bridge is created on demand).
    async fn attach_gwbridge(&self, joined: &EndpointDetails) -> Result<()> {
        let sandbox_id = self.records().sandbox(&joined.sandbox)?.id.clone();
        if !self.needs_gwbridge(&sandbox_id) || self.gwbridge_endpoint(&sandbox_id).is_some() {
            return Ok(());
        }
        self.ensure_gwbridge().await?;
        self.connect_locked(&sandbox_id, GWBRIDGE_NETWORK, EndpointSpec::default())
            .await?;
        Ok(())
    }

    /// After a disconnect (sandbox lock held): a sandbox left without a non-internal overlay
    /// leaves the egress bridge too.
    async fn detach_gwbridge(&self, sandbox_id: &str) -> Result<()> {
        if self.needs_gwbridge(sandbox_id) {
            return Ok(());
        }
        match self.gwbridge_endpoint(sandbox_id) {
            Some(ep) => self.disconnect_locked(&ep).await,
            None => Ok(()),
        }
    }

    /// Creates the egress bridge network if it does not exist yet: a local bridge named
    /// [`GWBRIDGE_NETWORK`] (device of the same name) with icc off and masquerade on, its subnet
    /// from the local pools.
    async fn ensure_gwbridge(&self) -> Result<()> {
        if self.records().network_by_name(GWBRIDGE_NETWORK).is_some() {
            return Ok(());
        }
        let _guard = self.inner.network_lock.lock().await;
        if self.records().network_by_name(GWBRIDGE_NETWORK).is_some() {
            return Ok(());
        }
        let spec = NetworkSpec {
            name: GWBRIDGE_NETWORK.into(),
            driver: DriverOptions::Bridge(BridgeOptions {
                name: Some(GWBRIDGE_NETWORK.into()),
                icc: Some(false),
                masquerade: Some(true),
                ..BridgeOptions::default()
            }),
            ..NetworkSpec::default()
        };
        self.create_network_locked(spec, true).await?;
        tracing::info!("egress bridge {GWBRIDGE_NETWORK} created");
        Ok(())
    }

    /// [`Controller::connect`] with the sandbox lock held.
    async fn connect_locked(
        &self,
        sandbox: &str,
        network: &str,
        spec: EndpointSpec,
    ) -> Result<EndpointDetails> {
        self.connect_locked_as(sandbox, network, spec, Joiner::Standalone)
            .await
    }

    async fn connect_locked_as(
        &self,
        sandbox: &str,
        network: &str,
        spec: EndpointSpec,
        joiner: Joiner,
    ) -> Result<EndpointDetails> {
        let _gate = self.inner.kernel_gate.read().await;
        // Looked up again under the lock: the sandbox may have been deleted meanwhile.
        let (sb, net) = {
            let records = self.records();
            (
                records.sandbox(sandbox)?.clone(),
                records.network(network)?.clone(),
            )
        };
        let info = &net.info;
        let invalid = |reason: String| Error::InvalidRequest {
            kind: ObjectKind::Endpoint,
            name: format!("{} on {}", sb.name, info.name),
            reason,
        };
        let existing: Vec<EndpointRecord> = self
            .records()
            .endpoints_of(&sb.id)
            .into_iter()
            .cloned()
            .collect();
        if existing.iter().any(|e| e.network_id == info.id) {
            return Err(Error::AlreadyConnected {
                sandbox: sb.name.clone(),
                network: info.name.clone(),
            });
        }
        let kind = info.options.kind();
        if kind.is_cluster_scoped() && !net.attachable && joiner == Joiner::Standalone {
            return Err(Error::NotAttachable {
                network: info.name.clone(),
                sandbox: sb.name.clone(),
            });
        }
        let is_host = sb.namespace == StoredNamespace::Host;
        if is_host != (kind == DriverKind::Host) {
            return Err(invalid(if is_host {
                "a sandbox on the host's namespace can only use the host network".into()
            } else {
                "only a sandbox created on the host's namespace can use the host network".into()
            }));
        }
        let other_kinds: Vec<DriverKind> = existing
            .iter()
            .filter_map(|e| {
                self.records()
                    .networks
                    .get(&e.network_id)
                    .map(|n| n.info.options.kind())
            })
            .collect();
        if kind == DriverKind::Null && !existing.is_empty()
            || other_kinds.contains(&DriverKind::Null)
        {
            return Err(invalid(
                "the none network excludes every other network".into(),
            ));
        }
        for alias in &spec.aliases {
            names::validate_alias(alias)?;
        }
        let ifname = match &spec.ifname {
            Some(n) => {
                crate::sys::rtnl::validate_ifname(n).map_err(|e| Error::InvalidName {
                    kind: ObjectKind::Interface,
                    name: n.clone(),
                    reason: e.to_string(),
                })?;
                if existing.iter().any(|e| &e.info.ifname == n) {
                    return Err(invalid(format!("interface {n} exists in the sandbox")));
                }
                n.clone()
            }
            None => names::next_ifname(existing.iter().map(|e| e.info.ifname.as_str())),
        };
        let has_v4 = info.ipv4().is_some();
        let has_v6 = info.ipv6().is_some();
        if info.internal && !spec.ports.is_empty() {
            return Err(invalid(
                "an internal network publishes no ports (nothing outside may reach it)".into(),
            ));
        }
        if spec.ipv4.is_some() && !has_v4 {
            return Err(invalid("the network has no IPv4 subnet".into()));
        }
        if spec.ipv6.is_some() && !has_v6 {
            return Err(invalid("the network has no IPv6 subnet".into()));
        }
        if let Some(mac) = spec.mac {
            if mac.is_multicast() || mac.is_zero() {
                return Err(invalid(format!("{mac} is not a unicast MAC address")));
            }
        }
        let _ports_guard = if spec.ports.is_empty() {
            None
        } else {
            ports::validate(&spec.ports).map_err(invalid)?;
            let guard = self.inner.ports_lock.lock().await;
            self.check_ports_free(&spec.ports, &info.options)?;
            Some(guard)
        };
        let driver = self.driver(kind)?;
        let (live_ns, handle) = {
            let live = self.live();
            let l = live.get(&sb.id);
            (
                l.and_then(|l| l.ns.clone()),
                l.and_then(|l| l.handle.clone()),
            )
        };
        let (Some(ns), Some(handle)) = (live_ns, handle) else {
            return Err(invalid("the sandbox's namespace is gone".into()));
        };

        // Addresses.
        let ep_id = self.new_endpoint_id();
        let mut held: Vec<journal::Held> = Vec::new();
        // A cluster network's joins and leaves on this host are ordered (its data plane is made
        // with the first and removed with the last).
        let mut net_guard = match self.cluster() {
            Some(c) if kind.is_cluster_scoped() => Some(c.lock(&info.id).await),
            _ => None,
        };
        let addressed: Result<(Option<Ipv4Network>, Option<Ipv6Network>)> = async {
            let mut v4 = None;
            let mut v6 = None;
            if let Some(s) = info.ipv4() {
                let req = match spec.ipv4 {
                    Some(ip) => AddressRequest::Static(IpAddr::V4(ip)),
                    None => AddressRequest::Next(Family::V4),
                };
                if let IpAddr::V4(ip) = self.hold_address(info, &ep_id, req, &mut held).await? {
                    v4 = Ipv4Network::new(ip, s.subnet.prefix()).ok();
                }
            }
            if let Some(s) = info.ipv6() {
                let req = match spec.ipv6 {
                    Some(ip) => AddressRequest::Static(IpAddr::V6(ip)),
                    None => AddressRequest::Next(Family::V6),
                };
                if let IpAddr::V6(ip) = self.hold_address(info, &ep_id, req, &mut held).await? {
                    v6 = Ipv6Network::new(ip, s.subnet.prefix()).ok();
                }
            }
            Ok((v4, v6))
        }
        .await;
        let (ipv4, ipv6) = match addressed {
            Ok(a) => a,
            Err(e) => {
                self.drop_held(info, &held).await;
                return Err(e);
            }
        };
        let mac = spec
            .mac
            .or_else(|| ipv4.map(|v4| mac_for_ipv4(v4.ip())))
            .unwrap_or_else(names::random_mac);
        let ep = EndpointInfo {
            id: ep_id.clone(),
            ifname,
            mac,
            ipv4,
            ipv6,
            ports: spec.ports.clone(),
        };
        if let Err(e) = driver.validate_endpoint(info, &ep) {
            self.drop_held(info, &held).await;
            return Err(e.into());
        }
        let ctx = SandboxContext {
            name: sb.name.clone(),
            ns,
            handle: handle.clone(),
            is_host,
        };
        let seq = self.records_mut().next_seq();
        let mut record = EndpointRecord {
            info: ep.clone(),
            status: model::Status::Pending,
            network_id: info.id.clone(),
            sandbox_id: sb.id.clone(),
            aliases: spec.aliases.clone(),
            seq,
        };
        // The intent, with the addresses: the attach's one durable commit.
        self.journal_attach(&record, info, &held).await?;
        record.status = model::Status::Active;

        // Kernel work, undone in reverse order on failure.
        let joined = async {
            let joined = driver.join(info, &ep, &ctx).await?;
            if let Err(e) = driver.program_external_connectivity(info, &ep).await {
                let _ = driver.leave_sandbox(info, &ep, Some(&ctx)).await;
                return Err(Error::from(e));
            }
            Ok(joined)
        }
        .await;
        let joined = match joined {
            Ok(j) => j,
            Err(e) => {
                self.journal_attach_failed(&record, info, None).await;
                return Err(e);
            }
        };
        let mut new_sb = sb.clone();
        let routed: Result<()> = async {
            if info.internal {
                return Ok(());
            }
            if let (None, Some(gw), Some(oif)) = (&sb.gateway_v4, joined.gateway_v4, joined.ifindex)
            {
                handle.route().add(Route::default_v4(gw).oif(oif)).await?;
                new_sb.gateway_v4 = Some(ep_id.clone());
            }
            if let (None, Some(gw), Some(oif)) = (&sb.gateway_v6, joined.gateway_v6, joined.ifindex)
            {
                handle.route().add(Route::default_v6(gw).oif(oif)).await?;
                new_sb.gateway_v6 = Some(ep_id.clone());
            }
            Ok(())
        }
        .await;
        // The completion, relaxed (a crash that loses it leaves a `pending` record whose
        // objects all exist: recovery rolls it forward).
        let persisted = match routed {
            Ok(()) => {
                self.journal_attached(&record, (new_sb != sb).then_some(&new_sb))
                    .await
            }
            Err(e) => Err(e),
        };
        // Then published for the other hosts of a cluster network.
        let persisted = match (
            persisted,
            self.cluster_endpoint(&info.id, &ep, &sb.name, &spec.aliases),
        ) {
            (Ok(()), Some(published)) if kind.is_cluster_scoped() => {
                self.publish_endpoint(&published).await
            }
            (other, _) => other,
        };
        if let Err(e) = persisted {
            let _ = driver.revoke_external_connectivity(info, &ep).await;
            let _ = driver.leave_sandbox(info, &ep, Some(&ctx)).await;
            self.journal_attach_failed(&record, info, (new_sb != sb).then_some(&sb))
                .await;
            return Err(e);
        }
        {
            let mut records = self.records_mut();
            records.insert_endpoint(record.clone());
            records.insert_sandbox(new_sb);
        }
        self.register_endpoint_dns(&record, &sb.name);
        if let Some(guard) = net_guard.as_mut() {
            self.cluster_joined(guard, &info.id).await;
        }
        drop(net_guard);
        self.sync_listener(&sb.id).await;
        if let Err(e) = self.write_files(&sb.id) {
            tracing::warn!(sandbox = %sb.name, error = %e, "updating sandbox files");
        }
        tracing::debug!(sandbox = %sb.name, network = %info.name, "connected");
        Ok(self.records().details(&record))
    }

    /// Disconnects a sandbox from a network (`docker network disconnect`). Works when the
    /// sandbox's namespace is already gone. If the endpoint carried the default route, the next
    /// non-internal network of the sandbox (in connection order) takes it over.
    pub async fn disconnect(&self, sandbox: &str, network: &str) -> Result<()> {
        let sb_name = self.records().sandbox(sandbox)?.name.clone();
        self.refuse_gwbridge(&sb_name, network)?;
        let lock = self.sandbox_lock(&sb_name);
        let _guard = lock.lock().await;
        let (ep_id, sb_id) = {
            let records = self.records();
            let sb = records.sandbox(sandbox)?;
            let net = records.network(network)?;
            records
                .endpoints_of(&sb.id)
                .into_iter()
                .find(|e| e.network_id == net.info.id)
                .map(|e| (e.info.id.clone(), sb.id.clone()))
                .ok_or_else(|| Error::NotConnected {
                    sandbox: sb.name.clone(),
                    network: net.info.name.clone(),
                })?
        };
        self.disconnect_locked(&ep_id).await?;
        // The network is left; a failure to leave the egress bridge is only logged (the
        // endpoint stays, harmless, and goes with the sandbox or its next overlay's leave).
        if let Err(e) = self.detach_gwbridge(&sb_id).await {
            tracing::warn!(sandbox = %sb_name, error = %e, "leaving the egress bridge");
        }
        Ok(())
    }

    /// Disconnects many sandbox/network pairs at once (`docker network disconnect` for each),
    /// and returns one result per pair, in order. Each pair succeeds or fails as
    /// [`Controller::disconnect`] would, independently of the others; what is shared is the
    /// kernel work: the host ends of all their bridge veths are deleted in one netlink request
    /// (a link group), so the kernel's teardown is paid once, and their state writes are
    /// committed together by the store. 100 detaches take about what two or three single
    /// ones do (docs/BENCHMARKS.md). Endpoints that publish ports, and overlay endpoints, are
    /// detached one by one (their leave has work to do before the interface goes).
    pub async fn disconnect_many(&self, pairs: &[(&str, &str)]) -> Vec<Result<()>> {
        let mut results: Vec<Option<Result<()>>> = pairs.iter().map(|_| None).collect();
        let mut found: Vec<(usize, String, String)> = Vec::new();
        for (i, (sandbox, network)) in pairs.iter().enumerate() {
            match self.endpoint_to_disconnect(sandbox, network) {
                Ok((sb_id, ep_id)) => found.push((i, sb_id, ep_id)),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let sandbox_ids: Vec<String> = found.iter().map(|(_, sb, _)| sb.clone()).collect();
        let _guards = self.lock_sandboxes(&sandbox_ids).await;
        let ep_ids: Vec<String> = found.iter().map(|(_, _, ep)| ep.clone()).collect();
        self.remove_interfaces_first(&ep_ids).await;
        // Sandboxes in parallel, each sandbox's endpoints in order (its default route moves).
        let mut per_sandbox: Vec<(String, Vec<(usize, String)>)> = Vec::new();
        for (i, sb, ep) in found {
            match per_sandbox.iter_mut().find(|(id, _)| *id == sb) {
                Some((_, eps)) => eps.push((i, ep)),
                None => per_sandbox.push((sb, vec![(i, ep)])),
            }
        }
        let done = futures::future::join_all(per_sandbox.into_iter().map(|(sb, eps)| async move {
            let mut out = Vec::with_capacity(eps.len());
            for (i, ep) in eps {
                let result = self.disconnect_locked(&ep).await;
                if result.is_ok() {
                    if let Err(e) = self.detach_gwbridge(&sb).await {
                        tracing::warn!(sandbox = %sb, error = %e, "leaving the egress bridge");
                    }
                }
                out.push((i, result));
            }
            out
        }))
        .await;
        for (i, result) in done.into_iter().flatten() {
            results[i] = Some(result);
        }
        results.into_iter().map(|r| r.unwrap_or(Ok(()))).collect()
    }

    /// Deletes many sandboxes at once ([`Controller::delete_sandbox`] for each) and returns one
    /// result per name, in order; their bridge veths go in one netlink request, as in
    /// [`Controller::disconnect_many`].
    pub async fn delete_sandboxes(&self, names_or_ids: &[&str]) -> Vec<Result<()>> {
        let mut results: Vec<Option<Result<()>>> = names_or_ids.iter().map(|_| None).collect();
        let mut found: Vec<(usize, String, String)> = Vec::new();
        for (i, key) in names_or_ids.iter().enumerate() {
            let records = self.records();
            match records.sandbox(key) {
                Ok(sb) if found.iter().any(|(_, id, _)| *id == sb.id) => {
                    results[i] = Some(Ok(()));
                }
                Ok(sb) => found.push((i, sb.id.clone(), sb.name.clone())),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let ids: Vec<String> = found.iter().map(|(_, id, _)| id.clone()).collect();
        let guards = self.lock_sandboxes(&ids).await;
        let ep_ids: Vec<String> = {
            let records = self.records();
            ids.iter()
                .flat_map(|id| records.endpoints_of(id))
                .map(|ep| ep.info.id.clone())
                .collect()
        };
        self.remove_interfaces_first(&ep_ids).await;
        let done = futures::future::join_all(
            found
                .iter()
                .map(|(i, id, _)| async move { (*i, self.delete_sandbox_locked(id).await) }),
        )
        .await;
        drop(guards);
        let mut locks = self
            .inner
            .sandbox_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for ((i, result), (_, _, name)) in done.into_iter().zip(&found) {
            if result.is_ok() {
                locks.remove(name);
            }
            results[i] = Some(result);
        }
        drop(locks);
        results.into_iter().map(|r| r.unwrap_or(Ok(()))).collect()
    }

    /// The sandbox id and endpoint id that `disconnect(sandbox, network)` would remove.
    fn endpoint_to_disconnect(&self, sandbox: &str, network: &str) -> Result<(String, String)> {
        let sb_name = self.records().sandbox(sandbox)?.name.clone();
        self.refuse_gwbridge(&sb_name, network)?;
        let records = self.records();
        let sb = records.sandbox(sandbox)?;
        let net = records.network(network)?;
        records
            .endpoints_of(&sb.id)
            .into_iter()
            .find(|e| e.network_id == net.info.id)
            .map(|e| (sb.id.clone(), e.info.id.clone()))
            .ok_or_else(|| Error::NotConnected {
                sandbox: sb.name.clone(),
                network: net.info.name.clone(),
            })
    }

    /// A fresh endpoint id whose first 7 hex digits no other endpoint of this controller has:
    /// drivers name the host end of a veth after them (`veth` + 7 hex, Docker's length), and
    /// among a thousand endpoints two random prefixes of 28 bits meet about once in 500 hosts.
    fn new_endpoint_id(&self) -> String {
        let records = self.records();
        loop {
            let id = names::new_id();
            if !records.endpoint_prefix_taken(records::id_prefix(&id)) {
                return id;
            }
        }
    }

    /// Takes the locks of several sandboxes (by id), in name order so that two batches never
    /// wait for each other.
    async fn lock_sandboxes(&self, ids: &[String]) -> Vec<tokio::sync::OwnedMutexGuard<()>> {
        let mut names: Vec<String> = {
            let records = self.records();
            ids.iter()
                .filter_map(|id| records.sandboxes().get(id).map(|sb| sb.name.clone()))
                .collect()
        };
        names.sort();
        names.dedup();
        let mut guards = Vec::with_capacity(names.len());
        for name in names {
            guards.push(self.sandbox_lock(&name).lock_owned().await);
        }
        guards
    }

    /// Before a batch of detaches: each driver removes the interfaces of its endpoints among
    /// `ep_ids` in as few kernel requests as it can ([`Driver::remove_interfaces`]), so that the
    /// per-endpoint disconnects that follow find them gone. Endpoints with published ports and
    /// cluster endpoints are left to their own disconnect, whose order (withdraw, unpublish,
    /// then remove) matters for them. Best effort: a failure only means each endpoint's own
    /// leave removes its interface.
    async fn remove_interfaces_first(&self, ep_ids: &[String]) {
        type Batch = Vec<(NetworkInfo, EndpointInfo)>;
        let batches: Vec<(Arc<dyn Driver>, Batch)> = {
            let records = self.records();
            let mut batches: Vec<(DriverKind, Batch)> = Vec::new();
            for ep in ep_ids.iter().filter_map(|id| records.endpoints().get(id)) {
                let Some(net) = records.networks.get(&ep.network_id) else {
                    continue;
                };
                let kind = net.info.options.kind();
                if kind.is_cluster_scoped() || !ep.info.ports.is_empty() {
                    continue;
                }
                let item = (net.info.clone(), ep.info.clone());
                match batches.iter_mut().find(|(k, _)| *k == kind) {
                    Some((_, items)) => items.push(item),
                    None => batches.push((kind, vec![item])),
                }
            }
            batches
                .into_iter()
                .filter(|(_, items)| items.len() > 1)
                .filter_map(|(kind, items)| self.driver(kind).ok().map(|d| (d, items)))
                .collect()
        };
        for (driver, items) in batches {
            let refs: Vec<(&NetworkInfo, &EndpointInfo)> =
                items.iter().map(|(n, e)| (n, e)).collect();
            if let Err(e) = driver.remove_interfaces(&refs).await {
                tracing::warn!(driver = %driver.kind(), endpoints = refs.len(), error = %e, "batch removal of interfaces failed; detaching one by one");
            }
        }
    }

    async fn disconnect_locked(&self, ep_id: &str) -> Result<()> {
        let _gate = self.inner.kernel_gate.read().await;
        let (ep, net, sb) = {
            let records = self.records();
            let ep = records
                .endpoints()
                .get(ep_id)
                .cloned()
                .ok_or(Error::NotFound {
                    kind: ObjectKind::Endpoint,
                    name: ep_id.to_owned(),
                })?;
            let net = records
                .networks
                .get(&ep.network_id)
                .cloned()
                .ok_or(Error::NotFound {
                    kind: ObjectKind::Network,
                    name: ep.network_id.clone(),
                })?;
            let sb = records
                .sandboxes()
                .get(&ep.sandbox_id)
                .cloned()
                .ok_or(Error::NotFound {
                    kind: ObjectKind::Sandbox,
                    name: ep.sandbox_id.clone(),
                })?;
            (ep, net, sb)
        };
        let driver = self.driver(net.info.options.kind())?;
        let cluster_scoped = net.info.options.kind().is_cluster_scoped();
        let mut net_guard = match self.cluster() {
            Some(c) if cluster_scoped => Some(c.lock(&net.info.id).await),
            _ => None,
        };
        // The intent first (relaxed: the completion below is durable).
        self.journal_detach(&ep).await?;
        // Withdrawn first: the other hosts stop sending to it before it goes.
        if cluster_scoped {
            if let Err(e) = self.withdraw_endpoint(&net.info.id, ep_id).await {
                self.journal_detach_failed(&ep).await;
                return Err(e);
            }
        }
        let ctx = {
            let live = self.live();
            let l = live.get(&sb.id);
            match (
                l.and_then(|l| l.ns.clone()),
                l.and_then(|l| l.handle.clone()),
            ) {
                (Some(ns), Some(handle)) => Some(SandboxContext {
                    name: sb.name.clone(),
                    ns,
                    handle,
                    is_host: sb.namespace == StoredNamespace::Host,
                }),
                _ => None,
            }
        };
        let left = async {
            driver
                .revoke_external_connectivity(&net.info, &ep.info)
                .await?;
            driver
                .leave_sandbox(&net.info, &ep.info, ctx.as_ref())
                .await
        }
        .await;
        if let Err(e) = left {
            if let Some(published) =
                self.cluster_endpoint(&net.info.id, &ep.info, &sb.name, &ep.aliases)
            {
                if cluster_scoped {
                    if let Err(undo) = self.publish_endpoint(&published).await {
                        tracing::warn!(endpoint = %ep_id, error = %undo, "republishing an endpoint after a failed leave");
                    }
                }
            }
            self.journal_detach_failed(&ep).await;
            return Err(e.into());
        }

        // Move the default route if this endpoint carried it.
        let mut new_sb = sb.clone();
        if sb.gateway_v4.as_deref() == Some(ep_id) || sb.gateway_v6.as_deref() == Some(ep_id) {
            self.reroute(&mut new_sb, ep_id).await;
        }
        // The completion: record and addresses gone, in one durable batch.
        self.journal_detached(&ep, &net.info, (new_sb != sb).then_some(&new_sb))
            .await?;
        {
            let mut records = self.records_mut();
            records.remove_endpoint(ep_id);
            records.insert_sandbox(new_sb);
        }
        self.inner.resolver.remove_endpoint(&net.info.id, &sb.id);
        if let Some(guard) = net_guard.as_mut() {
            self.cluster_left(guard, &net.info.id);
        }
        drop(net_guard);
        self.sync_listener(&sb.id).await;
        if let Err(e) = self.write_files_off_runtime(&sb.id).await {
            tracing::warn!(sandbox = %sb.name, error = %e, "updating sandbox files");
        }
        tracing::debug!(sandbox = %sb.name, network = %net.info.name, "disconnected");
        Ok(())
    }

    /// Gives the default route(s) that `leaving` carried to the sandbox's next eligible
    /// endpoint. Best effort: a sandbox whose namespace is gone needs no route.
    async fn reroute(&self, sb: &mut SandboxRecord, leaving: &str) {
        let handle = self.live().get(&sb.id).and_then(|l| l.handle.clone());
        let candidates: Vec<(EndpointRecord, NetworkInfo)> = {
            let records = self.records();
            records
                .endpoints_of(&sb.id)
                .into_iter()
                .filter(|e| e.info.id != leaving)
                .filter_map(|e| {
                    let net = records.networks.get(&e.network_id)?;
                    // An overlay's gateway address is no way out (the egress bridge is).
                    let routable =
                        !net.info.internal && !net.info.options.kind().is_cluster_scoped();
                    routable.then(|| (e.clone(), net.info.clone()))
                })
                .collect()
        };
        let v4_moves = sb.gateway_v4.as_deref() == Some(leaving);
        let v6_moves = sb.gateway_v6.as_deref() == Some(leaving);
        if v4_moves {
            sb.gateway_v4 = None;
        }
        if v6_moves {
            sb.gateway_v6 = None;
        }
        let Some(handle) = handle else { return };
        for (ep, net) in candidates {
            let Ok(link) = handle.link().get(&ep.info.ifname).await else {
                continue;
            };
            if v4_moves && sb.gateway_v4.is_none() {
                if let Some(IpAddr::V4(gw)) = net.ipv4().and_then(|s| s.gateway) {
                    if handle
                        .route()
                        .add(Route::default_v4(gw).oif(link.index))
                        .await
                        .is_ok()
                    {
                        sb.gateway_v4 = Some(ep.info.id.clone());
                    }
                }
            }
            if v6_moves && sb.gateway_v6.is_none() {
                if let Some(IpAddr::V6(gw)) = net.ipv6().and_then(|s| s.gateway) {
                    if handle
                        .route()
                        .add(Route::default_v6(gw).oif(link.index))
                        .await
                        .is_ok()
                    {
                        sb.gateway_v6 = Some(ep.info.id.clone());
                    }
                }
            }
        }
    }

    /// Fails with [`Error::PortAlreadyPublished`], naming the owner, if another endpoint
    /// publishes one of the host ports `wanted` asks for (on a network with `options`).
    fn check_ports_free(
        &self,
        wanted: &[crate::driver::PortMapping],
        options: &DriverOptions,
    ) -> Result<()> {
        let records = self.records();
        for ep in records
            .endpoints()
            .values()
            .filter(|e| !e.info.ports.is_empty())
        {
            let Some(net) = records.networks.get(&ep.network_id) else {
                continue;
            };
            for have in &ep.info.ports {
                let have_ip = ports::effective_host_ip(have, &net.info.options);
                for want in wanted {
                    let want_ip = ports::effective_host_ip(want, options);
                    if ports::clash(have, have_ip, want, want_ip) {
                        return Err(Error::PortAlreadyPublished {
                            protocol: want.protocol,
                            host_port: want.host_port,
                            host_ip: want_ip,
                            owner: records
                                .sandboxes()
                                .get(&ep.sandbox_id)
                                .map_or_else(|| ep.sandbox_id.clone(), |sb| sb.name.clone()),
                            network: net.info.name.clone(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// The endpoint of a sandbox on a network.
    pub fn endpoint(&self, sandbox: &str, network: &str) -> Result<EndpointDetails> {
        let records = self.records();
        let sb = records.sandbox(sandbox)?;
        let net = records.network(network)?;
        records
            .endpoints_of(&sb.id)
            .into_iter()
            .find(|e| e.network_id == net.info.id)
            .map(|e| records.details(e))
            .ok_or_else(|| Error::NotConnected {
                sandbox: sb.name.clone(),
                network: net.info.name.clone(),
            })
    }

    // ---- internals -----------------------------------------------------------------------

    fn records(&self) -> std::sync::MutexGuard<'_, Records> {
        self.inner.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn records_mut(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records()
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.inner.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live_mut(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.live()
    }

    fn sandbox_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inner
            .sandbox_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    fn driver(&self, kind: DriverKind) -> Result<Arc<dyn Driver>> {
        self.inner
            .drivers
            .get(&kind)
            .cloned()
            .ok_or(Error::InvalidRequest {
                kind: ObjectKind::Network,
                name: kind.to_string(),
                reason: "no such driver in this controller".into(),
            })
    }

    async fn put<T: serde::Serialize>(&self, prefix: &str, id: &str, value: &T) -> Result<()> {
        self.journal_put(prefix, id, value, true).await
    }

    async fn release_addresses(&self, net: &NetworkInfo, addrs: &[IpAddr]) {
        for ip in addrs {
            if let Err(e) = self.ipam_for(net).release(&net.id, *ip).await {
                tracing::warn!(network = %net.name, %ip, error = %e, "releasing address");
            }
        }
    }

    async fn release_subnets(&self, net: &NetworkInfo) {
        for s in &net.subnets {
            if let Err(e) = self.ipam_for(net).release_subnet(&net.id, s.subnet).await {
                tracing::warn!(network = %net.name, subnet = %s.subnet, error = %e, "releasing subnet");
            }
        }
    }

    /// The destination prefixes of the host's routes, which new pool subnets must not overlap.
    async fn host_prefixes(&self) -> Result<Vec<IpNetwork>> {
        let mut out = Vec::new();
        for v in [IpVersion::V4, IpVersion::V6] {
            for r in self.inner.host_handle.route().list(v).await? {
                if r.dst.prefix() > 0 {
                    out.push(r.dst);
                }
            }
        }
        Ok(out)
    }

    /// Creates `bridge`, `host` and `none` if this state directory has not got them yet.
    async fn ensure_predefined(&self) -> Result<()> {
        let _guard = self.inner.network_lock.lock().await;
        let wanted = [
            (
                "bridge",
                DriverOptions::Bridge(BridgeOptions {
                    default_bridge: true,
                    name: Some(crate::driver::bridge::DEFAULT_BRIDGE_NAME.to_owned()),
                    ..BridgeOptions::default()
                }),
            ),
            ("host", DriverOptions::Host),
            ("none", DriverOptions::Null),
        ];
        for (name, driver) in wanted {
            if self.records().network_by_name(name).is_none() {
                let spec = NetworkSpec {
                    name: name.into(),
                    driver,
                    ..NetworkSpec::default()
                };
                self.create_network_locked(spec, true).await?;
            }
        }
        Ok(())
    }

    /// After a restart: tells each driver about its stored networks and their endpoints.
    fn restore_drivers(&self) {
        let records = self.records();
        for net in records.networks.values() {
            let Some(driver) = self.inner.drivers.get(&net.info.options.kind()) else {
                continue;
            };
            let endpoints: Vec<EndpointInfo> = records
                .endpoints_on(&net.info.id)
                .map(|e| e.info.clone())
                .collect();
            driver.restore_network(&net.info, &endpoints);
        }
    }

    /// After a restart: opens the namespaces of the stored sandboxes and handles inside them.
    async fn reopen_sandboxes(&self) {
        let sandboxes: Vec<SandboxRecord> = self.records().sandboxes().values().cloned().collect();
        for sb in sandboxes {
            let ns = match &sb.namespace {
                StoredNamespace::Owned(name) => NetNs::open(name).ok(),
                StoredNamespace::Path(p) => NetNs::open_path(p).ok(),
                StoredNamespace::Host => Some(self.inner.host.clone()),
            };
            let handle = match (&sb.namespace, &ns) {
                (StoredNamespace::Host, _) => Some(self.inner.host_handle.clone()),
                (_, Some(ns)) => Handle::in_netns(ns).await.ok(),
                (_, None) => None,
            };
            if ns.is_none() {
                tracing::warn!(sandbox = %sb.name, "the namespace of a stored sandbox is gone");
            }
            self.live_mut().insert(sb.id.clone(), Live { ns, handle });
        }
    }

    fn listeners(&self) -> std::sync::MutexGuard<'_, HashMap<String, Listener>> {
        self.inner
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the resolver about a network, if its sandboxes use the embedded DNS at all: the
    /// default `bridge` network forwards but has no names, nor do the egress bridge and
    /// `ingress` (as on Docker: a replica's name must not answer with its ingress address,
    /// which only the routing mesh uses); `host` and `none` are not its business.
    fn register_network_dns(&self, net: &NetworkRecord) {
        let info = &net.info;
        if !info.options.kind().needs_addresses() {
            return;
        }
        let dns = NetworkDns {
            internal: info.internal,
            upstreams: None,
            resolves_names: !is_default_bridge(info) && !is_gwbridge(net) && !is_ingress(net),
        };
        let key = NetworkKey {
            id: info.id.clone(),
            name: info.name.clone(),
        };
        if let Err(e) = self.inner.resolver.upsert_network(key, dns) {
            tracing::warn!(network = %info.name, error = %e, "registering a network with DNS");
        }
    }

    /// Tells the resolver about an endpoint (its sandbox's name, aliases and addresses).
    fn register_endpoint_dns(&self, ep: &EndpointRecord, sandbox_name: &str) {
        let registered = self
            .records()
            .networks
            .get(&ep.network_id)
            .is_some_and(|n| n.info.options.kind().needs_addresses());
        if !registered {
            return;
        }
        let dns = EndpointDns {
            network_id: ep.network_id.clone(),
            sandbox_id: ep.sandbox_id.clone(),
            name: sandbox_name.to_owned(),
            aliases: ep.aliases.clone(),
            ipv4: ep.info.ipv4.map(|n| n.ip()),
            ipv6: ep.info.ipv6.map(|n| n.ip()),
        };
        if let Err(e) = self.inner.resolver.upsert_endpoint(dns) {
            tracing::warn!(sandbox = %sandbox_name, error = %e, "registering an endpoint with DNS");
        }
    }

    /// Starts the sandbox's DNS listener if it is on a user-defined network, stops it if not.
    async fn sync_listener(&self, sandbox_id: &str) {
        let wants = self.records().uses_embedded_dns(sandbox_id);
        let has = self.listeners().contains_key(sandbox_id);
        if wants && !has {
            let ns = self.live().get(sandbox_id).and_then(|l| l.ns.clone());
            let Some(ns) = ns else { return };
            match self
                .inner
                .resolver
                .listen(sandbox_id, &ns, SandboxDns::default())
                .await
            {
                Ok(listener) => {
                    self.listeners().insert(sandbox_id.to_owned(), listener);
                }
                Err(e) => tracing::warn!(sandbox = %sandbox_id, error = %e, "starting DNS"),
            }
        } else if !wants && has {
            let listener = self.listeners().remove(sandbox_id);
            if let Some(listener) = listener {
                listener.stop().await;
            }
        }
    }

    /// After a restart: the resolver learns every network and endpoint again, and listeners
    /// start in the sandboxes that had them.
    async fn restore_dns(&self) {
        let (networks, endpoints, sandboxes) = {
            let records = self.records();
            let networks: Vec<NetworkRecord> = records.networks.values().cloned().collect();
            let endpoints: Vec<(EndpointRecord, String)> = records
                .endpoints()
                .values()
                .map(|e| {
                    let name = records
                        .sandboxes()
                        .get(&e.sandbox_id)
                        .map(|s| s.name.clone())
                        .unwrap_or_default();
                    (e.clone(), name)
                })
                .collect();
            let sandboxes: Vec<String> = records.sandboxes().keys().cloned().collect();
            (networks, endpoints, sandboxes)
        };
        for net in &networks {
            self.register_network_dns(net);
        }
        for (ep, name) in &endpoints {
            self.register_endpoint_dns(ep, name);
        }
        for id in sandboxes {
            self.sync_listener(&id).await;
        }
    }

    fn render_files(&self, sb: &SandboxRecord, records: &Records) -> SandboxFiles {
        let host_rc =
            std::fs::read_to_string(host_resolv_conf(&self.inner.config, &self.inner.host))
                .unwrap_or_default();
        if sb.namespace == StoredNamespace::Host {
            let hosts_path = self
                .inner
                .config
                .host_hosts
                .clone()
                .unwrap_or_else(|| PathBuf::from("/etc/hosts"));
            return SandboxFiles {
                resolv_conf: host_rc,
                hosts: std::fs::read_to_string(hosts_path).unwrap_or_default(),
            };
        }
        let addresses: Vec<IpAddr> = records
            .endpoints_of(&sb.id)
            .iter()
            .flat_map(|e| {
                e.info
                    .ipv4
                    .map(|n| IpAddr::V4(n.ip()))
                    .into_iter()
                    .chain(e.info.ipv6.map(|n| IpAddr::V6(n.ip())))
            })
            .collect();
        let host_rc = ResolvConf::parse(&host_rc);
        let resolv_conf = if records.uses_embedded_dns(&sb.id) {
            // Docker's: the embedded server, the host's search domains, and ndots:0 so that
            // single-label names (other containers) are asked as they are.
            ResolvConf {
                nameservers: vec![crate::dns::LISTEN_ADDR.ip()],
                search: host_rc.search.clone(),
                options: vec!["ndots:0".into()],
            }
        } else {
            host_rc.without_loopback()
        };
        SandboxFiles {
            resolv_conf: resolv_conf.render(),
            hosts: files::render_hosts(&sb.hostname, &addresses),
        }
    }

    /// [`Controller::write_files`] on tokio's blocking pool. A rewrite replaces the file
    /// (rename), and on a filesystem mounted with `discard` freeing the old file's blocks waits
    /// for the disk; off the runtime, the detaches of a batch (`disconnect_many`) wait for
    /// their disks in parallel instead of one after the other.
    async fn write_files_off_runtime(&self, id: &str) -> Result<()> {
        let this = self.clone();
        let id = id.to_owned();
        tokio::task::spawn_blocking(move || this.write_files(&id))
            .await
            .unwrap_or_else(|e| {
                Err(Error::Io {
                    what: "writing sandbox files".into(),
                    source: std::io::Error::other(e),
                })
            })
    }

    /// Writes a named sandbox's files where `ip netns exec` finds them.
    fn write_files(&self, id: &str) -> Result<()> {
        let (netns, files) = {
            let records = self.records();
            let Some(sb) = records.sandboxes().get(id) else {
                return Ok(());
            };
            let StoredNamespace::Owned(netns) = &sb.namespace else {
                return Ok(());
            };
            (netns.clone(), self.render_files(sb, &records))
        };
        let dir = self.inner.config.sandbox_files_dir.join(&netns);
        for (file, text) in [("resolv.conf", &files.resolv_conf), ("hosts", &files.hosts)] {
            let path = dir.join(file);
            files::write_in_place(&path, text).map_err(|source| Error::Io {
                what: format!("writing {}", path.display()),
                source,
            })?;
        }
        Ok(())
    }
}

/// The host's `resolv.conf`: the configured one, else `/etc/netns/<host>/resolv.conf` for a
/// named host namespace that has one (what `ip netns exec` would show), else `/etc/resolv.conf`.
fn host_resolv_conf(config: &ControllerConfig, host: &NetNs) -> PathBuf {
    if let Some(p) = &config.host_resolv_conf {
        return p.clone();
    }
    if let Some(name) = host.name() {
        let p = config.sandbox_files_dir.join(name).join("resolv.conf");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("/etc/resolv.conf")
}

/// The name of the egress bridge network of a cluster host (Docker's `docker_gwbridge`), and
/// of its bridge device: every sandbox on a non-internal overlay also has an endpoint on it,
/// which carries its default route (icc off, masquerade on). Created on demand, hidden from the
/// sandbox's endpoints, shown in its own inspect as containers `gateway_<sandbox id, 12 hex>`.
pub const GWBRIDGE_NETWORK: &str = "wharf_gwbridge";

/// The routing mesh's overlay network (Docker's `ingress`): every host's `ingress-sbox` and
/// every replica of a service with published ports has an endpoint on it.
pub const INGRESS_NETWORK: &str = "ingress";

/// Whether a network is the routing mesh's `ingress` overlay (created by wharf).
pub(crate) fn is_ingress(net: &NetworkRecord) -> bool {
    net.predefined
        && net.info.name == INGRESS_NETWORK
        && net.info.options.kind().is_cluster_scoped()
}

/// Who joins a network: a standalone sandbox, or a service's task (which may join
/// non-attachable cluster networks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Joiner {
    Standalone,
    Task,
}

/// Whether a network is the egress bridge (no name resolution on it; managed by wharf).
pub(crate) fn is_gwbridge(net: &NetworkRecord) -> bool {
    net.predefined && net.info.name == GWBRIDGE_NETWORK
}

/// Whether a network is the predefined default `bridge` (no name resolution on it).
fn is_default_bridge(info: &NetworkInfo) -> bool {
    matches!(
        &info.options,
        DriverOptions::Bridge(BridgeOptions {
            default_bridge: true,
            ..
        })
    )
}

fn default_drivers(host: &Handle) -> HashMap<DriverKind, Arc<dyn Driver>> {
    let mut drivers: HashMap<DriverKind, Arc<dyn Driver>> = HashMap::new();
    drivers.insert(
        DriverKind::Bridge,
        Arc::new(BridgeDriver::new(host.clone())),
    );
    drivers.insert(DriverKind::Host, Arc::new(HostDriver));
    drivers.insert(DriverKind::Null, Arc::new(NullDriver));
    drivers.insert(
        DriverKind::Macvlan,
        Arc::new(MacvlanDriver::new(host.clone())),
    );
    drivers
}

/// Splits a spec's IPAM entries into at most one IPv4 and one IPv6 entry.
fn split_ipam(spec: &NetworkSpec) -> Result<(Option<IpamConfig>, Option<IpamConfig>)> {
    let mut v4 = None;
    let mut v6 = None;
    for cfg in &spec.ipam {
        let family = cfg
            .subnet
            .map(|s| if s.is_ipv4() { Family::V4 } else { Family::V6 })
            .unwrap_or(Family::V4);
        let slot = if family == Family::V4 {
            &mut v4
        } else {
            &mut v6
        };
        if slot.replace(cfg.clone()).is_some() {
            return Err(Error::InvalidRequest {
                kind: ObjectKind::Network,
                name: spec.name.clone(),
                reason: format!("more than one {family} IPAM entry"),
            });
        }
    }
    if v6.is_some() && !spec.enable_ipv6 {
        return Err(Error::InvalidRequest {
            kind: ObjectKind::Network,
            name: spec.name.clone(),
            reason: "an IPv6 subnet was given but enable_ipv6 is off".into(),
        });
    }
    Ok((v4, v6))
}

/// Creates `dir` (and parents) private to root: 0700.
fn make_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let what = || format!("creating state directory {}", dir.display());
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| Error::Io {
            what: what(),
            source,
        })?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|source| {
        Error::Io {
            what: what(),
            source,
        }
    })
}

/// A stable identifier of this host for the IPv6 ULA prefix: `/etc/machine-id` if readable.
fn host_id() -> Vec<u8> {
    std::fs::read("/etc/machine-id").unwrap_or_else(|_| b"wharf".to_vec())
}

#[cfg(test)]
mod tests;
