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
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use super::{Controller, Error, ObjectKind, Result};
use crate::driver::{DriverKind, DriverOptions, PeerEntry, VXLAN_OVERHEAD};
use crate::sys::NetNs;

/// Distinguishes concurrent probes (a raw ICMP socket sees every ICMP packet of its namespace).
static NEXT_IDENT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

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
        match echo(&host, peer_v4, SMALL, PROBE_TIMEOUT).await? {
            Echo::Reply => {}
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
                .endpoints
                .values()
                .filter(|e| e.network_id == info.id)
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
        let small = echo(&local_ns, target, SMALL, PROBE_TIMEOUT).await?;
        if small != Echo::Reply {
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
        let big = echo(&local_ns, target, overlay_mtu as usize, PROBE_TIMEOUT).await?;
        if big != Echo::Reply {
            let underlay = echo(&host, peer_v4, needed as usize, PROBE_TIMEOUT).await?;
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

/// What an echo probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Echo {
    Reply,
    /// No reply within the timeout.
    Silence(Duration),
    /// An ICMP error (or the kernel's refusal) about the probe.
    Unreachable(String),
    /// Too big for a link with DF set (locally, or "fragmentation needed" from a router).
    TooBig,
}

impl fmt::Display for Echo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reply => f.write_str("answered"),
            Self::Silence(t) => write!(f, "no answer within {} ms", t.as_millis()),
            Self::Unreachable(d) => write!(f, "unreachable ({d})"),
            Self::TooBig => f.write_str("too big for the path (DF set)"),
        }
    }
}

/// Sends ICMP echo requests of `size` bytes (the whole IPv4 packet), DF set, from `ns` to `dst`
/// until a reply or an error arrives or `timeout` passes.
async fn echo(ns: &NetNs, dst: Ipv4Addr, size: usize, timeout: Duration) -> Result<Echo> {
    let r = ns.run(move || echo_blocking(dst, size, timeout)).await?;
    r.map_err(|source| Error::Io {
        what: format!("ICMP echo probe to {dst}"),
        source,
    })
}

fn echo_blocking(dst: Ipv4Addr, size: usize, timeout: Duration) -> std::io::Result<Echo> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::io::Read;
    use std::os::fd::AsRawFd;

    let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
    // DF on every probe, whatever the path MTU cache says.
    let mode: libc::c_int = libc::IP_PMTUDISC_PROBE;
    // SAFETY: plain setsockopt on an open descriptor with a correctly sized int argument.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&mode as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let ident: u16 = (std::process::id() as u16)
        ^ NEXT_IDENT
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .wrapping_mul(7919);
    let target = socket2::SockAddr::from(std::net::SocketAddr::new(IpAddr::V4(dst), 0));
    let start = Instant::now();
    let mut seq: u16 = 0;
    let mut next_send = start;
    let mut buf = vec![0u8; 65536];
    loop {
        let now = Instant::now();
        if now >= start + timeout {
            return Ok(Echo::Silence(timeout));
        }
        if now >= next_send {
            let packet = echo_request(ident, seq, size.saturating_sub(20).max(8));
            seq = seq.wrapping_add(1);
            next_send = now + Duration::from_millis(250);
            if let Err(e) = sock.send_to(&packet, &target) {
                return Ok(match e.raw_os_error() {
                    Some(libc::EMSGSIZE) => Echo::TooBig,
                    Some(libc::ENETUNREACH | libc::EHOSTUNREACH) => {
                        Echo::Unreachable(e.to_string())
                    }
                    _ => return Err(e),
                });
            }
        }
        let wait = next_send
            .min(start + timeout)
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        sock.set_read_timeout(Some(wait))?;
        let n = match (&sock).read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => return Ok(Echo::TooBig),
            Err(e) => return Err(e),
        };
        if let Some(v) = classify(&buf[..n], dst, ident) {
            return Ok(v);
        }
    }
}

/// An ICMP echo request with `len` bytes of ICMP (header included).
fn echo_request(ident: u16, seq: u16, len: usize) -> Vec<u8> {
    let mut p = vec![8u8, 0, 0, 0];
    p.extend_from_slice(&ident.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend((0..len.saturating_sub(8)).map(|i| b"wharf-diagnosis!"[i % 16]));
    let sum = checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// What a received IPv4 packet (header included) says about our probe, if anything.
fn classify(pkt: &[u8], dst: Ipv4Addr, ident: u16) -> Option<Echo> {
    let ihl = usize::from(pkt.first()? & 0x0f) * 4;
    let src = Ipv4Addr::new(*pkt.get(12)?, *pkt.get(13)?, *pkt.get(14)?, *pkt.get(15)?);
    let icmp = pkt.get(ihl..)?;
    let (ty, code) = (*icmp.first()?, *icmp.get(1)?);
    match ty {
        0 if src == dst && icmp.get(4..6)? == ident.to_be_bytes() => Some(Echo::Reply),
        3 | 11 => {
            // The original datagram: its IPv4 header, then our echo's first 8 bytes.
            let orig = icmp.get(8..)?;
            let oihl = usize::from(orig.first()? & 0x0f) * 4;
            let oicmp = orig.get(oihl..)?;
            if *oicmp.first()? != 8 || oicmp.get(4..6)? != ident.to_be_bytes() {
                return None;
            }
            Some(match (ty, code) {
                (3, 4) => Echo::TooBig,
                (3, c) => {
                    Echo::Unreachable(format!("ICMP destination unreachable, code {c} from {src}"))
                }
                (_, _) => Echo::Unreachable(format!("ICMP time exceeded from {src}")),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn echo_requests_have_the_asked_size_and_a_valid_checksum() {
        let p = echo_request(0x1234, 7, 1430);
        assert_eq!(p.len(), 1430);
        assert_eq!(checksum(&p), 0);
    }

    #[test]
    fn replies_and_errors_are_recognised() {
        let dst = Ipv4Addr::new(10, 0, 0, 3);
        let mut reply = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 3, 10, 0, 0, 2,
        ];
        reply.extend_from_slice(&[0, 0, 0, 0, 0x12, 0x34, 0, 1]);
        assert_eq!(classify(&reply, dst, 0x1234), Some(Echo::Reply));
        assert_eq!(classify(&reply, dst, 0x9999), None);
        let mut frag = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        frag.extend_from_slice(&[3, 4, 0, 0, 0, 0, 5, 0xaa]);
        frag.extend_from_slice(&[
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0, 10, 0, 0, 2, 10, 0, 0, 3,
        ]);
        frag.extend_from_slice(&[8, 0, 0, 0, 0x12, 0x34, 0, 1]);
        assert_eq!(classify(&frag, dst, 0x1234), Some(Echo::TooBig));
    }

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
