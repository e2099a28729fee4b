//! nftables over netlink against the real kernel, proven with real packets in throwaway
//! namespaces (never the machine's own).
//!
//! Topology of the NAT tests (built with wharf's rtnl layer):
//!
//! ```text
//!  container            host (ip_forward=1)             upstream
//!  eth0 10.10.0.2 ---- vc 10.10.0.1 | vu 192.0.2.1 ---- eth0 192.0.2.2
//!  default via .1                                       (no route to 10.10.0.0/24)
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use wharf::lab::{Lab, probe};
use wharf::sys::nft::*;
use wharf::sys::rtnl::{Handle, LinkSpec, Route, VethPeer};
use wharf::sys::{NetNs, SysErrorKind, sysctl};

const CONTAINER: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 2);
const HOST_UP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const UPSTREAM: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const WAIT: Duration = Duration::from_millis(1500);

struct Topo {
    lab: Lab,
    container: NetNs,
    host: NetNs,
    upstream: NetNs,
}

/// container -- host -- upstream, host forwarding, upstream with no way back to the container.
async fn topology() -> Topo {
    let lab = Lab::new();
    let container = lab.namespace("c").await.expect("container ns");
    let host = lab.namespace("h").await.expect("host ns");
    let upstream = lab.namespace("u").await.expect("upstream ns");
    let h = Handle::in_netns(&host).await.expect("rtnl in host ns");
    for (name, peer_ns, addr) in [
        ("vc", &container, "10.10.0.1/24"),
        ("vu", &upstream, "192.0.2.1/24"),
    ] {
        h.link()
            .add(
                LinkSpec::veth(name)
                    .peer(VethPeer::new("eth0").netns(peer_ns))
                    .up(),
            )
            .await
            .expect("veth");
        let link = h.link().get(name).await.expect("host end");
        h.address()
            .add(link.index, addr.parse().expect("net"))
            .await
            .expect("host address");
    }
    for (ns, addr) in [(&container, "10.10.0.2/24"), (&upstream, "192.0.2.2/24")] {
        let inside = Handle::in_netns(ns).await.expect("rtnl inside");
        let eth0 = inside.link().get("eth0").await.expect("eth0");
        inside.link().set_up(eth0.index).await.expect("eth0 up");
        inside
            .address()
            .add(eth0.index, addr.parse().expect("net"))
            .await
            .expect("address");
    }
    Handle::in_netns(&container)
        .await
        .expect("rtnl in container")
        .route()
        .add(Route::default_v4(Ipv4Addr::new(10, 10, 0, 1)))
        .await
        .expect("default route");
    sysctl::write(&host, "net.ipv4.ip_forward", "1")
        .await
        .expect("enable forwarding in the host ns");
    Topo {
        lab,
        container,
        host,
        upstream,
    }
}

fn wharf() -> Table {
    Table::inet("wharf")
}

fn masquerade_rule() -> Rule {
    Rule::new(&wharf(), "postrouting")
        .saddr_in("10.10.0.0/24".parse().expect("net"))
        .oifname_ne("vc")
        .counter()
        .masquerade()
        .comment("wharf: masquerade 10.10.0.0/24")
}

fn nat_batch() -> Batch {
    let t = wharf();
    let mut b = Batch::new();
    b.add_table(&t)
        .add_chain(&Chain::base(
            &t,
            "postrouting",
            Hook::Postrouting,
            ChainType::Nat,
            priority::SRCNAT,
        ))
        .add_rule(&masquerade_rule());
    b
}

async fn pings(from: &NetNs, to: Ipv4Addr) -> bool {
    probe::can_ping(from, IpAddr::V4(to), WAIT).await
}

