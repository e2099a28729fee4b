//! What callers ask for (specs) and what the controller remembers (records).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::driver::{DriverOptions, EndpointInfo, NetworkInfo};
use crate::ipam::IpamConfig;
use crate::sys::rtnl::MacAddr;

/// How to create a network (`docker network create`).
///
/// ```
/// use wharf::controller::NetworkSpec;
/// use wharf::driver::{BridgeOptions, DriverOptions};
/// let spec = NetworkSpec::new("alpine-net");
/// assert_eq!(spec.driver, DriverOptions::Bridge(BridgeOptions::default()));
/// let json = r#"{"name": "db", "internal": true, "ipam": [{"Subnet": "10.9.0.0/24"}]}"#;
/// let spec: NetworkSpec = serde_json::from_str(json).unwrap();
/// assert!(spec.internal);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSpec {
    /// The unique name.
    pub name: String,
    /// The driver and its options (default: bridge).
    pub driver: DriverOptions,
    /// Address configuration: at most one IPv4 and one IPv6 entry; missing ones come from the
    /// default pools.
    pub ipam: Vec<IpamConfig>,
    /// No traffic beyond the subnet: no default route, no NAT, no published ports.
    pub internal: bool,
    /// Standalone sandboxes may join (meaningful for overlay networks).
    pub attachable: bool,
    /// Give the network an IPv6 subnet too.
    pub enable_ipv6: bool,
    /// User labels, shown by inspect.
    pub labels: BTreeMap<String, String>,
}

impl NetworkSpec {
    /// A bridge network with everything defaulted.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Uses another driver.
    pub fn driver(mut self, driver: DriverOptions) -> Self {
        self.driver = driver;
        self
    }

    /// Adds an IPAM entry (a subnet, range, gateway...).
    pub fn ipam(mut self, config: IpamConfig) -> Self {
        self.ipam.push(config);
        self
    }

    /// Makes the network internal.
    pub fn internal(mut self) -> Self {
        self.internal = true;
        self
    }

    /// Lets standalone sandboxes join (an overlay's `--attachable`).
    pub fn attachable(mut self) -> Self {
        self.attachable = true;
        self
    }

    /// Enables IPv6.
    pub fn ipv6(mut self) -> Self {
        self.enable_ipv6 = true;
        self
    }
}

/// Which network namespace a sandbox uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxNamespace {
    /// wharf creates a named namespace (`/run/netns/<prefix><sandbox name>`, which
    /// `ip netns exec` can enter) and deletes it with the sandbox.
    #[default]
    New,
    /// A namespace the runtime already has (e.g. `/proc/PID/ns/net`); never deleted by wharf.
    Path(PathBuf),
    /// The host's namespace itself (host networking).
    Host,
}

/// How to create a sandbox (a container's network namespace).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxSpec {
    /// The unique name (the container's name).
    pub name: String,
    /// Which namespace.
    pub namespace: SandboxNamespace,
    /// The hostname written into its `hosts` file (default: the name).
    pub hostname: Option<String>,
}

impl SandboxSpec {
    /// A sandbox in a new namespace of its own.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// A sandbox on the host's namespace (host networking).
    pub fn host(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: SandboxNamespace::Host,
            hostname: None,
        }
    }
}

/// How to connect a sandbox to a network (`docker network connect` options).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointSpec {
    /// A static IPv4 address (must be free and inside the network's range).
    pub ipv4: Option<Ipv4Addr>,
    /// A static IPv6 address.
    pub ipv6: Option<Ipv6Addr>,
    /// The MAC address (default `02:42` + the IPv4 address).
    pub mac: Option<MacAddr>,
    /// Network-scoped DNS aliases.
    pub aliases: Vec<String>,
    /// The interface name inside the sandbox (default the next free `ethN`).
    pub ifname: Option<String>,
    /// Ports to publish on the host.
    pub ports: Vec<crate::driver::PortMapping>,
}

/// Where a stored object is in its life: a record is its own journal entry (see
/// `controller/journal.rs`). Records written before the journal existed have no status and are
/// active.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    /// Created, and its kernel objects made.
    #[default]
    Active,
    /// Intent: the kernel objects are being made (after a crash: finished if they all exist,
    /// else undone).
    Pending,
    /// Intent: the kernel objects are being removed (after a crash: the removal is finished).
    Removing,
}

impl Status {
    pub fn is_active(&self) -> bool {
        *self == Status::Active
    }
}

/// The stored record of a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NetworkRecord {
    pub info: NetworkInfo,
    #[serde(default, skip_serializing_if = "Status::is_active")]
    pub status: Status,
    pub created: String,
    pub attachable: bool,
    pub labels: BTreeMap<String, String>,
    /// One of the networks wharf makes itself (`bridge`, `host`, `none`).
    pub predefined: bool,
}

/// Where a stored sandbox's namespace is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum StoredNamespace {
    /// Created by wharf under this name; deleted with the sandbox.
    Owned(String),
    /// Handed in by the runtime.
    Path(PathBuf),
    /// The host's namespace.
    Host,
}

/// The stored record of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SandboxRecord {
    pub id: String,
    #[serde(default, skip_serializing_if = "Status::is_active")]
    pub status: Status,
    pub name: String,
    pub hostname: String,
    pub namespace: StoredNamespace,
    /// The endpoint whose gateway carries the IPv4 default route.
    pub gateway_v4: Option<String>,
    /// The endpoint whose gateway carries the IPv6 default route.
    pub gateway_v6: Option<String>,
}

/// The stored record of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EndpointRecord {
    pub info: EndpointInfo,
    #[serde(default, skip_serializing_if = "Status::is_active")]
    pub status: Status,
    pub network_id: String,
    pub sandbox_id: String,
    pub aliases: Vec<String>,
    /// Connection order within the controller (the default route falls back in this order).
    pub seq: u64,
}

/// A sandbox, as [`crate::controller::Controller`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxInfo {
    /// The 64-hex-character id.
    pub id: String,
    /// The name.
    pub name: String,
    /// The path of its network namespace.
    pub netns_path: PathBuf,
    /// The namespace's name under `/run/netns`, if wharf created it.
    pub netns_name: Option<String>,
    /// Its endpoints, in connection order.
    pub endpoints: Vec<EndpointDetails>,
    /// Its `resolv.conf` and `hosts`.
    pub files: crate::controller::files::SandboxFiles,
}

/// An endpoint, as [`crate::controller::Controller`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointDetails {
    /// The endpoint's id.
    pub id: String,
    /// The network's name.
    pub network: String,
    /// The network's id.
    pub network_id: String,
    /// The sandbox's name.
    pub sandbox: String,
    /// The interface inside the sandbox.
    pub ifname: String,
    /// The MAC address.
    pub mac: MacAddr,
    /// The IPv4 address, if any.
    pub ipv4: Option<Ipv4Addr>,
    /// The IPv4 prefix length.
    pub ipv4_prefix: Option<u8>,
    /// The IPv6 address, if any.
    pub ipv6: Option<Ipv6Addr>,
    /// The IPv6 prefix length.
    pub ipv6_prefix: Option<u8>,
    /// The IPv4 gateway of its network.
    pub gateway: Option<IpAddr>,
    /// Network-scoped aliases.
    pub aliases: Vec<String>,
}
