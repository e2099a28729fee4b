//! Links: create bridge, veth, vxlan, macvlan and vlan devices; look them up, change them,
//! delete them (one at a time, or a whole link group in one request).
//!
//! Creation is one `RTM_NEWLINK`: a veth is created with its peer already inside the container's
//! namespace and already named, the host end enslaved to its bridge and up, all in the same
//! request, because moving and renaming afterwards costs about twenty times more.

use std::net::IpAddr;
use std::os::fd::AsRawFd;

use netlink_packet_core::{DefaultNla, Nla};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoBridge, InfoData, InfoKind, InfoMacVlan,
    InfoVeth, InfoVlan, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
    LinkProtoInfoBridge,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use serde::{Deserialize, Serialize};

use super::Handle;
use super::mac::MacAddr;
use super::request::{CHANGE, CREATE, DUMP, GET, Request};
use crate::sys::error::{SysError, SysResult};
use crate::sys::netns::NetNs;

/// The longest interface name the kernel accepts (`IFNAMSIZ - 1`).
pub const IFNAME_MAX_LEN: usize = 15;

/// `IFLA_BRPORT_MODE` inside `IFLA_PROTINFO`: the bridge port's hairpin mode.
const IFLA_BRPORT_MODE: u16 = 4;

/// The default VXLAN UDP port (IANA).
pub const VXLAN_PORT: u16 = 4789;

/// Checks that `name` is a valid interface name: non-empty, at most 15 bytes, not `.` or `..`,
/// without `/`, `:`, whitespace or NUL. Fails with [`SysError::InvalidName`].
///
/// ```
/// use wharf::sys::rtnl::validate_ifname;
/// assert!(validate_ifname("vethab12").is_ok());
/// assert!(validate_ifname("a-name-longer-than-15").is_err());
/// assert!(validate_ifname("eth0:1").is_err());
/// ```
pub fn validate_ifname(name: &str) -> SysResult<()> {
    check_ifname(name, || "naming a network interface".into())
}

fn check_ifname(name: &str, what: impl FnOnce() -> String) -> SysResult<()> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > IFNAME_MAX_LEN {
        "longer than 15 bytes"
    } else if name == "." || name == ".." {
        "a path component"
    } else if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
    {
        "contains '/', ':', whitespace or NUL"
    } else {
        return Ok(());
    };
    Err(SysError::InvalidName {
        what: what(),
        name: name.to_owned(),
        reason,
    })
}

/// The kind of a link (`IFLA_INFO_KIND`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum LinkKind {
    /// A Linux bridge.
    Bridge,
    /// One end of a veth pair.
    Veth,
    /// A VXLAN tunnel endpoint.
    Vxlan,
    /// A macvlan device.
    Macvlan,
    /// An 802.1Q vlan device.
    Vlan,
    /// Any other kind, by its kernel name.
    Other(String),
}

impl LinkKind {
    /// The kernel's name of the kind (`"bridge"`, `"veth"`...).
    pub fn as_str(&self) -> &str {
        match self {
            Self::Bridge => "bridge",
            Self::Veth => "veth",
            Self::Vxlan => "vxlan",
            Self::Macvlan => "macvlan",
            Self::Vlan => "vlan",
            Self::Other(s) => s,
        }
    }

    fn from_info(kind: &InfoKind) -> Self {
        match kind {
            InfoKind::Bridge => Self::Bridge,
            InfoKind::Veth => Self::Veth,
            InfoKind::Vxlan => Self::Vxlan,
            InfoKind::MacVlan => Self::Macvlan,
            InfoKind::Vlan => Self::Vlan,
            other => Self::Other(other.to_string()),
        }
    }
}

impl std::fmt::Display for LinkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Link {
    /// Interface index, unique within the namespace.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Kind, or `None` for devices without one (loopback, physical NICs).
    pub kind: Option<LinkKind>,
    /// MTU in bytes.
    pub mtu: u32,
    /// Hardware address, if it has one of six bytes.
    pub mac: Option<MacAddr>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Carrier present (`IFF_LOWER_UP`).
    pub lower_up: bool,
    /// Index of the bridge (or other master) it is enslaved to.
    pub master: Option<u32>,
    /// Link group (0 is the default group).
    pub group: u32,
    /// `IFLA_LINK`: the parent's index (macvlan, vlan, vxlan underlay) or the veth peer's index,
    /// possibly in another namespace (see `netns_id`).
    pub link: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the id, in this namespace, of the namespace `link` lives in.
    pub netns_id: Option<i32>,
}

