//! Typed driver options, and their rendering as Docker's option keys for inspect output.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

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
    /// VXLAN across hosts, coordinated through the cluster store (cluster mode only).
    Overlay,
}

impl DriverKind {
    /// Whether networks of this driver get subnets and endpoints get addresses from IPAM.
    pub fn needs_addresses(self) -> bool {
        !matches!(self, Self::Host | Self::Null)
    }

    /// The name Docker uses (`bridge`, `host`, `null`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bridge => "bridge",
            Self::Host => "host",
            Self::Null => "null",
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
            Self::Overlay(_) => DriverKind::Overlay,
        }
    }

    /// The options under Docker's keys, as `docker network inspect` shows them.
    pub fn docker_options(&self) -> BTreeMap<String, String> {
        match self {
            Self::Bridge(b) => b.docker_options(),
            Self::Overlay(o) => o.docker_options(),
            Self::Host | Self::Null => BTreeMap::new(),
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
        out
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
