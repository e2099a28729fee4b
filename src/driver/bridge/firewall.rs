//! The bridge driver's firewall: Docker's bridge rules (outbound NAT, isolation between
//! networks, inter-container communication, internal networks, published ports) in wharf's own
//! nftables tables, programmed over netlink in atomic batches.
//!
//! Why it exists: a bridge network is only Docker-grade when the host forwards and NATs for it,
//! keeps networks apart, and publishes ports with kernel NAT. This module turns a network or an
//! endpoint, as the controller hands them to the driver, into nftables changes.
//!
//! What it deliberately does not do: it never reads or changes a table that is not wharf's (a
//! host firewall whose own `forward` policy drops traffic still drops it: wharf cannot and does
//! not override other tables); it runs no proxy process (published ports are kernel NAT only);
//! it keeps no state of its own beyond the kernel's: everything it programs is derived from the
//! [`NetworkInfo`]/[`EndpointInfo`] it is given, and what it removes is found in the kernel.
//!
//! # The ruleset
//!
//! Every rule is static: it is written once, when the first bridge network is created, and
//! refers to named sets and maps. Networks, endpoints and ports are *elements*, so creating the
//! 100th network or publishing the 1000th port is one small transaction, the same as the first
//! (see `benches/firewall.rs`).
//!
//! ```text
//! table inet wharf {
//!   set bridges      { type ifname }                  # every wharf bridge
//!   set same_bridge  { type ifname . ifname }         # "br . br" for every bridge
//!   set no_icc       { type ifname }                  # bridges with icc off
//!   set internal     { type ifname }                  # internal networks
//!   set subnets4/6   { type ipv4_addr; flags interval } # every bridge subnet
//!   set masq4/6      { type ipv4_addr; flags interval } # subnets with masquerade on
//!   map tcp4_any     { type inet_service : ipv4_addr . inet_service }   # -p 8080:80
//!   map tcp4_addr    { type ipv4_addr . inet_service : ipv4_addr . inet_service } # -p IP:8080:80
//!   ... and udp4_*, tcp6_*, udp6_*
//!
//!   chain user { }        # operators' rules (Docker's DOCKER-USER): created once, never flushed
//!   chain forward { type filter hook forward priority filter; policy accept;
//!     jump user
//!     iifname @internal iifname . oifname != @same_bridge drop   # internal: nothing leaves
//!     iifname . oifname @same_bridge iifname @no_icc drop        # icc off (routed hairpin)
//!     iifname . oifname @same_bridge accept                      # within one network
//!     oifname @bridges ct state established,related accept       # replies
//!     oifname @bridges iifname != @bridges ct status dnat accept # published ports
//!     oifname @bridges drop            # isolation: nothing else enters a network
//!   }
//!   chain input { type filter hook input priority filter; policy accept;
//!     iifname @bridges ip daddr 127.0.0.0/8 ct state established,related accept
//!     iifname @bridges ip daddr 127.0.0.0/8 drop   # route_localnet guard
//!   }
//!   chain prerouting { type nat hook prerouting priority dstnat; policy accept;
//!     dnat ip to ip daddr . tcp dport map @tcp4_addr
//!     meta nfproto ipv4 fib daddr type local dnat ip to tcp dport map @tcp4_any
//!     ... (udp, ip6)
//!   }
//!   chain output { type nat hook output priority dstnat; ... the same rules ... }
//!   chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//!     oifname @bridges ip saddr 127.0.0.0/8 masquerade             # 127.0.0.1 -> published
//!     oifname @bridges ct status dnat ip saddr @subnets4 masquerade # hairpin
//!     oifname != @bridges ip saddr @masq4 masquerade               # outbound NAT
//!     ... (ip6)
//!   }
//! }
//! table bridge wharf {
//!   set no_icc_ports { type ifname }   # host ends of the veths of icc-off networks
//!   chain forward { type filter hook forward priority -200; policy accept;
//!     iifname @no_icc_ports drop
//!     oifname @no_icc_ports drop
//!   }
//! }
//! ```
//!
//! # Drift
//!
//! Someone may flush the ruleset or edit wharf's tables. [`Firewall::restore`] (called by the
//! driver's reconcile, so by `Controller::reconcile` and at every start) compares the kernel's
//! tables with what the networks and endpoints need and writes only the difference: the base
//! chains when their rules are gone or differ, and missing elements, in one transaction; at
//! start it also deletes elements nothing needs. Rules and elements that are right keep their
//! handles, so traffic that flows is not disturbed.
//!
//! # Choices, and where they differ from Docker 20.10
//!
//! - **Isolation by interface, one rule.** Docker needs two chains per pair of networks
//!   (`DOCKER-ISOLATION-STAGE-1/2`); here "a forwarded packet enters a wharf bridge" is allowed
//!   only when it comes from the same bridge, is a reply, or was DNATed by a published port
//!   from outside the bridges; everything else entering a bridge is dropped. This also drops
//!   unsolicited traffic routed to a container address from outside, which Docker drops with
//!   its `FORWARD` policy `DROP`. wharf's chain keeps policy `accept`: traffic that does not
//!   enter a wharf bridge is not wharf's business.
//! - **Masquerade** is `oifname != @bridges` rather than Docker's `! -o <own bridge>`: the only
//!   difference is traffic into another bridge, which isolation drops first.
//! - **icc off** works with or without `br_netfilter`: bridged frames between two containers
//!   never reach the `inet` hooks unless `br_netfilter` is loaded, so the `bridge` family table
//!   drops frames forwarded from and to the veths of an icc-off network (Docker relies on
//!   `br_netfilter`). It drops all frames between those containers, ARP included. The `inet`
//!   rule covers the routed path (a container reaching a neighbour's published port through
//!   the host's address), which Docker also drops.
//! - **Published ports are kernel NAT only** (Docker's `--userland-proxy=false`): a DNAT map
//!   lookup in `prerouting` (traffic from outside and from containers: hairpin) and in `output`
//!   (the host itself). Hairpin traffic is masqueraded to the gateway so that replies come back
//!   through the host. Bridge ports of endpoints with published ports are in hairpin mode, for a container
//!   reaching its own published port when `br_netfilter` bridges the DNATed frame back out of
//!   the port it came from (Docker does the same without the proxy). A container on *another* network cannot use a published port through
//!   the host's address (isolation), as in Docker without the proxy.
//! - **127.0.0.1.** The host reaching a published port through 127.0.0.1 needs the DNAT in
//!   `output` *and* `route_localnet=1` on the bridge (the kernel refuses to route a packet with
//!   a loopback source out of a non-loopback interface, and DNAT in `output` re-routes before
//!   `postrouting` can masquerade it) *and* masquerade of `127.0.0.0/8` sources leaving through
//!   a bridge. `route_localnet` would let containers send to the host's loopback services
//!   (CVE-2020-8558), so `input` drops packets from a bridge to `127.0.0.0/8` unless they are
//!   replies (Kubernetes' guard).
//! - **Chain priorities** are Docker's: filter at 0, DNAT at -100, SNAT at 100.
//! - **The user chain** is jumped to first from `forward` (Docker's `DOCKER-USER`); wharf
//!   creates it once and never flushes or rewrites it. Deleting the last bridge network
//!   deletes wharf's tables, the user chain included (nothing of wharf remains).
//! - **Rebuild.** The first network a [`Firewall`] adds (and any after a failed change)
//!   verifies the static rules against the kernel's listing (`Rule::same_as`) and rewrites
//!   wharf's base chains, in the same batch, only when they differ (e.g. written by another
//!   wharf version); a restarted controller finds everything in place. Later networks are one
//!   batch of elements. Removing a network deletes only the elements the kernel lists, so it
//!   can be retried.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};