#[tokio::test]
async fn masquerade_lets_a_container_reach_upstream_and_deleting_the_table_removes_it() {
    let topo = topology().await;
    let nft = NftHandle::open(&topo.host)
        .await
        .expect("open nftables in host ns");

    // Without wharf's rule, replies have no way back.
    assert!(
        pings(&topo.host, UPSTREAM).await,
        "host reaches upstream directly"
    );
    assert!(
        !pings(&topo.container, UPSTREAM).await,
        "without masquerade the upstream cannot answer the container"
    );

    // Someone else's table, made through the API, must survive wharf's cleanup.
    let other = Table::ip("someone-else");
    let other_rule = Rule::new(&other, "input")
        .tcp_dport_eq(22)
        .counter()
        .accept();
    let mut b = Batch::new();
    b.add_table(&other)
        .add_chain(&Chain::base(
            &other,
            "input",
            Hook::Input,
            ChainType::Filter,
            priority::FILTER,
        ))
        .add_rule(&other_rule);
    nft.apply(&b).await.expect("someone else's table");

    nft.apply(&nat_batch()).await.expect("install masquerade");
    assert!(
        pings(&topo.container, UPSTREAM).await,
        "with wharf's masquerade the container reaches upstream"
    );

    // What the kernel holds is what wharf built, expression for expression.
    let rules = nft.list_rules(&wharf()).await.expect("list rules");
    assert_eq!(rules.len(), 1, "{rules:#?}");
    assert!(rules[0].same_as(&masquerade_rule()), "{:#?}", rules[0]);
    assert!(rules[0].handle.is_some());
    match rules[0]
        .exprs
        .iter()
        .find(|e| matches!(e, Expr::Counter { .. }))
    {
        Some(Expr::Counter { packets, .. }) => assert!(*packets > 0, "the rule saw the ping"),
        other => panic!("no counter: {other:?}"),
    }
    let chains = nft.list_chains(&wharf()).await.expect("list chains");
    assert_eq!(chains.len(), 1);
    assert_eq!(
        chains[0].base,
        Some(BaseChain {
            hook: Hook::Postrouting,
            chain_type: ChainType::Nat,
            priority: priority::SRCNAT,
            policy: Policy::Accept,
        })
    );
    // Applying the same batch again is harmless for table and chain (add, not create) but
    // appends the rule a second time: a reconcile must compare first.
    assert!(nft.list_tables().await.expect("tables").contains(&wharf()));

    // Cross-check with the real tool, when it is installed.
    if let Ok(out) = topo.host.command("nft").args(["list", "ruleset"]).output() {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("ip saddr 10.10.0.0/24 oifname != \"vc\"")
                && text.contains("masquerade")
                && text.contains("comment \"wharf: masquerade 10.10.0.0/24\""),
            "nft sees the rule as written:\n{text}"
        );
    }

    let mut del = Batch::new();
    del.delete_table(&wharf());
    nft.apply(&del).await.expect("delete wharf's table");

    let tables = nft.list_tables().await.expect("tables");
    assert!(!tables.contains(&wharf()), "{tables:?}");
    assert!(nft.list_rules(&wharf()).await.expect("rules").is_empty());
    assert!(nft.list_chains(&wharf()).await.expect("chains").is_empty());
    assert!(nft.list_sets(&wharf()).await.expect("sets").is_empty());
    assert!(
        tables.contains(&other),
        "someone else's table survives: {tables:?}"
    );
    let theirs = nft.list_rules(&other).await.expect("their rules");
    assert_eq!(theirs.len(), 1);
    assert!(theirs[0].same_as(&other_rule));

    assert!(
        !pings(&topo.container, UPSTREAM).await,
        "without wharf's table the container is cut off again"
    );
    drop(topo.lab);
}

