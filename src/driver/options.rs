//! Typed driver options, and their rendering as Docker's option keys for inspect output.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

pub use crate::sys::rtnl::MacvlanMode;

/// The network drivers wharf has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// A Linux bridge per network, veth pairs to the sandboxes.
    Bridge,
    /// The sandbox shares the host's namespace.
    Host,
    /// Loopback only (Docker's `none` network, driver `null`).
    Null,
    /// A macvlan device per endpoint on a parent interface of the host.
    Macvlan,
    /// VXLAN across hosts, coordinated through the cluster store (cluster mode only).
    Overlay,
}

impl DriverKind {
    /// Whether networks of this driver get subnets and endpoints get addresses from IPAM.
    pub fn needs_addresses(self) -> bool {
        !matches!(self, Self::Host | Self::Null)
    }

    /// The name Docker uses (`bridge`, `host`, `null`, `macvlan`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bridge => "bridge",
            Self::Host => "host",
            Self::Null => "null",
            Self::Macvlan => "macvlan",
            Self::Overlay => "overlay",
        }
    }

    /// Whether networks of this driver are shared by the hosts of a cluster (Docker's `swarm`
    /// scope) rather than local to one host.
    pub fn is_cluster_scoped(self) -> bool {
        matches!(self, Self::Overlay)
    }
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A network's driver with its typed options.
///
/// ```
/// use wharf::driver::{BridgeOptions, DriverOptions};
/// let opts: DriverOptions = serde_json::from_str(r#"{"bridge": {"mtu": 1400}}"#).unwrap();
/// assert_eq!(opts, DriverOptions::Bridge(BridgeOptions { mtu: Some(1400), ..Default::default() }));
/// // Unknown options are an error, not silently ignored.
/// assert!(serde_json::from_str::<DriverOptions>(r#"{"bridge": {"mtux": 1400}}"#).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum DriverOptions {
    /// The bridge driver.
    Bridge(BridgeOptions),
    /// The host driver (no options).
    Host,
    /// The null driver (no options).
    Null,
    /// The macvlan driver.
    Macvlan(MacvlanOptions),
    /// The overlay driver.
    Overlay(OverlayOptions),
}

impl Default for DriverOptions {
    fn default() -> Self {
        Self::Bridge(BridgeOptions::default())
    }
}

impl DriverOptions {
    /// Which driver.
    pub fn kind(&self) -> DriverKind {
        match self {
            Self::Bridge(_) => DriverKind::Bridge,
            Self::Host => DriverKind::Host,
            Self::Null => DriverKind::Null,
            Self::Macvlan(_) => DriverKind::Macvlan,
            Self::Overlay(_) => DriverKind::Overlay,
        }
    }

    /// The options under Docker's keys, as `docker network inspect` shows them.
    pub fn docker_options(&self) -> BTreeMap<String, String> {
        match self {
            Self::Bridge(b) => b.docker_options(),
            Self::Host | Self::Null => BTreeMap::new(),
            Self::Macvlan(m) => m.docker_options(),
            Self::Overlay(o) => o.docker_options(),
        }
    }
}

/// Options of a bridge network (Docker's `com.docker.network.bridge.*` and `driver.mtu`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeOptions {
    /// The bridge device's name. Default: `wharf0` for the default network, `br-<12 hex of the
    /// id>` for others.
    pub name: Option<String>,
    /// MTU of the bridge and its veths. Default 1500.
    pub mtu: Option<u32>,
    /// Inter-container communication on this bridge. Default on.
    pub icc: Option<bool>,
    /// Masquerade traffic leaving the bridge's subnet. Default on.
    pub masquerade: Option<bool>,
    /// The default host address for published ports. Default all addresses.
    pub host_binding_ip: Option<IpAddr>,
    /// IGMP/MLD snooping on the bridge. Default **off** (the kernel's default, which Docker
    /// keeps, is on). Without a multicast querier on the network (a Docker network has none)
    /// the bridge floods multicast to every port either way, so turning it off changes no
    /// traffic; it does make attaching cheap on a big bridge: with snooping on, every port
    /// coming up re-arms the bridge's query timers on every port. Turn it on for a network
    /// whose containers run a querier and want the bridge to filter multicast by group.
    /// Not a Docker option: shown in inspect as `wharf.bridge.multicast_snooping` when set.
    pub multicast_snooping: Option<bool>,
    /// Whether this is the default `bridge` network (set by the controller only).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub default_bridge: bool,
}

