//! Diagnosis of an overlay between two hosts: why their containers cannot reach each other.
//!
//! [`Controller::diagnose_overlay`] checks, in order, and reports typed [`Finding`]s:
//!
//! 1. **Peer entries**: the FDB and neighbour entries this host's `vxlan0` holds for the peer
//!    node's endpoints, against the peer's records in the cluster store
//!    ([`Finding::PeerEntryMissing`]).
//! 2. **The underlay**: an ICMP echo from the host's namespace to the peer's underlay address
//!    ([`Finding::UnderlayUnreachable`]).
//! 3. **The tunnel**: an ICMP echo from a local container's namespace to a container of the
//!    peer, which crosses the underlay only as VXLAN (UDP to the network's port, 4789 by
//!    default). With the entries in place and the underlay answering, silence here means the
//!    VXLAN datagrams do not get through: [`Finding::VxlanPortBlocked`].
//! 4. **The MTU**: the same echo at the overlay's full MTU with DF set (so, encapsulated, a
//!    datagram of MTU + 50 bytes on the underlay); when the small one passes and this one does
//!    not, the underlay path carries less than the overlay needs ([`Finding::MtuMismatch`]),
//!    confirmed by a DF echo of that size on the underlay itself.
//!
//! Why an echo through a container and not a bare UDP datagram to the peer's port 4789: a host
//! whose VXLAN socket receives a datagram it cannot use (not VXLAN, or an unknown VNI) drops it
//! silently, exactly as a firewall would, so a bare datagram cannot tell "blocked" from
//! "delivered". A real frame through the real tunnel, answered by the peer's container, can.
//! What this cannot tell apart: a peer container that does not answer ICMP echo looks like a
//! blocked port (the finding's message says what was observed). The probe's packets are
//! wharf's own (a raw ICMP socket entered into the container's namespace); the container's
//! processes see nothing.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use super::{Controller, Error, ObjectKind, Result};
use crate::driver::{DriverKind, DriverOptions, PeerEntry, VXLAN_OVERHEAD};
use crate::sys::NetNs;
use crate::sys::icmp::{Echo, echo_v4};

/// How long one echo probe waits for its reply.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
/// The size of the small echo probes (an IPv4 packet of 84 bytes, as `ping` sends).
const SMALL: usize = 84;

/// The result of [`Controller::diagnose_overlay`]: what was checked between this host and a
/// peer node on one overlay network, and what is wrong (nothing, if `findings` is empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    /// The network's name.
    pub network: String,
    /// This host's node name.
    pub local_node: String,
    /// This host's underlay address.
    pub local_addr: IpAddr,
    /// The peer's node name.
    pub peer_node: String,
    /// The peer's underlay address (from its endpoint records), if it has endpoints.
    pub peer_addr: Option<IpAddr>,
    /// What is wrong, most fundamental first.
    pub findings: Vec<Finding>,
}

impl Diagnosis {
    /// True if nothing is wrong.
    pub fn is_healthy(&self) -> bool {
        self.findings.is_empty()
    }
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "overlay {}: {} ({}) -> {}",
            self.network, self.local_node, self.local_addr, self.peer_node
        )?;
        if let Some(a) = self.peer_addr {
            write!(f, " ({a})")?;
        }
        if self.findings.is_empty() {
            return f.write_str(": ok");
        }
        for finding in &self.findings {
            write!(f, "\n- {finding}")?;
        }
        Ok(())
    }
}