impl Link {
    pub(crate) fn from_message(msg: &LinkMessage) -> Self {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            kind: None,
            mtu: 0,
            mac: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            lower_up: msg.header.flags.contains(LinkFlags::LowerUp),
            master: None,
            group: 0,
            link: None,
            netns_id: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Mtu(m) => link.mtu = *m,
                LinkAttribute::Address(a) => link.mac = MacAddr::from_slice(a),
                LinkAttribute::Controller(m) if *m != 0 => link.master = Some(*m),
                LinkAttribute::Group(g) => link.group = *g,
                LinkAttribute::Link(l) if *l != 0 => link.link = Some(*l),
                LinkAttribute::LinkNetNsId(id) => link.netns_id = Some(*id),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(k) = info {
                            link.kind = Some(LinkKind::from_info(k));
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// Macvlan modes (`MACVLAN_MODE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MacvlanMode {
    /// Macvlans on the same parent talk to each other directly (Docker's default).
    #[default]
    Bridge,
    /// No traffic between macvlans on the same parent.
    Private,
    /// Traffic between macvlans goes through the external switch.
    Vepa,
    /// One macvlan takes over the parent (`passthru`).
    Passthru,
}

impl MacvlanMode {
    fn to_netlink(self) -> netlink_packet_route::link::MacVlanMode {
        use netlink_packet_route::link::MacVlanMode as M;
        match self {
            Self::Bridge => M::Bridge,
            Self::Private => M::Private,
            Self::Vepa => M::Vepa,
            Self::Passthru => M::Passthrough,
        }
    }
}

/// Options of a VXLAN device.
///
/// ```
/// use wharf::sys::rtnl::VxlanSpec;
/// let spec = VxlanSpec::new(4097).local("10.0.0.1".parse().unwrap()).underlay(2).ttl(64);
/// assert_eq!(spec.port, 4789);
/// assert!(!spec.learning);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct VxlanSpec {
    /// VXLAN network identifier (24 bits).
    pub vni: u32,
    /// Destination UDP port (4789 unless set).
    pub port: u16,
    /// Source address of the tunnel.
    pub local: Option<IpAddr>,
    /// Index of the underlay device.
    pub underlay: Option<u32>,
    /// Learn remote MACs from received packets (off: the FDB is filled statically).
    pub learning: bool,
    /// Answer ARP/NDP from the neighbour table (with static neighbour entries).
    pub proxy: bool,
    /// TTL of the outer packets (kernel default when `None`).
    pub ttl: Option<u8>,
}

impl VxlanSpec {
    /// VNI `vni`, port 4789, learning off, no proxy.
    pub fn new(vni: u32) -> Self {
        Self {
            vni,
            port: VXLAN_PORT,
            local: None,
            underlay: None,
            learning: false,
            proxy: false,
            ttl: None,
        }
    }
    /// Sets the destination UDP port.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
    /// Sets the tunnel's source address.
    pub fn local(mut self, local: IpAddr) -> Self {
        self.local = Some(local);
        self
    }
    /// Sets the underlay device.
    pub fn underlay(mut self, index: u32) -> Self {
        self.underlay = Some(index);
        self
    }
    /// Turns MAC learning on or off.
    pub fn learning(mut self, on: bool) -> Self {
        self.learning = on;
        self
    }
    /// Turns ARP/NDP proxying on or off.
    pub fn proxy(mut self, on: bool) -> Self {
        self.proxy = on;
        self
    }
    /// Sets the TTL of outer packets.
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = Some(ttl);
        self
    }

    fn to_netlink(&self) -> Vec<InfoVxlan> {
        let mut v = vec![InfoVxlan::Id(self.vni)];
        match self.local {
            Some(IpAddr::V4(a)) => v.push(InfoVxlan::Local(a)),
            Some(IpAddr::V6(a)) => v.push(InfoVxlan::Local6(a)),
            None => {}
        }
        if let Some(index) = self.underlay {
            v.push(InfoVxlan::Link(index));
        }
        v.push(InfoVxlan::Port(self.port));
        v.push(InfoVxlan::Learning(self.learning));
        if self.proxy {
            v.push(InfoVxlan::Proxy(true));
        }
        if let Some(ttl) = self.ttl {
            v.push(InfoVxlan::Ttl(ttl));
        }
        v
    }
}

/// The other end of a veth pair being created: its name, and optionally its namespace (it is
/// then created directly there), MAC and MTU.
///
/// The peer cannot be brought up in the creating request (the kernel refuses to open a veth end
/// before its pair is complete, `ENOTCONN`): bring it up from a handle in its namespace.
#[derive(Debug, Clone)]
pub struct VethPeer {
    name: String,
    netns: Option<NetNs>,
    mac: Option<MacAddr>,
    mtu: Option<u32>,
}

impl VethPeer {
    /// A peer named `name`, in the same namespace as the first end unless [`VethPeer::netns`].
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            netns: None,
            mac: None,
            mtu: None,
        }
    }
    /// Creates the peer directly inside `ns`.
    pub fn netns(mut self, ns: &NetNs) -> Self {
        self.netns = Some(ns.clone());
        self
    }
    /// Sets the peer's MAC address.
    pub fn mac(mut self, mac: MacAddr) -> Self {
        self.mac = Some(mac);
        self
    }
    /// Sets the peer's MTU.
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }
    /// The peer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn to_message(&self) -> LinkMessage {
        let mut msg = LinkMessage::default();
        msg.attributes
            .push(LinkAttribute::IfName(self.name.clone()));
        if let Some(mac) = self.mac {
            msg.attributes
                .push(LinkAttribute::Address(mac.octets().to_vec()));
        }
        if let Some(mtu) = self.mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(ns) = &self.netns {
            msg.attributes
                .push(LinkAttribute::NetNsFd(ns.fd().as_raw_fd()));
        }
        msg
    }
}

#[derive(Debug, Clone)]
enum SpecKind {
    Bridge { multicast_snooping: Option<bool> },
    Veth(Option<VethPeer>),
    Vxlan(VxlanSpec),
    Macvlan { parent: u32, mode: MacvlanMode },
    Vlan { parent: u32, id: u16 },
}

/// A link to create: `ip link add NAME type KIND ...`.
///
/// ```
/// use wharf::sys::rtnl::{LinkSpec, VethPeer};
/// let br = LinkSpec::bridge("wharf0").mtu(1500).up();
/// assert_eq!(br.describe(), r#"creating bridge "wharf0""#);
/// let veth = LinkSpec::veth("vethab12").peer(VethPeer::new("eth0")).master(4).up();
/// assert_eq!(veth.describe(), r#"creating veth "vethab12" (peer "eth0")"#);
/// ```
#[derive(Debug, Clone)]
pub struct LinkSpec {
    name: String,
    kind: SpecKind,
    mtu: Option<u32>,
    mac: Option<MacAddr>,
    up: bool,
    master: Option<u32>,
    group: Option<u32>,
    netns: Option<NetNs>,
}