/// The MTU of a bridge network when none is given.
pub const DEFAULT_MTU: u32 = 1500;

impl BridgeOptions {
    /// The MTU to use.
    pub fn mtu(&self) -> u32 {
        self.mtu.unwrap_or(DEFAULT_MTU)
    }

    /// Whether containers on the bridge may talk to each other.
    pub fn icc(&self) -> bool {
        self.icc.unwrap_or(true)
    }

    /// Whether traffic leaving the subnet is masqueraded.
    pub fn masquerade(&self) -> bool {
        self.masquerade.unwrap_or(true)
    }

    /// Whether the bridge snoops IGMP/MLD (see [`BridgeOptions::multicast_snooping`]).
    pub fn multicast_snooping(&self) -> bool {
        self.multicast_snooping.unwrap_or(false)
    }

    fn docker_options(&self) -> BTreeMap<String, String> {
        const P: &str = "com.docker.network.bridge.";
        let mut out = BTreeMap::new();
        let mut put = |k: String, v: String| {
            out.insert(k, v);
        };
        if self.default_bridge {
            // The default network shows its effective settings, as Docker's does.
            put(format!("{P}default_bridge"), "true".into());
            put(format!("{P}enable_icc"), self.icc().to_string());
            put(
                format!("{P}enable_ip_masquerade"),
                self.masquerade().to_string(),
            );
            put(
                format!("{P}host_binding_ipv4"),
                self.host_binding_ip
                    .map_or_else(|| "0.0.0.0".into(), |ip| ip.to_string()),
            );
            put(format!("{P}name"), self.name.clone().unwrap_or_default());
            put(
                "com.docker.network.driver.mtu".into(),
                self.mtu().to_string(),
            );
            return out;
        }
        if let Some(name) = &self.name {
            put(format!("{P}name"), name.clone());
        }
        if let Some(icc) = self.icc {
            put(format!("{P}enable_icc"), icc.to_string());
        }
        if let Some(m) = self.masquerade {
            put(format!("{P}enable_ip_masquerade"), m.to_string());
        }
        if let Some(ip) = self.host_binding_ip {
            put(format!("{P}host_binding_ipv4"), ip.to_string());
        }
        if let Some(mtu) = self.mtu {
            put("com.docker.network.driver.mtu".into(), mtu.to_string());
        }
        if let Some(on) = self.multicast_snooping {
            put("wharf.bridge.multicast_snooping".into(), on.to_string());
        }
        out
    }
}

/// Options of a macvlan network (Docker's `parent`, `macvlan_mode` and `driver.mtu`).
///
/// The subnet, gateway (a router on the segment, never configured on any interface by wharf),
/// ip-range and auxiliary addresses (other machines on the segment) are the network's IPAM
/// configuration, as for every driver.
///
/// ```
/// use wharf::driver::{DriverOptions, MacvlanMode, MacvlanOptions};
/// let opts: DriverOptions =
///     serde_json::from_str(r#"{"macvlan": {"parent": "eth0.10", "mode": "vepa"}}"#).unwrap();
/// let DriverOptions::Macvlan(m) = &opts else { unreachable!() };
/// assert_eq!((m.parent.as_deref(), m.mode), (Some("eth0.10"), MacvlanMode::Vepa));
/// assert_eq!(opts.docker_options()["macvlan_mode"], "vepa");
/// // An unknown mode is an error, not a silent default.
/// assert!(serde_json::from_str::<DriverOptions>(r#"{"macvlan": {"mode": "hairpin"}}"#).is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MacvlanOptions {
    /// The interface of the host namespace the macvlans hang off. Required unless the network
    /// is internal. `name.VLAN` (e.g. `eth0.10`) names an 802.1Q sub-interface of `name`, which
    /// wharf creates when it is missing. Without a parent, an internal network gets a private
    /// parent that wharf keeps in the host namespace (a bridge without ports, `mv-<12 hex of
    /// the id>`): its containers reach each other and nothing else.
    pub parent: Option<String>,
    /// The macvlan mode (default `bridge`).
    pub mode: MacvlanMode,
    /// MTU of the endpoints; at most the parent's (default: the parent's).
    pub mtu: Option<u32>,
    /// Lets the host reach the network's containers, which the kernel never delivers through
    /// the parent itself (see [`HostAccess`]). Off by default, as in Docker.
    pub host_access: Option<HostAccess>,
    /// Set by wharf, not by callers (ignored on input): the parent is an 802.1Q sub-interface
    /// that wharf created, to be deleted with the last network that uses it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub created_parent: bool,
}

