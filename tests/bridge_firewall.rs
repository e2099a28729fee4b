//! The bridge firewall with real packets in a lab: TUTORIALS.md scenario 2's reachability table
//! by IP (with scenario 1's default-bridge containers alongside), NAT to an "internet" that has
//! no route back, icc off, internal networks, published ports, the user chain, and a host
//! ruleset left exactly as it was.
//!
//! ```text
//!  containers ── bridges ── lab host ── uplink 192.0.2.1/24 ─── client 192.0.2.2
//!                              │
//!                              └── wan 203.0.113.1/24 ──── internet 203.0.113.2
//!                                  (the host's default route; no route back to containers)
//! ```

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::World;
use futures::future::join_all;
use wharf::controller::{EndpointSpec, Error, NetworkSpec, SandboxSpec};
use wharf::driver::{BridgeOptions, DriverOptions, PortMapping};
use wharf::lab::probe;
use wharf::sys::NetNs;
use wharf::sys::nft::{Batch, Chain, NftHandle, Rule, Table};
use wharf::sys::rtnl::{Handle, Route};

/// How long a probe that must fail waits.
const FAIL_FAST: Duration = Duration::from_millis(800);
const OK_WAIT: Duration = Duration::from_secs(3);
const INTERNET: &str = "203.0.113.2";

/// The lab host's way to the "internet": a namespace that knows nothing of the containers'
/// subnets, so only NATed traffic gets answers.
async fn internet(w: &World) -> NetNs {
    let inet = w.lab.namespace("internet").await.unwrap();
    w.lab
        .wire(
            (&w.host, "wan", "203.0.113.1/24".parse().unwrap()),
            (&inet, "eth0", "203.0.113.2/24".parse().unwrap()),
        )
        .await
        .unwrap();
    Handle::in_netns(&w.host)
        .await
        .unwrap()
        .route()
        .add(Route::default_v4(INTERNET.parse().unwrap()))
        .await
        .unwrap();
    inet
}

fn bridge_opts(f: impl FnOnce(&mut BridgeOptions)) -> DriverOptions {
    let mut o = BridgeOptions::default();
    f(&mut o);
    DriverOptions::Bridge(o)
}

/// Where a probe goes: a sandbox's address on a network, or the internet.
#[derive(Debug, Clone, Copy)]
enum To {
    Ip(&'static str, &'static str),
    Internet,
}

/// Pings every `(from, to, expected)` at once and returns the mismatches, one line each.
async fn check(w: &World, table: &[(&str, To, bool)]) -> Vec<String> {
    let probes = table.iter().map(|&(from, to, want)| async move {
        let dst: IpAddr = match to {
            To::Ip(sb, net) => w.wharf.endpoint(sb, net).unwrap().ipv4.unwrap().into(),
            To::Internet => INTERNET.parse().unwrap(),
        };
        let ns = w.wharf.sandbox_netns(from).unwrap();
        let wait = if want { OK_WAIT } else { FAIL_FAST };
        let got = probe::ping(&ns, dst, wait).await;
        (got.is_ok() != want).then(|| {
            format!(
                "{from} -> {to:?} ({dst}): expected {}, got {got:?}",
                if want { "ok" } else { "fail" }
            )
        })
    });
    join_all(probes).await.into_iter().flatten().collect()
}

async fn start(w: &World, sandboxes: &[(&str, &str)]) {
    for (sb, net) in sandboxes {
        if w.wharf.sandbox(sb).is_err() {
            w.wharf.create_sandbox(SandboxSpec::new(*sb)).await.unwrap();
        }
        w.wharf
            .connect(sb, net, EndpointSpec::default())
            .await
            .unwrap_or_else(|e| panic!("{sb} on {net}: {e}"));
    }
}