impl LinkSpec {
    fn new(name: impl Into<String>, kind: SpecKind) -> Self {
        Self {
            name: name.into(),
            kind,
            mtu: None,
            mac: None,
            up: false,
            master: None,
            group: None,
            netns: None,
        }
    }

    /// A bridge.
    pub fn bridge(name: impl Into<String>) -> Self {
        Self::new(
            name,
            SpecKind::Bridge {
                multicast_snooping: None,
            },
        )
    }

    /// A veth pair; without [`LinkSpec::peer`] the kernel names the peer.
    pub fn veth(name: impl Into<String>) -> Self {
        Self::new(name, SpecKind::Veth(None))
    }

    /// A VXLAN device.
    pub fn vxlan(name: impl Into<String>, spec: VxlanSpec) -> Self {
        Self::new(name, SpecKind::Vxlan(spec))
    }

    /// A macvlan device on `parent` (an index in the handle's namespace). Combine with
    /// [`LinkSpec::netns`] to create it directly inside a container's namespace.
    pub fn macvlan(name: impl Into<String>, parent: u32, mode: MacvlanMode) -> Self {
        Self::new(name, SpecKind::Macvlan { parent, mode })
    }

    /// An 802.1Q vlan device with id `id` on `parent`. Needs the kernel's `8021q` support;
    /// without it the kernel answers [`SysError::NotSupported`].
    pub fn vlan(name: impl Into<String>, parent: u32, id: u16) -> Self {
        Self::new(name, SpecKind::Vlan { parent, id })
    }

    /// Turns the bridge's IGMP/MLD snooping on or off (`ip link add ... type bridge
    /// mcast_snooping 0|1`; only meaningful for [`LinkSpec::bridge`]). The kernel's default is
    /// on; with it, every port that comes up makes the bridge re-arm two multicast query timers
    /// on *every* port, so bringing a port up costs time in proportion to the bridge's size.
    pub fn multicast_snooping(mut self, on: bool) -> Self {
        if let SpecKind::Bridge { multicast_snooping } = &mut self.kind {
            *multicast_snooping = Some(on);
        }
        self
    }

    /// Sets the veth peer (only meaningful for [`LinkSpec::veth`]).
    pub fn peer(mut self, peer: VethPeer) -> Self {
        if let SpecKind::Veth(p) = &mut self.kind {
            *p = Some(peer);
        }
        self
    }
    /// Sets the MTU.
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }
    /// Sets the MAC address.
    pub fn mac(mut self, mac: MacAddr) -> Self {
        self.mac = Some(mac);
        self
    }
    /// Brings the link up as it is created.
    pub fn up(mut self) -> Self {
        self.up = true;
        self
    }
    /// Enslaves the link to the bridge `master` as it is created.
    pub fn master(mut self, master: u32) -> Self {
        self.master = Some(master);
        self
    }
    /// Puts the link in link group `group` (for [`Links::delete_group`]).
    pub fn group(mut self, group: u32) -> Self {
        self.group = Some(group);
        self
    }
    /// Creates the link directly inside `ns` instead of the handle's namespace.
    pub fn netns(mut self, ns: &NetNs) -> Self {
        self.netns = Some(ns.clone());
        self
    }

    /// The name of the link to create.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn kind_name(&self) -> &'static str {
        match self.kind {
            SpecKind::Bridge { .. } => "bridge",
            SpecKind::Veth(_) => "veth",
            SpecKind::Vxlan(_) => "vxlan",
            SpecKind::Macvlan { .. } => "macvlan",
            SpecKind::Vlan { .. } => "vlan",
        }
    }

    /// What creating this link is called in errors, e.g.
    /// `creating veth "vethab12" (peer "eth0" in namespace "c1")`.
    pub fn describe(&self) -> String {
        let mut s = format!("creating {} {:?}", self.kind_name(), self.name);
        match &self.kind {
            SpecKind::Veth(Some(peer)) => {
                s.push_str(&format!(" (peer {:?}", peer.name));
                if let Some(ns) = &peer.netns {
                    s.push_str(&format!(" in {ns}"));
                }
                s.push(')');
            }
            SpecKind::Vxlan(v) => s.push_str(&format!(" (vni {})", v.vni)),
            SpecKind::Macvlan { parent, mode } => {
                s.push_str(&format!(" (on link #{parent}, mode {mode:?})"));
            }
            SpecKind::Vlan { parent, id } => s.push_str(&format!(" (id {id} on link #{parent})")),
            _ => {}
        }
        if let Some(ns) = &self.netns {
            s.push_str(&format!(" into {ns}"));
        }
        s
    }

    /// Validates names and builds the `RTM_NEWLINK` request. Pure: nothing is sent.
    pub(crate) fn request(&self) -> SysResult<Request> {
        check_ifname(&self.name, || self.describe())?;
        if let SpecKind::Veth(Some(peer)) = &self.kind {
            check_ifname(&peer.name, || self.describe())?;
        }
        match &self.kind {
            SpecKind::Vxlan(v) if v.vni >= 1 << 24 => {
                return Err(SysError::InvalidArgument {
                    what: format!("{}: VNI {} does not fit in 24 bits", self.describe(), v.vni),
                });
            }
            SpecKind::Vlan { id, .. } if !(1..4095).contains(id) => {
                return Err(SysError::InvalidArgument {
                    what: format!("{}: vlan id must be 1 to 4094", self.describe()),
                });
            }
            _ => {}
        }

        let mut msg = LinkMessage::default();
        if self.up {
            msg.header.flags = LinkFlags::Up;
            msg.header.change_mask = LinkFlags::Up;
        }
        let attrs = &mut msg.attributes;
        attrs.push(LinkAttribute::IfName(self.name.clone()));
        if let Some(mtu) = self.mtu {
            attrs.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = self.mac {
            attrs.push(LinkAttribute::Address(mac.octets().to_vec()));
        }
        if let Some(master) = self.master {
            attrs.push(LinkAttribute::Controller(master));
        }
        if let Some(group) = self.group {
            attrs.push(LinkAttribute::Group(group));
        }
        if let Some(ns) = &self.netns {
            attrs.push(LinkAttribute::NetNsFd(ns.fd().as_raw_fd()));
        }
        let (kind, data) = match &self.kind {
            SpecKind::Bridge { multicast_snooping } => (
                InfoKind::Bridge,
                multicast_snooping
                    .map(|on| InfoData::Bridge(vec![InfoBridge::MulticastSnooping(on)])),
            ),
            SpecKind::Veth(peer) => (
                InfoKind::Veth,
                peer.as_ref()
                    .map(|p| InfoData::Veth(InfoVeth::Peer(p.to_message()))),
            ),
            SpecKind::Vxlan(v) => (InfoKind::Vxlan, Some(InfoData::Vxlan(v.to_netlink()))),
            SpecKind::Macvlan { parent, mode } => {
                attrs.push(LinkAttribute::Link(*parent));
                (
                    InfoKind::MacVlan,
                    Some(InfoData::MacVlan(vec![InfoMacVlan::Mode(
                        mode.to_netlink(),
                    )])),
                )
            }
            SpecKind::Vlan { parent, id } => {
                attrs.push(LinkAttribute::Link(*parent));
                (
                    InfoKind::Vlan,
                    Some(InfoData::Vlan(vec![InfoVlan::Id(*id)])),
                )
            }
        };
        let mut info = vec![LinkInfo::Kind(kind)];
        info.extend(data.map(LinkInfo::Data));
        attrs.push(LinkAttribute::LinkInfo(info));
        Ok(Request::new(RouteNetlinkMessage::NewLink(msg), CREATE))
    }
}

