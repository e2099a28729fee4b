//! The overlay driver: one layer-2 segment per network, stretched across hosts with VXLAN.
//!
//! Layout on each host that has containers on an overlay network (Docker's):
//!
//! ```text
//!  host namespace                      network namespace <prefix>ov-<12 hex of the id>
//!  eth0 198.18.0.1 ── UDP 4789 ──────  vxlan0 (VNI, local 198.18.0.1, learning off, proxy on)
//!  (the tunnel's socket lives here)      │
//!                                       br0 (gateway address, e.g. 10.0.0.1/24)
//!                                        ├── veth<7 hex> ── eth0 of container 1 (10.0.0.2)
//!                                        └── veth<7 hex> ── eth0 of container 2 (10.0.0.5)
//! ```
//!
//! - The bridge and the VXLAN device of each network live in a namespace of their own, so
//!   nothing of one overlay can reach another overlay, a bridge network or the host: there is
//!   no route between them at all. The namespace is created with the network's first endpoint
//!   on this host and deleted with its last.
//! - `vxlan0` is created from the host's namespace directly inside the network's namespace:
//!   the kernel keeps its UDP socket (and the underlay device it sends through) in the
//!   namespace the request came from, which is how one host socket serves every overlay.
//! - A container's veth is created from inside the network's namespace, enslaved to `br0` and
//!   up, with its peer created directly in the container's namespace, already named and with its
//!   MAC (as the bridge driver does).
//! - Nothing is learnt or flooded across the underlay: `vxlan0` has learning off and no
//!   default destination, so a frame leaves for another host only if a static FDB entry
//!   (MAC -> that host's underlay address) says where. Address resolution for remote endpoints
//!   is answered locally by `vxlan0` itself (its `proxy` flag) from permanent neighbour entries
//!   (IP -> MAC) on `vxlan0`: an ARP request or neighbour solicitation from a container never
//!   crosses the underlay. Both kinds of entries are [`PeerEntry`]s that the controller hands
//!   in from the cluster store ([`Driver::peer_add`], [`Driver::peer_remove`]).
//! - A join makes `br0` forget what it learnt about the container's MAC behind `vxlan0` (a MAC
//!   follows its address, which may have been another host's a moment ago, and an IPv4-only
//!   container's interface has no IPv6 link-local address, so it says nothing as it comes up
//!   to correct it).
//! - MTU: the underlay device's minus 50 (VXLAN over IPv4) unless the network sets one; the
//!   containers' interfaces get the same.
//! - No way out through the overlay: joining gives the sandbox no gateway; the controller routes
//!   overlay containers out through a second endpoint on the host's egress bridge
//!   (`wharf_gwbridge`, Docker's `docker_gwbridge`; see `docs/ARCHITECTURE.md`).
//!
//! The driver keeps open handles into the networks' namespaces as a cache only; everything is
//! found again from the kernel by name. The caller (the controller) serialises the joins,
//! leaves and peer operations of one network on this host.
//!
//! [`mesh`]: the routing mesh's load balancer, the nftables table of a host's ingress sandbox.

pub mod mesh;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ipnetwork::IpNetwork;
use sha2::{Digest, Sha256};

use super::{
    Driver, DriverError, DriverKind, DriverOptions, EndpointInfo, Joined, NetworkInfo,
    OverlayOptions, PeerEntry, SandboxContext, VXLAN_OVERHEAD,
};
use crate::sys::rtnl::{
    FdbEntry, Handle, LinkKind, LinkSpec, MacAddr, NeighState, Neighbour, VethPeer, VxlanSpec,
};
use crate::sys::{NetNs, SysError};

/// The bridge inside a network's namespace.
pub const BRIDGE: &str = "br0";
/// The VXLAN device inside a network's namespace.
pub const VXLAN: &str = "vxlan0";

/// The overlay driver of one host.
#[derive(Debug)]
pub struct OverlayDriver {
    host: Handle,
    netns_prefix: String,
    local: IpAddr,
    planes: Mutex<HashMap<String, Arc<Plane>>>,
}

/// A network's data plane on this host: its namespace, a handle in it, and its two devices.
#[derive(Debug)]
struct Plane {
    handle: Handle,
    bridge: u32,
    vxlan: u32,
    mtu: u32,
}