#[tokio::test]
async fn dnat_map_publishes_a_container_port() {
    let topo = topology().await;
    let nft = NftHandle::open(&topo.host).await.expect("open nftables");
    let _server = probe::serve_tcp(
        &topo.container,
        SocketAddr::new(IpAddr::V4(CONTAINER), 80),
        "hello from the container",
    )
    .await
    .expect("server in the container");

    let t = wharf();
    let addr_port = DataType::Ipv4Addr.concat(DataType::InetService);
    let ports = Set::map(&t, "published", addr_port.clone(), addr_port.clone());
    let rule = Rule::new(&t, "prerouting")
        .dnat_map(&[Field::IpDaddr, Field::TcpDport], "published", &addr_port)
        .comment("published ports");
    let mut b = Batch::new();
    b.add_table(&t)
        .add_chain(&Chain::base(
            &t,
            "prerouting",
            Hook::Prerouting,
            ChainType::Nat,
            priority::DSTNAT,
        ))
        .add_set(&ports)
        .add_rule(&rule)
        .add_elements(
            &ports,
            &[Elem::new([Value::Ipv4(HOST_UP), Value::Port(8080)])
                .to([Value::Ipv4(CONTAINER), Value::Port(80)])],
        );
    nft.apply(&b).await.expect("install the dnat map");

    let published = SocketAddr::new(IpAddr::V4(HOST_UP), 8080);
    let line = probe::tcp_connect(&topo.upstream, published, WAIT)
        .await
        .expect("upstream reaches the published port");
    assert_eq!(line, "hello from the container");

    // The listing decodes back to the types wharf wrote.
    let sets = nft.list_sets(&t).await.expect("sets");
    assert_eq!(sets, vec![ports.clone()]);
    let elems = nft.list_elements(&ports).await.expect("elements");
    assert_eq!(
        elems,
        vec![
            Elem::new([Value::Ipv4(HOST_UP), Value::Port(8080)])
                .to([Value::Ipv4(CONTAINER), Value::Port(80)])
        ]
    );
    let rules = nft.list_rules(&t).await.expect("rules");
    assert_eq!(rules.len(), 1);
    assert!(rules[0].same_as(&rule), "{:#?}", rules[0]);

    if let Ok(out) = topo.host.command("nft").args(["list", "ruleset"]).output() {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("dnat ip to ip daddr . tcp dport map @published")
                && text.contains("192.0.2.1 . 8080 : 10.10.0.2 . 80"),
            "nft sees the map rule and entry:\n{text}"
        );
    }

    // Unpublishing is one element, the rule stays.
    let mut b = Batch::new();
    b.delete_elements(
        &ports,
        &[Elem::new([Value::Ipv4(HOST_UP), Value::Port(8080)])],
    );
    nft.apply(&b).await.expect("unpublish");
    assert!(
        probe::tcp_connect(&topo.upstream, published, WAIT)
            .await
            .is_err(),
        "nothing answers on the unpublished port"
    );
    assert_eq!(
        nft.list_rules(&t).await.expect("rules")[0].handle,
        rules[0].handle
    );
    drop(topo.lab);
}

#[tokio::test]
async fn interface_set_changes_without_touching_the_rule() {
    let topo = topology().await;
    let nft = NftHandle::open(&topo.host).await.expect("open nftables");
    let t = wharf();
    let blocked = Set::new(&t, "blocked", DataType::IfName);
    let drop_rule = Rule::new(&t, "forward")
        .iifname_in("blocked")
        .counter()
        .drop();
    let mut b = nat_batch();
    b.add_chain(&Chain::base(
        &t,
        "forward",
        Hook::Forward,
        ChainType::Filter,
        priority::FILTER,
    ))
    .add_set(&blocked)
    .add_rule(&drop_rule);
    nft.apply(&b).await.expect("install");
    assert!(
        pings(&topo.container, UPSTREAM).await,
        "empty set blocks nothing"
    );
    let before = nft.list_rules(&t).await.expect("rules");

    let mut b = Batch::new();
    b.add_elements(&blocked, &[Elem::ifname("vc"), Elem::ifname("dummy0")]);
    nft.apply(&b).await.expect("block vc");
    assert!(!pings(&topo.container, UPSTREAM).await, "vc is blocked");
    let mut elems = nft.list_elements(&blocked).await.expect("elements");
    elems.sort_by_key(|e| format!("{:?}", e.key));
    assert_eq!(elems, vec![Elem::ifname("dummy0"), Elem::ifname("vc")]);

    let mut b = Batch::new();
    b.delete_elements(&blocked, &[Elem::ifname("vc")]);
    nft.apply(&b).await.expect("unblock vc");
    assert!(
        pings(&topo.container, UPSTREAM).await,
        "vc is let through again"
    );
    assert_eq!(
        nft.list_elements(&blocked).await.expect("elements"),
        vec![Elem::ifname("dummy0")]
    );

    let after = nft.list_rules(&t).await.expect("rules");
    assert_eq!(
        before.iter().map(|r| r.handle).collect::<Vec<_>>(),
        after.iter().map(|r| r.handle).collect::<Vec<_>>(),
        "the rules were never replaced"
    );
    drop(topo.lab);
}

