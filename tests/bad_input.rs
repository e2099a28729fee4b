//! Hostile and mistaken input across the whole public API: every request is refused with a typed
//! error, and the lab (links, addresses, routes, firewall rules, namespaces, state files) is
//! byte-identical before and after.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::World;
use wharf::controller::{EndpointSpec, Error, NetworkSpec, SandboxNamespace, SandboxSpec};
use wharf::driver::{BridgeOptions, DriverOptions, MacvlanOptions, OverlayOptions, PortMapping};
use wharf::ipam::IpamConfig;
use wharf::sys::NetNs;
use wharf::sys::nft::NftHandle;
use wharf::sys::rtnl::{Handle, IpVersion};

/// Everything a failed request could have touched, as text.
async fn snapshot(w: &World) -> String {
    let mut out = String::new();
    let h = Handle::in_netns(&w.host).await.unwrap();
    let mut links = h.link().list().await.unwrap();
    links.sort_by_key(|l| l.index);
    for l in links {
        out += &format!(
            "link {} {} up={} mtu={} master={:?}\n",
            l.index, l.name, l.up, l.mtu, l.master
        );
    }
    for a in h.address().list().await.unwrap() {
        out += &format!("addr {} {}\n", a.index, a.addr);
    }
    for v in [IpVersion::V4, IpVersion::V6] {
        for r in h.route().list(v).await.unwrap() {
            out += &format!(
                "route {:?} via {:?} oif {:?} table {}\n",
                r.dst, r.gateway, r.oif, r.table
            );
        }
    }
    let nft = NftHandle::open(&w.host).await.unwrap();
    for t in nft.list_tables().await.unwrap() {
        out += &format!("table {t:?}\n");
        for c in nft.list_chains(&t).await.unwrap() {
            out += &format!("  chain {c:?}\n");
        }
        for r in nft.list_rules(&t).await.unwrap() {
            out += &format!("  rule {r:?}\n");
        }
        for s in nft.list_sets(&t).await.unwrap() {
            out += &format!("  set {s:?} {:?}\n", nft.list_elements(&s).await.unwrap());
        }
    }
    let prefix = w.lab.netns_prefix();
    for ns in NetNs::list_named().unwrap() {
        if ns.starts_with(&prefix) {
            out += &format!("netns {ns}\n");
        }
    }
    let mut files = BTreeMap::new();
    collect(&w.config.state_dir, &mut files);
    collect(&w.files_dir, &mut files);
    for (path, bytes) in files {
        out += &format!(
            "file {path} {} bytes, hash {:x}\n",
            bytes.len(),
            fnv(&bytes)
        );
    }
    out
}

fn collect(dir: &Path, into: &mut BTreeMap<String, Vec<u8>>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, into);
        } else {
            into.insert(path.display().to_string(), std::fs::read(&path).unwrap());
        }
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