use ipnetwork::IpNetwork;
use tokio::sync::{Mutex, OnceCell};

use super::bridge_name;
use crate::driver::{BridgeOptions, DriverOptions, EndpointInfo, NetworkInfo, Protocol};
use crate::sys::nft::{
    Batch, Chain, ChainType, CtState, CtStatus, DataType, Elem, Family, Field, Hook, IpVersion,
    KeyType, NftHandle, Rule, Set, Table, Value, priority,
};
use crate::sys::{NetNs, SysError, SysResult};

/// The name of wharf's tables (`inet wharf` and `bridge wharf`).
pub const TABLE: &str = "wharf";
/// The chain for operators' own rules, jumped to first from `forward` (Docker's DOCKER-USER).
pub const USER_CHAIN: &str = "user";
/// Every rule wharf writes has a comment starting with this.
pub const COMMENT_PREFIX: &str = "wharf: ";

/// The bridge family's `filter` priority.
const BRIDGE_FILTER: i32 = -200;

/// `table inet wharf`.
pub fn table() -> Table {
    Table::inet(TABLE)
}

/// `table bridge wharf`.
pub fn bridge_table() -> Table {
    Table::new(Family::Bridge, TABLE)
}

// ---- sets -------------------------------------------------------------------------------------

const BRIDGES: &str = "bridges";
const SAME_BRIDGE: &str = "same_bridge";
const NO_ICC: &str = "no_icc";
const INTERNAL: &str = "internal";
const NO_ICC_PORTS: &str = "no_icc_ports";

fn subnets_set(v: IpVersion) -> &'static str {
    match v {
        IpVersion::V4 => "subnets4",
        IpVersion::V6 => "subnets6",
    }
}

fn masq_set(v: IpVersion) -> &'static str {
    match v {
        IpVersion::V4 => "masq4",
        IpVersion::V6 => "masq6",
    }
}

fn addr_type(v: IpVersion) -> DataType {
    match v {
        IpVersion::V4 => DataType::Ipv4Addr,
        IpVersion::V6 => DataType::Ipv6Addr,
    }
}

fn saddr(v: IpVersion) -> Field {
    match v {
        IpVersion::V4 => Field::IpSaddr,
        IpVersion::V6 => Field::Ip6Saddr,
    }
}

