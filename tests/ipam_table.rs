//! Table tests of Docker's IPAM behaviour: default pool order, host routes skipped, bad input
//! refused with typed errors and nothing reserved, gateways, ranges, IPv6, serial allocation.

use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;
use wharf::ipam::{
    AddressRequest, Family, Ipam, IpamConfig, IpamError, IpamOptions, PoolSpec, SubnetRequest,
    parse_cidr,
};
use wharf::store::{MemoryStore, Store};

/// Tells whether an error is the expected one.
type Check = fn(&IpamError) -> bool;

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn local() -> (Ipam, MemoryStore) {
    let store = MemoryStore::new();
    let ipam = Ipam::open(Arc::new(store.clone()), IpamOptions::local(b"test-host"))
        .await
        .unwrap();
    (ipam, store)
}

#[tokio::test]
async fn the_first_31_networks_get_dockers_subnets() {
    let (ipam, _) = local().await;
    let mut expected: Vec<String> = (17..=31).map(|b| format!("172.{b}.0.0/16")).collect();
    expected.extend((0..16).map(|i| format!("192.168.{}.0/20", i * 16)));
    for (i, want) in expected.iter().enumerate() {
        let lease = ipam
            .request_subnet(SubnetRequest::new(format!("n{i}"), format!("net{i}")))
            .await
            .unwrap();
        assert_eq!(&lease.subnet.to_string(), want, "network #{i}");
    }
    // The 32nd finds the local pools exhausted.
    let err = ipam
        .request_subnet(SubnetRequest::new("n31", "one-too-many"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, IpamError::PoolsExhausted { network, family: "IPv4" } if network == "one-too-many"),
        "{err}"
    );
}

#[tokio::test]
async fn default_bridge_takes_the_first_subnet_with_gateway_dot_one() {
    let (ipam, _) = local().await;
    let bridge = ipam
        .request_subnet(SubnetRequest::new("bridge-id", "bridge"))
        .await
        .unwrap();
    assert_eq!(bridge.subnet, net("172.17.0.0/16"));
    assert_eq!(bridge.gateway, ip("172.17.0.1"));
    let first = ipam
        .allocate("bridge-id", AddressRequest::Next(Family::V4))
        .await
        .unwrap();
    assert_eq!(first, ip("172.17.0.2"));
}

#[tokio::test]
async fn subnets_overlapping_host_routes_are_skipped() {
    let (ipam, _) = local().await;
    let routes = vec![
        net("0.0.0.0/0"), // the default route never blocks anything
        net("172.18.0.0/16"),
    ];
    let a = ipam
        .request_subnet(SubnetRequest::new("a", "a").avoiding(routes.clone()))
        .await
        .unwrap();
    assert_eq!(a.subnet, net("172.17.0.0/16"));
    let b = ipam
        .request_subnet(SubnetRequest::new("b", "b").avoiding(routes.clone()))
        .await
        .unwrap();
    assert_eq!(b.subnet, net("172.19.0.0/16"));
    // A narrow route inside a /14 pool blocks only the /16 that holds it.
    let c = ipam
        .request_subnet(SubnetRequest::new("c", "c").avoiding(vec![
            net("172.18.0.0/16"),
            net("172.20.3.0/24"),
            net("10.0.0.0/8"),
        ]))
        .await
        .unwrap();
    assert_eq!(c.subnet, net("172.21.0.0/16"));
}

#[tokio::test]
async fn released_subnet_returns_to_its_pool() {
    let (ipam, store) = local().await;
    let a = ipam
        .request_subnet(SubnetRequest::new("a", "a"))
        .await
        .unwrap();
    ipam.request_subnet(SubnetRequest::new("b", "b"))
        .await
        .unwrap();
    ipam.allocate("a", AddressRequest::Next(Family::V4))
        .await
        .unwrap();
    ipam.release_subnet("a", a.subnet).await.unwrap();
    assert!(
        store
            .list("ipam/v1/local/addrs/a/")
            .await
            .unwrap()
            .is_empty()
    );
    let c = ipam
        .request_subnet(SubnetRequest::new("c", "c"))
        .await
        .unwrap();
    assert_eq!(c.subnet, net("172.17.0.0/16"));
    assert!(ipam.subnets("a").is_empty());
}