/// Changes to an existing link, applied in one request: `ip link set ...`.
///
/// ```
/// use wharf::sys::rtnl::LinkChange;
/// let change = LinkChange::new().mtu(1450).up();
/// assert_eq!(change.describe(7), "changing link #7 (up, mtu 1450)");
/// ```
#[derive(Debug, Clone, Default)]
pub struct LinkChange {
    up: Option<bool>,
    mtu: Option<u32>,
    mac: Option<MacAddr>,
    master: Option<u32>,
    name: Option<String>,
    netns: Option<NetNs>,
    group: Option<u32>,
    ipv6_addr_gen: bool,
}

impl LinkChange {
    /// No change yet.
    pub fn new() -> Self {
        Self::default()
    }
    /// Brings the link up.
    pub fn up(mut self) -> Self {
        self.up = Some(true);
        self
    }
    /// Brings the link down.
    pub fn down(mut self) -> Self {
        self.up = Some(false);
        self
    }
    /// Sets the MTU.
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }
    /// Sets the MAC address.
    pub fn mac(mut self, mac: MacAddr) -> Self {
        self.mac = Some(mac);
        self
    }
    /// Enslaves the link to `master`.
    pub fn master(mut self, master: u32) -> Self {
        self.master = Some(master);
        self
    }
    /// Releases the link from its master.
    pub fn nomaster(mut self) -> Self {
        self.master = Some(0);
        self
    }
    /// Renames the link (it must be down).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// Moves the link into `ns`.
    pub fn netns(mut self, ns: &NetNs) -> Self {
        self.netns = Some(ns.clone());
        self
    }
    /// Puts the link in link group `group`.
    pub fn group(mut self, group: u32) -> Self {
        self.group = Some(group);
        self
    }
    /// Stops the kernel from giving the link IPv6 addresses of its own
    /// (`ip link set addrgenmode none`): no link-local address, hence no duplicate address
    /// detection, router solicitation or MLD report when it comes up. Takes effect the next time
    /// the link goes up, so send it before [`LinkChange::up`], in a request of its own (the
    /// kernel applies flags before this).
    pub fn no_ipv6_addr_gen(mut self) -> Self {
        self.ipv6_addr_gen = true;
        self
    }

    /// What applying this change to link `index` is called in errors.
    pub fn describe(&self, index: u32) -> String {
        let mut parts = Vec::new();
        match self.up {
            Some(true) => parts.push("up".to_owned()),
            Some(false) => parts.push("down".to_owned()),
            None => {}
        }
        if let Some(mtu) = self.mtu {
            parts.push(format!("mtu {mtu}"));
        }
        if let Some(mac) = self.mac {
            parts.push(format!("address {mac}"));
        }
        match self.master {
            Some(0) => parts.push("nomaster".to_owned()),
            Some(m) => parts.push(format!("master #{m}")),
            None => {}
        }
        if let Some(name) = &self.name {
            parts.push(format!("name {name:?}"));
        }
        if let Some(ns) = &self.netns {
            parts.push(format!("into {ns}"));
        }
        if let Some(g) = self.group {
            parts.push(format!("group {g}"));
        }
        if self.ipv6_addr_gen {
            parts.push("addrgenmode none".to_owned());
        }
        format!("changing link #{index} ({})", parts.join(", "))
    }

    /// Builds the `RTM_SETLINK` request. Pure: nothing is sent.
    pub(crate) fn request(&self, index: u32) -> SysResult<Request> {
        if let Some(name) = &self.name {
            check_ifname(name, || self.describe(index))?;
        }
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        if let Some(up) = self.up {
            msg.header.change_mask = LinkFlags::Up;
            msg.header.flags = if up {
                LinkFlags::Up
            } else {
                LinkFlags::empty()
            };
        }
        let attrs = &mut msg.attributes;
        if let Some(mtu) = self.mtu {
            attrs.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = self.mac {
            attrs.push(LinkAttribute::Address(mac.octets().to_vec()));
        }
        if let Some(master) = self.master {
            attrs.push(LinkAttribute::Controller(master));
        }
        if let Some(name) = &self.name {
            attrs.push(LinkAttribute::IfName(name.clone()));
        }
        if let Some(ns) = &self.netns {
            attrs.push(LinkAttribute::NetNsFd(ns.fd().as_raw_fd()));
        }
        if let Some(group) = self.group {
            attrs.push(LinkAttribute::Group(group));
        }
        if self.ipv6_addr_gen {
            attrs.push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
            )]));
        }
        Ok(Request::new(RouteNetlinkMessage::SetLink(msg), CHANGE))
    }
}