fn daddr(v: IpVersion) -> Field {
    match v {
        IpVersion::V4 => Field::IpDaddr,
        IpVersion::V6 => Field::Ip6Daddr,
    }
}

fn version_of(ip: IpAddr) -> IpVersion {
    match ip {
        IpAddr::V4(_) => IpVersion::V4,
        IpAddr::V6(_) => IpVersion::V6,
    }
}

fn dport(p: Protocol) -> Field {
    match p {
        Protocol::Tcp => Field::TcpDport,
        Protocol::Udp => Field::UdpDport,
    }
}

const VERSIONS: [IpVersion; 2] = [IpVersion::V4, IpVersion::V6];
const PROTOCOLS: [Protocol; 2] = [Protocol::Tcp, Protocol::Udp];

/// The name of the DNAT map of published ports of `protocol` to containers of IP version `v`:
/// keyed by port for ports published on every host address (`tcp4_any`), by address and port
/// for ports published on one address (`tcp4_addr`).
pub fn port_map_name(protocol: Protocol, v: IpVersion, bound: bool) -> String {
    let n = match v {
        IpVersion::V4 => 4,
        IpVersion::V6 => 6,
    };
    format!("{protocol}{n}_{}", if bound { "addr" } else { "any" })
}

/// The DNAT map `port_map_name(protocol, v, bound)`.
pub fn port_map(protocol: Protocol, v: IpVersion, bound: bool) -> Set {
    let t = table();
    let to = addr_type(v).concat(DataType::InetService);
    let name = port_map_name(protocol, v, bound);
    if bound {
        Set::map(&t, name, addr_type(v).concat(DataType::InetService), to)
    } else {
        Set::map(&t, name, DataType::InetService, to)
    }
}

/// Every set and map of `table inet wharf`.
pub fn sets() -> Vec<Set> {
    let t = table();
    let mut out = vec![
        Set::new(&t, BRIDGES, DataType::IfName),
        Set::new(
            &t,
            SAME_BRIDGE,
            KeyType::from(DataType::IfName).concat(DataType::IfName),
        ),
        Set::new(&t, NO_ICC, DataType::IfName),
        Set::new(&t, INTERNAL, DataType::IfName),
    ];
    for v in VERSIONS {
        out.push(Set::new(&t, subnets_set(v), addr_type(v)).interval());
        out.push(Set::new(&t, masq_set(v), addr_type(v)).interval());
    }
    for p in PROTOCOLS {
        for v in VERSIONS {
            for bound in [false, true] {
                out.push(port_map(p, v, bound));
            }
        }
    }
    out
}

fn set(name: &str) -> Set {
    sets()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| Set::new(&table(), name, DataType::IfName))
}

fn no_icc_ports() -> Set {
    Set::new(&bridge_table(), NO_ICC_PORTS, DataType::IfName)
}

// ---- chains and rules -------------------------------------------------------------------------

/// The chains of `table inet wharf`, the user chain first (the `forward` chain jumps to it).
pub fn chains() -> Vec<Chain> {
    let t = table();
    vec![
        Chain::regular(&t, USER_CHAIN),
        Chain::base(
            &t,
            "forward",
            Hook::Forward,
            ChainType::Filter,
            priority::FILTER,
        ),
        Chain::base(
            &t,
            "input",
            Hook::Input,
            ChainType::Filter,
            priority::FILTER,
        ),
        Chain::base(
            &t,
            "prerouting",
            Hook::Prerouting,
            ChainType::Nat,
            priority::DSTNAT,
        ),
        Chain::base(&t, "output", Hook::Output, ChainType::Nat, priority::DSTNAT),
        Chain::base(
            &t,
            "postrouting",
            Hook::Postrouting,
            ChainType::Nat,
            priority::SRCNAT,
        ),
    ]
}

fn bridge_chain() -> Chain {
    Chain::base(
        &bridge_table(),
        "forward",
        Hook::Forward,
        ChainType::Filter,
        BRIDGE_FILTER,
    )
}

fn loopback() -> IpNetwork {
    IpNetwork::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8).unwrap_or_else(|_| unreachable!())
}

