//! The macvlan driver on a lab LAN (TUTORIALS.md scenario 5): containers appear on the parent's
//! segment with their own MACs and reach the gateway and the other machines there directly.
//!
//! The lab: the lab host's `uplink0` is cabled to a switch (a Linux bridge in a "lan" namespace
//! that also holds the gateway's addresses), and a physical machine "pc" sits on the same switch.
//!
//! ```text
//!  host [uplink0] ---- [port-host] switch (192.168.50.1, fd50::1) [port-pc] ---- [eth0] pc
//!     (macvlans of the containers hang off uplink0)                 (192.168.50.10, fd50::10)
//! ```

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::World;
use hickory_proto::rr::RecordType;
use wharf::controller::{EndpointSpec, Error, NetworkSpec, SandboxSpec};
use wharf::driver::{DriverError, DriverOptions, HostAccess, MacvlanMode, MacvlanOptions};
use wharf::ipam::{IpamConfig, IpamError};
use wharf::lab::probe;
use wharf::sys::rtnl::{Handle, IpVersion, LinkKind, LinkSpec, MacAddr, VethPeer};
use wharf::sys::{NetNs, SysErrorKind};

const FAIL_FAST: Duration = Duration::from_millis(800);
const GATEWAY: &str = "192.168.50.1";
const GATEWAY6: &str = "fd50::1";
const PC: &str = "192.168.50.10";
const PC6: &str = "fd50::10";
/// The host's own address on the LAN (on `uplink0`).
const HOST: &str = "192.168.50.3";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A lab host with a controller, cabled to a LAN with a gateway and another machine.
struct Lan {
    w: World,
    lan: Handle,
    pc: NetNs,
}

impl Lan {
    async fn new() -> Self {
        let w = World::new().await;
        let lan_ns = w.lab.namespace("lan").await.unwrap();
        let lan = Handle::in_netns(&lan_ns).await.unwrap();
        lan.link()
            .add(LinkSpec::bridge("switch").up())
            .await
            .unwrap();
        let switch = lan.link().get("switch").await.unwrap().index;
        for a in ["192.168.50.1/24", "fd50::1/64"] {
            lan.address().add(switch, a.parse().unwrap()).await.unwrap();
        }
        // The host's cable: its end is the parent of the macvlans.
        lan.link()
            .add(
                LinkSpec::veth("port-host")
                    .peer(VethPeer::new("uplink0").netns(&w.host))
                    .master(switch)
                    .up(),
            )
            .await
            .unwrap();
        let host = Handle::in_netns(&w.host).await.unwrap();
        let uplink = host.link().get("uplink0").await.unwrap().index;
        host.link().set_up(uplink).await.unwrap();
        // The other machine.
        let pc = w.lab.namespace("pc").await.unwrap();
        lan.link()
            .add(
                LinkSpec::veth("port-pc")
                    .peer(VethPeer::new("eth0").netns(&pc))
                    .master(switch)
                    .up(),
            )
            .await
            .unwrap();
        let pch = Handle::in_netns(&pc).await.unwrap();
        let eth0 = pch.link().get("eth0").await.unwrap().index;
        for a in ["192.168.50.10/24", "fd50::10/64"] {
            pch.address().add(eth0, a.parse().unwrap()).await.unwrap();
        }
        pch.link().set_up(eth0).await.unwrap();
        Self { w, lan, pc }
    }

    /// A macvlan network on the LAN: subnet 192.168.50.0/24, containers from .128/25, the
    /// switch's address as gateway, the machines of the LAN excluded.
    fn network(name: &str, opts: MacvlanOptions) -> NetworkSpec {
        NetworkSpec::new(name)
            .driver(DriverOptions::Macvlan(opts))
            .ipam(
                IpamConfig::new()
                    .with_subnet("192.168.50.0/24".parse().unwrap())
                    .with_ip_range("192.168.50.128/25".parse().unwrap())
                    .with_gateway(ip(GATEWAY))
                    .with_aux_address("pc", ip(PC))
                    .with_aux_address("host", ip(HOST))
                    .with_aux_address("host-shim", ip("192.168.50.2")),
            )
    }