/// Every bad input is a typed error, and leaves the store exactly as it was.
#[tokio::test]
async fn bad_input_is_a_typed_error_and_reserves_nothing() {
    let (ipam, store) = local().await;
    let existing = ipam
        .request_subnet(
            SubnetRequest::new("alpine-id", "alpine-net")
                .with_config(IpamConfig::new().parse_subnet("172.18.0.0/16").unwrap()),
        )
        .await
        .unwrap();
    ipam.allocate("alpine-id", AddressRequest::Next(Family::V4))
        .await
        .unwrap();
    let before = store.list("").await.unwrap();

    // Malformed CIDRs never reach the allocator.
    for bad in [
        "172.18.0.0",
        "172.18.0.0/33",
        "300.1.0.0/16",
        "fd00::/129",
        "nonsense",
    ] {
        assert!(
            matches!(parse_cidr(bad), Err(IpamError::InvalidCidr { .. })),
            "{bad}"
        );
    }
    assert!(matches!(
        IpamConfig::new().parse_gateway("172.18.0.300"),
        Err(IpamError::InvalidAddress { .. })
    ));

    let req = |cfg: IpamConfig| SubnetRequest::new("web-id", "web").with_config(cfg);
    let cases: Vec<(&str, SubnetRequest, Check)> = vec![
        (
            "gateway outside subnet",
            req(IpamConfig::new()
                .with_subnet(net("10.1.0.0/24"))
                .with_gateway(ip("10.2.0.1"))),
            |e| matches!(e, IpamError::GatewayOutsideSubnet { .. }),
        ),
        (
            "gateway is the broadcast address",
            req(IpamConfig::new()
                .with_subnet(net("10.1.0.0/24"))
                .with_gateway(ip("10.1.0.255"))),
            |e| matches!(e, IpamError::GatewayOutsideSubnet { .. }),
        ),
        (
            "range outside subnet",
            req(IpamConfig::new()
                .with_subnet(net("10.1.0.0/24"))
                .with_ip_range(net("10.1.1.0/25"))),
            |e| matches!(e, IpamError::RangeOutsideSubnet { .. }),
        ),
        (
            "range wider than subnet",
            req(IpamConfig::new()
                .with_subnet(net("10.1.0.0/24"))
                .with_ip_range(net("10.1.0.0/23"))),
            |e| matches!(e, IpamError::RangeOutsideSubnet { .. }),
        ),
        (
            "aux address outside subnet",
            req(IpamConfig::new()
                .with_subnet(net("10.1.0.0/24"))
                .with_aux_address("printer", ip("10.9.9.9"))),
            |e| matches!(e, IpamError::AuxAddressOutsideSubnet { name, .. } if name == "printer"),
        ),
        (
            "aux address equals gateway",
            req(IpamConfig::new()
                .with_subnet(net("10.1.0.0/24"))
                .with_gateway(ip("10.1.0.1"))
                .with_aux_address("printer", ip("10.1.0.1"))),
            |e| matches!(e, IpamError::DuplicateReservation { .. }),
        ),
        (
            "overlapping user subnet",
            req(IpamConfig::new().with_subnet(net("172.18.5.0/24"))),
            |e| {
                matches!(e, IpamError::SubnetOverlap { other_network, other_subnet, .. }
                    if other_network == "alpine-net" && other_subnet.to_string() == "172.18.0.0/16")
            },
        ),
        (
            "IPv6 host bits set",
            req(IpamConfig::new().with_subnet(net("fd00:1::5/64"))),
            |e| matches!(e, IpamError::HostBitsSet { canonical, .. } if canonical.to_string() == "fd00:1::/64"),
        ),
        (
            "IPv4 host bits set",
            req(IpamConfig::new().with_subnet(net("10.1.0.5/24"))),
            |e| matches!(e, IpamError::HostBitsSet { .. }),
        ),
        (
            "range without subnet",
            req(IpamConfig::new().with_ip_range(net("10.1.0.0/25"))),
            |e| matches!(e, IpamError::MissingSubnet { .. }),
        ),
        ("bad network id", SubnetRequest::new("a/b", "web"), |e| {
            matches!(e, IpamError::InvalidNetworkId { .. })
        }),
    ];
    for (what, request, check) in cases {
        let err = ipam.request_subnet(request).await.unwrap_err();
        assert!(check(&err), "{what}: got {err:?}");
        assert!(
            err.to_string().contains("web") || what == "bad network id",
            "{what}: {err}"
        );
    }
    assert!(ipam.subnets("web-id").is_empty());

    // Address requests in the existing network.
    let static_cases: Vec<(&str, IpAddr, Check)> = vec![
        ("outside subnet", ip("10.0.0.1"), |e| {
            matches!(e, IpamError::AddressOutsideRange { .. })
        }),
        ("the gateway", ip("172.18.0.1"), |e| {
            matches!(e, IpamError::AddressReserved { .. })
        }),
        ("the network address", ip("172.18.0.0"), |e| {
            matches!(e, IpamError::AddressReserved { .. })
        }),
        ("the broadcast", ip("172.18.255.255"), |e| {
            matches!(e, IpamError::AddressReserved { .. })
        }),
        ("in use", ip("172.18.0.2"), |e| {
            matches!(e, IpamError::AddressInUse { .. })
        }),
        ("no IPv6 subnet", ip("fd00::5"), |e| {
            matches!(e, IpamError::UnknownNetwork { .. })
        }),
    ];
    for (what, addr, check) in static_cases {
        let err = ipam
            .allocate("alpine-id", AddressRequest::Static(addr))
            .await
            .unwrap_err();
        assert!(check(&err), "{what}: got {err:?}");
    }
    let err = ipam
        .allocate("alpine-id", AddressRequest::Static(ip("172.18.0.2")))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"network "alpine-net": address 172.18.0.2 is already in use"#
    );
    assert_eq!(store.list("").await.unwrap(), before, "nothing reserved");
    assert_eq!(
        ipam.all_subnets(),
        vec![existing],
        "memory unchanged as well"
    );
}

