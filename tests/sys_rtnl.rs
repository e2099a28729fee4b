//! The route-netlink layer against the real kernel.
//!
//! Every test builds its own throwaway namespaces with a [`Lab`], uses one of them as the "host"
//! (never the machine's own namespace), and the lab removes them on drop, panics included.
//! These tests need root; without it they fail loudly.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use wharf::lab::{Lab, probe, require_root};
use wharf::sys::rtnl::{
    FdbEntry, Handle, IpVersion, Link, LinkChange, LinkKind, LinkSpec, MacAddr, MacvlanMode,
    NeighState, Neighbour, Route, RouteKind, VethPeer, VxlanSpec,
};
use wharf::sys::{NetNs, SysErrorKind, sysctl};

async fn handle(ns: &NetNs) -> Handle {
    Handle::in_netns(ns).await.expect("opening a handle")
}

async fn ping(from: &NetNs, to: &str) -> bool {
    probe::can_ping(from, ip(to), probe::DEFAULT_TIMEOUT).await
}

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn names(links: &[Link]) -> Vec<&str> {
    links.iter().map(|l| l.name.as_str()).collect()
}

/// Attaches a container to the bridge the way the bridge driver will: one request for the veth
/// (peer named and placed in the container, host end enslaved and up), then the container side.
async fn attach(
    host: &Handle,
    bridge: u32,
    c: &NetNs,
    host_if: &str,
    addr4: &str,
    addr6: &str,
    gw: &str,
) -> Link {
    host.link()
        .add(
            LinkSpec::veth(host_if)
                .peer(VethPeer::new("eth0").netns(c))
                .master(bridge)
                .up(),
        )
        .await
        .unwrap();
    let inside = handle(c).await;
    let eth0 = inside.link().get("eth0").await.unwrap();
    inside.link().set_up(eth0.index).await.unwrap();
    let eth0 = inside.link().get_by_index(eth0.index).await.unwrap();
    inside.address().add(eth0.index, net(addr4)).await.unwrap();
    inside.address().add(eth0.index, net(addr6)).await.unwrap();
    inside
        .route()
        .add(Route::default_v4(gw.parse().unwrap()).oif(eth0.index))
        .await
        .unwrap();
    eth0
}

#[tokio::test]
async fn bridge_with_two_containers_that_ping_each_other() {
    let lab = Lab::new();
    let host_ns = lab.namespace("host").await.unwrap();
    let c1 = lab.namespace("c1").await.unwrap();
    let c2 = lab.namespace("c2").await.unwrap();
    let host = handle(&host_ns).await;

    host.link()
        .add(LinkSpec::bridge("wharf0").mtu(1500).up())
        .await
        .unwrap();
    let br = host.link().get("wharf0").await.unwrap();
    assert_eq!(br.kind, Some(LinkKind::Bridge));
    assert!(br.up);
    host.address()
        .add(br.index, net("10.88.0.1/24"))
        .await
        .unwrap();
    host.address()
        .add(br.index, net("fd88::1/64"))
        .await
        .unwrap();
    let addrs = host.address().list_on(br.index).await.unwrap();
    assert!(
        addrs.iter().any(|a| a.addr == net("10.88.0.1/24")),
        "{addrs:?}"
    );
    let v6 = addrs.iter().find(|a| a.addr == net("fd88::1/64")).unwrap();
    assert!(!v6.tentative, "IPv6 address added without DAD: {v6:?}");

    let eth0 = attach(
        &host,
        br.index,
        &c1,
        "veth-c1",
        "10.88.0.2/24",
        "fd88::2/64",
        "10.88.0.1",
    )
    .await;
    attach(
        &host,
        br.index,
        &c2,
        "veth-c2",
        "10.88.0.3/24",
        "fd88::3/64",
        "10.88.0.1",
    )
    .await;

    // The host end is enslaved and up; the peer is in the container, named, up.
    let host_end = host.link().get("veth-c1").await.unwrap();
    assert_eq!(host_end.master, Some(br.index));
    assert!(host_end.up);
    assert_eq!(host_end.kind, Some(LinkKind::Veth));
    assert!(
        host_end.netns_id.is_some(),
        "peer lives in another namespace"
    );
    assert!(eth0.up);
    let routes = handle(&c1).await.route().list(IpVersion::V4).await.unwrap();
    assert!(
        routes.iter().any(|r| r.dst.prefix() == 0
            && r.gateway == Some(ip("10.88.0.1"))
            && r.oif == Some(eth0.index)),
        "{routes:?}"
    );

    assert!(ping(&c1, "10.88.0.3").await, "c1 -> c2");
    assert!(ping(&c2, "10.88.0.2").await, "c2 -> c1");
    assert!(ping(&c1, "10.88.0.1").await, "c1 -> bridge");
    assert!(ping(&c2, "10.88.0.1").await, "c2 -> bridge");
    assert!(ping(&c1, "fd88::3").await, "c1 -> c2 over IPv6");

    // Detach: deleting the host end removes both ends.
    host.link().delete_by_name("veth-c1").await.unwrap();
    assert!(!names(&host.link().list().await.unwrap()).contains(&"veth-c1"));
    let inside = handle(&c1).await;
    assert_eq!(names(&inside.link().list().await.unwrap()), vec!["lo"]);
    assert!(
        !probe::can_ping(&c2, ip("10.88.0.2"), std::time::Duration::from_millis(500)).await,
        "c1 is gone"
    );
}