    async fn container(&self, name: &str, network: &str) -> (NetNs, IpAddr) {
        let wharf = &self.w.wharf;
        wharf.create_sandbox(SandboxSpec::new(name)).await.unwrap();
        let ep = wharf
            .connect(name, network, EndpointSpec::default())
            .await
            .unwrap();
        (wharf.sandbox_netns(name).unwrap(), ep.ipv4.unwrap().into())
    }

    async fn host(&self) -> Handle {
        Handle::in_netns(&self.w.host).await.unwrap()
    }

    /// Switch port facing the host.
    async fn host_port(&self) -> u32 {
        self.lan.link().get("port-host").await.unwrap().index
    }

    /// What the LAN side has learnt: IP -> MAC.
    async fn lan_neighbours(&self) -> Vec<(IpAddr, Option<MacAddr>)> {
        self.lan
            .neigh()
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|n| (n.ip, n.mac))
            .collect()
    }
}

async fn reaches(from: &NetNs, to: IpAddr) -> bool {
    probe::ping(from, to, probe::DEFAULT_TIMEOUT).await.is_ok()
}

async fn cannot_reach(from: &NetNs, to: IpAddr) -> bool {
    probe::ping(from, to, FAIL_FAST).await.is_err()
}

#[tokio::test]
async fn scenario_5_bridge_mode_containers_are_machines_on_the_lan() {
    let lan = Lan::new().await;
    let wharf = &lan.w.wharf;
    let host_before = lan.w.host_links().await;
    let uplink_before = lan.host().await.link().get("uplink0").await.unwrap();

    let net = wharf
        .create_network(
            Lan::network("macnet", MacvlanOptions::parent("uplink0"))
                .ipv6()
                .ipam(
                    IpamConfig::new()
                        .with_subnet("fd50::/64".parse().unwrap())
                        .with_gateway(ip(GATEWAY6))
                        .with_aux_address("pc", ip(PC6)),
                ),
        )
        .await
        .unwrap();
    assert_eq!(net.driver, "macvlan");
    assert_eq!(net.options["parent"], "uplink0");
    assert_eq!(net.options["macvlan_mode"], "bridge");
    assert_eq!(net.ipam.config[0].gateway.as_deref(), Some(GATEWAY));
    // The gateway is a router on the segment: nothing is created on the host for it.
    assert_eq!(lan.w.host_links().await, host_before);

    let (c1, ip1) = lan.container("c1", "macnet").await;
    let (c2, ip2) = lan.container("c2", "macnet").await;
    assert_eq!((ip1, ip2), (ip("192.168.50.128"), ip("192.168.50.129")));
    let ep1 = wharf.endpoint("c1", "macnet").unwrap();
    assert_eq!(ep1.mac.to_string(), "02:42:c0:a8:32:80");
    let ip1_v6: IpAddr = ep1.ipv6.unwrap().into();

    // Inside c1: a macvlan eth0 with its MAC and addresses, loopback up, routed via the gateway.
    let inside = Handle::in_netns(&c1).await.unwrap();
    let eth0 = inside.link().get("eth0").await.unwrap();
    assert_eq!(eth0.kind, Some(LinkKind::Macvlan));
    assert_eq!(eth0.mac, Some(ep1.mac));
    assert!(eth0.up);
    assert_eq!(eth0.mtu, uplink_before.mtu, "the parent's MTU by default");
    assert!(inside.link().get("lo").await.unwrap().up);
    let addrs = lan.w.addresses_of(&c1, "eth0").await;
    assert!(addrs.contains(&"192.168.50.128/24".to_owned()), "{addrs:?}");
    assert_eq!(lan.w.default_gateway(&c1).await.as_deref(), Some(GATEWAY));
    let v6_default = inside
        .route()
        .list(IpVersion::V6)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.dst.prefix() == 0)
        .and_then(|r| r.gateway);
    assert_eq!(v6_default, Some(ip(GATEWAY6)));

    // Each other, the gateway and the other machine, both ways, over IPv4 and IPv6.
    for (from, to) in [
        (&c1, ip2),
        (&c2, ip1),
        (&c1, ip(GATEWAY)),
        (&c2, ip(GATEWAY)),
        (&c1, ip(PC)),
        (&c2, ip(PC)),
        (&lan.pc, ip1),
        (&c2, ip1_v6),
        (&c1, ip(GATEWAY6)),
        (&c1, ip(PC6)),
    ] {
        assert!(reaches(from, to).await, "-> {to}");
    }

    // Names, as on a user-defined bridge (the embedded DNS inside each container).
    let dns = "127.0.0.11:53".parse().unwrap();
    let a = probe::dns_query(
        &c1,
        dns,
        "c2",
        RecordType::A,
        probe::Transport::Udp,
        probe::DEFAULT_TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(a.addresses, vec![ip2]);

    // The LAN sees them as machines of their own: their own MACs, not the host's.
    let seen = lan.lan_neighbours().await;
    for (c, addr) in [("c1", ip1), ("c2", ip2)] {
        let mac = wharf.endpoint(c, "macnet").unwrap().mac;
        assert!(
            seen.contains(&(addr, Some(mac))),
            "{addr} at {mac}: {seen:?}"
        );
    }
    assert!(
        seen.iter().all(|(_, m)| *m != uplink_before.mac),
        "{seen:?}"
    );

    // Detach: the interface goes, the parent is untouched.
    wharf.disconnect("c1", "macnet").await.unwrap();
    assert_eq!(lan.w.links_in(&c1).await, ["lo"]);
    assert!(reaches(&c2, ip(GATEWAY)).await);
    wharf.delete_sandbox("c1").await.unwrap();
    wharf.delete_sandbox("c2").await.unwrap();
    wharf.delete_network("macnet").await.unwrap();
    assert_eq!(lan.w.host_links().await, host_before);
    let uplink_after = lan.host().await.link().get("uplink0").await.unwrap();
    assert_eq!(uplink_after, uplink_before);
}

