//! The bridge driver's firewall without a controller: the host's ruleset after the last
//! network is exactly what it was before, other tables untouched; a firewall failure undoes
//! the network.

use std::collections::BTreeMap;

use wharf::driver::bridge::{BridgeDriver, bridge_name};
use wharf::driver::{
    BridgeOptions, Driver, DriverOptions, EndpointInfo, NetworkInfo, PortMapping, SandboxContext,
    SubnetInfo, mac_for_ipv4,
};
use wharf::lab::Lab;
use wharf::sys::nft::{
    Batch, Chain, ChainType, DataType, Elem, Hook, NftHandle, Rule, Set, Table, priority,
};
use wharf::sys::rtnl::Handle;

fn network(name: &str, id_char: char, subnet: &str, opts: BridgeOptions) -> NetworkInfo {
    let subnet: ipnetwork::Ipv4Network = subnet.parse().unwrap();
    let gateway = std::net::IpAddr::V4(subnet.nth(1).unwrap());
    NetworkInfo {
        id: id_char.to_string().repeat(64),
        name: name.into(),
        internal: false,
        enable_ipv6: false,
        options: DriverOptions::Bridge(opts),
        subnets: vec![SubnetInfo {
            subnet: subnet.into(),
            gateway: Some(gateway),
        }],
    }
}

fn endpoint(id_char: char, ip: &str, ports: Vec<PortMapping>) -> EndpointInfo {
    let ip: std::net::Ipv4Addr = ip.parse().unwrap();
    EndpointInfo {
        id: id_char.to_string().repeat(64),
        ifname: "eth0".into(),
        mac: mac_for_ipv4(ip),
        ipv4: Some(ipnetwork::Ipv4Network::new(ip, 24).unwrap()),
        ipv6: None,
        ports,
    }
}

/// Every table with its chains, rules, sets and elements, as listed through netlink.
async fn ruleset(nft: &NftHandle) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for t in nft.list_tables().await.unwrap() {
        let mut text = format!("{:?}\n", nft.list_chains(&t).await.unwrap());
        text += &format!("{:?}\n", nft.list_rules(&t).await.unwrap());
        for s in nft.list_sets(&t).await.unwrap() {
            text += &format!("{s:?} {:?}\n", nft.list_elements(&s).await.unwrap());
        }
        out.insert(t.to_string(), text);
    }
    out
}

/// Someone else's firewall on the host, which wharf must neither read into its state nor change.
async fn foreign_firewall(nft: &NftHandle) {
    let t = Table::inet("filter");
    let set = Set::new(&t, "admins", DataType::Ipv4Addr);
    let mut b = Batch::new();
    b.add_table(&t)
        .add_chain(&Chain::base(
            &t,
            "forward",
            Hook::Forward,
            ChainType::Filter,
            priority::FILTER,
        ))
        .add_set(&set)
        .add_elements(&set, &[Elem::addr(std::net::Ipv4Addr::new(192, 0, 2, 7))])
        .add_rule(
            &Rule::new(&t, "forward")
                .in_set(&[wharf::sys::nft::Field::IpSaddr], "admins")
                .counter()
                .accept(),
        );
    let nat = Table::ip("nat");
    b.add_table(&nat).add_chain(&Chain::base(
        &nat,
        "postrouting",
        Hook::Postrouting,
        ChainType::Nat,
        priority::SRCNAT,
    ));
    nft.apply(&b).await.unwrap();
}