/// One thing [`Controller::diagnose_overlay`] found wrong (or could not check).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Finding {
    /// The peer node has no endpoint on the network in the cluster store: there is nothing to
    /// reach (or its lease expired: the node is dead or cut from the store).
    PeerHasNoEndpoints {
        /// The peer node.
        peer: String,
    },
    /// This host has no endpoint on the network, so no data plane to check or probe from.
    NoLocalEndpoint,
    /// An entry the peer's records ask for is not in this host's kernel.
    PeerEntryMissing {
        /// The peer's endpoint (container) name.
        endpoint: String,
        /// The missing entry.
        entry: PeerEntry,
    },
    /// The peer's underlay address does not answer an ICMP echo from this host.
    UnderlayUnreachable {
        /// This host's underlay address.
        local: IpAddr,
        /// The peer's underlay address.
        peer: IpAddr,
        /// What was observed.
        detail: String,
    },
    /// The underlay answers and the entries are in place, but nothing crosses the tunnel.
    VxlanPortBlocked {
        /// The network's VXLAN UDP port.
        port: u16,
        /// This host's underlay address.
        local: IpAddr,
        /// The peer's underlay address.
        peer: IpAddr,
        /// What was probed.
        detail: String,
    },
    /// Small frames cross the tunnel, full-size ones do not: the underlay path carries less
    /// than the overlay's MTU + 50.
    MtuMismatch {
        /// The overlay's MTU (the containers' interfaces).
        overlay_mtu: u32,
        /// The underlay MTU the overlay needs (`overlay_mtu + 50`).
        needed: u32,
        /// This host's underlay address.
        local: IpAddr,
        /// The peer's underlay address.
        peer: IpAddr,
        /// What was probed.
        detail: String,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PeerHasNoEndpoints { peer } => {
                write!(
                    f,
                    "{peer} has no endpoint on the network (or its lease expired)"
                )
            }
            Self::NoLocalEndpoint => {
                f.write_str("no local endpoint on the network: nothing to probe from")
            }
            Self::PeerEntryMissing { endpoint, entry } => {
                let what = match entry {
                    PeerEntry::Fdb { mac, vtep } => format!("fdb {mac} dst {vtep}"),
                    PeerEntry::Neighbour { ip, mac } => format!("neighbour {ip} lladdr {mac}"),
                };
                write!(f, "peer entry missing: {what} (endpoint {endpoint})")
            }
            Self::UnderlayUnreachable {
                local,
                peer,
                detail,
            } => write!(
                f,
                "underlay address {peer} unreachable from {local}: {detail}"
            ),
            Self::VxlanPortBlocked {
                port,
                local,
                peer,
                detail,
            } => write!(
                f,
                "VXLAN UDP port {port} blocked between {local} and {peer} ({detail})"
            ),
            Self::MtuMismatch {
                overlay_mtu,
                needed,
                local,
                peer,
                detail,
            } => write!(
                f,
                "MTU mismatch between {local} and {peer}: the overlay's MTU {overlay_mtu} needs \
                 {needed} on the underlay ({detail})"
            ),
        }
    }
}

impl Controller {
    /// Diagnoses why containers of `network` (an overlay) on this host and on `peer_node`
    /// cannot reach each other: compares this host's entries with the peer's records, then
    /// probes the underlay, the VXLAN tunnel and its MTU (see the module documentation of
    /// [`controller::diagnose`](crate::controller::diagnose) for what each probe shows). Takes a few seconds when something is
    /// wrong (each failing probe waits 1.5 s).
    ///
    /// Fails if the controller is not in cluster mode or the network is no overlay.
    pub async fn diagnose_overlay(&self, network: &str, peer_node: &str) -> Result<Diagnosis> {
        let cluster = self.cluster().ok_or_else(|| Error::InvalidRequest {
            kind: ObjectKind::Network,
            name: network.to_owned(),
            reason: "diagnosis needs a controller in cluster mode".into(),
        })?;
        let unknown = matches!(self.records().network(network), Err(Error::NotFound { .. }));
        if unknown {
            self.learn_from_store(network).await?;
        }
        let net = self.records().network(network)?.clone();
        let info = net.info.clone();
        let DriverOptions::Overlay(opts) = &info.options else {
            return Err(Error::InvalidRequest {
                kind: ObjectKind::Network,
                name: info.name.clone(),
                reason: "not an overlay network".into(),
            });
        };
        let port = opts.port();
        let local_addr = cluster.config.advertise_addr;
        let mut d = Diagnosis {
            network: info.name.clone(),
            local_node: cluster.config.node.clone(),
            local_addr,
            peer_node: peer_node.to_owned(),
            peer_addr: None,
            findings: Vec::new(),
        };

        // The peer's endpoints, as the store (through the watcher's mirror) has them.
        let peers: Vec<super::ClusterEndpoint> = cluster
            .mirror()
            .remote_endpoints(&info.id, &cluster.config.node)
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| e.node == peer_node)
            .collect();
        let Some(first) = peers.first() else {
            d.findings.push(Finding::PeerHasNoEndpoints {
                peer: peer_node.to_owned(),
            });
            return Ok(d);
        };
        let peer_addr = first.vtep;
        d.peer_addr = Some(peer_addr);

