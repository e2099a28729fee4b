//! A lab cluster for overlay tests: hosts on one underlay segment, each with its own controller
//! (own state directory, own namespace prefix, own files directory), all sharing one cluster
//! store.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wharf::controller::{ClusterConfig, Controller, ControllerConfig, EndpointSpec, SandboxSpec};
use wharf::driver::PeerEntry;
use wharf::lab::{Lab, probe};
use wharf::store::{MemoryStore, Store};
use wharf::sys::NetNs;
use wharf::sys::rtnl::{Handle, NeighState};

/// The membership lease of the hosts, unless a test asks for another.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// How long a lookup may take in these tests.
pub const QUICK: Duration = Duration::from_millis(800);

/// One host of the cluster.
pub struct Host {
    pub role: String,
    pub ns: NetNs,
    pub addr: Ipv4Addr,
    pub config: ControllerConfig,
    pub wharf: Option<Controller>,
}

impl Host {
    /// The controller (panics while the host is stopped).
    pub fn wharf(&self) -> &Controller {
        self.wharf
            .as_ref()
            .expect("the host's controller is running")
    }

    /// The prefix of every namespace this host's controller creates.
    pub fn prefix(&self) -> &str {
        &self.config.netns_prefix
    }

    /// Starts a container (a sandbox) and connects it to `network`.
    pub async fn run(&self, name: &str, network: &str) -> IpAddr {
        let wharf = self.wharf();
        wharf
            .create_sandbox(SandboxSpec::new(name))
            .await
            .expect("sandbox");
        let ep = wharf
            .connect(name, network, EndpointSpec::default())
            .await
            .expect("connect");
        IpAddr::V4(ep.ipv4.expect("an IPv4 address"))
    }

    /// "Ping by name" as a container does it: resolve with its resolv.conf, then ping.
    pub async fn ping_by_name(&self, from: &str, to: &str) -> bool {
        match self.lookup(from, to).await {
            Some(ip) => self.ping(from, ip).await,
            None => false,
        }
    }

    /// Resolves a name from inside a container, as its C library would.
    pub async fn lookup(&self, from: &str, name: &str) -> Option<IpAddr> {
        let ns = self.wharf().sandbox_netns(from).unwrap();
        let rc = self.wharf().sandbox(from).unwrap().files.resolv_conf;
        probe::lookup(&ns, &rc, name, QUICK).await
    }

    pub async fn ping(&self, from: &str, ip: IpAddr) -> bool {
        let ns = self.wharf().sandbox_netns(from).unwrap();
        probe::can_ping(&ns, ip, Duration::from_millis(500)).await
    }

    /// The name of the network's namespace on this host.
    pub fn overlay_netns(&self, network_id: &str) -> String {
        format!("{}ov-{}", self.prefix(), &network_id[..12])
    }

    pub fn has_overlay_netns(&self, network_id: &str) -> bool {
        NetNs::list_named()
            .unwrap()
            .contains(&self.overlay_netns(network_id))
    }

    /// The static entries on the network's `vxlan0` here, as `bridge fdb` / `ip neigh` show
    /// them (`None`: no data plane).
    pub async fn entries(&self, network_id: &str) -> Option<BTreeSet<PeerEntry>> {
        let ns = NetNs::open(&self.overlay_netns(network_id)).ok()?;
        let h = Handle::in_netns(&ns).await.unwrap();
        let vx = h.link().get("vxlan0").await.ok()?;
        let mut out = BTreeSet::new();
        for e in h.fdb().list_on(vx.index).await.unwrap() {
            if let (false, Some(vtep)) = (e.master, e.dst) {
                out.insert(PeerEntry::Fdb { mac: e.mac, vtep });
            }
        }
        for n in h.neigh().list().await.unwrap() {
            if n.index == vx.index && n.state == NeighState::Permanent {
                out.insert(PeerEntry::Neighbour {
                    ip: n.ip,
                    mac: n.mac.unwrap(),
                });
            }
        }
        Some(out)
    }
}

/// Hosts on one underlay, each with a controller, sharing a cluster store. Everything is
/// deleted on drop.
pub struct Cluster {
    pub hosts: Vec<Host>,
    pub store: Arc<dyn Store>,
    /// A namespace on the underlay with no controller: a client outside the cluster.
    pub outside: Option<(NetNs, Ipv4Addr)>,
    // Dropped last: the namespaces outlive the controllers' handles.
    pub lab: Lab,
}

impl Cluster {
    /// Hosts named `roles`, sharing a `MemoryStore`.
    pub async fn new(roles: &[&str]) -> Self {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let s = store.clone();
        Self::with_stores(roles, store, move |_| s.clone()).await
    }

    /// Hosts named `roles`; host `i` reaches the cluster store through `store_of(i)` (e.g. a
    /// wrapper that loses its watch), `store` is the shared store itself.
    pub async fn with_stores(
        roles: &[&str],
        store: Arc<dyn Store>,
        store_of: impl Fn(usize) -> Arc<dyn Store>,
    ) -> Self {
        Self::with_options(roles, store, store_of, LEASE_TTL).await
    }