#[tokio::test]
async fn scenario_2_reachability_by_ip_as_in_the_tutorial() {
    use To::*;
    let w = World::new().await;
    let _internet = internet(&w).await;

    // Scenario 1's containers on the default bridge, alongside.
    start(&w, &[("s1-alpine1", "bridge"), ("s1-alpine2", "bridge")]).await;
    // Scenario 2: alpine-net with alpine1, 2, 4; alpine3 on bridge; alpine4 also on bridge.
    w.wharf
        .create_network(NetworkSpec::new("alpine-net"))
        .await
        .unwrap();
    start(
        &w,
        &[
            ("alpine1", "alpine-net"),
            ("alpine2", "alpine-net"),
            ("alpine4", "alpine-net"),
            ("alpine3", "bridge"),
            ("alpine4", "bridge"),
        ],
    )
    .await;

    let table = [
        // from alpine1
        ("alpine1", Ip("alpine2", "alpine-net"), true),
        ("alpine1", Ip("alpine3", "bridge"), false),
        ("alpine1", Ip("alpine4", "alpine-net"), true),
        ("alpine1", Ip("alpine4", "bridge"), false),
        // from alpine2
        ("alpine2", Ip("alpine1", "alpine-net"), true),
        ("alpine2", Ip("alpine3", "bridge"), false),
        ("alpine2", Ip("alpine4", "alpine-net"), true),
        ("alpine2", Ip("alpine4", "bridge"), false),
        // from alpine3
        ("alpine3", Ip("alpine1", "alpine-net"), false),
        ("alpine3", Ip("alpine2", "alpine-net"), false),
        ("alpine3", Ip("alpine4", "alpine-net"), false),
        ("alpine3", Ip("alpine4", "bridge"), true),
        // from alpine4
        ("alpine4", Ip("alpine1", "alpine-net"), true),
        ("alpine4", Ip("alpine2", "alpine-net"), true),
        ("alpine4", Ip("alpine3", "bridge"), true),
        // 5. all containers still reach the outside (NAT)
        ("alpine1", Internet, true),
        ("alpine2", Internet, true),
        ("alpine3", Internet, true),
        ("alpine4", Internet, true),
        // Scenario 1 alongside: its containers reach each other and the outside, and the
        // default bridge's members, but not alpine-net.
        ("s1-alpine1", Ip("s1-alpine2", "bridge"), true),
        ("s1-alpine2", Ip("s1-alpine1", "bridge"), true),
        ("s1-alpine1", Ip("alpine3", "bridge"), true),
        ("s1-alpine1", Ip("alpine4", "bridge"), true),
        ("s1-alpine1", Ip("alpine1", "alpine-net"), false),
        ("s1-alpine1", Ip("alpine4", "alpine-net"), false),
        ("alpine1", Ip("s1-alpine1", "bridge"), false),
        ("s1-alpine1", Internet, true),
        ("s1-alpine2", Internet, true),
    ];
    let mismatches = check(&w, &table).await;
    assert!(
        mismatches.is_empty(),
        "{} of {} expectations failed:\n{}",
        mismatches.len(),
        table.len(),
        mismatches.join("\n")
    );
}