#[tokio::test]
async fn private_mode_isolates_containers_from_each_other_not_from_the_gateway() {
    let lan = Lan::new().await;
    lan.w
        .wharf
        .create_network(Lan::network(
            "private",
            MacvlanOptions {
                mtu: Some(1400),
                ..MacvlanOptions::parent("uplink0").mode(MacvlanMode::Private)
            },
        ))
        .await
        .unwrap();
    let (c1, ip1) = lan.container("c1", "private").await;
    let eth0 = Handle::in_netns(&c1)
        .await
        .unwrap()
        .link()
        .get("eth0")
        .await
        .unwrap();
    assert_eq!(eth0.mtu, 1400);
    let (c2, ip2) = lan.container("c2", "private").await;
    assert!(reaches(&c1, ip(GATEWAY)).await);
    assert!(reaches(&c2, ip(PC)).await);
    assert!(cannot_reach(&c1, ip2).await);
    assert!(cannot_reach(&c2, ip1).await);
    // Not even when the switch sends their frames back (private mode drops them).
    lan.lan
        .link()
        .set_hairpin(lan.host_port().await, true)
        .await
        .unwrap();
    assert!(cannot_reach(&c1, ip2).await);
}

#[tokio::test]
async fn vepa_mode_goes_through_the_switch_and_needs_its_hairpin() {
    let lan = Lan::new().await;
    lan.w
        .wharf
        .create_network(Lan::network(
            "vepa",
            MacvlanOptions::parent("uplink0").mode(MacvlanMode::Vepa),
        ))
        .await
        .unwrap();
    let (c1, _) = lan.container("c1", "vepa").await;
    let (c2, ip2) = lan.container("c2", "vepa").await;
    assert!(reaches(&c1, ip(GATEWAY)).await);
    assert!(reaches(&c2, ip(PC)).await);
    // The switch does not send a frame back out of the port it came in by...
    let port = lan.host_port().await;
    assert!(!lan.lan.link().hairpin(port).await.unwrap());
    assert!(cannot_reach(&c1, ip2).await);
    // ...until its port hairpins: then c1 reaches c2 through the switch.
    lan.lan.link().set_hairpin(port, true).await.unwrap();
    assert!(reaches(&c1, ip2).await);
    lan.lan.link().set_hairpin(port, false).await.unwrap();
}