    /// Hosts named `roles` sharing a `MemoryStore`, with membership leases of `lease_ttl`.
    pub async fn with_lease_ttl(roles: &[&str], lease_ttl: Duration) -> Self {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let s = store.clone();
        Self::with_options(roles, store, move |_| s.clone(), lease_ttl).await
    }

    /// Hosts named `roles` sharing a `MemoryStore`, plus [`Cluster::outside`], a client on
    /// the underlay.
    pub async fn with_outside(roles: &[&str]) -> Self {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let s = store.clone();
        Self::build(roles, store, move |_| s.clone(), LEASE_TTL, true).await
    }

    /// Hosts named `roles`, reaching the store through `store_of(i)`, with leases of `lease_ttl`.
    pub async fn with_options(
        roles: &[&str],
        store: Arc<dyn Store>,
        store_of: impl Fn(usize) -> Arc<dyn Store>,
        lease_ttl: Duration,
    ) -> Self {
        Self::build(roles, store, store_of, lease_ttl, false).await
    }

    /// The hosts; with `outside`, one more namespace on the underlay without a controller.
    pub async fn build(
        roles: &[&str],
        store: Arc<dyn Store>,
        store_of: impl Fn(usize) -> Arc<dyn Store>,
        lease_ttl: Duration,
        outside: bool,
    ) -> Self {
        let lab = Lab::new();
        let mut all: Vec<&str> = roles.to_vec();
        if outside {
            all.push("outside");
        }
        let mut underlay = lab.underlay(&all).await.expect("underlay");
        let outside = if outside { underlay.pop() } else { None };
        let mut hosts = Vec::new();
        for (i, ((ns, addr), role)) in underlay.into_iter().zip(roles).enumerate() {
            let state = lab.temp_dir(&format!("{role}-state")).unwrap();
            let files_dir = lab.temp_dir(&format!("{role}-etc-netns")).unwrap();
            let resolv = files_dir.join("host-resolv.conf");
            std::fs::write(&resolv, "nameserver 198.51.100.53\n").unwrap();
            let mut config = ControllerConfig::new(state)
                .host(ns.clone())
                .netns_prefix(format!("{}{role}-", lab.netns_prefix()))
                .cluster(
                    ClusterConfig::new(store_of(i), *role, IpAddr::V4(addr)).lease_ttl(lease_ttl),
                );
            config.sandbox_files_dir = files_dir;
            config.host_resolv_conf = Some(resolv);
            let wharf = Controller::open(config.clone())
                .await
                .expect("controller opens");
            hosts.push(Host {
                role: role.to_string(),
                ns,
                addr,
                config,
                wharf: Some(wharf),
            });
        }
        Self {
            hosts,
            store,
            outside,
            lab,
        }
    }

    pub fn host(&self, role: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.role == role)
            .expect("a host of the cluster")
    }

    pub fn host_mut(&mut self, role: &str) -> &mut Host {
        self.hosts
            .iter_mut()
            .find(|h| h.role == role)
            .expect("a host of the cluster")
    }

    /// Stops a host's controller (its containers stay).
    pub async fn stop(&mut self, role: &str) {
        let host = self.host_mut(role);
        host.wharf = None;
        // Let the watcher notice and let go of the state store.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// Kills a host: its controller is dropped without any cleanup (its containers stay, its
    /// lease is no longer refreshed).
    pub async fn kill(&mut self, role: &str) {
        self.stop(role).await;
    }

    /// Starts a stopped host's controller again. The previous controller's background work
    /// (a reconcile in flight) may hold its state store a moment longer: opening is retried
    /// for a while.
    pub async fn start(&mut self, role: &str) {
        let host = self.host_mut(role);
        let deadline = Instant::now() + Duration::from_secs(3);
        let wharf = loop {
            match Controller::open(host.config.clone()).await {
                Ok(w) => break w,
                Err(e) if Instant::now() < deadline && format!("{e:?}").contains("AlreadyOpen") => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("controller reopens: {e}"),
            }
        };
        host.wharf = Some(wharf);
    }
}