#[tokio::test]
async fn a_failing_batch_applies_nothing_and_names_the_object() {
    let lab = Lab::new();
    let ns = lab.namespace("n").await.expect("ns");
    let nft = NftHandle::open(&ns).await.expect("open nftables");
    let t = Table::inet("atomic");
    let mut b = Batch::new();
    b.add_table(&t)
        .add_chain(&Chain::regular(&t, "present"))
        .add_rule(&Rule::new(&t, "missing").counter().accept());
    let err = nft
        .apply(&b)
        .await
        .expect_err("a rule into a missing chain fails");
    assert_eq!(err.kind(), SysErrorKind::NotFound, "{err}");
    assert_eq!(
        err.to_string(),
        "adding rule to chain \"missing\" of table inet \"atomic\": not found"
    );
    assert!(
        nft.list_tables().await.expect("tables").is_empty(),
        "the table of the failed batch does not exist"
    );

    // Deleting what is not there is typed too.
    let mut b = Batch::new();
    b.delete_table(&t);
    let err = nft.apply(&b).await.expect_err("no such table");
    assert!(err.is_not_found(), "{err}");
    assert!(
        err.to_string()
            .starts_with("deleting table inet \"atomic\""),
        "{err}"
    );

    // A duplicate `create` is AlreadyExists; `add` is idempotent.
    let mut b = Batch::new();
    b.add_table(&t);
    nft.apply(&b).await.expect("add");
    nft.apply(&b).await.expect("add again");
    let mut b = Batch::new();
    b.create_table(&t);
    assert!(nft.apply(&b).await.expect_err("create").is_already_exists());

    // `destroy` is delete-if-present.
    let mut b = Batch::new();
    b.destroy_table(&t).destroy_table(&Table::ip("never-was"));
    nft.apply(&b).await.expect("destroy");
    assert!(nft.list_tables().await.expect("tables").is_empty());

    // An empty batch is nothing to do.
    nft.apply(&Batch::new()).await.expect("empty batch");
    drop(lab);
}

#[tokio::test]
async fn verdict_maps_jumps_and_listing_round_trip() {
    let lab = Lab::new();
    let ns = lab.namespace("n").await.expect("ns");
    let nft = NftHandle::open(&ns).await.expect("open nftables");
    let t = wharf();
    let vmap = Set::vmap(&t, "by-bridge", DataType::IfName);
    let rules = [
        Rule::new(&t, "forward")
            .ct_state_in(CtState::ESTABLISHED | CtState::RELATED)
            .accept(),
        Rule::new(&t, "forward").vmap(&[Field::IifName], "by-bridge"),
        Rule::new(&t, "forward")
            .daddr_in("172.18.0.0/20".parse().expect("net"))
            .not_in_set(&[Field::OifName], "bridges")
            .drop(),
        Rule::new(&t, "forward")
            .saddr_in("fd00:1::/64".parse().expect("net"))
            .udp_dport_eq(53)
            .goto("isolate"),
        Rule::new(&t, "isolate").oifname_eq("br0").ret(),
        Rule::new(&t, "isolate")
            .l4proto_eq(IPPROTO_TCP)
            .snat(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9))),
    ];
    // snat belongs in a nat chain: installed separately below.
    let (snat, rules_in) = rules.split_last().expect("rules");
    let mut b = Batch::new();
    b.add_table(&t)
        .add_chain(
            &Chain::base(
                &t,
                "forward",
                Hook::Forward,
                ChainType::Filter,
                priority::FILTER,
            )
            .policy(Policy::Drop),
        )
        .add_chain(&Chain::regular(&t, "isolate"))
        .add_set(&vmap)
        .add_set(&Set::new(&t, "bridges", DataType::IfName));
    for r in rules_in {
        b.add_rule(r);
    }
    b.add_elements(
        &vmap,
        &[
            Elem::ifname("br0").to_verdict(Verdict::Jump("isolate".into())),
            Elem::ifname("br1").to_verdict(Verdict::Accept),
        ],
    );
    nft.apply(&b).await.expect("install");

    let listed = nft.list_rules(&t).await.expect("rules");
    assert_eq!(listed.len(), rules_in.len());
    for (got, want) in listed.iter().zip(rules_in) {
        assert!(got.same_as(want), "listed {got:#?}\nbuilt {want:#?}");
    }
    let mut chains = nft.list_chains(&t).await.expect("chains");
    chains.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(chains[0].name, "forward");
    assert_eq!(
        chains[0].base.as_ref().map(|b| b.policy),
        Some(Policy::Drop)
    );
    assert_eq!(chains[1], Chain::regular(&t, "isolate"));
    let mut elems = nft.list_elements(&vmap).await.expect("elements");
    elems.sort_by_key(|e| format!("{:?}", e.key));
    assert_eq!(
        elems,
        vec![
            Elem::ifname("br0").to_verdict(Verdict::Jump("isolate".into())),
            Elem::ifname("br1").to_verdict(Verdict::Accept),
        ]
    );

    // snat in a nat chain, and delete a single rule by handle.
    let mut b = Batch::new();
    b.add_chain(&Chain::base(
        &t,
        "post",
        Hook::Postrouting,
        ChainType::Nat,
        priority::SRCNAT,
    ));
    let snat = Rule {
        chain: "post".into(),
        ..snat.clone()
    };
    b.add_rule(&snat);
    nft.apply(&b).await.expect("snat");
    let post: Vec<Rule> = nft
        .list_rules(&t)
        .await
        .expect("rules")
        .into_iter()
        .filter(|r| r.chain == "post")
        .collect();
    assert_eq!(post.len(), 1);
    assert!(post[0].same_as(&snat), "{:#?}", post[0]);
    let mut b = Batch::new();
    b.delete_rule(&t, "post", post[0].handle.expect("handle"));
    nft.apply(&b).await.expect("delete rule");
    assert!(
        nft.list_rules(&t)
            .await
            .expect("rules")
            .iter()
            .all(|r| r.chain != "post")
    );
    drop(lab);
}