pub(crate) fn get_by_name_request(name: &str) -> SysResult<Request> {
    check_ifname(name, || format!("looking up link {name:?}"))?;
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
    Ok(Request::new(RouteNetlinkMessage::GetLink(msg), GET))
}

pub(crate) fn get_by_index_request(index: u32) -> Request {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    Request::new(RouteNetlinkMessage::GetLink(msg), GET)
}

pub(crate) fn dump_request(family: AddressFamily) -> Request {
    let mut msg = LinkMessage::default();
    msg.header.interface_family = family;
    Request::new(RouteNetlinkMessage::GetLink(msg), DUMP)
}

pub(crate) fn delete_request(index: u32) -> Request {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    Request::new(RouteNetlinkMessage::DelLink(msg), CHANGE)
}

pub(crate) fn delete_by_name_request(name: &str) -> SysResult<Request> {
    check_ifname(name, || format!("deleting link {name:?}"))?;
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
    Ok(Request::new(RouteNetlinkMessage::DelLink(msg), CHANGE))
}

/// `RTM_SETLINK` with index 0, the link named by `IFLA_IFNAME` (the kernel looks it up; the
/// same name is no rename), and `IFLA_GROUP`.
pub(crate) fn set_group_by_name_request(name: &str, group: u32) -> SysResult<Request> {
    check_ifname(name, || format!("putting link {name:?} in group {group}"))?;
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
    msg.attributes.push(LinkAttribute::Group(group));
    Ok(Request::new(RouteNetlinkMessage::SetLink(msg), CHANGE))
}

/// `RTM_DELLINK` with index 0 and `IFLA_GROUP`: every link of the group goes in one request.
pub(crate) fn delete_group_request(group: u32) -> SysResult<Request> {
    if group == 0 {
        // Group 0 is the default group of every link: never delete "all links".
        return Err(SysError::InvalidArgument {
            what: "deleting link group 0: the default group holds every link".into(),
        });
    }
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::Group(group));
    Ok(Request::new(RouteNetlinkMessage::DelLink(msg), CHANGE))
}

/// `RTM_SETLINK` (family `AF_BRIDGE`) with `IFLA_PROTINFO { IFLA_BRPORT_MODE }`.
pub(crate) fn hairpin_request(index: u32, on: bool) -> Request {
    let mut msg = LinkMessage::default();
    msg.header.interface_family = AddressFamily::Bridge;
    msg.header.index = index;
    msg.attributes.push(LinkAttribute::ProtoInfoBridge(vec![
        LinkProtoInfoBridge::Other(DefaultNla::new(IFLA_BRPORT_MODE, vec![u8::from(on)])),
    ]));
    Request::new(RouteNetlinkMessage::SetLink(msg), CHANGE)
}

fn hairpin_of(msg: &LinkMessage) -> Option<bool> {
    msg.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::ProtoInfoBridge(infos) => infos.iter().find_map(|info| match info {
            LinkProtoInfoBridge::Other(nla) if nla.kind() == IFLA_BRPORT_MODE => {
                let mut value = vec![0u8; nla.value_len()];
                nla.emit_value(&mut value);
                value.first().map(|v| *v != 0)
            }
            _ => None,
        }),
        _ => None,
    })
}

fn expect_link(msg: RouteNetlinkMessage, what: String) -> SysResult<Link> {
    match msg {
        RouteNetlinkMessage::NewLink(m) => Ok(Link::from_message(&m)),
        other => Err(SysError::Protocol {
            what,
            detail: format!(
                "expected RTM_NEWLINK, got message type {}",
                other.message_type()
            ),
        }),
    }
}

/// Link operations of a [`Handle`]: `ip link`.
#[derive(Debug, Clone, Copy)]
pub struct Links<'a> {
    handle: &'a Handle,
}

impl<'a> Links<'a> {
    pub(crate) fn new(handle: &'a Handle) -> Self {
        Self { handle }
    }