#[tokio::test]
async fn without_masquerade_the_outside_cannot_answer() {
    use To::*;
    let w = World::new().await;
    let _internet = internet(&w).await;
    w.wharf
        .create_network(
            NetworkSpec::new("plain").driver(bridge_opts(|o| o.masquerade = Some(false))),
        )
        .await
        .unwrap();
    start(&w, &[("c1", "plain"), ("c2", "plain"), ("d1", "bridge")]).await;
    let table = [
        ("c1", Internet, false),
        ("c1", Ip("c2", "plain"), true),
        ("d1", Internet, true),
    ];
    let mismatches = check(&w, &table).await;
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[tokio::test]
async fn icc_off_blocks_the_same_bridge_and_keeps_the_outside() {
    use To::*;
    let w = World::new().await;
    let _internet = internet(&w).await;
    w.wharf
        .create_network(NetworkSpec::new("quiet").driver(bridge_opts(|o| o.icc = Some(false))))
        .await
        .unwrap();
    start(&w, &[("q1", "quiet"), ("q2", "quiet"), ("q3", "quiet")]).await;
    let table = [
        ("q1", Ip("q2", "quiet"), false),
        ("q2", Ip("q1", "quiet"), false),
        ("q3", Ip("q1", "quiet"), false),
        ("q1", Internet, true),
        ("q2", Internet, true),
    ];
    let mismatches = check(&w, &table).await;
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    // The gateway (the host) is not another container.
    let q1 = w.wharf.sandbox_netns("q1").unwrap();
    let gw = w.wharf.endpoint("q1", "quiet").unwrap().gateway.unwrap();
    probe::ping(&q1, gw, OK_WAIT).await.unwrap();

    // Leaving takes the port out of the isolation set; a new member is isolated too.
    w.wharf.disconnect("q3", "quiet").await.unwrap();
    start(&w, &[("q4", "quiet")]).await;
    let mismatches = check(&w, &[("q4", Ip("q1", "quiet"), false)]).await;
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[tokio::test]
async fn an_internal_network_reaches_nothing_outside_its_subnet() {
    use To::*;
    let w = World::new().await;
    let _internet = internet(&w).await;
    w.wharf
        .create_network(NetworkSpec::new("vault").internal())
        .await
        .unwrap();
    start(
        &w,
        &[
            ("v1", "vault"),
            ("v2", "vault"),
            ("both", "vault"),
            ("both", "bridge"),
            ("out", "bridge"),
        ],
    )
    .await;
    let table = [
        ("v1", Ip("v2", "vault"), true),
        ("v1", Ip("both", "vault"), true),
        ("v1", Internet, false),
        ("v1", Ip("out", "bridge"), false),
        ("out", Ip("v1", "vault"), false),
        // A container on both reaches each network through its own interface.
        ("both", Ip("out", "bridge"), true),
        ("both", Ip("v1", "vault"), true),
        ("out", Internet, true),
    ];
    let mismatches = check(&w, &table).await;
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    // No published ports on an internal network.
    w.wharf
        .create_sandbox(SandboxSpec::new("pub"))
        .await
        .unwrap();
    let err = w
        .wharf
        .connect(
            "pub",
            "vault",
            EndpointSpec {
                ports: vec![PortMapping::tcp(8080, 80)],
                ..EndpointSpec::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("internal"), "{err}");
}

fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

async fn tcp(ns: &NetNs, ip: &str, port: u16, ok: bool) -> Result<String, String> {
    let wait = if ok { OK_WAIT } else { FAIL_FAST };
    probe::tcp_connect(ns, sock(ip, port), wait)
        .await
        .map_err(|e| e.to_string())
}

async fn udp(ns: &NetNs, ip: &str, port: u16, ok: bool) -> Result<String, String> {
    let wait = if ok { OK_WAIT } else { FAIL_FAST };
    probe::udp_request(ns, sock(ip, port), b"ping", wait)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn published_ports_are_reached_from_outside_the_host_and_by_hairpin() {
    let w = World::new().await;
    let client = w.client().await;
    // A second address of the host, where the bound port is not published.
    let h = Handle::in_netns(&w.host).await.unwrap();
    let uplink = h.link().get("uplink").await.unwrap();
    h.address()
        .add(uplink.index, "192.0.2.9/24".parse().unwrap())
        .await
        .unwrap();
    let wharf = &w.wharf;
    wharf
        .create_network(NetworkSpec::new("web-net"))
        .await
        .unwrap();
    wharf.create_sandbox(SandboxSpec::new("web")).await.unwrap();
    let mut range = PortMapping::tcp(9000, 7000);
    range.count = 3;
    let mut bound = PortMapping::tcp(8443, 443);
    bound.host_ip = Some("192.0.2.1".parse().unwrap());
    wharf
        .connect(
            "web",
            "web-net",
            EndpointSpec {
                ports: vec![
                    PortMapping::tcp(8080, 80),
                    PortMapping::udp(5353, 5300),
                    range,
                    bound,
                ],
                ..EndpointSpec::default()
            },
        )
        .await
        .unwrap();
    let web = wharf.sandbox_netns("web").unwrap();
    let mut servers = vec![
        probe::serve_tcp(&web, sock("0.0.0.0", 80), "tcp80")
            .await
            .unwrap(),
        probe::serve_udp(&web, sock("0.0.0.0", 5300), "udp53")
            .await
            .unwrap(),
        probe::serve_tcp(&web, sock("0.0.0.0", 443), "tls")
            .await
            .unwrap(),
    ];
    for p in 7000..7003 {
        servers.push(
            probe::serve_tcp(&web, sock("0.0.0.0", p), &format!("r{p}"))
                .await
                .unwrap(),
        );
    }
    start(&w, &[("neighbour", "web-net")]).await;
    let neighbour = wharf.sandbox_netns("neighbour").unwrap();
    let host = w.host.clone();

    let mut failures = Vec::new();
    let mut expect = |what: &str, got: Result<String, String>, want: Option<&str>| {
        let ok = match (&got, want) {
            (Ok(g), Some(w)) => g == w,
            (Err(_), None) => true,
            _ => false,
        };
        if !ok {
            failures.push(format!("{what}: expected {want:?}, got {got:?}"));
        }
    };
    // From another namespace, through the host's address.
    expect(
        "client tcp",
        tcp(&client, "192.0.2.1", 8080, true).await,
        Some("tcp80"),
    );
    expect(
        "client udp",
        udp(&client, "192.0.2.1", 5353, true).await,
        Some("udp53"),
    );
    // From the host itself: its address and 127.0.0.1.
    expect(
        "host tcp",
        tcp(&host, "192.0.2.1", 8080, true).await,
        Some("tcp80"),
    );
    expect(
        "host udp",
        udp(&host, "192.0.2.1", 5353, true).await,
        Some("udp53"),
    );
    expect(
        "host lo tcp",
        tcp(&host, "127.0.0.1", 8080, true).await,
        Some("tcp80"),
    );
    expect(
        "host lo udp",
        udp(&host, "127.0.0.1", 5353, true).await,
        Some("udp53"),
    );
    // Hairpin: a container on the same bridge, and the container itself, through the host.
    expect(
        "neighbour tcp",
        tcp(&neighbour, "192.0.2.1", 8080, true).await,
        Some("tcp80"),
    );
    expect(
        "neighbour udp",
        udp(&neighbour, "192.0.2.1", 5353, true).await,
        Some("udp53"),
    );
    expect(
        "self tcp",
        tcp(&web, "192.0.2.1", 8080, true).await,
        Some("tcp80"),
    );
    expect(
        "self udp",
        udp(&web, "192.0.2.1", 5353, true).await,
        Some("udp53"),
    );
    // A range: host 9000-9002 to container 7000-7002.
    for i in 0..3u16 {
        let want = format!("r{}", 7000 + i);
        expect(
            "range",
            tcp(&client, "192.0.2.1", 9000 + i, true).await,
            Some(&want),
        );
    }
    expect(
        "past the range",
        tcp(&client, "192.0.2.1", 9003, false).await,
        None,
    );
    // Bound to 192.0.2.1: reached there, not on another host address or on 127.0.0.1.
    expect(
        "bound",
        tcp(&client, "192.0.2.1", 8443, true).await,
        Some("tls"),
    );
    expect(
        "bound, other address",
        tcp(&client, "192.0.2.9", 8443, false).await,
        None,
    );
    expect(
        "bound, loopback",
        tcp(&host, "127.0.0.1", 8443, false).await,
        None,
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Disconnecting withdraws the ports.
    wharf.disconnect("web", "web-net").await.unwrap();
    let got = tcp(&client, "192.0.2.1", 8080, false).await;
    assert!(got.is_err(), "{got:?}");
    drop(servers);
}

#[tokio::test]
async fn a_published_host_port_is_refused_naming_its_owner() {
    let w = World::new().await;
    let wharf = &w.wharf;
    let with_ports = |ports: Vec<PortMapping>| EndpointSpec {
        ports,
        ..EndpointSpec::default()
    };
    wharf
        .create_network(NetworkSpec::new("other"))
        .await
        .unwrap();
    for sb in ["first", "second"] {
        wharf.create_sandbox(SandboxSpec::new(sb)).await.unwrap();
    }
    wharf
        .connect(
            "first",
            "bridge",
            with_ports(vec![PortMapping::tcp(8080, 80)]),
        )
        .await
        .unwrap();
    // Same port, other network, other container: refused, naming the owner.
    let err = wharf
        .connect(
            "second",
            "other",
            with_ports(vec![PortMapping::tcp(8080, 80)]),
        )
        .await
        .unwrap_err();
    match &err {
        Error::PortAlreadyPublished {
            owner,
            network,
            host_port: 8080,
            ..
        } => assert_eq!((owner.as_str(), network.as_str()), ("first", "bridge")),
        other => panic!("unexpected error: {other}"),
    }
    assert!(err.to_string().contains("\"first\""), "{err}");
    // Nothing was created for the refused endpoint.
    assert!(wharf.endpoint("second", "other").is_err());
    // Inside a range, too.
    let mut range = PortMapping::tcp(8075, 80);
    range.count = 10;
    let err = wharf
        .connect("second", "other", with_ports(vec![range]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PortAlreadyPublished { .. }), "{err}");
    // UDP 8080 and TCP 8081 are free.
    wharf
        .connect(
            "second",
            "other",
            with_ports(vec![PortMapping::udp(8080, 80), PortMapping::tcp(8081, 80)]),
        )
        .await
        .unwrap();
    // Once the owner leaves, the port is free again.
    wharf.disconnect("first", "bridge").await.unwrap();
    wharf
        .create_sandbox(SandboxSpec::new("third"))
        .await
        .unwrap();
    wharf
        .connect(
            "third",
            "bridge",
            with_ports(vec![PortMapping::tcp(8080, 80)]),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_rule_in_the_user_chain_takes_effect_and_survives_wharfs_changes() {
    use To::*;
    let w = World::new().await;
    let _internet = internet(&w).await;
    start(&w, &[("blocked", "bridge"), ("free", "bridge")]).await;
    let blocked = w.wharf.endpoint("blocked", "bridge").unwrap().ipv4.unwrap();
    let nft = NftHandle::open(&w.host).await.unwrap();
    let t = Table::inet("wharf");
    let mut b = Batch::new();
    b.add_rule(
        &Rule::new(&t, "user")
            .saddr_in(IpAddr::V4(blocked).into())
            .drop()
            .comment("operator: no internet for blocked"),
    );
    nft.apply(&b).await.unwrap();
    let table = [("blocked", Internet, false), ("free", Internet, true)];
    let mismatches = check(&w, &table).await;
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));

    // wharf changes things: a network, endpoints, ports; then a controller restart.
    w.wharf
        .create_network(NetworkSpec::new("more"))
        .await
        .unwrap();
    start(&w, &[("m1", "more")]).await;
    w.wharf.create_sandbox(SandboxSpec::new("p")).await.unwrap();
    w.wharf
        .connect(
            "p",
            "bridge",
            EndpointSpec {
                ports: vec![PortMapping::tcp(8080, 80)],
                ..EndpointSpec::default()
            },
        )
        .await
        .unwrap();
    w.wharf.delete_sandbox("m1").await.unwrap();
    w.wharf.delete_network("more").await.unwrap();
    let mut w = w;
    drop(w.wharf);
    w.wharf = common::reopen(&w.config).await;
    w.wharf
        .create_network(NetworkSpec::new("again"))
        .await
        .unwrap();

    let user: Vec<Rule> = nft
        .list_rules(&t)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.chain == "user")
        .collect();
    assert_eq!(user.len(), 1, "{user:?}");
    assert_eq!(
        user[0].comment.as_deref(),
        Some("operator: no internet for blocked")
    );
    let mismatches = check(&w, &table).await;
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

/// wharf's rules are written once: more networks and a restart leave their handles alone.
#[tokio::test]
async fn the_static_rules_are_written_once() {
    let mut w = World::new().await;
    let nft = NftHandle::open(&w.host).await.unwrap();
    let t = Table::inet("wharf");
    let handles = |rules: Vec<Rule>| -> Vec<(String, u64)> {
        rules
            .into_iter()
            .map(|r| (r.chain, r.handle.unwrap()))
            .collect()
    };
    let before = handles(nft.list_rules(&t).await.unwrap());
    assert!(before.len() > 10, "{before:?}");
    w.wharf
        .create_network(NetworkSpec::new("n1"))
        .await
        .unwrap();
    drop(w.wharf);
    w.wharf = common::reopen(&w.config).await;
    w.wharf
        .create_network(NetworkSpec::new("n2"))
        .await
        .unwrap();
    assert_eq!(handles(nft.list_rules(&t).await.unwrap()), before);
    let chains: Vec<String> = nft
        .list_chains(&t)
        .await
        .unwrap()
        .into_iter()
        .map(|c: Chain| c.name)
        .collect();
    for c in [
        "user",
        "forward",
        "input",
        "prerouting",
        "output",
        "postrouting",
    ] {
        assert!(chains.contains(&c.to_owned()), "{c} in {chains:?}");
    }
}

/// Without br_netfilter (bridged frames never reach the `inet` hooks) isolation, icc off and
/// hairpin still hold: the `bridge` table cuts icc-off ports, the rest is routed traffic.
#[tokio::test]
async fn the_rules_hold_without_br_netfilter() {
    use To::*;
    let w = World::new().await;
    let _internet = internet(&w).await;
    for key in [
        "net/bridge/bridge-nf-call-iptables",
        "net/bridge/bridge-nf-call-ip6tables",
    ] {
        if wharf::sys::sysctl::read(&w.host, key).await.is_ok() {
            wharf::sys::sysctl::write(&w.host, key, "0").await.unwrap();
        }
    }
    w.wharf
        .create_network(NetworkSpec::new("quiet").driver(bridge_opts(|o| o.icc = Some(false))))
        .await
        .unwrap();
    w.wharf
        .create_network(NetworkSpec::new("open"))
        .await
        .unwrap();
    start(
        &w,
        &[
            ("q1", "quiet"),
            ("q2", "quiet"),
            ("o1", "open"),
            ("o2", "open"),
        ],
    )
    .await;
    let table = [
        ("q1", Ip("q2", "quiet"), false),
        ("o1", Ip("o2", "open"), true),
        ("o1", Ip("q1", "quiet"), false),
        ("q1", Ip("o1", "open"), false),
        ("q1", Internet, true),
        ("o1", Internet, true),
    ];
    let mismatches = check(&w, &table).await;
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));

    // Hairpin to the container's own published port, and a neighbour's.
    w.wharf
        .create_sandbox(SandboxSpec::new("web"))
        .await
        .unwrap();
    w.wharf
        .connect(
            "web",
            "open",
            EndpointSpec {
                ports: vec![PortMapping::tcp(8080, 80)],
                ..EndpointSpec::default()
            },
        )
        .await
        .unwrap();
    let web = w.wharf.sandbox_netns("web").unwrap();
    let _server = probe::serve_tcp(&web, sock("0.0.0.0", 80), "tcp80")
        .await
        .unwrap();
    let wan = "203.0.113.1";
    assert_eq!(tcp(&web, wan, 8080, true).await.as_deref(), Ok("tcp80"));
    let o1 = w.wharf.sandbox_netns("o1").unwrap();
    assert_eq!(tcp(&o1, wan, 8080, true).await.as_deref(), Ok("tcp80"));
    assert_eq!(
        tcp(&w.host, "127.0.0.1", 8080, true).await.as_deref(),
        Ok("tcp80")
    );
}