#[tokio::test]
async fn error_paths_are_typed_and_leave_nothing_behind() {
    let lab = Lab::new();
    let host_ns = lab.namespace("host").await.unwrap();
    let c = lab.namespace("c").await.unwrap();
    let host = handle(&host_ns).await;
    let before = names(&host.link().list().await.unwrap()).join(",");

    // Name taken.
    host.link().add(LinkSpec::bridge("br0")).await.unwrap();
    let e = host.link().add(LinkSpec::bridge("br0")).await.unwrap_err();
    assert_eq!(e.kind(), SysErrorKind::AlreadyExists, "{e}");
    assert!(e.to_string().contains(r#"creating bridge "br0""#), "{e}");
    assert!(
        e.to_string().contains(&lab.name("host")),
        "names the namespace: {e}"
    );

    // Name too long: refused before anything is sent.
    let e = host
        .link()
        .add(LinkSpec::bridge("name-of-16-bytes"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), SysErrorKind::InvalidName, "{e}");
    let e = host.link().get("also/invalid").await.unwrap_err();
    assert_eq!(e.kind(), SysErrorKind::InvalidName, "{e}");

    // A namespace that does not exist cannot even be held.
    let e = NetNs::open(&lab.name("missing")).unwrap_err();
    assert_eq!(e.kind(), SysErrorKind::NotFound, "{e}");

    // A veth whose peer name is taken in the target namespace fails whole: no host end.
    host.link()
        .add(LinkSpec::veth("first").peer(VethPeer::new("eth0").netns(&c)))
        .await
        .unwrap();
    let e = host
        .link()
        .add(
            LinkSpec::veth("second")
                .peer(VethPeer::new("eth0").netns(&c))
                .up(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), SysErrorKind::AlreadyExists, "{e}");
    assert!(
        e.to_string().contains(&format!(
            r#"creating veth "second" (peer "eth0" in namespace "{}")"#,
            lab.name("c")
        )),
        "{e}"
    );
    let after: Vec<String> = host
        .link()
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert!(!after.contains(&"second".to_owned()), "{after:?}");

    // Deleting what is not there.
    let e = host.link().delete_by_name("nosuch0").await.unwrap_err();
    assert_eq!(e.kind(), SysErrorKind::NotFound, "{e}");
    let e = host.link().delete(999_999).await.unwrap_err();
    assert_eq!(e.kind(), SysErrorKind::NotFound, "{e}");
    let e = host.link().get("nosuch0").await.unwrap_err();
    assert_eq!(e.kind(), SysErrorKind::NotFound, "{e}");

    // Clean up what succeeded; the namespace is back to where it started.
    host.link().delete_by_name("first").await.unwrap();
    host.link().delete_by_name("br0").await.unwrap();
    assert_eq!(names(&host.link().list().await.unwrap()).join(","), before);
    assert_eq!(
        names(&handle(&c).await.link().list().await.unwrap()),
        vec!["lo"]
    );
}

#[tokio::test]
async fn vxlan_with_fdb_and_neighbour_entries() {
    let lab = Lab::new();
    let host_ns = lab.namespace("host").await.unwrap();
    let host = handle(&host_ns).await;
    host.link().add(LinkSpec::bridge("ul0").up()).await.unwrap();
    let ul = host.link().get("ul0").await.unwrap();
    host.address()
        .add(ul.index, net("192.168.77.1/24"))
        .await
        .unwrap();

    let spec = VxlanSpec::new(4097)
        .local(ip("192.168.77.1"))
        .underlay(ul.index)
        .ttl(64)
        .proxy(true);
    host.link()
        .add(LinkSpec::vxlan("vx0", spec).mtu(1450).up())
        .await
        .unwrap();
    let vx = host.link().get("vx0").await.unwrap();
    assert_eq!(vx.kind, Some(LinkKind::Vxlan));
    assert_eq!(vx.mtu, 1450);

    let mac: MacAddr = "02:42:0a:00:05:03".parse().unwrap();
    let entry = FdbEntry::remote(vx.index, mac, ip("192.168.77.2"));
    host.fdb().add(entry).await.unwrap();
    let e = host.fdb().add(entry).await.unwrap_err();
    assert_eq!(e.kind(), SysErrorKind::AlreadyExists, "{e}");
    // Broadcast copies go to two VTEPs.
    for vtep in ["192.168.77.2", "192.168.77.3"] {
        host.fdb()
            .append(FdbEntry::remote(vx.index, MacAddr::ZERO, ip(vtep)))
            .await
            .unwrap();
    }
    let fdb = host.fdb().list_on(vx.index).await.unwrap();
    assert!(fdb.contains(&entry), "{fdb:?}");
    assert_eq!(fdb.iter().filter(|e| e.mac.is_zero()).count(), 2, "{fdb:?}");

    let neigh = Neighbour::new(vx.index, ip("10.0.5.3"), mac);
    host.neigh().add(neigh).await.unwrap();
    host.neigh().replace(neigh).await.unwrap();
    let list = host.neigh().list().await.unwrap();
    let found = list
        .iter()
        .find(|n| n.index == vx.index && n.ip == ip("10.0.5.3"))
        .unwrap();
    assert_eq!(found.mac, Some(mac));
    assert_eq!(found.state, NeighState::Permanent);

    host.neigh().delete(vx.index, ip("10.0.5.3")).await.unwrap();
    host.fdb().delete(entry).await.unwrap();
    let e = host.fdb().delete(entry).await.unwrap_err();
    assert_eq!(e.kind(), SysErrorKind::NotFound, "{e}");
    assert!(!host.fdb().list_on(vx.index).await.unwrap().contains(&entry));
    assert!(
        !host
            .neigh()
            .list()
            .await
            .unwrap()
            .iter()
            .any(|n| n.ip == ip("10.0.5.3"))
    );

    // Master entries on a bridge port.
    host.link()
        .add(LinkSpec::veth("port0").master(ul.index).up())
        .await
        .unwrap();
    let port = host.link().get("port0").await.unwrap();
    let static_entry = FdbEntry::master(port.index, "02:00:00:00:00:42".parse().unwrap());
    host.fdb().add(static_entry).await.unwrap();
    assert!(
        host.fdb()
            .list_on(port.index)
            .await
            .unwrap()
            .contains(&static_entry)
    );
    host.fdb().delete(static_entry).await.unwrap();
}

#[tokio::test]
async fn macvlan_created_inside_a_container() {
    let lab = Lab::new();
    let host_ns = lab.namespace("host").await.unwrap();
    let c = lab.namespace("c").await.unwrap();
    let host = handle(&host_ns).await;
    host.link()
        .add(
            LinkSpec::veth("parent0")
                .peer(VethPeer::new("parent0p"))
                .up(),
        )
        .await
        .unwrap();
    let parent = host.link().get("parent0").await.unwrap();
    for (name, mode) in [
        ("mvb", MacvlanMode::Bridge),
        ("mvp", MacvlanMode::Private),
        ("mvv", MacvlanMode::Vepa),
    ] {
        host.link()
            .add(LinkSpec::macvlan(name, parent.index, mode).netns(&c))
            .await
            .unwrap();
    }
    assert!(!names(&host.link().list().await.unwrap()).contains(&"mvb"));
    let inside = handle(&c).await;
    let mv = inside.link().get("mvb").await.unwrap();
    assert_eq!(mv.kind, Some(LinkKind::Macvlan));
    inside.link().set_up(mv.index).await.unwrap();
    inside
        .address()
        .add(mv.index, net("10.50.0.2/24"))
        .await
        .unwrap();
    assert!(inside.link().get("mvb").await.unwrap().up);

    // Passthru takes over the parent: only one such macvlan per parent.
    host.link()
        .add(
            LinkSpec::veth("parent1")
                .peer(VethPeer::new("parent1p"))
                .up(),
        )
        .await
        .unwrap();
    let p1 = host.link().get("parent1").await.unwrap();
    host.link()
        .add(LinkSpec::macvlan("mvpt", p1.index, MacvlanMode::Passthru).netns(&c))
        .await
        .unwrap();
    assert_eq!(
        inside.link().get("mvpt").await.unwrap().kind,
        Some(LinkKind::Macvlan)
    );
}

#[tokio::test]
async fn sysctl_changes_the_lab_namespace_only() {
    let lab = Lab::new();
    let host_ns = lab.namespace("host").await.unwrap();
    let root = NetNs::current().unwrap();
    let root_before = sysctl::read(&root, "net/ipv4/ip_forward").await.unwrap();
    let root_localnet = sysctl::read(&root, "net.ipv4.conf.all.route_localnet")
        .await
        .unwrap();

    let flip = if root_before == "1" { "0" } else { "1" };
    sysctl::write(&host_ns, "net/ipv4/ip_forward", flip)
        .await
        .unwrap();
    assert_eq!(
        sysctl::read(&host_ns, "net/ipv4/ip_forward").await.unwrap(),
        flip
    );

    let host = handle(&host_ns).await;
    host.link().add(LinkSpec::bridge("br-s")).await.unwrap();
    sysctl::write_many(
        &host_ns,
        &[
            ("net/ipv4/conf/br-s/route_localnet", "1"),
            ("net/ipv6/conf/all/disable_ipv6", "0"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        sysctl::read(&host_ns, "net/ipv4/conf/br-s/route_localnet")
            .await
            .unwrap(),
        "1"
    );

    assert_eq!(
        sysctl::read(&root, "net/ipv4/ip_forward").await.unwrap(),
        root_before
    );
    assert_eq!(
        sysctl::read(&root, "net/ipv4/conf/all/route_localnet")
            .await
            .unwrap(),
        root_localnet
    );
    let e = sysctl::read(&host_ns, "net/ipv4/conf/nosuch0/route_localnet")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), SysErrorKind::NotFound, "{e}");
    let e = sysctl::write(&host_ns, "kernel/hostname", "x")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), SysErrorKind::InvalidName, "{e}");
}

