//! Neighbour entries (`ip neigh`: IP -> MAC on an interface) and bridge forwarding database
//! entries (`bridge fdb`: MAC -> port, or MAC -> remote VTEP on a VXLAN device).
//!
//! The overlay's data plane is static: for each remote endpoint it adds a permanent neighbour
//! entry (its IP -> its MAC) and an FDB entry (its MAC -> its host's underlay IP) on the VXLAN
//! device, so nothing is learnt or flooded.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::RouteType;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use serde::{Deserialize, Serialize};

use super::Handle;
use super::mac::MacAddr;
use super::request::{APPEND, CHANGE, CREATE, DUMP, REPLACE, Request};
use super::route::IpVersion;
use crate::sys::error::SysResult;

/// The state of a neighbour entry (`NUD_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum NeighState {
    /// Resolution in progress.
    Incomplete,
    /// Confirmed reachable.
    Reachable,
    /// Valid but unconfirmed.
    Stale,
    /// Waiting before probing.
    Delay,
    /// Being probed.
    Probe,
    /// Resolution failed.
    Failed,
    /// No resolution needed (static FDB entries of a bridge).
    Noarp,
    /// Set by hand, never expires.
    Permanent,
    /// Any other value.
    Other(u16),
}

impl NeighState {
    fn from_netlink(s: NeighbourState) -> Self {
        match s {
            NeighbourState::Incomplete => Self::Incomplete,
            NeighbourState::Reachable => Self::Reachable,
            NeighbourState::Stale => Self::Stale,
            NeighbourState::Delay => Self::Delay,
            NeighbourState::Probe => Self::Probe,
            NeighbourState::Failed => Self::Failed,
            NeighbourState::Noarp => Self::Noarp,
            NeighbourState::Permanent => Self::Permanent,
            other => Self::Other(u16::from(other)),
        }
    }
}

/// A permanent neighbour entry to add or delete: `ip neigh add IP lladdr MAC dev IF nud permanent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Neighbour {
    /// Interface index.
    pub index: u32,
    /// The neighbour's IP address.
    pub ip: IpAddr,
    /// Its MAC address.
    pub mac: MacAddr,
}

impl Neighbour {
    /// `IP lladdr MAC dev #index`.
    pub fn new(index: u32, ip: IpAddr, mac: MacAddr) -> Self {
        Self { index, ip, mac }
    }

    fn describe(&self) -> String {
        format!(
            "neighbour {} lladdr {} on link #{}",
            self.ip, self.mac, self.index
        )
    }

    fn message(&self, with_mac: bool) -> NeighbourMessage {
        let mut msg = NeighbourMessage::default();
        msg.header.family = IpVersion::of(&self.ip).family();
        msg.header.ifindex = self.index;
        msg.header.state = NeighbourState::Permanent;
        msg.header.kind = RouteType::Unspec;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(
                self.ip,
            )));
        if with_mac {
            msg.attributes.push(NeighbourAttribute::LinkLayerAddress(
                self.mac.octets().to_vec(),
            ));
        }
        msg
    }

    pub(crate) fn add_request(&self, flags: u16) -> Request {
        Request::new(RouteNetlinkMessage::NewNeighbour(self.message(true)), flags)
    }

    pub(crate) fn delete_request(&self) -> Request {
        Request::new(
            RouteNetlinkMessage::DelNeighbour(self.message(false)),
            CHANGE,
        )
    }
}

/// A neighbour entry as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NeighbourEntry {
    /// Interface index.
    pub index: u32,
    /// IP address.
    pub ip: IpAddr,
    /// MAC address, once resolved.
    pub mac: Option<MacAddr>,
    /// State.
    pub state: NeighState,
}

fn ip_of(addr: &NeighbourAddress) -> Option<IpAddr> {
    match addr {
        NeighbourAddress::Inet(a) => Some(IpAddr::V4(*a)),
        NeighbourAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        // AF_BRIDGE messages carry the VTEP address as raw bytes.
        NeighbourAddress::Other(b) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice())
                .ok()
                .map(|o| IpAddr::V4(Ipv4Addr::from(o))),
            16 => <[u8; 16]>::try_from(b.as_slice())
                .ok()
                .map(|o| IpAddr::V6(Ipv6Addr::from(o))),
            _ => None,
        },
        _ => None,
    }
}

