//! The routing mesh's load balancer: the nftables table of a host's ingress sandbox.
//!
//! The controller decides what is balanced (which published ports, which replicas' ingress
//! addresses, in which order: [`Balancing`]); this module only writes it into the kernel of the
//! namespace it is given, as table `ip wharf-mesh`, rebuilt whole in one atomic batch so that a
//! change never shows a half-written table:
//!
//! - `prerouting` (nat): a published port is DNATed to `numgen inc mod N map @be_<proto>_<port>`
//!   (the N backends, in order) and the target port: each new connection takes the next
//!   backend; conntrack keeps a connection on the one it got.
//! - `postrouting` (nat): what was DNATed out of the ingress interface is masqueraded, so the
//!   backend answers the ingress sandbox and the reply goes back the way it came.
//! - `forward` (filter, policy drop): only connections that were DNATed here pass, so the
//!   sandbox routes nothing else between its interfaces.
//!
//! It knows nothing of services or of the cluster; nftables' `numgen` stands in for IPVS,
//! which this kernel lacks.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::driver::Protocol;
use crate::sys::NetNs;
use crate::sys::SysError;
use crate::sys::nft::{
    Batch, Chain, ChainType, CtStatus, DataType, Elem, Hook, IPPROTO_TCP, IPPROTO_UDP, IpVersion,
    NftHandle, Policy, Rule, Set, Table, Value, priority,
};

/// The balancer's table in the ingress sandbox.
pub const MESH_TABLE: &str = "wharf-mesh";

/// What a host balances: published port (protocol, port) -> (the backends' port, the backends'
/// ingress addresses in balancing order). A port without backends is not programmed.
pub type Balancing = BTreeMap<(Protocol, u16), (u16, Vec<Ipv4Addr>)>;

/// Writes `table` as the balancer of the namespace `ns`, whose interface on the ingress network
/// is `ingress_ifname`, replacing whatever balancer was there, in one atomic batch.
pub async fn program_balancer(
    ns: &NetNs,
    ingress_ifname: &str,
    table: &Balancing,
) -> Result<(), SysError> {
    let nft = NftHandle::open(ns).await?;
    nft.apply(&balancer_batch(ingress_ifname, table)).await
}

fn balancer_batch(ingress_ifname: &str, table: &Balancing) -> Batch {
    let t = Table::ip(MESH_TABLE);
    let mut b = Batch::new();
    b.destroy_table(&t);
    b.add_table(&t);
    b.add_chain(&Chain::base(
        &t,
        "prerouting",
        Hook::Prerouting,
        ChainType::Nat,
        priority::DSTNAT,
    ));
    b.add_chain(&Chain::base(
        &t,
        "postrouting",
        Hook::Postrouting,
        ChainType::Nat,
        priority::SRCNAT,
    ));
    // The sandbox forwards only the mesh's own connections (both directions carry the DNAT
    // status): nobody uses it as a router between ingress and the egress bridge.
    b.add_chain(
        &Chain::base(
            &t,
            "forward",
            Hook::Forward,
            ChainType::Filter,
            priority::FILTER,
        )
        .policy(Policy::Drop),
    );
    b.add_rule(
        &Rule::new(&t, "forward")
            .ct_status_in(CtStatus::DNAT)
            .accept(),
    );
    for ((proto, port), (target, backends)) in table {
        if backends.is_empty() {
            continue;
        }
        let map = Set::map(
            &t,
            format!("be_{proto}_{port}"),
            DataType::Mark,
            DataType::Ipv4Addr,
        );
        b.add_set(&map);
        let elems: Vec<Elem> = backends
            .iter()
            .enumerate()
            .map(|(i, ip)| Elem::new([Value::Mark(i as u32)]).to([Value::Ipv4(*ip)]))
            .collect();
        b.add_elements(&map, &elems);
        let rule = Rule::new(&t, "prerouting").l4proto_eq(match proto {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        });
        let rule = match proto {
            Protocol::Tcp => rule.tcp_dport_eq(*port),
            Protocol::Udp => rule.udp_dport_eq(*port),
        };
        b.add_rule(&rule.dnat_numgen(
            backends.len() as u32,
            &map.name,
            IpVersion::V4,
            Some(*target),
        ));
    }
    b.add_rule(
        &Rule::new(&t, "postrouting")
            .oifname_eq(ingress_ifname)
            .ct_status_in(CtStatus::DNAT)
            .masquerade(),
    );
    b
}