#[tokio::test]
async fn static_address_outside_ip_range_is_refused() {
    let (ipam, _) = local().await;
    let lease = ipam
        .request_subnet(
            SubnetRequest::new("r", "ranged").with_config(
                IpamConfig::new()
                    .parse_subnet("172.28.0.0/16")
                    .unwrap()
                    .parse_ip_range("172.28.5.0/24")
                    .unwrap()
                    .parse_aux_address("host1", "172.28.1.5")
                    .unwrap(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(lease.gateway, ip("172.28.0.1"));
    let err = ipam
        .allocate("r", AddressRequest::Static(ip("172.28.6.1")))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, IpamError::AddressOutsideRange { range, .. } if *range == net("172.28.5.0/24")),
        "{err}"
    );
    ipam.allocate("r", AddressRequest::Static(ip("172.28.5.77")))
        .await
        .unwrap();
    // Dynamic addresses come from the range only.
    let first = ipam
        .allocate("r", AddressRequest::Next(Family::V4))
        .await
        .unwrap();
    assert_eq!(first, ip("172.28.5.0"));
    assert!(matches!(
        ipam.allocate("r", AddressRequest::Static(ip("172.28.1.5")))
            .await,
        Err(IpamError::AddressReserved { .. })
    ));
}

#[tokio::test]
async fn aux_addresses_push_the_default_gateway() {
    let (ipam, _) = local().await;
    let lease = ipam
        .request_subnet(
            SubnetRequest::new("x", "x").with_config(
                IpamConfig::new()
                    .with_subnet(net("10.3.0.0/24"))
                    .with_aux_address("router", ip("10.3.0.1")),
            ),
        )
        .await
        .unwrap();
    assert_eq!(lease.gateway, ip("10.3.0.2"));
    assert_eq!(
        ipam.allocate("x", AddressRequest::Next(Family::V4))
            .await
            .unwrap(),
        ip("10.3.0.3")
    );
}

#[tokio::test]
async fn exhaustion_names_the_network_and_release_frees_space() {
    let (ipam, _) = local().await;
    ipam.request_subnet(
        SubnetRequest::new("tiny", "tiny-net")
            .with_config(IpamConfig::new().with_subnet(net("10.4.0.0/29"))),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(
            ipam.allocate("tiny", AddressRequest::Next(Family::V4))
                .await
                .unwrap(),
        );
    }
    let err = ipam
        .allocate("tiny", AddressRequest::Next(Family::V4))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"network "tiny-net": no free address left in 10.4.0.0/29"#
    );
    ipam.release("tiny", got[2]).await.unwrap();
    assert!(matches!(
        ipam.release("tiny", got[2]).await,
        Err(IpamError::AddressNotAllocated { .. })
    ));
    assert_eq!(
        ipam.allocate("tiny", AddressRequest::Next(Family::V4))
            .await
            .unwrap(),
        got[2]
    );
}