#[tokio::test]
async fn concatenated_sets_timeouts_and_rule_positions() {
    let lab = Lab::new();
    let ns = lab.namespace("n").await.expect("ns");
    let nft = NftHandle::open(&ns).await.expect("open nftables");
    let t = wharf();
    // Isolation between bridges: `iifname . oifname @isolated drop`.
    let pairs = Set::new(&t, "isolated", DataType::IfName.concat(DataType::IfName));
    let seen = Set::new(&t, "seen", DataType::Ipv4Addr).with_timeout(Duration::from_secs(3600));
    let isolate = Rule::new(&t, "forward")
        .in_set(&[Field::IifName, Field::OifName], "isolated")
        .drop();
    let first = Rule::new(&t, "forward").comment("first").accept();
    let mut b = Batch::new();
    b.add_table(&t)
        .add_chain(&Chain::base(
            &t,
            "forward",
            Hook::Forward,
            ChainType::Filter,
            priority::FILTER,
        ))
        .add_set(&pairs)
        .add_set(&seen)
        .add_rule(&isolate)
        .insert_rule(&first, None)
        .add_elements(
            &pairs,
            &[
                Elem::new([Value::IfName("br-a".into()), Value::IfName("br-b".into())]),
                Elem::new([Value::IfName("br-b".into()), Value::IfName("br-a".into())]),
            ],
        )
        .add_elements(
            &seen,
            &[
                Elem::addr(Ipv4Addr::new(10, 0, 0, 1)),
                Elem::addr(Ipv4Addr::new(10, 0, 0, 2)).timeout(Duration::from_secs(60)),
            ],
        );
    nft.apply(&b).await.expect("install");

    let mut sets = nft.list_sets(&t).await.expect("sets");
    sets.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(sets, vec![pairs.clone(), seen.clone()]);
    let mut elems = nft.list_elements(&pairs).await.expect("elements");
    elems.sort_by_key(|e| format!("{:?}", e.key));
    assert_eq!(
        elems,
        vec![
            Elem::new([Value::IfName("br-a".into()), Value::IfName("br-b".into())]),
            Elem::new([Value::IfName("br-b".into()), Value::IfName("br-a".into())]),
        ]
    );
    let mut elems = nft.list_elements(&seen).await.expect("elements");
    elems.sort_by_key(|e| format!("{:?}", e.key));
    assert_eq!(elems.len(), 2);
    assert_eq!(elems[0].key, vec![Value::Ipv4(Ipv4Addr::new(10, 0, 0, 1))]);
    assert_eq!(elems[1].timeout, Some(Duration::from_secs(60)));

    // Inserted first, appended second, then one placed after the first by handle.
    let rules = nft.list_rules(&t).await.expect("rules");
    assert_eq!(rules.len(), 2);
    assert!(
        rules[0].same_as(&first) && rules[1].same_as(&isolate),
        "{rules:#?}"
    );
    let middle = Rule::new(&t, "forward").comment("middle").counter();
    let mut b = Batch::new();
    b.add_rule_after(&middle, rules[0].handle.expect("handle"));
    nft.apply(&b).await.expect("add after");
    let comments: Vec<Option<String>> = nft
        .list_rules(&t)
        .await
        .expect("rules")
        .into_iter()
        .map(|r| r.comment)
        .collect();
    assert_eq!(
        comments,
        vec![Some("first".to_owned()), Some("middle".to_owned()), None]
    );
    if let Ok(out) = ns.command("nft").args(["list", "ruleset"]).output() {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("iifname . oifname @isolated drop"),
            "nft sees the concatenated lookup:\n{text}"
        );
    }
    drop(lab);
}