        // 1. Entries.
        let driver = self.driver(DriverKind::Overlay)?;
        let actual = driver.peer_entries(&info).await?;
        let Some(actual) = actual else {
            d.findings.push(Finding::NoLocalEndpoint);
            return Ok(d);
        };
        for ep in &peers {
            for entry in ep.entries() {
                if !actual.contains(&entry) {
                    d.findings.push(Finding::PeerEntryMissing {
                        endpoint: ep.name.clone(),
                        entry,
                    });
                }
            }
        }

        // 2. The underlay.
        let (IpAddr::V4(peer_v4), IpAddr::V4(_)) = (peer_addr, local_addr) else {
            return Ok(d);
        };
        let host = self.inner.host.clone();
        match echo_v4(&host, peer_v4, SMALL, PROBE_TIMEOUT).await? {
            Echo::Reply { .. } => {}
            other => {
                d.findings.push(Finding::UnderlayUnreachable {
                    local: local_addr,
                    peer: peer_addr,
                    detail: other.to_string(),
                });
                return Ok(d);
            }
        }
        if !d.findings.is_empty() {
            // Missing entries explain the silence; probing the tunnel would only repeat it.
            return Ok(d);
        }

        // 3. The tunnel, from a local container to one of the peer's.
        let local_ns = {
            let records = self.records();
            let sandboxes: Vec<String> = records
                .endpoints_on(&info.id)
                .map(|e| e.sandbox_id.clone())
                .collect();
            let live = self.live();
            sandboxes
                .iter()
                .find_map(|id| live.get(id).and_then(|l| l.ns.clone()))
        };
        let Some(local_ns) = local_ns else {
            d.findings.push(Finding::NoLocalEndpoint);
            return Ok(d);
        };
        let Some((target_name, target)) =
            peers.iter().find_map(|e| Some((e.name.clone(), e.ipv4?)))
        else {
            return Ok(d);
        };
        let small = echo_v4(&local_ns, target, SMALL, PROBE_TIMEOUT).await?;
        if !small.is_reply() {
            d.findings.push(Finding::VxlanPortBlocked {
                port,
                local: local_addr,
                peer: peer_addr,
                detail: format!(
                    "the underlay answers ICMP, but an echo through the tunnel to {target_name} \
                     ({target}): {small}"
                ),
            });
            return Ok(d);
        }

        // 4. The MTU: a full-size frame through the tunnel, DF set.
        let overlay_mtu = self.sandbox_mtu(&local_ns).await.unwrap_or_else(|| {
            // An Ethernet underlay's 1500, less the encapsulation.
            opts.mtu.unwrap_or(1500 - VXLAN_OVERHEAD)
        });
        let needed = overlay_mtu + VXLAN_OVERHEAD;
        let big = echo_v4(&local_ns, target, overlay_mtu as usize, PROBE_TIMEOUT).await?;
        if !big.is_reply() {
            let underlay = echo_v4(&host, peer_v4, needed as usize, PROBE_TIMEOUT).await?;
            d.findings.push(Finding::MtuMismatch {
                overlay_mtu,
                needed,
                local: local_addr,
                peer: peer_addr,
                detail: format!(
                    "a {overlay_mtu}-byte echo to {target_name}: {big}; a {needed}-byte DF echo \
                     on the underlay: {underlay}"
                ),
            });
        }
        Ok(d)
    }

    /// The MTU of the first non-loopback interface of a namespace.
    async fn sandbox_mtu(&self, ns: &NetNs) -> Option<u32> {
        let h = crate::sys::rtnl::Handle::in_netns(ns).await.ok()?;
        let links = h.link().list().await.ok()?;
        links.into_iter().find(|l| l.name == "eth0").map(|l| l.mtu)
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn messages_are_the_issues() {
        let f = Finding::VxlanPortBlocked {
            port: 4789,
            local: "198.18.0.1".parse().unwrap(),
            peer: "198.18.0.2".parse().unwrap(),
            detail: "x".into(),
        };
        assert!(
            f.to_string()
                .starts_with("VXLAN UDP port 4789 blocked between 198.18.0.1 and 198.18.0.2"),
            "{f}"
        );
    }
}