#[tokio::test]
async fn forty_bad_requests_change_nothing() {
    let w = World::new().await;
    let wharf = &w.wharf;
    // A world worth protecting: a network with a container and a published port, an internal one.
    wharf.create_network(NetworkSpec::new("app")).await.unwrap();
    wharf
        .create_network(NetworkSpec::new("secret").internal())
        .await
        .unwrap();
    wharf.create_sandbox(SandboxSpec::new("web")).await.unwrap();
    let published = EndpointSpec {
        ports: vec![PortMapping::tcp(8080, 80)],
        ..EndpointSpec::default()
    };
    wharf.connect("web", "app", published).await.unwrap();
    wharf
        .create_sandbox(SandboxSpec::new("idle"))
        .await
        .unwrap();
    let web_ip = wharf.endpoint("web", "app").unwrap().ipv4.unwrap();
    let before = snapshot(&w).await;

    let mut refused: Vec<(String, Error)> = Vec::new();
    macro_rules! refuse {
        ($what:expr, $call:expr) => {
            match $call {
                Ok(_) => panic!("accepted: {}", $what),
                Err(e) => refused.push(($what.to_string(), e)),
            }
        };
    }
    let net = |name: &str| NetworkSpec::new(name);
    let subnet = |s: &str| IpamConfig::new().parse_subnet(s).unwrap();
    let bridge = |o: BridgeOptions| DriverOptions::Bridge(o);

    // Networks.
    let long = "n".repeat(65);
    for name in [
        "",
        "../etc",
        "/",
        "a/b",
        ".hidden",
        "a b",
        "a\0b",
        long.as_str(),
    ] {
        refuse!(
            format!("network name {name:?}"),
            wharf.create_network(net(name)).await
        );
    }
    refuse!("duplicate network", wharf.create_network(net("app")).await);
    refuse!(
        "second host network",
        wharf
            .create_network(net("h2").driver(DriverOptions::Host))
            .await
    );
    refuse!(
        "second none network",
        wharf
            .create_network(net("n2").driver(DriverOptions::Null))
            .await
    );
    refuse!(
        "subnet overlapping app",
        wharf
            .create_network(net("x").ipam(subnet("172.18.0.0/24")))
            .await
    );
    refuse!(
        "gateway outside the subnet",
        wharf
            .create_network(
                net("x").ipam(subnet("10.9.0.0/24").with_gateway("10.8.0.1".parse().unwrap()))
            )
            .await
    );
    refuse!(
        "range outside the subnet",
        wharf
            .create_network(
                net("x").ipam(subnet("10.9.0.0/24").with_ip_range("10.8.0.0/25".parse().unwrap()))
            )
            .await
    );
    refuse!(
        "IPv4 host bits set",
        wharf
            .create_network(
                net("x").ipam(IpamConfig::new().with_subnet("10.9.0.5/24".parse().unwrap()))
            )
            .await
    );
    refuse!(
        "IPv6 host bits set",
        wharf
            .create_network(
                net("x")
                    .ipv6()
                    .ipam(IpamConfig::new().with_subnet("fd00::5/64".parse().unwrap()))
            )
            .await
    );
    refuse!(
        "IPv6 subnet without enable_ipv6",
        wharf
            .create_network(net("x").ipam(subnet("fd00::/64")))
            .await
    );
    refuse!(
        "two IPv4 IPAM entries",
        wharf
            .create_network(
                net("x")
                    .ipam(subnet("10.9.0.0/24"))
                    .ipam(subnet("10.10.0.0/24"))
            )
            .await
    );
    refuse!(
        "MTU too small",
        wharf
            .create_network(net("x").driver(bridge(BridgeOptions {
                mtu: Some(10),
                ..Default::default()
            })))
            .await
    );
    refuse!(
        "bridge name too long",
        wharf
            .create_network(net("x").driver(bridge(BridgeOptions {
                name: Some("a-very-long-bridge".into()),
                ..Default::default()
            })))
            .await
    );
    refuse!(
        "default_bridge on a user network",
        wharf
            .create_network(net("x").driver(bridge(BridgeOptions {
                default_bridge: true,
                ..Default::default()
            })))
            .await
    );
    let macvlan = |parent: Option<&str>| {
        DriverOptions::Macvlan(MacvlanOptions {
            parent: parent.map(str::to_owned),
            ..Default::default()
        })
    };
    refuse!(
        "macvlan without a parent",
        wharf
            .create_network(net("x").driver(macvlan(None)).ipam(subnet("10.9.0.0/24")))
            .await
    );
    refuse!(
        "macvlan on lo",
        wharf
            .create_network(
                net("x")
                    .driver(macvlan(Some("lo")))
                    .ipam(subnet("10.9.0.0/24"))
            )
            .await
    );
    refuse!(
        "macvlan on a missing parent",
        wharf
            .create_network(
                net("x")
                    .driver(macvlan(Some("nope0")))
                    .ipam(subnet("10.9.0.0/24"))
            )
            .await
    );
    refuse!(
        "overlay without a cluster",
        wharf
            .create_network(
                net("x")
                    .driver(DriverOptions::Overlay(OverlayOptions::default()))
                    .attachable()
            )
            .await
    );

    // Sandboxes.
    for name in ["", "..", "../x", "/", "x/y", "x\0", long.as_str()] {
        refuse!(
            format!("sandbox name {name:?}"),
            wharf.create_sandbox(SandboxSpec::new(name)).await
        );
    }
    refuse!(
        "duplicate sandbox",
        wharf.create_sandbox(SandboxSpec::new("web")).await
    );
    refuse!(
        "bad hostname",
        wharf
            .create_sandbox(SandboxSpec {
                name: "h".into(),
                namespace: SandboxNamespace::New,
                hostname: Some("bad host".into())
            })
            .await
    );
    refuse!(
        "namespace path that does not exist",
        wharf
            .create_sandbox(SandboxSpec {
                name: "p".into(),
                namespace: SandboxNamespace::Path("/run/netns/none-such".into()),
                hostname: None
            })
            .await
    );
    refuse!(
        "namespace path that is not a namespace",
        wharf
            .create_sandbox(SandboxSpec {
                name: "p".into(),
                namespace: SandboxNamespace::Path("/etc/hostname".into()),
                hostname: None
            })
            .await
    );

    // Endpoints.
    let ep = EndpointSpec::default;
    refuse!("unknown sandbox", wharf.connect("ghost", "app", ep()).await);
    refuse!(
        "unknown network",
        wharf.connect("idle", "ghost", ep()).await
    );
    refuse!("already connected", wharf.connect("web", "app", ep()).await);
    refuse!(
        "own namespace on the host network",
        wharf.connect("idle", "host", ep()).await
    );
    refuse!(
        "static IP outside the subnet",
        wharf
            .connect(
                "idle",
                "app",
                EndpointSpec {
                    ipv4: Some("10.1.2.3".parse().unwrap()),
                    ..ep()
                }
            )
            .await
    );
    refuse!(
        "static IP taken",
        wharf
            .connect(
                "idle",
                "app",
                EndpointSpec {
                    ipv4: Some(web_ip),
                    ..ep()
                }
            )
            .await
    );
    refuse!(
        "static IPv6 on an IPv4-only network",
        wharf
            .connect(
                "idle",
                "app",
                EndpointSpec {
                    ipv6: Some("fd00::9".parse().unwrap()),
                    ..ep()
                }
            )
            .await
    );
    refuse!(
        "interface name too long",
        wharf
            .connect(
                "idle",
                "app",
                EndpointSpec {
                    ifname: Some("eth-far-too-long".into()),
                    ..ep()
                }
            )
            .await
    );
    refuse!(
        "alias that is not a DNS name",
        wharf
            .connect(
                "idle",
                "app",
                EndpointSpec {
                    aliases: vec!["no spaces".into()],
                    ..ep()
                }
            )
            .await
    );
    refuse!(
        "multicast MAC",
        wharf
            .connect(
                "idle",
                "app",
                EndpointSpec {
                    mac: Some("01:00:5e:00:00:01".parse().unwrap()),
                    ..ep()
                }
            )
            .await
    );
    refuse!(
        "host port already published",
        wharf
            .connect(
                "idle",
                "app",
                EndpointSpec {
                    ports: vec![PortMapping::tcp(8080, 80)],
                    ..ep()
                }
            )
            .await
    );
    refuse!(
        "published port on an internal network",
        wharf
            .connect(
                "idle",
                "secret",
                EndpointSpec {
                    ports: vec![PortMapping::tcp(9090, 80)],
                    ..ep()
                }
            )
            .await
    );
    refuse!(
        "port range overflowing 65535",
        wharf
            .connect(
                "idle",
                "app",
                EndpointSpec {
                    ports: vec![PortMapping {
                        count: 10,
                        ..PortMapping::tcp(65530, 80)
                    }],
                    ..ep()
                }
            )
            .await
    );
    refuse!(
        "disconnect what is not connected",
        wharf.disconnect("idle", "app").await
    );
    refuse!(
        "disconnect an unknown sandbox",
        wharf.disconnect("ghost", "app").await
    );

    // Deletions and lookups.
    refuse!(
        "delete a predefined network",
        wharf.delete_network("bridge").await
    );
    refuse!("delete a network in use", wharf.delete_network("app").await);
    refuse!(
        "delete an unknown network",
        wharf.delete_network("ghost").await
    );
    refuse!(
        "delete an unknown sandbox",
        wharf.delete_sandbox("ghost").await
    );
    refuse!("inspect an unknown network", wharf.inspect_network("ghost"));
    refuse!(
        "endpoint of an unconnected sandbox",
        wharf.endpoint("idle", "app")
    );

    // Deserialised configs: unknown and contradictory fields.
    for json in [
        r#"{"name": "x", "colour": "blue"}"#,
        r#"{"name": "x", "driver": {"bridge": {"mtux": 1400}}}"#,
        r#"{"name": "x", "driver": {"macvlan": {"parent": "eth0", "mode": "sideways"}}}"#,
        r#"{"name": "x", "driver": {"warp": {}}}"#,
        r#"{"name": "x", "ipam": [{"Subnet": "10.0.0.0/33"}]}"#,
    ] {
        assert!(
            serde_json::from_str::<NetworkSpec>(json).is_err(),
            "accepted {json}"
        );
    }
    assert!(serde_json::from_str::<EndpointSpec>(r#"{"ipv4": "1.2.3.4", "extra": 1}"#).is_err());
    assert!(
        serde_json::from_str::<SandboxSpec>(r#"{"name": "x", "namespace": {"path": 5}}"#).is_err()
    );

    assert!(refused.len() >= 40, "only {} requests", refused.len());
    for (what, e) in &refused {
        assert!(!e.to_string().is_empty(), "{what}: empty message");
    }
    let after = snapshot(&w).await;
    if before != after {
        let diff: Vec<String> = after
            .lines()
            .filter(|l| !before.lines().any(|b| b == *l))
            .map(|l| format!("+ {l}"))
            .chain(
                before
                    .lines()
                    .filter(|l| !after.lines().any(|a| a == *l))
                    .map(|l| format!("- {l}")),
            )
            .collect();
        panic!("the lab changed:\n{}", diff.join("\n"));
    }
}