/// Polls `f` until it returns true or `within` passes; returns its last answer.
pub async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Checks that a host's state agrees with itself, the cluster store and the kernel, as a
/// recovered host must (panics naming `when` and what differs):
/// - its endpoint records in the cluster store are exactly its endpoints on cluster networks;
/// - no address is held twice on a cluster network (all hosts' records), every address of its
///   endpoints is allocated in the cluster IPAM in its name, and nothing else is in its name;
/// - it has the data-plane namespace (`<prefix>ov-...`) of exactly the cluster networks it has
///   endpoints on, each with exactly their veths;
/// - a sandbox has an egress-bridge endpoint exactly when it is on a non-internal overlay, and
///   the host's namespace holds exactly those endpoints' veths.
pub async fn assert_cluster_state(
    wharf: &Controller,
    node: &str,
    host: &NetNs,
    prefix: &str,
    store: &Arc<dyn Store>,
    when: &str,
) {
    use std::collections::BTreeMap;
    use wharf::controller::{ClusterEndpoint, GWBRIDGE_NETWORK};
    use wharf::ipam::{Ipam, IpamOptions};

    let cluster_nets: BTreeMap<String, (String, bool)> = wharf
        .list_networks()
        .into_iter()
        .filter(|n| n.driver == "overlay")
        .map(|n| (n.id.clone(), (n.name.clone(), n.internal)))
        .collect();
    let sandboxes = wharf.list_sandboxes();
    let local: BTreeMap<String, (String, String, wharf::controller::EndpointDetails)> = sandboxes
        .iter()
        .flat_map(|s| s.endpoints.iter().map(move |e| (s, e)))
        .filter(|(_, e)| cluster_nets.contains_key(&e.network_id))
        .map(|(s, e)| {
            (
                e.id.clone(),
                (s.name.clone(), e.network_id.clone(), e.clone()),
            )
        })
        .collect();

    // Records in the cluster store.
    let records: Vec<ClusterEndpoint> = store
        .list("cluster/v1/endpoints/")
        .await
        .unwrap()
        .iter()
        .map(|kv| serde_json::from_slice(&kv.value).unwrap())
        .collect();
    let mine: BTreeSet<String> = records
        .iter()
        .filter(|r| r.node == node)
        .map(|r| r.id.clone())
        .collect();
    let expected: BTreeSet<String> = local.keys().cloned().collect();
    assert_eq!(
        mine, expected,
        "{when}: {node}'s endpoint records in the cluster store"
    );
    let mut seen = BTreeSet::new();
    for r in &records {
        if let Some(ip) = r.ipv4 {
            assert!(
                seen.insert((r.network_id.clone(), ip)),
                "{when}: {ip} is held twice on {}",
                r.network_id
            );
        }
    }

    // The cluster IPAM: exactly the local endpoints' addresses in this node's name.
    let ipam = Ipam::open(store.clone(), IpamOptions::cluster(b"wharf"))
        .await
        .unwrap();
    let owned: BTreeSet<(String, IpAddr, String)> = ipam
        .stored_addresses()
        .await
        .unwrap()
        .into_iter()
        .filter_map(|a| {
            let (n, ep) = a.owner.as_deref()?.rsplit_once('/')?;
            (n == node).then(|| (a.network_id.clone(), a.ip, ep.to_owned()))
        })
        .collect();
    let wanted: BTreeSet<(String, IpAddr, String)> = local
        .iter()
        .map(|(id, (_, net, e))| (net.clone(), IpAddr::V4(e.ipv4.unwrap()), id.clone()))
        .collect();
    assert_eq!(
        owned, wanted,
        "{when}: {node}'s addresses in the cluster IPAM"
    );

    // Data planes: one namespace per cluster network with local endpoints, holding their veths.
    let named = NetNs::list_named().unwrap();
    let planes: BTreeSet<String> = named
        .iter()
        .filter(|n| n.starts_with(&format!("{prefix}ov-")))
        .cloned()
        .collect();
    let wanted_planes: BTreeMap<String, BTreeSet<String>> =
        local.values().fold(BTreeMap::new(), |mut m, (_, net, e)| {
            m.entry(format!("{prefix}ov-{}", &net[..12]))
                .or_insert_with(BTreeSet::new)
                .insert(format!("veth{}", &e.id[..7]));
            m
        });
    assert_eq!(
        planes,
        wanted_planes.keys().cloned().collect::<BTreeSet<_>>(),
        "{when}: {node}'s overlay namespaces"
    );
    for (plane, veths) in &wanted_planes {
        let got = veths_in(&NetNs::open(plane).unwrap()).await;
        assert_eq!(&got, veths, "{when}: veths in {plane}");
    }

    // The egress bridge: an endpoint per sandbox on a non-internal overlay, and its veths.
    let mut gw_veths = BTreeSet::new();
    for s in &sandboxes {
        let needs = s.endpoints.iter().any(|e| {
            cluster_nets
                .get(&e.network_id)
                .is_some_and(|(_, internal)| !internal)
        });
        let gw = wharf.endpoint(&s.name, GWBRIDGE_NETWORK).ok();
        assert_eq!(
            gw.is_some(),
            needs,
            "{when}: egress-bridge endpoint of {}",
            s.name
        );
        if let Some(gw) = gw {
            gw_veths.insert(format!("veth{}", &gw.id[..7]));
        }
    }
    let got = veths_in(host).await;
    assert_eq!(got, gw_veths, "{when}: veths in {node}'s namespace");
}

/// The `veth…` links of a namespace.
async fn veths_in(ns: &NetNs) -> BTreeSet<String> {
    super::link_names(ns)
        .await
        .into_iter()
        .filter(|n| n.starts_with("veth"))
        .collect()
}