    /// Creates a link: `ip link add`. Fails with [`SysError::AlreadyExists`] if the name (or the
    /// veth peer's name in its namespace) is taken, with [`SysError::InvalidName`] before sending
    /// anything if a name is invalid. The kernel creates all or nothing.
    ///
    /// ```no_run
    /// # async fn demo(h: &wharf::sys::rtnl::Handle, ns: &wharf::sys::NetNs) -> wharf::sys::SysResult<()> {
    /// use wharf::sys::rtnl::{LinkSpec, VethPeer};
    /// let br = h.link().get("wharf0").await?;
    /// let mac = "02:42:ac:11:00:02".parse().unwrap();
    /// h.link()
    ///     .add(LinkSpec::veth("vethab12").peer(VethPeer::new("eth0").netns(ns).mac(mac)).master(br.index).up())
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn add(&self, spec: LinkSpec) -> SysResult<()> {
        let req = spec.request()?;
        self.handle.ack(req, || spec.describe()).await
    }

    /// Looks a link up by name: `ip link show NAME`. [`SysError::NotFound`] if absent.
    pub async fn get(&self, name: &str) -> SysResult<Link> {
        let req = get_by_name_request(name)?;
        let what = || format!("looking up link {name:?}");
        let msg = self.handle.get_one(req, what).await?;
        expect_link(msg, self.handle.what(what))
    }

    /// Looks a link up by index. [`SysError::NotFound`] if absent.
    pub async fn get_by_index(&self, index: u32) -> SysResult<Link> {
        let what = || format!("looking up link #{index}");
        let msg = self
            .handle
            .get_one(get_by_index_request(index), what)
            .await?;
        expect_link(msg, self.handle.what(what))
    }