/// The static rules of `table inet wharf`, chain by chain, in order.
pub fn rules() -> Vec<Rule> {
    let t = table();
    let r = |chain: &str| Rule::new(&t, chain);
    let c = |text: &str| format!("{COMMENT_PREFIX}{text}");
    let pair = [Field::IifName, Field::OifName];
    let mut out = vec![
        r("forward")
            .jump(USER_CHAIN)
            .comment(c("operators' rules first")),
        r("forward")
            .iifname_in(INTERNAL)
            .not_in_set(&pair, SAME_BRIDGE)
            .drop()
            .comment(c("internal networks: nothing leaves")),
        r("forward")
            .in_set(&pair, SAME_BRIDGE)
            .iifname_in(NO_ICC)
            .drop()
            .comment(c("icc off")),
        r("forward")
            .in_set(&pair, SAME_BRIDGE)
            .accept()
            .comment(c("within one network")),
        r("forward")
            .oifname_in(BRIDGES)
            .ct_state_in(CtState::ESTABLISHED | CtState::RELATED)
            .accept()
            .comment(c("replies")),
        r("forward")
            .oifname_in(BRIDGES)
            .not_in_set(&[Field::IifName], BRIDGES)
            .ct_status_in(CtStatus::DNAT)
            .accept()
            .comment(c("published ports")),
        r("forward")
            .oifname_in(BRIDGES)
            .drop()
            .comment(c("isolation: nothing else enters a network")),
        r("input")
            .iifname_in(BRIDGES)
            .daddr_in(loopback())
            .ct_state_in(CtState::ESTABLISHED | CtState::RELATED)
            .accept()
            .comment(c("replies to the host's loopback")),
        r("input")
            .iifname_in(BRIDGES)
            .daddr_in(loopback())
            .drop()
            .comment(c("route_localnet guard")),
    ];
    for chain in ["prerouting", "output"] {
        for p in PROTOCOLS {
            for v in VERSIONS {
                let to = addr_type(v).concat(DataType::InetService);
                let bound = port_map_name(p, v, true);
                let any = port_map_name(p, v, false);
                out.push(
                    r(chain)
                        .nfproto_eq(v)
                        .dnat_map(&[daddr(v), dport(p)], &bound, &to)
                        .comment(c(&format!("ports published on one address: @{bound}"))),
                );
                out.push(
                    r(chain)
                        .nfproto_eq(v)
                        .fib_daddr_local()
                        .dnat_map(&[dport(p)], &any, &to)
                        .comment(c(&format!("ports published on every address: @{any}"))),
                );
            }
        }
    }
    out.push(
        r("postrouting")
            .oifname_in(BRIDGES)
            .saddr_in(loopback())
            .masquerade()
            .comment(c("the host's 127.0.0.1 to published ports")),
    );
    for v in VERSIONS {
        out.push(
            r("postrouting")
                .oifname_in(BRIDGES)
                .ct_status_in(CtStatus::DNAT)
                .in_set(&[saddr(v)], subnets_set(v))
                .masquerade()
                .comment(c("hairpin to published ports")),
        );
    }
    for v in VERSIONS {
        out.push(
            r("postrouting")
                .not_in_set(&[Field::OifName], BRIDGES)
                .in_set(&[saddr(v)], masq_set(v))
                .masquerade()
                .comment(c("outbound NAT")),
        );
    }
    out
}

/// The static rules of `table bridge wharf`.
pub fn bridge_rules() -> Vec<Rule> {
    let t = bridge_table();
    let c = format!("{COMMENT_PREFIX}icc off");
    vec![
        Rule::new(&t, "forward")
            .iifname_in(NO_ICC_PORTS)
            .drop()
            .comment(c.clone()),
        Rule::new(&t, "forward")
            .oifname_in(NO_ICC_PORTS)
            .drop()
            .comment(c),
    ]
}

// ---- what networks and endpoints contribute ---------------------------------------------------

/// A bridge network as the firewall sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwNetwork {
    /// The network's name (for errors).
    pub name: String,
    /// The bridge device.
    pub bridge: String,
    /// Its subnets.
    pub subnets: Vec<IpNetwork>,
    /// Containers may talk to each other.
    pub icc: bool,
    /// Traffic leaving the subnet is masqueraded.
    pub masquerade: bool,
    /// Nothing leaves the subnet.
    pub internal: bool,
}

impl FwNetwork {
    /// What the firewall needs of `net` (a bridge network).
    pub fn of(net: &NetworkInfo) -> Self {
        let default = BridgeOptions::default();
        let opts = match &net.options {
            DriverOptions::Bridge(o) => o,
            _ => &default,
        };
        Self {
            name: net.name.clone(),
            bridge: bridge_name(net),
            subnets: net.subnets.iter().map(|s| s.subnet).collect(),
            icc: opts.icc(),
            masquerade: opts.masquerade(),
            internal: net.internal,
        }
    }

    /// The elements this network puts in the sets of `table inet wharf`.
    pub fn elements(&self) -> Vec<(Set, Vec<Elem>)> {
        let br = &self.bridge;
        let mut out = vec![
            (set(BRIDGES), vec![Elem::ifname(br)]),
            (
                set(SAME_BRIDGE),
                vec![Elem::new([
                    Value::IfName(br.clone()),
                    Value::IfName(br.clone()),
                ])],
            ),
        ];
        if !self.icc {
            out.push((set(NO_ICC), vec![Elem::ifname(br)]));
        }
        if self.internal {
            out.push((set(INTERNAL), vec![Elem::ifname(br)]));
        }
        for v in VERSIONS {
            let nets: Vec<Elem> = self
                .subnets
                .iter()
                .filter(|s| version_of(s.ip()) == v)
                .map(|s| Elem::prefix(*s))
                .collect();
            if nets.is_empty() {
                continue;
            }
            if self.masquerade && !self.internal {
                out.push((set(masq_set(v)), nets.clone()));
            }
            out.push((set(subnets_set(v)), nets));
        }
        out
    }
}

