//! Firewall and link drift: someone deletes wharf's nftables tables and a bridge from outside;
//! `Controller::reconcile` puts them back (static rules and every network, endpoint and port
//! element) and traffic flows again, by ping and through a published port. A reconcile with
//! nothing to do changes nothing.

mod common;

use std::net::SocketAddr;

use common::World;
use wharf::controller::{EndpointSpec, NetworkSpec, SandboxSpec};
use wharf::driver::PortMapping;
use wharf::driver::bridge::firewall;
use wharf::lab::probe;
use wharf::sys::NetNs;
use wharf::sys::nft::{Batch, NftHandle};
use wharf::sys::rtnl::{Handle, LinkSpec, VethPeer};

/// `docker run --name NAME --network NET -p PORT:80` (no port when `port` is 0).
async fn run(w: &World, name: &str, net: &str, port: u16) -> std::net::IpAddr {
    w.wharf
        .create_sandbox(SandboxSpec::new(name))
        .await
        .unwrap();
    let mut spec = EndpointSpec::default();
    if port != 0 {
        spec.ports.push(PortMapping::tcp(port, 80));
    }
    let ep = w.wharf.connect(name, net, spec).await.unwrap();
    std::net::IpAddr::V4(ep.ipv4.unwrap())
}

/// `docker network create web-net`, `docker run --name web --network web-net -p 8080:80` with
/// a server on port 80, and a client wired to the host. Returns the bridge's name, the web
/// container's namespace, the client and the server (stopped on drop).
async fn web_world(w: &World) -> (String, NetNs, NetNs, probe::Server) {
    let net = w
        .wharf
        .create_network(NetworkSpec::new("web-net"))
        .await
        .unwrap();
    run(w, "web", "web-net", 8080).await;
    let web_ns = w.wharf.sandbox_netns("web").unwrap();
    let server = probe::serve_tcp(&web_ns, "0.0.0.0:80".parse().unwrap(), "nginx")
        .await
        .unwrap();
    let client = w.client().await;
    (format!("br-{}", &net.id[..12]), web_ns, client, server)
}

/// Deletes wharf's nftables tables (what `nft flush ruleset` does to them) and the bridge, as
/// someone else on the host would.
async fn break_from_outside(w: &World, nft: &NftHandle, bridge: &str) {
    let mut b = Batch::new();
    b.delete_table(&firewall::table());
    b.delete_table(&firewall::bridge_table());
    nft.apply(&b).await.unwrap();
    Handle::in_netns(&w.host)
        .await
        .unwrap()
        .link()
        .delete_by_name(bridge)
        .await
        .unwrap();
}

/// The handles of every rule in wharf's tables: a rewritten rule gets a new handle.
async fn rule_handles(nft: &NftHandle) -> Vec<(String, Option<u64>)> {
    let mut out = Vec::new();
    for t in [firewall::table(), firewall::bridge_table()] {
        for r in nft.list_rules(&t).await.unwrap() {
            out.push((r.chain.clone(), r.handle));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_restores_a_flushed_firewall_and_a_deleted_bridge() {
    let w = World::new().await;
    let (bridge, web_ns, client, _server) = web_world(&w).await;
    let db = run(&w, "db", "web-net", 0).await;
    let published: SocketAddr = "192.0.2.1:8080".parse().unwrap();
    let works = async || {
        let by_port = probe::tcp_connect(&client, published, probe::DEFAULT_TIMEOUT).await;
        let by_ping = probe::ping(&web_ns, db, probe::DEFAULT_TIMEOUT).await;
        (by_port.ok(), by_ping.is_ok())
    };
    assert_eq!(works().await, (Some("nginx".into()), true));

    // Nothing to do: nothing changes (no rule rewritten, traffic as it was).
    let nft = NftHandle::open(&w.host).await.unwrap();
    let before = rule_handles(&nft).await;
    w.wharf.reconcile().await.unwrap();
    assert_eq!(
        rule_handles(&nft).await,
        before,
        "an idle reconcile rewrote rules"
    );

    break_from_outside(&w, &nft, &bridge).await;
    let host = Handle::in_netns(&w.host).await.unwrap();
    assert_eq!(works().await, (None, false), "traffic should be broken now");

    w.wharf.reconcile().await.unwrap();
    assert!(host.link().get(&bridge).await.is_ok(), "the bridge is back");
    assert_eq!(
        works().await,
        (Some("nginx".into()), true),
        "traffic after reconcile"
    );
    // The default route of each container came back with the bridge.
    assert!(
        probe::ping(
            &web_ns,
            "192.0.2.1".parse().unwrap(),
            probe::DEFAULT_TIMEOUT
        )
        .await
        .is_ok(),
        "the host through the default route"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opt_in_kernel_watch_restores_without_a_call() {
    let mut w = World::new().await;
    drop(w.wharf);
    let config = w.config.clone().watch_kernel();
    w.wharf = common::reopen(&config).await;
    let (bridge, _web_ns, client, _server) = web_world(&w).await;
    let published: SocketAddr = "192.0.2.1:8080".parse().unwrap();
    let short = std::time::Duration::from_millis(300);
    assert_eq!(
        probe::tcp_connect(&client, published, probe::DEFAULT_TIMEOUT)
            .await
            .unwrap(),
        "nginx"
    );

    let nft = NftHandle::open(&w.host).await.unwrap();
    break_from_outside(&w, &nft, &bridge).await;
    // No call: the watch sees the deletions and reconciles.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Ok(got) = probe::tcp_connect(&client, published, short).await {
            assert_eq!(got, "nginx");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the watch did not restore the published port"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_removes_ports_of_its_bridges_that_no_endpoint_owns_and_nothing_else() {
    let mut w = World::new().await;
    let net = w
        .wharf
        .create_network(NetworkSpec::new("app"))
        .await
        .unwrap();
    run(&w, "db", "app", 0).await;
    let bridge = format!("br-{}", &net.id[..12]);
    // Left by a crash: a veth on wharf's bridge that no record owns. Someone else's: a veth of
    // the same naming pattern that is on no wharf bridge, and a bridge wharf did not make.
    let host = Handle::in_netns(&w.host).await.unwrap();
    let br = host.link().get(&bridge).await.unwrap().index;
    host.link()
        .add(
            LinkSpec::veth("veth0dead00")
                .peer(VethPeer::new("peer0dead00"))
                .master(br),
        )
        .await
        .unwrap();
    host.link()
        .add(LinkSpec::veth("veth0other0").peer(VethPeer::new("peer0other0")))
        .await
        .unwrap();
    host.link()
        .add(LinkSpec::bridge("br-0123456789ab"))
        .await
        .unwrap();
    let links_before = w.host_links().await;

    drop(w.wharf);
    w.wharf = common::reopen(&w.config).await;
    let links_after = w.host_links().await;
    let gone: Vec<&String> = links_before
        .iter()
        .filter(|l| !links_after.contains(l))
        .collect();
    // (Deleting one end of a veth pair deletes the other.)
    assert_eq!(gone, ["peer0dead00", "veth0dead00"], "only the orphan goes");
    assert!(w.wharf.endpoint("db", "app").is_ok());
}