#[tokio::test]
async fn link_group_delete_removes_many_veths_at_once() {
    let lab = Lab::new();
    let host_ns = lab.namespace("host").await.unwrap();
    let c = lab.namespace("c").await.unwrap();
    let host = handle(&host_ns).await;
    for i in 0..8 {
        host.link()
            .add(
                LinkSpec::veth(format!("g{i}"))
                    .peer(VethPeer::new(format!("eth{i}")).netns(&c))
                    .group(42),
            )
            .await
            .unwrap();
    }
    host.link()
        .add(LinkSpec::veth("keep0").peer(VethPeer::new("keep0p")))
        .await
        .unwrap();
    let links = host.link().list().await.unwrap();
    assert_eq!(links.iter().filter(|l| l.group == 42).count(), 8);

    host.link().delete_group(42).await.unwrap();
    let left = host.link().list().await.unwrap();
    assert!(left.iter().all(|l| l.group != 42), "{left:?}");
    assert!(names(&left).contains(&"keep0"));
    assert_eq!(
        names(&handle(&c).await.link().list().await.unwrap()),
        vec!["lo"]
    );

    let e = host.link().delete_group(42).await.unwrap_err();
    assert_eq!(e.kind(), SysErrorKind::NotFound, "{e}");
    let e = host.link().delete_group(0).await.unwrap_err();
    assert_eq!(e.kind(), SysErrorKind::InvalidArgument, "{e}");
    assert!(names(&host.link().list().await.unwrap()).contains(&"keep0"));
}