/// The host's own way to its macvlan containers: a macvlan interface in bridge mode on the same
/// parent, in the host namespace (`mh-<12 hex of the network id>`), holding `address` (as a
/// /32, and `address_v6` as a /128), and a host route to each container's address through it.
///
/// `address` must be in the network's subnet and must not be handed out to a container:
/// reserve it with an auxiliary address of the network's IPAM configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostAccess {
    /// The host's IPv4 address on the segment.
    pub address: Ipv4Addr,
    /// The host's IPv6 address on the segment, for IPv6 containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_v6: Option<Ipv6Addr>,
}

impl MacvlanOptions {
    /// Options with `parent` and everything else defaulted (bridge mode).
    pub fn parent(parent: impl Into<String>) -> Self {
        Self {
            parent: Some(parent.into()),
            ..Self::default()
        }
    }

    /// Sets the mode.
    pub fn mode(mut self, mode: MacvlanMode) -> Self {
        self.mode = mode;
        self
    }

    fn docker_options(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if let Some(parent) = &self.parent {
            out.insert("parent".into(), parent.clone());
        }
        out.insert("macvlan_mode".into(), mode_name(self.mode).into());
        if let Some(mtu) = self.mtu {
            out.insert("com.docker.network.driver.mtu".into(), mtu.to_string());
        }
        if let Some(h) = &self.host_access {
            out.insert("wharf.macvlan.host_access".into(), h.address.to_string());
            if let Some(v6) = h.address_v6 {
                out.insert("wharf.macvlan.host_access_v6".into(), v6.to_string());
            }
        }
        out
    }
}

/// Docker's name of a macvlan mode.
pub(crate) fn mode_name(mode: MacvlanMode) -> &'static str {
    match mode {
        MacvlanMode::Bridge => "bridge",
        MacvlanMode::Private => "private",
        MacvlanMode::Vepa => "vepa",
        MacvlanMode::Passthru => "passthru",
    }
}

/// Options of an overlay network (Docker's `com.docker.network.driver.overlay.vxlanid_list`
/// and `driver.mtu`, plus the VXLAN port Docker sets cluster-wide with `--data-path-port`).
///
/// ```
/// use wharf::driver::{DriverOptions, OverlayOptions};
/// let opts: DriverOptions = serde_json::from_str(r#"{"overlay": {"vni": 4200}}"#).unwrap();
/// assert_eq!(opts, DriverOptions::Overlay(OverlayOptions { vni: Some(4200), ..Default::default() }));
/// assert_eq!(OverlayOptions::default().port(), 4789);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverlayOptions {
    /// The VXLAN network identifier. Default: the first free one from 4096 up, allocated in
    /// the cluster store when the network is created (and then recorded here, so that every
    /// host uses the same).
    pub vni: Option<u32>,
    /// MTU of the network's devices and of the containers' interfaces. Default: the underlay
    /// device's MTU minus the 50 bytes of VXLAN encapsulation.
    pub mtu: Option<u32>,
    /// The UDP port of the VXLAN tunnels. Default 4789 (IANA). Every host uses the network's.
    pub port: Option<u16>,
}

/// The bytes VXLAN adds to a frame on an IPv4 underlay (outer IPv4 20 + UDP 8 + VXLAN 8 +
/// inner Ethernet 14): overlay MTU = underlay MTU - 50.
pub const VXLAN_OVERHEAD: u32 = 50;

/// The first VNI handed out to overlay networks (Docker's).
pub const FIRST_VNI: u32 = 4096;

/// The largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

impl OverlayOptions {
    /// The VXLAN UDP port.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(crate::sys::rtnl::VXLAN_PORT)
    }

    fn docker_options(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if let Some(vni) = self.vni {
            out.insert(
                "com.docker.network.driver.overlay.vxlanid_list".into(),
                vni.to_string(),
            );
        }
        if let Some(mtu) = self.mtu {
            out.insert("com.docker.network.driver.mtu".into(), mtu.to_string());
        }
        out
    }
}