impl NeighbourEntry {
    fn from_message(msg: &NeighbourMessage) -> Option<Self> {
        let mut ip = None;
        let mut mac = None;
        for attr in &msg.attributes {
            match attr {
                NeighbourAttribute::Destination(a) => ip = ip_of(a),
                NeighbourAttribute::LinkLayerAddress(m) => mac = MacAddr::from_slice(m),
                _ => {}
            }
        }
        Some(Self {
            index: msg.header.ifindex,
            ip: ip?,
            mac,
            state: NeighState::from_netlink(msg.header.state),
        })
    }
}

pub(crate) fn dump_request(family: AddressFamily) -> Request {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family;
    Request::new(RouteNetlinkMessage::GetNeighbour(msg), DUMP)
}

/// Neighbour operations of a [`Handle`]: `ip neigh`.
#[derive(Debug, Clone, Copy)]
pub struct Neighbours<'a> {
    handle: &'a Handle,
}

impl<'a> Neighbours<'a> {
    pub(crate) fn new(handle: &'a Handle) -> Self {
        Self { handle }
    }

    /// Adds a permanent entry: `ip neigh add`. [`crate::sys::SysError::AlreadyExists`] if an
    /// entry for the IP exists on the interface.
    ///
    /// ```no_run
    /// # async fn demo(h: &wharf::sys::rtnl::Handle) -> Result<(), Box<dyn std::error::Error>> {
    /// use wharf::sys::rtnl::Neighbour;
    /// let vx = h.link().get("vx-4097").await?;
    /// h.neigh().add(Neighbour::new(vx.index, "10.0.1.3".parse()?, "02:42:0a:00:01:03".parse()?)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn add(&self, n: Neighbour) -> SysResult<()> {
        self.handle
            .ack(n.add_request(CREATE), || format!("adding {}", n.describe()))
            .await
    }

    /// Adds or replaces a permanent entry: `ip neigh replace`.
    pub async fn replace(&self, n: Neighbour) -> SysResult<()> {
        self.handle
            .ack(n.add_request(REPLACE), || {
                format!("replacing {}", n.describe())
            })
            .await
    }

    /// Deletes the entry for `ip` on interface `index`: `ip neigh del`.
    pub async fn delete(&self, index: u32, ip: IpAddr) -> SysResult<()> {
        let n = Neighbour::new(index, ip, MacAddr::ZERO);
        self.handle
            .ack(n.delete_request(), || {
                format!("deleting neighbour {ip} on link #{index}")
            })
            .await
    }

    /// Lists the IPv4 and IPv6 neighbour entries of the namespace: `ip neigh show`.
    pub async fn list(&self) -> SysResult<Vec<NeighbourEntry>> {
        let mut out = Vec::new();
        for version in [IpVersion::V4, IpVersion::V6] {
            let msgs = self
                .handle
                .dump(dump_request(version.family()), || {
                    format!("listing {version:?} neighbours")
                })
                .await?;
            out.extend(msgs.iter().filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => NeighbourEntry::from_message(n),
                _ => None,
            }));
        }
        Ok(out)
    }
}

/// A bridge forwarding database entry: `bridge fdb add MAC dev IF [dst IP] [vni N] self|master`.
///
/// ```
/// use wharf::sys::rtnl::{FdbEntry, MacAddr};
/// let mac: MacAddr = "02:42:0a:00:01:03".parse().unwrap();
/// let e = FdbEntry::remote(7, mac, "192.168.50.2".parse().unwrap());
/// assert!(!e.master);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FdbEntry {
    /// Interface index: the VXLAN device, or the bridge port.
    pub index: u32,
    /// The MAC address (all zeros: the default destination of a VXLAN device).
    pub mac: MacAddr,
    /// Remote VTEP address (VXLAN).
    pub dst: Option<IpAddr>,
    /// VNI, when it differs from the device's (VXLAN).
    pub vni: Option<u32>,
    /// In the master (bridge) table (`NTF_MASTER`) rather than the device's own (`NTF_SELF`).
    pub master: bool,
    /// Permanent (VXLAN) or static (bridge) rather than learnt.
    pub permanent: bool,
}