#[tokio::test]
async fn passthru_takes_the_parent_whole() {
    let mut lan = Lan::new().await;
    let uplink_mac = lan.host().await.link().get("uplink0").await.unwrap().mac;
    lan.w
        .wharf
        .create_network(Lan::network(
            "whole",
            MacvlanOptions::parent("uplink0").mode(MacvlanMode::Passthru),
        ))
        .await
        .unwrap();
    let (c1, _) = lan.container("c1", "whole").await;
    assert!(reaches(&c1, ip(GATEWAY)).await);
    let mac1 = lan.w.wharf.endpoint("c1", "whole").unwrap().mac;
    assert!(
        lan.lan_neighbours()
            .await
            .contains(&(ip("192.168.50.128"), Some(mac1)))
    );

    let is_parent_in_use = |e: &Error| matches!(e, Error::Driver(DriverError::ParentInUse { parent, .. }) if parent == "uplink0");
    // A second endpoint: refused, and nothing of it remains.
    lan.w
        .wharf
        .create_sandbox(SandboxSpec::new("c2"))
        .await
        .unwrap();
    let e = lan
        .w
        .wharf
        .connect("c2", "whole", EndpointSpec::default())
        .await
        .unwrap_err();
    assert!(is_parent_in_use(&e), "{e}");
    let c2 = lan.w.wharf.sandbox_netns("c2").unwrap();
    assert_eq!(lan.w.links_in(&c2).await, ["lo"]);
    // A second network on that parent, passthru or not: refused.
    for mode in [MacvlanMode::Passthru, MacvlanMode::Bridge] {
        let mut spec = Lan::network("second", MacvlanOptions::parent("uplink0").mode(mode));
        spec.ipam[0] = IpamConfig::new().with_subnet("10.77.0.0/24".parse().unwrap());
        let e = lan.w.wharf.create_network(spec).await.unwrap_err();
        assert!(is_parent_in_use(&e), "{e}");
        assert!(e.to_string().contains("passthru network \"whole\""), "{e}");
    }

    // The driver remembers across a restart.
    drop(lan.w.wharf);
    lan.w.wharf = common::reopen(&lan.w.config).await;
    let e = lan
        .w
        .wharf
        .connect("c2", "whole", EndpointSpec::default())
        .await
        .unwrap_err();
    assert!(is_parent_in_use(&e), "{e}");

    // The one endpoint leaves: the parent gets its own MAC back, and a new one may join.
    lan.w.wharf.delete_sandbox("c1").await.unwrap();
    let uplink = lan.host().await.link().get("uplink0").await.unwrap();
    assert_eq!(uplink.mac, uplink_mac);
    let mac: MacAddr = "02:42:de:ad:be:ef".parse().unwrap();
    let spec = EndpointSpec {
        mac: Some(mac),
        ..EndpointSpec::default()
    };
    lan.w.wharf.connect("c2", "whole", spec).await.unwrap();
    assert!(reaches(&c2, ip(GATEWAY)).await);
    // A given MAC is the one the LAN sees (in passthru, the parent carries it too).
    let eth0 = Handle::in_netns(&c2)
        .await
        .unwrap()
        .link()
        .get("eth0")
        .await
        .unwrap();
    assert_eq!(eth0.mac, Some(mac));
    assert!(
        lan.lan_neighbours()
            .await
            .contains(&(ip("192.168.50.128"), Some(mac)))
    );
}