#[tokio::test]
async fn large_batches_fit_one_transaction() {
    let lab = Lab::new();
    let ns = lab.namespace("n").await.expect("ns");
    let nft = NftHandle::open(&ns).await.expect("open nftables");
    let t = wharf();
    let ports = Set::new(&t, "ports", DataType::InetService);
    let mut b = Batch::new();
    b.add_table(&t)
        .add_chain(&Chain::regular(&t, "many"))
        .add_set(&ports);
    // 500 messages, each acknowledged...
    for port in 1..=500u16 {
        b.add_rule(&Rule::new(&t, "many").tcp_dport_eq(port).accept());
    }
    // ...and one message with 5000 elements.
    let elems: Vec<Elem> = (1..=5000u16).map(Elem::port).collect();
    b.add_elements(&ports, &elems);
    nft.apply(&b).await.expect("a large batch");
    assert_eq!(nft.list_rules(&t).await.expect("rules").len(), 500);
    assert_eq!(
        nft.list_elements(&ports).await.expect("elements").len(),
        5000
    );
    drop(lab);
}

#[tokio::test]
async fn interval_sets_match_prefixes_and_ranges() {
    let topo = topology().await;
    let nft = NftHandle::open(&topo.host).await.expect("open nftables");
    let t = wharf();
    let nets = Set::new(&t, "nets", DataType::Ipv4Addr).interval();
    let mut b = nat_batch();
    b.add_chain(&Chain::base(
        &t,
        "forward",
        Hook::Forward,
        ChainType::Filter,
        priority::FILTER,
    ))
    .add_set(&nets)
    .add_rule(
        &Rule::new(&t, "forward")
            .in_set(&[Field::IpDaddr], "nets")
            .drop(),
    );
    nft.apply(&b).await.expect("install");
    assert!(pings(&topo.container, UPSTREAM).await);

    let upstream_net = Elem::prefix("192.0.2.0/24".parse().expect("net"));
    let mut b = Batch::new();
    b.add_elements(&nets, std::slice::from_ref(&upstream_net));
    nft.apply(&b).await.expect("block 192.0.2.0/24");
    assert!(
        !pings(&topo.container, UPSTREAM).await,
        "192.0.2.2 is in 192.0.2.0/24"
    );

    let below = Elem::range(
        Value::Ipv4(Ipv4Addr::new(10, 0, 0, 1)),
        Value::Ipv4(Ipv4Addr::new(10, 0, 0, 9)),
    );
    let single = Elem::addr(Ipv4Addr::new(198, 51, 100, 7));
    let top = Elem::prefix("255.255.255.0/24".parse().expect("net"));
    let mut b = Batch::new();
    b.delete_elements(&nets, &[upstream_net])
        .add_elements(&nets, &[below.clone(), single.clone(), top.clone()]);
    nft.apply(&b).await.expect("swap ranges");
    assert!(
        pings(&topo.container, UPSTREAM).await,
        "192.0.2.2 is in no range now"
    );
    assert_eq!(
        nft.list_elements(&nets).await.expect("elements"),
        vec![below, single, top],
        "ranges come back as written"
    );
    assert_eq!(nft.list_sets(&t).await.expect("sets"), vec![nets.clone()]);

    // Elements that do not fit the set are refused before anything is sent.
    let mut b = Batch::new();
    b.add_table(&Table::inet("not-sent"))
        .add_elements(&nets, &[Elem::ifname("br0"), Elem::port(1)]);
    let err = nft.apply(&b).await.expect_err("a port in an address set");
    assert_eq!(err.kind(), SysErrorKind::InvalidArgument);
    let mut b = Batch::new();
    let plain = Set::new(&t, "plain", DataType::Ipv4Addr);
    b.add_elements(&plain, &[Elem::prefix("10.0.0.0/8".parse().expect("net"))]);
    let err = nft.apply(&b).await.expect_err("a range in a plain set");
    assert!(err.to_string().contains("interval"), "{err}");
    assert!(
        !nft.list_tables()
            .await
            .expect("tables")
            .contains(&Table::inet("not-sent"))
    );
    drop(topo.lab);
}