/// One published port: one host port (on one or every host address) to one container port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FwPort {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The host address, or `None` for every address of the container address's family.
    pub host_ip: Option<IpAddr>,
    /// The host port.
    pub host_port: u16,
    /// The container's address.
    pub container: IpAddr,
    /// The container's port.
    pub container_port: u16,
}

impl std::fmt::Display for FwPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = match self.container {
            IpAddr::V4(a) => format!("{a}:{}", self.container_port),
            IpAddr::V6(a) => format!("[{a}]:{}", self.container_port),
        };
        match self.host_ip {
            Some(IpAddr::V6(h)) => write!(f, "{} [{h}]:{} -> {c}", self.protocol, self.host_port),
            Some(h) => write!(f, "{} {h}:{} -> {c}", self.protocol, self.host_port),
            None => write!(f, "{} port {} -> {c}", self.protocol, self.host_port),
        }
    }
}

impl FwPort {
    /// The ports `ep` publishes on `net`, ranges expanded: a mapping without a host address
    /// (and without the network's `host_binding_ip`) is published on every host address of
    /// each IP version the endpoint has; `0.0.0.0` / `::` mean every address of that version.
    /// Errors name the mapping that cannot be published.
    pub fn of_endpoint(net: &NetworkInfo, ep: &EndpointInfo) -> Result<Vec<FwPort>, String> {
        let binding = match &net.options {
            DriverOptions::Bridge(o) => o.host_binding_ip,
            _ => None,
        };
        let v4 = ep.ipv4.map(|n| IpAddr::V4(n.ip()));
        let v6 = ep.ipv6.map(|n| IpAddr::V6(n.ip()));
        let mut out = Vec::new();
        for p in &ep.ports {
            let what = || {
                format!(
                    "{} {}{}:{}",
                    p.protocol,
                    p.host_ip.map(|ip| format!("{ip}:")).unwrap_or_default(),
                    p.host_port,
                    p.container_port
                )
            };
            if p.count == 0 || p.host_port == 0 || p.container_port == 0 {
                return Err(format!("{}: ports and counts start at 1", what()));
            }
            let last = |first: u16| u32::from(first) + u32::from(p.count) - 1;
            if last(p.host_port) > 65535 || last(p.container_port) > 65535 {
                return Err(format!("{}: the range runs past port 65535", what()));
            }
            let targets: Vec<(Option<IpAddr>, IpAddr)> = match p.host_ip.or(binding) {
                None => [v4, v6].into_iter().flatten().map(|c| (None, c)).collect(),
                Some(h) => {
                    let c = if h.is_ipv4() { v4 } else { v6 };
                    let host = (!h.is_unspecified()).then_some(h);
                    c.map(|c| (host, c)).into_iter().collect()
                }
            };
            if targets.is_empty() {
                return Err(format!(
                    "{}: the endpoint has no address of the host address's IP version",
                    what()
                ));
            }
            for (host_ip, container) in targets {
                for i in 0..p.count {
                    out.push(FwPort {
                        protocol: p.protocol,
                        host_ip,
                        host_port: p.host_port + i,
                        container,
                        container_port: p.container_port + i,
                    });
                }
            }
        }
        Ok(out)
    }

    fn map(&self) -> Set {
        port_map(
            self.protocol,
            version_of(self.container),
            self.host_ip.is_some(),
        )
    }

    fn elem(&self) -> Elem {
        let key = match self.host_ip {
            Some(h) => vec![Value::from(h), Value::Port(self.host_port)],
            None => vec![Value::Port(self.host_port)],
        };
        Elem::new(key).to([
            Value::from(self.container),
            Value::Port(self.container_port),
        ])
    }
}

/// The elements `ports` put in the DNAT maps, map by map.
pub fn port_elements(ports: &[FwPort]) -> Vec<(Set, Vec<Elem>)> {
    let mut out: Vec<(Set, Vec<Elem>)> = Vec::new();
    for p in ports {
        let map = p.map();
        match out.iter_mut().find(|(s, _)| s.name == map.name) {
            Some((_, elems)) => elems.push(p.elem()),
            None => out.push((map, vec![p.elem()])),
        }
    }
    out
}

// ---- the firewall -----------------------------------------------------------------------------

/// wharf's bridge firewall in one host namespace.
///
/// Cheap to share; the nftables socket is opened on first use. Network-level changes (which
/// create and delete the tables) are serialised; endpoint-level changes (ports, icc-off ports)
/// are single element batches and run concurrently.
#[derive(Debug)]
pub struct Firewall {
    ns: NetNs,
    nft: OnceCell<NftHandle>,
    lock: Mutex<()>,
    /// The static ruleset was found (or made) as [`rules`] says, by this process. Cleared when
    /// wharf deletes its tables and when a change fails (someone else may have changed them).
    verified: AtomicBool,
}

impl Firewall {
    /// The firewall of the host namespace `ns` (nothing is changed until a network is added).
    pub fn new(ns: NetNs) -> Self {
        Self {
            ns,
            nft: OnceCell::new(),
            lock: Mutex::new(()),
            verified: AtomicBool::new(false),
        }
    }