    /// Lists every link of the namespace: `ip link show`.
    pub async fn list(&self) -> SysResult<Vec<Link>> {
        let msgs = self
            .handle
            .dump(dump_request(AddressFamily::Unspec), || {
                "listing links".into()
            })
            .await?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(m) => Some(Link::from_message(m)),
                _ => None,
            })
            .collect())
    }

    /// Deletes a link by index: `ip link del`. Deleting one end of a veth deletes both.
    pub async fn delete(&self, index: u32) -> SysResult<()> {
        self.handle
            .ack(delete_request(index), || format!("deleting link #{index}"))
            .await
    }

    /// Deletes a link by name. [`SysError::NotFound`] if absent.
    pub async fn delete_by_name(&self, name: &str) -> SysResult<()> {
        let req = delete_by_name_request(name)?;
        self.handle
            .ack(req, || format!("deleting link {name:?}"))
            .await
    }

    /// Deletes every link of link group `group` in one request (`ip link del group N`): used to
    /// detach many endpoints at once. [`SysError::NotFound`] when the group is empty; group 0
    /// (every link's default) is refused before sending.
    pub async fn delete_group(&self, group: u32) -> SysResult<()> {
        let req = delete_group_request(group)?;
        self.handle
            .ack(req, || format!("deleting link group {group}"))
            .await
    }

    /// Applies several changes to link `index` in one request.
    pub async fn set(&self, index: u32, change: LinkChange) -> SysResult<()> {
        let req = change.request(index)?;
        self.handle.ack(req, || change.describe(index)).await
    }

    /// `ip link set up`.
    pub async fn set_up(&self, index: u32) -> SysResult<()> {
        self.set(index, LinkChange::new().up()).await
    }

    /// `ip link set down`.
    pub async fn set_down(&self, index: u32) -> SysResult<()> {
        self.set(index, LinkChange::new().down()).await
    }

    /// `ip link set mtu`.
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> SysResult<()> {
        self.set(index, LinkChange::new().mtu(mtu)).await
    }

    /// `ip link set address`.
    pub async fn set_mac(&self, index: u32, mac: MacAddr) -> SysResult<()> {
        self.set(index, LinkChange::new().mac(mac)).await
    }

    /// `ip link set master`.
    pub async fn set_master(&self, index: u32, master: u32) -> SysResult<()> {
        self.set(index, LinkChange::new().master(master)).await
    }

    /// `ip link set nomaster`.
    pub async fn set_nomaster(&self, index: u32) -> SysResult<()> {
        self.set(index, LinkChange::new().nomaster()).await
    }

    /// `ip link set name` (the link must be down).
    pub async fn set_name(&self, index: u32, name: &str) -> SysResult<()> {
        self.set(index, LinkChange::new().name(name)).await
    }

    /// `ip link set netns`.
    pub async fn set_netns(&self, index: u32, ns: &NetNs) -> SysResult<()> {
        self.set(index, LinkChange::new().netns(ns)).await
    }

    /// `ip link set group`.
    pub async fn set_group(&self, index: u32, group: u32) -> SysResult<()> {
        self.set(index, LinkChange::new().group(group)).await
    }

    /// `ip link set dev NAME group GROUP`, by name in one request (no lookup first).
    /// [`SysError::NotFound`] if there is no such link.
    pub async fn set_group_by_name(&self, name: &str, group: u32) -> SysResult<()> {
        let req = set_group_by_name_request(name, group)?;
        self.handle
            .ack(req, || format!("putting link {name:?} in group {group}"))
            .await
    }

    /// Sets the hairpin mode of bridge port `index` (`bridge link set dev X hairpin on`).
    pub async fn set_hairpin(&self, index: u32, on: bool) -> SysResult<()> {
        self.handle
            .ack(hairpin_request(index, on), || {
                format!(
                    "setting hairpin {} on bridge port #{index}",
                    if on { "on" } else { "off" }
                )
            })
            .await
    }

    /// The hairpin mode of bridge port `index`. [`SysError::NotFound`] if it is not a port.
    pub async fn hairpin(&self, index: u32) -> SysResult<bool> {
        let what = || format!("reading hairpin mode of bridge port #{index}");
        let msgs = self
            .handle
            .dump(dump_request(AddressFamily::Bridge), what)
            .await?;
        msgs.iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewLink(m) if m.header.index == index => hairpin_of(m),
                _ => None,
            })
            .ok_or_else(|| SysError::NotFound {
                what: self.handle.what(what),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::SysErrorKind;

    fn new_link(req: &Request) -> &LinkMessage {
        match &req.message {
            RouteNetlinkMessage::NewLink(m) => m,
            other => panic!("not a NEWLINK: {other:?}"),
        }
    }

    fn info(msg: &LinkMessage) -> &Vec<LinkInfo> {
        msg.attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(i) => Some(i),
                _ => None,
            })
            .expect("IFLA_LINKINFO")
    }

    #[test]
    fn names_are_checked_before_sending() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "eth0:1",
            "a b",
            "a\0b",
            "sixteen-bytes-xx",
        ] {
            let e = LinkSpec::bridge(bad).request().unwrap_err();
            assert_eq!(e.kind(), SysErrorKind::InvalidName, "{bad:?}");
        }
        assert!(LinkSpec::bridge("fifteen-bytes-x").request().is_ok());
        let e = LinkSpec::veth("ok")
            .peer(VethPeer::new("peer-name-too-long"))
            .request()
            .unwrap_err();
        assert_eq!(e.kind(), SysErrorKind::InvalidName);
        assert!(e.to_string().contains("peer-name-too-long"), "{e}");
    }

    #[test]
    fn bridge_message() {
        let req = LinkSpec::bridge("wharf0").mtu(1500).up().request().unwrap();
        assert_eq!(req.flags, CREATE);
        let m = new_link(&req);
        assert!(m.header.flags.contains(LinkFlags::Up));
        assert!(m.header.change_mask.contains(LinkFlags::Up));
        assert!(
            m.attributes
                .contains(&LinkAttribute::IfName("wharf0".into()))
        );
        assert!(m.attributes.contains(&LinkAttribute::Mtu(1500)));
        assert_eq!(info(m), &vec![LinkInfo::Kind(InfoKind::Bridge)]);
    }

    #[test]
    fn bridge_without_multicast_snooping() {
        let req = LinkSpec::bridge("br0")
            .multicast_snooping(false)
            .request()
            .unwrap();
        assert_eq!(
            info(new_link(&req)),
            &vec![
                LinkInfo::Kind(InfoKind::Bridge),
                LinkInfo::Data(InfoData::Bridge(vec![InfoBridge::MulticastSnooping(false)])),
            ]
        );
        // Meaningless for other kinds: ignored.
        let veth = LinkSpec::veth("v0")
            .multicast_snooping(false)
            .request()
            .unwrap();
        assert_eq!(info(new_link(&veth)), &vec![LinkInfo::Kind(InfoKind::Veth)]);
    }

    #[test]
    fn veth_peer_in_namespace_with_master_and_up_in_one_message() {
        let ns = NetNs::current().unwrap();
        let mac: MacAddr = "02:42:ac:11:00:02".parse().unwrap();
        let spec = LinkSpec::veth("vethab12")
            .peer(VethPeer::new("eth0").netns(&ns).mac(mac).mtu(1450))
            .master(4)
            .up();
        let req = spec.request().unwrap();
        assert_eq!(req.flags, CREATE);
        let m = new_link(&req);
        assert!(m.header.flags.contains(LinkFlags::Up));
        assert!(m.attributes.contains(&LinkAttribute::Controller(4)));
        let infos = info(m);
        assert_eq!(infos[0], LinkInfo::Kind(InfoKind::Veth));
        let LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))) = &infos[1] else {
            panic!("no peer: {infos:?}");
        };
        assert!(
            peer.attributes
                .contains(&LinkAttribute::IfName("eth0".into()))
        );
        assert!(
            peer.attributes
                .contains(&LinkAttribute::Address(mac.octets().to_vec()))
        );
        assert!(peer.attributes.contains(&LinkAttribute::Mtu(1450)));
        assert!(
            peer.attributes
                .contains(&LinkAttribute::NetNsFd(ns.fd().as_raw_fd()))
        );
        // The whole thing serialises into one netlink message.
        let wire = req.to_netlink();
        let mut buf = vec![0; wire.buffer_len()];
        wire.serialize(&mut buf);
        assert_eq!(
            spec.describe(),
            format!(r#"creating veth "vethab12" (peer "eth0" in {ns})"#)
        );
    }

    #[test]
    fn macvlan_into_namespace() {
        let ns = NetNs::current().unwrap();
        let req = LinkSpec::macvlan("mv0", 3, MacvlanMode::Private)
            .netns(&ns)
            .request()
            .unwrap();
        let m = new_link(&req);
        assert!(m.attributes.contains(&LinkAttribute::Link(3)));
        assert!(
            m.attributes
                .contains(&LinkAttribute::NetNsFd(ns.fd().as_raw_fd()))
        );
        assert_eq!(
            info(m)[1],
            LinkInfo::Data(InfoData::MacVlan(vec![InfoMacVlan::Mode(
                netlink_packet_route::link::MacVlanMode::Private
            )]))
        );
    }

    #[test]
    fn vxlan_message() {
        let spec = VxlanSpec::new(42)
            .local("10.0.0.1".parse().unwrap())
            .underlay(2)
            .ttl(64);
        let req = LinkSpec::vxlan("vx0", spec).request().unwrap();
        let LinkInfo::Data(InfoData::Vxlan(v)) = &info(new_link(&req))[1] else {
            panic!("no vxlan data");
        };
        for want in [
            InfoVxlan::Id(42),
            InfoVxlan::Local("10.0.0.1".parse().unwrap()),
            InfoVxlan::Link(2),
            InfoVxlan::Port(4789),
            InfoVxlan::Learning(false),
            InfoVxlan::Ttl(64),
        ] {
            assert!(v.contains(&want), "{want:?} missing in {v:?}");
        }
        let e = LinkSpec::vxlan("vx0", VxlanSpec::new(1 << 24))
            .request()
            .unwrap_err();
        assert_eq!(e.kind(), SysErrorKind::InvalidArgument);
    }

    #[test]
    fn vlan_message() {
        let req = LinkSpec::vlan("eth0.100", 2, 100).request().unwrap();
        let m = new_link(&req);
        assert!(m.attributes.contains(&LinkAttribute::Link(2)));
        assert_eq!(
            info(m),
            &vec![
                LinkInfo::Kind(InfoKind::Vlan),
                LinkInfo::Data(InfoData::Vlan(vec![InfoVlan::Id(100)]))
            ]
        );
        assert!(LinkSpec::vlan("v", 2, 4095).request().is_err());
    }

    #[test]
    fn group_delete_is_one_message_and_never_group_zero() {
        let req = delete_group_request(7).unwrap();
        let RouteNetlinkMessage::DelLink(m) = &req.message else {
            panic!()
        };
        assert_eq!(m.header.index, 0);
        assert_eq!(m.attributes, vec![LinkAttribute::Group(7)]);
        assert_eq!(req.flags, CHANGE);
        assert_eq!(
            delete_group_request(0).unwrap_err().kind(),
            SysErrorKind::InvalidArgument
        );
    }

    #[test]
    fn change_message() {
        let req = LinkChange::new()
            .down()
            .nomaster()
            .name("eth1")
            .request(9)
            .unwrap();
        let RouteNetlinkMessage::SetLink(m) = &req.message else {
            panic!()
        };
        assert_eq!(m.header.index, 9);
        assert_eq!(m.header.change_mask, LinkFlags::Up);
        assert!(!m.header.flags.contains(LinkFlags::Up));
        assert!(m.attributes.contains(&LinkAttribute::Controller(0)));
        assert!(m.attributes.contains(&LinkAttribute::IfName("eth1".into())));
    }

    #[test]
    fn hairpin_message_round_trips() {
        let req = hairpin_request(5, true);
        let RouteNetlinkMessage::SetLink(m) = &req.message else {
            panic!()
        };
        assert_eq!(m.header.interface_family, AddressFamily::Bridge);
        assert_eq!(hairpin_of(m), Some(true));
    }
}