#[tokio::test]
async fn the_host_reaches_its_containers_only_with_host_access() {
    let lan = Lan::new().await;
    let wharf = &lan.w.wharf;
    // The host is on the LAN itself.
    let host = lan.host().await;
    let uplink = host.link().get("uplink0").await.unwrap().index;
    host.address()
        .add(uplink, format!("{HOST}/24").parse().unwrap())
        .await
        .unwrap();
    assert!(reaches(&lan.w.host, ip(GATEWAY)).await);

    // Without host access: the kernel does not deliver between the parent and its macvlans.
    wharf
        .create_network(Lan::network("plain", MacvlanOptions::parent("uplink0")))
        .await
        .unwrap();
    let (c1, ip1) = lan.container("c1", "plain").await;
    assert!(reaches(&c1, ip(GATEWAY)).await);
    assert!(cannot_reach(&lan.w.host, ip1).await);
    assert!(cannot_reach(&c1, ip(HOST)).await);
    wharf.delete_sandbox("c1").await.unwrap();
    wharf.delete_network("plain").await.unwrap();

    // With it: a host-side macvlan holds 192.168.50.2 and routes to each container.
    let before = lan.w.host_links().await;
    let opts = MacvlanOptions {
        host_access: Some(HostAccess {
            address: "192.168.50.2".parse().unwrap(),
            address_v6: Some("fd50::2".parse().unwrap()),
        }),
        ..MacvlanOptions::parent("uplink0")
    };
    let spec = Lan::network("reachable", opts).ipv6().ipam(
        IpamConfig::new()
            .with_subnet("fd50::/64".parse().unwrap())
            .with_aux_address("host-shim", ip("fd50::2")),
    );
    let net = wharf.create_network(spec).await.unwrap();
    assert_eq!(net.options["wharf.macvlan.host_access"], "192.168.50.2");
    let shim = format!("mh-{}", &net.id[..12]);
    assert!(lan.w.host_links().await.contains(&shim));
    let (c1, ip1) = lan.container("c1", "reachable").await;
    let (c2, ip2) = lan.container("c2", "reachable").await;
    assert!(reaches(&lan.w.host, ip1).await);
    assert!(reaches(&lan.w.host, ip2).await);
    let ip1_v6: IpAddr = wharf
        .endpoint("c1", "reachable")
        .unwrap()
        .ipv6
        .unwrap()
        .into();
    assert!(reaches(&lan.w.host, ip1_v6).await);
    assert!(reaches(&c1, ip("192.168.50.2")).await);
    assert!(reaches(&c1, ip2).await);
    assert!(reaches(&c1, ip(GATEWAY)).await);
    // Detach removes its host route; deleting the network removes the host-side macvlan.
    wharf.delete_sandbox("c2").await.unwrap();
    let routes = host.route().list(IpVersion::V4).await.unwrap();
    assert!(
        !routes
            .iter()
            .any(|r| r.dst.ip() == ip2 && r.dst.prefix() == 32)
    );
    assert!(
        routes
            .iter()
            .any(|r| r.dst.ip() == ip1 && r.dst.prefix() == 32)
    );
    wharf.delete_sandbox("c1").await.unwrap();
    wharf.delete_network("reachable").await.unwrap();
    assert_eq!(lan.w.host_links().await, before);
    let _ = c2;
}

#[tokio::test]
async fn an_internal_network_without_parent_reaches_only_its_own() {
    let mut lan = Lan::new().await;
    let before = lan.w.host_links().await;
    let spec = NetworkSpec::new("island")
        .driver(DriverOptions::Macvlan(MacvlanOptions::default()))
        .internal();
    let net = lan.w.wharf.create_network(spec).await.unwrap();
    assert!(!net.options.contains_key("parent"));
    let private = format!("mv-{}", &net.id[..12]);
    assert!(lan.w.host_links().await.contains(&private));
    let (c1, _) = lan.container("c1", "island").await;
    let (c2, ip2) = lan.container("c2", "island").await;
    assert!(reaches(&c1, ip2).await);
    // No default route, and nothing beyond: not the LAN, not the host.
    assert_eq!(lan.w.default_gateway(&c1).await, None);
    assert!(cannot_reach(&c2, ip(PC)).await);

    // It survives a restart and goes with the network.
    drop(lan.w.wharf);
    lan.w.wharf = common::reopen(&lan.w.config).await;
    assert!(lan.w.host_links().await.contains(&private));
    assert!(
        reaches(
            &c2,
            lan.w
                .wharf
                .endpoint("c1", "island")
                .unwrap()
                .ipv4
                .unwrap()
                .into()
        )
        .await
    );
    for c in ["c1", "c2"] {
        lan.w.wharf.delete_sandbox(c).await.unwrap();
    }
    // After a reboot the private parent is gone: the next container makes it again.
    lan.host()
        .await
        .link()
        .delete_by_name(&private)
        .await
        .unwrap();
    let (c3, _) = lan.container("c3", "island").await;
    let (_, ip4) = lan.container("c4", "island").await;
    assert!(reaches(&c3, ip4).await);
    for c in ["c3", "c4"] {
        lan.w.wharf.delete_sandbox(c).await.unwrap();
    }
    lan.w.wharf.delete_network("island").await.unwrap();
    assert_eq!(lan.w.host_links().await, before);
}