impl FdbEntry {
    /// `MAC dst IP self permanent` on VXLAN device `index`: frames for `mac` go to VTEP `dst`.
    pub fn remote(index: u32, mac: MacAddr, dst: IpAddr) -> Self {
        Self {
            index,
            mac,
            dst: Some(dst),
            vni: None,
            master: false,
            permanent: true,
        }
    }

    /// `MAC master static` on bridge port `index`: frames for `mac` leave through this port.
    pub fn master(index: u32, mac: MacAddr) -> Self {
        Self {
            index,
            mac,
            dst: None,
            vni: None,
            master: true,
            permanent: true,
        }
    }

    /// Sets a VNI differing from the device's.
    pub fn vni(mut self, vni: u32) -> Self {
        self.vni = Some(vni);
        self
    }

    fn describe(&self) -> String {
        let mut s = format!("fdb entry {} on link #{}", self.mac, self.index);
        if let Some(dst) = self.dst {
            s.push_str(&format!(" dst {dst}"));
        }
        s.push_str(if self.master { " master" } else { " self" });
        s
    }

    fn message(&self) -> NeighbourMessage {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = self.index;
        msg.header.flags = if self.master {
            NeighbourFlags::Controller
        } else {
            NeighbourFlags::Own
        };
        // A bridge treats NUD_PERMANENT as "local" (deliver to the bridge itself); a static
        // entry towards a port is NUD_NOARP. A VXLAN device wants NUD_PERMANENT.
        msg.header.state = match (self.permanent, self.master) {
            (true, false) => NeighbourState::Permanent,
            (true, true) => NeighbourState::Noarp,
            (false, _) => NeighbourState::Reachable,
        };
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(
            self.mac.octets().to_vec(),
        ));
        if let Some(dst) = self.dst {
            msg.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::from(dst)));
        }
        if let Some(vni) = self.vni {
            msg.attributes.push(NeighbourAttribute::Vni(vni));
        }
        msg
    }

    pub(crate) fn add_request(&self, flags: u16) -> Request {
        Request::new(RouteNetlinkMessage::NewNeighbour(self.message()), flags)
    }

    pub(crate) fn delete_request(&self) -> Request {
        Request::new(RouteNetlinkMessage::DelNeighbour(self.message()), CHANGE)
    }

    fn from_message(msg: &NeighbourMessage) -> Option<Self> {
        let mut mac = None;
        let mut dst = None;
        let mut vni = None;
        // A bridge reports its own entries with NDA_MASTER rather than NTF_MASTER.
        let mut master = msg.header.flags.contains(NeighbourFlags::Controller);
        for attr in &msg.attributes {
            match attr {
                NeighbourAttribute::LinkLayerAddress(m) => mac = MacAddr::from_slice(m),
                NeighbourAttribute::Destination(a) => dst = ip_of(a),
                NeighbourAttribute::Vni(v) => vni = Some(*v),
                NeighbourAttribute::Controller(_) => master = true,
                _ => {}
            }
        }
        Some(Self {
            index: msg.header.ifindex,
            mac: mac?,
            dst,
            vni,
            master,
            permanent: matches!(
                msg.header.state,
                NeighbourState::Permanent | NeighbourState::Noarp
            ),
        })
    }
}

/// FDB operations of a [`Handle`]: `bridge fdb`.
#[derive(Debug, Clone, Copy)]
pub struct Fdb<'a> {
    handle: &'a Handle,
}

impl<'a> Fdb<'a> {
    pub(crate) fn new(handle: &'a Handle) -> Self {
        Self { handle }
    }