fn options(net: &NetworkInfo) -> Result<&OverlayOptions, DriverError> {
    match &net.options {
        DriverOptions::Overlay(o) => Ok(o),
        other => Err(DriverError::InvalidOption {
            network: net.name.clone(),
            driver: DriverKind::Overlay,
            reason: format!("options are for the {} driver", other.kind()),
        }),
    }
}

/// The name of a network's namespace: `<prefix>ov-` and the first 12 hex digits of its id.
pub fn netns_name(prefix: &str, net: &NetworkInfo) -> String {
    format!("{prefix}ov-{}", net.id.get(..12).unwrap_or(&net.id))
}

/// The container-side veth's other end, inside the network's namespace.
pub fn veth_name(ep: &EndpointInfo) -> String {
    format!("veth{}", ep.id.get(..7).unwrap_or(&ep.id))
}

/// A locally administered MAC for a network's bridge on one host: derived from the network id
/// and the host's underlay address, so it is stable and differs between hosts (every host's
/// `br0` holds the same gateway address).
pub fn bridge_mac(net: &NetworkInfo, local: IpAddr) -> MacAddr {
    let mut h = Sha256::new();
    h.update(net.id.as_bytes());
    h.update(local.to_string().as_bytes());
    let d = h.finalize();
    MacAddr([0x02, 0x44, d[0], d[1], d[2], d[3]])
}

/// What `br0` may still have learnt about a local container's MAC from the other hosts: an
/// entry for the MAC on `vxlan0`'s port, deleted by the container's join
/// (`bridge fdb del MAC dev vxlan0 master`; absent is fine).
///
/// A container's MAC is derived from its IPv4 address, and the cluster's allocators hand a
/// released address out again, on any host (a service update moves every replica). While the
/// address was another host's, `br0` learnt its MAC behind `vxlan0`; a learnt entry lives until
/// it ages out (300 s) or the MAC is seen on another port. A container that has said nothing
/// yet (an interface without an IPv6 link-local address sends no DAD, router solicitation or
/// MLD as it comes up) would get nothing: `br0` sends its frames to `vxlan0`, which has no
/// entry for a local MAC, and drops those that come in from `vxlan0` (the port they arrived
/// on). Without the entry, `br0` floods the container's first frames, which reaches its veth,
/// and learns the veth from its first answer. (The old owner's interface is gone before its
/// address is released, so nothing sends from that MAC on the far side any more.) Writing the
/// veth instead is not possible yet (the kernel refuses a learnt-like entry on a port that is
/// not forwarding, and the veth forwards only once the container's side is up), and a static
/// entry costs every later port on the bridge: the kernel syncs static entries with each port
/// added (the 1000th overlay attach took ~2 ms longer with one per container).
fn learnt_remote_entry(vxlan_port: u32, ep: &EndpointInfo) -> FdbEntry {
    FdbEntry::master(vxlan_port, ep.mac)
}

