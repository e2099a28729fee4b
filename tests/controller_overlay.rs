//! Overlay networks across hosts (TUTORIALS.md scenario 4): hosts are lab namespaces on one
//! underlay segment, each with its own controller, sharing one cluster store.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;

use common::cluster::{Cluster, Host, eventually};
use wharf::controller::{ClusterEndpoint, EndpointSpec, Error, NetworkSpec, SandboxSpec};
use wharf::driver::{DriverOptions, OverlayOptions, PeerEntry};
use wharf::store::{KeyValue, LeaseId, MemoryStore, Op, Revision, Store, StoreError, WatchStream};

const CONVERGED: Duration = Duration::from_secs(3);

fn overlay(name: &str) -> NetworkSpec {
    NetworkSpec::new(name)
        .driver(DriverOptions::Overlay(OverlayOptions::default()))
        .attachable()
}

#[tokio::test]
async fn scenario_4_step_6_attachable_overlay_by_name_across_hosts() {
    let c = Cluster::new(&["host1", "host2"]).await;
    let (host1, host2) = (c.host("host1"), c.host("host2"));

    // docker network create --driver overlay --attachable test-net (on host1)
    let net = host1
        .wharf()
        .create_network(overlay("test-net"))
        .await
        .unwrap();
    assert_eq!(
        (net.driver.as_str(), net.scope.as_str()),
        ("overlay", "swarm")
    );
    assert!(net.attachable);
    assert_eq!(net.ipam.config[0].subnet, "10.0.0.0/24");
    assert_eq!(
        net.options["com.docker.network.driver.overlay.vxlanid_list"],
        "4096"
    );
    assert!(
        !host2.has_overlay_netns(&net.id),
        "host2 has nothing of test-net yet"
    );

    // docker run -dit --name alpine1 --network test-net alpine (host1), alpine2 on host2
    let ip1 = host1.run("alpine1", "test-net").await;
    let ip2 = host2.run("alpine2", "test-net").await;
    assert!(host2.has_overlay_netns(&net.id));

    // alpine1 pings alpine2 by name across hosts, and back.
    assert!(
        eventually(CONVERGED, || host1.ping_by_name("alpine1", "alpine2")).await,
        "alpine1 -> alpine2 by name"
    );
    assert!(
        host2.ping_by_name("alpine2", "alpine1").await,
        "alpine2 -> alpine1 by name"
    );
    assert_eq!(host1.lookup("alpine1", "alpine2").await, Some(ip2));
    assert_eq!(host2.lookup("alpine2", "alpine1.test-net").await, Some(ip1));

    // Inspect on each host: its own container, and both nodes as peers.
    let on2 = host2.wharf().inspect_network("test-net").unwrap();
    assert_eq!(on2.id, net.id);
    let names: Vec<&str> = on2.containers.values().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["alpine2"]);
    let peers: Vec<&str> = on2.peers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(peers, ["host1", "host2"]);

    // The container's interface: Docker's MAC, the overlay's MTU (underlay 1500 - 50).
    let a1 = host1.wharf().endpoint("alpine1", "test-net").unwrap();
    assert_eq!(a1.mac.to_string(), "02:42:0a:00:00:02");
    assert_eq!(
        a1.gateway.map(|g| g.to_string()).as_deref(),
        Some("10.0.0.1")
    );
    let h = wharf::sys::rtnl::Handle::in_netns(&host1.wharf().sandbox_netns("alpine1").unwrap())
        .await
        .unwrap();
    assert_eq!(h.link().get("eth0").await.unwrap().mtu, 1450);

    // Clean up: containers, then test-net. The overlay namespaces go with the last container.
    host1.wharf().delete_sandbox("alpine1").await.unwrap();
    host2.wharf().delete_sandbox("alpine2").await.unwrap();
    assert!(!host1.has_overlay_netns(&net.id) && !host2.has_overlay_netns(&net.id));
    host2.wharf().delete_network("test-net").await.unwrap();
    // Nothing of the network is left; only the hosts' membership records remain.
    let left: Vec<String> = c
        .store
        .list("cluster/v1/")
        .await
        .unwrap()
        .into_iter()
        .map(|kv| kv.key)
        .filter(|k| !k.starts_with("cluster/v1/nodes/"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(
        eventually(CONVERGED, || async {
            host1.wharf().inspect_network("test-net").is_err()
        })
        .await,
        "host1 learns that test-net is gone"
    );
}

/// The entries `host` must hold for `network`: one FDB and one neighbour entry per endpoint of
/// another host, as the cluster store lists them.
async fn expected_entries(c: &Cluster, host: &Host, network_id: &str) -> BTreeSet<PeerEntry> {
    c.store
        .list(&format!("cluster/v1/endpoints/{network_id}/"))
        .await
        .unwrap()
        .iter()
        .map(|kv| serde_json::from_slice::<ClusterEndpoint>(&kv.value).unwrap())
        .filter(|e| e.node != host.role)
        .flat_map(|e| e.entries())
        .collect()
}

/// Waits until every host with a data plane for the network holds exactly the entries the
/// store asks for; returns the differences if it does not happen.
async fn converge(c: &Cluster, network_id: &str) -> Result<(), String> {
    let last = std::sync::Mutex::new(String::new());
    let ok = eventually(CONVERGED, || {
        let last = &last;
        async move {
            let mut diff = String::new();
            for h in &c.hosts {
                if h.wharf.is_none() {
                    continue;
                }
                let Some(actual) = h.entries(network_id).await else {
                    continue;
                };
                let expected = expected_entries(c, h, network_id).await;
                if actual != expected {
                    diff.push_str(&format!(
                        "{}: has {actual:?}\n  expected {expected:?}\n",
                        h.role
                    ));
                }
            }
            let ok = diff.is_empty();
            *last.lock().unwrap() = diff;
            ok
        }
    })
    .await;
    let last = last.into_inner().unwrap();
    if ok { Ok(()) } else { Err(last) }
}

#[tokio::test]
async fn three_hosts_reach_each_other_with_exactly_the_remote_entries() {
    let c = Cluster::new(&["manager", "worker-1", "worker-2"]).await;
    let (m, w1, w2) = (c.host("manager"), c.host("worker-1"), c.host("worker-2"));
    let net = m
        .wharf()
        .create_network(overlay("nginx-net"))
        .await
        .unwrap();
    let mut containers: Vec<(&Host, &str, IpAddr)> = Vec::new();
    for (host, name) in [
        (m, "m-a"),
        (m, "m-b"),
        (w1, "w1-a"),
        (w2, "w2-a"),
        (w2, "w2-b"),
    ] {
        containers.push((host, name, host.run(name, "nginx-net").await));
    }
    converge(&c, &net.id).await.unwrap();
    // Exactly the remote endpoints: on worker-1, 4 endpoints of other hosts, 2 entries each.
    let on_w1 = w1.entries(&net.id).await.unwrap();
    assert_eq!(on_w1.len(), 8, "{on_w1:#?}");
    assert!(on_w1.contains(&PeerEntry::Fdb {
        mac: m.wharf().endpoint("m-a", "nginx-net").unwrap().mac,
        vtep: IpAddr::V4(m.addr),
    }));

    // Everyone reaches everyone, by IP and by name.
    let mut wrong = Vec::new();
    for (from_host, from, _) in &containers {
        for (_, to, ip) in &containers {
            if from == to {
                continue;
            }
            if !from_host.ping(from, *ip).await {
                wrong.push(format!("{from} -> {to} by IP {ip}"));
            }
            if from_host.lookup(from, to).await != Some(*ip)
                || !from_host.ping_by_name(from, to).await
            {
                wrong.push(format!("{from} -> {to} by name"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // An IPv4-only overlay gives its containers' interfaces no IPv6 link-local address either
    // (nothing multicast for br0 to flood to every port when one comes up).
    let ns = m.wharf().sandbox_netns("m-a").unwrap();
    let inside = wharf::sys::rtnl::Handle::in_netns(&ns).await.unwrap();
    let eth0 = inside.link().get("eth0").await.unwrap().index;
    let v6: Vec<_> = inside
        .address()
        .list_on(eth0)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.addr.is_ipv6())
        .collect();
    assert!(
        v6.is_empty(),
        "IPv6 addresses on an IPv4-only overlay: {v6:?}"
    );

    // A disconnect removes the endpoint's entries (and name) on the other hosts.
    w2.wharf().disconnect("w2-b", "nginx-net").await.unwrap();
    converge(&c, &net.id).await.unwrap();
    assert_eq!(w1.entries(&net.id).await.unwrap().len(), 6);
    assert_eq!(m.lookup("m-a", "w2-b").await, None);
    // The last local endpoint takes the network's namespace with it.
    assert!(w1.has_overlay_netns(&net.id));
    w1.wharf().delete_sandbox("w1-a").await.unwrap();
    assert!(!w1.has_overlay_netns(&net.id));
    converge(&c, &net.id).await.unwrap();
    assert_eq!(
        m.entries(&net.id).await.unwrap().len(),
        2,
        "only w2-a is remote"
    );
    assert_eq!(w2.entries(&net.id).await.unwrap().len(), 4, "m-a and m-b");
}

/// An address given up on one host and taken on another keeps its MAC (`02:42` + the IPv4
/// address): the cluster's allocators reuse released addresses, and a service update moves
/// replicas between hosts. The new host's `br0` learnt that MAC behind `vxlan0` while it was
/// remote; it must still deliver it to the local container at once, although that container's
/// interface sends nothing as it comes up (no IPv6 link-local address, so no DAD or MLD that
/// would teach the bridge where the MAC is now).
#[tokio::test]
async fn an_address_that_moves_to_another_host_is_reached_there_at_once() {
    let c = Cluster::new(&["host1", "host2"]).await;
    let (h1, h2) = (c.host("host1"), c.host("host2"));
    let net = h1
        .wharf()
        .create_network(overlay("move-net"))
        .await
        .unwrap();
    // peer first: host2's allocator then knows only its own address, and takes the moving
    // one below without a conflict.
    h2.run("peer", "move-net").await;
    h1.run("stays", "move-net").await;
    let moving = h1.run("moving", "move-net").await;
    converge(&c, &net.id).await.unwrap();
    // peer talks to it: host2's br0 learns its MAC behind vxlan0.
    assert!(h2.ping("peer", moving).await);
    let mac = h1.wharf().endpoint("moving", "move-net").unwrap().mac;
    h1.wharf().delete_sandbox("moving").await.unwrap();
    converge(&c, &net.id).await.unwrap();

    // The same address, so the same MAC, now on host2.
    let IpAddr::V4(v4) = moving else {
        panic!("an IPv4 address")
    };
    h2.wharf()
        .create_sandbox(SandboxSpec::new("moved"))
        .await
        .unwrap();
    let spec = EndpointSpec {
        ipv4: Some(v4),
        ..EndpointSpec::default()
    };
    let ep = h2.wharf().connect("moved", "move-net", spec).await.unwrap();
    assert_eq!(ep.mac, mac);
    converge(&c, &net.id).await.unwrap();
    // One echo each, no retries: nothing may have to age out first.
    assert!(h1.ping("stays", moving).await, "from the host it left");
    assert!(h2.ping("peer", moving).await, "from its new host");
}

#[tokio::test]
async fn an_overlay_reaches_no_other_overlay_and_no_bridge() {
    let c = Cluster::new(&["manager", "worker-1"]).await;
    let (m, w1) = (c.host("manager"), c.host("worker-1"));
    m.wharf().create_network(overlay("ov-a")).await.unwrap();
    m.wharf().create_network(overlay("ov-b")).await.unwrap();
    m.wharf()
        .create_network(NetworkSpec::new("br-net"))
        .await
        .unwrap();
    let a1 = m.run("a1", "ov-a").await;
    let a2 = w1.run("a2", "ov-a").await;
    let b1 = m.run("b1", "ov-b").await;
    let b2 = w1.run("b2", "ov-b").await;
    let x1 = m.run("x1", "br-net").await;
    assert!(eventually(CONVERGED, || m.ping("a1", a2)).await, "a1 -> a2");
    assert!(eventually(CONVERGED, || m.ping("b1", b2)).await, "b1 -> b2");

    let cut = [
        (m, "a1", b1, "another overlay, same host"),
        (m, "a1", b2, "another overlay, other host"),
        (w1, "a2", b2, "another overlay, same host"),
        (m, "a1", x1, "a bridge network"),
        (m, "x1", a1, "an overlay from a bridge network"),
        (m, "b1", a1, "another overlay, same host"),
        (w1, "b2", a1, "another overlay, other host"),
    ];
    let mut wrong = Vec::new();
    for (host, from, ip, what) in cut {
        if host.ping(from, ip).await {
            wrong.push(format!("{from} reaches {ip} on {what}"));
        }
    }
    // Nor does the host itself reach its overlay containers.
    if wharf::lab::probe::can_ping(&m.ns, a1, Duration::from_millis(300)).await {
        wrong.push("the host reaches a1".into());
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Names do not leak across overlays either.
    assert_eq!(m.lookup("a1", "b2").await, None);
}

#[tokio::test]
async fn only_attachable_overlays_take_standalone_containers() {
    let c = Cluster::new(&["manager"]).await;
    let m = c.host("manager");
    m.wharf()
        .create_network(
            NetworkSpec::new("svc-only").driver(DriverOptions::Overlay(OverlayOptions::default())),
        )
        .await
        .unwrap();
    m.wharf()
        .create_sandbox(SandboxSpec::new("alpine1"))
        .await
        .unwrap();
    let err = m
        .wharf()
        .connect("alpine1", "svc-only", EndpointSpec::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotAttachable { .. }), "{err}");
    assert!(m.wharf().sandbox("alpine1").unwrap().endpoints.is_empty());
    // Names and VNIs are cluster-wide.
    let again = m
        .wharf()
        .create_network(overlay("svc-only"))
        .await
        .unwrap_err();
    assert!(matches!(again, Error::AlreadyExists { .. }), "{again}");
    let given = overlay("given").driver(DriverOptions::Overlay(OverlayOptions {
        vni: Some(4096),
        ..Default::default()
    }));
    let taken = m.wharf().create_network(given).await.unwrap_err();
    assert!(taken.to_string().contains("vni 4096 is taken"), "{taken}");
}

#[tokio::test]
async fn overlays_need_cluster_mode() {
    let w = common::World::new().await;
    let err = w
        .wharf
        .create_network(overlay("test-net"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cluster mode"), "{err}");
}

/// A cluster store whose watches can be cut (events silently lost, as on a congested link)
/// and healed (the watch then reports `WatchLagged` and ends, as a real store does when it
/// notices).
#[derive(Debug)]
struct Flaky {
    inner: Arc<dyn Store>,
    cut: Arc<AtomicBool>,
    heal: tokio::sync::watch::Sender<u64>,
    /// While set, lease refreshes are swallowed (a paused host: its leases expire).
    frozen: AtomicBool,
}

impl Flaky {
    fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            cut: Arc::default(),
            heal: tokio::sync::watch::channel(0).0,
            frozen: AtomicBool::new(false),
        }
    }

    fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    fn thaw(&self) {
        self.frozen.store(false, Ordering::SeqCst);
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
        self.heal.send_modify(|g| *g += 1);
    }
}

#[async_trait::async_trait]
impl Store for Flaky {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        self.inner.list(prefix).await
    }

    async fn apply(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        self.inner.apply(ops).await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.inner.grant_lease(ttl).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        if self.frozen.load(Ordering::SeqCst) {
            // The refresh never reaches the store; the keeper does not know.
            return Ok(Duration::from_secs(1));
        }
        self.inner.keep_alive(lease).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.revoke_lease(lease).await
    }

    async fn watch(&self, prefix: &str) -> Result<WatchStream, StoreError> {
        let events = self.inner.watch(prefix).await?;
        let mut healed = self.heal.subscribe();
        healed.borrow_and_update();
        let state = (events, self.cut.clone(), healed, false, 0u64);
        Ok(Box::pin(futures::stream::unfold(
            state,
            |(mut events, cut, mut healed, done, mut missed)| async move {
                if done {
                    return None;
                }
                loop {
                    tokio::select! {
                        _ = healed.changed() => {
                            let lagged = Err(StoreError::WatchLagged { missed });
                            return Some((lagged, (events, cut, healed, true, missed)));
                        }
                        event = events.next() => {
                            let event = event?;
                            if cut.load(Ordering::SeqCst) {
                                missed += 1;
                                continue;
                            }
                            return Some((event, (events, cut, healed, false, missed)));
                        }
                    }
                }
            },
        )))
    }
}

#[tokio::test]
async fn a_lost_watch_is_resynchronised_exactly() {
    let shared: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let flaky = Arc::new(Flaky::new(shared.clone()));
    let f = flaky.clone();
    let s = shared.clone();
    let c = Cluster::with_stores(&["manager", "worker-1", "worker-2"], shared, move |i| {
        if i == 2 { f.clone() } else { s.clone() }
    })
    .await;
    let (m, w1, w2) = (c.host("manager"), c.host("worker-1"), c.host("worker-2"));
    let net = m.wharf().create_network(overlay("test-net")).await.unwrap();
    m.run("m-a", "test-net").await;
    w1.run("w1-a", "test-net").await;
    w2.run("w2-a", "test-net").await;
    converge(&c, &net.id).await.unwrap();

    // worker-2 loses its watch while endpoints come and go elsewhere.
    flaky.cut();
    w1.run("w1-b", "test-net").await;
    w1.wharf().delete_sandbox("w1-a").await.unwrap();
    m.run("m-b", "test-net").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stale = w2.entries(&net.id).await.unwrap();
    assert_ne!(
        stale,
        expected_entries(&c, w2, &net.id).await,
        "the cut lost events"
    );
    assert_eq!(w2.lookup("w2-a", "w1-b").await, None);

    // The watch reports its loss: worker-2 lists again and matches the store exactly.
    flaky.heal();
    converge(&c, &net.id).await.unwrap();
    assert_eq!(w2.entries(&net.id).await.unwrap().len(), 6);
    assert!(w2.ping_by_name("w2-a", "w1-b").await);
    assert!(w2.ping_by_name("w2-a", "m-b").await);
    assert_eq!(
        w2.lookup("w2-a", "w1-a").await,
        None,
        "a stale name is gone"
    );
    // And it keeps following changes afterwards.
    w1.wharf().delete_sandbox("w1-b").await.unwrap();
    converge(&c, &net.id).await.unwrap();
    assert_eq!(w2.entries(&net.id).await.unwrap().len(), 4);
}

#[tokio::test]
async fn a_restarted_controller_catches_up() {
    let mut c = Cluster::new(&["manager", "worker-1"]).await;
    let net = c
        .host("manager")
        .wharf()
        .create_network(overlay("test-net"))
        .await
        .unwrap();
    c.host("manager").run("m-a", "test-net").await;
    c.host("worker-1").run("w1-a", "test-net").await;
    converge(&c, &net.id).await.unwrap();

    c.stop("worker-1").await;
    let m = c.host("manager");
    m.run("m-b", "test-net").await;
    m.wharf().delete_sandbox("m-a").await.unwrap();
    c.start("worker-1").await;

    let (m, w1) = (c.host("manager"), c.host("worker-1"));
    // Right after open, before any event: the kernel matches the store.
    assert_eq!(
        w1.entries(&net.id).await.unwrap(),
        expected_entries(&c, w1, &net.id).await
    );
    assert_eq!(w1.entries(&net.id).await.unwrap().len(), 2);
    assert!(w1.ping_by_name("w1-a", "m-b").await);
    assert!(m.ping_by_name("m-b", "w1-a").await);
    assert_eq!(w1.lookup("w1-a", "m-a").await, None);
    // It still owns its endpoint.
    w1.wharf().delete_sandbox("w1-a").await.unwrap();
    assert!(!w1.has_overlay_netns(&net.id));
    converge(&c, &net.id).await.unwrap();
    assert!(m.entries(&net.id).await.unwrap().is_empty());
}

/// The endpoint records of `node` on a network, in the cluster store.
async fn records_of(c: &Cluster, network_id: &str, node: &str) -> Vec<ClusterEndpoint> {
    c.store
        .list(&format!("cluster/v1/endpoints/{network_id}/"))
        .await
        .unwrap()
        .iter()
        .map(|kv| serde_json::from_slice::<ClusterEndpoint>(&kv.value).unwrap())
        .filter(|e| e.node == node)
        .collect()
}

#[tokio::test]
async fn a_dead_hosts_endpoints_are_removed_after_its_lease() {
    let ttl = Duration::from_secs(1);
    let mut c = Cluster::with_lease_ttl(&["manager", "worker-1", "worker-2"], ttl).await;
    let net = c
        .host("manager")
        .wharf()
        .create_network(overlay("test-net"))
        .await
        .unwrap();
    c.host("manager").run("m-a", "test-net").await;
    c.host("worker-1").run("w1-a", "test-net").await;
    c.host("worker-2").run("w2-a", "test-net").await;
    converge(&c, &net.id).await.unwrap();
    // The leases are kept alive: several ttls later everything is still there.
    tokio::time::sleep(ttl * 3).await;
    assert_eq!(records_of(&c, &net.id, "worker-2").await.len(), 1);
    assert_eq!(c.host("manager").entries(&net.id).await.unwrap().len(), 4);
    assert!(c.host("manager").ping_by_name("m-a", "w2-a").await);

    let dead_ip = records_of(&c, &net.id, "worker-2").await[0].ipv4.unwrap();
    let store = c.store.clone();
    let addr_keys = || async {
        store
            .list(&format!("ipam/v1/cluster/addrs/{}/", net.id))
            .await
            .unwrap()
            .into_iter()
            .map(|kv| kv.key.rsplit('/').next().unwrap().to_owned())
            .collect::<BTreeSet<String>>()
    };
    assert_eq!(addr_keys().await.len(), 3);

    // worker-2 dies: its controller goes without disconnecting anything.
    c.kill("worker-2").await;
    assert!(
        eventually(ttl * 4, || async {
            records_of(&c, &net.id, "worker-2").await.is_empty()
        })
        .await,
        "worker-2's records expire with its lease"
    );
    // The others remove its entries and its name.
    let (m, w1) = (c.host("manager"), c.host("worker-1"));
    for h in [m, w1] {
        assert!(
            eventually(CONVERGED, || async {
                h.entries(&net.id).await.unwrap() == expected_entries(&c, h, &net.id).await
            })
            .await,
            "{} drops worker-2's entries",
            h.role
        );
        assert_eq!(h.entries(&net.id).await.unwrap().len(), 2, "{}", h.role);
    }
    assert_eq!(m.lookup("m-a", "w2-a").await, None);
    assert_eq!(w1.lookup("w1-a", "w2-a").await, None);
    assert!(m.ping_by_name("m-a", "w1-a").await);
    let peers: Vec<String> = m
        .wharf()
        .inspect_network("test-net")
        .unwrap()
        .peers
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(peers, ["manager", "worker-1"]);
    // A survivor releases its cluster address (the two survivors race; exactly one wins).
    assert!(
        eventually(CONVERGED, || async {
            !addr_keys().await.contains(&dead_ip.to_string())
        })
        .await,
        "{dead_ip} of the dead host is released"
    );
    assert_eq!(addr_keys().await.len(), 2, "the live hosts' addresses stay");
}

#[tokio::test]
async fn a_restarted_controller_reattaches_its_endpoints_to_a_new_lease() {
    let ttl = Duration::from_secs(1);
    let mut c = Cluster::with_lease_ttl(&["manager", "worker-1"], ttl).await;
    let net = c
        .host("manager")
        .wharf()
        .create_network(overlay("test-net"))
        .await
        .unwrap();
    c.host("manager").run("m-a", "test-net").await;
    c.host("worker-1").run("w1-a", "test-net").await;
    converge(&c, &net.id).await.unwrap();

    // Down for longer than its lease: its record expires, the manager forgets it.
    c.stop("worker-1").await;
    assert!(
        eventually(ttl * 4, || async {
            records_of(&c, &net.id, "worker-1").await.is_empty()
        })
        .await
    );
    converge(&c, &net.id).await.unwrap();
    assert_eq!(c.host("manager").lookup("m-a", "w1-a").await, None);

    // Back: its container's record is written again, on a lease it keeps alive.
    c.start("worker-1").await;
    assert_eq!(records_of(&c, &net.id, "worker-1").await.len(), 1);
    converge(&c, &net.id).await.unwrap();
    let (m, w1) = (c.host("manager"), c.host("worker-1"));
    assert!(eventually(CONVERGED, || m.ping_by_name("m-a", "w1-a")).await);
    assert!(w1.ping_by_name("w1-a", "m-a").await);
    tokio::time::sleep(ttl * 3).await;
    assert_eq!(records_of(&c, &net.id, "worker-1").await.len(), 1);

    // Restarted quickly (the old lease still alive): the record moves to the new lease and
    // outlives the old one.
    c.stop("worker-1").await;
    c.start("worker-1").await;
    tokio::time::sleep(ttl * 3).await;
    assert_eq!(records_of(&c, &net.id, "worker-1").await.len(), 1);
    assert!(c.host("manager").ping_by_name("m-a", "w1-a").await);
}

#[tokio::test]
async fn overlay_containers_get_out_through_wharf_gwbridge() {
    use wharf::controller::GWBRIDGE_NETWORK;
    let c = Cluster::new(&["host1", "host2"]).await;
    let (host1, host2) = (c.host("host1"), c.host("host2"));
    // The lab's internet, behind host1.
    let internet = c.lab.namespace("internet").await.unwrap();
    c.lab
        .wire(
            (&host1.ns, "wan", "198.51.100.1/24".parse().unwrap()),
            (&internet, "eth0", "198.51.100.53/24".parse().unwrap()),
        )
        .await
        .unwrap();
    let outside: IpAddr = "198.51.100.53".parse().unwrap();

    host1
        .wharf()
        .create_network(overlay("test-net"))
        .await
        .unwrap();
    host1
        .wharf()
        .create_network(overlay("secret").internal())
        .await
        .unwrap();
    assert!(
        host1.wharf().inspect_network(GWBRIDGE_NETWORK).is_err(),
        "created on demand"
    );
    host1.run("a", "test-net").await;
    let ip_b = host1.run("b", "test-net").await;
    host2.run("c", "test-net").await;

    // a reaches the outside through the egress bridge, which carries its default route.
    assert!(host1.ping("a", outside).await, "a -> the internet");
    let gw = host1.wharf().endpoint("a", GWBRIDGE_NETWORK).unwrap();
    let gwnet = host1.wharf().inspect_network(GWBRIDGE_NETWORK).unwrap();
    assert_eq!(gwnet.driver, "bridge");
    assert_eq!(
        gwnet.options["com.docker.network.bridge.name"],
        GWBRIDGE_NETWORK
    );
    assert_eq!(
        gwnet.options["com.docker.network.bridge.enable_icc"],
        "false"
    );
    let a_id = host1.wharf().sandbox("a").unwrap().id;
    let shown = format!("gateway_{}", &a_id[..12]);
    assert_eq!(gwnet.containers[&shown].name, shown);
    assert_eq!(gwnet.containers[&shown].endpoint_id, gw.id);
    let h = wharf::sys::rtnl::Handle::in_netns(&host1.wharf().sandbox_netns("a").unwrap())
        .await
        .unwrap();
    let default = h
        .route()
        .list(wharf::sys::rtnl::IpVersion::V4)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.dst.prefix() == 0)
        .and_then(|r| r.gateway);
    assert!(gw.gateway.is_some());
    assert_eq!(default, gw.gateway);
    // Hidden from the sandbox's own endpoints.
    let nets: Vec<String> = host1
        .wharf()
        .sandbox("a")
        .unwrap()
        .endpoints
        .into_iter()
        .map(|e| e.network)
        .collect();
    assert_eq!(nets, ["test-net"]);
    // Not a way between containers: a reaches b over the overlay, not over the egress bridge.
    assert!(host1.ping("a", ip_b).await);
    let b_gw = host1.wharf().endpoint("b", GWBRIDGE_NETWORK).unwrap();
    assert!(
        !host1.ping("a", IpAddr::V4(b_gw.ipv4.unwrap())).await,
        "no traffic between containers on the egress bridge"
    );
    assert_eq!(host1.lookup("a", "b").await, Some(ip_b));
    assert!(eventually(CONVERGED, || host1.ping_by_name("a", "c")).await);
    // Not for direct use.
    let err = host1
        .wharf()
        .disconnect("a", GWBRIDGE_NETWORK)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("managed by wharf"), "{err}");

    // An internal overlay gets no egress bridge.
    host1.run("d", "secret").await;
    assert!(host1.wharf().endpoint("d", GWBRIDGE_NETWORK).is_err());
    assert!(!host1.ping("d", outside).await);
    let err = host1
        .wharf()
        .connect("d", GWBRIDGE_NETWORK, EndpointSpec::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("managed by wharf"), "{err}");

    // Leaving its last non-internal overlay, a sandbox leaves the egress bridge.
    host1
        .wharf()
        .connect("a", "secret", EndpointSpec::default())
        .await
        .unwrap();
    assert!(host1.wharf().endpoint("a", GWBRIDGE_NETWORK).is_ok());
    host1.wharf().disconnect("a", "test-net").await.unwrap();
    assert!(host1.wharf().endpoint("a", GWBRIDGE_NETWORK).is_err());
    assert!(!host1.ping("a", outside).await);
    let left = host1.wharf().inspect_network(GWBRIDGE_NETWORK).unwrap();
    assert!(!left.containers.contains_key(&shown));
    // The others go with their sandboxes.
    for sb in ["a", "b", "d"] {
        host1.wharf().delete_sandbox(sb).await.unwrap();
    }
    assert!(
        host1
            .wharf()
            .inspect_network(GWBRIDGE_NETWORK)
            .unwrap()
            .containers
            .is_empty()
    );
    // Users cannot take the name.
    let err = host2
        .wharf()
        .create_network(NetworkSpec::new(GWBRIDGE_NETWORK))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("reserved"), "{err}");
}

#[tokio::test]
async fn diagnosis_names_a_blocked_port_an_mtu_mismatch_and_a_missing_entry() {
    use wharf::controller::Finding;
    use wharf::sys::NetNs;
    use wharf::sys::nft::{
        Batch, Chain, ChainType, Family, Hook, NftHandle, Rule, Table, priority,
    };
    use wharf::sys::rtnl::Handle;

    let c = Cluster::new(&["host1", "host2"]).await;
    let (host1, host2) = (c.host("host1"), c.host("host2"));
    let net = host1
        .wharf()
        .create_network(overlay("test-net"))
        .await
        .unwrap();
    host1.run("a", "test-net").await;
    let ip_b = host2.run("b", "test-net").await;
    converge(&c, &net.id).await.unwrap();
    assert!(eventually(CONVERGED, || host1.ping("a", ip_b)).await);

    let d = host1
        .wharf()
        .diagnose_overlay("test-net", "host2")
        .await
        .unwrap();
    assert!(d.is_healthy(), "{d}");
    assert_eq!(d.peer_addr, Some("198.18.0.2".parse().unwrap()));
    let none = host1
        .wharf()
        .diagnose_overlay("test-net", "host3")
        .await
        .unwrap();
    assert!(
        matches!(none.findings[..], [Finding::PeerHasNoEndpoints { .. }]),
        "{none}"
    );

    // UDP 4789 dropped in the underlay's switch (a bridge-family rule: no br_netfilter needed).
    let underlay = NetNs::open(&c.lab.name("underlay")).unwrap();
    let nft = NftHandle::open(&underlay).await.unwrap();
    let t = Table::new(Family::Bridge, "block-vxlan");
    let mut b = Batch::new();
    b.add_table(&t)
        .add_chain(&Chain::base(
            &t,
            "forward",
            Hook::Forward,
            ChainType::Filter,
            priority::FILTER,
        ))
        .add_rule(&Rule::new(&t, "forward").udp_dport_eq(4789).drop());
    nft.apply(&b).await.unwrap();
    assert!(!host1.ping("a", ip_b).await, "the rule cuts the overlay");
    let d = host1
        .wharf()
        .diagnose_overlay("test-net", "host2")
        .await
        .unwrap();
    assert!(
        matches!(
            d.findings[..],
            [Finding::VxlanPortBlocked { port: 4789, .. }]
        ),
        "{d}"
    );
    assert!(
        d.findings[0]
            .to_string()
            .starts_with("VXLAN UDP port 4789 blocked between 198.18.0.1 and 198.18.0.2"),
        "{d}"
    );
    let mut b = Batch::new();
    b.delete_table(&t);
    nft.apply(&b).await.unwrap();
    assert!(
        host2
            .wharf()
            .diagnose_overlay("test-net", "host1")
            .await
            .unwrap()
            .is_healthy()
    );

    // host2's underlay interface carries less than the overlay needs.
    let h2 = Handle::in_netns(&host2.ns).await.unwrap();
    let eth0 = h2.link().get("eth0").await.unwrap().index;
    h2.link().set_mtu(eth0, 1400).await.unwrap();
    let d = host1
        .wharf()
        .diagnose_overlay("test-net", "host2")
        .await
        .unwrap();
    assert!(
        matches!(
            d.findings[..],
            [Finding::MtuMismatch {
                overlay_mtu: 1450,
                needed: 1500,
                ..
            }]
        ),
        "{d}"
    );
    assert!(d.findings[0].to_string().starts_with("MTU mismatch"), "{d}");
    h2.link().set_mtu(eth0, 1500).await.unwrap();

    // An entry lost from host1's kernel.
    let ns = NetNs::open(&host1.overlay_netns(&net.id)).unwrap();
    let h = Handle::in_netns(&ns).await.unwrap();
    let vx = h.link().get("vxlan0").await.unwrap().index;
    h.neigh().delete(vx, ip_b).await.unwrap();
    let d = host1
        .wharf()
        .diagnose_overlay("test-net", "host2")
        .await
        .unwrap();
    assert!(
        matches!(
            &d.findings[..],
            [Finding::PeerEntryMissing { endpoint, entry: PeerEntry::Neighbour { .. } }] if endpoint == "b"
        ),
        "{d}"
    );
    assert!(
        d.findings[0].to_string().starts_with("peer entry missing"),
        "{d}"
    );
}

#[tokio::test]
async fn a_lost_lease_is_granted_again_and_the_records_rewritten() {
    let ttl = Duration::from_secs(1);
    let shared: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let flaky = Arc::new(Flaky::new(shared.clone()));
    let f = flaky.clone();
    let s = shared.clone();
    let c = Cluster::with_options(
        &["manager", "worker-1"],
        shared,
        move |i| if i == 1 { f.clone() } else { s.clone() },
        ttl,
    )
    .await;
    let (m, w1) = (c.host("manager"), c.host("worker-1"));
    let net = m.wharf().create_network(overlay("test-net")).await.unwrap();
    m.run("m-a", "test-net").await;
    w1.run("w1-a", "test-net").await;
    converge(&c, &net.id).await.unwrap();

    // worker-1 is paused: its refreshes stop reaching the store, its lease expires.
    flaky.freeze();
    assert!(
        eventually(ttl * 4, || async {
            records_of(&c, &net.id, "worker-1").await.is_empty()
        })
        .await
    );
    converge(&c, &net.id).await.unwrap();
    assert_eq!(m.lookup("m-a", "w1-a").await, None);

    // It wakes up: the keeper learns the lease is gone, a new one is granted and the record
    // written again; the manager programs it.
    flaky.thaw();
    assert!(
        eventually(ttl * 4, || async {
            records_of(&c, &net.id, "worker-1").await.len() == 1
        })
        .await,
        "worker-1 publishes its endpoint again"
    );
    converge(&c, &net.id).await.unwrap();
    assert!(eventually(CONVERGED, || m.ping_by_name("m-a", "w1-a")).await);
    // And keeps the new lease alive.
    tokio::time::sleep(ttl * 3).await;
    assert_eq!(records_of(&c, &net.id, "worker-1").await.len(), 1);
}

/// Rewrites, while the host's controller is stopped, the `status` of the journal record of
/// `sandbox`'s endpoint on `network` in its state store (what a crash leaves: `pending` for an
/// interrupted attach, `removing` for an interrupted detach).
async fn set_status(host: &Host, sandbox_id: &str, network_id: &str, status: &str) {
    let path = host.config.state_dir.join("state.redb");
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let store = loop {
        match wharf::store::EmbeddedStore::open(&path).await {
            Ok(s) => break s,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("opening {}: {e}", path.display()),
        }
    };
    let kv = store
        .list("wharf/v1/endpoints/")
        .await
        .unwrap()
        .into_iter()
        .find(|kv| {
            let v: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
            v["sandbox_id"] == sandbox_id && v["network_id"] == network_id
        })
        .expect("the endpoint's record");
    let mut v: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
    v["status"] = status.into();
    store
        .put(&kv.key, serde_json::to_vec(&v).unwrap())
        .await
        .unwrap();
}

/// Deletes a link in a namespace, as a crash half-way through a join or a leave leaves it.
async fn delete_link(ns: &wharf::sys::NetNs, name: &str) {
    let h = wharf::sys::rtnl::Handle::in_netns(ns).await.unwrap();
    h.link().delete_by_name(name).await.unwrap();
}

#[tokio::test]
async fn interrupted_overlay_attaches_and_detaches_are_recovered_at_open() {
    use wharf::controller::GWBRIDGE_NETWORK;
    use wharf::ipam::{AddressRequest, Family, Ipam, IpamOptions};

    let mut c = Cluster::new(&["a", "b"]).await;
    let ov = c
        .host("b")
        .wharf()
        .create_network(overlay("ov"))
        .await
        .unwrap();
    let ov2 = c
        .host("b")
        .wharf()
        .create_network(overlay("ov2"))
        .await
        .unwrap();
    let peer = c.host("b").run("peer", "ov").await;
    let a = c.host("a");
    // forward: its completion and its cluster record were lost; back: half-joined; removing:
    // an interrupted detach; rejoin: completed, then its interface went; half: the first
    // endpoint of ov2 here, with the data plane half made.
    let mut ids = std::collections::BTreeMap::new();
    for name in ["forward", "back", "removing", "rejoin"] {
        a.run(name, "ov").await;
        ids.insert(name, a.wharf().sandbox(name).unwrap().id);
    }
    a.run("half", "ov2").await;
    ids.insert("half", a.wharf().sandbox("half").unwrap().id);
    // empty: the first endpoint of ov3 here, killed inside the namespace's creation (an empty
    // mount target where the plane's namespace would be).
    let ov3 = c
        .host("b")
        .wharf()
        .create_network(overlay("ov3"))
        .await
        .unwrap();
    a.run("empty", "ov3").await;
    ids.insert("empty", a.wharf().sandbox("empty").unwrap().id);
    converge(&c, &ov.id).await.unwrap();
    let forward_ep = a.wharf().endpoint("forward", "ov").unwrap();
    let back_ep = a.wharf().endpoint("back", "ov").unwrap();
    let ns = |name: &str| c.host("a").wharf().sandbox_netns(name).unwrap();
    let (back_ns, rejoin_ns, half_ns) = (ns("back"), ns("rejoin"), ns("half"));
    let empty_ns = ns("empty");
    let ov2_plane = wharf::sys::NetNs::open(&a.overlay_netns(&ov2.id)).unwrap();

    // What a crash of host a leaves, besides those: a cluster address and a cluster record in
    // its name whose local record was never written.
    let orphan_id = "f".repeat(64);
    let ipam = Ipam::open(c.store.clone(), IpamOptions::cluster(b"wharf"))
        .await
        .unwrap();
    let orphan_ip = ipam
        .allocate_for(
            &ov.id,
            AddressRequest::Next(Family::V4),
            &format!("a/{orphan_id}"),
        )
        .await
        .unwrap();
    let mut orphan = records_of(&c, &ov.id, "a").await.remove(0);
    orphan.id = orphan_id.clone();
    orphan.name = "ghost".into();
    orphan.ipv4 = match orphan_ip {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => unreachable!(),
    };
    c.store
        .put(
            &format!("cluster/v1/endpoints/{}/{orphan_id}", ov.id),
            serde_json::to_vec(&orphan).unwrap(),
        )
        .await
        .unwrap();

    c.stop("a").await;
    let a = c.host("a");
    set_status(a, &ids["forward"], &ov.id, "pending").await;
    c.store
        .delete(&format!("cluster/v1/endpoints/{}/{}", ov.id, forward_ep.id))
        .await
        .unwrap();
    set_status(a, &ids["back"], &ov.id, "pending").await;
    delete_link(&back_ns, "eth0").await;
    set_status(a, &ids["removing"], &ov.id, "removing").await;
    delete_link(&rejoin_ns, "eth0").await;
    set_status(a, &ids["half"], &ov2.id, "pending").await;
    delete_link(&half_ns, "eth0").await;
    delete_link(&ov2_plane, "vxlan0").await;
    drop(ov2_plane);
    set_status(a, &ids["empty"], &ov3.id, "pending").await;
    delete_link(&empty_ns, "eth0").await;
    let ov3_plane = a.overlay_netns(&ov3.id);
    wharf::sys::NetNs::delete(&ov3_plane).unwrap();
    std::fs::write(format!("/run/netns/{ov3_plane}"), b"").unwrap();
    c.start("a").await;

    let a = c.host("a");
    let w = a.wharf();
    common::cluster::assert_cluster_state(w, "a", &a.ns, a.prefix(), &c.store, "after open").await;
    for name in ["forward", "rejoin"] {
        assert!(w.endpoint(name, "ov").is_ok(), "{name} stays connected");
        assert!(
            eventually(CONVERGED, || a.ping(name, peer)).await,
            "{name} reaches the other host"
        );
    }
    for (name, net) in [
        ("back", "ov"),
        ("removing", "ov"),
        ("half", "ov2"),
        ("empty", "ov3"),
    ] {
        assert!(
            w.endpoint(name, net).is_err(),
            "{name} is not connected to {net}"
        );
        assert!(
            w.endpoint(name, GWBRIDGE_NETWORK).is_err(),
            "{name} left the egress bridge"
        );
    }
    assert!(!a.has_overlay_netns(&ov2.id), "no data plane left for ov2");
    assert!(
        !a.has_overlay_netns(&ov3.id),
        "no namespace file left for ov3"
    );
    // The other host follows: forward's record is back, back's and the ghost's are gone.
    converge(&c, &ov.id).await.unwrap();
    let b = c.host("b");
    assert!(
        eventually(CONVERGED, || b
            .ping("peer", IpAddr::V4(forward_ep.ipv4.unwrap())))
        .await
    );
    assert!(!b.ping("peer", IpAddr::V4(back_ep.ipv4.unwrap())).await);
    // The addresses given back are free in the cluster again: taken by the next attaches.
    let freed: BTreeSet<IpAddr> = [IpAddr::V4(back_ep.ipv4.unwrap()), orphan_ip].into();
    assert!(
        ipam.stored_addresses()
            .await
            .unwrap()
            .iter()
            .all(|s| !freed.contains(&s.ip)),
        "released in the cluster IPAM"
    );
}