#[tokio::test]
async fn ipv6_default_is_a_ula_slash_64_from_the_host_id() {
    let (ipam, _) = local().await;
    let a = ipam
        .request_subnet(SubnetRequest::new("v6a", "v6a").ipv6())
        .await
        .unwrap();
    let b = ipam
        .request_subnet(SubnetRequest::new("v6b", "v6b").ipv6())
        .await
        .unwrap();
    let pool = wharf::ipam::ula_pool(b"test-host");
    assert_eq!(a.subnet.prefix(), 64);
    assert!(a.subnet.to_string().starts_with("fd"));
    assert_eq!(a.subnet, pool.subnets().next().unwrap());
    assert_eq!(b.subnet, pool.subnets().nth(1).unwrap());
    // Network address reserved, gateway ::1, first endpoint ::2.
    let base = match a.subnet.network() {
        IpAddr::V6(v6) => v6.to_bits(),
        IpAddr::V4(_) => unreachable!(),
    };
    assert_eq!(a.gateway, IpAddr::V6((base + 1).into()));
    let first = ipam
        .allocate("v6a", AddressRequest::Next(Family::V6))
        .await
        .unwrap();
    assert_eq!(first, IpAddr::V6((base + 2).into()));

    // A user-given IPv6 subnet on a dual-stack network.
    ipam.request_subnet(SubnetRequest::new("v6a", "v6a"))
        .await
        .unwrap();
    ipam.request_subnet(
        SubnetRequest::new("dual", "dual")
            .with_config(IpamConfig::new().parse_subnet("2001:db8:1::/64").unwrap()),
    )
    .await
    .unwrap();
    let v6 = ipam
        .allocate("dual", AddressRequest::Static(ip("2001:db8:1::abcd")))
        .await
        .unwrap();
    assert_eq!(v6, ip("2001:db8:1::abcd"));
}

#[tokio::test]
async fn cluster_networks_allocate_serially_from_their_own_pool() {
    let store = MemoryStore::new();
    let ipam = Ipam::open(Arc::new(store), IpamOptions::cluster(b"cluster-1"))
        .await
        .unwrap();
    let ov = ipam
        .request_subnet(SubnetRequest::new("ov1", "overlay-1"))
        .await
        .unwrap();
    assert_eq!(ov.subnet, net("10.0.0.0/24"));
    let ov2 = ipam
        .request_subnet(SubnetRequest::new("ov2", "overlay-2"))
        .await
        .unwrap();
    assert_eq!(ov2.subnet, net("10.0.1.0/24"));
    let a = ipam
        .allocate("ov1", AddressRequest::Next(Family::V4))
        .await
        .unwrap();
    assert_eq!(a, ip("10.0.0.2"));
    ipam.release("ov1", a).await.unwrap();
    let b = ipam
        .allocate("ov1", AddressRequest::Next(Family::V4))
        .await
        .unwrap();
    assert_eq!(
        b,
        ip("10.0.0.3"),
        "a released address is not reused at once"
    );
}

#[tokio::test]
async fn configurable_pools_like_default_address_pools() {
    let pools: Vec<PoolSpec> = serde_json::from_str(
        r#"[{"base":"10.10.0.0/16","size":24},{"base":"10.20.0.0/16","size":24}]"#,
    )
    .unwrap();
    let ipam = Ipam::open(
        Arc::new(MemoryStore::new()),
        IpamOptions::local(b"h").with_pools(pools),
    )
    .await
    .unwrap();
    let a = ipam
        .request_subnet(SubnetRequest::new("a", "a"))
        .await
        .unwrap();
    assert_eq!(a.subnet, net("10.10.0.0/24"));
    let bad = Ipam::open(
        Arc::new(MemoryStore::new()),
        IpamOptions::local(b"h").with_pools(vec![PoolSpec {
            base: net("10.0.0.0/16"),
            size: 8,
        }]),
    )
    .await;
    assert!(matches!(bad, Err(IpamError::InvalidPool { .. })));
}

/// Two allocators sharing one store (two controllers in a process, or two hosts on etcd) never
/// hand out the same subnet or address.
#[tokio::test]
async fn two_allocators_sharing_a_store_never_collide() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let one = Ipam::open(Arc::clone(&store), IpamOptions::cluster(b"c"))
        .await
        .unwrap();
    let two = Ipam::open(Arc::clone(&store), IpamOptions::cluster(b"c"))
        .await
        .unwrap();
    let s1 = one
        .request_subnet(SubnetRequest::new("x", "x"))
        .await
        .unwrap();
    let s2 = two
        .request_subnet(SubnetRequest::new("y", "y"))
        .await
        .unwrap();
    assert_ne!(s1.subnet, s2.subnet);
    // `two` learns of network x from the store on first use.
    let mut seen = std::collections::HashSet::new();
    for i in 0..200 {
        let who = if i % 2 == 0 { &one } else { &two };
        let ip = who
            .allocate("x", AddressRequest::Next(Family::V4))
            .await
            .unwrap();
        assert!(seen.insert(ip), "{ip} handed out twice");
    }
    assert!(matches!(
        two.allocate("x", AddressRequest::Static(*seen.iter().next().unwrap()))
            .await,
        Err(IpamError::AddressInUse { .. })
    ));
}