/// The link operations drivers rely on, as a trait so that upper layers can substitute a mock
/// (`MockLinkOps`, generated by `mockall` in this crate's unit tests) and inject kernel failures.
/// [`Handle`] implements it by forwarding to [`Handle::link`].
#[cfg_attr(test, mockall::automock)]
#[async_trait::async_trait]
pub trait LinkOps: Send + Sync {
    /// See [`Links::add`].
    async fn add_link(&self, spec: LinkSpec) -> SysResult<()>;
    /// See [`Links::get`].
    async fn get_link(&self, name: &str) -> SysResult<Link>;
    /// See [`Links::list`].
    async fn list_links(&self) -> SysResult<Vec<Link>>;
    /// See [`Links::set`].
    async fn set_link(&self, index: u32, change: LinkChange) -> SysResult<()>;
    /// See [`Links::delete`].
    async fn delete_link(&self, index: u32) -> SysResult<()>;
    /// See [`Links::delete_group`].
    async fn delete_link_group(&self, group: u32) -> SysResult<()>;
}

#[async_trait::async_trait]
impl LinkOps for Handle {
    async fn add_link(&self, spec: LinkSpec) -> SysResult<()> {
        self.link().add(spec).await
    }
    async fn get_link(&self, name: &str) -> SysResult<Link> {
        self.link().get(name).await
    }
    async fn list_links(&self) -> SysResult<Vec<Link>> {
        self.link().list().await
    }
    async fn set_link(&self, index: u32, change: LinkChange) -> SysResult<()> {
        self.link().set(index, change).await
    }
    async fn delete_link(&self, index: u32) -> SysResult<()> {
        self.link().delete(index).await
    }
    async fn delete_link_group(&self, group: u32) -> SysResult<()> {
        self.link().delete_group(group).await
    }
}

#[cfg(test)]
mod mock_tests {
    use super::*;
    use crate::sys::SysErrorKind;

    /// What a driver's rollback would look like: create, then undo when a later step fails.
    async fn create_then_fail(ops: &dyn LinkOps) -> SysResult<()> {
        ops.add_link(LinkSpec::bridge("br0")).await?;
        let br = ops.get_link("br0").await?;
        ops.delete_link(br.index).await?;
        Err(SysError::NotSupported {
            what: "later step".into(),
        })
    }

    #[tokio::test]
    async fn failures_can_be_injected() {
        let mut ops = MockLinkOps::new();
        ops.expect_add_link().returning(|spec| {
            Err(SysError::AlreadyExists {
                what: spec.describe(),
            })
        });
        let e = create_then_fail(&ops).await.unwrap_err();
        assert_eq!(e.kind(), SysErrorKind::AlreadyExists);
        assert_eq!(e.to_string(), r#"creating bridge "br0": already exists"#);

        let mut ops = MockLinkOps::new();
        ops.expect_add_link().returning(|_| Ok(()));
        ops.expect_get_link().returning(|name| {
            Err(SysError::NotFound {
                what: format!("looking up link {name:?}"),
            })
        });
        ops.expect_delete_link().never();
        let e = create_then_fail(&ops).await.unwrap_err();
        assert!(e.is_not_found());
    }
}