    /// The nftables handle in the host namespace.
    pub async fn nft(&self) -> SysResult<&NftHandle> {
        self.nft.get_or_try_init(|| NftHandle::open(&self.ns)).await
    }

    /// Adds the batch messages that make wharf's tables, chains, sets and static rules what
    /// they must be: everything is created when missing; the base chains are rewritten only
    /// when their rules differ from [`rules`] (the user chain is never touched).
    async fn ensure_base(&self, b: &mut Batch) -> SysResult<()> {
        let nft = self.nft().await?;
        for (t, chains, sets, want) in [
            (table(), chains(), sets(), rules()),
            (
                bridge_table(),
                vec![bridge_chain()],
                vec![no_icc_ports()],
                bridge_rules(),
            ),
        ] {
            let have: Vec<Rule> = nft
                .list_rules(&t)
                .await?
                .into_iter()
                .filter(|r| r.chain != USER_CHAIN)
                .collect();
            let same =
                have.len() == want.len() && have.iter().zip(&want).all(|(h, w)| h.same_as(w));
            if same {
                // Every chain and set is referenced by a rule: all of them are in place.
                continue;
            }
            b.add_table(&t);
            for c in &chains {
                b.add_chain(c);
            }
            for s in &sets {
                b.add_set(s);
            }
            if !have.is_empty() {
                tracing::info!(table = %t, "rewriting wharf's base chains");
            }
            for c in chains.iter().filter(|c| c.base.is_some()) {
                b.flush_chain(&t, &c.name);
            }
            for r in &want {
                b.add_rule(r);
            }
        }
        Ok(())
    }

    /// Makes the firewall serve `net`: creates wharf's tables if this is the first network,
    /// then adds the network's elements, in one transaction.
    ///
    /// The static rules are checked against the kernel's listing the first time (and after a
    /// failure); later networks cost one batch of elements.
    pub async fn add_network(&self, net: &FwNetwork) -> SysResult<()> {
        let _guard = self.lock.lock().await;
        let context = || format!("adding network {:?} to the firewall", net.name);
        let nft = self.nft().await?;
        loop {
            let checked = !self.verified.load(Ordering::Acquire);
            let mut b = Batch::new();
            if checked {
                self.ensure_base(&mut b)
                    .await
                    .map_err(|e| e.within(context()))?;
            }
            for (s, elems) in net.elements() {
                b.add_elements(&s, &elems);
            }
            match nft.apply(&b).await {
                Ok(()) => {
                    self.verified.store(true, Ordering::Release);
                    return Ok(());
                }
                Err(e) => {
                    self.verified.store(false, Ordering::Release);
                    if checked {
                        return Err(e.within(context()));
                    }
                    // Someone changed wharf's tables behind its back: check and retry once.
                }
            }
        }
    }

    /// Removes `net` from the firewall; when it was the last network, deletes wharf's tables
    /// (the user chain with them). Elements already gone are not an error.
    pub async fn remove_network(&self, net: &FwNetwork) -> SysResult<()> {
        let _guard = self.lock.lock().await;
        let context = || format!("removing network {:?} from the firewall", net.name);
        let nft = self.nft().await?;
        let tables = nft.list_tables().await.map_err(|e| e.within(context()))?;
        let (inet, l2) = (table(), bridge_table());
        if !tables.contains(&inet) {
            self.verified.store(false, Ordering::Release);
            if tables.contains(&l2) {
                let mut b = Batch::new();
                b.delete_table(&l2);
                nft.apply(&b).await.map_err(|e| e.within(context()))?;
            }
            return Ok(());
        }
        let bridges = nft
            .list_elements(&set(BRIDGES))
            .await
            .map_err(|e| e.within(context()))?;
        let last = bridges
            .iter()
            .all(|e| e.key == [Value::IfName(net.bridge.clone())]);
        let mut b = Batch::new();
        if last {
            self.verified.store(false, Ordering::Release);
            b.delete_table(&inet);
            if tables.contains(&l2) {
                b.delete_table(&l2);
            }
        } else {
            for (s, elems) in net.elements() {
                let present = nft
                    .list_elements(&s)
                    .await
                    .map_err(|e| e.within(context()))?;
                let gone: Vec<Elem> = elems
                    .into_iter()
                    .filter(|e| {
                        present
                            .iter()
                            .any(|p| p.key == e.key && p.key_end == e.key_end)
                    })
                    .collect();
                b.delete_elements(&s, &gone);
            }
        }
        nft.apply(&b).await.map_err(|e| e.within(context()))
    }

    /// Publishes `ports` (one transaction). A port another endpoint holds fails with
    /// [`SysError::Busy`].
    pub async fn publish(&self, ports: &[FwPort]) -> SysResult<()> {
        let mut b = Batch::new();
        for (s, elems) in port_elements(ports) {
            b.add_elements(&s, &elems);
        }
        self.nft().await?.apply(&b).await
    }