#[tokio::test]
async fn vlan_is_not_supported_by_this_kernel() {
    let lab = Lab::new();
    let host_ns = lab.namespace("host").await.unwrap();
    let host = handle(&host_ns).await;
    host.link()
        .add(LinkSpec::veth("trunk0").peer(VethPeer::new("trunk0p")))
        .await
        .unwrap();
    let trunk = host.link().get("trunk0").await.unwrap();
    let e = host
        .link()
        .add(LinkSpec::vlan("trunk0.100", trunk.index, 100))
        .await
        .unwrap_err();
    // With 8021q built in this would succeed; this kernel has no vlan support.
    assert_eq!(e.kind(), SysErrorKind::NotSupported, "{e}");
    assert!(
        e.to_string().contains(r#"creating vlan "trunk0.100""#),
        "{e}"
    );
    assert!(!names(&host.link().list().await.unwrap()).contains(&"trunk0.100"));
}

#[tokio::test]
async fn link_changes_and_hairpin() {
    let lab = Lab::new();
    let host_ns = lab.namespace("host").await.unwrap();
    let c = lab.namespace("c").await.unwrap();
    let host = handle(&host_ns).await;
    host.link().add(LinkSpec::bridge("br1").up()).await.unwrap();
    let br = host.link().get("br1").await.unwrap();
    host.link()
        .add(LinkSpec::veth("v0").peer(VethPeer::new("v0p")))
        .await
        .unwrap();
    let v0 = host.link().get("v0").await.unwrap();
    assert_eq!(host.link().get_by_index(v0.index).await.unwrap().name, "v0");

    let mac: MacAddr = "02:42:ac:11:00:09".parse().unwrap();
    host.link()
        .set(
            v0.index,
            LinkChange::new()
                .mtu(1400)
                .mac(mac)
                .master(br.index)
                .group(7)
                .up(),
        )
        .await
        .unwrap();
    let v0 = host.link().get_by_index(v0.index).await.unwrap();
    assert_eq!(
        (v0.mtu, v0.mac, v0.master, v0.group, v0.up),
        (1400, Some(mac), Some(br.index), 7, true)
    );

    host.link().set_hairpin(v0.index, true).await.unwrap();
    assert!(host.link().hairpin(v0.index).await.unwrap());
    host.link().set_hairpin(v0.index, false).await.unwrap();
    assert!(!host.link().hairpin(v0.index).await.unwrap());

    host.link().set_nomaster(v0.index).await.unwrap();
    host.link().set_down(v0.index).await.unwrap();
    host.link().set_name(v0.index, "renamed0").await.unwrap();
    let r = host.link().get("renamed0").await.unwrap();
    assert_eq!((r.index, r.master, r.up), (v0.index, None, false));
    host.link().set_mtu(r.index, 1300).await.unwrap();
    host.link()
        .set_mac(r.index, MacAddr::new([2, 0, 0, 0, 0, 1]))
        .await
        .unwrap();
    host.link().set_group(r.index, 0).await.unwrap();

    // Moving into a container.
    host.link().set_netns(r.index, &c).await.unwrap();
    assert_eq!(
        host.link().get("renamed0").await.unwrap_err().kind(),
        SysErrorKind::NotFound
    );
    let moved = handle(&c).await.link().get("renamed0").await.unwrap();
    assert_eq!(moved.mtu, 1300);
}

#[tokio::test]
async fn addrgenmode_none_keeps_a_link_free_of_ipv6_addresses() {
    let lab = Lab::new();
    let host_ns = lab.namespace("host").await.unwrap();
    let c = lab.namespace("c").await.unwrap();
    let host = handle(&host_ns).await;
    let inside = handle(&c).await;
    for (host_if, peer) in [("q0", "quiet0"), ("l0", "loud0")] {
        host.link()
            .add(
                LinkSpec::veth(host_if)
                    .peer(VethPeer::new(peer).netns(&c))
                    .up(),
            )
            .await
            .unwrap();
    }
    let quiet = inside.link().get("quiet0").await.unwrap().index;
    let loud = inside.link().get("loud0").await.unwrap().index;
    inside
        .link()
        .set(quiet, LinkChange::new().no_ipv6_addr_gen())
        .await
        .unwrap();
    inside.link().set_up(quiet).await.unwrap();
    inside.link().set_up(loud).await.unwrap();
    let v6_on = async |index| {
        inside
            .address()
            .list_on(index)
            .await
            .unwrap()
            .into_iter()
            .filter(|a| a.addr.is_ipv6())
            .count()
    };
    // The link-local address appears as the carrier does (the kernel's link watch).
    for _ in 0..200 {
        if v6_on(loud).await > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(v6_on(loud).await, 1, "the control gets its fe80:: address");
    assert_eq!(v6_on(quiet).await, 0, "addrgenmode none: no IPv6 address");
    // IPv4 and explicit IPv6 addresses still work on it.
    inside
        .address()
        .add(quiet, net("10.7.0.2/24"))
        .await
        .unwrap();
    inside
        .address()
        .add(quiet, net("fd00:7::2/64"))
        .await
        .unwrap();
    assert_eq!(v6_on(quiet).await, 1);
}

#[tokio::test]
async fn routes_v4_and_v6() {
    let lab = Lab::new();
    let host_ns = lab.namespace("host").await.unwrap();
    let host = handle(&host_ns).await;
    host.link()
        .add(LinkSpec::veth("r0").peer(VethPeer::new("r0p")).up())
        .await
        .unwrap();
    let r0 = host.link().get("r0").await.unwrap();
    let r0p = host.link().get("r0p").await.unwrap();
    host.link().set_up(r0p.index).await.unwrap();
    host.address()
        .add(r0.index, net("10.70.0.1/24"))
        .await
        .unwrap();
    host.address()
        .add(r0.index, net("fd70::1/64"))
        .await
        .unwrap();

    let prefix = Route::new(net("10.71.0.0/16")).oif(r0.index).metric(50);
    host.route().add(prefix.clone()).await.unwrap();
    let e = host.route().add(prefix.clone()).await.unwrap_err();
    assert_eq!(e.kind(), SysErrorKind::AlreadyExists, "{e}");
    let via = Route::new(net("10.72.0.0/16"))
        .via(ip("10.70.0.2"))
        .table(100);
    host.route().add(via.clone()).await.unwrap();
    host.route()
        .add(Route::default_v6("fd70::2".parse().unwrap()).oif(r0.index))
        .await
        .unwrap();
    host.route()
        .add(Route::default_v4("10.70.0.2".parse().unwrap()))
        .await
        .unwrap();

    let main = host.route().list_table(IpVersion::V4, 254).await.unwrap();
    let p = main.iter().find(|r| r.dst == net("10.71.0.0/16")).unwrap();
    assert_eq!(
        (p.oif, p.metric, p.kind),
        (Some(r0.index), Some(50), RouteKind::Unicast)
    );
    assert!(
        main.iter()
            .any(|r| r.dst.prefix() == 0 && r.gateway == Some(ip("10.70.0.2")))
    );
    let t100 = host.route().list_table(IpVersion::V4, 100).await.unwrap();
    assert!(
        t100.iter()
            .any(|r| r.dst == net("10.72.0.0/16") && r.gateway == Some(ip("10.70.0.2")))
    );
    let v6 = host.route().list(IpVersion::V6).await.unwrap();
    assert!(
        v6.iter()
            .any(|r| r.dst.prefix() == 0 && r.gateway == Some(ip("fd70::2"))),
        "{v6:?}"
    );

    host.route().delete(prefix).await.unwrap();
    host.route().delete(via.clone()).await.unwrap();
    let e = host.route().delete(via).await.unwrap_err();
    assert_eq!(e.kind(), SysErrorKind::NotFound, "{e}");
    host.route()
        .delete(Route::default_v6("fd70::2".parse().unwrap()))
        .await
        .unwrap();
    let main = host.route().list(IpVersion::V4).await.unwrap();
    assert!(!main.iter().any(|r| r.dst == net("10.71.0.0/16")));

    host.address()
        .delete(r0.index, net("10.70.0.1/24"))
        .await
        .unwrap();
    let e = host
        .address()
        .delete(r0.index, net("10.70.0.1/24"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), SysErrorKind::NotFound, "{e}");
    assert!(
        !host
            .address()
            .list_on(r0.index)
            .await
            .unwrap()
            .iter()
            .any(|a| a.addr == net("10.70.0.1/24"))
    );
}

#[tokio::test]
async fn current_namespace_handle_reads_only() {
    require_root();
    let h = Handle::current().await.unwrap();
    let links = h.link().list().await.unwrap();
    assert!(links.iter().any(|l| l.name == "lo"));
    // Opening by name goes through /run/netns.
    let lab = Lab::new();
    let ns = lab.namespace("named").await.unwrap();
    let named = Handle::open(&lab.name("named")).await.unwrap();
    assert_eq!(named.netns(), &ns);
    assert_eq!(names(&named.link().list().await.unwrap()), vec!["lo"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_work_on_a_multi_threaded_runtime() {
    let lab = Lab::new();
    let ns = lab.namespace("mt").await.unwrap();
    let h = handle(&ns).await;
    let mut tasks = Vec::new();
    for i in 0..4 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            h.link().add(LinkSpec::bridge(format!("mt{i}"))).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(h.link().list().await.unwrap().len(), 5);
}