fn ignore_not_found(r: Result<(), SysError>) -> Result<(), SysError> {
    match r {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}

impl OverlayDriver {
    /// An overlay driver for the host whose namespace `host` is in, tunnelling from the
    /// underlay address `local` (which must be an address of that namespace). The networks'
    /// namespaces are named `<netns_prefix>ov-<12 hex of the id>`.
    pub fn new(host: Handle, netns_prefix: impl Into<String>, local: IpAddr) -> Self {
        Self {
            host,
            netns_prefix: netns_prefix.into(),
            local,
            planes: Mutex::new(HashMap::new()),
        }
    }

    /// The name of `net`'s namespace on this host.
    pub fn netns_name(&self, net: &NetworkInfo) -> String {
        netns_name(&self.netns_prefix, net)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Plane>>> {
        self.planes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The underlay device (the one holding the local address): its index and MTU.
    async fn underlay(&self, net: &NetworkInfo) -> Result<(u32, u32), DriverError> {
        let kernel = DriverError::kernel(&net.name);
        let addrs = self.host.address().list().await.map_err(kernel)?;
        let Some(a) = addrs.iter().find(|a| a.addr.ip() == self.local) else {
            return Err(DriverError::Unsupported {
                network: net.name.clone(),
                driver: DriverKind::Overlay,
                reason: format!(
                    "the advertise address {} is not an address of this host",
                    self.local
                ),
            });
        };
        let link = self
            .host
            .link()
            .get_by_index(a.index)
            .await
            .map_err(DriverError::kernel(&net.name))?;
        Ok((link.index, link.mtu))
    }

    /// The network's data plane here, if it exists (opened and cached on first use).
    async fn plane(&self, net: &NetworkInfo) -> Result<Option<Arc<Plane>>, DriverError> {
        if let Some(p) = self.cache().get(&net.id) {
            return Ok(Some(p.clone()));
        }
        let name = self.netns_name(net);
        let ns = match NetNs::open(&name) {
            Ok(ns) => ns,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(DriverError::kernel(&net.name)(e)),
        };
        let handle = Handle::in_netns(&ns)
            .await
            .map_err(DriverError::kernel(&net.name))?;
        let (bridge, vxlan) = match (
            handle.link().get(BRIDGE).await,
            handle.link().get(VXLAN).await,
        ) {
            (Ok(b), Ok(v)) => (b, v),
            (Err(e), _) | (_, Err(e)) if e.is_not_found() => return Ok(None),
            (Err(e), _) | (_, Err(e)) => return Err(DriverError::kernel(&net.name)(e)),
        };
        let plane = Arc::new(Plane {
            handle,
            bridge: bridge.index,
            vxlan: vxlan.index,
            mtu: bridge.mtu,
        });
        self.cache().insert(net.id.clone(), plane.clone());
        Ok(Some(plane))
    }

    /// The network's data plane, created if missing (or completed, if a crash left it half
    /// made). Returns whether this call created the namespace.
    async fn ensure_plane(&self, net: &NetworkInfo) -> Result<(Arc<Plane>, bool), DriverError> {
        if let Some(p) = self.plane(net).await? {
            return Ok((p, false));
        }
        let opts = options(net)?;
        let kernel = |e: SysError| DriverError::kernel(&net.name)(e);
        let vni = opts.vni.ok_or_else(|| DriverError::InvalidOption {
            network: net.name.clone(),
            driver: DriverKind::Overlay,
            reason: "no VNI was allocated".into(),
        })?;
        let (underlay, underlay_mtu) = self.underlay(net).await?;
        let mtu = opts
            .mtu
            .unwrap_or(underlay_mtu.saturating_sub(VXLAN_OVERHEAD));
        let name = self.netns_name(net);
        let (ns, created) = match NetNs::create(&name).await {
            Ok(ns) => (ns, true),
            Err(e) if e.is_already_exists() => (NetNs::open(&name).map_err(kernel)?, false),
            Err(e) => return Err(kernel(e)),
        };
        let built: Result<Plane, SysError> = async {
            let h = Handle::in_netns(&ns).await?;
            let bridge = match h.link().get(BRIDGE).await {
                Ok(l) => l.index,
                Err(e) if e.is_not_found() => {
                    h.link()
                        .add(
                            // No multicast snooping: nothing queries on an overlay,
                            // and a snooping bridge walks every port on each attach
                            // (see the bridge driver).
                            LinkSpec::bridge(BRIDGE)
                                .mtu(mtu)
                                .mac(bridge_mac(net, self.local))
                                .multicast_snooping(false)
                                .up(),
                        )
                        .await?;
                    let index = h.link().get(BRIDGE).await?.index;
                    for s in &net.subnets {
                        if let Some(gw) = s.gateway {
                            let addr = IpNetwork::new(gw, s.subnet.prefix()).map_err(|_| {
                                SysError::InvalidArgument {
                                    what: format!("gateway {gw} of {}", s.subnet),
                                }
                            })?;
                            h.address().add(index, addr).await?;
                        }
                    }
                    index
                }
                Err(e) => return Err(e),
            };
            let vxlan = match h.link().get(VXLAN).await {
                Ok(l) => l.index,
                Err(e) if e.is_not_found() => {
                    // Sent from the host's namespace: the tunnel's socket stays there.
                    self.host
                        .link()
                        .add(
                            LinkSpec::vxlan(
                                VXLAN,
                                VxlanSpec::new(vni)
                                    .port(opts.port())
                                    .local(self.local)
                                    .underlay(underlay)
                                    .learning(false)
                                    .proxy(true),
                            )
                            .mtu(mtu)
                            .netns(&ns),
                        )
                        .await?;
                    h.link().get(VXLAN).await?.index
                }
                Err(e) => return Err(e),
            };
            h.link().set_master(vxlan, bridge).await?;
            h.link().set_up(vxlan).await?;
            Ok(Plane {
                handle: h,
                bridge,
                vxlan,
                mtu,
            })
        }
        .await;
        match built {
            Ok(plane) => {
                let plane = Arc::new(plane);
                self.cache().insert(net.id.clone(), plane.clone());
                Ok((plane, created))
            }
            Err(e) => {
                if created {
                    self.remove_plane(net, None).await;
                }
                Err(kernel(e))
            }
        }
    }

    /// Deletes the network's namespace with its devices. The VXLAN device is deleted first and
    /// explicitly: the kernel keeps a namespace (and so its devices) alive while anything still
    /// holds it, and a lingering device would keep the VNI taken on the host's socket.
    async fn remove_plane(&self, net: &NetworkInfo, plane: Option<Arc<Plane>>) {
        let cached = self.cache().remove(&net.id);
        let plane = plane.or(cached);
        let name = self.netns_name(net);
        let handle = match &plane {
            Some(p) => Some(p.handle.clone()),
            None => match NetNs::open(&name) {
                Ok(ns) => Handle::in_netns(&ns).await.ok(),
                Err(_) => None,
            },
        };
        if let Some(h) = handle {
            for dev in [VXLAN, BRIDGE] {
                if let Err(e) = ignore_not_found(h.link().delete_by_name(dev).await) {
                    tracing::warn!(network = %net.name, device = dev, error = %e, "deleting overlay device");
                }
            }
        }
        drop(plane);
        if let Err(e) = ignore_not_found(NetNs::delete(&name)) {
            tracing::warn!(network = %net.name, netns = %name, error = %e, "deleting overlay namespace");
        }
    }
}

#[async_trait]
impl Driver for OverlayDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Overlay
    }

    fn validate(&self, net: &NetworkInfo) -> Result<(), DriverError> {
        let opts = options(net)?;
        let invalid = |reason: String| DriverError::InvalidOption {
            network: net.name.clone(),
            driver: DriverKind::Overlay,
            reason,
        };
        if let Some(vni) = opts.vni {
            if !(1..=super::MAX_VNI).contains(&vni) {
                return Err(invalid(format!(
                    "vni {vni} is outside 1..={}",
                    super::MAX_VNI
                )));
            }
        }
        if let Some(mtu) = opts.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(invalid(format!("mtu {mtu} is outside 68..=65535")));
            }
        }
        if opts.port == Some(0) {
            return Err(invalid("port 0 is not a UDP port".into()));
        }
        crate::sys::netns::validate_name(&self.netns_name(net))
            .map_err(|e| invalid(e.to_string()))?;
        Ok(())
    }

    fn validate_endpoint(&self, net: &NetworkInfo, ep: &EndpointInfo) -> Result<(), DriverError> {
        if !ep.ports.is_empty() {
            return Err(DriverError::Unsupported {
                network: net.name.clone(),
                driver: DriverKind::Overlay,
                reason: "published ports need the gateway bridge or the routing mesh, which \
                         overlays do not have yet"
                    .into(),
            });
        }
        Ok(())
    }

    /// Nothing in the kernel: the data plane is made on this host with the first endpoint.
    async fn create_network(&self, net: &NetworkInfo) -> Result<(), DriverError> {
        options(net)?;
        Ok(())
    }

    async fn delete_network(&self, net: &NetworkInfo) -> Result<(), DriverError> {
        let plane = self.plane(net).await.ok().flatten();
        self.remove_plane(net, plane).await;
        Ok(())
    }

    async fn join(
        &self,
        net: &NetworkInfo,
        ep: &EndpointInfo,
        sandbox: &SandboxContext,
    ) -> Result<Joined, DriverError> {
        if sandbox.is_host {
            return Err(DriverError::Unsupported {
                network: net.name.clone(),
                driver: DriverKind::Overlay,
                reason: "the host's namespace cannot join an overlay".into(),
            });
        }
        let (plane, created) = self.ensure_plane(net).await?;
        let veth = veth_name(ep);
        let links = plane.handle.link();
        let added = links
            .add(
                LinkSpec::veth(&veth)
                    .peer(
                        VethPeer::new(&ep.ifname)
                            .netns(&sandbox.ns)
                            .mac(ep.mac)
                            .mtu(plane.mtu),
                    )
                    .master(plane.bridge)
                    .mtu(plane.mtu)
                    .up(),
            )
            .await;
        let inside = &sandbox.handle;
        let configured: Result<u32, SysError> = match added {
            Err(e) => Err(e),
            Ok(()) => {
                async {
                    // br0 forgets where the other hosts had this MAC: see
                    // `learnt_remote_entry`.
                    let stale = learnt_remote_entry(plane.vxlan, ep);
                    ignore_not_found(plane.handle.fdb().delete(stale).await)?;
                    super::configure_sandbox_interface(inside, ep).await
                }
                .await
            }
        };
        match configured {
            Ok(ifindex) => Ok(Joined {
                ifindex: Some(ifindex),
                // The way out is the controller's egress bridge, not the overlay.
                gateway_v4: None,
                gateway_v6: None,
            }),
            Err(e) => {
                if let Err(undo) = ignore_not_found(links.delete_by_name(&veth).await) {
                    tracing::warn!(veth = %veth, error = %undo, "rollback of veth creation failed");
                }
                if created {
                    self.remove_plane(net, Some(plane)).await;
                }
                Err(DriverError::kernel(&net.name)(e))
            }
        }
    }

    async fn leave(&self, net: &NetworkInfo, ep: &EndpointInfo) -> Result<(), DriverError> {
        let Some(plane) = self.plane(net).await? else {
            return Ok(());
        };
        let kernel = DriverError::kernel(&net.name);
        // Gone already if the sandbox's namespace was destroyed.
        ignore_not_found(plane.handle.link().delete_by_name(&veth_name(ep)).await)
            .map_err(kernel)?;
        let links = plane
            .handle
            .link()
            .list()
            .await
            .map_err(DriverError::kernel(&net.name))?;
        if !links.iter().any(|l| l.kind == Some(LinkKind::Veth)) {
            tracing::debug!(network = %net.name, "last local endpoint left: removing the overlay namespace");
            self.remove_plane(net, Some(plane)).await;
        }
        Ok(())
    }

    async fn peer_add(&self, net: &NetworkInfo, entries: &[PeerEntry]) -> Result<(), DriverError> {
        let Some(plane) = self.plane(net).await? else {
            return Ok(());
        };
        let h = &plane.handle;
        for e in entries {
            let r = match *e {
                // `replace`, not `append`: for a unicast MAC the kernel's append only updates
                // an existing entry's flags and keeps its destination; replace sets it.
                PeerEntry::Fdb { mac, vtep } => {
                    h.fdb()
                        .replace(FdbEntry::remote(plane.vxlan, mac, vtep))
                        .await
                }
                PeerEntry::Neighbour { ip, mac } => {
                    h.neigh()
                        .replace(Neighbour::new(plane.vxlan, ip, mac))
                        .await
                }
            };
            r.map_err(DriverError::kernel(&net.name))?;
        }
        Ok(())
    }

    async fn peer_remove(
        &self,
        net: &NetworkInfo,
        entries: &[PeerEntry],
    ) -> Result<(), DriverError> {
        let Some(plane) = self.plane(net).await? else {
            return Ok(());
        };
        let h = &plane.handle;
        for e in entries {
            let r = match *e {
                // With its destination: deletes this entry only, not a newer one for the MAC.
                PeerEntry::Fdb { mac, vtep } => {
                    h.fdb()
                        .delete(FdbEntry::remote(plane.vxlan, mac, vtep))
                        .await
                }
                PeerEntry::Neighbour { ip, .. } => h.neigh().delete(plane.vxlan, ip).await,
            };
            ignore_not_found(r).map_err(DriverError::kernel(&net.name))?;
        }
        Ok(())
    }

    async fn peer_entries(&self, net: &NetworkInfo) -> Result<Option<Vec<PeerEntry>>, DriverError> {
        let Some(plane) = self.plane(net).await? else {
            return Ok(None);
        };
        let h = &plane.handle;
        let kernel = DriverError::kernel(&net.name);
        let mut out: Vec<PeerEntry> = h
            .fdb()
            .list_on(plane.vxlan)
            .await
            .map_err(kernel)?
            .into_iter()
            .filter(|e| !e.master && e.permanent)
            .filter_map(|e| e.dst.map(|vtep| PeerEntry::Fdb { mac: e.mac, vtep }))
            .collect();
        let neighbours = h
            .neigh()
            .list()
            .await
            .map_err(DriverError::kernel(&net.name))?;
        out.extend(
            neighbours
                .into_iter()
                .filter(|n| n.index == plane.vxlan && n.state == NeighState::Permanent)
                .filter_map(|n| n.mac.map(|mac| PeerEntry::Neighbour { ip: n.ip, mac })),
        );
        out.sort();
        Ok(Some(out))
    }
}