    /// Adds an entry: `bridge fdb add`. [`crate::sys::SysError::AlreadyExists`] if the MAC has
    /// an entry.
    ///
    /// ```no_run
    /// # async fn demo(h: &wharf::sys::rtnl::Handle) -> Result<(), Box<dyn std::error::Error>> {
    /// use wharf::sys::rtnl::FdbEntry;
    /// let vx = h.link().get("vx-4097").await?;
    /// h.fdb().add(FdbEntry::remote(vx.index, "02:42:0a:00:01:03".parse()?, "192.168.50.2".parse()?)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn add(&self, e: FdbEntry) -> SysResult<()> {
        self.handle
            .ack(e.add_request(CREATE), || format!("adding {}", e.describe()))
            .await
    }

    /// Adds or replaces an entry: `bridge fdb replace`.
    pub async fn replace(&self, e: FdbEntry) -> SysResult<()> {
        self.handle
            .ack(e.add_request(REPLACE), || {
                format!("replacing {}", e.describe())
            })
            .await
    }

    /// Appends a destination for a MAC that may already have some: `bridge fdb append` (the
    /// all-zeros MAC of a VXLAN device lists where broadcast frames are copied).
    pub async fn append(&self, e: FdbEntry) -> SysResult<()> {
        self.handle
            .ack(e.add_request(APPEND), || {
                format!("appending {}", e.describe())
            })
            .await
    }

    /// Deletes an entry: `bridge fdb del`.
    pub async fn delete(&self, e: FdbEntry) -> SysResult<()> {
        self.handle
            .ack(e.delete_request(), || format!("deleting {}", e.describe()))
            .await
    }

    /// Lists the FDB entries of the namespace (bridge ports and VXLAN devices): `bridge fdb show`.
    pub async fn list(&self) -> SysResult<Vec<FdbEntry>> {
        let msgs = self
            .handle
            .dump(dump_request(AddressFamily::Bridge), || {
                "listing fdb entries".into()
            })
            .await?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => FdbEntry::from_message(n),
                _ => None,
            })
            .collect())
    }

    /// Lists the FDB entries of interface `index`.
    pub async fn list_on(&self, index: u32) -> SysResult<Vec<FdbEntry>> {
        let mut all = self.list().await?;
        all.retain(|e| e.index == index);
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vxlan_fdb_entry_is_self_and_permanent() {
        let mac: MacAddr = "02:42:0a:00:01:03".parse().unwrap();
        let e = FdbEntry::remote(7, mac, "192.168.50.2".parse().unwrap());
        let req = e.add_request(CREATE);
        let RouteNetlinkMessage::NewNeighbour(m) = &req.message else {
            panic!()
        };
        assert_eq!(m.header.family, AddressFamily::Bridge);
        assert_eq!(m.header.ifindex, 7);
        assert_eq!(m.header.flags, NeighbourFlags::Own);
        assert_eq!(m.header.state, NeighbourState::Permanent);
        assert!(
            m.attributes
                .contains(&NeighbourAttribute::LinkLayerAddress(mac.octets().to_vec()))
        );
        assert_eq!(FdbEntry::from_message(m), Some(e));
    }

    #[test]
    fn bridge_master_entry_is_static_not_local() {
        let e = FdbEntry::master(4, MacAddr::new([2, 0, 0, 0, 0, 9]));
        let RouteNetlinkMessage::NewNeighbour(m) = e.add_request(CREATE).message else {
            panic!()
        };
        assert_eq!(m.header.flags, NeighbourFlags::Controller);
        assert_eq!(m.header.state, NeighbourState::Noarp);
    }

    #[test]
    fn neighbour_message() {
        let n = Neighbour::new(
            3,
            "10.0.1.3".parse().unwrap(),
            MacAddr::new([2, 0, 0, 0, 0, 3]),
        );
        let req = n.add_request(CREATE);
        assert_eq!(req.flags, CREATE);
        let RouteNetlinkMessage::NewNeighbour(m) = &req.message else {
            panic!()
        };
        assert_eq!(m.header.family, AddressFamily::Inet);
        assert_eq!(m.header.state, NeighbourState::Permanent);
        let entry = NeighbourEntry::from_message(m).unwrap();
        assert_eq!(entry.ip, n.ip);
        assert_eq!(entry.mac, Some(n.mac));
    }
}