#[tokio::test]
async fn after_the_last_network_the_ruleset_is_what_it_was() {
    let lab = Lab::new();
    let host = lab.namespace("host").await.unwrap();
    let c1 = lab.namespace("c1").await.unwrap();
    let nft = NftHandle::open(&host).await.unwrap();
    foreign_firewall(&nft).await;
    let before = ruleset(&nft).await;

    let driver = BridgeDriver::new(Handle::in_netns(&host).await.unwrap());
    let open = network("open", 'a', "10.91.0.0/24", BridgeOptions::default());
    let quiet = network(
        "quiet",
        'b',
        "10.92.0.0/24",
        BridgeOptions {
            icc: Some(false),
            ..Default::default()
        },
    );
    driver.create_network(&open).await.unwrap();
    driver.create_network(&quiet).await.unwrap();
    let ctx = SandboxContext {
        name: "c1".into(),
        ns: c1.clone(),
        handle: Handle::in_netns(&c1).await.unwrap(),
        is_host: false,
    };
    let ep = endpoint('c', "10.92.0.2", vec![PortMapping::tcp(8080, 80)]);
    driver.join(&quiet, &ep, &ctx).await.unwrap();
    driver
        .program_external_connectivity(&quiet, &ep)
        .await
        .unwrap();
    let during = ruleset(&nft).await;
    assert!(during.contains_key("table inet \"wharf\""), "{during:?}");
    assert!(during.contains_key("table bridge \"wharf\""), "{during:?}");
    for t in ["table inet \"filter\"", "table ip \"nat\""] {
        assert_eq!(during[t], before[t], "{t} untouched while wharf runs");
    }

    driver
        .revoke_external_connectivity(&quiet, &ep)
        .await
        .unwrap();
    driver.leave(&quiet, &ep).await.unwrap();
    driver.delete_network(&quiet).await.unwrap();
    // Deleting again is not an error (already gone).
    driver.delete_network(&quiet).await.unwrap();
    assert!(ruleset(&nft).await.contains_key("table inet \"wharf\""));
    driver.delete_network(&open).await.unwrap();
    assert_eq!(ruleset(&nft).await, before);
    driver.delete_network(&open).await.unwrap();
    assert_eq!(ruleset(&nft).await, before);
}

#[tokio::test]
async fn a_firewall_failure_undoes_the_network() {
    let lab = Lab::new();
    let host = lab.namespace("host").await.unwrap();
    let nft = NftHandle::open(&host).await.unwrap();
    // A `bridges` set of the wrong type in wharf's table: the firewall batch must fail.
    let t = Table::inet("wharf");
    let mut b = Batch::new();
    b.add_table(&t)
        .add_set(&Set::new(&t, "bridges", DataType::Ipv4Addr));
    nft.apply(&b).await.unwrap();

    let h = Handle::in_netns(&host).await.unwrap();
    let driver = BridgeDriver::new(h.clone());
    let net = network("broken", 'd', "10.93.0.0/24", BridgeOptions::default());
    let err = driver.create_network(&net).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("\"broken\""), "{msg}");
    assert!(msg.contains("firewall"), "{msg}");
    let err = h.link().get(&bridge_name(&net)).await.unwrap_err();
    assert!(err.is_not_found(), "the bridge was removed: {err}");
}

#[tokio::test]
async fn tables_deleted_behind_wharfs_back_are_made_again() {
    let lab = Lab::new();
    let host = lab.namespace("host").await.unwrap();
    let nft = NftHandle::open(&host).await.unwrap();
    let driver = BridgeDriver::new(Handle::in_netns(&host).await.unwrap());
    let first = network("first", 'e', "10.94.0.0/24", BridgeOptions::default());
    driver.create_network(&first).await.unwrap();
    let rules = nft.list_rules(&Table::inet("wharf")).await.unwrap();
    // Someone deletes wharf's table (`nft flush ruleset`).
    let mut b = Batch::new();
    b.delete_table(&Table::inet("wharf"));
    nft.apply(&b).await.unwrap();
    let second = network("second", 'f', "10.95.0.0/24", BridgeOptions::default());
    driver.create_network(&second).await.unwrap();
    let again = nft.list_rules(&Table::inet("wharf")).await.unwrap();
    assert_eq!(again.len(), rules.len());
    assert!(again.iter().zip(&rules).all(|(a, b)| a.same_as(b)));
}