    /// Withdraws `ports` (one transaction); ports already withdrawn are not an error.
    pub async fn unpublish(&self, ports: &[FwPort]) -> SysResult<()> {
        let groups = port_elements(ports);
        let mut b = Batch::new();
        for (s, elems) in &groups {
            b.delete_elements(s, elems);
        }
        let nft = self.nft().await?;
        match nft.apply(&b).await {
            Err(e) if e.is_not_found() => {}
            other => return other,
        }
        // Some were gone (a retry, or the tables were deleted): delete what is left.
        let mut b = Batch::new();
        for (s, elems) in groups {
            let present = match nft.list_elements(&s).await {
                Ok(p) => p,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            let left: Vec<Elem> = elems
                .into_iter()
                .filter(|e| present.iter().any(|p| p.key == e.key))
                .collect();
            b.delete_elements(&s, &left);
        }
        nft.apply(&b).await
    }

    /// Cuts the bridge port `veth` (the host end of an endpoint of an icc-off network) off
    /// from the other ports of its bridge.
    pub async fn isolate_port(&self, veth: &str) -> SysResult<()> {
        let mut b = Batch::new();
        b.add_elements(&no_icc_ports(), &[Elem::ifname(veth)]);
        self.nft().await?.apply(&b).await
    }

    /// Undoes [`Firewall::isolate_port`]; not an error if it was not isolated.
    pub async fn release_port(&self, veth: &str) -> SysResult<()> {
        let mut b = Batch::new();
        b.delete_elements(&no_icc_ports(), &[Elem::ifname(veth)]);
        match self.nft().await?.apply(&b).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// Makes wharf's tables serve exactly `networks`, the published `ports` and the
    /// `isolated` bridge ports (host ends of icc-off endpoints): the static ruleset is
    /// recreated or rewritten if it is gone or differs (someone flushed the ruleset), and every
    /// missing element is added, in one transaction after the base. With `prune`, elements
    /// that nothing needs (left by a crash) are deleted in the same transaction; the caller
    /// makes sure no endpoint is being attached meanwhile. Elements and rules that are right
    /// stay as they are, so established traffic is not disturbed.
    pub async fn restore(
        &self,
        networks: &[FwNetwork],
        ports: &[FwPort],
        isolated: &[String],
        prune: bool,
    ) -> SysResult<()> {
        let _guard = self.lock.lock().await;
        let context = || "restoring wharf's firewall".to_owned();
        let nft = self.nft().await?;
        if networks.is_empty() {
            // No bridge network, no tables: a crash may have left them behind.
            if prune {
                let tables = nft.list_tables().await.map_err(|e| e.within(context()))?;
                let mut b = Batch::new();
                for t in [table(), bridge_table()] {
                    if tables.contains(&t) {
                        b.delete_table(&t);
                    }
                }
                if !b.is_empty() {
                    nft.apply(&b).await.map_err(|e| e.within(context()))?;
                }
            }
            return Ok(());
        }
        self.verified.store(false, Ordering::Release);
        let mut b = Batch::new();
        self.ensure_base(&mut b)
            .await
            .map_err(|e| e.within(context()))?;
        if !b.is_empty() {
            tracing::warn!("wharf's firewall tables were changed from outside: restoring them");
            nft.apply(&b).await.map_err(|e| e.within(context()))?;
        }
        let mut wanted: Vec<(Set, Vec<Elem>)> = sets()
            .into_iter()
            .chain([no_icc_ports()])
            .map(|s| (s, Vec::new()))
            .collect();
        let groups = networks
            .iter()
            .flat_map(|n| n.elements())
            .chain(port_elements(ports))
            .chain([(
                no_icc_ports(),
                isolated.iter().map(|v| Elem::ifname(v.as_str())).collect(),
            )]);
        for (s, elems) in groups {
            let same_set = |w: &Set| w.name == s.name && w.table == s.table;
            let Some((_, w)) = wanted.iter_mut().find(|(w, _)| same_set(w)) else {
                continue;
            };
            for e in elems {
                if !w.contains(&e) {
                    w.push(e);
                }
            }
        }
        let mut b = Batch::new();
        let mut restored = 0;
        for (s, want) in &wanted {
            let have = nft
                .list_elements(s)
                .await
                .map_err(|e| e.within(context()))?;
            let same_key = |h: &Elem, w: &Elem| h.key == w.key && h.key_end == w.key_end;
            // A key mapped elsewhere is replaced (delete, then add, in the same transaction).
            let wrong: Vec<Elem> = have
                .iter()
                .filter(|h| {
                    want.iter().any(|w| same_key(h, w))
                        && !want.iter().any(|w| same_key(h, w) && h.data == w.data)
                })
                .cloned()
                .collect();
            let extra: Vec<Elem> = if prune {
                have.iter()
                    .filter(|h| !want.iter().any(|w| same_key(h, w)))
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            };
            let gone: Vec<Elem> = wrong.iter().chain(&extra).cloned().collect();
            if !gone.is_empty() {
                b.delete_elements(s, &gone);
            }
            let missing: Vec<Elem> = want
                .iter()
                .filter(|w| !have.iter().any(|h| same_key(h, w) && h.data == w.data))
                .cloned()
                .collect();
            if !missing.is_empty() {
                restored += missing.len();
                b.add_elements(s, &missing);
            }
        }
        if !b.is_empty() {
            if restored > 0 {
                tracing::info!(elements = restored, "restoring firewall elements");
            }
            nft.apply(&b).await.map_err(|e| e.within(context()))?;
        }
        self.verified.store(true, Ordering::Release);
        Ok(())
    }
}

/// The kernel's error for a port clash, for callers that map it to their own error.
pub fn is_port_clash(e: &SysError) -> bool {
    e.kind() == crate::sys::SysErrorKind::Busy || e.is_already_exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::{PortMapping, SubnetInfo};
    use ipnetwork::Ipv4Network;

    fn net(icc: bool, masquerade: bool, internal: bool) -> NetworkInfo {
        NetworkInfo {
            id: "0123456789abcdef".repeat(4),
            name: "n".into(),
            internal,
            enable_ipv6: false,
            options: DriverOptions::Bridge(BridgeOptions {
                icc: Some(icc),
                masquerade: Some(masquerade),
                ..Default::default()
            }),
            subnets: vec![SubnetInfo {
                subnet: "172.18.0.0/16".parse().unwrap(),
                gateway: Some("172.18.0.1".parse().unwrap()),
            }],
        }
    }

    fn ep(ports: Vec<PortMapping>) -> EndpointInfo {
        EndpointInfo {
            id: "e".repeat(64),
            ifname: "eth0".into(),
            mac: crate::driver::mac_for_ipv4(Ipv4Addr::new(172, 18, 0, 2)),
            ipv4: Some(Ipv4Network::new(Ipv4Addr::new(172, 18, 0, 2), 16).unwrap()),
            ipv6: None,
            ports,
        }
    }

    fn names(elems: &[(Set, Vec<Elem>)]) -> Vec<String> {
        elems.iter().map(|(s, _)| s.name.clone()).collect()
    }

    #[test]
    fn network_elements_follow_the_options() {
        let n = FwNetwork::of(&net(true, true, false));
        assert_eq!(n.bridge, "br-0123456789ab");
        assert_eq!(
            names(&n.elements()),
            ["bridges", "same_bridge", "masq4", "subnets4"]
        );
        let n = FwNetwork::of(&net(false, false, false));
        assert_eq!(
            names(&n.elements()),
            ["bridges", "same_bridge", "no_icc", "subnets4"]
        );
        // Internal: never masqueraded.
        let n = FwNetwork::of(&net(true, true, true));
        assert_eq!(
            names(&n.elements()),
            ["bridges", "same_bridge", "internal", "subnets4"]
        );
    }

    #[test]
    fn ports_expand_ranges_and_pick_maps() {
        let mut bound = PortMapping::udp(5353, 53);
        bound.host_ip = Some("192.0.2.1".parse().unwrap());
        let mut range = PortMapping::tcp(8000, 9000);
        range.count = 3;
        let ports = FwPort::of_endpoint(
            &net(true, true, false),
            &ep(vec![PortMapping::tcp(8080, 80), bound, range]),
        )
        .unwrap();
        assert_eq!(ports.len(), 5);
        assert_eq!(ports[4].host_port, 8002);
        assert_eq!(ports[4].container_port, 9002);
        let groups = port_elements(&ports);
        assert_eq!(names(&groups), ["tcp4_any", "udp4_addr"]);
        assert_eq!(groups[0].1.len(), 4);
        assert_eq!(
            groups[1].1[0],
            Elem::new([Value::Ipv4("192.0.2.1".parse().unwrap()), Value::Port(5353)])
                .to([Value::Ipv4("172.18.0.2".parse().unwrap()), Value::Port(53)])
        );
        assert_eq!(ports[1].to_string(), "udp 192.0.2.1:5353 -> 172.18.0.2:53");
    }

    #[test]
    fn bad_ports_are_refused() {
        let mut over = PortMapping::tcp(65535, 80);
        over.count = 2;
        let mut v6 = PortMapping::tcp(80, 80);
        v6.host_ip = Some("2001:db8::1".parse().unwrap());
        for p in [PortMapping::tcp(0, 80), over, v6] {
            let err = FwPort::of_endpoint(&net(true, true, false), &ep(vec![p])).unwrap_err();
            assert!(err.starts_with("tcp "), "{err}");
        }
    }

    #[test]
    fn every_rule_names_sets_that_exist_and_carries_a_comment() {
        let sets: Vec<String> = sets().into_iter().map(|s| s.name).collect();
        for r in rules() {
            let c = r.comment.clone().unwrap_or_default();
            assert!(c.starts_with(COMMENT_PREFIX), "{r}: {c:?}");
            for e in &r.exprs {
                if let crate::sys::nft::Expr::Lookup { set, .. } = e {
                    assert!(sets.contains(set), "{r} looks up {set}");
                }
            }
        }
        assert!(rules()[0].exprs.contains(&crate::sys::nft::Expr::Verdict(
            crate::sys::nft::Verdict::Jump(USER_CHAIN.into())
        )));
    }
}