#[tokio::test]
async fn bad_input_is_refused_before_anything_is_created() {
    let lan = Lan::new().await;
    let wharf = &lan.w.wharf;
    // A bridge port on the host, which cannot also be a macvlan parent.
    let host = lan.host().await;
    host.link()
        .add(LinkSpec::bridge("br-x").up())
        .await
        .unwrap();
    let br = host.link().get("br-x").await.unwrap().index;
    host.link()
        .add(
            LinkSpec::veth("port0")
                .peer(VethPeer::new("port0-peer"))
                .master(br)
                .up(),
        )
        .await
        .unwrap();
    let links_before = lan.w.host_links().await;
    let nets_before = wharf.list_networks().len();

    let with_parent = |p: &str| Lan::network("bad", MacvlanOptions::parent(p));
    let cases: Vec<(NetworkSpec, &str)> = vec![
        (
            Lan::network("bad", MacvlanOptions::default()),
            "a parent interface is required",
        ),
        (with_parent("lo"), "loopback"),
        (with_parent("port0"), "enslaved to link"),
        (with_parent("eth9"), "does not exist in the host namespace"),
        (with_parent("eth9.10"), "nor does \"eth9\""),
        (
            Lan::network(
                "bad",
                MacvlanOptions {
                    mtu: Some(9000),
                    ..MacvlanOptions::parent("uplink0")
                },
            ),
            "mtu 9000 exceeds mtu 1500",
        ),
        (
            Lan::network(
                "bad",
                MacvlanOptions {
                    host_access: Some(HostAccess {
                        address: "10.1.1.1".parse().unwrap(),
                        address_v6: None,
                    }),
                    ..MacvlanOptions::parent("uplink0")
                },
            ),
            "host_access: 10.1.1.1 is outside the subnet",
        ),
        (
            Lan::network(
                "bad",
                MacvlanOptions {
                    host_access: Some(HostAccess {
                        address: "192.168.50.2".parse().unwrap(),
                        address_v6: None,
                    }),
                    ..MacvlanOptions::parent("uplink0").mode(MacvlanMode::Passthru)
                },
            ),
            "passthru",
        ),
        (
            NetworkSpec::new("bad")
                .driver(DriverOptions::Macvlan(MacvlanOptions::parent("uplink0")))
                .ipam(
                    IpamConfig::new()
                        .with_subnet("192.168.50.0/24".parse().unwrap())
                        .with_gateway(ip("192.168.60.1")),
                ),
            "gateway 192.168.60.1 is not a usable address",
        ),
    ];
    for (spec, want) in cases {
        let e = wharf.create_network(spec).await.unwrap_err();
        assert!(
            matches!(
                e,
                Error::Driver(
                    DriverError::InvalidOption { .. } | DriverError::InvalidParent { .. }
                ) | Error::Ipam(IpamError::GatewayOutsideSubnet { .. })
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains(want), "{e} (wanted {want:?})");
        assert_eq!(lan.w.host_links().await, links_before);
        assert_eq!(wharf.list_networks().len(), nets_before);
    }
    // An unknown mode never gets past serde.
    let json =
        r#"{"name": "bad", "driver": {"macvlan": {"parent": "uplink0", "mode": "hairpin"}}}"#;
    assert!(serde_json::from_str::<NetworkSpec>(json).is_err());

    // Two networks on one parent with overlapping subnets: the second is refused, by name.
    wharf
        .create_network(Lan::network("first", MacvlanOptions::parent("uplink0")))
        .await
        .unwrap();
    let mut second = Lan::network("second", MacvlanOptions::parent("uplink0"));
    second.ipam[0] = IpamConfig::new().with_subnet("192.168.50.128/25".parse().unwrap());
    let e = wharf.create_network(second).await.unwrap_err();
    assert!(
        matches!(e, Error::Ipam(IpamError::SubnetOverlap { .. })),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "network \"second\": subnet 192.168.50.128/25 overlaps subnet 192.168.50.0/24 of network \"first\""
    );
    // Disjoint subnets on one parent are fine (bridge mode: they share it).
    let mut third = Lan::network("third", MacvlanOptions::parent("uplink0"));
    third.ipam[0] = IpamConfig::new().with_subnet("10.78.0.0/24".parse().unwrap());
    wharf.create_network(third).await.unwrap();
}

#[tokio::test]
async fn a_vlan_parent_needs_the_kernels_8021q_support() {
    let lan = Lan::new().await;
    let before = lan.w.host_links().await;
    let e = lan
        .w
        .wharf
        .create_network(Lan::network("tagged", MacvlanOptions::parent("uplink0.10")))
        .await
        .unwrap_err();
    // This kernel has no 802.1Q: the kernel's refusal, typed, naming what was attempted.
    let Error::Driver(DriverError::Kernel { source, .. }) = &e else {
        panic!("{e:?}");
    };
    assert_eq!(source.kind(), SysErrorKind::NotSupported, "{e}");
    assert!(
        e.to_string()
            .contains("creating vlan \"uplink0.10\" (id 10 on link #"),
        "{e}"
    );
    // Nothing remains: no link, no network, and its subnet is free again.
    assert_eq!(lan.w.host_links().await, before);
    assert!(lan.w.wharf.inspect_network("tagged").is_err());
    lan.w
        .wharf
        .create_network(Lan::network("untagged", MacvlanOptions::parent("uplink0")))
        .await
        .unwrap();

    // A `name.N` parent that exists already is used as it is, and outlives the network.
    let host = lan.host().await;
    host.link()
        .add(
            LinkSpec::veth("side0.7")
                .peer(VethPeer::new("side0-peer"))
                .up(),
        )
        .await
        .unwrap();
    let mut spec = Lan::network("existing", MacvlanOptions::parent("side0.7"));
    spec.ipam[0] = IpamConfig::new().with_subnet("10.79.0.0/24".parse().unwrap());
    lan.w.wharf.create_network(spec).await.unwrap();
    lan.w.wharf.delete_network("existing").await.unwrap();
    assert!(host.link().get("side0.7").await.is_ok());
}

#[tokio::test]
async fn detach_works_when_the_namespace_is_gone() {
    let mut lan = Lan::new().await;
    lan.w
        .wharf
        .create_network(Lan::network("macnet", MacvlanOptions::parent("uplink0")))
        .await
        .unwrap();
    let (_, _) = lan.container("gone", "macnet").await;
    let netns = lan.w.wharf.sandbox("gone").unwrap().netns_name.unwrap();
    drop(lan.w.wharf);
    NetNs::delete(&netns).unwrap();
    lan.w.wharf = common::reopen(&lan.w.config).await;
    lan.w.wharf.delete_sandbox("gone").await.unwrap();
    lan.w.wharf.delete_network("macnet").await.unwrap();
    // The address is free again for the next container.
    lan.w
        .wharf
        .create_network(Lan::network("macnet", MacvlanOptions::parent("uplink0")))
        .await
        .unwrap();
    let (next, ip_next) = lan.container("next", "macnet").await;
    assert_eq!(ip_next, ip("192.168.50.128"));
    assert!(reaches(&next, ip(GATEWAY)).await);
}
